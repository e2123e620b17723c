//! Running a process in a running container: [`exec_in`] joins the
//! container's cgroup and namespaces, takes the init's confinement and
//! executes the command; [`ExecProcess`] is the caller's handle on it.

use crate::container::ExitStatus;
use crate::error::{Error, Result};
use crate::spec::{resolve_init, DEFAULT_PATH};
use crate::sys::cstring;
use crate::{caps, seccomp};
use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;

/// A process started by [`Container::exec`](crate::Container::exec): it ends with the command's
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
    /// Install this program (raw BPF, see [`crate::Extra::seccomp_bpf`])
    /// instead of Kapsel's profile.
    pub seccomp_bpf: Option<Vec<u8>>,
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
    let progs = match &opts.seccomp_bpf {
        Some(bpf) => vec![seccomp::program_from_bpf(bpf)?],
        None if opts.seccomp => seccomp::profile(keep)?,
        None => Vec::new(),
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
