//! virtio-blk and virtio-net under `kapsel run` on the host's /dev/kvm,
//! driven by the `virtio` test guest (a polled virtio 1.x driver running at
//! CPL 3; see `kapsel_testguest::virtio`). The same guest also runs under
//! QEMU (q35, modern-only virtio-pci) as a reference, when QEMU is there.
//!
//! Each test prints `SKIP: ...` and passes when what it needs is missing:
//! /dev/kvm, for the network tests `ip`, network namespaces (root) and
//! python3 (the host end of the frame exchange is an AF_PACKET socket),
//! for the QEMU ones qemu-system-x86_64. The network tests create a
//! namespace of their own, `kapsel-tg-<pid>-<n>`, run the VMM inside it on a
//! tap `ktg0` and delete it afterwards: nothing leaves that namespace.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use kapsel_testguest::expect;
use kapsel_testguest::virtio::{self, net};

const KAPSEL: &str = env!("CARGO_BIN_EXE_kapsel");

/// The writable test disk.
const DISK_BYTES: u64 = 8 << 20;
/// The read-only test disk.
const RO_BYTES: u64 = 1 << 20;
const SERIAL: &str = "tg-disk";
/// Frames the guest sends, and frames the host sends back (more than a
/// ring's worth, so the guest recycles receive buffers).
const NET_TX: u32 = 1000;
const NET_RX: u32 = 600;
const TAP: &str = "ktg0";
/// An upper bound for one VM run; the guests finish in about a second.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

fn kvm_usable() -> Option<String> {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => None,
        Err(e) => Some(format!("/dev/kvm not accessible ({e})")),
    }
}

fn qemu_usable() -> Option<String> {
    if let Some(reason) = kvm_usable() {
        return Some(reason);
    }
    let qemu = qemu_binary();
    match Command::new(&qemu).arg("--version").output() {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!("{qemu} --version failed: {}", o.status)),
        Err(e) => Some(format!("{qemu} not usable: {e}")),
    }
}

fn qemu_binary() -> String {
    std::env::var("KAPSEL_QEMU").unwrap_or_else(|_| "qemu-system-x86_64".to_string())
}

/// A directory removed when the test ends.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "kapsel-virtio-{name}-{}-{}",
            std::process::id(),
            unique()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn unique() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A running VMM whose output is collected; killed if dropped while running.
struct Vm {
    child: Child,
    what: String,
    stdout: Option<JoinHandle<String>>,
    stderr: Option<JoinHandle<String>>,
}

/// How a VM run ended.
struct Finished {
    status: Option<ExitStatus>,
    lines: Vec<String>,
    stderr: String,
    elapsed: Duration,
}

