//! Fuzzes virtio-net as a hostile guest sees it: a [`VirtioNet`] behind the
//! virtio-pci transport, over 1 MiB of guest memory, driven by a script of
//! guest actions (descriptor tables, available rings, notifications, raw
//! memory writes, resets) interleaved with frames the host side injects
//! through a SOCK_SEQPACKET pair, as a tap would deliver them.
//!
//! A reference model replays every device-side step on a second copy of
//! guest memory with its own `virtio_queue::Queue`s (same ring state, same
//! notification-suppression writes) and its own transmit gather and receive
//! scatter, written from the virtio 1.x rules. After each step:
//!
//! - guest memory equals the model's, byte for byte: the device wrote the
//!   used rings and the device-writable buffers of the receive chains it
//!   consumed, with the host's frames (num_buffers = 1), and nothing else;
//! - the frames the device handed to the host side are exactly the model's:
//!   the concatenation of the readable descriptor bytes of each transmit
//!   chain, dropped when shorter than the virtio-net header, larger than
//!   [`MAX_FRAME`] or reaching outside guest memory;
//! - DEVICE_NEEDS_RESET is set exactly when the model's ring handling failed;
//! - no panic, and no step runs longer than [`step_limit`] (a watchdog thread
//!   aborts the process: a hang is a crash, not a libFuzzer timeout).
//!
//! Environment:
//! - `NET_QUEUES_STRICT=1` also requires malformed chains (next index out of
//!   range, loops longer than the queue, bad or nested indirect tables,
//!   writable before readable descriptors, descriptors outside memory) to be
//!   dropped instead of used as far as they go.
//! - `NET_QUEUES_STEP_LIMIT_MS` sets the watchdog (default 10 s).
//! - `NET_QUEUES_DEBUG=1` prints what each device step did.
//!
//! Input: `[cfg] [rx log2 size] [tx log2 size]`, then operations, each an
//! opcode byte (`% 13`) and its operands (all integers little endian):
//!
//! | op | operands | action |
//! |----|----------|--------|
//! | 0 DESC | ctl idx:u8 desc | descriptor `idx` of queue `ctl & 1` |
//! | 1 DESC_AT | ctl at:u24 desc | a descriptor anywhere (indirect tables) |
//! | 2 AVAIL | q slot:u8 head:u16 | avail ring entry `slot % size` |
//! | 3 AVAIL_IDX | q idx:u16 | avail index |
//! | 4 POST | q head:u8 | ring[idx % size] = head; idx += 1 |
//! | 5 NOTIFY | q | doorbell of queue `q % 3` (2 does not exist) |
//! | 6 INJECT | len:u16 seed | host sends a frame of `len & 0x7fff` bytes |
//! | 7 INJECT_BIG | d:u8 seed | host sends `MAX_FRAME - 128 + d` bytes |
//! | 8 HOST_EVENT | | the tap's fd is readable |
//! | 9 MEMWRITE | at:u24 n:u8 bytes | raw guest memory write |
//! | 10 RESET | cfg rx tx | status 0, then a new set-up |
//! | 11 REFUSE | | toggles the host side refusing frames (tap full) |
//! | 12 DRIVER_OK | | sets DRIVER_OK when cfg deferred it |
//!
//! `desc` is `addr len flags:u8 next:u8`, addr u24 (or u64 if ctl bit 1),
//! len u16 (or u32 if ctl bit 2). cfg bit 0: EVENT_IDX, bit 1:
//! INDIRECT_DESC, bit 2: GUEST_CSUM + GUEST_TSO4, bit 3: defer DRIVER_OK.
#![no_main]

use kapsel_vmm::devices::pci::{InterruptSink, PciDevice};
use kapsel_vmm::devices::virtio::net::{FrameIo, VirtioNet, MAX_FRAME, VNET_HDR_LEN};
use kapsel_vmm::devices::virtio::transport::VIRTIO_BAR;
use kapsel_vmm::devices::virtio::{
    feature, VirtioPciDevice, STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK,
    STATUS_FEATURES_OK, STATUS_NEEDS_RESET, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
    VIRTIO_RING_F_INDIRECT_DESC,
};
use kapsel_vmm::memory::GuestMem;
use libfuzzer_sys::fuzz_target;
use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryBackend, GuestMemoryMmap};

