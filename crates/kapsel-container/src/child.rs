//! The container's first process between `clone` and `execve` of its init.
//!
//! The caller may be multi-threaded (the daemon), so after `clone` only
//! system calls are made: no allocation, no locks, no formatting. Every
//! path, argument vector and the seccomp program is prepared beforehand in
//! a `ChildPlan`. A failing step writes its number and `errno` into the
//! error pipe (closed on exec, so the parent reads end-of-file on success)
//! and exits.
//!
//! The sequence, all in the new mount namespace and before the init runs:
//! join the v1 cgroups (through `tasks`) → wait for the parent (cgroup
//! joined on v2, id maps written, veth created) → namespaces given by
//! path joined (setns; `Extra::join_namespaces`) →
//! new cgroup namespace → hostname → mounts private → root bind-mounted
//! onto itself (or the idmapped copy the parent sent moved there:
//! idmap.rs) and entered → id switch (user namespace only: after the
//! root's path was walked with the host uid 0, as the directories above a
//! root are closed to every other host user) → /proc, /sys (ro),
//! cgroup2 (v2 hosts: read-only; writable for a systemd init, on hybrid
//! hosts too), /dev on tmpfs with its nodes, devpts, shm, /dev/console →
//! /run, /run/lock and /tmp on tmpfs (systemd init) → mounts of the
//! configuration (`Extra::mounts`) → masked and read-only paths (Kapsel's,
//! then the configuration's) → root read-only (`Extra::readonly_root`) →
//! `pivot_root` → loopback up (a new network namespace only)
//! → stdio, session → signals, umask, rlimits → no_new_privs → seccomp →
//! [with a start FIFO: error pipe closed (the parent returns), then the
//! FIFO opened for writing, which blocks until `start`] → [the process
//! user: KEEPCAPS, setgroups/setresgid/setresuid, effective raised to
//! permitted] → capabilities → `execve`. Failures after the error pipe is
//! closed go to the process's standard error with status 127.

use crate::caps::{self, CapSet};
use seccompiler::BpfProgram;
use std::ffi::{c_char, CString};
use std::os::fd::RawFd;
use std::ptr;

/// The names of the steps, indexed by the number the child reports.
pub(crate) const STEPS: &[&str] = &[
    "waiting for the parent",                  // 0
    "switching to root of the user namespace", // 1
    "creating the cgroup namespace",           // 2
    "setting the hostname",                    // 3
    "making mounts private",                   // 4
    "bind-mounting the root onto itself",      // 5
    "entering the root",                       // 6
    "checking /proc, /sys and /dev in the root (each must be a directory, not a link)", // 7
    "mounting /proc",                          // 8
    "mounting /sys",                           // 9
    "mounting /sys/fs/cgroup",                 // 10
    "mounting /dev",                           // 11
    "creating a device node in /dev",          // 12
    "mounting /dev/pts",                       // 13
    "mounting /dev/shm",                       // 14
    "creating /dev links",                     // 15
    "binding the console to /dev/console",     // 16
    "masking a /proc or /sys path",            // 17
    "making a /proc path read-only",           // 18
    "pivot_root into the root",                // 19
    "detaching the host's root",               // 20
    "bringing up lo",                          // 21
    "setting up stdin, stdout and stderr",     // 22
    "setting no_new_privs",                    // 23
    "dropping capabilities",                   // 24
    "installing the seccomp profile",          // 25
    "executing the init (a script needs its #! interpreter inside the root)", // 26
    "joining the container's cgroups",         // 27
    "mounting /run, /run/lock or /tmp (each must be a directory in the root, not a link)", // 28
    "mounting the idmapped root",              // 29
    "changing to the working directory (it must be a directory in the root)", // 30
    "joining a namespace given by path",       // 31
    "making a mount of the configuration (its destination in the root, or its source)", // 32
    "masking a configured path",               // 33
    "making a configured path read-only",      // 34
    "remounting the root read-only",           // 35
    "setting a resource limit (rlimit)",       // 36
    "telling the parent the root is ready (for its hooks)", // 37
    "setting a sysctl of the container's namespaces (its /proc/sys file)", // 38
    "creating a device node of the configuration (linux.devices)", // 39
    "setting the propagation of the root (rootfsPropagation)", // 40
    "sending the seccomp notification descriptor to the parent", // 41
];