fn collect(mut r: impl Read + Send + 'static) -> JoinHandle<String> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

impl Vm {
    fn spawn(mut cmd: Command) -> Vm {
        let what = format!("{cmd:?}");
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        let stdout = child.stdout.take().map(collect);
        let stderr = child.stderr.take().map(collect);
        Vm {
            child,
            what,
            stdout,
            stderr,
        }
    }

    fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits up to `timeout`, killing the VMM after that (status None).
    fn finish(mut self, started: Instant, timeout: Duration) -> Finished {
        let deadline = started + timeout;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(s)) => break Some(s),
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(5)),
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break None;
                }
            }
        };
        let elapsed = started.elapsed();
        let out = self
            .stdout
            .take()
            .map(|h| h.join().unwrap())
            .unwrap_or_default();
        let stderr = self
            .stderr
            .take()
            .map(|h| h.join().unwrap())
            .unwrap_or_default();
        let lines = out
            .split('\n')
            .map(|l| l.trim_end_matches('\r').to_string())
            .collect();
        Finished {
            status,
            lines,
            stderr,
            elapsed,
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            eprintln!("killing {}", self.what);
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Finished {
    fn describe(&self) -> String {
        format!(
            "status {:?} after {:?}\n--- serial ---\n{}\n--- stderr ---\n{}",
            self.status,
            self.elapsed,
            self.lines.join("\n"),
            self.stderr
        )
    }

    /// The line starting with `prefix`, or a panic that shows the run.
    fn line_starting(&self, prefix: &str) -> &str {
        self.lines
            .iter()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line starting {prefix:?}\n{}", self.describe()))
    }

    fn assert_line(&self, line: &str) {
        assert!(
            self.lines.iter().any(|l| l == line),
            "missing line {line:?}\n{}",
            self.describe()
        );
    }

    /// Every check passed: no FAIL, no exception, `virtio ok`, and the VMM
    /// (Kapsel or QEMU) exited with `status` (0 after an ACPI power-off).
    fn assert_passed(&self, status: i32) {
        for l in &self.lines {
            assert!(
                !l.starts_with(virtio::FAIL)
                    && !l.starts_with(expect::EXCEPTION)
                    && l != expect::POWEROFF_FAILED,
                "the guest reported {l:?}\n{}",
                self.describe()
            );
        }
        self.assert_line(virtio::OK);
        assert_eq!(
            self.status.and_then(|s| s.code()),
            Some(status),
            "{}",
            self.describe()
        );
    }
}

// --- virtio-blk -------------------------------------------------------------

struct Disks {
    _dir: TempDir,
    rw: PathBuf,
    ro: PathBuf,
    ro_content: Vec<u8>,
}

/// An empty 8 MiB disk and a 1 MiB read-only one full of known bytes.
fn make_disks(name: &str) -> Disks {
    let dir = TempDir::new(name);
    let rw = dir.join("disk.raw");
    let f = std::fs::File::create(&rw).unwrap();
    f.set_len(DISK_BYTES).unwrap();
    let ro = dir.join("ro.raw");
    let ro_content: Vec<u8> = (0..RO_BYTES / 8)
        .flat_map(|w| virtio::pattern(w, 0x7f).to_le_bytes())
        .collect();
    std::fs::write(&ro, &ro_content).unwrap();
    Disks {
        _dir: dir,
        rw,
        ro,
        ro_content,
    }
}

/// What the guest must print and leave behind on `disks`.
fn check_blk_run(run: &Finished, disks: &Disks, layouts: bool) {
    run.assert_passed(0);
    let blocks = DISK_BYTES / virtio::BLOCK;
    let line = run.line_starting(virtio::BLK_OK);
    let mut requests = virtio::blk_requests(blocks);
    if layouts {
        run.assert_line(virtio::BLK_LAYOUT_OK);
        requests += virtio::BLK_LAYOUT_REQUESTS;
    }
    let want = virtio::blk_ok(requests, SERIAL);
    assert!(line.starts_with(&want), "{line:?} vs {want:?}");
    assert!(
        line.contains(&format!(" sectors={} ", DISK_BYTES / 512)),
        "{line}"
    );
    run.assert_line(&virtio::blk_ro_ok(
        RO_BYTES / 512,
        virtio::hash(&disks.ro_content),
        "",
    ));

    let written = std::fs::read(&disks.rw).unwrap();
    let expected = virtio::disk_image(DISK_BYTES);
    assert_eq!(written.len(), expected.len(), "the disk changed size");
    if let Some(at) = written.iter().zip(&expected).position(|(a, b)| a != b) {
        panic!(
            "the disk differs from the guest's pattern first at byte {at:#x} (block {}): \
             {:02x?} vs {:02x?}",
            at as u64 / virtio::BLOCK,
            &written[at..(at + 16).min(written.len())],
            &expected[at..(at + 16).min(expected.len())]
        );
    }
    let ro_now = std::fs::read(&disks.ro).unwrap();
    assert!(ro_now == disks.ro_content, "the read-only disk was changed");
}

#[test]
fn virtio_blk_pattern_flush_get_id_errors_and_read_only() {
    if let Some(reason) = kvm_usable() {
        println!("SKIP: {reason}");
        return;
    }
    let disks = make_disks("blk");
    let run = kapsel_blk(&disks, "blk");
    check_blk_run(&run, &disks, false);
    println!(
        "kapsel: {} in {:?}",
        run.line_starting(virtio::BLK_OK),
        run.elapsed
    );
}

/// `kapsel run` with the writable disk and the read-only one.
fn kapsel_blk(disks: &Disks, cmdline: &str) -> Finished {
    let mut cmd = common::kapsel_run(kapsel_testguest::VIRTIO);
    cmd.arg("--disk")
        .arg(format!("{},serial={SERIAL}", disks.rw.display()))
        .arg("--disk")
        .arg(format!("{},ro", disks.ro.display()))
        .args(["--cmdline", cmdline]);
    Vm::spawn(cmd).finish(Instant::now(), RUN_TIMEOUT)
}

/// Virtio 1.x devices must accept any descriptor layout (2.6.4): a header
/// split over descriptors, header and data in one, data and status in one
/// (QEMU accepts them too: `virtio_blk_guest_under_qemu_q35`).
#[test]
fn virtio_blk_any_descriptor_layout() {
    if let Some(reason) = kvm_usable() {
        println!("SKIP: {reason}");
        return;
    }
    let disks = make_disks("blklayout");
    let run = kapsel_blk(&disks, "blk blk-layout");
    check_blk_run(&run, &disks, true);
}

#[test]
fn virtio_blk_ro_only_refuses_a_writable_disk() {
    if let Some(reason) = kvm_usable() {
        println!("SKIP: {reason}");
        return;
    }
    let disks = make_disks("blkro");
    let mut cmd = common::kapsel_run(kapsel_testguest::VIRTIO);
    cmd.arg("--disk")
        .arg(format!("{},ro,serial=ro-disk", disks.ro.display()))
        .args(["--cmdline", "blk-ro"]);
    let run = Vm::spawn(cmd).finish(Instant::now(), RUN_TIMEOUT);
    run.assert_passed(0);
    run.assert_line(&virtio::blk_ro_ok(
        RO_BYTES / 512,
        virtio::hash(&disks.ro_content),
        "ro-disk",
    ));

    // The guest's own failure path: `blk-ro` with a writable disk.
    let mut cmd = common::kapsel_run(kapsel_testguest::VIRTIO);
    cmd.arg("--disk")
        .arg(disks.rw.display().to_string())
        .args(["--cmdline", "blk-ro"]);
    let run = Vm::spawn(cmd).finish(Instant::now(), RUN_TIMEOUT);
    let fail = run.line_starting(virtio::FAIL);
    assert!(fail.contains("the disk is writable"), "{}", run.describe());
    assert!(
        !run.lines.iter().any(|l| l == virtio::OK),
        "{}",
        run.describe()
    );
    assert!(run.status.is_some(), "{}", run.describe());
}

#[test]
fn virtio_blk_guest_under_qemu_q35() {
    if let Some(reason) = qemu_usable() {
        println!("SKIP: {reason}");
        return;
    }
    let disks = make_disks("qemublk");
    let mut cmd = qemu_command();
    cmd.args(["-append", "blk blk-layout"])
        .arg("-drive")
        .arg(format!(
            "if=none,id=d0,file={},format=raw,cache=unsafe",
            disks.rw.display()
        ))
        .args([
            "-device",
            &format!("virtio-blk-pci,disable-legacy=on,drive=d0,serial={SERIAL}"),
        ])
        .arg("-drive")
        .arg(format!(
            "if=none,id=d1,file={},format=raw,readonly=on",
            disks.ro.display()
        ))
        .args(["-device", "virtio-blk-pci,disable-legacy=on,drive=d1"]);
    let started = Instant::now();
    let run = Vm::spawn(cmd).finish(started, RUN_TIMEOUT);
    check_blk_run(&run, &disks, true);
    println!("qemu: blk test in {:?}", run.elapsed);
}

const QBOOT: &str = "/usr/share/qemu/qboot.rom";

/// QEMU's q35 with the guest, its serial on stdout and isa-debug-exit.
fn qemu_command() -> Command {
    let mut cmd = Command::new(qemu_binary());
    cmd.args(["-enable-kvm", "-M", "q35", "-m", "64M", "-smp", "1"])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-serial",
            "stdio",
            "-no-reboot",
        ])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
        // qboot starts in milliseconds where SeaBIOS takes seconds here
        // (its CPL 0 code is emulated); it leaves the virtio BARs
        // unassigned, which the guest then assigns itself.
        .args(if Path::new(QBOOT).exists() {
            &["-bios", QBOOT][..]
        } else {
            &[][..]
        })
        .args(["-kernel", kapsel_testguest::VIRTIO]);
    cmd
}

