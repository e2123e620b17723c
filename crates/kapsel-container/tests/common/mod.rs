//! Shared by the container tests: a busybox root directory built from
//! Debian's busybox-static, and the SKIP checks.

#![allow(dead_code)]

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

/// Where Debian's busybox-static installs busybox.
pub const BUSYBOX: &str = "/bin/busybox";

/// Why container tests cannot run here, if they cannot.
pub fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("containers need root".into());
    }
    if !Path::new(BUSYBOX).exists() {
        return Some(format!(
            "{BUSYBOX} missing (apt-get install busybox-static)"
        ));
    }
    None
}

/// Prints the SKIP line and returns true when the test cannot run.
#[macro_export]
macro_rules! skip_unless_ready {
    () => {
        if let Some(reason) = common::skip_reason() {
            println!("SKIP: {reason}");
            return;
        }
    };
}

/// A busybox root in a fresh temporary directory, removed on drop.
pub struct Rootfs {
    pub path: PathBuf,
}

impl Rootfs {
    /// `busybox --install -s` done by hand (no chroot needed): one link per
    /// applet, pointing at /bin/busybox inside the root.
    pub fn new(tag: &str) -> Rootfs {
        let path = std::env::temp_dir().join(format!("kapsel-ct-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        for d in [
            "bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "tmp", "mnt",
        ] {
            std::fs::create_dir_all(path.join(d)).unwrap();
        }
        std::fs::copy(BUSYBOX, path.join("bin/busybox")).unwrap();
        let list = std::process::Command::new(BUSYBOX)
            .arg("--list-full")
            .output()
            .expect("busybox --list-full");
        for applet in String::from_utf8_lossy(&list.stdout).lines() {
            let link = path.join(applet);
            if applet != "bin/busybox" && !link.exists() {
                let _ = symlink("/bin/busybox", link);
            }
        }
        Rootfs { path }
    }

    /// A file inside the root, as the host sees it.
    pub fn file(&self, inner: &str) -> PathBuf {
        self.path.join(inner.trim_start_matches('/'))
    }
}

impl Drop for Rootfs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A container name unique to this test process.
pub fn name(tag: &str) -> String {
    format!("kt{}-{tag}", std::process::id())
}

/// The container's cgroup directories that exist on the host.
pub fn cgroup_dirs(name: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for base in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
        let candidate = Path::new(base).join("kapsel").join(name);
        if candidate.exists() {
            found.push(candidate);
        }
    }
    if let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") {
        for e in entries.flatten() {
            let candidate = e.path().join("kapsel").join(name);
            if candidate.exists() && !found.contains(&candidate) {
                found.push(candidate);
            }
        }
    }
    found
}

/// Waits up to `secs` for `f` to hold.
pub fn eventually(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    f()
}
