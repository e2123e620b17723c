//! Capabilities: sets of them, and dropping the rest from the bounding,
//! ambient, effective, permitted and inheritable sets of the calling
//! process. Which set a process keeps is its caller's policy (the
//! container runtime keeps Docker's default set less `mknod`; the VM
//! process keeps none).
//!
//! The dropping functions only make system calls (no allocation), so a
//! child may call them after `clone`.

/// A set of capabilities, bit N for capability N (`CAP_CHOWN` is 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CapSet(pub u64);

/// Capability numbers from `<linux/capability.h>` that Kapsel names.
#[allow(missing_docs)]
pub mod cap {
    pub const CHOWN: u32 = 0;
    pub const DAC_OVERRIDE: u32 = 1;
    pub const DAC_READ_SEARCH: u32 = 2;
    pub const FOWNER: u32 = 3;
    pub const FSETID: u32 = 4;
    pub const KILL: u32 = 5;
    pub const SETGID: u32 = 6;
    pub const SETUID: u32 = 7;
    pub const SETPCAP: u32 = 8;
    pub const NET_BIND_SERVICE: u32 = 10;
    pub const NET_BROADCAST: u32 = 11;
    pub const NET_ADMIN: u32 = 12;
    pub const NET_RAW: u32 = 13;
    pub const IPC_LOCK: u32 = 14;
    pub const SYS_MODULE: u32 = 16;
    pub const SYS_RAWIO: u32 = 17;
    pub const SYS_CHROOT: u32 = 18;
    pub const SYS_PTRACE: u32 = 19;
    pub const SYS_ADMIN: u32 = 21;
    pub const SYS_BOOT: u32 = 22;
    pub const SYS_NICE: u32 = 23;
    pub const SYS_RESOURCE: u32 = 24;
    pub const SYS_TIME: u32 = 25;
    pub const MKNOD: u32 = 27;
    pub const AUDIT_WRITE: u32 = 29;
    pub const SETFCAP: u32 = 31;
    pub const MAC_OVERRIDE: u32 = 32;
    pub const MAC_ADMIN: u32 = 33;
    pub const SYSLOG: u32 = 34;
    pub const BPF: u32 = 39;
}

impl CapSet {
    /// No capabilities.
    pub const EMPTY: CapSet = CapSet(0);

    /// The set holding exactly `caps`.
    pub const fn of(caps: &[u32]) -> CapSet {
        let mut bits = 0u64;
        let mut i = 0;
        while i < caps.len() {
            bits |= 1 << caps[i];
            i += 1;
        }
        CapSet(bits)
    }

    /// Whether `cap` is in the set.
    pub fn has(self, cap: u32) -> bool {
        cap < 64 && self.0 & (1 << cap) != 0
    }

    /// The set with `cap` added.
    pub fn with(self, cap: u32) -> CapSet {
        CapSet(self.0 | (1 << cap))
    }
}

/// The highest capability this kernel knows (`/proc/sys/kernel/cap_last_cap`),
/// or 63 when /proc cannot tell (the drop then stops at the kernel's last
/// one, which refuses the next with EINVAL). Read it before `clone` or
/// before leaving /proc behind.
pub fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(63)
}

/// A failed step of [`drop_to`]: the system call and its errno.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapError {
    /// `prctl(PR_CAPBSET_DROP)`, `prctl(PR_CAP_AMBIENT)` or `capset`.
    pub step: &'static str,
    /// The errno.
    pub errno: i32,
}

impl std::fmt::Display for CapError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {}",
            self.step,
            std::io::Error::from_raw_os_error(self.errno)
        )
    }
}

impl std::error::Error for CapError {}

/// Drops every capability outside `keep` from the bounding set, up to
/// `last_cap` or the kernel's last one (EINVAL past it). Needs
/// `CAP_SETPCAP`: without it the kernel answers EPERM, returned as an
/// error (a caller with no capabilities to lose may take that as done).
pub fn drop_bounding(keep: CapSet, last_cap: u32) -> Result<(), CapError> {
    for c in 0..=last_cap.min(63) {
        if keep.has(c) {
            continue;
        }
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, c as libc::c_ulong, 0, 0, 0) } != 0 {
            let errno = crate::errno();
            if errno == libc::EINVAL {
                break; // past the kernel's last capability
            }
            return Err(CapError {
                step: "prctl(PR_CAPBSET_DROP)",
                errno,
            });
        }
    }
    Ok(())
}

