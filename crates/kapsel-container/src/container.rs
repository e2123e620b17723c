//! A running container: [`Container::start`] and the handle it returns.

use crate::caps::cap;
use crate::cgroup::{Cgroup, CgroupMode, Limits};
use crate::child::{self, Cgroup2Mount, ChildPlan, STEPS};
use crate::error::{Error, Result};
use crate::spec::{resolve_init, ConsoleSpec, ContainerSpec, DEFAULT_PATH};
use crate::{caps, idmap, seccomp};
use kapsel_host::netlink::Netlink;
use std::ffi::CString;
use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// How a container's init (or an exec'd process) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// It called exit with this status.
    Exited(i32),
    /// A signal ended it.
    Signaled(i32),
}

impl ExitStatus {
    fn from_wait(status: i32) -> ExitStatus {
        if libc::WIFSIGNALED(status) {
            ExitStatus::Signaled(libc::WTERMSIG(status))
        } else {
            ExitStatus::Exited(libc::WEXITSTATUS(status))
        }
    }

    /// The shell's convention: the status, or 128 + the signal.
    pub fn code(self) -> i32 {
        match self {
            ExitStatus::Exited(c) => c,
            ExitStatus::Signaled(s) => 128 + s,
        }
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitStatus::Exited(c) => write!(f, "exited with status {c}"),
            ExitStatus::Signaled(s) => write!(f, "killed by signal {s}"),
        }
    }
}

/// A started container. Dropping it kills what still runs and removes
/// the cgroup and the veth, like [`Container::cleanup`].
#[derive(Debug)]
pub struct Container {
    name: String,
    pid: i32,
    pidfd: OwnedFd,
    cgroup: Cgroup,
    veth: Option<String>,
    stop_signal: i32,
    console: Option<File>,
    status: Option<ExitStatus>,
    root: std::path::PathBuf,
    keep_caps: caps::CapSet,
    /// The spec's `no_new_privs` and `seccomp`, for processes exec'd later.
    no_new_privs: bool,
    seccomp: bool,
    cleaned: bool,
}

/// `CLONE_INTO_CGROUP` (Linux 5.7), not in the libc crate for every target.
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// `struct clone_args` of clone3(2), version 2 (88 bytes, with `cgroup`).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// The parent's and the child's ends of a pipe.
fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    kapsel_host::fd::pipe().map_err(|source| Error::Os {
        what: "creating a pipe",
        source,
    })
}

/// Creates the veth pair of a container: `host_name` up on the host, and
/// its peer `eth0` (down, with `mac` if given) in the network namespace of
/// process `pid`.
fn create_veth(host_name: &str, pid: i32, mac: Option<[u8; 6]>) -> Result<()> {
    Netlink::open()
        .and_then(|mut nl| nl.create_veth(host_name, "eth0", pid, mac))
        .map_err(|source| Error::Network {
            what: format!("creating veth {host_name}"),
            source,
        })
}

/// Deletes link `name`; a link that is already gone is not an error.
fn delete_link(name: &str) -> Result<()> {
    let result = Netlink::open().and_then(|mut nl| match nl.link(name)? {
        Some(link) => nl.delete_link(link.index),
        None => Ok(()),
    });
    match result {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(()),
        Err(source) => Err(Error::Network {
            what: format!("deleting {name}"),
            source,
        }),
    }
}

/// A connected pair of Unix stream sockets: the parent's byte that
/// releases the child can carry a descriptor (the idmapped root).
fn socket_pair() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: socketpair writes two descriptors into `fds`.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if r != 0 {
        return Err(Error::last_os("creating a socket pair"));
    }
    // SAFETY: both descriptors are new and ours.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn cstring(bytes: &[u8]) -> Result<CString> {
    CString::new(bytes)
        .map_err(|_| Error::Invalid("a path or argument contains a NUL byte; remove it".into()))
}

/// A new pseudo-terminal: the master and the slave's path.
fn open_pty() -> Result<(File, CString)> {
    // SAFETY: posix_openpt with constant flags; the result is checked.
    let master = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
    if master < 0 {
        return Err(Error::last_os("opening /dev/ptmx"));
    }
    // SAFETY: `master` is a new descriptor we own.
    let file = unsafe { File::from_raw_fd(master) };
    let mut name = [0 as libc::c_char; 64];
    // SAFETY: grantpt/unlockpt on our master; ptsname_r writes at most
    // `name.len()` bytes into `name`.
    let ok = unsafe {
        libc::grantpt(master) == 0
            && libc::unlockpt(master) == 0
            && libc::ptsname_r(master, name.as_mut_ptr(), name.len()) == 0
    };
    if !ok {
        return Err(Error::last_os("setting up the console pty"));
    }
    // SAFETY: ptsname_r wrote a NUL-terminated string.
    let path = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) }.to_owned();
    Ok((file, path))
}

impl Container {
    /// Starts a container: checks `spec` (an [`Error::Invalid`] before
    /// anything is created), creates its cgroup, clones its init into new
    /// mount, PID, UTS, IPC, network and cgroup namespaces (and a user
    /// namespace with [`ContainerSpec::user_map`]), creates the veth, and
    /// returns once the init has been executed. On any failure everything
    /// created is removed again and the child is gone.
    pub fn start(spec: &ContainerSpec) -> Result<Container> {
        Self::start_in(spec, &CgroupMode::detect()?)
    }

