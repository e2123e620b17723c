//! Booting through firmware (SeaBIOS) instead of loading a kernel: the
//! pieces of the machine a PC BIOS expects and a direct kernel boot does
//! without. Nothing here runs on the direct boot path.
//!
//! - The image is mapped read-only so that it ends at 4 GiB (where the CPU's
//!   reset vector F000:FFF0 with CS base 0xFFFF0000 finds it), and its last
//!   128 KiB are copied into guest RAM at 0xE0000–0xFFFFF (the ISA BIOS
//!   area). QEMU aliases that area to the ROM and lets SeaBIOS unlock it
//!   through the i440FX/Q35 PAM registers; Kapsel has no such chipset, so
//!   the area is plain RAM from the start, as OpenBSD vmd does it
//!   (`loadfile_bios`). A reset rebuilds the machine, so the copy is
//!   pristine at every boot.
//! - KVM's real-mode TSS and identity-map pages move to 0xFEFFC000, where
//!   QEMU puts them "so this value allows up to 16M BIOSes".
//! - fw_cfg carries the memory map, the boot order, the ACPI tables (through
//!   the linker/loader) and the serial console setting.
//! - The PCI host bridge keeps its identity; SeaBIOS assigns every BAR
//!   top-down from 0xFEC00000 when it knows no chipset (`pciinit.c`), so the
//!   PCI MMIO windows cover the 32-bit hole up to the IOAPIC, around ECAM.

use super::layout::{self, E820Type};
use crate::devices::legacy::fw_cfg::{self, key, FwCfg};
use crate::devices::pci::PciAddress;
use crate::error::{Error, Result};
use crate::memory::GuestMem;
use kvm_bindings::{kvm_userspace_memory_region, KVM_MEM_READONLY};
use kvm_ioctls::VmFd;
use std::io::Read;
use std::path::{Path, PathBuf};
use vm_memory::{Bytes, GuestAddress, MmapRegion};

/// SeaBIOS as Debian's `seabios` package installs it: the build for QEMU's
/// microvm machine. It is the one of the package's three images that suits
/// Kapsel's machine: the serial console (sercon) is built in (bios.bin has
/// none), and it leaves out the PS/2 controller, floppy, ATA and AHCI
/// probes that bios.bin and bios-256k.bin run against hardware Kapsel does
/// not have (QEMU `roms/config.seabios-microvm`); it keeps PCI, virtio-blk,
/// virtio-scsi, fw_cfg with DMA and the ACPI table loader.
pub const DEFAULT_BIOS: &str = "/usr/share/seabios/bios-microvm.bin";
/// The Debian package that ships [`DEFAULT_BIOS`].
pub const BIOS_PACKAGE: &str = "seabios";

/// Smallest image accepted (SeaBIOS images are 128 or 256 KiB).
pub const MIN_IMAGE_SIZE: usize = 64 << 10;
/// Largest image: the space between KVM's pages and 4 GiB.
pub const MAX_IMAGE_SIZE: usize = 16 << 20;
/// The ISA BIOS area at the top of the first megabyte.
const ISA_BIOS_SIZE: usize = 128 << 10;
const ISA_BIOS_END: u64 = 0x10_0000;
const FOUR_GIB: u64 = 1 << 32;

/// KVM's real-mode identity-map page for a firmware boot (QEMU's address).
pub const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfeff_c000;
/// KVM's three real-mode TSS pages, after the identity map.
pub const KVM_TSS_ADDRESS: usize = 0xfeff_d000;
/// Bytes reserved for both.
const KVM_PRIVATE_SIZE: u64 = 0x4000;

/// The end of the 32-bit PCI space SeaBIOS allocates from (its
/// `BUILD_PCIMEM_END`, where the IOAPIC starts).
const PCI_MEM_END: u64 = layout::IOAPIC_START;

/// The 32-bit windows in which the firmware may place BARs `(start,
/// size)`: the MMIO hole below the IOAPIC, without the ECAM space.
pub const PCI_WINDOWS: [(u64, u64); 2] = [
    (
        layout::PCI_MMIO32_START,
        layout::PCI_ECAM_START - layout::PCI_MMIO32_START,
    ),
    (
        layout::PCI_ECAM_START + layout::PCI_ECAM_SIZE,
        PCI_MEM_END - (layout::PCI_ECAM_START + layout::PCI_ECAM_SIZE),
    ),
];

