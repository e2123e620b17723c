//! The control protocol's request handling with the daemon's authorization
//! checks in the loop, for the fuzz target `control_request` in
//! `crates/kapsel-daemon/fuzz` and the unit test that replays its seeds
//! (not an API).
//!
//! [`Harness`] builds one real [`Daemon`] on a temporary state directory
//! and a vm.conf with VMs and containers owned by root, by a user, by a
//! group, with `allow instance` blocks. No guest can start: the `kapsel`
//! program is a path that does not exist, every kernel and container root
//! too, and the harness moves its thread (and so every thread the daemon
//! starts from it) into a network namespace of its own before the daemon
//! exists, so that a request for a local interface or a tap reaches no
//! host network. [`Harness::run`] feeds the frames of one input through
//! the path the control socket uses ([`server::read_request`],
//! [`server::answer`], and for console and exec the daemon's checks that
//! [`server`]'s connection code calls before it hands the connection over)
//! as one of four peers, and panics when an invariant breaks:
//!
//! - replies are encodable within [`proto::MAX_MESSAGE`]; error messages
//!   are at most [`server::MAX_ERROR_MESSAGE`] bytes (and a short note),
//!   with no control character (root may get several lines);
//! - nothing but a well-formed request of this version changes anything;
//! - a peer other than root never changes the configuration, the loaded
//!   files, the log level, or any guest that was there before (a new
//!   guest may only be its own instance of a template that lets it make
//!   one); a stranger never gets `Ok`;
//! - a request a non-root peer may not make (root's requests, guests it
//!   does not control, VMs that are not configured, start options on a
//!   configured VM, instances it is not allowed) is refused, by a message
//!   that says so, before the daemon looks any further.
//!
//! The daemon's state goes back to the configuration before each input, so
//! that every input replays alone.

use crate::accounts::Peer;
use crate::daemon::{Daemon, Options};
use crate::proto::{self, Request, Response, VmState, PROTOCOL_VERSION};
use crate::server::{self, Unreadable};
use kapsel_config::{Config, GuestSpec, Owner};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The owner of `ownervm` and `ownerct`, and of `tmpl`'s instances.
pub const OWNER_UID: u32 = 61_001;
/// A member of [`GROUP_GID`] (the group of `groupvm` and `groupct`).
pub const MEMBER_UID: u32 = 61_002;
/// A user named nowhere in the configuration.
pub const STRANGER_UID: u32 = 61_003;
/// The group that owns `groupvm` and `groupct`.
pub const GROUP_GID: u32 = 61_010;

/// Frames per input; more are ignored.
pub const MAX_STEPS: usize = 12;

/// Selector bit: the frame is taken as it is, with its own length prefix
/// (else the harness writes the right one before it).
pub const RAW_FRAME: u8 = 4;

/// The four peers a frame can come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Who {
    /// uid 0.
    Root,
    /// [`OWNER_UID`].
    Owner,
    /// [`MEMBER_UID`], in [`GROUP_GID`].
    Member,
    /// [`STRANGER_UID`].
    Stranger,
}

impl Who {
    /// The peer for selector bits 0-1.
    pub fn from_bits(b: u8) -> Who {
        [Who::Root, Who::Owner, Who::Member, Who::Stranger][usize::from(b & 3)]
    }

    /// The credentials the daemon would read with SO_PEERCRED. The test
    /// users have no name (they are not in /etc/passwd), as a uid without
    /// one would have.
    pub fn peer(self) -> Peer {
        let (uid, groups) = match self {
            Who::Root => (0, vec![0]),
            Who::Owner => (OWNER_UID, vec![OWNER_UID]),
            Who::Member => (MEMBER_UID, vec![MEMBER_UID, GROUP_GID]),
            Who::Stranger => (STRANGER_UID, vec![STRANGER_UID]),
        };
        Peer {
            uid,
            gid: groups[0],
            groups,
            name: (uid == 0).then(|| "root".to_string()),
        }
    }
}

/// One step of an input: who sends which bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The peer.
    pub who: Who,
    /// What arrives on the connection (length prefix included).
    pub frame: Vec<u8>,
}

