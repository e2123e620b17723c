//! The DHCP helper: the one process of a daemon that reads guest DHCP
//! packets, so that kapseld (root) parses none of them. OpenBSD vmd keeps
//! its parent away from guest traffic the same way.
//!
//! - **One per daemon**, `kapsel dhcp-helper` (the daemon's own binary
//!   re-executed, as vmd execs its children: a fresh address space with
//!   its own randomisation, nothing of the daemon's memory, threads or
//!   descriptors, and no Rust code run between fork and exec in a
//!   multi-threaded parent). [`DhcpHelper`] starts it when the first
//!   local interface needs it, from a supervisor thread that lives as long
//!   as the daemon (so that `PR_SET_PDEATHSIG`, which follows the thread
//!   that forked, fires only when the daemon goes), and starts it again
//!   when it dies, with everything it served.
//! - **The daemon opens the sockets** (binding to a device and to port 67
//!   needs privilege) and hands each one over with its lease on a
//!   `SOCK_SEQPACKET` connection: one JSON message ([`ToHelper`]) of at
//!   most [`MAX_FRAME`] bytes per record, the socket as `SCM_RIGHTS`.
//!   [`DhcpService`], the daemon's handle, sends `remove` when dropped.
//! - **The helper confines itself before it reads anything** ([`main`]):
//!   new mount, network and IPC namespaces with an empty read-only root
//!   (kapsel-vmm's sandbox), rlimits (no file written, no core, bounded
//!   data), the `_kapsel-dhcp` user (or nobody, with a warning), an empty
//!   bounding set, no capabilities, no_new_privs, not dumpable, killed with
//!   its parent, and a seccomp allowlist of the dozen system calls its loop
//!   makes ([`allowlist`]). What it gets from the daemon is checked too:
//!   record size, descriptor count and kind, names and leases.
//!
//! A hostile guest can at worst crash the helper: the daemon logs it and
//! starts a new one (at most one start a second), which serves every
//! interface again with the same leases.

use super::dhcp::{DhcpLease, DhcpServer};
use super::NetError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Read};
use std::net::UdpSocket;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The hidden subcommand of `kapsel` that runs the helper.
pub const SUBCOMMAND: &str = "dhcp-helper";
/// The helper's control connection, inherited at this descriptor.
pub const CONTROL_FD: RawFd = 3;
/// The largest message on the control connection.
pub const MAX_FRAME: usize = 4096;
/// The most interfaces one helper serves (each holds a descriptor).
pub const MAX_INTERFACES: usize = 1024;
/// The system user the helper runs as; created by scripts/setup.sh and the
/// installation steps in kapsel(8).
pub const USER: &str = "_kapsel-dhcp";
/// The uid and gid used when [`USER`] does not exist (nobody, nogroup).
pub const FALLBACK_IDS: (u32, u32) = (65534, 65534);
/// The most data (heap and private mappings) the helper may have.
const DATA_LIMIT: u64 = 16 << 20;
/// How long [`DhcpHelper::serve`] waits for the first helper to start.
const START_TIMEOUT: Duration = Duration::from_secs(5);
/// A helper that dies sooner than this after its start is started again
/// only after this long: a guest that crashes it cannot make it spin.
const RESTART_PACE: Duration = Duration::from_secs(1);

/// A message from the daemon to the helper.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum ToHelper {
    /// Serve `lease` on the socket sent with this message (exactly one
    /// descriptor), replacing any server of `ifname`.
    Serve {
        /// The interface (for the log and `remove`).
        ifname: String,
        /// What to offer.
        lease: DhcpLease,
    },
    /// Stop serving `ifname` and close its socket (no descriptor).
    Remove {
        /// The interface.
        ifname: String,
    },
}

impl ToHelper {
    fn ifname(&self) -> &str {
        match self {
            ToHelper::Serve { ifname, .. } | ToHelper::Remove { ifname } => ifname,
        }
    }

    /// The descriptors the message must carry.
    fn fds(&self) -> usize {
        match self {
            ToHelper::Serve { .. } => 1,
            ToHelper::Remove { .. } => 0,
        }
    }