/// A firmware image, read whole before the sandbox.
#[derive(Debug)]
pub struct FirmwareImage {
    /// Where it came from, for messages.
    pub path: PathBuf,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

impl FirmwareImage {
    /// Reads the image at `path`; `option` names the option that chooses
    /// another one, for the message when the file is missing.
    pub fn open(path: &Path, option: &'static str) -> Result<FirmwareImage> {
        let mut file = std::fs::File::open(path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                Error::FirmwareMissing {
                    path: path.to_path_buf(),
                    package: BIOS_PACKAGE,
                    option,
                }
            } else {
                Error::File {
                    what: "firmware",
                    path: path.to_path_buf(),
                    source,
                }
            }
        })?;
        let mut bytes = Vec::new();
        // One byte more than allowed tells a too large file apart.
        (&mut file)
            .take(MAX_IMAGE_SIZE as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|source| Error::File {
                what: "firmware",
                path: path.to_path_buf(),
                source,
            })?;
        Self::from_bytes(path, bytes)
    }

    /// Checks `bytes` as an image from `path`.
    pub fn from_bytes(path: &Path, bytes: Vec<u8>) -> Result<FirmwareImage> {
        let bad = |detail: String| Error::BadFirmware {
            path: path.to_path_buf(),
            detail,
        };
        if bytes.len() < MIN_IMAGE_SIZE || bytes.len() > MAX_IMAGE_SIZE {
            return Err(bad(format!(
                "{} bytes; a BIOS image has {} KiB to {} MiB",
                bytes.len(),
                MIN_IMAGE_SIZE >> 10,
                MAX_IMAGE_SIZE >> 20
            )));
        }
        if !bytes.len().is_multiple_of(4096) {
            return Err(bad(format!(
                "{} bytes is not a whole number of 4 KiB pages; is this a BIOS image?",
                bytes.len()
            )));
        }
        Ok(FirmwareImage {
            path: path.to_path_buf(),
            bytes,
        })
    }

    /// Where the image starts in guest-physical memory.
    pub fn base(&self) -> u64 {
        FOUR_GIB - self.bytes.len() as u64
    }
}

/// The image mapped read-only at the top of 4 GiB: the host mapping, which
/// must outlive the VM's use of the slot.
pub struct RomMapping {
    _region: MmapRegion<()>,
}

/// Copies the image's last 128 KiB into the ISA BIOS area of `mem`.
pub fn load_isa_copy(mem: &GuestMem, image: &FirmwareImage) -> Result<()> {
    let n = image.bytes.len().min(ISA_BIOS_SIZE);
    let tail = &image.bytes[image.bytes.len() - n..];
    mem.write_slice(tail, GuestAddress(ISA_BIOS_END - n as u64))
        .map_err(|e| Error::Memory(format!("BIOS area: {e}")))
}

/// Maps `image` read-only at `4 GiB - size` as KVM memory slot `slot`:
/// guest writes to it exit to the VMM and are dropped.
pub fn map_rom(vm: &VmFd, slot: u32, image: &FirmwareImage) -> Result<RomMapping> {
    let len = image.bytes.len();
    let region = MmapRegion::<()>::new(len)
        .map_err(|e| Error::Memory(format!("mapping the firmware image: {e}")))?;
    // SAFETY: the region is a fresh private mapping of `len` bytes that
    // nothing else refers to yet; the image has exactly `len` bytes.
    unsafe {
        std::ptr::copy_nonoverlapping(image.bytes.as_ptr(), region.as_ptr(), len);
    }
    let desc = kvm_userspace_memory_region {
        slot,
        flags: KVM_MEM_READONLY,
        guest_phys_addr: image.base(),
        memory_size: len as u64,
        userspace_addr: region.as_ptr() as u64,
    };
    // SAFETY: the mapping is owned by the returned RomMapping, which the
    // machine keeps until its VM is gone; the slot lies above RAM and below
    // 4 GiB, in the MMIO hole, and overlaps no other slot.
    unsafe { vm.set_user_memory_region(desc) }
        .map_err(|e| Error::kvm("KVM_SET_USER_MEMORY_REGION (firmware)", e))?;
    Ok(RomMapping { _region: region })
}

