//! Guest memory: anonymous mappings registered with KVM.

use crate::arch::x86_64::layout;
use crate::error::{Error, Result};
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use std::sync::Arc;
use vm_memory::{
    GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, GuestRegionMmap,
    MmapRegion,
};

/// The guest memory type used throughout the VMM.
pub type GuestMem = GuestMemoryMmap<()>;

/// Size of an x86 large page (a PMD entry): the unit in which the host
/// backs memory with transparent huge pages and KVM maps it into the
/// guest's nested page tables.
pub const HUGE_PAGE: usize = 2 << 20;

/// Guest RAM: a [`GuestMem`] (it dereferences to one) over mappings this
/// type owns. Each mapping starts on a [`HUGE_PAGE`] boundary, so that the
/// guest-physical and host-virtual addresses of every page agree modulo
/// 2 MiB: KVM maps guest memory with 2 MiB pages in the nested page tables
/// (EPT/NPT) only then, otherwise it falls back to 4 KiB mappings and takes
/// a nested page fault for every 4 KiB page the guest touches. QEMU aligns
/// its RAM the same way (`qemu_ram_mmap`, `QEMU_VMALLOC_ALIGN`); Linux only
/// aligns large anonymous mappings by itself since 6.7, so older hosts
/// (Debian 12's 6.1) need it done here.
pub struct GuestRam {
    mem: GuestMem,
    regions: Vec<Arc<GuestRegionMmap<()>>>,
}

impl std::ops::Deref for GuestRam {
    type Target = GuestMem;
    fn deref(&self) -> &GuestMem {
        &self.mem
    }
}

impl Drop for GuestRam {
    fn drop(&mut self) {
        self.mem = GuestMem::new();
        for region in self.regions.drain(..) {
            // Unmapped only when no clone of the memory is left anywhere:
            // Arc::try_unwrap succeeds only for the last reference.
            match Arc::try_unwrap(region) {
                Ok(region) => {
                    let len = region.len() as usize;
                    let addr = region.as_ptr();
                    drop(region);
                    // SAFETY: [addr, addr + len) is the mapping made by
                    // map_aligned for this region, and the region, its
                    // only user, is gone: nothing can reach it any more.
                    unsafe { libc::munmap(addr.cast(), len) };
                }
                Err(_) => {
                    tracing::warn!("guest memory still in use at teardown; leaving it mapped")
                }
            }
        }
    }
}

/// Maps `len` bytes of private anonymous memory starting on a
/// [`HUGE_PAGE`] boundary: maps `len + HUGE_PAGE`, then unmaps the slack
/// before and after the aligned part.
fn map_aligned(len: usize) -> std::io::Result<*mut u8> {
    let total = len
        .checked_add(HUGE_PAGE)
        .ok_or_else(|| std::io::Error::from_raw_os_error(libc::ENOMEM))?;
    // SAFETY: a new anonymous mapping at an address of the kernel's choice;
    // it overlaps nothing that exists.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            total,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    let head = (HUGE_PAGE - (base as usize) % HUGE_PAGE) % HUGE_PAGE;
    let tail = total - head - len;
    // SAFETY: both ranges lie inside the mapping just made and outside the
    // aligned part [base + head, base + head + len) that is kept; mmap
    // returns page-aligned addresses, so both are whole pages.
    unsafe {
        let start = base.cast::<u8>().add(head);
        if head > 0 {
            libc::munmap(base, head);
        }
        if tail > 0 {
            libc::munmap(start.add(len).cast(), tail);
        }
        Ok(start)
    }
}

/// Allocates `memory` bytes of guest RAM laid out around the MMIO hole.
/// Pages are mapped lazily: untouched guest memory costs the host nothing.
/// The mappings are 2 MiB-aligned (see [`GuestRam`]) and ask for
/// transparent huge pages (see [`advise_huge_pages`]).
pub fn create(memory: u64) -> Result<GuestRam> {
    let mut ram = GuestRam {
        mem: GuestMem::new(),
        regions: Vec::new(),
    };
    for (start, len) in layout::ram_ranges(memory) {
        let len = usize::try_from(len)
            .map_err(|_| Error::Memory(format!("{len} bytes do not fit this host")))?;
        let addr = map_aligned(len).map_err(|e| {
            Error::Memory(format!(
                "cannot map {memory} bytes: {e}; lower --memory or free host memory"
            ))
        })?;
        // SAFETY: [addr, addr + len) is the mapping map_aligned just made;
        // it stays mapped until GuestRam's drop finds the region unused.
        let built = unsafe {
            vm_memory::mmap::MmapRegionBuilder::<()>::new(len)
                .with_raw_mmap_pointer(addr)
                .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
                .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE)
                .build()
        };
        let region: Option<GuestRegionMmap<()>> = built
            .ok()
            .and_then(|r: MmapRegion<()>| GuestRegionMmap::new(r, GuestAddress(start)));
        let Some(region) = region else {
            // SAFETY: the mapping was made above and nothing refers to it.
            unsafe { libc::munmap(addr.cast(), len) };
            return Err(Error::Memory(format!(
                "guest RAM at {start:#x}, {len} bytes: cannot describe the mapping"
            )));
        };
        ram.regions.push(Arc::new(region));
    }
    ram.mem = GuestMem::from_arc_regions(ram.regions.clone())
        .map_err(|e| Error::Memory(format!("guest RAM layout: {e}")))?;
    advise_huge_pages(&ram.mem);
    Ok(ram)
}

