//! The endpoints under `/api/v1`, the authentication and audit middleware,
//! and the JSON body extractor that turns bad input into `{code, message,
//! field}`.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::Bytes;

use crate::error::ErrorWord;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::header::{AUTHORIZATION, COOKIE, RETRY_AFTER, SET_COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::access::{
    check_path, AclEntry, Explanation, GuestFacts, Pool, Privilege, Privs, Quota, Usage, ROOT_USER,
};
use crate::audit::{AuditEntry, AuditLog};
use crate::auth::{self, Caller, Limiter, Refusal, TfaOutcome};
use crate::error::ApiError;
use crate::guests::{GuestAction, GuestError, GuestSummary, Guests};
use crate::store::{parse_userid, Db, Realm, RealmSettings, Store, StoreError, TfaState, User};
use crate::{ticket, totp, util};

/// Shared by every request.
pub(crate) struct AppState {
    pub store: Mutex<Store>,
    pub audit: Arc<AuditLog>,
    pub guests: Arc<dyn Guests>,
    pub limiter: Mutex<Limiter>,
    /// Bounds concurrent password checks (argon2 and PAM are costly).
    pub hash_slots: tokio::sync::Semaphore,
    pub pam_service: String,
    pub body_timeout: Duration,
    pub request_timeout: Duration,
}

type St = Arc<AppState>;

/// The peer's address, set per connection by the server.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Peer(pub SocketAddr);

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::error!("api state: {e}");
        ApiError::internal(format!("cannot write the API state: {e}"))
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Run blocking work (the daemon's seam, PAM, argon2) off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| ApiError::internal("a worker thread failed; see kapseld's log"))
}

// ---------------------------------------------------------------- extractors

/// An authenticated caller; 401 without credentials.
pub(crate) struct Authed(pub Caller);

impl<S: Send + Sync> FromRequestParts<S> for Authed {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .map(Authed)
            .ok_or_else(|| {
                ApiError::unauthenticated(
                    "this call needs credentials: log in with POST /api/v1/access/ticket (cookie KapselAuth) or send `Authorization: Bearer USER@REALM!TOKEN=SECRET`",
                )
            })
    }
}

/// A JSON body, read within the body limit and timeout; errors name the field.
pub(crate) struct Body_<T>(pub T);

impl<T: DeserializeOwned> FromRequest<St> for Body_<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, st: &St) -> Result<Self, ApiError> {
        let read = Bytes::from_request(req, st);
        let bytes = match tokio::time::timeout(st.body_timeout, read).await {
            Err(_) => {
                return Err(ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "timeout",
                    format!(
                        "the request body did not arrive within {} s",
                        st.body_timeout.as_secs()
                    ),
                ))
            }
            Ok(Err(rej)) => {
                let status = rej.status();
                if status == StatusCode::PAYLOAD_TOO_LARGE {
                    return Err(ApiError::new(
                        status,
                        "too_large",
                        "the request body is larger than the API accepts (64 KiB)",
                    ));
                }
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_body",
                    "the request body could not be read",
                ));
            }
            Ok(Ok(b)) => b,
        };
        let de = &mut serde_json::Deserializer::from_slice(&bytes);
        match serde_path_to_error::deserialize::<_, T>(de) {
            Ok(v) => Ok(Body_(v)),
            Err(e) => {
                let path = e.path().to_string();
                let inner = e.into_inner();
                let mut msg = inner.to_string();
                // serde names a missing or unknown field in its message.
                let field = if path == "." || path.is_empty() {
                    msg.split('`').nth(1).map(str::to_string)
                } else {
                    Some(path)
                };
                if inner.is_syntax() || inner.is_eof() {
                    msg = format!("the request body is not valid JSON: {msg}");
                }
                let mut err = ApiError::new(StatusCode::BAD_REQUEST, "invalid_body", msg);
                err.field = field;
                Err(err)
            }
        }
    }
}

/// Query parameters; errors name the parameter.
pub(crate) struct Q<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Q<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, s: &S) -> Result<Self, ApiError> {
        match Query::<T>::from_request_parts(parts, s).await {
            Ok(Query(v)) => Ok(Q(v)),
            Err(e) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                e.body_text(),
            )),
        }
    }
}

/// Path parameters; errors as JSON.
pub(crate) struct P<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for P<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, s: &S) -> Result<Self, ApiError> {
        match Path::<T>::from_request_parts(parts, s).await {
            Ok(Path(v)) => Ok(P(v)),
            Err(e) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_path",
                e.body_text(),
            )),
        }
    }
}

// ---------------------------------------------------------------- middleware

fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == name).then_some(v)
        })
}

/// Check the request's credentials: `Ok(None)` when there are none.
fn authenticate(
    st: &AppState,
    headers: &HeaderMap,
    method: &Method,
    addr: IpAddr,
) -> Result<Option<Caller>, ApiError> {
    let now = util::now();
    let now_ms = util::now_ms();
    if let Some(value) = headers.get(AUTHORIZATION) {
        let value = value.to_str().unwrap_or("");
        let Some(tok) = value.strip_prefix("Bearer ") else {
            return Err(ApiError::unauthenticated(
                "the Authorization header must be `Bearer USER@REALM!TOKEN=SECRET`",
            ));
        };
        let refused = || {
            lock(&st.limiter).failed(addr, None, now);
            ApiError::unauthenticated(
                "the API token is unknown, expired, revoked or its secret is wrong",
            )
        };
        if let Err(r) = lock(&st.limiter).admit(addr, None, now) {
            return Err(refusal(r));
        }
        let Some((userid, name, secret)) = auth::parse_token(tok.trim()) else {
            return Err(refused());
        };
        let store = lock(&st.store);
        let Some(user) = store.db().users.get(userid) else {
            return Err(refused());
        };
        let Some(t) = user.tokens.get(name) else {
            return Err(refused());
        };
        if !user.active(now) || !auth::token_valid(t, secret, now) {
            drop(store);
            return Err(refused());
        }
        return Ok(Some(Caller {
            userid: userid.to_string(),
            token: Some(name.to_string()),
            privsep: t.privsep,
            addr,
            cookie: false,
        }));
    }
    let Some(t) = cookie_value(headers, ticket::COOKIE) else {
        return Ok(None);
    };
    let store = lock(&st.store);
    let bad =
        || ApiError::unauthenticated("the session ticket is invalid or expired: log in again");
    let (userid, issued) = ticket::check(store.key(), t, now_ms).ok_or_else(bad)?;
    let ok = match store.db().users.get(&userid) {
        Some(u) => u.active(now) && issued > u.tickets_not_before_ms,
        None => userid == ROOT_USER,
    };
    if !ok {
        return Err(bad());
    }
    let safe = matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
    if !safe {
        let csrf = headers
            .get(ticket::CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !ticket::check_csrf(store.key(), &userid, csrf, now_ms) {
            return Err(ApiError::forbidden(format!(
                "a {method} with a session cookie needs the header {}: send the csrf_token the login answered",
                ticket::CSRF_HEADER
            ))
            .with_code("csrf"));
        }
    }
    Ok(Some(Caller {
        userid,
        token: None,
        privsep: false,
        addr,
        cookie: true,
    }))
}

impl ApiError {
    fn with_code(mut self, code: &'static str) -> Self {
        self.code = code;
        self
    }
}

fn refusal(r: Refusal) -> ApiError {
    let (secs, msg) = match r {
        Refusal::Address(s) => (s, format!("too many failed logins from this address; retry in {s} s")),
        Refusal::User(s) => (
            s,
            format!("this user is locked after repeated failed logins; retry in {s} s, or an administrator unlocks it (POST /api/v1/access/users/USER/unlock)"),
        ),
    };
    let mut e = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "locked", msg);
    e.field = Some(format!("retry_after={secs}"));
    e
}

/// Authenticate, bound the request's time, and audit every call that
/// changes something.
pub(crate) async fn middleware(State(st): State<St>, mut req: Request, next: Next) -> Response {
    let addr = req
        .extensions()
        .get::<Peer>()
        .map(|p| p.0.ip())
        .unwrap_or(IpAddr::from([0, 0, 0, 0]));
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let caller = match authenticate(&st, req.headers(), &method, addr) {
        Ok(c) => c,
        Err(e) => {
            let resp = e.clone().into_response();
            if method != Method::GET {
                audit(&st, None, addr, &method, &path, resp.status(), e.code).await;
            }
            return with_retry_after(resp, &e);
        }
    };
    if let Some(c) = &caller {
        req.extensions_mut().insert(c.clone());
    }
    let resp = match tokio::time::timeout(st.request_timeout, next.run(req)).await {
        Ok(r) => r,
        Err(_) => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "timeout",
            format!(
                "the request took longer than {} s",
                st.request_timeout.as_secs()
            ),
        )
        .into_response(),
    };
    let is_login = path == "/api/v1/access/ticket";
    if method != Method::GET && method != Method::HEAD && !is_login {
        let word = resp.extensions().get::<ErrorWord>().map_or("ok", |w| w.0);
        audit(
            &st,
            caller.as_ref(),
            addr,
            &method,
            &path,
            resp.status(),
            word,
        )
        .await;
    }
    resp
}

