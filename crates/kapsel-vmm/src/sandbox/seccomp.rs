//! Per-thread seccomp allowlists (step 4 of the sandbox).
//!
//! Each kind of thread has its own list ([`allowlist`]); anything else
//! kills the whole VM process with SIGSYS (`SECCOMP_RET_KILL_PROCESS`), so
//! the supervisor sees the process die rather than a thread quietly
//! vanish. Threads start from the main thread and inherit its filter
//! before adding their own, and the kernel runs every filter a thread has:
//! the main thread's list is therefore the union of all lists plus what
//! only it needs, and a vCPU or I/O thread ends up with exactly its own.
//!
//! Adding a thread kind is one variant in [`ThreadKind`] and one arm in
//! [`allowlist`]; adding a syscall is one line in that arm.

use super::SandboxError;
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use std::collections::BTreeMap;

pub use seccompiler::BpfProgram as Program;

/// The kinds of thread in a VM process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// The event loop: builds each boot's VM, starts the other threads,
    /// reads signals and console input, stops the VM.
    Main,
    /// One per vCPU: `KVM_RUN` and the port-I/O and MMIO exits.
    Vcpu,
    /// Virtqueue work: doorbells, disk images, taps, entropy.
    Io,
}

impl ThreadKind {
    /// Every kind (the main thread's list covers them all).
    pub const ALL: [ThreadKind; 3] = [ThreadKind::Main, ThreadKind::Vcpu, ThreadKind::Io];

    /// The name used in messages.
    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Main => "main",
            ThreadKind::Vcpu => "vCPU",
            ThreadKind::Io => "I/O",
        }
    }
}

/// KVM ioctl request numbers, computed from the kernel's encoding (type
/// 0xAE, number, direction and argument size) as kvm-ioctls does.
mod nr {
    use kvm_bindings::{
        kvm_cpuid2, kvm_fpu, kvm_ioeventfd, kvm_irq_routing, kvm_irqfd, kvm_lapic_state, kvm_msi,
        kvm_msr_list, kvm_msrs, kvm_pit_config, kvm_regs, kvm_sregs, kvm_userspace_memory_region,
    };
    use vmm_sys_util::{ioctl_io_nr, ioctl_ior_nr, ioctl_iow_nr, ioctl_iowr_nr};

    const KVMIO: u32 = 0xAE;
    ioctl_io_nr!(KVM_CREATE_VM, KVMIO, 0x01);
    ioctl_iowr_nr!(KVM_GET_MSR_INDEX_LIST, KVMIO, 0x02, kvm_msr_list);
    ioctl_io_nr!(KVM_CHECK_EXTENSION, KVMIO, 0x03);
    ioctl_io_nr!(KVM_GET_VCPU_MMAP_SIZE, KVMIO, 0x04);
    ioctl_iowr_nr!(KVM_GET_SUPPORTED_CPUID, KVMIO, 0x05, kvm_cpuid2);
    ioctl_io_nr!(KVM_CREATE_VCPU, KVMIO, 0x41);
    ioctl_iow_nr!(
        KVM_SET_USER_MEMORY_REGION,
        KVMIO,
        0x46,
        kvm_userspace_memory_region
    );
    ioctl_io_nr!(KVM_SET_TSS_ADDR, KVMIO, 0x47);
    ioctl_iow_nr!(KVM_SET_IDENTITY_MAP_ADDR, KVMIO, 0x48, u64);
    ioctl_io_nr!(KVM_CREATE_IRQCHIP, KVMIO, 0x60);
    ioctl_iow_nr!(KVM_SET_GSI_ROUTING, KVMIO, 0x6a, kvm_irq_routing);
    ioctl_iow_nr!(KVM_IRQFD, KVMIO, 0x76, kvm_irqfd);
    ioctl_iow_nr!(KVM_CREATE_PIT2, KVMIO, 0x77, kvm_pit_config);
    ioctl_iow_nr!(KVM_IOEVENTFD, KVMIO, 0x79, kvm_ioeventfd);
    ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);
    ioctl_ior_nr!(KVM_GET_REGS, KVMIO, 0x81, kvm_regs);
    ioctl_iow_nr!(KVM_SET_REGS, KVMIO, 0x82, kvm_regs);
    ioctl_ior_nr!(KVM_GET_SREGS, KVMIO, 0x83, kvm_sregs);
    ioctl_iow_nr!(KVM_SET_SREGS, KVMIO, 0x84, kvm_sregs);
    ioctl_iowr_nr!(KVM_GET_MSRS, KVMIO, 0x88, kvm_msrs);
    ioctl_iow_nr!(KVM_SET_MSRS, KVMIO, 0x89, kvm_msrs);
    ioctl_iow_nr!(KVM_SET_FPU, KVMIO, 0x8d, kvm_fpu);
    ioctl_ior_nr!(KVM_GET_LAPIC, KVMIO, 0x8e, kvm_lapic_state);
    ioctl_iow_nr!(KVM_SET_LAPIC, KVMIO, 0x8f, kvm_lapic_state);
    ioctl_iow_nr!(KVM_SET_CPUID2, KVMIO, 0x90, kvm_cpuid2);
    ioctl_iow_nr!(KVM_SIGNAL_MSI, KVMIO, 0xa5, kvm_msi);
    ioctl_io_nr!(KVM_KVMCLOCK_CTRL, KVMIO, 0xad);
}
use nr::*;

