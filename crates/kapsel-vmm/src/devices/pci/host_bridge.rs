//! The host bridge at 00:00.0: a header only, so that the guest finds a
//! root complex where firmware tables say one is.

use super::config::{PciConfiguration, PciHeader, CLASS_BRIDGE, SUBCLASS_HOST_BRIDGE};
use super::PciDevice;

/// Red Hat's PCI vendor ID, under which QEMU's generic host bridge lives.
pub const HOST_BRIDGE_VENDOR_ID: u16 = 0x1b36;
/// QEMU's "PCIe host bridge" device ID; guests have no driver to bind, which
/// is what we want.
pub const HOST_BRIDGE_DEVICE_ID: u16 = 0x0008;

/// A host bridge with no BARs and no capabilities.
pub struct PciHostBridge {
    config: PciConfiguration,
}

impl PciHostBridge {
    /// Creates the bridge.
    pub fn new() -> Self {
        PciHostBridge {
            config: PciConfiguration::new(PciHeader {
                vendor_id: HOST_BRIDGE_VENDOR_ID,
                device_id: HOST_BRIDGE_DEVICE_ID,
                revision_id: 0,
                class: CLASS_BRIDGE,
                subclass: SUBCLASS_HOST_BRIDGE,
                prog_if: 0,
                subsystem_vendor_id: HOST_BRIDGE_VENDOR_ID,
                subsystem_id: 0x1100,
            }),
        }
    }
}

impl Default for PciHostBridge {
    fn default() -> Self {
        Self::new()
    }
}

impl PciDevice for PciHostBridge {
    fn config(&self) -> &PciConfiguration {
        &self.config
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.config.write(offset, data);
    }

    fn read_bar(&mut self, _bar: usize, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write_bar(&mut self, _bar: usize, _offset: u64, _data: &[u8]) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::pci::config::{CLASS_CODE, VENDOR_ID};

    #[test]
    fn identifies_as_host_bridge() {
        let mut b = PciHostBridge::new();
        let mut v = [0u8; 4];
        b.read_config(VENDOR_ID as u64, &mut v);
        assert_eq!(u32::from_le_bytes(v), 0x0008_1b36);
        let mut class = [0u8; 1];
        b.read_config(CLASS_CODE as u64, &mut class);
        assert_eq!(class[0], CLASS_BRIDGE);
        b.write_bar(0, 0, &[1]);
        b.read_bar(0, 0, &mut v);
        assert_eq!(v, [0xff; 4]);
    }
}
