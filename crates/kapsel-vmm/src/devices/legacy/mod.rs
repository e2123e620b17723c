//! Legacy PC devices: the 16550 UART, the i8042 reset line, the CMOS RTC,
//! the ACPI power-management registers and pvpanic.

pub mod acpi_pm;
pub mod cmos;
pub mod debugcon;
pub mod fw_cfg;
pub mod i8042;
pub mod port92;
pub mod pvpanic;
pub mod serial;

use vmm_sys_util::eventfd::EventFd;

/// An interrupt line backed by an eventfd registered with KVM as an irqfd.
pub struct IrqTrigger(pub EventFd);

impl vm_superio::Trigger for IrqTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}
