//! The typed contract of a VM process (`kapsel run --config-fd N
//! --control-fd N --exit-fd N`) against the `idle` test guest on the
//! host's /dev/kvm: it echoes each console line as `line TEXT` and powers
//! off on the ACPI power button, so whether it runs shows on its console.
//! Each test prints `SKIP: ...` and passes when /dev/kvm cannot be used.

use kapsel_vmm::config::VmConfig;
use kapsel_vmm::control::{self, Client, EndReport, FrameBuffer, Reply, Request, RunState};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

mod common;
use common::kvm_usable;

const KAPSEL: &str = env!("CARGO_BIN_EXE_kapsel");
const TIMEOUT: Duration = Duration::from_secs(5);

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two-element array.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: two new descriptors nothing else owns.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// Makes `fds` the child's descriptors 3, 4, ...: duplicated above every
/// target number here (so that no dup2 overwrites another), moved into
/// place between fork and exec. Returns the duplicates, to be dropped once
/// the child runs.
fn inherit(cmd: &mut Command, fds: &[&OwnedFd]) -> Vec<OwnedFd> {
    let high: Vec<OwnedFd> = fds
        .iter()
        .map(|fd| {
            // SAFETY: F_DUPFD_CLOEXEC duplicates a descriptor we own.
            let dup = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 100) };
            assert!(dup >= 0);
            // SAFETY: a new descriptor nothing else owns.
            unsafe { OwnedFd::from_raw_fd(dup) }
        })
        .collect();
    let raw: Vec<RawFd> = high.iter().map(|f| f.as_raw_fd()).collect();
    // SAFETY: only dup2, async-signal-safe, between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            for (i, &fd) in raw.iter().enumerate() {
                if libc::dup2(fd, 3 + i as i32) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    high
}

/// A VM process with its console and the test's ends of its descriptors.
struct Vm {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
    control: UnixStream,
    exit: std::fs::File,
}

