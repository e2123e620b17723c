//! Capabilities: the set a container keeps. The set type, the capability
//! numbers and dropping the rest are the host's ([`kapsel_host::caps`]).

/// Runs in the container's init before `execve` (no allocation: safe
/// after `clone`).
pub(crate) use kapsel_host::caps::drop_to;
pub use kapsel_host::caps::{cap, last_cap, CapSet};

/// What a container keeps by default: Docker's default set less
/// `CAP_MKNOD` (cgroup v2 has no device filter without BPF, so no new
/// device nodes at all), plus `CAP_NET_ADMIN` (a system container
/// configures its own `eth0`; the capability only reaches its own network
/// namespace). Everything else is dropped: `sys_module`, `sys_rawio`,
/// `sys_time`, `sys_boot`, `sys_admin` (no mounts: the container could
/// mount a fresh, writable /proc), `mac_admin`, `mac_override`, `syslog`,
/// `bpf`, ...
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

/// Switches to `uid`, `gid` and the supplementary `groups`, keeping the
/// permitted capabilities and raising the effective set to them again, so
/// that [`drop_to`] can still shrink the bounding set afterwards (runc's
/// order). Raw system calls only: safe in a child cloned from a
/// multi-threaded process (see `child::become_root`).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_set_drops_the_dangerous_ones() {
        let d = DEFAULT;
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
    }
}
