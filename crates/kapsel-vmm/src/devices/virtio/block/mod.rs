//! virtio-blk (virtio 5.2) over a disk image: any
//! [`BlockBackend`](kapsel_image::BlockBackend) (raw file or block device,
//! qcow2 with its backing chain).
//!
//! Requests are served on the VM's I/O thread (the queue's doorbell reaches
//! it through an ioeventfd), never on a vCPU thread. Every request is
//! checked by [`request::parse_request`] before any disk or guest-memory
//! access, and a bad request fails with IOERR or UNSUPP while the device
//! keeps working.
//!
//! Two paths serve a checked request:
//! - the fast path, for raw images: reads, writes and flushes go to an
//!   io_uring ([`uring`]), up to [`BLOCK_QUEUE_SIZE`] in flight, the data
//!   moving between the file and guest memory without a copy; under
//!   [`CacheMode::None`] the file is opened with O_DIRECT. Completions come
//!   back, in any order, through an eventfd the I/O thread polls
//!   ([`VirtioDevice::host_event_fds`]), and go on the used ring then.
//! - the slow path, synchronous through the backend with a bounce buffer:
//!   qcow2 images, discard, write-zeroes, GET_ID, buffers the fast path
//!   cannot take (split across memory regions, or not sector-aligned under
//!   O_DIRECT), writes to the disk's first sector (the backend guards it),
//!   and every request on a host where io_uring cannot be set up.

mod host_file;
pub mod request;
mod uring;

use super::{
    feature, ready_queues, signal_if, ActivateError, DeviceError, VirtioDevice, VirtioInterrupt,
    MAX_ROUNDS_PER_NOTIFY, TYPE_BLOCK,
};
use crate::memory::GuestMem;
use host_file::fast_path;
pub use host_file::FastFile;
use kapsel_image::{BlockBackend, RawBackend};
use request::{
    parse_request, DiskLimits, Request, RequestKind, SectorRange, ID_BYTES, MAX_DISCARD_SECTORS,
    MAX_DISCARD_SEGMENTS, MAX_WRITE_ZEROES_SEGMENTS, SECTOR_SHIFT, SECTOR_SIZE, SEG_MAX,
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK,
};
use std::fs::File;
use std::io;
use std::sync::Arc;
use uring::{InFlight, Outcome, UringDisk};
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress};

/// Size of the request queue.
pub const BLOCK_QUEUE_SIZE: u16 = 256;

/// Feature bit: `seg_max` is valid.
pub const VIRTIO_BLK_F_SEG_MAX: u32 = 2;
/// Feature bit: the disk is read-only.
pub const VIRTIO_BLK_F_RO: u32 = 5;
/// Feature bit: `blk_size` is valid.
pub const VIRTIO_BLK_F_BLK_SIZE: u32 = 6;
/// Feature bit: FLUSH is supported.
pub const VIRTIO_BLK_F_FLUSH: u32 = 9;
/// Feature bit: the topology fields (physical block size) are valid.
pub const VIRTIO_BLK_F_TOPOLOGY: u32 = 10;
/// Feature bit: DISCARD is supported.
pub const VIRTIO_BLK_F_DISCARD: u32 = 13;
/// Feature bit: WRITE_ZEROES is supported.
pub const VIRTIO_BLK_F_WRITE_ZEROES: u32 = 14;

// struct virtio_blk_config field offsets.
const CFG_CAPACITY: usize = 0;
const CFG_SEG_MAX: usize = 12;
const CFG_BLK_SIZE: usize = 20;
const CFG_PHYSICAL_BLOCK_EXP: usize = 24;
const CFG_MIN_IO_SIZE: usize = 26;
const CFG_MAX_DISCARD_SECTORS: usize = 36;
const CFG_MAX_DISCARD_SEG: usize = 40;
const CFG_DISCARD_SECTOR_ALIGNMENT: usize = 44;
const CFG_MAX_WRITE_ZEROES_SECTORS: usize = 48;
const CFG_MAX_WRITE_ZEROES_SEG: usize = 52;
const CFG_WRITE_ZEROES_MAY_UNMAP: usize = 56;
/// Size of struct virtio_blk_config up to write_zeroes_may_unmap + padding.
const CONFIG_SIZE: usize = 60;
/// Discard granularity in sectors (4 KiB, the host page and usual fs block).
const DISCARD_ALIGNMENT_SECTORS: u32 = 8;
/// Bounce buffer size for reads and writes.
const BOUNCE_SIZE: usize = 64 * 1024;

/// How the host caches a raw disk file (`--disk ...,cache=`); qcow2 images
/// always go through the host page cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheMode {
    /// Bypass the host page cache (O_DIRECT), as QEMU's `cache=none`: no
    /// second copy of the guest's data in host memory, and the guest's
    /// flushes still reach the disk. Where the file system refuses
    /// O_DIRECT (tmpfs) or needs larger alignment than 512 bytes, the disk
    /// falls back to [`CacheMode::Writeback`].
    #[default]
    None,
    /// Through the host page cache; the guest's flushes reach the disk.
    Writeback,
}

impl CacheMode {
    /// The name used in `cache=` options.
    pub fn name(self) -> &'static str {
        match self {
            CacheMode::None => "none",
            CacheMode::Writeback => "writeback",
        }
    }
}

impl std::str::FromStr for CacheMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(CacheMode::None),
            "writeback" => Ok(CacheMode::Writeback),
            _ => Err(format!("unknown cache mode \"{s}\"; use none or writeback")),
        }
    }
}

/// How the disk is presented.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockOptions {
    /// Refuse writes (VIRTIO_BLK_F_RO).
    pub read_only: bool,
    /// Serial number returned by GET_ID; longer ones are cut to 20 bytes.
    pub serial: String,
    /// Host caching of a raw image.
    pub cache: CacheMode,
}

struct Active {
    mem: GuestMem,
    interrupt: Arc<dyn VirtioInterrupt>,
    queue: Queue,
    limits: DiskLimits,
    /// Requests wait in the ring because every in-flight slot is taken;
    /// the next completion takes them.
    stalled: bool,
}

/// A virtio block device backed by a disk image.
pub struct VirtioBlock {
    disk: Box<dyn BlockBackend>,
    capacity_sectors: u64,
    read_only: bool,
    id: [u8; ID_BYTES],
    config: [u8; CONFIG_SIZE],
    queue_sizes: [u16; 1],
    active: Option<Active>,
    /// The fast path (raw images, where io_uring works).
    uring: Option<UringDisk>,
    /// The caching in effect (after any fallback).
    cache: CacheMode,
    /// Whether the config space shows a physical block larger than 512
    /// bytes (the O_DIRECT alignment of a 4Kn file).
    topology: bool,
    /// Completions being put on the used ring (kept to reuse its memory).
    done: Vec<(InFlight, Outcome)>,
}

impl VirtioBlock {
    /// A device over the raw image `disk`, whose size (rounded down to
    /// whole sectors) is the capacity. `disk` must be open for writing
    /// unless read-only.
    pub fn new(disk: File, options: BlockOptions) -> io::Result<Self> {
        let backend = RawBackend::from_file(disk, options.read_only)?;
        Ok(Self::with_backend(Box::new(backend), options))
    }

    /// A device over `disk`, whose size (rounded down to whole sectors) is
    /// the capacity. The device is read-only if `options` or the backend
    /// says so.
    pub fn with_backend(disk: Box<dyn BlockBackend>, options: BlockOptions) -> Self {
        let read_only = options.read_only || disk.read_only();
        let fast = FastFile::open(disk.as_ref(), options.cache, read_only);
        Self::with_fast_file(disk, options, fast)
    }

    /// [`VirtioBlock::with_backend`] with the fast path's file opened
    /// beforehand ([`FastFile::open`]): a sandboxed VMM opens it before it
    /// loses /proc, and reuses it for every boot.
    pub fn with_fast_file(
        disk: Box<dyn BlockBackend>,
        options: BlockOptions,
        fast: Option<FastFile>,
    ) -> Self {
        let capacity_sectors = disk.size() >> SECTOR_SHIFT;
        let read_only = options.read_only || disk.read_only();
        let mut id = [0u8; ID_BYTES];
        let serial = options.serial.as_bytes();
        let n = serial.len().min(ID_BYTES);
        id[..n].copy_from_slice(&serial[..n]);
        let mut config = [0u8; CONFIG_SIZE];
        let mut put = |at: usize, bytes: &[u8]| config[at..at + bytes.len()].copy_from_slice(bytes);
        put(CFG_CAPACITY, &capacity_sectors.to_le_bytes());
        put(CFG_SEG_MAX, &SEG_MAX.to_le_bytes());
        put(CFG_BLK_SIZE, &(SECTOR_SIZE as u32).to_le_bytes());
        put(CFG_MAX_DISCARD_SECTORS, &MAX_DISCARD_SECTORS.to_le_bytes());
        put(CFG_MAX_DISCARD_SEG, &MAX_DISCARD_SEGMENTS.to_le_bytes());
        put(
            CFG_DISCARD_SECTOR_ALIGNMENT,
            &DISCARD_ALIGNMENT_SECTORS.to_le_bytes(),
        );
        put(
            CFG_MAX_WRITE_ZEROES_SECTORS,
            &MAX_DISCARD_SECTORS.to_le_bytes(),
        );
        put(
            CFG_MAX_WRITE_ZEROES_SEG,
            &MAX_WRITE_ZEROES_SEGMENTS.to_le_bytes(),
        );
        put(CFG_WRITE_ZEROES_MAY_UNMAP, &[1]);
        // A file that takes O_DIRECT only in larger blocks (4Kn) is shown as
        // a disk with 512-byte logical and larger physical blocks, as such
        // drives are: guests then align their I/O to it, and it stays on
        // the fast path. The logical size stays 512 bytes so that an image
        // means the same (partition tables count 512-byte sectors).
        let physical = fast
            .as_ref()
            .and_then(FastFile::direct_align)
            .filter(|&a| a > SECTOR_SIZE);
        if let Some(align) = physical {
            let blocks = align / SECTOR_SIZE;
            put(CFG_PHYSICAL_BLOCK_EXP, &[blocks.trailing_zeros() as u8]);
            put(CFG_MIN_IO_SIZE, &(blocks as u16).to_le_bytes());
        }
        let (uring, cache) = fast_path(fast);
        VirtioBlock {
            disk,
            capacity_sectors,
            read_only,
            id,
            config,
            queue_sizes: [BLOCK_QUEUE_SIZE],
            active: None,
            uring,
            cache,
            topology: physical.is_some(),
            done: Vec::new(),
        }
    }

