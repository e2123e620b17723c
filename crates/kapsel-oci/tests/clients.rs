//! Real clients beyond podman, from Debian's packages: containerd 1.6
//! (`ctr run --runc-binary`, through its runc v2 shim) and Docker 20.10
//! (daemon.json `runtimes`, `docker run --runtime kapsel`). Each test runs
//! a private daemon (its own root, state and socket under /tmp, no
//! network set-up: Docker without iptables or a bridge, containers with
//! `--network none`) and an image made here from busybox: an OCI archive
//! imported with `ctr images import`, a root tarball with `docker import`.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const KAPSEL_OCI: &str = env!("CARGO_BIN_EXE_kapsel-oci");
const BUSYBOX: &str = "/bin/busybox";

fn ready(tool: &str, package: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("SKIP: {tool} with kapsel-oci needs root");
        return false;
    }
    if Command::new(tool).arg("--version").output().is_err() {
        println!(
            "SKIP: {tool} is not installed (apt-get install {package}; scripts/setup.sh does)"
        );
        return false;
    }
    if !Path::new(BUSYBOX).exists() {
        println!("SKIP: {BUSYBOX} missing (apt-get install busybox-static)");
        return false;
    }
    true
}

/// A busybox root under `dir/rootfs` and its tarball `dir/rootfs.tar`.
fn busybox_tar(dir: &Path) -> PathBuf {
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
    let tar = dir.join("rootfs.tar");
    let made = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .unwrap();
    assert!(made.success());
    tar
}

/// Stores `bytes` as a blob of the OCI layout `layout`; its digest and size.
fn blob(layout: &Path, bytes: &[u8]) -> (String, usize) {
    let tmp = layout.join("blob.tmp");
    std::fs::write(&tmp, bytes).unwrap();
    let out = Command::new("sha256sum").arg(&tmp).output().unwrap();
    let hex = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    std::fs::rename(&tmp, layout.join("blobs/sha256").join(&hex)).unwrap();
    (format!("sha256:{hex}"), bytes.len())
}

/// An OCI image archive (a tarred image layout) of the busybox root,
/// named `name` for containerd.
fn oci_archive(dir: &Path, name: &str) -> PathBuf {
    let layer = std::fs::read(busybox_tar(dir)).unwrap();
    let layout = dir.join("layout");
    std::fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    let (ld, ls) = blob(&layout, &layer);
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": [ld]}
    });
    let (cd, cs) = blob(&layout, config.to_string().as_bytes());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ld, "size": ls}]
    });
    let (md, ms) = blob(&layout, manifest.to_string().as_bytes());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": md, "size": ms,
            "annotations": {"io.containerd.image.name": name,
                "org.opencontainers.image.ref.name": "latest"}}]
    });
    std::fs::write(layout.join("index.json"), index.to_string()).unwrap();
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let archive = dir.join("image.tar");
    let made = Command::new("tar")
        .arg("-C")
        .arg(&layout)
        .arg("-cf")
        .arg(&archive)
        .arg(".")
        .status()
        .unwrap();
    assert!(made.success());
    archive
}

