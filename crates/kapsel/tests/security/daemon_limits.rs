//! The control socket's bounds: a local user (the test user, talking the
//! protocol itself) against a running kapseld. Findings 5 (one request
//! kills the daemon), 6 (slow connections lock root out), 7 (console
//! sessions leak descriptors; a viewer that never reads stalls the
//! others) and 11 (log injection, world-readable VM logs).

use crate::common::kapseld::{idle_vm, test_user, Kapseld, KAPSEL};
use crate::common::kvm_usable;
use kapsel_daemon::proto::{self, Request, Response, PROTOCOL_VERSION};
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::ctcommon;

const USER: &str = "kapsel-test-owner";

/// Runs `f` in a thread whose effective uid and gid are the test user's:
/// what it connects, the daemon sees as that user (SO_PEERCRED), and
/// what it opens, it opens with that user's rights.
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

fn send(stream: &mut UnixStream, request: &Request) {
    send_raw(
        stream,
        serde_json::to_value(request).expect("a request is JSON"),
    )
    .expect("send the request");
}

/// Sends `request` as it is: any JSON, what a hostile client sends.
fn send_raw(stream: &mut UnixStream, request: serde_json::Value) -> Result<(), String> {
    let envelope = serde_json::json!({ "version": PROTOCOL_VERSION, "request": request });
    proto::write_message(stream, &envelope).map_err(|e| e.to_string())
}

/// The end of the daemon's log, for a failure message.
fn tail(d: &Kapseld) -> String {
    let log = d.log();
    let from = log.len().saturating_sub(3000);
    let from = (from..log.len())
        .find(|&i| log.is_char_boundary(i))
        .unwrap_or(0);
    log[from..].to_string()
}

fn answer(stream: &mut UnixStream) -> Result<Response, String> {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    proto::read_message::<Response>(stream).map_err(|e| e.to_string())
}

/// One request on a new connection (as whoever calls it), its answer.
fn ask(socket: &Path, request: &Request) -> Result<Response, String> {
    let mut s = UnixStream::connect(socket).map_err(|e| e.to_string())?;
    let sent = send_raw(
        &mut s,
        serde_json::to_value(request).map_err(|e| e.to_string())?,
    );
    // A refused connection gets its reply at once and is closed: the send
    // may fail, the reply is there all the same (as the CLI reads it).
    answer(&mut s).or_else(|e| sent.and(Err(e)))
}

fn pid(d: &Kapseld) -> u32 {
    d.child.as_ref().expect("the daemon runs").id()
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn threads(pid: u32) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:"))
                .and_then(|n| n.trim().parse().ok())
        })
        .unwrap_or(0)
}

fn alive(d: &mut Kapseld) -> bool {
    d.child
        .as_mut()
        .is_some_and(|c| c.try_wait().ok().flatten().is_none())
}

