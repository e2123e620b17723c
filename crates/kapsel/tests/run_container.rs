//! `kapsel run-container` as a user runs it: exit status, bad input,
//! a clean stop on SIGTERM, nothing left behind. Needs root and
//! busybox-static; prints `SKIP: reason` otherwise.

#[path = "../../kapsel-container/tests/common/mod.rs"]
mod common;

use common::{cgroup_dirs, eventually, name, Rootfs};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn kapsel() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kapsel"))
}

#[test]
fn status_of_the_command_is_the_exit_status() {
    skip_unless_ready!();
    let root = Rootfs::new("cli-status");
    let out = kapsel()
        .args(["run-container", "--root"])
        .arg(&root.path)
        .args([
            "--name",
            &name("cli-status"),
            "--",
            "/bin/sh",
            "-c",
            "echo hi from $(hostname); exit 7",
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("hi from {}\n", name("cli-status"))
    );
    // A bare name is found in the root's PATH; limits are accepted.
    let st = kapsel()
        .args(["run-container", "--root"])
        .arg(&root.path)
        .args([
            "--memory", "64M", "--pids", "64", "--cpus", "1", "--", "true",
        ])
        .status()
        .unwrap();
    assert_eq!(st.code(), Some(0));
    // A signal from the host that ends the init: 128 + signal.
    let n = name("cli-signal");
    let mut child = kapsel()
        .args(["run-container", "--root"])
        .arg(&root.path)
        .args(["--name", &n, "--", "/bin/sleep", "100"])
        .spawn()
        .unwrap();
    let init_pid = || {
        cgroup_dirs(&n)
            .first()
            .and_then(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
            .and_then(|p| p.lines().next().and_then(|l| l.parse::<i32>().ok()))
    };
    // The init is in its cgroup before it runs `sleep`: killed before the
    // parent has released it, the start itself fails (exit 1), which is
    // not what this checks.
    assert!(eventually(5, || init_pid().is_some_and(|p| {
        std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "sleep")
    })));
    // SAFETY: kill(2) on the container's init, found in its cgroup.
    unsafe { libc::kill(init_pid().unwrap(), libc::SIGKILL) };
    assert_eq!(child.wait().unwrap().code(), Some(128 + libc::SIGKILL));
    assert!(cgroup_dirs(&n).is_empty());
}

#[test]
fn userns_shows_a_host_root_idmapped_and_a_shifted_root_as_it_is() {
    use std::os::unix::fs::MetadataExt;
    skip_unless_ready!();
    let root = Rootfs::new("cli-userns");
    let run = |script: &str| {
        kapsel()
            .args(["run-container", "--root"])
            .arg(&root.path)
            .args([
                "--name",
                &name("cli-userns"),
                "--userns",
                "200000:65536",
                "--",
                "/bin/sh",
                "-c",
                script,
            ])
            .output()
            .unwrap()
    };
    let out = run("echo uid=$(id -u) owner=$(stat -c %u /); touch /tmp/idmapped");
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(said, "uid=0 owner=0\n");
    let uid = |p: &str| std::fs::symlink_metadata(root.file(p)).unwrap().uid();
    assert_eq!(uid("/tmp/idmapped"), 0);
    // Shifted by hand: the root is used as it is.
    let st = Command::new("chown")
        .args(["-hR", "200000:200000"])
        .arg(&root.path)
        .status()
        .unwrap();
    assert!(st.success());
    let out = run("echo uid=$(id -u) owner=$(stat -c %u /); touch /tmp/shifted");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "uid=0 owner=0\n");
    assert_eq!(uid("/tmp/shifted"), 200000);
    assert!(cgroup_dirs(&name("cli-userns")).is_empty());
}