/// Asks for transparent huge pages on guest RAM (MADV_HUGEPAGE; hosts
/// default to THP "madvise"), as QEMU does: fewer TLB misses for the guest,
/// and a guest buffer of a megabyte is one piece of host memory, so that
/// O_DIRECT disk I/O into it is one segment instead of 256 (on a host whose
/// own disk is virtio, a 1 MiB read of 4 KiB pages needs splitting, and
/// went at a third of the speed). A host without THP refuses: no harm.
///
/// The first 2 MiB of guest-physical memory are left to 4 KiB pages (see
/// [`huge_page_range`]).
fn advise_huge_pages(mem: &GuestMem) {
    for region in mem.iter() {
        let Ok(host) = region.get_host_address(vm_memory::MemoryRegionAddress(0)) else {
            continue;
        };
        let Ok(len) = usize::try_from(region.len()) else {
            continue;
        };
        let Some((skip, huge_len)) = huge_page_range(region.start_addr().0, len) else {
            no_huge_pages(host, len);
            continue;
        };
        no_huge_pages(host, skip);
        // SAFETY: [host + skip, host + skip + huge_len) lies inside one
        // anonymous mapping owned by `mem` (huge_page_range keeps it within
        // the region); MADV_HUGEPAGE only changes how the kernel backs it,
        // never its contents or its validity.
        let rc = unsafe { libc::madvise(host.add(skip).cast(), huge_len, libc::MADV_HUGEPAGE) };
        if rc != 0 {
            tracing::debug!(
                "guest memory: no transparent huge pages: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

/// Keeps `[host, host + len)` of guest RAM in 4 KiB pages even where the
/// host's THP mode is "always" (MADV_NOHUGEPAGE), so that the low frame
/// costs the same on every host.
fn no_huge_pages(host: *mut u8, len: usize) {
    if len == 0 {
        return;
    }
    // SAFETY: callers pass the start of a guest RAM mapping owned by the
    // GuestMem being advised and a length within it; MADV_NOHUGEPAGE only
    // changes how the kernel backs it, never its contents or validity.
    let rc = unsafe { libc::madvise(host.cast(), len, libc::MADV_NOHUGEPAGE) };
    if rc != 0 {
        tracing::debug!(
            "guest memory: MADV_NOHUGEPAGE refused: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// The part of the guest RAM region at guest-physical `start`, `len`
/// bytes long, to advise for huge pages, as (offset into the region,
/// length); `None` when nothing is left.
///
/// Guest-physical 0–2 MiB is kept in 4 KiB pages. It holds what the VMM
/// writes before the guest runs (boot page tables, the PVH start info or
/// Linux zero page, the command line, the ACPI tables at 0xE0000) and, in
/// the guest, the real-mode and BIOS areas that Linux reserves: a few
/// dozen KiB in use, which as a huge page cost 2 MiB of host RAM in every
/// VM (a small guest's whole footprint: the `hello` and `idle` test guests
/// have 70-90 KiB resident this way, 2 MiB before). It gains the guest nothing on any host: KVM
/// maps guest memory with 2 MiB pages only where the whole 2 MiB frame is
/// huge on the host too, and the first frame is where guests keep the
/// least (QEMU's pc and q35 machines split it into several memory slots at
/// the VGA hole and BIOS ROMs, so KVM maps it with 4 KiB pages there as
/// well). Every other 2 MiB frame is advised as before.
fn huge_page_range(start: u64, len: usize) -> Option<(usize, usize)> {
    let skip = if start < HUGE_PAGE as u64 {
        HUGE_PAGE - start as usize
    } else {
        0
    };
    let rest = len.checked_sub(skip)?;
    (rest > 0).then_some((skip, rest))
}

/// Registers every region of `mem` with the VM as a KVM memory slot.
pub fn register(vm: &VmFd, mem: &GuestMem) -> Result<()> {
    for (slot, region) in mem.iter().enumerate() {
        let host = region
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .map_err(|e| Error::Memory(format!("region without host address: {e}")))?;
        let desc = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: the region's host mapping is owned by `mem`, which the VM
        // keeps alive for as long as the VM fd exists, and the slots do not
        // overlap because the regions of a GuestMemoryMmap never do.
        unsafe { vm.set_user_memory_region(desc) }
            .map_err(|e| Error::kvm("KVM_SET_USER_MEMORY_REGION", e))?;
    }
    Ok(())
}

/// Bytes of guest memory currently resident on the host (pages the guest
/// or the VMM touched), from mincore(2).
pub fn resident_bytes(mem: &GuestMem) -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    let mut total = 0;
    for region in mem.iter() {
        let Ok(host) = region.get_host_address(vm_memory::MemoryRegionAddress(0)) else {
            continue;
        };
        let len = region.len();
        let mut vec = vec![0u8; len.div_ceil(page) as usize];
        // SAFETY: [host, host + len) is one live mapping owned by `mem`, and
        // `vec` has one byte per page of it, as mincore requires.
        let rc = unsafe { libc::mincore(host.cast(), len as usize, vec.as_mut_ptr()) };
        if rc == 0 {
            total += vec.iter().filter(|b| **b & 1 != 0).count() as u64 * page;
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn memory_is_readable_and_writable_on_both_sides_of_the_hole() {
        let mem = create(3 << 30 | 2 << 20).unwrap();
        assert_eq!(mem.num_regions(), 2);
        mem.write_obj(0xdead_beefu32, GuestAddress(0x1000)).unwrap();
        assert_eq!(
            mem.read_obj::<u32>(GuestAddress(0x1000)).unwrap(),
            0xdead_beef
        );
        mem.write_obj(7u8, GuestAddress(layout::MMIO_HOLE_END + 0x1000))
            .unwrap();
        assert!(mem
            .read_obj::<u8>(GuestAddress(layout::MMIO_HOLE_START))
            .is_err());
    }

    #[test]
    fn resident_memory_counts_touched_pages() {
        let mem = create(64 << 20).unwrap();
        let before = resident_bytes(&mem);
        for i in 0..16u64 {
            mem.write_obj(1u8, GuestAddress(0x10_0000 + i * 0x1000))
                .unwrap();
        }
        let after = resident_bytes(&mem);
        assert!(after >= before + 16 * 4096, "{before} -> {after}");
        assert!(after < 64 << 20);
    }

    #[test]
    fn the_first_two_mib_are_not_advised_for_huge_pages() {
        assert_eq!(huge_page_range(0, 64 << 20), Some((2 << 20, 62 << 20)));
        assert_eq!(huge_page_range(0, 2 << 20), None);
        assert_eq!(huge_page_range(0, 1 << 20), None);
        assert_eq!(huge_page_range(4 << 30, 1 << 30), Some((0, 1 << 30)));
    }

    /// The host backs what the VMM writes below 2 MiB (boot structures,
    /// ACPI) with 4 KiB pages: five pages written, not a 2 MiB huge page.
    #[test]
    fn low_memory_is_backed_by_small_pages() {
        let mem = create(64 << 20).unwrap();
        for i in 0..4u64 {
            mem.write_obj(1u8, GuestAddress(0x9000 + i * 0x1000))
                .unwrap();
        }
        mem.write_obj(1u8, GuestAddress(0xe_0000)).unwrap();
        let resident = resident_bytes(&mem);
        assert!(resident < 1 << 20, "{resident} bytes resident");
    }

    #[test]
    fn guest_ram_is_aligned_to_huge_pages() {
        for size in [64 << 20, 3 << 30 | 2 << 20, (64 << 20) + 4096] {
            let mem = create(size).unwrap();
            for region in mem.iter() {
                let host = region
                    .get_host_address(vm_memory::MemoryRegionAddress(0))
                    .unwrap() as usize;
                assert_eq!(host % HUGE_PAGE, 0, "{size}: {host:#x}");
                assert_eq!(region.start_addr().0 as usize % HUGE_PAGE, 0);
            }
            let clone: GuestMem = (*mem).clone();
            drop(mem);
            // A clone outliving the owner keeps the memory usable.
            clone.write_obj(1u8, GuestAddress(0x1000)).unwrap();
        }
    }
}