    /// Checks what the helper is told, as it checks guest packets.
    fn check(&self) -> Result<(), String> {
        super::validate_ifname(self.ifname()).map_err(|e| e.to_string())?;
        if let ToHelper::Serve { lease, .. } = self {
            if lease.prefix_len > 32 {
                return Err(format!("prefix length {} over 32", lease.prefix_len));
            }
            if lease.dns.len() > 8 {
                return Err(format!("{} name servers, at most 8", lease.dns.len()));
            }
            if lease.hostname.as_ref().is_some_and(|h| h.len() > 255) {
                return Err("host name over 255 bytes".into());
            }
        }
        Ok(())
    }
}

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// A connected `SOCK_SEQPACKET` pair, close-on-exec: the daemon's end
/// first.
pub fn control_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: socketpair writes two descriptors into `fds`.
    check(unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    })?;
    // SAFETY: both were just returned by socketpair and are owned by no one else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Sends one message, with `fd` as SCM_RIGHTS; never blocks (a full
/// connection is an error: the helper is stuck).
pub fn send(conn: &OwnedFd, msg: &ToHelper, fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
    let bytes = serde_json::to_vec(msg).map_err(io::Error::other)?;
    if bytes.len() > MAX_FRAME {
        return Err(io::Error::other(format!(
            "message for {} is {} bytes, over the {MAX_FRAME}-byte limit",
            msg.ifname(),
            bytes.len()
        )));
    }
    let fds: Vec<BorrowedFd<'_>> = fd.into_iter().collect();
    kapsel_host::fd::send_with_fds(conn.as_fd(), &bytes, &fds, libc::MSG_DONTWAIT).map(|_| ())
}

/// One message received: the bytes and the descriptors that came with it.
struct Received {
    bytes: Vec<u8>,
    fds: Vec<OwnedFd>,
}

/// Receives one record; `Ok(None)`: the daemon hung up. Descriptors are
/// owned at once (and closed on any error); a record over [`MAX_FRAME`]
/// or with more descriptors than fit is an error.
fn receive(conn: BorrowedFd<'_>) -> io::Result<Option<Received>> {
    let mut buf = vec![0u8; MAX_FRAME + 1];
    let got = kapsel_host::fd::recv_with_fds(conn, &mut buf, 0)?;
    let (n, fds) = (got.len, got.fds);
    if got.too_many_fds {
        return Err(io::Error::other("a message carried too many descriptors"));
    }
    if got.truncated || n > MAX_FRAME {
        return Err(io::Error::other(format!(
            "a message over the {MAX_FRAME}-byte limit"
        )));
    }
    if n == 0 && fds.is_empty() {
        return Ok(None);
    }
    buf.truncate(n);
    Ok(Some(Received { bytes: buf, fds }))
}

fn sockopt_int(fd: BorrowedFd<'_>, name: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: value and len are live and sized for one int.
    check(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            name,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    })?;
    Ok(value)
}

/// Turns a received record into a message and its socket, or says why not.
fn decode(rec: Received) -> Result<(ToHelper, Option<UdpSocket>), String> {
    let msg: ToHelper =
        serde_json::from_slice(&rec.bytes).map_err(|e| format!("a malformed message: {e}"))?;
    msg.check().map_err(|e| format!("{}: {e}", msg.ifname()))?;
    if rec.fds.len() != msg.fds() {
        return Err(format!(
            "{}: {} descriptors with the message, expected {}",
            msg.ifname(),
            rec.fds.len(),
            msg.fds()
        ));
    }
    let socket = match rec.fds.into_iter().next() {
        Some(fd) => {
            let domain = sockopt_int(fd.as_fd(), libc::SO_DOMAIN);
            let kind = sockopt_int(fd.as_fd(), libc::SO_TYPE);
            if domain.ok() != Some(libc::AF_INET) || kind.ok() != Some(libc::SOCK_DGRAM) {
                return Err(format!(
                    "{}: the descriptor sent is not a UDP socket",
                    msg.ifname()
                ));
            }
            Some(UdpSocket::from(fd))
        }
        None => None,
    };
    Ok((msg, socket))
}

/// A served interface whose socket failed: left out of the poll set until
/// then, so that a lasting error cannot make the loop spin.
struct Served {
    server: DhcpServer,
    quiet_until: Option<Instant>,
}

