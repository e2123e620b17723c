//! QEMU's firmware configuration device (fw_cfg), as SeaBIOS and OVMF read
//! it: a selector port (0x510, 16-bit), a data port (0x511, one byte at a
//! time) and the DMA interface (0x514 high, 0x518 low address of a
//! `FWCfgDmaAccess` in guest memory; a write of the low half starts it).
//! The layout and the semantics follow QEMU's `docs/specs/fw_cfg.rst` and
//! `hw/nvram/fw_cfg.c`; the items Kapsel provides are listed in
//! docs/design/vmm.md.
//!
//! Everything the guest hands this device is hostile: selectors, offsets,
//! DMA addresses and lengths are bounded and checked, reads past an item
//! read zeros, a DMA request outside guest RAM fails with the error bit,
//! and writes (which no Kapsel item allows) fail the same way.

use crate::bus::BusDevice;
use crate::memory::GuestMem;
use std::collections::BTreeMap;
use vm_memory::{Bytes, GuestAddress, GuestMemory};

/// First port: the selector (offset 0), then data (offset 1) and the DMA
/// address (offsets 4–11).
pub const FW_CFG_PORT: u16 = 0x510;
/// Ports decoded from [`FW_CFG_PORT`]: 0x510–0x51b.
pub const FW_CFG_PORT_COUNT: u64 = 12;

const SELECTOR_OFFSET: u64 = 0;
const DATA_OFFSET: u64 = 1;
const DMA_HIGH_OFFSET: u64 = 4;
const DMA_LOW_OFFSET: u64 = 8;
const DMA_END_OFFSET: u64 = 12;

/// What the DMA register reads back: "QEMU CFG", big-endian.
pub const DMA_SIGNATURE: [u8; 8] = *b"QEMU CFG";

/// Item keys of the legacy interface (`FW_CFG_*` in QEMU).
pub mod key {
    /// "QEMU".
    pub const SIGNATURE: u16 = 0x00;
    /// Interface feature bits (little-endian u32).
    pub const ID: u16 = 0x01;
    /// RAM size in bytes (little-endian u64).
    pub const RAM_SIZE: u16 = 0x03;
    /// No graphics: the firmware uses the serial console.
    pub const NOGRAPHIC: u16 = 0x04;
    /// vCPUs present at boot (little-endian u16).
    pub const NB_CPUS: u16 = 0x05;
    /// Whether the firmware shows its boot menu (little-endian u16).
    pub const BOOT_MENU: u16 = 0x0e;
    /// Most vCPUs the machine can have (little-endian u16).
    pub const MAX_CPUS: u16 = 0x0f;
    /// The file directory (big-endian).
    pub const FILE_DIR: u16 = 0x19;
    /// The first key given to a file.
    pub const FILE_FIRST: u16 = 0x20;
}

/// ID bit 0: the traditional (port) interface.
pub const FEATURE_TRADITIONAL: u32 = 1 << 0;
/// ID bit 1: the DMA interface.
pub const FEATURE_DMA: u32 = 1 << 1;

/// DMA control bits (`FW_CFG_DMA_CTL_*`).
pub mod dma {
    /// The transfer failed.
    pub const ERROR: u32 = 1 << 0;
    /// Read from the item into guest memory.
    pub const READ: u32 = 1 << 1;
    /// Advance the item's offset without transferring.
    pub const SKIP: u32 = 1 << 2;
    /// Select the item in the upper 16 bits first.
    pub const SELECT: u32 = 1 << 3;
    /// Write guest memory into the item.
    pub const WRITE: u32 = 1 << 4;
}

/// Size of a `FWCfgDmaAccess`: be32 control, be32 length, be64 address.
pub const DMA_ACCESS_SIZE: usize = 16;
/// Bytes of a file name in the directory, NUL included.
pub const FILE_NAME_SIZE: usize = 56;
/// Size of one directory entry: be32 size, be16 select, u16 reserved, name.
pub const FILE_ENTRY_SIZE: usize = 64;
/// Most files Kapsel puts in the directory (QEMU's default is 0x20 + ...;
/// Kapsel needs a handful).
pub const MAX_FILES: usize = 64;
/// Largest item Kapsel provides (the ACPI tables are a few KiB).
pub const MAX_ITEM_SIZE: usize = 16 << 20;

