//! One VM process: `kapsel run` started by the daemon for a VM spec, its
//! console on a socket pair, its stderr in the VM's log, and how it ended.

use kapsel_config::{BootDevice, MacAddr, VmSpec};
use kapsel_host::fd::pipe;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread::JoinHandle;
use std::time::Duration;

/// What a VM process needs to start.
pub struct Launch<'a> {
    /// The VM, with instances resolved.
    pub spec: &'a VmSpec,
    /// Time the guest gets after the power button.
    pub shutdown_timeout: Duration,
    /// The open taps of its interfaces, in order, with the guest's MAC.
    pub taps: Vec<(OwnedFd, MacAddr)>,
    /// The files a non-root user named, opened with that user's rights.
    pub open_as: Option<&'a OpenAs>,
}

/// The user who made a VM (an instance) and the files of its spec that
/// this user named: the VM process opens those with the user's rights
/// (`kapsel run --open-as`), so that a user cannot have root open a file
/// that the user may not read or write. Files that root wrote in vm.conf
/// are opened with the VM process's own rights.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OpenAs {
    /// The user's uid.
    pub uid: u32,
    /// Its primary gid.
    pub gid: u32,
    /// Its groups (the primary one may be among them).
    pub groups: Vec<u32>,
    /// The kernel (`boot`) is the user's.
    pub kernel: bool,
    /// The initrd is the user's.
    pub initrd: bool,
    /// The indexes in the spec's `disks` of the user's disks.
    pub disks: Vec<usize>,
}

impl OpenAs {
    /// The `--open-as` argument: UID:GID[:GID,...].
    fn credentials(&self) -> String {
        let groups: Vec<String> = self.groups.iter().map(u32::to_string).collect();
        format!("{}:{}:{}", self.uid, self.gid, groups.join(","))
    }
}

/// The descriptor number the first tap gets in the VM process (the next
/// ones follow).
pub const FIRST_TAP_FD: i32 = 3;

/// A running VM process.
pub struct VmProcess {
    /// Its process id.
    pub pid: u32,
    /// The daemon's end of the console (input to the guest).
    console: UnixStream,
    /// Collects stderr into the log; yields the last line.
    stderr: Option<JoinHandle<Option<String>>>,
}

impl VmProcess {
    /// A handle that writes keyboard input to the guest's console.
    pub fn console_input(&self) -> std::io::Result<UnixStream> {
        self.console.try_clone()
    }

    /// After the process has ended: reaps it and returns its last line on
    /// stderr (its one-line reason for a failure).
    pub fn finish(mut self) -> Option<String> {
        // SAFETY: waitpid on our own child; a null status pointer is allowed.
        unsafe { libc::waitpid(self.pid as libc::pid_t, std::ptr::null_mut(), 0) };
        self.stderr.take().and_then(|h| h.join().ok().flatten())
    }
}