/// The helper's loop: serves every interface it is sent until the daemon
/// hangs up. Runs confined in the helper process ([`main`]), or on a
/// thread for [`DhcpServer::spawn`].
pub fn serve(control: OwnedFd) -> Result<(), String> {
    let mut served: Vec<Served> = Vec::new();
    loop {
        let now = Instant::now();
        let mut timeout: libc::c_int = -1;
        let mut fds = vec![libc::pollfd {
            fd: control.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        let mut polled = Vec::new();
        for (i, s) in served.iter_mut().enumerate() {
            match s.quiet_until {
                Some(t) if t > now => {
                    let ms = (t - now).as_millis().min(1000) as libc::c_int + 1;
                    timeout = if timeout < 0 { ms } else { timeout.min(ms) };
                    continue;
                }
                _ => s.quiet_until = None,
            }
            fds.push(libc::pollfd {
                fd: s.server.as_fd().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
            polled.push(i);
        }
        // SAFETY: `fds` is a valid array of pollfds of the length given;
        // every descriptor in it stays open during the call.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(format!("poll: {e}"));
        }
        for (pfd, &i) in fds[1..].iter().zip(&polled) {
            if pfd.revents == 0 {
                continue;
            }
            let s = &mut served[i];
            if let Err(e) = s.server.handle_ready() {
                tracing::warn!("DHCP server on {}: {e}", s.server.ifname());
                s.quiet_until = Some(Instant::now() + Duration::from_secs(1));
            }
        }
        if fds[0].revents == 0 {
            continue;
        }
        let rec = match receive(control.as_fd()) {
            Ok(Some(rec)) => rec,
            Ok(None) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) if fds[0].revents & libc::POLLIN == 0 => {
                return Err(format!("control connection: {e}"))
            }
            Err(e) => {
                tracing::error!("DHCP helper: refused {e}");
                continue;
            }
        };
        match decode(rec) {
            Err(e) => tracing::error!("DHCP helper: refused {e}"),
            Ok((ToHelper::Remove { ifname }, _)) => {
                served.retain(|s| s.server.ifname() != ifname);
            }
            Ok((ToHelper::Serve { ifname, lease }, Some(socket))) => {
                served.retain(|s| s.server.ifname() != ifname);
                if served.len() >= MAX_INTERFACES {
                    tracing::error!(
                        "DHCP helper: refused {ifname}: already serving {MAX_INTERFACES} interfaces"
                    );
                    continue;
                }
                served.push(Served {
                    server: DhcpServer::from_parts(socket, ifname, lease),
                    quiet_until: None,
                });
            }
            Ok((ToHelper::Serve { .. }, None)) => {} // decode checked the count
        }
    }
}

/// The helper's system calls: exactly what [`serve`] and logging to
/// stderr make, after the confinement. Anything else kills it.
pub fn allowlist() -> Vec<kapsel_vmm::sandbox::seccomp::Entry> {
    use kapsel_vmm::sandbox::seccomp::{any, arg_in};
    vec![
        // The loop: control messages, packets, waiting.
        any(libc::SYS_recvmsg),
        any(libc::SYS_recvfrom),
        any(libc::SYS_sendto),
        any(libc::SYS_poll),
        any(libc::SYS_ppoll),
        (libc::SYS_getsockopt, arg_in(1, &[libc::SOL_SOCKET as u64])),
        any(libc::SYS_close),
        // Log lines to stderr (a pipe to the daemon).
        any(libc::SYS_write),
        any(libc::SYS_writev),
        // Memory.
        any(libc::SYS_brk),
        any(libc::SYS_mmap),
        any(libc::SYS_munmap),
        any(libc::SYS_mremap),
        any(libc::SYS_madvise),
        any(libc::SYS_futex),
        // Time (the vDSO, or the syscall where it has none) and signals.
        any(libc::SYS_clock_gettime),
        any(libc::SYS_rt_sigreturn),
        any(libc::SYS_sigaltstack),
        // A poll interrupted by a stop signal (SIGSTOP, SIGCONT) resumes
        // through restart_syscall.
        any(libc::SYS_restart_syscall),
        // Rust's std checks a descriptor before closing it (debug builds).
        (
            libc::SYS_fcntl,
            arg_in(1, &[libc::F_GETFD as u64, libc::F_GETFL as u64]),
        ),
        any(libc::SYS_exit),
        any(libc::SYS_exit_group),
    ]
}

/// Who the helper runs as: [`USER`], or nobody with a warning.
pub fn helper_ids() -> (u32, u32) {
    match crate::accounts::user_ids(USER) {
        Some((0, _)) | Some((_, 0)) | None => {
            tracing::warn!(
                "DHCP helper: no system user {USER} (or it is root); running it as nobody \
                 ({}:{}); create the user: adduser --system --group --no-create-home \
                 --home /nonexistent {USER}",
                FALLBACK_IDS.0,
                FALLBACK_IDS.1
            );
            FALLBACK_IDS
        }
        Some(ids) => ids,
    }
}

/// What `kapsel dhcp-helper` is told on its command line.
#[derive(Debug, Clone, Copy)]
pub struct HelperArgs {
    /// The user to become.
    pub uid: u32,
    /// Its group.
    pub gid: u32,
    /// The daemon's pid: the helper ends if its parent is another.
    pub parent: u32,
}

fn confine_err(e: kapsel_vmm::sandbox::SandboxError) -> String {
    match e {
        kapsel_vmm::sandbox::SandboxError::Step { step, source } => {
            format!("cannot confine the DHCP helper: {step} failed: {source}")
        }
        other => format!("DHCP helper: {other}"),
    }
}

fn set_rlimit(resource: libc::__rlimit_resource_t, value: u64, what: &str) -> Result<(), String> {
    let lim = libc::rlimit {
        rlim_cur: value,
        rlim_max: value,
    };
    // SAFETY: lim is a valid rlimit for the call.
    check(unsafe { libc::setrlimit(resource, &lim) })
        .map(drop)
        .map_err(|e| format!("cannot confine the DHCP helper: setrlimit({what}) failed: {e}"))
}

/// Confines this process as described in the module documentation.
fn confine(
    args: HelperArgs,
    program: &kapsel_vmm::sandbox::seccomp::Program,
) -> Result<(), String> {
    use kapsel_vmm::sandbox;
    if args.uid == 0 || args.gid == 0 {
        return Err("the DHCP helper does not run as root: give it a user (--uid, --gid)".into());
    }
    // The daemon hands over nothing else: no descriptor but the standard
    // ones and the control connection may stay open.
    // SAFETY: close_range takes integers only.
    let _ = unsafe { libc::syscall(libc::SYS_close_range, CONTROL_FD as u32 + 1, u32::MAX, 0) };
    let (root, _) = sandbox::isolate_filesystem().map_err(confine_err)?;
    if let sandbox::RootIsolation::Unavailable(why) = root {
        return Err(format!("cannot confine the DHCP helper: {why}"));
    }
    set_rlimit(libc::RLIMIT_FSIZE, 0, "RLIMIT_FSIZE")?;
    set_rlimit(libc::RLIMIT_CORE, 0, "RLIMIT_CORE")?;
    set_rlimit(libc::RLIMIT_MEMLOCK, 0, "RLIMIT_MEMLOCK")?;
    set_rlimit(libc::RLIMIT_MSGQUEUE, 0, "RLIMIT_MSGQUEUE")?;
    set_rlimit(libc::RLIMIT_DATA, DATA_LIMIT, "RLIMIT_DATA")?;
    set_rlimit(
        libc::RLIMIT_NOFILE,
        (MAX_INTERFACES + 16) as u64,
        "RLIMIT_NOFILE",
    )?;
    sandbox::drop_bounding_set().map_err(confine_err)?;
    let step = |what: &str| {
        let what = what.to_string();
        move |e: io::Error| format!("cannot confine the DHCP helper: {what} failed: {e}")
    };
    // SAFETY: setgroups with an empty list; setresgid/setresuid take integers.
    unsafe {
        check(libc::setgroups(0, std::ptr::null())).map_err(step("setgroups"))?;
        check(libc::setresgid(args.gid, args.gid, args.gid)).map_err(step("setresgid"))?;
        check(libc::setresuid(args.uid, args.uid, args.uid)).map_err(step("setresuid"))?;
    }
    // No new processes for this user (the filter allows none anyway).
    set_rlimit(libc::RLIMIT_NPROC, 0, "RLIMIT_NPROC")?;
    // The uid change cleared the parent-death signal: set it again, then
    // make sure the daemon did not already go before it was set.
    // SAFETY: prctl and getppid take integers only.
    unsafe {
        check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0))
            .map_err(step("prctl(PR_SET_PDEATHSIG)"))?;
        check(libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0))
            .map_err(step("prctl(PR_SET_DUMPABLE)"))?;
        if libc::getppid() as u32 != args.parent {
            return Err("the daemon that started the DHCP helper is gone".into());
        }
    }
    sandbox::set_no_new_privs().map_err(confine_err)?;
    sandbox::drop_capabilities().map_err(confine_err)?;
    sandbox::seccomp::install_program("DHCP helper", program).map_err(confine_err)
}

