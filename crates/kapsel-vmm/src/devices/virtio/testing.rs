//! A test driver: drives a [`VirtioPciDevice`] through its BAR and
//! configuration space the way a guest driver does, with virtqueues built in
//! an in-process guest memory.

use super::transport::{VirtioPciDevice, VIRTIO_BAR};
use super::*;
use crate::devices::pci::msix::tests::RecordingSink;
use crate::devices::pci::PciDevice;
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

pub(crate) const MEM_SIZE: usize = 0x100_0000;
/// Where test queues start (not 0: virtio-queue treats a ring at 0 as unset).
pub(crate) const QUEUE_BASE: u64 = 0x1000;
/// Where test buffers live.
pub(crate) const DATA_BASE: u64 = 0x10_0000;
pub(crate) const MSI_ADDRESS: u64 = 0xfee0_0000;

pub(crate) const COMMON: u64 = 0x0000;
pub(crate) const ISR: u64 = 0x1000;
pub(crate) const DEVICE_CFG: u64 = 0x2000;
pub(crate) const NOTIFY: u64 = 0x3000;
pub(crate) const MSIX_TABLE: u64 = 0x4000;

pub(crate) const DESC_F_NEXT: u16 = 1;
pub(crate) const DESC_F_WRITE: u16 = 2;
pub(crate) const DESC_F_INDIRECT: u16 = 4;

pub(crate) fn guest_memory() -> GuestMem {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
}

pub(crate) struct Driver {
    pub dev: VirtioPciDevice,
    pub mem: GuestMem,
    pub sink: Arc<RecordingSink>,
}

impl Driver {
    pub(crate) fn new(device: Box<dyn VirtioDevice>) -> Self {
        let mem = guest_memory();
        let sink = Arc::new(RecordingSink::default());
        let dev = VirtioPciDevice::new(device, mem.clone(), sink.clone()).unwrap();
        Driver { dev, mem, sink }
    }

    pub(crate) fn read(&mut self, offset: u64, len: usize) -> u64 {
        let mut b = [0u8; 8];
        self.dev.read_bar(VIRTIO_BAR, offset, &mut b[..len]);
        u64::from_le_bytes(b)
    }

    pub(crate) fn write(&mut self, offset: u64, len: usize, v: u64) {
        self.dev
            .write_bar(VIRTIO_BAR, offset, &v.to_le_bytes()[..len]);
    }

    pub(crate) fn status(&mut self) -> u8 {
        self.read(COMMON + 0x14, 1) as u8
    }

    pub(crate) fn set_status(&mut self, s: u8) {
        self.write(COMMON + 0x14, 1, u64::from(s));
    }

    pub(crate) fn device_features(&mut self) -> u64 {
        self.write(COMMON, 4, 0);
        let lo = self.read(COMMON + 4, 4);
        self.write(COMMON, 4, 1);
        let hi = self.read(COMMON + 4, 4);
        hi << 32 | lo
    }

    pub(crate) fn set_driver_features(&mut self, f: u64) {
        self.write(COMMON + 8, 4, 0);
        self.write(COMMON + 0xc, 4, f & 0xffff_ffff);
        self.write(COMMON + 8, 4, 1);
        self.write(COMMON + 0xc, 4, f >> 32);
    }

    /// ACKNOWLEDGE, DRIVER, features, FEATURES_OK; returns the status read back.
    pub(crate) fn negotiate(&mut self, features: u64) -> u8 {
        self.set_status(0);
        self.set_status(STATUS_ACKNOWLEDGE);
        self.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        self.set_driver_features(features);
        self.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
        self.status()
    }

    /// Enables MSI-X with vector n -> data 0x20 + n, all unmasked.
    pub(crate) fn enable_msix(&mut self, vectors: u16) {
        for v in 0..u64::from(vectors) {
            let e = MSIX_TABLE + v * 16;
            self.write(e, 8, MSI_ADDRESS);
            self.write(e + 8, 4, 0x20 + v);
            self.write(e + 12, 4, 0);
        }
        // Find the MSI-X capability and set its enable bit.
        let mut ptr = [0u8; 1];
        self.dev.read_config(0x34, &mut ptr);
        let mut at = u64::from(ptr[0]);
        while at != 0 {
            let mut hdr = [0u8; 2];
            self.dev.read_config(at, &mut hdr);
            if hdr[0] == 0x11 {
                self.dev.write_config(at + 2, &0x8000u16.to_le_bytes());
                return;
            }
            at = u64::from(hdr[1]);
        }
        panic!("no MSI-X capability");
    }

    /// Sets up queue `index` as laid out by `vq`, with MSI-X vector `index + 1`.
    pub(crate) fn setup_queue(&mut self, index: u16, vq: &MockSplitQueue<GuestMem>, size: u16) {
        self.write(COMMON + 0x16, 2, u64::from(index));
        self.write(COMMON + 0x18, 2, u64::from(size));
        self.write(COMMON + 0x1a, 2, u64::from(index) + 1);
        self.write(COMMON + 0x20, 8, vq.desc_table_addr().0);
        self.write(COMMON + 0x28, 8, vq.avail_addr().0);
        self.write(COMMON + 0x30, 8, vq.used_addr().0);
        self.write(COMMON + 0x1c, 2, 1);
    }

    pub(crate) fn driver_ok(&mut self) {
        let s = self.status();
        self.write(COMMON + 0x10, 2, 0);
        self.set_status(s | STATUS_DRIVER_OK);
    }

    pub(crate) fn notify(&mut self, queue: u16) {
        self.write(NOTIFY + u64::from(queue) * 4, 2, u64::from(queue));
    }
}

/// Builds descriptors `(addr, len, flags)` chained in order starting at
/// table index `first`, and makes the chain available.
pub(crate) fn add_chain(vq: &MockSplitQueue<GuestMem>, first: u16, descs: &[(u64, u32, u16)]) {
    let raw: Vec<RawDescriptor> = descs
        .iter()
        .enumerate()
        .map(|(i, &(addr, len, flags))| {
            let last = i + 1 == descs.len();
            let flags = if last { flags } else { flags | DESC_F_NEXT };
            RawDescriptor::from(Descriptor::new(addr, len, flags, first + i as u16 + 1))
        })
        .collect();
    vq.add_desc_chains(&raw, first).unwrap();
}

/// The used ring entry `i`: (head id, length).
pub(crate) fn used_entry(mem: &GuestMem, vq: &MockSplitQueue<GuestMem>, i: u16) -> (u32, u32) {
    let at = vq.used_addr().0 + 4 + u64::from(i) * 8;
    (
        mem.read_obj::<u32>(GuestAddress(at)).unwrap(),
        mem.read_obj::<u32>(GuestAddress(at + 4)).unwrap(),
    )
}

/// The used ring's index.
pub(crate) fn used_idx(mem: &GuestMem, vq: &MockSplitQueue<GuestMem>) -> u16 {
    mem.read_obj::<u16>(GuestAddress(vq.used_addr().0 + 2))
        .unwrap()
}
