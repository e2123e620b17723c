//! The acceptance test of the machine model: Debian's Linux kernel booted
//! by `kapsel run` to its busybox userspace, inside the nested testbed
//! (scripts/testbed: QEMU TCG with an emulated SVM CPU, real KVM inside).
//!
//! All scenarios run in one outer-VM boot (tests/nested/job.sh); each test
//! below checks one scenario. They run when KAPSEL_NESTED=1 (the README's
//! test command sets it) and print `SKIP: ...` otherwise.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

const KAPSEL: &str = env!("CARGO_BIN_EXE_kapsel");
const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

struct Scenario {
    log: String,
    err: String,
    exit: i32,
    seen: Option<i64>,
}

type Results = Result<HashMap<String, Scenario>, String>;

fn read(dir: &Path, name: &str, ext: &str) -> String {
    std::fs::read_to_string(dir.join(format!("{name}.{ext}"))).unwrap_or_default()
}

fn run_testbed() -> Results {
    let repo = PathBuf::from(REPO);
    let out = std::env::temp_dir().join(format!("kapsel-nested-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let vmlinux = repo.join(".testbed/l1-vmlinux");
    let build = Command::new(repo.join("scripts/testbed/build.sh"))
        .status()
        .map_err(|e| format!("scripts/testbed/build.sh: {e}"))?;
    if !build.success() {
        return Err(format!("scripts/testbed/build.sh failed: {build}"));
    }
    let status = Command::new(repo.join("scripts/testbed/run.sh"))
        .arg("--kapsel")
        .arg(KAPSEL)
        .arg("--add")
        .arg(format!("{}:files/vmlinux", vmlinux.display()))
        .arg("--out")
        .arg(&out)
        .arg("--timeout")
        .arg("1800")
        .arg("--")
        .arg(repo.join("crates/kapsel/tests/nested/job.sh"))
        .status()
        .map_err(|e| format!("scripts/testbed/run.sh: {e}"))?;
    if !status.success() {
        return Err(format!("the nested testbed failed: {status}"));
    }
    let mut results = HashMap::new();
    for name in [
        "cpus1", "cpus2", "cpus4", "reboot", "restart", "panic", "vmlinux",
    ] {
        let exit = read(&out, name, "exit").trim().parse().unwrap_or(-1);
        results.insert(
            name.to_string(),
            Scenario {
                log: read(&out, name, "log"),
                err: read(&out, name, "err"),
                exit,
                seen: read(&out, name, "seen").trim().parse().ok(),
            },
        );
    }
    Ok(results)
}

/// Runs the testbed once per test process; None when it should not run.
fn results() -> Option<&'static Results> {
    if std::env::var("KAPSEL_NESTED").as_deref() != Ok("1") {
        println!("SKIP: the nested testbed runs with KAPSEL_NESTED=1 (scripts/test.sh sets it)");
        return None;
    }
    static RESULTS: OnceLock<Results> = OnceLock::new();
    Some(RESULTS.get_or_init(run_testbed))
}

fn scenario(name: &str) -> Option<&'static Scenario> {
    let results = results()?;
    match results {
        Ok(map) => Some(&map[name]),
        Err(e) => panic!("{e}"),
    }
}

fn marker<'a>(log: &'a str, key: &str) -> Option<&'a str> {
    log.lines()
        .filter_map(|l| l.trim_end().strip_prefix(key))
        .next()
}

fn check_boot(name: &str, cpus: u32, memory_mib: u64) {
    let Some(s) = scenario(name) else { return };
    assert_eq!(s.exit, 0, "{name}: kapsel failed: {}\n{}", s.err, s.log);
    assert!(s.log.contains("KAPSEL-GUEST-UP"), "{name}: {}", s.log);
    let nproc: u32 = marker(&s.log, "KAPSEL-NPROC=").unwrap().parse().unwrap();
    assert_eq!(nproc, cpus, "{name}");
    let mem_kb: u64 = marker(&s.log, "KAPSEL-MEMTOTAL-KB=")
        .unwrap()
        .parse()
        .unwrap();
    // MemTotal is RAM less what the kernel keeps for itself (its image,
    // page structs): within 25 % below the configured size, never above.
    let configured = memory_mib * 1024;
    assert!(
        mem_kb <= configured && mem_kb * 4 >= configured * 3,
        "{name}: MemTotal {mem_kb} kB for {memory_mib} MiB"
    );
    let epoch: i64 = marker(&s.log, "KAPSEL-EPOCH=").unwrap().parse().unwrap();
    let seen = s.seen.expect("the job saw the clock marker");
    assert!(
        (epoch - seen).abs() <= 5,
        "{name}: guest clock {epoch}, host {seen}"
    );
    assert!(s.log.contains("KAPSEL-TEST=poweroff"), "{name}");
}

#[test]
fn linux_boots_with_one_vcpu() {
    check_boot("cpus1", 1, 256);
}

#[test]
fn linux_boots_with_two_vcpus() {
    check_boot("cpus2", 2, 512);
}

#[test]
fn linux_boots_with_four_vcpus() {
    check_boot("cpus4", 4, 384);
}

#[test]
fn linux_elf_vmlinux_boots_through_pvh() {
    let Some(s) = scenario("vmlinux") else { return };
    assert_eq!(s.exit, 0, "{}\n{}", s.err, s.log);
    assert!(s.log.contains("KAPSEL-GUEST-UP"), "{}", s.log);
    assert_eq!(marker(&s.log, "KAPSEL-NPROC="), Some("1"));
}

#[test]
fn linux_reboot_exits_under_on_reboot_exit() {
    let Some(s) = scenario("reboot") else { return };
    assert_eq!(s.exit, 0, "{}\n{}", s.err, s.log);
    assert!(s.log.contains("KAPSEL-TEST=reboot"), "{}", s.log);
    assert_eq!(s.log.matches("KAPSEL-GUEST-UP").count(), 1);
}

#[test]
fn linux_reboot_restarts_under_on_reboot_restart() {
    let Some(s) = scenario("restart") else { return };
    assert!(
        s.log.matches("KAPSEL-GUEST-UP").count() >= 2,
        "the guest did not come back after its reboot: {}\n{}",
        s.err,
        s.log
    );
}

#[test]
fn linux_kernel_panic_is_a_failure() {
    let Some(s) = scenario("panic") else { return };
    assert_ne!(s.exit, 0, "{}", s.log);
    assert!(s.err.contains("panicked"), "stderr: {}", s.err);
    assert!(s.log.contains("KAPSEL-TEST=badinit"), "{}", s.log);
}