/// `kapsel dhcp-helper`: confines the process, then serves what the daemon
/// sends on [`CONTROL_FD`] until it hangs up. Returns the exit status.
pub fn main(args: HelperArgs) -> u8 {
    // SAFETY: CONTROL_FD was put there by the daemon; nothing else in
    // this process owns it. It is checked to be a SEQPACKET socket first.
    let control = unsafe { BorrowedFd::borrow_raw(CONTROL_FD) };
    if sockopt_int(control, libc::SO_TYPE).ok() != Some(libc::SOCK_SEQPACKET) {
        eprintln!("kapsel {SUBCOMMAND}: descriptor {CONTROL_FD} is not the daemon's connection; kapseld starts this helper itself");
        return 2;
    }
    // SAFETY: checked above; owned from here on.
    let control = unsafe { OwnedFd::from_raw_fd(CONTROL_FD) };
    let log_only = cfg!(debug_assertions)
        && std::env::var("KAPSEL_DEBUG_SECCOMP").ok().as_deref() == Some("log");
    let program =
        match kapsel_vmm::sandbox::seccomp::compile_allowlist("DHCP helper", allowlist(), log_only)
        {
            Ok(p) => p,
            Err(e) => {
                tracing::error!("{e}");
                return 1;
            }
        };
    if let Err(e) = confine(args, &program) {
        tracing::error!("{e}");
        return 1;
    }
    match serve(control) {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!("DHCP helper: {e}");
            1
        }
    }
}

