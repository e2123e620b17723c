//! The default seccomp profile: a denylist in the spirit of Docker's
//! default profile. The listed system calls fail with `EPERM`; everything
//! else is allowed (the dropped capabilities already confine most of it,
//! this is the second wall). Compiled with `seccompiler` before the
//! container is cloned, so the child only installs ready programs.
//!
//! Beyond [`DENIED`], with arguments, as Docker's profile decides them:
//!
//! - Namespaces: a container that does not keep `CAP_SYS_ADMIN` may not
//!   make any (`unshare` and `clone` with a `CLONE_NEW*` flag, `setns`);
//!   `clone3`, whose flags a filter cannot read, fails with `ENOSYS`, so
//!   the C library falls back to `clone`. A user namespace needs no
//!   capability at all, and gives its maker every capability over the
//!   kernel code behind it (netfilter, mounts of some file systems): the
//!   main source of container escapes of recent years. A container that
//!   keeps `CAP_SYS_ADMIN` (systemd as init, for its services' sandboxing)
//!   may make them, as under Docker with `--cap-add SYS_ADMIN`.
//! - `personality`: only the values Docker allows (Linux, `PER_LINUX32`,
//!   `UNAME26`, both, and the query); `READ_IMPLIES_EXEC` and
//!   `ADDR_NO_RANDOMIZE` are refused.
//! - `socket(AF_VSOCK)`: refused; vsock is not namespaced (a container
//!   would reach the host's and its VMs' vsock services).
//! - x32 system calls (numbers with bit 30 set) fail with `ENOSYS`: the
//!   denylist matches x86-64 numbers only, and `unshare` through the x32
//!   table would otherwise pass it.
//!
//! Allowed as under Docker (on kernels from 4.8, where ptrace can no
//! longer change a traced process's system call past seccomp): `ptrace`,
//! `process_vm_readv` and `process_vm_writev` (the kernel's ptrace access
//! check applies: same ids or `CAP_SYS_PTRACE`, which containers do not
//! hold by default); `name_to_handle_at` (a handle is useless without
//! `open_by_handle_at`, which is denied, and systemd needs it to find
//! mount points).

use crate::caps::{cap, CapSet};
use crate::error::{Error, Result};
use seccompiler::{
    sock_filter, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};
use std::collections::BTreeMap;

/// System calls the default profile denies, and why.
pub const DENIED: &[(&str, i64)] = &[
    // Kernel modules and kernel replacement.
    ("init_module", libc::SYS_init_module),
    ("finit_module", libc::SYS_finit_module),
    ("delete_module", libc::SYS_delete_module),
    ("kexec_load", libc::SYS_kexec_load),
    ("kexec_file_load", libc::SYS_kexec_file_load),
    ("reboot", libc::SYS_reboot),
    // The kernel keyring is not namespaced.
    ("keyctl", libc::SYS_keyctl),
    ("add_key", libc::SYS_add_key),
    ("request_key", libc::SYS_request_key),
    // eBPF and perf reach kernel memory and host-wide state.
    ("bpf", libc::SYS_bpf),
    ("perf_event_open", libc::SYS_perf_event_open),
    // Opens files by handle, bypassing the mount namespace (the "shocker" escape).
    ("open_by_handle_at", libc::SYS_open_by_handle_at),
    // The clock is not namespaced.
    ("settimeofday", libc::SYS_settimeofday),
    ("clock_settime", libc::SYS_clock_settime),
    ("clock_adjtime", libc::SYS_clock_adjtime),
    // Host-wide switches.
    ("acct", libc::SYS_acct),
    ("swapon", libc::SYS_swapon),
    ("swapoff", libc::SYS_swapoff),
    ("quotactl", libc::SYS_quotactl),
    ("lookup_dcookie", libc::SYS_lookup_dcookie),
    #[cfg(target_arch = "x86_64")]
    ("iopl", libc::SYS_iopl),
    #[cfg(target_arch = "x86_64")]
    ("ioperm", libc::SYS_ioperm),
    #[cfg(target_arch = "x86_64")]
    ("uselib", libc::SYS_uselib),
    #[cfg(target_arch = "x86_64")]
    ("ustat", libc::SYS_ustat),
    #[cfg(target_arch = "x86_64")]
    ("_sysctl", libc::SYS__sysctl),
    // Page faults handled in user space widen kernel race windows.
    ("userfaultfd", libc::SYS_userfaultfd),
    // Mount API calls: without CAP_SYS_ADMIN they fail anyway; with it
    // (a caller that keeps it) the classic mount(2) stays available.
    ("fsopen", libc::SYS_fsopen),
    ("fsconfig", libc::SYS_fsconfig),
    ("fsmount", libc::SYS_fsmount),
    ("fspick", libc::SYS_fspick),
    ("open_tree", libc::SYS_open_tree),
    ("move_mount", libc::SYS_move_mount),
];

