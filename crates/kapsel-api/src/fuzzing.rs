//! The request path of the API with its authentication and authorization
//! in the loop, for the fuzz target `request` in `crates/kapsel-api/fuzz`
//! and the unit test that replays its seeds (not an API).
//!
//! [`Harness`] builds the real router on a state directory with users,
//! tokens, roles and ACL entries, and a small in-memory guest list (the
//! daemon's side of the seam). [`Harness::run`] decodes one input as
//!
//! ```text
//! [selector] METHOD SP PATH LF (NAME: VALUE LF)* LF BODY
//! ```
//!
//! where the selector picks the credentials the harness adds (none, an
//! Administrator's token, a vm.conf owner's token, a privilege-separated
//! token allowed only guest `web`, a session cookie with and without its
//! CSRF token), sends it through the router (TLS aside, what a connection
//! sends it), and panics when an invariant breaks:
//!
//! - no 5xx; every error is JSON `{code, message, field}` (but for HEAD,
//!   whose replies have no body);
//! - without credentials, only login and the OpenAPI document succeed;
//! - the privilege-separated token changes nothing but guest `web`'s power;
//! - a cookie session without the CSRF token changes nothing.
//!
//! The state goes back to the same users and ACL before each input.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use http_body_util::BodyExt;
use tower::ServiceExt;

use crate::access::AclEntry;
use crate::audit::AuditLog;
use crate::auth::{self, Limiter};
use crate::guests::{GuestAction, GuestError, GuestKind, GuestSummary, Guests};
use crate::handlers::{self, AppState, Peer};
use crate::store::{Db, Store, StoreError, User};

struct Fake(Mutex<Vec<GuestSummary>>);

impl Guests for Fake {
    fn list(&self) -> Vec<GuestSummary> {
        self.0.lock().map(|g| g.clone()).unwrap_or_default()
    }
    fn act(&self, name: &str, _action: GuestAction) -> Result<GuestSummary, GuestError> {
        self.get(name)
            .ok_or_else(|| GuestError::NotFound(name.into()))
    }
}

/// The harness: a state directory, its starting state, and a runtime.
pub struct Harness {
    _dir: tempfile::TempDir,
    state: Arc<AppState>,
    start: Db,
    admin: String,
    owner: String,
    sep: String,
    ticket: String,
    csrf: String,
    runtime: tokio::runtime::Runtime,
    /// Inputs that reached the router.
    pub dispatched: usize,
}

fn token(db: &mut Db, userid: &str, name: &str, privsep: bool) -> String {
    let (secret, t) = auth::new_token(0, privsep, String::new()).unwrap_or_else(|e| panic!("{e}"));
    if let Some(u) = db.users.get_mut(userid) {
        u.tokens.insert(name.into(), t);
    }
    format!("{userid}!{name}={secret}")
}

fn grant(db: &mut Db, path: &str, subject: &str, role: &str) {
    db.access.acl.push(AclEntry {
        path: path.into(),
        subject: subject.into(),
        role: role.into(),
        propagate: true,
    });
}

