//! kapseld's side of the management API (`kapsel daemon --listen`): starts
//! `kapsel_api`'s HTTPS server on threads of its own and lends it the
//! guests through the `Guests` seam.
//!
//! The seam goes through the control protocol's own request path
//! ([`server::answer`]) as root: the API has authorized the caller by its
//! own rules (users, roles, ACLs) before it asks, so the daemon acts for
//! it as for root on the Unix socket, with the same bounds and checks
//! every other request gets.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Weak};

use kapsel_api::{
    ApiServer, GuestAction, GuestError, GuestKind, GuestSummary, Guests, ServerConfig, TlsSource,
};

use crate::accounts::Peer;
use crate::daemon::{Daemon, DaemonError};
use crate::guest::ErrorClass;
use crate::proto::{Request, Response, StartRequest, VmStatus};
use crate::server;

/// How to serve the API.
#[derive(Debug, Clone)]
pub struct ApiOptions {
    /// `--listen ADDR:PORT`.
    pub listen: SocketAddr,
    /// `--tls-cert` and `--tls-key`; a self-signed pair in `STATE_DIR/api`
    /// otherwise.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// The daemon's state directory (the API keeps `api/` in it).
    pub state_dir: PathBuf,
}

struct DaemonGuests(Weak<Daemon>);

fn root() -> Peer {
    Peer::from_ids(0, 0)
}

fn summary(v: VmStatus) -> GuestSummary {
    let owner = v
        .owner
        .split(':')
        .next()
        .filter(|u| !u.is_empty() && *u != "root")
        .map(str::to_string);
    GuestSummary {
        kind: if v.kind == "container" {
            GuestKind::Container
        } else {
            GuestKind::Vm
        },
        state: v.state.to_string(),
        owner,
        vcpus: v.vcpus,
        memory_mib: v.max_mem >> 20,
        name: v.name,
    }
}

impl DaemonGuests {
    fn ask(&self, request: Request) -> Result<Response, GuestError> {
        let daemon = self
            .0
            .upgrade()
            .ok_or_else(|| GuestError::Failed("kapseld is stopping".into()))?;
        Ok(server::answer(&daemon, &root(), request, None))
    }
}

impl Guests for DaemonGuests {
    fn list(&self) -> Vec<GuestSummary> {
        match self.ask(Request::Status { target: None }) {
            Ok(Response::Status { vms }) => vms.into_iter().map(summary).collect(),
            _ => Vec::new(),
        }
    }

    fn get(&self, name: &str) -> Option<GuestSummary> {
        // `status` of one target also matches ids: keep the name's.
        let target = Some(name.to_string());
        match self.ask(Request::Status { target }) {
            Ok(Response::Status { vms }) => vms.into_iter().map(summary).find(|g| g.name == name),
            _ => None,
        }
    }

    /// The daemon says when there is no such guest (its error's class).
    fn act(&self, name: &str, action: GuestAction) -> Result<GuestSummary, GuestError> {
        let target = name.to_string();
        let request = match action {
            GuestAction::Start => Request::Start(StartRequest {
                name: target,
                ..StartRequest::default()
            }),
            GuestAction::Stop | GuestAction::ForceStop => Request::Stop {
                targets: vec![target],
                all: false,
                force: action == GuestAction::ForceStop,
                wait: false,
            },
            GuestAction::Pause => Request::Pause { target },
            GuestAction::Unpause => Request::Unpause { target },
        };
        let daemon = self
            .0
            .upgrade()
            .ok_or_else(|| GuestError::Failed("kapseld is stopping".into()))?;
        match daemon.request(&root(), request) {
            Ok(_) => self
                .get(name)
                .ok_or_else(|| GuestError::NotFound(name.into())),
            Err(e) => Err(match e.class() {
                ErrorClass::NotFound => GuestError::NotFound(name.into()),
                ErrorClass::Conflict | ErrorClass::Invalid | ErrorClass::Denied => {
                    GuestError::Conflict(e.to_string())
                }
                ErrorClass::Failed => GuestError::Failed(e.to_string()),
            }),
        }
    }
}

/// Start the API server for `daemon`; it serves until dropped.
pub fn start(daemon: &Arc<Daemon>, opts: ApiOptions) -> Result<ApiServer, DaemonError> {
    let mut config = ServerConfig::new(opts.listen, opts.state_dir.join("api"));
    if let Some((cert, key)) = opts.tls {
        config.tls = TlsSource::Files { cert, key };
    }
    let guests = Arc::new(DaemonGuests(Arc::downgrade(daemon)));
    let api = ApiServer::start(config, guests)
        .map_err(|e| DaemonError::Setup(format!("API server: {e}")))?;
    tracing::info!(
        "API listening on https://{}; certificate SHA-256 fingerprint {}",
        api.local_addr(),
        api.fingerprint()
    );
    Ok(api)
}
