//! One VM process: `kapsel run` started by the daemon for a VM spec, and
//! the typed contract with it. The VM's whole configuration goes in as
//! one serialized [`VmConfig`] on a sealed memfd ([`CONFIG_FD`]); the
//! daemon drives it through its control socket ([`CONTROL_FD`]: power
//! button, pause, resume, status) and learns how it ended from its exit
//! report ([`EXIT_FD`]). Its console is a socket pair, its stderr goes to
//! the VM's log (and is the reason shown only when no report came).

use kapsel_config::{BootDevice, Firmware, MacAddr, VmSpec};
use kapsel_host::fd::pipe;
use kapsel_vmm::config::{ConsoleSpec, DiskConfig, NetConfig, TapSource, VmConfig};
use kapsel_vmm::control::{self, Client, EndReport, Reply, Request, VmStatus};
use kapsel_vmm::user_files::UserCredentials;
use kapsel_vmm::OnReboot;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;
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

/// The descriptors a VM process inherits, by number: its configuration
/// (a sealed memfd), its control socket, the write ends of its exit-report
/// and readiness pipes, then its taps.
pub const CONFIG_FD: i32 = 3;
/// The VM process's end of its control socket (`--control-fd`).
pub const CONTROL_FD: i32 = 4;
/// The write end of its exit-report pipe (`--exit-fd`).
pub const EXIT_FD: i32 = 5;
/// The write end of its readiness pipe (the configuration's `ready_fd`).
pub const READY_FD: i32 = 6;
/// The descriptor number the first tap gets in the VM process (the next
/// ones follow).
pub const FIRST_TAP_FD: i32 = 7;
/// Where the descriptors the daemon hands a VM's monitor begin (see
/// [`prepare`]): the configuration, the readiness pipe, the taps.
pub const HANDED_FD: i32 = 3;

/// How long a control request may take (a pause waits up to 2 s for the
/// vCPUs to stop).
pub const CONTROL_TIMEOUT: Duration = Duration::from_secs(5);

/// A running VM process.
pub struct VmProcess {
    /// Its process id.
    pub pid: u32,
    /// The VM's name, for messages.
    name: String,
    /// The daemon's end of the console (input to the guest).
    console: UnixStream,
    /// Collects stderr into the log; yields the last line.
    stderr: Option<JoinHandle<Option<String>>>,
    /// The daemon's end of the control socket; one request at a time.
    control: Mutex<Client>,
    /// The read end of the exit-report pipe, and what came on it so far.
    exit: Mutex<(std::fs::File, Vec<u8>)>,
}

/// What an ended VM process left: its exit report, and its last line on
/// stderr (shown only when there is no report, e.g. after SIGKILL).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Finished {
    /// The typed report it wrote before exiting.
    pub report: Option<EndReport>,
    /// Its last non-empty line on stderr.
    pub stderr_tail: Option<String>,
}

impl VmProcess {
    /// A handle that writes keyboard input to the guest's console.
    pub fn console_input(&self) -> std::io::Result<UnixStream> {
        self.console.try_clone()
    }

    fn call(&self, what: &str, request: Request) -> Result<Reply, String> {
        let mut client = self.control.lock().unwrap_or_else(|e| e.into_inner());
        match client.call(request, CONTROL_TIMEOUT) {
            Ok(Reply::Error { message }) => Err(format!("vm {}: {what}: {message}", self.name)),
            Ok(reply) => Ok(reply),
            Err(e) => Err(format!(
                "vm {}: {what}: {e} (the VM process may be stuck; `kapsel stop -f {}` ends it)",
                self.name, self.name
            )),
        }
    }

    fn call_ok(&self, what: &str, request: Request) -> Result<(), String> {
        match self.call(what, request)? {
            Reply::Ok => Ok(()),
            other => Err(format!(
                "vm {}: {what}: unexpected reply {other:?}",
                self.name
            )),
        }
    }

