//! Where things live in guest-physical memory and I/O space.
//!
//! Low memory (below 1 MiB) holds the boot structures; the kernel loads at
//! 1 MiB; RAM runs up to 3 GiB, where the 1 GiB MMIO hole (IOAPIC, LAPIC)
//! begins, and continues above 4 GiB.

/// GDT used for the initial CPU state.
pub const BOOT_GDT_START: u64 = 0x500;
/// An empty IDT for the initial CPU state.
pub const BOOT_IDT_START: u64 = 0x520;
/// PVH `hvm_start_info`.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH module list (the initrd).
pub const PVH_MODLIST_START: u64 = 0x6040;
/// PVH memory map.
pub const PVH_MEMMAP_START: u64 = 0x6080;
/// Linux zero page (`boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer for 64-bit Linux boot.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Page map level 4 of the boot identity map.
pub const PML4_START: u64 = 0x9000;
/// Page directory pointer table of the boot identity map.
pub const PDPTE_START: u64 = 0xa000;
/// First of four page directories (4 GiB identity map in 2 MiB pages).
pub const PDE_START: u64 = 0xb000;
/// The kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Longest command line Kapsel passes (PVH; Linux bzImage reports its own limit).
pub const CMDLINE_MAX_SIZE: usize = 0x10000;
/// End of conventional memory below the EBDA.
pub const EBDA_START: u64 = 0x9fc00;
/// Area for the ACPI tables (the old BIOS area, reserved in the e820 map).
pub const ACPI_START: u64 = 0xe0000;
/// End of the ACPI area: the firmware reset stub follows it.
pub const ACPI_END: u64 = RESET_VECTOR;
/// The real-mode reset vector F000:FFF0. Linux jumps here to reboot
/// through "the BIOS" (its fallback when ACPI is hardware-reduced and there
/// is no EFI); Kapsel places a stub there that resets through ACPI.
pub const RESET_VECTOR: u64 = 0xffff0;
/// Where kernels load: the start of high memory.
pub const HIMEM_START: u64 = 0x100000;
/// Start of the MMIO hole below 4 GiB.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// First address above the MMIO hole.
pub const MMIO_HOLE_END: u64 = 0x1_0000_0000;
/// The 32-bit PCI memory window (BARs), at the start of the MMIO hole.
pub const PCI_MMIO32_START: u64 = MMIO_HOLE_START;
/// Size of the 32-bit PCI memory window.
pub const PCI_MMIO32_SIZE: u64 = 0x2000_0000;
/// PCI Express enhanced configuration space (ECAM) of bus 0.
pub const PCI_ECAM_START: u64 = 0xe000_0000;
/// ECAM size: one bus (1 MiB).
pub const PCI_ECAM_SIZE: u64 = 1 << 20;
/// IOAPIC registers.
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// Local APIC registers.
pub const APIC_START: u64 = 0xfee0_0000;

/// COM1 (16550 UART).
pub const COM1_PORT: u16 = 0x3f8;
/// COM1's ISA interrupt.
pub const COM1_IRQ: u32 = 4;
/// i8042 data port.
pub const I8042_DATA_PORT: u16 = 0x60;
/// i8042 command/status port.
pub const I8042_COMMAND_PORT: u16 = 0x64;
/// CMOS/RTC index port (the data port follows it).
pub const CMOS_PORT: u16 = 0x70;
/// The RTC's ISA interrupt.
pub const RTC_IRQ: u32 = 8;
/// ACPI sleep control register (hardware-reduced ACPI; S5 = power off).
pub const ACPI_SLEEP_CONTROL_PORT: u16 = 0x3c0;
/// ACPI sleep status register.
pub const ACPI_SLEEP_STATUS_PORT: u16 = 0x3c1;
/// ACPI reset register.
pub const ACPI_RESET_PORT: u16 = 0x3c4;
/// Value the guest writes to the reset register.
pub const ACPI_RESET_VALUE: u8 = 0xa5;
/// The interrupt of the ACPI Generic Event Device (the power button).
pub const GED_GSI: u32 = 9;
/// pvpanic device (QEMU's ISA pvpanic, ACPI HID QEMU0001).
pub const PVPANIC_PORT: u16 = 0x505;

/// A type of e820 entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum E820Type {
    /// Usable RAM.
    Ram = 1,
    /// Reserved, not for the OS.
    Reserved = 2,
}