fn with_retry_after(mut resp: Response, e: &ApiError) -> Response {
    if let Some(secs) = e
        .field
        .as_deref()
        .and_then(|f| f.strip_prefix("retry_after="))
    {
        if let Ok(v) = HeaderValue::from_str(secs) {
            resp.headers_mut().insert(RETRY_AFTER, v);
        }
    }
    resp
}

async fn audit(
    st: &St,
    caller: Option<&Caller>,
    addr: IpAddr,
    method: &Method,
    path: &str,
    status: StatusCode,
    word: &str,
) {
    audit_as(
        st,
        caller.map(|c| c.userid.clone()),
        caller.and_then(|c| c.token.clone()),
        addr,
        format!("{method} {path}"),
        status,
        word,
    )
    .await;
}

async fn audit_as(
    st: &St,
    user: Option<String>,
    token: Option<String>,
    addr: IpAddr,
    action: String,
    status: StatusCode,
    word: &str,
) {
    let entry = AuditEntry {
        time: util::rfc3339(util::now()),
        user,
        token,
        address: addr.to_string(),
        action,
        status: status.as_u16(),
        result: if status.is_success() {
            "ok".into()
        } else {
            word.to_string()
        },
    };
    let log = st.audit.clone();
    let r = blocking(move || log.write(&entry)).await;
    if let Ok(Err(e)) = r {
        tracing::error!("audit log {}: {e}", st.audit.path().display());
    }
}

// ---------------------------------------------------------------- checks

fn privs_on(db: &Db, c: &Caller, path: &str, facts: &GuestFacts) -> Privs {
    db.access.privileges(&c.subject(), c.privsep, path, facts)
}

fn require(db: &Db, c: &Caller, path: &str, p: Privilege) -> Result<(), ApiError> {
    require_facts(db, c, path, p, &GuestFacts::default())
}

fn require_facts(
    db: &Db,
    c: &Caller,
    path: &str,
    p: Privilege,
    facts: &GuestFacts,
) -> Result<(), ApiError> {
    if privs_on(db, c, path, facts).has(p) {
        Ok(())
    } else {
        Err(ApiError::forbidden(format!(
            "{} lacks {p} on {path}; `GET /api/v1/access/acl/explain?userid={}&path={path}&privilege={p}` says why",
            c.subject(),
            c.subject()
        )))
    }
}

/// Calls only a person may make: not with an API token (Proxmox's rule for
/// passwords, TFA and new tokens).
fn not_token(c: &Caller) -> Result<(), ApiError> {
    match &c.token {
        None => Ok(()),
        Some(_) => Err(ApiError::forbidden(
            "API tokens cannot change passwords, second factors or tokens: log in with a password",
        )),
    }
}

/// The caller itself, or one holding `p` on /access who may manage the
/// user (see [`may_manage`]).
async fn self_or(st: &St, c: &Caller, userid: &str, p: Privilege) -> Result<(), ApiError> {
    if c.userid == userid {
        return Ok(());
    }
    require(lock(&st.store).db(), c, "/access", p)?;
    may_manage(st, c, userid).await
}

/// Whether the caller may act for `target` (set its password, TFA, tokens,
/// disable or delete it): only if the caller holds at least every privilege
/// `target` holds, on every path where `target` (or its token) has an ACL
/// entry and on every guest it owns in vm.conf. Else User.Modify would be a
/// way to become any Administrator: set their password, or make them a token.
async fn may_manage(st: &St, c: &Caller, target: &str) -> Result<(), ApiError> {
    if target == ROOT_USER {
        return Err(ApiError::forbidden(
            "root@pam is the host's root: it is managed on the host, not through the API",
        ));
    }
    let owned: Vec<GuestSummary> = match target.strip_suffix("@pam") {
        Some(name) => all_guests(st)
            .await?
            .into_iter()
            .filter(|g| g.owner.as_deref() == Some(name))
            .collect(),
        None => Vec::new(),
    };
    let store = lock(&st.store);
    let db = store.db();
    let prefix = format!("{target}!");
    let mut paths: Vec<(String, GuestFacts)> = db
        .access
        .acl
        .iter()
        .filter(|e| e.subject == target || e.subject.starts_with(&prefix))
        .map(|e| (e.path.clone(), GuestFacts::default()))
        .collect();
    paths.extend(owned.iter().map(|g| {
        (
            format!("/guests/{}", g.name),
            guest_facts(db, Some(g), &g.name),
        )
    }));
    for (path, facts) in paths {
        let theirs = db.access.privileges(target, false, &path, &facts);
        let mine = privs_on(db, c, &path, &facts);
        if !mine.contains(theirs) {
            return Err(ApiError::forbidden(format!(
                "{target} holds privileges on {path} that {} does not hold: only someone holding at least as much may manage {target}",
                c.subject()
            )));
        }
    }
    Ok(())
}

fn guest_facts(db: &Db, g: Option<&GuestSummary>, name: &str) -> GuestFacts {
    GuestFacts {
        owner: g.and_then(|g| g.owner.clone()),
        pool: db
            .access
            .pools
            .iter()
            .find(|(_, p)| p.members.contains(name))
            .map(|(n, _)| n.clone()),
    }
}

fn check_userid(field: &str, userid: &str) -> Result<Realm, ApiError> {
    parse_userid(userid).map(|(_, r)| r).ok_or_else(|| {
        ApiError::invalid(
            field,
            format!("{userid:?} is not a user id: use NAME@kapsel or NAME@pam (NAME: letters, digits, '.', '_', '-')"),
        )
    })
}

fn user_exists(db: &Db, userid: &str) -> Result<(), ApiError> {
    if db.users.contains_key(userid) || userid == ROOT_USER {
        Ok(())
    } else {
        Err(ApiError::not_found(format!(
            "no user {userid}: add it with POST /api/v1/access/users"
        )))
    }
}

// ---------------------------------------------------------------- login

/// `POST /access/ticket` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct LoginRequest {
    /// `NAME@kapsel` or `NAME@pam`.
    username: String,
    /// The password.
    password: String,
    /// A TOTP code or a recovery code, when the user has a second factor.
    #[serde(default)]
    otp: Option<String>,
}

/// A session.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct LoginReply {
    /// The user id.
    username: String,
    /// The ticket (also set as cookie `KapselAuth`), good for 2 hours.
    ticket: String,
    /// Send as header `CSRFPreventionToken` on every call but GET with the cookie.
    csrf_token: String,
}

#[utoipa::path(post, path = "/api/v1/access/ticket", tag = "access", request_body = LoginRequest,
    responses((status = 200, body = LoginReply), (status = 401, body = crate::error::ErrorBody), (status = 429, body = crate::error::ErrorBody)))]
pub(crate) async fn login(
    State(st): State<St>,
    peer: Option<axum::Extension<Peer>>,
    Body_(req): Body_<LoginRequest>,
) -> Response {
    let addr = peer.map_or(IpAddr::from([0, 0, 0, 0]), |p| p.0 .0.ip());
    let userid = req.username.clone();
    let r = login_inner(&st, addr, req).await;
    let (status, word) = match &r {
        Ok(_) => (StatusCode::OK, "ok"),
        Err(e) => (e.status, e.code),
    };
    audit_as(
        &st,
        Some(userid.chars().take(128).collect()),
        None,
        addr,
        "POST /api/v1/access/ticket".into(),
        status,
        word,
    )
    .await;
    match r {
        Ok(reply) => {
            let cookie = format!(
                "{}={}; Path=/api; Secure; HttpOnly; SameSite=Strict; Max-Age={}",
                ticket::COOKIE,
                reply.ticket,
                ticket::TICKET_LIFETIME_MS / 1000
            );
            let mut resp = Json(reply).into_response();
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                resp.headers_mut().insert(SET_COOKIE, v);
            }
            resp
        }
        Err(e) => {
            let resp = e.clone().into_response();
            with_retry_after(resp, &e)
        }
    }
}