/// seccomp(2)'s flag for a filter with a notification descriptor.
pub(crate) const SECCOMP_FILTER_FLAG_NEW_LISTENER: u32 = 1 << 3;

/// Sends `fd` with one byte over the socket `sock` (SCM_RIGHTS).
fn send_fd(sock: RawFd, fd: RawFd) -> bool {
    let byte = 1u8;
    let mut iov = libc::iovec {
        iov_base: (&byte as *const u8) as *mut libc::c_void,
        iov_len: 1,
    };
    let mut control = [0u64; 4];
    // SAFETY: a zeroed msghdr is valid; it points at locals that outlive
    // the call; the CMSG macros stay within `control`.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) as usize;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as usize;
        ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd);
        libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) == 1
    }
}

/// A device node of the configuration, prepared for the child.
pub(crate) struct ChildDevice {
    /// Relative to the root (`dev/fuse`).
    pub target: CString,
    /// The host's node of the same path, bound where mknod is refused.
    pub host: CString,
    /// Directories to make first (`dev/net` for `dev/net/tun`).
    pub parents: Vec<CString>,
    /// File type and permission bits.
    pub mode: libc::mode_t,
    pub dev: libc::dev_t,
    pub uid: u32,
    pub gid: u32,
}

/// A mount of the configuration, prepared for the child.
pub(crate) struct ChildMount {
    pub source: Option<CString>,
    /// Relative to the root (the child's working directory before pivot_root).
    pub target: CString,
    pub fstype: Option<CString>,
    pub flags: libc::c_ulong,
    pub data: Option<CString>,
    pub propagation: libc::c_ulong,
    /// Create the target first (below /dev, which the child itself made):
    /// 0 no, 1 a directory, 2 a file.
    pub make: u8,
}

/// Becomes root of the user namespace this process is in: no
/// supplementary groups, gid and uid 0. Raw system calls, not libc's
/// wrappers: in a child cloned from a multi-threaded process, glibc still
/// counts the parent's threads and would wait forever for them to take
/// the change too (its setxid broadcast).
///
/// # Safety
/// Only for a process with one thread (the cloned child): the raw calls
/// change the calling thread's credentials alone.
pub(crate) unsafe fn become_root() -> bool {
    // SAFETY: plain system calls with integer arguments (and a null list
    // of zero groups); the caller is single-threaded.
    unsafe {
        libc::syscall(libc::SYS_setgroups, 0, ptr::null::<libc::gid_t>()) == 0
            && libc::syscall(libc::SYS_setresgid, 0, 0, 0) == 0
            && libc::syscall(libc::SYS_setresuid, 0, 0, 0) == 0
    }
}

/// A device node of the container's /dev: name, major, minor.
const DEVICES: &[(&[u8], u32, u32)] = &[
    (b"dev/null\0", 1, 3),
    (b"dev/zero\0", 1, 5),
    (b"dev/full\0", 1, 7),
    (b"dev/random\0", 1, 8),
    (b"dev/urandom\0", 1, 9),
    (b"dev/tty\0", 5, 0),
];

/// The host's nodes bound over [`DEVICES`] when `mknod` is not allowed
/// (user namespace), in the same order.
const HOST_DEVICES: &[&[u8]] = &[
    b"/dev/null\0",
    b"/dev/zero\0",
    b"/dev/full\0",
    b"/dev/random\0",
    b"/dev/urandom\0",
    b"/dev/tty\0",
];

const LINKS: &[(&[u8], &[u8])] = &[
    (b"pts/ptmx\0", b"dev/ptmx\0"),
    (b"/proc/self/fd\0", b"dev/fd\0"),
    (b"/proc/self/fd/0\0", b"dev/stdin\0"),
    (b"/proc/self/fd/1\0", b"dev/stdout\0"),
    (b"/proc/self/fd/2\0", b"dev/stderr\0"),
];

/// Files hidden behind /dev/null (as Docker and LXC do): kernel memory,
/// the keyring, the magic SysRq trigger, timer and scheduler internals.
const MASKED_FILES: &[&[u8]] = &[
    b"proc/kcore\0",
    b"proc/keys\0",
    b"proc/sysrq-trigger\0",
    b"proc/timer_list\0",
    b"proc/latency_stats\0",
    b"proc/sched_debug\0",
    b"proc/kallsyms\0",
];

/// Directories hidden behind an empty read-only tmpfs.
const MASKED_DIRS: &[&[u8]] = &[
    b"proc/acpi\0",
    b"proc/scsi\0",
    b"sys/firmware\0",
    b"sys/kernel/debug\0",
];