/// Splits an input into steps: `[selector] [length: u16 BE] [bytes]`,
/// repeated. Selector bits 0-1 pick the peer; without [`RAW_FRAME`] the
/// harness puts the 4-byte length of the bytes before them.
pub fn decode_input(data: &[u8]) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut rest = data;
    while steps.len() < MAX_STEPS {
        let [sel, hi, lo, tail @ ..] = rest else {
            break;
        };
        let len = usize::from(u16::from_be_bytes([*hi, *lo])).min(tail.len());
        let (body, tail) = tail.split_at(len);
        let mut frame = Vec::with_capacity(body.len() + 4);
        if sel & RAW_FRAME == 0 {
            frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
        }
        frame.extend_from_slice(body);
        steps.push(Step {
            who: Who::from_bits(*sel),
            frame,
        });
        rest = tail;
    }
    steps
}

/// Encodes steps as [`decode_input`] reads them (for seeds); a request is
/// framed by the harness unless `raw`.
pub fn encode_step(out: &mut Vec<u8>, who: Who, raw: bool, bytes: &[u8]) {
    let sel = who as u8 | if raw { RAW_FRAME } else { 0 };
    let len = u16::try_from(bytes.len()).unwrap_or(u16::MAX);
    out.push(sel);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&bytes[..usize::from(len)]);
}

/// The JSON of a request of this protocol version.
pub fn request_json(request: &Request) -> Vec<u8> {
    serde_json::to_vec(&proto::Envelope {
        version: PROTOCOL_VERSION,
        request: request.clone(),
    })
    .unwrap_or_default()
}

const VM_CONF: &str = r#"# kapseld fuzzing: nothing here can start.
vm "rootvm" {
	disable
	memory 64M
	boot "/nonexistent/kapsel-fuzz/bzImage"
}
vm "ownervm" {
	disable
	owner 61001
	memory 64M
	boot "/nonexistent/kapsel-fuzz/bzImage"
	allow instance { memory; disk }
}
vm "groupvm" {
	disable
	owner :61010
	memory 64M
	boot "/nonexistent/kapsel-fuzz/bzImage"
	allow instance { boot; memory; interface; disk; instance }
}
vm "tmpl" {
	disable
	memory 64M
	boot "/nonexistent/kapsel-fuzz/bzImage"
	allow instance { memory; interface; owner 61001 }
}
vm "tmpl" instance "tmpl-1" {
	disable
	owner 61001
}
container "rootct" {
	disable
	root "/nonexistent/kapsel-fuzz/rootct"
}
container "ownerct" {
	disable
	owner 61001
	root "/nonexistent/kapsel-fuzz/ownerct"
}
container "groupct" {
	disable
	owner :61010
	root "/nonexistent/kapsel-fuzz/groupct"
}
"#;

/// What one guest looks like, for comparing the daemon's state.
#[derive(Debug, Clone, PartialEq)]
struct Guest {
    id: u32,
    spec: GuestSpec,
    configured: bool,
    state: VmState,
    running: bool,
}

/// The daemon's state that requests may change.
#[derive(Debug, Clone, PartialEq)]
struct Snapshot {
    config: Config,
    loaded: Vec<PathBuf>,
    guests: Vec<Guest>,
}

impl Snapshot {
    /// The guest `target` names, as the daemon finds it (first by name or
    /// id, in order).
    fn find(&self, target: &str) -> Option<&Guest> {
        let id = target.parse::<u32>().ok();
        self.guests
            .iter()
            .find(|g| g.spec.name() == target || Some(g.id) == id)
    }
}

/// Whether `peer` controls a guest owned by `owner`: the harness's own
/// model of the rule (owners here are numeric ids).
fn controls(peer: &Peer, owner: Option<&Owner>) -> bool {
    let parse = |s: Option<&String>| s.and_then(|s| s.parse::<u32>().ok());
    peer.uid == 0
        || owner.is_some_and(|o| {
            parse(o.user.as_ref()) == Some(peer.uid)
                || parse(o.group.as_ref()).is_some_and(|g| peer.groups.contains(&g))
        })
}

/// What a request from a non-root peer must get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Anything (the daemon decides past authorization).
    Any,
    /// An error.
    Error,
    /// An error that says the peer may not (an authorization refusal).
    Refusal,
    /// An authorization refusal or an error about the request itself (a
    /// bad name, an option that is not supported), which may come first.
    NotPermitted,
}