async fn login_inner(st: &St, addr: IpAddr, req: LoginRequest) -> Result<LoginReply, ApiError> {
    let now = util::now();
    let failed = || {
        ApiError::unauthenticated(
            "login failed: wrong user name or password, or the user is disabled",
        )
    };
    if req.password.len() > auth::MAX_PASSWORD {
        return Err(ApiError::invalid(
            "password",
            format!("longer than {} bytes", auth::MAX_PASSWORD),
        ));
    }
    let parsed = parse_userid(&req.username).map(|(n, r)| (n.to_string(), r));
    lock(&st.limiter)
        .admit(addr, parsed.as_ref().map(|_| req.username.as_str()), now)
        .map_err(refusal)?;
    // Look the user up; an unknown user costs the same time as a known one.
    let (hash, realm, active) = {
        let store = lock(&st.store);
        match (&parsed, store.db().users.get(&req.username)) {
            (Some((_, realm)), Some(u)) => (u.password.clone(), Some(*realm), u.active(now)),
            (Some((_, Realm::Pam)), None) if req.username == ROOT_USER => {
                (None, Some(Realm::Pam), true)
            }
            _ => (None, None, false),
        }
    };
    let permit = st
        .hash_slots
        .acquire()
        .await
        .map_err(|_| ApiError::internal("the server is shutting down"))?;
    let password = req.password.clone();
    let pam_service = st.pam_service.clone();
    let name = parsed.as_ref().map(|(n, _)| n.clone()).unwrap_or_default();
    let ok = blocking(move || match realm {
        Some(Realm::Kapsel) => match hash {
            Some(h) => auth::verify_password(&h, &password),
            None => {
                auth::verify_password(auth::dummy_hash(), &password);
                false
            }
        },
        Some(Realm::Pam) => match auth::pam_authenticate(&pam_service, &name, &password) {
            Ok(()) => true,
            Err(e) => {
                tracing::info!("PAM refused {name}: {e}");
                false
            }
        },
        None => {
            auth::verify_password(auth::dummy_hash(), &password);
            false
        }
    })
    .await?;
    drop(permit);
    if !ok || !active {
        let known = realm.is_some();
        lock(&st.limiter).failed(addr, known.then_some(req.username.as_str()), now);
        return Err(failed());
    }
    // Second factor.
    let userid = req.username.clone();
    let need = {
        let store = lock(&st.store);
        let db = store.db();
        let realm_requires = realm
            .map(|r| db.realms.get(r.name()).is_some_and(|s| s.require_tfa))
            .unwrap_or(false);
        db.users
            .get(&userid)
            .map(|u| (auth::tfa_required(u, realm_requires), u.tfa.is_some()))
            .unwrap_or((realm_requires, false))
    };
    if need.0 {
        if !need.1 {
            return Err(ApiError::forbidden(format!(
                "{userid} must log in with a second factor but has none: an administrator adds TOTP with POST /api/v1/access/tfa/{userid}"
            ))
            .with_code("tfa_not_configured"));
        }
        let Some(code) = req.otp.as_deref() else {
            return Err(ApiError::unauthenticated(format!(
                "{userid} has a second factor: send the TOTP code (or a recovery code) as `otp`"
            ))
            .with_code("tfa_required")
            .field("otp"));
        };
        if code.len() > 64 {
            return Err(ApiError::invalid("otp", "longer than 64 characters"));
        }
        let outcome = lock(&st.store).update(|db| {
            let tfa = db.users.get_mut(&userid).and_then(|u| u.tfa.as_mut());
            Ok::<_, ApiError>(match tfa {
                Some(t) => auth::check_second_factor(t, code, now),
                None => TfaOutcome::Wrong,
            })
        })?;
        match outcome {
            TfaOutcome::Ok => {}
            TfaOutcome::Wrong => {
                lock(&st.limiter).failed(addr, None, now);
                return Err(ApiError::unauthenticated("the second factor is wrong")
                    .with_code("tfa_failed")
                    .field("otp"));
            }
            TfaOutcome::Replayed => {
                return Err(ApiError::unauthenticated(
                    "this TOTP code was already used: wait for the next one",
                )
                .with_code("tfa_replayed")
                .field("otp"));
            }
            TfaOutcome::Locked(until) => {
                return Err(ApiError::forbidden(format!(
                    "second factors of {userid} are locked after repeated wrong codes until {}; an administrator unlocks with POST /api/v1/access/users/{userid}/unlock",
                    util::rfc3339(until)
                ))
                .with_code("tfa_locked"));
            }
        }
    }
    lock(&st.limiter).succeeded(&userid);
    let now_ms = util::now_ms();
    let store = lock(&st.store);
    Ok(LoginReply {
        ticket: ticket::issue(store.key(), &userid, now_ms),
        csrf_token: ticket::csrf_token(store.key(), &userid, now_ms),
        username: userid,
    })
}

#[utoipa::path(post, path = "/api/v1/access/logout", tag = "access", responses((status = 204), (status = 401, body = crate::error::ErrorBody)))]
pub(crate) async fn logout(State(st): State<St>, Authed(c): Authed) -> Result<Response, ApiError> {
    if c.token.is_none() {
        let now_ms = util::now_ms();
        lock(&st.store).update(|db| {
            if let Some(u) = db.users.get_mut(&c.userid) {
                u.tickets_not_before_ms = now_ms;
            }
            Ok::<_, ApiError>(())
        })?;
    }
    let mut resp = StatusCode::NO_CONTENT.into_response();
    let clear = format!(
        "{}=; Path=/api; Secure; HttpOnly; SameSite=Strict; Max-Age=0",
        ticket::COOKIE
    );
    if let Ok(v) = HeaderValue::from_str(&clear) {
        resp.headers_mut().insert(SET_COOKIE, v);
    }
    Ok(resp)
}

/// Who the caller is.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct WhoAmI {
    userid: String,
    /// The token's name, when called with a token.
    token: Option<String>,
    /// Whether the token is privilege-separated.
    privsep: bool,
    /// `ticket` or `token`.
    via: String,
    /// Privileges on `/`.
    root_privileges: Vec<String>,
}

#[utoipa::path(get, path = "/api/v1/access/whoami", tag = "access", responses((status = 200, body = WhoAmI), (status = 401, body = crate::error::ErrorBody)))]
pub(crate) async fn whoami(State(st): State<St>, Authed(c): Authed) -> Json<WhoAmI> {
    let store = lock(&st.store);
    Json(WhoAmI {
        root_privileges: privs_on(store.db(), &c, "/", &GuestFacts::default()).names(),
        userid: c.userid.clone(),
        via: if c.token.is_some() { "token" } else { "ticket" }.into(),
        token: c.token.clone(),
        privsep: c.privsep,
    })
}

// ---------------------------------------------------------------- users

/// A user as the API shows it (no secrets).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct UserInfo {
    userid: String,
    enable: bool,
    /// Unix time; 0 never.
    expire: u64,
    comment: String,
    require_tfa: bool,
    /// Whether TOTP is set up.
    tfa: bool,
    /// Token names.
    tokens: Vec<String>,
    /// Whether password logins are locked now.
    locked: bool,
}

fn user_info(st: &AppState, userid: &str, u: &User) -> UserInfo {
    let now = util::now();
    UserInfo {
        userid: userid.to_string(),
        enable: u.enable,
        expire: u.expire,
        comment: u.comment.clone(),
        require_tfa: u.require_tfa,
        tfa: u.tfa.is_some(),
        tokens: u.tokens.keys().cloned().collect(),
        locked: lock(&st.limiter).user_locked(userid, now).is_some()
            || u.tfa.as_ref().is_some_and(|t| t.locked_until > now),
    }
}

#[utoipa::path(get, path = "/api/v1/access/users", tag = "users", responses((status = 200, body = Vec<UserInfo>)))]
pub(crate) async fn users_list(State(st): State<St>, Authed(c): Authed) -> Json<Vec<UserInfo>> {
    let store = lock(&st.store);
    let db = store.db();
    let p = privs_on(db, &c, "/access", &GuestFacts::default());
    let all = p.has(Privilege::SysAudit) || p.has(Privilege::UserModify);
    Json(
        db.users
            .iter()
            .filter(|(id, _)| all || **id == c.userid)
            .map(|(id, u)| user_info(&st, id, u))
            .collect(),
    )
}

/// A new user.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewUser {
    /// `NAME@kapsel` or `NAME@pam` (a host user; PAM checks its password).
    userid: String,
    /// Realm `kapsel` only: at least 8 characters.
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    comment: Option<String>,
    #[serde(default)]
    enable: Option<bool>,
    #[serde(default)]
    expire: Option<u64>,
    #[serde(default)]
    require_tfa: Option<bool>,
}

fn check_password(p: &str) -> Result<(), ApiError> {
    if p.len() < auth::MIN_PASSWORD || p.len() > auth::MAX_PASSWORD {
        return Err(ApiError::invalid(
            "password",
            format!(
                "a password has {} to {} bytes",
                auth::MIN_PASSWORD,
                auth::MAX_PASSWORD
            ),
        ));
    }
    Ok(())
}

fn check_comment(c: &Option<String>) -> Result<(), ApiError> {
    if c.as_ref()
        .is_some_and(|c| c.len() > 256 || c.chars().any(char::is_control))
    {
        return Err(ApiError::invalid(
            "comment",
            "at most 256 bytes, no control characters",
        ));
    }
    Ok(())
}

async fn hash(st: &St, password: String) -> Result<String, ApiError> {
    let _permit = st
        .hash_slots
        .acquire()
        .await
        .map_err(|_| ApiError::internal("the server is shutting down"))?;
    blocking(move || auth::hash_password(&password))
        .await?
        .map_err(|e| ApiError::internal(format!("cannot hash the password: {e}")))
}