const MEM_SIZE: usize = 0x10_0000;
/// Fixed ring layout (room for 256 entries each); buffers go anywhere.
const DESC: [u64; 2] = [0x1000, 0x4000];
const AVAIL: [u64; 2] = [0x2000, 0x5000];
const USED: [u64; 2] = [0x3000, 0x6000];
const RX: usize = 0;
const TX: usize = 1;

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;

const VIRTIO_NET_F_GUEST_CSUM: u32 = 1;
const VIRTIO_NET_F_MAC: u32 = 5;
const VIRTIO_NET_F_GUEST_TSO4: u32 = 7;

// virtio_pci_common_cfg offsets (virtio 4.1.4.3).
const DRIVER_FEATURE_SELECT: u64 = 0x08;
const DRIVER_FEATURE: u64 = 0x0c;
const DEVICE_STATUS: u64 = 0x14;
const QUEUE_SELECT: u64 = 0x16;
const QUEUE_SIZE: u64 = 0x18;
const QUEUE_ENABLE: u64 = 0x1c;
const QUEUE_DESC: u64 = 0x20;
const QUEUE_AVAIL: u64 = 0x28;
const QUEUE_USED: u64 = 0x30;
const NOTIFY: u64 = 0x3000;
const NOTIFY_MULTIPLIER: u64 = 4;

/// Most operations taken from one input.
const MAX_OPS: usize = 512;
/// Longest a single device step may take before the watchdog calls it a
/// hang (`NET_QUEUES_STEP_LIMIT_MS` overrides it, e.g. to minimise a hang
/// quickly). The worst bounded step (256 chains, each a 65535-entry
/// indirect loop) takes well under a second here.
fn step_limit() -> Duration {
    static LIMIT: OnceLock<Duration> = OnceLock::new();
    *LIMIT.get_or_init(|| {
        std::env::var("NET_QUEUES_STEP_LIMIT_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map_or(Duration::from_secs(10), Duration::from_millis)
    })
}

// ---------------------------------------------------------------- watchdog

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

static DEADLINE_MS: AtomicU64 = AtomicU64::new(0);
static STEP: Mutex<String> = Mutex::new(String::new());

fn start_watchdog() {
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        epoch();
        std::thread::spawn(|| loop {
            std::thread::sleep(Duration::from_millis(100));
            let deadline = DEADLINE_MS.load(Ordering::Acquire);
            let now = epoch().elapsed().as_millis() as u64;
            if deadline != 0 && now > deadline {
                let step = STEP.lock().map(|s| s.clone()).unwrap_or_default();
                eprintln!(
                    "net_queues: HANG: device step did not return within {:?}: {step}",
                    step_limit()
                );
                std::process::abort();
            }
        });
    });
}

/// Runs one device step under the watchdog.
fn guarded<T>(what: impl FnOnce() -> String, f: impl FnOnce() -> T) -> T {
    if let Ok(mut s) = STEP.lock() {
        *s = what();
    }
    let deadline = epoch().elapsed() + step_limit();
    DEADLINE_MS.store(deadline.as_millis() as u64, Ordering::Release);
    let r = f();
    DEADLINE_MS.store(0, Ordering::Release);
    r
}

// ----------------------------------------------------------- the host side

/// The device's end of a SOCK_SEQPACKET pair. Frames the device writes are
/// recorded (never lost to a full socket buffer) so that they can be
/// compared exactly; frames it reads come through the socket, with its
/// frame boundaries, truncation and EAGAIN.
struct DeviceEnd {
    fd: OwnedFd,
    sent: Arc<Mutex<Vec<Vec<u8>>>>,
    refuse: Arc<AtomicBool>,
}

impl AsRawFd for DeviceEnd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl FrameIo for DeviceEnd {
    fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: receiving into a valid buffer of the given length.
        let n = unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    fn write_frame(&self, frame: &[u8]) -> io::Result<usize> {
        self.sent.lock().unwrap().push(frame.to_vec());
        if self.refuse.load(Ordering::Relaxed) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(frame.len())
    }
}

fn seqpacket_pair() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: socketpair writes two new descriptors into `fds`.
    let rc = unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET, 0, fds.as_mut_ptr()) };
    assert_eq!(rc, 0, "socketpair: {}", io::Error::last_os_error());
    // SAFETY: both descriptors were just created and are owned here only.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// Sends one frame from the host end; false when the socket refused it.
