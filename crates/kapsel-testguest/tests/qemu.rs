//! Boots every guest under `qemu-system-x86_64 -enable-kvm -M microvm` and
//! checks its output and how it ends. This pins down the guests' behaviour
//! against a reference VMM, so a Kapsel test that differs points at Kapsel.
//!
//! Skipped (with `SKIP: <reason>`) when QEMU or /dev/kvm is unusable.
//! `KAPSEL_QEMU` overrides the QEMU binary.

use std::io::Read;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kapsel_testguest::{debug_exit, expect};

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

struct Run {
    /// The serial console (COM1), `\r\n` already split into lines.
    lines: Vec<String>,
    /// QEMU's exit status.
    status: i32,
    stderr: String,
}

impl Run {
    fn has_line(&self, line: &str) -> bool {
        self.lines.iter().any(|l| l == line)
    }

    fn assert_line(&self, line: &str) {
        assert!(
            self.has_line(line),
            "missing line {line:?}\n{}",
            self.describe()
        );
    }

    fn assert_status(&self, status: i32) {
        assert_eq!(
            self.status,
            status,
            "unexpected QEMU exit status\n{}",
            self.describe()
        );
    }

    /// No exception, no failed power-off.
    fn assert_clean(&self) {
        for line in &self.lines {
            assert!(
                !line.starts_with(expect::EXCEPTION) && line != expect::POWEROFF_FAILED,
                "guest reported {line:?}\n{}",
                self.describe()
            );
        }
    }

    fn describe(&self) -> String {
        format!(
            "--- serial ---\n{}\n--- qemu stderr ---\n{}",
            self.lines.join("\n"),
            self.stderr
        )
    }
}

fn qemu_binary() -> String {
    std::env::var("KAPSEL_QEMU").unwrap_or_else(|_| "qemu-system-x86_64".to_string())
}

/// Why the QEMU tests cannot run here, if they cannot.
fn unusable_reason() -> Option<String> {
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        return Some(format!("/dev/kvm not accessible: {e}"));
    }
    match Command::new(qemu_binary()).arg("--version").output() {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(format!(
            "{} --version failed: {}",
            qemu_binary(),
            out.status
        )),
        Err(e) => Some(format!("{} not usable: {e}", qemu_binary())),
    }
}

/// Boots `elf` with `cpus` vCPUs plus `extra` arguments; None if skipped.
fn boot(elf: &str, cpus: u32, extra: &[&str], timeout: Duration) -> Option<Run> {
    boot_machine("microvm,rtc=on", elf, cpus, extra, timeout)
}

/// Boots `elf` on QEMU machine `machine`; None if skipped.
fn boot_machine(
    machine: &str,
    elf: &str,
    cpus: u32,
    extra: &[&str],
    timeout: Duration,
) -> Option<Run> {
    if let Some(reason) = unusable_reason() {
        println!("SKIP: {reason}");
        return None;
    }
    let smp = cpus.to_string();
    let mut child = Command::new(qemu_binary())
        .args(["-enable-kvm", "-M", machine, "-m", "64M", "-smp", &smp])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-nographic",
            "-serial",
            "stdio",
        ])
        .args([
            "-no-reboot",
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=4",
        ])
        .args(["-kernel", elf])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", qemu_binary()));

    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let err_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });

    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for QEMU") {
            break Some(status);
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(10));
    };
    let stdout = String::from_utf8_lossy(&out_reader.join().unwrap()).into_owned();
    let stderr = String::from_utf8_lossy(&err_reader.join().unwrap()).into_owned();
    let run = Run {
        lines: stdout.lines().map(str::to_string).collect(),
        status: status.and_then(|s| s.code()).unwrap_or(-1),
        stderr,
    };
    assert!(
        status.is_some(),
        "{elf} did not finish within {timeout:?}\n{}",
        run.describe()
    );
    Some(run)
}

#[test]
fn hello_prints_and_powers_off() {
    let Some(run) = boot(kapsel_testguest::HELLO, 1, &[], DEFAULT_TIMEOUT) else {
        return;
    };
    run.assert_clean();
    assert_eq!(run.lines, [expect::HELLO], "{}", run.describe());
    run.assert_status(0);
}

/// Without ACPI tables the guest cannot power off: it must say so and leave
/// through isa-debug-exit. This also proves that the exit status 0 of the
/// other tests comes from the ACPI power-off (microvm is ACPI hardware-
/// reduced: the sleep control register lives in its GED).
#[test]
fn without_acpi_poweroff_fails_loudly() {
    let Some(run) = boot(
        kapsel_testguest::HELLO,
        1,
        &["-M", "microvm,rtc=on,acpi=off"],
        DEFAULT_TIMEOUT,
    ) else {
        return;
    };
    run.assert_line(expect::HELLO);
    run.assert_line(expect::POWEROFF_FAILED);
    run.assert_status(debug_exit::qemu_status(debug_exit::POWEROFF_FAILED));
}

/// q35 has full (not hardware-reduced) ACPI: power-off goes through
/// PM1a_CNT, and its \_S5_ package starts with ZeroOp. Slow here (SeaBIOS
/// runs at CPL 0, which this host emulates).
#[test]
fn hello_powers_off_through_pm1a_cnt_on_q35() {
    let Some(run) = boot_machine(
        "q35",
        kapsel_testguest::HELLO,
        1,
        &[],
        Duration::from_secs(120),
    ) else {
        return;
    };
    run.assert_clean();
    // SeaBIOS prints on the same console without a final newline.
    assert!(
        run.lines.iter().any(|l| l.ends_with(expect::HELLO)),
        "{}",
        run.describe()
    );
    run.assert_status(0);
}

