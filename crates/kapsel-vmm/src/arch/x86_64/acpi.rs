//! ACPI tables: RSDP → XSDT → FADT (hardware-reduced, with sleep control,
//! sleep status and reset registers), MADT (one LAPIC per vCPU and the
//! IOAPIC), DSDT (COM1, CMOS RTC, pvpanic and the `\_S5` power-off state).
//!
//! The guest powers off by writing `SLP_TYP(5) << 2 | SLP_EN` to the sleep
//! control port and resets by writing the reset value to the reset port;
//! [`crate::devices::legacy::acpi_pm`] turns those writes into VM exits.

use super::layout::*;
use crate::error::{Error, Result};
use crate::memory::GuestMem;
use acpi_tables::aml;
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use vm_memory::{Bytes, GuestAddress};

const OEM_ID: [u8; 6] = *b"KAPSEL";
const OEM_TABLE_ID: [u8; 8] = *b"KAPSELVM";
const OEM_REVISION: u32 = 1;

/// The `\_S5` sleep type value Kapsel's ACPI PM device treats as power off.
pub const S5_SLEEP_TYPE: u8 = 5;

/// FADT IA-PC boot architecture flag: no VGA.
const IAPC_BOOT_ARCH_NO_VGA: u16 = 1 << 2;

fn io_gas(port: u16) -> GAS {
    GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        u64::from(port),
    )
}

fn bytes_of(table: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    table.to_aml_bytes(&mut v);
    v
}

fn device_aml(path: &str, hid: &dyn Aml, resources: Vec<&dyn Aml>, out: &mut Vec<u8>) {
    let crs = aml::ResourceTemplate::new(resources);
    let hid = aml::Name::new("_HID".into(), hid);
    let crs = aml::Name::new("_CRS".into(), &crs);
    aml::Device::new(path.into(), vec![&hid, &crs]).to_aml_bytes(out);
}

/// PCI host bridge 0 (PCI Express, ECAM from the MCFG table): bus 0, the
/// configuration ports, all other I/O ports, and the 32-bit BAR window.
fn pci_host_bridge_aml(out: &mut Vec<u8>) {
    let bus = aml::AddressSpace::<u16>::new_bus_number(0, 0);
    let cfg_ports = aml::IO::new(0xcf8, 0xcf8, 1, 8);
    let io_low = aml::AddressSpace::<u16>::new_io(0, 0xcf7, None);
    let io_high = aml::AddressSpace::<u16>::new_io(0xd00, 0xffff, None);
    let mmio32 = aml::AddressSpace::<u32>::new_memory(
        aml::AddressSpaceCacheable::NotCacheable,
        true,
        PCI_MMIO32_START as u32,
        (PCI_MMIO32_START + PCI_MMIO32_SIZE - 1) as u32,
        None,
    );
    let crs = aml::ResourceTemplate::new(vec![&bus, &cfg_ports, &io_low, &io_high, &mmio32]);
    let hid = aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0A08"));
    let cid = aml::Name::new("_CID".into(), &aml::EISAName::new("PNP0A03"));
    let seg = aml::Name::new("_SEG".into(), &aml::ZERO);
    let bbn = aml::Name::new("_BBN".into(), &aml::ZERO);
    let uid = aml::Name::new("_UID".into(), &aml::ZERO);
    let crs = aml::Name::new("_CRS".into(), &crs);
    aml::Device::new("_SB_.PCI0".into(), vec![&hid, &cid, &seg, &bbn, &uid, &crs])
        .to_aml_bytes(out);
}

/// The power button (PNP0C0C) and the hardware-reduced ACPI Generic Event
/// Device (ACPI0013) that announces it: an edge on GSI [`GED_GSI`] makes
/// the OS run `_EVT`, which notifies the button (0x80: "pressed").
fn power_button_aml(out: &mut Vec<u8>) {
    let hid = aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0C0C"));
    let uid = aml::Name::new("_UID".into(), &aml::ZERO);
    aml::Device::new("_SB_.PWRB".into(), vec![&hid, &uid]).to_aml_bytes(out);

    let irq = aml::Interrupt::new(true, true, false, false, GED_GSI);
    let crs = aml::ResourceTemplate::new(vec![&irq]);
    let pressed: u8 = 0x80;
    let button = aml::Path::new("\\_SB_.PWRB");
    let notify = aml::Notify::new(&button, &pressed);
    let evt = aml::Method::new("_EVT".into(), 1, true, vec![&notify]);
    let hid = aml::Name::new("_HID".into(), &"ACPI0013");
    let uid = aml::Name::new("_UID".into(), &aml::ZERO);
    let crs = aml::Name::new("_CRS".into(), &crs);
    aml::Device::new("_SB_.GED0".into(), vec![&hid, &uid, &crs, &evt]).to_aml_bytes(out);
}

