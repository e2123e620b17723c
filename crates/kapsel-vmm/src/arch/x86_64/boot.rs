//! Loading the kernel and initrd and writing the boot information the
//! guest expects: the Linux zero page (bzImage, 64-bit boot protocol) or
//! the PVH `hvm_start_info` (ELF with a PVH entry note).

use super::layout::{self, *};
use super::regs::EntryMode;
use crate::error::{Error, Result};
use crate::memory::GuestMem;
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::{BzImage, KernelLoader, KernelLoaderResult};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use vm_memory::{Bytes, GuestAddress};

/// `hvm_start_info.magic`.
const PVH_MAGIC: u32 = 0x336e_c578;
/// The zero page's boot-loader type: "undefined", as Firecracker and QEMU
/// direct boot use.
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// setup_header.xloadflags: the kernel has a 64-bit entry point at +0x200.
const XLF_KERNEL_64: u16 = 1 << 0;
/// Offset of the 64-bit entry point from the protected-mode kernel start.
const STARTUP_64_OFFSET: u64 = 0x200;
/// setup_header.loadflags: the boot loader set heap_end_ptr.
const CAN_USE_HEAP: u8 = 0x80;
const PAGE_SIZE: u64 = 0x1000;

/// What the boot vCPU needs to start the loaded kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootEntry {
    /// How the CPU starts.
    pub mode: EntryMode,
    /// The first instruction.
    pub entry: u64,
}

/// The kernel formats Kapsel recognises from a file's first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    /// An ELF image (must carry a PVH note).
    Elf,
    /// A Linux bzImage.
    BzImage,
}

/// A kernel or initrd, opened once before the VMM's sandbox and read again
/// (from its start, with the descriptor's own offset) at every boot.
#[derive(Debug)]
pub struct BootFile {
    /// The path as given, for messages.
    pub path: PathBuf,
    /// The open file.
    pub file: File,
}

impl BootFile {
    /// Opens `path`; `what` ("kernel", "initrd") names it in the error.
    pub fn open(what: &'static str, path: &Path) -> Result<BootFile> {
        let file = File::open(path).map_err(|source| Error::File {
            what,
            path: path.to_path_buf(),
            source,
        })?;
        Ok(BootFile {
            path: path.to_path_buf(),
            file,
        })
    }
}

/// Identifies a kernel image by its magic numbers.
pub fn detect_format(file: &File, path: &Path) -> Result<KernelFormat> {
    let mut head = [0u8; 0x206];
    let read = read_up_to(file, &mut head).map_err(|source| Error::File {
        what: "kernel",
        path: path.to_path_buf(),
        source,
    })?;
    if read >= 4 && head[0..4] == *b"\x7fELF" {
        return Ok(KernelFormat::Elf);
    }
    if read >= 0x206 && head[0x202..0x206] == *b"HdrS" {
        return Ok(KernelFormat::BzImage);
    }
    Err(Error::BadKernel {
        path: path.to_path_buf(),
        detail: if read == 0 {
            "the file is empty".into()
        } else {
            "neither an ELF file nor a bzImage (no \"HdrS\" boot header)".into()
        },
    })
}

fn read_up_to(mut file: &File, buf: &mut [u8]) -> std::io::Result<usize> {
    file.seek(SeekFrom::Start(0))?;
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// The firmware's reset vector code (16-bit real mode): write the ACPI
/// reset value to the reset register, then halt.
///   mov dx, ACPI_RESET_PORT; mov al, ACPI_RESET_VALUE; out dx, al; cli; hlt; jmp $-2
pub fn reset_stub() -> [u8; 11] {
    let [port_lo, port_hi] = ACPI_RESET_PORT.to_le_bytes();
    [
        0xba,
        port_lo,
        port_hi, // mov dx, imm16
        0xb0,
        ACPI_RESET_VALUE, // mov al, imm8
        0xee,             // out dx, al
        0xfa,             // cli
        0xf4,             // hlt
        0xeb,
        0xfd, // jmp to the hlt
        0x90,
    ]
}

/// Writes [`reset_stub`] at the reset vector.
pub fn write_reset_stub(mem: &GuestMem) -> Result<()> {
    mem.write_slice(&reset_stub(), GuestAddress(RESET_VECTOR))
        .map_err(|e| Error::Memory(format!("reset vector: {e}")))
}

/// Everything the boot step needs to know about the VM.
pub struct BootSpec<'a> {
    /// The kernel image.
    pub kernel: &'a BootFile,
    /// Optional initrd.
    pub initrd: Option<&'a BootFile>,
    /// Kernel command line.
    pub cmdline: &'a str,
    /// Guest RAM size.
    pub memory: u64,
    /// Where the RSDP lives.
    pub rsdp: u64,
}