/// The harness's model of what `peer` (not root) may do.
fn expect(before: &Snapshot, peer: &Peer, request: &Request) -> Expect {
    let on = |target: &str| match before.find(target) {
        None => Expect::Error,
        Some(g) if !controls(peer, g.spec.common().owner.as_ref()) => Expect::Refusal,
        Some(_) => Expect::Any,
    };
    match request {
        Request::Reload | Request::Load { .. } | Request::Reset { .. } | Request::Log { .. } => {
            Expect::Refusal
        }
        Request::Stop { all: true, .. } => Expect::Refusal,
        Request::Stop { targets, .. } => {
            if targets.is_empty() {
                return Expect::Error;
            }
            for t in targets {
                match on(t) {
                    Expect::Any => continue,
                    other => return other,
                }
            }
            Expect::Any
        }
        Request::Pause { target }
        | Request::Unpause { target }
        | Request::Wait { target }
        | Request::Console { target }
        | Request::Exec { target, .. } => on(target),
        Request::Status { .. } => Expect::Any,
        Request::Start(req) => {
            if req.cdrom.is_some() {
                return Expect::Error;
            }
            let known = before.find(&req.name).is_some();
            match &req.template {
                Some(_) if known => Expect::Error,
                Some(template) => {
                    let parent = before.config.effective_vm(template).or_else(|| {
                        before
                            .guests
                            .iter()
                            .find(|g| g.spec.name() == template)
                            .and_then(|g| g.spec.as_vm().cloned())
                    });
                    let Some(parent) = parent else {
                        return Expect::Error;
                    };
                    let owner = parent
                        .allow_instance
                        .as_ref()
                        .and_then(|a| a.owner.as_ref())
                        .or(parent.common.owner.as_ref());
                    // vm.conf.5: an instance of an instance needs
                    // `instance` in the allow list it inherits.
                    let nested = parent.instance_of.is_some()
                        && !parent.allow_instance.as_ref().is_some_and(|a| a.instance);
                    let permitted = owner.is_some_and(|o| controls(peer, Some(o))) && !nested;
                    if before.config.container(template).is_some() {
                        Expect::Error
                    } else if permitted {
                        Expect::Any
                    } else {
                        Expect::NotPermitted
                    }
                }
                None if !known => Expect::NotPermitted,
                None => {
                    let overrides = req.kernel.is_some()
                        || !req.disks.is_empty()
                        || req.memory.is_some()
                        || req.interfaces.is_some()
                        || req.local_interface
                        || req.switch.is_some();
                    match on(&req.name) {
                        Expect::Any if overrides => Expect::Error,
                        other => other,
                    }
                }
            }
        }
    }
}

/// Moves this thread into a network namespace of its own (threads it
/// starts follow it). Without the privilege to do so there is none to
/// create host interfaces either; root that cannot is refused.
fn isolate_network() {
    // SAFETY: unshare with CLONE_NEWNET only changes this thread's
    // network namespace; it takes no pointers.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } == 0 {
        return;
    }
    let e = std::io::Error::last_os_error();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        panic!("cannot enter a network namespace of its own ({e}); refusing to run requests that may create host interfaces");
    }
}

/// A real daemon, with its configuration, and the invariants to check.
pub struct Harness {
    daemon: Arc<Daemon>,
    dir: PathBuf,
    baseline: Config,
    log_level_changes: Arc<AtomicUsize>,
    /// Requests that reached `Daemon::handle` or a console/exec check.
    pub dispatched: usize,
    /// Print every step (`CONTROL_FUZZ_TRACE=1`).
    trace: bool,
}

