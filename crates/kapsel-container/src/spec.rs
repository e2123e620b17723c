//! What a container is: the caller's description ([`ContainerSpec`]) and its
//! checks, done before anything on the host is created.

use crate::caps::{self, CapSet};
use crate::cgroup::{CgroupMode, Controller};
use crate::error::{Error, Result};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

/// The longest container name: it becomes the hostname (`HOST_NAME_MAX`)
/// and a cgroup directory.
pub const MAX_NAME_LEN: usize = 63;
/// `PATH` given to the init when the caller sets none; also where a bare
/// init name is looked up inside the root.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Everything needed to start one container.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerSpec {
    /// The name: hostname inside, cgroup directory `kapsel/NAME` outside.
    /// Letters, digits, `-`, `_` and `.`, at most [`MAX_NAME_LEN`].
    pub name: String,
    /// The root directory (a whole distribution userland, or a small one).
    pub root: PathBuf,
    /// The init: its path inside the root (or a name looked up in
    /// [`DEFAULT_PATH`]) and its arguments.
    pub init: Vec<String>,
    /// The init's environment, `KEY=VALUE`. `PATH` and `container=kapsel`
    /// are added when missing.
    pub env: Vec<String>,
    /// The init's working directory, an absolute path inside the root;
    /// `None` is `/`.
    pub cwd: Option<String>,
    /// Memory limit in bytes (cgroup `memory.max` / `memory.limit_in_bytes`).
    pub memory: Option<u64>,
    /// CPU limit in CPUs (0.5 is half a CPU), enforced as a CFS quota.
    pub cpus: Option<f64>,
    /// Limit on the number of tasks (processes and threads).
    pub pids: Option<u64>,
    /// The hostname; `None` is the name.
    pub hostname: Option<String>,
    /// A veth pair: host side named by the caller, `eth0` inside.
    pub network: Option<VethSpec>,
    /// Where the init's standard input and output go.
    pub console: ConsoleSpec,
    /// A user namespace with this id mapping; `None` runs the container
    /// as host root (confined by capabilities, seccomp and cgroups).
    pub user_map: Option<IdMap>,
    /// With [`ContainerSpec::user_map`]: show the root through an idmapped
    /// mount (mount_setattr(2) with `MOUNT_ATTR_IDMAP`; Linux 5.12, and a
    /// file system that supports it), so the files host ids 0..count own
    /// appear owned by the container's 0..count and nothing is chowned.
    /// Off, the root is used as it is: its files must already be owned by
    /// the mapped host ids ("shifted").
    pub idmap_root: bool,
    /// Capabilities kept (the bounding set); the rest are dropped.
    pub capabilities: CapSet,
    /// Set `no_new_privs`: setuid binaries gain nothing inside. Turn off
    /// for system containers whose users need `su` or `passwd`.
    pub no_new_privs: bool,
    /// Install the default seccomp profile ([`crate::seccomp`]).
    pub seccomp: bool,
    /// The signal that asks the init to power off; `None` picks it from
    /// the init (see [`ContainerSpec::stop_signal`]).
    pub stop_signal: Option<i32>,
    /// Kill the init when the thread that started it ends
    /// (`PR_SET_PDEATHSIG`, set just before its `execve`): for a manager
    /// that is the container's monitor, such as kapseld's, so that no
    /// container runs on without one. Off for a runtime that starts a
    /// container and exits (`kapsel run-container` waits anyway).
    pub die_with_parent: bool,
    /// Settings an OCI runtime (`kapsel-oci`) needs beyond Kapsel's own
    /// containers; the defaults change nothing.
    pub extra: Extra,
}

/// The init's identity: uid, gid and supplementary groups, as seen inside
/// the container (in its user namespace, if it has one).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct User {
    /// The user id.
    pub uid: u32,
    /// The group id.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
}

/// A device node of the container (OCI `linux.devices`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceNode {
    /// Below /dev, absolute (`/dev/fuse`); the host's node of that path is
    /// bound instead where mknod is refused (a user namespace).
    pub path: String,
    /// `c` (character), `b` (block) or `p` (FIFO).
    pub kind: char,
    /// Major number.
    pub major: u32,
    /// Minor number.
    pub minor: u32,
    /// Permission bits.
    pub mode: u32,
    /// Owner in the container.
    pub uid: u32,
    /// Group in the container.
    pub gid: u32,
}