/// TUNSETOFFLOAD: the virtio-net driver's offloads reach the tap.
const TUNSETOFFLOAD: u64 = 0x4004_54d0;
/// The terminal ioctls of the console (raw mode on, restored at exit).
const TCGETS: u64 = 0x5401;
const TCSETS: u64 = 0x5402;

/// `SECCOMP_SET_MODE_FILTER`: a thread installing its own filter.
const SECCOMP_SET_MODE_FILTER: u64 = 1;

fn cond(arg: u8, op: SeccompCmpOp, value: u64) -> SeccompCondition {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value).expect("argument index below 6")
}

/// One rule per value: the syscall is allowed when argument `arg` (its
/// low 32 bits) equals one of `values`.
pub fn arg_in(arg: u8, values: &[u64]) -> Vec<SeccompRule> {
    values
        .iter()
        .map(|&v| SeccompRule::new(vec![cond(arg, SeccompCmpOp::Eq, v)]).expect("one condition"))
        .collect()
}

/// ioctl requests are compared on their low 32 bits: the kernel truncates
/// the request to `unsigned int` too.
fn ioctls(requests: &[u64]) -> Vec<SeccompRule> {
    arg_in(1, requests)
}

/// A syscall and the rules on its arguments; no rules: always allowed.
pub type Entry = (i64, Vec<SeccompRule>);

/// A syscall allowed with any arguments.
pub fn any(nr: libc::c_long) -> Entry {
    (nr, Vec::new())
}

/// What every thread needs: memory allocation, locks, signals (the vCPU
/// kick), time, thread exit and logging to stderr.
fn common() -> Vec<Entry> {
    vec![
        any(libc::SYS_read),
        any(libc::SYS_write),
        any(libc::SYS_writev),
        any(libc::SYS_close),
        any(libc::SYS_futex),
        any(libc::SYS_mmap),
        any(libc::SYS_munmap),
        any(libc::SYS_mprotect),
        any(libc::SYS_madvise),
        any(libc::SYS_mremap),
        any(libc::SYS_brk),
        any(libc::SYS_rt_sigprocmask),
        any(libc::SYS_rt_sigreturn),
        any(libc::SYS_sigaltstack),
        any(libc::SYS_clock_gettime),
        any(libc::SYS_clock_nanosleep),
        any(libc::SYS_nanosleep),
        any(libc::SYS_sched_yield),
        any(libc::SYS_getrandom),
        any(libc::SYS_getpid),
        any(libc::SYS_gettid),
        any(libc::SYS_restart_syscall),
        any(libc::SYS_exit),
        any(libc::SYS_exit_group),
        // Always answered ENOENT by the errno layer (see `errno_layer`):
        // glibc opens /proc/sys/vm/overcommit_memory when it trims a
        // thread's malloc arena, and copes when it cannot.
        any(libc::SYS_openat),
        // Rust's std checks a descriptor before closing it (debug builds).
        (
            libc::SYS_fcntl,
            arg_in(1, &[libc::F_GETFD as u64, libc::F_GETFL as u64]),
        ),
    ]
}