/// Why an item could not be added. Errors of the VMM's own set-up, never
/// caused by the guest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FwCfgError {
    /// The name is empty, too long or not printable.
    #[error("fw_cfg file name \"{0}\" is empty, not printable ASCII or longer than 55 bytes")]
    BadName(String),
    /// The name is taken.
    #[error("fw_cfg file \"{0}\" exists already")]
    Duplicate(String),
    /// The directory is full.
    #[error("fw_cfg has no room for another file (at most {MAX_FILES})")]
    Full,
    /// The item is too large.
    #[error("fw_cfg item \"{0}\" is larger than {MAX_ITEM_SIZE} bytes")]
    TooLarge(String),
}

/// Why a DMA request failed (the guest sees the error bit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DmaError {
    /// The guest asked to write an item; none is writable.
    #[error("fw_cfg items are read-only")]
    Write,
    /// The buffer is not all guest RAM, or wraps the address space.
    #[error("DMA buffer outside guest RAM")]
    OutsideRam,
}

/// One decoded `FWCfgDmaAccess`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmaRequest {
    /// Control bits ([`dma`]) with the selector in the upper 16 bits.
    pub control: u32,
    /// Bytes to transfer.
    pub length: u32,
    /// Guest-physical address of the buffer.
    pub address: u64,
}

impl DmaRequest {
    /// Decodes the 16 big-endian bytes the guest wrote.
    pub fn parse(raw: &[u8; DMA_ACCESS_SIZE]) -> Self {
        let be32 = |i: usize| u32::from_be_bytes([raw[i], raw[i + 1], raw[i + 2], raw[i + 3]]);
        let mut addr = [0u8; 8];
        addr.copy_from_slice(&raw[8..16]);
        DmaRequest {
            control: be32(0),
            length: be32(4),
            address: u64::from_be_bytes(addr),
        }
    }
}

/// The items and the guest-visible state of the device.
pub struct FwCfg {
    items: BTreeMap<u16, Vec<u8>>,
    files: Vec<(String, u16)>,
    selector: u16,
    offset: usize,
    dma_high: u32,
    mem: GuestMem,
}

impl FwCfg {
    /// A device with the signature, the feature bits (traditional + DMA)
    /// and an empty file directory, doing DMA into `mem`.
    pub fn new(mem: GuestMem) -> Self {
        let mut cfg = FwCfg {
            items: BTreeMap::new(),
            files: Vec::new(),
            selector: 0,
            offset: 0,
            dma_high: 0,
            mem,
        };
        cfg.items.insert(key::SIGNATURE, b"QEMU".to_vec());
        cfg.items.insert(
            key::ID,
            (FEATURE_TRADITIONAL | FEATURE_DMA).to_le_bytes().to_vec(),
        );
        cfg.rebuild_directory();
        cfg
    }

    /// Sets the legacy item `key` (little-endian values, as QEMU stores them).
    pub fn set_item(&mut self, key: u16, data: Vec<u8>) -> Result<(), FwCfgError> {
        if data.len() > MAX_ITEM_SIZE {
            return Err(FwCfgError::TooLarge(format!("key {key:#x}")));
        }
        self.items.insert(key, data);
        Ok(())
    }

