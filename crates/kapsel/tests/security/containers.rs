//! Containers: a local user (the test user) against the roots of
//! containers the daemon runs, a container's root against the daemon
//! (`exec -t`) and against the kernel (the seccomp profile), and kapseld
//! run the way systemd runs it.

use crate::common::kapseld::{out, pid_of, test_user, Kapseld, KAPSEL};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::ctcommon;

/// What the test user sees of `path`: `Ok("UID:MODE")` or the error.
fn as_user(ids: (u32, u32), path: &Path) -> Result<String, String> {
    let (code, stdout, stderr) = out(Command::new(ctcommon::BUSYBOX)
        .args(["stat", "-c", "%u:%a"])
        .arg(path)
        .uid(ids.0)
        .gid(ids.1)
        .output()
        .unwrap());
    if code == 0 {
        Ok(stdout.trim().to_string())
    } else {
        Err(stderr)
    }
}

/// Finding 2: container root makes a setuid-root file in its root, which
/// is host uid 0's on disk; a user who owns nothing reached it under
/// `STATE_DIR/ct/NAME/root` (an image container's root) and became root.
/// Also the directories an older kapseld left open must be closed.
#[test]
fn a_setuid_file_in_an_image_root_is_out_of_reach() {
    if !ctcommon::ready() {
        return;
    }
    let Some(ids) = test_user() else {
        return;
    };
    let root = ctcommon::Rootfs::new("sec-image");
    let tarball = std::env::temp_dir().join(format!("kapsel-sec-img-{}.tar", std::process::id()));
    root.tarball(&tarball, false);
    let name = ctcommon::name("secimg");
    let conf = format!(
        "container \"{name}\" {{\n\timage \"{}\"\n\tinit \"/bin/sh\" \"-c\" \"cp /bin/busybox /suid && chmod 4755 /suid\"\n\tunprivileged\n\tdisable\n}}\n",
        tarball.display()
    );
    let mut d = Kapseld::start(&conf);
    let state = d.dir.join("state");
    d.ok(&["start", &name]);
    let st = d.wait_state(&name, "stopped");
    assert_eq!(st["last_exit"], "exited (status 0)", "{st}\n{}", d.log());
    let suid = state.join("ct").join(&name).join("root/suid");
    let meta = std::fs::metadata(&suid).unwrap();
    // On disk, the unprivileged container's root is host uid 0 (the
    // idmapped mount): vm.conf(5) says so; what protects is the path.
    assert_eq!((meta.uid(), meta.mode() & 0o7777), (0, 0o4755));
    let seen = as_user(ids, &suid);
    assert!(
        seen.is_err(),
        "the test user reaches the container's setuid-root file: {seen:?}"
    );
    for dir in [state.join("ct"), state.join("ct").join(&name)] {
        let meta = std::fs::metadata(&dir).unwrap();
        assert_eq!((meta.uid(), meta.mode() & 0o7777), (0, 0o700), "{dir:?}");
    }

    // An older kapseld's state directory, open to all: closed on start,
    // also the root of a container no longer configured.
    d.stop_daemon();
    let stale = state.join("ct/gone");
    std::fs::create_dir_all(stale.join("root")).unwrap();
    for dir in [
        state.join("ct"),
        state.join("ct").join(&name),
        stale.clone(),
    ] {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    d.spawn();
    assert!(as_user(ids, &suid).is_err());
    assert!(as_user(ids, &stale.join("root")).is_err());
    let _ = std::fs::remove_file(&tarball);
}

/// Finding 2: an administrator's `root PATH` whose path every user may
/// search. The daemon refuses to start the container, naming the path and
/// the chmod that fixes it; once a directory above is closed, it runs, and
/// the setuid-root file its root makes stays out of the test user's reach.
#[test]
fn a_root_other_users_can_reach_is_refused_with_the_fix() {
    if !ctcommon::ready() {
        return;
    }
    let Some(ids) = test_user() else {
        return;
    };
    let root = ctcommon::Rootfs::system("sec-open");
    let parent = root.path.parent().unwrap().to_path_buf();
    // Open, as a root under /tmp usually is.
    std::fs::set_permissions(&parent, std::fs::Permissions::from_mode(0o755)).unwrap();
    let name = ctcommon::name("secopen");
    let twin = ctcommon::name("secopenu");
    let conf = format!(
        "container \"{name}\" {{\n\troot \"{r}\"\n\tdisable\n}}\n\
         container \"{twin}\" {{\n\troot \"{r}\"\n\tunprivileged\n\tdisable\n}}\n",
        r = root.path.display()
    );
    let d = Kapseld::start(&conf);
    for ct in [&name, &twin] {
        let (code, _, err) = d.run(&["start", ct]);
        assert_ne!(code, 0, "{ct} started on a root others can reach");
        assert!(
            err.contains(&root.path.display().to_string())
                && err.contains(&format!("chmod 700 {}", parent.display())),
            "{err}"
        );
    }
    // Closed: it runs, and its root's setuid file is root's alone.
    std::fs::set_permissions(&parent, std::fs::Permissions::from_mode(0o700)).unwrap();
    for ct in [&name, &twin] {
        d.ok(&["start", ct]);
        d.wait_state(ct, "running");
        d.ok(&[
            "exec",
            ct,
            "--",
            "/bin/sh",
            "-c",
            &format!("cp /bin/busybox /suid-{ct} && chmod 4755 /suid-{ct}"),
        ]);
        let suid = root.file(&format!("/suid-{ct}"));
        assert_eq!(std::fs::metadata(&suid).unwrap().uid(), 0);
        let seen = as_user(ids, &suid);
        assert!(
            seen.is_err(),
            "{ct}: the test user reaches {suid:?}: {seen:?}"
        );
        d.ok(&["stop", "-w", ct]);
    }
}

/// Finding 4: under systemd, kapseld is a session leader without a
/// terminal (the harness starts every daemon that way). Opening a
/// container's console pty without O_NOCTTY made it the daemon's
/// controlling terminal: every container start failed ("setting up stdin,
/// stdout and stderr: Operation not permitted") and each sent the daemon a
/// SIGHUP, which reloaded its configuration.
#[test]
fn containers_start_under_a_daemon_run_as_systemd_runs_it() {
    if !ctcommon::ready() {
        return;
    }
    let root = ctcommon::Rootfs::system("sec-setsid");
    let name = ctcommon::name("setsid");
    let conf = format!(
        "container \"{name}\" {{\n\troot \"{}\"\n}}\n",
        root.path.display()
    );
    let d = Kapseld::start(&conf);
    let daemon = d.child.as_ref().unwrap().id();
    let stat = std::fs::read_to_string(format!("/proc/{daemon}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    // state ppid pgrp session tty_nr: a session leader without a terminal.
    assert_eq!(
        fields[3],
        daemon.to_string(),
        "the daemon leads its session"
    );
    let st = d.wait_state(&name, "running");
    assert!(pid_of(&st) > 0);
    d.ok(&["stop", "-w", &name]);
    d.ok(&["start", &name]);
    d.wait_state(&name, "running");
    d.ok(&["stop", "-w", &name]);
    let stat = std::fs::read_to_string(format!("/proc/{daemon}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(fields[4], "0", "the daemon got a controlling terminal");
    assert!(
        !d.log().contains("SIGHUP"),
        "the daemon was sent SIGHUP:\n{}",
        d.log()
    );
}

/// `kapsel exec -t` through script(1), which gives the CLI a terminal.
fn exec_tty(d: &Kapseld, name: &str, command: &str) -> (i32, String) {
    let cli = format!(
        "{KAPSEL} --socket {} exec {name} -- /bin/sh -c '{command}'",
        d.socket().display()
    );
    let (code, stdout, stderr) = out(Command::new("script")
        .args(["-qec", &cli, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .unwrap());
    (code, format!("{stdout}{stderr}"))
}

/// Inotify IN_OPEN events on `path` since the watch was set.
struct OpenWatch(std::os::fd::OwnedFd);

impl OpenWatch {
    fn new(path: &Path) -> OpenWatch {
        use std::os::fd::FromRawFd;
        use std::os::unix::ffi::OsStrExt;
        // SAFETY: inotify_init1 with constant flags; checked below.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: fd is new and ours.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid descriptor and NUL-terminated path.
        let wd = unsafe {
            libc::inotify_add_watch(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                c.as_ptr(),
                libc::IN_OPEN,
            )
        };
        assert!(wd >= 0);
        OpenWatch(fd)
    }

    fn opened(&self) -> bool {
        let mut buf = [0u8; 4096];
        // SAFETY: reads into a buffer of the given size.
        let n = unsafe {
            libc::read(
                std::os::fd::AsRawFd::as_raw_fd(&self.0),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        n > 0
    }
}

/// Finding 8: the daemon opened the container's /dev/ptmx through
/// /proc/PID/root as host root, following an absolute link into the
/// host's tree: a container's root pointed it at a host file (opened
/// read-write), and the error told whether a host path exists.
#[test]
fn exec_t_never_opens_the_host_file_dev_ptmx_names() {
    if !ctcommon::ready() {
        return;
    }
    if Command::new("script").arg("--version").output().is_err() {
        println!("SKIP: script (Debian: bsdutils) is not installed");
        return;
    }
    let root = ctcommon::Rootfs::system("sec-ptmx");
    let name = ctcommon::name("ptmx");
    let conf = format!(
        "container \"{name}\" {{\n\troot \"{}\"\n}}\n",
        root.path.display()
    );
    let d = Kapseld::start(&conf);
    d.wait_state(&name, "running");
    // The normal /dev/ptmx (a link to pts/ptmx) works.
    let (code, text) = exec_tty(&d, &name, "tty; exit 4");
    assert_eq!(code, 4, "{text}\n{}", d.log());
    assert!(text.contains("/dev/pts/"), "{text}");

    let host_file = d.dir.join("host-secret");
    std::fs::write(&host_file, "host\n").unwrap();
    let missing: PathBuf = d.dir.join("no-such-host-file");
    let watch = OpenWatch::new(&host_file);
    let mut answers = Vec::new();
    for target in [&host_file, &missing] {
        d.ok(&[
            "exec",
            &name,
            "--",
            "/bin/sh",
            "-c",
            &format!("rm -f /dev/ptmx && ln -s {} /dev/ptmx", target.display()),
        ]);
        let (code, text) = exec_tty(&d, &name, "exit 0");
        assert_ne!(code, 0, "exec -t ran on {}: {text}", target.display());
        answers.push(text.replace(&target.display().to_string(), "TARGET"));
    }
    assert!(
        !watch.opened(),
        "the daemon opened the host file the container's /dev/ptmx points at"
    );
    assert_eq!(
        answers[0], answers[1],
        "the error tells whether a host path exists"
    );
    assert!(answers[0].contains("/dev/ptmx"), "{}", answers[0]);
    d.ok(&["stop", "-w", &name]);
}

/// A static program that tries what the seccomp profile must refuse and
/// prints `NAME=ERRNO` (0: it worked).
const PROBE: &str = r#"
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdint.h>
#include <sys/personality.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static void say(const char *what, long r) { printf("%s=%d\n", what, r < 0 ? errno : 0); }
static void *thread(void *arg) { return arg; }

int main(void) {
    long r = syscall(SYS_unshare, CLONE_NEWUSER);
    say("unshare-user", r);
    r = syscall(SYS_unshare, CLONE_NEWNET);
    say("unshare-net", r);
    r = syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0);
    if (r == 0) _exit(0);
    if (r > 0) waitpid(r, 0, 0);
    say("clone-user", r);
    uint64_t args[11] = {0};
    args[0] = CLONE_NEWUSER; args[4] = SIGCHLD;
    r = syscall(435 /* clone3 */, args, sizeof args);
    if (r == 0) _exit(0);
    if (r > 0) waitpid(r, 0, 0);
    say("clone3-user", r);
    r = syscall(SYS_setns, open("/proc/self/ns/uts", O_RDONLY), 0);
    say("setns", r);
    r = syscall(SYS_personality, READ_IMPLIES_EXEC);
    say("personality-rie", r);
    r = syscall(SYS_personality, 0xffffffffUL);
    say("personality-query", r);
    r = socket(40 /* AF_VSOCK */, SOCK_STREAM, 0);
    say("vsock", r);
    r = syscall(0x40000000 | 272 /* x32 unshare */, CLONE_NEWUSER);
    say("x32-unshare", r);
    pthread_t t;
    errno = pthread_create(&t, 0, thread, 0);
    say("thread", errno ? -1 : (pthread_join(t, 0), 0));
    r = fork();
    if (r == 0) _exit(0);
    if (r > 0) waitpid(r, 0, 0);
    say("fork", r);
    return 0;
}
"#;

/// Finding 10: a container's processes made user namespaces (and with
/// them every namespace), switched on READ_IMPLIES_EXEC and opened vsock
/// sockets, all of which Docker's default profile refuses a container
/// without CAP_SYS_ADMIN.
#[test]
fn seccomp_refuses_namespaces_vsock_and_personalities() {
    if !ctcommon::ready() {
        return;
    }
    let root = ctcommon::Rootfs::system("sec-seccomp");
    let src = root.path.parent().unwrap().join("probe.c");
    std::fs::write(&src, PROBE).unwrap();
    let built = Command::new("gcc")
        .args(["-static", "-O1", "-pthread", "-o"])
        .arg(root.file("/bin/probe"))
        .arg(&src)
        .output();
    match built {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            println!(
                "SKIP: gcc -static failed (Debian: libc6-dev): {}",
                String::from_utf8_lossy(&o.stderr)
            );
            return;
        }
        Err(e) => {
            println!("SKIP: gcc: {e}");
            return;
        }
    }
    let name = ctcommon::name("scp");
    let unpriv = ctcommon::name("scpu");
    let conf = format!(
        "container \"{name}\" {{\n\troot \"{r}\"\n}}\n\
         container \"{unpriv}\" {{\n\troot \"{r}\"\n\tunprivileged\n}}\n",
        r = root.path.display()
    );
    let d = Kapseld::start(&conf);
    for ct in [&name, &unpriv] {
        d.wait_state(ct, "running");
        let said = d.ok(&["exec", ct, "--", "/bin/probe"]);
        let got = |what: &str| -> i32 {
            said.lines()
                .find_map(|l| l.strip_prefix(&format!("{what}=")))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{ct}: no {what} in {said}"))
        };
        for what in [
            "unshare-user",
            "unshare-net",
            "clone-user",
            "setns",
            "personality-rie",
            "vsock",
        ] {
            assert_eq!(got(what), libc::EPERM, "{ct}: {what}\n{said}");
        }
        assert_eq!(got("clone3-user"), libc::ENOSYS, "{ct}: clone3\n{said}");
        assert_ne!(got("x32-unshare"), 0, "{ct}: x32\n{said}");
        // What programs need goes on working.
        for what in ["personality-query", "thread", "fork"] {
            assert_eq!(got(what), 0, "{ct}: {what}\n{said}");
        }
    }
    for ct in [&name, &unpriv] {
        d.ok(&["stop", "-w", ct]);
    }
}
