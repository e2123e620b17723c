//! kapsel-oci driven through its command line against bundles made here
//! (common/mod.rs), as a client such as conmon or containerd's shim
//! drives it.

mod common;

use common::*;
use serde_json::{json, Value};
use std::path::Path;
use std::process::{Command, Output, Stdio};

#[test]
fn run_prints_and_returns_the_exit_status() {
    if skip() {
        return;
    }
    let b = Bundle::new("run", &["sh", "-c", "echo hello; hostname; exit 3"]);
    let out = b.oci(&["run", &id("run"), "--bundle", b.path()]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\nocitest\n");
    // run without --keep leaves nothing.
    assert!(std::fs::read_dir(&b.state).unwrap().next().is_none());
}

#[test]
fn lifecycle_create_start_state_kill_delete() {
    if skip() {
        return;
    }
    let b = Bundle::new("life", &["sleep", "1000"]);
    let id = id("life");
    let pidfile = b.dir.join("init.pid");
    b.ok(&[
        "create",
        "--bundle",
        b.path(),
        "--pid-file",
        pidfile.to_str().unwrap(),
        &id,
    ]);
    let s = b.state(&id);
    assert_eq!(s["status"], "created", "{s}");
    assert_eq!(s["id"], id.as_str());
    assert_eq!(s["bundle"], b.path());
    let pid = s["pid"].as_i64().unwrap();
    assert!(pid > 0);
    assert_eq!(std::fs::read_to_string(&pidfile).unwrap(), pid.to_string());
    // The init waits: it has not executed the process yet.
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
    assert_ne!(comm.trim(), "sleep");
    // A second create with the same id is refused, as runc does.
    let again = b.oci(&["create", "--bundle", b.path(), &id]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists"));

    b.ok(&["start", &id]);
    assert_eq!(b.state(&id)["status"], "running");
    assert!(eventually(|| std::fs::read_to_string(format!(
        "/proc/{pid}/comm"
    ))
    .is_ok_and(|c| c.trim() == "sleep")));
    let again = b.oci(&["start", &id]);
    assert_eq!(again.status.code(), Some(1));

    // exec: output, exit status, the container's namespaces.
    let out = b.oci(&["exec", &id, "sh", "-c", "hostname; exit 7"]);
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ocitest\n");
    let ps: Vec<i64> = serde_json::from_str(&b.ok(&["ps", "--format", "json", &id])).unwrap();
    assert_eq!(ps, vec![pid]);
    let list = b.ok(&["list", "--format", "json"]);
    assert!(list.contains(&id), "{list}");

    // delete refuses a running container without --force.
    let del = b.oci(&["delete", &id]);
    assert_eq!(del.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&del.stderr).contains("not stopped"));

    b.ok(&["kill", &id, "KILL"]);
    assert!(eventually(|| b.state(&id)["status"] == "stopped"));
    assert_eq!(b.state(&id)["pid"], 0);
    // kill of a stopped container: runc's wording, which containerd parses.
    let k = b.oci(&["kill", &id, "9"]);
    assert_eq!(k.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&k.stderr).contains("container not running"));
    b.ok(&["delete", &id]);
    let gone = b.oci(&["state", &id]);
    assert_eq!(gone.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&gone.stderr).contains("does not exist"));
    // delete --force of what does not exist succeeds (podman relies on it).
    b.ok(&["delete", "--force", &id]);
    // The cgroup went with it.
    for top in [
        "/sys/fs/cgroup/memory",
        "/sys/fs/cgroup/pids",
        "/sys/fs/cgroup",
    ] {
        assert!(!Path::new(top).join("kapsel-oci").join(&id).exists());
    }
}