/// The syscalls of one kind of thread, beyond [`common`] (and, for the
/// main thread, beyond every other kind's: see [`rules`]).
pub fn allowlist(kind: ThreadKind) -> Vec<Entry> {
    match kind {
        ThreadKind::Vcpu => vec![
            (
                libc::SYS_ioctl,
                ioctls(&[
                    KVM_RUN(),
                    // Doorbells attach when a driver starts a device.
                    KVM_IOEVENTFD(),
                    // MSI routes are made on an MSI-X vector's first use.
                    KVM_SET_GSI_ROUTING(),
                    KVM_IRQFD(),
                    KVM_SIGNAL_MSI(),
                    // Registers are dumped to the log when the guest fails.
                    KVM_GET_REGS(),
                    KVM_GET_SREGS(),
                    // A vCPU parking for a pause tells the guest's kvmclock.
                    KVM_KVMCLOCK_CTRL(),
                    TUNSETOFFLOAD,
                ]),
            ),
            any(libc::SYS_fsync),
            any(libc::SYS_fdatasync),
            // An MSI message's irqfd is made on its first use.
            any(libc::SYS_eventfd2),
            // A driver's device reset (an MMIO write) waits for the disk's
            // requests in flight on the io_uring to finish.
            any(libc::SYS_io_uring_enter),
        ],
        ThreadKind::Io => vec![
            (
                libc::SYS_ioctl,
                ioctls(&[
                    KVM_SET_GSI_ROUTING(),
                    KVM_IRQFD(),
                    KVM_SIGNAL_MSI(),
                    KVM_IOEVENTFD(),
                    TUNSETOFFLOAD,
                ]),
            ),
            // An MSI message's irqfd is made on its first use.
            any(libc::SYS_eventfd2),
            any(libc::SYS_epoll_wait),
            any(libc::SYS_epoll_pwait),
            any(libc::SYS_readv),
            any(libc::SYS_pread64),
            any(libc::SYS_preadv),
            any(libc::SYS_pwrite64),
            any(libc::SYS_pwritev),
            any(libc::SYS_lseek),
            any(libc::SYS_fsync),
            any(libc::SYS_fdatasync),
            any(libc::SYS_fallocate),
            any(libc::SYS_ftruncate),
            any(libc::SYS_fstat),
            any(libc::SYS_statx),
            any(libc::SYS_newfstatat),
            // virtio-blk on io_uring (the I/O thread and its workers).
            // Seccomp does not see the operations a ring carries out: a ring
            // must be limited to its read/write/fsync/fallocate opcodes with
            // IORING_REGISTER_RESTRICTIONS before it is enabled (and the
            // process has no filesystem or network to reach anyway).
            any(libc::SYS_io_uring_setup),
            any(libc::SYS_io_uring_enter),
            any(libc::SYS_io_uring_register),
        ],
        ThreadKind::Main => vec![
            (
                libc::SYS_ioctl,
                ioctls(&[
                    KVM_CREATE_VM(),
                    KVM_CHECK_EXTENSION(),
                    KVM_GET_VCPU_MMAP_SIZE(),
                    KVM_GET_SUPPORTED_CPUID(),
                    KVM_GET_MSR_INDEX_LIST(),
                    KVM_CREATE_VCPU(),
                    KVM_SET_USER_MEMORY_REGION(),
                    KVM_SET_TSS_ADDR(),
                    KVM_SET_IDENTITY_MAP_ADDR(),
                    KVM_CREATE_IRQCHIP(),
                    KVM_CREATE_PIT2(),
                    KVM_SET_REGS(),
                    KVM_SET_SREGS(),
                    KVM_GET_MSRS(),
                    KVM_SET_MSRS(),
                    KVM_SET_FPU(),
                    KVM_GET_LAPIC(),
                    KVM_SET_LAPIC(),
                    KVM_SET_CPUID2(),
                    TCGETS,
                    TCSETS,
                ]),
            ),
            // Threads: new ones start for every boot. clone's flags must
            // make a thread, not a process; clone3's are in memory, where a
            // filter cannot read them, so the errno layer answers it ENOSYS
            // and glibc falls back to clone.
            (
                libc::SYS_clone,
                vec![SeccompRule::new(vec![cond(
                    0,
                    SeccompCmpOp::MaskedEq(libc::CLONE_THREAD as u64),
                    libc::CLONE_THREAD as u64,
                )])
                .expect("one condition")],
            ),
            any(libc::SYS_clone3),
            // glibc sets up its internal signals on the first new thread.
            any(libc::SYS_rt_sigaction),
            // What glibc and std do in a new thread before its own filter.
            any(libc::SYS_set_robust_list),
            any(libc::SYS_rseq),
            any(libc::SYS_sched_getaffinity),
            // A new thread names itself and installs its own filter while
            // still under this one.
            (
                libc::SYS_prctl,
                arg_in(
                    0,
                    &[libc::PR_SET_NAME as u64, libc::PR_SET_NO_NEW_PRIVS as u64],
                ),
            ),
            (libc::SYS_seccomp, arg_in(0, &[SECCOMP_SET_MODE_FILTER])),
            // Kicking vCPU threads out of KVM_RUN: only threads of this
            // process (the pid is fixed when the filter is built).
            (libc::SYS_tgkill, arg_in(0, &[std::process::id().into()])),
            any(libc::SYS_eventfd2),
            any(libc::SYS_epoll_create1),
            any(libc::SYS_epoll_ctl),
            any(libc::SYS_poll),
            any(libc::SYS_ppoll),
            // Each boot's console writers are duplicates of the open files.
            (libc::SYS_fcntl, arg_in(1, &[libc::F_DUPFD_CLOEXEC as u64])),
            // The kernel and initrd are read again at every boot.
            any(libc::SYS_lseek),
            any(libc::SYS_statx),
            any(libc::SYS_fstat),
            any(libc::SYS_mincore),
        ],
    }
}