/// /proc paths made read-only: the kernel's knobs are host-wide.
const READ_ONLY: &[&[u8]] = &[b"proc/sys\0", b"proc/bus\0", b"proc/fs\0", b"proc/irq\0"];

/// What the child mounts on /sys/fs/cgroup: the container's cgroup
/// namespace root, seen through cgroup2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cgroup2Mount {
    /// Nothing (v1 hosts; hybrid hosts unless delegated).
    None,
    /// Read-only: the container sees its usage and limits.
    ReadOnly,
    /// Writable: its init (systemd) manages the tree below its root.
    Delegated,
}

/// Everything the child needs, prepared before `clone`.
pub(crate) struct ChildPlan {
    pub root: CString,
    pub hostname: CString,
    pub init: CString,
    /// The init's working directory (after pivot_root).
    pub cwd: CString,
    /// Owns the argument and environment strings the pointers below point into.
    pub _strings: Vec<CString>,
    /// NULL-terminated argv for execve.
    pub argv: Vec<*const c_char>,
    /// NULL-terminated envp for execve.
    pub envp: Vec<*const c_char>,
    /// Descriptors that become 0, 1, 2.
    pub stdio: [RawFd; 3],
    /// The pty slave (host path) to bind onto /dev/console and make the
    /// controlling terminal.
    pub console: Option<CString>,
    pub keep_caps: CapSet,
    pub last_cap: u32,
    pub no_new_privs: bool,
    /// Set PR_SET_PDEATHSIG(SIGKILL) before execve.
    pub die_with_parent: bool,
    /// The seccomp programs, installed in order (empty: none).
    pub seccomp: Vec<BpfProgram>,
    /// seccomp(2) flags for them (0: installed with prctl).
    pub seccomp_flags: u32,
    /// Descriptors 3.. 3 + N - 1 stay open across the exec.
    pub preserve_fds: u32,
    /// Device nodes of the configuration.
    pub devices: Vec<ChildDevice>,
    /// Propagation flags of `/` before the mounts, and of the root after
    /// pivot_root (0: none); see [`crate::Extra::root_propagation`].
    pub root_propagation: (libc::c_ulong, libc::c_ulong),
    pub user_ns: bool,
    /// The parent sends an idmapped copy of the root with its byte; it is
    /// mounted instead of binding the root onto itself (see [`crate::idmap`]).
    pub idmap_root: bool,
    /// What goes on /sys/fs/cgroup.
    pub cgroup2: Cgroup2Mount,
    /// Mount tmpfs on /run, /run/lock and /tmp (what systemd expects of a
    /// container manager).
    pub tmpfs_run: bool,
    /// The parent created eth0 in the container's network namespace.
    pub veth: bool,
    /// Open v1 `tasks` files the child writes "0" to, moving itself into
    /// the container's cgroups (empty when the parent placed it).
    pub cgroup_tasks: Vec<RawFd>,
    /// The child's ends of the sync channels: a socket for the parent's
    /// release byte (which may carry the idmapped root), a pipe for errors.
    pub go_read: RawFd,
    pub err_write: RawFd,
    /// Namespace files to setns(2) into first.
    pub join_ns: Vec<RawFd>,
    /// Set the hostname (a new UTS namespace).
    pub set_hostname: bool,
    /// A new network namespace: bring up its loopback.
    pub new_net: bool,
    /// Mounts of the configuration, after /dev.
    pub mounts: Vec<ChildMount>,
    /// More paths to mask and to make read-only (relative to the root).
    pub masked_extra: Vec<CString>,
    pub readonly_extra: Vec<CString>,
    pub readonly_root: bool,
    pub rlimits: Vec<(u32, libc::rlimit)>,
    /// uid, gid and supplementary groups to switch to before execve.
    pub user: Option<(u32, u32, Vec<libc::gid_t>)>,
    /// `/proc/self/fd/N` of the start FIFO (an O_PATH descriptor).
    pub start_fifo: Option<CString>,
    /// Stop before pivot_root until the parent's hooks ran (see
    /// [`crate::Container::start_hooked`]).
    pub hook_sync: bool,
    /// Sysctls: the file below the root (`proc/sys/...`) and the value,
    /// written after /proc is mounted.
    pub sysctls: Vec<(CString, CString)>,
}