    /// Presses the guest's ACPI power button; the VM process stops the VM
    /// itself when the guest has not powered off within its shutdown
    /// timeout.
    pub fn power_button(&self) -> Result<(), String> {
        self.call_ok("power button", Request::PowerButton)
    }

    /// Stops every vCPU (in KVM, not the process).
    pub fn pause(&self) -> Result<(), String> {
        self.call_ok("pause", Request::Pause)
    }

    /// Lets a paused VM run on.
    pub fn resume(&self) -> Result<(), String> {
        self.call_ok("resume", Request::Resume)
    }

    /// The VM's figures: paused or running, vCPUs, resident memory, uptime.
    pub fn status(&self) -> Result<VmStatus, String> {
        match self.call("status", Request::Status)? {
            Reply::Status { status } => Ok(status),
            other => Err(format!(
                "vm {}: status: unexpected reply {other:?}",
                self.name
            )),
        }
    }

    /// The exit report, once the process has written it (it does so just
    /// before it exits); None before, or when it ended without one.
    pub fn exit_report(&self) -> Option<EndReport> {
        let mut exit = self.exit.lock().unwrap_or_else(|e| e.into_inner());
        let (pipe, bytes) = &mut *exit;
        // Non-blocking (set at spawn): takes what is there, up to a
        // frame's size in all.
        let room = (control::MAX_FRAME as u64 + 4).saturating_sub(bytes.len() as u64);
        let _ = pipe.take(room).read_to_end(bytes);
        EndReport::parse(bytes).ok()
    }

    /// After the process has ended: reaps it and returns its exit report
    /// and its last line on stderr.
    pub fn finish(mut self) -> Finished {
        // SAFETY: waitpid on our own child; a null status pointer is allowed.
        unsafe { libc::waitpid(self.pid as libc::pid_t, std::ptr::null_mut(), 0) };
        Finished {
            report: self.exit_report(),
            stderr_tail: self.stderr.take().and_then(|h| h.join().ok().flatten()),
        }
    }
}

/// The configuration of the VM process for a VM spec, or why it cannot
/// run: the daemon's VMs reboot like machines do (power-off ends them),
/// their console is the process's stdin and stdout, their taps are the
/// inherited descriptors from [`FIRST_TAP_FD`] on, and the files a user
/// named are opened with that user's rights.
pub fn vm_config(
    spec: &VmSpec,
    shutdown_timeout: Duration,
    macs: &[MacAddr],
    open_as: Option<&OpenAs>,
) -> Result<VmConfig, String> {
    let name = &spec.common.name;
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
    // A kernel when `boot` names one (vm.conf cannot also say `firmware`;
    // `start -b` replaces it), else the firmware from the disks.
    let (kernel, firmware) = match (&spec.boot, spec.firmware.unwrap_or(Firmware::Bios)) {
        (Some(kernel), _) => (kernel.clone(), None),
        (None, Firmware::Uefi) => {
            return Err(format!(
                "vm {name}: UEFI firmware boot is not supported yet; use `firmware bios` \
                 (SeaBIOS) or boot a kernel with `boot PATH`"
            ))
        }
        (None, Firmware::Bios) if spec.disks.is_empty() => {
            return Err(format!(
                "vm {name} has no kernel and no disk to boot through the BIOS: add \
                 `boot \"/path/to/vmlinuz\"`, or a `disk` with a boot loader, in vm.conf \
                 (or start it with -b or -d)"
            ))
        }
        (None, Firmware::Bios) => (
            std::path::PathBuf::new(),
            Some(kapsel_vmm::config::Firmware::Bios(
                kapsel_vmm::arch::x86_64::firmware::DEFAULT_BIOS.into(),
            )),
        ),
    };
    let mut disks = Vec::new();
    for (i, disk) in spec.disks.iter().enumerate() {
        let format = disk
            .format
            .map(|f| f.keyword().parse::<kapsel_image::Format>())
            .transpose()
            .map_err(|e| format!("vm {name}: disk {}: {e}", disk.path.display()))?;
        disks.push(DiskConfig {
            path: disk.path.clone(),
            read_only: false,
            serial: None,
            format,
            cache: Default::default(),
            as_user: open_as.is_some_and(|u| u.disks.contains(&i)),
        });
    }
    let nets = macs
        .iter()
        .enumerate()
        .map(|(i, mac)| NetConfig {
            tap: TapSource::Fd(FIRST_TAP_FD + i as i32),
            mac: Some(mac.0),
        })
        .collect();
    let cpus = spec.common.cpus.unwrap_or(1);
    let cpus = u8::try_from(cpus).map_err(|_| {
        format!("vm {name}: {cpus} vCPUs are more than a VM can have; give at most 254")
    })?;
    let cfg = VmConfig {
        kernel,
        initrd: spec.initrd.clone(),
        cmdline: spec
            .cmdline
            .clone()
            .unwrap_or_else(|| kapsel_vmm::config::DEFAULT_CMDLINE.into()),
        memory: spec.common.memory.map_or(512 << 20, |m| m.bytes()),
        cpus,
        console: ConsoleSpec::Stdio,
        // A daemon's VM reboots like a machine does; power-off ends it.
        on_reboot: OnReboot::Restart,
        hide_cpuid: Vec::new(),
        disks,
        rng: false,
        nets,
        virtio_console: None,
        shutdown_timeout,
        sandbox: true,
        open_as: open_as.map(|u| UserCredentials {
            uid: u.uid,
            gid: u.gid,
            groups: u.groups.clone(),
        }),
        kernel_as_user: open_as.is_some_and(|u| u.kernel),
        initrd_as_user: open_as.is_some_and(|u| u.initrd) && spec.initrd.is_some(),
        ready_fd: Some(READY_FD),
        firmware,
    };
    cfg.check().map_err(|e| format!("vm {name}: {e}"))?;
    Ok(cfg)
}