    /// Adds the file `name` with `data` under the next free key.
    pub fn add_file(&mut self, name: &str, data: Vec<u8>) -> Result<u16, FwCfgError> {
        if name.is_empty()
            || name.len() >= FILE_NAME_SIZE
            || !name.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(FwCfgError::BadName(name.into()));
        }
        if self.files.iter().any(|(n, _)| n == name) {
            return Err(FwCfgError::Duplicate(name.into()));
        }
        if self.files.len() >= MAX_FILES {
            return Err(FwCfgError::Full);
        }
        if data.len() > MAX_ITEM_SIZE {
            return Err(FwCfgError::TooLarge(name.into()));
        }
        let key = key::FILE_FIRST + self.files.len() as u16;
        self.items.insert(key, data);
        self.files.push((name.into(), key));
        self.rebuild_directory();
        Ok(key)
    }

    /// The contents of `key`, if set.
    pub fn item(&self, key: u16) -> Option<&[u8]> {
        self.items.get(&key).map(Vec::as_slice)
    }

    /// The directory, sorted by name as QEMU sorts it (OVMF and SeaBIOS
    /// search it linearly; the order is only for stable output).
    fn rebuild_directory(&mut self) {
        let mut files: Vec<_> = self.files.clone();
        files.sort();
        let mut dir = Vec::with_capacity(4 + files.len() * FILE_ENTRY_SIZE);
        dir.extend_from_slice(&(files.len() as u32).to_be_bytes());
        for (name, key) in &files {
            let size = self.items.get(key).map_or(0, Vec::len) as u32;
            dir.extend_from_slice(&size.to_be_bytes());
            dir.extend_from_slice(&key.to_be_bytes());
            dir.extend_from_slice(&[0, 0]);
            let mut field = [0u8; FILE_NAME_SIZE];
            field[..name.len()].copy_from_slice(name.as_bytes());
            dir.extend_from_slice(&field);
        }
        self.items.insert(key::FILE_DIR, dir);
    }

    fn select(&mut self, key: u16) {
        self.selector = key;
        self.offset = 0;
    }

    fn current(&self) -> &[u8] {
        self.items.get(&self.selector).map_or(&[], Vec::as_slice)
    }

    fn read_data_byte(&mut self) -> u8 {
        let b = self.current().get(self.offset).copied().unwrap_or(0);
        // Saturating: the offset stops just past the item's end.
        if self.offset < self.current().len() {
            self.offset += 1;
        }
        b
    }

    /// Runs the DMA request whose descriptor is at `desc` and writes the
    /// resulting control word (0, or [`dma::ERROR`]) back into it.
    pub fn dma(&mut self, desc: u64) {
        let mut raw = [0u8; DMA_ACCESS_SIZE];
        if self.mem.read_slice(&mut raw, GuestAddress(desc)).is_err() {
            // Nowhere to report the error: QEMU ignores such a request too.
            return;
        }
        let req = DmaRequest::parse(&raw);
        let control = match self.transfer(req) {
            Ok(()) => 0,
            Err(_) => dma::ERROR,
        };
        // A descriptor the guest placed across the end of RAM was read,
        // so it can be written back.
        let _ = self
            .mem
            .write_slice(&control.to_be_bytes(), GuestAddress(desc));
    }

    /// Performs `req` on the device state and guest memory.
    pub fn transfer(&mut self, req: DmaRequest) -> Result<(), DmaError> {
        if req.control & dma::SELECT != 0 {
            self.select((req.control >> 16) as u16);
        }
        let op = req.control & (dma::READ | dma::WRITE | dma::SKIP);
        if op == 0 || req.length == 0 {
            return Ok(());
        }
        if req.control & dma::WRITE != 0 {
            // No Kapsel item is writable (vmd refuses writes as well).
            return Err(DmaError::Write);
        }
        let read = req.control & dma::READ != 0;
        let len = req.length as usize;
        if read {
            req.address
                .checked_add(u64::from(req.length))
                .ok_or(DmaError::OutsideRam)?;
            // The whole buffer must be guest RAM, checked before anything is
            // written.
            if !self.mem.check_range(
                GuestAddress(req.address),
                len,
                vm_memory::Permissions::Write,
            ) {
                return Err(DmaError::OutsideRam);
            }
        }
        let item_len = self.current().len();
        let start = self.offset.min(item_len);
        let avail = item_len - start;
        let from_item = avail.min(len);
        if read {
            let data = &self.current()[start..start + from_item];
            self.mem
                .write_slice(data, GuestAddress(req.address))
                .map_err(|_| DmaError::OutsideRam)?;
            // Past the item's end the buffer is zero-filled, as QEMU does.
            let mut addr = req.address + from_item as u64;
            let mut left = len - from_item;
            let zeros = [0u8; 4096];
            while left > 0 {
                let n = left.min(zeros.len());
                self.mem
                    .write_slice(&zeros[..n], GuestAddress(addr))
                    .map_err(|_| DmaError::OutsideRam)?;
                addr += n as u64;
                left -= n;
            }
        }
        self.offset = start + from_item;
        Ok(())
    }
}

impl BusDevice for FwCfg {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match offset {
            DATA_OFFSET => {
                // The data port is one byte wide; wider reads get one
                // item byte per port byte, as QEMU's does for its DMA-less
                // width-1 port.
                for b in data.iter_mut() {
                    *b = self.read_data_byte();
                }
            }
            DMA_HIGH_OFFSET..DMA_END_OFFSET => {
                for (i, b) in data.iter_mut().enumerate() {
                    let at = (offset - DMA_HIGH_OFFSET) as usize + i;
                    *b = DMA_SIGNATURE.get(at).copied().unwrap_or(0);
                }
            }
            _ => data.fill(0),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (offset, data.len()) {
            (SELECTOR_OFFSET, 2) => self.select(u16::from_le_bytes([data[0], data[1]])),
            (DMA_HIGH_OFFSET, 4) => {
                self.dma_high = u32::from_be_bytes([data[0], data[1], data[2], data[3]])
            }
            (DMA_LOW_OFFSET, 4) => {
                let low = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
                let desc = u64::from(self.dma_high) << 32 | u64::from(low);
                self.dma_high = 0;
                self.dma(desc);
            }
            // Data port writes are obsolete (QEMU 2.4 dropped them); other
            // widths and offsets are ignored.
            _ => {}
        }
    }
}