/// The `kapsel run` arguments for a VM spec, or why it cannot run.
pub fn run_args(
    spec: &VmSpec,
    shutdown_timeout: Duration,
    macs: &[MacAddr],
    open_as: Option<&OpenAs>,
) -> Result<Vec<String>, String> {
    let name = &spec.name;
    if spec.cdrom.is_some() || spec.boot_device == Some(BootDevice::Cdrom) {
        return Err(format!(
            "vm {name}: cdrom images are not supported yet; boot a kernel with `boot PATH`"
        ));
    }
    if spec.boot_device == Some(BootDevice::Net) {
        return Err(format!(
            "vm {name}: network boot is not supported yet; boot a kernel with `boot PATH`"
        ));
    }
    if spec.sev || spec.seves {
        return Err(format!(
            "vm {name}: AMD SEV is not supported; remove `sev`/`seves`"
        ));
    }
    let kernel = spec.boot.as_ref().ok_or_else(|| {
        format!("vm {name} has no kernel: add `boot \"/path/to/vmlinuz\"` to it in vm.conf, or start it with -b")
    })?;
    let mut args = vec![
        "run".to_string(),
        "--kernel".into(),
        kernel.display().to_string(),
        "--memory".into(),
        format!("{}", spec.memory.map_or(512 << 20, |m| m.bytes())),
        "--cpus".into(),
        spec.cpus.unwrap_or(1).to_string(),
        "--console".into(),
        "stdio".into(),
        // A daemon's VM reboots like a machine does; power-off ends it.
        "--on-reboot".into(),
        "restart".into(),
        "--shutdown-timeout".into(),
        shutdown_timeout.as_secs().to_string(),
    ];
    if let Some(initrd) = &spec.initrd {
        args.push("--initrd".into());
        args.push(initrd.display().to_string());
    }
    if let Some(cmdline) = &spec.cmdline {
        args.push("--cmdline".into());
        args.push(cmdline.clone());
    }
    if let Some(user) = open_as {
        args.push("--open-as".into());
        args.push(user.credentials());
        if user.kernel {
            args.push("--kernel-as-user".into());
        }
        if user.initrd && spec.initrd.is_some() {
            args.push("--initrd-as-user".into());
        }
    }
    for (i, disk) in spec.disks.iter().enumerate() {
        let mut d = disk.path.display().to_string();
        if let Some(f) = disk.format {
            d.push_str(",format=");
            d.push_str(f.keyword());
        }
        if open_as.is_some_and(|u| u.disks.contains(&i)) {
            d.push_str(",as-user");
        }
        args.push("--disk".into());
        args.push(d);
    }
    for (i, mac) in macs.iter().enumerate() {
        args.push("--net".into());
        args.push(format!("fd={},mac={mac}", FIRST_TAP_FD + i as i32));
    }
    Ok(args)
}

/// A close-on-exec duplicate of `fd` numbered above every descriptor number
/// the child's `count` taps will get (`FIRST_TAP_FD..FIRST_TAP_FD + count`),
/// so that moving one into place with dup2 cannot overwrite another.
///
/// The floor is the lowest such number, not a fixed high one: F_DUPFD fails
/// with EINVAL when its floor is not below RLIMIT_NOFILE, and the soft limit
/// is 1024 under systemd and busybox init alike (a floor of 1024 made every
/// VM with an interface fail there with "tap descriptor: Invalid argument").
pub(crate) fn dup_above_targets(fd: &OwnedFd, count: usize) -> std::io::Result<OwnedFd> {
    let floor = FIRST_TAP_FD.saturating_add(i32::try_from(count).unwrap_or(i32::MAX));
    // SAFETY: F_DUPFD_CLOEXEC duplicates a descriptor we own; it touches no
    // memory.
    let dup = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, floor) };
    if dup < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: dup is a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(dup) })
}

/// Whether a VM process has opened its resources, from the read end of
/// its `--ready-fd` pipe (see [`spawn`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ready {
    /// It has: the guest is about to run.
    Yes,
    /// It ended before (its exit report says why).
    Failed,
    /// It did not say within the time given.
    Unknown,
}

/// Waits up to `timeout` for the VM process to say it has opened its
/// kernel, disks and taps (one byte on `ready`), or to end first.
pub fn wait_ready(ready: &OwnedFd, timeout: Duration) -> Ready {
    let mut pfd = libc::pollfd {
        fd: ready.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    loop {
        // SAFETY: pfd is one valid pollfd for the call.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        if rc <= 0 {
            return Ready::Unknown;
        }
        let mut byte = 0u8;
        // SAFETY: reads at most one byte into a live local.
        let n = unsafe { libc::read(ready.as_raw_fd(), (&mut byte as *mut u8).cast(), 1) };
        return if n == 1 { Ready::Yes } else { Ready::Failed };
    }
}