/// Ends the child after the parent has stopped listening: a message on
/// its standard error (the container's output) and status 127.
fn late_fail(msg: &[u8]) -> ! {
    // SAFETY: writes a constant message; then ends the process.
    unsafe {
        libc::write(2, msg.as_ptr().cast(), msg.len());
        libc::_exit(127)
    }
}

/// Reports `step` with the current errno to the parent and exits.
fn fail(plan: &ChildPlan, step: u32) -> ! {
    let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
    fail_with(plan, step, errno)
}

/// Makes `dir` (NUL-terminated, relative to the working directory) if it
/// is missing, and fails `step` unless it is a directory itself, not a
/// link to one. Allocation-free, as everything in the child.
fn real_dir(plan: &ChildPlan, dir: &[u8], step: u32) {
    // SAFETY: `dir` is NUL-terminated; `st` is a local the call fills.
    unsafe {
        libc::mkdir(cstr(dir), 0o755);
        let mut st: libc::stat = std::mem::zeroed();
        if libc::lstat(cstr(dir), &mut st) != 0 {
            fail(plan, step);
        }
        if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
            fail_with(plan, step, libc::ENOTDIR);
        }
    }
}

fn fail_with(plan: &ChildPlan, step: u32, errno: i32) -> ! {
    let mut msg = [0u8; 8];
    msg[..4].copy_from_slice(&step.to_ne_bytes());
    msg[4..].copy_from_slice(&errno.to_ne_bytes());
    // SAFETY: writes 8 bytes from a local buffer; then ends the process
    // without running the parent's atexit handlers or destructors.
    unsafe {
        libc::write(plan.err_write, msg.as_ptr().cast(), msg.len());
        libc::_exit(127)
    }
}

fn cstr(b: &[u8]) -> *const c_char {
    debug_assert_eq!(b.last(), Some(&0));
    b.as_ptr().cast()
}

/// mount(2) with NUL-terminated byte strings (`None` is NULL).
fn mount(
    src: Option<&[u8]>,
    target: &[u8],
    fstype: Option<&[u8]>,
    flags: libc::c_ulong,
    data: Option<&[u8]>,
) -> bool {
    // SAFETY: every pointer is NULL or a NUL-terminated string that
    // outlives the call.
    unsafe {
        libc::mount(
            src.map_or(ptr::null(), cstr),
            cstr(target),
            fstype.map_or(ptr::null(), cstr),
            flags,
            data.map_or(ptr::null(), |d| cstr(d).cast()),
        ) == 0
    }
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Waits for the parent's byte on the socket `sock`; returns the
/// descriptor sent along with it, or -1. Ends the child when the parent
/// gave up (end-of-file).
fn wait_for_parent(sock: RawFd) -> RawFd {
    let mut byte = 0u8;
    // Room for one descriptor, aligned for cmsghdr.
    let mut control = [0u64; 4];
    loop {
        let mut iov = libc::iovec {
            iov_base: (&mut byte as *mut u8).cast(),
            iov_len: 1,
        };
        // SAFETY: a zeroed msghdr is valid; the buffers it points to are
        // locals that outlive the call; recvmsg writes at most their sizes.
        let (n, msg) = unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = std::mem::size_of_val(&control);
            let n = libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC);
            (n, msg)
        };
        if n == 1 {
            // SAFETY: the control data was written by the kernel; the
            // CMSG macros walk it within `msg_controllen`.
            unsafe {
                let cmsg = libc::CMSG_FIRSTHDR(&msg);
                if !cmsg.is_null()
                    && (*cmsg).cmsg_level == libc::SOL_SOCKET
                    && (*cmsg).cmsg_type == libc::SCM_RIGHTS
                {
                    return ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>());
                }
            }
            return -1;
        }
        if n == 0 || errno() != libc::EINTR {
            // SAFETY: ends the child without running the parent's handlers.
            unsafe { libc::_exit(127) }
        }
    }
}