/// A daemon of the test: stopped (SIGTERM, then SIGKILL) and its
/// directory removed when dropped.
struct Daemon {
    child: Child,
    dir: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: kill(2) of our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Mounts the daemon may have left below its directory.
        if let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") {
            let mut points: Vec<&str> = mounts
                .lines()
                .filter_map(|l| l.split(' ').nth(1))
                .filter(|p| Path::new(p).starts_with(&self.dir))
                .collect();
            points.sort_by_key(|p| std::cmp::Reverse(p.len()));
            for p in points {
                let _ = Command::new("umount").arg("-l").arg(p).status();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn wait_for_socket(sock: &Path, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !sock.exists() {
        assert!(
            Instant::now() < deadline,
            "the daemon did not come up: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn output_of(tool: &str, args: &[&str], dir: &Path) -> Output {
    // Output in files: a detached container's shim may hold pipes open.
    let out = dir.join("cmd.out");
    let err = dir.join("cmd.err");
    let status = Command::new(tool)
        .args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .status()
        .unwrap();
    Output {
        status,
        stdout: std::fs::read(&out).unwrap_or_default(),
        stderr: std::fs::read(&err).unwrap_or_default(),
    }
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn containerd_runs_kapsel_oci_through_its_runc_shim() {
    if !ready("containerd", "containerd") || !ready("ctr", "containerd") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("kapsel-oci-containerd-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("containerd.sock");
    std::fs::write(
        dir.join("config.toml"),
        format!(
            "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{s}\"\n[ttrpc]\n  address = \"{s}.ttrpc\"\n",
            d = dir.display(),
            s = sock.display()
        ),
    )
    .unwrap();
    let log = dir.join("containerd.log");
    let child = Command::new("containerd")
        .arg("--config")
        .arg(dir.join("config.toml"))
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let d = Daemon {
        child,
        dir: dir.clone(),
    };
    wait_for_socket(&sock, &log);
    let image = "docker.io/library/kapsel-oci-busybox:latest";
    let archive = oci_archive(&d.dir, image);
    let sock_s = sock.to_str().unwrap();
    let runc_root = dir.join("runc");
    let runc_root_s = runc_root.to_str().unwrap();
    let ctr = |args: &[&str]| {
        let mut all = vec!["--address", sock_s, "--namespace", "kapsel-test"];
        all.extend_from_slice(args);
        output_of("ctr", &all, &dir)
    };
    let ok = |args: &[&str]| {
        let o = ctr(args);
        assert!(
            o.status.success(),
            "ctr {args:?}: {}{}",
            text(&o),
            String::from_utf8_lossy(&o.stderr)
        );
        text(&o)
    };
    ok(&[
        "images",
        "import",
        "--snapshotter",
        "native",
        archive.to_str().unwrap(),
    ]);
    let run = [
        "run",
        "--snapshotter",
        "native",
        "--runc-binary",
        KAPSEL_OCI,
        "--runc-root",
        runc_root_s,
    ];

    // Output and exit status come through the shim.
    let mut args = run.to_vec();
    args.extend_from_slice(&["--rm", image, "kt-ctr-1", "sh", "-c", "echo hello; exit 3"]);
    let o = ctr(&args);
    assert_eq!(
        o.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(text(&o), "hello\n");

    // Detached: exec, pause and resume (the shim calls kapsel-oci pause),
    // kill, delete.
    let mut args = run.to_vec();
    args.extend_from_slice(&["-d", image, "kt-ctr-2", "sleep", "1000"]);
    ok(&args);
    assert!(ok(&["task", "ls"]).contains("RUNNING"));
    let o = ctr(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        "kt-ctr-2",
        "sh",
        "-c",
        "echo in; exit 5",
    ]);
    assert_eq!(o.status.code(), Some(5));
    assert_eq!(text(&o), "in\n");
    ok(&["task", "pause", "kt-ctr-2"]);
    assert!(ok(&["task", "ls"]).contains("PAUSED"));
    ok(&["task", "resume", "kt-ctr-2"]);
    assert!(ok(&["task", "ls"]).contains("RUNNING"));
    ok(&["task", "kill", "--signal", "KILL", "kt-ctr-2"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ok(&["task", "ls"]).contains("STOPPED") {
        assert!(Instant::now() < deadline, "the task did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
    ok(&["task", "rm", "kt-ctr-2"]);
    ok(&["container", "rm", "kt-ctr-2"]);
    // kapsel-oci's state went with delete.
    let left: Vec<_> = std::fs::read_dir(runc_root.join("kapsel-test"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
    drop(d);
}

#[test]
fn docker_runs_kapsel_oci_as_a_registered_runtime() {
    // Debian's docker.io: /usr/bin/docker (a docker elsewhere on PATH
    // may be another build).
    let docker = if Path::new("/usr/bin/docker").exists() {
        "/usr/bin/docker"
    } else {
        "docker"
    };
    if !ready("dockerd", "docker.io") || !ready(docker, "docker.io") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("kapsel-oci-docker-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("daemon.json"),
        serde_json::json!({"runtimes": {"kapsel": {"path": KAPSEL_OCI}}}).to_string(),
    )
    .unwrap();
    let sock = dir.join("docker.sock");
    let host = format!("unix://{}", sock.display());
    let log = dir.join("dockerd.log");
    let child = Command::new("dockerd")
        .arg("--config-file")
        .arg(dir.join("daemon.json"))
        .arg("--data-root")
        .arg(dir.join("data"))
        .arg("--exec-root")
        .arg(dir.join("exec"))
        .arg("--pidfile")
        .arg(dir.join("dockerd.pid"))
        .args(["-H", &host])
        // No changes to the host's network: no iptables rules, no bridge.
        .args(["--iptables=false", "--ip-masq=false", "--bridge=none"])
        .args([
            "--storage-driver=vfs",
            "--exec-opt",
            "native.cgroupdriver=cgroupfs",
        ])
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let d = Daemon {
        child,
        dir: dir.clone(),
    };
    wait_for_socket(&sock, &log);
    let dk = |args: &[&str]| {
        let mut all = vec!["-H", host.as_str()];
        all.extend_from_slice(args);
        output_of(docker, &all, &dir)
    };
    let ok = |args: &[&str]| {
        let o = dk(args);
        assert!(
            o.status.success(),
            "docker {args:?}: {}{}",
            text(&o),
            String::from_utf8_lossy(&o.stderr)
        );
        text(&o)
    };
    // The API may answer a moment after the socket appears.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !dk(&["info"]).status.success() {
        assert!(Instant::now() < deadline, "dockerd does not answer");
        std::thread::sleep(Duration::from_millis(100));
    }
    let tar = busybox_tar(&d.dir);
    ok(&["import", tar.to_str().unwrap(), "kapsel-oci-busybox"]);
    let base = ["run", "--runtime", "kapsel", "--network", "none"];

    let mut args = base.to_vec();
    args.extend_from_slice(&["--rm", "kapsel-oci-busybox", "sh", "-c", "echo hi; exit 3"]);
    let o = dk(&args);
    assert_eq!(
        o.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(text(&o), "hi\n");

    // A terminal: the process's stdin is a tty.
    let mut args = base.to_vec();
    args.extend_from_slice(&[
        "--rm",
        "-t",
        "kapsel-oci-busybox",
        "sh",
        "-c",
        "[ -t 0 ] && echo tty",
    ]);
    assert_eq!(ok(&args).trim(), "tty");

    // Detached with limits, exec, pause/unpause, update, stop, rm.
    let mut args = base.to_vec();
    args.extend_from_slice(&[
        "-d",
        "--name",
        "kt-docker",
        "--memory",
        "64m",
        "--pids-limit",
        "50",
        "kapsel-oci-busybox",
        "sleep",
        "1000",
    ]);
    let id = ok(&args).trim().to_string();
    assert_eq!(
        ok(&[
            "inspect",
            "-f",
            "{{.HostConfig.Runtime}} {{.State.Status}}",
            "kt-docker"
        ])
        .trim(),
        "kapsel running"
    );
    let o = dk(&["exec", "kt-docker", "sh", "-c", "echo in; exit 6"]);
    assert_eq!(o.status.code(), Some(6));
    assert_eq!(text(&o), "in\n");
    ok(&["pause", "kt-docker"]);
    assert_eq!(
        ok(&["inspect", "-f", "{{.State.Status}}", "kt-docker"]).trim(),
        "paused"
    );
    ok(&["unpause", "kt-docker"]);
    ok(&[
        "update",
        "--memory",
        "32m",
        "--cpus",
        "0.5",
        "--pids-limit",
        "40",
        "kt-docker",
    ]);
    let cg = |ctrl: &str, file: &str| {
        let v1 = Path::new("/sys/fs/cgroup")
            .join(ctrl)
            .join("docker")
            .join(&id)
            .join(file);
        std::fs::read_to_string(v1)
            .ok()
            .map(|s| s.trim().to_string())
    };
    if let Some(mem) = cg("memory", "memory.limit_in_bytes") {
        assert_eq!(mem, (32u64 << 20).to_string());
        assert_eq!(cg("pids", "pids.max").as_deref(), Some("40"));
        assert_eq!(cg("cpu", "cpu.cfs_quota_us").as_deref(), Some("50000"));
    }
    ok(&["stop", "-t", "2", "kt-docker"]);
    assert_eq!(
        ok(&["inspect", "-f", "{{.State.Status}}", "kt-docker"]).trim(),
        "exited"
    );
    ok(&["rm", "kt-docker"]);
    assert!(ok(&["ps", "-aq"]).trim().is_empty());
    drop(d);
}
