//! kapseld as the tests drive it: a daemon on a temporary configuration,
//! socket and state directory, the CLI run against it, a test user for the
//! owner checks and network namespaces.

#![allow(dead_code)] // each test file uses its own part

use super::kvm_usable;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const KAPSEL: &str = env!("CARGO_BIN_EXE_kapsel");
pub const IDLE: &str = kapsel_testguest::IDLE;

/// A daemon on a temporary directory, stopped (SIGTERM) when dropped.
pub struct Kapseld {
    pub dir: PathBuf,
    pub child: Option<Child>,
    /// The network namespace it runs in (its switches live there).
    pub netns: Option<String>,
    /// A daemon of this test ran without --stop-guests: guests may outlive
    /// it, to be stopped when the test ends.
    pub keeps_guests: bool,
}

impl Kapseld {
    pub fn start(config: &str) -> Kapseld {
        Self::start_in(None, config)
    }

    pub fn start_in(netns: Option<&str>, config: &str) -> Kapseld {
        let dir = std::env::temp_dir().join(format!(
            "kapseld-test-{}-{}",
            std::process::id(),
            std::thread::current()
                .name()
                .unwrap_or("t")
                .replace("::", "-")
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // Other users (the owner tests) must reach the socket inside.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(dir.join("vm.conf"), config).unwrap();
        let mut d = Kapseld {
            dir,
            child: None,
            netns: netns.map(str::to_string),
            keeps_guests: false,
        };
        d.spawn();
        d
    }

    pub fn spawn(&mut self) {
        self.spawn_with_env(&[]);
    }

    pub fn spawn_with_env(&mut self, env: &[(&str, &str)]) {
        self.spawn_daemon(env, &["--stop-guests"]);
    }

    /// Starts the daemon with `extra` arguments; without `--stop-guests`
    /// its guests outlive it.
    pub fn spawn_daemon(&mut self, env: &[(&str, &str)], extra: &[&str]) {
        if !extra.contains(&"--stop-guests") {
            self.keeps_guests = true;
        }
        let log = std::fs::File::create(self.dir.join("daemon.log")).unwrap();
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, KAPSEL]);
                c
            }
            None => Command::new(KAPSEL),
        };
        // As systemd starts a service: a session leader without a
        // controlling terminal, stdin from /dev/null.
        // SAFETY: setsid is async-signal-safe; nothing else runs between
        // fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .args(["daemon", "-v", "--shutdown-timeout", "5", "-f"])
            .arg(self.dir.join("vm.conf"))
            .arg("--socket")
            .arg(self.socket())
            .arg("--state-dir")
            .arg(self.dir.join("state"))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .envs(env.iter().copied())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let until = Instant::now() + Duration::from_secs(10);
        while UnixStream::connect(self.socket()).is_err() {
            assert!(
                Instant::now() < until,
                "daemon did not come up:\n{}",
                self.log()
            );
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("daemon exited with {status}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("kapsel.sock")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(KAPSEL);
        c.arg("--socket").arg(self.socket()).args(args);
        c.stdin(Stdio::null());
        c
    }

    /// Runs a verb; returns (exit code, stdout, stderr).
    pub fn run(&self, args: &[&str]) -> (i32, String, String) {
        out(self.cmd(args).output().unwrap())
    }

    /// Runs a verb that must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let (code, stdout, stderr) = self.run(args);
        assert_eq!(
            code,
            0,
            "kapsel {args:?}: {stderr}\ndaemon log:\n{}",
            self.log()
        );
        stdout
    }

    pub fn status(&self) -> Vec<serde_json::Value> {
        let text = self.ok(&["status", "--json"]);
        serde_json::from_str::<serde_json::Value>(&text).unwrap()["vms"]
            .as_array()
            .cloned()
            .unwrap_or_else(|| serde_json::from_str(&text).unwrap())
    }

    pub fn vm(&self, name: &str) -> serde_json::Value {
        self.status()
            .into_iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("vm {name} not in status"))
    }

    /// Waits until `name` is in `state` (and listed at all: a reload that
    /// adds it, by SIGHUP say, may still be on its way).
    pub fn wait_state(&self, name: &str, state: &str) -> serde_json::Value {
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            let vm = self.status().into_iter().find(|v| v["name"] == name);
            if let Some(vm) = vm.as_ref().filter(|v| v["state"] == state) {
                return vm.clone();
            }
            assert!(
                Instant::now() < until,
                "vm {name} stays {} (want {state}):\n{}",
                vm.map_or("unlisted".to_string(), |v| v["state"].to_string()),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The guest's console log as the VM's log file does not hold it: read
    /// it by attaching and leaving at once.
    pub fn console_text(&self, name: &str, want: &str) -> String {
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            let mut child = self
                .cmd(&["console", name])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            std::thread::sleep(Duration::from_millis(200));
            // A stopped VM's console replays and closes at once.
            let _ = child.stdin.take().unwrap().write_all(b"~.");
            let output = child.wait_with_output().unwrap();
            let text = String::from_utf8_lossy(&output.stdout).into_owned();
            if text.contains(want) {
                return text;
            }
            assert!(
                Instant::now() < until,
                "console of {name} never showed {want:?}: {text}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn stop_daemon(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return Some(s);
            }
            if Instant::now() > until {
                let _ = child.kill();
                return child.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Kapseld {
    fn drop(&mut self) {
        self.stop_daemon();
        if self.keeps_guests {
            // Whatever this test left running: a daemon that adopts it and
            // stops it.
            self.spawn_daemon(&[], &["--stop-guests"]);
            self.stop_daemon();
        }
    }
}

pub fn out(o: Output) -> (i32, String, String) {
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

pub fn idle_vm(name: &str, extra: &str) -> String {
    format!("vm \"{name}\" {{\n\tboot \"{IDLE}\"\n\tmemory 64M\n{extra}}}\n")
}

pub fn pid_of(vm: &serde_json::Value) -> i32 {
    vm["pid"].as_i64().expect("a running VM has a pid") as i32
}

pub fn process_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')').next()?.trim().chars().next()
}

/// The test user: created once (root only), used to run the CLI as an owner.
pub fn test_user() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("SKIP: creating a test user needs root");
        return None;
    }
    const NAME: &str = "kapsel-test-owner";
    if kapsel_daemon::accounts::uid_of(NAME).is_none() {
        let ok = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                NAME,
            ])
            .status()
            .is_ok_and(|s| s.success());
        if !ok && kapsel_daemon::accounts::uid_of(NAME).is_none() {
            println!("SKIP: useradd {NAME} failed");
            return None;
        }
    }
    let uid = kapsel_daemon::accounts::uid_of(NAME)?;
    let gid = kapsel_daemon::accounts::gid_of(NAME)?;
    Some((uid, gid))
}

