//! The control socket: accepting connections, reading requests, checking
//! who asks (SO_PEERCRED), and the daemon's signals.

use crate::accounts::{gid_of, uid_of, Peer};
use crate::daemon::{ConsoleRoute, Daemon, DaemonError, Options};
use crate::proto::{self, Envelope, ProtoError, Request, Response, PROTOCOL_VERSION};
use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Connections served at once (one thread each); more get an error reply,
/// so that a flood of clients cannot exhaust the daemon's threads.
pub const MAX_CONNECTIONS: usize = 256;

/// Connections of all users but root together: the rest, at least
/// `MAX_CONNECTIONS - MAX_UNPRIVILEGED`, is kept for root, so that no user
/// can lock root out.
pub const MAX_UNPRIVILEGED: usize = 192;

/// Connections of one user other than root (consoles, execs and waits
/// included: each holds its connection while it lasts).
pub const MAX_PER_USER: usize = 32;

/// A client has this long, in all, to send its request: a deadline for the
/// whole message, not a timeout per read.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(5);

/// A client that does not take a reply for this long loses it.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// The control socket path used when none is given.
pub const DEFAULT_SOCKET: &str = "/run/kapsel/kapsel.sock";

/// The state directory used when none is given.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/kapsel";

fn bind(path: &Path) -> Result<UnixListener, DaemonError> {
    let setup = |what: String| DaemonError::Setup(what);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| setup(format!("socket directory {}: {e}", dir.display())))?;
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(setup(format!(
                "{} is in use: a daemon is already running (stop it first, or give another --socket)",
                path.display()
            )));
        }
        std::fs::remove_file(path)
            .map_err(|e| setup(format!("stale socket {}: {e}", path.display())))?;
    }
    UnixListener::bind(path).map_err(|e| setup(format!("socket {}: {e}", path.display())))
}

/// Sets who may connect: everyone (0666, requests are checked one by one)
/// or, with `socket owner`, that user and group (0660).
fn set_socket_owner(path: &Path, daemon: &Daemon) -> Result<(), DaemonError> {
    let owner = daemon.lock().config.globals.socket_owner.clone();
    let setup = |what: String| DaemonError::Setup(what);
    let mode = match &owner {
        None => 0o666,
        Some(o) => {
            let uid = match o.user.as_deref() {
                Some(u) => uid_of(u).ok_or_else(|| {
                    setup(format!(
                        "socket owner: no user {u} on this host; fix `socket owner`"
                    ))
                })?,
                None => 0,
            };
            let gid = match o.group.as_deref() {
                Some(g) => gid_of(g).ok_or_else(|| {
                    setup(format!(
                        "socket owner: no group {g} on this host; fix `socket owner`"
                    ))
                })?,
                None => 0,
            };
            std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .map_err(|e| setup(format!("socket {}: chown: {e}", path.display())))?;
            0o660
        }
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| setup(format!("socket {}: chmod: {e}", path.display())))
}

fn reply(stream: &mut UnixStream, response: &Response) {
    if let Err(e) = proto::write_message(stream, response) {
        tracing::debug!("reply not delivered: {e}");
    }
}

/// Who may still connect: connection counts per uid, checked by the
/// accept loop before a connection gets its thread.
#[derive(Default)]
struct Slots {
    counts: Mutex<SlotCounts>,
}

#[derive(Default)]
struct SlotCounts {
    total: usize,
    unprivileged: usize,
    per_user: HashMap<u32, usize>,
}

/// One connection's place; given back when dropped.
struct Slot {
    slots: Arc<Slots>,
    uid: u32,
}

impl Slots {
    /// A place for a connection of `uid`, or why there is none.
    fn take(self: &Arc<Self>, uid: u32) -> Result<Slot, &'static str> {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if c.total >= MAX_CONNECTIONS {
            return Err("the daemon is busy (too many connections); try again");
        }
        if uid != 0 {
            if c.per_user.get(&uid).copied().unwrap_or(0) >= MAX_PER_USER {
                return Err("you have too many connections to the daemon open (consoles, execs, waits); close some and try again");
            }
            if c.unprivileged >= MAX_UNPRIVILEGED {
                return Err("the daemon is busy (too many connections of users); try again");
            }
            c.unprivileged += 1;
            *c.per_user.entry(uid).or_insert(0) += 1;
        }
        c.total += 1;
        Ok(Slot {
            slots: self.clone(),
            uid,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.slots.counts.lock().unwrap_or_else(|e| e.into_inner());
        c.total -= 1;
        if self.uid != 0 {
            c.unprivileged -= 1;
            if let Some(n) = c.per_user.get_mut(&self.uid) {
                *n -= 1;
                if *n == 0 {
                    c.per_user.remove(&self.uid);
                }
            }
        }
    }
}

