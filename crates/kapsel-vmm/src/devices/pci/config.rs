//! A PCI type-0 configuration space: the 256-byte header plus capability
//! list, with a per-byte write mask so that read-only fields stay read-only
//! whatever the guest writes, and memory BARs that answer the standard size
//! probe (write all ones, read back the size mask).
//!
//! The 4 KiB PCI Express extended space reads as zeros (an empty extended
//! capability list) and ignores writes.

use super::PciError;

/// Size of the conventional configuration space.
pub const CONFIG_SPACE_SIZE: usize = 256;
/// Size of the PCI Express configuration space reachable through ECAM.
pub const EXTENDED_CONFIG_SPACE_SIZE: usize = 4096;

/// Vendor ID register (16 bits).
pub const VENDOR_ID: usize = 0x00;
/// Device ID register (16 bits).
pub const DEVICE_ID: usize = 0x02;
/// Command register (16 bits).
pub const COMMAND: usize = 0x04;
/// Status register (16 bits).
pub const STATUS: usize = 0x06;
/// Revision ID register (8 bits).
pub const REVISION_ID: usize = 0x08;
/// Programming interface byte of the class code.
pub const PROG_IF: usize = 0x09;
/// Sub-class byte of the class code.
pub const SUBCLASS: usize = 0x0a;
/// Base class byte of the class code.
pub const CLASS_CODE: usize = 0x0b;
/// Header type register (8 bits; bit 7 = multi-function).
pub const HEADER_TYPE: usize = 0x0e;
/// First base address register; six follow, 4 bytes apart.
pub const BAR0: usize = 0x10;
/// Subsystem vendor ID register (16 bits).
pub const SUBSYSTEM_VENDOR_ID: usize = 0x2c;
/// Subsystem ID register (16 bits).
pub const SUBSYSTEM_ID: usize = 0x2e;
/// Capabilities pointer (8 bits).
pub const CAPABILITIES_POINTER: usize = 0x34;
/// Interrupt line register (8 bits, scratch for the OS).
pub const INTERRUPT_LINE: usize = 0x3c;
/// Interrupt pin register (8 bits; 0 = no INTx pin).
pub const INTERRUPT_PIN: usize = 0x3d;

/// Command bit: the device decodes its I/O BARs.
pub const COMMAND_IO_SPACE: u16 = 1 << 0;
/// Command bit: the device decodes its memory BARs.
pub const COMMAND_MEMORY_SPACE: u16 = 1 << 1;
/// Command bit: the device may master the bus (DMA, MSI).
pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
/// Command bit: legacy INTx assertion is disabled.
pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;
/// Command bits a guest may change; the others read as zero.
const COMMAND_WRITABLE: u16 =
    COMMAND_IO_SPACE | COMMAND_MEMORY_SPACE | COMMAND_BUS_MASTER | COMMAND_INTX_DISABLE;
/// Status bit: the capability list at [`CAPABILITIES_POINTER`] is valid.
pub const STATUS_CAPABILITIES_LIST: u16 = 1 << 4;

/// Number of BARs in a type-0 header.
pub const NUM_BARS: usize = 6;
/// BAR bit 0 clear: a memory BAR.
const BAR_MEM_TYPE_64: u32 = 0b10 << 1;
/// BAR bit 3: prefetchable memory.
const BAR_MEM_PREFETCHABLE: u32 = 1 << 3;
/// Low BAR bits that hold flags, not address.
const BAR_MEM_FLAGS_MASK: u32 = 0xf;
/// Smallest memory BAR the PCI specification allows.
pub const MIN_BAR_SIZE: u64 = 16;

/// Where capabilities start: right after the type-0 header.
const FIRST_CAPABILITY_OFFSET: usize = 0x40;

/// Base class "bridge device".
pub const CLASS_BRIDGE: u8 = 0x06;
/// Bridge sub-class "host bridge".
pub const SUBCLASS_HOST_BRIDGE: u8 = 0x00;
/// Base class "mass storage".
pub const CLASS_MASS_STORAGE: u8 = 0x01;
/// Mass storage sub-class "other".
pub const SUBCLASS_STORAGE_OTHER: u8 = 0x80;
/// Base class "network controller".
pub const CLASS_NETWORK: u8 = 0x02;
/// Base class "device does not fit any defined class".
pub const CLASS_OTHER: u8 = 0xff;

