//! The container runtime against the real kernel: isolation, limits,
//! freezing, exec, networking, system-container boot and stop, cleanup.
//! Needs root and busybox-static; prints `SKIP: reason` otherwise.

mod common;

use common::{cgroup_dirs, eventually, name, Rootfs};
use kapsel_container::{
    cgroup::{CgroupMode, Controller},
    ConsoleSpec, Container, ContainerSpec, Error, ExitStatus, IdMap, VethSpec,
};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn sh(name: &str, root: &Rootfs, script: &str) -> ContainerSpec {
    let mut spec = ContainerSpec::new(
        name,
        &root.path,
        vec!["/bin/sh".into(), "-c".into(), script.into()],
    );
    spec.console = ConsoleSpec::File(root.file("/tmp/console.log"));
    spec
}

/// Runs `script` in a container to its end; returns the status and the console output.
fn run(spec: &ContainerSpec, root: &Rootfs) -> (ExitStatus, String) {
    // The console file is appended to: start each run with an empty one.
    let _ = std::fs::remove_file(root.file("/tmp/console.log"));
    let mut c = Container::start(spec).expect("start");
    let status = c.wait().expect("wait");
    c.cleanup().expect("cleanup");
    let out = std::fs::read_to_string(root.file("/tmp/console.log")).unwrap_or_default();
    (status, out)
}

#[test]
fn exit_status_comes_back() {
    skip_unless_ready!();
    let root = Rootfs::new("status");
    let n = name("status");
    let (status, _) = run(&sh(&n, &root, "exit 42"), &root);
    assert_eq!(status, ExitStatus::Exited(42));
    // A signal from outside ends the init: 128 + signal.
    let mut c = Container::start(&sh(&n, &root, "sleep 100")).unwrap();
    c.signal(libc::SIGKILL).unwrap();
    let s = c.wait().unwrap();
    assert_eq!(s, ExitStatus::Signaled(libc::SIGKILL));
    assert_eq!(s.code(), 137);
    c.cleanup().unwrap();
    assert!(
        cgroup_dirs(&n).is_empty(),
        "cgroup left: {:?}",
        cgroup_dirs(&n)
    );
}

#[test]
fn namespaces_isolate() {
    skip_unless_ready!();
    let root = Rootfs::new("isolate");
    let n = name("isolate");
    let script = "echo first=$(hostname); hostname renamed 2>/dev/null; echo host=$(hostname); echo pid=$$; echo procs=$(ls /proc | grep -c '^[0-9]'); \
                  echo links=$(ls /sys/class/net | tr '\\n' ' ')";
    let (status, out) = run(&sh(&n, &root, script), &root);
    assert_eq!(status, ExitStatus::Exited(0), "{out}");
    assert!(out.contains(&format!("first={n}\n")), "{out}");
    // Renaming needs CAP_SYS_ADMIN, which the default set drops.
    assert!(out.contains(&format!("host={n}\n")), "{out}");
    assert!(out.contains("pid=1\n"), "{out}");
    // sh, and the ls of the pipeline (grep too at most): never the host's hundreds.
    let procs: u32 = out
        .lines()
        .find_map(|l| l.strip_prefix("procs="))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    assert!((1..=4).contains(&procs), "{out}");
    // Only the loopback interface in a container without network.
    assert!(out.contains("links=lo\n"), "{out}");
}

#[test]
fn host_stays_out_of_reach() {
    skip_unless_ready!();
    let root = Rootfs::new("confine");
    let n = name("confine");
    std::fs::write(root.file("/tmp/fake.ko"), b"not a module").unwrap();
    // Each line: a check that must fail inside, and its name.
    let script = r#"
        check() { if sh -c "$2" >/dev/null 2>&1; then echo "ESCAPED:$1"; else echo "denied:$1"; fi; }
        check insmod 'insmod /tmp/fake.ko'
        check mknod-kvm 'mknod /tmp/kvm c 10 232 && cat /tmp/kvm'
        check dev-kvm 'test -e /dev/kvm'
        check mount-vda 'mount /dev/vda /mnt'
        check mount-proc 'mount -t proc proc /mnt'
        check mount-tmpfs 'mount -t tmpfs none /mnt'
        check proc-sys-write 'echo 1 > /proc/sys/kernel/sysrq'
        check sys-write 'echo 1 > /sys/kernel/uevent_helper'
        for f in /proc/kcore /proc/keys /proc/sysrq-trigger /proc/timer_list; do
            if [ -e $f ]; then
                if [ "$(stat -c %t:%T $f)" = 1:3 ]; then echo masked:$f; else echo ESCAPED:$f; fi
            fi
        done
        check settime 'date -s 2001-01-01; test $(date +%Y) = 2001'
        check kvm-open 'cat /sys/dev/char/10:232/uevent && mknod /dev/kvm c 10 232'
        grep -E '^(CapBnd|Seccomp|NoNewPrivs):' /proc/self/status
        echo done
    "#;
    let (status, out) = run(&sh(&n, &root, script), &root);
    assert_eq!(status, ExitStatus::Exited(0), "{out}");
    assert!(out.contains("done"), "{out}");
    assert!(!out.contains("ESCAPED"), "{out}");
    assert_eq!(out.matches("denied:").count(), 10, "{out}");
    // Masked files that this kernel has (not all kernels have kcore or sysrq).
    let present = [
        "/proc/kcore",
        "/proc/keys",
        "/proc/sysrq-trigger",
        "/proc/timer_list",
    ]
    .iter()
    .filter(|f| Path::new(f).exists())
    .count();
    assert!(present > 0);
    assert_eq!(out.matches("masked:").count(), present, "{out}");
    assert!(out.contains("Seccomp:\t2"), "{out}");
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    let bnd = out
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:\t"))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        .unwrap();
    assert_eq!(bnd, kapsel_container::caps::DEFAULT.0, "{out}");
}

