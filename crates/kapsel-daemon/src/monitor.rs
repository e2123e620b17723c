//! A guest's monitor: one small root process per running guest (`kapsel
//! monitor`), the parent of the VM process or of the container's init. It
//! holds what used to die with the daemon: the console (the VM's socket
//! pair or the container's pty master, with its replay buffer and
//! viewers), the control of the guest (power button, kill, pause), `exec`
//! into a container, and how the guest ended. kapseld talks to it over a
//! Unix socket in `STATE_DIR/run/` that only root can reach, so that a
//! daemon that crashes, is killed, restarted or upgraded leaves its guests
//! running and the next daemon adopts them (as Proxmox's QEMU processes
//! and their serial sockets, or podman's conmon, outlive their managers).
//!
//! The monitor is started by the daemon, detaches into its own session,
//! says the guest's pid on its standard output and serves until the guest
//! has ended. Then it writes the guest's last console output and its exit
//! report into `run/` (atomically; the daemon that reads them removes
//! them), answers the daemon's waiting `Watch`, removes its socket and
//! exits. A monitor that dies takes its VM process with it
//! (`PR_SET_PDEATHSIG`): no guest is left without one.

use crate::console::Console;
use crate::ctproc::{self, ContainerProcess};
use crate::proto::{self, Response};
use crate::vmproc::{self, VmProcess};
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// The version of the monitor's launch description and protocol.
pub const MONITOR_VERSION: u32 = 1;

/// How long the daemon waits for a monitor to answer a request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a new monitor may take to start its guest and say its pid.
const LAUNCH_TIMEOUT: Duration = Duration::from_secs(60);

/// Exec sessions one monitor runs at once.
const MAX_EXECS: usize = 32;

/// The directory of the monitors' sockets and reports.
pub fn run_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("run")
}

/// Where the monitor of the guest `name` keeps its socket, exit report and
/// final console output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Paths {
    /// Its control socket.
    pub socket: PathBuf,
    /// How the guest ended (JSON [`ExitNote`]), written when it has.
    pub exit: PathBuf,
    /// The console output kept for replay, written when the guest ended.
    pub console: PathBuf,
}

impl Paths {
    /// The paths for `name` in `state_dir`.
    pub fn of(state_dir: &Path, name: &str) -> Paths {
        let dir = run_dir(state_dir);
        Paths {
            socket: dir.join(format!("{name}.sock")),
            exit: dir.join(format!("{name}.exit")),
            console: dir.join(format!("{name}.console")),
        }
    }
}

/// Makes `STATE_DIR/run`, root's alone (mode 0700).
pub fn make_run_dir(state_dir: &Path) -> Result<(), String> {
    let dir = run_dir(state_dir);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .and_then(|()| std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)))
        .map_err(|e| {
            format!(
                "{}: {e}; the state directory must be writable",
                dir.display()
            )
        })
}

/// What a monitor runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum GuestLaunch {
    /// A VM process: `kapsel ARGS`, inheriting the monitor's descriptors
    /// 3..3+`fds` (its taps and readiness pipe) at the same numbers.
    Vm {
        /// The `kapsel` binary.
        kapsel: PathBuf,
        /// Its arguments (`run ...`).
        args: Vec<String>,
        /// How many inherited descriptors, from 3 up.
        fds: u32,
    },
    /// A container, started in the monitor with kapsel-container.
    Container {
        /// The container as configured.
        spec: Box<kapsel_config::ContainerSpec>,
        /// Its root directory.
        root: PathBuf,
        /// Its image's defaults.
        defaults: kapsel_container::image::ImageDefaults,
        /// The host side of its veth and the guest's MAC.
        veth: Option<(String, [u8; 6])>,
    },
}

/// What the daemon hands a new monitor on its standard input.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonitorSpec {
    /// [`MONITOR_VERSION`].
    pub version: u32,
    /// The guest's name.
    pub name: String,
    /// Where its socket and reports go.
    pub paths: Paths,
    /// The guest's log (the VM process's stderr, the monitor's own lines).
    pub log: PathBuf,
    /// What to run.
    pub guest: GuestLaunch,
    /// The daemon's record of the guest, kept by the monitor and handed to
    /// the next daemon (so that a daemon killed between starting a guest
    /// and writing its state file loses nothing).
    #[serde(default)]
    pub record: Option<Box<crate::state::GuestRecord>>,
}

/// What the daemon can do to a running guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Act {
    /// Ask it to shut down.
    PowerButton,
    /// End it at once.
    Kill,
    /// Stop it where it is.
    Pause,
    /// Let a paused guest go on.
    Resume,
}

