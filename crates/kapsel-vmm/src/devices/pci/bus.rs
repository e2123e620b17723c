//! The root PCI bus and the three ways the guest reaches it: configuration
//! cycles through the type-1 ports (0xCF8 address, 0xCFC data), through
//! ECAM (memory-mapped configuration space), and BAR accesses through the
//! MMIO windows.
//!
//! The bus is built once by the VMM and then shared read-only (`Arc`); the
//! only state that changes at run time is which address each BAR decodes,
//! kept in a map refreshed after every configuration write that touches a
//! BAR or the command register, so that BAR lookups never lock a device.

use super::config::{BarKind, BAR0, COMMAND, NUM_BARS};
use super::host_bridge::PciHostBridge;
use super::{PciDevice, PciError};
use crate::bus::BusDevice;
use std::sync::{Arc, Mutex, RwLock};
use vm_allocator::{AddressAllocator, AllocPolicy};

/// Devices on one bus.
pub const DEVICES_PER_BUS: u8 = 32;
/// Functions per device.
pub const FUNCTIONS_PER_DEVICE: u8 = 8;

/// Ports decoded by [`PciConfigIo`]: 0xCF8–0xCFF.
pub const PCI_CONFIG_IO_PORT: u16 = 0xcf8;
/// Number of ports from [`PCI_CONFIG_IO_PORT`].
pub const PCI_CONFIG_IO_PORT_COUNT: u64 = 8;
/// Offset of the data window within the type-1 ports.
const CONFIG_DATA_OFFSET: u64 = 4;
/// Type-1 address register: enable bit.
const CONFIG_ADDRESS_ENABLE: u32 = 1 << 31;
/// Type-1 address register: the dword-aligned register number.
const CONFIG_ADDRESS_REGISTER_MASK: u32 = 0xfc;

/// Bytes of ECAM space per bus (32 devices x 8 functions x 4 KiB).
pub const ECAM_BUS_SIZE: u64 = 1 << 20;
/// ECAM space for all 256 buses.
pub const ECAM_SIZE: u64 = 256 * ECAM_BUS_SIZE;

/// Where a function sits: bus, device, function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PciAddress {
    /// Bus number.
    pub bus: u8,
    /// Device number (0..32).
    pub device: u8,
    /// Function number (0..8).
    pub function: u8,
}

impl PciAddress {
    /// Decodes an ECAM offset into (address, register).
    pub fn from_ecam_offset(offset: u64) -> (Self, u64) {
        (
            PciAddress {
                bus: (offset >> 20) as u8,
                device: ((offset >> 15) & 0x1f) as u8,
                function: ((offset >> 12) & 0x7) as u8,
            },
            offset & 0xfff,
        )
    }

    /// The ECAM offset of `register` of this function.
    pub fn ecam_offset(&self, register: u64) -> u64 {
        u64::from(self.bus) << 20
            | u64::from(self.device & 0x1f) << 15
            | u64::from(self.function & 0x7) << 12
            | (register & 0xfff)
    }
}

impl std::fmt::Display for PciAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:02x}:{:02x}.{}", self.bus, self.device, self.function)
    }
}

/// A range of guest-physical addresses from which BARs are allocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciWindow {
    /// First address.
    pub base: u64,
    /// Size in bytes.
    pub size: u64,
}

/// A shared PCI function.
pub type SharedPciDevice = Arc<Mutex<dyn PciDevice>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BarMapping {
    start: u64,
    size: u64,
    slot: u8,
    bar: usize,
}

/// The root bus (bus 0, function 0 of each device only).
pub struct PciBus {
    slots: Vec<Option<SharedPciDevice>>,
    bar_map: RwLock<Vec<BarMapping>>,
    mem32: AddressAllocator,
    mem64: Option<AddressAllocator>,
}

fn lock(dev: &SharedPciDevice) -> std::sync::MutexGuard<'_, dyn PciDevice + 'static> {
    dev.lock().unwrap_or_else(|e| e.into_inner())
}