#[utoipa::path(post, path = "/api/v1/access/users", tag = "users", request_body = NewUser,
    responses((status = 201, body = UserInfo), (status = 400, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody), (status = 409, body = crate::error::ErrorBody)))]
pub(crate) async fn users_add(
    State(st): State<St>,
    Authed(c): Authed,
    Body_(n): Body_<NewUser>,
) -> Result<Response, ApiError> {
    require(lock(&st.store).db(), &c, "/access", Privilege::UserModify)?;
    let realm = check_userid("userid", &n.userid)?;
    check_comment(&n.comment)?;
    if n.userid == ROOT_USER {
        return Err(ApiError::conflict("root@pam always exists"));
    }
    let hashed = match (realm, n.password) {
        (Realm::Kapsel, Some(p)) => {
            check_password(&p)?;
            Some(hash(&st, p).await?)
        }
        (Realm::Kapsel, None) => {
            return Err(ApiError::invalid(
                "password",
                "a user of realm kapsel needs a password",
            ))
        }
        (Realm::Pam, Some(_)) => {
            return Err(ApiError::invalid(
                "password",
                "a user of realm pam has the host's password: leave password out",
            ))
        }
        (Realm::Pam, None) => None,
    };
    let info = lock(&st.store).update(|db| {
        if db.users.contains_key(&n.userid) {
            return Err(ApiError::conflict(format!(
                "user {} exists already",
                n.userid
            )));
        }
        let mut u = User::new();
        u.password = hashed;
        u.comment = n.comment.unwrap_or_default();
        u.enable = n.enable.unwrap_or(true);
        u.expire = n.expire.unwrap_or(0);
        u.require_tfa = n.require_tfa.unwrap_or(false);
        let info = user_info(&st, &n.userid, &u);
        db.users.insert(n.userid.clone(), u);
        Ok(info)
    })?;
    Ok((StatusCode::CREATED, Json(info)).into_response())
}

#[utoipa::path(get, path = "/api/v1/access/users/{userid}", tag = "users", params(("userid" = String, Path)),
    responses((status = 200, body = UserInfo), (status = 403, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody)))]
pub(crate) async fn users_get(
    State(st): State<St>,
    Authed(c): Authed,
    P(userid): P<String>,
) -> Result<Json<UserInfo>, ApiError> {
    let store = lock(&st.store);
    let db = store.db();
    if c.userid != userid {
        let p = privs_on(db, &c, "/access", &GuestFacts::default());
        if !p.has(Privilege::SysAudit) && !p.has(Privilege::UserModify) {
            return Err(ApiError::forbidden(format!(
                "{} lacks Sys.Audit on /access",
                c.subject()
            )));
        }
    }
    let u = db
        .users
        .get(&userid)
        .ok_or_else(|| ApiError::not_found(format!("no user {userid}")))?;
    Ok(Json(user_info(&st, &userid, u)))
}

/// Changes to a user; absent fields stay.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct UserChange {
    #[serde(default)]
    comment: Option<String>,
    #[serde(default)]
    enable: Option<bool>,
    #[serde(default)]
    expire: Option<u64>,
    #[serde(default)]
    require_tfa: Option<bool>,
}

#[utoipa::path(put, path = "/api/v1/access/users/{userid}", tag = "users", params(("userid" = String, Path)), request_body = UserChange,
    responses((status = 200, body = UserInfo), (status = 403, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody)))]
pub(crate) async fn users_change(
    State(st): State<St>,
    Authed(c): Authed,
    P(userid): P<String>,
    Body_(ch): Body_<UserChange>,
) -> Result<Json<UserInfo>, ApiError> {
    check_comment(&ch.comment)?;
    require(lock(&st.store).db(), &c, "/access", Privilege::UserModify)?;
    may_manage(&st, &c, &userid).await?;
    let mut store = lock(&st.store);
    let info = store.update(|db| {
        let u = db
            .users
            .get_mut(&userid)
            .ok_or_else(|| ApiError::not_found(format!("no user {userid}")))?;
        if let Some(v) = ch.comment {
            u.comment = v;
        }
        if let Some(v) = ch.enable {
            u.enable = v;
        }
        if let Some(v) = ch.expire {
            u.expire = v;
        }
        if let Some(v) = ch.require_tfa {
            u.require_tfa = v;
        }
        Ok::<_, ApiError>(user_info(&st, &userid, u))
    })?;
    Ok(Json(info))
}

#[utoipa::path(delete, path = "/api/v1/access/users/{userid}", tag = "users", params(("userid" = String, Path)),
    responses((status = 204), (status = 403, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody)))]
pub(crate) async fn users_delete(
    State(st): State<St>,
    Authed(c): Authed,
    P(userid): P<String>,
) -> Result<StatusCode, ApiError> {
    require(lock(&st.store).db(), &c, "/access", Privilege::UserModify)?;
    may_manage(&st, &c, &userid).await?;
    let mut store = lock(&st.store);
    store.update(|db| {
        db.users
            .remove(&userid)
            .ok_or_else(|| ApiError::not_found(format!("no user {userid}")))?;
        let token_prefix = format!("{userid}!");
        db.access
            .acl
            .retain(|e| e.subject != userid && !e.subject.starts_with(&token_prefix));
        Ok::<_, ApiError>(())
    })?;
    Ok(StatusCode::NO_CONTENT)
}

/// A new password.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PasswordChange {
    /// The user (yourself, or anyone with User.Modify on /access).
    userid: String,
    /// The new password.
    password: String,
}

#[utoipa::path(put, path = "/api/v1/access/password", tag = "users", request_body = PasswordChange,
    responses((status = 204), (status = 400, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody)))]
pub(crate) async fn password(
    State(st): State<St>,
    Authed(c): Authed,
    Body_(p): Body_<PasswordChange>,
) -> Result<StatusCode, ApiError> {
    not_token(&c)?;
    if check_userid("userid", &p.userid)? != Realm::Kapsel {
        return Err(ApiError::invalid(
            "userid",
            "realm pam passwords are the host's: change them with passwd(1)",
        ));
    }
    self_or(&st, &c, &p.userid, Privilege::UserModify).await?;
    user_exists(lock(&st.store).db(), &p.userid)?;
    check_password(&p.password)?;
    let h = hash(&st, p.password).await?;
    let now_ms = util::now_ms();
    lock(&st.store).update(|db| {
        let u = db
            .users
            .get_mut(&p.userid)
            .ok_or_else(|| ApiError::not_found(format!("no user {}", p.userid)))?;
        u.password = Some(h);
        u.tickets_not_before_ms = now_ms;
        Ok::<_, ApiError>(())
    })?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/v1/access/users/{userid}/unlock", tag = "users", params(("userid" = String, Path)),
    responses((status = 204), (status = 403, body = crate::error::ErrorBody)))]
pub(crate) async fn users_unlock(
    State(st): State<St>,
    Authed(c): Authed,
    P(userid): P<String>,
) -> Result<StatusCode, ApiError> {
    let mut store = lock(&st.store);
    require(store.db(), &c, "/access", Privilege::UserModify)?;
    user_exists(store.db(), &userid)?;
    lock(&st.limiter).unlock(&userid);
    store.update(|db| {
        if let Some(t) = db.users.get_mut(&userid).and_then(|u| u.tfa.as_mut()) {
            t.locked_until = 0;
            t.totp_failures = 0;
            t.recovery_failures = 0;
        }
        Ok::<_, ApiError>(())
    })?;
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------- tokens

/// A token as listed (no secret).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct TokenInfo {
    /// `USER@REALM!NAME`.
    tokenid: String,
    expire: u64,
    privsep: bool,
    comment: String,
    created: u64,
}

/// A new token.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewToken {
    /// The token's name.
    name: String,
    /// Unix time it stops working; 0 or absent never.
    #[serde(default)]
    expire: Option<u64>,
    /// Privilege separation (default true): the token holds only what ACL
    /// entries for the token grant, within its user's rights.
    #[serde(default)]
    privsep: Option<bool>,
    #[serde(default)]
    comment: Option<String>,
}

/// A new token's secret, shown this once.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct NewTokenReply {
    tokenid: String,
    /// The secret; not stored, not shown again.
    secret: String,
    /// The value for `Authorization: Bearer …`.
    value: String,
}

#[utoipa::path(get, path = "/api/v1/access/users/{userid}/tokens", tag = "tokens", params(("userid" = String, Path)),
    responses((status = 200, body = Vec<TokenInfo>), (status = 403, body = crate::error::ErrorBody)))]
pub(crate) async fn tokens_list(
    State(st): State<St>,
    Authed(c): Authed,
    P(userid): P<String>,
) -> Result<Json<Vec<TokenInfo>>, ApiError> {
    self_or(&st, &c, &userid, Privilege::UserModify).await?;
    let store = lock(&st.store);
    let u = store
        .db()
        .users
        .get(&userid)
        .ok_or_else(|| ApiError::not_found(format!("no user {userid}")))?;
    Ok(Json(
        u.tokens
            .iter()
            .map(|(n, t)| TokenInfo {
                tokenid: format!("{userid}!{n}"),
                expire: t.expire,
                privsep: t.privsep,
                comment: t.comment.clone(),
                created: t.created,
            })
            .collect(),
    ))
}