/// Prepares a VM process's start in the daemon: its `kapsel run`
/// arguments, the descriptors it inherits at [`FIRST_TAP_FD`], ... (its
/// taps, then the write end of its readiness pipe) and the read end of
/// that pipe, on which it says when its resources are open (see
/// [`wait_ready`]). [`spawn_process`] (in its monitor) runs it.
pub fn prepare(launch: Launch) -> Result<(Vec<String>, Vec<OwnedFd>, OwnedFd), String> {
    let name = &launch.spec.name;
    let macs: Vec<MacAddr> = launch.taps.iter().map(|(_, m)| *m).collect();
    let mut args = run_args(launch.spec, launch.shutdown_timeout, &macs, launch.open_as)?;
    let (ready_read, ready_write) =
        pipe().map_err(|e| format!("vm {name}: readiness pipe: {e}"))?;
    args.push("--ready-fd".into());
    args.push((FIRST_TAP_FD + launch.taps.len() as i32).to_string());
    let mut fds: Vec<OwnedFd> = launch.taps.into_iter().map(|(fd, _)| fd).collect();
    fds.push(ready_write);
    Ok((args, fds, ready_read))
}

/// Starts the VM process `kapsel ARGS` (in its monitor), which inherits
/// this process's descriptors [`FIRST_TAP_FD`]..+`fds` as they are.
/// Returns it and its console output stream. Its stderr is appended to
/// `log`; it is killed if this process dies (`PR_SET_PDEATHSIG`), so that
/// no VM runs without its monitor.
pub fn spawn_process(
    name: &str,
    kapsel: &Path,
    args: &[String],
    log: &Path,
    fds: u32,
) -> Result<(VmProcess, UnixStream), String> {
    let (daemon_end, vm_end) =
        UnixStream::pair().map_err(|e| format!("vm {name}: console socket: {e}"))?;
    let vm_out = vm_end
        .try_clone()
        .map_err(|e| format!("vm {name}: console socket: {e}"))?;
    // Root's only: the log holds command lines and disk paths.
    use std::os::unix::fs::OpenOptionsExt;
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(log)
        .map_err(|e| format!("vm {name}: log {}: {e}", log.display()))?;
    let _ = writeln!(log, "--- kapsel {}", args.join(" "));
    let mut cmd = Command::new(kapsel);
    cmd.args(args)
        .stdin(Stdio::from(OwnedFd::from(vm_end)))
        .stdout(Stdio::from(OwnedFd::from(vm_out)))
        .stderr(Stdio::piped())
        .env(
            "KAPSEL_LOG",
            std::env::var("KAPSEL_VM_LOG").unwrap_or("warn".into()),
        )
        // Its own process group: a Ctrl-C meant for a foreground daemon
        // does not reach it.
        .process_group(0);
    let inherited: Vec<i32> = (0..fds as i32).map(|i| FIRST_TAP_FD + i).collect();
    // SAFETY: between fork and exec only prctl and fcntl, which are
    // async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            for &fd in &inherited {
                // Kept across exec (they may be close-on-exec here).
                libc::fcntl(fd, libc::F_SETFD, 0);
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("vm {name}: cannot run {}: {e}", kapsel.display()))?;
    let pid = child.id();
    let stderr = child.stderr.take();
    let tag = name.to_string();
    let stderr = std::thread::Builder::new()
        .name(format!("stderr-{pid}"))
        .spawn(move || {
            let mut last = None;
            if let Some(err) = stderr {
                for line in BufReader::new(err).lines() {
                    let Ok(line) = line else { break };
                    let _ = writeln!(log, "{line}");
                    tracing::debug!("vm {tag}: {}", crate::proto::log_safe(&line));
                    if !line.trim().is_empty() {
                        last = Some(line);
                    }
                }
            }
            last
        })
        .map_err(|e| format!("vm {name}: {e}"))?;
    let console_out = daemon_end
        .try_clone()
        .map_err(|e| format!("vm {name}: console socket: {e}"))?;
    // The Child is not waited on through std: the monitor watches the pid
    // with waitid(WNOWAIT) and reaps it last, so that no signal can reach
    // a recycled pid.
    std::mem::forget(child);
    Ok((
        VmProcess {
            pid,
            console: daemon_end,
            stderr: Some(stderr),
        },
        console_out,
    ))
}

