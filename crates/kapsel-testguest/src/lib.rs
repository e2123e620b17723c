//! Small bare-metal x86_64 guest programs for Kapsel's KVM tests and
//! benchmarks.
//!
//! Every guest is a static ELF linked at [`LOAD_ADDRESS`] that carries a PVH
//! entry note (`XEN_ELFNOTE_PHYS32_ENTRY`), so it boots through
//! linux-loader's PVH path and, unchanged, under
//! `qemu-system-x86_64 -enable-kvm -M microvm -kernel <guest>.elf`.
//! The guests are freestanding C and assembly in `guest/`, built by
//! `build.rs` with GCC; the constants here are the absolute paths of the
//! built files.
//!
//! # What a guest does
//!
//! A shared runtime enters long mode (4 GiB identity map, 2 MiB pages, all
//! user-accessible), installs a GDT, a 64-bit TSS and an IDT, initialises
//! COM1 and calls the guest. Every line a guest prints on COM1 starts with
//! [`PREFIX`]. When it is done the guest powers off through ACPI (S5); a
//! CPU exception prints `kapsel-testguest: EXCEPTION vector=N rip=0x.. err=0x..`
//! and fails (see [`debug_exit`]).
//!
//! # What the VMM must provide
//!
//! - PVH boot: `hvm_start_info` in `%ebx` with `rsdp_paddr` (or an RSDP in
//!   0xE0000–0xFFFFF), `cmdline_paddr` for [`CMDLINE`].
//! - A 16550 UART at I/O port 0x3F8 (COM1); the guest polls LSR bit 5.
//! - ACPI: RSDP, XSDT (or RSDT), FADT and a DSDT containing
//!   `Name(_S5_, Package() { n, ... })`. With FADT flag `HW_REDUCED_ACPI`
//!   the guest writes `(n << 2) | (1 << 5)` as a byte to `SLEEP_CONTROL_REG`
//!   (I/O or memory), else `(n << 10) | (1 << 13)` as 16 bits to
//!   PM1a_CNT (and PM1b_CNT when present). Checksums must be right.
//! - [`SMP`]: a MADT with one enabled Local APIC entry per vCPU and an
//!   xAPIC at the MADT's address (0xFEE00000); guest RAM at
//!   [`AP_TRAMPOLINE`] for the real-mode start-up code.
//! - [`RTC`]: a CMOS RTC at ports 0x70/0x71 (century in register 0x32 or the
//!   one FADT.CENTURY names).
//! - [`RESET`]: an i8042 command port at 0x64 that resets on 0xFE.
//! - Reads of port 0x80 (I/O delay) and writes to port 0xF4 (QEMU's
//!   isa-debug-exit) must be harmless if no device is there.

/// Guest physical address every guest is linked and loaded at (1 MiB).
pub const LOAD_ADDRESS: u64 = 0x10_0000;

/// Guest physical address where [`SMP`] copies its real-mode AP start-up
/// code (SIPI vector 0x08). It overwrites 4 KiB there after reading ACPI.
pub const AP_TRAMPOLINE: u64 = 0x8000;

/// The prefix of every line a guest prints on the serial console.
pub const PREFIX: &str = "kapsel-testguest: ";

/// Prints `kapsel-testguest: hello from PVH guest` and powers off.
///
/// The boot benchmark guest: all at CPL 0 with as few instructions as
/// possible.
pub const HELLO: &str = concat!(env!("OUT_DIR"), "/hello.elf");

/// Drops to CPL 3 with IOPL 3, runs a 64M-iteration arithmetic loop there,
/// prints from CPL 3 through port I/O, returns to CPL 0 and powers off.
///
/// Prints `user cpl=3`, `cpl3 loop ok sum=0x<USER_LOOP_SUM>` and
/// `back at cpl=0`.
pub const USER: &str = concat!(env!("OUT_DIR"), "/user.elf");

/// Starts every CPU listed in the MADT with INIT–SIPI–SIPI; each prints
/// `cpu apic_id=N online`, then the BSP prints `smp cpus=N` and powers off.
pub const SMP: &str = concat!(env!("OUT_DIR"), "/smp.elf");