#[test]
fn fork_bomb_stops_at_the_pids_limit() {
    skip_unless_ready!();
    let root = Rootfs::new("pids");
    let n = name("pids");
    let mut spec = sh(
        &n,
        &root,
        // The bomb runs in a child shell, which dies when fork fails; the
        // outer one reports with builtins only (no fork left to spare).
        "sh -c 'i=0; while [ $i -lt 60 ]; do sleep 30 & i=$((i+1)); echo $i > /tmp/started; done' \
         2>/dev/null; read n < /tmp/started; echo started=$n; exit 0",
    );
    spec.pids = Some(16);
    let (status, out) = run(&spec, &root);
    assert_eq!(status, ExitStatus::Exited(0), "{out}");
    let running: u32 = out
        .lines()
        .find_map(|l| l.strip_prefix("started="))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    assert!(running <= 16, "{out}");
    assert!(
        running >= 8,
        "the limit, not something else, should stop it: {out}"
    );
}

#[test]
fn memory_hog_is_oom_killed_inside() {
    skip_unless_ready!();
    let root = Rootfs::new("oom");
    let n = name("oom");
    let mut spec = sh(
        &n,
        &root,
        "dd if=/dev/zero of=/dev/null bs=200M count=1 2>/dev/null; echo dd=$?; echo init-alive",
    );
    spec.memory = Some(32 << 20);
    let mut c = Container::start(&spec).unwrap();
    let status = c.wait().unwrap();
    let kills = c.cgroup().oom_kills().unwrap();
    c.cleanup().unwrap();
    let out = std::fs::read_to_string(root.file("/tmp/console.log")).unwrap();
    assert_eq!(status, ExitStatus::Exited(0), "{out}");
    assert!(
        out.contains("dd=137"),
        "dd should be SIGKILLed by the OOM killer: {out}"
    );
    assert!(out.contains("init-alive"), "{out}");
    assert!(kills >= 1, "oom_kill count {kills}");
    // Without the limit the same allocation succeeds: the limit did it.
    let (_, out) = run(
        &sh(
            &n,
            &root,
            "dd if=/dev/zero of=/dev/null bs=200M count=1 2>/dev/null; echo dd=$?",
        ),
        &root,
    );
    assert!(out.contains("dd=0"), "{out}");
}