    /// Disk size in 512-byte sectors.
    pub fn capacity_sectors(&self) -> u64 {
        self.capacity_sectors
    }

    /// The host caching in effect: what was asked for, unless the file
    /// system refused O_DIRECT, the image is qcow2, or the fast path is
    /// off (then [`CacheMode::Writeback`]).
    pub fn cache_mode(&self) -> CacheMode {
        self.cache
    }

    /// Whether requests go through io_uring (raw image, and the kernel
    /// allows it).
    pub fn asynchronous(&self) -> bool {
        self.uring.is_some()
    }

    /// Takes requests from the queue: fast-path ones go to the ring, the
    /// others run at once. Returns whether used-ring entries were added.
    /// Bounded: stops when every in-flight slot is taken (completions
    /// resume it) or after [`MAX_ROUNDS_PER_NOTIFY`] queue sizes of
    /// requests (the rest is requeued through the doorbell).
    fn take_requests(&mut self) -> Result<bool, DeviceError> {
        let Some(a) = self.active.as_mut() else {
            return Ok(false);
        };
        let (mem, queue, limits) = (&a.mem, &mut a.queue, &a.limits);
        let size = usize::from(queue.size());
        let budget = size.saturating_mul(MAX_ROUNDS_PER_NOTIFY);
        let (mut taken, mut used) = (0usize, false);
        a.stalled = false;
        loop {
            queue.disable_notification(mem)?;
            let room = self
                .uring
                .as_ref()
                .map_or(size, |u| u.room())
                .min(size)
                .min(budget - taken);
            if room == 0 {
                if taken >= budget {
                    a.interrupt.requeue(0);
                } else {
                    a.stalled = true;
                }
                break;
            }
            let chains: Vec<_> = queue.iter(mem)?.take(room).collect();
            taken += chains.len();
            let got = chains.len();
            for chain in chains {
                let head = chain.head_index();
                let disk = self.disk.as_mut();
                if let Some(len) = start_chain(chain, mem, limits, disk, &self.id, &mut self.uring)
                {
                    queue.add_used(mem, head, len)?;
                    used = true;
                }
            }
            if got == room {
                // Maybe more: look again (or stop at the bounds above).
                continue;
            }
            if !queue.enable_notification(mem)? {
                break;
            }
        }
        if let Some(u) = self.uring.as_mut() {
            u.submit().map_err(DeviceError::Host)?;
        }
        Ok(used)
    }

    /// Puts the requests the kernel finished on the used ring; a short
    /// transfer is redone on the slow path. Returns whether entries were
    /// added.
    fn complete(&mut self) -> Result<bool, DeviceError> {
        let Some(u) = self.uring.as_mut() else {
            return Ok(false);
        };
        u.reap(&mut self.done);
        let Some(a) = self.active.as_mut() else {
            // Not reached: a reset drains the ring before it drops `active`.
            self.done.clear();
            return Ok(false);
        };
        let mut used = false;
        for (req, outcome) in self.done.drain(..) {
            let (status, written) = match outcome {
                Outcome::Done => (VIRTIO_BLK_S_OK, bytes_read(&req.request)),
                Outcome::Retry => execute(&req.request, &a.mem, self.disk.as_mut(), &self.id),
                Outcome::Failed(errno) => {
                    tracing::debug!(
                        "virtio-blk {:?} failed: {}",
                        req.request.kind,
                        io::Error::from_raw_os_error(errno)
                    );
                    (VIRTIO_BLK_S_IOERR, 0)
                }
            };
            let len = finish(&a.mem, req.status, status, written);
            a.queue.add_used(&a.mem, req.head, len)?;
            used = true;
        }
        Ok(used)
    }

    /// Interrupts the driver if `used` entries were added and it wants to
    /// hear about them (event index or the no-interrupt flag).
    fn signal(&mut self, used: bool) -> Result<(), DeviceError> {
        let Some(a) = self.active.as_mut().filter(|_| used) else {
            return Ok(());
        };
        let needed = a.queue.needs_notification(&a.mem)?;
        signal_if(a.interrupt.as_ref(), 0, needed)
    }

    /// Waits for every in-flight request and forgets it (reset, drop).
    /// Should the ring fail, nothing may unmap memory the kernel could
    /// still write: the ring and a reference to guest memory are leaked.
    fn drain(&mut self) {
        let Some(u) = self.uring.as_mut() else {
            return;
        };
        if u.in_flight() == 0 || u.drain() {
            return;
        }
        tracing::error!("virtio-blk: requests still in flight; leaking the I/O ring");
        if let Some(a) = &self.active {
            std::mem::forget(a.mem.clone());
        }
        std::mem::forget(self.uring.take());
    }
}

impl Drop for VirtioBlock {
    fn drop(&mut self) {
        self.drain();
    }
}

/// The io_uring fast path on its own, for the fuzz targets in
/// `crates/kapsel-vmm/fuzz` (not an API: the device drives the ring itself).
#[doc(hidden)]
pub mod fuzzing {
    use super::request::Request;
    use super::uring::{Outcome, UringDisk};
    use super::FastFile;
    use crate::memory::GuestMem;
    use std::io;
    use vm_memory::GuestAddress;

    /// What the fast path did with one request.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum FastOutcome {
        /// Given back: the device runs it on the synchronous path.
        NotTaken,
        /// Done through the ring.
        Done,
        /// A short transfer or a transient error: the device redoes it on
        /// the synchronous path.
        Retry,
        /// Failed with this errno: the guest gets an I/O error.
        Failed(i32),
    }

    /// A ring over a [`FastFile`], made as the device makes its own.
    pub struct FastPath(UringDisk);

    impl FastPath {
        /// A ring of 8 entries over a duplicate of `fast`'s descriptor.
        pub fn new(fast: &FastFile) -> io::Result<Self> {
            let file = fast.file.try_clone()?;
            Ok(FastPath(UringDisk::new(file, fast.direct_align, 8)?))
        }

        /// Runs `request` through the ring and waits for its completion.
        pub fn run(&mut self, mem: &GuestMem, request: &Request) -> io::Result<FastOutcome> {
            if self
                .0
                .start(mem, 0, GuestAddress(0), request.clone())
                .is_err()
            {
                return Ok(FastOutcome::NotTaken);
            }
            let mut out = Vec::new();
            while out.is_empty() {
                self.0.wait(&mut out)?;
            }
            Ok(match out.pop().map(|(_, outcome)| outcome) {
                Some(Outcome::Done) => FastOutcome::Done,
                Some(Outcome::Retry) | None => FastOutcome::Retry,
                Some(Outcome::Failed(errno)) => FastOutcome::Failed(errno),
            })
        }
    }

    impl Drop for FastPath {
        fn drop(&mut self) {
            // As the device does: nothing left in flight when the ring goes
            // (a failed wait may have left a request there).
            self.0.drain();
        }
    }
}

/// Bytes a finished read put in the guest's buffers (the used length less
/// the status byte).
fn bytes_read(req: &Request) -> u32 {
    if req.kind == RequestKind::Read {
        u32::try_from(req.data_len).unwrap_or(u32::MAX)
    } else {
        0
    }
}

/// Writes the status byte; returns the used length (data written + status),
/// 0 if the status cannot be written.
fn finish(mem: &GuestMem, status_addr: GuestAddress, status: u8, written: u32) -> u32 {
    if mem.write_obj(status, status_addr).is_err() {
        return 0;
    }
    written.saturating_add(1)
}

/// Runs a checked request; returns the status and how many bytes were
/// written into the guest's data buffers.
pub fn execute(
    req: &Request,
    mem: &GuestMem,
    disk: &mut dyn BlockBackend,
    id: &[u8; ID_BYTES],
) -> (u8, u32) {
    let result = match req.kind {
        RequestKind::Read => read(req, mem, disk).map(|()| bytes_read(req)),
        RequestKind::Write => write(req, mem, disk).map(|()| 0),
        RequestKind::Flush => disk.flush().map(|()| 0),
        RequestKind::GetId => get_id(req, mem, id),
        RequestKind::Discard | RequestKind::WriteZeroes => req
            .ranges
            .iter()
            .try_for_each(|r| zero_range(disk, r, req.kind == RequestKind::Discard))
            .map(|()| 0),
    };
    match result {
        Ok(written) => (VIRTIO_BLK_S_OK, written),
        Err(e) => {
            tracing::debug!("virtio-blk {:?} failed: {e}", req.kind);
            (VIRTIO_BLK_S_IOERR, 0)
        }
    }
}