/// Reads the CMOS RTC and prints `rtc YYYY-MM-DDTHH:MM:SS` and
/// `rtc epoch=N` (Unix seconds), then powers off.
pub const RTC: &str = concat!(env!("OUT_DIR"), "/rtc.elf");

/// Prints `resetting`, then writes 0xFE to the i8042 command port 0x64.
/// If the machine survives it prints `reset failed` and stops
/// ([`debug_exit::RESET_FAILED`]).
pub const RESET: &str = concat!(env!("OUT_DIR"), "/reset.elf");

/// Prints `triple fault next`, loads an empty IDT and executes `int3`:
/// the vCPU triple-faults (a shutdown the VMM must report).
pub const TRIPLEFAULT: &str = concat!(env!("OUT_DIR"), "/triplefault.elf");

/// Runs a tight 2,000,000-iteration loop at CPL 0, prints `cpl0 loop done`
/// and powers off: about a millisecond under hardware virtualization,
/// seconds where the host emulates guest CPL 0.
pub const CPL0LOOP: &str = concat!(env!("OUT_DIR"), "/cpl0loop.elf");

/// Prints `cmdline=<string at start_info.cmdline_paddr>` and powers off.
pub const CMDLINE: &str = concat!(env!("OUT_DIR"), "/cmdline.elf");

/// A polled virtio 1.x driver (modern PCI) that runs at CPL 3: enumerates
/// PCI bus 0 through ports 0xCF8/0xCFC, walks the virtio capabilities and
/// tests the devices the command line names (see [`virtio`] for the
/// protocol and the lines it prints).
pub const VIRTIO: &str = concat!(env!("OUT_DIR"), "/virtio.elf");

/// Waits like an idle OS (`hlt` with interrupts on) after printing
/// `idle ready`: serial input is echoed and each line is printed back as
/// `line TEXT`; the line `poweroff` or the ACPI power button (the GED's
/// GSI 9, which prints `power button`) powers the machine off. Uses no CPU
/// while nothing happens: the daemon's tests and benchmarks run many.
pub const IDLE: &str = concat!(env!("OUT_DIR"), "/idle.elf");

/// Every guest as (name, path of its ELF file).
pub const ALL: &[(&str, &str)] = &[
    ("hello", HELLO),
    ("user", USER),
    ("smp", SMP),
    ("rtc", RTC),
    ("reset", RESET),
    ("triplefault", TRIPLEFAULT),
    ("cpl0loop", CPL0LOOP),
    ("cmdline", CMDLINE),
    ("virtio", VIRTIO),
    ("idle", IDLE),
];

/// The sum [`USER`]'s CPL 3 loop computes and prints (`%016x`):
/// `sum = sum * 6364136223846793005 + i` (wrapping) for `i` in `0..64 Mi`.
pub const USER_LOOP_SUM: u64 = 0x8a09_2d22_fe00_0000;

/// Exact lines (without [`PREFIX`]'s variations) the guests print.
pub mod expect {
    /// [`HELLO`](crate::HELLO)'s only line.
    pub const HELLO: &str = "kapsel-testguest: hello from PVH guest";
    /// [`USER`](crate::USER): the CPL observed in user mode.
    pub const USER_CPL: &str = "kapsel-testguest: user cpl=3";
    /// [`USER`](crate::USER): back in the kernel after the CPL 3 part.
    pub const USER_BACK: &str = "kapsel-testguest: back at cpl=0";
    /// [`RESET`](crate::RESET): printed just before the reset request.
    pub const RESETTING: &str = "kapsel-testguest: resetting";
    /// [`RESET`](crate::RESET): printed if the machine survived the reset.
    pub const RESET_FAILED: &str = "kapsel-testguest: reset failed";
    /// [`TRIPLEFAULT`](crate::TRIPLEFAULT): printed just before the fault.
    pub const TRIPLE_FAULT_NEXT: &str = "kapsel-testguest: triple fault next";
    /// [`CPL0LOOP`](crate::CPL0LOOP)'s only line.
    pub const CPL0_LOOP_DONE: &str = "kapsel-testguest: cpl0 loop done";
    /// Printed by any guest whose ACPI power-off did not stop the machine.
    pub const POWEROFF_FAILED: &str = "kapsel-testguest: poweroff failed";
    /// Start of the line a CPU exception prints.
    pub const EXCEPTION: &str = "kapsel-testguest: EXCEPTION ";