/// The identity a device shows in its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciHeader {
    /// Vendor ID (0xffff is "no device" and must not be used).
    pub vendor_id: u16,
    /// Device ID.
    pub device_id: u16,
    /// Revision ID.
    pub revision_id: u8,
    /// Base class code.
    pub class: u8,
    /// Sub-class code.
    pub subclass: u8,
    /// Programming interface.
    pub prog_if: u8,
    /// Subsystem vendor ID.
    pub subsystem_vendor_id: u16,
    /// Subsystem ID.
    pub subsystem_id: u16,
}

/// The kind of a memory BAR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarKind {
    /// A 32-bit memory BAR, placed below 4 GiB.
    Memory32,
    /// A 64-bit memory BAR; it also uses the next BAR slot for the high half.
    Memory64,
}

/// One memory BAR a device declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciBar {
    /// BAR slot (0..=5; a 64-bit BAR also takes `index + 1`).
    pub index: usize,
    /// Size in bytes: a power of two, at least [`MIN_BAR_SIZE`].
    pub size: u64,
    /// 32- or 64-bit.
    pub kind: BarKind,
    /// Whether the prefetchable bit is set.
    pub prefetchable: bool,
}

/// A type-0 configuration space.
#[derive(Clone)]
pub struct PciConfiguration {
    regs: [u8; CONFIG_SPACE_SIZE],
    writable: [u8; CONFIG_SPACE_SIZE],
    bars: [Option<PciBar>; NUM_BARS],
    next_capability: usize,
    last_capability_next_ptr: usize,
}

impl PciConfiguration {
    /// A header with `header`'s identity, no BARs and no capabilities.
    pub fn new(header: PciHeader) -> Self {
        let mut c = PciConfiguration {
            regs: [0; CONFIG_SPACE_SIZE],
            writable: [0; CONFIG_SPACE_SIZE],
            bars: [None; NUM_BARS],
            next_capability: FIRST_CAPABILITY_OFFSET,
            last_capability_next_ptr: CAPABILITIES_POINTER,
        };
        c.set_u16(VENDOR_ID, header.vendor_id);
        c.set_u16(DEVICE_ID, header.device_id);
        c.regs[REVISION_ID] = header.revision_id;
        c.regs[PROG_IF] = header.prog_if;
        c.regs[SUBCLASS] = header.subclass;
        c.regs[CLASS_CODE] = header.class;
        c.set_u16(SUBSYSTEM_VENDOR_ID, header.subsystem_vendor_id);
        c.set_u16(SUBSYSTEM_ID, header.subsystem_id);
        c.writable[COMMAND..COMMAND + 2].copy_from_slice(&COMMAND_WRITABLE.to_le_bytes());
        c.writable[INTERRUPT_LINE] = 0xff;
        c
    }

    fn set_u16(&mut self, offset: usize, v: u16) {
        self.regs[offset..offset + 2].copy_from_slice(&v.to_le_bytes());
    }

    fn set_u32(&mut self, offset: usize, v: u32) {
        self.regs[offset..offset + 4].copy_from_slice(&v.to_le_bytes());
    }

    /// The 16-bit register at `offset` (a constant of this module, in range).
    pub fn read_u16(&self, offset: usize) -> u16 {
        let mut b = [0u8; 2];
        self.read(offset as u64, &mut b);
        u16::from_le_bytes(b)
    }

    /// The 32-bit register at `offset`.
    pub fn read_u32(&self, offset: usize) -> u32 {
        let mut b = [0u8; 4];
        self.read(offset as u64, &mut b);
        u32::from_le_bytes(b)
    }