/// A namespace kind a container may share with the host or join.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Namespace {
    /// Network (`CLONE_NEWNET`).
    Net,
    /// System V IPC and POSIX message queues (`CLONE_NEWIPC`).
    Ipc,
    /// Host and domain name (`CLONE_NEWUTS`).
    Uts,
}

impl Namespace {
    pub(crate) fn clone_flag(self) -> libc::c_int {
        match self {
            Namespace::Net => libc::CLONE_NEWNET,
            Namespace::Ipc => libc::CLONE_NEWIPC,
            Namespace::Uts => libc::CLONE_NEWUTS,
        }
    }
}

/// A mount made inside the container after its /proc, /sys and /dev.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    /// The source: a host path for a bind mount, a name for the rest.
    pub source: String,
    /// Where, an absolute path inside the container.
    pub destination: String,
    /// The file system type (`tmpfs`, `mqueue`, ...); `None` for a bind.
    pub fstype: Option<String>,
    /// mount(2) flags (`MS_BIND`, `MS_REC`, `MS_RDONLY`, `MS_NOSUID`, ...).
    pub flags: libc::c_ulong,
    /// Propagation flags applied afterwards (`MS_PRIVATE`, `MS_SLAVE`, ...,
    /// with `MS_REC`), 0 for none.
    pub propagation: libc::c_ulong,
    /// The file system's options (`mode=755,size=64k`).
    pub data: Option<String>,
}

/// Settings beyond Kapsel's own containers, for an OCI runtime. The
/// default is what [`ContainerSpec::new`] always did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Extra {
    /// Run the init as this user (after the id switch to the user
    /// namespace's root); `None` is root.
    pub user: Option<User>,
    /// Resource limits set in the init: (RLIMIT_*, soft, hard).
    pub rlimits: Vec<(u32, u64, u64)>,
    /// Namespaces not created: the container shares the host's.
    pub host_namespaces: Vec<Namespace>,
    /// Namespaces joined (setns) instead of created: the kind and a path
    /// such as `/proc/PID/ns/net` or a bind-mounted namespace file.
    pub join_namespaces: Vec<(Namespace, PathBuf)>,
    /// Mounts after /proc, /sys and /dev, in order.
    pub mounts: Vec<MountSpec>,
    /// More paths hidden (a file behind /dev/null, a directory behind an
    /// empty read-only tmpfs), besides Kapsel's own list.
    pub masked_paths: Vec<String>,
    /// More paths made read-only, besides Kapsel's own list.
    pub readonly_paths: Vec<String>,
    /// Mount the root read-only.
    pub readonly_root: bool,
    /// The cgroup's path below each hierarchy's root (an OCI
    /// `cgroupsPath`) instead of `kapsel/NAME`.
    pub cgroup_path: Option<PathBuf>,
    /// A FIFO the init opens for writing, and so blocks on, as its last
    /// step before `execve`: [`crate::Container::start`] returns once it
    /// waits there, and whoever opens the FIFO for reading lets it run
    /// (runc's `exec.fifo`: `create`, then `start`).
    pub start_fifo: Option<PathBuf>,
    /// The init's `oom_score_adj`.
    pub oom_score_adj: Option<i32>,
    /// Sysctls written in the container's own namespaces (dotted name,
    /// value); the caller makes sure each is namespaced (`net.*` with a
    /// network namespace of its own, IPC ones, `kernel.hostname`...).
    pub sysctls: Vec<(String, String)>,
    /// A seccomp program of the caller (raw BPF as seccomp_export_bpf(3)
    /// writes it, 8 bytes an instruction), installed instead of Kapsel's
    /// profile ([`ContainerSpec::seccomp`] is then ignored).
    pub seccomp_bpf: Option<Vec<u8>>,
    /// seccomp(2) filter flags for it (`SECCOMP_FILTER_FLAG_*`).
    pub seccomp_flags: u32,
    /// The program has `SECCOMP_RET_USER_NOTIF` rules: it is installed
    /// with a notification descriptor, which the started container hands
    /// out ([`crate::Container::take_seccomp_listener`]) for a seccomp
    /// agent.
    pub seccomp_listener: bool,
    /// Propagation of the container's mounts from the host (OCI
    /// `linux.rootfsPropagation`): the flags the mount namespace's `/` gets
    /// before anything is mounted (`MS_SLAVE | MS_REC`: mounts the host
    /// makes below a bind mount reach the container, runc's default), and
    /// those its root gets after `pivot_root` (`MS_SHARED`,
    /// `MS_UNBINDABLE`, with `MS_REC`), or 0. `None`: Kapsel's own,
    /// `MS_PRIVATE | MS_REC` (nothing of the host's reaches the container).
    pub root_propagation: Option<(libc::c_ulong, libc::c_ulong)>,
    /// Device nodes made in the container's /dev besides Kapsel's own
    /// (OCI `linux.devices`), and allowed by its device cgroup.
    pub devices: Vec<DeviceNode>,
    /// Descriptors 3 to 3 + N - 1 of the caller stay open in the init
    /// (OCI `--preserve-fds`, systemd socket activation); every other one
    /// above 2 closes on exec.
    pub preserve_fds: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InitKind {
    Systemd,
    Busybox,
    Other,
}

