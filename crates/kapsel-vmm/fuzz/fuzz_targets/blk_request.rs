//! Fuzzes the virtio-blk request parser with descriptor chains and guest
//! memory built from the input, then runs every accepted request against a
//! small raw disk: no input may panic, and what the parser accepts must
//! respect the disk's and guest memory's bounds.
//!
//! Accepted reads and writes also go through the device's io_uring fast
//! path first (over the same disk file, opened with O_DIRECT or through the
//! page cache): what it takes must complete (no error: its alignment and
//! bounds checks must give back what the kernel would refuse), and leave
//! guest memory (reads, when the buffers do not overlap) or the disk
//! (writes) exactly as the synchronous path does.
//!
//! Input: `[flags] [repeat] [mem_len] [memory bytes...] [descriptors...]`.
//! flags bit 0-2: read-only / discard / write-zeroes negotiated; bit 3:
//! repeat the last descriptor `repeat * 300` times (long chains); bit 4:
//! the fast path through the page cache instead of O_DIRECT. Memory
//! bytes (`mem_len * 16`) are written at guest address 0, where headers
//! usually point. A descriptor is `[ctl] [addr: u16 or u64] [len: u16 or
//! u32]`; ctl bit 0 = device-writable, bit 1 = full 64-bit address (else
//! `u16 * 8`, reaching both memory regions and the hole between them),
//! bit 2 = 32-bit length.
#![no_main]

use kapsel_image::{BlockBackend, RawBackend};
use kapsel_vmm::devices::virtio::block::fuzzing::{FastOutcome, FastPath};
use kapsel_vmm::devices::virtio::block::request::{
    parse_request, DiskLimits, Request, RequestKind, Segment, MAX_DISCARD_SECTORS, SECTOR_SIZE,
    SEG_MAX, VIRTIO_BLK_S_OK,
};
use kapsel_vmm::devices::virtio::block::{execute, CacheMode, FastFile};
use libfuzzer_sys::fuzz_target;
use std::cell::RefCell;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryMmap};

const CAPACITY_SECTORS: u64 = 128;
const DISK_BYTES: usize = (CAPACITY_SECTORS * SECTOR_SIZE) as usize;
const DESC_F_WRITE: u16 = 2;
const REGIONS: [(u64, usize); 2] = [(0, 0x1_0000), (0x2_0000, 0x1_0000)];

thread_local! {
    static MEM: GuestMemoryMmap<()> = GuestMemoryMmap::from_ranges(
        &REGIONS.map(|(a, l)| (GuestAddress(a), l)),
    )
    .unwrap();
    static DISK: RefCell<RawBackend> = RefCell::new({
        // In the system temporary directory (not a tmpfs here, so O_DIRECT
        // works); a pattern, so that reads show which bytes they got.
        let f = tempfile::tempfile().unwrap();
        let pattern: Vec<u8> = (0..DISK_BYTES).map(|i| (i * 7 + i / 512) as u8).collect();
        f.write_all_at(&pattern, 0).unwrap();
        RawBackend::from_file(f, false).unwrap()
    });
    /// The fast path over DISK's file: [O_DIRECT, page cache]. The first is
    /// the page cache too where O_DIRECT is refused.
    static FAST: RefCell<[FastPath; 2]> = DISK.with(|disk| {
        let disk = disk.borrow();
        let ring = |cache| {
            let fast = FastFile::open(&*disk, cache, false).expect("a raw file");
            eprintln!("fast path {cache:?}: O_DIRECT alignment {:?}", fast.direct_align());
            FastPath::new(&fast).expect("io_uring is needed for this target")
        };
        RefCell::new([ring(CacheMode::None), ring(CacheMode::Writeback)])
    });
}

fn memory_snapshot(mem: &GuestMemoryMmap<()>) -> Vec<u8> {
    let mut out = Vec::new();
    for (addr, len) in REGIONS {
        let start = out.len();
        out.resize(start + len, 0);
        mem.read_slice(&mut out[start..], GuestAddress(addr))
            .unwrap();
    }
    out
}

fn memory_restore(mem: &GuestMemoryMmap<()>, snapshot: &[u8]) {
    let mut at = 0;
    for (addr, len) in REGIONS {
        mem.write_slice(&snapshot[at..at + len], GuestAddress(addr))
            .unwrap();
        at += len;
    }
}

fn disk_snapshot(disk: &RawBackend) -> Vec<u8> {
    let mut out = vec![0; DISK_BYTES];
    disk.file().read_exact_at(&mut out, 0).unwrap();
    out
}

/// Whether two data buffers share a byte (the order in which the kernel
/// fills them is then its own).
fn overlapping(segments: &[Segment]) -> bool {
    let mut spans: Vec<(u64, u64)> = segments
        .iter()
        .map(|s| (s.addr.0, s.addr.0 + u64::from(s.len)))
        .collect();
    spans.sort_unstable();
    spans.windows(2).any(|w| w[1].0 < w[0].1)
}

/// Fast-path outcomes per ring (O_DIRECT, page cache): not taken, done,
/// retried; printed every 2^12 requests so that a run shows the fast path
/// was exercised.
static OUTCOMES: [[AtomicU64; 3]; 2] = [const { [const { AtomicU64::new(0) }; 3] }; 2];

