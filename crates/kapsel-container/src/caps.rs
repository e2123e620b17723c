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