#[test]
fn kill_takes_names_numbers_and_all() {
    if skip() {
        return;
    }
    let b = Bundle::new(
        "kill",
        &["sh", "-c", "trap 'exit 42' TERM; sleep 1000 & wait"],
    );
    let id = id("kill");
    b.ok(&["run", "-d", "--bundle", b.path(), &id]);
    let pid = b.state(&id)["pid"].as_i64().unwrap();
    assert!(eventually(|| {
        let ps: Vec<i64> = serde_json::from_str(&b.ok(&["ps", "--format", "json", &id])).unwrap();
        ps.len() == 2
    }));
    b.ok(&["kill", &id, "SIGTERM"]);
    assert!(eventually(|| b.state(&id)["status"] == "stopped"));
    // The init was reparented away from kapsel-oci; we only see that it went.
    assert!(
        !Path::new(&format!("/proc/{pid}/comm")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| s.contains(") Z"))
    );
    b.ok(&["delete", &id]);
    let bad = b.oci(&["kill", &id, "NOSUCHSIG"]);
    assert_eq!(bad.status.code(), Some(1));
    let b2 = Bundle::new("killall", &["sleep", "1000"]);
    let id2 = format!("{id}-all");
    b2.ok(&["run", "-d", "--bundle", b2.path(), &id2]);
    b2.ok(&["kill", "--all", &id2, "9"]);
    assert!(eventually(|| b2.state(&id2)["status"] == "stopped"));
    b2.ok(&["delete", &id2]);
}

#[test]
fn config_fields_are_honoured() {
    if skip() {
        return;
    }
    let script = "id; cat /proc/self/status | grep -E '^(CapBnd|NoNewPrivs)'; ulimit -n; pwd; \
                  echo $FOO; cat /data/hello; touch /tmp-in/x && echo tmpfs-ok; \
                  touch /x 2>/dev/null || echo root-ro; cat /proc/version | wc -c; \
                  cat /sys/fs/cgroup/pids.max 2>/dev/null; true";
    let b = Bundle::new("fields", &["sh", "-c", script]);
    std::fs::create_dir_all(b.dir.join("host-data")).unwrap();
    std::fs::write(b.dir.join("host-data/hello"), "from the host\n").unwrap();
    std::fs::create_dir_all(b.dir.join("rootfs/work")).unwrap();
    let mut c = config(&["sh", "-c", script]);
    c["process"]["user"] = json!({"uid": 1000, "gid": 1000, "additionalGids": [5]});
    c["process"]["env"] = json!(["PATH=/bin", "FOO=bar"]);
    c["process"]["cwd"] = json!("/work");
    c["process"]["rlimits"] = json!([{"type": "RLIMIT_NOFILE", "hard": 512, "soft": 256}]);
    c["root"]["readonly"] = json!(true);
    c["linux"]["maskedPaths"] = json!(["/proc/version"]);
    let mounts = c["mounts"].as_array_mut().unwrap();
    mounts.push(json!({"destination": "/data", "type": "bind",
        "source": b.dir.join("host-data"), "options": ["rbind", "ro"]}));
    mounts.push(
        json!({"destination": "/tmp-in", "type": "tmpfs", "source": "tmpfs",
        "options": ["nosuid", "mode=1777"]}),
    );
    c["linux"]["resources"] = json!({"pids": {"limit": 77}, "memory": {"limit": 67108864}});
    b.write(&c);
    let out = b.oci(&["run", &id("fields"), "--bundle", b.path()]);
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success());
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "uid=1000 gid=1000 groups=5");
    // The bounding set of config.json: CHOWN, KILL, NET_BIND_SERVICE, SETUID, SETGID.
    assert_eq!(lines[1], "CapBnd:\t00000000000004e1");
    assert_eq!(lines[2], "NoNewPrivs:\t1");
    assert_eq!(lines[3], "256");
    assert_eq!(lines[4], "/work");
    assert_eq!(lines[5], "bar");
    assert_eq!(lines[6], "from the host");
    assert_eq!(lines[7], "tmpfs-ok");
    assert_eq!(lines[8], "root-ro");
    assert_eq!(lines[9], "0", "/proc/version is masked");
    // The pids limit, where the host shows it (cgroup2 inside, or nothing on v1).
    if let Some(l) = lines.get(10) {
        assert_eq!(*l, "77");
    }
    // The bind source and the tmpfs destination were made in the bundle's
    // root, not elsewhere on the host.
    assert!(b.dir.join("rootfs/data").is_dir() && b.dir.join("rootfs/tmp-in").is_dir());
}

