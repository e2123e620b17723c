//! A running container: the handle [`Container::start`] (start/) returns.

use crate::caps;
use crate::cgroup::Cgroup;
use crate::error::{Error, Result};
use crate::exec::{exec_in, ExecOptions, ExecProcess};
use kapsel_host::netlink::Netlink;
use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
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
    pub(crate) fn from_wait(status: i32) -> ExitStatus {
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
    pub(crate) name: String,
    pub(crate) pid: i32,
    pub(crate) pidfd: OwnedFd,
    pub(crate) cgroup: Cgroup,
    pub(crate) veth: Option<String>,
    pub(crate) stop_signal: i32,
    pub(crate) console: Option<File>,
    pub(crate) status: Option<ExitStatus>,
    pub(crate) root: std::path::PathBuf,
    pub(crate) keep_caps: caps::CapSet,
    /// The spec's `no_new_privs` and `seccomp`, for processes exec'd later.
    pub(crate) no_new_privs: bool,
    pub(crate) seccomp: bool,
    pub(crate) cleaned: bool,
    /// The seccomp filter's notification descriptor, with
    /// [`crate::Extra::seccomp_listener`].
    pub(crate) seccomp_listener: Option<OwnedFd>,
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

impl Container {
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

    /// Takes the seccomp filter's notification descriptor (for a seccomp
    /// agent), with [`crate::Extra::seccomp_listener`].
    pub fn take_seccomp_listener(&mut self) -> Option<OwnedFd> {
        self.seccomp_listener.take()
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
                seccomp_bpf: None,
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
