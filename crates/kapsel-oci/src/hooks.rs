//! OCI hooks (config.json `hooks`), run as runc runs them: each with the
//! container's state JSON on its standard input, its `args` (`args[0]`
//! is its argv[0]) and `env`, killed after `timeout` seconds.
//!
//! - `prestart` (deprecated) and `createRuntime`: during `create`, once
//!   the container's namespaces exist and its root is mounted, before
//!   `pivot_root`, in kapsel-oci's own namespaces;
//! - `createContainer`: right after them, in the container's namespaces
//!   (its mount namespace still shows the host's root: the path is the
//!   host's);
//! - `startContainer`: during `start`, before the process is executed, in
//!   the container (after `pivot_root`: the path is the container's),
//!   confined as its process: its cgroup, capabilities, user, seccomp;
//! - `poststart`: after the process started, before `start` returns;
//! - `poststop`: after `delete` removed the container.
//!
//! A failing hook fails its command and the container is removed (runc),
//! except `poststop`, whose failure is a warning.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// One hook of config.json.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Hook {
    pub path: PathBuf,
    #[serde(default)]
    pub args: Option<Vec<String>>,
    #[serde(default)]
    pub env: Option<Vec<String>>,
    #[serde(default)]
    pub timeout: Option<i64>,
}

/// config.json's `hooks`, kept in the state for `start` and `delete`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Hooks {
    #[serde(default)]
    pub prestart: Vec<Hook>,
    #[serde(default)]
    pub create_runtime: Vec<Hook>,
    #[serde(default)]
    pub create_container: Vec<Hook>,
    #[serde(default)]
    pub start_container: Vec<Hook>,
    #[serde(default)]
    pub poststart: Vec<Hook>,
    #[serde(default)]
    pub poststop: Vec<Hook>,
}

impl Hooks {
    /// The hooks of config.json (`hooks`, absent: none); a hook without an
    /// absolute path or with a timeout below 1 is refused.
    pub fn from_spec(hooks: Option<Value>) -> Result<Hooks, String> {
        let Some(v) = hooks.filter(|v| !v.is_null()) else {
            return Ok(Hooks::default());
        };
        // null lists (Go's omitempty misses) read as empty.
        let mut v = v;
        if let Some(o) = v.as_object_mut() {
            o.retain(|_, l| !l.is_null());
        }
        let h: Hooks = serde_json::from_value(v).map_err(|e| format!("config.json hooks: {e}"))?;
        for (kind, list) in h.all() {
            for hook in list {
                if !hook.path.is_absolute() {
                    return Err(format!(
                        "config.json hooks.{kind}: path {} is not absolute; give the full path",
                        hook.path.display()
                    ));
                }
                if hook.timeout.is_some_and(|t| t <= 0) {
                    return Err(format!(
                        "config.json hooks.{kind} {}: timeout must be at least 1 second",
                        hook.path.display()
                    ));
                }
            }
        }
        Ok(h)
    }

