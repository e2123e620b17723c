//! Fuzzes the virtio-blk request parser with descriptor chains and guest
//! memory built from the input, then runs every accepted request against a
//! small raw disk: no input may panic, and what the parser accepts must
//! respect the disk's and guest memory's bounds.
//!
//! Input: `[flags] [repeat] [mem_len] [memory bytes...] [descriptors...]`.
//! flags bit 0-2: read-only / discard / write-zeroes negotiated; bit 3:
//! repeat the last descriptor `repeat * 300` times (long chains). Memory
//! bytes (`mem_len * 16`) are written at guest address 0, where headers
//! usually point. A descriptor is `[ctl] [addr: u16 or u64] [len: u16 or
//! u32]`; ctl bit 0 = device-writable, bit 1 = full 64-bit address (else
//! `u16 * 8`, reaching both memory regions and the hole between them),
//! bit 2 = 32-bit length.
#![no_main]

use kapsel_image::{BlockBackend, RawBackend};
use kapsel_vmm::devices::virtio::block::execute;
use kapsel_vmm::devices::virtio::block::request::{
    parse_request, DiskLimits, RequestKind, MAX_DISCARD_SECTORS, SECTOR_SIZE, SEG_MAX,
    VIRTIO_BLK_S_OK,
};
use libfuzzer_sys::fuzz_target;
use std::cell::RefCell;
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryMmap};

const CAPACITY_SECTORS: u64 = 128;
const DESC_F_WRITE: u16 = 2;

thread_local! {
    static MEM: GuestMemoryMmap<()> = GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), 0x1_0000),
        (GuestAddress(0x2_0000), 0x1_0000),
    ])
    .unwrap();
    static DISK: RefCell<RawBackend> = RefCell::new({
        let f = tempfile::tempfile().unwrap();
        f.set_len(CAPACITY_SECTORS * SECTOR_SIZE).unwrap();
        RawBackend::from_file(f, false).unwrap()
    });
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

        DISK.with(|disk| {
            let mut disk = disk.borrow_mut();
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
        });
    });
});
