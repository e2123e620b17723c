//! `kapsel run` against the bare-metal test guests on the host's /dev/kvm.
//! Each test prints `SKIP: ...` and passes when /dev/kvm cannot be used.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const KAPSEL: &str = env!("CARGO_BIN_EXE_kapsel");

mod common;
use common::kvm_usable;

fn run(args: &[&str]) -> Output {
    Command::new(KAPSEL)
        .arg("run")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("kapsel runs")
}

fn boot(guest: &str, extra: &[&str]) -> (i32, String, String) {
    let mut args = vec!["--kernel", guest, "--memory", "64M"];
    args.extend_from_slice(extra);
    let out = run(&args);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn hello_guest_prints_and_powers_off() {
    if !kvm_usable() {
        return;
    }
    let (code, out, err) = boot(kapsel_testguest::HELLO, &[]);
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(
        out.contains("kapsel-testguest: hello from PVH guest"),
        "{out}"
    );
    assert!(err.is_empty(), "a clean power-off says nothing: {err}");
}

#[test]
fn every_vcpu_comes_online_with_its_apic_id() {
    if !kvm_usable() {
        return;
    }
    for cpus in [1u8, 2, 4, 8] {
        let n = cpus.to_string();
        let (code, out, err) = boot(kapsel_testguest::SMP, &["--cpus", &n]);
        assert_eq!(code, 0, "{out}{err}");
        let want = format!("kapsel-testguest: smp cpus={cpus}");
        assert!(out.lines().any(|l| l.trim_end() == want), "{out}");
        for id in 0..cpus {
            assert!(
                out.contains(&format!("cpu apic_id={id} online")),
                "vCPU {id} missing: {out}"
            );
        }
    }
}

#[test]
fn rtc_shows_the_host_time() {
    if !kvm_usable() {
        return;
    }
    let (code, out, err) = boot(kapsel_testguest::RTC, &[]);
    assert_eq!(code, 0, "{out}{err}");
    let epoch: i64 = out
        .lines()
        .find_map(|l| l.strip_prefix("kapsel-testguest: rtc epoch="))
        .expect("epoch line")
        .trim()
        .parse()
        .unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!((now - epoch).abs() <= 5, "guest {epoch} vs host {now}");
}

#[test]
fn command_line_reaches_the_guest() {
    if !kvm_usable() {
        return;
    }
    let (code, out, _) = boot(
        kapsel_testguest::CMDLINE,
        &["--cmdline", "console=ttyS0 kapsel.marker=42"],
    );
    assert_eq!(code, 0);
    assert!(
        out.contains("cmdline=console=ttyS0 kapsel.marker=42"),
        "{out}"
    );
}

#[test]
fn guest_code_runs_at_cpl3_with_port_io() {
    if !kvm_usable() {
        return;
    }
    let (code, out, err) = boot(kapsel_testguest::USER, &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("user cpl=3"), "{out}");
    assert!(out.contains("cpl3 loop ok"), "{out}");
    assert!(out.contains("back at cpl=0"), "{out}");
}

#[test]
fn i8042_reset_exits_cleanly_by_default() {
    if !kvm_usable() {
        return;
    }
    let (code, out, err) = boot(kapsel_testguest::RESET, &["--on-reboot", "exit"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("resetting"));
    assert!(!out.contains("reset failed"), "{out}");
}

#[test]
fn reset_restarts_the_guest_under_on_reboot_restart() {
    if !kvm_usable() {
        return;
    }
    let dir = tempdir("restart");
    let log = dir.join("console.log");
    let console = format!("file:{}", log.display());
    let mut child = common::kapsel_run(kapsel_testguest::RESET)
        .args(["--on-reboot", "restart", "--console", &console])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut boots = 0;
    while Instant::now() < deadline {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        boots = text.matches("kapsel-testguest: resetting").count();
        if boots >= 3 {
            break;
        }
        assert!(child.try_wait().unwrap().is_none(), "kapsel exited: {text}");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(boots >= 3, "the guest booted {boots} times");
}

#[test]
fn triple_fault_is_a_failure_with_a_reason() {
    if !kvm_usable() {
        return;
    }
    let (code, out, err) = boot(kapsel_testguest::TRIPLEFAULT, &[]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("triple fault next"));
    assert_eq!(err.trim(), "kapsel run: guest triple fault on vCPU 0");
}

#[test]
fn console_file_and_none() {
    if !kvm_usable() {
        return;
    }
    let dir = tempdir("console");
    let log = dir.join("serial.log");
    let console = format!("file:{}", log.display());
    let (code, out, _) = boot(kapsel_testguest::HELLO, &["--console", &console]);
    assert_eq!(code, 0);
    assert!(out.is_empty(), "{out}");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("hello from PVH guest"), "{text}");
    let (code, out, _) = boot(kapsel_testguest::HELLO, &["--console", "none"]);
    assert_eq!((code, out.as_str()), (0, ""));
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("kapsel-test-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn assert_usage_error(args: &[&str], needle: &str) {
    let out = run(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
    assert!(
        err.contains(needle),
        "{args:?}: expected {needle:?} in: {err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
}

#[test]
fn bad_input_gets_exit_code_2_and_a_fix() {
    if !kvm_usable() {
        return;
    }
    let hello = kapsel_testguest::HELLO;
    assert_usage_error(
        &["--kernel", "/nonexistent/vmlinuz"],
        "/nonexistent/vmlinuz",
    );
    let dir = tempdir("badinput");
    let not_kernel = dir.join("notes.txt");
    std::fs::write(&not_kernel, "just text").unwrap();
    let nk = not_kernel.to_str().unwrap();
    assert_usage_error(&["--kernel", nk], "not a bootable kernel");
    assert_usage_error(&["--kernel", hello, "--memory", "0"], "at least 32 MiB");
    assert_usage_error(
        &["--kernel", hello, "--memory", "64T"],
        "more than this host has",
    );
    assert_usage_error(&["--kernel", hello, "--cpus", "0"], "allows 1 to");
    assert_usage_error(
        &["--kernel", hello, "--hide-cpuid", "xsav"],
        "known features",
    );
    let big = dir.join("big.initrd");
    let f = std::fs::File::create(&big).unwrap();
    f.set_len(80 << 20).unwrap();
    assert_usage_error(
        &[
            "--kernel",
            hello,
            "--memory",
            "64M",
            "--initrd",
            big.to_str().unwrap(),
        ],
        "does not fit",
    );
    assert!(Path::new(hello).exists());
}

#[test]
fn bad_disks_get_exit_code_2_and_a_fix() {
    if !kvm_usable() {
        return;
    }
    let hello = kapsel_testguest::HELLO;
    let dir = tempdir("baddisk");
    assert_usage_error(
        &["--kernel", hello, "--disk", "/nonexistent/disk.img"],
        "/nonexistent/disk.img",
    );
    // A qcow2 image declared raw, and a raw one declared qcow2.
    let qcow2 = dir.join("a.qcow2");
    let raw = dir.join("b.raw");
    std::fs::File::create(&raw)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let made = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&qcow2)
        .arg("1M")
        .status();
    if !made.is_ok_and(|s| s.success()) {
        println!("SKIP: qemu-img (qemu-utils) not available for the qcow2 cases");
        return;
    }
    let spec = |p: &Path, f: &str| format!("{},format={f}", p.display());
    assert_usage_error(
        &["--kernel", hello, "--disk", &spec(&qcow2, "raw")],
        "a.qcow2",
    );
    assert_usage_error(
        &["--kernel", hello, "--disk", &spec(&raw, "qcow2")],
        "b.raw",
    );
    // An overlay whose backing file is gone: the message names it.
    let overlay = dir.join("c.qcow2");
    let made = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(&raw)
        .arg(&overlay)
        .status()
        .unwrap();
    assert!(made.success());
    std::fs::remove_file(&raw).unwrap();
    assert_usage_error(
        &["--kernel", hello, "--disk", overlay.to_str().unwrap()],
        "b.raw",
    );
    assert_usage_error(&["--kernel", hello, "--net", "tap=bad/name"], "tap");
}

/// Starts `kapsel run` on the CPL-0 loop guest (busy for seconds here,
/// deaf to the power button) and waits until its vCPU runs.
fn start_busy_guest(extra: &[&str]) -> std::process::Child {
    let child = common::kapsel_run(kapsel_testguest::CPL0LOOP)
        .args(["--console", "none"])
        .args(extra)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    child
}

fn signal(child: &std::process::Child, sig: i32) {
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
}

#[test]
fn a_second_signal_stops_a_guest_that_ignores_the_power_button() {
    if !kvm_usable() {
        return;
    }
    let child = start_busy_guest(&[]);
    signal(&child, libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(200));
    signal(&child, libc::SIGTERM);
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("pressing the guest's ACPI power button"),
        "{err}"
    );
    assert!(
        err.contains("VM stopped: stopped by a second signal"),
        "{err}"
    );
}

#[test]
fn the_shutdown_timeout_stops_a_guest_that_ignores_the_power_button() {
    if !kvm_usable() {
        return;
    }
    let child = start_busy_guest(&["--shutdown-timeout", "1"]);
    let start = Instant::now();
    signal(&child, libc::SIGINT);
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("did not power off within 1 s"), "{err}");
    assert!(start.elapsed() >= Duration::from_millis(900));
}
