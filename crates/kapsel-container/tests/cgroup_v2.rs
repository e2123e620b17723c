//! cgroup v2's freezer and figures on whatever cgroup2 hierarchy this host
//! has: the whole tree on a v2 host, the controller-less
//! /sys/fs/cgroup/unified of a hybrid one (its freezer and cpu.stat are
//! built into cgroup2). `kapsel-oci pause`, `resume` and `events` take
//! this path on v2 hosts; tests/cli of kapsel-oci cover v1 where the host
//! is v1 or hybrid.

use kapsel_container::cgroup::{Cgroup, CgroupMode, Limits};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn cgroup2_mount() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        let point = left.split(' ').nth(4)?;
        right.starts_with("cgroup2 ").then(|| PathBuf::from(point))
    })
}

fn size(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

#[test]
fn v2_freezer_stops_and_thaws_the_tasks_and_stats_count_cpu() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("SKIP: cgroups need root");
        return;
    }
    let Some(mount) = cgroup2_mount() else {
        println!("SKIP: this host has no cgroup2 hierarchy");
        return;
    };
    let mode = CgroupMode::Unified {
        root: mount.clone(),
        base: mount.clone(),
        controllers: Vec::new(),
    };
    let name = format!("kapsel-test-v2freeze-{}", std::process::id());
    let mut cg = Cgroup::create_at(&mode, Path::new(&name), &Limits::default(), false).unwrap();
    let tick = std::env::temp_dir().join(format!("{name}.tick"));
    let _ = std::fs::remove_file(&tick);
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "while :; do echo x >> {}; i=0; while [ $i -lt 2000 ]; do i=$((i+1)); done; done",
            tick.display()
        ))
        .spawn()
        .unwrap();
    cg.add(child.id() as i32).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while size(&tick) == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    cg.freeze().unwrap();
    assert!(cg.is_frozen().unwrap());
    // Another process's view, as `kapsel-oci state` has it.
    let opened = Cgroup::open(&mode, &[mount.join(&name)]);
    assert!(opened.is_frozen().unwrap());
    let at = size(&tick);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(size(&tick), at, "a task ran while frozen");
    opened.thaw().unwrap();
    assert!(!cg.is_frozen().unwrap());
    let deadline = Instant::now() + Duration::from_secs(10);
    while size(&tick) == at && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(size(&tick) > at, "the task did not run again after thaw");
    let stats = cg.stats();
    assert!(stats.cpu_total > 0, "{stats:?}");
    child.kill().unwrap();
    child.wait().unwrap();
    let _ = std::fs::remove_file(&tick);
    assert!(cg.remove());
}