/// How a VM process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitReport {
    /// It exited with this status.
    Exited(i32),
    /// A signal killed it.
    Killed(i32),
    /// It could not be watched (should not happen).
    Unknown,
}

/// A signal's name (SIGKILL), or its number.
pub fn signal_name(sig: i32) -> String {
    match sig {
        libc::SIGKILL => "SIGKILL".into(),
        libc::SIGTERM => "SIGTERM".into(),
        libc::SIGSEGV => "SIGSEGV".into(),
        libc::SIGABRT => "SIGABRT".into(),
        libc::SIGSYS => "SIGSYS".into(),
        libc::SIGBUS => "SIGBUS".into(),
        libc::SIGINT => "SIGINT".into(),
        n => format!("signal {n}"),
    }
}

impl ExitReport {
    /// Whether this is a failure (anything but a power-off).
    pub fn is_failure(&self) -> bool {
        *self != ExitReport::Exited(0)
    }

    /// The reason shown in `status` and the log.
    pub fn describe(&self, stderr_tail: &str) -> String {
        let tail = stderr_tail.trim().trim_start_matches("kapsel run: ");
        match *self {
            ExitReport::Exited(0) => "powered off".into(),
            ExitReport::Exited(code) if tail.is_empty() => format!("failed (exit {code})"),
            ExitReport::Exited(code) => format!("failed (exit {code}): {tail}"),
            ExitReport::Killed(libc::SIGSYS) => {
                "killed by SIGSYS: the VM process made a system call its seccomp filter forbids"
                    .into()
            }
            ExitReport::Killed(sig) => format!("killed by {}", signal_name(sig)),
            ExitReport::Unknown => "ended (status unknown)".into(),
        }
    }
}

/// Waits until the process `pid` (a child of this process) has ended,
/// without reaping it.
pub fn wait(pid: u32) -> ExitReport {
    loop {
        // SAFETY: siginfo_t is plain old data that waitid fills in.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: info is valid for writes; WNOWAIT leaves the child to reap.
        let rc = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if rc == 0 {
            // SAFETY: waitid succeeded for an exited child, so si_status is set.
            let status = unsafe { info.si_status() };
            return match info.si_code {
                libc::CLD_EXITED => ExitReport::Exited(status),
                libc::CLD_KILLED | libc::CLD_DUMPED => ExitReport::Killed(status),
                _ => ExitReport::Unknown,
            };
        }
        if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return ExitReport::Unknown;
        }
    }
}

