//! One guest model for the daemon: what every guest goes through (its
//! states and the events that move it between them, [`next`]), what each
//! kind does its own way ([`GuestOps`], implemented by VMs in
//! [`crate::vmproc`] and by containers in [`crate::ctproc`]), and the
//! typed errors of requests about guests ([`GuestError`]).

use crate::proto::VmState;
use kapsel_config::{GuestKind, GuestSpec};
use std::os::fd::OwnedFd;
use std::path::Path;

/// Why a request about a guest failed. The text (Display) is the line the
/// user reads: the thing, what is wrong and the fix.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// No guest by that name or id.
    #[error("no VM or container named {0}; `kapsel status` lists them")]
    NotFound(String),
    /// The last reload removed it from the configuration.
    #[error(
        "{0} was removed from the configuration; declare it in vm.conf again and run `kapsel reload`"
    )]
    Removed(String),
    /// The guest is in a state where the request makes no sense.
    #[error("{}", refusal_text(.kind, .name, *.state, *.event))]
    WrongState {
        /// VM or container.
        kind: GuestKind,
        /// Its name.
        name: String,
        /// Its state.
        state: VmState,
        /// What was asked.
        event: Event,
    },
    /// The daemon stops; nothing starts any more.
    #[error("the daemon is shutting down")]
    ShuttingDown,
    /// The requester may not do this (the text says who may).
    #[error("{0}")]
    Denied(String),
    /// The request itself is wrong (the text says what to give instead).
    #[error("{0}")]
    Invalid(String),
    /// The guest was asked to start and could not (the reason from its
    /// process or monitor).
    #[error("{kind} {name} could not start: {reason}")]
    StartFailed {
        /// VM or container.
        kind: GuestKind,
        /// Its name.
        name: String,
        /// Why.
        reason: String,
    },
    /// The host refused something the request needed (an interface, a
    /// process, an image, the configuration files): the text names it.
    #[error("{0}")]
    Host(String),
}

/// The broad class of a [`GuestError`], for protocols that carry one (the
/// HTTP status of the API).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Nothing of that name.
    NotFound,
    /// Not allowed for this requester.
    Denied,
    /// Not possible in the guest's (or the daemon's) current state.
    Conflict,
    /// A bad request.
    Invalid,
    /// The host could not do it.
    Failed,
}

impl GuestError {
    /// Its class.
    pub fn class(&self) -> ErrorClass {
        match self {
            GuestError::NotFound(_) | GuestError::Removed(_) => ErrorClass::NotFound,
            GuestError::WrongState { .. } | GuestError::ShuttingDown => ErrorClass::Conflict,
            GuestError::Denied(_) => ErrorClass::Denied,
            GuestError::Invalid(_) => ErrorClass::Invalid,
            GuestError::StartFailed { .. } | GuestError::Host(_) => ErrorClass::Failed,
        }
    }
}

impl From<String> for GuestError {
    /// The helpers below the daemon (processes, interfaces, images) say
    /// what failed in a line of their own.
    fn from(line: String) -> Self {
        GuestError::Host(line)
    }
}

/// What happens to a guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// `start`: its monitor is about to start it.
    Start,
    /// Its monitor started it.
    Started,
    /// Its start failed; nothing of it runs.
    StartFailed,
    /// `stop`: the power button (a paused guest is resumed to see it).
    PowerButton,
    /// `stop -f`: killed.
    Kill,
    /// `pause`.
    Pause,
    /// `unpause`.
    Resume,
    /// `wait`, `console` of a running guest: needs a run.
    Watch,
    /// Its process ended; its host interfaces are being released.
    Exited,
    /// Its interfaces are released: it can start again.
    Released,
}

/// The state a guest in `state` goes to on `event`, or `Err` with the
/// state when the event is refused there. The daemon changes a guest's
/// state only through this function.
pub fn next(state: VmState, event: Event) -> Result<VmState, VmState> {
    use VmState::*;
    let to = match (event, state) {
        (Event::Start, Stopped) => Starting,
        (Event::Started, Starting) => Running,
        (Event::StartFailed, Starting) => Stopped,
        (Event::PowerButton, Running | Paused | Stopping) => Stopping,
        (Event::Kill, Running | Paused | Stopping) => state,
        (Event::Pause, Running) => Paused,
        (Event::Resume, Paused) => Running,
        (Event::Watch, Running | Paused | Stopping) => state,
        // An exit can come in any state a process exists in.
        (Event::Exited, Starting | Running | Paused | Stopping) => Stopping,
        (Event::Released, Stopping) => Stopped,
        _ => return Err(state),
    };
    Ok(to)
}

/// The text of a refused event (see [`GuestError::WrongState`]).
fn refusal_text(kind: &GuestKind, name: &str, state: VmState, event: Event) -> String {
    match (event, state) {
        (Event::Start, _) => format!("{kind} {name} is already {state}"),
        (_, VmState::Stopped) => format!("{kind} {name} is not running"),
        (_, VmState::Starting) => {
            format!("{kind} {name} is starting; try again once it runs (`kapsel status {name}`)")
        }
        (Event::Pause, _) => format!("{kind} {name} is {state}, not running"),
        (Event::Resume, _) => format!("{kind} {name} is {state}, not paused"),
        _ => format!("{kind} {name} is {state}"),
    }
}

/// A guest's state after `event`, as [`next`], with the refusal as a
/// [`GuestError`] naming the guest.
pub fn step(spec: &GuestSpec, state: VmState, event: Event) -> Result<VmState, GuestError> {
    next(state, event).map_err(|state| GuestError::WrongState {
        kind: spec.kind(),
        name: spec.name().to_string(),
        state,
        event,
    })
}