    /// [`Container::start`] with the cgroup layout given: a daemon detects
    /// it once ([`CgroupMode::detect`]) instead of at every start.
    pub fn start_in(spec: &ContainerSpec, mode: &CgroupMode) -> Result<Container> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(Error::Invalid(
                "containers need root (cgroups, namespaces, mounts); run as root or with sudo"
                    .into(),
            ));
        }
        let mode = mode.clone();
        let init = spec.validate(&mode)?;
        let stop_signal = spec.stop_signal();
        // systemd as init (see systemd's CONTAINER_INTERFACE) mounts file
        // systems for its services and manages a cgroup2 tree of its own:
        // it gets CAP_SYS_ADMIN (as under LXC) and its cgroup namespace's
        // root writable at /sys/fs/cgroup. Everything else stays: the
        // seccomp denylist, the device cgroup, no CAP_SYS_BOOT (so its
        // power-off ends in exit(0) instead of reboot(2)), no /dev/kvm.
        let systemd = spec.init_is_systemd();
        if systemd && !mode.can_delegate() {
            return Err(Error::Invalid(format!(
                "container {}: systemd as init needs a cgroup2 hierarchy (a v2 or hybrid host); \
                 this host has cgroup v1 only: boot with systemd.unified_cgroup_hierarchy=1 \
                 or use another init",
                spec.name
            )));
        }
        let keep_caps = if systemd {
            spec.capabilities.with(cap::SYS_ADMIN)
        } else {
            spec.capabilities
        };

        // Everything the child uses is built now: after clone it must not allocate.
        let mut strings: Vec<CString> = Vec::new();
        for a in &spec.init {
            strings.push(cstring(a.as_bytes())?);
        }
        let argc = strings.len();
        let mut env = spec.env.clone();
        if !env.iter().any(|e| e.starts_with("PATH=")) {
            env.push(format!("PATH={DEFAULT_PATH}"));
        }
        if !env.iter().any(|e| e.starts_with("container=")) {
            env.push("container=kapsel".into());
        }
        if spec.console == ConsoleSpec::Pty && !env.iter().any(|e| e.starts_with("TERM=")) {
            env.push(format!(
                "TERM={}",
                std::env::var("TERM").unwrap_or_else(|_| "vt100".into())
            ));
        }
        for e in &env {
            strings.push(cstring(e.as_bytes())?);
        }
        let mut argv: Vec<*const libc::c_char> =
            strings[..argc].iter().map(|s| s.as_ptr()).collect();
        argv.push(std::ptr::null());
        let mut envp: Vec<*const libc::c_char> =
            strings[argc..].iter().map(|s| s.as_ptr()).collect();
        envp.push(std::ptr::null());

        let root = std::fs::canonicalize(&spec.root)
            .map_err(|e| Error::Invalid(format!("root {}: {e}", spec.root.display())))?;
        let (mut console, mut slave_fd, mut slave_path, mut null_fd) = (None, None, None, None);
        match &spec.console {
            ConsoleSpec::Inherit => {}
            ConsoleSpec::Pty => {
                let (master, path) = open_pty()?;
                // O_NOCTTY: a caller that is a session leader without a
                // terminal (kapseld under systemd) would otherwise get the
                // pty as its controlling terminal, which the init's
                // TIOCSCTTY then cannot take, and a SIGHUP when it closes.
                let slave = File::options()
                    .read(true)
                    .write(true)
                    .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
                    .open(Path::new(std::ffi::OsStr::from_bytes(path.as_bytes())))
                    .map_err(|source| Error::Os {
                        what: "opening the console pty",
                        source,
                    })?;
                if let Some(map) = &spec.user_map {
                    // The container's root owns its console (as on a
                    // machine of its own): systemd and getty reopen and
                    // chmod /dev/console, which a host-root pty refuses them.
                    std::os::unix::fs::fchown(&slave, Some(map.host_uid), Some(map.host_gid))
                        .map_err(|source| Error::Os {
                            what: "handing the console pty to the container's root",
                            source,
                        })?;
                }
                console = Some(master);
                slave_fd = Some(slave);
                slave_path = Some(path);
            }
            ConsoleSpec::File(p) => {
                let out = File::options()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|e| {
                        Error::Invalid(format!(
                            "console file {}: {e}; pick a writable path",
                            p.display()
                        ))
                    })?;
                slave_fd = Some(out);
                null_fd = Some(File::open("/dev/null").map_err(|source| Error::Os {
                    what: "opening /dev/null",
                    source,
                })?);
            }
            ConsoleSpec::None => {
                null_fd = Some(
                    File::options()
                        .read(true)
                        .write(true)
                        .open("/dev/null")
                        .map_err(|source| Error::Os {
                            what: "opening /dev/null",
                            source,
                        })?,
                );
            }
        }
        let stdio: [RawFd; 3] = match (&spec.console, &slave_fd, &null_fd) {
            (ConsoleSpec::Pty, Some(s), _) => [s.as_raw_fd(); 3],
            (ConsoleSpec::File(_), Some(out), Some(null)) => {
                [null.as_raw_fd(), out.as_raw_fd(), out.as_raw_fd()]
            }
            (ConsoleSpec::None, _, Some(null)) => [null.as_raw_fd(); 3],
            _ => [0, 1, 2],
        };

        let (go_read, go_write) = socket_pair()?;
        let (err_read, err_write) = pipe()?;
        let mut plan = ChildPlan {
            root: cstring(root.as_os_str().as_bytes())?,
            hostname: cstring(spec.hostname.as_deref().unwrap_or(&spec.name).as_bytes())?,
            init: cstring(init.as_os_str().as_bytes())?,
            cwd: cstring(spec.cwd.as_deref().unwrap_or("/").as_bytes())?,
            _strings: strings,
            argv,
            envp,
            stdio,
            console: slave_path,
            keep_caps,
            last_cap: caps::last_cap(),
            no_new_privs: spec.no_new_privs,
            die_with_parent: spec.die_with_parent,
            seccomp: if spec.seccomp {
                seccomp::profile(keep_caps)?
            } else {
                Vec::new()
            },
            user_ns: spec.user_map.is_some(),
            idmap_root: spec.idmap_root,
            cgroup2: match (systemd, mode.is_unified()) {
                (true, _) => Cgroup2Mount::Delegated,
                (false, true) => Cgroup2Mount::ReadOnly,
                (false, false) => Cgroup2Mount::None,
            },
            tmpfs_run: systemd,
            veth: spec.network.is_some(),
            cgroup_tasks: Vec::new(),
            go_read: go_read.as_raw_fd(),
            err_write: err_write.as_raw_fd(),
            join_ns: Vec::new(),
            set_hostname: true,
            new_net: true,
            mounts: Vec::new(),
            masked_extra: Vec::new(),
            readonly_extra: Vec::new(),
            readonly_root: spec.extra.readonly_root,
            rlimits: spec
                .extra
                .rlimits
                .iter()
                .map(|&(r, soft, hard)| {
                    (
                        r,
                        libc::rlimit {
                            rlim_cur: soft,
                            rlim_max: hard,
                        },
                    )
                })
                .collect(),
            user: spec
                .extra
                .user
                .as_ref()
                .map(|u| (u.uid, u.gid, u.groups.clone())),
            start_fifo: None,
        };
        let extra = prepare_extra(spec, &root, &mut plan)?;

        let limits = Limits {
            memory: spec.memory,
            cpus: spec.cpus,
            pids: spec.pids,
        };
        let cgroup = match &spec.extra.cgroup_path {
            Some(path) => Cgroup::create_at(&mode, path, &limits, systemd)?,
            None => Cgroup::create(&mode, &spec.name, &limits, systemd)?,
        };
        if let Some(map) = &spec.user_map {
            // The cgroup2 tree belongs to the container's root.
            if let Err(e) = cgroup.delegate_to(map.host_uid, map.host_gid) {
                let mut cgroup = cgroup;
                cgroup.remove();
                return Err(e);
            }
        }
        // v1: the child moves itself in through these (see
        // Cgroup::v1_task_files); empty on v2.
        let task_files: Vec<File> = match cgroup
            .v1_task_files()
            .iter()
            .map(|f| File::options().write(true).open(f))
            .collect::<io::Result<_>>()
        {
            Ok(files) => files,
            Err(source) => {
                let mut cgroup = cgroup;
                cgroup.remove();
                return Err(Error::Os {
                    what: "opening the container's cgroup tasks files",
                    source,
                });
            }
        };
        plan.cgroup_tasks = task_files.iter().map(|f| f.as_raw_fd()).collect();

        let mut flags = libc::CLONE_NEWNS
            | libc::CLONE_NEWPID
            | libc::CLONE_NEWUTS
            | libc::CLONE_NEWIPC
            | libc::CLONE_NEWNET
            | libc::CLONE_PIDFD;
        for ns in spec
            .extra
            .host_namespaces
            .iter()
            .chain(spec.extra.join_namespaces.iter().map(|(ns, _)| ns))
        {
            flags &= !ns.clone_flag();
        }
        if spec.user_map.is_some() {
            flags |= libc::CLONE_NEWUSER;
        }
        let mut pidfd: libc::c_int = -1;
        // On cgroup v2 the child is born in its cgroup (clone3 with
        // CLONE_INTO_CGROUP): moving it afterwards would take the cgroup
        // threadgroup lock for writing, which waits for an RCU grace period
        // (milliseconds, the largest cost of a start). v1 has no such
        // option: there, and on kernels before 5.7, the parent moves it.
        let cgroup_dir = cgroup.unified_dir().and_then(|d| File::open(d).ok());
        let mut born_in_cgroup = false;
        let mut pid: libc::c_long = -1;
        if let Some(dir) = &cgroup_dir {
            let args = CloneArgs {
                flags: flags as u32 as u64 | CLONE_INTO_CGROUP,
                pidfd: &mut pidfd as *mut libc::c_int as u64,
                exit_signal: libc::SIGCHLD as u64,
                cgroup: dir.as_raw_fd() as u64,
                ..CloneArgs::default()
            };
            // SAFETY: clone3 with no stack and without CLONE_VM behaves like
            // fork (see below); `args` is a valid clone_args of the size given.
            pid = unsafe {
                libc::syscall(
                    libc::SYS_clone3,
                    &args as *const CloneArgs,
                    std::mem::size_of::<CloneArgs>(),
                )
            };
            born_in_cgroup = pid >= 0;
        }
        if !born_in_cgroup {
            // SAFETY: clone without CLONE_VM and with no new stack behaves
            // like fork: the child gets a copy of this address space and
            // runs on its copy of this stack. The child only calls
            // `child::run`, which makes system calls on the prepared plan
            // and never returns.
            pid = unsafe {
                libc::syscall(
                    libc::SYS_clone,
                    (flags | libc::SIGCHLD) as libc::c_ulong,
                    0usize,
                    &mut pidfd as *mut libc::c_int,
                    0usize,
                    0usize,
                )
            };
        }
        if pid == 0 {
            child::run(&plan);
        }
        if pid < 0 {
            let e = Error::last_os("clone of the container's init");
            let mut cgroup = cgroup;
            cgroup.remove();
            return Err(e);
        }
        drop(go_read);
        drop(err_write);
        drop(extra);
        drop(slave_fd);
        drop(null_fd);
        drop(cgroup_dir);
        // SAFETY: CLONE_PIDFD stored a new descriptor for the child in `pidfd`.
        let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
        let mut c = Container {
            name: spec.name.clone(),
            pid: pid as i32,
            pidfd,
            cgroup,
            veth: None,
            stop_signal,
            console,
            status: None,
            root,
            keep_caps,
            no_new_privs: spec.no_new_privs,
            seccomp: spec.seccomp,
            cleaned: false,
        };
        // From here on a failure drops `c`, which kills the child and
        // removes the cgroup and the veth.
        if let Some(adj) = spec.extra.oom_score_adj {
            std::fs::write(format!("/proc/{}/oom_score_adj", c.pid), adj.to_string()).map_err(
                |source| Error::Os {
                    what: "setting the init's oom_score_adj",
                    source,
                },
            )?;
        }
        if !born_in_cgroup && plan.cgroup_tasks.is_empty() {
            c.cgroup.add(c.pid)?;
        }
        drop(task_files);
        if let Some(map) = &spec.user_map {
            for (file, host) in [("uid_map", map.host_uid), ("gid_map", map.host_gid)] {
                let path = format!("/proc/{}/{file}", c.pid);
                std::fs::write(&path, format!("0 {host} {}", map.count)).map_err(|source| {
                    Error::Os {
                        what: "writing the user namespace's id map",
                        source,
                    }
                })?;
            }
        }
        // After the maps: the idmapping is the user namespace's.
        let tree = if spec.idmap_root {
            Some(idmap::idmapped_root(&c.root, c.pid)?)
        } else {
            None
        };
        if let Some(net) = &spec.network {
            create_veth(&net.host_name, c.pid, net.mac)?;
            c.veth = Some(net.host_name.clone());
        }
        idmap::release(go_write.as_raw_fd(), tree.as_ref().map(|t| t.as_fd())).map_err(
            |source| Error::Os {
                what: "starting the container's init",
                source,
            },
        )?;
        drop(tree);
        drop(go_write);
        let mut report = [0u8; 8];
        let n = read_full(&err_read, &mut report);
        if n == 8 {
            let step = u32::from_ne_bytes(report[..4].try_into().unwrap_or_default()) as usize;
            let errno = i32::from_ne_bytes(report[4..].try_into().unwrap_or_default());
            let _ = c.wait();
            return Err(Error::Setup {
                step: STEPS.get(step).copied().unwrap_or("an unknown step"),
                source: io::Error::from_raw_os_error(errno),
            });
        }
        drop(plan);
        tracing::debug!("container {} started, init pid {}", c.name, c.pid);
        Ok(c)
    }

    /// Leaves the container running on its own and forgets it: nothing is
    /// killed or removed when the handle goes (a runtime such as
    /// `kapsel-oci create` exits here; the init becomes a child of the
    /// caller's subreaper). Returns the init's PID and the cgroup's
    /// directories, which whoever deletes the container removes.
    pub fn detach(mut self) -> (i32, Vec<std::path::PathBuf>) {
        self.cleaned = true;
        let dirs = self.cgroup.paths().map(Path::to_path_buf).collect();
        (self.pid, dirs)
    }

    /// The container's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The init's PID, as the host sees it.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// A pidfd of the init: readable (for poll/epoll) once it has exited.
    pub fn pidfd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }

    /// The master side of the console pty, with [`ConsoleSpec::Pty`].
    pub fn console(&self) -> Option<&File> {
        self.console.as_ref()
    }

    /// Takes the master side of the console pty (to hand it to a client
    /// before [`Container::detach`]).
    pub fn take_console(&mut self) -> Option<File> {
        self.console.take()
    }

    /// The signal [`Container::stop`] sends first.
    pub fn stop_signal(&self) -> i32 {
        self.stop_signal
    }

    /// The cgroup directories (for the daemon's statistics and tests).
    pub fn cgroup(&self) -> &Cgroup {
        &self.cgroup
    }

    /// Waits for the init to exit. When the init exits, the kernel kills
    /// every other process of the container.
    pub fn wait(&mut self) -> Result<ExitStatus> {
        if let Some(s) = self.status {
            return Ok(s);
        }
        self.reap(0).map(|s| s.unwrap_or(ExitStatus::Exited(0)))
    }

    /// The exit status if the init has exited, without blocking.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        if let Some(s) = self.status {
            return Ok(Some(s));
        }
        self.reap(libc::WNOHANG)
    }

    fn reap(&mut self, flags: i32) -> Result<Option<ExitStatus>> {
        let mut status = 0;
        loop {
            // SAFETY: waitpid on our own child, writing into a local.
            let r = unsafe { libc::waitpid(self.pid, &mut status, flags | libc::__WALL) };
            if r == self.pid {
                let s = ExitStatus::from_wait(status);
                self.status = Some(s);
                return Ok(Some(s));
            }
            if r == 0 {
                return Ok(None);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(Error::Os {
                    what: "waiting for the container's init",
                    source: e,
                });
            }
        }
    }

    /// Sends `signal` to the init (through the pidfd: never to a reused PID).
    pub fn signal(&self, signal: i32) -> Result<()> {
        if self.status.is_some() {
            return Err(Error::Exited);
        }
        // SAFETY: pidfd_send_signal on our pidfd with no siginfo.
        let r = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if r != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ESRCH) {
                return Err(Error::Exited);
            }
            return Err(Error::Os {
                what: "signalling the container's init",
                source: e,
            });
        }
        Ok(())
    }

    /// Waits up to `timeout` for the init to exit; `None` if it still runs.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_wait()? {
                return Ok(Some(s));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let mut pfd = libc::pollfd {
                fd: self.pidfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: polls one pollfd we own.
            unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(i32::MAX as u128) as i32) };
        }
    }

    /// Asks the init to power off with its stop signal and waits up to
    /// `timeout`; then kills the container (SIGKILL to the init takes every
    /// process of its PID namespace along). A frozen container is thawed
    /// first, or it could not act on the signal.
    pub fn stop(&mut self, timeout: Duration) -> Result<ExitStatus> {
        if let Some(s) = self.try_wait()? {
            return Ok(s);
        }
        if self.cgroup.is_frozen().unwrap_or(false) {
            self.cgroup.thaw()?;
        }
        match self.signal(self.stop_signal) {
            Ok(()) | Err(Error::Exited) => {}
            Err(e) => return Err(e),
        }
        if let Some(s) = self.wait_timeout(timeout)? {
            return Ok(s);
        }
        tracing::warn!(
            "container {} did not stop within {timeout:?}; killing it",
            self.name
        );
        self.kill()?;
        Err(Error::StopTimeout(timeout))
    }

    /// Kills the container at once and reaps its init.
    pub fn kill(&mut self) -> Result<ExitStatus> {
        if let Some(s) = self.try_wait()? {
            return Ok(s);
        }
        let _ = self.cgroup.thaw();
        match self.signal(libc::SIGKILL) {
            Ok(()) | Err(Error::Exited) => {}
            Err(e) => return Err(e),
        }
        self.wait()
    }

    /// Freezes every process of the container (cgroup freezer).
    pub fn freeze(&self) -> Result<()> {
        self.cgroup.freeze()
    }

    /// Thaws a frozen container.
    pub fn thaw(&self) -> Result<()> {
        self.cgroup.thaw()
    }

    /// Bytes of memory the container uses, as its cgroup counts them.
    pub fn memory_usage(&self) -> Result<u64> {
        self.cgroup.memory_usage()
    }

    /// Runs `argv` inside the running container: joins its cgroup and
    /// namespaces, takes the init's confinement (`no_new_privs`, seccomp,
    /// capabilities), and executes `argv[0]` (an absolute path inside the
    /// root, or a name looked up in [`DEFAULT_PATH`]). Standard input and
    /// output are the caller's. Wait for the returned process: it is the
    /// caller's child. Statuses 125 (joining failed) and 127 (no exec) are
    /// the runtime's, as with `env` and `nsenter`.
    pub fn exec(&self, argv: &[String]) -> Result<ExecProcess> {
        self.exec_with(argv, None)
    }

    /// [`Container::exec`] with standard input, output and error on
    /// `stdio` (a pty slave or a socket). A terminal becomes the command's
    /// controlling terminal, in a session of its own.
    pub fn exec_with(&self, argv: &[String], stdio: Option<BorrowedFd<'_>>) -> Result<ExecProcess> {
        if self.status.is_some() {
            return Err(Error::Exited);
        }
        exec_in(
            self.pid,
            &ExecOptions {
                argv: argv.to_vec(),
                env: Vec::new(),
                cwd: None,
                user: None,
                root: self.root.clone(),
                keep_caps: self.keep_caps,
                no_new_privs: self.no_new_privs,
                seccomp: self.seccomp,
                stdio: stdio.map(|fd| fd.as_raw_fd()),
                cgroup_files: self.exec_cgroup_files(),
            },
        )
    }

    /// The files a process joining the container writes "0" to: `tasks`
    /// on v1 (no global lock, see Cgroup::v1_task_files), `cgroup.procs`
    /// on v2. In a cgroup2 tree the process joins the init where it is
    /// now: a systemd init moves itself to `init.scope` and enables
    /// controllers in the root, which then may hold no process.
    fn exec_cgroup_files(&self) -> Vec<std::path::PathBuf> {
        let mut files = self.cgroup.v1_task_files();
        let Some(v2) = self.cgroup.v2_dir() else {
            return files;
        };
        // A hybrid host's v2 `cgroup.procs` is last among the v1 files.
        files.retain(|f| !f.starts_with(v2));
        let own = Path::new(crate::cgroup::PARENT).join(&self.name);
        let now = std::fs::read_to_string(format!("/proc/{}/cgroup", self.pid))
            .ok()
            .and_then(|text| {
                let line = text.lines().find_map(|l| l.strip_prefix("0::"))?;
                let path = Path::new(line.trim());
                // The init's path relative to the container's directory.
                let below = path
                    .ancestors()
                    .find(|a| a.ends_with(&own))
                    .and_then(|a| path.strip_prefix(a).ok())?;
                Some(v2.join(below))
            })
            .filter(|d| d.is_dir())
            .unwrap_or_else(|| v2.to_path_buf());
        files.push(now.join("cgroup.procs"));
        files
    }

    /// Kills whatever still runs, reaps the init, removes the cgroup and
    /// deletes the host side of the veth.
    pub fn cleanup(mut self) -> Result<()> {
        self.do_cleanup()
    }

    fn do_cleanup(&mut self) -> Result<()> {
        if self.cleaned {
            return Ok(());
        }
        self.cleaned = true;
        self.kill()?;
        let mut result = Ok(());
        if let Some(veth) = self.veth.take() {
            // The veth dies with the network namespace, but that happens
            // asynchronously in the kernel; delete it now so the name is free.
            result = delete_link(&veth);
        }
        if !self.cgroup.remove() {
            let dirs: Vec<String> = self
                .cgroup
                .paths()
                .map(|p| p.display().to_string())
                .collect();
            result = Err(Error::Cgroup {
                path: dirs.join(" ").into(),
                source: io::Error::from_raw_os_error(libc::EBUSY),
            });
        }
        result
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if let Err(e) = self.do_cleanup() {
            tracing::warn!("cleaning up container {}: {e}", self.name);
        }
    }
}

