//! config.json areas through kapsel-oci's command line: hooks (every
//! kind, in order, with the state on standard input, in the right
//! namespaces, with runc's failure semantics and timeouts) and sysctls.

mod common;

use common::*;
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};

/// A host hook that appends its kind to `order` and saves its standard
/// input as `DIR/KIND.json`.
fn host_hook(dir: &Path, kind: &str, extra: &str) -> Value {
    let d = dir.display();
    json!({
        "path": "/bin/sh",
        "args": ["sh", "-c", format!("echo {kind} >> {d}/order; cat > {d}/{kind}.json; {extra}")],
        "env": ["HOOKVAR=from-config"]
    })
}

fn read_json(p: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .unwrap()
}

#[test]
fn hooks_run_in_order_with_the_state_in_their_namespaces() {
    if skip() {
        return;
    }
    let b = Bundle::new("hooks", &["sleep", "1000"]);
    let d = b.dir.display().to_string();
    let mut cfg = config(&["sleep", "1000"]);
    cfg["annotations"] = json!({"org.test": "yes"});
    cfg["hooks"] = json!({
        "prestart": [host_hook(&b.dir, "prestart", &format!("echo $HOOKVAR > {d}/env"))],
        "createRuntime": [host_hook(&b.dir, "createRuntime", "")],
        // In the container's namespaces, before pivot_root: the host's
        // /bin/sh and paths, the container's hostname and network.
        "createContainer": [host_hook(&b.dir, "createContainer",
            &format!("hostname > {d}/cc.hostname; readlink /proc/self/ns/net > {d}/cc.net"))],
        // After pivot_root: the container's /bin/sh, a file in its root.
        // Confined as the container's process: its capabilities, cgroup.
        "startContainer": [{"path": "/bin/sh",
            "args": ["sh", "-c", "cat > /start.json; hostname > /start.hostname; \
                grep CapEff /proc/self/status > /start.caps; cat /proc/self/cgroup > /start.cgroup"]}],
        "poststart": [host_hook(&b.dir, "poststart", "")],
        "poststop": [host_hook(&b.dir, "poststop", "")]
    });
    b.write(&cfg);
    let id = id("hooks");
    b.ok(&["create", "--bundle", b.path(), &id]);
    let pid = b.state(&id)["pid"].as_i64().unwrap();
    let order = || std::fs::read_to_string(b.dir.join("order")).unwrap_or_default();
    assert_eq!(order(), "prestart\ncreateRuntime\ncreateContainer\n");
    for kind in ["prestart", "createRuntime", "createContainer"] {
        let s = read_json(&b.dir.join(format!("{kind}.json")));
        assert_eq!(s["status"], "creating", "{kind}: {s}");
        assert_eq!(s["pid"], pid, "{kind}: {s}");
        assert_eq!(s["id"], id.as_str());
        assert_eq!(s["bundle"], b.path());
        assert_eq!(s["annotations"]["org.test"], "yes");
        assert!(s["ociVersion"].is_string());
    }
    assert_eq!(
        std::fs::read_to_string(b.dir.join("env")).unwrap(),
        "from-config\n"
    );
    assert_eq!(
        std::fs::read_to_string(b.dir.join("cc.hostname")).unwrap(),
        "ocitest\n"
    );
    let container_net = std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
    assert_eq!(
        std::fs::read_to_string(b.dir.join("cc.net"))
            .unwrap()
            .trim(),
        container_net.to_str().unwrap()
    );

    b.ok(&["start", &id]);
    assert_eq!(
        order(),
        "prestart\ncreateRuntime\ncreateContainer\npoststart\n"
    );
    let s = read_json(&b.dir.join("rootfs/start.json"));
    assert_eq!(s["status"], "created", "{s}");
    assert_eq!(
        std::fs::read_to_string(b.dir.join("rootfs/start.hostname")).unwrap(),
        "ocitest\n"
    );
    assert_eq!(
        read_json(&b.dir.join("poststart.json"))["status"],
        "running"
    );
    b.ok(&["kill", &id, "KILL"]);
    assert!(eventually(|| b.state(&id)["status"] == "stopped"));
    b.ok(&["delete", &id]);
    assert!(order().ends_with("poststart\npoststop\n"), "{}", order());
    assert_eq!(read_json(&b.dir.join("poststop.json"))["status"], "stopped");
}

