//! `kapsel daemon --listen`: the HTTPS API of a running kapseld, driven
//! with curl over loopback, acting on real VMs through the daemon.

mod common;

use common::kapseld::{idle_vm, Kapseld};
use common::kvm_usable;
use std::process::Command;
use std::time::{Duration, Instant};

use kapsel_api::access::AclEntry;
use kapsel_api::store::{StoreError, User};
use kapsel_api::Store;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `curl` with the token; (HTTP status, body as JSON).
fn call(port: u16, token: &str, method: &str, path: &str) -> (u16, serde_json::Value) {
    let out = Command::new("curl")
        .args([
            "-sk",
            "--max-time",
            "20",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            "-X",
            method,
        ])
        .arg("-H")
        .arg(format!("Authorization: Bearer {token}"))
        .arg(format!("https://127.0.0.1:{port}{path}"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    let json = serde_json::from_str(body).unwrap_or(serde_json::Value::Null);
    (code.trim().parse().unwrap_or(0), json)
}

#[test]
fn the_api_lists_and_drives_guests_by_acl() {
    if !kvm_usable() {
        return;
    }
    if Command::new("curl").arg("--version").output().is_err() {
        println!("SKIP: curl is not installed");
        return;
    }
    let config = format!(
        "{}{}",
        idle_vm("web", "\tdisable\n"),
        idle_vm("db", "\tdisable\n")
    );
    let mut d = Kapseld::start(&config);
    // Off unless --listen: the daemon runs without an API.
    assert!(!d.dir.join("state/api").exists());
    d.stop_daemon();
    // An operator allowed guest `web` only, with a token.
    let mut store = Store::open(&d.dir.join("state/api")).unwrap();
    let (secret, t) = kapsel_api::auth::new_token(0, false, String::new()).unwrap();
    store
        .update(|db| {
            let mut u = User::new();
            u.tokens.insert("t".into(), t);
            db.users.insert("ops@kapsel".into(), u);
            db.access.acl.push(AclEntry {
                path: "/guests/web".into(),
                subject: "ops@kapsel".into(),
                role: "GuestUser".into(),
                propagate: true,
            });
            Ok::<_, StoreError>(())
        })
        .unwrap();
    drop(store);
    let token = format!("ops@kapsel!t={secret}");
    let port = free_port();
    d.spawn_daemon(
        &[],
        &["--stop-guests", "--listen", &format!("127.0.0.1:{port}")],
    );
    let until = Instant::now() + Duration::from_secs(10);
    let mut listed = call(port, &token, "GET", "/api/v1/guests");
    while listed.0 != 200 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(100));
        listed = call(port, &token, "GET", "/api/v1/guests");
    }
    assert_eq!(listed.0, 200, "{listed:?}\n{}", d.log());
    assert!(
        d.log().contains("certificate SHA-256 fingerprint"),
        "{}",
        d.log()
    );
    let names: Vec<&str> = listed
        .1
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["web"]);
    // Start through the API; the daemon really starts it.
    let (code, body) = call(port, &token, "POST", "/api/v1/guests/web/start");
    assert_eq!(code, 200, "{body}\n{}", d.log());
    d.wait_state("web", "running");
    // Not allowed on db; and a conflict answers 409 with the daemon's reason.
    assert_eq!(call(port, &token, "POST", "/api/v1/guests/db/start").0, 403);
    let (code, body) = call(port, &token, "POST", "/api/v1/guests/web/start");
    assert_eq!(code, 409, "{body}");
    assert!(body["message"].as_str().unwrap().contains("web"), "{body}");
    // Force-stop through the API.
    assert_eq!(
        call(port, &token, "POST", "/api/v1/guests/web/force-stop").0,
        200
    );
    d.wait_state("web", "stopped");
    // The audit log has the calls.
    let audit = std::fs::read_to_string(d.dir.join("state/api/audit.log")).unwrap();
    assert!(
        audit.contains("\"action\":\"POST /api/v1/guests/web/start\"")
            && audit.contains("\"result\":\"forbidden\""),
        "{audit}"
    );
}
