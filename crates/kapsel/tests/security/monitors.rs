//! A local user against the guests' monitors: each monitor serves the
//! power button, kill, console and exec of its guest on a socket in
//! STATE_DIR/run/. Only root (kapseld) may use one: the directory is
//! root's alone, and a monitor answers no peer but root even if an
//! administrator opened the directory.

use crate::common::kapseld::{idle_vm, test_user, Kapseld};
use crate::common::kvm_usable;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::Command;

/// Tries, as `uid`:`gid`, to ask the monitor at `socket` to kill its
/// guest; returns what the attempt printed.
fn kill_request_as(uid: u32, gid: u32, socket: &std::path::Path) -> String {
    const CLIENT: &str = r#"
import socket, struct, sys, json
try:
    s = socket.socket(socket.AF_UNIX)
    s.connect(sys.argv[1])
    body = json.dumps({"Act": "Kill"}).encode()
    s.sendall(struct.pack(">I", len(body)) + body)
    s.settimeout(5)
    got = s.recv(4096)
    print("REPLY" if got else "CLOSED", got)
except OSError as e:
    print("REFUSED", e)
"#;
    let out = Command::new("/usr/bin/python3")
        .args(["-c", CLIENT])
        .arg(socket)
        .uid(uid)
        .gid(gid)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_local_user_cannot_reach_a_guests_monitor() {
    let Some((uid, gid)) = test_user() else {
        return;
    };
    if !kvm_usable() {
        return;
    }
    let d = Kapseld::start(&idle_vm("target", ""));
    d.wait_state("target", "running");
    let run = d.dir.join("state/run");
    let mode = std::fs::metadata(&run).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "STATE_DIR/run is root's alone");
    let socket = run.join("target.sock");
    let said = kill_request_as(uid, gid, &socket);
    assert!(said.starts_with("REFUSED"), "{said}");
    // An administrator's chmod does not open the monitor: it answers root
    // only (SO_PEERCRED).
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o777)).unwrap();
    let said = kill_request_as(uid, gid, &socket);
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o700)).unwrap();
    assert!(
        !said.starts_with("REPLY"),
        "the monitor answered a local user: {said}"
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(d.vm("target")["state"], "running", "the guest was killed");
}
