//! Virtio devices (virtio 1.x, split virtqueues from the `virtio-queue`
//! crate) and their PCI transport.
//!
//! A device implements [`VirtioDevice`]; [`VirtioPciDevice`] wraps it into a
//! PCI function with the modern virtio-pci capabilities and MSI-X, ready to
//! be added to a [`PciBus`](crate::devices::pci::PciBus).

pub mod block;
pub mod console;
pub mod net;
pub mod rng;
pub mod transport;

pub use block::VirtioBlock;
pub use rng::VirtioRng;
pub use transport::VirtioPciDevice;

use crate::memory::GuestMem;
use std::io;
use std::sync::Arc;
use virtio_queue::{Queue, QueueT};

/// Device status: the guest noticed the device.
pub const STATUS_ACKNOWLEDGE: u8 = 1;
/// Device status: the guest has a driver for it.
pub const STATUS_DRIVER: u8 = 2;
/// Device status: the driver is set up and the device is live.
pub const STATUS_DRIVER_OK: u8 = 4;
/// Device status: feature negotiation is complete.
pub const STATUS_FEATURES_OK: u8 = 8;
/// Device status: the device hit an error and needs a reset.
pub const STATUS_NEEDS_RESET: u8 = 0x40;
/// Device status: the driver gave up on the device.
pub const STATUS_FAILED: u8 = 0x80;

/// Feature bit: virtio 1.0 or later (the only mode Kapsel implements).
pub const VIRTIO_F_VERSION_1: u32 = 32;
/// Feature bit: indirect descriptor tables.
pub const VIRTIO_RING_F_INDIRECT_DESC: u32 = 28;
/// Feature bit: used_event / avail_event notification suppression.
pub const VIRTIO_RING_F_EVENT_IDX: u32 = 29;

/// Device type: block device.
pub const TYPE_BLOCK: u32 = 2;
/// Device type: entropy source.
pub const TYPE_RNG: u32 = 4;
/// Device type: network card.
pub const TYPE_NET: u32 = 1;
/// Device type: console.
pub const TYPE_CONSOLE: u32 = 3;

/// Longest queue the split ring allows.
pub const MAX_QUEUE_SIZE: u16 = 32768;

/// The mask of feature bit `bit`.
pub const fn feature(bit: u32) -> u64 {
    1 << bit
}

/// How a device tells the guest that it used buffers or changed its
/// configuration. The transport implements it (MSI-X for virtio-pci).
pub trait VirtioInterrupt: Send + Sync {
    /// Buffers were added to the used ring of queue `queue_index`.
    fn signal_used_queue(&self, queue_index: u16) -> io::Result<()>;
    /// The device configuration space (or NEEDS_RESET) changed.
    fn signal_config_change(&self) -> io::Result<()>;
    /// The device stopped with work left on queue `queue_index` (its
    /// per-notification budget ran out): have it notified again soon, as
    /// the driver, which saw notifications off, will not.
    fn requeue(&self, queue_index: u16);
}

/// Why a device could not start.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver enabled fewer queues than the device needs.
    #[error("the driver did not enable the queues the device needs")]
    MissingQueue,
    /// A host resource (file, eventfd, ...) failed.
    #[error("device activation failed: {0}")]
    Io(#[from] io::Error),
}

/// Why a device stopped processing a queue; the transport sets
/// DEVICE_NEEDS_RESET, as the virtio specification asks for an
/// unrecoverable error caused by the driver.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The ring itself is corrupt (available index, ring addresses).
    #[error("virtqueue is corrupt: {0}")]
    Queue(#[from] virtio_queue::Error),
    /// Delivering an interrupt failed.
    #[error("cannot signal the guest: {0}")]
    Interrupt(#[source] io::Error),
    /// The host side of the device failed (e.g. its I/O ring).
    #[error("host I/O failed: {0}")]
    Host(#[source] io::Error),
}

/// A virtio device behind some transport.
pub trait VirtioDevice: Send {
    /// The virtio device type (e.g. [`TYPE_BLOCK`]).
    fn device_type(&self) -> u32;

    /// Maximum size of each queue, a power of two; its length is the number
    /// of queues.
    fn queue_max_sizes(&self) -> &[u16];

    /// Device-specific feature bits. The transport adds VERSION_1,
    /// INDIRECT_DESC and EVENT_IDX.
    fn features(&self) -> u64;

    /// Reads device configuration space at `offset`; bytes past its end
    /// read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);

    /// Writes device configuration space; fields that are not writable
    /// ignore the write.
    fn write_config(&mut self, offset: u64, data: &[u8]);

    /// Starts the device after DRIVER_OK: `queues` holds every queue in
    /// index order (ready or not), `acked_features` the negotiated features.
    fn activate(
        &mut self,
        mem: GuestMem,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<Queue>,
        acked_features: u64,
    ) -> Result<(), ActivateError>;

    /// Returns the device to its state before activation.
    fn reset(&mut self);

    /// The driver notified queue `queue_index` (bounded work: a device
    /// processes at most what the ring holds, then returns).
    fn queue_notify(&mut self, queue_index: u16) -> Result<(), DeviceError>;

    /// Host descriptors the device wants to hear about (a tap's fd), polled
    /// edge-triggered by the I/O thread: the device must consume until the
    /// source runs dry or it cannot take more, and resume on its own
    /// (e.g. when the driver adds receive buffers).
    fn host_event_fds(&self) -> Vec<std::os::fd::RawFd> {
        Vec::new()
    }

    /// Host descriptor `index` of [`VirtioDevice::host_event_fds`] is ready.
    fn host_event(&mut self, _index: usize) -> Result<(), DeviceError> {
        Ok(())
    }
}

/// Copies device configuration space `config` from `offset` into `data`;
/// bytes past its end (or an offset beyond any) read as zero.
pub(crate) fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b = offset
            .checked_add(i as u64)
            .and_then(|at| usize::try_from(at).ok())
            .and_then(|at| config.get(at))
            .copied()
            .unwrap_or(0);
    }
}