/// A veth pair for the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VethSpec {
    /// The host-side interface name (the daemon attaches it to a bridge).
    pub host_name: String,
    /// The MAC of `eth0` inside; `None` lets the kernel pick one.
    pub mac: Option<[u8; 6]>,
}

/// Where the init's standard input, output and error go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsoleSpec {
    /// The caller's own standard input, output and error, passed as they
    /// are (fastest; what a script or a benchmark wants).
    Inherit,
    /// A new pseudo-terminal: its slave is the init's stdio and
    /// `/dev/console`; the caller gets the master ([`crate::Container::console`]).
    Pty,
    /// Output appended to a file, input from `/dev/null`.
    File(PathBuf),
    /// `/dev/null` for all three.
    None,
}

/// A user-namespace mapping: ids 0..count inside are host ids
/// `host_uid..` and `host_gid..`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdMap {
    /// The host uid of root inside.
    pub host_uid: u32,
    /// The host gid of root inside.
    pub host_gid: u32,
    /// How many ids are mapped.
    pub count: u32,
}

impl IdMap {
    /// Whether `root` was shifted to this map by hand: the directory
    /// belongs to [`IdMap::host_uid`]. Such a root is used as it is; any
    /// other wants [`ContainerSpec::idmap_root`].
    pub fn shifted(&self, root: &Path) -> bool {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(root).is_ok_and(|m| m.uid() == self.host_uid)
    }
}

/// The smallest memory limit a container is given (Docker's minimum):
/// below it the init is killed as it starts.
pub const MIN_MEMORY: u64 = 6 << 20;

/// CPUs online on the host.
fn host_cpus() -> u64 {
    // SAFETY: sysconf reads a system value and has no memory effects.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    u64::try_from(n).unwrap_or(1).max(1)
}

impl ContainerSpec {
    /// A container called `name` on `root` running `init`, with the
    /// default confinement: capabilities [`caps::DEFAULT`], seccomp and
    /// `no_new_privs` on, console inherited, no limits, no network.
    pub fn new(name: impl Into<String>, root: impl Into<PathBuf>, init: Vec<String>) -> Self {
        ContainerSpec {
            name: name.into(),
            root: root.into(),
            init,
            env: Vec::new(),
            cwd: None,
            memory: None,
            cpus: None,
            pids: None,
            hostname: None,
            network: None,
            console: ConsoleSpec::Inherit,
            user_map: None,
            idmap_root: false,
            capabilities: caps::DEFAULT,
            no_new_privs: true,
            seccomp: true,
            stop_signal: None,
            die_with_parent: false,
            extra: Extra::default(),
        }
    }

    /// The signal [`crate::Container::stop`] sends first: the one set, or
    /// the init's power-off signal: SIGRTMIN+3 for systemd (as LXC and
    /// systemd's container interface use), SIGUSR2 for busybox init
    /// (busybox takes SIGTERM as *reboot* and SIGUSR1 as halt), SIGTERM
    /// for anything else.
    pub fn stop_signal(&self) -> i32 {
        if let Some(sig) = self.stop_signal {
            return sig;
        }
        match self.init_kind() {
            InitKind::Systemd => libc::SIGRTMIN() + 3,
            InitKind::Busybox => libc::SIGUSR2,
            InitKind::Other => libc::SIGTERM,
        }
    }

    /// Whether the init is systemd (by its name, or the name of the file
    /// it links to): such a container gets what systemd's container
    /// interface asks of a container manager (see [`crate::Container::start`]).
    pub fn init_is_systemd(&self) -> bool {
        self.init_kind() == InitKind::Systemd
    }

