//! virtio-rng (virtio 5.4): one queue whose device-writable buffers the
//! device fills with bytes from the host's getrandom(2).

use super::{
    process_queue, ready_queues, ActivateError, DeviceError, VirtioDevice, VirtioInterrupt,
    TYPE_RNG,
};
use crate::memory::GuestMem;
use std::sync::Arc;
use virtio_queue::{DescriptorChain, Queue};
use vm_memory::{Bytes, GuestAddress};

/// Size of the request queue.
pub const RNG_QUEUE_SIZE: u16 = 256;
/// Most entropy handed out per chain, so that one request cannot make the
/// VMM read megabytes of randomness.
pub const MAX_BYTES_PER_CHAIN: u32 = 64 * 1024;
/// Bytes drawn from getrandom per guest-memory write.
const CHUNK: usize = 4096;

struct Active {
    mem: GuestMem,
    interrupt: Arc<dyn VirtioInterrupt>,
    queue: Queue,
}

/// The entropy device.
pub struct VirtioRng {
    queue_sizes: [u16; 1],
    active: Option<Active>,
}

impl VirtioRng {
    /// Creates the device.
    pub fn new() -> Self {
        VirtioRng {
            queue_sizes: [RNG_QUEUE_SIZE],
            active: None,
        }
    }
}

impl Default for VirtioRng {
    fn default() -> Self {
        Self::new()
    }
}

/// Fills the device-writable buffers of `chain` with random bytes, up to
/// [`MAX_BYTES_PER_CHAIN`]; returns how many bytes were written. Stops at the
/// first buffer outside guest memory.
pub fn fill_chain(mem: &GuestMem, chain: DescriptorChain<&GuestMem>) -> u32 {
    let mut written: u32 = 0;
    let mut buf = [0u8; CHUNK];
    for desc in chain.writable() {
        let mut done: u32 = 0;
        while done < desc.len() && written < MAX_BYTES_PER_CHAIN {
            let n = (desc.len() - done)
                .min(MAX_BYTES_PER_CHAIN - written)
                .min(CHUNK as u32);
            let chunk = &mut buf[..n as usize];
            if getrandom::fill(chunk).is_err() {
                return written;
            }
            let Some(addr) = desc.addr().0.checked_add(u64::from(done)) else {
                return written;
            };
            if mem.write_slice(chunk, GuestAddress(addr)).is_err() {
                return written;
            }
            done += n;
            written += n;
        }
        if written >= MAX_BYTES_PER_CHAIN {
            break;
        }
    }
    written
}

impl VirtioDevice for VirtioRng {
    fn device_type(&self) -> u32 {
        TYPE_RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        0
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        // virtio-rng has no configuration space.
        data.fill(0);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn activate(
        &mut self,
        mem: GuestMem,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<Queue>,
        _acked_features: u64,
    ) -> Result<(), ActivateError> {
        let [queue] = ready_queues::<1>(queues)?;
        self.active = Some(Active {
            mem,
            interrupt,
            queue,
        });
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
    }

    fn queue_notify(&mut self, queue_index: u16) -> Result<(), DeviceError> {
        let Some(a) = self.active.as_mut().filter(|_| queue_index == 0) else {
            return Ok(());
        };
        let mem = a.mem.clone();
        process_queue(&mut a.queue, 0, &a.mem, a.interrupt.as_ref(), |chain| {
            fill_chain(&mem, chain)
        })
    }
}