/// Loads the kernel (and initrd) into `mem`, writes the boot information
/// and returns where the boot vCPU starts.
pub fn load(mem: &GuestMem, spec: &BootSpec) -> Result<BootEntry> {
    let kernel_path = spec.kernel.path.as_path();
    let mut file = &spec.kernel.file;
    let format = detect_format(file, kernel_path)?;
    file.seek(SeekFrom::Start(0))
        .map_err(|source| Error::File {
            what: "kernel",
            path: kernel_path.to_path_buf(),
            source,
        })?;
    write_reset_stub(mem)?;
    let bad = |detail: String| Error::BadKernel {
        path: kernel_path.to_path_buf(),
        detail,
    };
    let highmem = Some(GuestAddress(HIMEM_START));
    let loaded: KernelLoaderResult = match format {
        KernelFormat::Elf => Elf::load(mem, None, &mut file, highmem),
        KernelFormat::BzImage => BzImage::load(mem, None, &mut file, highmem),
    }
    .map_err(|e| {
        bad(format!(
            "{e}; or it does not fit in {} bytes of guest memory",
            spec.memory
        ))
    })?;

    match format {
        KernelFormat::Elf => {
            let PvhBootCapability::PvhEntryPresent(entry) = loaded.pvh_boot_cap else {
                return Err(bad("an ELF image without a PVH entry note".into()));
            };
            write_cmdline(mem, spec.cmdline, CMDLINE_MAX_SIZE)?;
            let top = layout::low_ram_end(spec.memory);
            let initrd = load_initrd(mem, spec, loaded.kernel_end, top)?;
            write_pvh_info(mem, spec, initrd)?;
            Ok(BootEntry {
                mode: EntryMode::Pvh,
                entry: entry.0,
            })
        }
        KernelFormat::BzImage => {
            let header = loaded
                .setup_header
                .ok_or_else(|| bad("bzImage without a setup header".into()))?;
            if header.xloadflags & XLF_KERNEL_64 == 0 {
                return Err(bad(
                    "the kernel has no 64-bit entry point (boot protocol 2.12+ needed)".into(),
                ));
            }
            let limit = header.cmdline_size as usize;
            write_cmdline(mem, spec.cmdline, limit.max(1))?;
            let initrd_max = u64::from(header.initrd_addr_max).saturating_add(1);
            let top = layout::low_ram_end(spec.memory).min(initrd_max);
            let initrd = load_initrd(mem, spec, loaded.kernel_end, top)?;
            write_zero_page(mem, spec, header, initrd)?;
            super::regs::write_identity_map(mem)?;
            Ok(BootEntry {
                mode: EntryMode::Linux64,
                entry: loaded.kernel_load.0 + STARTUP_64_OFFSET,
            })
        }
    }
}

/// Writes the NUL-terminated command line; returns its length without the NUL.
fn write_cmdline(mem: &GuestMem, cmdline: &str, limit: usize) -> Result<usize> {
    if cmdline.len() + 1 > limit.min(CMDLINE_MAX_SIZE) {
        return Err(Error::InvalidConfig(format!(
            "kernel command line is {} bytes; this kernel accepts at most {} (shorten --cmdline)",
            cmdline.len(),
            limit.min(CMDLINE_MAX_SIZE) - 1
        )));
    }
    if cmdline.as_bytes().contains(&0) {
        return Err(Error::InvalidConfig(
            "kernel command line contains a NUL byte".into(),
        ));
    }
    let mut bytes = cmdline.as_bytes().to_vec();
    bytes.push(0);
    mem.write_slice(&bytes, GuestAddress(CMDLINE_START))
        .map_err(|e| Error::Memory(format!("command line: {e}")))?;
    Ok(cmdline.len())
}

