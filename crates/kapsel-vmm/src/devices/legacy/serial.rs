//! COM1: a 16550A UART (vm-superio's model) on the port bus, its interrupt
//! delivered through an irqfd, its output to the chosen console sink.

use super::IrqTrigger;
use crate::bus::BusDevice;
use std::io::Write;
use vm_superio::serial::NoEvents;
use vm_superio::Serial;

/// Number of I/O ports a 16550 decodes.
pub const SERIAL_PORT_COUNT: u64 = 8;

/// The guest's serial port.
pub struct SerialDevice {
    uart: Serial<IrqTrigger, NoEvents, Box<dyn Write + Send>>,
}

impl SerialDevice {
    /// A UART that raises `irq` and writes what the guest sends to `out`.
    pub fn new(irq: IrqTrigger, out: Box<dyn Write + Send>) -> Self {
        SerialDevice {
            uart: Serial::new(irq, out),
        }
    }

    /// Queues host input for the guest; returns how many bytes fit into the
    /// receive FIFO (the rest must be offered again later).
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        let room = self.uart.fifo_capacity().min(bytes.len());
        if room == 0 {
            return 0;
        }
        match self.uart.enqueue_raw_bytes(&bytes[..room]) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!("serial input dropped: {e:?}");
                0
            }
        }
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let (Ok(off), Some(first)) = (u8::try_from(offset), data.first_mut()) {
            *first = self.uart.read(off);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let (Ok(off), Some(&value)) = (u8::try_from(offset), data.first()) else {
            return;
        };
        if let Err(e) = self.uart.write(off, value) {
            // The console sink failing (a closed pipe) must not stop the guest.
            tracing::debug!("serial output error: {e:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::Capture;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    const THR: u64 = 0;
    const IER: u64 = 1;
    const LSR: u64 = 5;
    const LSR_DATA_READY: u8 = 1;
    const LSR_THR_EMPTY: u8 = 0x20;

    fn device() -> (SerialDevice, Capture, EventFd) {
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        let cap = Capture::default();
        let dev = SerialDevice::new(IrqTrigger(evt.try_clone().unwrap()), Box::new(cap.clone()));
        (dev, cap, evt)
    }

    #[test]
    fn guest_output_reaches_the_sink() {
        let (mut dev, cap, _evt) = device();
        let mut lsr = [0u8];
        dev.read(LSR, &mut lsr);
        assert_ne!(lsr[0] & LSR_THR_EMPTY, 0);
        for b in b"hi\n" {
            dev.write(THR, &[*b]);
        }
        assert_eq!(&cap.0.lock().unwrap()[..], b"hi\n");
    }

    #[test]
    fn host_input_raises_the_interrupt_and_is_readable() {
        let (mut dev, _cap, evt) = device();
        dev.write(IER, &[1]); // receive-data-available interrupt on
        assert_eq!(dev.enqueue_input(b"ok"), 2);
        assert!(evt.read().unwrap() >= 1);
        let mut lsr = [0u8];
        dev.read(LSR, &mut lsr);
        assert_ne!(lsr[0] & LSR_DATA_READY, 0);
        let mut b = [0u8];
        dev.read(THR, &mut b);
        assert_eq!(b[0], b'o');
    }

    #[test]
    fn input_beyond_the_fifo_is_left_for_later() {
        let (mut dev, _cap, _evt) = device();
        let big = vec![b'x'; 1000];
        let taken = dev.enqueue_input(&big);
        assert!(taken > 0 && taken < big.len());
        assert_eq!(dev.enqueue_input(&big), 0);
    }

    #[test]
    fn odd_accesses_are_harmless() {
        let (mut dev, _cap, _evt) = device();
        let mut wide = [0xaau8; 4];
        dev.read(LSR, &mut wide);
        assert_eq!(&wide[1..], &[0, 0, 0]);
        dev.write(THR, &[]);
        dev.write(u64::MAX, &[1]);
        dev.read(300, &mut [0u8]);
    }
}