/// What the daemon knows about its helper, under one lock.
#[derive(Default)]
struct State {
    /// Every interface served, to send again to a new helper.
    served: BTreeMap<String, (OwnedFd, DhcpLease)>,
    /// The running helper's connection.
    conn: Option<OwnedFd>,
    /// The running helper's pid.
    pid: Option<u32>,
    /// How many helpers were started.
    starts: u64,
    /// Why the last start failed, until one succeeds.
    error: Option<String>,
    /// The supervisor thread runs.
    supervised: bool,
    /// The daemon's handle is gone: stop.
    stop: bool,
}

struct Shared {
    /// The `kapsel` binary.
    program: PathBuf,
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends `msg` to the running helper, if any. A helper that cannot
    /// take it is disconnected: it ends, and its successor gets every
    /// interface again.
    fn tell(&self, state: &mut State, msg: &ToHelper, fd: Option<BorrowedFd<'_>>) {
        let Some(conn) = &state.conn else { return };
        if let Err(e) = send(conn, msg, fd) {
            tracing::warn!(
                "DHCP helper (pid {}): {e}; starting a new one",
                state.pid.unwrap_or(0)
            );
            state.conn = None;
        }
    }
}

/// The daemon's side: one DHCP helper process, started on first use and
/// again whenever it dies, until this is dropped.
pub struct DhcpHelper {
    shared: Arc<Shared>,
    supervisor: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for DhcpHelper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DhcpHelper")
            .field("program", &self.shared.program)
            .finish_non_exhaustive()
    }
}

/// A local interface served by the helper; dropping it stops the service
/// (the helper closes the interface's socket).
pub struct DhcpService {
    shared: Arc<Shared>,
    ifname: String,
}

impl std::fmt::Debug for DhcpService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DhcpService")
            .field("ifname", &self.ifname)
            .finish_non_exhaustive()
    }
}

impl Drop for DhcpService {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.served.remove(&self.ifname);
        let msg = ToHelper::Remove {
            ifname: self.ifname.clone(),
        };
        self.shared.tell(&mut state, &msg, None);
    }
}

impl DhcpHelper {
    /// A helper run as `program dhcp-helper`; nothing starts yet.
    pub fn new(program: PathBuf) -> DhcpHelper {
        DhcpHelper {
            shared: Arc::new(Shared {
                program,
                state: Mutex::new(State::default()),
                changed: Condvar::new(),
            }),
            supervisor: Mutex::new(None),
        }
    }

    /// The running helper's pid, if one runs.
    pub fn pid(&self) -> Option<u32> {
        self.shared.lock().pid
    }