#[test]
fn namespaces_shared_with_the_host_or_joined_by_path() {
    if skip() {
        return;
    }
    // No network namespace listed: the host's.
    let b = Bundle::new("hostnet", &["sh", "-c", "readlink /proc/self/ns/net"]);
    let mut c = config(&[
        "sh",
        "-c",
        "readlink /proc/1/ns/net; ls /sys/class/net | wc -l",
    ]);
    c["linux"]["namespaces"] =
        json!([{"type": "pid"}, {"type": "mount"}, {"type": "ipc"}, {"type": "uts"}]);
    b.write(&c);
    let out = b.ok(&["run", &id("hostnet"), "--bundle", b.path()]);
    let host = std::fs::read_link("/proc/self/ns/net").unwrap();
    assert_eq!(out.lines().next(), Some(host.to_str().unwrap()), "{out}");

    // A network namespace joined by path: that of a process in its own.
    let mut holder = Command::new("unshare")
        .args(["-n", "sleep", "100"])
        .spawn()
        .unwrap();
    let ns_path = format!("/proc/{}/ns/net", holder.id());
    assert!(eventually(
        || std::fs::read_link(&ns_path).is_ok_and(|l| l != host)
    ));
    let want = std::fs::read_link(&ns_path).unwrap();
    c["process"]["args"] = json!(["sh", "-c", "readlink /proc/self/ns/net"]);
    c["linux"]["namespaces"] = json!([{"type": "pid"}, {"type": "mount"}, {"type": "ipc"},
        {"type": "uts"}, {"type": "network", "path": ns_path}]);
    b.write(&c);
    let out = b.ok(&["run", &id("joinnet"), "--bundle", b.path()]);
    let _ = holder.kill();
    let _ = holder.wait();
    assert_eq!(out.trim(), want.to_str().unwrap());
}

