//! `kapsel run` without `--kernel`: the VM boots through SeaBIOS from its
//! disk, on the host's /dev/kvm. SeaBIOS runs at CPL 0, which this host's
//! KVM emulates slowly (a boot takes about 12 s here, well under a second
//! on hardware); the real operating systems boot in the nested testbed
//! (tests/nested_linux.rs). Each test prints `SKIP: ...` and passes when
//! /dev/kvm or Debian's seabios package is missing.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const KAPSEL: &str = env!("CARGO_BIN_EXE_kapsel");

mod common;
use common::firmware::{boot_sector_disk, seabios_present, seabios_timer_may_stall};
use common::kvm_usable;

fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kapsel-fw-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
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
