//! `kapsel run` without `--kernel`: the VM boots through SeaBIOS from its
//! disk, on the host's /dev/kvm. SeaBIOS runs at CPL 0, which this host's
//! KVM emulates slowly (a boot takes about 12 s here, well under a second
//! on hardware); the real operating systems boot in the nested testbed
//! (tests/nested_linux.rs). Each test prints `SKIP: ...` and passes when
//! /dev/kvm or Debian's seabios package is missing.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const KAPSEL: &str = env!("CARGO_BIN_EXE_kapsel");
const SEABIOS: &str = "/usr/share/seabios/bios-microvm.bin";

mod common;
use common::kvm_usable;

fn seabios_present() -> bool {
    if Path::new(SEABIOS).exists() {
        return true;
    }
    println!("SKIP: {SEABIOS} missing (apt install seabios)");
    false
}

fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kapsel-fw-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A 1 MiB disk whose MBR boot code talks through the BIOS only: it
/// prints a prompt with int 10h, waits for a key with int 16h, prints the
/// key, waits two timer ticks, then powers off through Kapsel's ACPI
/// sleep control register. With
/// SeaBIOS's serial console, int 10h output appears on COM1 and keys typed
/// on COM1 reach int 16h.
fn boot_sector_disk(dir: &Path) -> PathBuf {
    const PRINT: usize = 0x100;
    const MSG1: usize = 0x140;
    const MSG2: usize = 0x170;
    const MSG3: usize = 0x190;
    let mut s = vec![0u8; 512];
    let addr = |off: usize| ((0x7c00 + off) as u16).to_le_bytes();
    let mut code: Vec<u8> = vec![
        0x31, 0xc0, // xor ax, ax
        0x8e, 0xd8, // mov ds, ax
        0x8e, 0xd0, // mov ss, ax
        0xbc, 0x00, 0x7c, // mov sp, 0x7c00
        0xfc, // cld
    ];
    let call_print = |code: &mut Vec<u8>, msg: usize| {
        code.push(0xbe); // mov si, msg
        code.extend_from_slice(&addr(msg));
        let after = code.len() + 3;
        code.push(0xe8); // call print
        code.extend_from_slice(&((PRINT as i32 - after as i32) as i16).to_le_bytes());
    };
    call_print(&mut code, MSG1);
    code.extend_from_slice(&[0xb4, 0x00, 0xcd, 0x16, 0x50]); // mov ah, 0; int 16h; push ax
    call_print(&mut code, MSG2);
    code.extend_from_slice(&[
        0x58, // pop ax
        0xb4, 0x0e, // mov ah, 0x0e
        0xbb, 0x07, 0x00, // mov bx, 7
        0xcd, 0x10, // int 10h
    ]);
    call_print(&mut code, MSG3);
    // SeaBIOS's serial console sends int 10h output lazily, on its next
    // timer tick: keep calling int 16h for two BIOS ticks (BDA 0x46c) so
    // that the last line is out before the power-off.
    code.extend_from_slice(&[
        0xa1, 0x6c, 0x04, // mov ax, [0x46c]
        0x05, 0x02, 0x00, // add ax, 2
        0x89, 0xc1, // mov cx, ax
        0xb4, 0x01, 0xcd, 0x16, // wait: mov ah, 1; int 16h
        0xa1, 0x6c, 0x04, // mov ax, [0x46c]
        0x39, 0xc8, // cmp ax, cx
        0x72, 0xf5, // jb wait
    ]);
    code.extend_from_slice(&[
        0xba, 0xc0, 0x03, // mov dx, 0x3c0 (ACPI sleep control)
        0xb0, 0x34, // mov al, SLP_EN | SLP_TYP(5) << 2
        0xee, // out dx, al
        0xf4, // hlt
        0xeb, 0xfd, // jmp to the hlt
    ]);
    assert!(code.len() < PRINT);
    s[..code.len()].copy_from_slice(&code);
    // print: lodsb; test al, al; jz .ret; mov ah, 0x0e; mov bx, 7; int 10h; jmp print; .ret: ret
    let print = [
        0xac, 0x84, 0xc0, 0x74, 0x09, 0xb4, 0x0e, 0xbb, 0x07, 0x00, 0xcd, 0x10, 0xeb, 0xf2, 0xc3,
    ];
    s[PRINT..PRINT + print.len()].copy_from_slice(&print);
    for (at, msg) in [
        (MSG1, &b"KAPSEL-MBR: press a key\r\n\0"[..]),
        (MSG2, b"KAPSEL-MBR: got \0"),
        (MSG3, b"\r\n\0"),
    ] {
        s[at..at + msg.len()].copy_from_slice(msg);
    }
    s[510] = 0x55;
    s[511] = 0xaa;
    let path = dir.join("mbr.img");
    let mut disk = s;
    disk.resize(1 << 20, 0);
    std::fs::write(&path, disk).unwrap();
    path
}