/// A request to a monitor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum MonitorRequest {
    /// Who are you: [`MonitorReply::Info`].
    Hello,
    /// Do this to the guest.
    Act(Act),
    /// Serve the client connection sent with this request as a console
    /// viewer (a root viewer may go beyond the viewer limit).
    Console {
        /// The viewer is root.
        privileged: bool,
    },
    /// Run a command in the container, relayed over the client connection
    /// sent with this request.
    Exec {
        /// The command.
        argv: Vec<String>,
        /// A terminal of these rows and columns.
        tty: Option<(u16, u16)>,
    },
    /// The memory the guest uses.
    Memory,
    /// Answer when the guest has ended: [`MonitorReply::Exited`].
    Watch,
    /// Keep this record of the guest for the next daemon.
    Record(Box<crate::state::GuestRecord>),
}

/// A monitor's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum MonitorReply {
    /// The guest and its monitor.
    Info {
        /// The VM process or the container's init.
        pid: u32,
        /// The monitor's own pid.
        monitor: u32,
        /// The guest is paused.
        paused: bool,
        /// The guest is a container.
        container: bool,
        /// The daemon's record of it, as last given.
        record: Option<Box<crate::state::GuestRecord>>,
    },
    /// Done.
    Done,
    /// Bytes of memory, if known.
    Memory(Option<u64>),
    /// The guest has ended.
    Exited(ExitNote),
    /// Refused, with the reason for the user.
    Error(String),
}

/// How a guest ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitNote {
    /// For `status` and the log.
    pub reason: String,
    /// Anything but a power-off or an init's exit status 0.
    pub failure: bool,
}

// ---------------------------------------------------------------------------
// The daemon's side.

/// The daemon's handle on a guest's monitor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handle {
    /// The guest's name (for messages).
    pub name: String,
    /// The monitor's paths.
    pub paths: Paths,
    /// The guest's pid.
    pub pid: u32,
    /// The monitor's pid.
    pub monitor_pid: u32,
}

/// Puts each of `fds` at 3, 4, ... in the child about to exec, whatever
/// numbers they have here (see [`vmproc::dup_above_targets`]).
fn place_fds(cmd: &mut Command, fds: &[OwnedFd]) -> Result<Vec<OwnedFd>, String> {
    let mut high = Vec::new();
    for fd in fds {
        high.push(
            vmproc::dup_above_targets(fd, fds.len()).map_err(|e| format!("descriptor: {e}"))?,
        );
    }
    let raw: Vec<RawFd> = high.iter().map(|f| f.as_raw_fd()).collect();
    // SAFETY: between fork and exec only dup2 and setsid, which are
    // async-signal-safe, on descriptors that stay open in the parent until
    // spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            for (i, &fd) in raw.iter().enumerate() {
                if libc::dup2(fd, vmproc::HANDED_FD + i as i32) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // Its own session: neither the daemon's terminal nor its
            // process group's signals reach the monitor.
            libc::setsid();
            Ok(())
        });
    }
    Ok(high)
}

/// Starts a monitor for `spec`, handing it `fds` at 3, 4, ...; returns
/// once it has started the guest, with the guest's and the monitor's pids.
pub fn launch(kapsel: &Path, spec: &MonitorSpec, fds: Vec<OwnedFd>) -> Result<Handle, String> {
    let name = &spec.name;
    let body = serde_json::to_vec(spec).map_err(|e| format!("{name}: monitor: {e}"))?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&spec.log)
        .map_err(|e| format!("{name}: log {}: {e}", spec.log.display()))?;
    let mut cmd = Command::new(kapsel);
    cmd.arg("monitor")
        .arg(name)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .env(
            "KAPSEL_LOG",
            std::env::var("KAPSEL_VM_LOG").unwrap_or("warn".into()),
        );
    let high = place_fds(&mut cmd, &fds)?;
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("{name}: cannot run {}: {e}", kapsel.display()))?;
    drop(high);
    drop(fds);
    let mut stdin = child.stdin.take().ok_or("monitor: no stdin")?;
    let sent = stdin.write_all(&body);
    drop(stdin);
    let mut stdout = child.stdout.take().ok_or("monitor: no stdout")?;
    // The first monitor process forks the real one and exits at once.
    let _ = child.wait();
    sent.map_err(|e| format!("{name}: monitor: {e}"))?;
    let line = read_line_within(&mut stdout, LAUNCH_TIMEOUT)
        .map_err(|e| format!("{name}: the monitor did not start the guest: {e}"))?;
    #[derive(Deserialize)]
    struct Started {
        pid: Option<u32>,
        monitor: Option<u32>,
        error: Option<String>,
    }
    let started: Started = serde_json::from_str(&line)
        .map_err(|e| format!("{name}: the monitor said {line:?}: {e}"))?;
    match (started.pid, started.monitor, started.error) {
        (Some(pid), Some(monitor_pid), None) => Ok(Handle {
            name: name.clone(),
            paths: spec.paths.clone(),
            pid,
            monitor_pid,
        }),
        (_, _, Some(e)) => Err(e),
        _ => Err(format!("{name}: the monitor said {line:?}")),
    }
}

