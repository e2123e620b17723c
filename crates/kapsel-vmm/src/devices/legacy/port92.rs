//! System control port A (0x92, "fast A20 and reset"), which SeaBIOS and
//! OVMF touch while they start: bit 1 gates A20 (always on under KVM, so it
//! only reads back), bit 0 set resets the machine.

use crate::bus::BusDevice;
use crate::exit::{ExitSignal, VmExit};
use std::sync::Arc;

/// The port.
pub const PORT92: u16 = 0x92;
/// Bit 0: pulse the CPU reset line.
const FAST_RESET: u8 = 1 << 0;
/// Bit 1: A20 enabled.
const A20: u8 = 1 << 1;

/// The port's state.
pub struct Port92 {
    value: u8,
    exit: Arc<ExitSignal>,
}

impl Port92 {
    /// A port that resets the VM through `exit`; A20 starts enabled.
    pub fn new(exit: Arc<ExitSignal>) -> Self {
        Port92 { value: A20, exit }
    }
}

impl BusDevice for Port92 {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = self.value;
        }
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        let Some(&v) = data.first() else { return };
        if v & FAST_RESET != 0 {
            self.exit.raise(VmExit::Reset);
        }
        self.value = v & A20;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a20_reads_back_and_bit0_resets() {
        let exit = Arc::new(ExitSignal::new().unwrap());
        let mut p = Port92::new(exit.clone());
        let mut b = [0u8];
        p.read(0, &mut b);
        assert_eq!(b[0], A20);
        // SeaBIOS's set_a20: read, flip bit 1, write back.
        p.write(0, &[b[0] ^ A20]);
        p.read(0, &mut b);
        assert_eq!(b[0], 0);
        assert!(!exit.is_raised());
        p.write(0, &[A20 | FAST_RESET]);
        assert_eq!(exit.reason(), Some(VmExit::Reset));
    }
}