/// The effective uid of the process that connected `stream` (SO_PEERCRED),
/// without the name service look-ups of [`Peer::of`]: the accept loop
/// must not wait on NSS.
fn peer_uid(stream: &UnixStream) -> std::io::Result<u32> {
    crate::accounts::peer_cred(stream).map(|c| c.uid)
}

/// Whether the client of `stream` has closed its end (it no longer waits
/// for the reply).
pub(crate) fn hung_up(stream: &UnixStream) -> bool {
    let mut pfd = libc::pollfd {
        fd: stream.as_raw_fd(),
        events: 0,
        revents: 0,
    };
    // SAFETY: one valid pollfd; a zero timeout does not block.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    n > 0 && pfd.revents & (libc::POLLHUP | libc::POLLERR) != 0
}

/// The longest error message the daemon sends: one that echoes a long
/// name from the request is cut, so that the reply stays deliverable
/// (under [`proto::MAX_MESSAGE`]) and readable.
pub const MAX_ERROR_MESSAGE: usize = 4096;

/// Characters that are not control characters but move or reorder text on
/// a terminal: Unicode line and paragraph separators and the bidirectional
/// overrides and isolates ("Trojan Source").
fn is_text_control(c: char) -> bool {
    matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// An error message made safe to print and to log: control characters
/// (escape sequences, carriage returns) are escaped as `\u{..}`, and the
/// message is cut at [`MAX_ERROR_MESSAGE`] bytes. Messages echo names and
/// paths from the request, and end up in the daemon's log and on the
/// terminal of whoever reads it. Only root gets several lines (the
/// diagnostics of a configuration it reloads or loads, with tabs that
/// keep their carets aligned); everyone else gets one line.
pub fn printable(message: &str, lines: bool) -> String {
    let mut out = String::with_capacity(message.len().min(MAX_ERROR_MESSAGE));
    for c in message.trim_end_matches('\n').chars() {
        if out.len() >= MAX_ERROR_MESSAGE {
            out.push_str(&format!(" [cut: the message had {} bytes]", message.len()));
            break;
        }
        if lines && (c == '\n' || c == '\t') {
            out.push(c);
        } else if c.is_control() || is_text_control(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

/// The error reply to `peer`, made [`printable`].
pub fn refusal(peer: &Peer, message: &str) -> Response {
    Response::Error {
        message: printable(message, peer.is_root()),
    }
}

/// Why [`read_request`] gives no request.
#[derive(Debug)]
pub enum Unreadable {
    /// The connection failed or ended before a whole message: nothing to
    /// answer.
    Gone(std::io::Error),
    /// Bytes that are not a request of this protocol and version: the
    /// error reply.
    Refused(Response),
}

/// Reads one request as the control socket does: the framing, then
/// [`decode_request`].
pub fn read_request(r: &mut impl std::io::Read) -> Result<Request, Unreadable> {
    decode_request(proto::read_frame(r))
}

/// A request from one frame's bytes (or the error that reading it gave):
/// the JSON, the protocol version and the request's bounds
/// ([`Request::check`]).
pub fn decode_request(frame: Result<Vec<u8>, ProtoError>) -> Result<Request, Unreadable> {
    let envelope = match frame
        .and_then(|body| serde_json::from_slice::<Envelope>(&body).map_err(ProtoError::from))
    {
        Ok(e) => e,
        Err(ProtoError::Io(e)) => return Err(Unreadable::Gone(e)),
        // serde's messages quote unknown names from the input as they are.
        Err(e) => {
            return Err(Unreadable::Refused(Response::Error {
                message: printable(&format!("bad request: {e}"), false),
            }))
        }
    };
    if envelope.version != PROTOCOL_VERSION {
        return Err(Unreadable::Refused(Response::Error {
            message: format!(
                "protocol version {} is not this daemon's {PROTOCOL_VERSION}; use the kapsel command of the same release",
                envelope.version
            ),
        }));
    }
    envelope
        .request
        .check()
        .map_err(|message| Unreadable::Refused(Response::Error { message }))?;
    Ok(envelope.request)
}

/// Answers a request that does not keep the connection (every one but
/// [`Request::Console`] and [`Request::Exec`], which [`serve`] hands the
/// connection to after [`Daemon::console_for`] and [`Daemon::exec_in`]);
/// a waiting request gives up when `client` hangs up.
pub fn answer(
    daemon: &Arc<Daemon>,
    peer: &Peer,
    request: Request,
    client: Option<&UnixStream>,
) -> Response {
    let response = match request {
        Request::Status { target } => daemon.status_response(target.as_deref()),
        request => daemon.handle_for(peer, request, client),
    };
    match response {
        Response::Error { message } => refusal(peer, &message),
        other => other,
    }
}

/// Serves one connection: one request, one reply (a console keeps going).
fn serve(daemon: &Arc<Daemon>, mut stream: UnixStream) {
    let deadline = Instant::now() + REQUEST_DEADLINE;
    let peer = match Peer::of(&stream) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!("control connection without credentials: {e}");
            return;
        }
    };
    let _ = stream.set_write_timeout(Some(REPLY_TIMEOUT));
    let request = match decode_request(proto::read_frame_by(&stream, deadline)) {
        Ok(r) => r,
        Err(Unreadable::Gone(e)) => {
            tracing::debug!("control connection from {}: {e}", peer.describe());
            return;
        }
        Err(Unreadable::Refused(response)) => {
            if let Response::Error { message } = &response {
                // serde's text quotes the request (an unknown kind, say)
                // verbatim: escaped, it cannot forge log lines.
                tracing::info!(
                    "bad request from {}: {}",
                    peer.describe(),
                    proto::log_safe(message)
                );
            }
            reply(&mut stream, &response);
            return;
        }
    };
    let _ = stream.set_read_timeout(None);
    tracing::debug!("{} asks {:?}", peer.describe(), request);
    match request {
        Request::Console { target } => match daemon.console_for(&peer, &target) {
            // The guest's monitor replies and serves the session; the
            // connection outlives this daemon.
            Ok(ConsoleRoute::Monitor(process)) => {
                if let Err(message) = process.console(&stream, peer.is_root()) {
                    reply(&mut stream, &refusal(&peer, &message.to_string()));
                }
            }
            Ok(ConsoleRoute::History(console)) => {
                reply(
                    &mut stream,
                    &Response::Ok {
                        message: String::new(),
                    },
                );
                // A stopped guest's last output, in this thread.
                if let Err(e) = console.attach(stream, None, peer.is_root()) {
                    tracing::debug!("console of {target:?}: {e}");
                }
            }
            Err(message) => reply(&mut stream, &refusal(&peer, &message.to_string())),
        },
        Request::Exec {
            target,
            argv,
            tty,
            winsize,
        } => {
            // The container's monitor replies and relays the command.
            let tty = tty.then_some(winsize.unwrap_or((24, 80)));
            if let Err(message) = daemon.exec_in(&peer, &target, &argv, tty, &stream) {
                reply(&mut stream, &refusal(&peer, &message.to_string()));
            }
        }
        request => {
            let response = answer(daemon, &peer, request, Some(&stream));
            reply(&mut stream, &response);
        }
    }
}

/// Blocks the signals the daemon handles, in this thread and the threads it
/// starts; [`signal_thread`] takes them.
fn block_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain old data, initialised by sigemptyset.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: set is a valid sigset_t; the signal numbers are valid.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGHUP);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    set
}