/// Whether SeaBIOS's timer may stall for minutes on this host right now.
///
/// SeaBIOS keeps time in a 32-bit count of TSC >> shift (shift chosen so
/// that the rate stays below 6 MHz, `tsctimer_setfreq`) and compares it
/// with a deadline that starts at 0 (`clock_poll_irq`): on a VM whose TSC
/// starts at 0, as Linux's KVM sets it, that is fine. This host's KVM
/// ignores the VMM's IA32_TSC write and shows guests the host's TSC: while
/// the count's top bit is set, SeaBIOS's serial console and keyboard wait
/// for a tick that comes only when the count wraps (up to 7.5 minutes).
fn seabios_timer_may_stall() -> bool {
    // SAFETY: rdtsc has no preconditions on x86_64.
    let tsc = unsafe { core::arch::x86_64::_rdtsc() };
    let khz = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("cpu MHz"))
                .and_then(|l| l.split(':').nth(1))
                .and_then(|v| v.trim().parse::<f64>().ok())
        })
        .map_or(2_000_000, |mhz| (mhz * 1000.0) as u64);
    let (mut rate, mut shift) = (khz, 0);
    while rate >= 6000 {
        shift += 1;
        rate = (rate + 1) >> 1;
    }
    ((tsc >> shift) as u32 as i32) < 0
}

#[test]
fn a_boot_sector_boots_through_seabios_with_the_serial_console_as_screen() {
    if !kvm_usable() || !seabios_present() {
        return;
    }
    let dir = tempdir("mbr");
    let disk = boot_sector_disk(&dir);
    let disk_arg = format!("{},format=raw", disk.display());
    let started = Instant::now();
    let stall_at_start = seabios_timer_may_stall();
    let mut child = Command::new(KAPSEL)
        .args(["run", "--disk", &disk_arg, "--memory", "64M"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kapsel runs");
    let mut stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, lines) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for l in BufReader::new(stdout).split(b'\n') {
            let Ok(l) = l else { break };
            let l = String::from_utf8_lossy(&l).into_owned();
            all.push_str(&l);
            all.push('\n');
            let _ = tx.send(l);
        }
        all
    });
    let deadline = started + Duration::from_secs(90);
    let mut prompted = false;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match lines.recv_timeout(left) {
            Ok(l) if l.contains("KAPSEL-MBR: press a key") => {
                prompted = true;
                break;
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    if !prompted {
        let _ = child.kill();
    }
    let to_prompt = started.elapsed();
    let _ = stdin.write_all(b"k");
    let _ = stdin.flush();
    let mut status = None;
    while Instant::now() < deadline {
        if let Some(s) = child.try_wait().unwrap() {
            status = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if status.is_none() {
        let _ = child.kill();
    }
    // Reaps the child in every case (std keeps a status try_wait saw).
    let status = child.wait().ok().or(status);
    let out = reader.join().unwrap();
    let mut err = String::new();
    let _ = std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err);
    println!(
        "SeaBIOS to the boot sector's prompt: {:.1} s, whole run {:.1} s",
        to_prompt.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    if !prompted && (stall_at_start || seabios_timer_may_stall()) {
        println!(
            "SKIP: SeaBIOS's TSC timer is in its stalled half on this host (its KVM shows \
             guests the host's TSC); the boot is checked in the nested testbed"
        );
        return;
    }
    assert!(
        prompted,
        "no prompt from the boot sector\nstdout: {out}\nstderr: {err}"
    );
    // SeaBIOS's own screen output reached the serial console too.
    assert!(out.contains("SeaBIOS (version"), "{out}");
    assert!(out.contains("Booting from Hard Disk"), "{out}");
    assert!(
        out.contains("KAPSEL-MBR: got k"),
        "key typed on the console: {out}"
    );
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{out}\n{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn firmware_options_are_checked() {
    if !kvm_usable() {
        return;
    }
    let dir = tempdir("opts");
    let disk = dir.join("d.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let disk_arg = format!("{},format=raw", disk.display());
    let run = |args: &[&str]| {
        let out = Command::new(KAPSEL)
            .arg("run")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // A missing image names the package that ships it.
    let (code, err) = run(&["--disk", &disk_arg, "--bios", "/no/such/bios.bin"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("/no/such/bios.bin is missing") && err.contains("apt install seabios"),
        "{err}"
    );
    // Not a BIOS image.
    let (code, err) = run(&["--disk", &disk_arg, "--bios", "/etc/hostname"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("firmware /etc/hostname:"), "{err}");
    // Nothing to boot, and options that do not go together.
    let (code, err) = run(&[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("--kernel PATH") && err.contains("--disk PATH"),
        "{err}"
    );
    let (code, err) = run(&["--kernel", "/k", "--firmware", "bios"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--firmware"), "{err}");
    let (code, err) = run(&["--disk", &disk_arg, "--initrd", "/i"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--initrd goes with --kernel"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