/// The next chain the driver made available on a receive-type queue, or
/// None when there is none; then notifications are armed, so that the
/// driver says when it adds one. A ring that reports new buffers but yields
/// none has an invalid available index: an error, never a retry loop.
pub(crate) fn pop_or_arm<'m>(
    queue: &mut Queue,
    mem: &'m GuestMem,
) -> Result<Option<virtio_queue::DescriptorChain<&'m GuestMem>>, DeviceError> {
    if let Some(chain) = queue.pop_descriptor_chain(mem) {
        return Ok(Some(chain));
    }
    if !queue.enable_notification(mem)? {
        return Ok(None);
    }
    queue
        .pop_descriptor_chain(mem)
        .map(Some)
        .ok_or(DeviceError::Queue(
            virtio_queue::Error::InvalidAvailRingIndex,
        ))
}

/// Signals queue `index`'s used ring when `needed` (the driver asked for
/// it, as the event index or the no-interrupt flag says).
pub(crate) fn signal_if(
    interrupt: &dyn VirtioInterrupt,
    index: u16,
    needed: bool,
) -> Result<(), DeviceError> {
    if needed {
        interrupt
            .signal_used_queue(index)
            .map_err(DeviceError::Interrupt)?;
    }
    Ok(())
}

/// The first `N` queues, all of which the driver must have enabled.
pub(crate) fn ready_queues<const N: usize>(
    queues: Vec<Queue>,
) -> Result<[Queue; N], ActivateError> {
    let taken: Vec<Queue> = queues.into_iter().take(N).collect();
    if taken.iter().any(|q| !q.ready()) {
        return Err(ActivateError::MissingQueue);
    }
    taken.try_into().map_err(|_| ActivateError::MissingQueue)
}

/// Most chains a device takes from one queue per notification, in rounds of
/// the queue size, so that a guest that keeps refilling its ring on another
/// vCPU cannot keep a device busy forever.
pub(crate) const MAX_ROUNDS_PER_NOTIFY: usize = 4;

/// Takes chains from queue `index` and hands each to `handle`, which
/// returns how many bytes it wrote into the chain; puts them on the used
/// ring and interrupts the driver if it wants that. Work is bounded: at
/// most [`MAX_ROUNDS_PER_NOTIFY`] times the queue size chains per call;
/// work left over is requeued through `interrupt`.
pub(crate) fn process_queue<F>(
    queue: &mut Queue,
    index: u16,
    mem: &GuestMem,
    interrupt: &dyn VirtioInterrupt,
    mut handle: F,
) -> Result<(), DeviceError>
where
    F: FnMut(virtio_queue::DescriptorChain<&GuestMem>) -> u32,
{
    use virtio_queue::QueueOwnedT;
    let budget = usize::from(queue.size());
    let mut more = false;
    for _ in 0..MAX_ROUNDS_PER_NOTIFY {
        queue.disable_notification(mem)?;
        let mut chains = Vec::new();
        {
            let mut iter = queue.iter(mem)?;
            for _ in 0..budget {
                match iter.next() {
                    Some(chain) => chains.push(chain),
                    None => break,
                }
            }
        }
        for chain in chains {
            let head = chain.head_index();
            let used = handle(chain);
            queue.add_used(mem, head, used)?;
        }
        more = queue.enable_notification(mem)?;
        if !more {
            break;
        }
    }
    if more {
        interrupt.requeue(index);
    }
    signal_if(interrupt, index, queue.needs_notification(mem)?)
}

#[cfg(test)]
pub(crate) mod testing;

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::GuestAddress;

    #[derive(Default)]
    struct Recorder {
        interrupts: AtomicUsize,
        requeued: Mutex<Vec<u16>>,
    }

    impl VirtioInterrupt for Recorder {
        fn signal_used_queue(&self, _queue_index: u16) -> io::Result<()> {
            self.interrupts.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        fn signal_config_change(&self) -> io::Result<()> {
            Ok(())
        }
        fn requeue(&self, queue_index: u16) {
            self.requeued.lock().unwrap().push(queue_index);
        }
    }

    #[test]
    fn leftover_work_is_requeued_not_stranded() {
        let mem = guest_memory();
        let vq = MockSplitQueue::create(&mem, GuestAddress(QUEUE_BASE), 16);
        let mut queue: Queue = vq.create_queue().unwrap();
        add_chain(&vq, 0, &[(DATA_BASE, 16, DESC_F_WRITE)]);
        let irq = Recorder::default();
        // A driver that adds a new request for every one it sees completed.
        let mut handled = 0u16;
        process_queue(&mut queue, 3, &mem, &irq, |_chain| {
            handled += 1;
            add_chain(&vq, handled % 16, &[(DATA_BASE, 16, DESC_F_WRITE)]);
            0
        })
        .unwrap();
        assert_eq!(usize::from(handled), MAX_ROUNDS_PER_NOTIFY);
        assert_eq!(*irq.requeued.lock().unwrap(), vec![3]);
        // A driver that stops adding: everything is done, nothing requeued.
        let mut queue2: Queue = vq.create_queue().unwrap();
        let irq2 = Recorder::default();
        let _ = process_queue(&mut queue2, 0, &mem, &irq2, |_chain| 0);
        assert!(irq2.requeued.lock().unwrap().is_empty());
    }
}
