//! The modern virtio-pci transport (virtio 1.x, section 4.1): one 64-bit
//! memory BAR holding the common configuration, notification, ISR and
//! device configuration regions plus the MSI-X table and PBA.
//!
//! The driver is untrusted: a register written out of order (queue set-up
//! before FEATURES_OK, features after FEATURES_OK), a queue size that is not
//! a power of two, a misaligned ring address or a ring outside guest memory
//! is ignored or sets DEVICE_NEEDS_RESET; it never reaches the device.

use super::{
    feature, VirtioDevice, VirtioInterrupt, MAX_QUEUE_SIZE, STATUS_DRIVER, STATUS_DRIVER_OK,
    STATUS_FEATURES_OK, STATUS_NEEDS_RESET, TYPE_BLOCK, VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};
use crate::devices::pci::config::{
    BarKind, PciBar, PciConfiguration, PciHeader, CLASS_MASS_STORAGE, CLASS_OTHER,
    SUBCLASS_STORAGE_OTHER,
};
use crate::devices::pci::msix::{add_msix_capability, InterruptSink, MsixConfig};
use crate::devices::pci::{PciDevice, PciError};
use crate::memory::GuestMem;
use std::io;
use std::sync::atomic::{AtomicU16, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;

/// Red Hat / Qumranet, the virtio PCI vendor.
pub const VIRTIO_PCI_VENDOR_ID: u16 = 0x1af4;
/// Modern device IDs are this plus the virtio device type.
pub const VIRTIO_PCI_DEVICE_ID_BASE: u16 = 0x1040;
/// Subsystem ID QEMU uses; drivers do not look at it for modern devices.
const VIRTIO_PCI_SUBSYSTEM_ID: u16 = 0x1100;
/// Modern devices have revision 1 or later.
const VIRTIO_PCI_REVISION: u8 = 1;

/// "No MSI-X vector" in the vector registers.
pub const VIRTIO_MSI_NO_VECTOR: u16 = 0xffff;

/// Vendor-specific capability ID used by every virtio-pci capability.
const PCI_CAP_ID_VNDR: u8 = 0x09;
/// cfg_type of the common configuration capability.
const VIRTIO_PCI_CAP_COMMON_CFG: u8 = 1;
/// cfg_type of the notification capability.
const VIRTIO_PCI_CAP_NOTIFY_CFG: u8 = 2;
/// cfg_type of the ISR capability.
const VIRTIO_PCI_CAP_ISR_CFG: u8 = 3;
/// cfg_type of the device configuration capability.
const VIRTIO_PCI_CAP_DEVICE_CFG: u8 = 4;

/// The BAR slot of the transport's registers (a 64-bit BAR: slots 0 and 1).
pub const VIRTIO_BAR: usize = 0;
/// Size of that BAR.
pub const VIRTIO_BAR_SIZE: u64 = 0x8000;
/// Common configuration region.
const COMMON_CFG_OFFSET: u64 = 0x0000;
const COMMON_CFG_SIZE: u64 = 0x38;
/// ISR status region.
const ISR_CFG_OFFSET: u64 = 0x1000;
const ISR_CFG_SIZE: u64 = 1;
/// Device-specific configuration region.
const DEVICE_CFG_OFFSET: u64 = 0x2000;
const DEVICE_CFG_SIZE: u64 = 0x1000;
/// Notification region; queue n is notified at n * multiplier.
const NOTIFY_CFG_OFFSET: u64 = 0x3000;
const NOTIFY_CFG_SIZE: u64 = 0x1000;
/// Bytes between the notification addresses of consecutive queues.
pub const NOTIFY_OFF_MULTIPLIER: u32 = 4;
/// MSI-X table.
const MSIX_TABLE_OFFSET: u64 = 0x4000;
/// MSI-X pending-bit array.
const MSIX_PBA_OFFSET: u64 = 0x6000;
/// Most queues a device may have: one MSI-X vector each plus one for
/// configuration changes must fit between the table and the PBA.
pub const MAX_QUEUES: usize = ((MSIX_PBA_OFFSET - MSIX_TABLE_OFFSET) / 16 - 1) as usize;

/// ISR bit: a queue was used.
const ISR_QUEUE: u8 = 1;
/// ISR bit: the configuration changed.
const ISR_CONFIG: u8 = 2;

// Common configuration fields (struct virtio_pci_common_cfg).
const DEVICE_FEATURE_SELECT: u64 = 0x00;
const DEVICE_FEATURE: u64 = 0x04;
const DRIVER_FEATURE_SELECT: u64 = 0x08;
const DRIVER_FEATURE: u64 = 0x0c;
const CONFIG_MSIX_VECTOR: u64 = 0x10;
const NUM_QUEUES: u64 = 0x12;
const DEVICE_STATUS: u64 = 0x14;
const CONFIG_GENERATION: u64 = 0x15;
const QUEUE_SELECT: u64 = 0x16;
const QUEUE_SIZE: u64 = 0x18;
const QUEUE_MSIX_VECTOR: u64 = 0x1a;
const QUEUE_ENABLE: u64 = 0x1c;
const QUEUE_NOTIFY_OFF: u64 = 0x1e;
const QUEUE_DESC_LO: u64 = 0x20;
const QUEUE_DESC_HI: u64 = 0x24;
const QUEUE_AVAIL_LO: u64 = 0x28;
const QUEUE_AVAIL_HI: u64 = 0x2c;
const QUEUE_USED_LO: u64 = 0x30;
const QUEUE_USED_HI: u64 = 0x34;

/// Features the transport implements for every device (through
/// `virtio-queue`).
const TRANSPORT_FEATURES: u64 = feature(VIRTIO_F_VERSION_1)
    | feature(VIRTIO_RING_F_INDIRECT_DESC)
    | feature(VIRTIO_RING_F_EVENT_IDX);

/// Why a virtio-pci function could not be built.
#[derive(Debug, thiserror::Error)]
pub enum VirtioPciError {
    /// The device declares no queues, too many, or a size that is not a
    /// power of two up to 32768.
    #[error("virtio device type {0} declares invalid queues")]
    InvalidQueues(u32),
    /// Building the PCI configuration space failed.
    #[error(transparent)]
    Pci(#[from] PciError),
}

/// The interrupt state shared between the transport and its device.
struct PciInterrupt {
    msix: Mutex<MsixConfig>,
    isr: AtomicU8,
    config_vector: AtomicU16,
    queue_vectors: Vec<AtomicU16>,
    /// Where a device's leftover work is requeued (the queue doorbells).
    doorbells: Mutex<Option<Arc<dyn NotifyRegistrar>>>,
}

impl PciInterrupt {
    fn trigger(&self, vector: u16) -> io::Result<()> {
        if vector == VIRTIO_MSI_NO_VECTOR {
            return Ok(());
        }
        self.msix
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .trigger(vector)
    }
}

impl VirtioInterrupt for PciInterrupt {
    fn signal_used_queue(&self, queue_index: u16) -> io::Result<()> {
        self.isr.fetch_or(ISR_QUEUE, Ordering::SeqCst);
        let vector = self
            .queue_vectors
            .get(usize::from(queue_index))
            .map_or(VIRTIO_MSI_NO_VECTOR, |v| v.load(Ordering::Acquire));
        self.trigger(vector)
    }

    fn signal_config_change(&self) -> io::Result<()> {
        self.isr.fetch_or(ISR_CONFIG, Ordering::SeqCst);
        self.trigger(self.config_vector.load(Ordering::Acquire))
    }

    fn requeue(&self, queue_index: u16) {
        if let Some(doorbells) = &*self.doorbells.lock().unwrap_or_else(|e| e.into_inner()) {
            doorbells.kick(queue_index);
        }
    }
}

/// Where the VMM routes queue doorbells so that a notification does not
/// need a trapped MMIO write (KVM ioeventfd).
pub trait NotifyRegistrar: Send + Sync {
    /// From now on, a driver write to `addr` notifies queue `index`.
    fn attach(&self, index: u16, addr: u64) -> io::Result<()>;
    /// Stops routing every queue's doorbell.
    fn detach_all(&self);
    /// Rings queue `index`'s doorbell from the host side, so that its
    /// leftover work is done on the next turn.
    fn kick(&self, index: u16);
}

/// Driver-side set-up of one queue.
struct QueueSlot {
    queue: Queue,
    /// The driver wrote an invalid size or a misaligned address: enabling
    /// this queue sets NEEDS_RESET.
    invalid: bool,
}

/// A virtio device as a PCI function.
pub struct VirtioPciDevice {
    config: PciConfiguration,
    msix_cap: usize,
    interrupt: Arc<PciInterrupt>,
    device: Box<dyn VirtioDevice>,
    mem: GuestMem,
    queues: Vec<QueueSlot>,
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    status: u8,
    config_generation: u8,
    queue_select: u16,
    registrar: Option<Arc<dyn NotifyRegistrar>>,
}

fn le_value(data: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = data.len().min(8);
    b[..n].copy_from_slice(&data[..n]);
    u64::from_le_bytes(b)
}

fn virtio_cap(cfg_type: u8, offset: u64, length: u64, extra: &[u8]) -> Vec<u8> {
    // struct virtio_pci_cap after cap_vndr and cap_next.
    let mut body = vec![
        (16 + extra.len()) as u8,
        cfg_type,
        VIRTIO_BAR as u8,
        0,
        0,
        0,
    ];
    body.extend_from_slice(&(offset as u32).to_le_bytes());
    body.extend_from_slice(&(length as u32).to_le_bytes());
    body.extend_from_slice(extra);
    body
}

impl VirtioPciDevice {
    /// Wraps `device`. `mem` is the guest memory its queues live in;
    /// `sink` delivers its MSI-X messages.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMem,
        sink: Arc<dyn InterruptSink>,
    ) -> Result<Self, VirtioPciError> {
        let device_type = device.device_type();
        let sizes = device.queue_max_sizes();
        if sizes.is_empty()
            || sizes.len() > MAX_QUEUES
            || sizes
                .iter()
                .any(|&s| !s.is_power_of_two() || s > MAX_QUEUE_SIZE)
        {
            return Err(VirtioPciError::InvalidQueues(device_type));
        }
        let queues = sizes
            .iter()
            .map(|&s| {
                Queue::new(s)
                    .map(|queue| QueueSlot {
                        queue,
                        invalid: false,
                    })
                    .map_err(|_| VirtioPciError::InvalidQueues(device_type))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let num_vectors = queues.len() as u16 + 1;
        let (class, subclass) = match device_type {
            TYPE_BLOCK => (CLASS_MASS_STORAGE, SUBCLASS_STORAGE_OTHER),
            _ => (CLASS_OTHER, 0),
        };
        let mut config = PciConfiguration::new(PciHeader {
            vendor_id: VIRTIO_PCI_VENDOR_ID,
            device_id: VIRTIO_PCI_DEVICE_ID_BASE.wrapping_add(device_type as u16),
            revision_id: VIRTIO_PCI_REVISION,
            class,
            subclass,
            prog_if: 0,
            subsystem_vendor_id: VIRTIO_PCI_VENDOR_ID,
            subsystem_id: VIRTIO_PCI_SUBSYSTEM_ID,
        });
        config.add_bar(PciBar {
            index: VIRTIO_BAR,
            size: VIRTIO_BAR_SIZE,
            kind: BarKind::Memory64,
            prefetchable: true,
        })?;
        let msix_cap = add_msix_capability(
            &mut config,
            num_vectors,
            VIRTIO_BAR as u8,
            MSIX_TABLE_OFFSET as u32,
            MSIX_PBA_OFFSET as u32,
        )?;
        for (cfg_type, offset, len, extra) in [
            (
                VIRTIO_PCI_CAP_COMMON_CFG,
                COMMON_CFG_OFFSET,
                COMMON_CFG_SIZE,
                &[][..],
            ),
            (
                VIRTIO_PCI_CAP_ISR_CFG,
                ISR_CFG_OFFSET,
                ISR_CFG_SIZE,
                &[][..],
            ),
            (
                VIRTIO_PCI_CAP_DEVICE_CFG,
                DEVICE_CFG_OFFSET,
                DEVICE_CFG_SIZE,
                &[][..],
            ),
            (
                VIRTIO_PCI_CAP_NOTIFY_CFG,
                NOTIFY_CFG_OFFSET,
                NOTIFY_CFG_SIZE,
                &NOTIFY_OFF_MULTIPLIER.to_le_bytes()[..],
            ),
        ] {
            config.add_capability(
                PCI_CAP_ID_VNDR,
                &virtio_cap(cfg_type, offset, len, extra),
                &[],
            )?;
        }
        let interrupt = Arc::new(PciInterrupt {
            msix: Mutex::new(MsixConfig::new(num_vectors, sink)),
            isr: AtomicU8::new(0),
            config_vector: AtomicU16::new(VIRTIO_MSI_NO_VECTOR),
            queue_vectors: (0..queues.len())
                .map(|_| AtomicU16::new(VIRTIO_MSI_NO_VECTOR))
                .collect(),
            doorbells: Mutex::new(None),
        });
        Ok(VirtioPciDevice {
            config,
            msix_cap,
            interrupt,
            device,
            mem,
            queues,
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            status: 0,
            config_generation: 0,
            queue_select: 0,
            registrar: None,
        })
    }

    /// Routes queue doorbells through `registrar` once the driver is ready.
    pub fn set_notify_registrar(&mut self, registrar: Arc<dyn NotifyRegistrar>) {
        *self
            .interrupt
            .doorbells
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(registrar.clone());
        self.registrar = Some(registrar);
    }

    /// Number of virtqueues the device has.
    pub fn queue_count(&self) -> usize {
        self.queues.len()
    }

    /// Guest-physical address of queue `index`'s doorbell, while BAR0 is set.
    fn doorbell(&self, index: u16) -> Option<u64> {
        self.config
            .bar_address(0)?
            .checked_add(NOTIFY_CFG_OFFSET + u64::from(index) * u64::from(NOTIFY_OFF_MULTIPLIER))
    }

    fn attach_doorbells(&self) {
        let Some(registrar) = &self.registrar else {
            return;
        };
        for (i, slot) in self.queues.iter().enumerate() {
            let index = i as u16;
            if let (true, Some(addr)) = (slot.queue.ready(), self.doorbell(index)) {
                if let Err(e) = registrar.attach(index, addr) {
                    // Trapped MMIO writes still reach notify(): slower, correct.
                    tracing::warn!("queue {index}: no ioeventfd at {addr:#x}: {e}");
                }
            }
        }
    }

    /// The device status register.
    pub fn status(&self) -> u8 {
        self.status
    }

    fn device_features(&self) -> u64 {
        self.device.features() | TRANSPORT_FEATURES
    }

    fn num_vectors(&self) -> u16 {
        self.queues.len() as u16 + 1
    }

    fn reset(&mut self) {
        if let Some(registrar) = &self.registrar {
            registrar.detach_all();
        }
        self.device.reset();
        for q in &mut self.queues {
            q.queue.reset();
            q.invalid = false;
        }
        self.device_feature_select = 0;
        self.driver_feature_select = 0;
        self.driver_features = 0;
        self.status = 0;
        self.queue_select = 0;
        self.interrupt.isr.store(0, Ordering::SeqCst);
        self.interrupt
            .config_vector
            .store(VIRTIO_MSI_NO_VECTOR, Ordering::Release);
        for v in &self.interrupt.queue_vectors {
            v.store(VIRTIO_MSI_NO_VECTOR, Ordering::Release);
        }
    }

    /// Marks the device broken and tells the driver (virtio 2.1.2).
    fn needs_reset(&mut self, why: &str) {
        tracing::warn!(
            device_type = self.device.device_type(),
            "virtio device needs reset: {why}"
        );
        self.status |= STATUS_NEEDS_RESET;
        if self.status & STATUS_DRIVER_OK != 0 {
            if let Err(e) = self.interrupt.signal_config_change() {
                tracing::warn!("cannot signal NEEDS_RESET: {e}");
            }
        }
    }

    fn write_status(&mut self, v: u8) {
        if v == 0 {
            self.reset();
            return;
        }
        let old = self.status;
        // Only a reset clears bits; NEEDS_RESET is the device's to set.
        let mut new = old | (v & !STATUS_NEEDS_RESET);
        let added = new & !old;
        if added & STATUS_FEATURES_OK != 0 {
            let ok = new & STATUS_DRIVER != 0
                && self.driver_features & !self.device_features() == 0
                && self.driver_features & feature(VIRTIO_F_VERSION_1) != 0;
            if !ok {
                // The driver re-reads status and sees FEATURES_OK unset.
                new &= !STATUS_FEATURES_OK;
            }
        }
        if added & STATUS_DRIVER_OK != 0 && new & STATUS_FEATURES_OK == 0 {
            new &= !STATUS_DRIVER_OK;
        }
        self.status = new;
        if new & !old & STATUS_DRIVER_OK != 0 && old & STATUS_NEEDS_RESET == 0 {
            self.activate();
        }
    }

    fn activate(&mut self) {
        let event_idx = self.driver_features & feature(VIRTIO_RING_F_EVENT_IDX) != 0;
        let mut queues = Vec::with_capacity(self.queues.len());
        let mut failed = None;
        for (i, slot) in self.queues.iter_mut().enumerate() {
            slot.queue.set_event_idx(event_idx);
            match Queue::try_from(slot.queue.state()) {
                Ok(q) => queues.push(q),
                Err(e) => {
                    failed = Some(format!("queue {i}: {e}"));
                    break;
                }
            }
        }
        if let Some(why) = failed {
            self.needs_reset(&why);
            return;
        }
        let interrupt: Arc<dyn VirtioInterrupt> = self.interrupt.clone();
        if let Err(e) =
            self.device
                .activate(self.mem.clone(), interrupt, queues, self.driver_features)
        {
            self.needs_reset(&format!("activation failed: {e}"));
            return;
        }
        self.attach_doorbells();
    }

    fn selected_queue(&mut self) -> Option<&mut QueueSlot> {
        self.queues.get_mut(usize::from(self.queue_select))
    }

    /// Whether the driver may change queue set-up now: after FEATURES_OK,
    /// before DRIVER_OK (virtio 3.1.1), and only for a queue not enabled yet.
    fn queue_writable(&self) -> bool {
        self.status & STATUS_FEATURES_OK != 0
            && self.status & (STATUS_DRIVER_OK | STATUS_NEEDS_RESET) == 0
            && self
                .queues
                .get(usize::from(self.queue_select))
                .is_some_and(|q| !q.queue.ready())
    }

    fn read_common(&self, offset: u64, len: usize) -> Option<u64> {
        let q = self.queues.get(usize::from(self.queue_select));
        let qv = self
            .interrupt
            .queue_vectors
            .get(usize::from(self.queue_select));
        let v = match (offset, len) {
            (DEVICE_FEATURE_SELECT, 4) => u64::from(self.device_feature_select),
            (DEVICE_FEATURE, 4) => match self.device_feature_select {
                0 => self.device_features() & 0xffff_ffff,
                1 => self.device_features() >> 32,
                _ => 0,
            },
            (DRIVER_FEATURE_SELECT, 4) => u64::from(self.driver_feature_select),
            (DRIVER_FEATURE, 4) => match self.driver_feature_select {
                0 => self.driver_features & 0xffff_ffff,
                1 => self.driver_features >> 32,
                _ => 0,
            },
            (CONFIG_MSIX_VECTOR, 2) => {
                u64::from(self.interrupt.config_vector.load(Ordering::Acquire))
            }
            (NUM_QUEUES, 2) => self.queues.len() as u64,
            (DEVICE_STATUS, 1) => u64::from(self.status),
            (CONFIG_GENERATION, 1) => u64::from(self.config_generation),
            (QUEUE_SELECT, 2) => u64::from(self.queue_select),
            // An absent queue reads as size 0: "not available".
            (QUEUE_SIZE, 2) => q.map_or(0, |q| u64::from(q.queue.size())),
            (QUEUE_MSIX_VECTOR, 2) => qv.map_or(u64::from(VIRTIO_MSI_NO_VECTOR), |v| {
                u64::from(v.load(Ordering::Acquire))
            }),
            (QUEUE_ENABLE, 2) => q.map_or(0, |q| u64::from(q.queue.ready())),
            (QUEUE_NOTIFY_OFF, 2) => q.map_or(0, |_| u64::from(self.queue_select)),
            (QUEUE_DESC_LO, 4) => q.map_or(0, |q| q.queue.desc_table() & 0xffff_ffff),
            (QUEUE_DESC_HI, 4) => q.map_or(0, |q| q.queue.desc_table() >> 32),
            (QUEUE_AVAIL_LO, 4) => q.map_or(0, |q| q.queue.avail_ring() & 0xffff_ffff),
            (QUEUE_AVAIL_HI, 4) => q.map_or(0, |q| q.queue.avail_ring() >> 32),
            (QUEUE_USED_LO, 4) => q.map_or(0, |q| q.queue.used_ring() & 0xffff_ffff),
            (QUEUE_USED_HI, 4) => q.map_or(0, |q| q.queue.used_ring() >> 32),
            (QUEUE_DESC_LO, 8) => q.map_or(0, |q| q.queue.desc_table()),
            (QUEUE_AVAIL_LO, 8) => q.map_or(0, |q| q.queue.avail_ring()),
            (QUEUE_USED_LO, 8) => q.map_or(0, |q| q.queue.used_ring()),
            _ => return None,
        };
        Some(v)
    }

    fn set_queue_address(&mut self, offset: u64, len: usize, value: u64) {
        let Some(slot) = self.selected_queue() else {
            return;
        };
        let (base, current) = match offset & !0x7 {
            QUEUE_DESC_LO => (QUEUE_DESC_LO, slot.queue.desc_table()),
            QUEUE_AVAIL_LO => (QUEUE_AVAIL_LO, slot.queue.avail_ring()),
            _ => (QUEUE_USED_LO, slot.queue.used_ring()),
        };
        let addr = match (offset - base, len) {
            (0, 8) => value,
            (0, _) => current & !0xffff_ffff | value,
            _ => current & 0xffff_ffff | value << 32,
        };
        let result = match base {
            QUEUE_DESC_LO => slot.queue.try_set_desc_table_address(GuestAddress(addr)),
            QUEUE_AVAIL_LO => slot.queue.try_set_avail_ring_address(GuestAddress(addr)),
            _ => slot.queue.try_set_used_ring_address(GuestAddress(addr)),
        };
        if result.is_err() {
            slot.invalid = true;
        }
    }

    fn enable_queue(&mut self) {
        let mem = self.mem.clone();
        let index = self.queue_select;
        let Some(slot) = self.selected_queue() else {
            return;
        };
        slot.queue.set_ready(true);
        if slot.invalid || !slot.queue.is_valid(&mem) {
            slot.queue.set_ready(false);
            self.needs_reset(&format!(
                "queue {index} set up outside guest memory or misaligned"
            ));
        }
    }

    fn write_common(&mut self, offset: u64, data: &[u8]) {
        let len = data.len();
        let value = le_value(data);
        match (offset, len) {
            (DEVICE_FEATURE_SELECT, 4) => self.device_feature_select = value as u32,
            (DRIVER_FEATURE_SELECT, 4) => self.driver_feature_select = value as u32,
            (DRIVER_FEATURE, 4) => {
                if self.status & STATUS_DRIVER == 0 || self.status & STATUS_FEATURES_OK != 0 {
                    return;
                }
                match self.driver_feature_select {
                    0 => self.driver_features = self.driver_features & !0xffff_ffff | value,
                    1 => self.driver_features = self.driver_features & 0xffff_ffff | value << 32,
                    _ => {}
                }
            }
            (CONFIG_MSIX_VECTOR, 2) => {
                let v = self.checked_vector(value as u16);
                self.interrupt.config_vector.store(v, Ordering::Release);
            }
            (DEVICE_STATUS, 1) => self.write_status(value as u8),
            (QUEUE_SELECT, 2) => self.queue_select = value as u16,
            (QUEUE_MSIX_VECTOR, 2) => {
                let v = self.checked_vector(value as u16);
                if let Some(qv) = self
                    .interrupt
                    .queue_vectors
                    .get(usize::from(self.queue_select))
                {
                    qv.store(v, Ordering::Release);
                }
            }
            (QUEUE_SIZE, 2) if self.queue_writable() => {
                if let Some(slot) = self.selected_queue() {
                    if slot.queue.try_set_size(value as u16).is_err() {
                        slot.invalid = true;
                    }
                }
            }
            // Writing 0 is forbidden to the driver (virtio 4.1.4.3.2).
            (QUEUE_ENABLE, 2) if value == 1 && self.queue_writable() => self.enable_queue(),
            (
                QUEUE_DESC_LO | QUEUE_DESC_HI | QUEUE_AVAIL_LO | QUEUE_AVAIL_HI | QUEUE_USED_LO
                | QUEUE_USED_HI,
                4,
            )
            | (QUEUE_DESC_LO | QUEUE_AVAIL_LO | QUEUE_USED_LO, 8)
                if self.queue_writable() =>
            {
                self.set_queue_address(offset, len, value)
            }
            _ => {}
        }
    }

    /// A vector the device can map, or NO_VECTOR (which the driver reads
    /// back to learn that the mapping failed).
    fn checked_vector(&self, v: u16) -> u16 {
        if v < self.num_vectors() {
            v
        } else {
            VIRTIO_MSI_NO_VECTOR
        }
    }

    fn notify(&mut self, offset: u64) {
        if let Ok(index) = u16::try_from(offset / u64::from(NOTIFY_OFF_MULTIPLIER)) {
            self.notify_queue(index);
        }
    }

    /// Host descriptors the device wants the I/O thread to poll
    /// (edge-triggered; see [`VirtioDevice::host_event_fds`]).
    pub fn host_event_fds(&self) -> Vec<std::os::fd::RawFd> {
        self.device.host_event_fds()
    }

    /// Host descriptor `index` of [`Self::host_event_fds`] is ready.
    pub fn handle_host_event(&mut self, index: usize) {
        if self.status & STATUS_DRIVER_OK == 0 || self.status & STATUS_NEEDS_RESET != 0 {
            return;
        }
        if let Err(e) = self.device.host_event(index) {
            self.needs_reset(&format!("host event {index}: {e}"));
        }
    }

    /// The driver notified queue `index` (through a trapped doorbell write
    /// or an ioeventfd): process what it made available.
    pub fn notify_queue(&mut self, index: u16) {
        if self.status & STATUS_DRIVER_OK == 0 || self.status & STATUS_NEEDS_RESET != 0 {
            return;
        }
        let ready = self
            .queues
            .get(usize::from(index))
            .is_some_and(|q| q.queue.ready());
        if !ready {
            return;
        }
        if let Err(e) = self.device.queue_notify(index) {
            self.needs_reset(&format!("queue {index}: {e}"));
        }
    }
}

/// Whether `[offset, offset + len)` lies inside the region at `start`.
fn in_region(offset: u64, len: usize, start: u64, size: u64) -> Option<u64> {
    let rel = offset.checked_sub(start)?;
    (rel.checked_add(len as u64)? <= size).then_some(rel)
}

impl PciDevice for VirtioPciDevice {
    fn config(&self) -> &PciConfiguration {
        &self.config
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let decoded_before = (self.config.bar_address(0), self.config.memory_enabled());
        self.config.write(offset, data);
        let decoded = (self.config.bar_address(0), self.config.memory_enabled());
        // The guest (firmware, then the OS) may move BAR0 or turn decoding
        // off while the queues run: the doorbells follow the BAR.
        if decoded != decoded_before && self.status & STATUS_DRIVER_OK != 0 {
            if let Some(registrar) = &self.registrar {
                registrar.detach_all();
            }
            if decoded.1 {
                self.attach_doorbells();
            }
        }
        let cap = self.msix_cap as u64;
        if offset < cap + 4 && offset.saturating_add(data.len() as u64) > cap + 2 {
            let mut msix = self
                .interrupt
                .msix
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if let Err(e) = msix.update_from_config(&self.config, self.msix_cap) {
                tracing::warn!("cannot deliver pending MSI-X vectors: {e}");
            }
        }
    }

    fn read_bar(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if bar != VIRTIO_BAR {
            data.fill(0xff);
            return;
        }
        let len = data.len();
        if let Some(rel) = in_region(offset, len, COMMON_CFG_OFFSET, COMMON_CFG_SIZE) {
            if let Some(v) = self.read_common(rel, len) {
                data.copy_from_slice(&v.to_le_bytes()[..len]);
            }
        } else if in_region(offset, len, ISR_CFG_OFFSET, ISR_CFG_SIZE).is_some() {
            // Reading the ISR acknowledges it.
            data[0] = self.interrupt.isr.swap(0, Ordering::SeqCst);
        } else if let Some(rel) = in_region(offset, len, DEVICE_CFG_OFFSET, DEVICE_CFG_SIZE) {
            self.device.read_config(rel, data);
        } else if in_region(offset, len, NOTIFY_CFG_OFFSET, NOTIFY_CFG_SIZE).is_some() {
            // Notification registers are write-only; read as zero.
        } else if let Some(rel) = in_region(
            offset,
            len,
            MSIX_TABLE_OFFSET,
            MSIX_PBA_OFFSET - MSIX_TABLE_OFFSET,
        ) {
            let msix = self
                .interrupt
                .msix
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            msix.read_table(rel, data);
        } else if let Some(rel) = in_region(
            offset,
            len,
            MSIX_PBA_OFFSET,
            VIRTIO_BAR_SIZE - MSIX_PBA_OFFSET,
        ) {
            let msix = self
                .interrupt
                .msix
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            msix.read_pba(rel, data);
        } else {
            data.fill(0xff);
        }
    }

    fn write_bar(&mut self, bar: usize, offset: u64, data: &[u8]) {
        if bar != VIRTIO_BAR {
            return;
        }
        let len = data.len();
        if let Some(rel) = in_region(offset, len, COMMON_CFG_OFFSET, COMMON_CFG_SIZE) {
            self.write_common(rel, data);
        } else if let Some(rel) = in_region(offset, len, DEVICE_CFG_OFFSET, DEVICE_CFG_SIZE) {
            self.device.write_config(rel, data);
        } else if let Some(rel) = in_region(offset, len, NOTIFY_CFG_OFFSET, NOTIFY_CFG_SIZE) {
            self.notify(rel);
        } else if let Some(rel) = in_region(
            offset,
            len,
            MSIX_TABLE_OFFSET,
            MSIX_PBA_OFFSET - MSIX_TABLE_OFFSET,
        ) {
            let mut msix = self
                .interrupt
                .msix
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if let Err(e) = msix.write_table(rel, data) {
                tracing::warn!("cannot deliver pending MSI-X vector: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::testing::*;
    use crate::devices::virtio::{VirtioRng, STATUS_ACKNOWLEDGE};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::Bytes;

    const GOOD: u64 = feature(VIRTIO_F_VERSION_1) | feature(VIRTIO_RING_F_EVENT_IDX);
    const ALL: u8 = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;

    fn rng() -> Driver {
        Driver::new(Box::new(VirtioRng::new()))
    }

    #[test]
    fn pci_identity_and_virtio_capabilities() {
        let mut d = rng();
        let c = d.dev.config().clone();
        assert_eq!(c.read_u32(0), 0x1044_1af4);
        assert_eq!(c.read_u32(8) & 0xff, 1);
        assert_eq!(c.read_u16(0x2c), VIRTIO_PCI_VENDOR_ID);
        // Walk the capability list: MSI-X and the four virtio structures.
        let mut at = (c.read_u32(0x34) & 0xff) as usize;
        let mut found = Vec::new();
        while at != 0 {
            let id = c.read_u16(at) as u8;
            if id == PCI_CAP_ID_VNDR {
                let cfg_type = (c.read_u32(at) >> 24) as u8;
                let bar = c.read_u32(at + 4) as u8;
                let offset = c.read_u32(at + 8);
                assert_eq!(bar, 0);
                if cfg_type == VIRTIO_PCI_CAP_NOTIFY_CFG {
                    assert_eq!(c.read_u32(at + 16), NOTIFY_OFF_MULTIPLIER);
                    assert_eq!(c.read_u16(at + 2) & 0xff, 20);
                }
                found.push((cfg_type, offset));
            } else {
                found.push((id, 0));
            }
            at = usize::from(c.read_u16(at) >> 8);
        }
        assert_eq!(
            found,
            vec![(0x11, 0), (1, 0), (3, 0x1000), (4, 0x2000), (2, 0x3000)]
        );
        // BAR 0 is 64-bit and answers the size probe with 32 KiB.
        d.dev.write_config(0x10, &u32::MAX.to_le_bytes());
        d.dev.write_config(0x14, &u32::MAX.to_le_bytes());
        let lo = u64::from(d.dev.config().read_u32(0x10));
        let hi = u64::from(d.dev.config().read_u32(0x14));
        assert_eq!(lo & 0xf, 0xc);
        assert_eq!(!(hi << 32 | (lo & !0xf)) + 1, VIRTIO_BAR_SIZE);
    }

    #[test]
    fn feature_negotiation() {
        let mut d = rng();
        let f = d.device_features();
        assert_eq!(f & TRANSPORT_FEATURES, TRANSPORT_FEATURES);
        // Without VERSION_1 (a legacy driver) FEATURES_OK does not stick.
        assert_eq!(d.negotiate(0), STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        // Nor with a feature the device did not offer.
        assert_eq!(
            d.negotiate(GOOD | 1 << 50),
            STATUS_ACKNOWLEDGE | STATUS_DRIVER
        );
        assert_eq!(d.negotiate(GOOD), ALL);
        // Features are frozen after FEATURES_OK.
        d.set_driver_features(0);
        d.write(COMMON + 8, 4, 1);
        assert_eq!(d.read(COMMON + 0xc, 4), 1);
        // Driver features before DRIVER are ignored.
        d.set_status(0);
        d.set_driver_features(GOOD);
        d.write(COMMON + 8, 4, 1);
        assert_eq!(d.read(COMMON + 0xc, 4), 0);
        // FEATURES_OK without DRIVER is refused.
        d.set_status(STATUS_ACKNOWLEDGE | STATUS_FEATURES_OK);
        assert_eq!(d.status(), STATUS_ACKNOWLEDGE);
    }

    #[test]
    fn status_cannot_skip_steps_and_reset_clears() {
        let mut d = rng();
        d.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_DRIVER_OK);
        assert_eq!(d.status(), STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        // The driver cannot set NEEDS_RESET or clear bits without a reset.
        d.set_status(STATUS_NEEDS_RESET);
        assert_eq!(d.status(), STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        assert_eq!(d.negotiate(GOOD), ALL);
        let mem = d.mem.clone();
        let vq = MockSplitQueue::create(&mem, GuestAddress(QUEUE_BASE), 16);
        d.setup_queue(0, &vq, 16);
        assert_eq!(d.read(COMMON + 0x1c, 2), 1);
        d.set_status(0);
        assert_eq!(d.status(), 0);
        assert_eq!(d.read(COMMON + 0x1c, 2), 0);
        assert_eq!(
            d.read(COMMON + 0x18, 2),
            u64::from(crate::devices::virtio::rng::RNG_QUEUE_SIZE)
        );
        assert_eq!(d.read(COMMON + 0x1a, 2), u64::from(VIRTIO_MSI_NO_VECTOR));
        d.write(COMMON + 8, 4, 0);
        assert_eq!(d.read(COMMON + 0xc, 4), 0);
    }

    #[test]
    fn queue_registers() {
        let mut d = rng();
        assert_eq!(d.read(COMMON + 0x12, 2), 1);
        // Before FEATURES_OK queue set-up is ignored.
        d.write(COMMON + 0x18, 2, 16);
        d.write(COMMON + 0x1c, 2, 1);
        assert_eq!(d.read(COMMON + 0x1c, 2), 0);
        assert_eq!(d.read(COMMON + 0x18, 2), 256);
        d.negotiate(GOOD);
        d.write(COMMON + 0x18, 2, 64);
        d.write(COMMON + 0x20, 4, 0x1_2000);
        d.write(COMMON + 0x24, 4, 0);
        assert_eq!(d.read(COMMON + 0x18, 2), 64);
        assert_eq!(d.read(COMMON + 0x20, 8), 0x1_2000);
        assert_eq!(d.read(COMMON + 0x1e, 2), 0);
        // A queue that does not exist reads as size 0 and ignores writes.
        d.write(COMMON + 0x16, 2, 5);
        assert_eq!(d.read(COMMON + 0x18, 2), 0);
        d.write(COMMON + 0x1c, 2, 1);
        assert_eq!(d.read(COMMON + 0x1c, 2), 0);
        // A vector the device does not have reads back as NO_VECTOR.
        d.write(COMMON + 0x16, 2, 0);
        d.write(COMMON + 0x1a, 2, 7);
        assert_eq!(d.read(COMMON + 0x1a, 2), u64::from(VIRTIO_MSI_NO_VECTOR));
        d.write(COMMON + 0x1a, 2, 1);
        assert_eq!(d.read(COMMON + 0x1a, 2), 1);
        // Odd-sized and unknown accesses are harmless.
        assert_eq!(d.read(COMMON + 0x13, 1), 0);
        d.write(COMMON + 0x15, 1, 0xff);
        d.write(COMMON + 0x36, 2, 0xffff);
        assert_eq!(d.read(COMMON + 0x15, 1), 0);
        assert_eq!(d.read(0x7ff8, 8), u64::MAX);
        d.write(0x7ff8, 8, 0);
        d.dev.write_bar(1, 0, &[1]);
    }

    #[test]
    fn bad_queue_size_sets_needs_reset() {
        let mut d = rng();
        d.negotiate(GOOD);
        d.write(COMMON + 0x18, 2, 100);
        let mem = d.mem.clone();
        let vq = MockSplitQueue::create(&mem, GuestAddress(QUEUE_BASE), 16);
        d.write(COMMON + 0x20, 8, vq.desc_table_addr().0);
        d.write(COMMON + 0x28, 8, vq.avail_addr().0);
        d.write(COMMON + 0x30, 8, vq.used_addr().0);
        d.write(COMMON + 0x1c, 2, 1);
        assert_eq!(d.read(COMMON + 0x1c, 2), 0);
        assert_ne!(d.status() & STATUS_NEEDS_RESET, 0);
        // A broken device does not go live.
        d.driver_ok();
        d.notify(0);
        assert_ne!(d.status() & STATUS_NEEDS_RESET, 0);
        // Reset recovers.
        d.set_status(0);
        assert_eq!(d.negotiate(GOOD), ALL);
    }

    #[test]
    fn rings_outside_memory_or_misaligned_set_needs_reset() {
        for (desc, avail, used) in [
            (MEM_SIZE as u64 - 16, 0x2000, 0x3000),
            (0x1000, u64::MAX - 1, 0x3000),
            (0x1000, 0x2000, 0x3002),
            (0x1008, 0x2000, 0x3000),
        ] {
            let mut d = rng();
            d.negotiate(GOOD);
            d.write(COMMON + 0x18, 2, 16);
            d.write(COMMON + 0x20, 8, desc);
            d.write(COMMON + 0x28, 8, avail);
            d.write(COMMON + 0x30, 8, used);
            d.write(COMMON + 0x1c, 2, 1);
            assert_eq!(
                d.read(COMMON + 0x1c, 2),
                0,
                "{desc:#x} {avail:#x} {used:#x}"
            );
            assert_ne!(d.status() & STATUS_NEEDS_RESET, 0);
        }
    }

    #[test]
    fn rng_fills_buffers_and_interrupts() {
        let mut d = rng();
        assert_eq!(d.negotiate(GOOD), ALL);
        let mem = d.mem.clone();
        let vq = MockSplitQueue::create(&mem, GuestAddress(QUEUE_BASE), 16);
        d.setup_queue(0, &vq, 16);
        d.enable_msix(2);
        d.driver_ok();
        assert_eq!(d.status(), ALL | STATUS_DRIVER_OK);
        add_chain(
            &vq,
            0,
            &[
                (DATA_BASE, 64, DESC_F_WRITE),
                (DATA_BASE + 0x1000, 32, DESC_F_WRITE),
            ],
        );
        d.notify(0);
        assert_eq!(used_idx(&d.mem, &vq), 1);
        assert_eq!(used_entry(&d.mem, &vq, 0), (0, 96));
        let mut buf = [0u8; 64];
        d.mem.read_slice(&mut buf, GuestAddress(DATA_BASE)).unwrap();
        assert_ne!(buf, [0u8; 64]);
        assert_eq!(d.sink.take(), vec![(MSI_ADDRESS, 0x21)]);
        // ISR says "queue", and reading it clears it.
        assert_eq!(d.read(ISR, 1), 1);
        assert_eq!(d.read(ISR, 1), 0);
        // Device-readable descriptors get nothing; buffers outside memory
        // end the chain without harm.
        add_chain(
            &vq,
            2,
            &[(DATA_BASE, 16, 0), (MEM_SIZE as u64 - 8, 64, DESC_F_WRITE)],
        );
        d.notify(0);
        assert_eq!(used_entry(&d.mem, &vq, 1), (2, 0));
        // A notification for a queue that does not exist is ignored.
        d.notify(3);
        d.write(NOTIFY + 0xffc, 4, 0);
        assert_eq!(d.status(), ALL | STATUS_DRIVER_OK);
    }

    #[derive(Default)]
    struct Doorbells(std::sync::Mutex<Vec<(u16, u64)>>);

    impl NotifyRegistrar for Doorbells {
        fn attach(&self, index: u16, addr: u64) -> io::Result<()> {
            self.0.lock().unwrap().push((index, addr));
            Ok(())
        }
        fn detach_all(&self) {
            self.0.lock().unwrap().clear();
        }
        fn kick(&self, _index: u16) {}
    }

    #[test]
    fn doorbells_attach_at_driver_ok_and_detach_on_reset() {
        let mut d = rng();
        d.dev.config.set_bar_address(0, 0xc000_0000).unwrap();
        let doorbells = Arc::new(Doorbells::default());
        d.dev.set_notify_registrar(doorbells.clone());
        assert_eq!(d.dev.queue_count(), 1);
        d.negotiate(GOOD);
        let mem = d.mem.clone();
        let vq = MockSplitQueue::create(&mem, GuestAddress(QUEUE_BASE), 16);
        d.setup_queue(0, &vq, 16);
        assert!(doorbells.0.lock().unwrap().is_empty());
        d.driver_ok();
        assert_eq!(
            *doorbells.0.lock().unwrap(),
            vec![(0, 0xc000_0000 + NOTIFY_CFG_OFFSET)]
        );
        // A notification through the doorbell path is served like a trapped write.
        add_chain(&vq, 0, &[(DATA_BASE, 16, DESC_F_WRITE)]);
        d.dev.notify_queue(0);
        assert_eq!(used_entry(&d.mem, &vq, 0), (0, 16));
        d.dev.notify_queue(7); // no such queue: ignored
                               // Moving BAR0 moves the doorbells; turning decoding off drops them.
        d.dev.write_config(
            0x04,
            &crate::devices::pci::config::COMMAND_MEMORY_SPACE.to_le_bytes(),
        );
        d.dev.write_config(0x10, &0xfeb0_0000u32.to_le_bytes());
        assert_eq!(
            *doorbells.0.lock().unwrap(),
            vec![(0, 0xfeb0_0000 + NOTIFY_CFG_OFFSET)]
        );
        d.dev.write_config(0x04, &0u16.to_le_bytes());
        assert!(doorbells.0.lock().unwrap().is_empty());
        d.dev.write_config(
            0x04,
            &crate::devices::pci::config::COMMAND_MEMORY_SPACE.to_le_bytes(),
        );
        assert_eq!(doorbells.0.lock().unwrap().len(), 1);
        d.set_status(0);
        assert!(doorbells.0.lock().unwrap().is_empty());
    }

    #[test]
    fn rng_caps_large_requests() {
        let mut d = rng();
        d.negotiate(GOOD);
        let mem = d.mem.clone();
        let vq = MockSplitQueue::create(&mem, GuestAddress(QUEUE_BASE), 16);
        d.setup_queue(0, &vq, 16);
        d.driver_ok();
        add_chain(&vq, 0, &[(DATA_BASE, 1 << 20, DESC_F_WRITE)]);
        d.notify(0);
        assert_eq!(
            used_entry(&d.mem, &vq, 0),
            (0, crate::devices::virtio::rng::MAX_BYTES_PER_CHAIN)
        );
    }

    #[test]
    fn corrupt_avail_index_sets_needs_reset_and_signals_config() {
        let mut d = rng();
        d.negotiate(GOOD);
        let mem = d.mem.clone();
        let vq = MockSplitQueue::create(&mem, GuestAddress(QUEUE_BASE), 16);
        d.setup_queue(0, &vq, 16);
        d.enable_msix(2);
        d.driver_ok();
        // avail.idx 100 ahead of the device with a ring of 16.
        d.mem
            .write_obj(100u16, GuestAddress(vq.avail_addr().0 + 2))
            .unwrap();
        d.notify(0);
        assert_ne!(d.status() & STATUS_NEEDS_RESET, 0);
        assert_eq!(d.sink.take(), vec![(MSI_ADDRESS, 0x20)]);
        assert_eq!(d.read(ISR, 1), u64::from(ISR_CONFIG));
        // Further notifications are ignored until reset.
        d.notify(0);
        assert!(d.sink.take().is_empty());
    }

    #[test]
    fn masked_queue_vector_is_delivered_on_unmask() {
        let mut d = rng();
        d.negotiate(GOOD);
        let mem = d.mem.clone();
        let vq = MockSplitQueue::create(&mem, GuestAddress(QUEUE_BASE), 16);
        d.setup_queue(0, &vq, 16);
        d.enable_msix(2);
        d.driver_ok();
        d.write(MSIX_TABLE + 16 + 12, 4, 1);
        add_chain(&vq, 0, &[(DATA_BASE, 8, DESC_F_WRITE)]);
        d.notify(0);
        assert!(d.sink.take().is_empty());
        assert_eq!(d.read(0x6000, 8), 0b10);
        d.write(MSIX_TABLE + 16 + 12, 4, 0);
        assert_eq!(d.sink.take(), vec![(MSI_ADDRESS, 0x21)]);
        assert_eq!(d.read(0x6000, 8), 0);
    }
}