/// Finding 5: a `stop` that names the user's own VM 60 000 times made the
/// daemon start a thread per name until it ran out of memory mappings.
#[test]
fn one_stop_request_cannot_take_the_daemon_down() {
    if !kvm_usable() {
        return;
    }
    let Some(ids) = test_user() else {
        return;
    };
    let mut d = Kapseld::start(&idle_vm("mine", &format!("\towner {USER}\n")));
    d.wait_state("mine", "running");
    let pid = pid(&d);
    let socket = d.socket();
    let peak = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                peak.fetch_max(threads(pid), Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    let before = threads(pid);
    let flood = Request::Stop {
        targets: vec!["mine".into(); 60_000],
        all: false,
        force: false,
        wait: false,
    };
    let s = socket.clone();
    let flooded = as_user(ids, move || ask(&s, &flood));
    // Names repeated within the bound: one power button, one thread.
    let repeated = Request::Stop {
        targets: vec!["mine".into(); 1024],
        all: false,
        force: false,
        wait: true,
    };
    let s = socket.clone();
    let stopped = as_user(ids, move || ask(&s, &repeated));
    done.store(true, Ordering::SeqCst);
    sampler.join().unwrap();
    let peak = peak.load(Ordering::SeqCst);
    println!(
        "daemon threads: {before} before, at most {peak} during the floods; 60 000 names: {flooded:?}"
    );
    assert!(alive(&mut d), "the daemon died:\n{}", tail(&d));
    match &flooded {
        Ok(Response::Error { message }) => assert!(message.contains("at most"), "{message}"),
        other => panic!("60 000 names got no refusal: {other:?}\n{}", tail(&d)),
    }
    match &stopped {
        Ok(Response::Ok { message }) => {
            assert_eq!(message.lines().count(), 1, "one guest, one line: {message}")
        }
        other => panic!("stop of 1024 repeated names: {other:?}"),
    }
    assert!(
        peak < before + 40,
        "the daemon went from {before} to {peak} threads for one request"
    );
    assert_eq!(d.vm("mine")["state"], "stopped");
    assert!(!d.log().contains("panicked"), "{}", tail(&d));
}

/// The attacker of finding 6: keeps `want` connections open as the test
/// user, each sending one byte of a request every second (reconnecting
/// those the daemon closes), until `stop`.
fn slowloris(
    socket: PathBuf,
    ids: (u32, u32),
    want: usize,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        as_user(ids, move || {
            let mut conns: Vec<UnixStream> = Vec::new();
            let mut opened = 0;
            // A header that announces a long body that never comes whole.
            let message = [&1000u32.to_be_bytes()[..], &[b' '; 1000]].concat();
            let mut at = 0;
            while !stop.load(Ordering::SeqCst) {
                while conns.len() < want {
                    match UnixStream::connect(&socket) {
                        Ok(s) => {
                            let _ = s.set_nonblocking(true);
                            conns.push(s);
                            opened += 1;
                        }
                        Err(_) => break,
                    }
                }
                let byte = message[at % message.len()];
                at += 1;
                conns.retain_mut(|c| c.write_all(&[byte]).is_ok() && !refused(c));
                for _ in 0..10 {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            opened
        })
    })
}

/// Whether the daemon has answered (refused) or closed the connection.
fn refused(c: &mut UnixStream) -> bool {
    let mut b = [0u8; 64];
    match c.read(&mut b) {
        // An answer (n > 0) or the end (0): either way it is over.
        Ok(_n) => true,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    }
}

/// Finding 6: the request timeout was per read, the socket 0666 with no
/// limit per user: 260 connections that sent a byte every 8 s refused
/// root's `status` for as long as they ran.
#[test]
fn slow_connections_of_a_user_cannot_lock_root_out() {
    let Some(ids) = test_user() else {
        return;
    };
    let d = Kapseld::start("");
    let stop = Arc::new(AtomicBool::new(false));
    let attacker = slowloris(d.socket(), ids, 300, stop.clone());
    // Let the attacker fill what it may.
    std::thread::sleep(Duration::from_secs(2));
    let mut latencies = Vec::new();
    let mut failures = Vec::new();
    let until = Instant::now() + Duration::from_secs(12);
    while Instant::now() < until {
        let t = Instant::now();
        match ask(&d.socket(), &Request::Status { target: None }) {
            Ok(Response::Status { .. }) => latencies.push(t.elapsed()),
            other => failures.push(format!("{other:?}")),
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    stop.store(true, Ordering::SeqCst);
    let opened = attacker.join().unwrap();
    let worst = latencies.iter().max().copied().unwrap_or_default();
    let mean = latencies.iter().sum::<Duration>() / latencies.len().max(1) as u32;
    println!(
        "root's status under a slow-connection attack ({opened} attacker connections opened): {} answered, {} refused, mean {mean:?}, worst {worst:?}",
        latencies.len(),
        failures.len()
    );
    assert!(failures.is_empty(), "root was refused: {failures:?}");
    assert!(worst < Duration::from_secs(1), "root waited {worst:?}");
    // The user's own requests are served again once it lets go.
    let s = d.socket();
    let mine = as_user(ids, move || ask(&s, &Request::Status { target: None }));
    assert!(matches!(mine, Ok(Response::Status { .. })), "{mine:?}");
}

/// Finding 7, first half: each finished console attach left a descriptor
/// in the daemon until the guest printed again.
#[test]
fn finished_console_sessions_release_their_descriptors() {
    if !kvm_usable() {
        return;
    }
    let Some(ids) = test_user() else {
        return;
    };
    let d = Kapseld::start(&idle_vm("quiet", &format!("\towner {USER}\n")));
    d.wait_state("quiet", "running");
    d.console_text("quiet", "idle ready");
    let pid = pid(&d);
    std::thread::sleep(Duration::from_millis(300));
    let before = open_fds(pid);
    let socket = d.socket();
    const ATTACHES: usize = 3000;
    let started = Instant::now();
    let busy = as_user(ids, move || {
        let mut busy = 0;
        let mut done = 0;
        while done < ATTACHES {
            let Ok(mut s) = UnixStream::connect(&socket) else {
                busy += 1;
                continue;
            };
            send(
                &mut s,
                &Request::Console {
                    target: "quiet".into(),
                },
            );
            match answer(&mut s) {
                Ok(Response::Ok { .. }) => done += 1,
                // Sessions not yet noticed gone still hold their places.
                _ => {
                    busy += 1;
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
        busy
    });
    let took = started.elapsed();
    // Give the last sessions a moment to see their clients gone.
    let mut after = open_fds(pid);
    let until = Instant::now() + Duration::from_secs(5);
    while after > before + 10 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(100));
        after = open_fds(pid);
    }
    println!(
        "daemon descriptors: {before} before, {after} after {ATTACHES} console attaches ({took:?}, {busy} retried)"
    );
    assert!(
        after <= before + 10,
        "the daemon holds {} more descriptors after {ATTACHES} finished consoles",
        after - before
    );
    // The console still works.
    assert!(d.console_text("quiet", "idle ready").contains("idle ready"));
}

/// Finding 7, second half: a viewer that never reads stalled output to
/// every other viewer for 2 s each, and was never closed.
#[test]
fn a_console_viewer_that_never_reads_stalls_nobody() {
    if let Some(reason) = ctcommon::skip_reason() {
        println!("SKIP: {reason}");
        return;
    }
    let Some(ids) = test_user() else {
        return;
    };
    let root = ctcommon::Rootfs::new("chatty");
    let name = ctcommon::name("chatty");
    // About 200 KB/s of output, each line numbered.
    let conf = format!(
        "container \"{name}\" {{\n\troot \"{}\"\n\towner {USER}\n\tinit \"/bin/sh\" \"-c\" \"i=0; while :; do i=$((i+1)); echo tick $i $(seq -s ' ' 1 1000); sleep 0.02; done\"\n}}\n",
        root.path.display()
    );
    let d = Kapseld::start(&conf);
    d.wait_state(&name, "running");
    let socket = d.socket();
    let attach = {
        let name = name.clone();
        move || -> UnixStream {
            let mut s = UnixStream::connect(&socket).expect("connect");
            send(
                &mut s,
                &Request::Console {
                    target: name.clone(),
                },
            );
            match answer(&mut s) {
                Ok(Response::Ok { .. }) => s,
                other => panic!("console refused: {other:?}"),
            }
        }
    };
    // Four viewers that never read.
    let stuck: Vec<UnixStream> = {
        let attach = attach.clone();
        as_user(ids, move || (0..4).map(|_| attach()).collect())
    };
    let mut reader = as_user(ids, attach);
    reader
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut buf = vec![0u8; 65536];
    let mut longest = Duration::ZERO;
    let mut total = 0;
    let start = Instant::now();
    let mut last = Instant::now();
    while start.elapsed() < Duration::from_secs(15) {
        let n = match reader.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        total += n;
        longest = longest.max(last.elapsed());
        last = Instant::now();
    }
    println!(
        "a reading viewer beside 4 that never read: {total} bytes in {:?}, longest wait {longest:?}",
        start.elapsed()
    );
    assert!(
        start.elapsed() >= Duration::from_secs(15),
        "the reading viewer was cut off after {total} bytes"
    );
    assert!(
        total > 1_000_000,
        "only {total} bytes reached the reading viewer"
    );
    assert!(
        longest < Duration::from_millis(1000),
        "the reading viewer waited {longest:?} for output"
    );
    // The viewers that never read were detached: they see the end.
    for mut s in stuck {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut sink = Vec::new();
        let ended = s.read_to_end(&mut sink).is_ok();
        assert!(ended, "a viewer that never reads is still attached");
    }
}

/// Finding 11: an unknown request kind holding a newline was logged
/// verbatim, so a user could forge daemon log lines; the VMs' logs (their
/// command lines, disk paths) were world-readable.
#[test]
fn users_cannot_forge_log_lines_or_read_vm_logs() {
    let Some(ids) = test_user() else {
        return;
    };
    let mut d = Kapseld::start("");
    // A state directory as an older release left it, readable by all.
    d.stop_daemon();
    let state = d.dir.join("state");
    let log = state.join("vms/old.log");
    std::fs::write(&log, "--- kapsel run --disk /secret/path.img\n").unwrap();
    for (p, mode) in [(&state, 0o755), (&state.join("vms"), 0o755), (&log, 0o644)] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    d.spawn();
    let s = d.socket();
    let forged = as_user(ids, move || {
        let mut c = UnixStream::connect(&s).expect("connect");
        send_raw(
            &mut c,
            serde_json::json!({ "kind": "x\nFORGED-LINE vm web: powered off" }),
        )
        .expect("send the request");
        answer(&mut c)
    });
    assert!(matches!(forged, Ok(Response::Error { .. })), "{forged:?}");
    std::thread::sleep(Duration::from_millis(200));
    let text = d.log();
    assert!(
        text.contains("bad request"),
        "the bad request is logged:\n{text}"
    );
    assert!(
        !text.lines().any(|l| l.starts_with("FORGED-LINE")),
        "a user wrote a line of the daemon's log:\n{text}"
    );
    let l = log.clone();
    let read = as_user(ids, move || {
        std::fs::read_to_string(&l).map_err(|e| e.kind())
    });
    assert!(read.is_err(), "a user read a VM log: {read:?}");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&state) & 0o066, 0, "state dir {:o}", mode(&state));
    assert_eq!(mode(&state.join("vms")), 0o700);
    assert_eq!(mode(&log), 0o600);
    // Users still get their answers.
    if crate::common::kapseld::can_run_as(Path::new(KAPSEL)) {
        let out = d.cmd(&["status"]).uid(ids.0).gid(ids.1).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Findings 5 and 6: waiting requests (`wait`, `stop -w`) hold a
/// connection each; a user gets only its share of them, and a wait whose
/// client hangs up gives its place back.
#[test]
fn waits_count_against_their_user_and_end_with_their_clients() {
    if !kvm_usable() {
        return;
    }
    let Some(ids) = test_user() else {
        return;
    };
    let d = Kapseld::start(&idle_vm("mine", &format!("\towner {USER}\n")));
    d.wait_state("mine", "running");
    let socket = d.socket();
    let (waits, over) = as_user(ids, move || {
        let mut waits = Vec::new();
        // More waits than a user may hold.
        for _ in 0..40 {
            let Ok(mut s) = UnixStream::connect(&socket) else {
                break;
            };
            let _ = send_raw(
                &mut s,
                serde_json::to_value(Request::Wait {
                    target: "mine".into(),
                })
                .unwrap(),
            );
            waits.push(s);
        }
        std::thread::sleep(Duration::from_millis(500));
        let over = ask(&socket, &Request::Status { target: None });
        (waits, over)
    });
    println!("the user's status while it holds 40 waits: {over:?}");
    assert!(
        matches!(&over, Ok(Response::Error { message }) if message.contains("too many connections")),
        "a user holds any number of waiting connections: {over:?}"
    );
    // Root is served all the while.
    assert!(matches!(
        ask(&d.socket(), &Request::Status { target: None }),
        Ok(Response::Status { .. })
    ));
    drop(waits);
    let socket = d.socket();
    let again = as_user(ids, move || {
        let until = Instant::now() + Duration::from_secs(5);
        loop {
            let r = ask(&socket, &Request::Status { target: None });
            if matches!(r, Ok(Response::Status { .. })) || Instant::now() > until {
                return r;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    assert!(
        matches!(again, Ok(Response::Status { .. })),
        "the waits of a client that left still hold its places: {again:?}"
    );
    assert_eq!(d.vm("mine")["state"], "running");
}

/// Threads bounded in total: an `exec` client that keeps its connection
/// open after the command's exit status left the daemon's input thread
/// (and its descriptors) behind, one per exec, while its connection slot
/// was already free.
#[test]
fn finished_execs_leave_no_threads_behind() {
    if let Some(reason) = ctcommon::skip_reason() {
        println!("SKIP: {reason}");
        return;
    }
    let Some(ids) = test_user() else {
        return;
    };
    let root = ctcommon::Rootfs::new("execs");
    let name = ctcommon::name("execs");
    let conf = format!(
        "container \"{name}\" {{\n\troot \"{}\"\n\towner {USER}\n\tinit \"/bin/sleep\" \"1000000\"\n}}\n",
        root.path.display()
    );
    let d = Kapseld::start(&conf);
    d.wait_state(&name, "running");
    let pid = pid(&d);
    let (threads_before, fds_before) = (threads(pid), open_fds(pid));
    const EXECS: usize = 100;
    let socket = d.socket();
    let held = as_user(ids, move || {
        let mut held = Vec::new();
        for _ in 0..EXECS {
            let mut s = UnixStream::connect(&socket).expect("connect");
            send(
                &mut s,
                &Request::Exec {
                    target: name.clone(),
                    argv: vec!["/bin/true".into()],
                    tty: false,
                    winsize: None,
                },
            );
            match answer(&mut s) {
                Ok(Response::Ok { .. }) => {}
                other => panic!("exec refused: {other:?}"),
            }
            // Up to the exit status, then keep the connection open.
            loop {
                let (kind, _) =
                    kapsel_daemon::ctproc::exec_frames::read(&mut s).expect("the exit status");
                if kind == kapsel_daemon::ctproc::exec_frames::EXIT {
                    break;
                }
            }
            held.push(s);
        }
        held
    });
    std::thread::sleep(Duration::from_millis(500));
    let (threads_after, fds_after) = (threads(pid), open_fds(pid));
    println!(
        "daemon after {EXECS} execs whose clients stay connected: threads {threads_before} -> {threads_after}, descriptors {fds_before} -> {fds_after}"
    );
    assert!(
        threads_after < threads_before + 10,
        "{} threads stay behind {EXECS} finished execs",
        threads_after - threads_before
    );
    assert!(
        fds_after < fds_before + 10,
        "{} descriptors stay behind {EXECS} finished execs",
        fds_after - fds_before
    );
    drop(held);
}