#[utoipa::path(post, path = "/api/v1/access/users/{userid}/tokens", tag = "tokens", params(("userid" = String, Path)), request_body = NewToken,
    responses((status = 201, body = NewTokenReply), (status = 403, body = crate::error::ErrorBody), (status = 409, body = crate::error::ErrorBody)))]
pub(crate) async fn tokens_add(
    State(st): State<St>,
    Authed(c): Authed,
    P(userid): P<String>,
    Body_(n): Body_<NewToken>,
) -> Result<Response, ApiError> {
    not_token(&c)?;
    check_comment(&n.comment)?;
    if !util::valid_name(&n.name) {
        return Err(ApiError::invalid(
            "name",
            "a token name has 1-64 of A-Z a-z 0-9 . _ -",
        ));
    }
    let (secret, t) = auth::new_token(
        n.expire.unwrap_or(0),
        n.privsep.unwrap_or(true),
        n.comment.unwrap_or_default(),
    )
    .map_err(|e| ApiError::internal(format!("no randomness: {e}")))?;
    self_or(&st, &c, &userid, Privilege::UserModify).await?;
    let mut store = lock(&st.store);
    store.update(|db| {
        let u = db.users.get_mut(&userid).ok_or_else(|| {
            ApiError::not_found(format!("no user {userid} (root@pam cannot have tokens: add a user with the Administrator role)"))
        })?;
        if u.tokens.len() >= 64 {
            return Err(ApiError::conflict(format!("{userid} has 64 tokens already: delete some")));
        }
        if u.tokens.contains_key(&n.name) {
            return Err(ApiError::conflict(format!("{userid} has a token {} already", n.name)));
        }
        u.tokens.insert(n.name.clone(), t);
        Ok(())
    })?;
    let tokenid = format!("{userid}!{}", n.name);
    let value = format!("{tokenid}={secret}");
    Ok((
        StatusCode::CREATED,
        Json(NewTokenReply {
            tokenid,
            secret,
            value,
        }),
    )
        .into_response())
}

#[utoipa::path(delete, path = "/api/v1/access/users/{userid}/tokens/{name}", tag = "tokens", params(("userid" = String, Path), ("name" = String, Path)),
    responses((status = 204), (status = 403, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody)))]
pub(crate) async fn tokens_delete(
    State(st): State<St>,
    Authed(c): Authed,
    P((userid, name)): P<(String, String)>,
) -> Result<StatusCode, ApiError> {
    self_or(&st, &c, &userid, Privilege::UserModify).await?;
    let mut store = lock(&st.store);
    store.update(|db| {
        db.users
            .get_mut(&userid)
            .and_then(|u| u.tokens.remove(&name))
            .ok_or_else(|| ApiError::not_found(format!("no token {userid}!{name}")))?;
        let subject = format!("{userid}!{name}");
        db.access.acl.retain(|e| e.subject != subject);
        Ok::<_, ApiError>(())
    })?;
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------- tfa

/// A user's second factor.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct TfaInfo {
    totp: bool,
    /// Unused recovery codes.
    recovery_left: usize,
    /// Whether login needs a second factor.
    required: bool,
    /// Unix time second factors are locked until (0: not locked).
    locked_until: u64,
}

/// Set up TOTP: the secret the authenticator holds and a current code from it.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewTotp {
    /// base32, at least 128 bits (`GET /api/v1/access/tfa/new-secret` makes one).
    secret: String,
    /// A current code, proving the authenticator has the secret.
    code: String,
}

/// Recovery codes, shown once.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct RecoveryCodes {
    recovery: Vec<String>,
}

/// A fresh TOTP secret.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct NewSecret {
    secret: String,
    /// For the QR code.
    otpauth_uri: String,
}

#[utoipa::path(get, path = "/api/v1/access/tfa/{userid}", tag = "tfa", params(("userid" = String, Path)),
    responses((status = 200, body = TfaInfo), (status = 403, body = crate::error::ErrorBody)))]
pub(crate) async fn tfa_get(
    State(st): State<St>,
    Authed(c): Authed,
    P(userid): P<String>,
) -> Result<Json<TfaInfo>, ApiError> {
    let store = lock(&st.store);
    let db = store.db();
    if c.userid != userid {
        require(db, &c, "/access", Privilege::UserModify)?;
    }
    let u = db
        .users
        .get(&userid)
        .ok_or_else(|| ApiError::not_found(format!("no user {userid}")))?;
    let realm = parse_userid(&userid).map(|(_, r)| r.name()).unwrap_or("");
    let realm_requires = db.realms.get(realm).is_some_and(|s| s.require_tfa);
    Ok(Json(TfaInfo {
        totp: u.tfa.is_some(),
        recovery_left: u
            .tfa
            .as_ref()
            .map_or(0, |t| t.recovery.iter().flatten().count()),
        required: auth::tfa_required(u, realm_requires),
        locked_until: u.tfa.as_ref().map_or(0, |t| t.locked_until),
    }))
}

#[utoipa::path(get, path = "/api/v1/access/tfa/new-secret", tag = "tfa", responses((status = 200, body = NewSecret)))]
pub(crate) async fn tfa_new_secret(Authed(c): Authed) -> Result<Json<NewSecret>, ApiError> {
    let secret =
        totp::new_secret().map_err(|e| ApiError::internal(format!("no randomness: {e}")))?;
    Ok(Json(NewSecret {
        otpauth_uri: totp::otpauth_uri(&c.userid, &secret),
        secret,
    }))
}

#[utoipa::path(post, path = "/api/v1/access/tfa/{userid}", tag = "tfa", params(("userid" = String, Path)), request_body = NewTotp,
    responses((status = 201, body = RecoveryCodes), (status = 400, body = crate::error::ErrorBody), (status = 409, body = crate::error::ErrorBody)))]
pub(crate) async fn tfa_add(
    State(st): State<St>,
    Authed(c): Authed,
    P(userid): P<String>,
    Body_(n): Body_<NewTotp>,
) -> Result<Response, ApiError> {
    not_token(&c)?;
    if n.secret.len() > 128 {
        return Err(ApiError::invalid("secret", "longer than 128 characters"));
    }
    let t = totp::Totp::from_base32(&n.secret).map_err(|e| ApiError::invalid("secret", e))?;
    let now = util::now();
    let step = t.check(n.code.trim(), now).ok_or_else(|| {
        ApiError::invalid("code", "the code does not match the secret now: check the authenticator's clock and the secret")
    })?;
    let (codes, hashes) = totp::new_recovery_codes()
        .map_err(|e| ApiError::internal(format!("no randomness: {e}")))?;
    self_or(&st, &c, &userid, Privilege::UserModify).await?;
    let mut store = lock(&st.store);
    store.update(|db| {
        let u = db
            .users
            .get_mut(&userid)
            .ok_or_else(|| ApiError::not_found(format!("no user {userid}")))?;
        if u.tfa.is_some() {
            return Err(ApiError::conflict(format!(
                "{userid} has TOTP already: DELETE it first"
            )));
        }
        u.tfa = Some(TfaState {
            totp_secret: n
                .secret
                .chars()
                .filter(|c| !c.is_whitespace())
                .collect::<String>()
                .to_ascii_uppercase(),
            recovery: hashes.into_iter().map(Some).collect(),
            last_step: step,
            totp_failures: 0,
            recovery_failures: 0,
            locked_until: 0,
        });
        Ok(())
    })?;
    Ok((StatusCode::CREATED, Json(RecoveryCodes { recovery: codes })).into_response())
}

#[utoipa::path(post, path = "/api/v1/access/tfa/{userid}/recovery", tag = "tfa", params(("userid" = String, Path)),
    responses((status = 200, body = RecoveryCodes), (status = 403, body = crate::error::ErrorBody)))]
pub(crate) async fn tfa_recovery(
    State(st): State<St>,
    Authed(c): Authed,
    P(userid): P<String>,
) -> Result<Json<RecoveryCodes>, ApiError> {
    not_token(&c)?;
    let (codes, hashes) = totp::new_recovery_codes()
        .map_err(|e| ApiError::internal(format!("no randomness: {e}")))?;
    self_or(&st, &c, &userid, Privilege::UserModify).await?;
    let mut store = lock(&st.store);
    store.update(|db| {
        let t = db
            .users
            .get_mut(&userid)
            .and_then(|u| u.tfa.as_mut())
            .ok_or_else(|| ApiError::not_found(format!("{userid} has no TOTP: add it first")))?;
        t.recovery = hashes.into_iter().map(Some).collect();
        Ok::<_, ApiError>(())
    })?;
    Ok(Json(RecoveryCodes { recovery: codes }))
}

