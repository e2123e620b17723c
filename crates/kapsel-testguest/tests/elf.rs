//! Checks the built guest ELF files: PVH entry note, load address, format.

use std::process::Command;

use kapsel_testguest::{ALL, LOAD_ADDRESS};

const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const EM_X86_64: u16 = 62;
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(b[off..off + 2].try_into().unwrap())
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

struct Segment {
    kind: u32,
    offset: u64,
    paddr: u64,
    filesz: u64,
    memsz: u64,
}

fn segments(elf: &[u8]) -> Vec<Segment> {
    assert_eq!(&elf[..4], b"\x7fELF", "not an ELF file");
    assert_eq!(elf[4], 2, "not ELF64");
    assert_eq!(elf[5], 1, "not little-endian");
    assert_eq!(u16_at(elf, 18), EM_X86_64, "not x86_64");
    let phoff = u64_at(elf, 32) as usize;
    let phentsize = u16_at(elf, 54) as usize;
    let phnum = u16_at(elf, 56) as usize;
    (0..phnum)
        .map(|i| {
            let ph = phoff + i * phentsize;
            Segment {
                kind: u32_at(elf, ph),
                offset: u64_at(elf, ph + 8),
                paddr: u64_at(elf, ph + 24),
                filesz: u64_at(elf, ph + 32),
                memsz: u64_at(elf, ph + 40),
            }
        })
        .collect()
}

/// The PVH entry point from the PT_NOTE segments, as QEMU and linux-loader find it.
fn pvh_entry(elf: &[u8]) -> Option<u32> {
    let align4 = |n: usize| (n + 3) & !3;
    for seg in segments(elf).iter().filter(|s| s.kind == PT_NOTE) {
        let notes = &elf[seg.offset as usize..(seg.offset + seg.filesz) as usize];
        let mut off = 0;
        while off + 12 <= notes.len() {
            let namesz = u32_at(notes, off) as usize;
            let descsz = u32_at(notes, off + 4) as usize;
            let kind = u32_at(notes, off + 8);
            let name = &notes[off + 12..off + 12 + namesz];
            let desc = off + 12 + align4(namesz);
            if name == b"Xen\0" && kind == XEN_ELFNOTE_PHYS32_ENTRY && descsz == 4 {
                return Some(u32_at(notes, desc));
            }
            off = desc + align4(descsz);
        }
    }
    None
}

#[test]
fn every_guest_has_a_pvh_entry_inside_its_image() {
    for (name, path) in ALL {
        let elf = std::fs::read(path).unwrap_or_else(|e| panic!("{name}: {path}: {e}"));
        let entry = pvh_entry(&elf).unwrap_or_else(|| panic!("{name}: no Xen PVH entry note"));
        let loads: Vec<_> = segments(&elf)
            .into_iter()
            .filter(|s| s.kind == PT_LOAD)
            .collect();
        assert!(!loads.is_empty(), "{name}: no PT_LOAD segment");
        assert!(
            loads
                .iter()
                .all(|s| s.paddr >= LOAD_ADDRESS && s.memsz >= s.filesz),
            "{name}: a segment loads below {LOAD_ADDRESS:#x}"
        );
        let entry = u64::from(entry);
        assert!(
            loads
                .iter()
                .any(|s| (s.paddr..s.paddr + s.filesz).contains(&entry)),
            "{name}: PVH entry {entry:#x} is outside the loaded image"
        );
    }
}

#[test]
fn readelf_shows_the_pvh_note() {
    let Ok(probe) = Command::new("readelf").arg("--version").output() else {
        println!("SKIP: readelf (binutils) not found");
        return;
    };
    assert!(probe.status.success());
    for (name, path) in ALL {
        let out = Command::new("readelf").args(["-n", path]).output().unwrap();
        assert!(out.status.success(), "{name}: readelf -n failed");
        let text = String::from_utf8_lossy(&out.stdout);
        // binutils names type 18 only in newer releases; match either form.
        let has_note = text
            .lines()
            .any(|l| l.contains("Xen") && (l.contains("0x00000012") || l.contains("PHYS32_ENTRY")));
        assert!(
            has_note,
            "{name}: readelf -n shows no Xen note of type 18:\n{text}"
        );
    }
}