/// SIGHUP reloads; SIGTERM or SIGINT stops the VMs and ends the daemon.
fn signal_thread(daemon: Arc<Daemon>, set: libc::sigset_t, socket: std::path::PathBuf) {
    loop {
        let mut sig = 0;
        // SAFETY: set is a valid sigset_t and sig a valid out pointer.
        if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
            continue;
        }
        if sig == libc::SIGHUP {
            match daemon.reload() {
                Ok(m) => tracing::info!("SIGHUP: {m}"),
                Err(e) => {
                    tracing::error!("SIGHUP: reload failed, keeping the old configuration:\n{e}")
                }
            }
            continue;
        }
        tracing::info!("signal {sig}: stopping the VMs and the daemon");
        let _ = std::fs::remove_file(&socket);
        daemon.shutdown();
        tracing::info!("all VMs stopped; kapseld ends");
        std::process::exit(0);
    }
}

/// How often the daemon checks that running guests' interfaces are ports
/// of their bridges (a few netlink lookups per guest interface).
const SWITCH_WATCH_INTERVAL: Duration = Duration::from_secs(5);

/// Runs the daemon until SIGTERM or SIGINT: reads the configuration, binds
/// the socket, starts the enabled VMs and serves requests.
pub fn run(opts: Options) -> Result<(), DaemonError> {
    run_with_api(opts, None)
}