/// The `CLONE_NEW*` flags `clone` takes (`CLONE_NEWTIME` shares its bit
/// with the exit signal there): the mask of Docker's profile.
const CLONE_NAMESPACES: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWCGROUP
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET) as u64;

/// `CLONE_NEWTIME` (linux/sched.h), which not every libc target names.
const CLONE_NEWTIME: u64 = 0x80;

/// The namespace flags of `unshare`.
const UNSHARE_NAMESPACES: u64 = CLONE_NAMESPACES | CLONE_NEWTIME;

/// `personality` values allowed (Docker's list): Linux, `PER_LINUX32`,
/// `UNAME26`, `UNAME26 | PER_LINUX32`, and `0xffffffff` (query only).
const PERSONALITIES: &[u64] = &[0x0, 0x8, 0x2_0000, 0x2_0008, 0xffff_ffff];

/// vsock's address family (linux/socket.h).
const AF_VSOCK: u64 = 40;

/// The programs of the default profile for a container that keeps the
/// capabilities `keep` (the namespace rules depend on `CAP_SYS_ADMIN`).
/// All are installed; the kernel applies the strictest answer.
pub fn profile(keep: CapSet) -> Result<Vec<BpfProgram>> {
    let sys_admin = keep.has(cap::SYS_ADMIN);
    Ok(vec![denylist(sys_admin)?, abi_program(sys_admin)])
}

/// A program given as raw BPF (seccomp_export_bpf(3)'s output: each
/// instruction 8 bytes, code, jt, jf, k in host order).
pub fn program_from_bpf(bytes: &[u8]) -> Result<BpfProgram> {
    if bytes.is_empty() || !bytes.len().is_multiple_of(8) || bytes.len() / 8 > u16::MAX as usize {
        return Err(seccomp_err(format!(
            "a BPF program of {} bytes is not whole instructions of 8 bytes (at most 65535)",
            bytes.len()
        )));
    }
    Ok(bytes
        .chunks_exact(8)
        .map(|c| sock_filter {
            code: u16::from_ne_bytes([c[0], c[1]]),
            jt: c[2],
            jf: c[3],
            k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
        })
        .collect())
}

fn seccomp_err(e: impl std::fmt::Display) -> Error {
    Error::Seccomp(e.to_string())
}

/// A rule matching when `arg` (of `len`) has `bit` set.
fn bit_set(arg: u8, len: SeccompCmpArgLen, bit: u64) -> Result<SeccompRule> {
    let cond =
        SeccompCondition::new(arg, len, SeccompCmpOp::MaskedEq(bit), bit).map_err(seccomp_err)?;
    SeccompRule::new(vec![cond]).map_err(seccomp_err)
}

/// One rule per bit of `mask`: a call with any of them set matches.
fn any_bit(arg: u8, len: SeccompCmpArgLen, mask: u64) -> Result<Vec<SeccompRule>> {
    (0..64)
        .map(|b| 1u64 << b)
        .filter(|bit| mask & bit != 0)
        .map(|bit| bit_set(arg, len.clone(), bit))
        .collect()
}