// --- virtio-net -------------------------------------------------------------

/// A network namespace, deleted when dropped.
struct Netns(String);

impl Netns {
    fn create() -> Result<Netns, String> {
        let name = format!("kapsel-tg-{}-{}", std::process::id(), unique());
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .map_err(|e| format!("cannot run ip: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "ip netns add failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Netns(name))
    }

    /// A command run inside the namespace.
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.0, program]);
        cmd
    }

    fn run(&self, args: &[&str]) -> Result<String, String> {
        let out = self
            .command(args[0])
            .args(&args[1..])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("{args:?}: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "{args:?}: {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.0])
            .stderr(Stdio::null())
            .status();
    }
}

/// Why the network tests cannot run here, if they cannot.
fn net_unusable() -> Option<String> {
    if let Some(reason) = kvm_usable() {
        return Some(reason);
    }
    if !Path::new("/dev/net/tun").exists() {
        return Some("/dev/net/tun missing".into());
    }
    match Command::new("python3").arg("--version").output() {
        Ok(o) if o.status.success() => {}
        _ => return Some("python3 not found (the host end of the frame exchange)".into()),
    }
    None
}

/// The host end of the exchange: an AF_PACKET socket on the tap that sends
/// GO until guest frames come, collects DATA until DONE, then sends its own
/// DATA frames to the guest's MAC. Prints one summary line.
const HELPER: &str = r#"
import socket, struct, sys, time
ifname, n_tx, n_rx = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ETH = 0x88b5
def payload(kind, seq, count):
    return (b"KTG1" + bytes([kind, 0, 0, 0]) + struct.pack("<II", seq, count)
            + bytes(((seq + i) & 0xff) for i in range(16, 64)))
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH))
s.setsockopt(socket.SOL_SOCKET, 33, 16 << 20)  # SO_RCVBUFFORCE
s.bind((ifname, ETH))
s.settimeout(0.05)
mine = bytes.fromhex("020000000001")
bcast = b"\xff" * 6
seen, dups, bad, done, guest_mac, gos = set(), 0, 0, None, None, 0
deadline = time.time() + 20
while done is None and time.time() < deadline:
    if guest_mac is None:
        s.send(bcast + mine + struct.pack("!H", ETH) + payload(1, 0, n_rx))
        gos += 1
    try:
        data, addr = s.recvfrom(4096)
    except socket.timeout:
        continue
    if addr[2] == socket.PACKET_OUTGOING or len(data) < 78 or data[14:18] != b"KTG1":
        continue
    p = data[14:78]
    seq, count = struct.unpack("<II", p[8:16])
    guest_mac = data[6:12]
    if p[4] == 3:
        done = count
    elif p[4] == 2:
        if p != payload(2, seq, count) or data[0:6] != bcast:
            bad += 1
        elif seq in seen:
            dups += 1
        else:
            seen.add(seq)
