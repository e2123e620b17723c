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
/// configuration ports, all other I/O ports, and the 32-bit BAR windows
/// `(start, size)`.
fn pci_host_bridge_aml(windows: &[(u64, u64)], out: &mut Vec<u8>) {
    let bus = aml::AddressSpace::<u16>::new_bus_number(0, 0);
    let cfg_ports = aml::IO::new(0xcf8, 0xcf8, 1, 8);
    let io_low = aml::AddressSpace::<u16>::new_io(0, 0xcf7, None);
    let io_high = aml::AddressSpace::<u16>::new_io(0xd00, 0xffff, None);
    let mmio32: Vec<_> = windows
        .iter()
        .map(|&(start, size)| {
            aml::AddressSpace::<u32>::new_memory(
                aml::AddressSpaceCacheable::NotCacheable,
                true,
                start as u32,
                (start + size - 1) as u32,
                None,
            )
        })
        .collect();
    let mut resources: Vec<&dyn Aml> = vec![&bus, &cfg_ports, &io_low, &io_high];
    resources.extend(mmio32.iter().map(|w| w as &dyn Aml));
    let crs = aml::ResourceTemplate::new(resources);
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

/// The 32-bit PCI windows of a direct kernel boot: the VMM places BARs.
pub const DIRECT_PCI_WINDOWS: [(u64, u64); 1] = [(PCI_MMIO32_START, PCI_MMIO32_SIZE)];

/// The DSDT's AML body for a direct kernel boot.
pub fn dsdt_aml() -> Vec<u8> {
    dsdt_aml_with(&DIRECT_PCI_WINDOWS)
}

/// The DSDT's AML body, with the PCI host bridge decoding `windows`.
pub fn dsdt_aml_with(windows: &[(u64, u64)]) -> Vec<u8> {
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
    pci_host_bridge_aml(windows, &mut body);
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

fn dsdt(windows: &[(u64, u64)]) -> Vec<u8> {
    let mut dsdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    dsdt.append_slice(&dsdt_aml_with(windows));
    dsdt.as_slice().to_vec()
}

fn align16(addr: u64) -> u64 {
    (addr + 15) & !15
}

/// Where each table of [`layout_tables`] sits.
struct Layout {
    /// `(address, bytes)` of RSDP, XSDT, FADT, DSDT, MADT, MCFG, in order.
    tables: Vec<(u64, Vec<u8>)>,
}

/// Lays the tables out one after the other from `base` (the RSDP first),
/// with every pointer holding the absolute address of its target.
fn layout_tables(base: u64, cpus: u8, windows: &[(u64, u64)]) -> Layout {
    let rsdp_addr = base;
    let xsdt_addr = align16(rsdp_addr + Rsdp::len() as u64);
    // The XSDT lists three tables: header plus three 8-byte pointers.
    let fadt_addr = align16(xsdt_addr + 36 + 24);
    let dsdt_addr = align16(fadt_addr + acpi_tables::fadt::FADT::len() as u64);
    let dsdt = dsdt(windows);
    let madt_addr = align16(dsdt_addr + dsdt.len() as u64);
    let madt = madt(cpus);
    let mcfg_addr = align16(madt_addr + madt.len() as u64);
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    xsdt.add_entry(mcfg_addr);
    Layout {
        tables: vec![
            (rsdp_addr, bytes_of(&Rsdp::new(OEM_ID, xsdt_addr))),
            (xsdt_addr, bytes_of(&xsdt)),
            (fadt_addr, fadt(dsdt_addr)),
            (dsdt_addr, dsdt),
            (madt_addr, madt),
            (mcfg_addr, mcfg()),
        ],
    }
}

/// Writes all tables for a VM with `cpus` vCPUs into the ACPI area and
/// returns the RSDP's address.
pub fn write_tables(mem: &GuestMem, cpus: u8) -> Result<u64> {
    let layout = layout_tables(ACPI_START, cpus, &DIRECT_PCI_WINDOWS);
    for (addr, bytes) in &layout.tables {
        if addr + bytes.len() as u64 > ACPI_END {
            return Err(Error::InvalidConfig(format!(
                "ACPI tables for {cpus} vCPUs do not fit below {ACPI_END:#x}"
            )));
        }
        mem.write_slice(bytes, GuestAddress(*addr))
            .map_err(|e| Error::Memory(format!("ACPI tables: {e}")))?;
    }
    Ok(ACPI_START)
}

/// The fw_cfg file that holds every table but the RSDP.
pub const TABLES_FILE: &str = "etc/acpi/tables";
/// The fw_cfg file that holds the RSDP.
pub const RSDP_FILE: &str = "etc/acpi/rsdp";
/// The fw_cfg file that holds the linker/loader script.
pub const LOADER_FILE: &str = "etc/table-loader";

/// The same tables for a firmware boot, handed over through fw_cfg: the
/// firmware allocates both blobs, relocates the pointers and fixes the
/// checksums as the loader script says, the way QEMU hands its tables to
/// SeaBIOS and OVMF.
pub struct FirmwareTables {
    /// `etc/acpi/rsdp`.
    pub rsdp: Vec<u8>,
    /// `etc/acpi/tables`: XSDT, FADT, DSDT, MADT, MCFG.
    pub tables: Vec<u8>,
    /// `etc/table-loader`.
    pub loader: Vec<u8>,
}

/// Builds [`FirmwareTables`] for `cpus` vCPUs and a host bridge decoding
/// the 32-bit PCI `windows` (the firmware places BARs there).
pub fn firmware_tables(cpus: u8, windows: &[(u64, u64)]) -> FirmwareTables {
    use crate::devices::legacy::fw_cfg::loader::{Script, ZONE_FSEG, ZONE_HIGH};
    // Laid out from address 0, every pointer is an offset into the tables
    // blob; the loader adds the blob's address. The RSDP, at offset 0, is
    // cut out into its own file and its bytes in the blob stay zero.
    let layout = layout_tables(0, cpus, windows);
    let end = layout
        .tables
        .iter()
        .map(|(a, b)| *a as usize + b.len())
        .max()
        .unwrap_or(0);
    let mut tables = vec![0u8; end];
    let mut rsdp = Vec::new();
    for (i, (addr, bytes)) in layout.tables.iter().enumerate() {
        if i == 0 {
            rsdp = bytes.clone();
        } else {
            tables[*addr as usize..*addr as usize + bytes.len()].copy_from_slice(bytes);
        }
    }
    let mut s = Script::default();
    s.allocate(RSDP_FILE, 16, ZONE_FSEG);
    s.allocate(TABLES_FILE, 64, ZONE_HIGH);
    // RSDP.XsdtAddress.
    s.add_pointer(RSDP_FILE, TABLES_FILE, 24, 8);
    let (xsdt_addr, xsdt) = &layout.tables[1];
    for entry in (36..xsdt.len()).step_by(8) {
        s.add_pointer(
            TABLES_FILE,
            TABLES_FILE,
            (*xsdt_addr as usize + entry) as u32,
            8,
        );
    }
    // FADT.X_DSDT.
    let fadt_addr = layout.tables[2].0 as u32;
    s.add_pointer(TABLES_FILE, TABLES_FILE, fadt_addr + 140, 8);
    for (addr, bytes) in &layout.tables[1..] {
        s.add_checksum(
            TABLES_FILE,
            *addr as u32 + 9,
            *addr as u32,
            bytes.len() as u32,
        );
    }
    // The RSDP's checksum over its first 20 bytes, then the extended one.
    s.add_checksum(RSDP_FILE, 8, 0, 20);
    s.add_checksum(RSDP_FILE, 32, 0, rsdp.len() as u32);
    FirmwareTables {
        rsdp,
        tables,
        loader: s.into_bytes(),
    }
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

    /// Runs a linker/loader script the way SeaBIOS's romfile_loader does,
    /// on two blobs placed at `rsdp_at` and `tables_at`.
    fn run_loader(t: &FirmwareTables, rsdp_at: u64, tables_at: u64) -> (Vec<u8>, Vec<u8>) {
        let mut rsdp = t.rsdp.clone();
        let mut tables = t.tables.clone();
        let name = |b: &[u8]| {
            let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
            String::from_utf8(b[..end].to_vec()).unwrap()
        };
        let le32 = |b: &[u8]| u32::from_le_bytes(b[0..4].try_into().unwrap()) as usize;
        assert_eq!(t.loader.len() % 128, 0);
        for e in t.loader.chunks(128) {
            match le32(e) {
                1 => {}
                2 => {
                    let (dest, src) = (name(&e[4..60]), name(&e[60..116]));
                    let base = if src == TABLES_FILE {
                        tables_at
                    } else {
                        rsdp_at
                    };
                    let blob = if dest == TABLES_FILE {
                        &mut tables
                    } else {
                        &mut rsdp
                    };
                    let off = le32(&e[116..]);
                    assert_eq!(e[120], 8);
                    let v = u64_at(blob, off) + base;
                    blob[off..off + 8].copy_from_slice(&v.to_le_bytes());
                }
                3 => {
                    let file = name(&e[4..60]);
                    let blob = if file == TABLES_FILE {
                        &mut tables
                    } else {
                        &mut rsdp
                    };
                    let (off, start, len) = (le32(&e[60..]), le32(&e[64..]), le32(&e[68..]));
                    let sum = blob[start..start + len]
                        .iter()
                        .fold(0u8, |a, b| a.wrapping_add(*b));
                    blob[off] = blob[off].wrapping_sub(sum);
                }
                c => panic!("unknown command {c}"),
            }
        }
        (rsdp, tables)
    }

    #[test]
    fn firmware_tables_relocate_to_valid_tables() {
        let windows = [(0xc000_0000, 0x2000_0000), (0xe010_0000, 0x1eb0_0000)];
        let t = firmware_tables(2, &windows);
        let (rsdp_at, tables_at) = (0xf5a40u64, 0x7ffe_0000u64);
        let (rsdp, tables) = run_loader(&t, rsdp_at, tables_at);
        assert_eq!(&rsdp[0..8], b"RSD PTR ");
        assert!(checksum_ok(&rsdp[0..20]));
        assert!(checksum_ok(&rsdp));
        let at = |addr: u64| {
            let off = (addr - tables_at) as usize;
            let len = u32::from_le_bytes(tables[off + 4..off + 8].try_into().unwrap()) as usize;
            tables[off..off + len].to_vec()
        };
        let xsdt = at(u64_at(&rsdp, 24));
        assert_eq!(&xsdt[0..4], b"XSDT");
        assert!(checksum_ok(&xsdt));
        let sigs: Vec<Vec<u8>> = (36..xsdt.len())
            .step_by(8)
            .map(|o| {
                let table = at(u64_at(&xsdt, o));
                assert!(checksum_ok(&table));
                table[0..4].to_vec()
            })
            .collect();
        assert_eq!(
            sigs,
            vec![b"FACP".to_vec(), b"APIC".to_vec(), b"MCFG".to_vec()]
        );
        let fadt = at(u64_at(&xsdt, 36));
        let dsdt = at(u64_at(&fadt, 140));
        assert_eq!(&dsdt[0..4], b"DSDT");
        assert!(checksum_ok(&dsdt));
        // The blob carries no second RSDP for an OS to stumble on.
        assert!(!tables.windows(8).any(|w| w == b"RSD PTR "));
    }
}