/// One line from `r` (a pipe), waiting at most `timeout`.
fn read_line_within(r: &mut impl AsRawFd, timeout: Duration) -> Result<String, String> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("timed out".into());
        }
        let mut pfd = libc::pollfd {
            fd: r.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = libc::c_int::try_from(left.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: one valid pollfd for the call.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e.to_string());
        }
        if n == 0 {
            continue;
        }
        let mut buf = [0u8; 4096];
        // SAFETY: reads into a valid local buffer of that length.
        let got = unsafe { libc::read(r.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if got < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e.to_string());
        }
        if got == 0 {
            return if out.is_empty() {
                Err("it ended without a word (see the guest's log)".into())
            } else {
                Ok(String::from_utf8_lossy(&out).trim().to_string())
            };
        }
        out.extend_from_slice(&buf[..got as usize]);
        if out.contains(&b'\n') || out.len() > 64 * 1024 {
            let end = out.iter().position(|&b| b == b'\n').unwrap_or(out.len());
            return Ok(String::from_utf8_lossy(&out[..end]).to_string());
        }
    }
}

/// Sends `msg` as one frame with `fd` attached (SCM_RIGHTS).
fn send_with_fd(stream: &UnixStream, msg: &MonitorRequest, fd: RawFd) -> std::io::Result<()> {
    let mut frame = Vec::new();
    proto::write_message(&mut frame, msg).map_err(std::io::Error::other)?;
    // SAFETY: the caller's descriptor stays open for this call.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    let n = kapsel_host::fd::send_with_fds(stream.as_fd(), &frame, &[fd], 0)?;
    let mut s = stream;
    s.write_all(&frame[n..])
}

/// Receives one request frame and the descriptor sent with it, if any.
fn recv_with_fd(
    stream: &UnixStream,
    deadline: Instant,
) -> Result<(MonitorRequest, Option<OwnedFd>), String> {
    let mut buf = vec![0u8; 64 * 1024];
    let left = deadline.saturating_duration_since(Instant::now());
    stream
        .set_read_timeout(Some(left.max(Duration::from_millis(1))))
        .map_err(|e| e.to_string())?;
    let got =
        kapsel_host::fd::recv_with_fds(stream.as_fd(), &mut buf, 0).map_err(|e| e.to_string())?;
    let (n, fds) = (got.len, got.fds);
    let got = &buf[..n];
    // The rest of the frame, if it did not come in one piece.
    let mut reader = got.chain(DeadlineRead { stream, deadline });
    let body = proto::read_frame(&mut reader).map_err(|e| e.to_string())?;
    let req = serde_json::from_slice(&body).map_err(|e| format!("malformed request: {e}"))?;
    // At most one descriptor is meant; extra ones are closed here.
    let fd = fds.into_iter().next();
    Ok((req, fd))
}

struct DeadlineRead<'a> {
    stream: &'a UnixStream,
    deadline: Instant,
}

impl Read for DeadlineRead<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        self.stream.set_read_timeout(Some(left))?;
        let mut s = self.stream;
        s.read(buf)
    }
}

/// Why a request to a guest's monitor failed.
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    /// The monitor cannot be reached or did not answer in time (it ended
    /// with its guest, or hangs).
    #[error("{name}: its monitor does not answer: {reason}")]
    Unreachable {
        /// The guest.
        name: String,
        /// What failed (connect, send, receive).
        reason: String,
    },
    /// The monitor refused the request; its reason.
    #[error("{0}")]
    Refused(String),
    /// The monitor answered something this daemon does not understand
    /// (a monitor of another version).
    #[error("{name}: its monitor answered {what}; is it of another Kapsel version?")]
    Protocol {
        /// The guest.
        name: String,
        /// The answer.
        what: String,
    },
}