/// Starts `kapsel run ARGS` with the control socket on descriptor 3, the
/// exit pipe on 4 and `extra` from 5 on; waits for `idle ready`.
fn start(args: &[&str], extra: Vec<OwnedFd>) -> Vm {
    let (control, vm_control) = UnixStream::pair().unwrap();
    let (exit_read, exit_write) = pipe();
    let vm_control = OwnedFd::from(vm_control);
    let mut cmd = Command::new(KAPSEL);
    cmd.arg("run")
        .args(args)
        .args(["--control-fd", "3", "--exit-fd", "4"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut fds = vec![&vm_control, &exit_write];
    fds.extend(extra.iter());
    let high = inherit(&mut cmd, &fds);
    let mut child = cmd.spawn().expect("kapsel runs");
    drop((high, vm_control, exit_write, extra));
    let stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines() {
            let Ok(l) = l else { break };
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let vm = Vm {
        child,
        stdin,
        lines,
        control,
        exit: std::fs::File::from(exit_read),
    };
    assert!(vm.saw("idle ready", Duration::from_secs(20)), "no boot");
    vm
}

impl Vm {
    /// Whether the console shows a line containing `want` within `within`.
    fn saw(&self, want: &str, within: Duration) -> bool {
        let until = Instant::now() + within;
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(l) if l.contains(want) => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
        false
    }

    fn type_line(&mut self, text: &str) {
        self.stdin
            .write_all(format!("{text}\r").as_bytes())
            .unwrap();
        self.stdin.flush().unwrap();
    }

    /// Sends raw bytes on the control socket and reads one reply frame.
    fn raw_exchange(&self, bytes: &[u8]) -> Option<control::ReplyFrame> {
        let mut s = &self.control;
        s.write_all(bytes).unwrap();
        self.control.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut buf = FrameBuffer::default();
        loop {
            if let Some(frame) = buf.next_frame() {
                return Some(serde_json::from_slice(&frame.unwrap()).unwrap());
            }
            let mut chunk = [0u8; 1024];
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.push(&chunk[..n]),
            }
        }
    }

    /// Waits for the end; returns the exit status and the exit report.
    fn end(mut self) -> (i32, EndReport) {
        let until = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                break st;
            }
            assert!(Instant::now() < until, "the VM did not end");
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut bytes = Vec::new();
        self.exit.read_to_end(&mut bytes).unwrap();
        (
            status.code().unwrap_or(-1),
            EndReport::parse(&bytes).unwrap(),
        )
    }
}

#[test]
fn pause_stops_the_guest_and_resume_goes_on_where_it_was() {
    if !kvm_usable() {
        return;
    }
    let mut vm = start(
        &[
            "--kernel",
            kapsel_testguest::IDLE,
            "--memory",
            "64M",
            "--cpus",
            "2",
        ],
        Vec::new(),
    );
    let mut client = Client::new(vm.control.try_clone().unwrap());
    let status = |client: &mut Client| match client.call(Request::Status, TIMEOUT).unwrap() {
        Reply::Status { status } => status,
        other => panic!("{other:?}"),
    };
    let st = status(&mut client);
    assert_eq!(st.state, RunState::Running);
    assert_eq!(st.vcpus, 2);
    assert_eq!(st.memory_bytes, 64 << 20);
    assert!(
        st.resident_bytes > 0 && st.uptime_ms > 0 && st.boots == 1,
        "{st:?}"
    );

    vm.type_line("before");
    assert!(vm.saw("line before", TIMEOUT), "the guest echoes");
    let t = Instant::now();
    assert_eq!(client.call(Request::Pause, TIMEOUT).unwrap(), Reply::Ok);
    println!("pause took {} us", t.elapsed().as_micros());
    assert_eq!(status(&mut client).state, RunState::Paused);
    // Paused twice is still paused.
    assert_eq!(client.call(Request::Pause, TIMEOUT).unwrap(), Reply::Ok);
    vm.type_line("during");
    assert!(
        !vm.saw("line during", Duration::from_millis(1500)),
        "the guest ran while paused"
    );
    // A frame that is no request gets an error reply; the VM stays as it was.
    let garbage = b"{not json at all";
    let mut frame = (garbage.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(garbage);
    let reply = vm.raw_exchange(&frame).expect("an error reply");
    assert_eq!(reply.id, 0);
    assert!(
        matches!(&reply.reply, Reply::Error { message } if message.contains("unreadable")),
        "{reply:?}"
    );
    assert_eq!(status(&mut client).state, RunState::Paused);

    let t = Instant::now();
    assert_eq!(client.call(Request::Resume, TIMEOUT).unwrap(), Reply::Ok);
    println!("resume took {} us", t.elapsed().as_micros());
    // The line typed while paused is echoed now: nothing was lost.
    assert!(vm.saw("line during", TIMEOUT), "the guest did not resume");
    assert_eq!(status(&mut client).state, RunState::Running);
    vm.type_line("after");
    assert!(vm.saw("line after", TIMEOUT));

    // The power button ends an ACPI-aware guest, reported as a power-off.
    assert_eq!(
        client.call(Request::PowerButton, TIMEOUT).unwrap(),
        Reply::Ok
    );
    assert!(vm.saw("power button", TIMEOUT));
    let (code, report) = vm.end();
    assert_eq!(code, 0);
    assert_eq!(report, EndReport::PowerOff);
}

#[test]
fn a_configuration_on_a_descriptor_and_an_oversized_frame() {
    if !kvm_usable() {
        return;
    }
    // The whole configuration through --config-fd (a pipe here; the
    // daemon uses a sealed memfd).
    let mut cfg = VmConfig::new(kapsel_testguest::IDLE);
    cfg.memory = 64 << 20;
    cfg.shutdown_timeout = Duration::from_secs(10);
    let (config_read, config_write) = pipe();
    std::fs::File::from(config_write)
        .write_all(&cfg.to_json())
        .unwrap();
    let vm = start(&["--config-fd", "5"], vec![config_read]);
    // A length over the bound cannot be skipped: an error reply, the
    // channel closes, and the VM runs on.
    let reply = vm.raw_exchange(b"GET / HTTP/1.1\r\n\r\n").expect("a reply");
    assert!(
        matches!(&reply.reply, Reply::Error { message } if message.contains("larger")),
        "{reply:?}"
    );
    let mut buf = [0u8; 16];
    assert_eq!(
        (&vm.control).read(&mut buf).unwrap(),
        0,
        "the channel is closed"
    );
    let mut vm = vm;
    vm.type_line("still here");
    assert!(vm.saw("line still here", TIMEOUT), "the VM runs on");
    // SIGTERM still presses the power button of a foreground VM.
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(vm.child.id() as i32, libc::SIGTERM) };
    assert!(vm.saw("power button", TIMEOUT));
    let (code, report) = vm.end();
    assert_eq!(code, 0);
    assert_eq!(report, EndReport::PowerOff);
}

#[test]
fn a_vm_that_cannot_start_reports_why() {
    if !kvm_usable() {
        return;
    }
    let mut cfg = VmConfig::new("/no/such/kernel");
    cfg.memory = 64 << 20;
    let (config_read, config_write) = pipe();
    std::fs::File::from(config_write)
        .write_all(&cfg.to_json())
        .unwrap();
    let (exit_read, exit_write) = pipe();
    let mut cmd = Command::new(KAPSEL);
    cmd.args(["run", "--config-fd", "3", "--exit-fd", "4"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let high = inherit(&mut cmd, &[&config_read, &exit_write]);
    let status = cmd.status().unwrap();
    drop((high, config_read, exit_write));
    assert!(!status.success());
    let mut bytes = Vec::new();
    std::fs::File::from(exit_read)
        .read_to_end(&mut bytes)
        .unwrap();
    match EndReport::parse(&bytes).unwrap() {
        EndReport::Error { message } => {
            assert!(message.contains("/no/such/kernel"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    // A damaged configuration is reported the same way, naming the fd.
    let (config_read, config_write) = pipe();
    std::fs::File::from(config_write)
        .write_all(b"{\"version\":99}")
        .unwrap();
    let (exit_read, exit_write) = pipe();
    let mut cmd = Command::new(KAPSEL);
    cmd.args(["run", "--config-fd", "3", "--exit-fd", "4"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let high = inherit(&mut cmd, &[&config_read, &exit_write]);
    let out = cmd.output().unwrap();
    drop((high, config_read, exit_write));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--config-fd 3") && err.contains("version 99"),
        "{err}"
    );
    let mut bytes = Vec::new();
    std::fs::File::from(exit_read)
        .read_to_end(&mut bytes)
        .unwrap();
    assert!(matches!(
        EndReport::parse(&bytes).unwrap(),
        EndReport::Error { .. }
    ));
}