/// Syscalls that fail with an errno instead of being allowed: a layer the
/// main thread installs under its allowlist, inherited by every thread.
/// The kernel takes the strictest answer of all filters (ERRNO over
/// ALLOW), so a syscall listed here never runs even though the allowlists
/// let it through them; anything they do not list still kills the process.
pub fn errno_layer() -> Vec<(i64, u32)> {
    vec![
        (libc::SYS_openat, libc::ENOENT as u32),
        (libc::SYS_clone3, libc::ENOSYS as u32),
    ]
}

/// The rules of `kind`'s filter: its list and [`common`], and for the
/// main thread every other kind's too.
pub fn rules(kind: ThreadKind) -> BTreeMap<i64, Vec<SeccompRule>> {
    let mut map: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    let kinds: &[ThreadKind] = match kind {
        ThreadKind::Main => &ThreadKind::ALL,
        _ => std::slice::from_ref(&kind),
    };
    let entries = kinds.iter().flat_map(|&k| allowlist(k)).chain(common());
    for (nr, mut rules) in entries {
        match map.get_mut(&nr) {
            None => {
                map.insert(nr, rules);
            }
            // An empty rule list allows every call: it absorbs any rules.
            Some(existing) if existing.is_empty() => {}
            Some(_) if rules.is_empty() => {
                map.insert(nr, Vec::new());
            }
            Some(existing) => {
                for rule in rules.drain(..) {
                    if !existing.contains(&rule) {
                        existing.push(rule);
                    }
                }
            }
        }
    }
    map
}

/// Compiled filters for every thread kind, built before the sandbox is
/// entered and shared with the threads that install them.
#[derive(Debug)]
pub struct Filters {
    programs: Vec<(ThreadKind, BpfProgram)>,
    errno_layer: Vec<BpfProgram>,
}