/// Places the initrd page-aligned as high as possible below `top`, above
/// the kernel; returns `(address, size)`.
fn load_initrd(
    mem: &GuestMem,
    spec: &BootSpec,
    kernel_end: u64,
    top: u64,
) -> Result<Option<(u64, u64)>> {
    let Some(initrd) = spec.initrd else {
        return Ok(None);
    };
    let path = initrd.path.as_path();
    let file_err = |source| Error::File {
        what: "initrd",
        path: path.to_path_buf(),
        source,
    };
    let mut file = &initrd.file;
    let size = file.metadata().map_err(file_err)?.len();
    // A reboot reads it again from the start.
    file.seek(SeekFrom::Start(0)).map_err(file_err)?;
    let too_large = || Error::InitrdTooLarge {
        path: path.to_path_buf(),
        size,
        limit: top,
    };
    let addr = top.checked_sub(size).ok_or_else(too_large)? & !(PAGE_SIZE - 1);
    if addr < kernel_end.max(HIMEM_START) {
        return Err(too_large());
    }
    let len = usize::try_from(size).map_err(|_| too_large())?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, len)
        .map_err(|e| Error::Memory(format!("loading initrd {}: {e}", path.display())))?;
    Ok(Some((addr, size)))
}

fn write_zero_page(
    mem: &GuestMem,
    spec: &BootSpec,
    mut hdr: setup_header,
    initrd: Option<(u64, u64)>,
) -> Result<()> {
    hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    hdr.cmd_line_ptr = CMDLINE_START as u32;
    hdr.loadflags |= CAN_USE_HEAP;
    hdr.heap_end_ptr = 0xfe00;
    if let Some((addr, size)) = initrd {
        hdr.ramdisk_image = addr as u32;
        hdr.ramdisk_size = size as u32;
    }
    let mut params = boot_params {
        hdr,
        acpi_rsdp_addr: spec.rsdp,
        ..Default::default()
    };
    let map = layout::e820_map(spec.memory);
    if map.len() > params.e820_table.len() {
        return Err(Error::Memory("too many e820 entries".into()));
    }
    for (slot, e) in params.e820_table.iter_mut().zip(&map) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind as u32,
        };
    }
    params.e820_entries = map.len() as u8;
    mem.write_obj(params, GuestAddress(ZERO_PAGE_START))
        .map_err(|e| Error::Memory(format!("zero page: {e}")))
}