/// A close-on-exec duplicate of `fd` numbered above every descriptor number
/// the child's `count` inherited descriptors will get (from `CONFIG_FD`
/// on), so that moving one into place with dup2 cannot overwrite another.
///
/// The floor is the lowest such number, not a fixed high one: F_DUPFD fails
/// with EINVAL when its floor is not below RLIMIT_NOFILE, and the soft limit
/// is 1024 under systemd and busybox init alike (a floor of 1024 made every
/// VM with an interface fail there with "tap descriptor: Invalid argument").
pub(crate) fn dup_above_targets(fd: &impl AsFd, count: usize) -> std::io::Result<OwnedFd> {
    let floor = CONFIG_FD.saturating_add(i32::try_from(count).unwrap_or(i32::MAX));
    // SAFETY: F_DUPFD_CLOEXEC duplicates a descriptor we own; it touches no
    // memory.
    let dup = unsafe { libc::fcntl(fd.as_fd().as_raw_fd(), libc::F_DUPFD_CLOEXEC, floor) };
    if dup < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: dup is a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(dup) })
}

/// A memfd holding `bytes`, sealed against every change (as a VM's
/// configuration must not change under the process that reads it).
fn sealed_memfd(name: &str, bytes: &[u8]) -> std::io::Result<OwnedFd> {
    let cname = std::ffi::CString::new(name).map_err(std::io::Error::other)?;
    // SAFETY: memfd_create reads a NUL-terminated name and makes a new
    // descriptor.
    let fd =
        unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a new descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut file = std::fs::File::from(fd);
    file.write_all(bytes)?;
    let seals = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
    // SAFETY: F_ADD_SEALS on our own memfd touches no memory.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(OwnedFd::from(file))
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
/// arguments, the descriptors its monitor inherits at [`HANDED_FD`], ...
/// (the VM's configuration in a sealed memfd, the write end of its
/// readiness pipe, then its taps) and the read end of that pipe, on which
/// it says when its resources are open (see [`wait_ready`]).
/// [`spawn_process`] (in its monitor) runs it.
pub fn prepare(launch: Launch) -> Result<(Vec<String>, Vec<OwnedFd>, OwnedFd), String> {
    let name = &launch.spec.common.name;
    let macs: Vec<MacAddr> = launch.taps.iter().map(|(_, m)| *m).collect();
    let cfg = vm_config(launch.spec, launch.shutdown_timeout, &macs, launch.open_as)?;
    let config = sealed_memfd("kapsel-vm-config", &cfg.to_json())
        .map_err(|e| format!("vm {name}: configuration memfd: {e}"))?;
    let (ready_read, ready_write) =
        pipe().map_err(|e| format!("vm {name}: readiness pipe: {e}"))?;
    let args: Vec<String> = [
        "run",
        "--config-fd",
        &CONFIG_FD.to_string(),
        "--control-fd",
        &CONTROL_FD.to_string(),
        "--exit-fd",
        &EXIT_FD.to_string(),
    ]
    .map(String::from)
    .to_vec();
    let mut fds = vec![config, ready_write];
    fds.extend(launch.taps.into_iter().map(|(fd, _)| fd));
    Ok((args, fds, ready_read))
}

/// The configuration in the memfd at `fd`, for the log.
fn config_for_log(fd: i32) -> String {
    let mut buf = vec![0u8; 64 << 10];
    // SAFETY: pread writes at most buf.len() bytes into buf.
    let n = unsafe { libc::pread(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
    buf.truncate(usize::try_from(n).unwrap_or(0));
    String::from_utf8_lossy(&buf).into_owned()
}

/// Starts the VM process `kapsel ARGS` (in its monitor) from this
/// process's `fds` descriptors at [`HANDED_FD`], ... (as [`prepare`] laid
/// them out), with its own control socket and exit-report pipe; the VM
/// process gets them at [`CONFIG_FD`], [`CONTROL_FD`], [`EXIT_FD`],
/// [`READY_FD`] and its taps from [`FIRST_TAP_FD`]. Returns it and its
/// console output stream. Its stderr is appended to `log`; it is killed if
/// this process dies (`PR_SET_PDEATHSIG`), so that no VM runs without its
/// monitor.
pub fn spawn_process(
    name: &str,
    kapsel: &Path,
    args: &[String],
    log: &Path,
    fds: u32,
) -> Result<(VmProcess, UnixStream), String> {
    if fds < 2 {
        return Err(format!(
            "vm {name}: the VM process needs its configuration and readiness descriptors"
        ));
    }
    let (control_daemon, control_vm) =
        UnixStream::pair().map_err(|e| format!("vm {name}: control socket: {e}"))?;
    let (exit_read, exit_write) = pipe().map_err(|e| format!("vm {name}: exit pipe: {e}"))?;
    // SAFETY: F_GETFL/F_SETFL on a descriptor we own touch no memory.
    unsafe {
        let flags = libc::fcntl(exit_read.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(
            exit_read.as_raw_fd(),
            libc::F_SETFL,
            flags | libc::O_NONBLOCK,
        );
    }
    let control_vm = OwnedFd::from(control_vm);
    // SAFETY: HANDED_FD.. are this process's inherited descriptors (see
    // prepare), open until start_guest closes them after this returns.
    let handed = |i: u32| unsafe { std::os::fd::BorrowedFd::borrow_raw(HANDED_FD + i as i32) };
    // In the order of their numbers in the VM process.
    let mut sources = vec![handed(0), control_vm.as_fd(), exit_write.as_fd(), handed(1)];
    sources.extend((2..fds).map(handed));
    let mut high = Vec::new();
    for fd in &sources {
        high.push(
            dup_above_targets(fd, sources.len())
                .map_err(|e| format!("vm {name}: inherited descriptor: {e}"))?,
        );
    }
    drop(sources);
    drop((control_vm, exit_write));
    let raw: Vec<i32> = high.iter().map(|f| f.as_raw_fd()).collect();
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
    let _ = writeln!(log, "config: {}", config_for_log(HANDED_FD));
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
    // SAFETY: between fork and exec only prctl and dup2, which are
    // async-signal-safe, on descriptors that stay open here until the
    // child runs.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            for (i, &fd) in raw.iter().enumerate() {
                if libc::dup2(fd, CONFIG_FD + i as i32) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("vm {name}: cannot run {}: {e}", kapsel.display()))?;
    drop(high);
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
            name: name.to_string(),
            console: daemon_end,
            stderr: Some(stderr),
            control: Mutex::new(Client::new(control_daemon)),
            exit: Mutex::new((std::fs::File::from(exit_read), Vec::new())),
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

    /// The reason shown in `status` and the log: the VM process's exit
    /// report, or, when it wrote none (killed, say), the status and its
    /// last line on stderr.
    pub fn describe(&self, finished: &Finished) -> String {
        // A signal after the report (the backstop's kill racing the exit)
        // does not change how the guest ended.
        if let Some(report) = &finished.report {
            return report.describe();
        }
        let tail = finished.stderr_tail.as_deref().unwrap_or_default();
        let tail = tail.trim().trim_start_matches("kapsel run: ");
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

impl crate::guest::GuestOps for VmSpec {
    fn prepare(&self, _state_dir: &Path, _kapsel: &Path) -> Result<(), crate::guest::GuestError> {
        // The VM process opens its files itself, with the right user's
        // rights (`--open-as`).
        Ok(())
    }

    fn interfaces_first(&self) -> bool {
        true
    }

    fn launch(
        &self,
        ctx: crate::guest::LaunchContext,
    ) -> Result<crate::guest::Launch, crate::guest::GuestError> {
        let (args, fds, ready) = prepare(Launch {
            spec: self,
            shutdown_timeout: ctx.shutdown_timeout,
            taps: ctx.taps,
            open_as: ctx.open_as,
        })?;
        Ok(crate::guest::Launch {
            guest: crate::monitor::GuestLaunch::Vm {
                kapsel: ctx.kapsel.to_owned(),
                args,
                fds: fds.len() as u32,
            },
            fds,
            ready: Some(ready),
            veth: None,
        })
    }

    fn vcpus(&self) -> u32 {
        self.common.cpus.unwrap_or(kapsel_config::DEFAULT_VM_CPUS)
    }
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
                match dup_above_targets(&fd, 8) {
                    _ if !set => 2,
                    Ok(d) if (CONFIG_FD + 8..64).contains(&d.as_raw_fd()) => 0,
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
    fn the_vm_configuration_from_a_spec() {
        let mut spec = VmSpec::new("web");
        assert!(vm_config(&spec, Duration::from_secs(30), &[], None)
            .unwrap_err()
            .contains("add `boot"));
        spec.boot = Some("/vm/vmlinuz".into());
        spec.common.memory = Some(kapsel_config::ByteSize(256 << 20));
        spec.common.cpus = Some(2);
        spec.cmdline = Some("console=ttyS0 quiet".into());
        spec.disks.push(kapsel_config::DiskSpec {
            path: "/vm/web.qcow2".into(),
            format: Some(kapsel_config::DiskFormat::Qcow2),
        });
        let mac = MacAddr([0xfe, 0xe1, 0xbb, 1, 2, 3]);
        let cfg = vm_config(&spec, Duration::from_secs(7), &[mac, mac], None).unwrap();
        assert_eq!(cfg.kernel, Path::new("/vm/vmlinuz"));
        assert_eq!((cfg.memory, cfg.cpus), (256 << 20, 2));
        assert_eq!(cfg.shutdown_timeout, Duration::from_secs(7));
        assert_eq!(cfg.cmdline, "console=ttyS0 quiet");
        assert_eq!(cfg.console, ConsoleSpec::Stdio);
        assert_eq!(cfg.on_reboot, OnReboot::Restart);
        assert_eq!(cfg.ready_fd, Some(READY_FD));
        assert!(cfg.sandbox);
        assert_eq!(
            cfg.nets,
            vec![
                NetConfig {
                    tap: TapSource::Fd(FIRST_TAP_FD),
                    mac: Some(mac.0)
                },
                NetConfig {
                    tap: TapSource::Fd(FIRST_TAP_FD + 1),
                    mac: Some(mac.0)
                }
            ]
        );
        assert_eq!(cfg.disks[0].path, Path::new("/vm/web.qcow2"));
        assert_eq!(cfg.disks[0].format, Some(kapsel_image::Format::Qcow2));
        assert!(!cfg.disks[0].as_user && cfg.open_as.is_none());
        // What the VM process reads back is what was meant.
        assert_eq!(VmConfig::from_json(&cfg.to_json(), "test").unwrap(), cfg);
        // Without a command line, kapsel run's default.
        spec.cmdline = None;
        let cfg = vm_config(&spec, Duration::ZERO, &[], None).unwrap();
        assert_eq!(cfg.cmdline, kapsel_vmm::config::DEFAULT_CMDLINE);
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
        let cfg = vm_config(&spec, Duration::from_secs(7), &[], Some(&user)).unwrap();
        assert_eq!(
            cfg.open_as,
            Some(UserCredentials {
                uid: 1000,
                gid: 100,
                groups: vec![100, 24]
            })
        );
        assert!(cfg.kernel_as_user);
        assert!(!cfg.initrd_as_user, "no initrd");
        assert!(!cfg.disks[0].as_user && cfg.disks[1].as_user);
        assert_eq!(cfg.disks[1].format, None);
        spec.cdrom = Some("/x.iso".into());
        assert!(vm_config(&spec, Duration::ZERO, &[], None)
            .unwrap_err()
            .contains("cdrom"));
    }

    #[test]
    fn the_configuration_memfd_is_sealed() {
        let fd = sealed_memfd("test", b"{}").unwrap();
        let mut file = std::fs::File::from(fd);
        assert!(file.write_all(b"more").is_err());
        // SAFETY: F_GET_SEALS on our own memfd.
        let seals = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GET_SEALS) };
        assert_eq!(seals & libc::F_SEAL_WRITE, libc::F_SEAL_WRITE);
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
        let none = Finished::default();
        let report = |r: EndReport| Finished {
            report: Some(r),
            stderr_tail: Some("kapsel run: whatever".into()),
        };
        assert_eq!(
            ExitReport::Exited(0).describe(&report(EndReport::PowerOff)),
            "powered off"
        );
        assert!(!ExitReport::Exited(0).is_failure());
        // The typed report, not the last line of stderr.
        assert_eq!(
            ExitReport::Exited(1).describe(&report(EndReport::TripleFault { cpu: 1 })),
            "failed: guest triple fault on vCPU 1"
        );
        assert_eq!(
            ExitReport::Exited(1).describe(&report(EndReport::ShutdownTimeout { seconds: 30 })),
            "stopped: the guest did not power off within 30 s of the ACPI power button"
        );
        // Without a report, the status and the stderr tail.
        let tail = Finished {
            report: None,
            stderr_tail: Some("kapsel run: guest triple fault".into()),
        };
        assert_eq!(
            ExitReport::Exited(1).describe(&tail),
            "failed (exit 1): guest triple fault"
        );
        assert_eq!(ExitReport::Exited(3).describe(&none), "failed (exit 3)");
        assert_eq!(ExitReport::Killed(9).describe(&none), "killed by SIGKILL");
        assert!(ExitReport::Killed(libc::SIGSYS)
            .describe(&none)
            .contains("seccomp"));
    }

    #[test]
    fn resident_memory_of_this_process() {
        assert!(resident_bytes(std::process::id()).unwrap() > 0);
        assert_eq!(resident_bytes(u32::MAX), None);
    }
}