/// The memory map handed to the firmware (`etc/e820`), as QEMU builds it:
/// all RAM below the hole from address 0 (the firmware reserves its own
/// areas below 1 MiB), RAM above 4 GiB, and the ranges the firmware must
/// leave alone: ECAM, KVM's private pages and the image.
pub fn e820(memory: u64, image_size: u64) -> Vec<(u64, u64, u32)> {
    let mut map: Vec<(u64, u64, u32)> = layout::ram_ranges(memory)
        .into_iter()
        .map(|(start, len)| (start, len, E820Type::Ram as u32))
        .collect();
    let reserved = E820Type::Reserved as u32;
    map.push((layout::PCI_ECAM_START, layout::PCI_ECAM_SIZE, reserved));
    map.push((KVM_IDENTITY_MAP_ADDRESS, KVM_PRIVATE_SIZE, reserved));
    map.push((FOUR_GIB - image_size, image_size, reserved));
    map.sort();
    map
}

/// The OpenFirmware device path SeaBIOS gives a virtio-blk disk at `addr`
/// on the root bus behind the 0xCF8 host bridge (`boot.c build_pci_path`).
pub fn disk_boot_path(addr: PciAddress) -> String {
    if addr.function == 0 {
        format!("/pci@i0cf8/*@{:x}", addr.device)
    } else {
        format!("/pci@i0cf8/*@{:x},{:x}", addr.device, addr.function)
    }
}

/// What the firmware is told about the machine.
pub struct MachineInfo<'a> {
    /// Guest RAM in bytes.
    pub memory: u64,
    /// vCPUs.
    pub cpus: u8,
    /// The disks in boot order.
    pub disks: &'a [PciAddress],
    /// Size of the firmware image.
    pub image_size: u64,
}

