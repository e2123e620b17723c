//! A hostile image author against the code that unpacks container images.
//! The attacker controls every byte of the tarball (headers, paths, links,
//! the compressed stream); assume a parser bug gives it code execution in
//! the process that reads it. That process must not be kapseld (root, every
//! capability, the host's files), but a child that sees only the image and
//! the container's directory, keeps only the capabilities that making other
//! owners' files needs, has no_new_privs and a seccomp filter.

use crate::common::kapseld::{proc_status, Kapseld};
use crate::ctcommon;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// The processes that have `path` open.
fn holders(path: &Path) -> Vec<i32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        if fds
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l == path))
        {
            out.push(pid);
        }
    }
    out
}

#[test]
fn an_image_is_unpacked_by_a_confined_child_not_the_daemon() {
    if !ctcommon::ready() {
        return;
    }
    // 64 MiB that do not compress: seconds to unpack in a debug build,
    // time to look at who does it.
    let root = ctcommon::Rootfs::new("sec-unpack");
    let mut big = std::fs::File::create(root.file("/big")).unwrap();
    let mut urandom = std::fs::File::open("/dev/urandom").unwrap();
    std::io::copy(&mut std::io::Read::take(&mut urandom, 64 << 20), &mut big).unwrap();
    drop(big);
    let tarball =
        std::env::temp_dir().join(format!("kapsel-sec-unpack-{}.tar.gz", std::process::id()));
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "tar -C {} -cf - . | gzip -1 > {}",
            root.path.display(),
            tarball.display()
        ))
        .status()
        .unwrap()
        .success();
    assert!(ok, "tar | gzip");
    let name = ctcommon::name("secunpack");
    let conf = format!(
        "container \"{name}\" {{\n\timage \"{}\"\n\tinit \"/bin/true\"\n\tdisable\n}}\n",
        tarball.display()
    );
    let d = Kapseld::start(&conf);
    let daemon = d.child.as_ref().unwrap().id() as i32;
    let mut start = d.cmd(&["start", &name]).spawn().unwrap();
    // Who reads the tarball while it unpacks.
    let deadline = Instant::now() + Duration::from_secs(60);
    let reader = loop {
        let h = holders(&tarball);
        if let Some(&pid) = h.first() {
            break pid;
        }
        assert!(Instant::now() < deadline, "the unpack never began");
        assert!(
            start.try_wait().unwrap().is_none(),
            "start ended before the unpack was seen"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_ne!(
        reader, daemon,
        "kapseld (uid 0, every capability) parses the image itself"
    );
    let status = |f: &str| proc_status(reader, f).unwrap_or_default();
    // CHOWN, DAC_OVERRIDE, FOWNER, FSETID, MKNOD and SETFCAP only.
    let keep = "000000008800001b";
    for set in ["CapPrm", "CapEff", "CapBnd"] {
        assert_eq!(status(set), keep, "{set}");
    }
    assert_eq!(status("CapInh"), "0000000000000000");
    assert_eq!(status("CapAmb"), "0000000000000000");
    assert_eq!(status("NoNewPrivs"), "1");
    assert_eq!(status("Seccomp"), "2", "no seccomp filter");
    for kind in ["mnt", "net"] {
        let of = |pid: i32| std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).ok();
        assert_ne!(
            of(reader),
            of(daemon),
            "the unpacker shares the daemon's {kind} namespace"
        );
    }
    // Its root holds the image and the container's directory, nothing of
    // the host besides: no /etc, no /usr, no /proc.
    let seen: Vec<String> = std::fs::read_dir(format!("/proc/{reader}/root"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    for host in ["etc", "usr", "proc", "root", "bin"] {
        assert!(
            !seen.iter().any(|s| s == host),
            "the unpacker sees /{host}: {seen:?}"
        );
    }
    // No descriptor of its leads anywhere else (a directory outside the
    // new root would be a way out of it).
    let ct_dir = d.dir.join("state/ct").join(&name);
    for fd in std::fs::read_dir(format!("/proc/{reader}/fd"))
        .unwrap()
        .flatten()
    {
        let Ok(link) = std::fs::read_link(fd.path()) else {
            continue;
        };
        let shown = link.to_string_lossy().into_owned();
        assert!(
            !shown.starts_with('/')
                || link == tarball
                || link.starts_with(&ct_dir)
                || shown == "/dev/null",
            "the unpacker holds {shown}"
        );
    }
    assert!(start.wait().unwrap().success());
    let _ = std::fs::remove_file(&tarball);
}