/// One e820 entry as fw_cfg's `etc/e820` holds it: le64 address, le64
/// length, le32 type (20 bytes, packed).
pub fn e820_bytes(entries: &[(u64, u64, u32)]) -> Vec<u8> {
    let mut v = Vec::with_capacity(entries.len() * 20);
    for (addr, len, kind) in entries {
        v.extend_from_slice(&addr.to_le_bytes());
        v.extend_from_slice(&len.to_le_bytes());
        v.extend_from_slice(&kind.to_le_bytes());
    }
    v
}

/// The ACPI linker/loader script (`etc/table-loader`): 128-byte commands
/// that tell the firmware where to allocate the table blobs, which pointer
/// fields to relocate and which checksums to fix
/// (QEMU `hw/acpi/bios-linker-loader.c`; SeaBIOS
/// `src/fw/romfile_loader.c`; OVMF `QemuFwCfgAcpiPlatformDxe`).
pub mod loader {
    /// One command's size.
    pub const ENTRY_SIZE: usize = 128;
    const COMMAND_ALLOCATE: u32 = 1;
    const COMMAND_ADD_POINTER: u32 = 2;
    const COMMAND_ADD_CHECKSUM: u32 = 3;
    /// Allocate anywhere below 4 GiB.
    pub const ZONE_HIGH: u8 = 1;
    /// Allocate in the F segment (0xE0000–0xFFFFF), where an OS finds the RSDP.
    pub const ZONE_FSEG: u8 = 2;

    /// A script being built.
    #[derive(Default)]
    pub struct Script(Vec<u8>);

    fn name(out: &mut [u8], file: &str) {
        let n = file.len().min(super::FILE_NAME_SIZE - 1);
        out[..n].copy_from_slice(&file.as_bytes()[..n]);
    }

    impl Script {
        fn entry(&mut self, command: u32) -> &mut [u8] {
            let start = self.0.len();
            self.0.resize(start + ENTRY_SIZE, 0);
            let e = &mut self.0[start..];
            e[0..4].copy_from_slice(&command.to_le_bytes());
            e
        }

        /// Allocate `file` aligned to `align` in `zone`.
        pub fn allocate(&mut self, file: &str, align: u32, zone: u8) {
            let e = self.entry(COMMAND_ALLOCATE);
            name(&mut e[4..60], file);
            e[60..64].copy_from_slice(&align.to_le_bytes());
            e[64] = zone;
        }

        /// Add the address of `src`'s allocation to the `size`-byte
        /// little-endian field at `offset` in `dest`.
        pub fn add_pointer(&mut self, dest: &str, src: &str, offset: u32, size: u8) {
            let e = self.entry(COMMAND_ADD_POINTER);
            name(&mut e[4..60], dest);
            name(&mut e[60..116], src);
            e[116..120].copy_from_slice(&offset.to_le_bytes());
            e[120] = size;
        }

        /// Fix the byte at `offset` in `file` so that `[start, start +
        /// length)` sums to zero.
        pub fn add_checksum(&mut self, file: &str, offset: u32, start: u32, length: u32) {
            let e = self.entry(COMMAND_ADD_CHECKSUM);
            name(&mut e[4..60], file);
            e[60..64].copy_from_slice(&offset.to_le_bytes());
            e[64..68].copy_from_slice(&start.to_le_bytes());
            e[68..72].copy_from_slice(&length.to_le_bytes());
        }