    fn init_kind(&self) -> InitKind {
        let Some(init) = self.init.first() else {
            return InitKind::Other;
        };
        // The file the init is in the end (busybox installs init as a link).
        let target = resolve_init(&self.root, init)
            .ok()
            .and_then(|inner| resolve_in_root(&self.root, &inner));
        let named = |n: &str| {
            Path::new(init).file_name() == Some(OsStr::new(n))
                || target.as_ref().and_then(|t| t.file_name()) == Some(OsStr::new(n))
        };
        if named("systemd") {
            InitKind::Systemd
        } else if named("init")
            && target.as_ref().and_then(|t| t.file_name()) == Some(OsStr::new("busybox"))
        {
            InitKind::Busybox
        } else {
            InitKind::Other
        }
    }

    /// Checks everything that can be checked without creating anything:
    /// names, the root, the init, the limits against the host's cgroups.
    /// Returns the init's path inside the root.
    pub(crate) fn validate(&self, cgroups: &CgroupMode) -> Result<PathBuf> {
        if self.extra.cgroup_path.is_some() {
            // The name is neither hostname nor cgroup: an OCI id (podman's
            // are 64 hex digits) is only checked for its characters.
            check_name(self.name.get(..MAX_NAME_LEN).unwrap_or(&self.name))?;
        } else {
            check_name(&self.name)?;
        }
        for m in &self.extra.mounts {
            if !m.destination.starts_with('/')
                || m.destination.contains('\0')
                || m.source.contains('\0')
                || Path::new(&m.destination)
                    .components()
                    .any(|c| c == Component::ParentDir)
            {
                return Err(Error::Invalid(format!(
                    "mount destination \"{}\" must be an absolute path inside the container \
                     without \"..\"; fix the mount",
                    m.destination
                )));
            }
        }
        for p in self
            .extra
            .masked_paths
            .iter()
            .chain(&self.extra.readonly_paths)
        {
            if !p.starts_with('/') || p.contains('\0') {
                return Err(Error::Invalid(format!(
                    "masked or read-only path \"{p}\" must be an absolute path inside the container"
                )));
            }
        }
        if self.user_map.is_some() && !self.extra.join_namespaces.is_empty() {
            return Err(Error::Invalid(
                "joining a namespace by path together with a new user namespace is not \
                 supported; drop the user namespace or the path"
                    .into(),
            ));
        }
        if let Some(h) = &self.hostname {
            if h.is_empty() || h.len() > MAX_NAME_LEN {
                return Err(Error::Invalid(format!(
                    "hostname \"{h}\" must have 1 to {MAX_NAME_LEN} characters"
                )));
            }
        }
        match std::fs::metadata(&self.root) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(Error::Invalid(format!(
                    "root {} is not a directory; give the directory holding the container's files",
                    self.root.display()
                )))
            }
            Err(e) => {
                return Err(Error::Invalid(format!(
                    "root {}: {e}; give an existing directory holding the container's files",
                    self.root.display()
                )))
            }
        }
        // The runtime mounts /proc, /sys and /dev there; the child checks
        // again (the root could change in between), but a root that is
        // wrong from the start is the caller's to fix.
        for dir in ["proc", "sys", "dev"] {
            let path = self.root.join(dir);
            if let Ok(m) = std::fs::symlink_metadata(&path) {
                if !m.is_dir() {
                    return Err(Error::Invalid(format!(
                        "{} is not a directory (a link or a file); the container's /{dir} is mounted there: \
                         replace it with an empty directory",
                        path.display()
                    )));
                }
            }
        }
        let Some(init) = self.init.first() else {
            return Err(Error::Invalid(
                "no init given; name the program to run (e.g. /sbin/init)".into(),
            ));
        };
        if self.init.iter().chain(&self.env).any(|a| a.contains('\0')) {
            return Err(Error::Invalid(
                "an init argument or environment entry contains a NUL byte; remove it".into(),
            ));
        }
        if let Some(bad) = self.env.iter().find(|e| !e.contains('=')) {
            return Err(Error::Invalid(format!(
                "environment entry \"{bad}\" has no '='; write KEY=VALUE"
            )));
        }
        if let Some(cwd) = &self.cwd {
            if !cwd.starts_with('/') || cwd.contains('\0') {
                return Err(Error::Invalid(format!(
                    "working directory \"{cwd}\" is not an absolute path; write it from the container's /"
                )));
            }
        }
        let init_path = resolve_init(&self.root, init)?;
        if self.memory == Some(0) || self.pids == Some(0) {
            return Err(Error::Invalid(
                "a memory or pids limit of 0 leaves nothing to run; give a positive limit".into(),
            ));
        }
        if let Some(c) = self.cpus {
            if !(c.is_finite() && c >= 0.01) {
                return Err(Error::Invalid(format!(
                    "cpus {c} is not a CPU count; give a number like 0.5 or 2"
                )));
            }
            // A quota above the host's CPUs limits nothing (Docker refuses
            // it the same way).
            let host = host_cpus();
            if c > host as f64 {
                return Err(Error::Invalid(format!(
                    "cpus {c} is more than the {host} CPUs this host has, so it would limit \
                     nothing; give a number from 0.01 to {host}"
                )));
            }
        }
        if let Some(m) = self.memory.filter(|&m| m < MIN_MEMORY) {
            return Err(Error::Invalid(format!(
                "a memory limit of {m} bytes is too little for a container to start (its init \
                 would be killed at once); give at least {}M",
                MIN_MEMORY >> 20
            )));
        }
        let wanted = [
            (self.memory.is_some(), Controller::Memory),
            (self.pids.is_some(), Controller::Pids),
            (self.cpus.is_some(), Controller::Cpu),
        ];
        for (needed, c) in wanted {
            if needed && !cgroups.has(c) {
                return Err(Error::Invalid(format!(
                    "the host's cgroups have no {} controller, so the {} limit cannot be enforced; \
                     enable it (cgroup_enable={} on the kernel command line, or in the parent's \
                     cgroup.subtree_control) or drop the limit",
                    c.name(),
                    c.name(),
                    c.name()
                )));
            }
        }
        if let Some(net) = &self.network {
            check_ifname(&net.host_name)?;
            if Path::new("/sys/class/net").join(&net.host_name).exists() {
                return Err(Error::Invalid(format!(
                    "network interface {} already exists on the host; pick another --net-veth name",
                    net.host_name
                )));
            }
        }
        if let ConsoleSpec::File(p) = &self.console {
            if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                if !dir.is_dir() {
                    return Err(Error::Invalid(format!(
                        "console file {}: directory {} does not exist; create it or pick another path",
                        p.display(),
                        dir.display()
                    )));
                }
            }
        }
        if let Some(m) = &self.user_map {
            if m.count == 0 {
                return Err(Error::Invalid(
                    "user namespace map of 0 ids; map at least 1 (root)".into(),
                ));
            }
        } else if self.idmap_root {
            return Err(Error::Invalid(
                "an idmapped root needs a user namespace; give the id map too".into(),
            ));
        }
        Ok(init_path)
    }
}