#[test]
fn bad_input_is_exit_2_with_the_fix() {
    skip_unless_ready!();
    let root = Rootfs::new("cli-bad");
    std::fs::write(root.file("/bin/noexec"), "#!/bin/sh\n").unwrap();
    let n = name("cli-bad");
    let cases: &[(&[&str], &str)] = &[
        (
            &["--root", "/no/such/dir", "--", "/bin/true"],
            "root /no/such/dir",
        ),
        (&["--", "/bin/missing"], "init /bin/missing not found"),
        (&["--", "/bin/noexec"], "not executable"),
        (&["--name", "a/b", "--", "/bin/true"], "container name"),
        (&["--cpus", "0", "--", "/bin/true"], "cpus"),
        (&["--cpus", "4096", "--", "/bin/true"], "CPUs this host has"),
        (&["--memory", "1M", "--", "/bin/true"], "at least 6M"),
        (
            &[
                "--net-veth",
                "a-name-that-is-far-too-long",
                "--",
                "/bin/true",
            ],
            "interface name",
        ),
        (&["--net-veth", "lo", "--", "/bin/true"], "already exists"),
        (
            &["--console", "file:/no/such/dir/log", "--", "/bin/true"],
            "console file",
        ),
    ];
    for (args, message) in cases {
        let mut cmd = kapsel();
        cmd.arg("run-container");
        if !args.contains(&"--root") {
            cmd.arg("--root").arg(&root.path);
        }
        if !args.contains(&"--name") {
            cmd.args(["--name", &n]);
        }
        let out = cmd.args(*args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(message), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        assert!(cgroup_dirs(&n).is_empty());
    }
    // A root whose /dev is a link is bad input too.
    std::fs::remove_dir(root.file("/dev")).unwrap();
    std::os::unix::fs::symlink("/", root.file("/dev")).unwrap();
    let out = kapsel()
        .args(["run-container", "--root"])
        .arg(&root.path)
        .args(["--name", &n, "--", "/bin/true"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("is not a directory"), "{err}");
    std::fs::remove_file(root.file("/dev")).unwrap();
    std::fs::create_dir(root.file("/dev")).unwrap();
    // A failure inside the container's setup is exit 1, and leaves nothing.
    std::fs::write(root.file("/bin/broken"), "#!/no/such/interpreter\n").unwrap();
    std::fs::set_permissions(
        root.file("/bin/broken"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let out = kapsel()
        .args(["run-container", "--root"])
        .arg(&root.path)
        .args(["--name", &n, "--memory", "64M", "--", "/bin/broken"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("executing the init"), "{err}");
    assert!(cgroup_dirs(&n).is_empty());
}

#[test]
fn sigterm_powers_a_system_container_off() {
    skip_unless_ready!();
    let root = Rootfs::new("cli-init");
    std::fs::write(
        root.file("/etc/inittab"),
        "::sysinit:/bin/touch /tmp/booted\n::respawn:/bin/sleep 1000\n::shutdown:/bin/touch /tmp/shutdown-ran\n",
    )
    .unwrap();
    let n = name("cli-init");
    let mut child = kapsel()
        .args(["run-container", "--root"])
        .arg(&root.path)
        .args(["--name", &n, "--console", "none", "--init", "/sbin/init"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    assert!(
        eventually(5, || root.file("/tmp/booted").exists()),
        "init did not boot"
    );
    let t = Instant::now();
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(t.elapsed() < Duration::from_secs(20));
    assert!(root.file("/tmp/shutdown-ran").exists());
    assert!(cgroup_dirs(&n).is_empty());
}

#[test]
fn an_init_that_ignores_the_stop_signal_is_killed() {
    skip_unless_ready!();
    let root = Rootfs::new("cli-kill");
    let n = name("cli-kill");
    // sleep as PID 1 has no handler for SIGTERM, so the kernel drops it.
    let start = |extra: &[&str]| {
        let child = kapsel()
            .args(["run-container", "--root"])
            .arg(&root.path)
            .args(["--name", &n])
            .args(extra)
            .args(["--", "/bin/sleep", "100"])
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        assert!(eventually(5, || !cgroup_dirs(&n).is_empty()));
        std::thread::sleep(Duration::from_millis(100));
        child
    };
    let term = |child: &std::process::Child| {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    };
    // The timeout passes.
    let child = start(&["--stop-timeout", "1"]);
    let t = Instant::now();
    term(&child);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(128 + libc::SIGKILL));
    assert!(t.elapsed() >= Duration::from_secs(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("did not stop within"));
    assert!(eventually(2, || cgroup_dirs(&n).is_empty()));
    // A second signal does not wait for it.
    let child = start(&["--stop-timeout", "60"]);
    let t = Instant::now();
    term(&child);
    std::thread::sleep(Duration::from_millis(200));
    term(&child);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(128 + libc::SIGKILL));
    assert!(t.elapsed() < Duration::from_secs(30));
    assert!(String::from_utf8_lossy(&out.stderr).contains("second stop request"));
    assert!(cgroup_dirs(&n).is_empty());
}
