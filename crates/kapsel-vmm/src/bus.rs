//! Port-I/O and MMIO buses: an address range maps to one device.
//!
//! Accesses the bus cannot route are counted and ignored (reads return all
//! ones, like a floating ISA bus), never a crash: the guest is untrusted.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A device reachable through a bus.
pub trait BusDevice: Send {
    /// Reads `data.len()` bytes at `offset` from the start of the device's range.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Writes `data` at `offset` from the start of the device's range.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// A shared, lockable bus device.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Why a device could not be inserted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The new range overlaps a device already on the bus.
    #[error("bus range {base:#x}+{len:#x} overlaps an existing device")]
    Overlap {
        /// Start of the rejected range.
        base: u64,
        /// Length of the rejected range.
        len: u64,
    },
    /// A zero-length range or one that wraps around the address space.
    #[error("bus range {base:#x}+{len:#x} is empty or wraps")]
    BadRange {
        /// Start of the rejected range.
        base: u64,
        /// Length of the rejected range.
        len: u64,
    },
}

struct Entry {
    len: u64,
    device: SharedDevice,
}

/// A set of non-overlapping address ranges, each served by a device.
#[derive(Default)]
pub struct Bus {
    entries: BTreeMap<u64, Entry>,
    unhandled: AtomicU64,
}

impl Bus {
    /// Creates an empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Maps `[base, base + len)` to `device`.
    pub fn insert(&mut self, base: u64, len: u64, device: SharedDevice) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::BadRange { base, len })?;
        let overlaps_prev = self
            .entries
            .range(..end)
            .next_back()
            .is_some_and(|(b, e)| b + e.len > base);
        if overlaps_prev {
            return Err(BusError::Overlap { base, len });
        }
        self.entries.insert(base, Entry { len, device });
        Ok(())
    }

    fn find(&self, addr: u64, size: usize) -> Option<(u64, &SharedDevice)> {
        let (base, entry) = self.entries.range(..=addr).next_back()?;
        let offset = addr - base;
        let end = offset.checked_add(size as u64)?;
        (end <= entry.len).then_some((offset, &entry.device))
    }

    /// Routes a read; returns false (and fills `data` with 0xff) when no
    /// device covers the access.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((offset, dev)) => {
                dev.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .read(offset, data);
                true
            }
            None => {
                data.fill(0xff);
                self.unhandled.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Routes a write; returns false when no device covers the access.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((offset, dev)) => {
                dev.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .write(offset, data);
                true
            }
            None => {
                self.unhandled.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// How many accesses no device claimed.
    pub fn unhandled_accesses(&self) -> u64 {
        self.unhandled.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Reg(u8);
    impl BusDevice for Reg {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(self.0.wrapping_add(offset as u8));
        }
        fn write(&mut self, _offset: u64, data: &[u8]) {
            self.0 = data[0];
        }
    }

    #[test]
    fn routes_by_range_and_offset() {
        let mut bus = Bus::new();
        bus.insert(0x3f8, 8, Arc::new(Mutex::new(Reg(0x10))))
            .unwrap();
        let mut b = [0u8; 1];
        assert!(bus.read(0x3fa, &mut b));
        assert_eq!(b[0], 0x12);
        assert!(bus.write(0x3f8, &[0x40]));
        assert!(bus.read(0x3f8, &mut b));
        assert_eq!(b[0], 0x40);
    }

    #[test]
    fn unclaimed_access_reads_ones_and_is_counted() {
        let mut bus = Bus::new();
        bus.insert(0x3f8, 8, Arc::new(Mutex::new(Reg(0)))).unwrap();
        let mut b = [0u8; 2];
        assert!(!bus.read(0x2f8, &mut b));
        assert_eq!(b, [0xff, 0xff]);
        // An access straddling the end of a device is not routed.
        assert!(!bus.read(0x3ff, &mut b));
        assert!(!bus.write(0x400, &[1]));
        assert_eq!(bus.unhandled_accesses(), 3);
    }

    #[test]
    fn rejects_overlaps_and_bad_ranges() {
        let mut bus = Bus::new();
        bus.insert(0x60, 1, Arc::new(Mutex::new(Reg(0)))).unwrap();
        bus.insert(0x64, 1, Arc::new(Mutex::new(Reg(0)))).unwrap();
        assert_eq!(
            bus.insert(0x5f, 2, Arc::new(Mutex::new(Reg(0)))),
            Err(BusError::Overlap { base: 0x5f, len: 2 })
        );
        assert!(bus.insert(0x61, 3, Arc::new(Mutex::new(Reg(0)))).is_ok());
        assert_eq!(
            bus.insert(0x70, 0, Arc::new(Mutex::new(Reg(0)))),
            Err(BusError::BadRange { base: 0x70, len: 0 })
        );
        assert!(bus
            .insert(u64::MAX, 2, Arc::new(Mutex::new(Reg(0))))
            .is_err());
    }
}
