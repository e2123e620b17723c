//! The HTTPS server: rustls over tokio, HTTP/1.1 through hyper, the
//! endpoints through axum; on a runtime of its own, on threads of its own.
//!
//! Every connection is bounded, so that a slow or hostile client cannot
//! starve others or grow the process: a cap on connections in all and per
//! client address (per /64 for IPv6), a TLS handshake timeout, a header read
//! timeout, a body size limit and body timeout, a request timeout, and an
//! idle timeout that also drops a client that stops reading its replies.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use axum::body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, Semaphore};
use tower::ServiceExt;

use crate::audit::AuditLog;
use crate::auth::Limiter;
use crate::guests::Guests;
use crate::handlers::{self, AppState, Peer};
use crate::store::{self, Store, StoreError};

/// Where the server's certificate comes from.
#[derive(Debug, Clone)]
pub enum TlsSource {
    /// `STATE_DIR/tls.crt` and `tls.key`, made (self-signed) on first start.
    SelfSigned,
    /// Given PEM files.
    Files {
        /// Certificate chain.
        cert: PathBuf,
        /// Private key.
        key: PathBuf,
    },
}

/// Bounds on what a client may take.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Connections in all.
    pub max_connections: usize,
    /// Connections from one address (IPv4) or /64 (IPv6).
    pub max_per_address: usize,
    /// Time to finish the TLS handshake.
    pub tls_handshake: Duration,
    /// Time to send a request's headers.
    pub header_read: Duration,
    /// Time to send a request's body.
    pub body_read: Duration,
    /// Time from headers to the reply.
    pub request: Duration,
    /// A connection with no bytes moving for this long is closed.
    pub idle: Duration,
    /// Largest request body.
    pub body_bytes: usize,
    /// Largest request head (hyper's read buffer).
    pub header_bytes: usize,
    /// Concurrent password checks (argon2id, PAM).
    pub password_checks: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 256,
            max_per_address: 32,
            tls_handshake: Duration::from_secs(10),
            header_read: Duration::from_secs(10),
            body_read: Duration::from_secs(10),
            request: Duration::from_secs(60),
            idle: Duration::from_secs(60),
            body_bytes: 64 * 1024,
            header_bytes: 16 * 1024,
            password_checks: 2,
        }
    }
}

/// How to run the server.
#[derive(Clone)]
pub struct ServerConfig {
    /// Address and port to listen on.
    pub listen: SocketAddr,
    /// The API's state directory (0700, the process's own).
    pub state_dir: PathBuf,
    /// The certificate.
    pub tls: TlsSource,
    /// The bounds.
    pub limits: Limits,
    /// PAM service for realm `pam`.
    pub pam_service: String,
    /// Audit log: bytes per file, and old files kept.
    pub audit_max_bytes: u64,
    /// Old audit files kept.
    pub audit_keep: u32,
    /// Async worker threads.
    pub worker_threads: usize,
}

impl ServerConfig {
    /// Defaults for `listen` and `state_dir`.
    pub fn new(listen: SocketAddr, state_dir: PathBuf) -> ServerConfig {
        ServerConfig {
            listen,
            state_dir,
            tls: TlsSource::SelfSigned,
            limits: Limits::default(),
            pam_service: "kapsel".into(),
            audit_max_bytes: 16 << 20,
            audit_keep: 4,
            worker_threads: 2,
        }
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The state directory.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The certificate or key.
    #[error("TLS: {0}")]
    Tls(String),
    /// Binding the address.
    #[error("cannot listen on {addr}: {source}; pick another address with --listen")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: io::Error,
    },
    /// Starting the threads.
    #[error("cannot start the API threads: {0}")]
    Runtime(io::Error),
}

/// A running server.
pub struct ApiServer {
    addr: SocketAddr,
    fingerprint: String,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    state: Arc<AppState>,
}