/// Runs in the cloned child; never returns.
pub(crate) fn run(plan: &ChildPlan) -> ! {
    // First into the cgroups (v1), while the parent writes the id maps and
    // creates the network: everything from here on is accounted and limited.
    for &fd in &plan.cgroup_tasks {
        // SAFETY: writes one byte from a constant to a descriptor of the plan.
        if unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) } != 1 {
            fail(plan, 27);
        }
    }
    // Step 0: the parent writes one byte when the cgroup, the id maps and
    // the network are ready; end-of-file means it gave up.
    let tree = wait_for_parent(plan.go_read);
    // SAFETY: each call below is a plain system call on NUL-terminated
    // strings from the plan or constants; results are checked one by one.
    unsafe {
        for &fd in &plan.join_ns {
            if libc::setns(fd, 0) != 0 {
                fail(plan, 31);
            }
        }
        if libc::unshare(libc::CLONE_NEWCGROUP) != 0 {
            fail(plan, 2);
        }
        let h = plan.hostname.as_bytes();
        if plan.set_hostname && libc::sethostname(h.as_ptr().cast(), h.len()) != 0 {
            fail(plan, 3);
        }
        if !mount(None, b"/\0", None, plan.root_propagation.0, None) {
            fail(plan, 4);
        }
        let root = plan.root.as_bytes_with_nul();
        if plan.idmap_root {
            if tree < 0 {
                fail_with(plan, 29, libc::EBADF);
            }
            if libc::syscall(
                libc::SYS_move_mount,
                tree,
                c"".as_ptr(),
                libc::AT_FDCWD,
                plan.root.as_ptr(),
                libc::MOVE_MOUNT_F_EMPTY_PATH,
            ) != 0
            {
                fail(plan, 29);
            }
            libc::close(tree);
        } else if !mount(Some(root), root, None, libc::MS_BIND | libc::MS_REC, None) {
            fail(plan, 5);
        }
        if libc::chdir(plan.root.as_ptr()) != 0 {
            fail(plan, 6);
        }
        // Only now, with the root reached and entered, the id switch: the
        // root lies below a directory that only the host's root may enter
        // (kapseld requires it: vm.conf(5), `root`), which this process
        // still is for permission checks (its host uid is 0 until here).
        // Everything after this is relative to the root or on the host's
        // /dev, which every user may search.
        if plan.user_ns && !become_root() {
            fail(plan, 1);
        }
        // Only the top-level mount points come from the (untrusted) root;
        // everything below them is inside file systems mounted here. A
        // link there would point a mount at the host, so refuse it.
        for dir in [&b"proc\0"[..], b"sys\0", b"dev\0"] {
            real_dir(plan, dir, 7);
        }
        let hard = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        if !mount(Some(b"proc\0"), b"proc\0", Some(b"proc\0"), hard, None) {
            fail(plan, 8);
        }
        // Sysctls of the container's own namespaces, through its fresh
        // /proc (the caller checked each is namespaced).
        for (file, value) in &plan.sysctls {
            let fd = libc::open(
                file.as_ptr(),
                libc::O_WRONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW,
            );
            if fd < 0 {
                fail(plan, 38);
            }
            let bytes = value.as_bytes();
            let n = libc::write(fd, bytes.as_ptr().cast(), bytes.len());
            if n != bytes.len() as isize {
                fail(plan, 38);
            }
            libc::close(fd);
        }
        // A user namespace may mount sysfs only with a network namespace
        // of its own; sharing the host's, it gets the host's /sys bound
        // read-only instead (as runc does).
        let sys_bound = plan.user_ns
            && !plan.new_net
            && mount(
                Some(b"/sys\0"),
                b"sys\0",
                None,
                libc::MS_BIND | libc::MS_REC,
                None,
            )
            && mount(
                None,
                b"sys\0",
                None,
                libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | hard,
                None,
            );
        if !sys_bound
            && !mount(
                Some(b"sysfs\0"),
                b"sys\0",
                Some(b"sysfs\0"),
                hard | libc::MS_RDONLY,
                None,
            )
        {
            fail(plan, 9);
        }
        let cgroup_flags = match plan.cgroup2 {
            Cgroup2Mount::None => None,
            Cgroup2Mount::ReadOnly => Some(hard | libc::MS_RDONLY),
            Cgroup2Mount::Delegated => Some(hard),
        };
        if let Some(flags) = cgroup_flags {
            if !mount(
                Some(b"cgroup2\0"),
                b"sys/fs/cgroup\0",
                Some(b"cgroup2\0"),
                flags,
                None,
            ) {
                fail(plan, 10);
            }
        }
        if !mount(
            Some(b"tmpfs\0"),
            b"dev\0",
            Some(b"tmpfs\0"),
            libc::MS_NOSUID | libc::MS_STRICTATIME,
            Some(b"mode=755,size=65536k\0"),
        ) {
            fail(plan, 11);
        }
        libc::umask(0);
        for (i, &(name, major, minor)) in DEVICES.iter().enumerate() {
            let made = !plan.user_ns
                && libc::mknod(
                    cstr(name),
                    libc::S_IFCHR | 0o666,
                    libc::makedev(major, minor),
                ) == 0;
            if !made {
                // In a user namespace mknod is refused: bind the host's node.
                let fd = libc::open(
                    cstr(name),
                    libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                    0o666,
                );
                if fd < 0 {
                    fail(plan, 12);
                }
                libc::close(fd);
                if !mount(Some(HOST_DEVICES[i]), name, None, libc::MS_BIND, None) {
                    fail(plan, 12);
                }
            }
        }
        for d in &plan.devices {
            for p in &d.parents {
                libc::mkdir(p.as_ptr(), 0o755);
            }
            if libc::mknod(d.target.as_ptr(), d.mode, d.dev) == 0 {
                if libc::lchown(d.target.as_ptr(), d.uid, d.gid) != 0 {
                    fail(plan, 39);
                }
                continue;
            }
            match errno() {
                // One of Kapsel's own (null, zero, ...): it stays.
                libc::EEXIST => {}
                // A user namespace: bind the host's node of that path.
                libc::EPERM if d.mode & libc::S_IFMT != libc::S_IFIFO => {
                    let fd = libc::open(
                        d.target.as_ptr(),
                        libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                        0o666,
                    );
                    if fd < 0 {
                        fail(plan, 39);
                    }
                    libc::close(fd);
                    if libc::mount(
                        d.host.as_ptr(),
                        d.target.as_ptr(),
                        ptr::null(),
                        libc::MS_BIND,
                        ptr::null(),
                    ) != 0
                    {
                        fail(plan, 39);
                    }
                }
                _ => fail(plan, 39),
            }
        }
        libc::mkdir(cstr(b"dev/pts\0"), 0o755);
        libc::mkdir(cstr(b"dev/shm\0"), 0o1777);
        if !mount(
            Some(b"devpts\0"),
            b"dev/pts\0",
            Some(b"devpts\0"),
            libc::MS_NOSUID | libc::MS_NOEXEC,
            Some(b"newinstance,ptmxmode=0666,mode=0620\0"),
        ) {
            fail(plan, 13);
        }
        if !mount(
            Some(b"shm\0"),
            b"dev/shm\0",
            Some(b"tmpfs\0"),
            hard,
            Some(b"mode=1777,size=65536k\0"),
        ) {
            fail(plan, 14);
        }
        for &(target, name) in LINKS {
            if libc::symlink(cstr(target), cstr(name)) != 0 {
                fail(plan, 15);
            }
        }
        if let Some(slave) = &plan.console {
            let fd = libc::open(
                cstr(b"dev/console\0"),
                libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                0o620,
            );
            if fd < 0 {
                fail(plan, 16);
            }
            libc::close(fd);
            if !mount(
                Some(slave.as_bytes_with_nul()),
                b"dev/console\0",
                None,
                libc::MS_BIND,
                None,
            ) {
                fail(plan, 16);
            }
        }
        if plan.tmpfs_run {
            // The root's own /run and /tmp are mount points here: a link
            // would put the tmpfs on the host, so refuse one (as above).
            // /run/lock is inside the fresh /run.
            for (dir, mode, flags) in [
                (
                    &b"run\0"[..],
                    &b"mode=755,size=20%\0"[..],
                    libc::MS_NOSUID | libc::MS_NODEV,
                ),
                (b"run/lock\0", b"mode=1777,size=5m\0", hard),
                (
                    b"tmp\0",
                    b"mode=1777,size=50%\0",
                    libc::MS_NOSUID | libc::MS_NODEV,
                ),
            ] {
                real_dir(plan, dir, 28);
                if !mount(
                    Some(b"tmpfs\0"),
                    dir,
                    Some(b"tmpfs\0"),
                    flags | libc::MS_STRICTATIME,
                    Some(mode),
                ) {
                    fail(plan, 28);
                }
            }
        }
        for m in &plan.mounts {
            let target = m.target.as_bytes_with_nul();
            if m.make == 1 {
                libc::mkdir(cstr(target), 0o755);
            } else if m.make == 2 {
                let fd = libc::open(
                    cstr(target),
                    libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                    0o644,
                );
                if fd >= 0 {
                    libc::close(fd);
                }
            }
            let source = m.source.as_ref().map(|c| c.as_bytes_with_nul());
            let fstype = m.fstype.as_ref().map(|c| c.as_bytes_with_nul());
            let data = m.data.as_ref().map(|c| c.as_bytes_with_nul());
            let bind = m.flags & libc::MS_BIND != 0;
            let first = if bind {
                m.flags & (libc::MS_BIND | libc::MS_REC)
            } else {
                m.flags
            };
            if !mount(source, target, fstype, first, data) {
                fail(plan, 32);
            }
            // A bind mount takes its other flags in a remount only.
            let rest = m.flags & !(libc::MS_BIND | libc::MS_REC);
            if bind
                && rest != 0
                && !mount(
                    None,
                    target,
                    None,
                    libc::MS_BIND | libc::MS_REMOUNT | rest,
                    None,
                )
            {
                fail(plan, 32);
            }
            if m.propagation != 0 && !mount(None, target, None, m.propagation, None) {
                fail(plan, 32);
            }
        }
        for p in &plan.masked_extra {
            let p = p.as_bytes_with_nul();
            let mut st: libc::stat = std::mem::zeroed();
            if libc::stat(cstr(p), &mut st) != 0 {
                if errno() == libc::ENOENT {
                    continue;
                }
                fail(plan, 33);
            }
            let ok = if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
                mount(
                    Some(b"tmpfs\0"),
                    p,
                    Some(b"tmpfs\0"),
                    hard | libc::MS_RDONLY,
                    None,
                )
            } else {
                mount(Some(b"dev/null\0"), p, None, libc::MS_BIND, None)
            };
            if !ok {
                fail(plan, 33);
            }
        }
        for p in &plan.readonly_extra {
            let p = p.as_bytes_with_nul();
            if !mount(Some(p), p, None, libc::MS_BIND | libc::MS_REC, None) {
                if errno() == libc::ENOENT {
                    continue;
                }
                fail(plan, 34);
            }
            if !mount(
                None,
                p,
                None,
                libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID,
                None,
            ) {
                fail(plan, 34);
            }
        }
        for &f in MASKED_FILES {
            if !mount(Some(b"dev/null\0"), f, None, libc::MS_BIND, None) && errno() != libc::ENOENT
            {
                fail(plan, 17);
            }
        }
        for &d in MASKED_DIRS {
            if !mount(
                Some(b"tmpfs\0"),
                d,
                Some(b"tmpfs\0"),
                hard | libc::MS_RDONLY,
                None,
            ) && errno() != libc::ENOENT
            {
                fail(plan, 17);
            }
        }
        for &p in READ_ONLY {
            if !mount(Some(p), p, None, libc::MS_BIND | libc::MS_REC, None) {
                if errno() == libc::ENOENT {
                    continue;
                }
                fail(plan, 18);
            }
            if !mount(
                None,
                p,
                None,
                libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | hard,
                None,
            ) {
                fail(plan, 18);
            }
        }
        if plan.hook_sync {
            // The root is mounted: the parent runs its hooks (OCI
            // prestart, createRuntime, createContainer) now, before
            // pivot_root, and answers with a byte (end of file: it gave up).
            let ready = 1u8;
            if libc::write(plan.go_read, (&ready as *const u8).cast(), 1) != 1 {
                fail(plan, 37);
            }
            wait_for_parent(plan.go_read);
        }
        if plan.readonly_root
            && !mount(
                None,
                b".\0",
                None,
                libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                None,
            )
        {
            fail(plan, 35);
        }
        // pivot_root(".", "."): the old root ends up stacked under the new
        // one and is detached at once; no directory in the root is needed.
        if libc::syscall(libc::SYS_pivot_root, cstr(b".\0"), cstr(b".\0")) != 0 {
            fail(plan, 19);
        }
        if libc::umount2(cstr(b".\0"), libc::MNT_DETACH) != 0 {
            fail(plan, 20);
        }
        if libc::chdir(cstr(b"/\0")) != 0 {
            fail(plan, 20);
        }
        if plan.root_propagation.1 != 0 && !mount(None, b"/\0", None, plan.root_propagation.1, None)
        {
            fail(plan, 40);
        }
        if libc::chdir(plan.cwd.as_ptr()) != 0 {
            fail(plan, 30);
        }
        if plan.new_net {
            if let Err(e) = kapsel_host::netlink::link_up(b"lo\0") {
                fail_with(plan, 21, e);
            }
        }
        if plan.veth {
            if let Err(e) = kapsel_host::netlink::link_up(b"eth0\0") {
                fail_with(plan, 21, e);
            }
        }
        // Copies above 2 first: a source may itself be 0, 1 or 2 (a caller
        // with closed stdio) and would be overwritten by an earlier dup2.
        let mut high = [-1 as RawFd; 3];
        for (h, &from) in high.iter_mut().zip(plan.stdio.iter()) {
            *h = libc::fcntl(from, libc::F_DUPFD_CLOEXEC, 3);
            if *h < 0 {
                fail(plan, 22);
            }
        }
        for (to, &from) in high.iter().enumerate() {
            if libc::dup2(from, to as RawFd) < 0 {
                fail(plan, 22);
            }
        }
        // The init leads its own session; with a pty that is its console.
        libc::setsid();
        if plan.console.is_some() && libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
            fail(plan, 22);
        }
        // Nothing of the caller's leaks into the container: every other
        // descriptor closes on exec (the error pipe too, which is the
        // parent's success signal), but those it asked to pass on.
        for fd in 3..3 + plan.preserve_fds {
            libc::fcntl(fd as RawFd, libc::F_SETFD, 0);
        }
        libc::syscall(
            libc::SYS_close_range,
            3u32 + plan.preserve_fds,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        );
        libc::umask(0o022);
        for (resource, limit) in &plan.rlimits {
            if libc::setrlimit(*resource as _, limit) != 0 {
                fail(plan, 36);
            }
        }
        // Rust ignores SIGPIPE and the caller may block signals; an init
        // starts from the defaults.
        for sig in 1..libc::SIGRTMAX() {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, ptr::null_mut());
        if plan.no_new_privs && libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            fail(plan, 23);
        }
        // The filter goes in while CAP_SYS_ADMIN is still held, so it needs
        // no no_new_privs when the caller turned that off; it denies
        // neither prctl nor capset, which come next.
        for prog in &plan.seccomp {
            let fprog = libc::sock_fprog {
                len: prog.len() as u16,
                filter: prog.as_ptr() as *mut libc::sock_filter,
            };
            let r = if plan.seccomp_flags != 0 {
                libc::syscall(
                    libc::SYS_seccomp,
                    libc::SECCOMP_SET_MODE_FILTER,
                    plan.seccomp_flags,
                    &fprog as *const libc::sock_fprog,
                )
            } else {
                libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER,
                    &fprog as *const libc::sock_fprog,
                ) as libc::c_long
            };
            if r < 0 || (r > 0 && plan.seccomp_flags & SECCOMP_FILTER_FLAG_NEW_LISTENER == 0) {
                fail(plan, 25);
            }
            if r > 0 {
                // The filter's notification descriptor (a seccomp agent's):
                // to the parent, which hands it on.
                if !send_fd(plan.go_read, r as RawFd) {
                    fail(plan, 41);
                }
                libc::close(r as RawFd);
            }
        }
        if let Some(fifo) = &plan.start_fifo {
            // Ready: the parent's start returns (end-of-file on the error
            // pipe), and this process waits for a reader of the FIFO.
            libc::close(plan.err_write);
            let fd = libc::open(fifo.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                late_fail(b"kapsel: container init: opening the start FIFO failed\n");
            }
            libc::close(fd);
        }
        if let Some((uid, gid, groups)) = &plan.user {
            if !caps::switch_user(*uid, *gid, groups) {
                if plan.start_fifo.is_some() {
                    late_fail(b"kapsel: container init: switching to the process user failed\n");
                }
                fail(plan, 24);
            }
        }
        if let Err(e) = caps::drop_to(plan.keep_caps, plan.last_cap) {
            if plan.start_fifo.is_some() {
                late_fail(b"kapsel: container init: dropping capabilities failed\n");
            }
            fail_with(plan, 24, e.errno);
        }
        // Last: a change of effective or file-system ids clears it.
        if plan.die_with_parent {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
        }
        libc::execve(plan.init.as_ptr(), plan.argv.as_ptr(), plan.envp.as_ptr());
        if plan.start_fifo.is_some() {
            late_fail(b"kapsel: container init: executing the process failed\n");
        }
        fail(plan, 26)
    }
}
