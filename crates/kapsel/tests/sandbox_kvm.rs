//! The VM process's sandbox, seen from outside while a test guest runs:
//! no capabilities, no_new_privs, seccomp on every thread, an empty root;
//! and a forbidden syscall kills the VM process (only it) with SIGSYS.
//! Each test prints `SKIP: ...` and passes when /dev/kvm cannot be used.

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const KAPSEL: &str = env!("CARGO_BIN_EXE_kapsel");

mod common;
use common::kvm_usable;

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A `kapsel run` of the CPL-0 loop guest (busy for seconds here), killed
/// when dropped.
struct Busy(Child);

impl Busy {
    fn start(extra: &[&str]) -> Busy {
        let child = Command::new(KAPSEL)
            .args(["run", "--kernel", kapsel_testguest::CPL0LOOP])
            .args(["--memory", "64M", "--console", "none", "--cpus", "2"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        Busy(child)
    }

    fn proc(&self, rest: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/{rest}", self.0.id()))
    }

    /// The thread names, once every vCPU thread has started.
    fn wait_for_vcpus(&mut self, cpus: usize) -> Vec<(String, String)> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            assert!(self.0.try_wait().unwrap().is_none(), "kapsel exited early");
            let tasks = self.tasks();
            if tasks.iter().filter(|(n, _)| n.starts_with("vcpu")).count() == cpus {
                // The threads install their filter first thing: give them
                // the moment it takes.
                std::thread::sleep(Duration::from_millis(100));
                return self.tasks();
            }
            assert!(Instant::now() < deadline, "vCPU threads never started");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// (thread name, /proc/PID/task/TID/status) of every thread.
    fn tasks(&self) -> Vec<(String, String)> {
        let Ok(dir) = std::fs::read_dir(self.proc("task")) else {
            return Vec::new();
        };
        dir.filter_map(|e| {
            let path = e.ok()?.path();
            let name = std::fs::read_to_string(path.join("comm")).ok()?;
            let status = std::fs::read_to_string(path.join("status")).ok()?;
            Some((name.trim().to_string(), status))
        })
        .collect()
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn field<'a>(status: &'a str, key: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {key} in {status}"))
}

#[test]
fn every_thread_of_a_running_vm_is_confined() {
    if !kvm_usable() {
        return;
    }
    let mut vm = Busy::start(&[]);
    let tasks = vm.wait_for_vcpus(2);
    let names: Vec<&str> = tasks.iter().map(|(n, _)| n.as_str()).collect();
    assert!(names.contains(&"io"), "{names:?}");
    assert!(names.contains(&"kapsel"), "{names:?}");
    for (name, status) in &tasks {
        for caps in ["CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"] {
            assert_eq!(field(status, caps), "0000000000000000", "{name} {caps}");
        }
        assert_eq!(field(status, "NoNewPrivs:"), "1", "{name}");
        assert_eq!(field(status, "Seccomp:"), "2", "{name}");
        // Main: the errno layer (openat, clone3) and its allowlist; every
        // other thread inherits those three and adds its own.
        let want = if name == "kapsel" { "3" } else { "4" };
        assert_eq!(field(status, "Seccomp_filters:"), want, "{name}");
    }
    if is_root() {
        // The root is the empty read-only tmpfs, and nothing else is
        // mounted in the VM process's namespace.
        let mountinfo = std::fs::read_to_string(vm.proc("mountinfo")).unwrap();
        let lines: Vec<&str> = mountinfo.lines().collect();
        assert_eq!(lines.len(), 1, "{mountinfo}");
        let fields: Vec<&str> = lines[0].split_whitespace().collect();
        assert_eq!((fields[3], fields[4]), ("/", "/"), "{mountinfo}");
        assert!(fields[5].split(',').any(|o| o == "ro"), "{mountinfo}");
        assert!(lines[0].contains(" - tmpfs kapsel-empty "), "{mountinfo}");
        let entries = std::fs::read_dir(vm.proc("root")).unwrap().count();
        assert_eq!(entries, 0, "the VM process's root is not empty");
    }
    // Its own network and IPC namespaces (and mount namespace).
    for ns in ["net", "ipc", "mnt"] {
        let ours = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        let theirs = std::fs::read_link(vm.proc(&format!("ns/{ns}"))).unwrap();
        assert_ne!(ours, theirs, "{ns} namespace shared with the host");
    }
}

#[test]
fn no_sandbox_leaves_the_process_as_it_was() {
    if !kvm_usable() {
        return;
    }
    let mut vm = Busy::start(&["--no-sandbox"]);
    let tasks = vm.wait_for_vcpus(2);
    for (name, status) in &tasks {
        assert_eq!(field(status, "Seccomp:"), "0", "{name}");
        assert_eq!(field(status, "NoNewPrivs:"), "0", "{name}");
    }
    if is_root() {
        let (_, status) = &tasks[0];
        assert_ne!(field(status, "CapEff:"), "0000000000000000");
        let ours = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let theirs = std::fs::read_to_string(vm.proc("mountinfo")).unwrap();
        assert_eq!(ours.lines().count(), theirs.lines().count());
    }
}

/// `kapsel run` of the hello guest under `sh`, with `KAPSEL_DEBUG_SECCOMP`
/// set to `debug`; returns the shell's output: what the parent saw.
fn under_a_shell(debug: &str) -> String {
    let script = format!(
        "KAPSEL_DEBUG_SECCOMP={debug} \"$0\" run --kernel \"$1\" --memory 64M \
         --console none </dev/null; echo \"status=$?\"; kill -0 $$ && echo parent-alive"
    );
    let out = Command::new("sh")
        .args(["-c", &script, KAPSEL, kapsel_testguest::HELLO])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_forbidden_syscall_kills_the_vm_process_with_sigsys() {
    if !kvm_usable() {
        return;
    }
    // The hook that issues the syscall exists in debug builds only.
    if !cfg!(debug_assertions) {
        println!("SKIP: release build: the KAPSEL_DEBUG_SECCOMP hook is compiled out");
        return;
    }
    // Without the hook the same run powers off cleanly ...
    assert_eq!(under_a_shell("none"), "status=0\nparent-alive\n");
    // ... with it, the main thread's socket(2) kills the whole process with
    // SIGSYS (128 + 31 to the shell), and the parent goes on.
    assert_eq!(under_a_shell("violate"), "status=159\nparent-alive\n");

    let out = common::kapsel_run(kapsel_testguest::HELLO)
        .env("KAPSEL_DEBUG_SECCOMP", "violate")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.signal(), Some(libc::SIGSYS), "{out:?}");
    assert!(out.stdout.is_empty(), "the guest never ran: {out:?}");
    // A process killed by seccomp says nothing: the supervisor reports it.
    assert!(!String::from_utf8_lossy(&out.stderr).contains("not stopped"));
}

#[test]
fn the_guest_reboots_inside_the_sandbox() {
    if !kvm_usable() {
        return;
    }
    // Every boot after the first is built under the sandbox: three resets
    // with --on-reboot restart, then the test stops it.
    let dir = std::env::temp_dir().join(format!("kapsel-sandbox-restart-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("console.log");
    let mut child = common::kapsel_run(kapsel_testguest::RESET)
        .args(["--on-reboot", "restart"])
        .arg("--console")
        .arg(format!("file:{}", log.display()))
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut boots = 0;
    while Instant::now() < deadline && boots < 3 {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        boots = text.matches("kapsel-testguest: resetting").count();
        if let Some(status) = child.try_wait().unwrap() {
            panic!("kapsel ended after {boots} boots: {status:?}\n{text}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(boots >= 3, "the guest booted {boots} times");
    assert_eq!(field(&status, "Seccomp:"), "2");
}

#[test]
fn without_cap_sys_admin_a_user_namespace_gives_the_empty_root() {
    if !kvm_usable() {
        return;
    }
    if !is_root() {
        println!("SKIP: needs root to take CAP_SYS_ADMIN away with setpriv");
        return;
    }
    // Root without CAP_SYS_ADMIN cannot make a mount namespace directly,
    // as an unprivileged user in the kvm group cannot.
    let out = match Command::new("setpriv")
        .args(["--bounding-set=-sys_admin", "--", KAPSEL, "run"])
        .args(["--kernel", kapsel_testguest::HELLO, "--memory", "64M"])
        .env("KAPSEL_LOG", "info")
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            println!("SKIP: setpriv (util-linux) not available: {e}");
            return;
        }
    };
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("sandbox: root PivotRoot (in a user namespace)"),
        "{err}"
    );
}