impl ApiServer {
    /// Start serving: bind, load or make the certificate, and run the
    /// runtime on a new thread `kapsel-api`.
    pub fn start(config: ServerConfig, guests: Arc<dyn Guests>) -> Result<ApiServer, StartError> {
        let store = Store::open(&config.state_dir)?;
        let (certs, key, fingerprint) = load_tls(&config)?;
        // ring rather than aws-lc-rs: no cmake and C build of minutes, and a
        // crate the field has long trusted. rustls marks it deprecated only
        // because ring has no post-quantum key exchange yet.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| StartError::Tls(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| StartError::Tls(format!("certificate and key do not fit: {e}")))?;
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));

        let listener = StdListener::bind(config.listen).map_err(|source| StartError::Listen {
            addr: config.listen,
            source,
        })?;
        listener
            .set_nonblocking(true)
            .map_err(|source| StartError::Listen {
                addr: config.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| StartError::Listen {
            addr: config.listen,
            source,
        })?;

        let limits = config.limits.clone();
        let state = Arc::new(AppState {
            audit: Arc::new(AuditLog::new(
                &config.state_dir,
                config.audit_max_bytes,
                config.audit_keep,
            )),
            store: Mutex::new(store),
            guests,
            limiter: Mutex::new(Limiter::default()),
            hash_slots: Semaphore::new(limits.password_checks.max(1)),
            pam_service: config.pam_service.clone(),
            body_timeout: limits.body_read,
            request_timeout: limits.request,
        });
        let router = handlers::router(state.clone(), limits.body_bytes);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.worker_threads.max(1))
            .max_blocking_threads(8)
            .thread_name("kapsel-api")
            .enable_all()
            .build()
            .map_err(StartError::Runtime)?;
        let (tx, rx) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("kapsel-api".into())
            .spawn(move || {
                runtime.block_on(async move {
                    match TcpListener::from_std(listener) {
                        Ok(l) => serve(l, acceptor, router, limits, rx).await,
                        Err(e) => tracing::error!("API listener: {e}"),
                    }
                });
                runtime.shutdown_timeout(Duration::from_secs(2));
            })
            .map_err(StartError::Runtime)?;
        Ok(ApiServer {
            addr,
            fingerprint,
            shutdown: Some(tx),
            thread: Some(thread),
            state,
        })
    }

    /// The address served.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// SHA-256 fingerprint of the certificate, `AB:CD:…`, for clients to pin.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Change the stored state directly (the daemon's local administration,
    /// e.g. `kapsel user add` over the Unix socket as root).
    pub fn update_store<T, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&mut store::Db) -> Result<T, E>,
    ) -> Result<T, E> {
        self.state
            .store
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .update(f)
    }

    /// Stop accepting, end every connection, and join the threads.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// SHA-256 fingerprint of a DER certificate, upper-case hex pairs joined by ':'.
pub fn fingerprint(der: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

type TlsMaterial = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>, String);

fn load_tls(config: &ServerConfig) -> Result<TlsMaterial, StartError> {
    let (cert_path, key_path) = match &config.tls {
        TlsSource::Files { cert, key } => (cert.clone(), key.clone()),
        TlsSource::SelfSigned => {
            let cert = config.state_dir.join("tls.crt");
            let key = config.state_dir.join("tls.key");
            if !cert.exists() || !key.exists() {
                make_self_signed(&config.state_dir)?;
            }
            (cert, key)
        }
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            StartError::Tls(format!(
                "{}: {e}; give a PEM certificate chain",
                cert_path.display()
            ))
        })?;
    let Some(first) = certs.first() else {
        return Err(StartError::Tls(format!(
            "{}: no certificate in it",
            cert_path.display()
        )));
    };
    let fp = fingerprint(first.as_ref());
    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| {
        StartError::Tls(format!(
            "{}: {e}; give a PEM private key",
            key_path.display()
        ))
    })?;
    Ok((certs, key, fp))
}

fn make_self_signed(dir: &Path) -> Result<(), StartError> {
    let host = fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let mut names = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
    if !host.is_empty() {
        names.push(host);
    }
    let ck = rcgen::generate_simple_self_signed(names)
        .map_err(|e| StartError::Tls(format!("cannot make a certificate: {e}")))?;
    store::write_atomic(dir, "tls.key", ck.signing_key.serialize_pem().as_bytes())?;
    store::write_atomic(dir, "tls.crt", ck.cert.pem().as_bytes())?;
    Ok(())
}