impl From<MonitorError> for crate::guest::GuestError {
    fn from(e: MonitorError) -> Self {
        crate::guest::GuestError::Host(e.to_string())
    }
}

impl Handle {
    fn connect(&self) -> std::io::Result<UnixStream> {
        let s = connect(&self.paths.socket)?;
        s.set_write_timeout(Some(REQUEST_TIMEOUT))?;
        Ok(s)
    }

    fn ask(&self, req: &MonitorRequest, fd: Option<RawFd>) -> Result<MonitorReply, MonitorError> {
        let unreachable = |e: &dyn std::fmt::Display| MonitorError::Unreachable {
            name: self.name.clone(),
            reason: e.to_string(),
        };
        let mut s = self.connect().map_err(|e| unreachable(&e))?;
        match fd {
            Some(fd) => send_with_fd(&s, req, fd).map_err(|e| unreachable(&e))?,
            None => proto::write_message(&mut s, req).map_err(|e| unreachable(&e))?,
        }
        let body = proto::read_frame_by(&s, Instant::now() + REQUEST_TIMEOUT)
            .map_err(|e| unreachable(&e))?;
        serde_json::from_slice(&body).map_err(|e| MonitorError::Protocol {
            name: self.name.clone(),
            what: format!("a reply this daemon cannot read ({e})"),
        })
    }

    fn done(&self, req: &MonitorRequest, fd: Option<RawFd>) -> Result<(), MonitorError> {
        match self.ask(req, fd)? {
            MonitorReply::Done => Ok(()),
            MonitorReply::Error(e) => Err(MonitorError::Refused(e)),
            other => Err(MonitorError::Protocol {
                name: self.name.clone(),
                what: format!("{other:?}"),
            }),
        }
    }

    /// Asks the monitor who it is: its guest's pid and whether it is paused.
    pub fn hello(&self) -> Result<MonitorReply, MonitorError> {
        self.ask(&MonitorRequest::Hello, None)
    }

    /// Does `act` to the guest.
    pub fn act(&self, act: Act) -> Result<(), MonitorError> {
        self.done(&MonitorRequest::Act(act), None)
    }

    /// Hands the client connection `client` to the monitor as a console
    /// viewer; the monitor replies to the client itself.
    pub fn console(&self, client: &UnixStream, privileged: bool) -> Result<(), MonitorError> {
        self.done(
            &MonitorRequest::Console { privileged },
            Some(client.as_raw_fd()),
        )
    }

    /// Hands the client connection to the monitor to run `argv` in the
    /// container; the monitor replies to the client once it runs.
    pub fn exec(
        &self,
        client: &UnixStream,
        argv: &[String],
        tty: Option<(u16, u16)>,
    ) -> Result<(), MonitorError> {
        self.done(
            &MonitorRequest::Exec {
                argv: argv.to_vec(),
                tty,
            },
            Some(client.as_raw_fd()),
        )
    }

    /// Gives the monitor the daemon's record of its guest.
    pub fn set_record(&self, record: crate::state::GuestRecord) -> Result<(), MonitorError> {
        self.done(&MonitorRequest::Record(Box::new(record)), None)
    }

    /// The guest's memory, if the monitor can tell.
    pub fn memory(&self) -> Option<u64> {
        match self.ask(&MonitorRequest::Memory, None) {
            Ok(MonitorReply::Memory(m)) => m,
            _ => None,
        }
    }

    /// Blocks until the guest has ended; says how. A monitor that is gone
    /// without a report (killed) took its guest with it.
    pub fn watch(&self) -> ExitNote {
        let answered = self.connect().ok().and_then(|mut s| {
            proto::write_message(&mut s, &MonitorRequest::Watch).ok()?;
            let _ = s.set_read_timeout(None);
            proto::read_message::<MonitorReply>(&mut s).ok()
        });
        if let Some(MonitorReply::Exited(note)) = answered {
            return note;
        }
        // The monitor writes its report before it answers or leaves.
        read_exit(&self.paths).unwrap_or_else(|| ExitNote {
            reason: "its monitor ended without a report (killed?)".into(),
            failure: true,
        })
    }
}

/// The exit report a monitor left, if any.
pub fn read_exit(paths: &Paths) -> Option<ExitNote> {
    let text = std::fs::read(&paths.exit).ok()?;
    serde_json::from_slice(&text).ok()
}

