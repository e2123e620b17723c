//! Guest memory: anonymous mappings registered with KVM.

use crate::arch::x86_64::layout;
use crate::error::{Error, Result};
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

/// The guest memory type used throughout the VMM.
pub type GuestMem = GuestMemoryMmap<()>;

/// Allocates `memory` bytes of guest RAM laid out around the MMIO hole.
/// Pages are mapped lazily: untouched guest memory costs the host nothing.
/// The mappings ask for transparent huge pages (see [`advise_huge_pages`]).
pub fn create(memory: u64) -> Result<GuestMem> {
    let ranges: Vec<(GuestAddress, usize)> = layout::ram_ranges(memory)
        .into_iter()
        .map(|(start, len)| {
            usize::try_from(len)
                .map(|len| (GuestAddress(start), len))
                .map_err(|_| Error::Memory(format!("{len} bytes do not fit this host")))
        })
        .collect::<Result<_>>()?;
    let mem = GuestMemoryMmap::from_ranges(&ranges).map_err(|e| {
        Error::Memory(format!(
            "cannot map {memory} bytes: {e}; lower --memory or free host memory"
        ))
    })?;
    advise_huge_pages(&mem);
    Ok(mem)
}

/// Asks for transparent huge pages on guest RAM (MADV_HUGEPAGE; hosts
/// default to THP "madvise"), as QEMU does: fewer TLB misses for the guest,
/// and a guest buffer of a megabyte is one piece of host memory, so that
/// O_DIRECT disk I/O into it is one segment instead of 256 (on a host whose
/// own disk is virtio, a 1 MiB read of 4 KiB pages needs splitting, and
/// went at a third of the speed). A host without THP refuses: no harm.
fn advise_huge_pages(mem: &GuestMem) {
    for region in mem.iter() {
        let Ok(host) = region.get_host_address(vm_memory::MemoryRegionAddress(0)) else {
            continue;
        };
        let Ok(len) = usize::try_from(region.len()) else {
            continue;
        };
        // SAFETY: [host, host + len) is one anonymous mapping owned by
        // `mem`; MADV_HUGEPAGE only changes how the kernel backs it, never
        // its contents or its validity.
        let rc = unsafe { libc::madvise(host.cast(), len, libc::MADV_HUGEPAGE) };
        if rc != 0 {
            tracing::debug!(
                "guest memory: no transparent huge pages: {}",
                std::io::Error::last_os_error()
            );
        }
    }
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
}