fn read_full(fd: &OwnedFd, buf: &mut [u8]) -> usize {
    let mut got = 0;
    while got < buf.len() {
        // SAFETY: reads into the unfilled tail of `buf`.
        let n = unsafe {
            libc::read(
                fd.as_raw_fd(),
                buf[got..].as_mut_ptr().cast(),
                buf.len() - got,
            )
        };
        if n > 0 {
            got += n as usize;
        } else if n == 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            break;
        }
    }
    got
}

/// A process started by [`Container::exec`]: it ends with the command's
/// status (a signal shows as status 128 + signal).
#[derive(Debug)]
pub struct ExecProcess {
    pid: i32,
    status: Option<ExitStatus>,
}

impl ExecProcess {
    /// The host PID of the process that reports the command's status.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Waits for the command to end.
    pub fn wait(&mut self) -> Result<ExitStatus> {
        if let Some(s) = self.status {
            return Ok(s);
        }
        let mut st = 0;
        loop {
            // SAFETY: waitpid on our own child into a local.
            if unsafe { libc::waitpid(self.pid, &mut st, 0) } == self.pid {
                let s = ExitStatus::from_wait(st);
                self.status = Some(s);
                return Ok(s);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(Error::Os {
                    what: "waiting for an exec'd process",
                    source: e,
                });
            }
        }
    }
}