/// Checks a container name.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "container name \"{name}\" is not valid; use 1 to {MAX_NAME_LEN} letters, digits, '-', '_' or '.' (not first)"
        )))
    }
}

fn check_ifname(name: &str) -> Result<()> {
    kapsel_host::validate_ifname(name)
        .map_err(|e| Error::Invalid(format!("veth host name: {e}; use another name")))
}

/// Finds the init inside `root` the way the kernel will once `root` is
/// `/`: absolute symlinks are taken relative to `root`, never the host.
/// Returns the path inside the container (what `execve` gets) after
/// checking that the file it names is a regular, executable file.
pub fn resolve_init(root: &Path, init: &str) -> Result<PathBuf> {
    let candidates: Vec<PathBuf> = if init.starts_with('/') {
        vec![PathBuf::from(init)]
    } else if init.contains('/') {
        return Err(Error::Invalid(format!(
            "init \"{init}\" is a relative path; give an absolute path inside the root (e.g. /sbin/init)"
        )));
    } else {
        DEFAULT_PATH
            .split(':')
            .map(|d| Path::new(d).join(init))
            .collect()
    };
    for inner in &candidates {
        if let Some(host) = resolve_in_root(root, inner) {
            if let Ok(m) = std::fs::metadata(&host) {
                if m.is_file() {
                    if m.permissions().mode() & 0o111 == 0 {
                        return Err(Error::Invalid(format!(
                            "init {init} ({}) is not executable; chmod +x it or pick another init",
                            host.display()
                        )));
                    }
                    return Ok(inner.clone());
                }
            }
        }
    }
    Err(Error::Invalid(format!(
        "init {init} not found in root {}; give a program that exists inside the root (e.g. /sbin/init or /bin/sh)",
        root.display()
    )))
}