impl Filters {
    /// Compiles every kind's filter; `log_only` makes a mismatch logged
    /// instead of fatal (debug builds, to find missing syscalls).
    pub fn compile(log_only: bool) -> Result<Filters, SandboxError> {
        let mismatch = if log_only {
            SeccompAction::Log
        } else {
            SeccompAction::KillProcess
        };
        let programs = ThreadKind::ALL
            .iter()
            .map(|&kind| {
                let filter_err = |detail: String| SandboxError::Filter {
                    thread: kind.name(),
                    detail,
                };
                let filter = SeccompFilter::new(
                    rules(kind),
                    mismatch.clone(),
                    SeccompAction::Allow,
                    TargetArch::x86_64,
                )
                .map_err(|e| filter_err(e.to_string()))?;
                let program: BpfProgram = filter
                    .try_into()
                    .map_err(|e: seccompiler::BackendError| filter_err(e.to_string()))?;
                Ok((kind, program))
            })
            .collect::<Result<_, SandboxError>>()?;
        // One small filter per errno: seccompiler gives a filter one match
        // action.
        let errno_layer = errno_layer()
            .into_iter()
            .map(|(nr, errno)| {
                let filter_err = |detail: String| SandboxError::Filter {
                    thread: "errno layer",
                    detail,
                };
                let filter = SeccompFilter::new(
                    [(nr, Vec::new())].into_iter().collect(),
                    SeccompAction::Allow,
                    SeccompAction::Errno(errno),
                    TargetArch::x86_64,
                )
                .map_err(|e| filter_err(e.to_string()))?;
                filter
                    .try_into()
                    .map_err(|e: seccompiler::BackendError| filter_err(e.to_string()))
            })
            .collect::<Result<_, SandboxError>>()?;
        Ok(Filters {
            programs,
            errno_layer,
        })
    }

    /// Installs `kind`'s filter on the calling thread; for the main thread
    /// the errno layer first, which every thread started later inherits.
    pub fn install(&self, kind: ThreadKind) -> Result<(), SandboxError> {
        if kind == ThreadKind::Main {
            for program in &self.errno_layer {
                seccompiler::apply_filter(program).map_err(|e| SandboxError::Install {
                    thread: "errno layer",
                    detail: e.to_string(),
                })?;
            }
        }
        let program = self
            .programs
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, p)| p.as_slice())
            .unwrap_or_default();
        seccompiler::apply_filter(program).map_err(|e| SandboxError::Install {
            thread: kind.name(),
            detail: e.to_string(),
        })
    }
}

/// A single-threaded process's own allowlist filter (the DHCP helper's):
/// `entries` are allowed, anything else kills the process (`log_only`:
/// is logged instead, debug builds). `name` is used in messages.
pub fn compile_allowlist(
    name: &'static str,
    entries: Vec<Entry>,
    log_only: bool,
) -> Result<BpfProgram, SandboxError> {
    let filter_err = |detail: String| SandboxError::Filter {
        thread: name,
        detail,
    };
    let mut map: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for (nr, rules) in entries {
        if map.insert(nr, rules).is_some() {
            return Err(filter_err(format!("syscall {nr} is listed twice")));
        }
    }
    let mismatch = if log_only {
        SeccompAction::Log
    } else {
        SeccompAction::KillProcess
    };
    let filter = SeccompFilter::new(map, mismatch, SeccompAction::Allow, TargetArch::x86_64)
        .map_err(|e| filter_err(e.to_string()))?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| filter_err(e.to_string()))
}