/// The fw_cfg device with every item Kapsel gives the firmware.
pub fn fw_cfg(mem: GuestMem, info: &MachineInfo) -> Result<FwCfg> {
    let err = |e: fw_cfg::FwCfgError| Error::InvalidConfig(format!("fw_cfg: {e}"));
    let mut cfg = FwCfg::new(mem);
    let cpus = u16::from(info.cpus).to_le_bytes().to_vec();
    cfg.set_item(key::NB_CPUS, cpus.clone()).map_err(err)?;
    cfg.set_item(key::MAX_CPUS, cpus).map_err(err)?;
    cfg.set_item(key::RAM_SIZE, info.memory.to_le_bytes().to_vec())
        .map_err(err)?;
    // No graphics: SeaBIOS would then pick COM1 for sercon by itself; the
    // explicit etc/sercon-port below says the same for any build.
    cfg.set_item(key::NOGRAPHIC, 1u16.to_le_bytes().to_vec())
        .map_err(err)?;
    cfg.set_item(key::BOOT_MENU, 0u16.to_le_bytes().to_vec())
        .map_err(err)?;
    cfg.add_file(
        "etc/e820",
        fw_cfg::e820_bytes(&e820(info.memory, info.image_size)),
    )
    .map_err(err)?;
    // int 10h output and int 16h input through COM1 (SeaBIOS sercon.c).
    cfg.add_file("etc/sercon-port", layout::COM1_PORT.to_le_bytes().to_vec())
        .map_err(err)?;
    // Do not copy the screen to the debug port as well.
    cfg.add_file("etc/screen-and-debug", vec![0]).map_err(err)?;
    if !info.disks.is_empty() {
        let mut order = String::new();
        for addr in info.disks {
            order.push_str(&disk_boot_path(*addr));
            order.push('\n');
        }
        cfg.add_file("bootorder", order.into_bytes()).map_err(err)?;
    }
    let tables = super::acpi::firmware_tables(info.cpus, &PCI_WINDOWS);
    cfg.add_file(super::acpi::RSDP_FILE, tables.rsdp)
        .map_err(err)?;
    cfg.add_file(super::acpi::TABLES_FILE, tables.tables)
        .map_err(err)?;
    cfg.add_file(super::acpi::LOADER_FILE, tables.loader)
        .map_err(err)?;
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::BusDevice;

    #[test]
    fn images_are_checked() {
        let p = Path::new("/x/bios.bin");
        assert!(FirmwareImage::from_bytes(p, vec![0; 128 << 10]).is_ok());
        for bad in [0, 4096, (128 << 10) + 1, MAX_IMAGE_SIZE + 4096] {
            let e = FirmwareImage::from_bytes(p, vec![0; bad]).unwrap_err();
            assert!(e.to_string().starts_with("firmware /x/bios.bin: "), "{e}");
        }
        let e = FirmwareImage::open(Path::new("/no/such/bios.bin"), "--bios").unwrap_err();
        assert_eq!(
            e.to_string(),
            "firmware /no/such/bios.bin is missing; install Debian's seabios package (apt \
             install seabios), or give another build with --bios PATH"
        );
        assert_eq!(e.exit_code(), 2);
    }

    #[test]
    fn isa_copy_is_the_image_tail() {
        let mem = crate::memory::create(64 << 20).unwrap();
        let mut bytes = vec![0u8; 256 << 10];
        bytes[(128 << 10) - 1] = 0x11;
        bytes[128 << 10] = 0x22;
        *bytes.last_mut().unwrap() = 0x33;
        let image = FirmwareImage::from_bytes(Path::new("b"), bytes).unwrap();
        assert_eq!(image.base(), 0xfffc_0000);
        load_isa_copy(&mem, &image).unwrap();
        let mut b = [0u8; 1];
        mem.read_slice(&mut b, GuestAddress(0xe0000)).unwrap();
        assert_eq!(b[0], 0x22);
        mem.read_slice(&mut b, GuestAddress(0xfffff)).unwrap();
        assert_eq!(b[0], 0x33);
        mem.read_slice(&mut b, GuestAddress(0xdffff)).unwrap();
        assert_eq!(b[0], 0);
    }

    #[test]
    fn memory_map_and_windows_stay_apart() {
        let map = e820(6 << 30, 128 << 10);
        assert_eq!(map[0], (0, 3 << 30, 1));
        assert!(map.contains(&(4 << 30, 3 << 30, 1)));
        assert!(map.contains(&(0xfffe_0000, 128 << 10, 2)));
        assert!(map.windows(2).all(|w| w[0].0 + w[0].1 <= w[1].0));
        for (start, size) in PCI_WINDOWS {
            for &(s, l, _) in &map {
                assert!(start + size <= s || s + l <= start || s < layout::MMIO_HOLE_START);
            }
            assert!(start >= layout::MMIO_HOLE_START && start + size <= layout::IOAPIC_START);
        }
        const {
            assert!(
                KVM_IDENTITY_MAP_ADDRESS + KVM_PRIVATE_SIZE <= FOUR_GIB - MAX_IMAGE_SIZE as u64
            );
            assert!(KVM_TSS_ADDRESS as u64 == KVM_IDENTITY_MAP_ADDRESS + 0x1000);
        }
    }

    #[test]
    fn fw_cfg_carries_the_machine() {
        let mem = crate::memory::create(64 << 20).unwrap();
        let disks = [PciAddress {
            bus: 0,
            device: 1,
            function: 0,
        }];
        let mut cfg = fw_cfg(
            mem.clone(),
            &MachineInfo {
                memory: 64 << 20,
                cpus: 2,
                disks: &disks,
                image_size: 128 << 10,
            },
        )
        .unwrap();
        assert_eq!(cfg.item(key::NB_CPUS), Some(&[2u8, 0][..]));
        // Walk the directory through the data port, as SeaBIOS does.
        cfg.write(0, &key::FILE_DIR.to_le_bytes());
        let mut byte = || {
            let mut b = [0u8];
            cfg.read(1, &mut b);
            b[0]
        };
        let count = u32::from_be_bytes([byte(), byte(), byte(), byte()]);
        let mut names = Vec::new();
        for _ in 0..count {
            let entry: Vec<u8> = (0..64).map(|_| byte()).collect();
            let name = &entry[8..];
            let end = name.iter().position(|&c| c == 0).unwrap();
            names.push(String::from_utf8(name[..end].to_vec()).unwrap());
        }
        for want in [
            "bootorder",
            "etc/acpi/rsdp",
            "etc/acpi/tables",
            "etc/e820",
            "etc/sercon-port",
            "etc/table-loader",
        ] {
            assert!(names.iter().any(|n| n == want), "{want} in {names:?}");
        }
        assert_eq!(disk_boot_path(disks[0]), "/pci@i0cf8/*@1");
    }
}