fn host_send(fd: &OwnedFd, frame: &[u8]) -> bool {
    // SAFETY: sending from a valid buffer of the given length.
    let n = unsafe {
        libc::send(
            fd.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            libc::MSG_DONTWAIT,
        )
    };
    n >= 0
}

struct NoInterrupts;

impl InterruptSink for NoInterrupts {
    fn signal_msi(&self, _address: u64, _data: u32) -> io::Result<()> {
        Ok(())
    }
}

// ------------------------------------------------------------- the driver

/// What the driver negotiates and sets up.
#[derive(Clone, Copy, Debug)]
struct Setup {
    event_idx: bool,
    indirect: bool,
    offloads: bool,
    defer_ok: bool,
    sizes: [u16; 2],
}

impl Setup {
    fn from_bytes(cfg: u8, rx: u8, tx: u8) -> Self {
        Setup {
            event_idx: cfg & 1 != 0,
            indirect: cfg & 2 != 0,
            offloads: cfg & 4 != 0,
            defer_ok: cfg & 8 != 0,
            sizes: [1 << (rx % 9), 1 << (tx % 9)],
        }
    }

    fn features(&self) -> u64 {
        let mut f = feature(VIRTIO_F_VERSION_1) | feature(VIRTIO_NET_F_MAC);
        if self.event_idx {
            f |= feature(VIRTIO_RING_F_EVENT_IDX);
        }
        if self.indirect {
            f |= feature(VIRTIO_RING_F_INDIRECT_DESC);
        }
        if self.offloads {
            f |= feature(VIRTIO_NET_F_GUEST_CSUM) | feature(VIRTIO_NET_F_GUEST_TSO4);
        }
        f
    }
}

struct Driver {
    dev: VirtioPciDevice,
}

impl Driver {
    fn write(&mut self, offset: u64, len: usize, v: u64) {
        self.dev
            .write_bar(VIRTIO_BAR, offset, &v.to_le_bytes()[..len]);
    }

    fn status(&mut self) -> u8 {
        let mut b = [0u8; 1];
        self.dev.read_bar(VIRTIO_BAR, DEVICE_STATUS, &mut b);
        b[0]
    }

    fn set_status(&mut self, s: u8) {
        self.write(DEVICE_STATUS, 1, u64::from(s));
    }

    /// Reset, negotiation and queue set-up, up to but excluding DRIVER_OK.
    fn set_up(&mut self, setup: &Setup) {
        self.set_status(0);
        self.set_status(STATUS_ACKNOWLEDGE);
        self.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        let f = setup.features();
        self.write(DRIVER_FEATURE_SELECT, 4, 0);
        self.write(DRIVER_FEATURE, 4, f & 0xffff_ffff);
        self.write(DRIVER_FEATURE_SELECT, 4, 1);
        self.write(DRIVER_FEATURE, 4, f >> 32);
        self.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
        assert_ne!(self.status() & STATUS_FEATURES_OK, 0, "features refused");
        for q in [RX, TX] {
            self.write(QUEUE_SELECT, 2, q as u64);
            self.write(QUEUE_SIZE, 2, u64::from(setup.sizes[q]));
            self.write(QUEUE_DESC, 8, DESC[q]);
            self.write(QUEUE_AVAIL, 8, AVAIL[q]);
            self.write(QUEUE_USED, 8, USED[q]);
            self.write(QUEUE_ENABLE, 2, 1);
        }
        assert_eq!(
            self.status() & STATUS_NEEDS_RESET,
            0,
            "queue set-up refused"
        );
    }

    fn driver_ok(&mut self) {
        let s = self.status();
        self.set_status(s | STATUS_DRIVER_OK);
    }

    fn notify(&mut self, queue: u16) {
        self.write(
            NOTIFY + u64::from(queue) * NOTIFY_MULTIPLIER,
            2,
            u64::from(queue),
        );
    }
}

// -------------------------------------------------------------- the model

/// Why a model step stopped.
enum Stop {
    /// The ring handling failed: the device must set NEEDS_RESET.
    Broken,
}

impl From<virtio_queue::Error> for Stop {
    fn from(_: virtio_queue::Error) -> Self {
        Stop::Broken
    }
}

struct Model {
    mem: GuestMem,
    /// [rx, tx] while the device is active.
    queues: Option<[Queue; 2]>,
    /// Frames in the socket, as the device will read them.
    socket: VecDeque<Vec<u8>>,
    /// A frame the device holds while the guest has no receive buffer.
    pending: Option<Vec<u8>>,
    broken: bool,
    strict: bool,
}