/// The key limiting connections per client: the address, or its /64.
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::from([s[0], s[1], s[2], s[3], 0, 0, 0, 0])
            }
        },
    }
}

struct PerClient {
    counts: Mutex<HashMap<IpAddr, usize>>,
    max: usize,
}

struct ClientSlot {
    table: Arc<PerClient>,
    key: IpAddr,
}

impl PerClient {
    fn take(self: &Arc<Self>, ip: IpAddr) -> Option<ClientSlot> {
        let key = client_key(ip);
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = counts.entry(key).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(ClientSlot {
            table: self.clone(),
            key,
        })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut counts = self.table.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

async fn serve(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    router: axum::Router,
    limits: Limits,
    mut shutdown: oneshot::Receiver<()>,
) {
    let all = Arc::new(Semaphore::new(limits.max_connections));
    let per_client = Arc::new(PerClient {
        counts: Mutex::new(HashMap::new()),
        max: limits.max_per_address,
    });
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            r = listener.accept() => r,
        };
        let (tcp, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: wait rather than spin.
                tracing::warn!("API accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Over a limit: close at once (the client sees a reset, not a hang).
        let Ok(permit) = all.clone().try_acquire_owned() else {
            continue;
        };
        let Some(slot) = per_client.take(peer.ip()) else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let router = router.clone();
        let limits = limits.clone();
        conns.spawn(async move {
            let _permit = permit;
            let _slot = slot;
            serve_connection(tcp, peer, acceptor, router, limits).await;
        });
    }
    conns.abort_all();
    while conns.join_next().await.is_some() {}
}

async fn serve_connection(
    tcp: TcpStream,
    peer: SocketAddr,
    acceptor: tokio_rustls::TlsAcceptor,
    router: axum::Router,
    limits: Limits,
) {
    let tls = match tokio::time::timeout(limits.tls_handshake, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(_)) | Err(_) => return,
    };
    let base = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let io = Tracked {
        inner: tls,
        base,
        last: last.clone(),
    };
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(Peer(peer));
        router.clone().oneshot(req.map(Body::new))
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read)
        .max_buf_size(limits.header_bytes.max(8192))
        .keep_alive(true)
        .serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let tick = (limits.idle / 4).max(Duration::from_millis(100));
    let mut closing_since: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = tokio::time::sleep(tick) => {
                let idle = base.elapsed().saturating_sub(Duration::from_millis(last.load(Ordering::Relaxed)));
                match closing_since {
                    None if idle >= limits.idle => {
                        conn.as_mut().graceful_shutdown();
                        closing_since = Some(Instant::now());
                    }
                    // A reply the client never reads keeps a graceful close waiting: drop it.
                    Some(t) if t.elapsed() >= tick * 2 && idle >= limits.idle => return,
                    _ => {}
                }
            }
        }
    }
}

/// The TLS stream, noting when bytes last moved.
struct Tracked<S> {
    inner: S,
    base: Instant,
    last: Arc<AtomicU64>,
}

impl<S> Tracked<S> {
    fn touch(&self) {
        self.last
            .store(self.base.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.touch();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_are_keyed_by_address_or_slash_64() {
        let a: IpAddr = "2001:db8:1:2:3:4:5:6".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::1".parse().unwrap();
        assert_eq!(client_key(a), client_key(b));
        let m: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(client_key(m), "10.0.0.1".parse::<IpAddr>().unwrap());
        let table = Arc::new(PerClient {
            counts: Mutex::new(HashMap::new()),
            max: 2,
        });
        let s1 = table.take(a).unwrap();
        let _s2 = table.take(b).unwrap();
        assert!(table.take(a).is_none());
        drop(s1);
        assert!(table.take(a).is_some());
    }

    #[test]
    fn fingerprint_format() {
        let f = fingerprint(b"x");
        assert_eq!(f.len(), 32 * 3 - 1);
        assert!(f.starts_with("2D:71:16:42"));
    }
}