fn bad_address() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, "buffer outside guest memory")
}

/// Calls `f(guest address, disk offset, length)` for every bounce-sized
/// piece of the request's data.
fn for_each_chunk(
    req: &Request,
    mut f: impl FnMut(GuestAddress, u64, usize) -> io::Result<()>,
) -> io::Result<()> {
    let mut offset = req.sector << SECTOR_SHIFT;
    for seg in &req.data {
        let mut done = 0usize;
        while done < seg.len as usize {
            let n = (seg.len as usize - done).min(BOUNCE_SIZE);
            let addr = seg
                .addr
                .0
                .checked_add(done as u64)
                .ok_or_else(bad_address)?;
            f(GuestAddress(addr), offset, n)?;
            done += n;
            offset += n as u64;
        }
    }
    Ok(())
}

fn read(req: &Request, mem: &GuestMem, disk: &dyn BlockBackend) -> io::Result<()> {
    let mut buf = vec![0u8; BOUNCE_SIZE];
    for_each_chunk(req, |addr, offset, n| {
        disk.read_at(&mut buf[..n], offset)?;
        mem.write_slice(&buf[..n], addr).map_err(|_| bad_address())
    })
}

fn write(req: &Request, mem: &GuestMem, disk: &dyn BlockBackend) -> io::Result<()> {
    let mut buf = vec![0u8; BOUNCE_SIZE];
    for_each_chunk(req, |addr, offset, n| {
        mem.read_slice(&mut buf[..n], addr)
            .map_err(|_| bad_address())?;
        disk.write_at(&buf[..n], offset)
    })
}

fn get_id(req: &Request, mem: &GuestMem, id: &[u8; ID_BYTES]) -> io::Result<u32> {
    let mut written = 0usize;
    for seg in &req.data {
        let n = (seg.len as usize).min(ID_BYTES - written);
        mem.write_slice(&id[written..written + n], seg.addr)
            .map_err(|_| bad_address())?;
        written += n;
        if written == ID_BYTES {
            break;
        }
    }
    Ok(written as u32)
}

/// Discards a range, or zeroes it (deallocating it when the driver allows).
fn zero_range(disk: &mut dyn BlockBackend, r: &SectorRange, discard: bool) -> io::Result<()> {
    let offset = r.sector << SECTOR_SHIFT;
    let len = u64::from(r.num_sectors) << SECTOR_SHIFT;
    if discard {
        disk.discard(offset, len)
    } else {
        disk.write_zeroes(offset, len, r.unmap)
    }
}

/// Starts one chain: returns its used length (data written + status) when
/// it is done at once, or None when it went to the ring.
fn start_chain(
    chain: DescriptorChain<&GuestMem>,
    mem: &GuestMem,
    limits: &DiskLimits,
    disk: &mut dyn BlockBackend,
    id: &[u8; ID_BYTES],
    uring: &mut Option<UringDisk>,
) -> Option<u32> {
    let head = chain.head_index();
    let parsed = parse_request(mem, chain, limits);
    let Some(status_addr) = parsed.status else {
        tracing::debug!("virtio-blk request without status descriptor dropped");
        return Some(0);
    };
    let (status, written) = match parsed.request {
        Ok(req) => {
            let req = match uring.as_mut() {
                Some(u) => match u.start(mem, head, status_addr, req) {
                    Ok(()) => return None,
                    Err(req) => req,
                },
                None => req,
            };
            execute(&req, mem, disk, id)
        }
        Err(e) => {
            tracing::debug!("virtio-blk request rejected: {e}");
            (e.status(), 0)
        }
    };
    Some(finish(mem, status_addr, status, written))
}

impl VirtioDevice for VirtioBlock {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        let mut f = feature(VIRTIO_BLK_F_SEG_MAX)
            | feature(VIRTIO_BLK_F_BLK_SIZE)
            | feature(VIRTIO_BLK_F_FLUSH);
        if self.topology {
            f |= feature(VIRTIO_BLK_F_TOPOLOGY);
        }
        if self.read_only {
            f |= feature(VIRTIO_BLK_F_RO);
        } else {
            f |= feature(VIRTIO_BLK_F_DISCARD) | feature(VIRTIO_BLK_F_WRITE_ZEROES);
        }
        f
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // Only `writeback` is writable, and only with CONFIG_WCE, which is
        // not offered.
    }

    fn activate(
        &mut self,
        mem: GuestMem,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<Queue>,
        acked_features: u64,
    ) -> Result<(), ActivateError> {
        let [queue] = ready_queues::<1>(queues)?;
        let limits = DiskLimits {
            capacity_sectors: self.capacity_sectors,
            read_only: self.read_only,
            discard: acked_features & feature(VIRTIO_BLK_F_DISCARD) != 0,
            write_zeroes: acked_features & feature(VIRTIO_BLK_F_WRITE_ZEROES) != 0,
        };
        self.active = Some(Active {
            mem,
            interrupt,
            queue,
            limits,
            stalled: false,
        });
        Ok(())
    }

    fn reset(&mut self) {
        // The kernel must be done with guest buffers before the driver
        // gets them back, and no completion may reach a reset ring.
        self.drain();
        self.active = None;
    }

    fn queue_notify(&mut self, queue_index: u16) -> Result<(), DeviceError> {
        if queue_index != 0 {
            return Ok(());
        }
        let used = self.take_requests()?;
        self.signal(used)
    }

    fn host_event_fds(&self) -> Vec<std::os::fd::RawFd> {
        self.uring.iter().map(UringDisk::event_fd).collect()
    }

    fn host_event(&mut self, _index: usize) -> Result<(), DeviceError> {
        let mut used = self.complete()?;
        if self.active.as_ref().is_some_and(|a| a.stalled) {
            used |= self.take_requests()?;
        }
        self.signal(used)
    }
}

#[cfg(test)]
mod tests {
    use super::request::*;
    use super::*;
    use crate::devices::pci::PciDevice;
    use crate::devices::virtio::testing::*;
    use crate::devices::virtio::{
        STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK,
        STATUS_NEEDS_RESET, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
    };
    use std::fs::OpenOptions;
    use std::io::Write;
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;

    const SECTORS: u64 = 2048;
    const HDR: u64 = 0x8_0000;
    const STATUS: u64 = 0x8_1000;
    const BUF: u64 = DATA_BASE;
    const INDIRECT: u64 = 0x9_0000;
    const QSIZE: u16 = 256;

    fn pattern(sector: u64) -> Vec<u8> {
        (0..512)
            .map(|i| (sector as u8).wrapping_mul(31) ^ i as u8)
            .collect()
    }

