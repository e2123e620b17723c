//! One container run by the daemon: its root (an image unpacked), started
//! with kapsel-container in its monitor (the init's parent), its console
//! on a pty, how it ended, and `kapsel exec` into it.

use kapsel_config::{ContainerSpec, UserMap};
use kapsel_container::image::ImageDefaults;
use kapsel_container::{cgroup::CgroupMode, ConsoleSpec, Container, ExitStatus, IdMap, VethSpec};
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// A running container.
pub struct ContainerProcess {
    ct: Arc<Mutex<Container>>,
    /// The init's pid (in the host's PID namespace).
    pub pid: u32,
    console: File,
}

fn lock(ct: &Mutex<Container>) -> std::sync::MutexGuard<'_, Container> {
    ct.lock().unwrap_or_else(|e| e.into_inner())
}

/// Where a container's root comes from: `root PATH` as it is, or `image
/// PATH` (a tarball, an OCI image layout or archive, `PATH:TAG` for a
/// tagged manifest) unpacked into `STATE_DIR/ct/NAME/root`, again only
/// when the image changes. Returns the root and, for an OCI image, its
/// configuration's defaults (command, environment, working directory).
pub fn root_dir(
    spec: &ContainerSpec,
    state_dir: &Path,
    kapsel: &Path,
) -> Result<(PathBuf, ImageDefaults), String> {
    let name = &spec.common.name;
    if let Some(root) = &spec.root {
        check_root_private(name, root)?;
        return Ok((root.clone(), ImageDefaults::default()));
    }
    let image = spec.image.as_ref().ok_or_else(|| {
        format!("container {name} has neither `root` nor `image`; give it one in vm.conf")
    })?;
    let dir = state_dir.join("ct").join(name);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|e| format!("container {name}: {}: {e}", dir.display()))?;
    close_dir(&state_dir.join("ct"))?;
    close_dir(&dir)?;
    // In a confined child (crate::unpack): the daemon parses no image.
    crate::unpack::prepare(kapsel, image, &dir).map_err(|e| {
        let at = if spec.common.span.line > 0 {
            format!(
                " (container block at {}:{})",
                spec.common.span.file.display(),
                spec.common.span.line
            )
        } else {
            String::new()
        };
        format!("container {name}: {e}; repair or replace the image{at}")
    })
}

/// Makes a directory of the daemon's state root's alone: owned by root,
/// mode 0700 (an older kapseld left them open).
fn close_dir(dir: &Path) -> Result<(), String> {
    let fix = |e: std::io::Error| format!("{}: {e}; make it root's, mode 0700", dir.display());
    let meta = std::fs::symlink_metadata(dir).map_err(fix)?;
    if !meta.is_dir() {
        return Err(format!(
            "{} is not a directory; remove it (kapseld keeps container roots there)",
            dir.display()
        ));
    }
    if meta.uid() != 0 || meta.gid() != 0 {
        std::os::unix::fs::lchown(dir, Some(0), Some(0)).map_err(fix)?;
    }
    if meta.mode() & 0o7777 != 0o700 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(fix)?;
    }
    Ok(())
}

/// `STATE_DIR/ct` and every `STATE_DIR/ct/NAME` in it closed to every user
/// but root, on each daemon start: the image containers' roots below them
/// hold what the containers' roots wrote, setuid files of host uid 0
/// included (in `unprivileged` containers too: their idmapped mount stores
/// container root as uid 0). Roots of containers no longer configured are
/// covered too. Incus closes its container directories the same way.
pub fn close_container_dirs(state_dir: &Path) -> Result<(), String> {
    let ct = state_dir.join("ct");
    if !ct.exists() {
        return Ok(());
    }
    close_dir(&ct)?;
    let entries = std::fs::read_dir(&ct).map_err(|e| format!("{}: {e}", ct.display()))?;
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            close_dir(&entry.path())?;
        }
    }
    Ok(())
}

