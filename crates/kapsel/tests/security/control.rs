//! A local user against the control socket's request handling: what it
//! puts in a request must not come back raw into the daemon's log or the
//! replies (terminal escapes, forged log lines). The control_request fuzz
//! target (crates/kapsel-daemon/fuzz) checks the same on every reply.

use crate::common::kapseld::{test_user, Kapseld};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

const PYTHON: &str = "/usr/bin/python3";

/// Sends one framed request as `uid`:`gid` (a raw client: the CLI never
/// sends such bytes) and returns the daemon's reply.
fn send_as(uid: u32, gid: u32, socket: &Path, body: &[u8]) -> serde_json::Value {
    const CLIENT: &str = r#"
import socket, struct, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
body = sys.stdin.buffer.read()
s.sendall(struct.pack(">I", len(body)) + body)
def exact(n):
    got = b""
    while len(got) < n:
        chunk = s.recv(n - len(got))
        if not chunk:
            sys.exit("connection closed after %d of %d bytes" % (len(got), n))
        got += chunk
    return got
sys.stdout.buffer.write(exact(struct.unpack(">I", exact(4))[0]))
"#;
    let mut child = Command::new(PYTHON)
        .args(["-c", CLIENT])
        .arg(socket)
        .uid(uid)
        .gid(gid)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(body).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "client: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn request_bytes_do_not_reach_the_log_or_replies_raw() {
    let Some((uid, gid)) = test_user() else {
        return;
    };
    if !Path::new(PYTHON).exists() {
        println!("SKIP: {PYTHON} (the raw client) is not installed");
        return;
    }
    let d = Kapseld::start("vm \"a\" {\n\tdisable\n\tboot \"/nonexistent/bzImage\"\n}\n");
    let forged =
        "\u{1b}[2J\u{1b}]0;pwned\u{7}\r\n2026-12-07T00:00:00Z  INFO kapseld: root logged in";
    // An unknown kind: serde quotes it in "unknown variant", which the
    // daemon logs (info) and replies.
    let kind = serde_json::json!({"version": 1, "request": {"kind": forged}});
    // A target that is no guest: "no VM or container named ..." (short
    // enough to pass the bound on names).
    let short = "\u{1b}[2J\r\n2026-12-07T00:00:00Z  INFO root";
    let target = serde_json::json!({"version": 1, "request": {"kind": "pause", "target": short}});
    for body in [kind, target] {
        let reply = send_as(uid, gid, &d.socket(), body.to_string().as_bytes());
        assert_eq!(reply["kind"], "error", "{reply}");
        let message = reply["message"].as_str().unwrap();
        assert!(
            !message.chars().any(char::is_control),
            "the reply carries the request's control characters: {message:?}"
        );
        assert!(message.contains(r"\u{1b}[2J"), "{message:?}");
    }
    let log = d.log();
    assert!(
        log.contains("bad request from kapsel-test-owner"),
        "the bad request is logged:\n{log}"
    );
    assert!(
        !log.contains('\u{1b}') && !log.contains('\r'),
        "the daemon's log carries the request's escapes:\n{log:?}"
    );
    assert!(
        !log.lines().any(|l| l.starts_with("2026-12-07T00:00:00Z")),
        "the request forged a log line:\n{log}"
    );
}
