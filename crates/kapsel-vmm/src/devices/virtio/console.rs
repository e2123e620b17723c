//! virtio-console (virtio 5.3): one port, hvc0 in a Linux guest. What the
//! guest writes goes to the console's output; host input waits in a
//! bounded buffer until the guest offers receive buffers. Also the
//! emergency write register (VIRTIO_CONSOLE_F_EMERG_WRITE), usable before
//! the driver has set up its queues.

use super::{
    feature, pop_or_arm, process_queue, ready_queues, signal_if, ActivateError, DeviceError,
    VirtioDevice, VirtioInterrupt, TYPE_CONSOLE,
};
use crate::memory::GuestMem;
use std::collections::VecDeque;
use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Size of each queue.
pub const CONSOLE_QUEUE_SIZE: u16 = 64;
/// Host input held for the guest at most; more waits on the host side.
pub const INPUT_CAPACITY: usize = 64 * 1024;
/// Most bytes taken from one transmit chain.
const MAX_CHAIN_BYTES: usize = 64 * 1024;
const RX_QUEUE: u16 = 0;
const TX_QUEUE: u16 = 1;
const VIRTIO_CONSOLE_F_EMERG_WRITE: u32 = 2;
/// Configuration space: cols (le16), rows (le16), max_nr_ports (le32),
/// emerg_wr (le32).
const CONFIG_LEN: usize = 12;
const EMERG_WR_OFFSET: u64 = 8;

/// The host's handle for feeding the guest's console input.
#[derive(Clone)]
pub struct ConsoleInput {
    buffer: Arc<Mutex<VecDeque<u8>>>,
    event: Arc<EventFd>,
}

impl ConsoleInput {
    /// Queues `bytes` for the guest; returns how many fit (offer the rest
    /// again later).
    pub fn enqueue(&self, bytes: &[u8]) -> usize {
        let mut buf = self.buffer.lock().unwrap_or_else(|e| e.into_inner());
        let n = bytes.len().min(INPUT_CAPACITY - buf.len());
        buf.extend(&bytes[..n]);
        drop(buf);
        if n > 0 {
            let _ = self.event.write(1);
        }
        n
    }
}

struct Active {
    mem: GuestMem,
    interrupt: Arc<dyn VirtioInterrupt>,
    rx: Queue,
    tx: Queue,
}

/// The console device.
pub struct VirtioConsole {
    out: Box<dyn Write + Send>,
    input: ConsoleInput,
    queue_sizes: [u16; 2],
    active: Option<Active>,
}

impl VirtioConsole {
    /// A console writing to `out`; feed it input through [`Self::input`].
    pub fn new(out: Box<dyn Write + Send>) -> std::io::Result<Self> {
        Ok(VirtioConsole {
            out,
            input: ConsoleInput {
                buffer: Arc::new(Mutex::new(VecDeque::new())),
                event: Arc::new(EventFd::new(EFD_NONBLOCK)?),
            },
            queue_sizes: [CONSOLE_QUEUE_SIZE; 2],
            active: None,
        })
    }

    /// The handle that feeds host input to the guest.
    pub fn input(&self) -> ConsoleInput {
        self.input.clone()
    }

    fn transmit(&mut self) -> Result<(), DeviceError> {
        let Some(a) = self.active.as_mut() else {
            return Ok(());
        };
        let (mem, out) = (a.mem.clone(), &mut self.out);
        let interrupt = a.interrupt.clone();
        process_queue(&mut a.tx, TX_QUEUE, &a.mem, interrupt.as_ref(), |chain| {
            let mut taken = 0usize;
            let mut chunk = [0u8; 4096];
            for desc in chain.readable() {
                let mut done = 0usize;
                let len = desc.len() as usize;
                while done < len && taken < MAX_CHAIN_BYTES {
                    let n = (len - done).min(chunk.len()).min(MAX_CHAIN_BYTES - taken);
                    let Some(addr) = desc.addr().0.checked_add(done as u64) else {
                        return 0;
                    };
                    if mem.read_slice(&mut chunk[..n], GuestAddress(addr)).is_err() {
                        return 0;
                    }
                    // A console sink that fails (closed pipe) must not stop the guest.
                    let _ = out.write_all(&chunk[..n]);
                    done += n;
                    taken += n;
                }
            }
            let _ = out.flush();
            0
        })
    }

