//! Hardware-reduced ACPI power management: the FADT's sleep control,
//! sleep status and reset registers, in I/O space.

use crate::arch::x86_64::acpi::S5_SLEEP_TYPE;
use crate::arch::x86_64::layout::{ACPI_RESET_PORT, ACPI_RESET_VALUE, ACPI_SLEEP_CONTROL_PORT};
use crate::bus::BusDevice;
use crate::exit::{ExitSignal, VmExit};
use std::sync::Arc;

/// First port of the device (the sleep control register).
pub const ACPI_PM_BASE: u16 = ACPI_SLEEP_CONTROL_PORT;
/// Ports decoded, up to and including the reset register.
pub const ACPI_PM_PORT_COUNT: u64 = (ACPI_RESET_PORT - ACPI_SLEEP_CONTROL_PORT + 1) as u64;

const SLEEP_CONTROL: u64 = 0;
const RESET: u64 = (ACPI_RESET_PORT - ACPI_PM_BASE) as u64;

/// Sleep control register: SLP_EN (bit 5) and SLP_TYP (bits 2..4).
const SLP_EN: u8 = 1 << 5;
const SLP_TYP_SHIFT: u8 = 2;
const SLP_TYP_MASK: u8 = 0x7;

/// The ACPI power-management registers.
pub struct AcpiPm {
    exit: Arc<ExitSignal>,
}

impl AcpiPm {
    /// Registers whose power-off and reset end the VM through `exit`.
    pub fn new(exit: Arc<ExitSignal>) -> Self {
        AcpiPm { exit }
    }
}

impl BusDevice for AcpiPm {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Nothing ever wakes the guest: the sleep status is always clear.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&v) = data.first() else { return };
        match offset {
            SLEEP_CONTROL if v & SLP_EN != 0 => {
                let sleep_type = (v >> SLP_TYP_SHIFT) & SLP_TYP_MASK;
                if sleep_type == S5_SLEEP_TYPE {
                    self.exit.raise(VmExit::PowerOff);
                } else {
                    tracing::debug!("guest asked for unsupported sleep type {sleep_type}");
                }
            }
            RESET if v == ACPI_RESET_VALUE => self.exit.raise(VmExit::Reset),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::x86_64::layout::ACPI_SLEEP_STATUS_PORT;

    const SLEEP_STATUS: u64 = (ACPI_SLEEP_STATUS_PORT - ACPI_PM_BASE) as u64;

    fn dev() -> (AcpiPm, Arc<ExitSignal>) {
        let exit = Arc::new(ExitSignal::new().unwrap());
        (AcpiPm::new(exit.clone()), exit)
    }

    #[test]
    fn s5_powers_off() {
        let (mut d, exit) = dev();
        d.write(SLEEP_CONTROL, &[(S5_SLEEP_TYPE << SLP_TYP_SHIFT) | SLP_EN]);
        assert_eq!(exit.reason(), Some(VmExit::PowerOff));
    }

    #[test]
    fn reset_value_resets() {
        let (mut d, exit) = dev();
        d.write(RESET, &[ACPI_RESET_VALUE]);
        assert_eq!(exit.reason(), Some(VmExit::Reset));
    }

    #[test]
    fn other_writes_are_ignored() {
        let (mut d, exit) = dev();
        d.write(SLEEP_CONTROL, &[S5_SLEEP_TYPE << SLP_TYP_SHIFT]); // no SLP_EN
        d.write(SLEEP_CONTROL, &[(3 << SLP_TYP_SHIFT) | SLP_EN]); // S3
        d.write(RESET, &[0x01]);
        d.write(SLEEP_STATUS, &[0xff]);
        d.write(RESET, &[]);
        let mut b = [0xffu8; 2];
        d.read(SLEEP_STATUS, &mut b);
        assert_eq!(b, [0, 0]);
        assert_eq!(exit.reason(), None);
    }
}
