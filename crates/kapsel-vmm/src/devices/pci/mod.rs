//! PCI: configuration spaces, the host bridge, a root bus reachable through
//! both the type-1 port mechanism (0xCF8/0xCFC) and ECAM, the MMIO window
//! that routes BAR accesses to devices, and MSI-X.
//!
//! Wiring (done by the VMM): build a [`PciBus`] with the BAR windows, add
//! devices (their BARs are placed in the windows), then share it through
//! [`PciConfigIo`] on the port bus, [`PciConfigMmio`] (ECAM) and one
//! [`PciMmioWindow`] per BAR window on the MMIO bus.

pub mod bus;
pub mod config;
pub mod host_bridge;
pub mod msix;

pub use bus::{PciAddress, PciBus, PciConfigIo, PciConfigMmio, PciMmioWindow, PciWindow};
pub use config::{BarKind, PciBar, PciConfiguration, PciHeader};
pub use host_bridge::PciHostBridge;
pub use msix::{InterruptSink, MsixConfig};

/// A function on the PCI bus.
///
/// Accesses come from the guest: every offset and length is untrusted and
/// implementations must treat out-of-range accesses as harmless.
pub trait PciDevice: Send {
    /// The configuration space, for the bus's BAR bookkeeping.
    fn config(&self) -> &PciConfiguration;

    /// Reads configuration space at `offset` (0..4096).
    fn read_config(&mut self, offset: u64, data: &mut [u8]) {
        self.config().read(offset, data);
    }

    /// Writes configuration space at `offset` (0..4096).
    fn write_config(&mut self, offset: u64, data: &[u8]);

    /// Reads `data.len()` bytes at `offset` inside BAR `bar`.
    fn read_bar(&mut self, bar: usize, offset: u64, data: &mut [u8]);

    /// Writes `data` at `offset` inside BAR `bar`.
    fn write_bar(&mut self, bar: usize, offset: u64, data: &[u8]);
}

/// Why PCI setup failed. These are VMM build-time errors, never caused by
/// the guest.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PciError {
    /// A BAR's slot, size or address is invalid.
    #[error("PCI BAR {0} is invalid (slot taken, size not a power of two >= 16, or misaligned)")]
    InvalidBar(usize),
    /// A capability's write mask does not match its body.
    #[error("PCI capability write mask does not match its length")]
    CapabilityMask,
    /// The 192 bytes for capabilities are used up.
    #[error("PCI configuration space has no room for another capability")]
    CapabilitySpaceFull,
    /// MSI-X parameters out of range.
    #[error("MSI-X capability parameters are invalid")]
    InvalidMsix,
    /// All 32 device slots of the bus are taken.
    #[error("PCI bus 0 has no free device slot")]
    BusFull,
    /// A BAR window could not be created.
    #[error("PCI BAR window {base:#x}+{size:#x} is invalid")]
    InvalidWindow {
        /// Start of the window.
        base: u64,
        /// Size of the window.
        size: u64,
    },
    /// No room left for a BAR in its window.
    #[error("no room for a {size:#x}-byte BAR in the PCI window; enlarge the window")]
    WindowFull {
        /// Size of the BAR that did not fit.
        size: u64,
    },
}