fn cgroup_gone(id: &str) -> bool {
    [
        "/sys/fs/cgroup/memory",
        "/sys/fs/cgroup/pids",
        "/sys/fs/cgroup",
    ]
    .iter()
    .all(|top| !Path::new(top).join("kapsel-oci").join(id).exists())
}

#[test]
fn failing_hooks_fail_as_with_runc() {
    if skip() {
        return;
    }
    let b = Bundle::new("hookfail", &["sleep", "1000"]);
    let fail = |code: i32| json!({"path": "/bin/sh", "args": ["sh", "-c", format!("echo oops >&2; exit {code}")]});

    // createRuntime fails: create fails, nothing is left.
    let mut cfg = config(&["sleep", "1000"]);
    cfg["hooks"] = json!({"createRuntime": [fail(3)]});
    b.write(&cfg);
    let id1 = id("hookfail1");
    let out = b.oci(&["create", "--bundle", b.path(), &id1]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("createRuntime") && err.contains("oops"),
        "{err}"
    );
    assert!(String::from_utf8_lossy(&b.oci(&["state", &id1]).stderr).contains("does not exist"));
    assert!(cgroup_gone(&id1));

    // A hook past its timeout is killed and fails the create.
    cfg["hooks"] =
        json!({"prestart": [{"path": "/bin/sleep", "args": ["sleep", "30"], "timeout": 1}]});
    b.write(&cfg);
    let t = Instant::now();
    let out = b.oci(&["create", "--bundle", b.path(), &id("hookfail2")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(t.elapsed() < Duration::from_secs(10));
    assert!(String::from_utf8_lossy(&out.stderr).contains("timeout"));

    // poststart fails: start fails and the container is stopped.
    cfg["hooks"] = json!({"poststart": [fail(4)], "poststop": [fail(5)]});
    b.write(&cfg);
    let id3 = id("hookfail3");
    b.ok(&["create", "--bundle", b.path(), &id3]);
    let out = b.oci(&["start", &id3]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("poststart"));
    assert!(eventually(|| b.state(&id3)["status"] == "stopped"));
    // poststop fails: a warning only; delete succeeds.
    b.ok(&["delete", &id3]);
    assert!(cgroup_gone(&id3));

    // A relative hook path is refused.
    cfg["hooks"] = json!({"prestart": [{"path": "bin/true"}]});
    b.write(&cfg);
    let out = b.oci(&["create", "--bundle", b.path(), &id("hookfail4")]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not absolute"));
}

#[test]
fn sysctls_of_the_containers_namespaces_are_set() {
    if skip() {
        return;
    }
    let host_shmmni = std::fs::read_to_string("/proc/sys/kernel/shmmni").unwrap();
    let b = Bundle::new("sysctl", &["true"]);
    let mut cfg = config(&[
        "sh",
        "-c",
        "cat /proc/sys/net/ipv4/ip_forward /proc/sys/kernel/shmmni /proc/sys/kernel/domainname",
    ]);
    cfg["linux"]["sysctl"] = json!({"net.ipv4.ip_forward": "1", "kernel.shmmni": "1234"});
    // config.json's domainname, in the container's UTS namespace.
    cfg["domainname"] = json!("kapsel.test");
    b.write(&cfg);
    let out = b.oci(&["run", &id("sysctl"), "--bundle", b.path()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "1\n1234\nkapsel.test\n"
    );
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/shmmni").unwrap(),
        host_shmmni
    );
    // Host-wide sysctls, and namespaced ones of a namespace shared with
    // the host, are refused.
    cfg["domainname"] = json!("");
    cfg["linux"]["sysctl"] = json!({"kernel.pid_max": "4000"});
    b.write(&cfg);
    let out = b.oci(&["run", &id("sysctl2"), "--bundle", b.path()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("kernel.pid_max"));
    cfg["linux"]["sysctl"] = json!({"net.ipv4.ip_forward": "1"});
    cfg["linux"]["namespaces"] = json!([{"type": "pid"}, {"type": "mount"}, {"type": "ipc"}]);
    b.write(&cfg);
    let out = b.oci(&["run", &id("sysctl3"), "--bundle", b.path()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("network namespace"));
}

#[test]
fn seccomp_profile_of_config_json_is_enforced() {
    if skip() {
        return;
    }
    let b = Bundle::new("seccomp", &["true"]);
    let script = "\
        mkdir /a 2>&1; \
        rmdir /bin 2>&1; \
        kill -USR1 $$ 2>&1; kill -USR2 $$ 2>&1; kill -0 $$ && echo kill0-ok; \
        pwd; \
        grep Seccomp: /proc/self/status; \
        (hostname killed) ; echo kill=$?; \
        (chroot / true) ; echo trap=$?";
    let mut cfg = config(&["sh", "-c", script]);
    let caps = json!(["CAP_SYS_ADMIN", "CAP_SYS_CHROOT", "CAP_KILL"]);
    for set in ["bounding", "effective", "permitted"] {
        cfg["process"]["capabilities"][set] = caps.clone();
    }
    cfg["linux"]["seccomp"] = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [
            // ERRNO with errnoRet (95: EOPNOTSUPP), and without (EPERM).
            {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 95},
            {"names": ["rmdir", "unlinkat"], "action": "SCMP_ACT_ERRNO"},
            // Two conditions on one argument (separate rules, as runc),
            // one of them MASKED_EQ: kill(_, SIGUSR1) and kill(_, SIGUSR2).
            {"names": ["kill"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13, "args": [
                {"index": 1, "value": 10, "op": "SCMP_CMP_EQ"},
                {"index": 1, "value": 255, "valueTwo": 12, "op": "SCMP_CMP_MASKED_EQ"}]},
            {"names": ["getcwd"], "action": "SCMP_ACT_LOG"},
            {"names": ["sethostname"], "action": "SCMP_ACT_KILL_PROCESS"},
            {"names": ["chroot"], "action": "SCMP_ACT_TRAP"},
            {"names": ["no_such_call_anywhere"], "action": "SCMP_ACT_ERRNO"}
        ]
    });
    b.write(&cfg);
    let id = id("seccomp");
    let out = b.oci(&["run", &id, "--bundle", b.path()]);
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{text}{err}");
    assert!(
        text.contains("mkdir: can't create directory '/a': Operation not supported"),
        "{text}"
    );
    assert!(text.contains("Operation not permitted"), "{text}");
    assert_eq!(text.matches("Permission denied").count(), 2, "{text}");
    assert!(text.contains("kill0-ok"), "{text}");
    assert!(text.contains("\n/\n"), "{text}");
    assert!(text.contains("Seccomp:\t2"), "{text}");
    // KILL_PROCESS and TRAP end the process with SIGSYS (31).
    assert!(text.contains("kill=159"), "{text}");
    assert!(text.contains("trap=159"), "{text}");
    // The unknown name is a warning, as with runc.
    assert!(err.contains("no_such_call_anywhere"), "{err}");

    // exec takes the container's profile.
    let mut cfg2 = cfg.clone();
    cfg2["process"]["args"] = json!(["sleep", "1000"]);
    b.write(&cfg2);
    let id2 = format!("{id}-x");
    b.ok(&["run", "-d", "--bundle", b.path(), &id2]);
    let out = b.oci(&["exec", &id2, "mkdir", "/b"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Operation not supported"));
    b.ok(&["delete", "--force", &id2]);

    // What kapsel-oci cannot do is refused by name.
    cfg["linux"]["seccomp"]["syscalls"]
        .as_array_mut()
        .unwrap()
        .push(json!({"names": ["getpid"], "action": "SCMP_ACT_NOTIFY"}));
    b.write(&cfg);
    let out = b.oci(&["run", &format!("{id}-3"), "--bundle", b.path()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("listenerPath"));
    cfg["linux"]["seccomp"] = json!({"defaultAction": "SCMP_ACT_BOGUS"});
    b.write(&cfg);
    let out = b.oci(&["run", &format!("{id}-4"), "--bundle", b.path()]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn linux_devices_are_made_and_allowed() {
    if skip() {
        return;
    }
    if !Path::new("/dev/kvm").exists() {
        println!("SKIP: no /dev/kvm on this host to hand to a container");
        return;
    }
    let b = Bundle::new("devices", &["true"]);
    let script = "\
        stat -c '%n %F %a %u:%g %t:%T' /dev/kvm /dev/nested/null /dev/pipe; \
        head -c 0 /dev/kvm && echo kvm-opened; \
        echo x > /dev/nested/null && echo null-written";
    let mut cfg = config(&["sh", "-c", script]);
    cfg["linux"]["devices"] = json!([
        {"path": "/dev/kvm", "type": "c", "major": 10, "minor": 232, "fileMode": 432, "uid": 0, "gid": 0},
        {"path": "/dev/nested/null", "type": "c", "major": 1, "minor": 3, "fileMode": 438, "uid": 1000, "gid": 100},
        {"path": "/dev/pipe", "type": "p", "major": 0, "minor": 0, "fileMode": 420}
    ]);
    b.write(&cfg);
    let out = b.oci(&["run", &id("devices"), "--bundle", b.path()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("/dev/kvm character special file 660 0:0 a:e8"),
        "{text}"
    );
    assert!(
        text.contains("/dev/nested/null character special file 666 1000:100 1:3"),
        "{text}"
    );
    assert!(text.contains("/dev/pipe fifo 644 0:0"), "{text}");
    // Listed, so the device cgroup lets it be opened.
    assert!(text.contains("kvm-opened"), "{text}");
    assert!(text.contains("null-written"), "{text}");

    // Without the entry: no node, and Kapsel's device cgroup denies it.
    b.write(&config(&["sh", "-c", "ls /dev/kvm 2>&1; echo done"]));
    let out = b.oci(&["run", &id("devices2"), "--bundle", b.path()]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("No such file"));

    cfg["linux"]["devices"] = json!([{"path": "/etc/evil", "type": "c", "major": 1, "minor": 3}]);
    b.write(&cfg);
    let out = b.oci(&["run", &id("devices3"), "--bundle", b.path()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("below /dev"));
}

fn sh(cmd: &str) {
    let st = std::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .status()
        .unwrap();
    assert!(st.success(), "{cmd}");
}

#[test]
fn host_mounts_reach_a_bind_mount_by_rootfs_propagation() {
    if skip() {
        return;
    }
    let b = Bundle::new("propagation", &["sleep", "1000"]);
    let shared = b.dir.join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    let s = shared.display();
    sh(&format!(
        "mount -t tmpfs kapsel-test {s} && mount --make-rshared {s}"
    ));
    let mut cfg = config(&["sleep", "1000"]);
    cfg["mounts"]
        .as_array_mut()
        .unwrap()
        .push(json!({"destination": "/mnt", "type": "bind", "source": s.to_string(), "options": ["rbind", "rslave"]}));
    let mut seen = Vec::new();
    for (i, prop) in [None, Some("rprivate")].into_iter().enumerate() {
        if let Some(p) = prop {
            cfg["linux"]["rootfsPropagation"] = json!(p);
        }
        b.write(&cfg);
        let id = format!("{}-{i}", id("propagation"));
        b.ok(&["run", "-d", "--bundle", b.path(), &id]);
        // A mount the host makes after the container started.
        let sub = shared.join(format!("sub{i}"));
        std::fs::create_dir_all(&sub).unwrap();
        sh(&format!(
            "mount -t tmpfs kapsel-test {} && touch {}/file",
            sub.display(),
            sub.display()
        ));
        let out = b.oci(&["exec", &id, "ls", &format!("/mnt/sub{i}")]);
        seen.push(String::from_utf8_lossy(&out.stdout).contains("file"));
        b.ok(&["delete", "--force", &id]);
        sh(&format!("umount {}", sub.display()));
    }
    sh(&format!("umount -l {s}"));
    // runc's default (rslave) lets it in; rprivate keeps it out.
    assert_eq!(seen, vec![true, false]);
}

/// config() with a user namespace mapping container ids 0..65536 to host
/// ids 100000.. (the root is idmapped: its files are host root's).
fn userns_config(args: &[&str]) -> Value {
    let mut cfg = config(args);
    cfg["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "user"}));
    cfg["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    cfg["linux"]["gidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    cfg
}

#[test]
fn a_user_namespace_container_runs_as_its_mapped_root() {
    if skip() {
        return;
    }
    let b = Bundle::new("userns", &["true"]);
    b.write(&userns_config(&["sleep", "1000"]));
    let id = id("userns");
    // create + start: the init, already host uid 100000, must reach the
    // start FIFO in the root-only state directory.
    b.ok(&["create", "--bundle", b.path(), &id]);
    b.ok(&["start", &id]);
    let pid = b.state(&id)["pid"].as_i64().unwrap();
    assert!(eventually(|| std::fs::read_to_string(format!(
        "/proc/{pid}/status"
    ))
    .is_ok_and(|s| s.lines().any(|l| l.starts_with("Uid:\t100000\t")))));
    let out = b.oci(&[
        "exec",
        &id,
        "sh",
        "-c",
        "id -u; cat /proc/self/uid_map; stat -c %u /bin/busybox",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let words: Vec<&str> = text.split_whitespace().collect();
    assert_eq!(words, ["0", "0", "100000", "65536", "0"], "{text}");
    b.ok(&["delete", "--force", &id]);
}

#[test]
fn idmap_bind_mounts_show_host_ids_as_the_containers() {
    if skip() {
        return;
    }
    let b = Bundle::new("idmap", &["true"]);
    let data = b.dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("roots"), "r").unwrap();
    std::fs::write(data.join("users"), "u").unwrap();
    std::os::unix::fs::chown(data.join("users"), Some(1000), Some(1000)).unwrap();
    let script = "stat -c '%n %u' /idmapped/roots /idmapped/users /plain/roots; \
                  touch /idmapped/made && echo made";
    let mut cfg = userns_config(&["sh", "-c", script]);
    let src = data.display().to_string();
    let mounts = cfg["mounts"].as_array_mut().unwrap();
    mounts.push(json!({"destination": "/idmapped", "type": "bind", "source": src, "options": ["bind", "idmap"]}));
    mounts
        .push(json!({"destination": "/plain", "type": "bind", "source": src, "options": ["bind"]}));
    b.write(&cfg);
    let out = b.oci(&["run", &id("idmap"), "--bundle", b.path()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Through the idmapped mount host ids 0 and 1000 are the container's
    // 0 and 1000; through the plain one host root is unmapped (65534).
    assert!(text.contains("/idmapped/roots 0\n"), "{text}");
    assert!(text.contains("/idmapped/users 1000\n"), "{text}");
    assert!(text.contains("/plain/roots 65534\n"), "{text}");
    assert!(text.contains("made"), "{text}");
    // The container's root writes as host root through it.
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(data.join("made")).unwrap().uid(), 0);

    // idmap needs a user namespace.
    let mut cfg = config(&["true"]);
    cfg["mounts"].as_array_mut().unwrap().push(
        json!({"destination": "/idmapped", "type": "bind", "source": src, "options": ["bind", "idmap"]}),
    );
    b.write(&cfg);
    let out = b.oci(&["run", &id("idmap2"), "--bundle", b.path()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("user namespace"));
}

/// `struct seccomp_notif` and `struct seccomp_notif_resp` (linux/seccomp.h).
#[repr(C)]
#[derive(Default)]
struct Notif {
    id: u64,
    pid: u32,
    flags: u32,
    nr: i32,
    arch: u32,
    ip: u64,
    args: [u64; 6],
}
#[repr(C)]
struct NotifResp {
    id: u64,
    val: i64,
    error: i32,
    flags: u32,
}
const SECCOMP_IOCTL_NOTIF_RECV: libc::c_ulong = 0xc050_2100;
const SECCOMP_IOCTL_NOTIF_SEND: libc::c_ulong = 0xc018_2101;

/// A seccomp agent: takes runc's message with the notification descriptor
/// on `listener`, then answers every notified call with EOPNOTSUPP;
/// returns the message and how many calls it answered.
fn agent(listener: std::os::unix::net::UnixListener) -> (Value, u32) {
    use std::os::fd::AsRawFd;
    let (conn, _) = listener.accept().unwrap();
    let mut buf = vec![0u8; 8192];
    let mut control = [0u64; 8];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: recvmsg into locals that outlive the call.
    let (n, fd) = unsafe {
        let mut m: libc::msghdr = std::mem::zeroed();
        m.msg_iov = &mut iov;
        m.msg_iovlen = 1;
        m.msg_control = control.as_mut_ptr().cast();
        m.msg_controllen = std::mem::size_of_val(&control);
        let n = libc::recvmsg(conn.as_raw_fd(), &mut m, 0);
        let cmsg = libc::CMSG_FIRSTHDR(&m);
        assert!(!cmsg.is_null(), "no descriptor from the runtime");
        (
            n,
            std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>()),
        )
    };
    let msg: Value = serde_json::from_slice(&buf[..n as usize]).unwrap();
    let mut answered = 0;
    loop {
        let mut req = Notif::default();
        // SAFETY: the ioctl writes a seccomp_notif into `req`.
        if unsafe { libc::ioctl(fd, SECCOMP_IOCTL_NOTIF_RECV, &mut req) } != 0 {
            break; // the filter's last process is gone
        }
        let resp = NotifResp {
            id: req.id,
            val: 0,
            error: -libc::EOPNOTSUPP,
            flags: 0,
        };
        // SAFETY: the ioctl reads a seccomp_notif_resp.
        if unsafe { libc::ioctl(fd, SECCOMP_IOCTL_NOTIF_SEND, &resp) } == 0 {
            answered += 1;
        }
    }
    // SAFETY: our descriptor from SCM_RIGHTS.
    unsafe { libc::close(fd) };
    (msg, answered)
}

#[test]
fn scmp_act_notify_goes_to_the_seccomp_agent() {
    if skip() {
        return;
    }
    let b = Bundle::new("notify", &["true"]);
    let sock = b.dir.join("agent.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let agent = std::thread::spawn(move || agent(listener));
    let mut cfg = config(&["sh", "-c", "mkdir /a 2>&1; mkdir /b 2>&1; echo done"]);
    cfg["linux"]["seccomp"] = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "listenerPath": sock.display().to_string(),
        "listenerMetadata": "kapsel-test",
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_NOTIFY"}]
    });
    b.write(&cfg);
    let id = id("notify");
    let out = b.oci(&["run", &id, "--bundle", b.path()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (msg, answered) = agent.join().unwrap();
    // The agent's answer came back to the process.
    assert_eq!(text.matches("Operation not supported").count(), 2, "{text}");
    assert_eq!(answered, 2);
    // runc's containerProcessState.
    assert_eq!(msg["fds"], json!(["seccompFd"]));
    assert_eq!(msg["metadata"], "kapsel-test");
    assert_eq!(msg["state"]["id"], id.as_str());
    assert!(msg["pid"].as_i64().unwrap() > 0);
    assert!(!b.dir.join("rootfs/a").exists());
}

#[test]
fn a_user_namespace_sharing_the_hosts_network_gets_sys_bound() {
    if skip() {
        return;
    }
    // As `runc spec --rootless` writes it: a user namespace, no network
    // namespace of its own (sysfs cannot be mounted there).
    let b = Bundle::new("userns-net", &["true"]);
    let mut cfg = userns_config(&["sh", "-c", "id -u; ls /sys/class/net | grep -c ."]);
    cfg["linux"]["namespaces"] = json!([{"type": "pid"}, {"type": "ipc"}, {"type": "uts"},
        {"type": "mount"}, {"type": "user"}]);
    b.write(&cfg);
    let out = b.oci(&["run", &id("userns-net"), "--bundle", b.path()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let host_links = std::fs::read_dir("/sys/class/net").unwrap().count();
    assert_eq!(text, format!("0\n{host_links}\n"));
}