pub fn can_run_as(path: &Path) -> bool {
    // The binary must be reachable by the test user (every parent o+x).
    path.ancestors()
        .skip(1)
        .all(|p| std::fs::metadata(p).is_ok_and(|m| m.permissions().mode() & 0o001 != 0))
}

/// KVM, the test user, and a kapsel binary that user can run; prints the
/// SKIP line otherwise.
pub fn owner_tests_ready() -> Option<(u32, u32)> {
    if !kvm_usable() {
        return None;
    }
    let ids = test_user()?;
    if !can_run_as(Path::new(KAPSEL)) {
        println!("SKIP: {KAPSEL} is not reachable by other users");
        return None;
    }
    Some(ids)
}

/// A network namespace, deleted when dropped.
pub struct Netns(pub String);

impl Netns {
    pub fn create(tag: &str) -> Option<Netns> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            println!("SKIP: network namespaces need root");
            return None;
        }
        let name = format!("kapseld-{tag}-{}", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            println!("SKIP: ip netns add {name} failed");
            return None;
        }
        Some(Netns(name))
    }

    pub fn exec(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.0, program]);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// The daemon's DHCP helper: its child running `kapsel dhcp-helper`.
pub fn dhcp_helper_of(daemon: u32) -> Option<i32> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if ppid == Some(daemon) && cmdline.split(|&b| b == 0).any(|arg| arg == b"dhcp-helper") {
            return Some(pid);
        }
    }
    None
}

/// Waits up to `secs` for a DHCP helper of `daemon` other than `not`.
pub fn wait_dhcp_helper(daemon: u32, not: Option<i32>, secs: u64) -> Option<i32> {
    let until = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(pid) = dhcp_helper_of(daemon).filter(|&p| Some(p) != not) {
            return Some(pid);
        }
        if Instant::now() > until {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One DHCP exchange (DISCOVER, OFFER, REQUEST, ACK) from the network
/// namespace of process `pid` (a container's init) on its eth0, with
/// busybox's udhcpc: the address leased within about `tries` s, if any.
pub fn dhcp_lease(pid: i32, tries: u32) -> Option<String> {
    let script = std::env::temp_dir().join(format!("kapsel-udhcpc-{}.sh", std::process::id()));
    if !script.exists() {
        let tmp = script.with_extension("tmp");
        std::fs::write(
            &tmp,
            "#!/bin/sh\ncase $1 in bound|renew) echo \"LEASED $ip\";; esac\n",
        )
        .unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::rename(&tmp, &script).unwrap();
    }
    let out = Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-n", "--"])
        .args(["busybox", "udhcpc", "-i", "eth0", "-n", "-q", "-f"])
        .args(["-t", &tries.to_string(), "-T", "1", "-s"])
        .arg(&script)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let ip = text.lines().find_map(|l| l.strip_prefix("LEASED "))?;
    out.status.success().then(|| ip.trim().to_string())
}

/// Whether [`dhcp_lease`] got a lease.
pub fn dhcp_from(pid: i32, tries: u32) -> bool {
    dhcp_lease(pid, tries).is_some()
}

/// The value of `Field:` in /proc/PID/status.
pub fn proc_status(pid: i32, field: &str) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .map(|v| v.trim().to_string())
}

/// A container config on a `local interface` that takes a lease by DHCP,
/// prints `LEASE ip=...`, and then idles (its network namespace stays for
/// [`dhcp_from`]).
pub fn dhcp_container(name: &str, root: &Path) -> String {
    std::fs::write(
        root.join("bin/lease"),
        "#!/bin/sh\ncase $1 in bound|renew)\n  echo \"LEASE ip=$ip mask=$mask router=$router\"\n;; esac\n",
    )
    .unwrap();
    std::fs::set_permissions(
        root.join("bin/lease"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    format!(
        "container \"{name}\" {{\n\troot \"{}\"\n\tinit \"/bin/sh\" \"-c\" \"udhcpc -i eth0 -n -q -t 5 -T 1 -s /bin/lease; sleep 1000\"\n\tlocal interface\n}}\n",
        root.display()
    )
}
