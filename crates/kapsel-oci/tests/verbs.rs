//! The commands that act on a running container's cgroup and the helper
//! commands: `pause`/`resume`, `update`, `events`, `ps`, `spec`, driven
//! through kapsel-oci's command line against bundles made here.

mod common;

use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The container's cgroup file `name` of `controller`: v1 (one hierarchy
/// per controller) or v2, wherever this host has it.
fn cgroup_file(id: &str, controller: &str, name: &str) -> PathBuf {
    let v1 = Path::new("/sys/fs/cgroup")
        .join(controller)
        .join("kapsel-oci")
        .join(id)
        .join(name);
    if v1.exists() {
        return v1;
    }
    Path::new("/sys/fs/cgroup/kapsel-oci").join(id).join(name)
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .trim()
        .to_string()
}

fn size(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

#[test]
fn pause_freezes_the_container_and_resume_thaws_it() {
    if skip() {
        return;
    }
    let b = Bundle::new(
        "pause",
        &["sh", "-c", "while :; do echo x >> /tick; sleep 0.02; done"],
    );
    let id = id("pause");
    let tick = b.dir.join("rootfs/tick");
    b.ok(&["create", "--bundle", b.path(), &id]);
    // Only a running container can be paused (runc's wording).
    let early = b.oci(&["pause", &id]);
    assert_eq!(early.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&early.stderr).contains("container not running"));
    b.ok(&["start", &id]);
    assert!(eventually(|| size(&tick) > 0));
    let not_paused = b.oci(&["resume", &id]);
    assert_eq!(not_paused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&not_paused.stderr).contains("container not paused"));

    b.ok(&["pause", &id]);
    assert_eq!(b.state(&id)["status"], "paused");
    let list = b.ok(&["list", "--format", "json"]);
    assert!(list.contains("\"paused\""), "{list}");
    let frozen_at = size(&tick);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(size(&tick), frozen_at, "the container ran while paused");
    // A paused container is not stopped: delete needs --force.
    let del = b.oci(&["delete", &id]);
    assert_eq!(del.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&del.stderr).contains("paused"));

    b.ok(&["resume", &id]);
    assert_eq!(b.state(&id)["status"], "running");
    assert!(eventually(|| size(&tick) > frozen_at));

    // SIGKILL reaches a paused container (a frozen v1 task dies once thawed).
    b.ok(&["pause", &id]);
    b.ok(&["kill", &id, "KILL"]);
    assert!(eventually(|| b.state(&id)["status"] == "stopped"));
    b.ok(&["delete", &id]);
}