fn count(ring: usize, outcome: FastOutcome) {
    let i = match outcome {
        FastOutcome::NotTaken => 0,
        FastOutcome::Done => 1,
        FastOutcome::Retry | FastOutcome::Failed(_) => 2,
    };
    OUTCOMES[ring][i].fetch_add(1, Ordering::Relaxed);
    let all: Vec<Vec<u64>> = OUTCOMES
        .iter()
        .map(|r| r.iter().map(|c| c.load(Ordering::Relaxed)).collect())
        .collect();
    if all.iter().flatten().sum::<u64>() % (1 << 12) == 0 {
        eprintln!(
            "fast path [not taken, done, retried]: O_DIRECT {:?}, page cache {:?}",
            all[0], all[1]
        );
    }
}

/// Runs `req` on the fast path (`ring` 0: O_DIRECT, 1: page cache), then
/// puts memory and disk back as they were; returns what the fast path did
/// and the guest memory and disk it left.
fn fast_path(
    ring: usize,
    req: &Request,
    mem: &GuestMemoryMmap<()>,
    disk: &RawBackend,
) -> Option<(FastOutcome, Vec<u8>, Vec<u8>)> {
    let (mem_before, disk_before) = (memory_snapshot(mem), disk_snapshot(disk));
    let outcome = FAST.with(|f| f.borrow_mut()[ring].run(mem, req)).unwrap();
    count(ring, outcome);
    if outcome == FastOutcome::NotTaken {
        assert_eq!(memory_snapshot(mem), mem_before);
        return None;
    }
    let after = (memory_snapshot(mem), disk_snapshot(disk));
    memory_restore(mem, &mem_before);
    disk.file().write_all_at(&disk_before, 0).unwrap();
    Some((outcome, after.0, after.1))
}

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }
}

fn descriptor(input: &mut Input) -> Option<Descriptor> {
    let [ctl] = input.take::<1>()?;
    let addr = if ctl & 2 != 0 {
        u64::from_le_bytes(input.take::<8>()?)
    } else {
        u64::from(u16::from_le_bytes(input.take::<2>()?)) * 8
    };
    let len = if ctl & 4 != 0 {
        u32::from_le_bytes(input.take::<4>()?)
    } else {
        u32::from(u16::from_le_bytes(input.take::<2>()?))
    };
    let flags = if ctl & 1 != 0 { DESC_F_WRITE } else { 0 };
    Some(Descriptor::new(addr, len, flags, 0))
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let Some([flags, repeat, mem_len]) = input.take::<3>() else {
        return;
    };
    let limits = DiskLimits {
        capacity_sectors: CAPACITY_SECTORS,
        read_only: flags & 1 != 0,
        discard: flags & 2 != 0,
        write_zeroes: flags & 4 != 0,
    };
    MEM.with(|mem| {
        let n = (usize::from(mem_len) * 16).min(input.0.len());
        mem.write_slice(&input.0[..n], GuestAddress(0)).unwrap();
        input.0 = &input.0[n..];
        let mut descs = Vec::new();
        while let Some(d) = descriptor(&mut input) {
            descs.push(d);
        }
        if flags & 8 != 0 {
            if let Some(&last) = descs.last() {
                descs.extend(std::iter::repeat_n(last, usize::from(repeat) * 300));
            }
        }

        let parsed = parse_request(mem, descs.iter().copied(), &limits);
        let Ok(req) = &parsed.request else { return };
        assert!(parsed.status.is_some(), "accepted without a status byte");
        assert!(req.data.len() <= SEG_MAX as usize);
        let mut total = 0u64;
        for seg in &req.data {
            assert!(mem.check_range(seg.addr, seg.len as usize, vm_memory::Permissions::Read));
            total += u64::from(seg.len);
        }
        assert_eq!(total, req.data_len);
        match req.kind {
            RequestKind::Read | RequestKind::Write => {
                assert!(req.data_len > 0 && req.data_len % SECTOR_SIZE == 0);
                assert!(req.sector + req.data_len / SECTOR_SIZE <= CAPACITY_SECTORS);
                assert!(!(limits.read_only && req.kind == RequestKind::Write));
            }
            RequestKind::Discard | RequestKind::WriteZeroes => {
                assert!(!limits.read_only);
                for r in &req.ranges {
                    assert!(r.num_sectors <= MAX_DISCARD_SECTORS);
                    assert!(r.sector + u64::from(r.num_sectors) <= CAPACITY_SECTORS);
                }
            }
            RequestKind::Flush | RequestKind::GetId => {}
        }

        // FAST is made from DISK: before DISK is borrowed mutably.
        FAST.with(|_| {});
        DISK.with(|disk| {
            let mut disk = disk.borrow_mut();
            let fast = matches!(req.kind, RequestKind::Read | RequestKind::Write)
                .then(|| fast_path(usize::from(flags & 16 != 0), req, mem, &disk))
                .flatten();
            let (status, written) = execute(
                req,
                mem,
                &mut *disk as &mut dyn BlockBackend,
                b"fuzz-serial-01234567",
            );
            // Everything was checked: the disk and memory accesses succeed.
            assert_eq!(status, VIRTIO_BLK_S_OK, "{req:?}");
            if req.kind == RequestKind::Read {
                assert_eq!(u64::from(written), req.data_len);
            }
            match fast {
                None | Some((FastOutcome::NotTaken, ..)) => {}
                // Redone on the synchronous path by the device, as above.
                Some((FastOutcome::Retry, ..)) => {}
                Some((FastOutcome::Failed(errno), ..)) => {
                    panic!("the fast path failed with errno {errno}: {req:?}")
                }
                Some((FastOutcome::Done, fast_mem, fast_disk)) => {
                    assert!(fast_disk == disk_snapshot(&disk), "disk differs: {req:?}");
                    if !overlapping(&req.data) {
                        assert!(fast_mem == memory_snapshot(mem), "memory differs: {req:?}");
                    }
                }
            }
        });
    });
});
