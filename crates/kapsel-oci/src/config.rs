//! config.json (the OCI runtime spec, read with the `oci-spec` crate) to
//! Kapsel's [`ContainerSpec`]. Every field is honoured, refused with an
//! error (it would change what the container is allowed to do, or the
//! client relies on it), or ignored with a warning; the lists are in
//! docs/kapsel-oci.1.md.

use kapsel_container::caps::CapSet;
use kapsel_container::{ConsoleSpec, ContainerSpec, IdMap, MountSpec, Namespace, User};
use oci_spec::runtime::{LinuxNamespaceType, Spec};
use std::path::{Path, PathBuf};

/// A config.json that cannot be run: the message names the field and the fix.
#[derive(Debug)]
pub struct Refused(pub String);

fn refuse<T>(msg: impl Into<String>) -> Result<T, Refused> {
    Err(Refused(msg.into()))
}

/// Capability names in the kernel's order (CAP_CHOWN is 0).
const CAP_NAMES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The capability set named by a list of OCI capability names.
pub fn capset<T: serde::Serialize>(caps: impl IntoIterator<Item = T>) -> CapSet {
    let mut bits = 0u64;
    for c in caps {
        let name = serde_json::to_value(&c).ok();
        if let Some(i) = name
            .as_ref()
            .and_then(|v| v.as_str())
            .and_then(|n| CAP_NAMES.iter().position(|k| *k == n))
        {
            bits |= 1 << i;
        }
    }
    CapSet(bits)
}

/// The capability names in a set (for state and tests).
pub fn cap_names(set: CapSet) -> Vec<&'static str> {
    CAP_NAMES
        .iter()
        .enumerate()
        .filter(|(i, _)| set.has(*i as u32))
        .map(|(_, n)| *n)
        .collect()
}

fn rlimit_number(name: &str) -> Option<u32> {
    #[allow(clippy::unnecessary_cast)] // u32 on glibc, i32 on musl
    let n = match name {
        "RLIMIT_CPU" => libc::RLIMIT_CPU,
        "RLIMIT_FSIZE" => libc::RLIMIT_FSIZE,
        "RLIMIT_DATA" => libc::RLIMIT_DATA,
        "RLIMIT_STACK" => libc::RLIMIT_STACK,
        "RLIMIT_CORE" => libc::RLIMIT_CORE,
        "RLIMIT_RSS" => libc::RLIMIT_RSS,
        "RLIMIT_NPROC" => libc::RLIMIT_NPROC,
        "RLIMIT_NOFILE" => libc::RLIMIT_NOFILE,
        "RLIMIT_MEMLOCK" => libc::RLIMIT_MEMLOCK,
        "RLIMIT_AS" => libc::RLIMIT_AS,
        "RLIMIT_LOCKS" => libc::RLIMIT_LOCKS,
        "RLIMIT_SIGPENDING" => libc::RLIMIT_SIGPENDING,
        "RLIMIT_MSGQUEUE" => libc::RLIMIT_MSGQUEUE,
        "RLIMIT_NICE" => libc::RLIMIT_NICE,
        "RLIMIT_RTPRIO" => libc::RLIMIT_RTPRIO,
        "RLIMIT_RTTIME" => libc::RLIMIT_RTTIME,
        _ => return None,
    } as u32;
    Some(n)
}

/// What config.json asks for, as Kapsel runs it.
pub struct Translated {
    pub spec: ContainerSpec,
    /// Warnings for fields that are ignored.
    pub warnings: Vec<String>,
    /// The root file system (absolute).
    pub rootfs: PathBuf,
    pub annotations: serde_json::Map<String, serde_json::Value>,
    pub terminal: bool,
    pub hooks: crate::hooks::Hooks,
    pub idmap_mounts: Vec<IdmapMount>,
    /// linux.seccomp's listenerPath and listenerMetadata, when it notifies.
    pub seccomp_agent: Option<(String, String)>,
}

/// Loads `bundle/config.json`.
pub fn load(bundle: &Path) -> Result<Spec, Refused> {
    let path = bundle.join("config.json");
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) => {
            return refuse(format!(
                "{}: {e}; give a bundle directory with a config.json",
                path.display()
            ))
        }
    };
    // serde_json directly (not Spec::load): its error names the field,
    // line and column.
    serde_json::from_slice::<Spec>(&bytes).or_else(|e| {
        refuse(format!(
            "{}: {e}; fix it to the OCI runtime spec",
            path.display()
        ))
    })
}