/// Removes what a monitor left behind for the daemon, returning the
/// console output it kept.
pub fn collect_leftovers(paths: &Paths) -> Vec<u8> {
    let console = std::fs::read(&paths.console).unwrap_or_default();
    let _ = std::fs::remove_file(&paths.console);
    let _ = std::fs::remove_file(&paths.exit);
    console
}

/// Writes `bytes` to `path` atomically: a temporary file beside it,
/// flushed to disk, renamed over it, the directory flushed.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The monitor's side.

enum GuestProc {
    Vm {
        process: Mutex<Option<VmProcess>>,
        pid: u32,
        input: UnixStream,
    },
    Container {
        process: Mutex<Option<ContainerProcess>>,
        pid: u32,
        exit_fd: OwnedFd,
    },
}

impl GuestProc {
    fn pid(&self) -> u32 {
        match self {
            GuestProc::Vm { pid, .. } | GuestProc::Container { pid, .. } => *pid,
        }
    }

    /// Runs `f` on the running container (None for a VM or once it ended).
    fn container<T>(&self, f: impl FnOnce(&ContainerProcess) -> T) -> Option<T> {
        match self {
            GuestProc::Container { process, .. } => process
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .map(f),
            GuestProc::Vm { .. } => None,
        }
    }
}

struct Guest {
    name: String,
    paths: Paths,
    proc: GuestProc,
    console: Console,
    paused: Mutex<bool>,
    exited: Mutex<Option<ExitNote>>,
    ended: Condvar,
    execs: Mutex<usize>,
    /// `Watch` requests not yet answered.
    watchers: Mutex<usize>,
    /// The daemon's record of the guest.
    record: Mutex<Option<Box<crate::state::GuestRecord>>>,
}

/// `kapsel monitor`: reads a [`MonitorSpec`] on standard input and runs
/// the guest until it ends. Returns the process's exit code.
pub fn main() -> i32 {
    let mut body = Vec::new();
    if let Err(e) = std::io::stdin()
        .take(u64::from(proto::MAX_MESSAGE))
        .read_to_end(&mut body)
    {
        eprintln!("kapsel monitor: reading the launch description: {e}");
        return 1;
    }
    let spec: MonitorSpec = match serde_json::from_slice(&body) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("kapsel monitor: a bad launch description on stdin: {e} (it is started by kapseld, not by hand)");
            return 1;
        }
    };
    if spec.version != MONITOR_VERSION {
        say_started(Err(format!(
            "{}: monitor version {} cannot run a launch description of version {}",
            spec.name, MONITOR_VERSION, spec.version
        )));
        return 1;
    }
    // The daemon waits for this process: the monitor goes on in a child,
    // which init (or the service manager) adopts.
    // SAFETY: the process has one thread here; the child only goes on
    // with ordinary code in that single thread.
    match unsafe { libc::fork() } {
        -1 => {
            say_started(Err(format!(
                "{}: monitor: fork: {}",
                spec.name,
                std::io::Error::last_os_error()
            )));
            return 1;
        }
        0 => {}
        _ => return 0,
    }
    // SAFETY: ignoring signals has no memory-safety preconditions.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
        libc::signal(libc::SIGINT, libc::SIG_IGN);
    }
    match run(spec) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("kapsel monitor: {e}");
            1
        }
    }
}

/// Tells the daemon the guest's pid (or why there is none) on stdout,
/// then closes it.
fn say_started(result: Result<u32, String>) {
    let line = match result {
        Ok(pid) => serde_json::json!({ "pid": pid, "monitor": std::process::id() }),
        Err(e) => serde_json::json!({ "error": e }),
    };
    let mut out = std::io::stdout();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
    // SAFETY: closes our stdout; nothing else writes to it afterwards, and
    // /dev/null takes its place so the descriptor number stays used.
    unsafe {
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if null >= 0 {
            libc::dup2(null, 1);
            libc::close(null);
        }
    }
}

/// Runs `f` on a name for the socket `path` that fits `sockaddr_un` (108
/// bytes) however deep the state directory lies: the path itself when it
/// is short, else `/proc/self/fd/N/NAME` through a descriptor of its
/// directory.
fn with_short_path<T>(
    path: &Path,
    f: impl FnOnce(&Path) -> std::io::Result<T>,
) -> std::io::Result<T> {
    use std::os::unix::ffi::OsStrExt;
    if path.as_os_str().as_bytes().len() < 100 {
        return f(path);
    }
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return f(path);
    };
    let dir = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
        .open(dir)?;
    let short = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd())).join(name);
    f(&short)
}

