//! Initial CPU state: GDT and segments, the boot identity map, control
//! registers, MSRs, FPU and local APIC wiring.

use super::layout::*;
use crate::error::{Error, Result};
use crate::memory::GuestMem;
use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, Msrs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress};

const CR0_PE: u64 = 1 << 0;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// Page-table entry bits: present, writable, and (in a PDE) a 2 MiB page.
const PTE_PRESENT_RW: u64 = 0x3;
const PDE_HUGE: u64 = 0x80;

/// GDT access/flag words (bits 40..55 of a descriptor).
const GDT_CODE64: u16 = 0xa09b;
const GDT_CODE32: u16 = 0xc09b;
const GDT_DATA: u16 = 0xc093;
const GDT_TSS: u16 = 0x808b;

/// Selectors into the boot GDT.
const CODE_SELECTOR: u16 = 0x08;
const DATA_SELECTOR: u16 = 0x10;
const TSS_SELECTOR: u16 = 0x18;

/// How the boot vCPU starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryMode {
    /// 64-bit long mode with the identity map; RSI points at the zero page
    /// (Linux 64-bit boot protocol).
    Linux64,
    /// 32-bit protected mode, paging off; EBX points at `hvm_start_info`
    /// (PVH boot protocol).
    Pvh,
}

/// Encodes a segment descriptor.
pub fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let base = u64::from(base);
    let limit = u64::from(limit);
    let flags = u64::from(flags) & 0xf0ff;
    (limit & 0xffff)
        | ((base & 0xff_ffff) << 16)
        | (flags << 40)
        | ((limit & 0xf_0000) << 32)
        | ((base & 0xff00_0000) << 32)
}

/// Decodes a descriptor into the form KVM wants for a segment register.
pub fn segment_from_gdt(entry: u64, selector: u16) -> kvm_segment {
    let bit = |n: u32| ((entry >> n) & 1) as u8;
    let raw_limit = (entry & 0xffff) | ((entry >> 32) & 0xf_0000);
    let g = bit(55);
    let limit = if g == 1 {
        (raw_limit << 12) | 0xfff
    } else {
        raw_limit
    };
    kvm_segment {
        base: ((entry >> 16) & 0xff_ffff) | ((entry >> 32) & 0xff00_0000),
        limit: limit as u32,
        selector,
        type_: ((entry >> 40) & 0xf) as u8,
        s: bit(44),
        dpl: ((entry >> 45) & 3) as u8,
        present: bit(47),
        avl: bit(52),
        l: bit(53),
        db: bit(54),
        g,
        unusable: 1 - bit(47),
        padding: 0,
    }
}

/// The boot GDT for `mode`: null, code, data, TSS.
pub fn boot_gdt(mode: EntryMode) -> [u64; 4] {
    let code = match mode {
        EntryMode::Linux64 => GDT_CODE64,
        EntryMode::Pvh => GDT_CODE32,
    };
    [
        0,
        gdt_entry(code, 0, 0xfffff),
        gdt_entry(GDT_DATA, 0, 0xfffff),
        gdt_entry(GDT_TSS, 0, 0xfffff),
    ]
}

/// Writes a 4 GiB identity map (2 MiB pages) for the 64-bit boot protocol.
pub fn write_identity_map(mem: &GuestMem) -> Result<()> {
    let w = |val: u64, addr: u64| {
        mem.write_obj(val, GuestAddress(addr))
            .map_err(|e| Error::Memory(format!("page tables at {addr:#x}: {e}")))
    };
    w(PDPTE_START | PTE_PRESENT_RW, PML4_START)?;
    for dir in 0..4u64 {
        let pde_page = PDE_START + dir * 0x1000;
        w(pde_page | PTE_PRESENT_RW, PDPTE_START + dir * 8)?;
        for i in 0..512u64 {
            let phys = ((dir << 9) + i) << 21;
            w(phys | PTE_PRESENT_RW | PDE_HUGE, pde_page + i * 8)?;
        }
    }
    Ok(())
}

/// Sets segment and control registers of the boot vCPU for `mode`, and
/// writes the GDT and an empty IDT into guest memory.
pub fn setup_sregs(mem: &GuestMem, vcpu: &VcpuFd, mode: EntryMode) -> Result<()> {
    let gdt = boot_gdt(mode);
    for (i, entry) in gdt.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(BOOT_GDT_START + 8 * i as u64))
            .map_err(|e| Error::Memory(format!("GDT: {e}")))?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))
        .map_err(|e| Error::Memory(format!("IDT: {e}")))?;

    let mut sregs = vcpu
        .get_sregs()
        .map_err(|e| Error::kvm("KVM_GET_SREGS", e))?;
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(&gdt) - 1) as u16;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 7;
    let data = segment_from_gdt(gdt[2], DATA_SELECTOR);
    sregs.cs = segment_from_gdt(gdt[1], CODE_SELECTOR);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment_from_gdt(gdt[3], TSS_SELECTOR);
    apply_mode(&mut sregs, mode);
    vcpu.set_sregs(&sregs)
        .map_err(|e| Error::kvm("KVM_SET_SREGS", e))
}