impl PciBus {
    /// A bus with the host bridge at 00:00.0. 32-bit BARs are placed in
    /// `mem32` (below 4 GiB); 64-bit BARs in `mem64` when given, else in
    /// `mem32`.
    pub fn new(mem32: PciWindow, mem64: Option<PciWindow>) -> Result<Self, PciError> {
        let allocator = |w: PciWindow| {
            AddressAllocator::new(w.base, w.size).map_err(|_| PciError::InvalidWindow {
                base: w.base,
                size: w.size,
            })
        };
        if mem32
            .base
            .checked_add(mem32.size)
            .is_none_or(|end| end > 1 << 32)
        {
            return Err(PciError::InvalidWindow {
                base: mem32.base,
                size: mem32.size,
            });
        }
        let mut bus = PciBus {
            slots: vec![None; usize::from(DEVICES_PER_BUS)],
            bar_map: RwLock::new(Vec::new()),
            mem32: allocator(mem32)?,
            mem64: mem64.map(allocator).transpose()?,
        };
        bus.add_device(Arc::new(Mutex::new(PciHostBridge::new())))?;
        Ok(bus)
    }

    /// Puts `device` in the first free slot and places its BARs in the
    /// windows (naturally aligned). Memory decoding stays off until the
    /// guest enables it in the command register.
    pub fn add_device(&mut self, device: SharedPciDevice) -> Result<PciAddress, PciError> {
        let slot = self
            .slots
            .iter()
            .position(Option::is_none)
            .ok_or(PciError::BusFull)?;
        {
            let mut dev = lock(&device);
            let bars: Vec<_> = dev.config().bars().collect();
            for bar in bars {
                let window = match (bar.kind, self.mem64.as_mut()) {
                    (BarKind::Memory64, Some(w)) => w,
                    _ => &mut self.mem32,
                };
                let range = window
                    .allocate(bar.size, bar.size, AllocPolicy::FirstMatch)
                    .map_err(|_| PciError::WindowFull { size: bar.size })?;
                // Going through the guest-visible path keeps one code path
                // for BAR programming.
                let reg = (BAR0 + bar.index * 4) as u64;
                let addr = range.start();
                dev.write_config(reg, &(addr as u32).to_le_bytes());
                if bar.kind == BarKind::Memory64 {
                    dev.write_config(reg + 4, &((addr >> 32) as u32).to_le_bytes());
                }
            }
        }
        self.slots[slot] = Some(device);
        self.refresh_bars(slot as u8);
        Ok(PciAddress {
            bus: 0,
            device: slot as u8,
            function: 0,
        })
    }

    fn device(&self, addr: PciAddress) -> Option<&SharedPciDevice> {
        if addr.bus != 0 || addr.function != 0 {
            return None;
        }
        self.slots.get(usize::from(addr.device))?.as_ref()
    }

    /// The device at `addr`, if any.
    pub fn device_at(&self, addr: PciAddress) -> Option<SharedPciDevice> {
        self.device(addr).cloned()
    }

    /// Reads configuration space of `addr` at `register`; an absent
    /// function reads as all ones (vendor 0xffff: "no device").
    pub fn read_config(&self, addr: PciAddress, register: u64, data: &mut [u8]) {
        match self.device(addr) {
            Some(dev) => lock(dev).read_config(register, data),
            None => data.fill(0xff),
        }
    }

    /// Writes configuration space of `addr` at `register`.
    pub fn write_config(&self, addr: PciAddress, register: u64, data: &[u8]) {
        let Some(dev) = self.device(addr) else {
            return;
        };
        lock(dev).write_config(register, data);
        let end = register.saturating_add(data.len() as u64);
        let touches =
            |start: usize, len: usize| register < (start + len) as u64 && end > start as u64;
        if touches(COMMAND, 2) || touches(BAR0, NUM_BARS * 4) {
            self.refresh_bars(addr.device);
        }
    }

    fn refresh_bars(&self, slot: u8) {
        let mut fresh = Vec::new();
        if let Some(dev) = self.slots.get(usize::from(slot)).and_then(Option::as_ref) {
            let dev = lock(dev);
            let config = dev.config();
            if config.memory_enabled() {
                for bar in config.bars() {
                    if let Some(start) = config.bar_address(bar.index) {
                        // A BAR the guest moved so that it wraps decodes nothing.
                        if start.checked_add(bar.size).is_some() {
                            fresh.push(BarMapping {
                                start,
                                size: bar.size,
                                slot,
                                bar: bar.index,
                            });
                        }
                    }
                }
            }
        }
        let mut map = self.bar_map.write().unwrap_or_else(|e| e.into_inner());
        map.retain(|m| m.slot != slot);
        map.extend(fresh);
    }