    /// Declares a memory BAR. Done by the VMM when it builds the device.
    pub fn add_bar(&mut self, bar: PciBar) -> Result<(), PciError> {
        let slots = match bar.kind {
            BarKind::Memory32 => 1,
            BarKind::Memory64 => 2,
        };
        let max_size = match bar.kind {
            BarKind::Memory32 => 1 << 31,
            BarKind::Memory64 => 1 << 62,
        };
        if bar.index + slots > NUM_BARS
            || !bar.size.is_power_of_two()
            || bar.size < MIN_BAR_SIZE
            || bar.size > max_size
            || self.bars[bar.index..bar.index + slots]
                .iter()
                .any(Option::is_some)
            || (bar.index > 0
                && self.bars[bar.index - 1].is_some_and(|b| b.kind == BarKind::Memory64))
        {
            return Err(PciError::InvalidBar(bar.index));
        }
        let mut flags = 0;
        if bar.kind == BarKind::Memory64 {
            flags |= BAR_MEM_TYPE_64;
        }
        if bar.prefetchable {
            flags |= BAR_MEM_PREFETCHABLE;
        }
        let mask = !(bar.size - 1);
        let reg = BAR0 + bar.index * 4;
        self.set_u32(reg, flags);
        self.writable[reg..reg + 4]
            .copy_from_slice(&((mask as u32) & !BAR_MEM_FLAGS_MASK).to_le_bytes());
        if bar.kind == BarKind::Memory64 {
            self.writable[reg + 4..reg + 8].copy_from_slice(&((mask >> 32) as u32).to_le_bytes());
        }
        self.bars[bar.index] = Some(bar);
        Ok(())
    }