    /// [`USER`](crate::USER)'s loop result line.
    pub fn user_loop() -> String {
        format!(
            "kapsel-testguest: cpl3 loop ok sum=0x{:016x}",
            crate::USER_LOOP_SUM
        )
    }

    /// [`SMP`](crate::SMP)'s summary line for `cpus` CPUs.
    pub fn smp_cpus(cpus: u32) -> String {
        format!("kapsel-testguest: smp cpus={cpus}")
    }

    /// [`SMP`](crate::SMP)'s line for the CPU with APIC ID `apic_id`.
    pub fn cpu_online(apic_id: u32) -> String {
        format!("kapsel-testguest: cpu apic_id={apic_id} online")
    }

    /// [`CMDLINE`](crate::CMDLINE)'s line for the command line `cmdline`.
    pub fn cmdline(cmdline: &str) -> String {
        format!("kapsel-testguest: cmdline={cmdline}")
    }
}

/// What [`VIRTIO`] does, and what the tests compute the same way.
///
/// The command line is a list of words separated by spaces (others are
/// ignored):
///
/// - `blk`: every virtio-blk disk is tested. A writable one (blocks of
///   4 KiB, at most `blk-mib=N` MiB, default 64) gets three passes of
///   4 KiB requests, up to 64 in flight, some with the data split over two
///   descriptors: write generation 0 everywhere; write generation 1 to
///   every fourth block while reading and checking the others; read and
///   check everything. Then FLUSH, GET_ID, a read at `capacity` and one
///   across the end (both must fail with IOERR) and a read that must still
///   work. Prints [`blk_ok`](virtio::blk_ok). A read-only disk (it must
///   offer `VIRTIO_BLK_F_RO`; its size a multiple of 4 KiB up to 64 MiB) is
///   read whole and hashed ([`hash`](virtio::hash)); a write must fail
///   with IOERR and change nothing. Prints [`blk_ro_ok`](virtio::blk_ro_ok).
/// - `blk-layout`: with `blk`, a writable disk also gets requests in other
///   valid descriptor layouts (virtio 1.x 2.6.4: the header split over two
///   descriptors, header and data in one, data and status in one), which
///   rewrite blocks 0 to 2 with what they hold. Prints
///   [`BLK_LAYOUT_OK`](virtio::BLK_LAYOUT_OK) after a `blk layout ...`
///   line with each request's status and used length.
/// - `blk-flush=N`: with `blk`, the write pass and the mixed pass issue a
///   FLUSH after every N batches (of up to 64 requests), printing
///   [`BLK_FLUSH`](virtio::BLK_FLUSH) before it and
///   [`BLK_FLUSHED`](virtio::BLK_FLUSHED) once it completed, both followed
///   by `pass=P upto=B`: the blocks below B written in pass P (0: write,
///   1: mixed) are then on stable storage. The crash-consistency test
///   kills the VMM on these lines.
/// - `blk-ro`: as `blk`, but every disk must be read-only.
/// - `net`: the frame exchange of [`net`](virtio::net) on the first
///   virtio-net card; `net-tx=N` frames from the guest (default 1000).
///
/// Benchmark modes (`bench/io.py`), each printing one line that starts
/// with [`BENCH`](virtio::BENCH):
///
/// - `blk-bench-rand=N`: N reads of 4 KiB at random 4 KiB-aligned offsets
///   of the first virtio-blk disk, `qd=Q` in flight (default 32).
/// - `blk-bench-seqread=M` / `blk-bench-seqwrite=M`: M requests of 1 MiB
///   (one data descriptor each) from offset 0 on, `qd=Q` in flight
///   (default 4); the writes end with a FLUSH inside the measured time.
/// - `net-bench-tx=N`: after the host's GO frame (as in `net`), N frames
///   of 1514 bytes (ethertype 0x88b5, payload `KTG1`, kind 4, seq, count),
///   the transmit ring kept full, then one DONE frame.
/// - `bench-no-notify`: the bench modes skip the doorbell while the device
///   sets `VRING_USED_F_NO_NOTIFY`.
///
/// The guest times the work with the TSC, whose rate it measures against
/// PIT channel 2 (port 0x61): `bench W requests=N qd=Q bytes=B cycles=C
/// tsc-khz=K us=U per-s=R bytes-per-us=T kicks=D`.
///
/// Every line starts with [`PREFIX`]; `virtio ok` ends a run in which every
/// check passed, `FAIL <what>` a failed one (the guest then writes
/// [`debug_exit::GUEST_FAILED`] and powers off).
pub mod virtio {
    /// Printed when every requested test passed.
    pub const OK: &str = "kapsel-testguest: virtio ok";
    /// Start of the line a failed check prints.
    pub const FAIL: &str = "kapsel-testguest: FAIL ";
    /// Start of the line a benchmark mode prints.
    pub const BENCH: &str = "kapsel-testguest: bench ";