/// Connects to the monitor socket at `path`.
fn connect(path: &Path) -> std::io::Result<UnixStream> {
    with_short_path(path, |p| UnixStream::connect(p))
}

fn bind_socket(path: &Path) -> Result<UnixListener, String> {
    if connect(path).is_ok() {
        return Err(format!(
            "{} is in use: this guest already has a monitor",
            path.display()
        ));
    }
    let _ = std::fs::remove_file(path);
    let l = with_short_path(path, |p| UnixListener::bind(p))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
    Ok(l)
}

fn start_guest(spec: &MonitorSpec) -> Result<(GuestProc, Box<dyn Read + Send>), String> {
    match &spec.guest {
        GuestLaunch::Vm { kapsel, args, fds } => {
            let (p, out) = vmproc::spawn_process(&spec.name, kapsel, args, &spec.log, *fds)?;
            // The VM process has its copies now.
            for fd in 0..*fds {
                // SAFETY: closes inherited descriptors 3.. that only the VM
                // process needs; nothing in this process uses them.
                unsafe { libc::close(vmproc::HANDED_FD + fd as i32) };
            }
            let input = p
                .console_input()
                .map_err(|e| format!("vm {}: console: {e}", spec.name))?;
            input
                .set_write_timeout(Some(crate::console::INPUT_TIMEOUT))
                .map_err(|e| format!("vm {}: console: {e}", spec.name))?;
            let pid = p.pid;
            Ok((
                GuestProc::Vm {
                    process: Mutex::new(Some(p)),
                    pid,
                    input,
                },
                Box::new(out),
            ))
        }
        GuestLaunch::Container {
            spec: ct,
            root,
            defaults,
            veth,
        } => {
            let cgroups = kapsel_container::cgroup::CgroupMode::detect()
                .map_err(|e| format!("container {}: {e}", ct.common.name))?;
            let launch = ctproc::Launch {
                spec: ct,
                root: root.clone(),
                defaults: defaults.clone(),
                veth: veth.clone(),
                cgroups: &cgroups,
            };
            let (p, out) = ctproc::spawn(&launch)?;
            let exit_fd = p
                .exit_fd()
                .map_err(|e| format!("container {}: {e}", ct.common.name))?;
            let pid = p.pid;
            Ok((
                GuestProc::Container {
                    process: Mutex::new(Some(p)),
                    pid,
                    exit_fd,
                },
                Box::new(out),
            ))
        }
    }
}

fn run(spec: MonitorSpec) -> Result<(), String> {
    let listener = match bind_socket(&spec.paths.socket) {
        Ok(l) => l,
        Err(e) => {
            say_started(Err(format!("{}: {e}", spec.name)));
            return Err(e);
        }
    };
    let (proc, output) = match start_guest(&spec) {
        Ok(x) => x,
        Err(e) => {
            let _ = std::fs::remove_file(&spec.paths.socket);
            say_started(Err(e.clone()));
            return Err(e);
        }
    };
    let pid = proc.pid();
    let guest = Arc::new(Guest {
        name: spec.name.clone(),
        paths: spec.paths.clone(),
        proc,
        console: Console::new(),
        paused: Mutex::new(false),
        exited: Mutex::new(None),
        ended: Condvar::new(),
        execs: Mutex::new(0),
        watchers: Mutex::new(0),
        record: Mutex::new(spec.record.clone()),
    });
    let console = guest.console.clone();
    let pump = std::thread::Builder::new()
        .name("console".into())
        .spawn(move || console.pump(output))
        .map_err(|e| e.to_string())?;
    let g = guest.clone();
    std::thread::Builder::new()
        .name("accept".into())
        .spawn(move || serve(&g, listener))
        .map_err(|e| e.to_string())?;
    let g = guest.clone();
    // SIGTERM (the host shutting down) presses the power button.
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || forward_sigterm(&g))
        .map_err(|e| e.to_string())?;
    say_started(Ok(pid));
    let note = wait_for_end(&guest);
    // Output written before the end is in the ring once the pump is done.
    let _ = pump.join();
    let _ = write_atomically(&guest.paths.console, &guest.console.history());
    if let Ok(bytes) = serde_json::to_vec(&note) {
        if let Err(e) = write_atomically(&guest.paths.exit, &bytes) {
            eprintln!("kapsel monitor: {}: exit report: {e}", guest.name);
        }
    }
    // No new requests: a daemon that comes now reads the report.
    let _ = std::fs::remove_file(&guest.paths.socket);
    let mut exited = guest.exited.lock().unwrap_or_else(|e| e.into_inner());
    *exited = Some(note);
    guest.ended.notify_all();
    // The waiting daemons get their answers before the monitor goes.
    let until = Instant::now() + Duration::from_secs(2);
    while *guest.watchers.lock().unwrap_or_else(|e| e.into_inner()) > 0 && Instant::now() < until {
        drop(exited);
        std::thread::sleep(Duration::from_millis(5));
        exited = guest.exited.lock().unwrap_or_else(|e| e.into_inner());
    }
    drop(exited);
    guest.console.close();
    Ok(())
}

