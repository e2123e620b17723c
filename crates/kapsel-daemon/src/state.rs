//! What runs, on disk: `STATE_DIR/state.json`, written atomically whenever
//! a guest starts, stops, pauses or resumes, and read by the next daemon
//! to adopt the running guests through their monitors
//! ([`crate::monitor`]). Versioned: a daemon reads every older version it
//! knows and refuses a newer one with a clear error, never a silent reset.

use crate::monitor::Paths;
use crate::net::{DhcpLease, InterfaceKind, SwitchPort};
use crate::proto::VmState;
use crate::vmproc::OpenAs;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The format written by this daemon.
pub const STATE_VERSION: u32 = 1;

/// The largest state file read (a few KiB per guest).
const MAX_STATE_BYTES: u64 = 64 << 20;

/// The state file in `state_dir`.
pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join("state.json")
}

/// The whole file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateFile {
    /// [`STATE_VERSION`] when written by this daemon.
    pub version: u32,
    /// The next guest id to hand out.
    pub next_id: u32,
    /// Bridges the daemons made (removed when no guest needs them at a
    /// shutdown that stops the guests).
    #[serde(default)]
    pub created_switches: Vec<kapsel_config::SwitchSpec>,
    /// `local interface` NAT and forwarding are set up.
    #[serde(default)]
    pub local_network: bool,
    /// The guests that run (or ran when the daemon last wrote this).
    #[serde(default)]
    pub guests: Vec<GuestRecord>,
}

/// One running guest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GuestRecord {
    /// The daemon's id for it.
    pub id: u32,
    /// The run's number.
    pub generation: u64,
    /// Declared in a configuration file when it started.
    pub configured: bool,
    /// The VM's spec (for a container, the settings it shares with VMs).
    pub spec: kapsel_config::VmSpec,
    /// The container's spec, for a container.
    #[serde(default)]
    pub container: Option<kapsel_config::ContainerSpec>,
    /// The user whose files it opened, for a user's instance.
    #[serde(default)]
    pub open_as: Option<OpenAs>,
    /// Running, paused or stopping.
    pub state: VmState,
    /// The VM process or the container's init.
    pub pid: u32,
    /// Its monitor.
    pub monitor_pid: u32,
    /// The monitor's socket and reports.
    pub paths: Paths,
    /// Its host interfaces.
    #[serde(default)]
    pub net: Vec<InterfaceRecord>,
}

impl GuestRecord {
    /// The guest the record describes.
    pub fn guest_spec(&self) -> kapsel_config::GuestSpec {
        match &self.container {
            Some(c) => kapsel_config::GuestSpec::Container(c.clone()),
            None => kapsel_config::GuestSpec::Vm(self.spec.clone()),
        }
    }

    /// `spec` and `container` of a record of `guest`. The record keeps
    /// the first format's shape, a VM spec that holds a container's common
    /// settings too, so that monitors started by older daemons (which
    /// hand their records back at adoption) and newer ones read alike.
    pub fn spec_fields(
        guest: &kapsel_config::GuestSpec,
    ) -> (kapsel_config::VmSpec, Option<kapsel_config::ContainerSpec>) {
        match guest {
            kapsel_config::GuestSpec::Vm(v) => (v.clone(), None),
            kapsel_config::GuestSpec::Container(c) => {
                let mut view = kapsel_config::VmSpec::new(c.common.name.clone());
                view.common = c.common.clone();
                (view, Some(c.clone()))
            }
        }
    }
}

/// One host interface of a running guest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InterfaceRecord {
    /// The host-side name.
    pub ifname: String,
    /// Tap or veth.
    pub kind: InterfaceKind,
    /// Its switch port, if on a switch.
    #[serde(default)]
    pub port: Option<SwitchPort>,
    /// The lease its DHCP server offers, for a local interface.
    #[serde(default)]
    pub dhcp: Option<DhcpLease>,
}