#[test]
fn freeze_and_thaw() {
    skip_unless_ready!();
    let root = Rootfs::new("freeze");
    let n = name("freeze");
    let spec = sh(
        &n,
        &root,
        "i=0; while :; do i=$((i+1)); echo $i > /tmp/tick; usleep 5000; done",
    );
    let mut c = Container::start(&spec).unwrap();
    let tick = || {
        std::fs::read_to_string(root.file("/tmp/tick"))
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    assert!(eventually(5, || tick() > 2), "the counter never ran");
    c.freeze().unwrap();
    assert!(c.cgroup().is_frozen().unwrap());
    let frozen_at = tick();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(tick(), frozen_at, "the counter moved while frozen");
    assert!(c.memory_usage().unwrap() > 0);
    c.thaw().unwrap();
    assert!(
        eventually(5, || tick() > frozen_at + 2),
        "the counter did not resume"
    );
    // A frozen container still stops (it is thawed for the signal).
    c.freeze().unwrap();
    let _ = c.stop(Duration::from_millis(200));
    assert!(c.try_wait().unwrap().is_some());
    c.cleanup().unwrap();
    assert!(cgroup_dirs(&n).is_empty(), "{:?}", cgroup_dirs(&n));
}

#[test]
fn exec_joins_the_container() {
    skip_unless_ready!();
    let root = Rootfs::new("exec");
    let n = name("exec");
    let c = Container::start(&sh(&n, &root, "exec sleep 100")).unwrap();
    let check = |script: &str| sh_in(&c, script);
    assert_eq!(
        check(&format!("test \"$(hostname)\" = {n}")),
        ExitStatus::Exited(0)
    );
    assert_eq!(
        check("test \"$(hostname)\" = not-it"),
        ExitStatus::Exited(1)
    );
    assert_eq!(
        check("grep -q sleep /proc/1/cmdline"),
        ExitStatus::Exited(0)
    );
    assert_eq!(
        check("grep -q '^Seccomp:.2' /proc/self/status"),
        ExitStatus::Exited(0)
    );
    // In the init's cgroups, every hierarchy of them.
    assert_eq!(
        check("test \"$(cat /proc/self/cgroup)\" = \"$(cat /proc/1/cgroup)\" && ! grep -q /.. /proc/self/cgroup"),
        ExitStatus::Exited(0)
    );
    assert_eq!(check("exit 5"), ExitStatus::Exited(5));
    assert!(c.exec(&["/no/such/program".into()]).is_err());
    c.cleanup().unwrap();
}

#[test]
fn busybox_init_boots_and_powers_off() {
    skip_unless_ready!();
    let root = Rootfs::new("init");
    let n = name("init");
    std::fs::write(
        root.file("/etc/inittab"),
        "::sysinit:/bin/touch /tmp/booted\n::respawn:/bin/sleep 1000\n::shutdown:/bin/touch /tmp/shutdown-ran\n",
    )
    .unwrap();
    let mut spec = ContainerSpec::new(&n, &root.path, vec!["/sbin/init".into()]);
    spec.console = ConsoleSpec::File(root.file("/tmp/console.log"));
    let mut c = Container::start(&spec).unwrap();
    assert_eq!(
        c.stop_signal(),
        libc::SIGUSR2,
        "busybox powers off on SIGUSR2"
    );
    assert!(
        eventually(5, || root.file("/tmp/booted").exists()),
        "init did not run sysinit"
    );
    let t = Instant::now();
    let status = c.stop(Duration::from_secs(15)).unwrap();
    assert_eq!(status, ExitStatus::Exited(0));
    assert!(t.elapsed() < Duration::from_secs(15));
    assert!(
        root.file("/tmp/shutdown-ran").exists(),
        "the shutdown actions did not run"
    );
    c.cleanup().unwrap();
    assert!(cgroup_dirs(&n).is_empty());
}

/// A network namespace made by the test, deleted on drop.
struct Netns(String);

impl Netns {
    fn new(name: &str) -> Option<Netns> {
        let ok = Command::new("ip")
            .args(["netns", "add", name])
            .status()
            .ok()?
            .success();
        ok.then(|| Netns(name.to_string()))
    }
    fn ip(&self, args: &str) -> bool {
        Command::new("ip")
            .args(["netns", "exec", &self.0, "ip"])
            .args(args.split_whitespace())
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[test]
fn veth_carries_a_ping() {
    skip_unless_ready!();
    let root = Rootfs::new("veth");
    let n = name("veth");
    let host_if = format!("kv{}", std::process::id() % 100_000);
    let Some(ns) = Netns::new(&format!("kapsel-test-{}", std::process::id())) else {
        println!("SKIP: ip netns add failed (iproute2 missing?)");
        return;
    };
    let mut spec = sh(&n, &root, "exec sleep 100");
    spec.network = Some(VethSpec {
        host_name: host_if.clone(),
        mac: Some([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]),
    });
    let c = Container::start(&spec).unwrap();
    assert!(Path::new("/sys/class/net").join(&host_if).exists());
    // The test's own namespace plays the host side of the link.
    assert!(Command::new("ip")
        .args(["link", "set", &host_if, "netns", &ns.0])
        .status()
        .unwrap()
        .success());
    assert!(ns.ip(&format!("addr add 10.199.77.1/24 dev {host_if}")));
    assert!(ns.ip(&format!("link set {host_if} up")));
    let run = |script: &str| sh_in(&c, script);
    assert_eq!(
        run("test $(cat /sys/class/net/eth0/address) = 52:54:00:12:34:56"),
        ExitStatus::Exited(0)
    );
    assert_eq!(
        run("ip addr add 10.199.77.2/24 dev eth0 && ping -c 1 -W 3 10.199.77.1 >/dev/null"),
        ExitStatus::Exited(0)
    );
    // And a peer that is not there does not answer: the ping above was real.
    assert_ne!(
        run("ping -c 1 -W 1 10.199.77.3 >/dev/null"),
        ExitStatus::Exited(0)
    );
    c.cleanup().unwrap();
    assert!(
        eventually(3, || !ns.ip(&format!("link show {host_if}"))),
        "the veth outlived the container"
    );
    assert!(cgroup_dirs(&n).is_empty());
}

#[test]
fn failed_start_leaves_nothing_behind() {
    skip_unless_ready!();
    let root = Rootfs::new("fail");
    let n = name("fail");
    let host_if = format!("kf{}", std::process::id() % 100_000);
    let mounts_before = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .count();
    // An init that passes every check but cannot be executed (a script
    // whose interpreter is missing): it fails in the child's last step,
    // after the cgroup and the veth were made.
    std::fs::write(root.file("/bin/broken"), "#!/no/such/interpreter\n").unwrap();
    std::fs::set_permissions(
        root.file("/bin/broken"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let mut spec = ContainerSpec::new(&n, &root.path, vec!["/bin/broken".into()]);
    spec.network = Some(VethSpec {
        host_name: host_if.clone(),
        mac: None,
    });
    spec.memory = Some(64 << 20);
    let err = Container::start(&spec).unwrap_err();
    assert!(matches!(err, Error::Setup { .. }), "{err}");
    assert!(err.to_string().contains("executing the init"), "{err}");
    assert_eq!(err.exit_code(), 1);
    assert!(cgroup_dirs(&n).is_empty(), "{:?}", cgroup_dirs(&n));
    assert!(!Path::new("/sys/class/net").join(&host_if).exists());
    let mounts_after = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .count();
    assert_eq!(mounts_before, mounts_after);
    // Bad input is refused before anything exists.
    let bad = [
        ContainerSpec::new(&n, "/nonexistent-root", vec!["/bin/sh".into()]),
        ContainerSpec::new(&n, root.file("/bin/busybox"), vec!["/bin/sh".into()]),
        ContainerSpec::new(&n, &root.path, vec!["/bin/nothing".into()]),
        ContainerSpec::new(&n, &root.path, vec![]),
        ContainerSpec::new("bad/name", &root.path, vec!["/bin/sh".into()]),
    ];
    for spec in &bad {
        let e = Container::start(spec).unwrap_err();
        assert_eq!(e.exit_code(), 2, "{e}");
        assert!(cgroup_dirs(&n).is_empty());
    }
    std::fs::write(root.file("/bin/script"), "#!/bin/sh\n").unwrap();
    let e = Container::start(&ContainerSpec::new(
        &n,
        &root.path,
        vec!["/bin/script".into()],
    ))
    .unwrap_err();
    assert!(e.to_string().contains("not executable"), "{e}");
    // A root whose /proc is a link (to the host's /tmp) is refused up front.
    std::fs::remove_dir(root.file("/proc")).unwrap();
    std::os::unix::fs::symlink("/tmp", root.file("/proc")).unwrap();
    let e = Container::start(&sh(&n, &root, "exit 0")).unwrap_err();
    assert_eq!(e.exit_code(), 2, "{e}");
    assert!(e.to_string().contains("empty directory"), "{e}");
    std::fs::remove_file(root.file("/proc")).unwrap();
    std::fs::create_dir(root.file("/proc")).unwrap();
    // A name in use is refused while the first container runs.
    let first = Container::start(&sh(&n, &root, "exec sleep 100")).unwrap();
    let e = Container::start(&sh(&n, &root, "exit 0")).unwrap_err();
    assert!(e.to_string().contains("already running"), "{e}");
    first.cleanup().unwrap();
    assert!(cgroup_dirs(&n).is_empty());
}

#[test]
fn user_namespace_maps_root() {
    skip_unless_ready!();
    let root = Rootfs::new("userns");
    let n = name("userns");
    let mut spec = sh(
        &n,
        &root,
        "echo uid=$(id -u); cat /proc/self/uid_map; touch /tmp/made-inside",
    );
    spec.user_map = Some(IdMap {
        host_uid: 200000,
        host_gid: 200000,
        count: 65536,
    });
    // The mapped root must own what it writes to.
    std::os::unix::fs::chown(root.file("/tmp"), Some(200000), Some(200000)).unwrap();
    let (status, out) = run(&spec, &root);
    assert_eq!(status, ExitStatus::Exited(0), "{out}");
    assert!(out.contains("uid=0"), "{out}");
    assert!(
        out.split_whitespace()
            .collect::<Vec<_>>()
            .windows(3)
            .any(|w| w == ["0", "200000", "65536"]),
        "{out}"
    );
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(root.file("/tmp/made-inside"))
            .unwrap()
            .uid(),
        200000
    );
    // exec joins the user namespace too.
    let mut spec = sh(&n, &root, "exec sleep 100");
    spec.user_map = Some(IdMap {
        host_uid: 200000,
        host_gid: 200000,
        count: 65536,
    });
    let c = Container::start(&spec).unwrap();
    let st = c
        .exec(&[
            "/bin/sh".into(),
            "-c".into(),
            "test $(id -u) = 0 && touch /tmp/exec-inside".into(),
        ])
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(st, ExitStatus::Exited(0));
    assert_eq!(
        std::fs::metadata(root.file("/tmp/exec-inside"))
            .unwrap()
            .uid(),
        200000
    );
    c.cleanup().unwrap();
}

#[test]
fn idmapped_root_belongs_to_the_container() {
    skip_unless_ready!();
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let root = Rootfs::new("idmap");
    let n = name("idmap");
    // A host-root file only root may read, and one of an id outside the map.
    std::fs::write(root.file("/etc/secret"), "inside-only\n").unwrap();
    std::fs::set_permissions(root.file("/etc/secret"), PermissionsExt::from_mode(0o600)).unwrap();
    std::fs::write(root.file("/etc/foreign"), "foreign\n").unwrap();
    std::fs::set_permissions(root.file("/etc/foreign"), PermissionsExt::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(root.file("/etc/foreign"), Some(4_000_000), Some(4_000_000)).unwrap();
    let script = "echo uid=$(id -u); stat -c 'owner=%u:%g' /; cat /etc/secret; \
                  cat /etc/foreign || echo foreign-denied; \
                  mknod /tmp/blk b 8 0 || echo mknod-denied; \
                  mkdir /tmp/made && touch /tmp/made/file && chown 1000:1000 /tmp/made/file; \
                  grep -E '^(Uid|CapEff)' /proc/self/status";
    let mut spec = sh(&n, &root, script);
    spec.user_map = Some(IdMap {
        host_uid: 300000,
        host_gid: 300000,
        count: 65536,
    });
    spec.idmap_root = true;
    spec.capabilities = spec.capabilities.with(kapsel_container::caps::cap::MKNOD);
    let (status, out) = run(&spec, &root);
    assert_eq!(status, ExitStatus::Exited(0), "{out}");
    assert!(out.contains("uid=0\n"), "{out}");
    // Host root's files are the container root's.
    assert!(out.contains("owner=0:0\n"), "{out}");
    assert!(out.contains("inside-only\n"), "{out}");
    // ... but a host id outside the map is nobody: not even root inside
    // may read it, and no block device can be made.
    assert!(out.contains("foreign-denied"), "{out}");
    assert!(out.contains("mknod-denied"), "{out}");
    // On disk, what the container made is owned by the ids it wrote,
    // not shifted ones.
    let made = std::fs::metadata(root.file("/tmp/made")).unwrap();
    assert_eq!((made.uid(), made.gid()), (0, 0));
    let file = std::fs::metadata(root.file("/tmp/made/file")).unwrap();
    assert_eq!((file.uid(), file.gid()), (1000, 1000));
    assert!(!root.file("/tmp/blk").exists());
    assert!(cgroup_dirs(&n).is_empty());
    // The root's mount never reached the host.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(root.path.to_str().unwrap()), "{mounts}");

    // A root on a file system without idmapped mounts (ramfs) is refused
    // as bad input, naming the root and the fix; nothing is left.
    let ramfs = std::env::temp_dir().join(format!("kapsel-ramfs-{}", std::process::id()));
    std::fs::create_dir_all(&ramfs).unwrap();
    assert!(Command::new("mount")
        .args(["-t", "ramfs", "ramfs"])
        .arg(&ramfs)
        .status()
        .unwrap()
        .success());
    let copied = Command::new("cp")
        .arg("-a")
        .arg(root.path.join("."))
        .arg(&ramfs)
        .status()
        .unwrap();
    let on_ramfs = ContainerSpec {
        root: ramfs.clone(),
        ..spec.clone()
    };
    let e = copied.success().then(|| Container::start(&on_ramfs));
    let _ = Command::new("umount").arg(&ramfs).status();
    let _ = std::fs::remove_dir(&ramfs);
    let e = e.expect("copying the root onto ramfs").unwrap_err();
    assert_eq!(e.exit_code(), 2, "{e}");
    let msg = e.to_string();
    println!("{msg}");
    assert!(
        msg.contains(ramfs.to_str().unwrap()) && msg.contains("idmapped"),
        "{msg}"
    );
    assert!(cgroup_dirs(&n).is_empty());
    // The cgroup2 directory is handed to the mapped root while it runs.
    let mut spec = sh(&n, &root, "exec sleep 100");
    spec.user_map = Some(IdMap {
        host_uid: 300000,
        host_gid: 300000,
        count: 65536,
    });
    spec.idmap_root = true;
    let c = Container::start(&spec).unwrap();
    if let Some(v2) = c.cgroup().v2_dir() {
        for f in [
            "",
            "cgroup.procs",
            "cgroup.subtree_control",
            "cgroup.threads",
        ] {
            let m = std::fs::metadata(v2.join(f)).unwrap();
            assert_eq!(
                (m.uid(), m.gid()),
                (300000, 300000),
                "{}",
                v2.join(f).display()
            );
        }
        // The limits stay the host's.
        let m = std::fs::metadata(v2.join("cgroup.max.depth")).unwrap();
        assert_eq!(m.uid(), 0);
    }
    c.cleanup().unwrap();
    assert!(cgroup_dirs(&n).is_empty());
}

#[test]
fn limits_the_host_cannot_enforce_are_refused() {
    skip_unless_ready!();
    let mode = CgroupMode::detect().unwrap();
    println!("cgroups: {mode:?}");
    let root = Rootfs::new("limits");
    let n = name("limits");
    let mut spec = sh(&n, &root, "cat /proc/self/cgroup");
    spec.memory = Some(64 << 20);
    spec.cpus = Some(0.5);
    spec.pids = Some(100);
    if mode.has(Controller::Memory) && mode.has(Controller::Cpu) && mode.has(Controller::Pids) {
        let mut c = Container::start(&spec).unwrap();
        let dirs: Vec<_> = c.cgroup().paths().map(Path::to_path_buf).collect();
        let read = |file: &str| {
            dirs.iter()
                .map(|d| d.join(file))
                .find(|p| p.exists())
                .map(|p| std::fs::read_to_string(p).unwrap())
        };
        if mode.is_unified() {
            assert_eq!(
                read("memory.max").unwrap().trim(),
                (64u64 << 20).to_string()
            );
            assert_eq!(read("cpu.max").unwrap().trim(), "50000 100000");
        } else {
            assert_eq!(
                read("memory.limit_in_bytes").unwrap().trim(),
                (64u64 << 20).to_string()
            );
            assert_eq!(read("cpu.cfs_quota_us").unwrap().trim(), "50000");
            let devices = read("devices.list").unwrap();
            assert!(
                !devices.contains("a *:* rwm") && !devices.contains("c 10:232"),
                "{devices}"
            );
        }
        assert_eq!(read("pids.max").unwrap().trim(), "100");
        c.wait().unwrap();
        c.cleanup().unwrap();
    }
    // A controller the host lacks is an input error, before anything exists.
    let lacking = CgroupMode::Legacy {
        mounts: vec![],
        hybrid_v2: None,
    };
    let e = Container::start_in(&spec, &lacking).unwrap_err();
    assert_eq!(e.exit_code(), 2, "{e}");
    assert!(e.to_string().contains("controller"), "{e}");
    assert!(cgroup_dirs(&n).is_empty());
}

/// The cgroup v2 path (directory, cgroup.freeze, cgroup2 mounted inside)
/// on the v2 hierarchy of a hybrid host, where it holds no controllers;
/// on a pure v2 host every other test already takes this path.
#[test]
fn cgroup_v2_freezer_on_the_unified_hierarchy() {
    skip_unless_ready!();
    let unified = Path::new("/sys/fs/cgroup/unified");
    if CgroupMode::detect().unwrap().is_unified() {
        println!("SKIP: pure cgroup v2 host: the other tests cover v2");
        return;
    }
    if !unified.join("cgroup.controllers").exists() {
        println!("SKIP: no cgroup v2 hierarchy at {}", unified.display());
        return;
    }
    let mode = CgroupMode::Unified {
        root: unified.to_path_buf(),
        base: unified.to_path_buf(),
        controllers: Vec::new(),
    };
    let root = Rootfs::new("v2");
    let n = name("v2");
    let mut spec = sh(
        &n,
        &root,
        "i=0; while :; do i=$((i+1)); echo $i > /tmp/tick; usleep 5000; done",
    );
    // CAP_MKNOD given back, so that only the eBPF device filter stands
    // between the container and a /dev/kvm node it makes itself.
    spec.capabilities = kapsel_container::caps::DEFAULT.with(kapsel_container::caps::cap::MKNOD);
    let mut c = Container::start_in(&spec, &mode).unwrap();
    let dir = unified.join("kapsel").join(&n);
    assert!(dir.is_dir());
    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap();
    assert!(procs.lines().any(|p| p == c.pid().to_string()), "{procs}");
    let tick = || {
        std::fs::read_to_string(root.file("/tmp/tick"))
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    assert!(eventually(5, || tick() > 2));
    c.freeze().unwrap();
    assert!(std::fs::read_to_string(dir.join("cgroup.events"))
        .unwrap()
        .contains("frozen 1"));
    let at = tick();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(tick(), at);
    c.thaw().unwrap();
    assert!(eventually(5, || tick() > at + 2));
    // Inside, /sys/fs/cgroup is the container's own cgroup2 (namespaced root).
    let st = c
        .exec(&[
            "/bin/sh".into(),
            "-c".into(),
            "grep -q '^0::/$' /proc/self/cgroup && test -e /sys/fs/cgroup/cgroup.freeze".into(),
        ])
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(st, ExitStatus::Exited(0));
    let sh_in = |script: &str| sh_in(&c, script);
    // The filter lets the allowed devices through (a new node of /dev/null
    // works) and refuses the rest, even to root with CAP_MKNOD.
    assert_eq!(
        sh_in("mknod /tmp/null2 c 1 3 && echo x > /tmp/null2"),
        ExitStatus::Exited(0)
    );
    assert_eq!(
        sh_in("mknod /tmp/kvm c 10 232 2>&1 | grep -q 'Operation not permitted'"),
        ExitStatus::Exited(0)
    );
    assert!(!root.file("/tmp/kvm").exists());
    c.kill().unwrap();
    c.cleanup().unwrap();
    assert!(!dir.exists());
}

/// Runs `script` with /bin/sh in the running container; its exit status.
fn sh_in(c: &Container, script: &str) -> ExitStatus {
    c.exec(&["/bin/sh".into(), "-c".into(), script.into()])
        .unwrap()
        .wait()
        .unwrap()
}

/// A systemd init reaches multi-user.target within 60 s and reports the
/// system `running`; the console log (file `console`) tells why not.
fn boots_to_running(c: &Container, console: &Path) {
    let log = || std::fs::read_to_string(console).unwrap_or_default();
    let booted = eventually(60, || {
        sh_in(c, "systemctl is-active --quiet multi-user.target") == ExitStatus::Exited(0)
    });
    assert!(
        booted,
        "multi-user.target not active within 60 s:\n{}",
        log()
    );
    assert_eq!(
        sh_in(
            c,
            "test \"$(systemctl is-system-running --wait)\" = running"
        ),
        ExitStatus::Exited(0),
        "{}",
        log()
    );
}

/// The init powers off with status 0 when stopped, and the cleanup
/// removes its cgroup directory `dir`; the console file goes too.
fn powers_off_and_leaves_nothing(mut c: Container, dir: &Path, console: &Path) {
    assert_eq!(
        c.stop(Duration::from_secs(10)).unwrap(),
        ExitStatus::Exited(0)
    );
    c.cleanup().unwrap();
    assert!(!dir.exists(), "{} left", dir.display());
    let _ = std::fs::remove_file(console);
}

/// The host's cgroup v2 mode, or on a hybrid host its v2 hierarchy taken as
/// if it were the host's, and that hierarchy's root; None (with a `SKIP:`
/// line) when not root or there is no v2 hierarchy.
fn v2_tree() -> Option<(CgroupMode, PathBuf)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("SKIP: containers need root");
        return None;
    }
    let host = CgroupMode::detect().unwrap();
    let mode = if host.is_unified() {
        host
    } else {
        let unified = Path::new("/sys/fs/cgroup/unified");
        if !unified.join("cgroup.controllers").exists() {
            println!("SKIP: no cgroup v2 hierarchy at {}", unified.display());
            return None;
        }
        CgroupMode::Unified {
            root: unified.to_path_buf(),
            base: unified.to_path_buf(),
            controllers: Vec::new(),
        }
    };
    let CgroupMode::Unified { root, .. } = &mode else {
        unreachable!()
    };
    Some((mode.clone(), root.clone()))
}

/// systemd in a cgroup2 tree as on a pure v2 host (the host's own layout
/// there; on a hybrid host its v2 hierarchy taken as if it were the
/// host's): born into its cgroup, it makes its tree below (init.scope,
/// system.slice), the device filter on the container's directory still
/// holds for what runs inside it, it powers off with status 0, and the
/// whole tree is removed.
#[test]
fn systemd_in_a_v2_tree() {
    let Some((mode, v2)) = v2_tree() else {
        return;
    };
    let v2 = &v2;
    let Some(cache) = common::debian_root() else {
        return;
    };
    let ovl = common::Overlay::new(&cache, "v2sd");
    let n = name("v2sd");
    let mut spec = ContainerSpec::new(&n, ovl.root(), vec!["/sbin/init".into()]);
    let console = std::env::temp_dir().join(format!("{n}.console"));
    spec.console = ConsoleSpec::File(console.clone());
    // CAP_MKNOD given back: only the device filter stands before /dev/kvm.
    spec.capabilities = kapsel_container::caps::DEFAULT.with(kapsel_container::caps::cap::MKNOD);
    assert!(spec.init_is_systemd());
    let c = Container::start_in(&spec, &mode).unwrap();
    boots_to_running(&c, &console);
    let dir = v2.join("kapsel").join(&n);
    for sub in ["init.scope", "system.slice"] {
        assert!(dir.join(sub).is_dir(), "{sub} in {}", dir.display());
    }
    // exec joined the init's group, not the namespace root.
    assert_eq!(
        sh_in(&c, "grep -qx '0::/init.scope' /proc/self/cgroup"),
        ExitStatus::Exited(0)
    );
    // (The /tmp tmpfs is nodev: a node made there cannot be opened anyway.)
    assert_eq!(
        sh_in(&c, "mknod /tmp/null2 c 1 3"),
        ExitStatus::Exited(0),
        "an allowed node can be made"
    );
    assert_eq!(
        sh_in(
            &c,
            "mknod /tmp/kvm c 10 232 2>&1 | grep -q 'Operation not permitted'"
        ),
        ExitStatus::Exited(0)
    );
    powers_off_and_leaves_nothing(c, &dir, &console);
}

/// systemd as root of a user namespace on an idmapped copy of the Debian
/// root, in a cgroup2 tree handed to the mapped root (the pure v2 host's
/// path, on this host's v2 hierarchy where it has one).
#[test]
fn unprivileged_systemd_in_a_v2_tree() {
    use std::os::unix::fs::MetadataExt;
    let Some((mode, v2)) = v2_tree() else {
        return;
    };
    let v2 = &v2;
    let Some(cache) = common::debian_root() else {
        return;
    };
    let copy = common::CopiedRoot::new(&cache, "v2usd");
    let n = name("v2usd");
    let mut spec = ContainerSpec::new(&n, &copy.0, vec!["/sbin/init".into()]);
    let console = std::env::temp_dir().join(format!("{n}.console"));
    spec.console = ConsoleSpec::File(console.clone());
    spec.user_map = Some(IdMap {
        host_uid: 300000,
        host_gid: 300000,
        count: 65536,
    });
    spec.idmap_root = true;
    let c = Container::start_in(&spec, &mode).unwrap();
    boots_to_running(&c, &console);
    let dir = v2.join("kapsel").join(&n);
    for f in [
        "",
        "cgroup.procs",
        "cgroup.subtree_control",
        "init.scope",
        "system.slice",
    ] {
        let m = std::fs::metadata(dir.join(f)).unwrap();
        assert_eq!(
            (m.uid(), m.gid()),
            (300000, 300000),
            "{f} in {}",
            dir.display()
        );
    }
    // Root inside owns the root (idmapped); the host's disk keeps host root.
    assert_eq!(
        sh_in(
            &c,
            "test \"$(stat -c %u:%g /usr/bin)\" = 0:0 && touch /var/made-inside"
        ),
        ExitStatus::Exited(0)
    );
    assert_eq!(
        std::fs::metadata(copy.0.join("var/made-inside"))
            .unwrap()
            .uid(),
        0
    );
    powers_off_and_leaves_nothing(c, &dir, &console);
}

/// The seccomp profile is a wall of its own: with CAP_SYS_MODULE given
/// back, init_module still fails with EPERM, and only because of the
/// profile (without it the kernel gets to reject the file itself).
#[test]
fn seccomp_denies_what_capabilities_would_allow() {
    skip_unless_ready!();
    let root = Rootfs::new("seccomp");
    let n = name("seccomp");
    std::fs::write(root.file("/tmp/fake.ko"), b"not a module at all").unwrap();
    let mut spec = sh(&n, &root, "insmod /tmp/fake.ko; echo rc=$?");
    spec.capabilities =
        kapsel_container::caps::DEFAULT.with(kapsel_container::caps::cap::SYS_MODULE);
    let (_, with_profile) = run(&spec, &root);
    assert!(
        with_profile.contains("Operation not permitted"),
        "{with_profile}"
    );
    spec.seccomp = false;
    let (_, without) = run(&spec, &root);
    // The kernel's own answer: ENOEXEC for a bad module, or ENOSYS on a
    // kernel without modules (like this project's CI kernel).
    assert!(without.contains("rc="), "{without}");
    assert!(!without.contains("Operation not permitted"), "{without}");
}

#[test]
fn pty_console() {
    skip_unless_ready!();
    use std::io::Read;
    let root = Rootfs::new("pty");
    let n = name("pty");
    let mut spec = sh(
        &n,
        &root,
        "echo tty=$(tty); echo via-console > /dev/console; exit 3",
    );
    spec.console = ConsoleSpec::Pty;
    let mut c = Container::start(&spec).unwrap();
    let mut master = c.console().unwrap().try_clone().unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    // The slave closes when the init exits: EIO ends the read loop.
    while let Ok(k) = master.read(&mut buf) {
        if k == 0 {
            break;
        }
        out.extend_from_slice(&buf[..k]);
    }
    assert_eq!(c.wait().unwrap(), ExitStatus::Exited(3));
    c.cleanup().unwrap();
    let out = String::from_utf8_lossy(&out);
    assert!(out.contains("tty=/dev/console"), "{out}");
    assert!(out.contains("via-console"), "{out}");
}

/// Two containers on one bridge (in a namespace the test makes, as the
/// daemon will attach host sides to a switch) reach each other.
#[test]
fn two_containers_on_a_bridge() {
    skip_unless_ready!();
    let root = Rootfs::new("bridge");
    let Some(ns) = Netns::new(&format!("kapsel-br-{}", std::process::id())) else {
        println!("SKIP: ip netns add failed (iproute2 missing?)");
        return;
    };
    assert!(ns.ip("link add br0 type bridge"));
    assert!(ns.ip("link set br0 up"));
    let mut containers = Vec::new();
    for i in 1..=2 {
        let host_if = format!("kb{}-{i}", std::process::id() % 100_000);
        let mut spec = sh(&name(&format!("br{i}")), &root, "exec sleep 100");
        spec.network = Some(VethSpec {
            host_name: host_if.clone(),
            mac: None,
        });
        let c = Container::start(&spec).unwrap();
        assert!(Command::new("ip")
            .args(["link", "set", &host_if, "netns", &ns.0])
            .status()
            .unwrap()
            .success());
        assert!(ns.ip(&format!("link set {host_if} master br0")));
        assert!(ns.ip(&format!("link set {host_if} up")));
        let st = c
            .exec(&[
                "/bin/sh".into(),
                "-c".into(),
                format!("ip addr add 10.199.78.{i}/24 dev eth0"),
            ])
            .unwrap()
            .wait()
            .unwrap();
        assert_eq!(st, ExitStatus::Exited(0));
        containers.push(c);
    }
    let ping = |from: &Container, to: u8| {
        from.exec(&[
            "/bin/sh".into(),
            "-c".into(),
            format!("ping -c 1 -W 3 10.199.78.{to} >/dev/null"),
        ])
        .unwrap()
        .wait()
        .unwrap()
    };
    assert_eq!(ping(&containers[0], 2), ExitStatus::Exited(0));
    assert_eq!(ping(&containers[1], 1), ExitStatus::Exited(0));
    for c in containers {
        c.cleanup().unwrap();
    }
}