/// Refuses a `root PATH` that a host user other than root can reach: what
/// the container's root writes there is stored as host uid 0 (with
/// `unprivileged` too, through the idmapped mount), so a setuid file it
/// makes would be a setuid-root program for whoever can reach it. Like
/// sshd's StrictModes, the path is checked from `/` down: some directory
/// on it (the root itself or one above) must be root's with no search
/// permission for group and others, and every directory above that one
/// root's and not writable by others (a world-writable one only with the
/// sticky bit, like /tmp), so nobody else can swap what lies below.
pub fn check_root_private(name: &str, root: &Path) -> Result<(), String> {
    let canon = std::fs::canonicalize(root).map_err(|e| {
        format!(
            "container {name}: root {}: {e}; give an existing directory",
            root.display()
        )
    })?;
    let path: Vec<&Path> = canon.ancestors().collect();
    for dir in path.into_iter().rev() {
        let meta = std::fs::metadata(dir)
            .map_err(|e| format!("container {name}: root {}: {e}", dir.display()))?;
        let mode = meta.mode();
        if meta.uid() != 0 {
            return Err(format!(
                "container {name}: its root {} lies below {}, which belongs to uid {} and so \
                 is not closed to that user; keep the root in a directory of root's that \
                 only root may enter (`mkdir -m 700 /srv/ct` and the root below it; \
                 vm.conf(5), root)",
                canon.display(),
                dir.display(),
                meta.uid()
            ));
        }
        if mode & 0o022 != 0 && mode & libc::S_ISVTX == 0 {
            return Err(format!(
                "container {name}: its root {} lies below {}, which users other than root \
                 may write (mode {:04o}), so they could replace what lies below it; \
                 run `chmod go-w {}` (vm.conf(5), root)",
                canon.display(),
                dir.display(),
                mode & 0o7777,
                dir.display()
            ));
        }
        if mode & 0o011 == 0 {
            return Ok(());
        }
    }
    // Closing the parent is the fix, unless it is `/` or a shared
    // directory such as /tmp (sticky), which must stay open.
    let parent = canon.parent().unwrap_or(&canon);
    let shared = parent == Path::new("/")
        || std::fs::metadata(parent).is_ok_and(|m| m.mode() & libc::S_ISVTX != 0);
    let fix = if shared {
        format!(
            "move it into a directory that only root may enter (`install -d -m 700 \
             /var/lib/kapsel/ct`, then the root below it), not {}",
            parent.display()
        )
    } else {
        format!("run `chmod 700 {}`", parent.display())
    };
    Err(format!(
        "container {name}: its root {} can be reached by users other than root (no \
         directory on its path is closed to them), and a setuid file the container's \
         root makes there is a setuid-root program on the host; {fix} (vm.conf(5), root)",
        canon.display(),
    ))
}

/// The init and its settings: `init` from vm.conf wins; without it, the
/// image's `Entrypoint` followed by `Cmd`; without those, `/sbin/init`.
/// The image's `Env` and `WorkingDir` apply either way.
fn init_settings(
    s: &ContainerSpec,
    defaults: &ImageDefaults,
) -> (Vec<String>, Vec<String>, Option<String>) {
    let init = match defaults.command() {
        Some(cmd) if s.init.is_empty() => cmd,
        _ => s.init_command(),
    };
    (init, defaults.env.clone(), defaults.working_dir.clone())
}

/// What a container needs to start.
pub struct Launch<'a> {
    /// The container as configured.
    pub spec: &'a ContainerSpec,
    /// Its root directory.
    pub root: PathBuf,
    /// What its image's configuration asks for (empty without an OCI image).
    pub defaults: ImageDefaults,
    /// The host side of its one interface, with the guest MAC.
    pub veth: Option<(String, [u8; 6])>,
    /// The host's cgroup layout.
    pub cgroups: &'a CgroupMode,
}

/// The container's console output: the pty master, read until the init
/// has exited. A pty master reads EIO while no process holds the slave
/// open, which happens while the container runs: systemd opens
/// /dev/console for each status message and closes it again, and a getty
/// hangs it up. Such a moment is waited out, not taken for the end.
pub struct ConsoleOutput {
    master: File,
    exited: OwnedFd,
}