    /// The device, BAR index and offset inside the BAR that decode
    /// `[addr, addr + len)`, if a BAR with memory decoding enabled covers it
    /// entirely. When the guest made BARs overlap, the lowest slot wins.
    pub fn find_bar(&self, addr: u64, len: usize) -> Option<(SharedPciDevice, usize, u64)> {
        let end = addr.checked_add(len as u64)?;
        let map = self.bar_map.read().unwrap_or_else(|e| e.into_inner());
        let m = map
            .iter()
            .filter(|m| addr >= m.start && end <= m.start + m.size)
            .min_by_key(|m| m.slot)?;
        let dev = self.slots.get(usize::from(m.slot))?.clone()?;
        Some((dev, m.bar, addr - m.start))
    }
}

/// Whether a configuration access of `len` bytes at `register` stays inside
/// one dword, as both access mechanisms require.
fn valid_config_access(register: u64, len: usize) -> bool {
    matches!(len, 1 | 2 | 4)
        && (register % 4) + len as u64 <= 4
        && register.is_multiple_of(len as u64)
}

/// The type-1 configuration mechanism: ports 0xCF8–0xCFF on the port bus.
///
/// Ports 0xCF8–0xCFB are the 32-bit address register (only dword accesses
/// reach it; a byte write to 0xCF9, the PIIX reset control register, is
/// ignored), 0xCFC–0xCFF the data window into the selected dword.
pub struct PciConfigIo {
    bus: Arc<PciBus>,
    address: u32,
    reset: Option<(Arc<crate::exit::ExitSignal>, u8)>,
}

impl PciConfigIo {
    /// Serves `bus` through the type-1 ports.
    pub fn new(bus: Arc<PciBus>) -> Self {
        PciConfigIo {
            bus,
            address: 0,
            reset: None,
        }
    }

    /// Also decodes the reset control register at 0xCF9 (firmware boots),
    /// resetting the VM through `exit`.
    pub fn with_reset_control(mut self, exit: Arc<crate::exit::ExitSignal>) -> Self {
        self.reset = Some((exit, 0));
        self
    }

    fn target(&self, offset: u64, len: usize) -> Option<(PciAddress, u64)> {
        if self.address & CONFIG_ADDRESS_ENABLE == 0 {
            return None;
        }
        let register = u64::from(self.address & CONFIG_ADDRESS_REGISTER_MASK)
            + offset.checked_sub(CONFIG_DATA_OFFSET)?;
        if !valid_config_access(register, len) {
            return None;
        }
        let a = self.address;
        Some((
            PciAddress {
                bus: (a >> 16) as u8,
                device: ((a >> 11) & 0x1f) as u8,
                function: ((a >> 8) & 0x7) as u8,
            },
            register,
        ))
    }
}

impl BusDevice for PciConfigIo {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let (RESET_CONTROL_OFFSET, 1, Some((_, value))) = (offset, data.len(), &self.reset) {
            data[0] = *value;
            return;
        }
        if offset == 0 && data.len() == 4 {
            data.copy_from_slice(&self.address.to_le_bytes());
            return;
        }
        match self.target(offset, data.len()) {
            Some((addr, register)) => self.bus.read_config(addr, register, data),
            None => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (RESET_CONTROL_OFFSET, &[v], Some((exit, value))) = (offset, data, &mut self.reset) {
            *value = v & RESET_CONTROL_MASK;
            if v & RESET_CONTROL_RESET_CPU != 0 {
                exit.raise(crate::exit::VmExit::Reset);
            }
            return;
        }
        if offset == 0 && data.len() == 4 {
            let mut b = [0u8; 4];
            b.copy_from_slice(data);
            self.address = u32::from_le_bytes(b);
            return;
        }
        if let Some((addr, register)) = self.target(offset, data.len()) {
            self.bus.write_config(addr, register, data);
        }
    }
}

/// The PIIX3/ICH reset control register inside the type-1 ports (0xCF9):
/// bit 2 set resets the machine (bit 1 chooses hard over soft reset; both
/// are one reset here). SeaBIOS's `pci_reboot` and OVMF's `ResetCold` use
/// it.
const RESET_CONTROL_OFFSET: u64 = 1;
const RESET_CONTROL_RESET_CPU: u8 = 1 << 2;
const RESET_CONTROL_MASK: u8 = 0x0e;

/// ECAM (PCI Express enhanced configuration access): an MMIO device of up
/// to [`ECAM_SIZE`] bytes; offset = bus << 20 | device << 15 | function << 12
/// | register.
pub struct PciConfigMmio {
    bus: Arc<PciBus>,
}

