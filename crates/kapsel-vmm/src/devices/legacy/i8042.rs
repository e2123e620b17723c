//! The i8042 keyboard controller, kept for its CPU reset line: a guest that
//! writes command 0xFE to port 0x64 resets the machine (Linux's `reboot=k`).

use crate::bus::BusDevice;
use crate::exit::{ExitSignal, VmExit};
use std::sync::Arc;
use vm_superio::I8042Device;

/// Ports decoded: 0x60 (data, offset 0) to 0x64 (command/status, offset 4).
pub const I8042_PORT_COUNT: u64 = 5;
const DATA_OFFSET: u64 = 0;
const COMMAND_OFFSET: u64 = 4;

/// Raises [`VmExit::Reset`] when the controller pulses the reset line.
pub struct ResetLine(pub Arc<ExitSignal>);

impl vm_superio::Trigger for ResetLine {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        self.0.raise(VmExit::Reset);
        Ok(())
    }
}

/// The controller on the port bus.
pub struct I8042 {
    inner: I8042Device<ResetLine>,
}

impl I8042 {
    /// A controller whose reset line ends the VM through `exit`.
    pub fn new(exit: Arc<ExitSignal>) -> Self {
        I8042 {
            inner: I8042Device::new(ResetLine(exit)),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let Some(first) = data.first_mut() {
            *first = match offset {
                DATA_OFFSET | COMMAND_OFFSET => self.inner.read(offset as u8),
                _ => 0xff,
            };
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (DATA_OFFSET | COMMAND_OFFSET, Some(&v)) = (offset, data.first()) {
            // The only error is the reset trigger's, which cannot fail.
            let _ = self.inner.write(offset as u8, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CMD_RESET_CPU: u8 = 0xfe;

    #[test]
    fn reset_command_raises_reset() {
        let exit = Arc::new(ExitSignal::new().unwrap());
        let mut dev = I8042::new(exit.clone());
        let mut status = [0u8];
        dev.read(COMMAND_OFFSET, &mut status);
        dev.write(COMMAND_OFFSET, &[CMD_RESET_CPU]);
        assert_eq!(exit.reason(), Some(VmExit::Reset));
    }

    #[test]
    fn other_ports_and_commands_do_not_reset() {
        let exit = Arc::new(ExitSignal::new().unwrap());
        let mut dev = I8042::new(exit.clone());
        dev.write(2, &[CMD_RESET_CPU]);
        dev.write(COMMAND_OFFSET, &[0x20]); // read command byte
        let mut b = [0u8];
        dev.read(1, &mut b);
        assert_eq!(b[0], 0xff);
        dev.write(COMMAND_OFFSET, &[]);
        assert_eq!(exit.reason(), None);
    }
}