impl ConsoleOutput {
    fn init_exited(&self) -> bool {
        let mut pfd = libc::pollfd {
            fd: self.exited.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: polls one pollfd we own, without waiting.
        unsafe { libc::poll(&mut pfd, 1, 0) == 1 }
    }
}

impl Read for ConsoleOutput {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            match self.master.read(buf) {
                Err(e) if e.raw_os_error() == Some(libc::EIO) => {
                    // What was written before the last close has been
                    // read (the master returns it before EIO).
                    if self.init_exited() {
                        return Ok(0);
                    }
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                other => return other,
            }
        }
    }
}

/// Starts the container; returns it and its console output.
pub fn spawn(launch: &Launch) -> Result<(ContainerProcess, ConsoleOutput), String> {
    let s = launch.spec;
    let (init, env, cwd) = init_settings(s, &launch.defaults);
    let mut spec =
        kapsel_container::ContainerSpec::new(s.common.name.clone(), launch.root.clone(), init);
    spec.env = env;
    spec.cwd = cwd;
    spec.memory = s.common.memory.map(|m| m.bytes());
    spec.cpus = s.common.cpus.map(f64::from);
    spec.pids = s.pids;
    spec.hostname = Some(s.common.name.clone());
    spec.console = ConsoleSpec::Pty;
    // Started by its monitor: it goes when the monitor does.
    spec.die_with_parent = true;
    spec.network = launch.veth.as_ref().map(|(host, mac)| VethSpec {
        host_name: host.clone(),
        mac: Some(*mac),
    });
    if let Some(map) = s.unprivileged {
        let map = user_map(map);
        spec.idmap_root = !map.shifted(&launch.root);
        spec.user_map = Some(map);
    }
    let ct = Container::start_in(&spec, launch.cgroups)
        .map_err(|e| format!("container {}: {e}", s.common.name))?;
    let console = ct
        .console()
        .ok_or_else(|| format!("container {}: no console", s.common.name))
        .and_then(|f| {
            f.try_clone()
                .map_err(|e| format!("container {}: console: {e}", s.common.name))
        })?;
    let out = ConsoleOutput {
        master: console
            .try_clone()
            .map_err(|e| format!("container {}: console: {e}", s.common.name))?,
        exited: ct
            .pidfd()
            .try_clone_to_owned()
            .map_err(|e| format!("container {}: pidfd: {e}", s.common.name))?,
    };
    let pid = ct.pid() as u32;
    Ok((
        ContainerProcess {
            ct: Arc::new(Mutex::new(ct)),
            pid,
            console,
        },
        out,
    ))
}

/// `unprivileged`'s map for the runtime: the same ids for users and groups.
fn user_map(map: UserMap) -> IdMap {
    IdMap {
        host_uid: map.host_id,
        host_gid: map.host_id,
        count: map.count,
    }
}

impl ContainerProcess {
    /// A descriptor that becomes readable when the init has exited.
    pub fn exit_fd(&self) -> std::io::Result<OwnedFd> {
        lock(&self.ct).pidfd().try_clone_to_owned()
    }

    /// Where keyboard input for the console goes.
    pub fn console_input(&self) -> std::io::Result<File> {
        self.console.try_clone()
    }

    /// Asks the init to shut down (its power-off signal).
    pub fn shutdown(&self) -> Result<(), String> {
        let ct = lock(&self.ct);
        let sig = ct.stop_signal();
        ct.signal(sig).map_err(|e| e.to_string())
    }

    /// Kills every process of the container.
    pub fn kill(&self) -> Result<(), String> {
        lock(&self.ct).kill().map(|_| ()).map_err(|e| e.to_string())
    }

    /// Freezes (`true`) or thaws the container's cgroup.
    pub fn freeze(&self, freeze: bool) -> Result<(), String> {
        let ct = lock(&self.ct);
        if freeze { ct.freeze() } else { ct.thaw() }.map_err(|e| e.to_string())
    }

    /// Memory the container's cgroup counts.
    pub fn memory(&self) -> Option<u64> {
        lock(&self.ct).memory_usage().ok()
    }