/// [`run`], also serving the HTTPS API when `api` is given (`--listen`).
pub fn run_with_api(opts: Options, api: Option<crate::api::ApiOptions>) -> Result<(), DaemonError> {
    let set = block_signals();
    let socket = opts.socket.clone();
    let daemon = Daemon::new(opts)?;
    let listener = bind(&socket)?;
    set_socket_owner(&socket, &daemon)?;
    tracing::info!("kapseld listening on {}", socket.display());
    {
        let daemon = daemon.clone();
        let socket = socket.clone();
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || signal_thread(daemon, set, socket))
            .map_err(|e| DaemonError::Setup(format!("signal thread: {e}")))?;
    }
    {
        let watched = Arc::downgrade(&daemon);
        std::thread::Builder::new()
            .name("switch-watch".into())
            .spawn(move || Daemon::watch_switches(watched, SWITCH_WATCH_INTERVAL))
            .map_err(|e| DaemonError::Setup(format!("switch watch thread: {e}")))?;
    }
    let _api = api.map(|a| crate::api::start(&daemon, a)).transpose()?;
    daemon.start_enabled(daemon.enabled_vms());
    let slots = Arc::new(Slots::default());
    for stream in listener.incoming() {
        let mut stream = match stream {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("accept: {e}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let slot = match peer_uid(&stream)
            .map_err(|_| "no credentials")
            .and_then(|uid| slots.take(uid))
        {
            Ok(slot) => slot,
            Err(message) => {
                // A fresh socket takes this short reply without blocking;
                // if it does not, the client loses it, never the loop.
                let _ = stream.set_nonblocking(true);
                reply(
                    &mut stream,
                    &Response::Error {
                        message: message.into(),
                    },
                );
                continue;
            }
        };
        let daemon = daemon.clone();
        let spawned = std::thread::Builder::new()
            .name("control".into())
            .spawn(move || {
                let _slot = slot;
                serve(&daemon, stream);
            });
        if let Err(e) = spawned {
            tracing::warn!("no thread for a control connection: {e}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_keeps_room_when_users_hold_every_slot_they_may() {
        let slots = Arc::new(Slots::default());
        let mut held = Vec::new();
        // One user gets its share, then no more.
        for _ in 0..MAX_PER_USER {
            held.push(slots.take(1000).unwrap());
        }
        assert!(slots
            .take(1000)
            .err()
            .is_some_and(|e| e.contains("too many connections")));
        // Many users together get the unprivileged share.
        let mut uid = 2000;
        while held.len() < MAX_UNPRIVILEGED {
            match slots.take(uid) {
                Ok(s) => held.push(s),
                Err(_) => uid += 1,
            }
        }
        assert!(slots.take(99_999).is_err());
        // Root gets the rest.
        for _ in MAX_UNPRIVILEGED..MAX_CONNECTIONS {
            held.push(slots.take(0).unwrap());
        }
        assert!(slots.take(0).is_err());
        // Closing gives the places back.
        held.clear();
        let c = slots.counts.lock().unwrap();
        assert_eq!((c.total, c.unprivileged, c.per_user.len()), (0, 0, 0));
    }

    #[test]
    fn a_closed_client_is_seen_as_gone() {
        let (client, server) = UnixStream::pair().unwrap();
        assert!(!hung_up(&server));
        client.shutdown(std::net::Shutdown::Write).unwrap();
        assert!(!hung_up(&server), "a half-closed client still waits");
        drop(client);
        assert!(hung_up(&server));
    }
}