/// The descriptors of a chain as the virtio specification defines it
/// (2.7.5, 2.7.5.3); None when the chain is malformed. Used in strict mode.
fn spec_walk(mem: &GuestMem, table: u64, size: u16, head: u16) -> Option<Vec<Descriptor>> {
    let mut out = Vec::new();
    let (mut table, mut size, mut index) = (table, u32::from(size), u32::from(head));
    let mut indirect = false;
    let mut steps = 0u32;
    let mut seen_write = false;
    let mut total = 0u64;
    loop {
        if index >= size || steps >= size {
            return None;
        }
        steps += 1;
        let at = table.checked_add(u64::from(index) * 16)?;
        let d: Descriptor = mem.read_obj(GuestAddress(at)).ok()?;
        if d.flags() & F_INDIRECT != 0 {
            if indirect || d.flags() & F_NEXT != 0 || d.len() == 0 || d.len() % 16 != 0 {
                return None;
            }
            let n = d.len() / 16;
            if n > u32::from(u16::MAX) {
                return None;
            }
            (table, size, index, indirect, steps) = (d.addr().0, n, 0, true, 0);
            continue;
        }
        if d.flags() & F_WRITE != 0 {
            seen_write = true;
        } else if seen_write {
            return None;
        }
        total += u64::from(d.len());
        if total > u64::from(u32::MAX) {
            return None;
        }
        if !GuestMemory::check_range(
            mem,
            d.addr(),
            d.len() as usize,
            vm_memory::Permissions::Read,
        ) {
            return None;
        }
        out.push(d);
        if d.flags() & F_NEXT == 0 {
            return Some(out);
        }
        index = u32::from(d.next());
    }
}

/// What the device must send for a transmit chain: all readable bytes in
/// chain order, if the chain holds a header and fits in MAX_FRAME.
fn model_gather(mem: &GuestMem, chain: DescriptorChain<&GuestMem>) -> Option<Vec<u8>> {
    let descs: Vec<Descriptor> = chain.readable().collect();
    let total: u64 = descs.iter().map(|d| u64::from(d.len())).sum();
    if total > MAX_FRAME as u64 || total < VNET_HDR_LEN as u64 {
        return None;
    }
    let mut frame = vec![0u8; total as usize];
    let mut at = 0;
    for d in descs {
        let n = d.len() as usize;
        mem.read_slice(&mut frame[at..at + n], d.addr()).ok()?;
        at += n;
    }
    Some(frame)
}

/// Puts `frame` into the writable buffers of a receive chain, in order;
/// the used length, 0 when it does not fit or a buffer is outside memory.
/// Buffers are filled as the walk reaches them (a buffer may overlap a
/// later descriptor, which then reads what was just written).
fn model_scatter(mem: &GuestMem, chain: DescriptorChain<&GuestMem>, frame: &[u8]) -> u32 {
    let mut done = 0usize;
    for d in chain.writable() {
        if done == frame.len() {
            break;
        }
        let n = frame.len().saturating_sub(done).min(d.len() as usize);
        if mem.write_slice(&frame[done..done + n], d.addr()).is_err() {
            return 0;
        }
        done += n;
    }
    if done == frame.len() {
        frame.len() as u32
    } else {
        0
    }
}

impl Model {
    fn activate(&mut self, setup: &Setup) {
        let mk = |q: usize| {
            let mut queue = Queue::new(256).unwrap();
            queue.set_size(setup.sizes[q]);
            queue.set_desc_table_address(Some(DESC[q] as u32), Some(0));
            queue.set_avail_ring_address(Some(AVAIL[q] as u32), Some(0));
            queue.set_used_ring_address(Some(USED[q] as u32), Some(0));
            queue.set_event_idx(setup.event_idx);
            queue.set_ready(true);
            queue
        };
        self.queues = Some([mk(RX), mk(TX)]);
    }

    fn reset(&mut self) {
        self.queues = None;
        self.pending = None;
        self.broken = false;
    }

    fn live(&self) -> bool {
        self.queues.is_some() && !self.broken
    }