impl Harness {
    /// Builds the daemon in a new directory under the system temporary
    /// directory (removed on drop).
    pub fn new() -> Harness {
        isolate_network();
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "kapsel-control-fuzz-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temporary directory");
        let config = dir.join("vm.conf");
        std::fs::write(&config, VM_CONF).expect("vm.conf");
        let log_level_changes = Arc::new(AtomicUsize::new(0));
        let counter = log_level_changes.clone();
        let opts = Options {
            config,
            defines: Vec::new(),
            socket: dir.join("kapsel.sock"),
            state_dir: dir.join("state"),
            kapsel: PathBuf::from("/nonexistent/kapsel-fuzz/kapsel"),
            shutdown_timeout: Duration::from_secs(1),
            set_log_level: Some(Box::new(move |_| {
                counter.fetch_add(1, Ordering::SeqCst);
            })),
            stop_guests: true,
        };
        let daemon = Daemon::new(opts).expect("the fuzzing vm.conf loads");
        let baseline = daemon.lock().config.clone();
        assert_eq!(baseline.vms.len(), 5, "vm.conf as written");
        assert_eq!(baseline.containers.len(), 3, "vm.conf as written");
        Harness {
            daemon,
            dir,
            baseline,
            log_level_changes,
            dispatched: 0,
            trace: std::env::var_os("CONTROL_FUZZ_TRACE").is_some(),
        }
    }

    fn snapshot(&self) -> Snapshot {
        let inner = self.daemon.lock();
        Snapshot {
            config: inner.config.clone(),
            loaded: inner.loaded.clone(),
            guests: inner
                .guests
                .iter()
                .map(|v| Guest {
                    id: v.id,
                    spec: v.spec.clone(),
                    configured: v.configured,
                    state: v.state,
                    running: v.process.is_some(),
                })
                .collect(),
        }
    }

    /// Back to the configuration: no loaded files, no instances, the
    /// configured guests as declared.
    fn reset(&self) {
        self.daemon.lock().loaded.clear();
        self.daemon.apply_config(self.baseline.clone());
        let mut inner = self.daemon.lock();
        assert!(
            inner.guests.iter().all(|v| v.process.is_none()),
            "a guest runs: the harness must not start any"
        );
        inner.next_id = inner.guests.iter().map(|v| v.id).max().unwrap_or(0) + 1;
    }

    /// Runs one input's steps and checks every invariant (panics on a
    /// violation).
    pub fn run(&mut self, data: &[u8]) {
        self.reset();
        for step in decode_input(data) {
            self.step(&step);
        }
    }

    /// Whether a root `load` may go ahead: the harness keeps the daemon
    /// from reading devices, /proc and /sys (root's `kapsel load
    /// /dev/zero` reads forever; root may do that to its own daemon).
    fn loadable(path: &str) -> bool {
        let p = Path::new(path);
        let p = std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
        if ["/dev", "/proc", "/sys", "/run"]
            .iter()
            .any(|d| p.starts_with(d))
        {
            return false;
        }
        match std::fs::metadata(&p) {
            Ok(m) => m.is_file() && m.len() < 1 << 20,
            Err(_) => true,
        }
    }

    fn step(&mut self, step: &Step) {
        let peer = step.who.peer();
        let before = self.snapshot();
        let levels = self.log_level_changes.load(Ordering::SeqCst);
        let mut frame = step.frame.as_slice();
        let (request, response) = match server::read_request(&mut frame) {
            Err(Unreadable::Gone(_)) => (None, None),
            Err(Unreadable::Refused(r)) => (None, Some(r)),
            Ok(Request::Load { path }) if peer.is_root() && !Self::loadable(&path) => return,
            Ok(request) => {
                self.dispatched += 1;
                let response = match request.clone() {
                    // serve() replies Ok and hands the connection over when
                    // these checks pass; only their decision is fuzzed.
                    Request::Console { target } => match self.daemon.console_for(&peer, &target) {
                        Ok(_) => Response::Ok {
                            message: String::new(),
                        },
                        Err(m) => server::refusal(&peer, &m.to_string()),
                    },
                    Request::Exec {
                        target, argv, tty, ..
                    } => {
                        // A connection nobody reads: nothing runs here
                        // (the harness has no guests), only the checks.
                        let (no_connection, _peer_end) = std::os::unix::net::UnixStream::pair()
                            .expect("a socket pair for the exec checks");
                        let tty = tty.then_some((24, 80));
                        match self
                            .daemon
                            .exec_in(&peer, &target, &argv, tty, &no_connection)
                        {
                            Ok(()) => Response::Ok {
                                message: String::new(),
                            },
                            Err(m) => server::refusal(&peer, &m.to_string()),
                        }
                    }
                    request => server::answer(&self.daemon, &peer, request, None),
                };
                (Some(request), Some(response))
            }
        };
        let after = self.snapshot();
        let what = || format!("{:?} asked {request:?}, got {response:?}", step.who);
        if self.trace {
            eprintln!("{}", what());
        }
        if let Some(response) = &response {
            check_response(response, peer.is_root(), &what);
        }
        let Some(request) = &request else {
            assert_eq!(before, after, "an unreadable request changed the state");
            assert_eq!(levels, self.log_level_changes.load(Ordering::SeqCst));
            return;
        };
        let response = response.as_ref().expect("a request has a reply");
        if peer.is_root() {
            return;
        }
        assert_eq!(
            levels,
            self.log_level_changes.load(Ordering::SeqCst),
            "a non-root peer changed the log level: {}",
            what()
        );
        if step.who == Who::Stranger {
            assert!(
                !matches!(response, Response::Ok { .. }),
                "a stranger got Ok: {}",
                what()
            );
        }
        let message = match response {
            Response::Error { message } => Some(message.as_str()),
            _ => None,
        };
        let refusal = message.is_some_and(|m| m.contains("may not") || m.contains("only root"));
        match expect(&before, &peer, request) {
            Expect::Any => {}
            Expect::Error => assert!(message.is_some(), "not refused: {}", what()),
            Expect::Refusal => assert!(refusal, "not refused for authorization: {}", what()),
            Expect::NotPermitted => assert!(
                refusal || message.is_some_and(|m| m.contains("name")),
                "not refused: {}",
                what()
            ),
        }
        check_unprivileged_change(&before, &after, &peer, request, &what);
    }
}