/// Empties the ambient set. EINVAL (a kernel without ambient capabilities)
/// is success: there is nothing to clear then.
pub fn clear_ambient() -> Result<(), CapError> {
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    match rc {
        0 => Ok(()),
        _ if crate::errno() == libc::EINVAL => Ok(()),
        _ => Err(CapError {
            step: "prctl(PR_CAP_AMBIENT_CLEAR_ALL)",
            errno: crate::errno(),
        }),
    }
}

/// `_LINUX_CAPABILITY_VERSION_3`: 64-bit capability sets in two words.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Sets the effective, permitted and inheritable sets to `keep` (only
/// lowering works: `capset` refuses a gain with EPERM).
pub fn set_capabilities(keep: CapSet) -> Result<(), CapError> {
    set_sets(keep, keep)
}

/// Sets the effective and permitted sets to `keep` and the inheritable set
/// to `inheritable`.
pub fn set_sets(keep: CapSet, inheritable: CapSet) -> Result<(), CapError> {
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let word = |shift: u32| CapData {
        effective: (keep.0 >> shift) as u32,
        permitted: (keep.0 >> shift) as u32,
        inheritable: (inheritable.0 >> shift) as u32,
    };
    let data = [word(0), word(32)];
    // SAFETY: capset reads a version-3 header and two data words, which
    // `header` and `data` are, with their C layout.
    if unsafe {
        libc::syscall(
            libc::SYS_capset,
            &mut header as *mut CapHeader,
            data.as_ptr(),
        )
    } != 0
    {
        return Err(CapError {
            step: "capset",
            errno: crate::errno(),
        });
    }
    Ok(())
}

/// Keeps only `keep`: drops the rest from the bounding set
/// ([`drop_bounding`]), empties the ambient set and sets the effective,
/// permitted and inheritable sets to `keep`.
pub fn drop_to(keep: CapSet, last_cap: u32) -> Result<(), CapError> {
    drop_bounding(keep, last_cap)?;
    clear_ambient()?;
    set_capabilities(keep)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_hold_what_they_are_made_of() {
        let s = CapSet::of(&[cap::CHOWN, cap::BPF]);
        assert!(s.has(cap::CHOWN) && s.has(cap::BPF));
        assert!(!s.has(cap::SYS_ADMIN));
        assert!(s.with(cap::SYS_ADMIN).has(cap::SYS_ADMIN));
        assert!(!s.has(64) && !CapSet(u64::MAX).has(200));
        assert_eq!(CapSet::EMPTY, CapSet::default());
        assert!(last_cap() >= cap::BPF);
    }

    #[test]
    fn errors_name_the_step() {
        let e = CapError {
            step: "capset",
            errno: libc::EPERM,
        };
        assert!(e.to_string().starts_with("capset: "), "{e}");
    }

    #[test]
    fn a_thread_drops_to_its_set() {
        // On a thread of its own: capabilities are per thread, and the
        // test harness's other threads keep theirs.
        std::thread::spawn(|| {
            let keep = CapSet::of(&[cap::CHOWN]);
            match drop_to(keep, last_cap()) {
                Ok(()) => {}
                // Not root (or no CAP_SETPCAP): nothing to drop.
                Err(e) if e.errno == libc::EPERM => return,
                Err(e) => panic!("{e}"),
            }
            let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
            let field = |name: &str| {
                let line = status.lines().find(|l| l.starts_with(name)).unwrap();
                u64::from_str_radix(line[name.len()..].trim(), 16).unwrap()
            };
            assert_eq!(field("CapEff:"), keep.0);
            assert_eq!(field("CapPrm:"), keep.0);
            assert_eq!(field("CapBnd:") & !keep.0, 0);
        })
        .join()
        .unwrap();
    }
}