    fn receive(&mut self) -> Result<(), Stop> {
        let Some([rx, _]) = self.queues.as_mut() else {
            return Ok(());
        };
        let mem = &self.mem;
        let mut used = false;
        let mut retries = 0;
        loop {
            let frame = match self.pending.take() {
                Some(f) => f,
                None => match self.socket.pop_front() {
                    Some(f) => f,
                    None => break,
                },
            };
            let Some(chain) = rx.pop_descriptor_chain(mem) else {
                self.pending = Some(frame);
                // No chain right after the ring said "more": an invalid
                // avail index (once a livelock, now NEEDS_RESET).
                if retries > 0 {
                    return Err(Stop::Broken);
                }
                if rx.enable_notification(mem)? {
                    retries += 1;
                    continue;
                }
                break;
            };
            retries = 0;
            let head = chain.head_index();
            let mut frame = frame;
            if let Some(n) = frame.get_mut(10..VNET_HDR_LEN) {
                n.copy_from_slice(&1u16.to_le_bytes());
            }
            let ok = !self.strict || spec_walk(mem, DESC[RX], rx.size(), head).is_some();
            let written = if ok {
                model_scatter(mem, chain, &frame)
            } else {
                0
            };
            rx.add_used(mem, head, written)?;
            used = true;
        }
        if used {
            rx.needs_notification(mem)?;
        }
        Ok(())
    }

    /// The frames the device must send, and whether the ring broke.
    fn transmit(&mut self) -> (Vec<Vec<u8>>, Result<(), Stop>) {
        let mut frames = Vec::new();
        let Some([_, tx]) = self.queues.as_mut() else {
            return (frames, Ok(()));
        };
        let mem = &self.mem;
        let strict = self.strict;
        let r = (|| {
            let budget = usize::from(tx.size());
            for _ in 0..4 {
                tx.disable_notification(mem)?;
                let chains: Vec<_> = tx.iter(mem)?.take(budget).collect();
                for chain in chains {
                    let head = chain.head_index();
                    let ok = !strict || spec_walk(mem, DESC[TX], tx.size(), head).is_some();
                    if let Some(f) = model_gather(mem, chain).filter(|_| ok) {
                        frames.push(f);
                    }
                    tx.add_used(mem, head, 0)?;
                }
                if !tx.enable_notification(mem)? {
                    break;
                }
            }
            tx.needs_notification(mem)?;
            Ok(())
        })();
        (frames, r)
    }
}

// ---------------------------------------------------------------- harness

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn bytes<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.bytes::<1>().map(|[b]| b)
    }
    fn u16(&mut self) -> Option<u16> {
        self.bytes().map(u16::from_le_bytes)
    }
    fn u24(&mut self) -> Option<u64> {
        self.bytes::<3>()
            .map(|[a, b, c]| u64::from(u32::from_le_bytes([a, b, c, 0])))
    }
    fn desc(&mut self, ctl: u8) -> Option<Descriptor> {
        let addr = if ctl & 2 != 0 {
            u64::from_le_bytes(self.bytes()?)
        } else {
            self.u24()?
        };
        let len = if ctl & 4 != 0 {
            u32::from_le_bytes(self.bytes()?)
        } else {
            u32::from(self.u16()?)
        };
        let flags = u16::from(self.u8()?);
        let next = u16::from(self.u8()?);
        Some(Descriptor::new(addr, len, flags, next))
    }
}

struct Harness {
    driver: Driver,
    /// The device's guest memory (shared with it).
    mem: GuestMem,
    model: Model,
    host: OwnedFd,
    sent: Arc<Mutex<Vec<Vec<u8>>>>,
    refuse: Arc<AtomicBool>,
    setup: Setup,
    driver_ok: bool,
    debug: bool,
}

#[derive(Clone, Copy, Debug)]
enum Step {
    Notify(u16),
    HostEvent,
    DriverOk,
}

fn region(mem: &GuestMem) -> &[u8] {
    let ptr = mem.get_host_address(GuestAddress(0)).unwrap();
    // SAFETY: the single region of MEM_SIZE bytes starts at guest address 0
    // and stays mapped while `mem` lives; nothing writes it concurrently.
    unsafe { std::slice::from_raw_parts(ptr, MEM_SIZE) }
}

