//! Shared by the container tests: a busybox root directory built from
//! Debian's busybox-static, the SKIP checks, and a Debian root with
//! systemd (debootstrap, cached between runs) seen through an overlay.

#![allow(dead_code)]

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Where Debian's busybox-static installs busybox.
pub const BUSYBOX: &str = "/bin/busybox";

/// Whether container tests can run here; prints the `SKIP:` line when not.
pub fn ready() -> bool {
    match skip_reason() {
        Some(reason) => {
            println!("SKIP: {reason}");
            false
        }
        None => true,
    }
}

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

/// A fresh directory `/tmp/NAME` that only root may enter (0700): what
/// holds a container root, as kapseld requires (vm.conf(5), `root`): a
/// setuid file the container's root makes is host root's on disk.
pub fn private_dir(name: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    dir
}

/// A busybox root in a fresh temporary directory (`root` in a directory
/// only root may enter), removed on drop.
pub struct Rootfs {
    pub path: PathBuf,
}

impl Rootfs {
    /// A busybox system container root whose init says when it boots
    /// (`kapsel-ct-booted` on the console) and when it shuts down, and
    /// otherwise runs until it is stopped.
    pub fn system(tag: &str) -> Rootfs {
        let root = Rootfs::new(tag);
        std::fs::write(
            root.file("/etc/inittab"),
            "::sysinit:/bin/echo kapsel-ct-booted\n::respawn:/bin/sleep 1000\n::shutdown:/bin/echo kapsel-ct-shutdown\n",
        )
        .unwrap();
        root
    }