#[test]
fn update_changes_the_limits_of_a_running_container() {
    if skip() {
        return;
    }
    let b = Bundle::new("update", &["sleep", "1000"]);
    let mut cfg = config(&["sleep", "1000"]);
    cfg["linux"]["resources"] =
        serde_json::json!({"memory": {"limit": 64 << 20}, "pids": {"limit": 50}});
    b.write(&cfg);
    let id = id("update");
    b.ok(&["run", "-d", "--bundle", b.path(), &id]);
    let mem = cgroup_file(&id, "memory", "memory.limit_in_bytes");
    let mem = if mem.exists() {
        mem
    } else {
        cgroup_file(&id, "memory", "memory.max")
    };
    let pids = cgroup_file(&id, "pids", "pids.max");
    assert_eq!(read(&mem), (64u64 << 20).to_string());
    assert_eq!(read(&pids), "50");

    // runc's flags.
    b.ok(&[
        "update",
        "--memory",
        "32m",
        "--pids-limit",
        "20",
        "--cpu-period",
        "100000",
        "--cpu-quota",
        "50000",
        &id,
    ]);
    assert_eq!(read(&mem), (32u64 << 20).to_string());
    assert_eq!(read(&pids), "20");
    let quota = cgroup_file(&id, "cpu", "cpu.cfs_quota_us");
    if quota.exists() {
        assert_eq!(read(&quota), "50000");
    } else {
        assert_eq!(read(&cgroup_file(&id, "cpu", "cpu.max")), "50000 100000");
    }

    // --resources FILE: linux.resources as podman writes it.
    let file = b.dir.join("resources.json");
    std::fs::write(
        &file,
        r#"{"memory": {"limit": 50331648}, "pids": {"limit": 30}, "cpu": {"cpus": ""}}"#,
    )
    .unwrap();
    b.ok(&["update", "--resources", file.to_str().unwrap(), &id]);
    assert_eq!(read(&mem), "50331648");
    assert_eq!(read(&pids), "30");

    // --resources - : the JSON on standard input (go-runc).
    let mut child = Command::new(KAPSEL_OCI)
        .arg("--root")
        .arg(&b.state)
        .args(["update", "--resources", "-", &id])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(br#"{"pids": {"limit": 25}}"#)
        .unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(read(&pids), "25");

    // The new pids limit holds: with 1 task allowed the init is all the
    // container may have, so an exec cannot fork its command.
    b.ok(&["update", "--pids-limit", "1", &id]);
    let out = b.oci(&["exec", &id, "true"]);
    assert_ne!(out.status.code(), Some(0), "exec forked past pids.max=1");
    b.ok(&["update", "--pids-limit", "-1", &id]);
    assert_eq!(read(&pids), "max");
    b.ok(&["exec", &id, "true"]);

    // What cannot be changed is named.
    let refused = b.oci(&["update", "--cpuset-cpus", "0", &id]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--cpuset-cpus"));
    let bad = b.oci(&["update", "--memory", "lots", &id]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--memory lots"));
    b.ok(&["delete", "--force", &id]);
    let gone = b.oci(&["update", "--memory", "1g", &id]);
    assert!(String::from_utf8_lossy(&gone.stderr).contains("does not exist"));
}

#[test]
fn events_reports_stats_in_runcs_shape() {
    if skip() {
        return;
    }
    let b = Bundle::new(
        "events",
        &[
            "sh",
            "-c",
            "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done; sleep 1000",
        ],
    );
    let id = id("events");
    b.ok(&["run", "-d", "--bundle", b.path(), &id]);
    std::thread::sleep(Duration::from_millis(300));
    let out = b.ok(&["events", "--stats", &id]);
    assert_eq!(out.lines().count(), 1, "{out}");
    let e: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(e["type"], "stats");
    assert_eq!(e["id"], id.as_str());
    let d = &e["data"];
    assert!(d["memory"]["usage"]["usage"].as_u64().unwrap() > 0, "{d}");
    assert!(d["memory"]["usage"]["limit"].as_u64().is_some(), "{d}");
    assert!(d["pids"]["current"].as_u64().unwrap() >= 1, "{d}");
    assert!(d["cpu"]["usage"]["total"].as_u64().unwrap() > 0, "{d}");
    for k in ["cpuset", "blkio", "hugetlb", "intel_rdt"] {
        assert!(d.get(k).is_some(), "no {k} in {d}");
    }

    // Without --stats: figures every --interval until the container stops.
    let log = b.dir.join("events.out");
    let mut ev = Command::new(KAPSEL_OCI)
        .arg("--root")
        .arg(&b.state)
        .args(["events", "--interval", "100ms", &id])
        .stdout(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(550));
    b.ok(&["kill", &id, "KILL"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = ev.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "events did not end with the container"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success());
    let text = std::fs::read_to_string(&log).unwrap();
    let stats = text
        .lines()
        .filter(|l| serde_json::from_str::<Value>(l).is_ok_and(|v| v["type"] == "stats"))
        .count();
    assert!(stats >= 3, "{text}");
    b.ok(&["delete", &id]);
}

#[test]
fn ps_prints_the_containers_processes_as_ps_does() {
    if skip() {
        return;
    }
    let b = Bundle::new("ps", &["sleep", "1000"]);
    let id = id("ps");
    b.ok(&["run", "-d", "--bundle", b.path(), &id]);
    let pid = b.state(&id)["pid"].as_i64().unwrap();
    let table = b.ok(&["ps", &id]);
    let mut lines = table.lines();
    assert!(lines.next().unwrap().contains("PID"), "{table}");
    let rest: Vec<&str> = lines.collect();
    assert_eq!(rest.len(), 1, "{table}");
    assert!(rest[0].contains("sleep 1000"), "{table}");
    assert!(rest[0].split_whitespace().any(|f| f == pid.to_string()));
    // ps arguments pass through.
    let custom = b.ok(&["ps", &id, "-o", "pid,comm"]);
    let mut lines = custom.lines();
    assert!(lines.next().unwrap().contains("COMMAND"), "{custom}");
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), 1, "{custom}");
    assert!(
        rows[0].ends_with("sleep") && !rows[0].contains("1000"),
        "{custom}"
    );
    b.ok(&["delete", "--force", &id]);
}

#[test]
fn spec_writes_runcs_default_config_and_it_runs() {
    if skip() {
        return;
    }
    let b = Bundle::new("spec", &["true"]);
    std::fs::remove_file(b.dir.join("config.json")).unwrap();
    b.ok(&["spec", "--bundle", b.path()]);
    let ours: Value =
        serde_json::from_slice(&std::fs::read(b.dir.join("config.json")).unwrap()).unwrap();
    // A second spec does not overwrite it.
    let again = b.oci(&["spec", "--bundle", b.path()]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists"));
    for rootless in [false, true] {
        let dir = b.dir.join(format!("runc-spec-{rootless}"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut args = vec!["spec", "--bundle", dir.to_str().unwrap()];
        if rootless {
            args.push("--rootless");
            let own = b.dir.join("rootless");
            std::fs::create_dir_all(&own).unwrap();
            b.ok(&["spec", "--rootless", "--bundle", own.to_str().unwrap()]);
        }
        let Ok(out) = Command::new("runc").args(&args).output() else {
            println!("runc is not installed: the spec is not compared with runc's");
            break;
        };
        assert!(out.status.success());
        let mut theirs: Value =
            serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
        let mine_path = if rootless {
            b.dir.join("rootless/config.json")
        } else {
            b.dir.join("config.json")
        };
        let mut mine: Value = serde_json::from_slice(&std::fs::read(mine_path).unwrap()).unwrap();
        assert_eq!(theirs["hostname"], "runc");
        theirs["hostname"] = Value::Null;
        mine["hostname"] = Value::Null;
        assert_eq!(mine, theirs, "rootless {rootless}");
    }
    // The default spec runs (as a non-terminal /bin/true).
    let mut cfg = ours;
    cfg["process"]["terminal"] = Value::Bool(false);
    cfg["process"]["args"] = serde_json::json!(["sh", "-c", "hostname; exit 4"]);
    b.write(&cfg);
    let out = b.oci(&["run", &id("spec"), "--bundle", b.path()]);
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "kapsel\n");
}

#[test]
fn preserve_fds_passes_descriptors_to_the_process() {
    if skip() {
        return;
    }
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let b = Bundle::new("fds", &["true"]);
    b.write(&config(&[
        "sh",
        "-c",
        "cat <&3; cat <&4; ls /proc/self/fd | wc -l",
    ]));
    let f3 = b.dir.join("three");
    let f4 = b.dir.join("four");
    std::fs::write(&f3, "from three\n").unwrap();
    std::fs::write(&f4, "from four\n").unwrap();
    let run = |n: &str, id: &str| {
        let three = std::fs::File::open(&f3).unwrap();
        let four = std::fs::File::open(&f4).unwrap();
        let (a, c) = (three.as_raw_fd(), four.as_raw_fd());
        let mut cmd = Command::new(KAPSEL_OCI);
        cmd.arg("--root")
            .arg(&b.state)
            .args(["run", "--preserve-fds", n, "--bundle", b.path(), id])
            .stdin(Stdio::null());
        // SAFETY: dup2 in the forked child before exec, on descriptors
        // open in the parent.
        unsafe {
            cmd.pre_exec(move || {
                // Out of the way first: either may already be 3 or 4
                // (and close on exec).
                let (x, y) = (
                    libc::fcntl(a, libc::F_DUPFD, 100),
                    libc::fcntl(c, libc::F_DUPFD, 100),
                );
                if x < 0 || y < 0 || libc::dup2(x, 3) < 0 || libc::dup2(y, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd.output().unwrap()
    };
    let out = run("2", &id("fds"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // 0, 1, 2, 3, 4 and the one ls opens for the directory.
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "from three\nfrom four\n6\n"
    );
    // Without --preserve-fds nothing of the caller's reaches the process.
    let out = run("0", &id("fds0"));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("from"));
    // Descriptors that are not there are named.
    let out = b.oci(&[
        "run",
        "--preserve-fds",
        "40",
        "--bundle",
        b.path(),
        &id("fds40"),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not open"));
}