    /// The generation-`gen` pattern word for the 64-bit word number `word`
    /// of a disk (byte offset `8 * word`, stored little-endian).
    pub const fn pattern(word: u64, gen: u64) -> u64 {
        let mut z = word ^ (gen << 56) ^ 0x6b61_7073_656c_0000;
        z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Size of the blocks the guest moves.
    pub const BLOCK: u64 = 4096;

    /// The generation 4 KiB block `block` holds after the `blk` test.
    pub const fn final_gen(block: u64) -> u64 {
        if block.is_multiple_of(4) {
            1
        } else {
            0
        }
    }

    /// What a writable disk of `len` bytes holds after the `blk` test
    /// (every whole 4 KiB block; a partial last block is not touched and
    /// is left out here).
    pub fn disk_image(len: u64) -> Vec<u8> {
        let blocks = len / BLOCK;
        let mut out = Vec::with_capacity((blocks * BLOCK) as usize);
        for word in 0..blocks * BLOCK / 8 {
            let gen = final_gen(word * 8 / BLOCK);
            out.extend_from_slice(&pattern(word, gen).to_le_bytes());
        }
        out
    }

    /// The hash a read-only disk's line shows: FNV-1a's constants over
    /// little-endian 64-bit words (`h = (h ^ w) * prime`).
    pub fn hash(data: &[u8]) -> u64 {
        data.chunks_exact(8).fold(0xcbf2_9ce4_8422_2325, |h, w| {
            (h ^ u64::from_le_bytes(w.try_into().unwrap())).wrapping_mul(0x0100_0000_01b3)
        })
    }

    /// Start of the line a writable disk that passed prints; it goes on with
    /// `requests=N serial=S sectors=C blocks=B kicks=K`.
    pub const BLK_OK: &str = "kapsel-testguest: blk ok ";

    /// Start of the line `blk-flush=N` prints before a FLUSH; it goes on
    /// with `pass=P upto=B`.
    pub const BLK_FLUSH: &str = "kapsel-testguest: blk flush ";
    /// Start of the line `blk-flush=N` prints after a FLUSH completed; it
    /// goes on with `pass=P upto=B`.
    pub const BLK_FLUSHED: &str = "kapsel-testguest: blk flushed ";

    /// The beginning of a passed writable disk's line, through its serial.
    pub fn blk_ok(requests: u64, serial: &str) -> String {
        format!("{BLK_OK}requests={requests} serial={serial} ")
    }

    /// The line a read-only disk of `sectors` sectors that passed prints.
    pub fn blk_ro_ok(sectors: u64, hash: u64, serial: &str) -> String {
        format!("kapsel-testguest: blk-ro ok sectors={sectors} hash=0x{hash:016x} serial={serial}")
    }

    /// Printed when every `blk-layout` request worked.
    pub const BLK_LAYOUT_OK: &str = "kapsel-testguest: blk layout ok";
    /// Requests `blk-layout` adds to [`blk_requests`].
    pub const BLK_LAYOUT_REQUESTS: u64 = 5;

    /// Requests the `blk` test makes on a writable disk of `blocks` blocks:
    /// three passes, FLUSH, GET_ID, three single reads.
    pub const fn blk_requests(blocks: u64) -> u64 {
        3 * blocks + 5
    }

    /// The `net` frame exchange. Frames have ethertype [`ETHERTYPE`](net::ETHERTYPE) and a
    /// [`PAYLOAD`](net::PAYLOAD)-byte payload: `KTG1`, a kind byte, three zero bytes, the
    /// sequence number and a count (both little-endian u32), then bytes
    /// `(seq + i) & 0xff` for `i` in 16..64 ([`payload`](net::payload)).
    ///
    /// 1. The guest posts receive buffers and prints [`READY`](net::READY).
    /// 2. The host sends [`GO`](net::GO) (count = how many DATA frames it will send
    ///    later), repeating it until guest frames arrive.
    /// 3. The guest sends `net-tx=N` [`DATA`](net::DATA) frames, seq 0..N, to the
    ///    broadcast address, then one [`DONE`](net::DONE) frame (count N).
    /// 4. The host sends its DATA frames, seq 0..count, to the guest's MAC.
    /// 5. The guest prints [`tx_rx`](net::tx_rx) once it has every one of them.
    pub mod net {
        /// The ethertype (IEEE local experimental 2).
        pub const ETHERTYPE: u16 = 0x88b5;
        /// Payload length.
        pub const PAYLOAD: usize = 64;
        /// Frame kinds.
        pub const GO: u8 = 1;
        /// See [`GO`].
        pub const DATA: u8 = 2;
        /// See [`GO`].
        pub const DONE: u8 = 3;
        /// The line the guest prints once its receive buffers are posted.
        pub const READY: &str = "kapsel-testguest: net ready mac=";

        /// The payload of a frame.
        pub fn payload(kind: u8, seq: u32, count: u32) -> [u8; PAYLOAD] {
            let mut p = [0u8; PAYLOAD];
            p[..4].copy_from_slice(b"KTG1");
            p[4] = kind;
            p[8..12].copy_from_slice(&seq.to_le_bytes());
            p[12..16].copy_from_slice(&count.to_le_bytes());
            for (i, b) in p.iter_mut().enumerate().skip(16) {
                *b = (seq as usize + i) as u8;
            }
            p
        }

        /// The result line after `tx` frames sent and `rx` received.
        pub fn tx_rx(tx: u32, rx: u32) -> String {
            format!("kapsel-testguest: net tx={tx} rx={rx}")
        }
    }
}

/// Values the guests write to port 0xF4, QEMU's `isa-debug-exit` device,
/// when they fail; QEMU then exits with status `(value << 1) | 1`. Under a
/// VMM without that device the write is ignored and the guest powers off
/// (after printing why), or halts if power-off fails too.
pub mod debug_exit {
    /// The I/O port.
    pub const PORT: u16 = 0xf4;
    /// A CPU exception reached the runtime's handler.
    pub const EXCEPTION: u8 = 0x20;
    /// ACPI power-off did not stop the machine.
    pub const POWEROFF_FAILED: u8 = 0x31;
    /// The i8042 reset did not reset the machine.
    pub const RESET_FAILED: u8 = 0x32;
    /// A guest's own check failed (wrong CPL, missing MADT, invalid RTC, ...).
    pub const GUEST_FAILED: u8 = 0x33;

    /// The exit status of QEMU after the guest wrote `value`.
    pub const fn qemu_status(value: u8) -> i32 {
        ((value as i32) << 1) | 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_guest_was_built() {
        for (name, path) in ALL {
            let meta = std::fs::metadata(path).unwrap_or_else(|e| panic!("{name}: {path}: {e}"));
            assert!(meta.len() > 0, "{name}: {path} is empty");
        }
    }

    #[test]
    fn user_loop_sum_matches_the_guest_loop() {
        let mut sum = 0u64;
        for i in 0..64u64 << 20 {
            sum = sum.wrapping_mul(6364136223846793005).wrapping_add(i);
        }
        assert_eq!(sum, USER_LOOP_SUM, "USER_LOOP_SUM should be 0x{sum:016x}");
    }

    #[test]
    fn qemu_status_encoding() {
        assert_eq!(debug_exit::qemu_status(debug_exit::POWEROFF_FAILED), 99);
        assert_eq!(debug_exit::qemu_status(debug_exit::EXCEPTION), 65);
    }
}