#[utoipa::path(delete, path = "/api/v1/access/tfa/{userid}", tag = "tfa", params(("userid" = String, Path)),
    responses((status = 204), (status = 403, body = crate::error::ErrorBody)))]
pub(crate) async fn tfa_delete(
    State(st): State<St>,
    Authed(c): Authed,
    P(userid): P<String>,
) -> Result<StatusCode, ApiError> {
    not_token(&c)?;
    self_or(&st, &c, &userid, Privilege::UserModify).await?;
    let mut store = lock(&st.store);
    store.update(|db| {
        let u = db
            .users
            .get_mut(&userid)
            .ok_or_else(|| ApiError::not_found(format!("no user {userid}")))?;
        u.tfa = None;
        Ok::<_, ApiError>(())
    })?;
    Ok(StatusCode::NO_CONTENT)
}

/// A realm's settings.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RealmInfo {
    #[serde(default)]
    realm: String,
    /// Every user of the realm logs in with a second factor.
    require_tfa: bool,
}

#[utoipa::path(get, path = "/api/v1/access/realms", tag = "access", responses((status = 200, body = Vec<RealmInfo>)))]
pub(crate) async fn realms_list(State(st): State<St>, Authed(_c): Authed) -> Json<Vec<RealmInfo>> {
    let store = lock(&st.store);
    Json(
        [Realm::Kapsel, Realm::Pam]
            .iter()
            .map(|r| RealmInfo {
                realm: r.name().into(),
                require_tfa: store
                    .db()
                    .realms
                    .get(r.name())
                    .is_some_and(|s| s.require_tfa),
            })
            .collect(),
    )
}

#[utoipa::path(put, path = "/api/v1/access/realms/{realm}", tag = "access", params(("realm" = String, Path)), request_body = RealmInfo,
    responses((status = 200, body = RealmInfo), (status = 403, body = crate::error::ErrorBody)))]
pub(crate) async fn realms_set(
    State(st): State<St>,
    Authed(c): Authed,
    P(realm): P<String>,
    Body_(r): Body_<RealmInfo>,
) -> Result<Json<RealmInfo>, ApiError> {
    let realm = Realm::parse(&realm).ok_or_else(|| {
        ApiError::not_found(format!("no realm {realm}: there are kapsel and pam"))
    })?;
    let mut store = lock(&st.store);
    require(store.db(), &c, "/access", Privilege::UserModify)?;
    store.update(|db| {
        db.realms.insert(
            realm.name().into(),
            RealmSettings {
                require_tfa: r.require_tfa,
            },
        );
        Ok::<_, ApiError>(())
    })?;
    Ok(Json(RealmInfo {
        realm: realm.name().into(),
        require_tfa: r.require_tfa,
    }))
}

// ---------------------------------------------------------------- roles, acl

/// A role.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RoleInfo {
    role: String,
    privs: Vec<String>,
    #[serde(default)]
    builtin: bool,
}

#[utoipa::path(get, path = "/api/v1/access/roles", tag = "acl", responses((status = 200, body = Vec<RoleInfo>)))]
pub(crate) async fn roles_list(State(st): State<St>, Authed(_c): Authed) -> Json<Vec<RoleInfo>> {
    let store = lock(&st.store);
    let mut out: Vec<RoleInfo> = crate::access::builtin_roles()
        .into_iter()
        .map(|(role, p)| RoleInfo {
            role,
            privs: p.names(),
            builtin: true,
        })
        .collect();
    out.extend(
        store
            .db()
            .access
            .roles
            .iter()
            .map(|(role, privs)| RoleInfo {
                role: role.clone(),
                privs: privs.clone(),
                builtin: false,
            }),
    );
    Json(out)
}

fn check_role(r: &RoleInfo) -> Result<(), ApiError> {
    if !util::valid_name(&r.role) {
        return Err(ApiError::invalid(
            "role",
            "a role name has 1-64 of A-Z a-z 0-9 . _ -",
        ));
    }
    if crate::access::builtin_roles().contains_key(&r.role) {
        return Err(ApiError::invalid(
            "role",
            format!("{} is a built-in role and cannot be changed", r.role),
        ));
    }
    for (i, p) in r.privs.iter().enumerate() {
        if Privilege::parse(p).is_none() {
            let all: Vec<&str> = Privilege::ALL.iter().map(|p| p.name()).collect();
            return Err(ApiError::invalid(
                &format!("privs[{i}]"),
                format!("unknown privilege {p:?}; known: {}", all.join(", ")),
            ));
        }
    }
    Ok(())
}

#[utoipa::path(post, path = "/api/v1/access/roles", tag = "acl", request_body = RoleInfo,
    responses((status = 201, body = RoleInfo), (status = 400, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody), (status = 409, body = crate::error::ErrorBody)))]
pub(crate) async fn roles_add(
    State(st): State<St>,
    Authed(c): Authed,
    Body_(r): Body_<RoleInfo>,
) -> Result<Response, ApiError> {
    check_role(&r)?;
    let mut store = lock(&st.store);
    require(store.db(), &c, "/access", Privilege::PermissionsModify)?;
    store.update(|db| {
        if db.access.roles.contains_key(&r.role) {
            return Err(ApiError::conflict(format!(
                "role {} exists already",
                r.role
            )));
        }
        db.access.roles.insert(r.role.clone(), r.privs.clone());
        Ok(())
    })?;
    Ok((
        StatusCode::CREATED,
        Json(RoleInfo {
            builtin: false,
            ..r
        }),
    )
        .into_response())
}

#[utoipa::path(delete, path = "/api/v1/access/roles/{role}", tag = "acl", params(("role" = String, Path)),
    responses((status = 204), (status = 403, body = crate::error::ErrorBody), (status = 409, body = crate::error::ErrorBody)))]
pub(crate) async fn roles_delete(
    State(st): State<St>,
    Authed(c): Authed,
    P(role): P<String>,
) -> Result<StatusCode, ApiError> {
    let mut store = lock(&st.store);
    require(store.db(), &c, "/access", Privilege::PermissionsModify)?;
    store.update(|db| {
        if db.access.acl.iter().any(|e| e.role == role) {
            return Err(ApiError::conflict(format!(
                "role {role} is used by ACL entries: remove them first"
            )));
        }
        db.access
            .roles
            .remove(&role)
            .ok_or_else(|| ApiError::not_found(format!("no custom role {role}")))?;
        Ok(())
    })?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/access/acl", tag = "acl", responses((status = 200, body = Vec<AclEntry>)))]
pub(crate) async fn acl_list(State(st): State<St>, Authed(c): Authed) -> Json<Vec<AclEntry>> {
    let store = lock(&st.store);
    let db = store.db();
    let all = privs_on(db, &c, "/access", &GuestFacts::default()).has(Privilege::SysAudit);
    let me = c.subject();
    Json(
        db.access
            .acl
            .iter()
            .filter(|e| all || e.subject == me || e.subject == c.userid)
            .cloned()
            .collect(),
    )
}

#[utoipa::path(put, path = "/api/v1/access/acl", tag = "acl", request_body = AclEntry,
    responses((status = 200, body = AclEntry), (status = 400, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody)))]
pub(crate) async fn acl_set(
    State(st): State<St>,
    Authed(c): Authed,
    Body_(mut e): Body_<AclEntry>,
) -> Result<Json<AclEntry>, ApiError> {
    e.path = check_path(&e.path).map_err(|m| ApiError::invalid("path", m))?;
    let mut store = lock(&st.store);
    let db = store.db();
    require(db, &c, &e.path, Privilege::PermissionsModify)?;
    let role = db.access.role_privs(&e.role).ok_or_else(|| {
        ApiError::invalid(
            "role",
            format!("no role {}: GET /api/v1/access/roles lists them", e.role),
        )
    })?;
    let user = crate::access::user_of(&e.subject);
    check_userid("subject", user)?;
    if user == ROOT_USER {
        return Err(ApiError::invalid(
            "subject",
            "root@pam holds every privilege already",
        ));
    }
    let exists = match e.subject.split_once('!') {
        Some((u, t)) => db.users.get(u).is_some_and(|u| u.tokens.contains_key(t)),
        None => db.users.contains_key(&e.subject),
    };
    if !exists {
        return Err(ApiError::invalid(
            "subject",
            format!("no user or token {}", e.subject),
        ));
    }
    // No one grants more than they hold.
    let mine = privs_on(db, &c, &e.path, &GuestFacts::default());
    if !mine.contains(role) {
        return Err(ApiError::forbidden(format!(
            "role {} holds privileges {} does not hold on {}: a grant cannot exceed its granter",
            e.role,
            c.subject(),
            e.path
        )));
    }
    store.update(|db| {
        db.access
            .acl
            .retain(|x| !(x.path == e.path && x.subject == e.subject && x.role == e.role));
        if db.access.acl.len() >= 65_536 {
            return Err(ApiError::conflict("the ACL has 65536 entries: remove some"));
        }
        db.access.acl.push(e.clone());
        Ok(())
    })?;
    Ok(Json(e))
}