fn area(addr: usize) -> String {
    let a = addr as u64;
    for (q, name) in [(RX, "rx"), (TX, "tx")] {
        for (base, what) in [
            (DESC[q], "descriptor table"),
            (AVAIL[q], "avail ring"),
            (USED[q], "used ring"),
        ] {
            if (base..base + 0x1000).contains(&a) {
                return format!("{name} {what} + {:#x}", a - base);
            }
        }
    }
    "buffer space".into()
}

impl Harness {
    fn new(setup: Setup, strict: bool) -> Self {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
        let model_mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
        let (dev_fd, host) = seqpacket_pair();
        let sent = Arc::new(Mutex::new(Vec::new()));
        let refuse = Arc::new(AtomicBool::new(false));
        let io = DeviceEnd {
            fd: dev_fd,
            sent: sent.clone(),
            refuse: refuse.clone(),
        };
        let net = VirtioNet::new(Box::new(io), [0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        let dev = VirtioPciDevice::new(Box::new(net), mem.clone(), Arc::new(NoInterrupts)).unwrap();
        let mut h = Harness {
            driver: Driver { dev },
            mem,
            model: Model {
                mem: model_mem,
                queues: None,
                socket: VecDeque::new(),
                pending: None,
                broken: false,
                strict,
            },
            host,
            sent,
            refuse,
            setup,
            driver_ok: false,
            debug: env_flag("NET_QUEUES_DEBUG"),
        };
        h.configure(setup);
        h
    }

    /// (Re)negotiates and sets up the queues; DRIVER_OK unless deferred.
    fn configure(&mut self, setup: Setup) -> bool {
        self.setup = setup;
        self.driver.set_up(&setup);
        self.model.reset();
        self.driver_ok = false;
        if setup.defer_ok {
            return true;
        }
        self.step(Step::DriverOk)
    }

    /// Writes guest memory as the guest does, in both copies.
    fn guest_write(&mut self, data: &[u8], at: u64) {
        let at = GuestAddress(at);
        let _ = self.mem.write(data, at);
        let _ = self.model.mem.write(data, at);
    }

    fn queue_size(&self, q: usize) -> u16 {
        self.setup.sizes[q]
    }

    /// One device-side step: the model first, then the device under the
    /// watchdog, then the comparison. False when the input should end.
    fn step(&mut self, step: Step) -> bool {
        let live = self.model.live();
        let (expected, result) = match step {
            Step::Notify(0) | Step::HostEvent if live => (Vec::new(), self.model.receive()),
            Step::Notify(1) if live => self.model.transmit(),
            Step::Notify(_) | Step::HostEvent => (Vec::new(), Ok(())),
            Step::DriverOk => {
                if self.driver_ok {
                    return true;
                }
                self.driver_ok = true;
                self.model.activate(&self.setup);
                (Vec::new(), self.model.receive())
            }
        };
        if matches!(result, Err(Stop::Broken)) {
            self.model.broken = true;
        }
        let prediction = "the model predicts the step ends";
        let driver = &mut self.driver;
        guarded(
            || format!("{step:?}; {prediction}"),
            || match step {
                Step::Notify(q) => driver.notify(q),
                Step::HostEvent => driver.dev.handle_host_event(0),
                Step::DriverOk => driver.driver_ok(),
            },
        );

        let sent = std::mem::take(&mut *self.sent.lock().unwrap());
        if sent != expected {
            let lens = |v: &[Vec<u8>]| v.iter().map(Vec::len).collect::<Vec<_>>();
            let first = sent.iter().zip(&expected).position(|(a, b)| a != b);
            panic!(
                "{step:?}: the device sent frames of lengths {:?}, expected {:?} (first difference in frame {first:?})",
                lens(&sent),
                lens(&expected)
            );
        }
        let needs_reset = self.driver.status() & STATUS_NEEDS_RESET != 0;
        if self.debug {
            let used = |q: usize| self.mem.read_obj::<u16>(GuestAddress(USED[q] + 2)).unwrap();
            eprintln!(
                "{step:?}: sent {:?}, used idx rx {} tx {}, pending {}, socket {}, needs_reset {needs_reset}",
                sent.iter().map(Vec::len).collect::<Vec<_>>(),
                used(RX),
                used(TX),
                self.model.pending.as_ref().map_or(0, Vec::len),
                self.model.socket.len(),
            );
        }
        assert_eq!(
            needs_reset, self.model.broken,
            "{step:?}: DEVICE_NEEDS_RESET is {needs_reset}, the model says {}",
            self.model.broken
        );
        let (got, want) = (region(&self.mem), region(&self.model.mem));
        if got != want {
            let at = got.iter().zip(want).position(|(a, b)| a != b).unwrap();
            let end = (at + 16).min(MEM_SIZE);
            panic!(
                "{step:?}: guest memory at {at:#x} ({}) is {:02x?}, expected {:02x?}",
                area(at),
                &got[at..end],
                &want[at..end]
            );
        }
        true
    }

    fn inject(&mut self, len: usize, seed: u8) {
        let frame: Vec<u8> = (0..len).map(|i| seed.wrapping_add(i as u8)).collect();
        if host_send(&self.host, &frame) {
            // The device reads into a MAX_FRAME buffer: a seqpacket read
            // truncates a longer frame.
            self.model
                .socket
                .push_back(frame[..len.min(MAX_FRAME)].to_vec());
        }
    }

    /// Runs one operation; None at the end of the input.
    fn op(&mut self, input: &mut Input) -> Option<bool> {
        let op = input.u8()? % 13;
        Some(match op {
            0 => {
                let ctl = input.u8()?;
                let idx = input.u8()?;
                let d = input.desc(ctl)?;
                let q = usize::from(ctl & 1);
                self.guest_write(&desc_bytes(&d), DESC[q] + u64::from(idx) * 16);
                true
            }
            1 => {
                let ctl = input.u8()?;
                let at = input.u24()?;
                let d = input.desc(ctl)?;
                self.guest_write(&desc_bytes(&d), at);
                true
            }
            2 => {
                let q = usize::from(input.u8()? & 1);
                let slot = u64::from(input.u8()?) % u64::from(self.queue_size(q));
                let head = input.u16()?;
                self.guest_write(&head.to_le_bytes(), AVAIL[q] + 4 + slot * 2);
                true
            }
            3 => {
                let q = usize::from(input.u8()? & 1);
                let idx = input.u16()?;
                self.guest_write(&idx.to_le_bytes(), AVAIL[q] + 2);
                true
            }
            4 => {
                let q = usize::from(input.u8()? & 1);
                let head = u16::from(input.u8()?);
                let idx: u16 = self.mem.read_obj(GuestAddress(AVAIL[q] + 2)).unwrap();
                let slot = u64::from(idx % self.queue_size(q));
                self.guest_write(&head.to_le_bytes(), AVAIL[q] + 4 + slot * 2);
                self.guest_write(&idx.wrapping_add(1).to_le_bytes(), AVAIL[q] + 2);
                true
            }
            5 => {
                let q = u16::from(input.u8()? % 3);
                self.step(Step::Notify(q))
            }
            6 => {
                let len = usize::from(input.u16()? & 0x7fff);
                let seed = input.u8()?;
                self.inject(len, seed);
                true
            }
            7 => {
                let d = usize::from(input.u8()?);
                let seed = input.u8()?;
                self.inject(MAX_FRAME - 128 + d, seed);
                true
            }
            8 => self.step(Step::HostEvent),
            9 => {
                let at = input.u24()?;
                let n = usize::from(input.u8()?);
                let n = n.min(input.0.len());
                let (data, rest) = input.0.split_at(n);
                input.0 = rest;
                self.guest_write(data, at);
                true
            }
            10 => {
                let [cfg, rx, tx] = input.bytes()?;
                self.configure(Setup::from_bytes(cfg, rx, tx))
            }
            11 => {
                self.refuse.fetch_xor(true, Ordering::Relaxed);
                true
            }
            _ => self.step(Step::DriverOk),
        })
    }
}

fn desc_bytes(d: &Descriptor) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&d.addr().0.to_le_bytes());
    b[8..12].copy_from_slice(&d.len().to_le_bytes());
    b[12..14].copy_from_slice(&d.flags().to_le_bytes());
    b[14..16].copy_from_slice(&d.next().to_le_bytes());
    b
}

fn env_flag(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| v != "0")
}

fuzz_target!(|data: &[u8]| {
    start_watchdog();
    let mut input = Input(data);
    let Some([cfg, rx, tx]) = input.bytes() else {
        return;
    };
    let mut h = Harness::new(
        Setup::from_bytes(cfg, rx, tx),
        env_flag("NET_QUEUES_STRICT"),
    );
    for _ in 0..MAX_OPS {
        match h.op(&mut input) {
            Some(true) => {}
            _ => break,
        }
    }
});