    /// After the init has exited: reaps it, removes the cgroup and the
    /// veth, and says how it ended.
    pub fn finish(self) -> String {
        let mut ct = lock(&self.ct);
        let status = ct.wait();
        let reason = match status {
            Ok(ExitStatus::Exited(0)) => "exited (status 0)".to_string(),
            Ok(ExitStatus::Exited(n)) => format!("failed (exit {n})"),
            Ok(ExitStatus::Signaled(sig)) => {
                format!("killed by {}", crate::vmproc::signal_name(sig))
            }
            Err(e) => format!("ended ({e})"),
        };
        drop(ct);
        if let Ok(ct) = Arc::try_unwrap(self.ct) {
            if let Err(e) = ct.into_inner().unwrap_or_else(|e| e.into_inner()).cleanup() {
                tracing::warn!("cleaning up a container: {e}");
            }
        }
        reason
    }

    /// A handle to run commands in the container without the daemon's
    /// lock held (the container is cleaned up when the last one goes).
    pub fn exec_target(&self) -> ExecTarget {
        ExecTarget {
            ct: self.ct.clone(),
        }
    }
}

/// A running container to run `kapsel exec` commands in.
pub struct ExecTarget {
    ct: Arc<Mutex<Container>>,
}

impl ExecTarget {
    /// Runs `argv` in the container with its stdio on a pty (`tty`: of that
    /// many rows and columns) or a socket pair; once it has started, `reply` gives the client
    /// connection, over which it is relayed ([`exec_frames`] framing; the
    /// last frame carries the exit status).
    pub fn run(
        &self,
        argv: &[String],
        tty: Option<(u16, u16)>,
        reply: impl FnOnce() -> Result<UnixStream, String>,
    ) -> Result<(), String> {
        let (ours, theirs): (File, OwnedFd) = if let Some((rows, cols)) = tty {
            let pid = lock(&self.ct).pid() as u32;
            let (master, slave) = container_pty(pid).map_err(|e| format!("exec: pty: {e}"))?;
            // A pty that refuses a size still works, at the default size.
            let _ = kapsel_host::term::set_window_size(master.as_raw_fd(), rows, cols);
            (master, slave)
        } else {
            let (a, b) = UnixStream::pair().map_err(|e| format!("exec: {e}"))?;
            (File::from(OwnedFd::from(a)), OwnedFd::from(b))
        };
        let mut proc = lock(&self.ct)
            .exec_with(argv, Some(theirs.as_fd()))
            .map_err(|e| format!("exec: {e}"))?;
        drop(theirs);
        let client = match reply() {
            Ok(c) => c,
            Err(e) => {
                // SAFETY: kill has no memory-safety preconditions; the pid
                // is our unreaped child.
                unsafe { libc::kill(proc.pid(), libc::SIGKILL) };
                let _ = proc.wait();
                return Err(e);
            }
        };
        let mut to_client = client.try_clone().map_err(|e| format!("exec: {e}"))?;
        let mut input_to = ours.try_clone().map_err(|e| format!("exec: {e}"))?;
        let mut from_client = client;
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut from_client, &mut input_to);
            // End of input: a socket pair's reader sees EOF.
            // SAFETY: shutdown on a descriptor we own; harmless on a pty.
            unsafe { libc::shutdown(input_to.as_raw_fd(), libc::SHUT_WR) };
        });
        let mut out = ours;
        let mut buf = [0u8; 4096];
        loop {
            match out.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if exec_frames::write_output(&mut to_client, &buf[..n]).is_err() {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                // A pty master reads EIO once every slave is closed.
                Err(_) => break,
            }
        }
        let code = proc.wait().map(|s| s.code()).unwrap_or(125);
        let _ = exec_frames::write_exit(&mut to_client, code);
        // The input thread's read ends here, even for a client that keeps
        // its end open: the thread and its descriptors go with the request.
        let _ = to_client.shutdown(std::net::Shutdown::Both);
        Ok(())
    }
}

/// Blocks until `fd` (a pidfd) is readable: the process has exited.
pub fn wait_readable(fd: &OwnedFd) {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: one valid pollfd, no timeout.
        let n = unsafe { libc::poll(&mut pfd, 1, -1) };
        if n > 0 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return;
        }
    }
}