/// One entry of the guest's physical memory map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    /// Start address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// What the range is.
    pub kind: E820Type,
}

/// The RAM ranges `(start, len)` for `memory` bytes of guest memory.
pub fn ram_ranges(memory: u64) -> Vec<(u64, u64)> {
    if memory <= MMIO_HOLE_START {
        vec![(0, memory)]
    } else {
        vec![
            (0, MMIO_HOLE_START),
            (MMIO_HOLE_END, memory - MMIO_HOLE_START),
        ]
    }
}

/// The e820 map the guest sees for `memory` bytes of RAM.
pub fn e820_map(memory: u64) -> Vec<E820Entry> {
    let mut map = vec![
        E820Entry {
            addr: 0,
            size: EBDA_START,
            kind: E820Type::Ram,
        },
        E820Entry {
            addr: EBDA_START,
            size: HIMEM_START - EBDA_START,
            kind: E820Type::Reserved,
        },
    ];
    map.push(E820Entry {
        addr: PCI_ECAM_START,
        size: PCI_ECAM_SIZE,
        kind: E820Type::Reserved,
    });
    for (start, len) in ram_ranges(memory) {
        let (start, len) = if start == 0 {
            (HIMEM_START, len - HIMEM_START)
        } else {
            (start, len)
        };
        map.push(E820Entry {
            addr: start,
            size: len,
            kind: E820Type::Ram,
        });
    }
    map.sort_by_key(|e| e.addr);
    map
}

/// The end of RAM below the MMIO hole.
pub fn low_ram_end(memory: u64) -> u64 {
    memory.min(MMIO_HOLE_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_memory_is_one_range() {
        assert_eq!(ram_ranges(512 << 20), vec![(0, 512 << 20)]);
        let map = e820_map(512 << 20);
        assert_eq!(map.len(), 4);
        assert_eq!(map[0].addr, 0);
        assert_eq!(map[0].size, 0x9fc00);
        assert_eq!(map[1].kind, E820Type::Reserved);
        assert_eq!(map[2].addr, 0x100000);
        assert_eq!(map[2].addr + map[2].size, 512 << 20);
        assert_eq!(
            (map[3].addr, map[3].kind),
            (PCI_ECAM_START, E820Type::Reserved)
        );
        assert!(map.windows(2).all(|w| w[0].addr + w[0].size <= w[1].addr));
    }

    #[test]
    fn large_memory_skips_the_mmio_hole() {
        let mem = 6u64 << 30;
        assert_eq!(ram_ranges(mem), vec![(0, 3 << 30), (4 << 30, 3 << 30)]);
        let map = e820_map(mem);
        let ram: u64 = map
            .iter()
            .filter(|e| e.kind == E820Type::Ram)
            .map(|e| e.size)
            .sum();
        // Everything but the 384 KiB below 1 MiB that is not RAM.
        assert_eq!(ram, mem - (HIMEM_START - EBDA_START));
        assert!(map
            .iter()
            .filter(|e| e.kind == E820Type::Ram)
            .all(|e| e.addr + e.size <= MMIO_HOLE_START || e.addr >= MMIO_HOLE_END));
        assert_eq!(low_ram_end(mem), MMIO_HOLE_START);
    }

    #[test]
    fn fixed_structures_do_not_overlap() {
        let mut areas = [
            (BOOT_GDT_START, 0x20),
            (BOOT_IDT_START, 0x8),
            (PVH_INFO_START, 0x38),
            (PVH_MODLIST_START, 0x20),
            (PVH_MEMMAP_START, 0x18 * 8),
            (ZERO_PAGE_START, 0x1000),
            (PML4_START, 0x1000),
            (PDPTE_START, 0x1000),
            (PDE_START, 0x4000),
            (CMDLINE_START, CMDLINE_MAX_SIZE as u64),
            (ACPI_START, ACPI_END - ACPI_START),
        ];
        areas.sort();
        for w in areas.windows(2) {
            assert!(
                w[0].0 + w[0].1 <= w[1].0,
                "{:x?} overlaps {:x?}",
                w[0],
                w[1]
            );
        }
        const {
            assert!(CMDLINE_START + CMDLINE_MAX_SIZE as u64 <= EBDA_START);
            assert!(BOOT_STACK_POINTER < PML4_START);
            assert!(BOOT_STACK_POINTER > ZERO_PAGE_START + 0x1000);
        }
    }
}