missing = sum(1 for i in range(n_tx) if i not in seen)
extra = sum(1 for i in seen if i >= n_tx)
sent = 0
if done is not None:
    for seq in range(n_rx):
        s.send(guest_mac + mine + struct.pack("!H", ETH) + payload(2, seq, n_rx))
        sent += 1
        if sent % 32 == 0:
            time.sleep(0.002)
mac = guest_mac.hex(":") if guest_mac else "none"
print(f"host rx={len(seen)} missing={missing} extra={extra} dups={dups} bad={bad} "
      f"done={done} sent={sent} gos={gos} mac={mac}", flush=True)
"#;

/// Runs the exchange with the VMM `launch` starts inside a new namespace
/// (it must create the tap [`TAP`]); returns the VM's run and the helper's
/// summary line.
fn net_exchange(launch: impl FnOnce(&Netns) -> Command) -> Option<(Finished, String)> {
    if let Some(reason) = net_unusable() {
        println!("SKIP: {reason}");
        return None;
    }
    let ns = match Netns::create() {
        Ok(ns) => ns,
        Err(reason) => {
            println!("SKIP: no network namespace: {reason}");
            return None;
        }
    };
    // Only our frames on the tap: no IPv6 autoconfiguration chatter.
    let _ = ns.run(&[
        "sysctl",
        "-qw",
        "net.ipv6.conf.all.disable_ipv6=1",
        "net.ipv6.conf.default.disable_ipv6=1",
    ]);
    let started = Instant::now();
    let mut vm = Vm::spawn(launch(&ns));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if ns.run(&["ip", "link", "show", TAP]).is_ok() {
            break;
        }
        if vm.exited() || Instant::now() > deadline {
            let run = vm.finish(started, Duration::ZERO);
            panic!("the tap {TAP} never appeared\n{}", run.describe());
        }
        thread::sleep(Duration::from_millis(10));
    }
    ns.run(&["ip", "link", "set", TAP, "up"]).unwrap();
    let helper = ns
        .command("python3")
        .args(["-c", HELPER, TAP, &NET_TX.to_string(), &NET_RX.to_string()])
        .stdin(Stdio::null())
        .output()
        .expect("python3 runs");
    let run = vm.finish(started, RUN_TIMEOUT);
    let summary = String::from_utf8_lossy(&helper.stdout).trim().to_string();
    assert!(
        helper.status.success() && summary.starts_with("host "),
        "helper: {}: {summary}\n{}\n{}",
        helper.status,
        String::from_utf8_lossy(&helper.stderr),
        run.describe()
    );
    drop(ns);
    Some((run, summary))
}