/// Descriptors the child uses (namespaces to join, the start FIFO); they
/// stay open until the child has been cloned.
struct ExtraFds {
    _files: Vec<File>,
}

/// Fills the plan's OCI extras from `spec.extra`: opens the namespaces to
/// join and the start FIFO, and makes every mount destination outside
/// /dev, /proc and /sys in the root (links in the root resolved within it).
fn prepare_extra(spec: &ContainerSpec, root: &Path, plan: &mut ChildPlan) -> Result<ExtraFds> {
    use crate::spec::Namespace;
    let extra = &spec.extra;
    let mut files = Vec::new();
    let shared = |ns: Namespace| {
        extra.host_namespaces.contains(&ns) || extra.join_namespaces.iter().any(|(n, _)| *n == ns)
    };
    plan.set_hostname = !shared(Namespace::Uts);
    plan.new_net = !shared(Namespace::Net);
    if !plan.set_hostname
        && spec.hostname.is_some()
        && extra.host_namespaces.contains(&Namespace::Uts)
    {
        return Err(Error::Invalid(
            "a hostname needs a UTS namespace of the container's own; drop the hostname or \
             share no UTS namespace with the host"
                .into(),
        ));
    }
    for (_, path) in &extra.join_namespaces {
        let f = File::open(path).map_err(|e| {
            Error::Invalid(format!(
                "namespace {}: {e}; give the path of an existing namespace (/proc/PID/ns/KIND \
                 or a bind-mounted namespace file)",
                path.display()
            ))
        })?;
        plan.join_ns.push(f.as_raw_fd());
        files.push(f);
    }
    if let Some(fifo) = &extra.start_fifo {
        let f = File::options()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_CLOEXEC)
            .open(fifo)
            .map_err(|e| Error::Invalid(format!("start FIFO {}: {e}", fifo.display())))?;
        plan.start_fifo = Some(cstring(
            format!("/proc/self/fd/{}", f.as_raw_fd()).as_bytes(),
        )?);
        files.push(f);
    }
    let rel = |p: &str| -> Result<CString> {
        let r = p.trim_start_matches('/');
        cstring(if r.is_empty() { b"." } else { r.as_bytes() })
    };
    for p in &extra.masked_paths {
        plan.masked_extra.push(rel(p)?);
    }
    for p in &extra.readonly_paths {
        plan.readonly_extra.push(rel(p)?);
    }
    for m in &extra.mounts {
        let bind = m.flags & libc::MS_BIND != 0;
        let source_is_file = bind && std::fs::metadata(&m.source).is_ok_and(|md| !md.is_dir());
        if bind {
            std::fs::metadata(&m.source).map_err(|e| {
                Error::Invalid(format!(
                    "bind mount source {} (for {}): {e}; give an existing host path",
                    m.source, m.destination
                ))
            })?;
        }
        let dest = m.destination.trim_start_matches('/');
        let below_kernel = ["dev", "proc", "sys"]
            .iter()
            .any(|top| Path::new(dest).starts_with(top));
        let (target, make) = if below_kernel {
            (rel(dest)?, if source_is_file { 2 } else { 1 })
        } else {
            let inner = make_in_root(root, dest, source_is_file)?;
            (cstring(inner.as_os_str().as_bytes())?, 0)
        };
        plan.mounts.push(child::ChildMount {
            source: Some(cstring(m.source.as_bytes())?),
            target,
            fstype: m
                .fstype
                .as_deref()
                .map(|t| cstring(t.as_bytes()))
                .transpose()?,
            flags: m.flags,
            data: m
                .data
                .as_deref()
                .filter(|d| !d.is_empty())
                .map(|d| cstring(d.as_bytes()))
                .transpose()?,
            propagation: m.propagation,
            make,
        });
    }
    Ok(ExtraFds { _files: files })
}