/// Control registers and EFER for `mode`.
pub fn apply_mode(sregs: &mut kvm_sregs, mode: EntryMode) {
    match mode {
        EntryMode::Linux64 => {
            sregs.cr3 = PML4_START;
            sregs.cr4 |= CR4_PAE;
            sregs.cr0 |= CR0_PE | CR0_ET | CR0_PG;
            sregs.efer |= EFER_LME | EFER_LMA;
        }
        EntryMode::Pvh => {
            sregs.cr0 = (sregs.cr0 | CR0_PE | CR0_ET) & !CR0_PG;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
    }
}

/// General-purpose registers for the boot vCPU.
pub fn boot_regs(mode: EntryMode, entry: u64) -> kvm_regs {
    let mut regs = kvm_regs {
        rflags: 0x2,
        rip: entry,
        ..Default::default()
    };
    match mode {
        EntryMode::Linux64 => {
            regs.rsp = BOOT_STACK_POINTER;
            regs.rbp = BOOT_STACK_POINTER;
            regs.rsi = ZERO_PAGE_START;
        }
        EntryMode::Pvh => regs.rbx = PVH_INFO_START,
    }
    regs
}

/// MSR indices set at boot.
mod msr {
    pub const IA32_TSC: u32 = 0x10;
    pub const IA32_SYSENTER_CS: u32 = 0x174;
    pub const IA32_SYSENTER_ESP: u32 = 0x175;
    pub const IA32_SYSENTER_EIP: u32 = 0x176;
    pub const IA32_MISC_ENABLE: u32 = 0x1a0;
    pub const MTRR_DEF_TYPE: u32 = 0x2ff;
    pub const STAR: u32 = 0xc000_0081;
    pub const LSTAR: u32 = 0xc000_0082;
    pub const CSTAR: u32 = 0xc000_0083;
    pub const SYSCALL_MASK: u32 = 0xc000_0084;
    pub const KERNEL_GS_BASE: u32 = 0xc000_0102;
}

/// The MSR values every vCPU starts with: syscall MSRs cleared, fast
/// strings on, MTRRs enabled with write-back as the default type.
pub fn boot_msrs() -> Vec<(u32, u64)> {
    const MISC_ENABLE_FAST_STRING: u64 = 1;
    const MTRR_ENABLE: u64 = 1 << 11;
    const MTRR_TYPE_WRBACK: u64 = 6;
    vec![
        (msr::IA32_SYSENTER_CS, 0),
        (msr::IA32_SYSENTER_ESP, 0),
        (msr::IA32_SYSENTER_EIP, 0),
        (msr::STAR, 0),
        (msr::CSTAR, 0),
        (msr::KERNEL_GS_BASE, 0),
        (msr::SYSCALL_MASK, 0),
        (msr::LSTAR, 0),
        (msr::IA32_TSC, 0),
        (msr::IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (msr::MTRR_DEF_TYPE, MTRR_ENABLE | MTRR_TYPE_WRBACK),
    ]
}

/// Writes [`boot_msrs`] into a vCPU.
pub fn setup_msrs(vcpu: &VcpuFd) -> Result<()> {
    let values = boot_msrs();
    let entries: Vec<kvm_msr_entry> = values
        .iter()
        .map(|&(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    let msrs = Msrs::from_entries(&entries)
        .map_err(|e| Error::KvmUnsupported(format!("MSR list: {e:?}")))?;
    let set = vcpu
        .set_msrs(&msrs)
        .map_err(|e| Error::kvm("KVM_SET_MSRS", e))?;
    if set != entries.len() {
        let failed = entries.get(set).map_or(0, |e| e.index);
        return Err(Error::KvmUnsupported(format!(
            "KVM refused to set MSR {failed:#x}"
        )));
    }
    Ok(())
}

/// x87 and SSE control words as after FNINIT / reset.
pub fn setup_fpu(vcpu: &VcpuFd) -> Result<()> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(|e| Error::kvm("KVM_SET_FPU", e))
}

const APIC_LVT_LINT0: usize = 0x350;
const APIC_LVT_LINT1: usize = 0x360;
const APIC_MODE_EXTINT: u32 = 0x7;
const APIC_MODE_NMI: u32 = 0x4;

fn set_delivery_mode(reg: u32, mode: u32) -> u32 {
    (reg & !0x700) | (mode << 8)
}

/// Wires LINT0 to the PIC (ExtINT) and LINT1 to NMI, as firmware does.
pub fn setup_lint(vcpu: &VcpuFd) -> Result<()> {
    let mut lapic = vcpu
        .get_lapic()
        .map_err(|e| Error::kvm("KVM_GET_LAPIC", e))?;
    for (offset, mode) in [
        (APIC_LVT_LINT0, APIC_MODE_EXTINT),
        (APIC_LVT_LINT1, APIC_MODE_NMI),
    ] {
        let bytes: [u8; 4] = std::array::from_fn(|i| lapic.regs[offset + i] as u8);
        let value = set_delivery_mode(u32::from_le_bytes(bytes), mode);
        for (i, b) in value.to_le_bytes().iter().enumerate() {
            lapic.regs[offset + i] = *b as _;
        }
    }
    vcpu.set_lapic(&lapic)
        .map_err(|e| Error::kvm("KVM_SET_LAPIC", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory;

    #[test]
    fn gdt_entries_round_trip_through_segments() {
        let code = segment_from_gdt(gdt_entry(GDT_CODE64, 0, 0xfffff), CODE_SELECTOR);
        assert_eq!(code.l, 1);
        assert_eq!(code.db, 0);
        assert_eq!(code.type_, 0xb);
        assert_eq!(code.present, 1);
        assert_eq!(code.limit, 0xffff_ffff);
        assert_eq!(code.unusable, 0);
        let code32 = segment_from_gdt(gdt_entry(GDT_CODE32, 0, 0xfffff), CODE_SELECTOR);
        assert_eq!((code32.l, code32.db), (0, 1));
        let tss = segment_from_gdt(gdt_entry(GDT_TSS & 0x7fff, 0x1234_5678, 0x67), TSS_SELECTOR);
        assert_eq!(tss.base, 0x1234_5678);
        assert_eq!(tss.limit, 0x67);
        assert_eq!(tss.type_, 0xb);
        assert_eq!(tss.s, 0);
        assert_eq!(segment_from_gdt(0, 0).unusable, 1);
        // Known encodings (Intel SDM layout).
        assert_eq!(gdt_entry(GDT_CODE64, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(gdt_entry(GDT_DATA, 0, 0xfffff), 0x00cf_9300_0000_ffff);
    }

    #[test]
    fn identity_map_covers_four_gib() {
        let mem = memory::create(64 << 20).unwrap();
        write_identity_map(&mem).unwrap();
        let rd = |a: u64| mem.read_obj::<u64>(GuestAddress(a)).unwrap();
        assert_eq!(rd(PML4_START), PDPTE_START | 3);
        for dir in 0..4 {
            assert_eq!(rd(PDPTE_START + dir * 8), (PDE_START + dir * 0x1000) | 3);
        }
        assert_eq!(rd(PDE_START), 0x83);
        assert_eq!(rd(PDE_START + 8), (2 << 20) | 0x83);
        // The last 2 MiB page below 4 GiB maps the LAPIC page.
        assert_eq!(rd(PDE_START + 4 * 0x1000 - 8), 0xffe0_0000 | 0x83);
    }

    #[test]
    fn modes_set_control_registers() {
        let mut s = kvm_sregs::default();
        apply_mode(&mut s, EntryMode::Linux64);
        assert_eq!(s.cr0 & (CR0_PE | CR0_PG), CR0_PE | CR0_PG);
        assert_eq!(s.efer, EFER_LME | EFER_LMA);
        assert_eq!(s.cr3, PML4_START);
        apply_mode(&mut s, EntryMode::Pvh);
        assert_eq!(s.cr0 & CR0_PG, 0);
        assert_eq!(s.efer, 0);
        let r = boot_regs(EntryMode::Pvh, 0x100200);
        assert_eq!((r.rip, r.rbx, r.rflags), (0x100200, PVH_INFO_START, 2));
        let r = boot_regs(EntryMode::Linux64, 0x100200);
        assert_eq!(r.rsi, ZERO_PAGE_START);
    }

    #[test]
    fn lint_delivery_modes() {
        assert_eq!(
            set_delivery_mode(0x0001_0000, APIC_MODE_EXTINT),
            0x0001_0700
        );
        assert_eq!(set_delivery_mode(0x0000_0700, APIC_MODE_NMI), 0x0000_0400);
    }
}
