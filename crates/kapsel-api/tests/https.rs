//! The API over real HTTPS on loopback: TLS (pinned by fingerprint), HTTP,
//! authentication, authorization and the audit log are the real ones; only
//! the daemon's side of the `Guests` seam is a small in-memory double.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use kapsel_api::access::AclEntry;
use kapsel_api::store::{Db, StoreError, TfaState, User};
use kapsel_api::{
    auth, ApiServer, GuestAction, GuestError, GuestKind, GuestSummary, Guests, Limits,
    ServerConfig, Store,
};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

// ------------------------------------------------------------ the seam's double

struct FakeGuests(Mutex<Vec<GuestSummary>>);

impl Guests for FakeGuests {
    fn list(&self) -> Vec<GuestSummary> {
        self.0.lock().unwrap().clone()
    }
    fn act(&self, name: &str, action: GuestAction) -> Result<GuestSummary, GuestError> {
        let mut all = self.0.lock().unwrap();
        let g = all
            .iter_mut()
            .find(|g| g.name == name)
            .ok_or_else(|| GuestError::NotFound(name.into()))?;
        g.state = match (action, g.state.as_str()) {
            (GuestAction::Start, "stopped") => "running",
            (GuestAction::Stop | GuestAction::ForceStop, "running" | "paused") => "stopped",
            (GuestAction::Pause, "running") => "paused",
            (GuestAction::Unpause, "paused") => "running",
            (a, s) => {
                return Err(GuestError::Conflict(format!(
                    "guest {name} is {s}: cannot {a:?}"
                )))
            }
        }
        .into();
        Ok(g.clone())
    }
}

fn guest(name: &str, owner: Option<&str>) -> GuestSummary {
    GuestSummary {
        name: name.into(),
        kind: GuestKind::Vm,
        state: "stopped".into(),
        owner: owner.map(str::to_string),
        vcpus: 2,
        memory_mib: 512,
    }
}

// ------------------------------------------------------------ setup

struct Env {
    _dir: tempfile::TempDir,
    state: std::path::PathBuf,
    server: ApiServer,
    client: Client,
    guests: Arc<FakeGuests>,
}

fn add_user(db: &mut Db, userid: &str, password: Option<&str>, grants: &[(&str, &str)]) {
    let mut u = User::new();
    u.password = password.map(|p| auth::hash_password(p).unwrap());
    db.users.insert(userid.into(), u);
    for (path, role) in grants {
        db.access.acl.push(AclEntry {
            path: path.to_string(),
            subject: userid.into(),
            role: role.to_string(),
            propagate: true,
        });
    }
}

/// A token for `userid`; returns the bearer value.
fn add_token(db: &mut Db, userid: &str, name: &str, privsep: bool, expire: u64) -> String {
    let (secret, t) = auth::new_token(expire, privsep, String::new()).unwrap();
    db.users
        .get_mut(userid)
        .unwrap()
        .tokens
        .insert(name.into(), t);
    format!("{userid}!{name}={secret}")
}

fn start(limits: Limits, guests: Vec<GuestSummary>, f: impl FnOnce(&mut Db)) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("api");
    let mut store = Store::open(&state).unwrap();
    store
        .update(|db| {
            f(db);
            Ok::<_, StoreError>(())
        })
        .unwrap();
    drop(store);
    let mut config = ServerConfig::new("127.0.0.1:0".parse().unwrap(), state.clone());
    config.limits = limits;
    config.pam_service = "kapsel".into();
    let guests = Arc::new(FakeGuests(Mutex::new(guests)));
    let server = ApiServer::start(config, guests.clone()).unwrap();
    let client = Client::new(server.local_addr(), server.fingerprint());
    Env {
        _dir: dir,
        state,
        server,
        client,
        guests,
    }
}

// ------------------------------------------------------------ client

#[derive(Clone)]
struct Client {
    addr: SocketAddr,
    tls: tokio_rustls::TlsConnector,
}

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: hyper::HeaderMap,
    json: Value,
}

#[derive(Clone, Copy)]
enum Auth<'a> {
    None,
    Token(&'a str),
    Cookie(&'a str, Option<&'a str>),
}

impl Client {
    fn new(addr: SocketAddr, fingerprint: &str) -> Client {
        let config = kapsel_api::pin::client_config(fingerprint).unwrap();
        Client {
            addr,
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
        }
    }

    async fn tls_from(
        &self,
        source: IpAddr,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let tcp = connect_from(source, self.addr).await?;
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        self.tls.connect(name, tcp).await
    }

    async fn req_from(
        &self,
        source: IpAddr,
        method: &str,
        path: &str,
        auth: Auth<'_>,
        body: Option<Vec<u8>>,
    ) -> Resp {
        let tls = self.tls_from(source).await.expect("TLS connection");
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut b = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost");
        match auth {
            Auth::None => {}
            Auth::Token(t) => b = b.header("authorization", format!("Bearer {t}")),
            Auth::Cookie(ticket, csrf) => {
                b = b.header("cookie", format!("KapselAuth={ticket}"));
                if let Some(c) = csrf {
                    b = b.header("CSRFPreventionToken", c);
                }
            }
        }
        if body.is_some() {
            b = b.header("content-type", "application/json");
        }
        let req = b
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let json = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| panic!("not JSON: {:?}", String::from_utf8_lossy(&bytes)))
        };
        Resp {
            status,
            headers,
            json,
        }
    }

    async fn req(&self, method: &str, path: &str, auth: Auth<'_>, body: Option<Value>) -> Resp {
        let body = body.map(|v| serde_json::to_vec(&v).unwrap());
        self.req_from(IpAddr::from([127, 0, 0, 1]), method, path, auth, body)
            .await
    }

    async fn login(&self, user: &str, password: &str, otp: Option<&str>) -> Resp {
        let mut body = json!({"username": user, "password": password});
        if let Some(o) = otp {
            body["otp"] = json!(o);
        }
        self.req("POST", "/api/v1/access/ticket", Auth::None, Some(body))
            .await
    }
}