#[test]
fn user_runs_at_cpl3_and_returns() {
    let Some(run) = boot(kapsel_testguest::USER, 1, &[], DEFAULT_TIMEOUT) else {
        return;
    };
    run.assert_clean();
    run.assert_line(expect::USER_CPL);
    run.assert_line(&expect::user_loop());
    run.assert_line(expect::USER_BACK);
    run.assert_status(0);
}

fn smp(cpus: u32) {
    let Some(run) = boot(kapsel_testguest::SMP, cpus, &[], DEFAULT_TIMEOUT) else {
        return;
    };
    run.assert_clean();
    for apic_id in 0..cpus {
        run.assert_line(&expect::cpu_online(apic_id));
    }
    run.assert_line(&expect::smp_cpus(cpus));
    run.assert_status(0);
}

#[test]
fn smp_1_cpu() {
    smp(1);
}

#[test]
fn smp_2_cpus() {
    smp(2);
}

#[test]
fn smp_4_cpus() {
    smp(4);
}

/// Unix seconds of a UTC date (days_from_civil, as the guest computes it).
fn unix_seconds(y: i64, mo: i64, d: i64, h: i64, mi: i64, s: i64) -> i64 {
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if mo > 2 { mo - 3 } else { mo + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146097 + doe - 719468) * 86400 + h * 3600 + mi * 60 + s
}

#[test]
fn rtc_reads_the_host_time() {
    let Some(run) = boot(kapsel_testguest::RTC, 1, &[], DEFAULT_TIMEOUT) else {
        return;
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    run.assert_clean();
    run.assert_status(0);

    let date = run
        .lines
        .iter()
        .find_map(|l| l.strip_prefix("kapsel-testguest: rtc "))
        .filter(|d| !d.starts_with("epoch="))
        .unwrap_or_else(|| panic!("no rtc date line\n{}", run.describe()));
    let epoch: i64 = run
        .lines
        .iter()
        .find_map(|l| l.strip_prefix("kapsel-testguest: rtc epoch="))
        .unwrap_or_else(|| panic!("no rtc epoch line\n{}", run.describe()))
        .parse()
        .expect("epoch is a number");

    // YYYY-MM-DDTHH:MM:SS
    assert_eq!(date.len(), 19, "bad date {date:?}");
    let field = |r: std::ops::Range<usize>| date[r].parse::<i64>().expect("numeric date field");
    let from_date = unix_seconds(
        field(0..4),
        field(5..7),
        field(8..10),
        field(11..13),
        field(14..16),
        field(17..19),
    );
    assert_eq!(from_date, epoch, "date {date} and epoch {epoch} disagree");
    // QEMU's RTC starts at the host's UTC time.
    assert!((now - epoch).abs() < 60, "guest time {epoch} vs host {now}");
}

#[test]
fn reset_through_i8042() {
    // microvm has no i8042 of its own; add one.
    let Some(run) = boot(
        kapsel_testguest::RESET,
        1,
        &["-device", "i8042"],
        DEFAULT_TIMEOUT,
    ) else {
        return;
    };
    run.assert_clean();
    run.assert_line(expect::RESETTING);
    assert!(!run.has_line(expect::RESET_FAILED), "{}", run.describe());
    // -no-reboot turns the reset into an exit with status 0.
    run.assert_status(0);
}

#[test]
fn reset_without_i8042_reports_failure() {
    let Some(run) = boot(kapsel_testguest::RESET, 1, &[], DEFAULT_TIMEOUT) else {
        return;
    };
    run.assert_line(expect::RESETTING);
    run.assert_line(expect::RESET_FAILED);
    run.assert_status(debug_exit::qemu_status(debug_exit::RESET_FAILED));
}

#[test]
fn triplefault_ends_the_vm() {
    let Some(run) = boot(kapsel_testguest::TRIPLEFAULT, 1, &[], DEFAULT_TIMEOUT) else {
        return;
    };
    run.assert_clean();
    assert_eq!(run.lines, [expect::TRIPLE_FAULT_NEXT], "{}", run.describe());
    // A triple fault is a reset request: -no-reboot makes QEMU exit with 0.
    // Had the guest survived, it would have left through isa-debug-exit.
    run.assert_status(0);
}

#[test]
fn cpl0loop_finishes() {
    let Some(run) = boot(kapsel_testguest::CPL0LOOP, 1, &[], Duration::from_secs(120)) else {
        return;
    };
    run.assert_clean();
    run.assert_line(expect::CPL0_LOOP_DONE);
    run.assert_status(0);
}

#[test]
fn cmdline_is_echoed() {
    let cmdline = "console=ttyS0 kapsel.test=42 a-b_c/d";
    let Some(run) = boot(
        kapsel_testguest::CMDLINE,
        1,
        &["-append", cmdline],
        DEFAULT_TIMEOUT,
    ) else {
        return;
    };
    run.assert_clean();
    run.assert_line(&expect::cmdline(cmdline));
    run.assert_status(0);
}