    fn receive(&mut self) -> Result<(), DeviceError> {
        let _ = self.input.event.read();
        let Some(a) = self.active.as_mut() else {
            return Ok(());
        };
        let mut buf = self.input.buffer.lock().unwrap_or_else(|e| e.into_inner());
        let mut used = false;
        while !buf.is_empty() {
            let Some(chain) = pop_or_arm(&mut a.rx, &a.mem)? else {
                break;
            };
            let head = chain.head_index();
            let mut written = 0u32;
            for desc in chain.writable() {
                let n = (desc.len() as usize).min(buf.len());
                let bytes: Vec<u8> = buf.iter().take(n).copied().collect();
                if a.mem.write_slice(&bytes, desc.addr()).is_err() {
                    break;
                }
                buf.drain(..n);
                written += n as u32;
                if buf.is_empty() {
                    break;
                }
            }
            a.rx.add_used(&a.mem, head, written)?;
            used = true;
        }
        drop(buf);
        signal_if(
            a.interrupt.as_ref(),
            RX_QUEUE,
            used && a.rx.needs_notification(&a.mem)?,
        )?;
        Ok(())
    }
}

impl VirtioDevice for VirtioConsole {
    fn device_type(&self) -> u32 {
        TYPE_CONSOLE
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        feature(VIRTIO_CONSOLE_F_EMERG_WRITE)
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut config = [0u8; CONFIG_LEN];
        config[4..8].copy_from_slice(&1u32.to_le_bytes()); // max_nr_ports
        super::read_config_bytes(&config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        if offset == EMERG_WR_OFFSET {
            if let Some(&b) = data.first() {
                let _ = self.out.write_all(&[b]);
                let _ = self.out.flush();
            }
        }
    }

    fn activate(
        &mut self,
        mem: GuestMem,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<Queue>,
        _acked_features: u64,
    ) -> Result<(), ActivateError> {
        let [rx, tx] = ready_queues::<2>(queues)?;
        self.active = Some(Active {
            mem,
            interrupt,
            rx,
            tx,
        });
        // Input typed before the driver was ready goes into the buffers it
        // posted before DRIVER_OK (when it may not notify).
        self.receive()
            .map_err(|e| ActivateError::Io(std::io::Error::other(e.to_string())))
    }

    fn reset(&mut self) {
        self.active = None;
    }

    fn queue_notify(&mut self, queue_index: u16) -> Result<(), DeviceError> {
        match queue_index {
            RX_QUEUE => self.receive(),
            TX_QUEUE => self.transmit(),
            _ => Ok(()),
        }
    }

    fn host_event_fds(&self) -> Vec<RawFd> {
        vec![self.input.event.as_raw_fd()]
    }

    fn host_event(&mut self, _index: usize) -> Result<(), DeviceError> {
        self.receive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::testing::*;
    use crate::devices::virtio::VIRTIO_F_VERSION_1;
    use crate::test_util::Capture;
    use virtio_queue::mock::MockSplitQueue;

    #[test]
    fn output_input_and_emergency_write() {
        let cap = Capture::default();
        let console = VirtioConsole::new(Box::new(cap.clone())).unwrap();
        let input = console.input();
        let mut d = Driver::new(Box::new(console));
        d.negotiate(feature(VIRTIO_F_VERSION_1));
        let mem = d.mem.clone();
        let rx = MockSplitQueue::create(&mem, GuestAddress(0x10_0000), 16);
        let tx = MockSplitQueue::create(&mem, GuestAddress(0x20_0000), 16);
        d.setup_queue(0, &rx, 16);
        d.setup_queue(1, &tx, 16);
        d.driver_ok();
        // Guest -> host.
        d.mem
            .write_slice(b"hello hvc0\n", GuestAddress(DATA_BASE))
            .unwrap();
        add_chain(&tx, 0, &[(DATA_BASE, 11, 0)]);
        d.notify(1);
        assert_eq!(&cap.0.lock().unwrap()[..], b"hello hvc0\n");
        // Host -> guest: input waits for a buffer, then fills it.
        assert_eq!(input.enqueue(b"ls\r"), 3);
        d.dev.handle_host_event(0);
        add_chain(&rx, 0, &[(DATA_BASE + 0x1000, 64, DESC_F_WRITE)]);
        d.notify(0);
        assert_eq!(used_entry(&d.mem, &rx, 0), (0, 3));
        let mut b = [0u8; 3];
        d.mem
            .read_slice(&mut b, GuestAddress(DATA_BASE + 0x1000))
            .unwrap();
        assert_eq!(&b, b"ls\r");
        // Input beyond the buffer's capacity is left to the caller.
        assert_eq!(
            input.enqueue(&vec![b'x'; INPUT_CAPACITY + 10]),
            INPUT_CAPACITY
        );
        // Emergency write, and a transmit chain outside memory is harmless.
        let mut dev = VirtioConsole::new(Box::new(cap.clone())).unwrap();
        dev.write_config(EMERG_WR_OFFSET, b"!");
        assert_eq!(cap.0.lock().unwrap().last(), Some(&b'!'));
        add_chain(&tx, 1, &[(MEM_SIZE as u64 - 4, 64, 0)]);
        d.notify(1);
    }
}