/// Translates `spec` for container `id` of `bundle`.
pub fn translate(
    id: &str,
    bundle: &Path,
    spec: &Spec,
    systemd_cgroup: bool,
) -> Result<Translated, Refused> {
    let mut warnings = Vec::new();
    let mut warn = |s: String| warnings.push(s);
    if !spec.version().starts_with("1.") {
        return refuse(format!(
            "config.json ociVersion {} is not supported; kapsel-oci runs runtime-spec 1.x",
            spec.version()
        ));
    }
    let Some(process) = spec.process() else {
        return refuse("config.json has no process; give process.args");
    };
    let args = process.args().clone().unwrap_or_default();
    if args.is_empty() {
        return refuse("config.json process.args is empty; give the program to run");
    }
    let Some(root) = spec.root() else {
        return refuse("config.json has no root; give root.path");
    };
    let rootfs = if root.path().is_absolute() {
        root.path().clone()
    } else {
        bundle.join(root.path())
    };
    let mut c = ContainerSpec::new(id, &rootfs, args);
    c.env = process.env().clone().unwrap_or_default();
    let cwd = process.cwd().to_string_lossy().into_owned();
    c.cwd = (!cwd.is_empty()).then_some(cwd);
    c.console = if process.terminal().unwrap_or(false) {
        ConsoleSpec::Pty
    } else {
        ConsoleSpec::Inherit
    };
    let user = process.user();
    let groups = user.additional_gids().clone().unwrap_or_default();
    if user.uid() != 0 || user.gid() != 0 || !groups.is_empty() {
        c.extra.user = Some(User {
            uid: user.uid(),
            gid: user.gid(),
            groups,
        });
    }
    if let Some(mask) = user.umask() {
        if mask != 0o022 {
            warn(format!(
                "process.user.umask {mask:o} ignored: the process starts with umask 022"
            ));
        }
    }
    match process.capabilities() {
        Some(caps) => {
            let bounding = capset(caps.bounding().iter().flatten());
            let others = [
                ("effective", caps.effective()),
                ("permitted", caps.permitted()),
            ];
            for (name, set) in others {
                if let Some(set) = set {
                    if capset(set.iter()) != bounding {
                        warn(format!(
                            "process.capabilities.{name} differs from bounding; kapsel-oci gives \
                             the bounding set as effective and permitted"
                        ));
                    }
                }
            }
            if caps.ambient().as_ref().is_some_and(|a| !a.is_empty()) {
                warn(
                    "process.capabilities.ambient ignored: no ambient capabilities are raised"
                        .into(),
                );
            }
            c.capabilities = bounding;
        }
        None => c.capabilities = CapSet(0),
    }
    c.no_new_privs = process.no_new_privileges().unwrap_or(false);
    for r in process.rlimits().iter().flatten() {
        let name = serde_json::to_value(r.typ())
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let Some(n) = rlimit_number(&name) else {
            return refuse(format!(
                "process.rlimits: {name} is not a resource limit Linux has"
            ));
        };
        c.extra.rlimits.push((n, r.soft(), r.hard()));
    }
    c.extra.oom_score_adj = process.oom_score_adj();
    if process
        .apparmor_profile()
        .as_ref()
        .is_some_and(|p| !p.is_empty())
    {
        warn("process.apparmorProfile ignored: kapsel-oci applies no AppArmor profile".into());
    }
    if process
        .selinux_label()
        .as_ref()
        .is_some_and(|p| !p.is_empty())
    {
        warn("process.selinuxLabel ignored: kapsel-oci applies no SELinux label".into());
    }
    if process.io_priority().is_some() || process.scheduler().is_some() {
        warn("process.ioPriority and process.scheduler ignored".into());
    }
    c.extra.readonly_root = root.readonly().unwrap_or(false);
    c.hostname = match spec.hostname().as_deref().filter(|h| !h.is_empty()) {
        Some(h) => Some(h.to_string()),
        // As runc: a new UTS namespace keeps the host's name.
        None => Some(host_name()),
    };
    // The domain name goes in as the sysctl kernel.domainname (below,
    // where a UTS namespace of the container's own is checked).
    let domainname = spec.domainname().clone().filter(|d| !d.is_empty());
    let hooks = crate::hooks::Hooks::from_spec(
        spec.hooks()
            .as_ref()
            .and_then(|h| serde_json::to_value(h).ok()),
    )
    .map_err(Refused)?;
    let mut idmap_mounts = Vec::new();
    for m in spec.mounts().iter().flatten() {
        mount(m, &mut c.extra.mounts, &mut idmap_mounts, &mut warn)?;
    }
    let Some(linux) = spec.linux() else {
        return refuse("config.json has no linux section; kapsel-oci runs Linux containers");
    };
    let mut seen_pid = false;
    let mut seen_mnt = false;
    let mut user_ns = false;
    for ns in linux.namespaces().iter().flatten() {
        let path = ns.path().clone().filter(|p| !p.as_os_str().is_empty());
        let kind = match ns.typ() {
            LinuxNamespaceType::Pid => {
                seen_pid = true;
                None
            }
            LinuxNamespaceType::Mount => {
                seen_mnt = true;
                None
            }
            LinuxNamespaceType::User => {
                user_ns = true;
                None
            }
            LinuxNamespaceType::Cgroup => None,
            LinuxNamespaceType::Time => {
                return refuse("linux.namespaces: a time namespace is not supported; remove it")
            }
            LinuxNamespaceType::Network => Some(Namespace::Net),
            LinuxNamespaceType::Ipc => Some(Namespace::Ipc),
            LinuxNamespaceType::Uts => Some(Namespace::Uts),
        };
        match (kind, path) {
            (Some(k), Some(p)) => c.extra.join_namespaces.push((k, p)),
            (None, Some(p)) => {
                return refuse(format!(
                    "linux.namespaces: joining the {} namespace {} is not supported (only \
                     network, ipc and uts can be joined); remove its path",
                    ns.typ(),
                    p.display()
                ))
            }
            _ => {}
        }
    }
    if !seen_pid || !seen_mnt {
        return refuse(
            "linux.namespaces: kapsel-oci always gives a container its own pid and mount \
             namespaces; list both (podman: do not use --pid=host)",
        );
    }
    let listed = |k: LinuxNamespaceType| linux.namespaces().iter().flatten().any(|n| n.typ() == k);
    for (k, ns) in [
        (LinuxNamespaceType::Network, Namespace::Net),
        (LinuxNamespaceType::Ipc, Namespace::Ipc),
        (LinuxNamespaceType::Uts, Namespace::Uts),
    ] {
        if !listed(k) {
            c.extra.host_namespaces.push(ns);
        }
    }
    if !listed(LinuxNamespaceType::Uts) {
        c.hostname = None;
    }
    if user_ns {
        let uids = linux.uid_mappings().clone().unwrap_or_default();
        let gids = linux.gid_mappings().clone().unwrap_or_default();
        match (uids.as_slice(), gids.as_slice()) {
            ([u], [g])
                if u.container_id() == 0 && g.container_id() == 0 && u.size() == g.size() =>
            {
                let map = IdMap {
                    host_uid: u.host_id(),
                    host_gid: g.host_id(),
                    count: u.size(),
                };
                c.idmap_root = !map.shifted(&rootfs);
                c.user_map = Some(map);
            }
            _ => {
                return refuse(
                    "linux.uidMappings/gidMappings: kapsel-oci supports one range each, from \
                     container id 0, of the same size; merge the ranges",
                )
            }
        }
    } else if linux.uid_mappings().as_ref().is_some_and(|m| !m.is_empty()) {
        return refuse("linux.uidMappings without a user namespace; add {\"type\":\"user\"}");
    }
    if !user_ns && !idmap_mounts.is_empty() {
        return refuse(
            "mounts: an idmap mount maps to the container's user namespace, and it has none; \
             add {\"type\":\"user\"} with uidMappings and gidMappings, or drop idmap",
        );
    }
    let cgroup = match linux.cgroups_path().as_ref() {
        Some(p) if systemd_cgroup && p.to_string_lossy().contains(':') => {
            let s = p.to_string_lossy();
            let parts: Vec<&str> = s.splitn(3, ':').collect();
            let slice = parts
                .first()
                .copied()
                .filter(|s| !s.is_empty())
                .unwrap_or("system.slice");
            let prefix = parts.get(1).copied().unwrap_or("kapsel");
            let name = parts.get(2).copied().unwrap_or(id);
            PathBuf::from(slice).join(format!("{prefix}-{name}.scope"))
        }
        Some(p) if !p.as_os_str().is_empty() => p.clone(),
        _ => PathBuf::from("kapsel-oci").join(id),
    };
    c.extra.cgroup_path = Some(cgroup);
    if let Some(res) = linux.resources() {
        if let Some(m) = res.memory() {
            if let Some(l) = m.limit().filter(|&l| l > 0) {
                c.memory = Some(l as u64);
            }
            if m.reservation().is_some() || m.swappiness().is_some() {
                warn("linux.resources.memory reservation and swappiness ignored".into());
            }
        }
        if let Some(p) = res.pids() {
            if p.limit() > 0 {
                c.pids = Some(p.limit() as u64);
            }
        }
        if let Some(cpu) = res.cpu() {
            if let (Some(q), Some(per)) = (
                cpu.quota().filter(|&q| q > 0),
                cpu.period().filter(|&p| p > 0),
            ) {
                c.cpus = Some(q as f64 / per as f64);
            }
            if cpu.shares().is_some() || cpu.cpus().is_some() || cpu.mems().is_some() {
                warn("linux.resources.cpu shares, cpus and mems ignored (quota and period are honoured)".into());
            }
        }
        if res.block_io().is_some()
            || res
                .hugepage_limits()
                .as_ref()
                .is_some_and(|h| !h.is_empty())
            || res.network().is_some()
            || res.unified().as_ref().is_some_and(|u| !u.is_empty())
        {
            warn("linux.resources blockIO, hugepageLimits, network and unified ignored".into());
        }
    }
    // As runc: the mount namespace's / is made rslave (mounts the host
    // makes later reach the container's bind mounts), or what
    // rootfsPropagation says; shared and unbindable are set on the root
    // after pivot_root (pivot_root refuses a shared one).
    let slave = libc::MS_REC | libc::MS_SLAVE;
    c.extra.root_propagation = Some(match linux.rootfs_propagation().as_deref() {
        None | Some("") | Some("rslave") => (slave, 0),
        Some("slave") => (libc::MS_SLAVE, 0),
        Some("private") => (libc::MS_PRIVATE, 0),
        Some("rprivate") => (libc::MS_REC | libc::MS_PRIVATE, 0),
        Some("shared") => (slave, libc::MS_SHARED),
        Some("rshared") => (slave, libc::MS_REC | libc::MS_SHARED),
        Some("unbindable") => (slave, libc::MS_UNBINDABLE),
        Some("runbindable") => (slave, libc::MS_REC | libc::MS_UNBINDABLE),
        Some(other) => {
            return refuse(format!(
                "linux.rootfsPropagation \"{other}\" is not one of private, rprivate, slave, \
                 rslave, shared, rshared, unbindable, runbindable"
            ))
        }
    });
    for d in linux.devices().iter().flatten() {
        let path = d.path().to_string_lossy().into_owned();
        let kind = serde_json::to_value(d.typ())
            .ok()
            .and_then(|v| v.as_str().and_then(|s| s.chars().next()))
            .unwrap_or('?');
        if !path.starts_with("/dev/") || path.split('/').any(|c| c == "..") {
            return refuse(format!(
                "linux.devices: {path}: kapsel-oci makes device nodes below /dev only; move it there"
            ));
        }
        c.extra.devices.push(kapsel_container::DeviceNode {
            path,
            kind,
            major: d.major() as u32,
            minor: d.minor() as u32,
            mode: d.file_mode().unwrap_or(0o666),
            uid: d.uid().unwrap_or(0),
            gid: d.gid().unwrap_or(0),
        });
    }
    let domain = domainname.map(|d| ("kernel.domainname".to_string(), d));
    for (name, value) in linux
        .sysctl()
        .iter()
        .flatten()
        .chain(domain.iter().map(|(k, v)| (k, v)))
    {
        // As runc: only sysctls of a namespace the container has of its own.
        let own = |ns: Namespace| !c.extra.host_namespaces.contains(&ns);
        let ipc = [
            "kernel.msgmax",
            "kernel.msgmnb",
            "kernel.msgmni",
            "kernel.sem",
            "kernel.shmall",
            "kernel.shmmax",
            "kernel.shmmni",
            "kernel.shm_rmid_forced",
        ];
        let needs = if ipc.contains(&name.as_str()) || name.starts_with("fs.mqueue.") {
            Some((Namespace::Ipc, "ipc"))
        } else if name.starts_with("net.") {
            Some((Namespace::Net, "network"))
        } else if name == "kernel.hostname" || name == "kernel.domainname" {
            Some((Namespace::Uts, "uts"))
        } else {
            None
        };
        match needs {
            Some((ns, _)) if own(ns) => {}
            Some((_, kind)) => {
                return refuse(format!(
                    "linux.sysctl: {name} needs a {kind} namespace of the container's own (it \
                     would change the host's); add the namespace or remove the sysctl"
                ))
            }
            None => {
                return refuse(format!(
                    "linux.sysctl: {name} is not in a separate kernel namespace (it would \
                     change the whole host); remove it"
                ))
            }
        }
        c.extra.sysctls.push((name.clone(), value.clone()));
    }
    // Only config.json's profile, as runc: none when it has none.
    c.seccomp = false;
    let mut seccomp_agent = None;
    if let Some(sc) = linux.seccomp() {
        let v = serde_json::to_value(sc).map_err(|e| Refused(format!("linux.seccomp: {e}")))?;
        let compiled = crate::seccomp::compile(&v)?;
        if !compiled.unknown.is_empty() {
            warn(format!(
                "linux.seccomp: system calls unknown on this host's architectures skipped: {}",
                compiled.unknown.join(", ")
            ));
        }
        c.extra.seccomp_bpf = Some(compiled.bpf);
        c.extra.seccomp_flags = compiled.flags;
        c.extra.seccomp_listener = compiled.listener.is_some();
        seccomp_agent = compiled.listener;
    }
    c.extra.masked_paths = linux.masked_paths().clone().unwrap_or_default();
    c.extra.readonly_paths = linux.readonly_paths().clone().unwrap_or_default();
    if linux.mount_label().as_ref().is_some_and(|l| !l.is_empty()) {
        warn("linux.mountLabel ignored".into());
    }
    if linux.intel_rdt().is_some() || linux.personality().is_some() {
        warn("linux.intelRdt and linux.personality ignored".into());
    }
    let annotations = spec
        .annotations()
        .as_ref()
        .and_then(|a| serde_json::to_value(a).ok())
        .and_then(|v| v.as_object().cloned())
        .unwrap_or_default();
    Ok(Translated {
        hooks,
        idmap_mounts,
        seccomp_agent,
        terminal: c.console == ConsoleSpec::Pty,
        spec: c,
        warnings,
        rootfs,
        annotations,
    })
}

fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } != 0 {
        return "localhost".into();
    }
    let n = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// Destinations Kapsel mounts itself, with the type it uses there.
const PROVIDED: &[(&str, &[&str])] = &[
    ("/proc", &["proc"]),
    ("/sys", &["sysfs"]),
    ("/dev", &["tmpfs"]),
    ("/dev/pts", &["devpts"]),
    ("/dev/shm", &["tmpfs"]),
    ("/sys/fs/cgroup", &["cgroup", "cgroup2"]),
];

/// A bind mount of config.json with the `idmap` or `ridmap` option: its
/// source is mounted again, idmapped to the container's user namespace,
/// over the plain bind mount (see idmap.rs).
#[derive(Debug, Clone)]
pub struct IdmapMount {
    pub source: String,
    pub destination: String,
    /// `ridmap`, or `idmap` with `rbind`: the mounts below too.
    pub recursive: bool,
    pub readonly: bool,
}

fn mount(
    m: &oci_spec::runtime::Mount,
    out: &mut Vec<MountSpec>,
    idmaps: &mut Vec<IdmapMount>,
    warn: &mut impl FnMut(String),
) -> Result<(), Refused> {
    let dest = m.destination().to_string_lossy().into_owned();
    let dest_norm = dest.trim_end_matches('/');
    let typ = m.typ().clone().unwrap_or_default();
    let options = m.options().clone().unwrap_or_default();
    if PROVIDED
        .iter()
        .any(|(d, types)| *d == dest_norm && types.contains(&typ.as_str()))
    {
        // Kapsel's own, with its own options (see child.rs).
        return Ok(());
    }
    let mut flags: libc::c_ulong = 0;
    let mut propagation: libc::c_ulong = 0;
    let mut data = Vec::new();
    let mut bind = typ == "bind";
    let mut idmap = None;
    for o in &options {
        match o.as_str() {
            "bind" => bind = true,
            "rbind" => {
                bind = true;
                flags |= libc::MS_REC;
            }
            "ro" => flags |= libc::MS_RDONLY,
            "rw" | "suid" | "dev" | "exec" | "async" | "atime" | "diratime" | "relatime"
            | "nomand" | "norelatime" | "nostrictatime" => {}
            "nosuid" => flags |= libc::MS_NOSUID,
            "nodev" => flags |= libc::MS_NODEV,
            "noexec" => flags |= libc::MS_NOEXEC,
            "sync" => flags |= libc::MS_SYNCHRONOUS,
            "dirsync" => flags |= libc::MS_DIRSYNC,
            "noatime" => flags |= libc::MS_NOATIME,
            "nodiratime" => flags |= libc::MS_NODIRATIME,
            "strictatime" => flags |= libc::MS_STRICTATIME,
            "mand" => flags |= libc::MS_MANDLOCK,
            "private" => propagation = libc::MS_PRIVATE,
            "rprivate" => propagation = libc::MS_PRIVATE | libc::MS_REC,
            "slave" => propagation = libc::MS_SLAVE,
            "rslave" => propagation = libc::MS_SLAVE | libc::MS_REC,
            "shared" => propagation = libc::MS_SHARED,
            "rshared" => propagation = libc::MS_SHARED | libc::MS_REC,
            "unbindable" => propagation = libc::MS_UNBINDABLE,
            "runbindable" => propagation = libc::MS_UNBINDABLE | libc::MS_REC,
            "tmpcopyup" | "notmpcopyup" | "copy-symlink" | "z" | "Z" => {
                warn(format!("mount {dest}: option {o} ignored"));
            }
            "idmap" => idmap = Some(false),
            "ridmap" => idmap = Some(true),
            other if other.starts_with("idmap=") || other.starts_with("ridmap=") => {
                return refuse(format!(
                    "mount {dest}: {other}: mappings of a mount's own are not supported; \
                     use idmap (the container's user namespace mapping)"
                ))
            }
            other => data.push(other.to_string()),
        }
    }
    let source = m
        .source()
        .as_ref()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| typ.clone());
    if let Some(recursive) = idmap {
        if !bind {
            return refuse(format!(
                "mount {dest}: idmap applies to bind mounts only; make it a bind mount"
            ));
        }
        idmaps.push(IdmapMount {
            source: source.clone(),
            destination: dest.clone(),
            recursive: recursive || flags & libc::MS_REC != 0,
            readonly: flags & libc::MS_RDONLY != 0,
        });
    }
    if bind {
        flags |= libc::MS_BIND;
        if !data.is_empty() {
            warn(format!(
                "mount {dest}: options {} ignored for a bind mount",
                data.join(",")
            ));
            data.clear();
        }
        out.push(MountSpec {
            source,
            destination: dest,
            fstype: None,
            flags,
            propagation,
            data: None,
        });
        return Ok(());
    }
    match typ.as_str() {
        "tmpfs" | "mqueue" => out.push(MountSpec {
            source,
            destination: dest,
            fstype: Some(typ),
            flags,
            propagation,
            data: (!data.is_empty()).then(|| data.join(",")),
        }),
        "proc" | "sysfs" | "devpts" | "cgroup" | "cgroup2" => {
            return refuse(format!(
            "mount {dest}: type {typ} is only supported at its usual place (Kapsel mounts /proc, \
                 /sys, /dev/pts and /sys/fs/cgroup itself); remove this mount"
        ))
        }
        other => {
            return refuse(format!(
                "mount {dest}: type \"{other}\" is not supported (bind, tmpfs and mqueue are); \
                 remove the mount or make it a bind mount"
            ))
        }
    }
    Ok(())
}