fn wait_for_end(guest: &Guest) -> ExitNote {
    match &guest.proc {
        GuestProc::Vm { process, pid, .. } => {
            let report = vmproc::wait(*pid);
            let finished = process
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
                .map(VmProcess::finish)
                .unwrap_or_default();
            ExitNote {
                reason: report.describe(&finished),
                failure: report.is_failure(),
            }
        }
        GuestProc::Container {
            process, exit_fd, ..
        } => {
            ctproc::wait_readable(exit_fd);
            let reason = process
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
                .map_or_else(|| "ended".to_string(), ContainerProcess::finish);
            let failure = !reason.starts_with("exited (status 0)");
            ExitNote { reason, failure }
        }
    }
}

fn forward_sigterm(guest: &Guest) {
    // SAFETY: sigset_t is plain old data, initialised by sigemptyset; the
    // signal is blocked in this thread only and then waited for.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        loop {
            let mut sig = 0;
            if libc::sigwait(&set, &mut sig) == 0 && sig == libc::SIGTERM {
                let _ = act(guest, Act::PowerButton);
            }
        }
    }
}

fn act(guest: &Guest, act: Act) -> Result<(), String> {
    let name = &guest.name;
    let result = match &guest.proc {
        GuestProc::Vm { pid, process, .. } => {
            // Through the VM process's control channel, one at a time.
            let control = |f: fn(&VmProcess) -> Result<(), String>| match process
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
            {
                Some(p) => f(p),
                None => Err(format!("vm {name}: it has ended")),
            };
            match act {
                Act::PowerButton => control(VmProcess::power_button),
                Act::Pause => control(VmProcess::pause),
                Act::Resume => control(VmProcess::resume),
                // The VM process is this process's child, not yet reaped
                // while the monitor serves: its pid cannot be another's.
                Act::Kill => {
                    vmproc::kill(*pid, libc::SIGKILL).map_err(|e| format!("vm {name}: {e}"))
                }
            }
        }
        GuestProc::Container { .. } => guest
            .proc
            .container(|c| match act {
                Act::PowerButton => c.shutdown(),
                Act::Kill => c.kill(),
                Act::Pause => c.freeze(true),
                Act::Resume => c.freeze(false),
            })
            .unwrap_or_else(|| Err("it has ended".into()))
            .map_err(|e| format!("container {name}: {e}")),
    };
    if result.is_ok() {
        match act {
            Act::Pause => *guest.paused.lock().unwrap_or_else(|e| e.into_inner()) = true,
            Act::Resume | Act::PowerButton => {
                *guest.paused.lock().unwrap_or_else(|e| e.into_inner()) = false
            }
            Act::Kill => {}
        }
    }
    result
}

/// Whether the peer of `s` is root (only kapseld talks to a monitor; the
/// socket's directory is root's alone as well).
fn peer_is_root(s: &UnixStream) -> bool {
    crate::accounts::peer_cred(s).is_ok_and(|c| c.uid == 0)
}

fn serve(guest: &Arc<Guest>, listener: UnixListener) {
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        if !peer_is_root(&conn) {
            continue;
        }
        let g = guest.clone();
        let _ = std::thread::Builder::new()
            .name("request".into())
            .spawn(move || serve_one(&g, conn));
    }
}

fn answer(mut conn: &UnixStream, reply: &MonitorReply) {
    let _ = conn.set_write_timeout(Some(REQUEST_TIMEOUT));
    let _ = proto::write_message(&mut conn, reply);
}