impl Default for Harness {
    fn default() -> Self {
        Harness::new()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Replies are deliverable, bounded and printable.
fn check_response(response: &Response, root: bool, what: &dyn Fn() -> String) {
    let mut wire = Vec::new();
    proto::write_message(&mut wire, response)
        .unwrap_or_else(|e| panic!("reply not deliverable ({e}): {}", what()));
    if let Response::Error { message } = response {
        assert!(
            message.len() <= server::MAX_ERROR_MESSAGE + 64,
            "error message of {} bytes: {}",
            message.len(),
            what()
        );
        let bad = message.chars().find(|&c| {
            (c.is_control() && !(root && (c == '\n' || c == '\t')))
                || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
        });
        assert!(
            bad.is_none(),
            "control character {bad:?} in an error: {}",
            what()
        );
        // The daemon's own (a panicked stop thread, a request dispatched
        // to the wrong place), not a name that happens to say so.
        assert!(
            message != "internal error" && message != "internal error: handled by the connection",
            "{}",
            what()
        );
    }
}

/// What a non-root peer's request changed: nothing of the configuration,
/// nothing of a guest that was there before, and at most its own new
/// instance.
fn check_unprivileged_change(
    before: &Snapshot,
    after: &Snapshot,
    peer: &Peer,
    request: &Request,
    what: &dyn Fn() -> String,
) {
    assert!(
        before.config == after.config && before.loaded == after.loaded,
        "a non-root peer changed the configuration: {}",
        what()
    );
    for g in &before.guests {
        let now = after.guests.iter().find(|a| a.spec.name() == g.spec.name());
        let Some(now) = now else {
            panic!("a non-root peer removed {}: {}", g.spec.name(), what());
        };
        if controls(peer, g.spec.common().owner.as_ref()) {
            assert!(
                now.spec == g.spec && now.configured == g.configured,
                "a non-root peer changed the settings of {}: {}",
                g.spec.name(),
                what()
            );
        } else {
            assert_eq!(
                now,
                g,
                "a non-root peer changed another's guest: {}",
                what()
            );
        }
    }
    for g in &after.guests {
        if before.guests.iter().any(|b| b.spec.name() == g.spec.name()) {
            continue;
        }
        let template = match request {
            Request::Start(req) => req.template.as_deref(),
            _ => None,
        };
        assert!(
            template.is_some()
                && g.spec.as_vm().and_then(|v| v.instance_of.as_deref()) == template
                && !g.configured
                && g.spec.common().owner
                    == Some(Owner {
                        user: Some(peer.uid.to_string()),
                        group: None,
                    }),
            "a non-root peer made {} ({:?}): {}",
            g.spec.name(),
            g.spec.common().owner,
            what()
        );
        assert_eq!(
            expect(before, peer, request),
            Expect::Any,
            "a non-root peer made an instance it may not: {}",
            what()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::StartRequest;

    /// The committed seeds of the fuzz target, through the same checks.
    fn seeds() -> Vec<(String, Vec<u8>)> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/control_request");
        let mut seeds: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| {
                let e = e.expect("seed entry");
                let data = std::fs::read(e.path()).expect("seed");
                (e.file_name().to_string_lossy().into_owned(), data)
            })
            .collect();
        seeds.sort();
        seeds
    }

    #[test]
    fn seed_corpus_keeps_every_invariant() {
        let seeds = seeds();
        assert!(seeds.len() >= 20, "{} seeds", seeds.len());
        let mut h = Harness::new();
        for (name, data) in &seeds {
            eprintln!("seed {name}");
            h.run(data);
        }
        assert!(h.dispatched >= seeds.len(), "seeds must reach the daemon");
    }

    fn reply(h: &mut Harness, who: Who, body: &[u8]) -> Response {
        let mut frame = (body.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(body);
        let peer = who.peer();
        match server::read_request(&mut frame.as_slice()) {
            Ok(request) => server::answer(&h.daemon, &peer, request, None),
            Err(Unreadable::Refused(r)) => r,
            Err(Unreadable::Gone(e)) => panic!("{e}"),
        }
    }

    fn error_of(r: Response) -> String {
        match r {
            Response::Error { message } => message,
            other => panic!("not an error: {other:?}"),
        }
    }

    const ESC: &str = "\u{1b}[2J\u{1b}]0;pwned\u{7}\rkapseld: root logged in\n";

    /// Regression: serde's "unknown variant" and the daemon's "no VM named"
    /// quoted the request's bytes as they were, into the reply and the
    /// daemon's log (terminal escapes, a forged log line).
    #[test]
    fn error_replies_escape_control_characters() {
        let mut h = Harness::new();
        let kind = serde_json::json!({"version": 1, "request": {"kind": ESC}});
        let m = error_of(reply(&mut h, Who::Stranger, kind.to_string().as_bytes()));
        assert!(m.starts_with("bad request: "), "{m}");
        assert!(
            m.contains("\\u{1b}[2J") && !m.chars().any(char::is_control),
            "{m}"
        );
        let pause = request_json(&Request::Pause { target: ESC.into() });
        let m = error_of(reply(&mut h, Who::Stranger, &pause));
        assert!(
            m.contains("\\u{1b}]0;pwned\\u{7}\\u{d}kapseld") && !m.chars().any(char::is_control),
            "{m}"
        );
        let bidi = request_json(&Request::Wait {
            target: "a\u{202e}b".into(),
        });
        let m = error_of(reply(&mut h, Who::Owner, &bidi));
        assert!(m.contains("a\\u{202e}b"), "{m}");
    }

    /// Regression: an error echoing a name of up to 1 MiB made a reply
    /// over the protocol's limit, which the daemon then did not send.
    #[test]
    fn long_names_in_errors_are_cut() {
        let mut h = Harness::new();
        let long = request_json(&Request::Wait {
            target: "A".repeat(900_000),
        });
        let m = error_of(reply(&mut h, Who::Stranger, &long));
        // Refused by the request's bounds before anything echoes it.
        assert!(m.len() < 256, "{}", m.len());
        // And an error that would echo a long text is cut all the same.
        let cut = server::printable(&format!("no VM named {}", "A".repeat(900_000)), false);
        assert!(cut.len() < server::MAX_ERROR_MESSAGE + 64, "{}", cut.len());
        assert!(
            cut.ends_with("[cut: the message had 900012 bytes]"),
            "{}",
            &cut[cut.len() - 80..]
        );
    }

    /// Regression: `kapsel start -t` made instances of instances (its own
    /// earlier instances, or a configured instance) without `instance` in
    /// the allow list they inherit, which vm.conf refuses.
    #[test]
    fn instances_of_instances_need_instance_in_the_allow_list() {
        let mut h = Harness::new();
        let start = |name: &str, template: &str| {
            request_json(&Request::Start(StartRequest {
                name: name.into(),
                template: Some(template.into()),
                ..StartRequest::default()
            }))
        };
        let first = error_of(reply(&mut h, Who::Owner, &start("mine", "tmpl")));
        assert!(
            first.contains("cannot run"),
            "the instance is made: {first}"
        );
        for (name, template) in [("mine2", "mine"), ("sub", "tmpl-1")] {
            let m = error_of(reply(&mut h, Who::Owner, &start(name, template)));
            assert!(
                m.contains("may not make instances") && m.contains("itself an instance"),
                "{m}"
            );
            assert!(h.snapshot().find(name).is_none(), "{name} was made");
        }
        // Root may, as vmd lets root do anything.
        let m = error_of(reply(&mut h, Who::Root, &start("mine3", "mine")));
        assert!(m.contains("cannot run"), "{m}");
    }

    #[test]
    fn input_encoding_round_trips() {
        let mut data = Vec::new();
        let json = request_json(&Request::Reload);
        encode_step(&mut data, Who::Member, false, &json);
        encode_step(&mut data, Who::Stranger, true, b"\0\0\0\x02{}");
        let steps = decode_input(&data);
        assert_eq!(steps.len(), 2);
        assert_eq!(steps[0].who, Who::Member);
        assert_eq!(&steps[0].frame[4..], json.as_slice());
        assert_eq!(steps[1].frame, b"\0\0\0\x02{}");
    }
}