#[test]
fn refused_fields_and_json_errors() {
    if skip() {
        return;
    }
    let b = Bundle::new("refuse", &["true"]);
    let log = b.dir.join("log.json");
    let mut c = config(&["true"]);
    // A hook that is refused: its path is relative.
    c["hooks"] = json!({"prestart": [{"path": "bin/true"}]});
    b.write(&c);
    let out = b.oci(&[
        "--log",
        log.to_str().unwrap(),
        "--log-format=json",
        "create",
        "--bundle",
        b.path(),
        &id("refuse"),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let text = std::fs::read_to_string(&log).unwrap();
    let last: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(last["level"], "error");
    assert!(last["msg"].as_str().unwrap().contains("hooks"), "{last}");
    assert!(last["time"].as_str().unwrap().ends_with('Z'));
    // Nothing left behind by the failed create.
    assert!(std::fs::read_dir(&b.state).map_or(true, |mut d| d.next().is_none()));

    c = config(&["true"]);
    c["linux"]["namespaces"] = json!([{"type": "pid"}, {"type": "mount"}, {"type": "time"}]);
    b.write(&c);
    let out = b.oci(&["create", "--bundle", b.path(), &id("time")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("time namespace"));

    c = config(&["/no/such/program"]);
    b.write(&c);
    let out = b.oci(&["create", "--bundle", b.path(), &id("noexec")]);
    assert_eq!(out.status.code(), Some(1));
    // podman maps this wording to exit status 127.
    assert!(String::from_utf8_lossy(&out.stderr).contains("executable file not found"));
}

#[test]
fn state_matches_runc() {
    if skip() {
        return;
    }
    if Command::new("runc").arg("--version").output().is_err() {
        println!("SKIP: runc is not installed");
        return;
    }
    let b = Bundle::new("runc", &["sleep", "1000"]);
    let id = id("runc");
    let runc_root = b.dir.join("runc-state");
    let runc = |args: &[&str]| {
        let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let out_path = b.dir.join(format!("runc-out.{n}"));
        let err_path = b.dir.join(format!("runc-err.{n}"));
        let status = Command::new("runc")
            .arg("--root")
            .arg(&runc_root)
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
    };
    let out = runc(&["create", "--bundle", b.path(), &id]);
    assert!(
        out.status.success(),
        "runc: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    b.ok(&["create", "--bundle", b.path(), &id]);
    let theirs: Value = serde_json::from_slice(&runc(&["state", &id]).stdout).unwrap();
    let ours = b.state(&id);
    let keys = |v: &Value| {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(keys(&ours), keys(&theirs), "ours {ours}\nrunc {theirs}");
    for field in ["id", "status", "bundle", "rootfs"] {
        assert_eq!(ours[field], theirs[field], "{field}");
    }
    runc(&["start", &id]);
    b.ok(&["start", &id]);
    let theirs: Value = serde_json::from_slice(&runc(&["state", &id]).stdout).unwrap();
    assert_eq!(b.state(&id)["status"], theirs["status"]);
    runc(&["kill", &id, "KILL"]);
    b.ok(&["kill", &id, "KILL"]);
    assert!(eventually(|| b.state(&id)["status"] == "stopped"));
    assert!(eventually(|| {
        serde_json::from_slice::<Value>(&runc(&["state", &id]).stdout)
            .is_ok_and(|v| v["status"] == "stopped")
    }));
    let theirs: Value = serde_json::from_slice(&runc(&["state", &id]).stdout).unwrap();
    assert_eq!(b.state(&id)["pid"], theirs["pid"]);
    // Both say "does not exist" after delete.
    runc(&["delete", &id]);
    b.ok(&["delete", &id]);
    let r = runc(&["state", &id]);
    let o = b.oci(&["state", &id]);
    assert_eq!(r.status.code(), o.status.code());
    assert!(String::from_utf8_lossy(&r.stderr).contains("does not exist"));
    assert!(String::from_utf8_lossy(&o.stderr).contains("does not exist"));
}

#[test]
fn version_and_features() {
    let out = Command::new(KAPSEL_OCI).arg("--version").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let first = text.lines().next().unwrap();
    // go-runc takes the third word of the first line as the version.
    assert_eq!(first.split_whitespace().nth(1), Some("version"));
    assert!(text.contains("\nspec: 1."));
    let out = Command::new(KAPSEL_OCI).arg("features").output().unwrap();
    let f: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(f["ociVersionMax"].as_str().unwrap().starts_with("1."));
    assert!(f["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .contains(&json!("pid")));
    // What this runtime honours, as runc reports it.
    assert_eq!(
        f["hooks"],
        json!([
            "prestart",
            "createRuntime",
            "createContainer",
            "startContainer",
            "poststart",
            "poststop"
        ])
    );
    let sc = &f["linux"]["seccomp"];
    assert_eq!(sc["enabled"], true);
    for a in [
        "SCMP_ACT_ALLOW",
        "SCMP_ACT_ERRNO",
        "SCMP_ACT_KILL_PROCESS",
        "SCMP_ACT_TRAP",
        "SCMP_ACT_LOG",
    ] {
        assert!(sc["actions"].as_array().unwrap().contains(&json!(a)), "{a}");
    }
    assert!(sc["operators"]
        .as_array()
        .unwrap()
        .contains(&json!("SCMP_CMP_MASKED_EQ")));
    assert!(sc["archs"]
        .as_array()
        .unwrap()
        .contains(&json!("SCMP_ARCH_X86_64")));
    assert_eq!(f["linux"]["cgroup"]["v1"], true);
    // containerd's shim refuses idmap mounts unless this says so.
    assert_eq!(f["linux"]["mountExtensions"]["idmap"]["enabled"], true);
    assert!(f["annotations"]["io.github.seccomp.libseccomp.version"]
        .as_str()
        .unwrap()
        .starts_with("2."));
}

#[test]
fn exec_cannot_widen_the_containers_capabilities() {
    if skip() {
        return;
    }
    let b = Bundle::new("execcaps", &["sleep", "1000"]);
    let id = id("execcaps");
    b.ok(&["run", "-d", "--bundle", b.path(), &id]);
    // A process that asks for everything, CAP_SYS_ADMIN included.
    let all: Vec<&str> = vec![
        "CAP_CHOWN",
        "CAP_KILL",
        "CAP_SYS_ADMIN",
        "CAP_SYS_MODULE",
        "CAP_NET_ADMIN",
    ];
    let process = json!({
        "args": ["sh", "-c", "grep CapBnd /proc/self/status"],
        "env": ["PATH=/bin"],
        "cwd": "/",
        "user": {"uid": 0, "gid": 0},
        "capabilities": {"bounding": all, "effective": all, "permitted": all}
    });
    let file = b.dir.join("process.json");
    std::fs::write(&file, process.to_string()).unwrap();
    let out = b.ok(&["exec", "--process", file.to_str().unwrap(), &id]);
    // CHOWN and KILL only: what both the container and the process have.
    assert_eq!(out.trim(), "CapBnd:\t0000000000000021");
    b.ok(&["delete", "--force", &id]);
}

/// The attacker: a local user (nobody) who wants to start someone's
/// created container (open its exec.fifo for reading), or read its state.
#[test]
fn another_user_cannot_start_or_read_a_container() {
    if skip() {
        return;
    }
    let b = Bundle::new("attacker", &["sleep", "1000"]);
    let id = id("attacker");
    b.ok(&["create", "--bundle", b.path(), &id]);
    let fifo = b.state.join(&id).join("exec.fifo");
    let state = b.state.join(&id).join("state.json");
    assert!(fifo.exists() && state.exists());
    for (path, flags) in [
        (&fifo, libc::O_RDONLY | libc::O_NONBLOCK),
        (&state, libc::O_RDONLY),
    ] {
        let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: fork; the child makes system calls only and ends with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // SAFETY: system calls on locals; the child exits.
            unsafe {
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(65534) != 0
                    || libc::setuid(65534) != 0
                {
                    libc::_exit(2);
                }
                let fd = libc::open(c.as_ptr(), flags);
                libc::_exit(if fd >= 0 { 1 } else { 0 });
            }
        }
        let mut st = 0;
        // SAFETY: waitpid on our child into a local.
        unsafe { libc::waitpid(pid, &mut st, 0) };
        assert_eq!(libc::WEXITSTATUS(st), 0, "nobody opened {}", path.display());
    }
    assert_eq!(b.state(&id)["status"], "created");
    b.ok(&["delete", "--force", &id]);
}

/// A state directory others can write could hold a forged record naming
/// any PID for `kill` or `delete` to act on: refused.
#[test]
fn a_state_directory_others_can_write_is_refused() {
    if skip() {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let b = Bundle::new("laxroot", &["true"]);
    std::fs::create_dir_all(&b.state).unwrap();
    std::fs::set_permissions(&b.state, std::fs::Permissions::from_mode(0o777)).unwrap();
    let id = id("laxroot");
    // The victim: a process of someone else's, named in the forged record
    // with its true start time.
    let mut victim = Command::new("sleep").arg("100").spawn().unwrap();
    let vpid = victim.id();
    let stat = std::fs::read_to_string(format!("/proc/{vpid}/stat")).unwrap();
    let start: u64 = stat[stat.rfind(')').unwrap() + 2..]
        .split_whitespace()
        .nth(19)
        .unwrap()
        .parse()
        .unwrap();
    std::fs::create_dir_all(b.state.join(&id)).unwrap();
    std::fs::write(
        b.state.join(&id).join("state.json"),
        json!({"id": id, "pid": vpid, "start_time": start, "bundle": "/", "rootfs": "/",
               "created": "", "cgroups": [], "capabilities": 0, "no_new_privs": true,
               "seccomp": true})
        .to_string(),
    )
    .unwrap();
    for args in [
        vec!["kill", id.as_str(), "KILL"],
        vec!["delete", "--force", id.as_str()],
        vec!["state", id.as_str()],
        vec!["create", "--bundle", b.path(), "other"],
    ] {
        let out = b.oci(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("not root's alone"),
            "{args:?}"
        );
    }
    let alive = victim.try_wait().unwrap().is_none();
    let _ = victim.kill();
    let _ = victim.wait();
    assert!(alive, "the forged record's process was killed");
    std::fs::set_permissions(&b.state, std::fs::Permissions::from_mode(0o700)).unwrap();
    let _ = std::fs::remove_dir_all(b.state.join(&id));
}