    fn all(&self) -> [(&'static str, &Vec<Hook>); 6] {
        [
            ("prestart", &self.prestart),
            ("createRuntime", &self.create_runtime),
            ("createContainer", &self.create_container),
            ("startContainer", &self.start_container),
            ("poststart", &self.poststart),
            ("poststop", &self.poststop),
        ]
    }

    /// Whether any hook runs during `create` (the start then waits for them).
    pub fn at_create(&self) -> bool {
        !(self.prestart.is_empty()
            && self.create_runtime.is_empty()
            && self.create_container.is_empty())
    }
}

/// Runs the hooks `list` of kind `kind` in order with `state` on their
/// standard input; in the namespaces of process `ns_of` if given. Stops
/// at the first failure.
pub fn run_all(kind: &str, list: &[Hook], state: &Value, ns_of: Option<i32>) -> Result<(), String> {
    for (i, h) in list.iter().enumerate() {
        run(h, state, ns_of)
            .map_err(|e| format!("error running {kind} hook #{i} ({}): {e}", h.path.display()))?;
    }
    Ok(())
}

/// Runs the hooks `list` inside the container whose init is `pid`, with
/// the confinement `base` (as an `exec`): the state on standard input,
/// standard output and error collected for the error message. A hook's
/// `args[0]` is not its argv[0] here: the path is.
pub fn run_all_confined(
    kind: &str,
    list: &[Hook],
    state: &Value,
    pid: i32,
    base: &kapsel_container::ExecOptions,
) -> Result<(), String> {
    for (i, h) in list.iter().enumerate() {
        run_confined(h, state, pid, base)
            .map_err(|e| format!("error running {kind} hook #{i} ({}): {e}", h.path.display()))?;
    }
    Ok(())
}

fn run_confined(
    h: &Hook,
    state: &Value,
    pid: i32,
    base: &kapsel_container::ExecOptions,
) -> Result<(), String> {
    use std::os::unix::net::UnixStream;
    let (mut ours, theirs) = UnixStream::pair().map_err(|e| e.to_string())?;
    let mut opts = base.clone();
    opts.argv = std::iter::once(h.path.to_string_lossy().into_owned())
        .chain(h.args.iter().flatten().skip(1).cloned())
        .collect();
    opts.env = h.env.clone().unwrap_or_default();
    opts.stdio = Some(theirs.as_raw_fd());
    let p = kapsel_container::exec_in(pid, &opts).map_err(|e| e.to_string())?;
    drop(theirs);
    let outer = p.pid();
    // SAFETY: signal(2) with constant dispositions, restored below (a
    // hook that does not read its input gives EPIPE, not SIGPIPE).
    let old = unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    let _ = ours.write_all(state.to_string().as_bytes());
    // SAFETY: as above.
    unsafe { libc::signal(libc::SIGPIPE, old) };
    let _ = ours.shutdown(std::net::Shutdown::Write);
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = (&mut ours).take(64 << 10).read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    });
    let deadline = h
        .timeout
        .map(|t| Instant::now() + Duration::from_secs(t as u64));
    let status = loop {
        let mut st = 0;
        // SAFETY: waitpid on our own child, into a local.
        let r = unsafe { libc::waitpid(outer, &mut st, libc::WNOHANG) };
        if r == outer {
            break st;
        }
        if r < 0 {
            return Err(format!(
                "waiting for the hook: {}",
                std::io::Error::last_os_error()
            ));
        }
        if deadline.is_some_and(|d| Instant::now() > d) {
            // The hook is the child of the process exec_in forked (which
            // entered the PID namespace): kill both.
            let inner = std::fs::read_to_string(format!("/proc/{outer}/task/{outer}/children"))
                .unwrap_or_default();
            for p in inner
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
            {
                // SAFETY: kill(2) with integer arguments.
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
            // SAFETY: as above; then reap it.
            unsafe {
                libc::kill(outer, libc::SIGKILL);
                libc::waitpid(outer, &mut st, 0);
            }
            return Err(format!(
                "hook ran past specified timeout of {}s",
                h.timeout.unwrap_or(0)
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let output = reader.join().unwrap_or_default();
    let code = if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        libc::WEXITSTATUS(status)
    };
    if code == 0 {
        return Ok(());
    }
    Err(format!("exit status: {code}, output: {}", output.trim()))
}

/// The namespaces of `pid` that differ from ours, user first (it grants
/// the rights to join the rest), mount last.
fn namespaces_of(pid: i32) -> Result<Vec<File>, String> {
    let mut out = Vec::new();
    for kind in ["user", "cgroup", "ipc", "uts", "net", "pid", "mnt"] {
        let own = std::fs::read_link(format!("/proc/self/ns/{kind}")).ok();
        let theirs = std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).ok();
        if own.is_some() && own == theirs {
            continue;
        }
        out.push(
            File::open(format!("/proc/{pid}/ns/{kind}"))
                .map_err(|e| format!("opening the container's {kind} namespace: {e}"))?,
        );
    }
    Ok(out)
}

fn run(h: &Hook, state: &Value, ns_of: Option<i32>) -> Result<(), String> {
    let mut cmd = Command::new(&h.path);
    let args = h.args.clone().unwrap_or_default();
    if let Some(first) = args.first() {
        cmd.arg0(first);
    }
    cmd.args(args.iter().skip(1));
    cmd.env_clear();
    for e in h.env.iter().flatten() {
        if let Some((k, v)) = e.split_once('=') {
            cmd.env(k, v);
        }
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let ns = match ns_of {
        Some(pid) => namespaces_of(pid)?,
        None => Vec::new(),
    };
    let fds: Vec<RawFd> = ns.iter().map(|f| f.as_raw_fd()).collect();
    if !fds.is_empty() {
        // SAFETY: the closure runs in the forked child before exec and
        // only calls setns(2) on descriptors opened before the fork.
        unsafe {
            cmd.pre_exec(move || {
                for &fd in &fds {
                    if libc::setns(fd, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
    }
    let mut child = cmd.spawn().map_err(|e| e.to_string())?;
    drop(ns);
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that does not read its input is not an error (runc):
        // EPIPE, not the SIGPIPE that kapsel-oci otherwise dies of.
        // SAFETY: signal(2) with constant dispositions, restored below.
        let old = unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
        let _ = stdin.write_all(state.to_string().as_bytes());
        drop(stdin);
        // SAFETY: as above.
        unsafe { libc::signal(libc::SIGPIPE, old) };
    }
    let reader = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(r) = r {
                let _ = r.take(64 << 10).read_to_end(&mut buf);
            }
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = reader(
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let err = reader(
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let deadline = h
        .timeout
        .map(|t| Instant::now() + Duration::from_secs(t as u64));
    let status = loop {
        if let Some(s) = child.try_wait().map_err(|e| e.to_string())? {
            break s;
        }
        if deadline.is_some_and(|d| Instant::now() > d) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "hook ran past specified timeout of {}s",
                h.timeout.unwrap_or(0)
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let (stdout, stderr) = (
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    );
    if status.success() {
        return Ok(());
    }
    Err(format!(
        "{status}, stdout: {}, stderr: {}",
        stdout.trim(),
        stderr.trim()
    ))
}