    /// Hands `server`'s socket and lease to the helper, starting it first
    /// if none runs. Fails when no helper could be started.
    pub fn serve(&self, server: DhcpServer) -> Result<DhcpService, NetError> {
        let (fd, ifname, lease) = server.into_parts();
        let err = |ifname: &str, msg: String| NetError::Dhcp {
            ifname: ifname.to_string(),
            source: io::Error::other(msg),
        };
        let msg = ToHelper::Serve {
            ifname: ifname.clone(),
            lease: lease.clone(),
        };
        msg.check().map_err(|e| err(&ifname, e))?;
        let mut supervisor = self.supervisor.lock().unwrap_or_else(|e| e.into_inner());
        let mut state = self.shared.lock();
        if !state.supervised {
            let shared = Arc::clone(&self.shared);
            let handle = std::thread::Builder::new()
                .name("dhcp-helper".into())
                .spawn(move || supervise(&shared))
                .map_err(|e| err(&ifname, format!("supervisor thread: {e}")))?;
            *supervisor = Some(handle);
            state.supervised = true;
        }
        drop(supervisor);
        self.shared.tell(&mut state, &msg, Some(fd.as_fd()));
        state.served.insert(ifname.clone(), (fd, lease));
        self.shared.changed.notify_all();
        // Wait for a helper to run (the first start, or a restart in
        // progress), or for the reason none could be started.
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if state.pid.is_some() {
                break;
            }
            if let Some(e) = &state.error {
                let e = e.clone();
                state.served.remove(&ifname);
                return Err(err(&ifname, e));
            }
            let now = Instant::now();
            if now >= deadline {
                state.served.remove(&ifname);
                return Err(err(
                    &ifname,
                    "the DHCP helper did not start within 5 s; see the daemon's log".into(),
                ));
            }
            state = self
                .shared
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        Ok(DhcpService {
            shared: Arc::clone(&self.shared),
            ifname,
        })
    }
}

