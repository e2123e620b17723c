//! kapseld driven only through the command line, as a user would: a daemon
//! with a temporary configuration, socket and state directory, running the
//! `idle` test guest (it waits in `hlt`, echoes console lines and powers off
//! on the ACPI power button). Tests print `SKIP: ...` and pass when
//! /dev/kvm cannot be used, or (for the owner tests) when not root.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::kapseld::*;
use common::kvm_usable;

#[test]
fn enabled_vms_start_and_are_listed_consoled_and_stopped() {
    if !kvm_usable() {
        return;
    }
    let conf = format!(
        "{}{}{}",
        idle_vm("alpha", ""),
        idle_vm("beta", "\tcpus 2\n"),
        idle_vm("gamma", "\tdisable\n")
    );
    let d = Kapseld::start(&conf);
    let alpha = d.wait_state("alpha", "running");
    let beta = d.wait_state("beta", "running");
    assert_eq!(
        d.vm("gamma")["state"],
        "stopped",
        "disabled VMs wait for start"
    );
    assert_eq!(beta["vcpus"], 2);
    assert_eq!(alpha["max_mem"], 64 << 20);
    assert!(alpha["cur_mem"].as_u64().unwrap() > 0);
    let table = d.ok(&["status"]);
    let header = table.lines().next().unwrap();
    for col in [
        "ID", "PID", "VCPUS", "MAXMEM", "CURMEM", "TTY", "OWNER", "STATE", "NAME",
    ] {
        assert!(header.contains(col), "{header}");
    }
    assert!(table
        .lines()
        .any(|l| l.ends_with(" alpha") && l.contains("running") && l.contains("64M")));

    // The console replays the boot output and carries a line both ways.
    d.console_text("alpha", "idle ready");
    let mut con = d
        .cmd(&["console", "alpha"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = con.stdin.take().unwrap();
    let mut reader = BufReader::new(con.stdout.take().unwrap());
    stdin.write_all(b"hello kapsel\r").unwrap();
    let mut seen = String::new();
    while !seen.contains("line hello kapsel") {
        let mut l = String::new();
        assert!(
            reader.read_line(&mut l).unwrap() > 0,
            "console closed: {seen}"
        );
        seen.push_str(&l);
    }
    stdin.write_all(b"\r~.").unwrap();
    drop(stdin);
    assert!(con.wait().unwrap().success());

    // gamma starts on request; by ID works like by name.
    d.ok(&["start", "gamma"]);
    d.wait_state("gamma", "running");
    let (code, _, err) = d.run(&["start", "gamma"]);
    assert_eq!(code, 1);
    assert!(err.contains("already running"), "{err}");

    // stop -w presses the power button and waits for the power-off.
    let id = d.vm("beta")["id"].to_string();
    let said = d.ok(&["stop", "-w", &id]);
    assert!(said.contains("powered off"), "{said}");
    let beta = d.vm("beta");
    assert_eq!(beta["state"], "stopped");
    assert_eq!(beta["last_exit"], "powered off");
    assert!(beta["pid"].is_null());
    assert!(d
        .console_text("beta", "power button")
        .contains("power button"));

    let (code, _, err) = d.run(&["stop", "nosuchvm"]);
    assert_eq!(code, 1);
    assert!(err.contains("no VM or container named nosuchvm"), "{err}");
}

#[test]
fn pause_unpause_and_a_killed_vm_process() {
    if !kvm_usable() {
        return;
    }
    let d = Kapseld::start(&idle_vm("web", ""));
    let vm = d.wait_state("web", "running");
    let pid = pid_of(&vm);
    d.console_text("web", "idle ready");
    // The console's output, line by line, from a thread.
    let mut con = d
        .cmd(&["console", "web"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = con.stdin.take().unwrap();
    let reader = BufReader::new(con.stdout.take().unwrap());
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in reader.lines() {
            let Ok(l) = l else { break };
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    d.ok(&["pause", "web"]);
    assert_eq!(d.vm("web")["state"], "paused");
    // Paused in KVM: the process is not stopped (SIGSTOP), its vCPUs are.
    assert_ne!(process_state(pid), Some('T'));
    // The guest does not run: a line sent now is not echoed.
    stdin.write_all(b"while paused\r").unwrap();
    let echoed = |within: Duration| {
        let until = Instant::now() + within;
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            match lines.recv_timeout(left) {
                Ok(l) if l.contains("line while paused") => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
        false
    };
    assert!(
        !echoed(Duration::from_millis(1500)),
        "the guest ran while paused"
    );
    let (code, _, err) = d.run(&["pause", "web"]);
    assert_eq!(code, 1);
    assert!(err.contains("not running"), "{err}");
    d.ok(&["unpause", "web"]);
    assert_eq!(d.vm("web")["state"], "running");
    // It goes on where it was: the line is echoed now.
    assert!(echoed(Duration::from_secs(10)), "the guest did not resume");
    stdin.write_all(b"\r~.").unwrap();
    drop(stdin);
    assert!(con.wait().unwrap().success());

    // A VM process that dies is reported; the daemon goes on.
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let vm = d.wait_state("web", "stopped");
    assert_eq!(vm["last_exit"], "killed by SIGKILL");
    assert!(d.log().contains("killed by SIGKILL"), "{}", d.log());
    d.ok(&["start", "web"]);
    let vm = d.wait_state("web", "running");
    assert_ne!(pid_of(&vm), pid);
    d.ok(&["stop", "-f", "-w", "web"]);
    assert_eq!(d.vm("web")["last_exit"], "killed by SIGKILL");
}

#[test]
fn wait_returns_when_the_guest_powers_off() {
    if !kvm_usable() {
        return;
    }
    let d = Kapseld::start(&idle_vm("w", ""));
    d.wait_state("w", "running");
    let waiter = d
        .cmd(&["wait", "w"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let mut con = d
        .cmd(&["console", "w"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    con.stdin.take().unwrap().write_all(b"poweroff\r").unwrap();
    let (code, stdout, _) = out(waiter.wait_with_output().unwrap());
    assert_eq!(code, 0);
    assert!(stdout.contains("powered off"), "{stdout}");
    // The console client ends when the VM does.
    assert!(con.wait().unwrap().success());
}

#[test]
fn reload_adds_and_removes_without_touching_running_vms() {
    if !kvm_usable() {
        return;
    }
    let mut d = Kapseld::start(&format!(
        "{}{}",
        idle_vm("keep", ""),
        idle_vm("old", "\tdisable\n")
    ));
    let keep = d.wait_state("keep", "running");
    let new_conf = format!("{}{}", idle_vm("keep", "\tcpus 2\n"), idle_vm("fresh", ""));
    std::fs::write(d.dir.join("vm.conf"), new_conf).unwrap();
    d.ok(&["reload"]);
    d.wait_state("fresh", "running");
    assert!(
        d.status().iter().all(|v| v["name"] != "old"),
        "stopped and removed"
    );
    let still = d.vm("keep");
    assert_eq!(still["pid"], keep["pid"], "a running VM is not touched");
    // The change takes effect at the next start.
    d.ok(&["stop", "-w", "keep"]);
    d.ok(&["start", "keep"]);
    assert_eq!(d.wait_state("keep", "running")["vcpus"], 2);

    // A broken file is refused with file:line; the old configuration stays.
    std::fs::write(d.dir.join("vm.conf"), "vm \"x\" {\n\tmemroy 1G\n}\n").unwrap();
    let (code, _, err) = d.run(&["reload"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("vm.conf:2:") && err.contains("memory"),
        "{err}"
    );
    assert_eq!(d.vm("fresh")["state"], "running");

    // SIGHUP reloads too.
    std::fs::write(
        d.dir.join("vm.conf"),
        format!("{}{}", idle_vm("keep", ""), idle_vm("hup", "")),
    )
    .unwrap();
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(d.child.as_ref().unwrap().id() as i32, libc::SIGHUP) };
    d.wait_state("hup", "running");

    // Stopping the daemon powers every guest off through its power button.
    let pids: Vec<i32> = d
        .status()
        .iter()
        .filter(|v| v["state"] == "running")
        .map(pid_of)
        .collect();
    assert!(pids.len() >= 2);
    let status = d.stop_daemon().unwrap();
    assert!(status.success(), "{status}:\n{}", d.log());
    for pid in pids {
        assert_eq!(process_state(pid), None, "VM process {pid} is gone");
    }
    let logs = std::fs::read_to_string(d.dir.join("state/vms/hup.log")).unwrap_or_default();
    assert!(logs.contains("power button"), "hup.log: {logs}");
}

#[test]
fn start_new_vms_and_instances_from_the_command_line() {
    if !kvm_usable() {
        return;
    }
    let conf = idle_vm("tmpl", "\tdisable\n\tallow instance { memory }\n");
    let d = Kapseld::start(&conf);
    d.ok(&["start", "-b", IDLE, "-m", "48M", "adhoc"]);
    assert_eq!(d.wait_state("adhoc", "running")["max_mem"], 48 << 20);
    d.ok(&["start", "-t", "tmpl", "-m", "96M", "inst1"]);
    let inst = d.wait_state("inst1", "running");
    assert_eq!(inst["max_mem"], 96 << 20);
    let (code, _, err) = d.run(&["start", "nokernel"]);
    assert_eq!(code, 1);
    assert!(err.contains("-b"), "{err}");
    // A VM that cannot start makes the start fail with its reason.
    let (code, _, err) = d.run(&["start", "-b", "/no/such/kernel", "broken"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("could not start") && err.contains("/no/such/kernel"),
        "{err}"
    );
    let vm = d.wait_state("broken", "stopped");
    let reason = vm["last_exit"].as_str().unwrap().to_string();
    assert!(reason.contains("/no/such/kernel"), "{reason}");
    // From the VM process's typed exit report, not its exit status and
    // last line of stderr ("failed (exit 2): ...").
    assert!(reason.starts_with("failed: "), "{reason}");
    let (code, _, err) = d.run(&["start", "-r", "/x.iso", "-b", IDLE, "cd"]);
    assert_eq!(code, 1);
    assert!(err.contains("cdrom"), "{err}");
}

#[test]
fn hostile_requests_get_errors_and_the_daemon_goes_on() {
    if !kvm_usable() {
        return;
    }
    let d = Kapseld::start("");
    let send = |bytes: &[u8]| -> Vec<u8> {
        let mut s = UnixStream::connect(d.socket()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let _ = s.write_all(bytes);
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut reply = Vec::new();
        let _ = s.read_to_end(&mut reply);
        reply
    };
    let frame = |body: &[u8]| {
        let mut m = (body.len() as u32).to_be_bytes().to_vec();
        m.extend_from_slice(body);
        m
    };
    let garbage = send(&frame(b"this is not json"));
    assert!(String::from_utf8_lossy(&garbage).contains("bad request"));
    let huge = send(&u32::MAX.to_be_bytes());
    assert!(String::from_utf8_lossy(&huge).contains("over the limit"));
    let version = send(&frame(br#"{"version":99,"request":{"kind":"reload"}}"#));
    assert!(String::from_utf8_lossy(&version).contains("protocol version 99"));
    let unknown = send(&frame(br#"{"version":1,"request":{"kind":"format_host"}}"#));
    assert!(String::from_utf8_lossy(&unknown).contains("bad request"));
    assert!(send(b"\x00\x00").is_empty(), "a cut-off frame is dropped");
    d.ok(&["status"]);
}

#[test]
fn the_cli_says_when_the_daemon_is_not_running() {
    let (code, _, err) = out(Command::new(KAPSEL)
        .args(["--socket", "/nonexistent/kapsel.sock", "status"])
        .output()
        .unwrap());
    assert_eq!(code, 1);
    assert!(
        err.contains("the daemon is not running") && err.contains("kapsel daemon"),
        "{err}"
    );
}

#[test]
fn a_broken_config_keeps_the_daemon_from_starting() {
    let dir = std::env::temp_dir().join(format!("kapseld-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("vm.conf"), "vm \"a\" {\n\tmemory lots\n}\n").unwrap();
    let (code, _, err) = out(Command::new(KAPSEL)
        .arg("daemon")
        .arg("-f")
        .arg(dir.join("vm.conf"))
        .arg("--socket")
        .arg(dir.join("s"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .output()
        .unwrap());
    assert_eq!(code, 2);
    assert!(err.contains("vm.conf:2:") && err.contains("lots"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_second_daemon_on_the_same_state_directory_is_refused() {
    let d = Kapseld::start("");
    let first = d.child.as_ref().unwrap().id();
    let mut second = Command::new(KAPSEL)
        .arg("daemon")
        .arg("-f")
        .arg(d.dir.join("vm.conf"))
        .arg("--socket")
        .arg(d.dir.join("second.sock"))
        .arg("--state-dir")
        .arg(d.dir.join("state"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    while second.try_wait().unwrap().is_none() {
        if Instant::now() > until {
            let _ = second.kill();
            let _ = second.wait();
            panic!("a second daemon started on the same state directory and kept running");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let (code, _, err) = out(second.wait_with_output().unwrap());
    assert_ne!(code, 0, "a second daemon started: {err}");
    assert!(
        err.contains("another kapseld") && err.contains(&format!("(pid {first})")),
        "{err}"
    );
    assert!(!d.dir.join("second.sock").exists());
    // The first one serves on.
    d.ok(&["status"]);
}

#[test]
fn owners_control_their_vms_and_nothing_else() {
    let Some((uid, gid)) = owner_tests_ready() else {
        return;
    };
    let conf = format!(
        "{}{}",
        idle_vm("mine", "\towner kapsel-test-owner\n"),
        idle_vm("theirs", "\towner root\n")
    );
    let d = Kapseld::start(&conf);
    d.wait_state("mine", "running");
    d.wait_state("theirs", "running");
    let as_user = |args: &[&str]| {
        let mut c = d.cmd(args);
        c.uid(uid).gid(gid);
        out(c.output().unwrap())
    };
    let (code, table, err) = as_user(&["status"]);
    assert_eq!(code, 0, "{err}");
    assert!(table.contains("kapsel-test-owner"), "{table}");
    let (code, _, err) = as_user(&["pause", "mine"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = as_user(&["unpause", "mine"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = as_user(&["pause", "theirs"]);
    assert_eq!(code, 1);
    assert!(err.contains("may not pause vm theirs"), "{err}");
    let (code, _, err) = as_user(&["stop", "-f", "theirs"]);
    assert_eq!(code, 1, "{err}");
    let (code, _, err) = as_user(&["reload"]);
    assert_eq!(code, 1);
    assert!(err.contains("only root"), "{err}");
    let (code, _, err) = as_user(&["start", "-b", IDLE, "sneaky"]);
    assert_eq!(code, 1);
    assert!(err.contains("only root"), "{err}");
    let (code, _, err) = as_user(&["stop", "-w", "mine"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(d.vm("mine")["state"], "stopped");
    assert_eq!(d.vm("theirs")["state"], "running");
    let (code, _, err) = as_user(&["start", "mine"]);
    assert_eq!(code, 0, "{err}");
    d.wait_state("mine", "running");
}

/// Sends the `virtio` guest's GO frame (broadcast, count = the DATA frames
/// each guest must receive) on an interface until DONE frames from
/// `guests` different MACs have passed, or 30 s. Prints the MACs seen.
const GO_SENDER: &str = r#"
import socket, struct, sys, time
ifname, count, guests = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ETH = 0x88b5
go = (b"KTG1" + bytes([1, 0, 0, 0]) + struct.pack("<II", 0, count)
      + bytes((i & 0xff) for i in range(16, 64)))
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH))
s.bind((ifname, ETH))
s.settimeout(0.05)
done = set()
deadline = time.time() + 30
while len(done) < guests and time.time() < deadline:
    s.send(b"\xff" * 6 + bytes.fromhex("020000000001") + struct.pack("!H", ETH) + go)
    try:
        while True:
            data, addr = s.recvfrom(4096)
            if addr[2] != socket.PACKET_OUTGOING and data[14:18] == b"KTG1" and data[18] == 3:
                done.add(data[6:12].hex(":"))
    except socket.timeout:
        pass
print("done from", " ".join(sorted(done)), flush=True)
"#;

#[test]
fn two_vms_on_a_switch_exchange_frames() {
    vms_exchange_frames(false);
}

/// The bridge deleted by hand while the VMs run, and made again by
/// `kapsel reset switches`: their taps are its ports again.
#[test]
fn two_vms_exchange_frames_after_their_bridge_was_deleted_and_reset() {
    vms_exchange_frames(true);
}

fn vms_exchange_frames(delete_bridge: bool) {
    if !kvm_usable() {
        return;
    }
    let Some(ns) = Netns::create(if delete_bridge { "swdel" } else { "sw" }) else {
        return;
    };
    let vm = |name: &str| {
        format!(
            "vm \"{name}\" {{\n\tboot \"{}\"\n\tmemory 64M\n\tcmdline \"net net-tx=100\"\n\tinterface {{ switch \"lan\" }}\n}}\n",
            kapsel_testguest::VIRTIO
        )
    };
    let conf = format!("switch \"lan\" {{\n}}\n{}{}", vm("left"), vm("right"));
    let d = Kapseld::start_in(Some(&ns.0), &conf);
    d.console_text("left", "net ready");
    d.console_text("right", "net ready");
    if delete_bridge {
        let del = ns
            .exec("ip")
            .args(["link", "del", "kbr-lan"])
            .output()
            .unwrap();
        assert!(del.status.success(), "{del:?}");
        d.ok(&["reset", "switches"]);
        let ports = ns
            .exec("ip")
            .args(["-o", "link", "show", "master", "kbr-lan"])
            .output()
            .unwrap();
        let ports = String::from_utf8_lossy(&ports.stdout);
        assert_eq!(ports.matches("ktap").count(), 2, "{ports}\n{}", d.log());
    }
    let sender = ns
        .exec("python3")
        .args(["-c", GO_SENDER, "kbr-lan", "100", "2"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&sender.stdout);
    let left = d.console_text("left", "net tx=");
    let right = d.console_text("right", "net tx=");
    for (name, text) in [("left", &left), ("right", &right)] {
        assert!(
            text.contains("net tx=100 rx=100"),
            "{name} did not get the other guest's 100 frames through the bridge:\n{text}\nGO sender: {said}{}\n{}",
            String::from_utf8_lossy(&sender.stderr),
            d.log()
        );
    }
    assert!(
        said.matches("fe:e1:bb").count() == 2,
        "stable MACs by default: {said}"
    );
    assert_eq!(d.wait_state("left", "stopped")["last_exit"], "powered off");
    d.wait_state("right", "stopped");
    // The taps went with the VM processes.
    let links = ns.exec("ip").args(["-o", "link"]).output().unwrap();
    let links = String::from_utf8_lossy(&links.stdout);
    assert!(!links.contains("ktap"), "{links}");
    assert!(links.contains("kbr-lan"), "{links}");
}

#[test]
fn a_seccomp_violation_kills_the_vm_process_and_the_daemon_reports_it() {
    if !kvm_usable() {
        return;
    }
    if !cfg!(debug_assertions) {
        println!("SKIP: the seccomp violation hook exists in debug builds only");
        return;
    }
    let mut d = Kapseld::start("");
    d.stop_daemon();
    std::fs::write(d.dir.join("vm.conf"), idle_vm("victim", "")).unwrap();
    // Every VM process of this daemon calls socket(2) once its filter is on
    // (kapsel-vmm's debug-build hook; see sandbox::debug).
    d.spawn_with_env(&[("KAPSEL_DEBUG_SECCOMP", "violate")]);
    // Stopped after its run (not before its start).
    let until = Instant::now() + Duration::from_secs(20);
    let mut vm = d.wait_state("victim", "stopped");
    while vm["last_exit"].is_null() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
        vm = d.wait_state("victim", "stopped");
    }
    let reason = vm["last_exit"].as_str().unwrap_or_default().to_string();
    assert!(
        reason.contains("SIGSYS") && reason.contains("seccomp"),
        "{reason}"
    );
    assert!(d.log().contains("SIGSYS"), "{}", d.log());
    // The daemon is unharmed and serves on.
    assert!(d.ok(&["status"]).contains("victim"));
}

// --- containers ---------------------------------------------------------------

#[path = "../../kapsel-container/tests/common/mod.rs"]
mod ctcommon;

#[test]
fn containers_start_exec_pause_and_stop_like_vms() {
    if !ctcommon::ready() {
        return;
    }
    let root = ctcommon::Rootfs::system("daemon-sys");
    let web = ctcommon::name("web");
    let app = ctcommon::name("app");
    let conf = format!(
        "container \"{web}\" {{\n\troot \"{r}\"\n\tmemory 64M\n\tpids 64\n\tcpus 1\n}}\n\
         container \"{app}\" {{\n\troot \"{r}\"\n\tinit \"/bin/sh\" \"-c\" \"echo app-ran; exit 3\"\n\tdisable\n}}\n",
        r = root.path.display()
    );
    let d = Kapseld::start(&conf);
    let st = d.wait_state(&web, "running");
    assert_eq!(st["kind"], "container");
    assert_eq!(st["max_mem"], 64 << 20);
    let init = pid_of(&st);
    let table = d.ok(&["status"]);
    assert!(
        table
            .lines()
            .any(|l| l.ends_with(&web) && l.contains("container")),
        "{table}"
    );
    d.console_text(&web, "kapsel-ct-booted");

    // exec: output, exit status, the container's hostname and PID space.
    let (code, out, err) = d.run(&[
        "exec",
        &web,
        "--",
        "/bin/sh",
        "-c",
        "hostname; echo pid1=$(cat /proc/1/comm); exit 5",
    ]);
    assert_eq!(code, 5, "{err}");
    assert!(out.contains(&web) && out.contains("pid1=init"), "{out}");
    // Input reaches the command.
    let mut child = d
        .cmd(&["exec", &web, "--", "/bin/cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"through exec\n")
        .unwrap();
    let (code, out, _) = out_of(child.wait_with_output().unwrap());
    assert_eq!((code, out.as_str()), (0, "through exec\n"));

    // On a terminal (script(1) gives the CLI one) the command gets a pty
    // of the container's own devpts, sized like the user's terminal.
    if Command::new("script").arg("--version").output().is_ok() {
        let cli = format!(
            "stty rows 30 cols 90; {KAPSEL} --socket {} exec {web} -- /bin/sh -c 'tty; stty size; exit 4'",
            d.socket().display()
        );
        let (code, out, err) = out_of(
            Command::new("script")
                .args(["-qec", &cli, "/dev/null"])
                .stdin(Stdio::null())
                .output()
                .unwrap(),
        );
        assert_eq!(code, 4, "{out}{err}");
        assert!(out.contains("/dev/pts/") && out.contains("30 90"), "{out}");
    }

    // pause freezes the cgroup; unpause thaws it.
    d.ok(&["pause", &web]);
    assert_eq!(d.vm(&web)["state"], "paused");
    let frozen = || {
        ctcommon::cgroup_dirs(&web).iter().any(|dir| {
            std::fs::read_to_string(dir.join("cgroup.freeze")).is_ok_and(|s| s.trim() == "1")
                || std::fs::read_to_string(dir.join("freezer.state"))
                    .is_ok_and(|s| s.trim() == "FROZEN")
        })
    };
    assert!(ctcommon::eventually(5, frozen), "the cgroup is frozen");
    d.ok(&["unpause", &web]);
    assert!(ctcommon::eventually(5, || !frozen()));

    // stop: the init's power-off signal; the shutdown actions run.
    let said = d.ok(&["stop", "-w", &web]);
    assert!(said.contains("exited (status 0)"), "{said}");
    assert_eq!(process_state(init), None);
    assert!(ctcommon::cgroup_dirs(&web).is_empty(), "cgroup removed");
    d.console_text(&web, "kapsel-ct-shutdown");
    let (code, _, err) = d.run(&["exec", &web, "--", "/bin/true"]);
    assert_eq!(code, 1);
    assert!(err.contains("not running"), "{err}");

    // An application container's status is its command's.
    d.ok(&["start", &app]);
    let st = d.wait_state(&app, "stopped");
    assert_eq!(st["last_exit"], "failed (exit 3)", "{st}");
    d.console_text(&app, "app-ran");
}

/// A writable Debian root for one test: an overlay on the cached root, or
/// a copy of it.
enum DebianRoot {
    Overlay(ctcommon::Overlay),
    Copy(ctcommon::CopiedRoot),
}

impl DebianRoot {
    fn root(&self) -> PathBuf {
        match self {
            DebianRoot::Overlay(o) => o.root(),
            DebianRoot::Copy(c) => c.0.clone(),
        }
    }
}

/// The `Uid:` or `Gid:` line of a host process, its four ids.
fn proc_ids(pid: i32, key: &str) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .map(|ids| {
            ids.split_whitespace()
                .filter_map(|i| i.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn an_unprivileged_container_is_root_inside_only() {
    use std::os::unix::fs::MetadataExt;
    if !ctcommon::ready() {
        return;
    }
    let root = ctcommon::Rootfs::system("daemon-unpriv");
    // A host file of an id outside the map, which only the host's root
    // (or a privileged container's) may read.
    std::fs::write(root.file("/etc/foreign"), "foreign-secret\n").unwrap();
    std::fs::set_permissions(
        root.file("/etc/foreign"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    std::os::unix::fs::chown(root.file("/etc/foreign"), Some(4_000_000), Some(4_000_000)).unwrap();
    let name = ctcommon::name("unpriv");
    let twin = ctcommon::name("priv");
    let conf = format!(
        "container \"{name}\" {{\n\troot \"{r}\"\n\tunprivileged\n}}\n\
         container \"{twin}\" {{\n\troot \"{r}\"\n\tdisable\n}}\n",
        r = root.path.display()
    );
    let d = Kapseld::start(&conf);
    let init = pid_of(&d.wait_state(&name, "running"));
    d.console_text(&name, "kapsel-ct-booted");
    // The host sees an ordinary user.
    assert_eq!(proc_ids(init, "Uid:"), [100000; 4]);
    assert_eq!(proc_ids(init, "Gid:"), [100000; 4]);

    let probe = "echo uid=$(id -u) gid=$(id -g); cat /proc/self/uid_map /proc/self/gid_map; \
                 stat -c owner=%u:%g / /etc/inittab; \
                 cat /etc/foreign 2>/dev/null || echo foreign-denied; \
                 mknod /tmp/blk b 8 0 2>/dev/null || echo mknod-denied; \
                 mount -t proc proc /mnt 2>/dev/null || echo mount-denied; \
                 echo 1 2>/dev/null >/proc/sys/kernel/sysrq || echo sysctl-denied";
    let (code, inside, err) = d.run(&["exec", &name, "--", "/bin/sh", "-c", probe]);
    assert_eq!(code, 0, "{err}");
    assert!(inside.contains("uid=0 gid=0\n"), "{inside}");
    let maps: Vec<Vec<&str>> = inside
        .lines()
        .map(|l| l.split_whitespace().collect())
        .filter(|w: &Vec<&str>| w.len() == 3)
        .collect();
    assert_eq!(
        maps,
        [["0", "100000", "65536"], ["0", "100000", "65536"]],
        "{inside}"
    );
    // The root, owned by the host's root, is the container's root's
    // (idmapped), without a chown on disk.
    assert!(inside.contains("owner=0:0\nowner=0:0\n"), "{inside}");
    for denied in [
        "foreign-denied",
        "mknod-denied",
        "mount-denied",
        "sysctl-denied",
    ] {
        assert!(inside.contains(denied), "{denied}: {inside}");
    }
    // What it writes is stored with the ids it wrote.
    d.ok(&[
        "exec",
        &name,
        "--",
        "/bin/sh",
        "-c",
        "touch /made-inside && mkdir /tmp/u && chown 1000:1000 /tmp/u",
    ]);
    let made = std::fs::symlink_metadata(root.file("/made-inside")).unwrap();
    assert_eq!((made.uid(), made.gid()), (0, 0));
    let u = std::fs::symlink_metadata(root.file("/tmp/u")).unwrap();
    assert_eq!((u.uid(), u.gid()), (1000, 1000));
    assert_eq!(
        std::fs::metadata(root.file("/etc/foreign")).unwrap().uid(),
        4_000_000
    );

    let said = d.ok(&["stop", "-w", &name]);
    assert!(said.contains("exited (status 0)"), "{said}\n{}", d.log());
    d.console_text(&name, "kapsel-ct-shutdown");
    assert_eq!(process_state(init), None);
    assert!(ctcommon::cgroup_dirs(&name).is_empty(), "cgroup removed");
    assert!(
        mounts_under(&root.path).is_empty(),
        "{:?}",
        mounts_under(&root.path)
    );

    // The same probe in a privileged container on the same root: host
    // root with its capabilities, which is what the above must not be.
    d.ok(&["start", &twin]);
    let priv_init = pid_of(&d.wait_state(&twin, "running"));
    assert_eq!(proc_ids(priv_init, "Uid:"), [0; 4]);
    let (_, privileged, _) = d.run(&["exec", &twin, "--", "/bin/sh", "-c", probe]);
    assert!(privileged.contains("foreign-secret"), "{privileged}");
    d.ok(&["stop", "-w", &twin]);

    // A root shifted by hand (owned by the map's first host id) is used
    // as it is: no idmapped mount, files stay with the host's ids.
    let shifted = Command::new("chown")
        .args(["-hR", "100000:100000"])
        .arg(&root.path)
        .status()
        .unwrap();
    assert!(shifted.success());
    d.ok(&["start", &name]);
    d.wait_state(&name, "running");
    d.ok(&["exec", &name, "--", "/bin/touch", "/tmp/shifted-inside"]);
    assert_eq!(
        std::fs::metadata(root.file("/tmp/shifted-inside"))
            .unwrap()
            .uid(),
        100000
    );
    d.ok(&["stop", "-w", &name]);
    assert!(ctcommon::cgroup_dirs(&name).is_empty());
}

fn out_of(o: Output) -> (i32, String, String) {
    out(o)
}

#[test]
fn a_container_gets_its_address_by_dhcp_on_a_local_interface() {
    if !ctcommon::ready() || !kvm_usable() {
        return;
    }
    if Command::new("nft").arg("--version").output().is_err() {
        println!("SKIP: nft (Debian: nftables) is not installed");
        return;
    }
    let Some(ns) = Netns::create("ctdhcp") else {
        return;
    };
    let root = ctcommon::Rootfs::new("daemon-dhcp");
    // udhcpc's script applies the lease and prints it; then the gateway
    // (the host side) is pinged.
    std::fs::write(
        root.file("/bin/lease"),
        "#!/bin/sh\ncase $1 in bound|renew)\n  ip addr add $ip/$mask dev $interface\n  [ -n \"$router\" ] && ip route add default via $router\n  echo \"LEASE ip=$ip mask=$mask router=$router dns=$dns\"\n;; esac\n",
    )
    .unwrap();
    std::fs::set_permissions(
        root.file("/bin/lease"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::fs::write(
        root.file("/bin/dhcp-test"),
        "#!/bin/sh\nudhcpc -i eth0 -n -q -t 5 -T 1 -s /bin/lease 2>&1 | grep LEASE\ngw=$(ip route | awk '/default/ { print $3 }')\nif ping -c 1 -W 3 \"$gw\" >/dev/null 2>&1; then echo PING-OK; else echo PING-FAILED; fi\n",
    )
    .unwrap();
    std::fs::set_permissions(
        root.file("/bin/dhcp-test"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let name = ctcommon::name("dhcp");
    let conf = format!(
        "container \"{name}\" {{\n\troot \"{}\"\n\tinit \"/bin/dhcp-test\"\n\tlocal interface\n}}\n",
        root.path.display()
    );
    let d = Kapseld::start_in(Some(&ns.0), &conf);
    let st = d.wait_state(&name, "stopped");
    let text = d.console_text(&name, "PING-");
    // The first guest (id 1), interface 0: vmd's /31 is 100.64.1.2 (host)
    // and 100.64.1.3 (guest).
    assert!(
        text.contains("LEASE ip=100.64.1.3 mask=31 router=100.64.1.2"),
        "{text}\n{st}\n{}",
        d.log()
    );
    assert!(text.contains("PING-OK"), "{text}");
    // The veth went with the container.
    let links = ns.exec("ip").args(["-o", "link"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&links.stdout).contains("kct"));
}

/// A daemon in its own network namespace with one container on a local
/// interface that took its lease: (namespace, daemon, daemon pid, the
/// container's init pid). `None`: SKIP printed.
fn dhcp_setup(tag: &str) -> Option<(Netns, Kapseld, u32, i32, ctcommon::Rootfs)> {
    if !ctcommon::ready() {
        return None;
    }
    if Command::new("nft").arg("--version").output().is_err() {
        println!("SKIP: nft (Debian: nftables) is not installed");
        return None;
    }
    let ns = Netns::create(tag)?;
    let root = ctcommon::Rootfs::new(tag);
    let name = ctcommon::name(tag);
    let d = Kapseld::start_in(Some(&ns.0), &dhcp_container(&name, &root.path));
    let text = d.console_text(&name, "LEASE");
    assert!(
        text.contains("LEASE ip=100.64.1.3 mask=31 router=100.64.1.2"),
        "{text}\n{}",
        d.log()
    );
    let ct = pid_of(&d.wait_state(&name, "running"));
    let daemon = d.child.as_ref().unwrap().id();
    Some((ns, d, daemon, ct, root))
}

#[test]
fn dhcp_is_answered_by_the_helper_not_the_daemon() {
    let Some((_ns, d, daemon, ct, _root)) = dhcp_setup("dhcphelper") else {
        return;
    };
    let helper = wait_dhcp_helper(daemon, None, 5)
        .unwrap_or_else(|| panic!("no DHCP helper process:\n{}", d.log()));
    let uid = proc_status(helper, "Uid").unwrap();
    assert!(uid.split_whitespace().all(|u| u != "0"), "helper uid {uid}");
    assert_eq!(proc_status(helper, "CapEff").unwrap(), "0000000000000000");
    assert_eq!(proc_status(helper, "Seccomp").unwrap(), "2");
    assert_eq!(proc_status(helper, "NoNewPrivs").unwrap(), "1");
    assert!(dhcp_from(ct, 5), "no lease:\n{}", d.log());
    // With the helper stopped nobody answers: not the daemon either.
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(helper, libc::SIGSTOP) };
    let answered = dhcp_from(ct, 3);
    // SAFETY: as above.
    unsafe { libc::kill(helper, libc::SIGCONT) };
    assert!(!answered, "a lease came while the DHCP helper was stopped");
    assert!(dhcp_from(ct, 5), "no lease after SIGCONT:\n{}", d.log());
    assert_eq!(
        dhcp_helper_of(daemon),
        Some(helper),
        "the helper did not survive SIGSTOP and SIGCONT:\n{}",
        d.log()
    );
}

#[test]
fn a_killed_dhcp_helper_is_started_again() {
    let Some((_ns, mut d, daemon, ct, _root)) = dhcp_setup("dhcprestart") else {
        return;
    };
    let old = wait_dhcp_helper(daemon, None, 5)
        .unwrap_or_else(|| panic!("no DHCP helper process:\n{}", d.log()));
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(old, libc::SIGKILL) };
    let new = wait_dhcp_helper(daemon, Some(old), 10)
        .unwrap_or_else(|| panic!("the DHCP helper was not started again:\n{}", d.log()));
    assert!(
        dhcp_from(ct, 5),
        "no lease from the new helper:\n{}",
        d.log()
    );
    assert!(
        d.log().contains(&format!("DHCP helper (pid {old}) ended")),
        "{}",
        d.log()
    );
    // The helper goes with the daemon.
    d.stop_daemon();
    let gone = ctcommon::eventually(5, || process_state(new).is_none_or(|s| s == 'Z'));
    assert!(gone, "the DHCP helper outlived its daemon");
}

#[test]
fn two_containers_on_a_switch_reach_each_other() {
    if !ctcommon::ready() {
        return;
    }
    let Some(ns) = Netns::create("ctsw") else {
        return;
    };
    let root = ctcommon::Rootfs::new("daemon-sw");
    let ct = |name: &str, me: &str, peer: &str| {
        format!(
            "container \"{name}\" {{\n\troot \"{}\"\n\tinit \"/bin/sh\" \"-c\" \"ip addr add {me}/24 dev eth0; sleep 1; ping -c 2 -W 3 {peer} >/dev/null && echo REACHED-{peer}; sleep 1000\"\n\tinterface {{ switch \"ctlan\" }}\n}}\n",
            root.path.display()
        )
    };
    let a = ctcommon::name("swa");
    let b = ctcommon::name("swb");
    let conf = format!(
        "switch \"ctlan\" {{\n}}\n{}{}",
        ct(&a, "10.77.0.1", "10.77.0.2"),
        ct(&b, "10.77.0.2", "10.77.0.1")
    );
    let d = Kapseld::start_in(Some(&ns.0), &conf);
    d.console_text(&a, "REACHED-10.77.0.2");
    d.console_text(&b, "REACHED-10.77.0.1");
    // Both host sides are ports of the switch's bridge.
    let ports = ns
        .exec("ip")
        .args(["-o", "link", "show", "master", "kbr-ctlan"])
        .output()
        .unwrap();
    let ports = String::from_utf8_lossy(&ports.stdout);
    assert_eq!(ports.matches("kct").count(), 2, "{ports}");
}

/// Two busybox containers on switch "rc" (`locked lladdr`) in a network
/// namespace of their own, addressed 10.78.0.1 and .2, reaching each other.
struct SwitchPair {
    d: Kapseld,
    a: String,
    b: String,
    /// Their host-side veths, sorted.
    veths: Vec<String>,
    conf: Box<dyn Fn(&str) -> String>,
    _root: ctcommon::Rootfs,
    // Last: the daemon goes before its namespace.
    ns: Netns,
}

impl SwitchPair {
    fn start(tag: &str) -> Option<SwitchPair> {
        if !ctcommon::ready() {
            return None;
        }
        let ns = Netns::create(tag)?;
        let root = ctcommon::Rootfs::new(&format!("daemon-{tag}"));
        let a = ctcommon::name("rca");
        let b = ctcommon::name("rcb");
        let (ra, rb, path) = (a.clone(), b.clone(), root.path.display().to_string());
        let conf = move |switch: &str| {
            let ct = |name: &str, me: &str| {
                format!(
                    "container \"{name}\" {{\n\troot \"{path}\"\n\tinit \"/bin/sh\" \"-c\" \"ip addr add {me}/24 dev eth0; echo CONFIGURED; sleep 1000\"\n\tinterface {{ switch \"{switch}\" }}\n}}\n"
                )
            };
            format!(
                "switch \"{switch}\" {{\n\tlocked lladdr\n}}\n{}{}",
                ct(&ra, "10.78.0.1"),
                ct(&rb, "10.78.0.2")
            )
        };
        let d = Kapseld::start_in(Some(&ns.0), &conf("rc"));
        d.console_text(&a, "CONFIGURED");
        d.console_text(&b, "CONFIGURED");
        assert!(ping_within(&d, &a, "10.78.0.2", 10), "{}", d.log());
        let mut veths: Vec<String> = [&a, &b]
            .iter()
            .map(|n| format!("kct{}-0", d.vm(n)["id"]))
            .collect();
        veths.sort();
        let pair = SwitchPair {
            d,
            a,
            b,
            veths,
            conf: Box::new(conf),
            _root: root,
            ns,
        };
        assert_eq!(pair.ports("kbr-rc"), pair.veths);
        Some(pair)
    }

    /// The sorted names of the ports of `bridge` (`ip -j link show master`).
    fn ports(&self, bridge: &str) -> Vec<String> {
        let out = self
            .ns
            .exec("ip")
            .args(["-j", "link", "show", "master", bridge])
            .output()
            .unwrap();
        let mut ports: Vec<String> = serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout)
            .unwrap_or_default()
            .iter()
            .filter_map(|l| l["ifname"].as_str().map(str::to_string))
            .collect();
        ports.sort();
        ports
    }

    fn has_link(&self, ifname: &str) -> bool {
        self.ns
            .exec("ip")
            .args(["link", "show", ifname])
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// Runs a command in the namespace; it must succeed.
    fn must(&self, what: &[&str]) {
        let o = self.ns.exec(what[0]).args(&what[1..]).output().unwrap();
        assert!(o.status.success(), "{what:?}: {o:?}");
    }
}

/// Whether container `from` reaches `to` by ping within `tries` seconds.
fn ping_within(d: &Kapseld, from: &str, to: &str, tries: u32) -> bool {
    (0..tries).any(|_| {
        let (code, _, _) = d.run(&["exec", from, "--", "ping", "-c", "1", "-W", "1", to]);
        code == 0
    })
}

#[test]
fn a_deleted_bridge_gets_its_ports_back_on_reset_and_reload() {
    let Some(p) = SwitchPair::start("reconcile") else {
        return;
    };
    let d = &p.d;
    // Behind the daemon's back: the bridge goes, with the locking rules.
    p.must(&["ip", "link", "del", "kbr-rc"]);
    p.must(&["nft", "delete", "table", "bridge", "kapsel"]);
    // `reset switches` makes the bridge and puts both veths back on it,
    // locked and up.
    let t0 = Instant::now();
    d.ok(&["reset", "switches"]);
    println!("reset switches with 2 guests: {:?}", t0.elapsed());
    assert_eq!(p.ports("kbr-rc"), p.veths, "{}", d.log());
    for veth in &p.veths {
        let chain = format!("lock-{veth}");
        p.must(&["nft", "list", "chain", "bridge", "kapsel", &chain]);
    }
    assert!(ping_within(d, &p.a, "10.78.0.2", 5), "{}", d.log());

    // Deleted again: the daemon notices by itself, and `status` says so.
    p.must(&["ip", "link", "del", "kbr-rc"]);
    let until = Instant::now() + Duration::from_secs(15);
    while !d.log().contains("behind kapseld's back") && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(d.log().contains("behind kapseld's back"), "{}", d.log());
    let st = d.vm(&p.a);
    assert!(
        st["detached"].to_string().contains("kbr-rc"),
        "status does not show the detached interface: {st}"
    );
    let (code, _, err) = d.run(&["status"]);
    assert_eq!(code, 0);
    assert!(err.contains("reset switches"), "{err}");
    // A reload reconciles too.
    d.ok(&["reload"]);
    assert_eq!(p.ports("kbr-rc"), p.veths, "{}", d.log());
    assert!(d.vm(&p.a).get("detached").is_none());
    assert!(ping_within(d, &p.a, "10.78.0.2", 5), "{}", d.log());
}

#[test]
fn a_renamed_switchs_bridge_goes_when_its_last_guest_stops() {
    let Some(p) = SwitchPair::start("retire") else {
        return;
    };
    let d = &p.d;
    // Renamed: the old bridge stays while its guests run on it (they keep
    // reaching each other), and goes when the last of them stops.
    std::fs::write(d.dir.join("vm.conf"), (p.conf)("rc2")).unwrap();
    d.ok(&["reload"]);
    assert!(p.has_link("kbr-rc2"));
    assert_eq!(p.ports("kbr-rc"), p.veths, "{}", d.log());
    assert!(ping_within(d, &p.a, "10.78.0.2", 5), "{}", d.log());
    d.ok(&["stop", "-w", &p.a]);
    assert!(p.has_link("kbr-rc"), "removed while {} still uses it", p.b);
    d.ok(&["stop", "-w", &p.b]);
    let until = Instant::now() + Duration::from_secs(5);
    while p.has_link("kbr-rc") && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!p.has_link("kbr-rc"), "{}", d.log());
    // Started again, a guest joins the renamed switch.
    d.ok(&["start", &p.a]);
    d.wait_state(&p.a, "running");
    assert_eq!(p.ports("kbr-rc2").len(), 1, "{}", d.log());
}

/// Mount points at or below `dir` in the host's mount table.
fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&prefix))
        .map(str::to_string)
        .collect()
}

#[test]
fn a_debian_container_boots_systemd_to_multi_user_and_stops_cleanly() {
    debian_systemd_boots_and_stops(false);
}

/// The same Debian container with `unprivileged`: systemd as root of a
/// user namespace on an idmapped overlay, its cgroup2 tree delegated.
#[test]
fn an_unprivileged_debian_container_boots_systemd_and_stops_cleanly() {
    debian_systemd_boots_and_stops(true);
}

/// Waits, until `until`, for systemd in the container `name` to say that
/// multi-user.target is active: systemctl answers once systemd's private
/// socket exists; until then it fails.
fn wait_multi_user(d: &Kapseld, name: &str, until: Instant) {
    loop {
        let (code, out, _) = d.run(&[
            "exec",
            name,
            "--",
            "systemctl",
            "is-active",
            "multi-user.target",
        ]);
        if code == 0 && out.trim() == "active" {
            return;
        }
        assert!(
            Instant::now() < until,
            "multi-user.target not active after 60 s ({out}):\n{}\n{}",
            d.console_text(name, ""),
            d.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn debian_systemd_boots_and_stops(unprivileged: bool) {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("SKIP: containers need root");
        return;
    }
    let Some(cache) = ctcommon::debian_root() else {
        return;
    };
    let tag = if unprivileged { "deb-unpriv" } else { "deb" };
    // An overlay cannot be idmapped itself (only its layers can): the
    // unprivileged container gets a copy on the host's file system.
    let ovl = if unprivileged {
        DebianRoot::Copy(ctcommon::CopiedRoot::new(&cache, tag))
    } else {
        DebianRoot::Overlay(ctcommon::Overlay::new(&cache, tag))
    };
    // A service sandboxed as many of Debian's are: systemd boots without
    // CAP_SYS_ADMIN too, but then skips the sandbox silently (/usr stays
    // writable); with it, ProtectSystem= holds.
    let units = ovl.root().join("etc/systemd/system");
    std::fs::write(
        units.join("kapsel-probe.service"),
        "[Service]\nType=oneshot\nRemainAfterExit=yes\nProtectSystem=strict\nPrivateTmp=yes\n\
         ExecStart=/bin/sh -c 'touch /usr/probe 2>/dev/null && echo usr-writable || echo usr-readonly'\n\
         [Install]\nWantedBy=multi-user.target\n",
    )
    .unwrap();
    std::os::unix::fs::symlink(
        "/etc/systemd/system/kapsel-probe.service",
        units.join("multi-user.target.wants/kapsel-probe.service"),
    )
    .unwrap();
    let name = ctcommon::name(tag);
    // No init given: /sbin/init, Debian's link to systemd.
    let conf = format!(
        "container \"{name}\" {{\n\troot \"{}\"\n{}}}\n",
        ovl.root().display(),
        if unprivileged { "\tunprivileged\n" } else { "" }
    );
    let t0 = Instant::now();
    let d = Kapseld::start(&conf);
    let init = pid_of(&d.wait_state(&name, "running"));

    let until = Instant::now() + Duration::from_secs(60);
    wait_multi_user(&d, &name, until);
    let booted = t0.elapsed();
    // systemd-analyze says "Bootup is not yet finished" (exit 1) while
    // jobs after multi-user.target still run, which a loaded machine
    // makes last.
    let analyze = loop {
        let (code, out, err) = d.run(&["exec", &name, "--", "systemd-analyze"]);
        if code == 0 {
            break out;
        }
        assert!(
            Instant::now() < until && err.contains("not yet finished"),
            "systemd-analyze: exit {code}: {err}\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let host_id = if unprivileged { 100000 } else { 0 };
    assert_eq!(proc_ids(init, "Uid:"), [host_id; 4]);
    if unprivileged {
        let maps = d.ok(&["exec", &name, "--", "cat", "/proc/1/uid_map"]);
        assert_eq!(
            maps.split_whitespace().collect::<Vec<_>>(),
            ["0", "100000", "65536"]
        );
        // Its cgroup2 directory is the mapped root's, its sub-groups
        // (init.scope, system.slice) are systemd's own.
        use std::os::unix::fs::MetadataExt;
        let tree = ctcommon::cgroup_dirs(&name)
            .into_iter()
            .find(|d| d.join("init.scope").is_dir())
            .expect("systemd's tree");
        for f in ["", "cgroup.procs", "init.scope"] {
            let m = std::fs::metadata(tree.join(f)).unwrap();
            assert_eq!((m.uid(), m.gid()), (host_id, host_id), "{f}");
        }
    }
    println!(
        "systemd container{}: multi-user.target active {:.2} s after the daemon started; systemd-analyze: {}",
        if unprivileged { " (unprivileged)" } else { "" },
        booted.as_secs_f64(),
        analyze.lines().next().unwrap_or("").trim()
    );
    // Nothing failed on the way: the boot is complete and not degraded.
    let (_, state, _) = d.run(&[
        "exec",
        &name,
        "--",
        "systemctl",
        "is-system-running",
        "--wait",
    ]);
    let failed = d.ok(&["exec", &name, "--", "systemctl", "--failed", "--no-pager"]);
    assert_eq!(state.trim(), "running", "failed units:\n{failed}");

    // The container manager's side of systemd's container interface.
    let probe = d.ok(&[
        "exec",
        &name,
        "--",
        "/bin/sh",
        "-c",
        "hostname; echo pid1=$(cat /proc/1/comm); echo virt=$(systemd-detect-virt -c); \
         grep -E ' /(run|run/lock|tmp|sys/fs/cgroup) ' /proc/mounts; cat /proc/1/cgroup",
    ]);
    assert!(probe.starts_with(&format!("{name}\n")), "{probe}");
    assert!(probe.contains("pid1=systemd\n"), "{probe}");
    assert!(probe.contains("virt=container-other\n"), "{probe}");
    assert!(
        probe.contains("cgroup2 /sys/fs/cgroup cgroup2 rw,"),
        "{probe}"
    );
    for tmpfs in [
        "tmpfs /run tmpfs rw",
        "tmpfs /run/lock tmpfs rw",
        "tmpfs /tmp tmpfs rw",
    ] {
        assert!(probe.contains(tmpfs), "{tmpfs}: {probe}");
    }
    // systemd runs in unified mode in its own tree: it moved itself to
    // init.scope below the container's cgroup namespace root.
    assert!(probe.contains("0::/init.scope\n"), "{probe}");
    // The probe's line reaches the journal through journald's stream,
    // possibly after the target is reached.
    let mut probe = String::new();
    ctcommon::eventually(10, || {
        probe = d.ok(&[
            "exec",
            &name,
            "--",
            "journalctl",
            "-u",
            "kapsel-probe",
            "-o",
            "cat",
        ]);
        probe.contains("usr-")
    });
    assert!(probe.contains("usr-readonly"), "service sandbox: {probe}");
    // The console is the pty: systemd greets on it, and its getty (which
    // hangs the console up first) prompts there.
    d.console_text(&name, "Welcome to");
    d.console_text(&name, &format!("{name} login:"));

    // pause freezes systemd with everything it started; it goes on after.
    d.ok(&["pause", &name]);
    assert_eq!(d.vm(&name)["state"], "paused");
    d.ok(&["unpause", &name]);
    let (_, state, _) = d.run(&["exec", &name, "--", "systemctl", "is-system-running"]);
    assert_eq!(state.trim(), "running");

    let t1 = Instant::now();
    let said = d.ok(&["stop", "-w", &name]);
    let stopped = t1.elapsed();
    println!(
        "systemd container{}: stopped in {:.2} s",
        if unprivileged { " (unprivileged)" } else { "" },
        stopped.as_secs_f64()
    );
    // A clean power-off (no SIGKILL after the daemon's 5 s timeout):
    // systemd-shutdown, lacking CAP_SYS_BOOT, exits with 0.
    assert!(said.contains("exited (status 0)"), "{said}\n{}", d.log());
    assert!(stopped < Duration::from_secs(5), "{stopped:?}");
    assert_eq!(process_state(init), None);
    assert!(
        ctcommon::cgroup_dirs(&name).is_empty(),
        "cgroups left: {:?}",
        ctcommon::cgroup_dirs(&name)
    );
    let root = ovl.root();
    let left: Vec<String> = mounts_under(&root)
        .into_iter()
        .filter(|m| Path::new(m) != root)
        .collect();
    assert!(left.is_empty(), "mounts left: {left:?}");
}

#[test]
fn load_log_and_reset() {
    if !kvm_usable() {
        return;
    }
    let d = Kapseld::start(&idle_vm("base", ""));
    d.wait_state("base", "running");
    let extra = d.dir.join("extra.conf");
    std::fs::write(&extra, idle_vm("loaded", "")).unwrap();
    let said = d.ok(&["load", extra.to_str().unwrap()]);
    assert!(said.contains("1 new guest(s) started"), "{said}");
    d.wait_state("loaded", "running");
    // A name that exists already is refused, naming the file.
    let (code, _, err) = d.run(&["load", d.dir.join("vm.conf").to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("declared twice"), "{err}");
    d.ok(&["log", "brief"]);
    d.ok(&["log", "verbose"]);
    // reset vms kills every VM.
    d.ok(&["reset", "vms"]);
    for name in ["base", "loaded"] {
        assert_eq!(d.vm(name)["state"], "stopped");
        assert_eq!(d.vm(name)["last_exit"], "killed by SIGKILL");
    }
    // Loaded files are read again on reload.
    d.ok(&["reload"]);
    assert!(d.status().iter().any(|v| v["name"] == "loaded"));
}

#[test]
fn socket_owner_decides_who_may_connect() {
    let Some((uid, gid)) = owner_tests_ready() else {
        return;
    };
    let d = Kapseld::start("socket owner kapsel-test-owner\n");
    let meta = std::fs::metadata(d.socket()).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!((meta.uid(), meta.mode() & 0o777), (uid, 0o660));
    let mut as_owner = d.cmd(&["status"]);
    as_owner.uid(uid).gid(gid);
    let (code, _, err) = out(as_owner.output().unwrap());
    assert_eq!(code, 0, "{err}");
    let nobody = kapsel_daemon::accounts::uid_of("nobody").unwrap();
    let nogroup = kapsel_daemon::accounts::gid_of("nogroup").unwrap();
    let mut as_other = d.cmd(&["status"]);
    as_other.uid(nobody).gid(nogroup);
    let (code, _, err) = out(as_other.output().unwrap());
    assert_eq!(code, 1);
    assert!(err.contains("socket owner"), "{err}");
}

#[test]
fn staggered_start_starts_vms_in_groups() {
    if !kvm_usable() {
        return;
    }
    let conf = format!(
        "staggered start parallel 1 delay 3\n{}{}",
        idle_vm("first", ""),
        idle_vm("second", "")
    );
    let d = Kapseld::start(&conf);
    d.wait_state("first", "running");
    assert_eq!(
        d.vm("second")["state"],
        "stopped",
        "the second group waits for the delay"
    );
    d.wait_state("second", "running");
}

#[test]
fn a_container_from_an_image_tarball_is_unpacked_once() {
    if !ctcommon::ready() {
        return;
    }
    let root = ctcommon::Rootfs::new("daemon-image");
    std::fs::write(root.file("/etc/motd"), "from the image\n").unwrap();
    let tarball = std::env::temp_dir().join(format!("kapsel-image-{}.tar.gz", std::process::id()));
    root.tarball(&tarball, true);
    let name = ctcommon::name("img");
    let conf = format!(
        "container \"{name}\" {{\n\timage \"{}\"\n\tinit \"/bin/sh\" \"-c\" \"cat /etc/motd; echo run >> /runs; wc -l < /runs\"\n\tdisable\n}}\n",
        tarball.display()
    );
    let d = Kapseld::start(&conf);
    d.ok(&["start", &name]);
    assert_eq!(
        d.wait_state(&name, "stopped")["last_exit"],
        "exited (status 0)"
    );
    let text = d.console_text(&name, "from the image");
    assert!(text.contains('1'), "{text}");
    // The second start uses the same unpacked root: its file has two lines.
    d.ok(&["start", &name]);
    d.wait_state(&name, "stopped");
    d.console_text(&name, "2");
    let unpacked = d.dir.join("state/ct").join(&name).join("root/runs");
    assert_eq!(std::fs::read_to_string(unpacked).unwrap(), "run\nrun\n");
    let _ = std::fs::remove_file(&tarball);
    // A file that is no archive is refused, naming it.
    let bad = d.dir.join("bad.tar.gz");
    std::fs::write(&bad, "not an archive").unwrap();
    let other = ctcommon::name("badimg");
    std::fs::write(
        d.dir.join("more.conf"),
        format!(
            "container \"{other}\" {{\n\timage \"{}\"\n\tdisable\n}}\n",
            bad.display()
        ),
    )
    .unwrap();
    d.ok(&["load", d.dir.join("more.conf").to_str().unwrap()]);
    let (code, _, err) = d.run(&["start", &other]);
    assert_eq!(code, 1);
    assert!(
        err.contains("unpacking") && err.contains("bad.tar.gz"),
        "{err}"
    );
}

#[test]
fn the_daemon_answers_while_an_image_unpacks() {
    if !ctcommon::ready() {
        return;
    }
    // 64 MiB that do not compress: seconds to unpack in a debug build.
    let root = ctcommon::Rootfs::new("daemon-bigimage");
    let mut big = std::fs::File::create(root.file("/big")).unwrap();
    let mut urandom = std::fs::File::open("/dev/urandom").unwrap();
    std::io::copy(&mut std::io::Read::take(&mut urandom, 64 << 20), &mut big).unwrap();
    drop(big);
    let tarball = std::env::temp_dir().join(format!("kapsel-big-{}.tar.gz", std::process::id()));
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "tar -C {} -cf - . | gzip -1 > {}",
            root.path.display(),
            tarball.display()
        ))
        .status()
        .unwrap()
        .success();
    assert!(ok, "tar | gzip");
    let name = ctcommon::name("bigimg");
    let conf = format!(
        "container \"{name}\" {{\n\timage \"{}\"\n\tinit \"/bin/true\"\n\tdisable\n}}\n",
        tarball.display()
    );
    let d = Kapseld::start(&conf);
    let mut start = d.cmd(&["start", &name]).spawn().unwrap();
    let tmp = d.dir.join("state/ct").join(&name).join(".root.tmp");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !tmp.exists() {
        assert!(Instant::now() < deadline, "the unpack never began");
        assert!(
            start.try_wait().unwrap().is_none(),
            "start ended before unpacking"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // Served while the unpack goes on: the directory is still there after.
    let status = d.ok(&["status"]);
    assert!(status.contains(&name), "{status}");
    assert!(
        tmp.exists(),
        "status was answered only after the unpack had ended"
    );
    assert!(start.wait().unwrap().success());
    assert_eq!(
        d.wait_state(&name, "stopped")["last_exit"],
        "exited (status 0)"
    );
    let _ = std::fs::remove_file(&tarball);
}

/// Writes `bytes` as a blob of the OCI layout `dir`; returns its descriptor.
fn oci_blob(dir: &Path, media_type: &str, bytes: &[u8]) -> serde_json::Value {
    use sha2::Digest as _;
    let hex: String = sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    std::fs::write(dir.join("blobs/sha256").join(&hex), bytes).unwrap();
    serde_json::json!({"mediaType": media_type, "digest": format!("sha256:{hex}"), "size": bytes.len()})
}

/// A tar entry of a small file.
fn tar_file(b: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32, data: &[u8]) {
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(mode);
    b.append_data(&mut h, path, data).unwrap();
}

#[test]
fn a_container_runs_the_app_of_an_oci_image_with_two_layers() {
    if !ctcommon::ready() {
        return;
    }
    // Layer 1 (gzip): a busybox root with a file the next layer deletes.
    let base = ctcommon::Rootfs::new("daemon-oci");
    std::fs::write(base.file("/etc/doomed"), "deleted by layer 2\n").unwrap();
    std::fs::write(base.file("/etc/motd"), "from layer 1\n").unwrap();
    let mut b = tar::Builder::new(Vec::new());
    b.follow_symlinks(false);
    b.append_dir_all(".", &base.path).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&b.into_inner().unwrap()).unwrap();
    let layer1 = gz.finish().unwrap();
    // Layer 2 (plain tar): the whiteout and the application.
    let mut b = tar::Builder::new(Vec::new());
    tar_file(&mut b, "etc/.wh.doomed", 0o644, b"");
    tar_file(
        &mut b,
        "app/run.sh",
        0o755,
        b"#!/bin/sh\ntrap 'echo app-stopped; exit 0' TERM\necho \"app-ran $GREETING in $(pwd) with $1\"\nwhile :; do sleep 1; done\n",
    );
    let layer2 = b.into_inner().unwrap();

    let layout = std::env::temp_dir().join(format!("kapsel-oci-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&layout);
    std::fs::create_dir_all(&layout).unwrap();
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {
            "Entrypoint": ["/app/run.sh"], "Cmd": ["an-argument"],
            "Env": ["PATH=/bin:/sbin", "GREETING=hello"], "WorkingDir": "/app",
        },
        "rootfs": {"type": "layers", "diff_ids": []},
    });
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": oci_blob(&layout, "application/vnd.oci.image.config.v1+json", config.to_string().as_bytes()),
        "layers": [
            oci_blob(&layout, "application/vnd.oci.image.layer.v1.tar+gzip", &layer1),
            oci_blob(&layout, "application/vnd.oci.image.layer.v1.tar", &layer2),
        ],
    });
    let mut desc = oci_blob(
        &layout,
        "application/vnd.oci.image.manifest.v1+json",
        manifest.to_string().as_bytes(),
    );
    desc["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": "v1"});
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    std::fs::write(
        layout.join("index.json"),
        serde_json::json!({"schemaVersion": 2, "manifests": [desc]}).to_string(),
    )
    .unwrap();

    // No `init`: the image's Entrypoint and Cmd run, with its Env and
    // WorkingDir. The manifest is named by its tag.
    let name = ctcommon::name("oci");
    let conf = format!(
        "container \"{name}\" {{\n\timage \"{}:v1\"\n}}\n",
        layout.display()
    );
    let d = Kapseld::start(&conf);
    d.wait_state(&name, "running");
    d.console_text(&name, "app-ran hello in /app with an-argument");
    let (code, out, err) = d.run(&[
        "exec",
        &name,
        "--",
        "/bin/sh",
        "-c",
        "test -e /etc/doomed && echo doomed-present || echo doomed-gone; ls /etc/.wh.doomed 2>&1; cat /etc/motd",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("doomed-gone"),
        "the whiteout removed the file: {out}"
    );
    assert!(
        out.contains("No such file"),
        "the whiteout itself is not in the root: {out}"
    );
    assert!(out.contains("from layer 1"), "{out}");
    let marker =
        std::fs::read_to_string(d.dir.join("state/ct").join(&name).join("unpacked")).unwrap();
    assert!(
        marker.starts_with("oci ") && marker.contains("sha256:"),
        "{marker}"
    );
    let said = d.ok(&["stop", "-w", &name]);
    assert!(said.contains("exited (status 0)"), "{said}");
    d.console_text(&name, "app-stopped");
    let _ = std::fs::remove_dir_all(&layout);

    // A directory that is no OCI layout is refused at start, naming it
    // and the vm.conf line.
    let plain = d.dir.join("plain-dir");
    std::fs::create_dir_all(&plain).unwrap();
    let other = ctcommon::name("notoci");
    let more = d.dir.join("more.conf");
    std::fs::write(
        &more,
        format!(
            "container \"{other}\" {{\n\timage \"{}\"\n\tdisable\n}}\n",
            plain.display()
        ),
    )
    .unwrap();
    d.ok(&["load", more.to_str().unwrap()]);
    let (code, _, err) = d.run(&["start", &other]);
    assert_eq!(code, 1);
    assert!(
        err.contains("not an OCI image layout") && err.contains(&plain.display().to_string()),
        "{err}"
    );
    assert!(err.contains("more.conf:1"), "{err}");
}

// --- guests outlive the daemon ------------------------------------------------

/// Whether process `pid` exists (a zombie counts as gone).
fn alive(pid: i32) -> bool {
    process_state(pid).is_some_and(|s| s != 'Z')
}

/// The running guests' pids by name.
fn running_pids(d: &Kapseld) -> Vec<(String, i32)> {
    let mut v: Vec<(String, i32)> = d
        .status()
        .iter()
        .filter(|v| v["state"] == "running")
        .map(|v| (v["name"].as_str().unwrap().to_string(), pid_of(v)))
        .collect();
    v.sort();
    v
}

/// Waits until the daemon lists `want` running (names and pids); returns
/// how long that took from `since`.
fn until_adopted(d: &Kapseld, want: &[(String, i32)], since: Instant) -> Duration {
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        if running_pids(d) == want {
            return since.elapsed();
        }
        assert!(
            Instant::now() < until,
            "not adopted: want {want:?}, have {:?}\n{}",
            running_pids(d),
            d.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn guests_outlive_the_daemon_and_the_next_one_adopts_them() {
    if !ctcommon::ready() || !kvm_usable() {
        return;
    }
    if Command::new("nft").arg("--version").output().is_err() {
        println!("SKIP: nft (Debian: nftables) is not installed");
        return;
    }
    let Some(ns) = Netns::create("adopt") else {
        return;
    };
    let dir = ctcommon::private_dir(&format!("kapsel-adopt-{}", std::process::id()));
    let disk = dir.join("disk.qcow2");
    let made = Command::new(env!("CARGO_BIN_EXE_kapsel"))
        .args(["create", "-s", "16M"])
        .arg(&disk)
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let root = ctcommon::Rootfs::system("adopt");
    // The privileged container asks for a lease on its local interface
    // whenever told to (kapsel exec ... /bin/dhcp-now).
    std::fs::write(
        root.file("/bin/lease"),
        "#!/bin/sh\ncase $1 in bound|renew) echo \"LEASE ip=$ip\";; esac\n",
    )
    .unwrap();
    std::fs::write(
        root.file("/bin/dhcp-now"),
        "#!/bin/sh\nudhcpc -i eth0 -n -q -t 5 -T 1 -s /bin/lease 2>&1 | grep LEASE\n",
    )
    .unwrap();
    for f in ["/bin/lease", "/bin/dhcp-now"] {
        std::fs::set_permissions(root.file(f), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let (ct1, ct2) = (ctcommon::name("adopt-ct"), ctcommon::name("adopt-un"));
    let conf = format!(
        "switch \"lan\" {{\n}}\n\
         vm \"vm1\" {{\n\tboot \"{IDLE}\"\n\tmemory 64M\n\tdisk \"{disk}\"\n\tinterface {{ switch \"lan\" }}\n}}\n\
         vm \"vm2\" {{\n\tboot \"{IDLE}\"\n\tmemory 64M\n\tlocal interface\n}}\n\
         container \"{ct1}\" {{\n\troot \"{r}\"\n\tlocal interface\n}}\n\
         container \"{ct2}\" {{\n\troot \"{r}\"\n\tunprivileged\n}}\n",
        disk = disk.display(),
        r = root.path.display()
    );
    let mut d = Kapseld::start_in(Some(&ns.0), &conf);
    // This test's daemons leave their guests running when they stop.
    d.stop_daemon();
    d.spawn_daemon(&[], &[]);
    for g in ["vm1", "vm2", &ct1, &ct2] {
        d.wait_state(g, "running");
    }
    d.console_text("vm1", "idle ready");
    d.console_text(&ct1, "kapsel-ct-booted");
    let lease = d.ok(&["exec", &ct1, "--", "/bin/dhcp-now"]);
    assert!(lease.contains("LEASE ip="), "{lease}");
    let before = running_pids(&d);
    assert_eq!(before.len(), 4, "{before:?}");

    // kill -9 of the daemon: every guest runs on.
    let mut child = d.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    for (name, pid) in &before {
        assert!(alive(*pid), "{name} ({pid}) died with the daemon");
    }
    // The disk stays locked by its VM process: qemu-img may not write it.
    if let Ok(o) = Command::new("qemu-img").arg("check").arg(&disk).output() {
        assert!(!o.status.success(), "the disk is not locked any more");
    }
    let since = Instant::now();
    d.spawn_daemon(&[], &[]);
    let took = until_adopted(&d, &before, since);
    println!("adopted 4 guests after kill -9 in {took:?}");
    // The console replays what came before and carries input both ways.
    d.console_text("vm1", "idle ready");
    let mut con = d
        .cmd(&["console", "vm1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = con.stdin.take().unwrap();
    let mut reader = BufReader::new(con.stdout.take().unwrap());
    stdin.write_all(b"after the crash\r").unwrap();
    let mut seen = String::new();
    while !seen.contains("line after the crash") {
        let mut l = String::new();
        assert!(
            reader.read_line(&mut l).unwrap() > 0,
            "console closed: {seen}"
        );
        seen.push_str(&l);
    }
    stdin.write_all(b"\r~.").unwrap();
    drop(stdin);
    assert!(con.wait().unwrap().success());
    // exec, DHCP (served again, same address), pause and resume work.
    let again = d.ok(&["exec", &ct1, "--", "/bin/dhcp-now"]);
    assert_eq!(again.trim(), lease.trim(), "the same lease after adoption");
    // (A container's freezer is not reachable under `ip netns exec`,
    // which mounts a /sys of its own; containers_start_exec_pause_and_stop_like_vms
    // pauses containers.)
    d.ok(&["pause", "vm2"]);
    assert_eq!(d.vm("vm2")["state"], "paused");
    d.ok(&["unpause", "vm2"]);
    assert!(d.ok(&["exec", &ct2, "--", "id", "-u"]).trim() == "0");
    // The switch port is still there: vm1's tap is on the bridge.
    let ports = ns
        .exec("ip")
        .args(["-o", "link", "show", "master", "kbr-lan"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&ports.stdout).contains("ktap"),
        "{ports:?}"
    );

    // A clean stop of the daemon (SIGTERM) keeps them too, with NAT.
    let status = d.stop_daemon().unwrap();
    assert!(status.success(), "{status}\n{}", d.log());
    for (name, pid) in &before {
        assert!(alive(*pid), "{name} ({pid}) died with the daemon's SIGTERM");
    }
    let nat = ns.exec("nft").args(["list", "ruleset"]).output().unwrap();
    assert!(
        String::from_utf8_lossy(&nat.stdout).contains("masquerade"),
        "the NAT the guests use went with the daemon"
    );
    // The last daemon stops its guests when it stops (and when asked).
    let since = Instant::now();
    d.spawn_daemon(&[], &["--stop-guests"]);
    until_adopted(&d, &before, since);
    let said = d.ok(&["stop", "-w", "vm1"]);
    assert!(said.contains("powered off"), "{said}");
    let status = d.stop_daemon().unwrap();
    assert!(status.success(), "{status}\n{}", d.log());
    for (name, pid) in &before {
        assert!(
            !alive(*pid),
            "{name} ({pid}) outlived the daemon with --stop-guests"
        );
    }
    // Nothing is left behind: no monitor, report, tap, veth or cgroup.
    let run = std::fs::read_dir(d.dir.join("state/run"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect::<Vec<_>>();
    assert!(run.is_empty(), "left in run/: {run:?}");
    let links = ns.exec("ip").args(["-o", "link"]).output().unwrap();
    let links = String::from_utf8_lossy(&links.stdout);
    assert!(!links.contains("ktap") && !links.contains("kct"), "{links}");
    for ct in [&ct1, &ct2] {
        assert!(
            ctcommon::cgroup_dirs(ct).is_empty(),
            "{ct}'s cgroup is left"
        );
    }
    // The disk is free again and consistent.
    if let Ok(o) = Command::new("qemu-img").arg("check").arg(&disk).output() {
        assert!(o.status.success(), "{o:?}");
    }
}

/// The pids of the `kapsel monitor NAME` processes.
fn monitors_of(name: &str) -> Vec<i32> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmd.split(|&b| b == 0).collect();
        if args.len() >= 3 && args[1] == b"monitor" && args[2] == name.as_bytes() && alive(pid) {
            found.push(pid);
        }
    }
    found
}

/// The VM processes of this test (their memory size is this test's own).
/// The VM processes of the daemons started with `KAPSEL_TEST_TAG=tag` in
/// their environment (a VM process's command line holds nothing of its
/// VM: the configuration comes in a memfd).
fn vm_processes(tag: &str) -> usize {
    let env = format!("KAPSEL_TEST_TAG={tag}");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                String::from_utf8_lossy(&c)
                    .replace('\0', " ")
                    .contains(" run --config-fd")
            }) && std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|e| e.split(|&b| b == 0).any(|v| v == env.as_bytes()))
                && alive(*pid)
        })
        .count()
}

#[test]
fn a_daemon_killed_at_any_moment_leaves_every_guest_adopted_or_gone() {
    if !ctcommon::ready() || !kvm_usable() {
        return;
    }
    let Some(ns) = Netns::create("rk") else {
        return;
    };
    // KAPSEL_SOAK=N for a longer run; KAPSEL_SOAK_SEED to repeat one.
    let rounds: u64 = std::env::var("KAPSEL_SOAK")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let mut seed: u64 = std::env::var("KAPSEL_SOAK_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    println!("KAPSEL_SOAK_SEED={seed}");
    let mut random_ms = move |max: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % max
    };
    let root = ctcommon::Rootfs::system("rk");
    let (vm1, vm2, ct) = (
        ctcommon::name("rk-vm1"),
        ctcommon::name("rk-vm2"),
        ctcommon::name("rk-ct"),
    );
    // This test's VM processes, told apart from other tests' by their
    // daemon's environment.
    let tag = format!("rk-{}", std::process::id());
    let tag_env = [("KAPSEL_TEST_TAG", tag.as_str())];
    let conf = |extra: &str| {
        format!(
            "switch \"lan\" {{\n}}\n\
             vm \"{vm1}\" {{\n\tboot \"{IDLE}\"\n\tmemory 41M\n\tinterface {{ switch \"lan\" }}\n}}\n\
             vm \"{vm2}\" {{\n\tboot \"{IDLE}\"\n\tmemory 41M\n}}\n\
             container \"{ct}\" {{\n\troot \"{r}\"\n\tinterface {{ switch \"lan\" }}\n}}\n{extra}",
            r = root.path.display()
        )
    };
    let names = [vm1.clone(), vm2.clone(), ct.clone()];
    let mut d = Kapseld::start_in(Some(&ns.0), &conf(""));
    d.stop_daemon();
    let kill9 = |d: &mut Kapseld| {
        if let Some(mut c) = d.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    };
    // Every guest is running under exactly one monitor, or stopped with
    // none and no process left; the VM processes are the running VMs'.
    let check = |d: &Kapseld, when: &str| {
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            let status = d.status();
            let mut problems = Vec::new();
            let mut running_vms = 0;
            for name in &names {
                let Some(g) = status.iter().find(|v| v["name"] == name.as_str()) else {
                    problems.push(format!("{name} unlisted"));
                    continue;
                };
                let monitors = monitors_of(name);
                match g["state"].as_str().unwrap_or_default() {
                    "running" | "paused" => {
                        if !alive(pid_of(g)) || monitors.len() != 1 {
                            problems.push(format!("{name}: running with monitors {monitors:?}"));
                        }
                        if g["kind"] == "vm" {
                            running_vms += 1;
                        }
                    }
                    "stopped" if !monitors.is_empty() => {
                        problems.push(format!("{name}: stopped but monitors {monitors:?}"))
                    }
                    "stopped" => {}
                    other => problems.push(format!("{name}: {other}")),
                }
            }
            let vms = vm_processes(&tag);
            if vms != running_vms {
                problems.push(format!("{vms} VM processes for {running_vms} running VMs"));
            }
            if problems.is_empty() {
                return;
            }
            assert!(
                Instant::now() < until,
                "{when}: {problems:?}\n{status:?}\n{}",
                d.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    for round in 0..rounds {
        // During start: the daemon starts the enabled guests.
        let ms = random_ms(400);
        d.spawn_daemon(&tag_env, &[]);
        std::thread::sleep(Duration::from_millis(ms));
        kill9(&mut d);
        d.spawn_daemon(&tag_env, &[]);
        check(&d, &format!("round {round}: killed {ms} ms into a start"));
        // During stop: power buttons pressed, guests going.
        let _ = d.cmd(&["stop", "-a"]).output();
        let ms = random_ms(300);
        std::thread::sleep(Duration::from_millis(ms));
        kill9(&mut d);
        d.spawn_daemon(&tag_env, &[]);
        check(&d, &format!("round {round}: killed {ms} ms into a stop"));
        // During a reload that adds a guest and removes the container.
        let _ = d.cmd(&["start", &vm1]).output();
        let _ = d.cmd(&["start", &vm2]).output();
        std::fs::write(
            d.dir.join("vm.conf"),
            conf("").replace(
                &format!("container \"{ct}\""),
                &format!("container \"{}\"", ctcommon::name("rk-new")),
            ),
        )
        .unwrap();
        let ms = random_ms(300);
        let _ = d.cmd(&["reload"]).spawn();
        std::thread::sleep(Duration::from_millis(ms));
        kill9(&mut d);
        std::fs::write(d.dir.join("vm.conf"), conf("")).unwrap();
        d.spawn_daemon(&tag_env, &[]);
        check(&d, &format!("round {round}: killed {ms} ms into a reload"));
        // Everything stops before the next round's start.
        let _ = d.cmd(&["stop", "-a", "-w"]).output();
        check(&d, &format!("round {round}: after stop -a -w"));
        kill9(&mut d);
    }
    // The last daemon stops what runs; nothing is left.
    d.spawn_daemon(&tag_env, &["--stop-guests"]);
    d.stop_daemon();
    for name in &names {
        assert!(monitors_of(name).is_empty(), "{name}'s monitor is left");
    }
    assert_eq!(vm_processes(&tag), 0, "VM processes are left");
    assert!(
        ctcommon::cgroup_dirs(&ct).is_empty(),
        "the container's cgroup is left"
    );
    let links = ns.exec("ip").args(["-o", "link"]).output().unwrap();
    let links = String::from_utf8_lossy(&links.stdout);
    assert!(!links.contains("ktap") && !links.contains("kct"), "{links}");
}

#[test]
fn a_killed_monitor_takes_its_guest_with_it_and_the_guest_starts_again() {
    if !ctcommon::ready() || !kvm_usable() {
        return;
    }
    let root = ctcommon::Rootfs::system("killmon");
    let (vm, ct) = (ctcommon::name("km-vm"), ctcommon::name("km-ct"));
    let conf = format!(
        "vm \"{vm}\" {{\n\tboot \"{IDLE}\"\n\tmemory 64M\n}}\n\
         container \"{ct}\" {{\n\troot \"{r}\"\n}}\n",
        r = root.path.display()
    );
    let d = Kapseld::start(&conf);
    for name in [&vm, &ct] {
        let pid = pid_of(&d.wait_state(name, "running"));
        let monitors = monitors_of(name);
        assert_eq!(monitors.len(), 1, "{name}: {monitors:?}");
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(monitors[0], libc::SIGKILL) };
        let st = d.wait_state(name, "stopped");
        assert!(
            st["last_exit"]
                .as_str()
                .unwrap_or_default()
                .contains("monitor"),
            "{st}"
        );
        assert!(
            ctcommon::eventually(5, || !alive(pid)),
            "{name}'s process {pid} outlived its monitor"
        );
        // Nothing it left (a cgroup, a socket) keeps it from starting.
        d.ok(&["start", name]);
        d.wait_state(name, "running");
    }
}

#[test]
fn a_switch_removed_while_no_daemon_ran_goes_with_its_last_guest() {
    if !kvm_usable() {
        return;
    }
    let Some(ns) = Netns::create("swgone") else {
        return;
    };
    let conf = format!(
        "switch \"old\" {{\n}}\n{}",
        idle_vm("rider", "\tinterface { switch \"old\" }\n")
    );
    let mut d = Kapseld::start_in(Some(&ns.0), &conf);
    d.stop_daemon();
    d.spawn_daemon(&[], &[]);
    let pid = pid_of(&d.wait_state("rider", "running"));
    let bridge_exists = || {
        ns.exec("ip")
            .args(["link", "show", "kbr-old"])
            .output()
            .unwrap()
            .status
            .success()
    };
    d.stop_daemon();
    assert!(alive(pid) && bridge_exists());
    // The switch and its guest leave vm.conf while no daemon runs.
    std::fs::write(d.dir.join("vm.conf"), "").unwrap();
    d.spawn_daemon(&[], &[]);
    assert_eq!(pid_of(&d.wait_state("rider", "running")), pid);
    assert!(bridge_exists(), "the bridge went under a running guest");
    d.ok(&["stop", "-w", "rider"]);
    assert!(
        ctcommon::eventually(5, || !bridge_exists()),
        "the removed switch's bridge stayed\n{}",
        d.log()
    );
}

#[test]
fn a_systemd_container_is_adopted_after_kill_9_and_powers_off_cleanly() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("SKIP: containers need root");
        return;
    }
    let Some(cache) = ctcommon::debian_root() else {
        return;
    };
    let ovl = ctcommon::Overlay::new(&cache, "deb-adopt");
    let name = ctcommon::name("deb-adopt");
    let conf = format!(
        "container \"{name}\" {{\n\troot \"{}\"\n}}\n",
        ovl.root().display()
    );
    let mut d = Kapseld::start(&conf);
    d.stop_daemon();
    d.spawn_daemon(&[], &[]);
    let init = pid_of(&d.wait_state(&name, "running"));
    let active = |d: &Kapseld| {
        wait_multi_user(d, &name, Instant::now() + Duration::from_secs(60));
    };
    active(&d);
    let mut child = d.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(alive(init), "systemd died with the daemon");
    d.spawn_daemon(&[], &["--stop-guests"]);
    assert_eq!(
        pid_of(&d.wait_state(&name, "running")),
        init,
        "the same init"
    );
    // Its console kept what systemd printed before the crash.
    assert!(d.console_text(&name, "Welcome to").contains("Welcome to"));
    active(&d);
    let (_, state, _) = d.run(&[
        "exec",
        &name,
        "--",
        "systemctl",
        "is-system-running",
        "--wait",
    ]);
    assert_eq!(state.trim(), "running");
    let said = d.ok(&["stop", "-w", &name]);
    assert!(said.contains("exited (status 0)"), "{said}");
    assert!(
        ctcommon::cgroup_dirs(&name).is_empty(),
        "its cgroup is left"
    );
}

/// A VM with only a disk (vmd's seed configuration has one) boots the
/// disk through SeaBIOS, and its console is the screen: the boot
/// sector's prompt comes out of `kapsel console`, a key typed there
/// reaches int 16h, and the guest's power-off ends the VM with status 0.
#[test]
fn a_disk_only_vm_boots_through_seabios() {
    use common::firmware;
    if !kvm_usable() || !firmware::seabios_present() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("kapsel-fwd-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let disk = firmware::boot_sector_disk(&dir);
    let name = format!("kt{}-fw", std::process::id());
    if firmware::seabios_timer_may_stall() {
        println!(
            "SKIP: SeaBIOS's TSC timer is in its stalled half on this host now (see \
             tests/common/firmware.rs); the firmware boot is checked in the nested testbed"
        );
        return;
    }
    let d = Kapseld::start(&format!(
        "vm \"{name}\" {{\n\tmemory 64M\n\tdisk \"{}\" format raw\n}}\n",
        disk.display()
    ));
    d.wait_state(&name, "running");
    let mut console = d
        .cmd(&["console", &name])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = console.stdin.take().unwrap();
    let mut output = console.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = output.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut screen = String::new();
    let mut wait_for = |want: &str, secs: u64| -> bool {
        let until = Instant::now() + Duration::from_secs(secs);
        while !screen.contains(want) {
            let Some(left) = until.checked_duration_since(Instant::now()) else {
                return false;
            };
            match rx.recv_timeout(left) {
                Ok(bytes) => screen.push_str(&String::from_utf8_lossy(&bytes)),
                Err(_) => return false,
            }
        }
        true
    };
    // SeaBIOS runs at CPL 0, slow on this host's KVM (about 12 s).
    let prompted = wait_for("KAPSEL-MBR: press a key", 120);
    if !prompted && firmware::seabios_timer_may_stall() {
        println!(
            "SKIP: SeaBIOS's TSC timer is in its stalled half on this host (see \
             tests/common/firmware.rs); the firmware boot is checked in the nested testbed"
        );
        let _ = console.kill();
        let _ = console.wait();
        d.ok(&["stop", "-f", &name]);
        return;
    }
    assert!(prompted, "no prompt on the console: {screen}\n{}", d.log());
    input.write_all(b"k").unwrap();
    let echoed = wait_for("KAPSEL-MBR: got k", 60);
    assert!(echoed, "the key did not reach the guest: {screen}");
    assert!(screen.contains("Booting from Hard Disk"), "{screen}");
    let until = Instant::now() + Duration::from_secs(60);
    let vm = loop {
        let vm = d.vm(&name);
        if vm["state"] == "stopped" || Instant::now() > until {
            break vm;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(vm["last_exit"], "powered off", "{vm}\n{}", d.log());
    let _ = console.kill();
    let _ = console.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