/// Which entry to remove.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct AclKey {
    path: String,
    subject: String,
    role: String,
}

#[utoipa::path(delete, path = "/api/v1/access/acl", tag = "acl", params(AclKey),
    responses((status = 204), (status = 403, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody)))]
pub(crate) async fn acl_delete(
    State(st): State<St>,
    Authed(c): Authed,
    Q(k): Q<AclKey>,
) -> Result<StatusCode, ApiError> {
    let path = check_path(&k.path).map_err(|m| ApiError::invalid("path", m))?;
    let mut store = lock(&st.store);
    require(store.db(), &c, &path, Privilege::PermissionsModify)?;
    store.update(|db| {
        let before = db.access.acl.len();
        db.access
            .acl
            .retain(|x| !(x.path == path && x.subject == k.subject && x.role == k.role));
        if db.access.acl.len() == before {
            return Err(ApiError::not_found(format!(
                "no ACL entry {} {} on {path}",
                k.subject, k.role
            )));
        }
        Ok(())
    })?;
    Ok(StatusCode::NO_CONTENT)
}

/// What to explain.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct ExplainQuery {
    /// A user id or token id (default: the caller).
    #[serde(default)]
    userid: Option<String>,
    path: String,
    /// A privilege name; absent: list what is held.
    #[serde(default)]
    privilege: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/access/acl/explain", tag = "acl", params(ExplainQuery),
    responses((status = 200, body = Explanation), (status = 400, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody)))]
pub(crate) async fn acl_explain(
    State(st): State<St>,
    Authed(c): Authed,
    Q(q): Q<ExplainQuery>,
) -> Result<Json<Explanation>, ApiError> {
    let path = check_path(&q.path).map_err(|m| ApiError::invalid("path", m))?;
    let subject = q.userid.unwrap_or_else(|| c.subject());
    let privilege =
        match q.privilege.as_deref() {
            Some(p) => Some(Privilege::parse(p).ok_or_else(|| {
                ApiError::invalid("privilege", format!("unknown privilege {p:?}"))
            })?),
            None => None,
        };
    check_userid("userid", crate::access::user_of(&subject))?;
    if crate::access::user_of(&subject) != c.userid {
        require(lock(&st.store).db(), &c, "/access", Privilege::SysAudit)?;
    }
    let guest = match path.strip_prefix("/guests/") {
        Some(name) => {
            let g = st.guests.clone();
            let name = name.to_string();
            blocking(move || g.get(&name)).await?
        }
        None => None,
    };
    let store = lock(&st.store);
    let db = store.db();
    let privsep = match subject.split_once('!') {
        Some((u, t)) => db
            .users
            .get(u)
            .and_then(|u| u.tokens.get(t))
            .map(|t| t.privsep)
            .ok_or_else(|| ApiError::invalid("userid", format!("no token {subject}")))?,
        None => false,
    };
    let facts = guest_facts(
        db,
        guest.as_ref(),
        path.strip_prefix("/guests/").unwrap_or(""),
    );
    Ok(Json(
        db.access
            .explain(&subject, privsep, &path, &facts, privilege),
    ))
}

// ---------------------------------------------------------------- pools

/// A pool with its usage.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct PoolInfo {
    pool: String,
    comment: String,
    members: Vec<String>,
    quota: Quota,
    /// What the members use now.
    usage: Usage,
}

/// A new pool, or changes to one.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PoolChange {
    /// Required when creating.
    #[serde(default)]
    pool: Option<String>,
    #[serde(default)]
    comment: Option<String>,
    /// The complete member list (guest names).
    #[serde(default)]
    members: Option<Vec<String>>,
    #[serde(default)]
    quota: Option<Quota>,
}

/// What a pool's members use, from the daemon's guest list.
pub(crate) fn pool_usage(pool: &Pool, guests: &[GuestSummary]) -> Usage {
    guests
        .iter()
        .filter(|g| pool.members.contains(&g.name))
        .fold(Usage::default(), |u, g| {
            u.plus(Usage {
                guests: 1,
                vcpus: u64::from(g.vcpus),
                memory_mib: g.memory_mib,
                disk_gib: 0,
            })
        })
}

fn pool_info(name: &str, p: &Pool, guests: &[GuestSummary]) -> PoolInfo {
    PoolInfo {
        pool: name.to_string(),
        comment: p.comment.clone(),
        members: p.members.iter().cloned().collect(),
        quota: p.quota,
        usage: pool_usage(p, guests),
    }
}

async fn all_guests(st: &St) -> Result<Vec<GuestSummary>, ApiError> {
    let g = st.guests.clone();
    blocking(move || g.list()).await
}

#[utoipa::path(get, path = "/api/v1/pools", tag = "pools", responses((status = 200, body = Vec<PoolInfo>)))]
pub(crate) async fn pools_list(
    State(st): State<St>,
    Authed(c): Authed,
) -> Result<Json<Vec<PoolInfo>>, ApiError> {
    let guests = all_guests(&st).await?;
    let store = lock(&st.store);
    let db = store.db();
    Ok(Json(
        db.access
            .pools
            .iter()
            .filter(|(n, _)| {
                privs_on(db, &c, &format!("/pools/{n}"), &GuestFacts::default())
                    .has(Privilege::PoolAudit)
            })
            .map(|(n, p)| pool_info(n, p, &guests))
            .collect(),
    ))
}

#[utoipa::path(get, path = "/api/v1/pools/{pool}", tag = "pools", params(("pool" = String, Path)),
    responses((status = 200, body = PoolInfo), (status = 403, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody)))]
pub(crate) async fn pools_get(
    State(st): State<St>,
    Authed(c): Authed,
    P(pool): P<String>,
) -> Result<Json<PoolInfo>, ApiError> {
    let path = check_path(&format!("/pools/{pool}")).map_err(|m| ApiError::invalid("pool", m))?;
    require(lock(&st.store).db(), &c, &path, Privilege::PoolAudit)?;
    let guests = all_guests(&st).await?;
    let store = lock(&st.store);
    let p = store
        .db()
        .access
        .pools
        .get(&pool)
        .ok_or_else(|| ApiError::not_found(format!("no pool {pool}")))?;
    Ok(Json(pool_info(&pool, p, &guests)))
}

fn apply_pool_change(db: &Db, c: &Caller, p: &mut Pool, ch: PoolChange) -> Result<(), ApiError> {
    check_comment(&ch.comment)?;
    if let Some(v) = ch.comment {
        p.comment = v;
    }
    if let Some(q) = ch.quota {
        p.quota = q;
    }
    if let Some(members) = ch.members {
        for (i, m) in members.iter().enumerate() {
            if !util::valid_name(m) {
                return Err(ApiError::invalid(
                    &format!("members[{i}]"),
                    format!("{m:?} is not a guest name"),
                ));
            }
            if !p.members.contains(m) {
                let owner_facts = guest_facts(db, None, m);
                require_facts(
                    db,
                    c,
                    &format!("/guests/{m}"),
                    Privilege::GuestAllocate,
                    &owner_facts,
                )?;
                if let Some((other, _)) =
                    db.access.pools.iter().find(|(_, q)| q.members.contains(m))
                {
                    return Err(ApiError::conflict(format!(
                        "guest {m} is in pool {other} already: a guest is in one pool at most"
                    )));
                }
            }
        }
        p.members = members.into_iter().collect();
    }
    Ok(())
}

#[utoipa::path(post, path = "/api/v1/pools", tag = "pools", request_body = PoolChange,
    responses((status = 201, body = PoolInfo), (status = 400, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody), (status = 409, body = crate::error::ErrorBody)))]
pub(crate) async fn pools_add(
    State(st): State<St>,
    Authed(c): Authed,
    Body_(mut ch): Body_<PoolChange>,
) -> Result<Response, ApiError> {
    let name = ch
        .pool
        .take()
        .ok_or_else(|| ApiError::invalid("pool", "a new pool needs a name"))?;
    let path = check_path(&format!("/pools/{name}")).map_err(|m| ApiError::invalid("pool", m))?;
    let guests = all_guests(&st).await?;
    let mut store = lock(&st.store);
    require(store.db(), &c, &path, Privilege::PoolAllocate)?;
    let snapshot = store.db().clone();
    let info = store.update(|db| {
        if db.access.pools.contains_key(&name) {
            return Err(ApiError::conflict(format!("pool {name} exists already")));
        }
        let mut p = Pool::default();
        apply_pool_change(&snapshot, &c, &mut p, ch)?;
        let info = pool_info(&name, &p, &guests);
        db.access.pools.insert(name.clone(), p);
        Ok(info)
    })?;
    Ok((StatusCode::CREATED, Json(info)).into_response())
}

#[utoipa::path(put, path = "/api/v1/pools/{pool}", tag = "pools", params(("pool" = String, Path)), request_body = PoolChange,
    responses((status = 200, body = PoolInfo), (status = 403, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody)))]