async fn connect_from(source: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.bind(SocketAddr::new(source, 0))?;
    s.connect(to).await
}

/// Every error reply is `{code, message, field}`.
#[track_caller]
fn assert_error(r: &Resp, status: u16, code: &str) {
    assert_eq!(r.status, status, "{r:?}");
    assert_eq!(r.json["code"], code, "{r:?}");
    assert!(
        r.json["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{r:?}"
    );
    assert!(r.json.get("field").is_some(), "{r:?}");
}

fn audit_lines(env: &Env) -> Vec<Value> {
    std::fs::read_to_string(env.state.join("audit.log"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

// ------------------------------------------------------------ tests

const ROLES: [&str; 7] = [
    "Administrator",
    "GuestAdmin",
    "GuestUser",
    "Auditor",
    "UserAdmin",
    "PoolAdmin",
    "NoAccess",
];

/// Each built-in role, granted on `/`, against each kind of action.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_action_matrix() {
    let mut tokens = Vec::new();
    let env = start(
        Limits::default(),
        vec![guest("web", None), guest("db", None)],
        |db| {
            for role in ROLES {
                let user = format!("{}@kapsel", role.to_lowercase());
                add_user(db, &user, None, &[("/", role)]);
                tokens.push(add_token(db, &user, "t", false, 0));
            }
        },
    );
    let c = &env.client;
    // (action, method, path, body) and the privilege it needs.
    type Action<'a> = (&'a str, &'a str, String, Option<Value>, Option<&'a str>);
    let actions: Vec<Action> = vec![
        (
            "list guests",
            "GET",
            "/api/v1/guests/web".into(),
            None,
            Some("Guest.Audit"),
        ),
        (
            "start guest",
            "POST",
            "/api/v1/guests/web/start".into(),
            None,
            Some("Guest.PowerMgmt"),
        ),
        (
            "host facts",
            "GET",
            "/api/v1/host".into(),
            None,
            Some("Sys.Audit"),
        ),
        (
            "read audit",
            "GET",
            "/api/v1/audit".into(),
            None,
            Some("Sys.Audit"),
        ),
        (
            "add user",
            "POST",
            "/api/v1/access/users".into(),
            Some(json!({"userid": "new-{ROLE}@pam"})),
            Some("User.Modify"),
        ),
        (
            "add role",
            "POST",
            "/api/v1/access/roles".into(),
            Some(json!({"role": "R-{ROLE}", "privs": ["Guest.Audit"]})),
            Some("Permissions.Modify"),
        ),
        (
            "add pool",
            "POST",
            "/api/v1/pools".into(),
            Some(json!({"pool": "p-{ROLE}"})),
            Some("Pool.Allocate"),
        ),
        ("whoami", "GET", "/api/v1/access/whoami".into(), None, None),
        (
            "list roles",
            "GET",
            "/api/v1/access/roles".into(),
            None,
            None,
        ),
    ];
    let roles = kapsel_api::access::builtin_roles();
    for (role, token) in ROLES.iter().zip(&tokens) {
        let have = roles[*role];
        for (what, method, path, body, need) in &actions {
            // Start and stop alternate so that each allowed start succeeds.
            env.guests
                .0
                .lock()
                .unwrap()
                .iter_mut()
                .for_each(|g| g.state = "stopped".into());
            let body = body.as_ref().map(|b| {
                serde_json::from_str(&b.to_string().replace("{ROLE}", &role.to_lowercase()))
                    .unwrap()
            });
            let r = c.req(method, path, Auth::Token(token), body).await;
            let allowed = need.is_none_or(|n| have.has(kapsel_api::Privilege::parse(n).unwrap()));
            if allowed {
                assert!((200..300).contains(&r.status), "{role} {what}: {r:?}");
            } else {
                assert_error(&r, 403, "forbidden");
                assert!(
                    r.json["message"].as_str().unwrap().contains(need.unwrap()),
                    "{r:?}"
                );
            }
        }
        // Lists are filtered, not refused.
        let r = c
            .req("GET", "/api/v1/guests", Auth::Token(token), None)
            .await;
        assert_eq!(r.status, 200);
        let n = r.json.as_array().unwrap().len();
        assert_eq!(
            n,
            if have.has(kapsel_api::Privilege::GuestAudit) {
                2
            } else {
                0
            },
            "{role}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_privilege_separation_expiry_and_revocation() {
    let (mut sep, mut full, mut expired, mut of_disabled) = Default::default();
    let env = start(
        Limits::default(),
        vec![guest("web", None), guest("db", None)],
        |db| {
            add_user(db, "admin@kapsel", None, &[("/", "Administrator")]);
            sep = add_token(db, "admin@kapsel", "ci", true, 0);
            full = add_token(db, "admin@kapsel", "full", false, 0);
            expired = add_token(db, "admin@kapsel", "old", false, 1);
            db.access.acl.push(AclEntry {
                path: "/guests/web".into(),
                subject: "admin@kapsel!ci".into(),
                role: "GuestUser".into(),
                propagate: true,
            });
            add_user(db, "gone@kapsel", None, &[("/", "Administrator")]);
            of_disabled = add_token(db, "gone@kapsel", "t", false, 0);
            db.users.get_mut("gone@kapsel").unwrap().enable = false;
        },
    );
    let c = &env.client;
    // The separated token: what its own entries grant, within its user's.
    assert_eq!(
        c.req("POST", "/api/v1/guests/web/start", Auth::Token(&sep), None)
            .await
            .status,
        200
    );
    assert_error(
        &c.req("POST", "/api/v1/guests/db/start", Auth::Token(&sep), None)
            .await,
        403,
        "forbidden",
    );
    let r = c
        .req("GET", "/api/v1/guests", Auth::Token(&sep), None)
        .await;
    assert_eq!(r.json.as_array().unwrap().len(), 1, "{r:?}");
    assert_error(
        &c.req("GET", "/api/v1/host", Auth::Token(&sep), None).await,
        403,
        "forbidden",
    );
    let r = c
        .req("GET", "/api/v1/access/whoami", Auth::Token(&sep), None)
        .await;
    assert_eq!(
        (
            r.json["userid"].as_str(),
            r.json["token"].as_str(),
            r.json["privsep"].as_bool()
        ),
        (Some("admin@kapsel"), Some("ci"), Some(true))
    );
    // explain says why.
    let r = c
        .req("GET", "/api/v1/access/acl/explain?userid=admin@kapsel!ci&path=/guests/db&privilege=Guest.PowerMgmt", Auth::Token(&full), None)
        .await;
    assert_eq!(r.json["allowed"], false, "{r:?}");
    assert!(
        r.json["text"][0]
            .as_str()
            .unwrap()
            .contains("privilege-separated"),
        "{r:?}"
    );
    // Tokens cannot make tokens or change passwords or TFA, even a full one.
    let r = c
        .req(
            "POST",
            "/api/v1/access/users/admin@kapsel/tokens",
            Auth::Token(&full),
            Some(json!({"name": "x"})),
        )
        .await;
    assert_error(&r, 403, "forbidden");
    // The full token holds its user's rights.
    assert_eq!(
        c.req("GET", "/api/v1/host", Auth::Token(&full), None)
            .await
            .status,
        200
    );
    // Expired, of a disabled user, wrong secret, malformed: 401.
    for bad in [
        expired.as_str(),
        of_disabled.as_str(),
        "admin@kapsel!full=00",
        "junk",
    ] {
        assert_error(
            &c.req("GET", "/api/v1/access/whoami", Auth::Token(bad), None)
                .await,
            401,
            "unauthenticated",
        );
    }
    // Revoked: works before, not after.
    let r = c
        .req(
            "DELETE",
            "/api/v1/access/users/admin@kapsel/tokens/ci",
            Auth::Token(&full),
            None,
        )
        .await;
    assert_eq!(r.status, 204, "{r:?}");
    assert_error(
        &c.req("GET", "/api/v1/access/whoami", Auth::Token(&sep), None)
            .await,
        401,
        "unauthenticated",
    );
    // Its ACL entries went with it.
    let r = c
        .req("GET", "/api/v1/access/acl", Auth::Token(&full), None)
        .await;
    assert!(!r.json.to_string().contains("admin@kapsel!ci"), "{r:?}");
    // A token made through the API is shown once and works.
    let login = c.login("admin@kapsel", "unused", None).await;
    assert_eq!(login.status, 401, "no password set: {login:?}");
    drop(env);
}

const SECRET: &str = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"; // "12345678901234567890"

fn code_now(offset_steps: i64) -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let totp = kapsel_api::totp::Totp::from_base32(SECRET).unwrap();
    totp.code_at((t + offset_steps * 30) as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn totp_login_with_a_known_secret_and_recovery_codes() {
    let env = start(Limits::default(), vec![], |db| {
        add_user(
            db,
            "alice@kapsel",
            Some("alice-password"),
            &[("/guests", "GuestUser")],
        );
        add_user(db, "bob@kapsel", Some("bob-password"), &[]);
    });
    let c = &env.client;
    // Alice sets up TOTP with her session (cookie + CSRF).
    let s = c.login("alice@kapsel", "alice-password", None).await;
    assert_eq!(s.status, 200, "{s:?}");
    let ticket = s.json["ticket"].as_str().unwrap().to_string();
    let csrf = s.json["csrf_token"].as_str().unwrap().to_string();
    let me = Auth::Cookie(&ticket, Some(&csrf));
    let r = c
        .req(
            "POST",
            "/api/v1/access/tfa/alice@kapsel",
            me,
            Some(json!({"secret": SECRET, "code": "000000"})),
        )
        .await;
    assert_error(&r, 400, "invalid_field");
    assert_eq!(r.json["field"], "code");
    let r = c
        .req(
            "POST",
            "/api/v1/access/tfa/alice@kapsel",
            me,
            Some(json!({"secret": SECRET, "code": code_now(0)})),
        )
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    let recovery: Vec<String> = r.json["recovery"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(recovery.len(), 10);
    // Bob cannot touch Alice's TFA.
    let b = c.login("bob@kapsel", "bob-password", None).await;
    let (bt, bc) = (
        b.json["ticket"].as_str().unwrap().to_string(),
        b.json["csrf_token"].as_str().unwrap().to_string(),
    );
    assert_error(
        &c.req(
            "DELETE",
            "/api/v1/access/tfa/alice@kapsel",
            Auth::Cookie(&bt, Some(&bc)),
            None,
        )
        .await,
        403,
        "forbidden",
    );

    // Now the password alone is not enough.
    let r = c.login("alice@kapsel", "alice-password", None).await;
    assert_error(&r, 401, "tfa_required");
    assert_eq!(r.json["field"], "otp");
    assert_error(
        &c.login("alice@kapsel", "alice-password", Some("123456"))
            .await,
        401,
        "tfa_failed",
    );
    // The code of the set-up step was used; the next step's is fresh
    // (one step of skew is accepted).
    let next = code_now(1);
    let r = c.login("alice@kapsel", "alice-password", Some(&next)).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_error(
        &c.login("alice@kapsel", "alice-password", Some(&next)).await,
        401,
        "tfa_replayed",
    );
    // A wrong password with a right code is still refused.
    assert_error(
        &c.login("alice@kapsel", "wrong-password", Some(&code_now(0)))
            .await,
        401,
        "unauthenticated",
    );
    // Recovery codes: each once.
    assert_eq!(
        c.login("alice@kapsel", "alice-password", Some(&recovery[0]))
            .await
            .status,
        200
    );
    assert_error(
        &c.login("alice@kapsel", "alice-password", Some(&recovery[0]))
            .await,
        401,
        "tfa_failed",
    );
    let r = c
        .req("GET", "/api/v1/access/tfa/alice@kapsel", me, None)
        .await;
    assert_eq!(r.json["recovery_left"], 9, "{r:?}");

    // 8 wrong codes lock TOTP (Proxmox's limit), even for right codes.
    env.server
        .update_store(|db| {
            db.users
                .get_mut("alice@kapsel")
                .unwrap()
                .tfa
                .as_mut()
                .unwrap()
                .totp_failures = 0;
            Ok::<_, StoreError>(())
        })
        .unwrap();
    for _ in 0..auth::TOTP_FAILURES_LOCK {
        assert_error(
            &c.login("alice@kapsel", "alice-password", Some("999999"))
                .await,
            401,
            "tfa_failed",
        );
    }
    let tfa: TfaState = env
        .server
        .update_store(|db| Ok::<_, StoreError>(db.users["alice@kapsel"].tfa.clone().unwrap()))
        .unwrap();
    assert!(tfa.locked_until > 0);
    assert_error(
        &c.login("alice@kapsel", "alice-password", Some(&recovery[1]))
            .await,
        403,
        "tfa_locked",
    );

    // A realm that requires TFA refuses users without it.
    env.server
        .update_store(|db| {
            db.realms.insert(
                "kapsel".into(),
                kapsel_api::store::RealmSettings { require_tfa: true },
            );
            Ok::<_, StoreError>(())
        })
        .unwrap();
    assert_error(
        &c.login("bob@kapsel", "bob-password", None).await,
        403,
        "tfa_not_configured",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_lock_the_user_and_an_administrator_unlocks() {
    let mut admin = String::new();
    let env = start(Limits::default(), vec![], |db| {
        add_user(db, "alice@kapsel", Some("alice-password"), &[]);
        add_user(db, "bob@kapsel", Some("bob-password"), &[]);
        add_user(db, "admin@kapsel", None, &[("/", "Administrator")]);
        admin = add_token(db, "admin@kapsel", "t", false, 0);
    });
    let c = &env.client;
    for _ in 0..auth::USER_FAILURES_LOCK {
        assert_error(
            &c.login("alice@kapsel", "guess", None).await,
            401,
            "unauthenticated",
        );
    }
    // The right password is refused now, with Retry-After.
    let r = c.login("alice@kapsel", "alice-password", None).await;
    assert_error(&r, 429, "locked");
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry > 0 && retry <= auth::USER_LOCK_SECS);
    // Another user is not affected.
    assert_eq!(
        c.login("bob@kapsel", "bob-password", None).await.status,
        200
    );
    let r = c
        .req(
            "GET",
            "/api/v1/access/users/alice@kapsel",
            Auth::Token(&admin),
            None,
        )
        .await;
    assert_eq!(r.json["locked"], true, "{r:?}");
    // An administrator unlocks.
    assert_eq!(
        c.req(
            "POST",
            "/api/v1/access/users/alice@kapsel/unlock",
            Auth::Token(&admin),
            None
        )
        .await
        .status,
        204
    );
    assert_eq!(
        c.login("alice@kapsel", "alice-password", None).await.status,
        200
    );
    // An address that fails often is refused whoever it names.
    for i in 0..auth::ADDRESS_FAILURES {
        let _ = c.login(&format!("nobody{i}@kapsel"), "x", None).await;
    }
    assert_error(
        &c.login("bob@kapsel", "bob-password", None).await,
        429,
        "locked",
    );
    // From another address, Bob logs in.
    let body =
        serde_json::to_vec(&json!({"username": "bob@kapsel", "password": "bob-password"})).unwrap();
    let r = c
        .req_from(
            IpAddr::from([127, 0, 0, 2]),
            "POST",
            "/api/v1/access/ticket",
            Auth::None,
            Some(body),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_sessions_need_the_csrf_token_and_logout_ends_them() {
    let env = start(Limits::default(), vec![], |db| {
        add_user(
            db,
            "alice@kapsel",
            Some("alice-password"),
            &[("/", "Administrator")],
        );
        add_user(
            db,
            "bob@kapsel",
            Some("bob-password"),
            &[("/", "Administrator")],
        );
    });
    let c = &env.client;
    let s = c.login("alice@kapsel", "alice-password", None).await;
    let cookie = s.headers["set-cookie"].to_str().unwrap();
    assert!(
        cookie.contains("HttpOnly")
            && cookie.contains("Secure")
            && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let ticket = s.json["ticket"].as_str().unwrap().to_string();
    let csrf = s.json["csrf_token"].as_str().unwrap().to_string();
    // Reads need no CSRF token.
    assert_eq!(
        c.req(
            "GET",
            "/api/v1/access/whoami",
            Auth::Cookie(&ticket, None),
            None
        )
        .await
        .status,
        200
    );
    let pool = Some(json!({"pool": "p1"}));
    // Writes do: none, a wrong one, and one of another user are refused.
    assert_error(
        &c.req(
            "POST",
            "/api/v1/pools",
            Auth::Cookie(&ticket, None),
            pool.clone(),
        )
        .await,
        403,
        "csrf",
    );
    assert_error(
        &c.req(
            "POST",
            "/api/v1/pools",
            Auth::Cookie(&ticket, Some("1:00")),
            pool.clone(),
        )
        .await,
        403,
        "csrf",
    );
    let b = c.login("bob@kapsel", "bob-password", None).await;
    let bob_csrf = b.json["csrf_token"].as_str().unwrap().to_string();
    assert_error(
        &c.req(
            "POST",
            "/api/v1/pools",
            Auth::Cookie(&ticket, Some(&bob_csrf)),
            pool.clone(),
        )
        .await,
        403,
        "csrf",
    );
    assert_eq!(
        c.req(
            "POST",
            "/api/v1/pools",
            Auth::Cookie(&ticket, Some(&csrf)),
            pool.clone()
        )
        .await
        .status,
        201
    );
    // A forged ticket.
    let forged = ticket.replace("alice", "bob");
    assert_error(
        &c.req(
            "GET",
            "/api/v1/access/whoami",
            Auth::Cookie(&forged, None),
            None,
        )
        .await,
        401,
        "unauthenticated",
    );
    // Logout ends the session.
    assert_eq!(
        c.req(
            "POST",
            "/api/v1/access/logout",
            Auth::Cookie(&ticket, Some(&csrf)),
            None
        )
        .await
        .status,
        204
    );
    assert_error(
        &c.req(
            "GET",
            "/api/v1/access/whoami",
            Auth::Cookie(&ticket, None),
            None,
        )
        .await,
        401,
        "unauthenticated",
    );
    // A password change ends sessions too.
    let b_ticket = b.json["ticket"].as_str().unwrap().to_string();
    let r = c
        .req(
            "PUT",
            "/api/v1/access/password",
            Auth::Cookie(&b_ticket, Some(&bob_csrf)),
            Some(json!({"userid": "bob@kapsel", "password": "new-bob-password"})),
        )
        .await;
    assert_eq!(r.status, 204, "{r:?}");
    assert_error(
        &c.req(
            "GET",
            "/api/v1/access/whoami",
            Auth::Cookie(&b_ticket, None),
            None,
        )
        .await,
        401,
        "unauthenticated",
    );
    assert_eq!(
        c.login("bob@kapsel", "new-bob-password", None).await.status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_sees_and_drives_only_their_own_guests() {
    let (mut bob, mut carol) = (String::new(), String::new());
    let guests = vec![
        guest("bob-vm", Some("bob")),
        guest("bob-ct", Some("bob")),
        guest("carol-vm", Some("carol")),
    ];
    let env = start(Limits::default(), guests, |db| {
        add_user(db, "bob@pam", None, &[]);
        add_user(db, "carol@kapsel", None, &[]);
        bob = add_token(db, "bob@pam", "t", false, 0);
        carol = add_token(db, "carol@kapsel", "t", false, 0);
    });
    let c = &env.client;
    let r = c
        .req("GET", "/api/v1/guests", Auth::Token(&bob), None)
        .await;
    let names: Vec<&str> = r
        .json
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["bob-vm", "bob-ct"]);
    assert_eq!(
        c.req(
            "POST",
            "/api/v1/guests/bob-vm/start",
            Auth::Token(&bob),
            None
        )
        .await
        .json["state"],
        "running"
    );
    assert_error(
        &c.req(
            "POST",
            "/api/v1/guests/bob-vm/start",
            Auth::Token(&bob),
            None,
        )
        .await,
        409,
        "conflict",
    );
    assert_eq!(
        c.req(
            "POST",
            "/api/v1/guests/bob-vm/pause",
            Auth::Token(&bob),
            None
        )
        .await
        .json["state"],
        "paused"
    );
    assert_eq!(
        c.req(
            "POST",
            "/api/v1/guests/bob-vm/unpause",
            Auth::Token(&bob),
            None
        )
        .await
        .json["state"],
        "running"
    );
    assert_eq!(
        c.req(
            "POST",
            "/api/v1/guests/bob-vm/force-stop",
            Auth::Token(&bob),
            None
        )
        .await
        .json["state"],
        "stopped"
    );
    // Another's guest and a guest that does not exist look the same: 403.
    let other = c
        .req("GET", "/api/v1/guests/carol-vm", Auth::Token(&bob), None)
        .await;
    let none = c
        .req("GET", "/api/v1/guests/no-such", Auth::Token(&bob), None)
        .await;
    assert_error(&other, 403, "forbidden");
    assert_error(&none, 403, "forbidden");
    assert_error(
        &c.req(
            "POST",
            "/api/v1/guests/carol-vm/stop",
            Auth::Token(&bob),
            None,
        )
        .await,
        403,
        "forbidden",
    );
    // "carol" the vm.conf owner is the host user carol@pam, not carol@kapsel.
    assert!(c
        .req("GET", "/api/v1/guests", Auth::Token(&carol), None)
        .await
        .json
        .as_array()
        .unwrap()
        .is_empty());
    // explain names the owner rule.
    let r = c
        .req(
            "GET",
            "/api/v1/access/acl/explain?path=/guests/bob-ct&privilege=Guest.Console",
            Auth::Token(&bob),
            None,
        )
        .await;
    assert_eq!(r.json["allowed"], true, "{r:?}");
    assert_eq!(r.json["grants"][0]["via"], "owner");
    // Bob cannot ask about others.
    let r = c
        .req(
            "GET",
            "/api/v1/access/acl/explain?userid=carol@kapsel&path=/",
            Auth::Token(&bob),
            None,
        )
        .await;
    assert_error(&r, 403, "forbidden");
    // Unknown actions.
    let r = c
        .req(
            "POST",
            "/api/v1/guests/bob-vm/explode",
            Auth::Token(&bob),
            None,
        )
        .await;
    assert_error(&r, 404, "not_found");
    assert_eq!(r.json["field"], "action");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_and_refusals_are_audited() {
    let mut bob = String::new();
    let env = start(
        Limits::default(),
        vec![guest("web", Some("bob")), guest("db", None)],
        |db| {
            add_user(db, "bob@pam", None, &[]);
            bob = add_token(db, "bob@pam", "t", false, 0);
        },
    );
    let c = &env.client;
    c.login("mallory@kapsel", "guess", None).await;
    c.req("POST", "/api/v1/guests/web/start", Auth::Token(&bob), None)
        .await;
    c.req("POST", "/api/v1/guests/db/start", Auth::Token(&bob), None)
        .await;
    c.req("GET", "/api/v1/guests", Auth::Token(&bob), None)
        .await;
    c.req(
        "POST",
        "/api/v1/guests/web/stop",
        Auth::Token("bob@pam!t=bad"),
        None,
    )
    .await;
    let lines = audit_lines(&env);
    let find = |action: &str, result: &str| {
        lines
            .iter()
            .find(|l| l["action"] == action && l["result"] == result)
            .unwrap_or_else(|| panic!("no {action} {result} in {lines:#?}"))
            .clone()
    };
    let l = find("POST /api/v1/access/ticket", "unauthenticated");
    assert_eq!(
        (
            l["user"].as_str(),
            l["address"].as_str(),
            l["status"].as_u64()
        ),
        (Some("mallory@kapsel"), Some("127.0.0.1"), Some(401))
    );
    let l = find("POST /api/v1/guests/web/start", "ok");
    assert_eq!(
        (l["user"].as_str(), l["token"].as_str()),
        (Some("bob@pam"), Some("t"))
    );
    assert!(l["time"].as_str().unwrap().ends_with('Z'));
    let l = find("POST /api/v1/guests/db/start", "forbidden");
    assert_eq!(l["status"], 403);
    find("POST /api/v1/guests/web/stop", "unauthenticated");
    assert!(
        !lines.iter().any(|l| l["action"] == "GET /api/v1/guests"),
        "reads are not audited"
    );
    let meta = std::fs::metadata(env.state.join("audit.log")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(meta.mode() & 0o777, 0o600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_json_4xx() {
    let mut admin = String::new();
    let env = start(Limits::default(), vec![], |db| {
        add_user(db, "admin@kapsel", None, &[("/", "Administrator")]);
        admin = add_token(db, "admin@kapsel", "t", false, 0);
    });
    let c = &env.client;
    let raw = |body: &[u8]| Some(body.to_vec());
    let a = Auth::Token(&admin);
    let lo = IpAddr::from([127, 0, 0, 1]);
    let r = c
        .req_from(lo, "POST", "/api/v1/access/users", a, raw(b"{not json"))
        .await;
    assert_error(&r, 400, "invalid_body");
    let r = c
        .req_from(
            lo,
            "POST",
            "/api/v1/access/users",
            a,
            raw(br#"{"userid": "x@kapsel", "pasword": "12345678"}"#),
        )
        .await;
    assert_error(&r, 400, "invalid_body");
    assert_eq!(r.json["field"], "pasword");
    let r = c
        .req_from(
            lo,
            "POST",
            "/api/v1/access/users",
            a,
            raw(br#"{"userid": 5}"#),
        )
        .await;
    assert_eq!(r.json["field"], "userid", "{r:?}");
    let r = c
        .req(
            "POST",
            "/api/v1/access/users",
            a,
            Some(json!({"userid": "bad name@kapsel", "password": "12345678"})),
        )
        .await;
    assert_error(&r, 400, "invalid_field");
    assert_eq!(r.json["field"], "userid");
    let r = c
        .req(
            "POST",
            "/api/v1/access/users",
            a,
            Some(json!({"userid": "x@kapsel", "password": "short"})),
        )
        .await;
    assert_eq!(r.json["field"], "password");
    let r = c
        .req(
            "PUT",
            "/api/v1/access/acl",
            a,
            Some(json!({"path": "/vms/100", "subject": "admin@kapsel", "role": "GuestUser"})),
        )
        .await;
    assert_eq!((r.status, r.json["field"].as_str()), (400, Some("path")));
    let r = c
        .req(
            "POST",
            "/api/v1/access/roles",
            a,
            Some(json!({"role": "R", "privs": ["Guest.Audit", "VM.Allocate"]})),
        )
        .await;
    assert_eq!(
        (r.status, r.json["field"].as_str()),
        (400, Some("privs[1]"))
    );
    let big = vec![b' '; 70 * 1024];
    let r = c
        .req_from(lo, "POST", "/api/v1/access/users", a, Some(big))
        .await;
    assert_error(&r, 413, "too_large");
    assert_error(
        &c.req("GET", "/api/v1/nope", a, None).await,
        404,
        "not_found",
    );
    assert_error(
        &c.req("GET", "/elsewhere", Auth::None, None).await,
        404,
        "not_found",
    );
    assert_error(
        &c.req("DELETE", "/api/v1/host", a, None).await,
        405,
        "method_not_allowed",
    );
    assert_error(
        &c.req(
            "GET",
            "/api/v1/access/acl/explain?path=/&privilege=Nope",
            a,
            None,
        )
        .await,
        400,
        "invalid_field",
    );
    assert_error(
        &c.req("GET", "/api/v1/access/acl/explain", a, None).await,
        400,
        "invalid_query",
    );
    assert_error(
        &c.req("GET", "/api/v1/audit?limit=-1", a, None).await,
        400,
        "invalid_query",
    );
    assert_error(
        &c.req("GET", "/api/v1/access/whoami", Auth::None, None)
            .await,
        401,
        "unauthenticated",
    );
    // The OpenAPI document needs no credentials and is 3.1.
    let r = c.req("GET", "/api/v1/openapi.json", Auth::None, None).await;
    assert!(r.json["openapi"].as_str().unwrap().starts_with("3.1"));
    // A huge header: refused by hyper before any handler (431 or a close).
    let tls = c.tls_from(lo).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::builder()
        .uri("/api/v1/access/whoami")
        .header("host", "localhost")
        .header("x-big", "a".repeat(64 * 1024))
        .body(Full::new(Bytes::new()))
        .unwrap();
    if let Ok(resp) = send.send_request(req).await {
        assert_eq!(resp.status(), 431);
    }
    // The server still serves.
    assert_eq!(
        c.req("GET", "/api/v1/access/whoami", a, None).await.status,
        200
    );
}

/// Slow and half-open clients use up their own share, time out, and never
/// hold up another client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_half_open_clients_do_not_block_others() {
    let limits = Limits {
        max_per_address: 6,
        tls_handshake: Duration::from_secs(2),
        header_read: Duration::from_secs(2),
        idle: Duration::from_secs(3),
        ..Limits::default()
    };
    let mut token = String::new();
    let env = start(limits, vec![], |db| {
        add_user(db, "u@kapsel", None, &[("/", "Auditor")]);
        token = add_token(db, "u@kapsel", "t", false, 0);
    });
    let c = &env.client;
    let attacker = IpAddr::from([127, 0, 0, 1]);
    let mut held = Vec::new();
    // Two half-open TCP connections (no TLS hello at all).
    for _ in 0..2 {
        held.push(Held::Tcp(connect_from(attacker, c.addr).await.unwrap()));
    }
    // Two with half a TLS ClientHello.
    for _ in 0..2 {
        let mut s = connect_from(attacker, c.addr).await.unwrap();
        s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
            .await
            .unwrap();
        held.push(Held::Tcp(s));
    }
    // Two slowloris clients: TLS done, headers never finished.
    for _ in 0..2 {
        let mut s = c.tls_from(attacker).await.unwrap();
        s.write_all(b"GET /api/v1/access/whoami HTTP/1.1\r\nhost: x\r\nx-slow: ")
            .await
            .unwrap();
        s.flush().await.unwrap();
        held.push(Held::Tls(Box::new(s)));
    }
    // The attacker's address is at its cap: another connection is closed at once.
    let extra = c.tls_from(attacker).await;
    assert!(
        extra.is_err(),
        "a 7th connection from the same address must be refused"
    );
    // Someone else is served at once.
    let t0 = Instant::now();
    let r = c
        .req_from(
            IpAddr::from([127, 0, 0, 2]),
            "GET",
            "/api/v1/access/whoami",
            Auth::Token(&token),
            None,
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(
        t0.elapsed() < Duration::from_millis(1500),
        "took {:?}",
        t0.elapsed()
    );
    // The held connections are closed by the server within the timeouts.
    let deadline = Duration::from_secs(6);
    for h in held.iter_mut() {
        let closed = tokio::time::timeout(deadline, h.read_to_end()).await;
        assert!(closed.is_ok(), "a slow connection outlived its timeout");
    }
    // And the attacker's address may connect again.
    let r = c
        .req("GET", "/api/v1/access/whoami", Auth::Token(&token), None)
        .await;
    assert_eq!(r.status, 200);
    // An idle keep-alive connection is closed after the idle timeout.
    let tls = c.tls_from(attacker).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let req = hyper::Request::builder()
        .uri("/api/v1/access/whoami")
        .header("host", "localhost")
        .header("authorization", format!("Bearer {token}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(send.send_request(req).await.unwrap().status(), 200);
    let t0 = Instant::now();
    tokio::time::timeout(Duration::from_secs(8), conn)
        .await
        .expect("idle connection closed")
        .ok();
    assert!(
        t0.elapsed() >= Duration::from_secs(2),
        "closed too early: {:?}",
        t0.elapsed()
    );
}

enum Held {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Held {
    async fn read_to_end(&mut self) {
        let mut buf = Vec::new();
        let _ = match self {
            Held::Tcp(s) => s.read_to_end(&mut buf).await,
            Held::Tls(s) => s.read_to_end(&mut buf).await,
        };
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_certificate_is_kept_and_pinned() {
    let env = start(Limits::default(), vec![], |_| {});
    let fp = env.server.fingerprint().to_string();
    assert_eq!(fp.len(), 95);
    let crt = env.state.join("tls.crt");
    let key = env.state.join("tls.key");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&key).unwrap().mode() & 0o777, 0o600);
    // A client pinning another fingerprint refuses the server.
    let wrong = Client::new(
        env.client.addr,
        &"00:".repeat(31).to_string().replace(':', ""),
    );
    assert!(wrong.tls_from(IpAddr::from([127, 0, 0, 1])).await.is_err());
    // A restart keeps the certificate.
    let state = env.state.clone();
    let Env { server, _dir, .. } = env;
    server.shutdown();
    let config = ServerConfig::new("127.0.0.1:0".parse().unwrap(), state.clone());
    let again = ApiServer::start(config, Arc::new(FakeGuests(Mutex::new(vec![])))).unwrap();
    assert_eq!(again.fingerprint(), fp);
    assert!(crt.exists());
    drop(_dir);
}

/// Realm `pam`: a host user, checked by PAM service `kapsel`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pam_realm_checks_the_hosts_password() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("SKIP: making a host user for PAM needs root");
        return;
    }
    let user = "kapsel-api-pamtest";
    let _ = std::process::Command::new("useradd")
        .args([
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            user,
        ])
        .status();
    let mut child = std::process::Command::new("chpasswd")
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all_sync(format!("{user}:pam-test-Passw0rd\n").as_bytes());
    assert!(child.wait().unwrap().success());
    let userid = format!("{user}@pam");
    let env = start(Limits::default(), vec![], |db| {
        add_user(db, &userid, None, &[])
    });
    let r = env.client.login(&userid, "pam-test-Passw0rd", None).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_error(
        &env.client.login(&userid, "wrong", None).await,
        401,
        "unauthenticated",
    );
    // A host user not added to Kapsel cannot log in.
    assert_error(
        &env.client.login("kapsel-api-notadded@pam", "x", None).await,
        401,
        "unauthenticated",
    );
    let _ = std::process::Command::new("userdel").arg(user).status();
}

trait WriteAllSync {
    fn write_all_sync(self, b: &[u8]);
}

impl WriteAllSync for std::process::ChildStdin {
    fn write_all_sync(mut self, b: &[u8]) {
        use std::io::Write;
        self.write_all(b).unwrap();
    }
}

/// User.Modify is not a way to become someone more privileged: a UserAdmin
/// cannot set an Administrator's password, make them a token, or delete
/// them, nor take over a host user's vm.conf guests; it can manage a user
/// holding no more than itself. Grants cannot exceed the granter either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managing_users_and_acls_cannot_escalate() {
    let mut ua = String::new();
    let env = start(
        Limits::default(),
        vec![guest("bob-vm", Some("bob"))],
        |db| {
            add_user(db, "useradmin@kapsel", None, &[("/access", "UserAdmin")]);
            ua = add_token(db, "useradmin@kapsel", "t", false, 0);
            add_user(
                db,
                "boss@kapsel",
                Some("boss-password"),
                &[("/", "Administrator")],
            );
            add_user(db, "bob@pam", None, &[]);
            add_user(db, "plain@kapsel", Some("plain-password"), &[]);
        },
    );
    let c = &env.client;
    let a = Auth::Token(&ua);
    // The token may not change passwords at all; use a session.
    env.server
        .update_store(|db| {
            db.users.get_mut("useradmin@kapsel").unwrap().password =
                Some(auth::hash_password("ua-password").unwrap());
            Ok::<_, StoreError>(())
        })
        .unwrap();
    let s = c.login("useradmin@kapsel", "ua-password", None).await;
    let (t, x) = (
        s.json["ticket"].as_str().unwrap().to_string(),
        s.json["csrf_token"].as_str().unwrap().to_string(),
    );
    let me = Auth::Cookie(&t, Some(&x));
    let pw = |u: &str| Some(json!({"userid": u, "password": "taken-over-1"}));
    assert_error(
        &c.req("PUT", "/api/v1/access/password", me, pw("boss@kapsel"))
            .await,
        403,
        "forbidden",
    );
    assert_error(
        &c.req(
            "POST",
            "/api/v1/access/users/boss@kapsel/tokens",
            me,
            Some(json!({"name": "x"})),
        )
        .await,
        403,
        "forbidden",
    );
    assert_error(
        &c.req("DELETE", "/api/v1/access/users/boss@kapsel", a, None)
            .await,
        403,
        "forbidden",
    );
    assert_error(
        &c.req(
            "PUT",
            "/api/v1/access/users/boss@kapsel",
            a,
            Some(json!({"enable": false})),
        )
        .await,
        403,
        "forbidden",
    );
    let r = c
        .req(
            "POST",
            "/api/v1/access/users/bob@pam/tokens",
            me,
            Some(json!({"name": "x"})),
        )
        .await;
    assert_error(&r, 403, "forbidden");
    assert!(
        r.json["message"]
            .as_str()
            .unwrap()
            .contains("/guests/bob-vm"),
        "{r:?}"
    );
    // A user holding nothing more: fine.
    assert_eq!(
        c.req("PUT", "/api/v1/access/password", me, pw("plain@kapsel"))
            .await
            .status,
        204
    );
    let r = c
        .req(
            "POST",
            "/api/v1/access/users/plain@kapsel/tokens",
            me,
            Some(json!({"name": "x"})),
        )
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    let value = r.json["value"].as_str().unwrap().to_string();
    assert_eq!(
        c.req("GET", "/api/v1/access/whoami", Auth::Token(&value), None)
            .await
            .json["userid"],
        "plain@kapsel"
    );
    // ACL grants: UserAdmin holds Permissions.Modify on /access but cannot
    // grant Administrator there (more than it holds), nor anything on /.
    let grant = |path: &str, role: &str| {
        Some(json!({"path": path, "subject": "plain@kapsel", "role": role}))
    };
    assert_error(
        &c.req(
            "PUT",
            "/api/v1/access/acl",
            a,
            grant("/access", "Administrator"),
        )
        .await,
        403,
        "forbidden",
    );
    assert_error(
        &c.req("PUT", "/api/v1/access/acl", a, grant("/", "Auditor"))
            .await,
        403,
        "forbidden",
    );
    assert_eq!(
        c.req(
            "PUT",
            "/api/v1/access/acl",
            a,
            grant("/access", "UserAdmin")
        )
        .await
        .status,
        200
    );
    // root@pam is the host's.
    assert_error(
        &c.req("PUT", "/api/v1/access/password", me, pw("root@pam"))
            .await,
        400,
        "invalid_field",
    );
    assert_error(
        &c.req("DELETE", "/api/v1/access/users/root@pam", a, None)
            .await,
        403,
        "forbidden",
    );
}