impl PciConfigMmio {
    /// Serves `bus` through ECAM.
    pub fn new(bus: Arc<PciBus>) -> Self {
        PciConfigMmio { bus }
    }
}

impl BusDevice for PciConfigMmio {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let (addr, register) = PciAddress::from_ecam_offset(offset);
        if offset < ECAM_SIZE && valid_config_access(register, data.len()) {
            self.bus.read_config(addr, register, data);
        } else {
            data.fill(0xff);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let (addr, register) = PciAddress::from_ecam_offset(offset);
        if offset < ECAM_SIZE && valid_config_access(register, data.len()) {
            self.bus.write_config(addr, register, data);
        }
    }
}

/// A window of guest-physical MMIO space in which BARs live. Every access
/// is routed to the BAR that currently decodes it (the guest may move
/// BARs); an access no BAR decodes reads as ones.
pub struct PciMmioWindow {
    bus: Arc<PciBus>,
    base: u64,
}

impl PciMmioWindow {
    /// Serves BARs of `bus` for a window that the MMIO bus maps at `base`.
    pub fn new(bus: Arc<PciBus>, base: u64) -> Self {
        PciMmioWindow { bus, base }
    }
}

impl BusDevice for PciMmioWindow {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let found = self
            .base
            .checked_add(offset)
            .and_then(|addr| self.bus.find_bar(addr, data.len()));
        match found {
            Some((dev, bar, off)) => lock(&dev).read_bar(bar, off, data),
            None => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let found = self
            .base
            .checked_add(offset)
            .and_then(|addr| self.bus.find_bar(addr, data.len()));
        if let Some((dev, bar, off)) = found {
            lock(&dev).write_bar(bar, off, data);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::pci::config::{
        tests::header, PciBar, PciConfiguration, COMMAND_MEMORY_SPACE, VENDOR_ID,
    };

    /// A device with one BAR that stores the last byte written at each offset.
    struct Scratch {
        config: PciConfiguration,
        mem: Vec<u8>,
    }

    impl Scratch {
        fn new(kind: BarKind, size: u64) -> Self {
            let mut config = PciConfiguration::new(header());
            config
                .add_bar(PciBar {
                    index: 0,
                    size,
                    kind,
                    prefetchable: false,
                })
                .unwrap();
            Scratch {
                config,
                mem: vec![0; size as usize],
            }
        }
    }

    impl PciDevice for Scratch {
        fn config(&self) -> &PciConfiguration {
            &self.config
        }
        fn write_config(&mut self, offset: u64, data: &[u8]) {
            self.config.write(offset, data);
        }
        fn read_bar(&mut self, _bar: usize, offset: u64, data: &mut [u8]) {
            let o = offset as usize;
            data.copy_from_slice(&self.mem[o..o + data.len()]);
        }
        fn write_bar(&mut self, _bar: usize, offset: u64, data: &[u8]) {
            let o = offset as usize;
            self.mem[o..o + data.len()].copy_from_slice(data);
        }
    }

    const MEM32: PciWindow = PciWindow {
        base: 0xc000_0000,
        size: 0x2000_0000,
    };
    const MEM64: PciWindow = PciWindow {
        base: 0x100_0000_0000,
        size: 0x10_0000_0000,
    };

    fn bus_with(dev: Scratch) -> (Arc<PciBus>, PciAddress) {
        let mut bus = PciBus::new(MEM32, Some(MEM64)).unwrap();
        let addr = bus.add_device(Arc::new(Mutex::new(dev))).unwrap();
        (Arc::new(bus), addr)
    }

    fn cf8(addr: PciAddress, register: u32) -> [u8; 4] {
        (CONFIG_ADDRESS_ENABLE
            | u32::from(addr.bus) << 16
            | u32::from(addr.device) << 11
            | u32::from(addr.function) << 8
            | register)
            .to_le_bytes()
    }

    #[test]
    fn host_bridge_is_at_00_00_0() {
        let (bus, addr) = bus_with(Scratch::new(BarKind::Memory32, 0x1000));
        assert_eq!(addr.to_string(), "00:01.0");
        let mut io = PciConfigIo::new(bus);
        io.write(
            0,
            &cf8(
                PciAddress {
                    bus: 0,
                    device: 0,
                    function: 0,
                },
                0,
            ),
        );
        let mut v = [0u8; 4];
        io.read(4, &mut v);
        assert_eq!(u32::from_le_bytes(v), 0x0008_1b36);
        io.read(0, &mut v);
        assert_eq!(
            v,
            cf8(
                PciAddress {
                    bus: 0,
                    device: 0,
                    function: 0
                },
                0
            )
        );
    }

    #[test]
    fn type1_and_ecam_reach_the_same_register() {
        let (bus, addr) = bus_with(Scratch::new(BarKind::Memory32, 0x1000));
        let mut io = PciConfigIo::new(bus.clone());
        let mut ecam = PciConfigMmio::new(bus);
        // Write the interrupt line through type-1 (byte access at 0xCFC + 0).
        io.write(0, &cf8(addr, 0x3c));
        io.write(4, &[0x0b]);
        let mut b = [0u8; 1];
        ecam.read(addr.ecam_offset(0x3c), &mut b);
        assert_eq!(b[0], 0x0b);
        // And back: write through ECAM, read with a word access at 0xCFE.
        ecam.write(addr.ecam_offset(0x04), &[0x06, 0x00, 0, 0]);
        io.write(0, &cf8(addr, 0x04));
        let mut w = [0u8; 2];
        io.read(4, &mut w);
        assert_eq!(u16::from_le_bytes(w), 0x6);
        let mut v = [0u8; 4];
        ecam.read(addr.ecam_offset(VENDOR_ID as u64), &mut v);
        assert_eq!(u32::from_le_bytes(v), 0x1042_1af4);
        io.read(6, &mut w);
        assert_eq!(w, [0, 0]);
    }

    #[test]
    fn absent_functions_read_all_ones() {
        let (bus, addr) = bus_with(Scratch::new(BarKind::Memory32, 0x1000));
        let mut ecam = PciConfigMmio::new(bus.clone());
        let mut v = [0u8; 4];
        for a in [
            PciAddress {
                bus: 0,
                device: 31,
                function: 0,
            },
            PciAddress {
                bus: 1,
                device: 0,
                function: 0,
            },
            PciAddress {
                function: 1,
                ..addr
            },
        ] {
            ecam.read(a.ecam_offset(0), &mut v);
            assert_eq!(v, [0xff; 4]);
            ecam.write(a.ecam_offset(4), &[0xff; 4]);
        }
        // Disabled type-1 address, misaligned and odd-sized accesses.
        let mut io = PciConfigIo::new(bus);
        io.write(0, &0x0000_0800u32.to_le_bytes());
        io.read(4, &mut v);
        assert_eq!(v, [0xff; 4]);
        io.write(0, &cf8(addr, 0));
        io.read(5, &mut v);
        assert_eq!(v, [0xff; 4]);
        let mut b3 = [0u8; 3];
        io.read(4, &mut b3);
        assert_eq!(b3, [0xff; 3]);
        io.write(1, &[0x06]); // 0xCF9 reset control: ignored
        io.read(0, &mut v);
        assert_eq!(v, cf8(addr, 0));
        let mut big = [0u8; 8];
        ecam.read(addr.ecam_offset(0), &mut big);
        assert_eq!(big, [0xff; 8]);
        ecam.read(ECAM_SIZE, &mut v);
        assert_eq!(v, [0xff; 4]);
    }

    #[test]
    fn bars_are_allocated_and_decoded_only_when_enabled() {
        let (bus, addr) = bus_with(Scratch::new(BarKind::Memory64, 0x4000));
        let mut ecam = PciConfigMmio::new(bus.clone());
        let mut window = PciMmioWindow::new(bus.clone(), MEM64.base);
        let mut lo = [0u8; 4];
        let mut hi = [0u8; 4];
        ecam.read(addr.ecam_offset(0x10), &mut lo);
        ecam.read(addr.ecam_offset(0x14), &mut hi);
        let bar =
            u64::from(u32::from_le_bytes(hi)) << 32 | u64::from(u32::from_le_bytes(lo) & !0xf);
        assert_eq!(bar, MEM64.base);
        let mut v = [0u8; 4];
        // Decoding is off: writes are dropped, reads float.
        window.write(0x10, &[1, 2, 3, 4]);
        window.read(0x10, &mut v);
        assert_eq!(v, [0xff; 4]);
        ecam.write(addr.ecam_offset(0x04), &COMMAND_MEMORY_SPACE.to_le_bytes());
        window.write(0x10, &[1, 2, 3, 4]);
        window.read(0x10, &mut v);
        assert_eq!(v, [1, 2, 3, 4]);
        // Straddling the end of the BAR is not routed.
        window.read(0x3ffe, &mut v);
        assert_eq!(v, [0xff; 4]);
        window.read(u64::MAX - 1, &mut v);
        assert_eq!(v, [0xff; 4]);
    }

    #[test]
    fn guest_can_move_a_bar() {
        let (bus, addr) = bus_with(Scratch::new(BarKind::Memory32, 0x1000));
        let mut ecam = PciConfigMmio::new(bus.clone());
        let mut window = PciMmioWindow::new(bus.clone(), MEM32.base);
        ecam.write(addr.ecam_offset(0x04), &COMMAND_MEMORY_SPACE.to_le_bytes());
        window.write(0, &[0xaa]);
        // Size probe, then move to base + 0x10000.
        ecam.write(addr.ecam_offset(0x10), &u32::MAX.to_le_bytes());
        let mut v = [0u8; 4];
        ecam.read(addr.ecam_offset(0x10), &mut v);
        assert_eq!(u32::from_le_bytes(v), 0xffff_f000);
        ecam.write(
            addr.ecam_offset(0x10),
            &(MEM32.base as u32 + 0x10000).to_le_bytes(),
        );
        let mut b = [0u8; 1];
        window.read(0, &mut b);
        assert_eq!(b[0], 0xff);
        window.read(0x10000, &mut b);
        assert_eq!(b[0], 0xaa);
        let (_, bar, off) = bus.find_bar(MEM32.base + 0x10004, 4).unwrap();
        assert_eq!((bar, off), (0, 4));
    }

    #[test]
    fn window_exhaustion_and_full_bus_are_errors() {
        let mut bus = PciBus::new(
            PciWindow {
                base: 0xc000_0000,
                size: 0x2000,
            },
            None,
        )
        .unwrap();
        bus.add_device(Arc::new(Mutex::new(Scratch::new(
            BarKind::Memory64,
            0x2000,
        ))))
        .unwrap();
        assert_eq!(
            bus.add_device(Arc::new(Mutex::new(Scratch::new(
                BarKind::Memory32,
                0x1000
            )))),
            Err(PciError::WindowFull { size: 0x1000 })
        );
        let mut bus = PciBus::new(MEM32, None).unwrap();
        for _ in 1..DEVICES_PER_BUS {
            bus.add_device(Arc::new(Mutex::new(Scratch::new(
                BarKind::Memory32,
                0x1000,
            ))))
            .unwrap();
        }
        assert_eq!(
            bus.add_device(Arc::new(Mutex::new(Scratch::new(
                BarKind::Memory32,
                0x1000
            )))),
            Err(PciError::BusFull)
        );
        assert!(PciBus::new(
            PciWindow {
                base: 0xffff_f000,
                size: 0x2000
            },
            None
        )
        .is_err());
        assert!(PciBus::new(MEM32, Some(PciWindow { base: 0, size: 0 })).is_err());
    }

    #[test]
    fn reset_control_resets_only_when_enabled() {
        let (bus, addr) = bus_with(Scratch::new(BarKind::Memory32, 0x1000));
        let exit = Arc::new(crate::exit::ExitSignal::new().unwrap());
        let mut io = PciConfigIo::new(bus).with_reset_control(exit.clone());
        io.write(0, &cf8(addr, 0));
        // SeaBIOS's pci_reboot: read, set bit 1, then bits 1 and 2.
        let mut b = [0u8];
        io.read(1, &mut b);
        assert_eq!(b[0], 0);
        io.write(1, &[b[0] | 2]);
        io.read(1, &mut b);
        assert_eq!(b[0], 2);
        assert!(!exit.is_raised());
        // The address register is untouched by byte accesses.
        let mut v = [0u8; 4];
        io.read(0, &mut v);
        assert_eq!(v, cf8(addr, 0));
        io.write(1, &[6]);
        assert_eq!(exit.reason(), Some(crate::exit::VmExit::Reset));
    }

    #[test]
    fn ecam_offsets_round_trip() {
        let a = PciAddress {
            bus: 3,
            device: 17,
            function: 5,
        };
        let (b, reg) = PciAddress::from_ecam_offset(a.ecam_offset(0x123));
        assert_eq!((b, reg), (a, 0x123));
    }
}