fn write_pvh_info(mem: &GuestMem, spec: &BootSpec, initrd: Option<(u64, u64)>) -> Result<()> {
    let map = layout::e820_map(spec.memory);
    let mut info = hvm_start_info {
        magic: PVH_MAGIC,
        version: 1,
        cmdline_paddr: CMDLINE_START,
        rsdp_paddr: spec.rsdp,
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: map.len() as u32,
        ..Default::default()
    };
    let mem_err = |e: vm_memory::GuestMemoryError| Error::Memory(format!("PVH start info: {e}"));
    if let Some((paddr, size)) = initrd {
        info.nr_modules = 1;
        info.modlist_paddr = PVH_MODLIST_START;
        let module = hvm_modlist_entry {
            paddr,
            size,
            ..Default::default()
        };
        mem.write_obj(module, GuestAddress(PVH_MODLIST_START))
            .map_err(mem_err)?;
    }
    for (i, e) in map.iter().enumerate() {
        let entry = hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind as u32,
            reserved: 0,
        };
        let addr = PVH_MEMMAP_START + (i * std::mem::size_of::<hvm_memmap_table_entry>()) as u64;
        mem.write_obj(entry, GuestAddress(addr)).map_err(mem_err)?;
    }
    mem.write_obj(info, GuestAddress(PVH_INFO_START))
        .map_err(mem_err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory;
    use std::io::Write;

    fn temp(name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("kapsel-boot-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::File::create(&p).unwrap().write_all(bytes).unwrap();
        p
    }

    fn open(path: &Path) -> BootFile {
        BootFile::open("kernel", path).unwrap()
    }

    fn spec<'a>(kernel: &'a BootFile, initrd: Option<&'a BootFile>) -> BootSpec<'a> {
        BootSpec {
            kernel,
            initrd,
            cmdline: "console=ttyS0",
            memory: 64 << 20,
            rsdp: ACPI_START,
        }
    }

    #[test]
    fn rejects_files_that_are_not_kernels() {
        let mem = memory::create(64 << 20).unwrap();
        let empty = temp("empty", b"");
        let text = temp("text", b"#!/bin/sh\necho not a kernel\n");
        for (p, want) in [(&empty, "empty"), (&text, "neither an ELF")] {
            let err = load(&mem, &spec(&open(p), None)).unwrap_err();
            assert_eq!(err.exit_code(), 2);
            assert!(err.to_string().contains(want), "{err}");
        }
        let missing = Path::new("/nonexistent/vmlinuz");
        let err = BootFile::open("kernel", missing).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/vmlinuz"), "{err}");
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn rejects_a_truncated_bzimage() {
        let mem = memory::create(64 << 20).unwrap();
        let mut img = vec![0u8; 0x1000];
        img[0x202..0x206].copy_from_slice(b"HdrS");
        img[0x206..0x208].copy_from_slice(&0x20fu16.to_le_bytes());
        let p = temp("bz", &img);
        let err = load(&mem, &spec(&open(&p), None)).unwrap_err();
        assert_eq!(err.exit_code(), 2, "{err}");
    }

    #[test]
    fn reset_stub_writes_the_acpi_reset_register() {
        let mem = memory::create(64 << 20).unwrap();
        write_reset_stub(&mem).unwrap();
        let mut code = [0u8; 11];
        mem.read_slice(&mut code, GuestAddress(RESET_VECTOR))
            .unwrap();
        assert_eq!(code[0], 0xba);
        assert_eq!(u16::from_le_bytes([code[1], code[2]]), ACPI_RESET_PORT);
        assert_eq!(&code[3..6], &[0xb0, ACPI_RESET_VALUE, 0xee]);
        // The stub ends inside the 1 MiB real-mode space.
        assert!(RESET_VECTOR + code.len() as u64 <= HIMEM_START);
    }

    #[test]
    fn command_line_limits() {
        let mem = memory::create(64 << 20).unwrap();
        assert_eq!(write_cmdline(&mem, "quiet", 2048).unwrap(), 5);
        let mut b = [0u8; 6];
        mem.read_slice(&mut b, GuestAddress(CMDLINE_START)).unwrap();
        assert_eq!(&b, b"quiet\0");
        let long = "x".repeat(2048);
        let err = write_cmdline(&mem, &long, 2048).unwrap_err().to_string();
        assert!(err.contains("at most 2047"), "{err}");
        assert!(write_cmdline(&mem, "a\0b", 2048).is_err());
    }

    #[test]
    fn initrd_goes_high_and_must_fit() {
        let mem = memory::create(64 << 20).unwrap();
        let rd = open(&temp("initrd", &[0x5a; 10_000]));
        let k = open(Path::new("/dev/null"));
        let placed = load_initrd(&mem, &spec(&k, Some(&rd)), 0x200000, 64 << 20)
            .unwrap()
            .unwrap();
        assert_eq!(placed.1, 10_000);
        assert_eq!(placed.0 % PAGE_SIZE, 0);
        assert!(placed.0 + placed.1 <= 64 << 20);
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(placed.0 + 9_999)).unwrap(),
            0x5a
        );
        // Loaded again (a reboot) from the same open file: the same bytes.
        mem.write_obj(0u8, GuestAddress(placed.0 + 9_999)).unwrap();
        let again = load_initrd(&mem, &spec(&k, Some(&rd)), 0x200000, 64 << 20).unwrap();
        assert_eq!(again, Some(placed));
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(placed.0 + 9_999)).unwrap(),
            0x5a
        );
        let err = load_initrd(&mem, &spec(&k, Some(&rd)), (64 << 20) - 4096, 64 << 20).unwrap_err();
        assert!(matches!(err, Error::InitrdTooLarge { .. }), "{err}");
        assert!(err.to_string().contains("--memory"));
    }

    #[test]
    fn pvh_start_info_describes_memory_and_modules() {
        let mem = memory::create(64 << 20).unwrap();
        let k = open(Path::new("/dev/null"));
        write_pvh_info(&mem, &spec(&k, None), Some((0x300000, 0x1234))).unwrap();
        let info: hvm_start_info = mem.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
        assert_eq!(info.magic, PVH_MAGIC);
        assert_eq!(info.nr_modules, 1);
        assert_eq!(info.rsdp_paddr, ACPI_START);
        assert_eq!(info.memmap_entries, 4);
        let m: hvm_modlist_entry = mem.read_obj(GuestAddress(info.modlist_paddr)).unwrap();
        assert_eq!((m.paddr, m.size), (0x300000, 0x1234));
        let last: hvm_memmap_table_entry = mem
            .read_obj(GuestAddress(PVH_MEMMAP_START + 2 * 24))
            .unwrap();
        assert_eq!(
            (last.addr, last.addr + last.size, last.type_),
            (HIMEM_START, 64 << 20, 1)
        );
    }
}
