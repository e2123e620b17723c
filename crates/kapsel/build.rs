//! Link the kapsel binary with packed relative relocations (DT_RELR).
//!
//! A position-independent executable carries one relocation record per
//! pointer in its data (vtables, string tables: about 17 000 here). As
//! RELA records (24 bytes each) they made a 415 KiB `.rela.dyn` that the
//! dynamic loader reads in every process at start, so that every VM
//! process had those pages resident. As RELR (a bitmap of the same
//! relocations) they take a few KiB. Needs binutils >= 2.38 to link and
//! glibc >= 2.36 to run, which Debian 12 (the supported host) has; the
//! loader refuses such a binary cleanly on an older glibc
//! (`GLIBC_ABI_DT_RELR not found`). Fedora, Ubuntu 24.04 and ChromeOS link
//! their own packages this way.
fn main() {
    println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
}