impl Harness {
    /// Build the state directory and the router.
    pub fn new() -> Harness {
        let base = if std::path::Path::new("/dev/shm").is_dir() {
            tempfile::tempdir_in("/dev/shm")
        } else {
            tempfile::tempdir()
        };
        let dir = base.unwrap_or_else(|e| panic!("temporary directory: {e}"));
        let path = dir.path().join("api");
        let mut store = Store::open(&path).unwrap_or_else(|e| panic!("{e}"));
        let (mut admin, mut owner, mut sep) = Default::default();
        store
            .update(|db| {
                for u in ["admin@kapsel", "bob@pam", "carol@kapsel"] {
                    db.users.insert(u.into(), User::new());
                }
                if let Some(c) = db.users.get_mut("carol@kapsel") {
                    c.password = auth::hash_password("carol-password").ok();
                }
                grant(db, "/", "admin@kapsel", "Administrator");
                grant(db, "/guests", "carol@kapsel", "GuestUser");
                admin = token(db, "admin@kapsel", "t", false);
                owner = token(db, "bob@pam", "t", false);
                sep = token(db, "admin@kapsel", "sep", true);
                grant(db, "/guests/web", "admin@kapsel!sep", "GuestUser");
                Ok::<_, StoreError>(())
            })
            .unwrap_or_else(|e| panic!("{e}"));
        let start = store.db().clone();
        let now_ms = crate::util::now_ms();
        let ticket = crate::ticket::issue(store.key(), "carol@kapsel", now_ms);
        let csrf = crate::ticket::csrf_token(store.key(), "carol@kapsel", now_ms);
        let guest = |name: &str, owner: Option<&str>| GuestSummary {
            name: name.into(),
            kind: GuestKind::Vm,
            state: "stopped".into(),
            owner: owner.map(str::to_string),
            vcpus: 1,
            memory_mib: 64,
        };
        let guests = vec![
            guest("web", None),
            guest("db", None),
            guest("bob-vm", Some("bob")),
        ];
        let state = Arc::new(AppState {
            audit: Arc::new(AuditLog::new(&path, 1 << 20, 1)),
            store: Mutex::new(store),
            guests: Arc::new(Fake(Mutex::new(guests))),
            limiter: Mutex::new(Limiter::default()),
            hash_slots: tokio::sync::Semaphore::new(1),
            pam_service: "kapsel-fuzz-no-such-service".into(),
            body_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("runtime: {e}"));
        Harness {
            _dir: dir,
            state,
            start,
            admin,
            owner,
            sep,
            ticket,
            csrf,
            runtime,
            dispatched: 0,
        }
    }

    /// Run one input; panics when an invariant breaks.
    pub fn run(&mut self, data: &[u8]) {
        let Some((&selector, rest)) = data.split_first() else {
            return;
        };
        let split = rest.windows(2).position(|w| w == b"\n\n");
        let (head, body) = match split {
            Some(i) => (&rest[..i], &rest[i + 2..]),
            None => (rest, &[][..]),
        };
        let head = String::from_utf8_lossy(head);
        let mut lines = head.lines();
        let Some((method, path)) = lines.next().and_then(|l| l.split_once(' ')) else {
            return;
        };
        let mut b = axum::http::Request::builder().method(method).uri(path);
        let mut own_credentials = false;
        for l in lines.take(32) {
            if let Some((k, v)) = l.split_once(':') {
                let k = k.trim();
                own_credentials |=
                    k.eq_ignore_ascii_case("authorization") || k.eq_ignore_ascii_case("cookie");
                b = b.header(k, v.trim());
            }
        }
        let who = selector % 6;
        b = match who {
            1 => b.header("authorization", format!("Bearer {}", self.admin)),
            2 => b.header("authorization", format!("Bearer {}", self.owner)),
            3 => b.header("authorization", format!("Bearer {}", self.sep)),
            4 => b
                .header("cookie", format!("KapselAuth={}", self.ticket))
                .header("CSRFPreventionToken", self.csrf.as_str()),
            5 => b.header("cookie", format!("KapselAuth={}", self.ticket)),
            _ => b,
        };
        let Ok(mut req) = b.body(Body::from(body.to_vec())) else {
            return;
        };
        let peer: SocketAddr = ([127, 0, 0, 1], 40000).into();
        req.extensions_mut().insert(Peer(peer));
        // Back to the starting state.
        {
            let mut store = self.state.store.lock().unwrap_or_else(|p| p.into_inner());
            let start = self.start.clone();
            store
                .update(|db| {
                    *db = start;
                    Ok::<_, StoreError>(())
                })
                .unwrap_or_else(|e| panic!("{e}"));
        }
        *self.state.limiter.lock().unwrap_or_else(|p| p.into_inner()) = Limiter::default();
        self.dispatched += 1;
        let router = handlers::router(self.state.clone(), 64 * 1024);
        let method = req.method().clone();
        let uri_path = req.uri().path().to_string();
        let (status, bytes) = self.runtime.block_on(async move {
            let resp = router.oneshot(req).await.unwrap_or_else(|e| match e {});
            let status = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            (status, bytes)
        });
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            status.as_u16() < 500,
            "{method} {uri_path}: {status} {text}"
        );
        // A reply to HEAD has no body, by HTTP's rules.
        if !status.is_success() && method != axum::http::Method::HEAD {
            let v: serde_json::Value = serde_json::from_slice(&bytes)
                .unwrap_or_else(|e| panic!("{status} not JSON ({e}): {text}"));
            assert!(v["code"].is_string(), "{text}");
            assert!(
                v["message"].as_str().is_some_and(|m| !m.is_empty()),
                "{text}"
            );
            assert!(v["field"].is_null() || v["field"].is_string(), "{text}");
        }
        let changing = !matches!(method.as_str(), "GET" | "HEAD" | "OPTIONS");
        if status.is_success() && !own_credentials {
            match who {
                0 => assert!(
                    uri_path == "/api/v1/access/ticket" || uri_path == "/api/v1/openapi.json",
                    "{method} {uri_path} succeeded without credentials"
                ),
                3 if changing => assert!(
                    uri_path.starts_with("/api/v1/guests/web/"),
                    "the separated token changed {method} {uri_path}"
                ),
                5 if changing => {
                    panic!("a cookie without the CSRF token changed {method} {uri_path}")
                }
                _ => {}
            }
        }
    }
}

impl Default for Harness {
    fn default() -> Self {
        Harness::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seeds() -> Vec<(String, Vec<u8>)> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/request");
        let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read(e.path()).unwrap(),
                )
            })
            .collect();
        out.sort();
        out
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
        assert_eq!(
            h.dispatched,
            seeds.len(),
            "every seed must reach the router"
        );
    }
}