/// [`DENIED`] and the calls denied by their arguments, all with `EPERM`.
fn denylist(sys_admin: bool) -> Result<BpfProgram> {
    let arch =
        TargetArch::try_from(std::env::consts::ARCH).map_err(|e| seccomp_err(format!("{e:?}")))?;
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        DENIED.iter().map(|&(_, nr)| (nr, Vec::new())).collect();
    let personality = PERSONALITIES
        .iter()
        .map(|&v| SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, v))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(seccomp_err)?;
    rules.insert(
        libc::SYS_personality,
        vec![SeccompRule::new(personality).map_err(seccomp_err)?],
    );
    let vsock = SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, AF_VSOCK)
        .map_err(seccomp_err)?;
    rules.insert(
        libc::SYS_socket,
        vec![SeccompRule::new(vec![vsock]).map_err(seccomp_err)?],
    );
    if !sys_admin {
        rules.insert(libc::SYS_setns, Vec::new());
        rules.insert(
            libc::SYS_unshare,
            any_bit(0, SeccompCmpArgLen::Dword, UNSHARE_NAMESPACES)?,
        );
        // x86-64's clone(flags, stack, ...): the flags are the first argument.
        rules.insert(
            libc::SYS_clone,
            any_bit(0, SeccompCmpArgLen::Qword, CLONE_NAMESPACES)?,
        );
    }
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
    .map_err(seccomp_err)?;
    BpfProgram::try_from(filter).map_err(seccomp_err)
}

// Classic BPF, for the small program seccompiler cannot express (it
// matches system call numbers one by one, with a single action).
const BPF_LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const BPF_JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
const BPF_JGE_K: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
const BPF_RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
/// Offsets in `struct seccomp_data`.
const DATA_NR: u32 = 0;
const DATA_ARCH: u32 = 4;
/// `__X32_SYSCALL_BIT`.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;

fn stmt(code: u16, k: u32) -> sock_filter {
    sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

/// `ENOSYS` for x32 system calls and, without `CAP_SYS_ADMIN`, for
/// `clone3` (so the C library falls back to `clone`, whose flags the
/// denylist checks); everything else passes to the denylist (which kills
/// other architectures). On other architectures it allows everything.
fn abi_program(sys_admin: bool) -> BpfProgram {
    let enosys = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
    if std::env::consts::ARCH != "x86_64" {
        return vec![stmt(BPF_RET_K, libc::SECCOMP_RET_ALLOW)];
    }
    let clone3 = if sys_admin {
        u32::MAX
    } else {
        libc::SYS_clone3 as u32
    };
    vec![
        stmt(BPF_LD_W_ABS, DATA_ARCH),
        // Not x86-64 (i386): allow here, the denylist kills it.
        jump(BPF_JEQ_K, AUDIT_ARCH_X86_64, 0, 3),
        stmt(BPF_LD_W_ABS, DATA_NR),
        jump(BPF_JGE_K, X32_SYSCALL_BIT, 2, 0),
        jump(BPF_JEQ_K, clone3, 1, 0),
        stmt(BPF_RET_K, libc::SECCOMP_RET_ALLOW),
        stmt(BPF_RET_K, enosys),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_compiles_and_lists_each_call_once() {
        let progs = profile(crate::caps::DEFAULT).unwrap();
        assert!(progs[0].len() > DENIED.len());
        let mut nrs: Vec<i64> = DENIED.iter().map(|d| d.1).collect();
        nrs.sort();
        nrs.dedup();
        assert_eq!(nrs.len(), DENIED.len());
    }

    #[test]
    fn the_namespace_calls_stay_for_a_container_with_cap_sys_admin() {
        let confined = profile(crate::caps::DEFAULT).unwrap();
        let admin = profile(crate::caps::DEFAULT.with(cap::SYS_ADMIN)).unwrap();
        assert!(confined[0].len() > admin[0].len());
        assert_eq!(CLONE_NAMESPACES & libc::CSIGNAL as u64, 0);
    }
}
