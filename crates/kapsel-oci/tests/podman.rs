//! A real client: Debian's podman (through conmon) with
//! `--runtime target/.../kapsel-oci`, on a busybox image imported from a
//! tarball (no registry). Podman's storage is private to the test.
//!
//! On this kind of host (no systemd as PID 1, cgroup v1 or hybrid)
//! podman needs `--cgroup-manager=cgroupfs --events-backend=file`. The
//! rlimits are given explicitly: podman's default RLIMIT_NOFILE of
//! 1048576 needs CAP_SYS_RESOURCE, which a host inside a container may
//! not have (runc fails the same way there).

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const KAPSEL_OCI: &str = env!("CARGO_BIN_EXE_kapsel-oci");
const BUSYBOX: &str = "/bin/busybox";
const IMAGE: &str = "localhost/kapsel-oci-busybox";

struct Podman {
    dir: PathBuf,
}

impl Podman {
    fn new() -> Option<Podman> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            println!("SKIP: podman with kapsel-oci needs root");
            return None;
        }
        if Command::new("podman").arg("--version").output().is_err() {
            println!(
                "SKIP: podman is not installed (apt-get install podman; scripts/setup.sh does)"
            );
            return None;
        }
        if !Path::new(BUSYBOX).exists() {
            println!("SKIP: {BUSYBOX} missing (apt-get install busybox-static)");
            return None;
        }
        // One directory (storage, run root) per test: they run in parallel.
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("kapsel-oci-podman-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let root = dir.join("rootfs");
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::copy(BUSYBOX, root.join("bin/busybox")).unwrap();
        let list = Command::new(BUSYBOX).arg("--list").output().unwrap();
        for applet in String::from_utf8_lossy(&list.stdout).lines() {
            if applet != "busybox" {
                let _ = symlink("busybox", root.join("bin").join(applet));
            }
        }
        let tar = dir.join("busybox.tar");
        let made = Command::new("tar")
            .arg("-C")
            .arg(&root)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status()
            .unwrap();
        assert!(made.success());
        let p = Podman { dir };
        let out = p.podman(&["import", tar.to_str().unwrap(), IMAGE]);
        assert!(
            out.status.success(),
            "podman import: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(p)
    }

    fn podman(&self, args: &[&str]) -> Output {
        // Output in files: a detached container's conmon holds pipes open.
        let out_path = self.dir.join("podman.out");
        let err_path = self.dir.join("podman.err");
        // The containers podman makes itself (a pod's infra) get the
        // lower rlimits too (see the module's documentation).
        let conf = self.dir.join("containers.conf");
        if !conf.exists() {
            std::fs::write(
                &conf,
                "[containers]\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=4096:4096\"]\n",
            )
            .unwrap();
        }
        let status = Command::new("podman")
            .env("CONTAINERS_CONF", &conf)
            .arg("--root")
            .arg(self.dir.join("storage"))
            .arg("--runroot")
            .arg(self.dir.join("run"))
            .args([
                "--cgroup-manager=cgroupfs",
                "--events-backend=file",
                "--runtime",
                KAPSEL_OCI,
            ])
            .args(args)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out_path).unwrap())
            .stderr(std::fs::File::create(&err_path).unwrap())
            .status()
            .unwrap();
        Output {
            status,
            stdout: std::fs::read(&out_path).unwrap_or_default(),
            stderr: std::fs::read(&err_path).unwrap_or_default(),
        }
    }

    /// `podman run ARGS` with the test's options before the image.
    fn run(&self, opts: &[&str], cmd: &[&str]) -> Output {
        let mut args = vec![
            "run",
            "--network",
            "none",
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=4096:4096",
        ];
        args.extend_from_slice(opts);
        args.push(IMAGE);
        args.extend_from_slice(cmd);
        self.podman(&args)
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.podman(&["rm", "--all", "--force"]);
        let _ = Command::new("umount")
            .arg("-R")
            .arg(self.dir.join("storage/overlay"))
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn podman_runs_with_kapsel_oci() {
    let Some(p) = Podman::new() else {
        return;
    };
    // Output and exit status.
    let out = p.run(&["--rm"], &["echo", "hello"]);
    assert!(
        out.status.success(),
        "podman run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n");
    let out = p.run(&["--rm"], &["sh", "-c", "exit 3"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A program that is not there: podman's 127, from kapsel-oci's wording.
    let out = p.run(&["--rm"], &["/no/such/program"]);
    assert_eq!(
        out.status.code(),
        Some(127),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A terminal (conmon takes the master from --console-socket).
    let out = p.run(&["--rm", "-t"], &["sh", "-c", "test -t 0 && echo tty"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("tty"));

    // Detached, exec, stop, rm.
    let out = p.run(&["-d"], &["sleep", "1000"]);
    assert!(
        out.status.success(),
        "podman run -d: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let out = p.podman(&["inspect", "--format", "{{.State.Status}}", &id]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "running");
    let out = p.podman(&["exec", &id, "sh", "-c", "echo in-exec; exit 5"]);
    assert_eq!(
        out.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "in-exec\n");
    let out = p.podman(&["stop", "-t", "1", &id]);
    assert!(
        out.status.success(),
        "podman stop: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = p.podman(&["inspect", "--format", "{{.State.Status}}", &id]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "exited");
    let out = p.podman(&["rm", &id]);
    assert!(
        out.status.success(),
        "podman rm: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // kapsel-oci's state went with it.
    assert!(!Path::new("/run/kapsel-oci").join(&id).exists());
}

#[test]
fn podmans_seccomp_profiles_pause_and_limits_work_with_kapsel_oci() {
    let Some(p) = Podman::new() else {
        return;
    };
    // Podman's default profile (containers-common's seccomp.json, turned
    // into config.json's linux.seccomp) loads, and the container runs.
    let out = p.run(&["--rm"], &["grep", "Seccomp:", "/proc/self/status"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "Seccomp:\t2");
    // A profile of the user's: its errno comes back.
    let profile = p.dir.join("profile.json");
    std::fs::write(
        &profile,
        r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 95}]}"#,
    )
    .unwrap();
    let opt = format!("seccomp={}", profile.display());
    let out = p.run(&["--rm", "--security-opt", &opt], &["mkdir", "/x"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Operation not supported"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = p.run(
        &["--rm", "--security-opt", "seccomp=unconfined"],
        &["grep", "Seccomp:", "/proc/self/status"],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "Seccomp:\t0");

    // Limits reach the cgroup; pause and unpause.
    let out = p.run(
        &["-d", "--memory", "64m", "--pids-limit", "50"],
        &["sleep", "1000"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let v1 = Path::new("/sys/fs/cgroup/memory/libpod_parent")
        .join(format!("libpod-{id}"))
        .join("memory.limit_in_bytes");
    if v1.exists() {
        assert_eq!(
            std::fs::read_to_string(&v1).unwrap().trim(),
            (64u64 << 20).to_string()
        );
    }
    let out = p.podman(&["pause", &id]);
    assert!(
        out.status.success(),
        "podman pause: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = p.podman(&["inspect", "--format", "{{.State.Status}}", &id]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "paused");
    let out = p.podman(&["unpause", &id]);
    assert!(
        out.status.success(),
        "podman unpause: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = p.podman(&["inspect", "--format", "{{.State.Status}}", &id]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "running");
    let out = p.podman(&["rm", "--force", &id]);
    assert!(out.status.success());
}

#[test]
fn a_pod_of_two_containers_shares_its_infra_containers_namespaces() {
    let Some(p) = Podman::new() else {
        return;
    };
    // The infra container is podman's own pause image (catatonit), built
    // locally: no registry.
    let out = p.podman(&["pod", "create", "--name", "kapsel-pod"]);
    assert!(
        out.status.success(),
        "podman pod create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = p.podman(&["run", "-d", "--pod", "kapsel-pod", IMAGE, "sleep", "1000"]);
    assert!(
        out.status.success(),
        "podman run --pod: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let first = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let out = p.podman(&[
        "run",
        "--rm",
        "--pod",
        "kapsel-pod",
        IMAGE,
        "sh",
        "-c",
        "readlink /proc/self/ns/net; readlink /proc/self/ns/uts; hostname",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let second = String::from_utf8_lossy(&out.stdout).into_owned();
    let pid = p.podman(&["inspect", "--format", "{{.State.Pid}}", &first]);
    let pid = String::from_utf8_lossy(&pid.stdout).trim().to_string();
    let ns = |kind: &str| {
        std::fs::read_link(format!("/proc/{pid}/ns/{kind}"))
            .unwrap()
            .to_string_lossy()
            .into_owned()
    };
    let lines: Vec<&str> = second.lines().collect();
    assert_eq!(lines.len(), 3, "{second}");
    assert_eq!(
        lines[0],
        ns("net"),
        "the two containers' network namespaces differ"
    );
    assert_eq!(lines[1], ns("uts"));
    assert_eq!(lines[2], "kapsel-pod");
    // Not the host's.
    assert_ne!(
        std::fs::read_link("/proc/self/ns/net")
            .unwrap()
            .to_string_lossy(),
        lines[0]
    );
    let out = p.podman(&["pod", "rm", "--force", "kapsel-pod"]);
    assert!(out.status.success());
}