    /// `busybox --install -s` done by hand (no chroot needed): one link per
    /// applet, pointing at /bin/busybox inside the root.
    pub fn new(tag: &str) -> Rootfs {
        let path = private_dir(&format!("kapsel-ct-{}-{tag}", std::process::id())).join("root");
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

    /// The root as a tarball at `dest` (`gzip`: compressed), made by tar.
    pub fn tarball(&self, dest: &std::path::Path, gzip: bool) {
        let ok = std::process::Command::new("tar")
            .arg(if gzip { "-czf" } else { "-cf" })
            .arg(dest)
            .arg("-C")
            .arg(&self.path)
            .arg(".")
            .status()
            .unwrap()
            .success();
        assert!(ok, "tar of {} into {}", self.path.display(), dest.display());
    }
}

impl Drop for Rootfs {
    fn drop(&mut self) {
        if let Some(parent) = self.path.parent() {
            let _ = std::fs::remove_dir_all(parent);
        }
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

/// Where the Debian root for the systemd test is kept between runs.
pub const DEBIAN_CACHE: &str = "/var/cache/kapsel-test/debian-bookworm";

/// The Debian mirror apt uses here (deb822 `URIs:` or a `deb` line for
/// the main archive), or `KAPSEL_DEBIAN_MIRROR`, or deb.debian.org.
pub fn debian_mirror() -> String {
    if let Ok(m) = std::env::var("KAPSEL_DEBIAN_MIRROR") {
        return m;
    }
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        files.extend(dir.flatten().map(|e| e.path()));
    }
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        for line in text.lines().map(str::trim) {
            let url = line
                .strip_prefix("URIs:")
                .or_else(|| line.strip_prefix("deb "))
                .and_then(|rest| rest.split_whitespace().find(|w| w.starts_with("http")));
            if let Some(url) = url.filter(|u| u.trim_end_matches('/').ends_with("/debian")) {
                return url.to_string();
            }
        }
    }
    "http://deb.debian.org/debian".into()
}

/// Whether the mirror's host answers on its port (a few seconds at most).
pub fn mirror_reachable(mirror: &str) -> bool {
    use std::net::{TcpStream, ToSocketAddrs};
    let rest = mirror.split_once("://").map_or(mirror, |(_, r)| r);
    let host = rest.split('/').next().unwrap_or(rest);
    let port = if mirror.starts_with("https:") {
        443
    } else {
        80
    };
    let with_port = if host.contains(':') {
        host.to_string()
    } else {
        format!("{host}:{port}")
    };
    with_port.to_socket_addrs().is_ok_and(|mut addrs| {
        addrs.any(|a| TcpStream::connect_timeout(&a, Duration::from_secs(5)).is_ok())
    })
}

/// The cached Debian bookworm root (minbase with systemd), made with
/// debootstrap on the first run under a lock; `None` (after a SKIP line)
/// when it does not exist and cannot be made here.
pub fn debian_root() -> Option<PathBuf> {
    let cache = PathBuf::from(DEBIAN_CACHE);
    // The root appears whole (renamed into place when made); its
    // /sbin/init is an absolute link, which must not be followed here.
    let ready = || std::fs::symlink_metadata(cache.join("sbin/init")).is_ok();
    if ready() {
        return Some(cache);
    }
    let parent = cache.parent().unwrap();
    std::fs::create_dir_all(parent).unwrap();
    let lock = std::fs::File::create(parent.join("debian-bookworm.lock")).unwrap();
    // SAFETY: flock on a descriptor we own; released when `lock` closes.
    let locked = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) };
    assert_eq!(locked, 0, "flock: {}", std::io::Error::last_os_error());
    if ready() {
        return Some(cache); // another test run made it meanwhile
    }
    if Command::new("debootstrap")
        .arg("--version")
        .output()
        .is_err()
    {
        println!("SKIP: debootstrap is not installed (apt-get install debootstrap)");
        return None;
    }
    let mirror = debian_mirror();
    if !mirror_reachable(&mirror) {
        println!("SKIP: the Debian mirror {mirror} cannot be reached to make the test root");
        return None;
    }
    let tmp = parent.join("debian-bookworm.tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    let t0 = Instant::now();
    let o = Command::new("debootstrap")
        .args([
            "--variant=minbase",
            "--include=systemd,systemd-sysv",
            "bookworm",
        ])
        .arg(&tmp)
        .arg(&mirror)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "debootstrap from {mirror} failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    // Every copy boots with a machine id of its own (systemd makes a
    // transient one for an empty file) and the hostname the container
    // manager set (debootstrap copied the host's /etc/hostname).
    std::fs::write(tmp.join("etc/machine-id"), b"").unwrap();
    let _ = std::fs::remove_file(tmp.join("etc/hostname"));
    std::fs::rename(&tmp, &cache).unwrap();
    println!(
        "made the Debian test root {DEBIAN_CACHE} in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    Some(cache)
}

/// A copy of a root (`cp -a`) in a temporary directory, removed on drop:
/// for an idmapped root, which an overlay cannot be.
pub struct CopiedRoot(pub PathBuf);

impl CopiedRoot {
    pub fn new(from: &Path, tag: &str) -> CopiedRoot {
        let dir = private_dir(&format!("kapsel-copy-{}-{tag}", std::process::id())).join("root");
        let ok = Command::new("cp")
            .arg("-a")
            .arg(from)
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "cp -a {} {}", from.display(), dir.display());
        CopiedRoot(dir)
    }
}

impl Drop for CopiedRoot {
    fn drop(&mut self) {
        if let Some(parent) = self.0.parent() {
            let _ = std::fs::remove_dir_all(parent);
        }
    }
}

/// A writable view of a read-only root: an overlay on a temporary upper
/// directory (milliseconds, where a copy takes a second or more), gone
/// on drop.
pub struct Overlay {
    dir: PathBuf,
}

impl Overlay {
    pub fn new(lower: &Path, tag: &str) -> Overlay {
        let dir = private_dir(&format!("kapsel-ovl-{}-{tag}", std::process::id()));
        for d in ["upper", "work", "root"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            dir.join("upper").display(),
            dir.join("work").display()
        );
        let o = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &opts])
            .arg(dir.join("root"))
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "overlay mount: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        Overlay { dir }
    }

    pub fn root(&self) -> PathBuf {
        self.dir.join("root")
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.root()).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