impl Drop for DhcpHelper {
    fn drop(&mut self) {
        {
            let mut state = self.shared.lock();
            state.stop = true;
            // The helper ends when its connection hangs up.
            state.conn = None;
            self.shared.changed.notify_all();
        }
        let handle = self
            .supervisor
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

/// Starts one helper process; its stderr goes to the daemon's log.
fn start(shared: &Shared) -> Result<(std::process::Child, OwnedFd), String> {
    let program = &shared.program;
    let (ours, theirs) = control_pair().map_err(|e| format!("control connection: {e}"))?;
    let (uid, gid) = helper_ids();
    let mut cmd = Command::new(program);
    cmd.arg(SUBCOMMAND)
        .args(["--uid", &uid.to_string(), "--gid", &gid.to_string()])
        .args(["--parent", &std::process::id().to_string()])
        .env_clear()
        .env(
            "KAPSEL_LOG",
            std::env::var("KAPSEL_DHCP_LOG").unwrap_or("warn".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        // Its own process group: a Ctrl-C meant for a foreground daemon
        // reaches the daemon only.
        .process_group(0);
    if cfg!(debug_assertions) {
        if let Ok(v) = std::env::var("KAPSEL_DEBUG_SECCOMP") {
            cmd.env("KAPSEL_DEBUG_SECCOMP", v);
        }
    }
    let raw = theirs.as_raw_fd();
    // SAFETY: between fork and exec only dup2, fcntl and prctl, which are
    // async-signal-safe, on a descriptor that stays open in the parent
    // until spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            if raw == CONTROL_FD {
                check(libc::fcntl(CONTROL_FD, libc::F_SETFD, 0))?;
            } else {
                check(libc::dup2(raw, CONTROL_FD))?;
            }
            check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0))?;
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run {} {SUBCOMMAND}: {e}", program.display()))?;
    drop(theirs);
    let pid = child.id();
    if let Some(stderr) = child.stderr.take() {
        let _ = std::thread::Builder::new()
            .name(format!("dhcp-helper-{pid}"))
            .spawn(move || log_child_lines("DHCP helper", pid, BufReader::new(stderr)));
    }
    tracing::info!("DHCP helper started (pid {pid}, uid {uid})");
    Ok((child, ours))
}

/// The longest line of the helper's stderr that is logged whole.
const MAX_LOG_LINE: usize = 1024;
/// Lines of the helper's stderr logged at once before the rate applies.
const LOG_BURST: f64 = 50.0;
/// Lines a second logged after the burst.
const LOG_RATE: f64 = 5.0;

/// Logs what a helper (`what`) writes to stderr. A helper taken over by a guest
/// writes what it likes: each line is cut at [`MAX_LOG_LINE`] bytes (the
/// daemon never holds more), escaped, and logged at most [`LOG_RATE`] a
/// second after a burst of [`LOG_BURST`]; what is dropped is counted.
/// Returns how many pieces were logged and how many dropped.
pub(crate) fn log_child_lines(what: &str, pid: u32, mut err: impl BufRead) -> (u64, u64) {
    let (mut logged, mut total_dropped) = (0u64, 0u64);
    let mut budget = LOG_BURST;
    let mut last = Instant::now();
    let mut dropped = 0u64;
    let mut line = Vec::with_capacity(MAX_LOG_LINE);
    loop {
        line.clear();
        let n = match (&mut err)
            .take(MAX_LOG_LINE as u64)
            .read_until(b'\n', &mut line)
        {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let now = Instant::now();
        budget = (budget + (now - last).as_secs_f64() * LOG_RATE).min(LOG_BURST);
        last = now;
        if budget < 1.0 {
            dropped += 1;
            total_dropped += 1;
            continue;
        }
        budget -= 1.0;
        logged += 1;
        if dropped > 0 {
            tracing::warn!("{what} (pid {pid}): {dropped} lines not logged (too many)");
            dropped = 0;
        }
        let text = String::from_utf8_lossy(&line[..n]);
        tracing::warn!(
            "{what} (pid {pid}): {}",
            crate::proto::log_safe(text.trim_end_matches('\n'))
        );
    }
    if dropped > 0 {
        tracing::warn!("{what} (pid {pid}): {dropped} lines not logged (too many)");
    }
    (logged, total_dropped)
}

/// The supervisor thread: keeps a helper running while interfaces are
/// served. It forks every helper itself, so that their parent-death signal
/// follows this thread, which lives as long as the [`DhcpHelper`].
fn supervise(shared: &Shared) {
    let mut state = shared.lock();
    loop {
        while !state.stop && state.served.is_empty() && state.pid.is_none() {
            state = shared
                .changed
                .wait(state)
                .unwrap_or_else(|e| e.into_inner());
        }
        if state.stop {
            return;
        }
        let started = Instant::now();
        let mut child = match start(shared) {
            Ok((child, conn)) => {
                state.conn = Some(conn);
                state.pid = Some(child.id());
                state.starts += 1;
                state.error = None;
                let again: Vec<(String, DhcpLease, OwnedFd)> = state
                    .served
                    .iter()
                    .filter_map(|(n, (fd, l))| Some((n.clone(), l.clone(), fd.try_clone().ok()?)))
                    .collect();
                for (ifname, lease, fd) in again {
                    let msg = ToHelper::Serve { ifname, lease };
                    shared.tell(&mut state, &msg, Some(fd.as_fd()));
                }
                shared.changed.notify_all();
                child
            }
            Err(e) => {
                tracing::error!("DHCP helper: {e}");
                state.error = Some(e);
                shared.changed.notify_all();
                state = shared
                    .changed
                    .wait_timeout(state, RESTART_PACE)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
                continue;
            }
        };
        let pid = child.id();
        drop(state);
        let status = child.wait();
        state = shared.lock();
        state.conn = None;
        state.pid = None;
        if state.stop {
            return;
        }
        let status = match status {
            Ok(s) => s.to_string(),
            Err(e) => e.to_string(),
        };
        tracing::warn!("DHCP helper (pid {pid}) ended ({status}); starting a new one");
        if started.elapsed() < RESTART_PACE {
            state = shared
                .changed
                .wait_timeout(state, RESTART_PACE)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn lease() -> DhcpLease {
        DhcpLease {
            client: Ipv4Addr::new(100, 64, 1, 3),
            server: Ipv4Addr::new(100, 64, 1, 2),
            prefix_len: 31,
            router: Ipv4Addr::new(100, 64, 1, 2),
            dns: vec![Ipv4Addr::new(192, 0, 2, 53)],
            lease_secs: 86_400,
            client_mac: Some(kapsel_config::MacAddr([0xfe, 0xe1, 0xbb, 1, 2, 3])),
            hostname: Some("vm1".into()),
        }
    }

    fn udp() -> OwnedFd {
        OwnedFd::from(UdpSocket::bind("127.0.0.1:0").unwrap())
    }

    #[test]
    fn a_message_and_its_socket_arrive_whole() {
        let (a, b) = control_pair().unwrap();
        let msg = ToHelper::Serve {
            ifname: "ktap1-0".into(),
            lease: lease(),
        };
        let sock = udp();
        send(&a, &msg, Some(sock.as_fd())).unwrap();
        let (got, socket) = decode(receive(b.as_fd()).unwrap().unwrap()).unwrap();
        assert_eq!(got, msg);
        assert!(socket.is_some());
        send(
            &a,
            &ToHelper::Remove {
                ifname: "ktap1-0".into(),
            },
            None,
        )
        .unwrap();
        let (got, socket) = decode(receive(b.as_fd()).unwrap().unwrap()).unwrap();
        assert_eq!(
            got,
            ToHelper::Remove {
                ifname: "ktap1-0".into()
            }
        );
        assert!(socket.is_none());
        drop(a);
        assert!(receive(b.as_fd()).unwrap().is_none());
    }

    /// Sends raw bytes with up to 16 descriptors.
    fn send_raw(conn: &OwnedFd, bytes: &[u8], fds: &[BorrowedFd<'_>]) {
        kapsel_host::fd::send_with_fds(conn.as_fd(), bytes, fds, 0).unwrap();
    }

    #[test]
    fn what_the_daemon_sends_is_checked() {
        let (a, b) = control_pair().unwrap();
        let serve = serde_json::to_vec(&ToHelper::Serve {
            ifname: "ktap1-0".into(),
            lease: lease(),
        })
        .unwrap();
        let remove = br#"{"op":"remove","ifname":"ktap1-0"}"#;
        let (s1, s2) = (udp(), udp());
        let unix = control_pair().unwrap().0;
        let refused = |bytes: &[u8], fds: &[BorrowedFd<'_>], why: &str| {
            send_raw(&a, bytes, fds);
            let e = receive(b.as_fd())
                .map_err(|e| e.to_string())
                .and_then(|r| decode(r.unwrap()).map(drop));
            let e = e.unwrap_err();
            assert!(e.contains(why), "{e}");
        };
        refused(&serve, &[], "0 descriptors with the message, expected 1");
        refused(
            &serve,
            &[s1.as_fd(), s2.as_fd()],
            "2 descriptors with the message, expected 1",
        );
        refused(&serve, &[unix.as_fd()], "not a UDP socket");
        refused(
            remove,
            &[s1.as_fd()],
            "1 descriptors with the message, expected 0",
        );
        refused(
            &serve,
            &[s1.as_fd(), s2.as_fd(), s1.as_fd(), s2.as_fd(), s1.as_fd()],
            "too many descriptors",
        );
        refused(&vec![b' '; MAX_FRAME + 10], &[], "over the 4096-byte limit");
        refused(b"{\"op\":\"reboot\"}", &[], "malformed");
        refused(br#"{"op":"remove","ifname":"../../etc"}"#, &[], "../../etc");
        let mut big = lease();
        big.dns = vec![Ipv4Addr::LOCALHOST; 9];
        let bytes = serde_json::to_vec(&ToHelper::Serve {
            ifname: "ktap1-0".into(),
            lease: big,
        })
        .unwrap();
        refused(&bytes, &[s1.as_fd()], "9 name servers");
        // Still in step after all that.
        send_raw(&a, remove, &[]);
        assert!(decode(receive(b.as_fd()).unwrap().unwrap()).is_ok());
    }

    #[test]
    fn a_flooding_helper_costs_the_daemon_bounded_memory() {
        // One endless line and many short ones: read in pieces of at most
        // MAX_LOG_LINE, without waiting for a newline.
        let mut flood = vec![b'x'; 10 * MAX_LOG_LINE];
        flood.push(b'\n');
        flood.extend(b"short\n".repeat(1000));
        let (logged, dropped) = log_child_lines("DHCP helper", 1, &flood[..]);
        // 10 pieces of the long line, its newline, 1000 short lines.
        assert_eq!(logged + dropped, 10 + 1 + 1000);
        assert!(logged <= LOG_BURST as u64 + 5, "{logged} logged");
    }

    #[test]
    fn the_allowlist_compiles_and_holds_no_way_out() {
        let list = allowlist();
        for forbidden in [
            libc::SYS_execve,
            libc::SYS_openat,
            libc::SYS_socket,
            libc::SYS_clone,
            libc::SYS_clone3,
            libc::SYS_ptrace,
            libc::SYS_kill,
            libc::SYS_sendmsg,
            libc::SYS_connect,
        ] {
            assert!(list.iter().all(|(nr, _)| *nr != forbidden), "{forbidden}");
        }
        kapsel_vmm::sandbox::seccomp::compile_allowlist("DHCP helper", list, false).unwrap();
    }
}
