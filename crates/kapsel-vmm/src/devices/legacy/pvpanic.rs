//! pvpanic (QEMU's ISA device, ACPI HID "QEMU0001"): the guest kernel
//! writes to it when it panics, so the VMM can report a crash instead of
//! seeing only a reboot or a hang.

use crate::bus::BusDevice;
use crate::exit::{ExitSignal, VmExit};
use std::sync::Arc;

/// Event bit: the guest kernel panicked.
pub const PVPANIC_PANICKED: u8 = 1 << 0;
/// Event bit: a crash kernel is loaded and is about to run.
pub const PVPANIC_CRASH_LOADED: u8 = 1 << 1;

/// The pvpanic port.
pub struct PvPanic {
    exit: Arc<ExitSignal>,
}

impl PvPanic {
    /// A device that reports a guest panic through `exit`.
    pub fn new(exit: Arc<ExitSignal>) -> Self {
        PvPanic { exit }
    }
}

impl BusDevice for PvPanic {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Reading returns the events the device supports.
        data.fill(0);
        if let Some(first) = data.first_mut() {
            *first = PVPANIC_PANICKED | PVPANIC_CRASH_LOADED;
        }
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        let Some(&v) = data.first() else { return };
        if v & PVPANIC_PANICKED != 0 {
            self.exit.raise(VmExit::GuestPanic);
        } else if v & PVPANIC_CRASH_LOADED != 0 {
            tracing::info!("guest kernel crashed; its crash kernel is taking over");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panic_event_is_reported() {
        let exit = Arc::new(ExitSignal::new().unwrap());
        let mut d = PvPanic::new(exit.clone());
        let mut caps = [0u8];
        d.read(0, &mut caps);
        assert_eq!(caps[0], PVPANIC_PANICKED | PVPANIC_CRASH_LOADED);
        d.write(0, &[PVPANIC_CRASH_LOADED]);
        assert_eq!(exit.reason(), None);
        d.write(0, &[]);
        d.write(0, &[PVPANIC_PANICKED]);
        assert_eq!(exit.reason(), Some(VmExit::GuestPanic));
    }
}
