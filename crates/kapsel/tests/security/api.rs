//! The HTTPS API of `kapsel daemon --listen`: a local user reading its
//! secrets, and a network client holding connections open to starve other
//! clients.

use crate::common::kapseld::{idle_vm, test_user, Kapseld};
use crate::common::kvm_usable;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

/// Runs `f` in a thread whose effective uid and gid are the test user's.
fn as_user<T: Send + 'static>((uid, gid): (u32, u32), f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        // SAFETY: the raw system calls change this thread's credentials
        // only (glibc's wrappers would change every thread of the test);
        // the thread ends with them.
        unsafe {
            assert_eq!(
                libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<u32>()),
                0
            );
            assert_eq!(libc::syscall(libc::SYS_setresgid, -1, gid, -1), 0);
            assert_eq!(libc::syscall(libc::SYS_setresuid, -1, uid, -1), 0);
        }
        f()
    })
    .join()
    .expect("the attacker's thread")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A daemon serving the API on a free loopback port, once it answers.
fn daemon_with_api() -> Option<(Kapseld, u16)> {
    if !kvm_usable() {
        return None;
    }
    if Command::new("curl").arg("--version").output().is_err() {
        println!("SKIP: curl is not installed");
        return None;
    }
    let mut d = Kapseld::start(&idle_vm("web", "\tdisable\n"));
    d.stop_daemon();
    let port = free_port();
    d.spawn_daemon(
        &[],
        &["--stop-guests", "--listen", &format!("127.0.0.1:{port}")],
    );
    let until = Instant::now() + Duration::from_secs(10);
    while http_status("127.0.0.1", port) == 0 {
        assert!(
            Instant::now() < until,
            "the API did not come up:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Some((d, port))
}

/// The status of an unauthenticated `GET /api/v1/access/whoami` from
/// `source` (0: no answer within 5 s).
fn http_status(source: &str, port: u16) -> u16 {
    let out = Command::new("curl")
        .args([
            "-sk",
            "--max-time",
            "5",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--interface",
            source,
        ])
        .arg(format!("https://127.0.0.1:{port}/api/v1/access/whoami"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

/// A local user cannot read the API's users, token hashes, TOTP secrets,
/// ticket key, TLS key or audit log: STATE_DIR/api is 0700 and its files
/// 0600, though STATE_DIR itself is 0711.
#[test]
fn local_users_cannot_read_the_apis_secrets() {
    let Some(ids) = test_user() else { return };
    let Some((d, _port)) = daemon_with_api() else {
        return;
    };
    let api = d.dir.join("state/api");
    // A failed login, so that the audit log has a line.
    let out = Command::new("curl")
        .args([
            "-sk",
            "--max-time",
            "5",
            "-o",
            "/dev/null",
            "-X",
            "POST",
            "-d",
        ])
        .arg(r#"{"username":"nobody@kapsel","password":"x"}"#)
        .arg(format!("https://127.0.0.1:{_port}/api/v1/access/ticket"))
        .status()
        .unwrap();
    assert!(out.success());
    for name in ["access.json", "authkey", "tls.key", "tls.crt", "audit.log"] {
        let path = api.join(name);
        if name != "access.json" {
            assert!(path.exists(), "{} missing", path.display());
        }
        let p = path.clone();
        let opened = as_user(ids, move || std::fs::File::open(&p).map(|_| ()));
        match opened {
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && name == "access.json" => {}
            other => panic!("the test user opened {}: {other:?}", path.display()),
        }
    }
}

/// A client holding more connections than the server takes, from one
/// address, neither locks other clients out of the API nor slows the
/// control socket: each address gets at most 32, and slow or silent ones
/// are dropped after their timeouts.
#[test]
fn one_client_holding_connections_does_not_lock_out_others() {
    let Some((d, port)) = daemon_with_api() else {
        return;
    };
    let to: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut held = Vec::new();
    // 300 connections: silent ones and half TLS hellos, more than the
    // server's 256 in all.
    for i in 0..300 {
        match TcpStream::connect_timeout(&to, Duration::from_secs(2)) {
            Ok(mut s) => {
                if i % 2 == 1 {
                    let _ = s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]);
                }
                held.push(s);
            }
            Err(_) => break,
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    // Another client is served, and fast.
    let t0 = Instant::now();
    let status = http_status("127.0.0.2", port);
    assert_eq!(status, 401, "another client was not served:\n{}", d.log());
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "took {:?}",
        t0.elapsed()
    );
    // The control socket is not touched.
    assert!(d.ok(&["status"]).contains("web"));
    // The attacker's connections past its share were closed at once, the
    // rest within the TLS handshake timeout (10 s).
    let mut open = 0;
    for s in held.iter_mut() {
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let mut b = [0u8; 64];
        if matches!(s.read(&mut b), Err(ref e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut)
        {
            open += 1;
        }
    }
    assert_eq!(open, 0, "connections outlived the handshake timeout");
}