/// A new pseudo-terminal of the container whose init is `pid`: the master
/// from its own /dev/ptmx (its devpts instance, so that inside the
/// container the slave is a /dev/pts/N that exists), the slave opened
/// through the master (TIOCGPTPEER), never by a path the container
/// controls.
///
/// The container owns every name below its root, /dev/ptmx included (it
/// is normally a link to `pts/ptmx`). The path is resolved beneath the
/// container's root (`openat2` with `RESOLVE_IN_ROOT`, so an absolute link
/// such as `/dev/ptmx -> /etc/shadow` names the container's /etc/shadow,
/// never the host's), opened `O_PATH` first and only reopened for reading
/// and writing once it is the pty multiplexer (character device 5:2): the
/// daemon, host root, never opens anything else the container points at.
fn container_pty(pid: u32) -> std::io::Result<(File, OwnedFd)> {
    use std::os::fd::FromRawFd;
    use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
    let not_ptmx = || {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the container's /dev/ptmx is not the pty multiplexer (character device 5:2); \
             link it to pts/ptmx inside the container",
        )
    };
    let root = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(format!("/proc/{pid}/root"))?;
    // SAFETY: open_how is plain data; zeroed is a valid value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_PATH | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: openat2 reads a NUL-terminated constant path and an open_how
    // of the given size; the result is checked.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            c"dev/ptmx".as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        return Err(std::io::Error::new(
            e.kind(),
            format!("the container's /dev/ptmx: {e}"),
        ));
    }
    // SAFETY: fd is a new descriptor that nothing else owns.
    let path = File::from(unsafe { OwnedFd::from_raw_fd(fd as i32) });
    let meta = path.metadata()?;
    if !meta.file_type().is_char_device() || meta.rdev() != libc::makedev(5, 2) {
        return Err(not_ptmx());
    }
    let master = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(format!("/proc/self/fd/{}", path.as_raw_fd()))?;
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads one int from a valid pointer.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: TIOCGPTPEER returns a new descriptor for the slave; the flags
    // are plain integers.
    let slave = unsafe {
        libc::ioctl(
            master.as_raw_fd(),
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if slave < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: slave is a new descriptor that nothing else owns.
    let slave = unsafe { OwnedFd::from_raw_fd(slave) };
    // The relay reads the master blocking.
    // SAFETY: F_SETFL with plain flags on a descriptor we own.
    if unsafe { libc::fcntl(master.as_raw_fd(), libc::F_SETFL, libc::O_RDWR) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((master, slave))
}

/// The framing of `kapsel exec`'s output stream (daemon to CLI): a byte
/// for the kind, a big-endian u32 length, the payload. Output frames carry
/// the command's bytes; the exit frame its status (i32, big-endian).
pub mod exec_frames {
    use std::io::{self, Read, Write};

    /// Command output.
    pub const OUTPUT: u8 = 0;
    /// The command ended.
    pub const EXIT: u8 = 1;

    /// Sends output.
    pub fn write_output(w: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
        let mut frame = Vec::with_capacity(bytes.len() + 5);
        frame.push(OUTPUT);
        frame.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        frame.extend_from_slice(bytes);
        w.write_all(&frame)
    }

    /// Sends the exit status.
    pub fn write_exit(w: &mut impl Write, code: i32) -> io::Result<()> {
        let mut frame = vec![EXIT];
        frame.extend_from_slice(&4u32.to_be_bytes());
        frame.extend_from_slice(&code.to_be_bytes());
        w.write_all(&frame)
    }

    /// One frame: (kind, payload). Payloads over 1 MiB are refused.
    pub fn read(r: &mut impl Read) -> io::Result<(u8, Vec<u8>)> {
        let mut head = [0u8; 5];
        r.read_exact(&mut head)?;
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]);
        if len > 1 << 20 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "frame too long"));
        }
        let mut body = vec![0u8; len as usize];
        r.read_exact(&mut body)?;
        Ok((head[0], body))
    }
}

impl crate::guest::GuestOps for ContainerSpec {
    fn prepare(&self, state_dir: &Path, kapsel: &Path) -> Result<(), crate::guest::GuestError> {
        if self.image.is_some() {
            root_dir(self, state_dir, kapsel)?;
        }
        Ok(())
    }