/// Sends `sig` to the VM process.
pub fn kill(pid: u32, sig: libc::c_int) -> std::io::Result<()> {
    // SAFETY: kill has no memory-safety preconditions.
    if unsafe { libc::kill(pid as libc::pid_t, sig) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The resident memory of a process (VmRSS), in bytes.
pub fn resident_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tap_descriptors_are_moved_within_a_low_descriptor_limit() {
        // The soft RLIMIT_NOFILE of a daemon started by systemd or busybox
        // init is 1024; lower it to 64 in a child so the test process keeps
        // its own limit.
        let fd = OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
        // SAFETY: the child only calls async-signal-safe functions
        // (getrlimit, setrlimit, fcntl, close, _exit) before it exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
        if pid == 0 {
            let code = {
                let mut lim = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                // SAFETY: lim is a valid rlimit to fill and then read.
                let set = unsafe {
                    libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && {
                        lim.rlim_cur = 64;
                        libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0
                    }
                };
                match dup_above_targets(&fd, 4) {
                    _ if !set => 2,
                    Ok(d) if (FIRST_TAP_FD + 4..64).contains(&d.as_raw_fd()) => 0,
                    Ok(_) => 3,
                    Err(_) => 1,
                }
            };
            // SAFETY: _exit ends the forked child without running the
            // parent's destructors or atexit handlers.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: pid is our child; status is a valid out-parameter.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status), "child status {status:#x}");
        assert_eq!(
            libc::WEXITSTATUS(status),
            0,
            "1: dup failed, 2: setrlimit failed, 3: wrong number"
        );
    }

    #[test]
    fn run_args_from_a_spec() {
        let mut spec = VmSpec::new("web");
        assert!(run_args(&spec, Duration::from_secs(30), &[], None)
            .unwrap_err()
            .contains("add `boot"));
        spec.boot = Some("/vm/vmlinuz".into());
        spec.memory = Some(kapsel_config::ByteSize(256 << 20));
        spec.cpus = Some(2);
        spec.cmdline = Some("console=ttyS0 quiet".into());
        spec.disks.push(kapsel_config::DiskSpec {
            path: "/vm/web.qcow2".into(),
            format: Some(kapsel_config::DiskFormat::Qcow2),
        });
        let mac = MacAddr([0xfe, 0xe1, 0xbb, 1, 2, 3]);
        let args = run_args(&spec, Duration::from_secs(7), &[mac, mac], None)
            .unwrap()
            .join(" ");
        assert!(args.contains("--net fd=3,mac=fe:e1:bb:01:02:03 --net fd=4,mac="));
        assert!(args.starts_with("run --kernel /vm/vmlinuz --memory 268435456 --cpus 2"));
        assert!(args.contains("--shutdown-timeout 7"));
        assert!(args.contains("--cmdline console=ttyS0 quiet"));
        assert!(args.contains("--disk /vm/web.qcow2,format=qcow2"));
        assert!(!args.contains("as-user"));
        // The files a user named are opened with that user's rights.
        spec.disks.push(kapsel_config::DiskSpec {
            path: "/home/u/mine.img".into(),
            format: None,
        });
        let user = OpenAs {
            uid: 1000,
            gid: 100,
            groups: vec![100, 24],
            kernel: true,
            initrd: true,
            disks: vec![1],
        };
        let args = run_args(&spec, Duration::from_secs(7), &[], Some(&user))
            .unwrap()
            .join(" ");
        assert!(args.contains("--open-as 1000:100:100,24 --kernel-as-user --disk"));
        assert!(!args.contains("--initrd-as-user"), "no initrd: {args}");
        assert!(args.contains("--disk /vm/web.qcow2,format=qcow2 --disk /home/u/mine.img,as-user"));
        spec.cdrom = Some("/x.iso".into());
        assert!(run_args(&spec, Duration::ZERO, &[], None)
            .unwrap_err()
            .contains("cdrom"));
    }

    #[test]
    fn readiness_from_the_pipe() {
        let (r, w) = pipe().unwrap();
        assert_eq!(wait_ready(&r, Duration::from_millis(10)), Ready::Unknown);
        std::fs::File::from(w).write_all(b"1").unwrap();
        assert_eq!(wait_ready(&r, Duration::from_secs(5)), Ready::Yes);
        let (r, w) = pipe().unwrap();
        drop(w); // the process ended before it was ready
        assert_eq!(wait_ready(&r, Duration::from_secs(5)), Ready::Failed);
    }

    #[test]
    fn exit_reasons() {
        assert_eq!(ExitReport::Exited(0).describe(""), "powered off");
        assert!(!ExitReport::Exited(0).is_failure());
        assert_eq!(
            ExitReport::Exited(1).describe("kapsel run: guest triple fault"),
            "failed (exit 1): guest triple fault"
        );
        assert_eq!(ExitReport::Killed(9).describe(""), "killed by SIGKILL");
        assert!(ExitReport::Killed(libc::SIGSYS)
            .describe("")
            .contains("seccomp"));
    }

    #[test]
    fn resident_memory_of_this_process() {
        assert!(resident_bytes(std::process::id()).unwrap() > 0);
        assert_eq!(resident_bytes(u32::MAX), None);
    }
}