pub(crate) async fn pools_change(
    State(st): State<St>,
    Authed(c): Authed,
    P(pool): P<String>,
    Body_(ch): Body_<PoolChange>,
) -> Result<Json<PoolInfo>, ApiError> {
    let path = check_path(&format!("/pools/{pool}")).map_err(|m| ApiError::invalid("pool", m))?;
    if ch.pool.as_ref().is_some_and(|p| *p != pool) {
        return Err(ApiError::invalid("pool", "a pool cannot be renamed"));
    }
    let guests = all_guests(&st).await?;
    let mut store = lock(&st.store);
    require(store.db(), &c, &path, Privilege::PoolAllocate)?;
    let snapshot = store.db().clone();
    let info = store.update(|db| {
        let p = db
            .access
            .pools
            .get_mut(&pool)
            .ok_or_else(|| ApiError::not_found(format!("no pool {pool}")))?;
        apply_pool_change(&snapshot, &c, p, ch)?;
        Ok::<_, ApiError>(pool_info(&pool, p, &guests))
    })?;
    Ok(Json(info))
}

#[utoipa::path(delete, path = "/api/v1/pools/{pool}", tag = "pools", params(("pool" = String, Path)),
    responses((status = 204), (status = 403, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody)))]
pub(crate) async fn pools_delete(
    State(st): State<St>,
    Authed(c): Authed,
    P(pool): P<String>,
) -> Result<StatusCode, ApiError> {
    let path = check_path(&format!("/pools/{pool}")).map_err(|m| ApiError::invalid("pool", m))?;
    let mut store = lock(&st.store);
    require(store.db(), &c, &path, Privilege::PoolAllocate)?;
    store.update(|db| {
        db.access
            .pools
            .remove(&pool)
            .ok_or_else(|| ApiError::not_found(format!("no pool {pool}")))?;
        Ok::<_, ApiError>(())
    })?;
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------- host, audit

#[utoipa::path(get, path = "/api/v1/host", tag = "host", responses((status = 200, body = crate::host::HostFacts), (status = 403, body = crate::error::ErrorBody)))]
pub(crate) async fn host(
    State(st): State<St>,
    Authed(c): Authed,
) -> Result<Json<crate::host::HostFacts>, ApiError> {
    require(lock(&st.store).db(), &c, "/host", Privilege::SysAudit)?;
    Ok(Json(blocking(crate::host::facts).await?))
}

/// How much of the audit log.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuditQuery {
    /// The last N entries (default 100, at most 1000).
    #[serde(default)]
    limit: Option<usize>,
}

#[utoipa::path(get, path = "/api/v1/audit", tag = "host", params(AuditQuery),
    responses((status = 200, body = Vec<AuditEntry>), (status = 403, body = crate::error::ErrorBody)))]
pub(crate) async fn audit_tail(
    State(st): State<St>,
    Authed(c): Authed,
    Q(q): Q<AuditQuery>,
) -> Result<Json<Vec<AuditEntry>>, ApiError> {
    require(lock(&st.store).db(), &c, "/access", Privilege::SysAudit)?;
    let n = q.limit.unwrap_or(100).min(1000);
    let log = st.audit.clone();
    let entries = blocking(move || log.tail(n))
        .await?
        .map_err(|e| ApiError::internal(format!("cannot read the audit log: {e}")))?;
    Ok(Json(entries))
}

// ---------------------------------------------------------------- guests

#[utoipa::path(get, path = "/api/v1/guests", tag = "guests", responses((status = 200, body = Vec<GuestSummary>)))]
pub(crate) async fn guests_list(
    State(st): State<St>,
    Authed(c): Authed,
) -> Result<Json<Vec<GuestSummary>>, ApiError> {
    let guests = all_guests(&st).await?;
    let store = lock(&st.store);
    let db = store.db();
    Ok(Json(
        guests
            .into_iter()
            .filter(|g| {
                let facts = guest_facts(db, Some(g), &g.name);
                privs_on(db, &c, &format!("/guests/{}", g.name), &facts).has(Privilege::GuestAudit)
            })
            .collect(),
    ))
}

async fn guest_checked(
    st: &St,
    c: &Caller,
    name: &str,
    p: Privilege,
) -> Result<Option<GuestSummary>, ApiError> {
    if !util::valid_name(name) {
        return Err(ApiError::invalid(
            "name",
            format!("{name:?} is not a guest name"),
        ));
    }
    let g = st.guests.clone();
    let n = name.to_string();
    let guest = blocking(move || g.get(&n)).await?;
    let store = lock(&st.store);
    let db = store.db();
    let facts = guest_facts(db, guest.as_ref(), name);
    // Checked before existence, so that a caller without the privilege
    // learns nothing about which guests exist.
    require_facts(db, c, &format!("/guests/{name}"), p, &facts)?;
    Ok(guest)
}

#[utoipa::path(get, path = "/api/v1/guests/{name}", tag = "guests", params(("name" = String, Path)),
    responses((status = 200, body = GuestSummary), (status = 403, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody)))]
pub(crate) async fn guests_get(
    State(st): State<St>,
    Authed(c): Authed,
    P(name): P<String>,
) -> Result<Json<GuestSummary>, ApiError> {
    guest_checked(&st, &c, &name, Privilege::GuestAudit)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no guest {name} in vm.conf")))
}

#[utoipa::path(post, path = "/api/v1/guests/{name}/{action}", tag = "guests",
    params(("name" = String, Path), ("action" = String, Path, description = "start, stop, force-stop, pause or unpause")),
    responses((status = 200, body = GuestSummary), (status = 403, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody), (status = 409, body = crate::error::ErrorBody)))]
pub(crate) async fn guests_act(
    State(st): State<St>,
    Authed(c): Authed,
    P((name, action)): P<(String, String)>,
) -> Result<Json<GuestSummary>, ApiError> {
    let action = GuestAction::parse(&action).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no action {action:?}: use start, stop, force-stop, pause or unpause"),
        )
        .field("action")
    })?;
    if guest_checked(&st, &c, &name, Privilege::GuestPowerMgmt)
        .await?
        .is_none()
    {
        return Err(ApiError::not_found(format!("no guest {name} in vm.conf")));
    }
    let g = st.guests.clone();
    let r = blocking(move || g.act(&name, action)).await?;
    r.map(Json).map_err(|e| match e {
        GuestError::NotFound(n) => ApiError::not_found(format!("no guest {n} in vm.conf")),
        GuestError::Conflict(m) => ApiError::conflict(m),
        GuestError::Failed(m) => ApiError::internal(m).with_code("action_failed"),
    })
}

// ---------------------------------------------------------------- router

async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint: GET /api/v1/openapi.json lists them")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not take this method: GET /api/v1/openapi.json lists them",
    )
}

async fn openapi_json() -> Response {
    match crate::openapi::document() {
        Ok(s) => ([(axum::http::header::CONTENT_TYPE, "application/json")], s).into_response(),
        Err(e) => {
            ApiError::internal(format!("cannot build the OpenAPI document: {e}")).into_response()
        }
    }
}

/// The router of every endpoint.
pub(crate) fn router(st: St, body_limit: usize) -> Router {
    let api = Router::new()
        .route("/access/ticket", post(login))
        .route("/access/logout", post(logout))
        .route("/access/whoami", get(whoami))
        .route("/access/users", get(users_list).post(users_add))
        .route(
            "/access/users/{userid}",
            get(users_get).put(users_change).delete(users_delete),
        )
        .route("/access/users/{userid}/unlock", post(users_unlock))
        .route(
            "/access/users/{userid}/tokens",
            get(tokens_list).post(tokens_add),
        )
        .route(
            "/access/users/{userid}/tokens/{name}",
            axum::routing::delete(tokens_delete),
        )
        .route("/access/password", put(password))
        .route("/access/tfa/new-secret", get(tfa_new_secret))
        .route(
            "/access/tfa/{userid}",
            get(tfa_get).post(tfa_add).delete(tfa_delete),
        )
        .route("/access/tfa/{userid}/recovery", post(tfa_recovery))
        .route("/access/realms", get(realms_list))
        .route("/access/realms/{realm}", put(realms_set))
        .route("/access/roles", get(roles_list).post(roles_add))
        .route("/access/roles/{role}", axum::routing::delete(roles_delete))
        .route("/access/acl", get(acl_list).put(acl_set).delete(acl_delete))
        .route("/access/acl/explain", get(acl_explain))
        .route("/pools", get(pools_list).post(pools_add))
        .route(
            "/pools/{pool}",
            get(pools_get).put(pools_change).delete(pools_delete),
        )
        .route("/host", get(host))
        .route("/audit", get(audit_tail))
        .route("/guests", get(guests_list))
        .route("/guests/{name}", get(guests_get))
        .route("/guests/{name}/{action}", post(guests_act))
        .route("/openapi.json", get(openapi_json))
        .method_not_allowed_fallback(method_not_allowed);
    Router::new()
        .nest("/api/v1", api)
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(st.clone(), middleware))
        .layer(axum::extract::DefaultBodyLimit::max(body_limit))
        .with_state(st)
}