    /// The BARs declared with [`add_bar`](Self::add_bar).
    pub fn bars(&self) -> impl Iterator<Item = PciBar> + '_ {
        self.bars.iter().flatten().copied()
    }

    /// Programs the address of BAR `index` (the VMM's initial placement;
    /// the guest may move it later). Bits below the BAR size are dropped.
    pub fn set_bar_address(&mut self, index: usize, address: u64) -> Result<(), PciError> {
        let bar = self
            .bars
            .get(index)
            .copied()
            .flatten()
            .ok_or(PciError::InvalidBar(index))?;
        if address & (bar.size - 1) != 0
            || (bar.kind == BarKind::Memory32
                && address
                    .checked_add(bar.size)
                    .is_none_or(|end| end > 1 << 32))
        {
            return Err(PciError::InvalidBar(index));
        }
        let reg = BAR0 + index * 4;
        let flags = self.read_u32(reg) & BAR_MEM_FLAGS_MASK;
        self.set_u32(reg, address as u32 & !BAR_MEM_FLAGS_MASK | flags);
        if bar.kind == BarKind::Memory64 {
            self.set_u32(reg + 4, (address >> 32) as u32);
        }
        Ok(())
    }

    /// The address BAR `index` currently holds, as the guest programmed it.
    pub fn bar_address(&self, index: usize) -> Option<u64> {
        let bar = self.bars.get(index).copied().flatten()?;
        let reg = BAR0 + index * 4;
        let low = u64::from(self.read_u32(reg) & !BAR_MEM_FLAGS_MASK);
        let high = match bar.kind {
            BarKind::Memory32 => 0,
            BarKind::Memory64 => u64::from(self.read_u32(reg + 4)),
        };
        Some(high << 32 | low)
    }

    /// Whether the guest enabled memory decoding (command bit 1).
    pub fn memory_enabled(&self) -> bool {
        self.read_u16(COMMAND) & COMMAND_MEMORY_SPACE != 0
    }

    /// Appends a capability: `id`, the next pointer (filled in here), then
    /// `body`. `writable` masks which bits of `body` the guest may change
    /// (same length as `body`, or empty for read-only). Returns the
    /// capability's offset in configuration space.
    pub fn add_capability(
        &mut self,
        id: u8,
        body: &[u8],
        writable: &[u8],
    ) -> Result<usize, PciError> {
        if !writable.is_empty() && writable.len() != body.len() {
            return Err(PciError::CapabilityMask);
        }
        let offset = self.next_capability;
        let len = 2 + body.len();
        let end = offset + len;
        if end > CONFIG_SPACE_SIZE {
            return Err(PciError::CapabilitySpaceFull);
        }
        self.regs[offset] = id;
        self.regs[offset + 1] = 0;
        self.regs[offset + 2..end].copy_from_slice(body);
        if !writable.is_empty() {
            self.writable[offset + 2..end].copy_from_slice(writable);
        }
        self.regs[self.last_capability_next_ptr] = offset as u8;
        self.last_capability_next_ptr = offset + 1;
        self.next_capability = end.next_multiple_of(4);
        let status = self.read_u16(STATUS) | STATUS_CAPABILITIES_LIST;
        self.set_u16(STATUS, status);
        Ok(offset)
    }

    /// Reads `data.len()` bytes at `offset`. Bytes beyond the conventional
    /// space but inside the extended space read as zero; bytes beyond that
    /// read as ones.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let at = offset.saturating_add(i as u64);
            *b = match usize::try_from(at) {
                Ok(at) if at < CONFIG_SPACE_SIZE => self.regs[at],
                Ok(at) if at < EXTENDED_CONFIG_SPACE_SIZE => 0,
                _ => 0xff,
            };
        }
    }

    /// Writes `data` at `offset`, changing only the bits the write mask
    /// allows. Writes outside the conventional space are dropped.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        for (i, &v) in data.iter().enumerate() {
            let Some(at) = offset
                .checked_add(i as u64)
                .and_then(|at| usize::try_from(at).ok())
                .filter(|&at| at < CONFIG_SPACE_SIZE)
            else {
                continue;
            };
            let mask = self.writable[at];
            self.regs[at] = (self.regs[at] & !mask) | (v & mask);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn header() -> PciHeader {
        PciHeader {
            vendor_id: 0x1af4,
            device_id: 0x1042,
            revision_id: 1,
            class: CLASS_MASS_STORAGE,
            subclass: SUBCLASS_STORAGE_OTHER,
            prog_if: 0,
            subsystem_vendor_id: 0x1af4,
            subsystem_id: 0x40,
        }
    }

    #[test]
    fn identity_is_read_only() {
        let mut c = PciConfiguration::new(header());
        assert_eq!(c.read_u32(VENDOR_ID), 0x1042_1af4);
        c.write(0, &[0, 0, 0, 0]);
        assert_eq!(c.read_u32(VENDOR_ID), 0x1042_1af4);
        assert_eq!(c.read_u32(0x08), 0x0180_0001);
        assert_eq!(c.read_u16(SUBSYSTEM_ID), 0x40);
    }

    #[test]
    fn command_keeps_only_defined_bits() {
        let mut c = PciConfiguration::new(header());
        c.write(COMMAND as u64, &[0xff, 0xff]);
        assert_eq!(c.read_u16(COMMAND), COMMAND_WRITABLE);
        assert!(c.memory_enabled());
        // The status register is read-only.
        c.write(STATUS as u64, &[0xff, 0xff]);
        assert_eq!(c.read_u16(STATUS), 0);
    }

    #[test]
    fn bar32_size_probe_and_reprogramming() {
        let mut c = PciConfiguration::new(header());
        c.add_bar(PciBar {
            index: 1,
            size: 0x4000,
            kind: BarKind::Memory32,
            prefetchable: false,
        })
        .unwrap();
        c.set_bar_address(1, 0xc000_4000).unwrap();
        let reg = (BAR0 + 4) as u64;
        c.write(reg, &u32::MAX.to_le_bytes());
        assert_eq!(c.read_u32(BAR0 + 4), 0xffff_c000);
        let size = !(c.read_u32(BAR0 + 4) & !0xf) + 1;
        assert_eq!(size, 0x4000);
        c.write(reg, &0xd000_0000u32.to_le_bytes());
        assert_eq!(c.bar_address(1), Some(0xd000_0000));
        // A misaligned address is truncated to the BAR's alignment.
        c.write(reg, &0xd000_1234u32.to_le_bytes());
        assert_eq!(c.bar_address(1), Some(0xd000_0000));
        // Unused BARs read as zero and ignore the probe.
        c.write(BAR0 as u64, &u32::MAX.to_le_bytes());
        assert_eq!(c.read_u32(BAR0), 0);
    }

    #[test]
    fn bar64_size_probe() {
        let mut c = PciConfiguration::new(header());
        c.add_bar(PciBar {
            index: 0,
            size: 0x8000,
            kind: BarKind::Memory64,
            prefetchable: true,
        })
        .unwrap();
        c.set_bar_address(0, 0x1_0000_0000).unwrap();
        assert_eq!(c.read_u32(BAR0), 0xc);
        assert_eq!(c.read_u32(BAR0 + 4), 1);
        c.write(BAR0 as u64, &u32::MAX.to_le_bytes());
        c.write(BAR0 as u64 + 4, &u32::MAX.to_le_bytes());
        let low = u64::from(c.read_u32(BAR0) & !0xf);
        let high = u64::from(c.read_u32(BAR0 + 4));
        assert_eq!(!(high << 32 | low) + 1, 0x8000);
        assert_eq!(c.read_u32(BAR0) & 0xf, 0xc);
    }

    #[test]
    fn bad_bars_are_rejected() {
        let mut c = PciConfiguration::new(header());
        let bar = |index, size, kind| PciBar {
            index,
            size,
            kind,
            prefetchable: false,
        };
        assert!(c.add_bar(bar(0, 0x3000, BarKind::Memory32)).is_err());
        assert!(c.add_bar(bar(0, 8, BarKind::Memory32)).is_err());
        assert!(c.add_bar(bar(5, 0x1000, BarKind::Memory64)).is_err());
        assert!(c.add_bar(bar(6, 0x1000, BarKind::Memory32)).is_err());
        c.add_bar(bar(2, 0x1000, BarKind::Memory64)).unwrap();
        assert!(c.add_bar(bar(3, 0x1000, BarKind::Memory32)).is_err());
        assert!(c.add_bar(bar(2, 0x1000, BarKind::Memory32)).is_err());
        assert!(c.set_bar_address(2, 0x1001).is_err());
        assert!(c.set_bar_address(0, 0x1000).is_err());
        c.add_bar(bar(0, 0x1000, BarKind::Memory32)).unwrap();
        assert!(c.set_bar_address(0, 0xffff_f000).is_ok());
        assert!(c.set_bar_address(0, 0x1_0000_0000).is_err());
    }

    #[test]
    fn capability_list_is_linked() {
        let mut c = PciConfiguration::new(header());
        let a = c.add_capability(0x09, &[1, 2, 3], &[]).unwrap();
        let b = c.add_capability(0x11, &[0; 10], &[0xff; 10]).unwrap();
        assert_eq!(a, 0x40);
        assert_eq!(b, 0x48);
        assert_ne!(c.read_u16(STATUS) & STATUS_CAPABILITIES_LIST, 0);
        assert_eq!(c.read_u32(CAPABILITIES_POINTER) & 0xff, 0x40);
        let mut cap = [0u8; 5];
        c.read(0x40, &mut cap);
        assert_eq!(cap, [0x09, 0x48, 1, 2, 3]);
        c.write(0x42, &[9, 9, 9]);
        c.read(0x40, &mut cap);
        assert_eq!(cap, [0x09, 0x48, 1, 2, 3]);
        c.write(0x4a, &[7]);
        assert_eq!(c.read_u16(0x48), 0x0011);
        assert_eq!(c.read_u16(0x4a), 7);
        assert!(c.add_capability(0x09, &[0; 200], &[]).is_err());
        assert!(c.add_capability(0x09, &[0; 2], &[0; 1]).is_err());
    }

    #[test]
    fn out_of_range_accesses_are_harmless() {
        let mut c = PciConfiguration::new(header());
        let mut b = [0u8; 4];
        c.read(0x100, &mut b);
        assert_eq!(b, [0; 4]);
        c.read(0xffe, &mut b);
        assert_eq!(b, [0, 0, 0xff, 0xff]);
        c.read(u64::MAX - 1, &mut b);
        assert_eq!(b, [0xff; 4]);
        c.write(u64::MAX - 1, &[1, 2, 3, 4]);
        c.write(0xfe, &[0xff; 8]);
        assert_eq!(c.read_u32(VENDOR_ID), 0x1042_1af4);
    }
}