/// Makes `dest` (relative) inside `root`, resolving links as if `root`
/// were `/` (a link cannot lead out of it), creating missing directories
/// and, with `file`, the last component as an empty file. Returns the
/// resolved path, relative to `root`.
fn make_in_root(root: &Path, dest: &str, file: bool) -> Result<std::path::PathBuf> {
    use std::path::{Component, PathBuf};
    let invalid = |e: io::Error| {
        Error::Invalid(format!(
            "mount destination /{dest} in root {}: {e}",
            root.display()
        ))
    };
    let mut todo: Vec<std::ffi::OsString> = Path::new(dest)
        .components()
        .rev()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    let mut at = PathBuf::new();
    let mut links = 0;
    while let Some(name) = todo.pop() {
        if name == ".." {
            at.pop();
            continue;
        }
        let next = at.join(&name);
        let full = root.join(&next);
        match std::fs::symlink_metadata(&full) {
            Ok(md) if md.file_type().is_symlink() => {
                links += 1;
                if links > 40 {
                    return Err(invalid(io::Error::from_raw_os_error(libc::ELOOP)));
                }
                let target = std::fs::read_link(&full).map_err(invalid)?;
                if target.is_absolute() {
                    at = PathBuf::new();
                }
                for c in target.components().rev() {
                    match c {
                        Component::Normal(n) => todo.push(n.to_os_string()),
                        Component::ParentDir => todo.push("..".into()),
                        _ => {}
                    }
                }
            }
            Ok(_) => at = next,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if file && todo.is_empty() {
                    File::options()
                        .write(true)
                        .create(true)
                        .truncate(false)
                        .custom_flags(libc::O_NOFOLLOW)
                        .open(&full)
                        .map_err(invalid)?;
                } else {
                    std::fs::create_dir(&full).map_err(invalid)?;
                }
                at = next;
            }
            Err(e) => return Err(invalid(e)),
        }
    }
    if at.as_os_str().is_empty() {
        at.push(".");
    }
    Ok(at)
}