/// The MCFG table: ECAM for segment 0, bus 0.
fn mcfg() -> Vec<u8> {
    let mut mcfg = acpi_tables::mcfg::MCFG::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    mcfg.add_ecam(PCI_ECAM_START, 0, 0, 0);
    bytes_of(&mcfg)
}

/// The DSDT's AML body.
pub fn dsdt_aml() -> Vec<u8> {
    let mut body = Vec::new();
    device_aml(
        "_SB_.COM1",
        &aml::EISAName::new("PNP0501"),
        vec![
            &aml::IO::new(COM1_PORT, COM1_PORT, 1, 8),
            &aml::Interrupt::new(true, true, false, false, COM1_IRQ),
        ],
        &mut body,
    );
    device_aml(
        "_SB_.RTC_",
        &aml::EISAName::new("PNP0B00"),
        vec![
            &aml::IO::new(CMOS_PORT, CMOS_PORT, 1, 2),
            &aml::Interrupt::new(true, true, false, false, RTC_IRQ),
        ],
        &mut body,
    );
    device_aml(
        "_SB_.PEVT",
        &"QEMU0001",
        vec![&aml::IO::new(PVPANIC_PORT, PVPANIC_PORT, 1, 1)],
        &mut body,
    );
    pci_host_bridge_aml(&mut body);
    power_button_aml(&mut body);
    let s5_type = S5_SLEEP_TYPE;
    let s5_package = aml::Package::new(vec![&s5_type, &s5_type]);
    aml::Name::new("_S5_".into(), &s5_package).to_aml_bytes(&mut body);
    body
}

fn fadt(dsdt_addr: u64) -> Vec<u8> {
    let mut fadt = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    fadt.reset_reg = io_gas(ACPI_RESET_PORT);
    fadt.reset_value = ACPI_RESET_VALUE;
    fadt.sleep_control_reg = io_gas(ACPI_SLEEP_CONTROL_PORT);
    fadt.sleep_status_reg = io_gas(ACPI_SLEEP_STATUS_PORT);
    fadt.iapc_boot_arch = IAPC_BOOT_ARCH_NO_VGA.into();
    fadt.hypervisor_vendor_identity = u64::from_le_bytes(*b"KAPSEL\0\0").into();
    bytes_of(&fadt.finalize())
}

fn madt(cpus: u8) -> Vec<u8> {
    let mut madt = MADT::new(
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
        LocalInterruptController::Address(APIC_START as u32),
    );
    for cpu in 0..cpus {
        madt.add_structure(ProcessorLocalApic::new(cpu, cpu, EnabledStatus::Enabled));
    }
    madt.add_structure(IoApic::new(0, IOAPIC_START as u32, 0));
    bytes_of(&madt)
}

fn dsdt() -> Vec<u8> {
    let mut dsdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    dsdt.append_slice(&dsdt_aml());
    dsdt.as_slice().to_vec()
}

fn align16(addr: u64) -> u64 {
    (addr + 15) & !15
}