fn check_net_run(run: &Finished, summary: &str) {
    let want =
        format!("host rx={NET_TX} missing=0 extra=0 dups=0 bad=0 done={NET_TX} sent={NET_RX} ");
    assert!(
        summary.starts_with(&want),
        "host side: {summary}\nwant {want}\n{}",
        run.describe()
    );
    run.assert_passed(0);
    run.assert_line(&net::tx_rx(NET_TX, NET_RX));
    let mac = run.line_starting(net::READY)[net::READY.len()..].to_string();
    assert!(
        summary.ends_with(&format!(" mac={mac}")),
        "the frames came from another MAC than the card's {mac}: {summary}"
    );
}

#[test]
fn virtio_net_frames_both_ways_through_a_tap_in_a_netns() {
    let Some((run, summary)) = net_exchange(|ns| {
        let mut cmd = ns.command(KAPSEL);
        cmd.args([
            "run",
            "--kernel",
            kapsel_testguest::VIRTIO,
            "--memory",
            "64M",
        ])
        .args(["--net", &format!("tap={TAP}")])
        .args(["--cmdline", &format!("net net-tx={NET_TX}")]);
        cmd
    }) else {
        return;
    };
    check_net_run(&run, &summary);
    println!("kapsel: {summary} in {:?}", run.elapsed);
}

/// The tap a daemon would hand over: opened in `ns` on /dev/net/tun with
/// the flags `kapsel run --net fd=N` requires, then placed on descriptor
/// `fd` (inherited across exec) of the VMM that `cmd` starts, which then
/// needs no privilege to open anything. Runs in the forked child.
fn with_inherited_tap(cmd: &mut Command, ns: &Netns, fd: i32) {
    use std::os::unix::process::CommandExt;
    let netns = std::ffi::CString::new(format!("/run/netns/{}", ns.0)).unwrap();
    let mut ifr = [0u8; 40];
    ifr[..TAP.len()].copy_from_slice(TAP.as_bytes());
    // IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, in ifr_flags after the 16-byte name.
    ifr[16..18].copy_from_slice(&(0x0002u16 | 0x1000 | 0x4000).to_ne_bytes());
    let fail = || Err(std::io::Error::last_os_error());
    // SAFETY: between fork and exec only syscalls on memory prepared
    // above: open, setns, ioctl(TUNSETIFF) on a 40-byte ifreq, dup2, close.
    unsafe {
        cmd.pre_exec(move || {
            let ns_fd = libc::open(netns.as_ptr(), libc::O_RDONLY);
            if ns_fd < 0 || libc::setns(ns_fd, libc::CLONE_NEWNET) < 0 {
                return fail();
            }
            libc::close(ns_fd);
            let tun = libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR);
            if tun < 0 || libc::ioctl(tun, 0x4004_54ca, ifr.as_mut_ptr()) < 0 {
                return fail();
            }
            // dup2 clears close-on-exec on the new descriptor.
            if libc::dup2(tun, fd) < 0 {
                return fail();
            }
            libc::close(tun);
            Ok(())
        });
    }
}