/// What a guest's monitor is given to start it.
pub struct Launch {
    /// The guest, as the monitor starts it.
    pub guest: crate::monitor::GuestLaunch,
    /// Descriptors the monitor inherits (a VM's configuration, readiness
    /// pipe and taps).
    pub fds: Vec<OwnedFd>,
    /// The read end of a VM process's readiness pipe (see
    /// [`crate::vmproc::wait_ready`]).
    pub ready: Option<OwnedFd>,
    /// The host side of a container's veth, made by its start: it joins
    /// its switch after the start.
    pub veth: Option<String>,
}

/// What the daemon knows when it launches a guest.
pub struct LaunchContext<'a> {
    /// The guest's id (names its host interfaces).
    pub id: u32,
    /// The daemon's state directory.
    pub state_dir: &'a Path,
    /// The `kapsel` binary.
    pub kapsel: &'a Path,
    /// Time a VM gets after the power button.
    pub shutdown_timeout: std::time::Duration,
    /// The open taps of a VM's interfaces, with the guest's MACs.
    pub taps: Vec<(OwnedFd, kapsel_config::MacAddr)>,
    /// The user whose files a user's instance opens.
    pub open_as: Option<&'a crate::vmproc::OpenAs>,
}

/// What each kind of guest does its own way. Everything else (states,
/// owners, consoles, host interfaces, the state file, adoption) the
/// daemon does the same for both.
pub trait GuestOps {
    /// Slow work before a start, done without the daemon's state lock
    /// (a container's image unpacked into its root).
    fn prepare(&self, state_dir: &Path, kapsel: &Path) -> Result<(), GuestError>;

    /// Whether the host side of its interfaces is made before its process
    /// starts and handed to it (a VM's taps); else its start makes them (a
    /// container's veth pair) and they join their switches afterwards.
    fn interfaces_first(&self) -> bool;

    /// What its monitor starts.
    fn launch(&self, ctx: LaunchContext) -> Result<Launch, GuestError>;

    /// The vCPUs shown in `status` (0: the host's, a container without a
    /// limit).
    fn vcpus(&self) -> u32;
}

/// The operations of `spec`'s kind.
pub fn ops(spec: &GuestSpec) -> &dyn GuestOps {
    match spec {
        GuestSpec::Vm(v) => v,
        GuestSpec::Container(c) => c,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use VmState::*;

    const STATES: [VmState; 5] = [Stopped, Starting, Running, Paused, Stopping];
    const EVENTS: [Event; 10] = [
        Event::Start,
        Event::Started,
        Event::StartFailed,
        Event::PowerButton,
        Event::Kill,
        Event::Pause,
        Event::Resume,
        Event::Watch,
        Event::Exited,
        Event::Released,
    ];

    #[test]
    fn a_whole_life_start_pause_resume_stop() {
        let mut s = Stopped;
        for (e, want) in [
            (Event::Start, Starting),
            (Event::Started, Running),
            (Event::Pause, Paused),
            (Event::Resume, Running),
            (Event::PowerButton, Stopping),
            (Event::PowerButton, Stopping),
            (Event::Kill, Stopping),
            (Event::Exited, Stopping),
            (Event::Released, Stopped),
            (Event::Start, Starting),
            (Event::StartFailed, Stopped),
        ] {
            s = next(s, e).unwrap_or_else(|st| panic!("{e:?} refused in {st}"));
            assert_eq!(s, want, "after {e:?}");
        }
    }

    #[test]
    fn a_stopped_guest_only_starts() {
        for e in EVENTS {
            assert_eq!(next(Stopped, e).is_ok(), e == Event::Start, "{e:?}");
        }
    }

    #[test]
    fn a_starting_guest_takes_no_request_until_it_runs() {
        for e in [
            Event::Start,
            Event::PowerButton,
            Event::Kill,
            Event::Pause,
            Event::Resume,
            Event::Watch,
        ] {
            assert_eq!(next(Starting, e), Err(Starting), "{e:?}");
        }
        assert_eq!(next(Starting, Event::Exited), Ok(Stopping));
    }

    #[test]
    fn a_releasing_guest_cannot_start_before_its_interfaces_are_gone() {
        // An exit leaves it stopping until its interfaces are released:
        // a new run would reuse their names.
        let s = next(Running, Event::Exited).unwrap();
        assert_eq!(next(s, Event::Start), Err(Stopping));
        assert_eq!(next(s, Event::Released), Ok(Stopped));
    }

    #[test]
    fn pause_and_resume_only_from_their_states() {
        for s in STATES {
            assert_eq!(next(s, Event::Pause).is_ok(), s == Running, "{s}");
            assert_eq!(next(s, Event::Resume).is_ok(), s == Paused, "{s}");
        }
    }

    #[test]
    fn every_refusal_names_the_guest_and_the_way_out() {
        let spec = GuestSpec::Container(kapsel_config::ContainerSpec::new("web"));
        for s in STATES {
            for e in EVENTS {
                if let Err(err) = step(&spec, s, e) {
                    let text = err.to_string();
                    assert!(text.starts_with("container web is"), "{text}");
                    assert_eq!(err.class(), ErrorClass::Conflict);
                }
            }
        }
        let err = step(&spec, Running, Event::Start).unwrap_err();
        assert_eq!(err.to_string(), "container web is already running");
        let err = step(&spec, Stopped, Event::PowerButton).unwrap_err();
        assert_eq!(err.to_string(), "container web is not running");
        let err = step(&spec, Stopping, Event::Pause).unwrap_err();
        assert_eq!(err.to_string(), "container web is stopping, not running");
    }
}