/// Writes all tables for a VM with `cpus` vCPUs into the ACPI area and
/// returns the RSDP's address.
pub fn write_tables(mem: &GuestMem, cpus: u8) -> Result<u64> {
    let rsdp_addr = ACPI_START;
    let xsdt_addr = align16(rsdp_addr + Rsdp::len() as u64);
    // The XSDT lists three tables: header plus three 8-byte pointers.
    let fadt_addr = align16(xsdt_addr + 36 + 24);
    let dsdt_addr = align16(fadt_addr + acpi_tables::fadt::FADT::len() as u64);
    let dsdt = dsdt();
    let madt_addr = align16(dsdt_addr + dsdt.len() as u64);
    let madt = madt(cpus);
    let mcfg_addr = align16(madt_addr + madt.len() as u64);
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    xsdt.add_entry(mcfg_addr);
    let tables = [
        (rsdp_addr, bytes_of(&Rsdp::new(OEM_ID, xsdt_addr))),
        (xsdt_addr, bytes_of(&xsdt)),
        (fadt_addr, fadt(dsdt_addr)),
        (dsdt_addr, dsdt),
        (madt_addr, madt),
        (mcfg_addr, mcfg()),
    ];
    for (addr, bytes) in &tables {
        if addr + bytes.len() as u64 > ACPI_END {
            return Err(Error::InvalidConfig(format!(
                "ACPI tables for {cpus} vCPUs do not fit below {ACPI_END:#x}"
            )));
        }
        mem.write_slice(bytes, GuestAddress(*addr))
            .map_err(|e| Error::Memory(format!("ACPI tables: {e}")))?;
    }
    Ok(rsdp_addr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory;

    fn read(mem: &GuestMem, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    fn checksum_ok(bytes: &[u8]) -> bool {
        bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)) == 0
    }

    fn table(mem: &GuestMem, addr: u64) -> Vec<u8> {
        let len = u32::from_le_bytes(read(mem, addr + 4, 4).try_into().unwrap());
        read(mem, addr, len as usize)
    }

    fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
    }

    #[test]
    fn tables_are_linked_and_checksummed() {
        let mem = memory::create(64 << 20).unwrap();
        let rsdp_addr = write_tables(&mem, 4).unwrap();
        let rsdp = read(&mem, rsdp_addr, 36);
        assert_eq!(&rsdp[0..8], b"RSD PTR ");
        assert!(checksum_ok(&rsdp[0..20]));
        assert!(checksum_ok(&rsdp));
        let xsdt = table(&mem, u64_at(&rsdp, 24));
        assert_eq!(&xsdt[0..4], b"XSDT");
        assert!(checksum_ok(&xsdt));
        let entries: Vec<u64> = (36..xsdt.len())
            .step_by(8)
            .map(|o| u64_at(&xsdt, o))
            .collect();
        assert_eq!(entries.len(), 3);
        let mcfg = table(&mem, entries[2]);
        assert_eq!(&mcfg[0..4], b"MCFG");
        assert!(checksum_ok(&mcfg));
        // One allocation: base, segment, start bus, end bus.
        assert_eq!(mcfg.len(), 44 + 16);
        assert_eq!(u64_at(&mcfg, 44), PCI_ECAM_START);
        assert_eq!((mcfg[54], mcfg[55]), (0, 0));

        let fadt = table(&mem, entries[0]);
        assert_eq!(&fadt[0..4], b"FACP");
        assert!(checksum_ok(&fadt));
        let flags = u32::from_le_bytes(fadt[112..116].try_into().unwrap());
        assert_ne!(flags & (1 << 20), 0, "hardware-reduced");
        assert_ne!(flags & (1 << 10), 0, "reset register supported");
        // RESET_REG at 116 (GAS: space, width, offset, access, address@+4).
        assert_eq!(fadt[116], 1);
        assert_eq!(u64_at(&fadt, 120), u64::from(ACPI_RESET_PORT));
        assert_eq!(fadt[128], ACPI_RESET_VALUE);
        // SLEEP_CONTROL_REG at 244, SLEEP_STATUS_REG at 256.
        assert_eq!(u64_at(&fadt, 248), u64::from(ACPI_SLEEP_CONTROL_PORT));
        assert_eq!(u64_at(&fadt, 260), u64::from(ACPI_SLEEP_STATUS_PORT));

        let dsdt = table(&mem, u64_at(&fadt, 140));
        assert_eq!(&dsdt[0..4], b"DSDT");
        assert!(checksum_ok(&dsdt));
        let s5 = dsdt.windows(4).position(|w| w == b"_S5_").expect("_S5_");
        assert_eq!(dsdt[s5 + 4], 0x12, "a Package follows _S5_");
        assert!(dsdt.windows(8).any(|w| w == b"QEMU0001"), "pvpanic");
        assert!(dsdt.windows(4).any(|w| w == b"PCI0"), "host bridge");
        assert!(
            dsdt.windows(8).any(|w| w == b"ACPI0013"),
            "generic event device"
        );
        assert!(dsdt.windows(4).any(|w| w == b"_EVT"), "GED event method");
        assert!(dsdt.windows(4).any(|w| w == b"PWRB"), "power button");

        let madt = table(&mem, entries[1]);
        assert_eq!(&madt[0..4], b"APIC");
        assert!(checksum_ok(&madt));
        let mut off = 44;
        let mut apic_ids = Vec::new();
        let mut ioapics = 0;
        while off < madt.len() {
            match madt[off] {
                0 => {
                    assert_eq!(madt[off + 4] & 1, 1, "enabled");
                    apic_ids.push(madt[off + 3]);
                }
                1 => {
                    ioapics += 1;
                    let addr = u32::from_le_bytes(madt[off + 4..off + 8].try_into().unwrap());
                    assert_eq!(u64::from(addr), IOAPIC_START);
                }
                t => panic!("unexpected MADT entry {t}"),
            }
            off += madt[off + 1] as usize;
        }
        assert_eq!(apic_ids, vec![0, 1, 2, 3]);
        assert_eq!(ioapics, 1);
    }

    #[test]
    fn many_cpus_fit() {
        let mem = memory::create(64 << 20).unwrap();
        assert!(write_tables(&mem, 255).is_ok());
    }
}