/// What [`exec_in`] runs and with which confinement.
#[derive(Debug, Clone)]
pub struct ExecOptions {
    /// The command: an absolute path inside the root or a name looked up
    /// in [`DEFAULT_PATH`], and its arguments.
    pub argv: Vec<String>,
    /// Its environment (`PATH` and `container=` added when missing).
    pub env: Vec<String>,
    /// Its working directory inside the container; `None` is `/`.
    pub cwd: Option<String>,
    /// Its user; `None` is root.
    pub user: Option<crate::spec::User>,
    /// The container's root as the host sees it (`/proc/PID/root` does),
    /// where the command is looked up.
    pub root: std::path::PathBuf,
    /// Capabilities kept.
    pub keep_caps: caps::CapSet,
    /// Set `no_new_privs`.
    pub no_new_privs: bool,
    /// Install Kapsel's seccomp profile.
    pub seccomp: bool,
    /// Standard input, output and error; `None` is the caller's.
    pub stdio: Option<RawFd>,
    /// The cgroup files the process writes "0" to (`cgroup.procs` or `tasks`).
    pub cgroup_files: Vec<std::path::PathBuf>,
}

/// Runs a command inside the container whose init is `pid`: joins its
/// cgroup (`opts.cgroup_files`) and namespaces, takes the confinement
/// given, and executes. The returned process is the caller's child and
/// ends with the command's status (125: joining failed, 127: no exec).
pub fn exec_in(pid: i32, opts: &ExecOptions) -> Result<ExecProcess> {
    let init_pid = pid;
    let argv = &opts.argv;
    let stdio = opts.stdio;
    let first = argv
        .first()
        .ok_or_else(|| Error::Invalid("exec: give a command".into()))?;
    let path = cstring(resolve_init(&opts.root, first)?.as_os_str().as_bytes())?;
    let args: Vec<CString> = argv
        .iter()
        .map(|a| cstring(a.as_bytes()))
        .collect::<Result<_>>()?;
    let mut arg_ptrs: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    arg_ptrs.push(std::ptr::null());
    let mut env_strings = opts.env.clone();
    if !env_strings.iter().any(|e| e.starts_with("PATH=")) {
        env_strings.push(format!("PATH={DEFAULT_PATH}"));
    }
    if !env_strings.iter().any(|e| e.starts_with("container=")) {
        env_strings.push("container=kapsel".into());
    }
    let env: Vec<CString> = env_strings
        .iter()
        .map(|e| cstring(e.as_bytes()))
        .collect::<Result<_>>()?;
    let mut env_ptrs: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).collect();
    env_ptrs.push(std::ptr::null());
    let cwd = cstring(opts.cwd.as_deref().unwrap_or("/").as_bytes())?;
    let user = opts.user.as_ref().map(|u| (u.uid, u.gid, u.groups.clone()));
    // Namespaces to join, user first (it grants the rights for the
    // rest), mount last among those opened by path.
    let mut ns = Vec::new();
    let mut user_ns = false;
    for kind in ["user", "cgroup", "ipc", "uts", "net", "pid", "mnt"] {
        let own = std::fs::read_link(format!("/proc/self/ns/{kind}")).ok();
        let theirs = std::fs::read_link(format!("/proc/{init_pid}/ns/{kind}")).ok();
        if own.is_some() && own == theirs {
            continue; // not a namespace of the container (e.g. no user namespace)
        }
        user_ns |= kind == "user";
        let f = File::open(format!("/proc/{init_pid}/ns/{kind}")).map_err(|source| Error::Os {
            what: "opening a namespace of the container",
            source,
        })?;
        ns.push(f);
    }
    let join = &opts.cgroup_files;
    let procs: Vec<File> = join
        .iter()
        .map(|f| File::options().write(true).open(f))
        .collect::<io::Result<_>>()
        .map_err(|source| Error::Os {
            what: "opening the container's cgroup",
            source,
        })?;
    let keep = opts.keep_caps;
    let last = caps::last_cap();
    let progs = if opts.seccomp {
        seccomp::profile(keep)?
    } else {
        Vec::new()
    };
    let fprogs: Vec<libc::sock_fprog> = progs
        .iter()
        .map(|prog| libc::sock_fprog {
            len: prog.len() as u16,
            filter: prog.as_ptr() as *mut libc::sock_filter,
        })
        .collect();
    let no_new_privs = opts.no_new_privs;
    // SAFETY: fork; the child below only makes system calls on data
    // prepared above and ends with _exit or execve.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(Error::last_os("fork for exec"));
    }
    if pid == 0 {
        // SAFETY: system calls on descriptors and strings
        // prepared before fork; every path ends in _exit or execve.
        unsafe {
            if let Some(fd) = stdio {
                for target in 0..3 {
                    if libc::dup2(fd, target) < 0 {
                        libc::_exit(125);
                    }
                }
                if libc::isatty(0) == 1 {
                    libc::setsid();
                    libc::ioctl(0, libc::TIOCSCTTY, 0);
                }
            }
            for p in &procs {
                if libc::write(p.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                    libc::_exit(125);
                }
            }
            for f in &ns {
                if libc::setns(f.as_raw_fd(), 0) != 0 {
                    libc::_exit(125);
                }
            }
            // Host root is not mapped in the container's user
            // namespace: become its root, as the init did.
            if user_ns && !crate::child::become_root() {
                libc::_exit(125);
            }
            // The PID namespace applies to children: fork once more.
            let inner = libc::fork();
            if inner < 0 {
                libc::_exit(125);
            }
            if inner > 0 {
                let mut st = 0;
                while libc::waitpid(inner, &mut st, 0) < 0 {}
                libc::_exit(ExitStatus::from_wait(st).code());
            }
            if libc::chdir(cwd.as_ptr()) != 0 {
                libc::_exit(125);
            }
            for sig in 1..libc::SIGRTMAX() {
                if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                    libc::signal(sig, libc::SIG_DFL);
                }
            }
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            // The same order as the init's: no_new_privs, seccomp
            // (while CAP_SYS_ADMIN is held), capabilities.
            if no_new_privs && libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                libc::_exit(125);
            }
            for fprog in &fprogs {
                if libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER,
                    fprog as *const libc::sock_fprog,
                ) != 0
                {
                    libc::_exit(125);
                }
            }
            if let Some((uid, gid, groups)) = &user {
                if !caps::switch_user(*uid, *gid, groups) {
                    libc::_exit(125);
                }
            }
            if caps::drop_to(keep, last).is_err() {
                libc::_exit(125);
            }
            libc::execve(path.as_ptr(), arg_ptrs.as_ptr(), env_ptrs.as_ptr());
            libc::_exit(127);
        }
    }
    Ok(ExecProcess { pid, status: None })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_destinations_stay_in_the_root() {
        let base = std::env::temp_dir().join(format!("kapsel-mkroot-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let root = base.join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        // An image's links: absolute, and relative past the top.
        std::os::unix::fs::symlink("/outside-abs", root.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../../../outside-rel", root.join("etc/rel")).unwrap();
        std::os::unix::fs::symlink("../etc", root.join("etc/loop")).unwrap();
        let p = make_in_root(&root, "abs/x", false).unwrap();
        assert_eq!(p, Path::new("outside-abs/x"));
        assert!(root.join("outside-abs/x").is_dir());
        let p = make_in_root(&root, "etc/rel/hosts", true).unwrap();
        assert_eq!(p, Path::new("outside-rel/hosts"));
        assert!(root.join("outside-rel/hosts").is_file());
        assert!(!Path::new("/outside-abs").exists() && !Path::new("/outside-rel").exists());
        let p = make_in_root(&root, "etc/loop/loop/loop/y", false).unwrap();
        assert_eq!(p, Path::new("etc/y"));
        std::os::unix::fs::symlink("self", root.join("self")).unwrap();
        assert!(make_in_root(&root, "self/z", false).is_err());
        std::fs::remove_dir_all(&base).unwrap();
    }
}
