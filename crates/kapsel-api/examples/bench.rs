//! Figures for the API server: idle RSS and authenticated GETs per second
//! over TLS on loopback.
//!
//! ```text
//! cargo run --release -p kapsel-api --example bench -- serve DIR   # prints ADDR FINGERPRINT TOKEN, serves until killed
//! cargo run --release -p kapsel-api --example bench -- load ADDR FINGERPRINT TOKEN [CONNECTIONS] [SECONDS]
//! ```
//!
//! `serve` starts the real server on 127.0.0.1 (an ephemeral port) with one
//! Auditor and 100 in-memory guests; `load` keeps CONNECTIONS keep-alive
//! connections busy with `GET /api/v1/guests` for SECONDS and prints
//! requests/s and latency percentiles.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use kapsel_api::access::AclEntry;
use kapsel_api::store::{StoreError, User};
use kapsel_api::{
    auth, ApiServer, GuestAction, GuestError, GuestKind, GuestSummary, Guests, ServerConfig, Store,
};

struct MemGuests(Mutex<Vec<GuestSummary>>);

impl Guests for MemGuests {
    fn list(&self) -> Vec<GuestSummary> {
        self.0.lock().unwrap().clone()
    }
    fn act(&self, name: &str, _: GuestAction) -> Result<GuestSummary, GuestError> {
        self.get(name)
            .ok_or_else(|| GuestError::NotFound(name.into()))
    }
}

fn serve(dir: &str) {
    let state = std::path::Path::new(dir).join("api");
    let mut store = Store::open(&state).unwrap();
    let (secret, t) = auth::new_token(0, false, String::new()).unwrap();
    store
        .update(|db| {
            let mut u = User::new();
            u.tokens.insert("bench".into(), t);
            db.users.insert("bench@kapsel".into(), u);
            db.access.acl.push(AclEntry {
                path: "/".into(),
                subject: "bench@kapsel".into(),
                role: "Auditor".into(),
                propagate: true,
            });
            Ok::<_, StoreError>(())
        })
        .unwrap();
    drop(store);
    let guests = (0..100)
        .map(|i| GuestSummary {
            name: format!("guest{i:03}"),
            kind: if i % 2 == 0 {
                GuestKind::Vm
            } else {
                GuestKind::Container
            },
            state: "running".into(),
            owner: None,
            vcpus: 1,
            memory_mib: 256,
        })
        .collect();
    let config = ServerConfig::new("127.0.0.1:0".parse().unwrap(), state);
    let server = ApiServer::start(config, Arc::new(MemGuests(Mutex::new(guests)))).unwrap();
    println!(
        "{} {} bench@kapsel!bench={secret}",
        server.local_addr(),
        server.fingerprint()
    );
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

async fn load(addr: String, fp: String, token: String, conns: usize, secs: u64) {
    let tls =
        tokio_rustls::TlsConnector::from(Arc::new(kapsel_api::pin::client_config(&fp).unwrap()));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (tls, addr, token) = (tls.clone(), addr.clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
            tcp.set_nodelay(true).unwrap();
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let s = tls.connect(name, tcp).await.unwrap();
            let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
                .await
                .unwrap();
            tokio::spawn(conn);
            let mut lat = Vec::new();
            while Instant::now() < deadline {
                let req = hyper::Request::builder()
                    .uri("/api/v1/guests")
                    .header("host", "localhost")
                    .header("authorization", format!("Bearer {token}"))
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                let t0 = Instant::now();
                let resp = send.send_request(req).await.unwrap();
                assert_eq!(resp.status(), 200);
                let body = resp.into_body().collect().await.unwrap().to_bytes();
                assert!(body.len() > 1000);
                lat.push(t0.elapsed());
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    println!(
        "{} requests in {secs} s over {conns} connections: {:.0} requests/s; latency p50 {:?} p99 {:?}",
        all.len(),
        all.len() as f64 / secs as f64,
        pct(0.5),
        pct(0.99)
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("serve") => serve(&args[1]),
        Some("load") => {
            let conns = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(4);
            let secs = args.get(5).and_then(|s| s.parse().ok()).unwrap_or(10);
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(load(
                    args[1].clone(),
                    args[2].clone(),
                    args[3].clone(),
                    conns,
                    secs,
                ));
        }
        _ => eprintln!(
            "usage: bench serve DIR | bench load ADDR FINGERPRINT TOKEN [CONNECTIONS] [SECONDS]"
        ),
    }
}
