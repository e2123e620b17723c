//! Capabilities: the set a container keeps, and dropping the rest from the
//! bounding, effective, permitted and inheritable sets.

/// A set of capabilities, bit N for capability N (`CAP_CHOWN` is 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    /// Docker's default set less `CAP_MKNOD` (cgroup v2 has no device
    /// filter without BPF, so no new device nodes at all), plus
    /// `CAP_NET_ADMIN` (a system container configures its own `eth0`; the
    /// capability only reaches its own network namespace). Everything
    /// else is dropped: `sys_module`, `sys_rawio`, `sys_time`, `sys_boot`,
    /// `sys_admin` (no mounts: the container could mount a fresh, writable
    /// /proc), `mac_admin`, `mac_override`, `syslog`, `bpf`, ...
    pub const DEFAULT: CapSet = CapSet::of(&[
        cap::CHOWN,
        cap::DAC_OVERRIDE,
        cap::FOWNER,
        cap::FSETID,
        cap::KILL,
        cap::SETGID,
        cap::SETUID,
        cap::SETPCAP,
        cap::NET_BIND_SERVICE,
        cap::NET_ADMIN,
        cap::NET_RAW,
        cap::SYS_CHROOT,
        cap::AUDIT_WRITE,
        cap::SETFCAP,
    ]);

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

/// The highest capability this kernel knows (`/proc/sys/kernel/cap_last_cap`).
pub(crate) fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Drops every capability outside `keep` from the bounding set and the
/// ambient, effective, permitted and inheritable sets of the calling
/// process. Runs in the container's init before `execve`: it only makes
/// system calls (no allocation), so it is safe after `clone`.
pub(crate) fn drop_to(keep: CapSet, last_cap: u32) -> Result<(), i32> {
    for c in 0..=last_cap.min(63) {
        if !keep.has(c) {
            // SAFETY: prctl with integer arguments only.
            if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, c as libc::c_ulong, 0, 0, 0) } != 0 {
                return Err(errno());
            }
        }
    }
    // SAFETY: prctl with integer arguments only. EINVAL on kernels without
    // ambient capabilities is harmless: there is nothing to clear then.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        );
    }
    let low = keep.0 as u32;
    let high = (keep.0 >> 32) as u32;
    let mut hdr = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [
        CapData {
            effective: low,
            permitted: low,
            inheritable: low,
        },
        CapData {
            effective: high,
            permitted: high,
            inheritable: high,
        },
    ];
    // SAFETY: capset reads a version-3 header and two data words, which
    // `hdr` and `data` are, with their C layout.
    if unsafe { libc::syscall(libc::SYS_capset, &mut hdr as *mut CapHeader, data.as_ptr()) } != 0 {
        return Err(errno());
    }
    Ok(())
}

/// Switches to `uid`, `gid` and the supplementary `groups`, keeping the
/// permitted capabilities and raising the effective set to them again, so
/// that [`drop_to`] can still shrink the bounding set afterwards. Raw
/// system calls only: safe in a child cloned from a multi-threaded
/// process (see `child::become_root`).
pub(crate) fn switch_user(uid: u32, gid: u32, groups: &[libc::gid_t]) -> bool {
    // SAFETY: prctl, setgroups (reading `groups.len()` ids), setresgid,
    // setresuid and capget/capset on locals with their C layout.
    unsafe {
        libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0);
        let ok = libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) == 0
            && libc::syscall(libc::SYS_setresgid, gid, gid, gid) == 0
            && libc::syscall(libc::SYS_setresuid, uid, uid, uid) == 0;
        libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0);
        if !ok {
            return false;
        }
        let mut hdr = CapHeader {
            version: LINUX_CAPABILITY_VERSION_3,
            pid: 0,
        };
        let mut data = [CapData {
            effective: 0,
            permitted: 0,
            inheritable: 0,
        }; 2];
        if libc::syscall(
            libc::SYS_capget,
            &mut hdr as *mut CapHeader,
            data.as_mut_ptr(),
        ) != 0
        {
            return false;
        }
        for d in &mut data {
            d.effective = d.permitted;
        }
        libc::syscall(libc::SYS_capset, &mut hdr as *mut CapHeader, data.as_ptr()) == 0
    }
}

fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_set_drops_the_dangerous_ones() {
        let d = CapSet::DEFAULT;
        for c in [
            cap::SYS_MODULE,
            cap::SYS_RAWIO,
            cap::SYS_TIME,
            cap::SYS_BOOT,
            cap::SYS_ADMIN,
            cap::MAC_ADMIN,
            cap::MAC_OVERRIDE,
            cap::MKNOD,
            cap::BPF,
            cap::SYSLOG,
        ] {
            assert!(!d.has(c), "capability {c} should be dropped");
        }
        assert!(d.has(cap::CHOWN) && d.has(cap::NET_ADMIN) && d.has(cap::SETUID));
        assert!(d.with(cap::SYS_ADMIN).has(cap::SYS_ADMIN));
        assert!(last_cap() >= cap::BPF);
    }
}
