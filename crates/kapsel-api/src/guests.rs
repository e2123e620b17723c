//! The seam between the API and the daemon: the daemon implements
//! [`Guests`]; the API never touches the daemon's internals.
//!
//! Calls are made from the API runtime's blocking pool, never from its
//! async workers, so an implementation may block (a start waits for the VM
//! process to open its files) and may take the daemon's locks.

use serde::{Deserialize, Serialize};

/// The kind of a guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum GuestKind {
    /// A KVM virtual machine.
    Vm,
    /// A system container.
    Container,
}

/// What the API shows of a guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GuestSummary {
    /// The guest's name in vm.conf.
    pub name: String,
    /// VM or container.
    pub kind: GuestKind,
    /// `running`, `stopped`, `paused`, `starting`, …
    pub state: String,
    /// vm.conf's `owner`: a host user name, holding `GuestUser` on the guest.
    pub owner: Option<String>,
    /// vCPUs.
    pub vcpus: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
}

/// What can be done to a guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum GuestAction {
    /// Start it.
    Start,
    /// Press the power button (VM) or send SIGTERM to init (container).
    Stop,
    /// Kill it.
    ForceStop,
    /// Pause its vCPUs or freeze its cgroup.
    Pause,
    /// Resume it.
    Unpause,
}

impl GuestAction {
    /// Parse the action word of `POST /guests/NAME/ACTION`.
    pub fn parse(s: &str) -> Option<GuestAction> {
        Some(match s {
            "start" => GuestAction::Start,
            "stop" => GuestAction::Stop,
            "force-stop" => GuestAction::ForceStop,
            "pause" => GuestAction::Pause,
            "unpause" => GuestAction::Unpause,
            _ => return None,
        })
    }
}

/// Why the daemon could not do an action.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuestError {
    /// No such guest.
    #[error("no guest {0} in vm.conf")]
    NotFound(String),
    /// The guest's state does not allow it (already running, …).
    #[error("{0}")]
    Conflict(String),
    /// It was tried and failed.
    #[error("{0}")]
    Failed(String),
}

/// The daemon's guests, as the API sees them.
pub trait Guests: Send + Sync + 'static {
    /// Every guest.
    fn list(&self) -> Vec<GuestSummary>;

    /// One guest.
    fn get(&self, name: &str) -> Option<GuestSummary> {
        self.list().into_iter().find(|g| g.name == name)
    }

    /// Do `action` to guest `name`; the guest as it is afterwards.
    fn act(&self, name: &str, action: GuestAction) -> Result<GuestSummary, GuestError>;
}