#[test]
fn virtio_net_through_an_inherited_tap_descriptor() {
    let Some((run, summary)) = net_exchange(|ns| {
        let mut cmd = common::kapsel_run(kapsel_testguest::VIRTIO);
        cmd.args(["--net", "fd=7"])
            .args(["--cmdline", &format!("net net-tx={NET_TX}")]);
        with_inherited_tap(&mut cmd, ns, 7);
        cmd
    }) else {
        return;
    };
    check_net_run(&run, &summary);
}

#[test]
fn a_descriptor_that_is_not_a_tap_is_refused() {
    if let Some(reason) = kvm_usable() {
        println!("SKIP: {reason}");
        return;
    }
    use std::os::unix::process::CommandExt;
    let mut cmd = common::kapsel_run(kapsel_testguest::HELLO);
    cmd.args(["--net", "fd=7"]);
    // Descriptor 7: /dev/null, open but no tap.
    // SAFETY: open and dup2 between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
            if null < 0 || libc::dup2(null, 7) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--net fd=7"), "{err}");
    assert!(err.contains("not an attached tun/tap device"), "{err}");
    // Not open at all.
    let out = common::kapsel_run(kapsel_testguest::HELLO)
        .args(["--net", "fd=1000"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("descriptor 1000 is not open"), "{err}");
}

#[test]
fn virtio_net_guest_under_qemu_q35() {
    if let Some(reason) = qemu_usable() {
        println!("SKIP: {reason}");
        return;
    }
    let Some((run, summary)) = net_exchange(|ns| {
        let qemu = qemu_command();
        let mut cmd = ns.command(qemu.get_program().to_str().unwrap());
        cmd.args(qemu.get_args())
            .args(["-append", &format!("net net-tx={NET_TX}")])
            .arg("-netdev")
            .arg(format!(
                "tap,id=n0,ifname={TAP},script=no,downscript=no,vhost=off"
            ))
            .args(["-device", "virtio-net-pci,disable-legacy=on,netdev=n0"]);
        cmd
    }) else {
        return;
    };
    check_net_run(&run, &summary);
    println!("qemu: {summary} in {:?}", run.elapsed);
}

#[test]
fn a_disk_in_use_by_a_running_vm_is_refused() {
    if let Some(reason) = kvm_usable() {
        println!("SKIP: {reason}");
        return;
    }
    let disks = make_disks("blklock");
    let disk = disks.rw.display().to_string();
    // The idle guest runs until it is killed, holding its disk; its
    // serial output goes to a file, watched for its ready line.
    let serial = disks._dir.join("first.out");
    let mut first = common::kapsel_run(kapsel_testguest::IDLE);
    first
        .args(["--disk", &disk])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&serial).unwrap())
        .stderr(Stdio::null());
    let mut first = first.spawn().unwrap();
    let deadline = Instant::now() + RUN_TIMEOUT;
    while !std::fs::read_to_string(&serial)
        .unwrap_or_default()
        .contains("idle ready")
    {
        assert!(
            matches!(first.try_wait(), Ok(None)) && Instant::now() < deadline,
            "the first VM did not come up"
        );
        thread::sleep(Duration::from_millis(20));
    }
    for opts in ["", ",ro"] {
        let mut second = common::kapsel_run(kapsel_testguest::HELLO);
        second.args(["--disk", &format!("{disk}{opts}")]);
        let run = Vm::spawn(second).finish(Instant::now(), RUN_TIMEOUT);
        assert_eq!(
            run.status.and_then(|s| s.code()),
            Some(2),
            "{}",
            run.describe()
        );
        assert!(
            run.stderr.contains(&disk) && run.stderr.contains("in use"),
            "{}",
            run.describe()
        );
    }
    let _ = first.kill();
    let _ = first.wait();
    // Free once the first VM is gone.
    let mut again = common::kapsel_run(kapsel_testguest::HELLO);
    again.args(["--disk", &disk]);
    let run = Vm::spawn(again).finish(Instant::now(), RUN_TIMEOUT);
    assert_eq!(
        run.status.and_then(|s| s.code()),
        Some(0),
        "{}",
        run.describe()
    );
}