/// The host path of `inner` (absolute, inside the container) with every
/// symlink followed as it would be inside the container. `None` when a
/// component is missing or the links loop.
pub(crate) fn resolve_in_root(root: &Path, inner: &Path) -> Option<PathBuf> {
    let mut done = PathBuf::from("/");
    let mut todo: Vec<PathBuf> = inner
        .components()
        .rev()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(PathBuf::from(n)),
            Component::ParentDir => Some(PathBuf::from("..")),
            _ => None,
        })
        .collect();
    let mut hops = 0;
    while let Some(next) = todo.pop() {
        if next.as_os_str() == ".." {
            done.pop();
            continue;
        }
        let candidate = done.join(&next);
        let host = root.join(candidate.strip_prefix("/").ok()?);
        match std::fs::read_link(&host) {
            Ok(target) => {
                hops += 1;
                if hops > 40 {
                    return None;
                }
                if target.as_os_str().as_bytes().starts_with(b"/") {
                    done = PathBuf::from("/");
                }
                todo.extend(target.components().rev().filter_map(|c| match c {
                    Component::Normal(n) => Some(PathBuf::from(n)),
                    Component::ParentDir => Some(PathBuf::from("..")),
                    _ => None,
                }));
            }
            Err(_) => done = candidate,
        }
    }
    Some(root.join(done.strip_prefix("/").ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn tree(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("kapsel-spec-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("bin")).unwrap();
        std::fs::create_dir_all(dir.join("sbin")).unwrap();
        std::fs::write(dir.join("bin/busybox"), b"").unwrap();
        std::fs::set_permissions(
            dir.join("bin/busybox"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        std::fs::write(dir.join("bin/data"), b"").unwrap();
        symlink("/bin/busybox", dir.join("sbin/init")).unwrap();
        symlink("../bin/busybox", dir.join("bin/sh")).unwrap();
        // A link that would escape to the host's /etc if followed outside.
        symlink("/etc/passwd", dir.join("bin/escape")).unwrap();
        dir
    }

    #[test]
    fn init_is_resolved_inside_the_root() {
        let root = tree("resolve");
        assert_eq!(
            resolve_init(&root, "/sbin/init").unwrap(),
            PathBuf::from("/sbin/init")
        );
        assert_eq!(resolve_init(&root, "sh").unwrap(), PathBuf::from("/bin/sh"));
        assert_eq!(
            resolve_in_root(&root, Path::new("/sbin/init")).unwrap(),
            root.join("bin/busybox")
        );
        let e = resolve_init(&root, "/bin/data").unwrap_err().to_string();
        assert!(e.contains("not executable"), "{e}");
        let e = resolve_init(&root, "/bin/escape").unwrap_err().to_string();
        assert!(e.contains("not found"), "{e}");
        assert!(resolve_init(&root, "bin/sh").is_err());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn stop_signal_follows_the_init() {
        let root = tree("stop");
        let spec = ContainerSpec::new("c", &root, vec!["/sbin/init".into()]);
        assert_eq!(spec.stop_signal(), libc::SIGUSR2);
        assert!(!spec.init_is_systemd());
        let spec = ContainerSpec::new("c", &root, vec!["/lib/systemd/systemd".into()]);
        assert_eq!(spec.stop_signal(), libc::SIGRTMIN() + 3);
        assert!(spec.init_is_systemd());
        let spec = ContainerSpec::new("c", &root, vec!["/bin/sh".into()]);
        assert_eq!(spec.stop_signal(), libc::SIGTERM);
        // Debian's /sbin/init is a link to systemd.
        std::fs::create_dir_all(root.join("lib/systemd")).unwrap();
        std::fs::copy(root.join("bin/busybox"), root.join("lib/systemd/systemd")).unwrap();
        symlink("/lib/systemd/systemd", root.join("sbin/sysinit")).unwrap();
        let spec = ContainerSpec::new("c", &root, vec!["/sbin/sysinit".into()]);
        assert_eq!(spec.stop_signal(), libc::SIGRTMIN() + 3);
        assert!(spec.init_is_systemd(), "through the link");
        let mut spec = ContainerSpec::new("c", &root, vec!["/sbin/init".into()]);
        spec.stop_signal = Some(libc::SIGINT);
        assert_eq!(spec.stop_signal(), libc::SIGINT);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn limits_the_host_cannot_enforce_are_refused() {
        let root = tree("unenforceable");
        let all = CgroupMode::Unified {
            root: "/sys/fs/cgroup".into(),
            base: "/sys/fs/cgroup".into(),
            controllers: vec!["memory".into(), "pids".into(), "cpu".into()],
        };
        let mut spec = ContainerSpec::new("c", &root, vec!["/sbin/init".into()]);
        spec.cpus = Some(host_cpus() as f64 + 1.0);
        let e = spec.validate(&all).unwrap_err().to_string();
        assert!(e.contains("CPUs this host has"), "{e}");
        spec.cpus = Some(host_cpus() as f64);
        assert!(spec.validate(&all).is_ok());
        spec.memory = Some(MIN_MEMORY - 1);
        let e = spec.validate(&all).unwrap_err().to_string();
        assert!(e.contains("at least 6M"), "{e}");
        spec.memory = Some(MIN_MEMORY);
        assert!(spec.validate(&all).is_ok());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn limits_need_their_controllers() {
        let root = tree("limits");
        let none = CgroupMode::Legacy {
            mounts: Vec::new(),
            hybrid_v2: None,
        };
        let all = CgroupMode::Unified {
            root: "/sys/fs/cgroup".into(),
            base: "/sys/fs/cgroup".into(),
            controllers: vec!["memory".into(), "pids".into(), "cpu".into()],
        };
        let mut spec = ContainerSpec::new("c", &root, vec!["/sbin/init".into()]);
        assert!(
            spec.validate(&none).is_ok(),
            "no limit, no controller needed"
        );
        spec.memory = Some(64 << 20);
        let e = spec.validate(&none).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("no memory controller"), "{e}");
        assert!(e.to_string().contains("drop the limit"), "{e}");
        assert!(spec.validate(&all).is_ok());
        spec.memory = None;
        spec.pids = Some(10);
        assert!(spec
            .validate(&none)
            .unwrap_err()
            .to_string()
            .contains("pids"));
        spec.pids = None;
        spec.cpus = Some(0.0);
        assert!(spec
            .validate(&all)
            .unwrap_err()
            .to_string()
            .contains("cpus"));
        spec.cpus = Some(1.5);
        assert!(spec
            .validate(&none)
            .unwrap_err()
            .to_string()
            .contains("cpu controller"));
        assert!(spec.validate(&all).is_ok());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn an_idmapped_root_needs_a_user_namespace() {
        let root = tree("idmap");
        let none = CgroupMode::Legacy {
            mounts: Vec::new(),
            hybrid_v2: None,
        };
        let mut spec = ContainerSpec::new("c", &root, vec!["/sbin/init".into()]);
        spec.idmap_root = true;
        let e = spec.validate(&none).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("needs a user namespace"), "{e}");
        spec.user_map = Some(IdMap {
            host_uid: 100000,
            host_gid: 100000,
            count: 0,
        });
        assert!(spec
            .validate(&none)
            .unwrap_err()
            .to_string()
            .contains("0 ids"));
        spec.user_map = Some(IdMap {
            host_uid: 100000,
            host_gid: 100000,
            count: 65536,
        });
        assert!(spec.validate(&none).is_ok());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn the_working_directory_is_absolute() {
        let root = tree("cwd");
        let none = CgroupMode::Legacy {
            mounts: Vec::new(),
            hybrid_v2: None,
        };
        let mut spec = ContainerSpec::new("c", &root, vec!["/sbin/init".into()]);
        spec.cwd = Some("/srv/app".into());
        assert!(spec.validate(&none).is_ok());
        spec.cwd = Some("srv/app".into());
        let e = spec.validate(&none).unwrap_err().to_string();
        assert!(e.contains("working directory"), "{e}");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn names() {
        assert!(check_name("web-1.example_a").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name(".hidden").is_err());
        assert!(check_name("a/b").is_err());
        assert!(check_name(&"x".repeat(64)).is_err());
        assert!(check_ifname("veth-web0").is_ok());
        assert!(check_ifname("a-very-long-ifname").is_err());
        assert!(check_ifname("a:b").is_err());
    }
}