        /// The script's bytes.
        pub fn into_bytes(self) -> Vec<u8> {
            self.0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn mem() -> GuestMem {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    fn select(cfg: &mut FwCfg, key: u16) {
        cfg.write(SELECTOR_OFFSET, &key.to_le_bytes());
    }

    fn read_bytes(cfg: &mut FwCfg, n: usize) -> Vec<u8> {
        (0..n)
            .map(|_| {
                let mut b = [0u8];
                cfg.read(DATA_OFFSET, &mut b);
                b[0]
            })
            .collect()
    }

    fn start_dma(cfg: &mut FwCfg, desc: u64) {
        cfg.write(DMA_HIGH_OFFSET, &((desc >> 32) as u32).to_be_bytes());
        cfg.write(DMA_LOW_OFFSET, &(desc as u32).to_be_bytes());
    }

    fn put_desc(mem: &GuestMem, at: u64, control: u32, length: u32, address: u64) {
        let mut raw = Vec::new();
        raw.extend_from_slice(&control.to_be_bytes());
        raw.extend_from_slice(&length.to_be_bytes());
        raw.extend_from_slice(&address.to_be_bytes());
        mem.write_slice(&raw, GuestAddress(at)).unwrap();
    }

    fn control_at(mem: &GuestMem, at: u64) -> u32 {
        let mut b = [0u8; 4];
        mem.read_slice(&mut b, GuestAddress(at)).unwrap();
        u32::from_be_bytes(b)
    }

    #[test]
    fn signature_id_and_dma_register() {
        let mut cfg = FwCfg::new(mem());
        select(&mut cfg, key::SIGNATURE);
        assert_eq!(read_bytes(&mut cfg, 6), b"QEMU\0\0");
        select(&mut cfg, key::ID);
        assert_eq!(read_bytes(&mut cfg, 4), vec![3, 0, 0, 0]);
        let mut sig = [0u8; 4];
        cfg.read(DMA_HIGH_OFFSET, &mut sig);
        assert_eq!(&sig, b"QEMU");
        cfg.read(DMA_LOW_OFFSET, &mut sig);
        assert_eq!(&sig, b" CFG");
        // Unknown keys read as zeros.
        select(&mut cfg, 0x7777);
        assert_eq!(read_bytes(&mut cfg, 3), vec![0; 3]);
    }

    #[test]
    fn directory_lists_files_big_endian() {
        let mut cfg = FwCfg::new(mem());
        let b = cfg.add_file("etc/b", vec![1; 5]).unwrap();
        let a = cfg.add_file("bootorder", vec![2; 300]).unwrap();
        assert_eq!((b, a), (0x20, 0x21));
        select(&mut cfg, key::FILE_DIR);
        let dir = read_bytes(&mut cfg, 4 + 2 * FILE_ENTRY_SIZE);
        assert_eq!(&dir[0..4], &[0, 0, 0, 2]);
        let e = &dir[4..4 + FILE_ENTRY_SIZE];
        assert_eq!(&e[0..4], &300u32.to_be_bytes());
        assert_eq!(&e[4..6], &0x21u16.to_be_bytes());
        assert_eq!(&e[8..17], b"bootorder");
        assert_eq!(e[17], 0);
        let e = &dir[4 + FILE_ENTRY_SIZE..];
        assert_eq!(&e[8..13], b"etc/b");
        assert_eq!(
            cfg.add_file("etc/b", vec![]),
            Err(FwCfgError::Duplicate("etc/b".into()))
        );
        assert!(cfg.add_file("", vec![]).is_err());
        assert!(cfg.add_file(&"x".repeat(56), vec![]).is_err());
        assert!(cfg.add_file("a b", vec![]).is_err());
        assert!(cfg.add_file(&"x".repeat(55), vec![]).is_ok());
    }

    #[test]
    fn too_many_files_is_an_error() {
        let mut cfg = FwCfg::new(mem());
        for i in 0..MAX_FILES {
            cfg.add_file(&format!("f{i}"), vec![]).unwrap();
        }
        assert_eq!(cfg.add_file("one-more", vec![]), Err(FwCfgError::Full));
    }

    #[test]
    fn data_port_stops_at_the_end_of_the_item() {
        let mut cfg = FwCfg::new(mem());
        let k = cfg.add_file("etc/x", vec![7, 8]).unwrap();
        select(&mut cfg, k);
        assert_eq!(read_bytes(&mut cfg, 5), vec![7, 8, 0, 0, 0]);
        // Re-selecting starts over.
        select(&mut cfg, k);
        assert_eq!(read_bytes(&mut cfg, 1), vec![7]);
        // Wrong widths on the selector are ignored.
        cfg.write(SELECTOR_OFFSET, &[0]);
        assert_eq!(read_bytes(&mut cfg, 1), vec![8]);
    }

    #[test]
    fn dma_select_read_skip_and_zero_fill() {
        let m = mem();
        let mut cfg = FwCfg::new(m.clone());
        let k = cfg.add_file("etc/data", (1..=10).collect()).unwrap();
        // Select + read 4 bytes to 0x2000.
        put_desc(
            &m,
            0x1000,
            u32::from(k) << 16 | dma::SELECT | dma::READ,
            4,
            0x2000,
        );
        start_dma(&mut cfg, 0x1000);
        assert_eq!(control_at(&m, 0x1000), 0);
        let mut got = [0u8; 4];
        m.read_slice(&mut got, GuestAddress(0x2000)).unwrap();
        assert_eq!(got, [1, 2, 3, 4]);
        // Skip 2, then read 8: 4 bytes of the item and 4 zeros.
        m.write_slice(&[0xee; 8], GuestAddress(0x3000)).unwrap();
        put_desc(&m, 0x1000, dma::SKIP, 2, 0);
        start_dma(&mut cfg, 0x1000);
        put_desc(&m, 0x1000, dma::READ, 8, 0x3000);
        start_dma(&mut cfg, 0x1000);
        assert_eq!(control_at(&m, 0x1000), 0);
        let mut got = [0u8; 8];
        m.read_slice(&mut got, GuestAddress(0x3000)).unwrap();
        assert_eq!(got, [7, 8, 9, 10, 0, 0, 0, 0]);
    }

    #[test]
    fn hostile_dma_requests_fail_cleanly() {
        let m = mem();
        let mut cfg = FwCfg::new(m.clone());
        let k = cfg.add_file("etc/data", vec![5; 16]).unwrap();
        // Buffer beyond RAM, buffer wrapping the address space, huge length.
        for (len, addr) in [
            (16, 0x10_0000u64),
            (16, u64::MAX - 4),
            (u32::MAX, 0x1000),
            (16, 0xffff_fff8),
        ] {
            put_desc(
                &m,
                0x800,
                u32::from(k) << 16 | dma::SELECT | dma::READ,
                len,
                addr,
            );
            start_dma(&mut cfg, 0x800);
            assert_eq!(control_at(&m, 0x800), dma::ERROR, "{len} at {addr:#x}");
        }
        // Writes are refused and change nothing.
        put_desc(
            &m,
            0x800,
            u32::from(k) << 16 | dma::SELECT | dma::WRITE,
            4,
            0,
        );
        start_dma(&mut cfg, 0x800);
        assert_eq!(control_at(&m, 0x800), dma::ERROR);
        assert_eq!(cfg.item(k), Some(&[5u8; 16][..]));
        // A descriptor outside RAM is ignored; one straddling its end too.
        start_dma(&mut cfg, 0xdead_0000_0000);
        start_dma(&mut cfg, 0x10_0000 - 8);
        // Nothing to do: success.
        put_desc(&m, 0x800, 0, 100, 0);
        start_dma(&mut cfg, 0x800);
        assert_eq!(control_at(&m, 0x800), 0);
    }

    #[test]
    fn parse_is_big_endian() {
        let mut raw = [0u8; 16];
        raw[0..4].copy_from_slice(&0x0020_000au32.to_be_bytes());
        raw[4..8].copy_from_slice(&9u32.to_be_bytes());
        raw[8..16].copy_from_slice(&0x1234_5678_9abcu64.to_be_bytes());
        assert_eq!(
            DmaRequest::parse(&raw),
            DmaRequest {
                control: 0x0020_000a,
                length: 9,
                address: 0x1234_5678_9abc
            }
        );
    }

    #[test]
    fn loader_commands_have_the_documented_layout() {
        let mut s = loader::Script::default();
        s.allocate("etc/acpi/rsdp", 16, loader::ZONE_FSEG);
        s.add_pointer("etc/acpi/rsdp", "etc/acpi/tables", 24, 8);
        s.add_checksum("etc/acpi/rsdp", 8, 0, 20);
        let b = s.into_bytes();
        assert_eq!(b.len(), 3 * loader::ENTRY_SIZE);
        assert_eq!(&b[0..4], &1u32.to_le_bytes());
        assert_eq!(&b[4..17], b"etc/acpi/rsdp");
        assert_eq!(&b[60..64], &16u32.to_le_bytes());
        assert_eq!(b[64], 2);
        let p = &b[128..256];
        assert_eq!(&p[0..4], &2u32.to_le_bytes());
        assert_eq!(&p[60..75], b"etc/acpi/tables");
        assert_eq!(&p[116..120], &24u32.to_le_bytes());
        assert_eq!(p[120], 8);
        let c = &b[256..];
        assert_eq!(&c[0..4], &3u32.to_le_bytes());
        assert_eq!(&c[60..72], &[8, 0, 0, 0, 0, 0, 0, 0, 20, 0, 0, 0]);
    }
}