/// Why the state file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// It cannot be read.
    #[error("state file {path}: {source}; check the state directory's disk and permissions")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// It is not a state file this daemon understands.
    #[error(
        "state file {path} is damaged ({reason}); the guests it lists cannot be adopted: \
         stop them by hand (their monitors' sockets are in {run}), then move the file away \
         and start kapseld again"
    )]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
        /// The monitors' directory.
        run: PathBuf,
    },
    /// A newer kapseld wrote it.
    #[error(
        "state file {path} has format version {found}, newer than this kapseld's {STATE_VERSION}: \
         it was written by a newer Kapsel; run that version (downgrading a running host is \
         not supported)"
    )]
    Newer {
        /// The file.
        path: PathBuf,
        /// Its version.
        found: u32,
    },
}

/// Reads the state file of `state_dir`; `None` when there is none.
pub fn load(state_dir: &Path) -> Result<Option<StateFile>, StateError> {
    let path = path(state_dir);
    let bytes = match std::fs::File::open(&path) {
        Ok(f) => {
            let mut v = Vec::new();
            use std::io::Read;
            f.take(MAX_STATE_BYTES)
                .read_to_end(&mut v)
                .map_err(|source| StateError::Read {
                    path: path.clone(),
                    source,
                })?;
            v
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(StateError::Read { path, source }),
    };
    parse(&bytes, &path, state_dir).map(Some)
}

fn parse(bytes: &[u8], path: &Path, state_dir: &Path) -> Result<StateFile, StateError> {
    let damaged = |reason: String| StateError::Damaged {
        path: path.to_owned(),
        reason,
        run: crate::monitor::run_dir(state_dir),
    };
    #[derive(Deserialize)]
    struct Version {
        version: u32,
    }
    let v: Version = serde_json::from_slice(bytes).map_err(|e| damaged(e.to_string()))?;
    if v.version > STATE_VERSION {
        return Err(StateError::Newer {
            path: path.to_owned(),
            found: v.version,
        });
    }
    if v.version == 0 {
        return Err(damaged("version 0".into()));
    }
    serde_json::from_slice(bytes).map_err(|e| damaged(e.to_string()))
}

/// Writes `state` atomically.
pub fn save(state_dir: &Path, state: &StateFile) -> std::io::Result<()> {
    let bytes = serde_json::to_vec_pretty(state).map_err(std::io::Error::other)?;
    crate::monitor::write_atomically(&path(state_dir), &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> StateFile {
        let mut spec = kapsel_config::VmSpec::new("web");
        spec.boot = Some("/vm/vmlinuz".into());
        StateFile {
            version: STATE_VERSION,
            next_id: 3,
            created_switches: vec![kapsel_config::SwitchSpec::new("uplink")],
            local_network: true,
            guests: vec![GuestRecord {
                id: 2,
                generation: 1,
                configured: true,
                spec,
                container: None,
                open_as: None,
                state: VmState::Running,
                pid: 100,
                monitor_pid: 99,
                paths: Paths::of(Path::new("/var/lib/kapsel"), "web"),
                net: vec![InterfaceRecord {
                    ifname: "tap2-0".into(),
                    kind: InterfaceKind::Tap,
                    port: None,
                    dhcp: None,
                }],
            }],
        }
    }

    #[test]
    fn round_trip_and_atomic_save() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).unwrap().is_none());
        save(dir.path(), &sample()).unwrap();
        assert_eq!(load(dir.path()).unwrap().unwrap(), sample());
        assert!(!dir.path().join("state.tmp").exists());
    }

    #[test]
    fn damaged_and_newer_files_are_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(path(dir.path()), b"{\"version\": 1, \"next_id\": ").unwrap();
        let e = load(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("damaged") && e.contains("move the file away"),
            "{e}"
        );
        std::fs::write(path(dir.path()), b"{\"version\": 7, \"whatever\": []}").unwrap();
        let e = load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("version 7") && e.contains("newer"), "{e}");
    }

    /// A state file written by the first daemon that wrote any (format 1,
    /// 2026-12-07): every later daemon must still read it, so that an
    /// upgrade adopts the guests the older version started.
    #[test]
    fn the_first_format_still_reads() {
        let fixture = include_bytes!("../tests/fixtures/state-v1.json");
        let s = parse(
            fixture,
            Path::new("state.json"),
            Path::new("/var/lib/kapsel"),
        )
        .unwrap();
        assert_eq!(s.version, 1);
        assert_eq!(s.guests.len(), 2);
        assert!(s.guests[1].container.is_some());
    }
}
