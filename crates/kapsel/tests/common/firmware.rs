//! Firmware boots on the host's KVM: SeaBIOS and a boot sector made in the
//! test (tests/firmware_kvm.rs, and kapseld's in tests/daemon.rs).

use std::path::{Path, PathBuf};

/// Debian's SeaBIOS build that Kapsel boots through by default.
pub const SEABIOS: &str = "/usr/share/seabios/bios-microvm.bin";

/// Whether Debian's SeaBIOS is installed; prints the `SKIP:` line when not.
pub fn seabios_present() -> bool {
    if Path::new(SEABIOS).exists() {
        return true;
    }
    println!("SKIP: {SEABIOS} missing (apt install seabios)");
    false
}

/// A 1 MiB disk whose MBR boot code talks through the BIOS only: it
/// prints a prompt with int 10h, waits for a key with int 16h, prints the
/// key, waits two timer ticks, then powers off through Kapsel's ACPI
/// sleep control register. With
/// SeaBIOS's serial console, int 10h output appears on COM1 and keys typed
/// on COM1 reach int 16h.
pub fn boot_sector_disk(dir: &Path) -> PathBuf {
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
pub fn seabios_timer_may_stall() -> bool {
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