    fn interfaces_first(&self) -> bool {
        false
    }

    fn launch(
        &self,
        ctx: crate::guest::LaunchContext,
    ) -> Result<crate::guest::Launch, crate::guest::GuestError> {
        let name = &self.common.name;
        if self.common.interfaces.len() > 1 {
            return Err(crate::guest::GuestError::Invalid(format!(
                "container {name}: one interface per container is supported for now; remove the others"
            )));
        }
        // Unpacked by `prepare` already, unless the image changed since.
        let (root, defaults) = root_dir(self, ctx.state_dir, ctx.kapsel)?;
        let veth = self.common.interfaces.first().map(|ispec| {
            let host = format!("kct{}-0", ctx.id);
            let mac = crate::net::guest_mac(name, 0, ispec);
            (host, mac.0)
        });
        Ok(crate::guest::Launch {
            guest: crate::monitor::GuestLaunch::Container {
                spec: Box::new(self.clone()),
                root,
                defaults,
                veth: veth.clone(),
            },
            fds: Vec::new(),
            ready: None,
            veth: veth.map(|(host, _)| host),
        })
    }

    fn vcpus(&self) -> u32 {
        self.common.cpus.unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> ImageDefaults {
        ImageDefaults {
            entrypoint: vec!["/bin/app".into()],
            cmd: vec!["--serve".into()],
            env: vec!["PATH=/usr/bin".into()],
            working_dir: Some("/srv".into()),
        }
    }

    #[test]
    fn the_image_command_runs_when_vm_conf_names_no_init() {
        let ct = ContainerSpec::new("app");
        let (init, env, cwd) = init_settings(&ct, &defaults());
        assert_eq!(init, ["/bin/app", "--serve"]);
        assert_eq!(env, ["PATH=/usr/bin"]);
        assert_eq!(cwd.as_deref(), Some("/srv"));
    }

    #[test]
    fn init_in_vm_conf_wins_over_the_image() {
        let mut ct = ContainerSpec::new("app");
        ct.init = vec!["/bin/sh".into(), "-c".into(), "true".into()];
        let (init, env, _) = init_settings(&ct, &defaults());
        assert_eq!(init, ["/bin/sh", "-c", "true"]);
        assert_eq!(env, ["PATH=/usr/bin"], "the image's Env still applies");
    }

    #[test]
    fn a_root_below_a_directory_others_may_write_is_refused() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            println!("SKIP: the check wants directories of root's");
            return;
        }
        let open = std::env::temp_dir().join(format!("kapsel-ctproc-w-{}", std::process::id()));
        let closed = open.join("closed");
        std::fs::create_dir_all(closed.join("root")).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o700)).unwrap();
        let writable = check_root_private("w", &closed.join("root"));
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
        let fine = check_root_private("w", &closed.join("root"));
        std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o755)).unwrap();
        let reachable = check_root_private("w", &closed.join("root"));
        let _ = std::fs::remove_dir_all(&open);
        let err = writable.unwrap_err();
        assert!(
            err.contains("may write") && err.contains("chmod go-w"),
            "{err}"
        );
        fine.unwrap();
        let err = reachable.unwrap_err();
        assert!(
            err.contains(&format!("chmod 700 {}", closed.display())),
            "{err}"
        );
    }

    #[test]
    fn a_root_in_tmp_is_moved_not_tmp_closed() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            println!("SKIP: the check wants directories of root's");
            return;
        }
        let root = std::env::temp_dir().join(format!("kapsel-ctproc-t-{}", std::process::id()));
        std::fs::create_dir_all(&root).unwrap();
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
        let err = check_root_private("t", &root).unwrap_err();
        let _ = std::fs::remove_dir_all(&root);
        assert!(
            err.contains("install -d -m 700") && !err.contains("chmod 700"),
            "{err}"
        );
    }

    #[test]
    fn without_either_the_init_is_sbin_init() {
        let ct = ContainerSpec::new("sys");
        let (init, env, cwd) = init_settings(&ct, &ImageDefaults::default());
        assert_eq!(init, [kapsel_config::DEFAULT_CONTAINER_INIT]);
        assert!(env.is_empty() && cwd.is_none());
    }
}