    fn disk() -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        for s in 0..SECTORS {
            f.write_all(&pattern(s)).unwrap();
        }
        f
    }

    struct Blk {
        d: Driver,
        file: tempfile::NamedTempFile,
        next: u16,
        used: u16,
    }

    fn setup(options: BlockOptions) -> (Blk, MockSplitQueue<'static, GuestMem>) {
        let file = disk();
        let f = if options.read_only {
            File::open(file.path()).unwrap()
        } else {
            file.reopen().unwrap()
        };
        start(VirtioBlock::new(f, options).unwrap(), file)
    }

    /// Negotiates every offered feature and readies queue 0.
    fn start(
        dev: VirtioBlock,
        file: tempfile::NamedTempFile,
    ) -> (Blk, MockSplitQueue<'static, GuestMem>) {
        let mut d = Driver::new(Box::new(dev));
        let features = d.device_features();
        assert_eq!(
            d.negotiate(features),
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK
        );
        // The mock queue borrows memory for its lifetime; leak one clone per test.
        let mem: &'static GuestMem = Box::leak(Box::new(d.mem.clone()));
        let vq = MockSplitQueue::create(mem, GuestAddress(QUEUE_BASE), QSIZE);
        d.setup_queue(0, &vq, QSIZE);
        d.enable_msix(2);
        d.driver_ok();
        assert_eq!(d.status() & STATUS_DRIVER_OK, STATUS_DRIVER_OK);
        (
            Blk {
                d,
                file,
                next: 0,
                used: 0,
            },
            vq,
        )
    }

    impl Blk {
        fn header(&self, t: u32, sector: u64) {
            self.d.mem.write_obj(t, GuestAddress(HDR)).unwrap();
            self.d.mem.write_obj(0u32, GuestAddress(HDR + 4)).unwrap();
            self.d.mem.write_obj(sector, GuestAddress(HDR + 8)).unwrap();
            self.d.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        }

        /// Submits a chain and returns (status byte, used length).
        fn submit(
            &mut self,
            vq: &MockSplitQueue<GuestMem>,
            descs: &[(u64, u32, u16)],
        ) -> (u8, u32) {
            if usize::from(self.next) + descs.len() > usize::from(QSIZE) {
                self.next = 0;
            }
            add_chain(vq, self.next, descs);
            let head = self.next;
            self.next += descs.len() as u16;
            self.d.notify(0);
            settle(&mut self.d, vq, self.used + 1);
            assert_eq!(used_idx(&self.d.mem, vq), self.used + 1);
            let (id, len) = used_entry(&self.d.mem, vq, self.used);
            assert_eq!(id, u32::from(head));
            self.used += 1;
            (self.d.mem.read_obj(GuestAddress(STATUS)).unwrap(), len)
        }

        /// A request with header, `data` and a 1-byte status descriptor.
        fn request(
            &mut self,
            vq: &MockSplitQueue<GuestMem>,
            t: u32,
            sector: u64,
            data: &[(u64, u32, u16)],
        ) -> (u8, u32) {
            self.header(t, sector);
            let mut descs = vec![(HDR, 16, 0)];
            descs.extend_from_slice(data);
            descs.push((STATUS, 1, DESC_F_WRITE));
            self.submit(vq, &descs)
        }

        fn disk_sector(&self, sector: u64) -> Vec<u8> {
            let mut b = vec![0u8; 512];
            self.file
                .as_file()
                .read_exact_at(&mut b, sector * 512)
                .unwrap();
            b
        }

        fn guest(&self, addr: u64, len: usize) -> Vec<u8> {
            let mut b = vec![0u8; len];
            self.d.mem.read_slice(&mut b, GuestAddress(addr)).unwrap();
            b
        }
    }

    /// Lets the I/O thread's part happen: waits on the device's completion
    /// eventfd and hands completions to it until the used index reaches
    /// `want` (or 5 s pass: the caller's assertion then fails).
    fn settle(d: &mut Driver, vq: &MockSplitQueue<GuestMem>, want: u16) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while used_idx(&d.mem, vq) != want && std::time::Instant::now() < deadline {
            let Some(&fd) = d.dev.host_event_fds().first() else {
                return;
            };
            wait_readable(fd, 100);
            d.dev.handle_host_event(0);
        }
    }

    /// Waits up to `ms` milliseconds for `fd` to become readable.
    fn wait_readable(fd: std::os::fd::RawFd, ms: i32) {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `pfd` is one valid pollfd on the stack for the call.
        unsafe { libc::poll(&mut pfd, 1, ms) };
    }

    fn limits() -> DiskLimits {
        DiskLimits {
            capacity_sectors: SECTORS,
            read_only: false,
            discard: true,
            write_zeroes: true,
        }
    }

    #[test]
    fn config_space_and_features() {
        let (mut b, _vq) = setup(BlockOptions::default());
        assert_eq!(b.d.read(DEVICE_CFG, 8), SECTORS);
        assert_eq!(b.d.read(DEVICE_CFG + 12, 4), u64::from(SEG_MAX));
        assert_eq!(b.d.read(DEVICE_CFG + 20, 4), 512);
        assert_eq!(b.d.read(DEVICE_CFG + 40, 4), 1);
        assert_eq!(b.d.read(DEVICE_CFG + 0x800, 4), 0);
        b.d.write(DEVICE_CFG, 8, 0);
        assert_eq!(b.d.read(DEVICE_CFG, 8), SECTORS);
        let f = b.d.device_features();
        for bit in [
            VIRTIO_BLK_F_FLUSH,
            VIRTIO_BLK_F_SEG_MAX,
            VIRTIO_BLK_F_BLK_SIZE,
            VIRTIO_BLK_F_DISCARD,
            VIRTIO_BLK_F_WRITE_ZEROES,
            VIRTIO_F_VERSION_1,
        ] {
            assert_ne!(f & feature(bit), 0, "bit {bit}");
        }
        assert_eq!(f & feature(VIRTIO_BLK_F_RO), 0);
        let (mut ro, _vq) = setup(BlockOptions {
            read_only: true,
            serial: String::new(),
            ..BlockOptions::default()
        });
        let f = ro.d.device_features();
        assert_ne!(f & feature(VIRTIO_BLK_F_RO), 0);
        assert_eq!(f & feature(VIRTIO_BLK_F_DISCARD), 0);
        let mut c = [0u8; 1];
        ro.d.dev.read_config(0, &mut c);
        assert_eq!(c, [0xf4]);
    }

    #[test]
    fn qcow2_backend_through_the_device() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.qcow2");
        kapsel_image::create(
            &path,
            kapsel_image::Format::Qcow2,
            Some(SECTORS * 512),
            None,
        )
        .unwrap();
        let backend = kapsel_image::open(&path, None, false).unwrap();
        let dev = VirtioBlock::with_backend(backend, BlockOptions::default());
        assert_eq!(dev.capacity_sectors(), SECTORS);
        let (mut b, vq) = start(dev, disk());
        let data: Vec<u8> = (0..70 * 1024).map(|i| (i * 13 + 1) as u8).collect();
        b.d.mem.write_slice(&data, GuestAddress(BUF)).unwrap();
        let len = data.len() as u32;
        assert_eq!(
            b.request(&vq, VIRTIO_BLK_T_OUT, 100, &[(BUF, len, 0)]),
            (VIRTIO_BLK_S_OK, 1)
        );
        b.d.mem
            .write_slice(&range(110, 8, 0), GuestAddress(BUF))
            .unwrap();
        assert_eq!(
            b.request(&vq, VIRTIO_BLK_T_WRITE_ZEROES, 0, &[(BUF, 16, 0)])
                .0,
            VIRTIO_BLK_S_OK
        );
        assert_eq!(
            b.request(&vq, VIRTIO_BLK_T_FLUSH, 0, &[]),
            (VIRTIO_BLK_S_OK, 1)
        );
        let out = BUF + 0x2_0000;
        assert_eq!(
            b.request(&vq, VIRTIO_BLK_T_IN, 100, &[(out, len, DESC_F_WRITE)]),
            (VIRTIO_BLK_S_OK, len + 1)
        );
        let mut expected = data.clone();
        expected[10 * 512..18 * 512].fill(0);
        assert_eq!(b.guest(out, data.len()), expected);
        // Unwritten sectors read as zeroes.
        assert_eq!(
            b.request(&vq, VIRTIO_BLK_T_IN, 0, &[(out, 512, DESC_F_WRITE)])
                .0,
            VIRTIO_BLK_S_OK
        );
        assert_eq!(b.guest(out, 512), vec![0; 512]);
        drop(b);
        // The image holds the data after the device is gone.
        let img = kapsel_image::open(&path, None, true).unwrap();
        let mut back = vec![0u8; data.len()];
        img.read_at(&mut back, 100 * 512).unwrap();
        assert_eq!(back, expected);
        // A read-only backend makes a read-only device.
        let ro = VirtioBlock::with_backend(img, BlockOptions::default());
        assert_ne!(ro.features() & feature(VIRTIO_BLK_F_RO), 0);
    }

    #[test]
    fn read_spanning_two_buffers() {
        let (mut b, vq) = setup(BlockOptions::default());
        let r = b.request(
            &vq,
            VIRTIO_BLK_T_IN,
            3,
            &[(BUF, 512, DESC_F_WRITE), (BUF + 0x2000, 512, DESC_F_WRITE)],
        );
        assert_eq!(r, (VIRTIO_BLK_S_OK, 1025));
        assert_eq!(b.guest(BUF, 512), pattern(3));
        assert_eq!(b.guest(BUF + 0x2000, 512), pattern(4));
        // The driver gets an interrupt on vector 1.
        assert_eq!(b.d.sink.take(), vec![(MSI_ADDRESS, 0x21)]);
    }

    #[test]
    fn write_then_flush() {
        let (mut b, vq) = setup(BlockOptions::default());
        let data: Vec<u8> = (0..1024).map(|i| (i * 7) as u8).collect();
        b.d.mem.write_slice(&data, GuestAddress(BUF)).unwrap();
        let r = b.request(&vq, VIRTIO_BLK_T_OUT, 5, &[(BUF, 1024, 0)]);
        assert_eq!(r, (VIRTIO_BLK_S_OK, 1));
        assert_eq!(b.disk_sector(5), data[..512]);
        assert_eq!(b.disk_sector(6), data[512..]);
        assert_eq!(b.disk_sector(7), pattern(7));
        assert_eq!(
            b.request(&vq, VIRTIO_BLK_T_FLUSH, 0, &[]),
            (VIRTIO_BLK_S_OK, 1)
        );
        // The last sector is writable, one past it is not.
        assert_eq!(
            b.request(&vq, VIRTIO_BLK_T_OUT, SECTORS - 1, &[(BUF, 512, 0)])
                .0,
            VIRTIO_BLK_S_OK
        );
        assert_eq!(
            b.request(&vq, VIRTIO_BLK_T_OUT, SECTORS, &[(BUF, 512, 0)])
                .0,
            VIRTIO_BLK_S_IOERR
        );
    }

    #[test]
    fn get_id_returns_serial() {
        let (mut b, vq) = setup(BlockOptions {
            read_only: false,
            serial: "kapsel-disk-0".into(),
            ..BlockOptions::default()
        });
        let r = b.request(&vq, VIRTIO_BLK_T_GET_ID, 0, &[(BUF, 20, DESC_F_WRITE)]);
        assert_eq!(r, (VIRTIO_BLK_S_OK, 21));
        assert_eq!(&b.guest(BUF, 20), b"kapsel-disk-0\0\0\0\0\0\0\0");
        let (mut b, vq) = setup(BlockOptions {
            read_only: false,
            serial: "0123456789abcdefghijKLMN".into(),
            ..BlockOptions::default()
        });
        let r = b.request(&vq, VIRTIO_BLK_T_GET_ID, 0, &[(BUF, 64, DESC_F_WRITE)]);
        assert_eq!(r, (VIRTIO_BLK_S_OK, 21));
        assert_eq!(&b.guest(BUF, 20), b"0123456789abcdefghij");
    }

    fn range(sector: u64, num: u32, flags: u32) -> [u8; 16] {
        let mut s = [0u8; 16];
        s[..8].copy_from_slice(&sector.to_le_bytes());
        s[8..12].copy_from_slice(&num.to_le_bytes());
        s[12..].copy_from_slice(&flags.to_le_bytes());
        s
    }

    #[test]
    fn write_zeroes_and_discard() {
        let (mut b, vq) = setup(BlockOptions::default());
        b.d.mem
            .write_slice(&range(10, 16, 0), GuestAddress(BUF))
            .unwrap();
        assert_eq!(
            b.request(&vq, VIRTIO_BLK_T_WRITE_ZEROES, 0, &[(BUF, 16, 0)]),
            (VIRTIO_BLK_S_OK, 1)
        );
        assert_eq!(b.disk_sector(9), pattern(9));
        assert_eq!(b.disk_sector(10), vec![0; 512]);
        assert_eq!(b.disk_sector(25), vec![0; 512]);
        assert_eq!(b.disk_sector(26), pattern(26));
        b.d.mem
            .write_slice(
                &range(100, 8, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP),
                GuestAddress(BUF),
            )
            .unwrap();
        assert_eq!(
            b.request(&vq, VIRTIO_BLK_T_WRITE_ZEROES, 0, &[(BUF, 16, 0)])
                .0,
            VIRTIO_BLK_S_OK
        );
        assert_eq!(b.disk_sector(104), vec![0; 512]);
        b.d.mem
            .write_slice(&range(200, 8, 0), GuestAddress(BUF))
            .unwrap();
        assert_eq!(
            b.request(&vq, VIRTIO_BLK_T_DISCARD, 0, &[(BUF, 16, 0)]).0,
            VIRTIO_BLK_S_OK
        );
        assert_eq!(b.disk_sector(208), pattern(208));
        assert_eq!(b.file.as_file().metadata().unwrap().len(), SECTORS * 512);
        // Past the end, unknown flags, two segments (max is one): rejected.
        b.d.mem
            .write_slice(&range(SECTORS - 1, 2, 0), GuestAddress(BUF))
            .unwrap();
        assert_eq!(
            b.request(&vq, VIRTIO_BLK_T_DISCARD, 0, &[(BUF, 16, 0)]).0,
            VIRTIO_BLK_S_IOERR
        );
        b.d.mem
            .write_slice(&range(0, 1, 1), GuestAddress(BUF))
            .unwrap();
        assert_eq!(
            b.request(&vq, VIRTIO_BLK_T_DISCARD, 0, &[(BUF, 16, 0)]).0,
            VIRTIO_BLK_S_UNSUPP
        );
        assert_eq!(
            b.request(&vq, VIRTIO_BLK_T_WRITE_ZEROES, 0, &[(BUF, 32, 0)])
                .0,
            VIRTIO_BLK_S_IOERR
        );
    }

    #[test]
    fn read_through_indirect_table() {
        let (mut b, vq) = setup(BlockOptions::default());
        b.header(VIRTIO_BLK_T_IN, 42);
        let table = [
            Descriptor::new(HDR, 16, DESC_F_NEXT, 1),
            Descriptor::new(BUF, 512, DESC_F_WRITE | DESC_F_NEXT, 2),
            Descriptor::new(STATUS, 1, DESC_F_WRITE, 0),
        ];
        for (i, d) in table.iter().enumerate() {
            b.d.mem
                .write_obj(
                    RawDescriptor::from(*d),
                    GuestAddress(INDIRECT + 16 * i as u64),
                )
                .unwrap();
        }
        let r = b.submit(&vq, &[(INDIRECT, 48, DESC_F_INDIRECT)]);
        assert_eq!(r, (VIRTIO_BLK_S_OK, 513));
        assert_eq!(b.guest(BUF, 512), pattern(42));
    }

    #[test]
    fn malformed_requests_fail_and_the_device_keeps_working() {
        let (mut b, vq) = setup(BlockOptions::default());
        let end = MEM_SIZE as u64;
        // Data buffer outside guest memory.
        assert_eq!(
            b.request(&vq, VIRTIO_BLK_T_IN, 0, &[(end - 256, 512, DESC_F_WRITE)]),
            (VIRTIO_BLK_S_IOERR, 1)
        );
        // Oversize length (256 MiB into 16 MiB of memory, and past the disk).
        assert_eq!(
            b.request(&vq, VIRTIO_BLK_T_IN, 0, &[(BUF, 1 << 28, DESC_F_WRITE)])
                .0,
            VIRTIO_BLK_S_IOERR
        );
        // Sector ranges past the end, or overflowing.
        assert_eq!(
            b.request(
                &vq,
                VIRTIO_BLK_T_IN,
                SECTORS - 1,
                &[(BUF, 1024, DESC_F_WRITE)]
            )
            .0,
            VIRTIO_BLK_S_IOERR
        );
        assert_eq!(
            b.request(&vq, VIRTIO_BLK_T_IN, u64::MAX, &[(BUF, 512, DESC_F_WRITE)])
                .0,
            VIRTIO_BLK_S_IOERR
        );
        // Length not a multiple of 512, and zero length.
        assert_eq!(
            b.request(&vq, VIRTIO_BLK_T_IN, 0, &[(BUF, 100, DESC_F_WRITE)])
                .0,
            VIRTIO_BLK_S_IOERR
        );
        assert_eq!(
            b.request(&vq, VIRTIO_BLK_T_OUT, 0, &[]).0,
            VIRTIO_BLK_S_IOERR
        );
        // Wrong direction: a read into a device-readable buffer.
        assert_eq!(
            b.request(&vq, VIRTIO_BLK_T_IN, 0, &[(BUF, 512, 0)]).0,
            VIRTIO_BLK_S_IOERR
        );
        assert_eq!(
            b.request(&vq, VIRTIO_BLK_T_OUT, 0, &[(BUF, 512, DESC_F_WRITE)])
                .0,
            VIRTIO_BLK_S_IOERR
        );
        // Unknown request type.
        assert_eq!(b.request(&vq, 99, 0, &[]).0, VIRTIO_BLK_S_UNSUPP);
        // Header writable, or of the wrong size.
        b.header(VIRTIO_BLK_T_FLUSH, 0);
        assert_eq!(
            b.submit(&vq, &[(HDR, 16, DESC_F_WRITE), (STATUS, 1, DESC_F_WRITE)])
                .0,
            VIRTIO_BLK_S_IOERR
        );
        b.header(VIRTIO_BLK_T_FLUSH, 0);
        assert_eq!(
            b.submit(&vq, &[(HDR, 8, 0), (STATUS, 1, DESC_F_WRITE)]).0,
            VIRTIO_BLK_S_IOERR
        );
        // A header alone is its own (read-only) status: dropped, used length 0.
        b.header(VIRTIO_BLK_T_FLUSH, 0);
        assert_eq!(b.submit(&vq, &[(HDR, 16, 0)]), (0xff, 0));
        // Status descriptor read-only: no status written.
        b.header(VIRTIO_BLK_T_IN, 0);
        assert_eq!(
            b.submit(
                &vq,
                &[(HDR, 16, 0), (BUF, 512, DESC_F_WRITE), (STATUS, 1, 0)]
            ),
            (0xff, 0)
        );
        // Status descriptor missing (the chain ends with a data buffer the
        // device reads): dropped.
        b.header(VIRTIO_BLK_T_OUT, 0);
        assert_eq!(b.submit(&vq, &[(HDR, 16, 0), (BUF, 512, 0)]), (0xff, 0));
        assert_eq!(b.disk_sector(0), pattern(0));
        // Status outside guest memory: nothing written, used length 0.
        b.header(VIRTIO_BLK_T_FLUSH, 0);
        assert_eq!(
            b.submit(&vq, &[(HDR, 16, 0), (end + 4096, 1, DESC_F_WRITE)])
                .1,
            0
        );
        // After all that, a good request still works.
        assert_eq!(
            b.request(&vq, VIRTIO_BLK_T_IN, 7, &[(BUF, 512, DESC_F_WRITE)]),
            (VIRTIO_BLK_S_OK, 513)
        );
        assert_eq!(b.guest(BUF, 512), pattern(7));
        assert_eq!(b.d.status() & STATUS_NEEDS_RESET, 0);
    }

    #[test]
    fn descriptor_loop_is_bounded() {
        let (mut b, vq) = setup(BlockOptions::default());
        b.header(VIRTIO_BLK_T_OUT, 0);
        // 0 -> 1 -> 0 -> ... : virtio-queue stops after queue-size
        // descriptors; the chain ends on a device-readable descriptor.
        let raw = [
            RawDescriptor::from(Descriptor::new(HDR, 16, DESC_F_NEXT, 1)),
            RawDescriptor::from(Descriptor::new(BUF, 512, DESC_F_NEXT, 0)),
        ];
        vq.add_desc_chains(&raw, 0).unwrap();
        b.next = 2;
        b.d.notify(0);
        assert_eq!(used_entry(&b.d.mem, &vq, 0), (0, 0));
        b.used = 1;
        assert_eq!(b.disk_sector(0), pattern(0));
        assert_eq!(
            b.request(&vq, VIRTIO_BLK_T_IN, 1, &[(BUF, 512, DESC_F_WRITE)])
                .0,
            VIRTIO_BLK_S_OK
        );
    }

    #[test]
    fn read_only_disk_refuses_writes() {
        let (mut b, vq) = setup(BlockOptions {
            read_only: true,
            serial: String::new(),
            ..BlockOptions::default()
        });
        b.d.mem
            .write_slice(&[0xaa; 512], GuestAddress(BUF))
            .unwrap();
        assert_eq!(
            b.request(&vq, VIRTIO_BLK_T_OUT, 0, &[(BUF, 512, 0)]),
            (VIRTIO_BLK_S_IOERR, 1)
        );
        assert_eq!(b.disk_sector(0), pattern(0));
        // DISCARD was not offered, so it is unsupported.
        assert_eq!(
            b.request(&vq, VIRTIO_BLK_T_DISCARD, 0, &[(BUF, 16, 0)]).0,
            VIRTIO_BLK_S_UNSUPP
        );
        assert_eq!(
            b.request(&vq, VIRTIO_BLK_T_IN, 0, &[(BUF, 512, DESC_F_WRITE)])
                .0,
            VIRTIO_BLK_S_OK
        );
        assert_eq!(
            b.request(&vq, VIRTIO_BLK_T_FLUSH, 0, &[]).0,
            VIRTIO_BLK_S_OK
        );
    }

    #[test]
    fn any_descriptor_layout_is_one_byte_stream() {
        let mem = guest_memory();
        mem.write_obj(VIRTIO_BLK_T_OUT, GuestAddress(HDR)).unwrap();
        mem.write_obj(3u64, GuestAddress(HDR + 8)).unwrap();
        // Header split over two descriptors, then data, then status.
        let split = [
            Descriptor::new(HDR, 5, 0, 0),
            Descriptor::new(HDR + 5, 11, 0, 0),
            Descriptor::new(BUF, 512, 0, 0),
            Descriptor::new(STATUS, 1, DESC_F_WRITE, 0),
        ];
        let r = parse_request(&mem, split, &limits()).request.unwrap();
        assert_eq!((r.kind, r.sector, r.data_len), (RequestKind::Write, 3, 512));
        assert_eq!(r.data[0].addr, GuestAddress(BUF));
        // Header and data in one descriptor (the data follows the header).
        let joined = [
            Descriptor::new(HDR, 16 + 512, 0, 0),
            Descriptor::new(STATUS, 1, DESC_F_WRITE, 0),
        ];
        let r = parse_request(&mem, joined, &limits()).request.unwrap();
        assert_eq!(r.data_len, 512);
        assert_eq!(r.data[0].addr, GuestAddress(HDR + 16));
        // A read whose data and status share the last descriptor.
        mem.write_obj(VIRTIO_BLK_T_IN, GuestAddress(HDR)).unwrap();
        let shared = [
            Descriptor::new(HDR, 16, 0, 0),
            Descriptor::new(BUF, 513, DESC_F_WRITE, 0),
        ];
        let p = parse_request(&mem, shared, &limits());
        assert_eq!(p.status, Some(GuestAddress(BUF + 512)));
        let r = p.request.unwrap();
        assert_eq!((r.kind, r.data_len), (RequestKind::Read, 512));
        // Readable after writable, and write data on a read, are refused.
        let mixed = [
            Descriptor::new(HDR, 16, 0, 0),
            Descriptor::new(BUF, 512, DESC_F_WRITE, 0),
            Descriptor::new(BUF, 512, 0, 0),
            Descriptor::new(STATUS, 1, DESC_F_WRITE, 0),
        ];
        let p = parse_request(&mem, mixed, &limits());
        assert_eq!(p.request, Err(RequestError::WrongDirection));
        let extra = [
            Descriptor::new(HDR, 16 + 512, 0, 0),
            Descriptor::new(BUF, 513, DESC_F_WRITE, 0),
        ];
        assert_eq!(
            parse_request(&mem, extra, &limits()).request,
            Err(RequestError::WrongDirection)
        );
        // A header shorter than 16 bytes in all.
        let short = [
            Descriptor::new(HDR, 8, 0, 0),
            Descriptor::new(STATUS, 1, DESC_F_WRITE, 0),
        ];
        assert_eq!(
            parse_request(&mem, short, &limits()).request,
            Err(RequestError::BadHeader)
        );
    }

    #[test]
    fn parser_bounds_chain_length() {
        let mem = guest_memory();
        let header = Descriptor::new(HDR, 16, 0, 0);
        let data = Descriptor::new(BUF, 512, DESC_F_WRITE, 0);
        let status = Descriptor::new(STATUS, 1, DESC_F_WRITE, 0);
        mem.write_obj(VIRTIO_BLK_T_IN, GuestAddress(HDR)).unwrap();
        let chain = |n: usize| {
            std::iter::once(header)
                .chain(std::iter::repeat_n(data, n))
                .chain(std::iter::once(status))
        };
        let ok = parse_request(&mem, chain(SEG_MAX as usize), &limits());
        assert_eq!(ok.status, Some(GuestAddress(STATUS)));
        assert_eq!(ok.request.unwrap().data_len, u64::from(SEG_MAX) * 512);
        let long = parse_request(&mem, chain(SEG_MAX as usize + 1), &limits());
        assert_eq!(long.request, Err(RequestError::TooManyDescriptors));
        assert_eq!(long.status, Some(GuestAddress(STATUS)));
        // An endless chain is cut off: no status is trusted.
        let endless = parse_request(&mem, std::iter::repeat(data), &limits());
        assert_eq!(endless.status, None);
        assert_eq!(
            parse_request(&mem, std::iter::empty(), &limits()).status,
            None
        );
        // Status at the last byte of a longer descriptor, even at the top of
        // the address space.
        // Its other 9 bytes are read data, outside memory.
        let big = Descriptor::new(u64::MAX - 9, 10, DESC_F_WRITE, 0);
        let p = parse_request(&mem, [header, big], &limits());
        assert_eq!(p.status, Some(GuestAddress(u64::MAX)));
        assert_eq!(p.request, Err(RequestError::BadAddress));
        // Header outside memory.
        let far = Descriptor::new(u64::MAX - 7, 16, 0, 0);
        assert_eq!(
            parse_request(&mem, [far, status], &limits()).request,
            Err(RequestError::BadAddress)
        );
    }

    #[test]
    fn event_idx_suppresses_interrupts() {
        let file = disk();
        let mut d = Driver::new(Box::new(
            VirtioBlock::new(file.reopen().unwrap(), BlockOptions::default()).unwrap(),
        ));
        d.negotiate(feature(VIRTIO_F_VERSION_1) | feature(VIRTIO_RING_F_EVENT_IDX));
        let mem = d.mem.clone();
        let vq = MockSplitQueue::create(&mem, GuestAddress(QUEUE_BASE), QSIZE);
        d.setup_queue(0, &vq, QSIZE);
        d.enable_msix(2);
        d.driver_ok();
        // used_event = 5: no interrupt until the sixth used buffer.
        let used_event = vq.avail_addr().0 + 4 + 2 * u64::from(QSIZE);
        mem.write_obj(5u16, GuestAddress(used_event)).unwrap();
        mem.write_obj(VIRTIO_BLK_T_FLUSH, GuestAddress(HDR))
            .unwrap();
        add_chain(&vq, 0, &[(HDR, 16, 0), (STATUS, 1, DESC_F_WRITE)]);
        d.notify(0);
        settle(&mut d, &vq, 1);
        assert_eq!(used_idx(&mem, &vq), 1);
        assert!(d.sink.take().is_empty());
        // The device published avail_event so the driver knows when to kick.
        let avail_event = vq.used_addr().0 + 4 + 8 * u64::from(QSIZE);
        assert_eq!(mem.read_obj::<u16>(GuestAddress(avail_event)).unwrap(), 1);
    }

    // --- the asynchronous path, driven at the device's own interface ------

    /// Counts what the device asks of its transport.
    #[derive(Default)]
    struct CountingIrq {
        used: std::sync::atomic::AtomicUsize,
    }

    impl VirtioInterrupt for CountingIrq {
        fn signal_used_queue(&self, _queue_index: u16) -> io::Result<()> {
            self.used.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        }
        fn signal_config_change(&self) -> io::Result<()> {
            Ok(())
        }
        fn requeue(&self, _queue_index: u16) {}
    }

    // A queue of 256 laid out by hand: the mock's layout puts the used ring
    // inside the available ring past 128 entries.
    const RING_DESC: u64 = 0x1_0000;
    const RING_AVAIL: u64 = 0x1_2000;
    const RING_USED: u64 = 0x1_3000;
    const TABLES: u64 = 0x20_0000;
    const HEADERS: u64 = 0x21_0000;
    const STATUSES: u64 = 0x22_0000;
    const DATA: u64 = 0x30_0000;

    /// A device activated on one queue, without the PCI transport, so that
    /// a test sees its in-flight count; every request is one indirect
    /// descriptor (so all 256 heads can be in use at once).
    struct Direct {
        dev: VirtioBlock,
        mem: GuestMem,
        irq: Arc<CountingIrq>,
        _file: tempfile::NamedTempFile,
        avail: u16,
        seen: u16,
    }

    fn ring() -> Queue {
        let mut q = Queue::new(QSIZE).unwrap();
        q.set_size(QSIZE);
        let split = |a: u64| (Some(a as u32), Some((a >> 32) as u32));
        let (lo, hi) = split(RING_DESC);
        q.set_desc_table_address(lo, hi);
        let (lo, hi) = split(RING_AVAIL);
        q.set_avail_ring_address(lo, hi);
        let (lo, hi) = split(RING_USED);
        q.set_used_ring_address(lo, hi);
        q.set_ready(true);
        q
    }

    fn direct() -> Direct {
        let file = disk();
        let mut dev = VirtioBlock::new(file.reopen().unwrap(), BlockOptions::default()).unwrap();
        let mem = guest_memory();
        let irq = Arc::new(CountingIrq::default());
        let features = feature(VIRTIO_F_VERSION_1);
        dev.activate(mem.clone(), irq.clone(), vec![ring()], features)
            .unwrap();
        Direct {
            dev,
            mem,
            irq,
            _file: file,
            avail: 0,
            seen: 0,
        }
    }

    impl Direct {
        /// Makes a request of type `t` on `sector` (512 bytes of data for
        /// reads and writes) available under head `head`.
        fn publish(&mut self, head: u16, t: u32, sector: u64) {
            let h = u64::from(head);
            let (hdr, status, data, table) = (
                HEADERS + h * 16,
                STATUSES + h,
                DATA + h * 4096,
                TABLES + h * 48,
            );
            self.mem.write_obj(t, GuestAddress(hdr)).unwrap();
            self.mem.write_obj(sector, GuestAddress(hdr + 8)).unwrap();
            self.mem.write_obj(0xffu8, GuestAddress(status)).unwrap();
            let dir = if t == VIRTIO_BLK_T_OUT {
                0
            } else {
                DESC_F_WRITE
            };
            let descs: Vec<Descriptor> = if t == VIRTIO_BLK_T_FLUSH {
                vec![
                    Descriptor::new(hdr, 16, DESC_F_NEXT, 1),
                    Descriptor::new(status, 1, DESC_F_WRITE, 0),
                ]
            } else {
                let len = if t == VIRTIO_BLK_T_GET_ID { 20 } else { 512 };
                vec![
                    Descriptor::new(hdr, 16, DESC_F_NEXT, 1),
                    Descriptor::new(data, len, dir | DESC_F_NEXT, 2),
                    Descriptor::new(status, 1, DESC_F_WRITE, 0),
                ]
            };
            for (i, d) in descs.iter().enumerate() {
                self.mem
                    .write_obj(RawDescriptor::from(*d), GuestAddress(table + 16 * i as u64))
                    .unwrap();
            }
            let len = 16 * descs.len() as u32;
            let indirect = Descriptor::new(table, len, DESC_F_INDIRECT, 0);
            self.mem
                .write_obj(
                    RawDescriptor::from(indirect),
                    GuestAddress(RING_DESC + 16 * u64::from(head)),
                )
                .unwrap();
            let slot = RING_AVAIL + 4 + 2 * u64::from(self.avail % QSIZE);
            self.mem.write_obj(head, GuestAddress(slot)).unwrap();
            self.avail = self.avail.wrapping_add(1);
            self.mem
                .write_obj(self.avail, GuestAddress(RING_AVAIL + 2))
                .unwrap();
        }

        /// New used-ring entries since the last call: (head, length).
        fn take_used(&mut self) -> Vec<(u16, u32)> {
            let idx = self.used_idx();
            let mut out = Vec::new();
            while self.seen != idx {
                let at = RING_USED + 4 + 8 * u64::from(self.seen % QSIZE);
                let id: u32 = self.mem.read_obj(GuestAddress(at)).unwrap();
                let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).unwrap();
                out.push((id as u16, len));
                self.seen = self.seen.wrapping_add(1);
            }
            out
        }

        /// Hands completions to the device until `want` more entries are
        /// used (5 s at most); checks the in-flight bound on every step.
        fn settle(&mut self, want: usize) -> Vec<(u16, u32)> {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            let mut used = self.take_used();
            while used.len() < want && std::time::Instant::now() < deadline {
                let fd = self.dev.host_event_fds()[0];
                wait_readable(fd, 100);
                self.dev.host_event(0).unwrap();
                assert!(self.dev.uring.as_ref().unwrap().in_flight() <= BLOCK_QUEUE_SIZE.into());
                used.extend(self.take_used());
            }
            used
        }

        fn in_flight(&self) -> usize {
            self.dev.uring.as_ref().unwrap().in_flight()
        }

        fn used_idx(&self) -> u16 {
            self.mem.read_obj(GuestAddress(RING_USED + 2)).unwrap()
        }

        fn status(&self, head: u16) -> u8 {
            self.mem
                .read_obj(GuestAddress(STATUSES + u64::from(head)))
                .unwrap()
        }

        fn data(&self, head: u16) -> Vec<u8> {
            let mut b = vec![0u8; 512];
            self.mem
                .read_slice(&mut b, GuestAddress(DATA + u64::from(head) * 4096))
                .unwrap();
            b
        }
    }

    /// The asynchronous path needs io_uring; where the kernel refuses it the
    /// device serves everything synchronously (tested by the other tests).
    fn io_uring_or_skip(d: &Direct) -> bool {
        if !d.dev.asynchronous() {
            eprintln!("SKIP: io_uring unavailable on this kernel");
        }
        d.dev.asynchronous()
    }

    #[test]
    fn a_full_queue_in_flight_then_a_hostile_surplus_waits_for_room() {
        let mut d = direct();
        if !io_uring_or_skip(&d) {
            return;
        }
        for head in 0..QSIZE {
            d.publish(head, VIRTIO_BLK_T_IN, u64::from(head) * 3);
        }
        d.dev.queue_notify(0).unwrap();
        // Nothing completes before the I/O thread reaps: all 256 in flight.
        assert_eq!(d.in_flight(), usize::from(QSIZE));
        assert!(d.take_used().is_empty());
        // A hostile driver makes 44 heads available again while they are
        // in flight: the device does not take them (the in-flight bound).
        for head in 0..44 {
            d.publish(head, VIRTIO_BLK_T_IN, u64::from(head) * 3);
        }
        d.dev.queue_notify(0).unwrap();
        assert_eq!(d.in_flight(), usize::from(QSIZE));
        assert!(d.dev.active.as_ref().unwrap().stalled);
        // Completions make room, and the waiting requests run then.
        let used = d.settle(300);
        assert_eq!(used.len(), 300);
        let mut count = vec![0u32; usize::from(QSIZE)];
        for (head, len) in used {
            assert_eq!(len, 513, "head {head}");
            count[usize::from(head)] += 1;
        }
        for (head, n) in count.iter().enumerate() {
            assert_eq!(*n, if head < 44 { 2 } else { 1 }, "head {head}");
        }
        for head in 0..QSIZE {
            assert_eq!(d.status(head), VIRTIO_BLK_S_OK);
            assert_eq!(d.data(head), pattern(u64::from(head) * 3), "head {head}");
        }
        assert_eq!(d.in_flight(), 0);
        assert!(d.irq.used.load(std::sync::atomic::Ordering::SeqCst) > 0);
    }

    #[test]
    fn completions_arrive_out_of_order() {
        let mut d = direct();
        if !io_uring_or_skip(&d) {
            return;
        }
        // A read (to the ring) and then a GET_ID (done at once): the second
        // request is used first.
        d.publish(7, VIRTIO_BLK_T_IN, 11);
        d.publish(8, VIRTIO_BLK_T_GET_ID, 0);
        d.dev.queue_notify(0).unwrap();
        assert_eq!(d.take_used(), vec![(8, 21)]);
        assert_eq!(d.in_flight(), 1);
        assert_eq!(d.settle(1), vec![(7, 513)]);
        assert_eq!(d.data(7), pattern(11));
        // A write and a flush in flight together both complete.
        d.mem
            .write_slice(&[0x5a; 512], GuestAddress(DATA + 9 * 4096))
            .unwrap();
        d.publish(9, VIRTIO_BLK_T_OUT, 12);
        d.publish(10, VIRTIO_BLK_T_FLUSH, 0);
        d.dev.queue_notify(0).unwrap();
        let mut used = d.settle(2);
        used.sort();
        assert_eq!(used, vec![(9, 1), (10, 1)]);
        assert_eq!(
            (d.status(9), d.status(10)),
            (VIRTIO_BLK_S_OK, VIRTIO_BLK_S_OK)
        );
        d.publish(11, VIRTIO_BLK_T_IN, 12);
        d.dev.queue_notify(0).unwrap();
        assert_eq!(d.settle(1), vec![(11, 513)]);
        assert_eq!(d.data(11), vec![0x5a; 512]);
    }

    #[test]
    fn reset_with_requests_in_flight_drains_them() {
        let mut d = direct();
        if !io_uring_or_skip(&d) {
            return;
        }
        for head in 0..200 {
            d.publish(head, VIRTIO_BLK_T_IN, u64::from(head));
        }
        d.dev.queue_notify(0).unwrap();
        assert_eq!(d.in_flight(), 200);
        d.dev.reset();
        // The kernel is done with every buffer, and nothing was put on the
        // reset queue's used ring.
        assert_eq!(d.in_flight(), 0);
        assert_eq!(d.used_idx(), 0);
        // A completion event left over from before the reset is harmless.
        d.dev.host_event(0).unwrap();
        assert_eq!(d.used_idx(), 0);
        // Activated again (the driver starts over), the device works.
        let features = feature(VIRTIO_F_VERSION_1);
        let irq = d.irq.clone();
        d.dev
            .activate(d.mem.clone(), irq, vec![ring()], features)
            .unwrap();
        d.avail = 0;
        d.mem.write_obj(0u16, GuestAddress(RING_AVAIL + 2)).unwrap();
        d.mem.write_slice(&[0; 512], GuestAddress(DATA)).unwrap();
        d.publish(0, VIRTIO_BLK_T_IN, 42);
        d.dev.queue_notify(0).unwrap();
        assert_eq!(d.settle(1), vec![(0, 513)]);
        assert_eq!(d.data(0), pattern(42));
    }

    #[test]
    fn dropping_the_device_waits_for_in_flight_requests() {
        let mut d = direct();
        if !io_uring_or_skip(&d) {
            return;
        }
        for head in 0..64 {
            d.publish(head, VIRTIO_BLK_T_IN, u64::from(head));
        }
        d.dev.queue_notify(0).unwrap();
        assert_eq!(d.in_flight(), 64);
        let Direct { dev, mem, .. } = d;
        drop(dev);
        // The reads finished before the drop returned: the buffers hold the
        // data, and nobody writes them any more.
        let mut b = vec![0u8; 512];
        mem.read_slice(&mut b, GuestAddress(DATA + 63 * 4096))
            .unwrap();
        assert_eq!(b, pattern(63));
    }

    #[test]
    fn a_short_read_is_not_reported_as_done() {
        let mut d = direct();
        if !io_uring_or_skip(&d) {
            return;
        }
        // The image shrinks under the device (another process truncated
        // it): the kernel reads fewer bytes than asked, the request is
        // redone on the slow path, which fails it.
        d._file.as_file().set_len(1024 * 512).unwrap();
        d.publish(3, VIRTIO_BLK_T_IN, 1500);
        d.publish(4, VIRTIO_BLK_T_IN, 10);
        d.dev.queue_notify(0).unwrap();
        let mut used = d.settle(2);
        used.sort();
        assert_eq!(used, vec![(3, 1), (4, 513)]);
        assert_eq!(d.status(3), VIRTIO_BLK_S_IOERR);
        assert_eq!((d.status(4), d.data(4)), (VIRTIO_BLK_S_OK, pattern(10)));
    }

    /// The file-system magic of the directory `dir`.
    fn fs_type(dir: &std::path::Path) -> i64 {
        let path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: statfs fills the zeroed struct from a NUL-terminated path.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: `path` is NUL-terminated and `st` is a valid statfs.
        assert_eq!(unsafe { libc::statfs(path.as_ptr(), &mut st) }, 0);
        st.f_type as i64
    }

    #[test]
    fn cache_modes_and_the_tmpfs_fallback() {
        const TMPFS_MAGIC: i64 = 0x0102_1994;
        let on = |dir: &std::path::Path, cache: CacheMode| {
            let mut f = tempfile::NamedTempFile::new_in(dir).unwrap();
            f.write_all(&vec![7u8; 64 * 1024]).unwrap();
            let options = BlockOptions {
                cache,
                ..BlockOptions::default()
            };
            let dev = VirtioBlock::new(f.reopen().unwrap(), options).unwrap();
            (dev.cache_mode(), dev.asynchronous())
        };
        let tmp = std::env::temp_dir();
        assert_eq!(
            on(&tmp, CacheMode::Writeback).0,
            CacheMode::Writeback,
            "writeback is never upgraded"
        );
        let shm = std::path::Path::new("/dev/shm");
        if shm.is_dir() && fs_type(shm) == TMPFS_MAGIC {
            // tmpfs refuses O_DIRECT before Linux 6.6 (the disk falls back
            // and works), and takes it since.
            let refused = {
                let f = tempfile::NamedTempFile::new_in(shm).unwrap();
                OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_DIRECT)
                    .open(f.path())
                    .is_err()
            };
            let want = if refused {
                CacheMode::Writeback
            } else {
                CacheMode::None
            };
            assert_eq!(on(shm, CacheMode::None), (want, true));
        } else {
            eprintln!("SKIP: no tmpfs at /dev/shm to check the O_DIRECT fallback");
        }
        const EXT4_MAGIC: i64 = 0xef53;
        const XFS_MAGIC: i64 = 0x5846_5342;
        if [EXT4_MAGIC, XFS_MAGIC].contains(&fs_type(&tmp)) {
            assert_eq!(on(&tmp, CacheMode::None), (CacheMode::None, true));
        } else {
            eprintln!("SKIP: {} is not ext4 or xfs (O_DIRECT)", tmp.display());
        }
        assert_eq!("none".parse::<CacheMode>(), Ok(CacheMode::None));
        assert_eq!("writeback".parse::<CacheMode>(), Ok(CacheMode::Writeback));
        assert!("unsafe"
            .parse::<CacheMode>()
            .unwrap_err()
            .contains("none or writeback"));
    }

    /// A loop device over `file` with `sector`-byte logical blocks (a 4Kn
    /// disk), detached on drop; None where loop devices cannot be made
    /// (not root, no loop driver).
    struct LoopDev(String);

    impl LoopDev {
        fn new(file: &std::path::Path, sector: u32) -> Option<LoopDev> {
            let out = std::process::Command::new("losetup")
                .args(["--find", "--show", "--sector-size", &sector.to_string()])
                .arg(file)
                .output()
                .ok()?;
            let dev = String::from_utf8(out.stdout).ok()?.trim().to_string();
            (out.status.success() && !dev.is_empty()).then_some(LoopDev(dev))
        }
    }

    impl Drop for LoopDev {
        fn drop(&mut self) {
            let _ = std::process::Command::new("losetup")
                .args(["-d", &self.0])
                .status();
        }
    }

    #[test]
    fn a_disk_with_4k_logical_blocks_keeps_o_direct() {
        let file = disk();
        let Some(lo) = LoopDev::new(file.path(), 4096) else {
            eprintln!("SKIP: cannot make a loop device with 4 KiB sectors (root, losetup)");
            return;
        };
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&lo.0)
            .unwrap();
        let dev = VirtioBlock::new(f, BlockOptions::default()).unwrap();
        // 512-byte O_DIRECT reads fail on it; 4 KiB ones work.
        assert_eq!(
            (dev.cache_mode(), dev.asynchronous()),
            (CacheMode::None, true)
        );
        // Shown as 512-byte logical, 4 KiB physical blocks.
        assert_ne!(dev.features() & feature(VIRTIO_BLK_F_TOPOLOGY), 0);
        let mut cfg = [0u8; 8];
        dev.read_config(CFG_BLK_SIZE as u64, &mut cfg);
        assert_eq!(
            cfg,
            [0, 2, 0, 0, 3, 0, 8, 0],
            "blk_size 512, exp 3, min_io 8"
        );
        let (mut b, vq) = start(dev, file);
        // Aligned to 4 KiB: the fast path.
        let r = b.request(&vq, VIRTIO_BLK_T_IN, 16, &[(BUF, 4096, DESC_F_WRITE)]);
        assert_eq!(r, (VIRTIO_BLK_S_OK, 4097));
        let want: Vec<u8> = (16..24).flat_map(pattern).collect();
        assert_eq!(b.guest(BUF, 4096), want);
        // One 512-byte sector, aligned to no more: the buffered path.
        let r = b.request(
            &vq,
            VIRTIO_BLK_T_IN,
            19,
            &[(BUF + 0x2200, 512, DESC_F_WRITE)],
        );
        assert_eq!(r, (VIRTIO_BLK_S_OK, 513));
        assert_eq!(b.guest(BUF + 0x2200, 512), pattern(19));
        // A 512-byte write through the buffered path is seen by an aligned
        // read through O_DIRECT.
        let data = vec![0x5au8; 512];
        b.d.mem
            .write_slice(&data, GuestAddress(BUF + 0x4200))
            .unwrap();
        let r = b.request(&vq, VIRTIO_BLK_T_OUT, 21, &[(BUF + 0x4200, 512, 0)]);
        assert_eq!(r, (VIRTIO_BLK_S_OK, 1));
        let r = b.request(
            &vq,
            VIRTIO_BLK_T_IN,
            16,
            &[(BUF + 0x8000, 4096, DESC_F_WRITE)],
        );
        assert_eq!(r, (VIRTIO_BLK_S_OK, 4097));
        assert_eq!(b.guest(BUF + 0x8000 + 5 * 512, 512), data);
        assert_eq!(b.guest(BUF + 0x8000 + 4 * 512, 512), pattern(20));
    }

    #[test]
    fn buffers_not_aligned_for_o_direct_take_the_slow_path() {
        for cache in [CacheMode::None, CacheMode::Writeback] {
            let (mut b, vq) = setup(BlockOptions {
                cache,
                ..BlockOptions::default()
            });
            // A read into an odd address, split over two odd-sized buffers.
            let r = b.request(
                &vq,
                VIRTIO_BLK_T_IN,
                20,
                &[
                    (BUF + 1, 100, DESC_F_WRITE),
                    (BUF + 0x3001, 924, DESC_F_WRITE),
                ],
            );
            assert_eq!(r, (VIRTIO_BLK_S_OK, 1025));
            let mut got = b.guest(BUF + 1, 100);
            got.extend(b.guest(BUF + 0x3001, 924));
            let mut want = pattern(20);
            want.extend(pattern(21));
            assert_eq!(got, want, "cache={}", cache.name());
            // A write from an odd address, read back through the fast path.
            let data: Vec<u8> = (0..512).map(|i| (i * 5 + 3) as u8).collect();
            b.d.mem.write_slice(&data, GuestAddress(BUF + 3)).unwrap();
            let r = b.request(&vq, VIRTIO_BLK_T_OUT, 30, &[(BUF + 3, 512, 0)]);
            assert_eq!(r, (VIRTIO_BLK_S_OK, 1));
            let r = b.request(
                &vq,
                VIRTIO_BLK_T_IN,
                30,
                &[(BUF + 0x4000, 512, DESC_F_WRITE)],
            );
            assert_eq!(r, (VIRTIO_BLK_S_OK, 513));
            assert_eq!(b.guest(BUF + 0x4000, 512), data);
            assert_eq!(b.disk_sector(30), data);
            // Sector 0 is written through the backend (its magic guard).
            let r = b.request(&vq, VIRTIO_BLK_T_OUT, 0, &[(BUF + 0x4000, 512, 0)]);
            assert_eq!(r, (VIRTIO_BLK_S_OK, 1));
            assert_eq!(b.disk_sector(0), data);
        }
    }
}