/// Installs a program made by [`compile_allowlist`] on the calling thread.
pub fn install_program(name: &'static str, program: &BpfProgram) -> Result<(), SandboxError> {
    seccompiler::apply_filter(program).map_err(|e| SandboxError::Install {
        thread: name,
        detail: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_the_kernel_headers() {
        assert_eq!(KVM_CREATE_VM(), 0xae01);
        assert_eq!(KVM_RUN(), 0xae80);
        assert_eq!(KVM_SET_USER_MEMORY_REGION(), 0x4020_ae46);
        assert_eq!(KVM_IRQFD(), 0x4020_ae76);
        assert_eq!(KVM_IOEVENTFD(), 0x4040_ae79);
        assert_eq!(KVM_SET_GSI_ROUTING(), 0x4008_ae6a);
        assert_eq!(KVM_GET_SUPPORTED_CPUID(), 0xc008_ae05);
        assert_eq!(KVM_SIGNAL_MSI(), 0x4020_aea5);
        assert_eq!(KVM_KVMCLOCK_CTRL(), 0xaead);
    }

    #[test]
    fn only_vcpu_threads_touch_the_guest_clock() {
        // The pause of the control channel parks each vCPU on its own
        // thread, which tells the guest's kvmclock; the I/O thread never.
        assert!(allows_ioctl(ThreadKind::Vcpu, KVM_KVMCLOCK_CTRL()));
        assert!(!allows_ioctl(ThreadKind::Io, KVM_KVMCLOCK_CTRL()));
    }

    fn allows_ioctl(kind: ThreadKind, request: u64) -> bool {
        let rules = rules(kind);
        let Some(list) = rules.get(&libc::SYS_ioctl) else {
            return false;
        };
        list.contains(&ioctls(&[request]).remove(0))
    }

    #[test]
    fn vcpu_threads_may_run_but_not_build_a_vm() {
        assert!(allows_ioctl(ThreadKind::Vcpu, KVM_RUN()));
        assert!(!allows_ioctl(ThreadKind::Vcpu, KVM_CREATE_VM()));
        assert!(!allows_ioctl(
            ThreadKind::Vcpu,
            KVM_SET_USER_MEMORY_REGION()
        ));
        assert!(!allows_ioctl(ThreadKind::Io, KVM_RUN()));
        let vcpu = rules(ThreadKind::Vcpu);
        for forbidden in [
            libc::SYS_clone,
            libc::SYS_clone3,
            libc::SYS_execve,
            libc::SYS_open,
            libc::SYS_socket,
            libc::SYS_seccomp,
        ] {
            assert!(!vcpu.contains_key(&forbidden), "{forbidden}");
        }
    }

    #[test]
    fn the_main_list_covers_every_thread_kind() {
        let main = rules(ThreadKind::Main);
        for kind in ThreadKind::ALL {
            for (nr, list) in rules(kind) {
                let main_list = main.get(&nr).unwrap_or_else(|| panic!("syscall {nr}"));
                // Unconditional in main, or a superset of the kind's rules.
                assert!(
                    main_list.is_empty() || list.iter().all(|r| main_list.contains(r)),
                    "syscall {nr} of the {} thread",
                    kind.name()
                );
                assert!(
                    !list.is_empty() || main_list.is_empty(),
                    "syscall {nr}: the main filter must not restrict what the {} thread may call \
                     freely",
                    kind.name()
                );
            }
        }
        assert!(allows_ioctl(ThreadKind::Main, KVM_RUN()));
        for forbidden in [libc::SYS_execve, libc::SYS_open, libc::SYS_socket] {
            assert!(!main.contains_key(&forbidden), "{forbidden}");
        }
    }

    #[test]
    fn io_uring_is_allowed_in_the_io_thread() {
        let io = rules(ThreadKind::Io);
        for nr in [
            libc::SYS_io_uring_setup,
            libc::SYS_io_uring_enter,
            libc::SYS_io_uring_register,
        ] {
            assert!(io.contains_key(&nr));
        }
    }

    #[test]
    fn every_filter_compiles() {
        let filters = Filters::compile(false).unwrap();
        assert_eq!(filters.programs.len(), ThreadKind::ALL.len());
        assert_eq!(filters.errno_layer.len(), errno_layer().len());
        // Whatever the errno layer answers, the allowlists must let through
        // to it: otherwise the kill wins and the errno is never seen.
        for (nr, _) in errno_layer() {
            assert!(rules(ThreadKind::Main).contains_key(&nr), "{nr} in main");
        }
        assert!(rules(ThreadKind::Vcpu).contains_key(&libc::SYS_openat));
        assert!(rules(ThreadKind::Io).contains_key(&libc::SYS_openat));
    }
}