fn serve_one(guest: &Arc<Guest>, conn: UnixStream) {
    let (req, fd) = match recv_with_fd(&conn, Instant::now() + REQUEST_TIMEOUT) {
        Ok(x) => x,
        Err(e) => {
            answer(&conn, &MonitorReply::Error(e));
            return;
        }
    };
    let client = fd.map(UnixStream::from);
    match req {
        MonitorRequest::Hello => {
            let pid = guest.proc.pid();
            let container = matches!(guest.proc, GuestProc::Container { .. });
            answer(
                &conn,
                &MonitorReply::Info {
                    pid,
                    monitor: std::process::id(),
                    paused: *guest.paused.lock().unwrap_or_else(|e| e.into_inner()),
                    container,
                    record: guest
                        .record
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .clone(),
                },
            );
        }
        MonitorRequest::Act(a) => {
            let reply = match act(guest, a) {
                Ok(()) => MonitorReply::Done,
                Err(e) => MonitorReply::Error(e),
            };
            answer(&conn, &reply);
        }
        MonitorRequest::Record(r) => {
            *guest.record.lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
            answer(&conn, &MonitorReply::Done);
        }
        MonitorRequest::Memory => {
            let m = match &guest.proc {
                GuestProc::Vm { pid, .. } => vmproc::resident_bytes(*pid),
                GuestProc::Container { .. } => guest.proc.container(|c| c.memory()).flatten(),
            };
            answer(&conn, &MonitorReply::Memory(m));
        }
        MonitorRequest::Watch => {
            *guest.watchers.lock().unwrap_or_else(|e| e.into_inner()) += 1;
            let mut exited = guest.exited.lock().unwrap_or_else(|e| e.into_inner());
            while exited.is_none() {
                exited = guest.ended.wait(exited).unwrap_or_else(|e| e.into_inner());
            }
            let note = exited.clone();
            drop(exited);
            if let Some(note) = note {
                answer(&conn, &MonitorReply::Exited(note));
            }
            *guest.watchers.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
        }
        MonitorRequest::Console { privileged } => {
            let Some(mut client) = client else {
                answer(&conn, &MonitorReply::Error("no connection to serve".into()));
                return;
            };
            if let Err(e) = guest.console.may_attach(privileged) {
                answer(&conn, &MonitorReply::Error(e));
                return;
            }
            let input: Box<dyn Write + Send> = match &guest.proc {
                GuestProc::Vm { input, .. } => match input.try_clone() {
                    Ok(i) => Box::new(i),
                    Err(e) => {
                        answer(&conn, &MonitorReply::Error(format!("console: {e}")));
                        return;
                    }
                },
                GuestProc::Container { .. } => match guest.proc.container(|c| c.console_input()) {
                    Some(Ok(i)) => Box::new(i),
                    Some(Err(e)) => {
                        answer(&conn, &MonitorReply::Error(format!("console: {e}")));
                        return;
                    }
                    None => {
                        answer(&conn, &MonitorReply::Error("it has ended".into()));
                        return;
                    }
                },
            };
            let _ = client.set_write_timeout(Some(REQUEST_TIMEOUT));
            if proto::write_message(
                &mut client,
                &Response::Ok {
                    message: String::new(),
                },
            )
            .is_err()
            {
                answer(&conn, &MonitorReply::Error("the client left".into()));
                return;
            }
            answer(&conn, &MonitorReply::Done);
            drop(conn);
            let _ = guest.console.attach(client, Some(input), privileged);
        }
        MonitorRequest::Exec { argv, tty } => {
            let Some(client) = client else {
                answer(&conn, &MonitorReply::Error("no connection to serve".into()));
                return;
            };
            let Some(target) = guest.proc.container(|c| c.exec_target()) else {
                answer(
                    &conn,
                    &MonitorReply::Error(format!(
                        "{} is a VM; `kapsel exec` runs commands in containers",
                        guest.name
                    )),
                );
                return;
            };
            {
                let mut n = guest.execs.lock().unwrap_or_else(|e| e.into_inner());
                if *n >= MAX_EXECS {
                    answer(
                        &conn,
                        &MonitorReply::Error(format!(
                            "container {} runs {MAX_EXECS} exec sessions already; wait for one to end",
                            guest.name
                        )),
                    );
                    return;
                }
                *n += 1;
            }
            let mut reply_to = client;
            let conn_for_ok = conn.try_clone();
            let ok = move || -> Result<UnixStream, String> {
                let _ = reply_to.set_write_timeout(None);
                proto::write_message(
                    &mut reply_to,
                    &Response::Ok {
                        message: String::new(),
                    },
                )
                .map_err(|e| e.to_string())?;
                if let Ok(c) = &conn_for_ok {
                    answer(c, &MonitorReply::Done);
                }
                Ok(reply_to)
            };
            if let Err(e) = target.run(&argv, tty, ok) {
                answer(&conn, &MonitorReply::Error(e));
            }
            *guest.execs.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
        }
    }
}
