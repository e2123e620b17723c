//! Everything the child needs, built before the clone (after it, the
//! child may not allocate): the init's argument vector and environment,
//! its confinement, and the configuration's extras (namespaces to join by
//! path, the start FIFO, mounts with their destinations made in the root).

use super::stdio::Stdio;
use crate::caps::{self, CapSet};
use crate::cgroup::CgroupMode;
use crate::child::{self, Cgroup2Mount, ChildPlan};
use crate::error::{Error, Result};
use crate::seccomp;
use crate::spec::{ConsoleSpec, ContainerSpec, DEFAULT_PATH};
use crate::sys::cstring;
use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// What the plan is made from besides the spec.
pub(super) struct PlanInputs<'a> {
    pub mode: &'a CgroupMode,
    /// The canonical root.
    pub root: &'a Path,
    /// The init's path inside the root ([`ContainerSpec::validate`]).
    pub init: &'a Path,
    pub keep_caps: CapSet,
    /// systemd is the init.
    pub systemd: bool,
    pub stdio: &'a Stdio,
    /// The child's ends of the release socket and the error pipe.
    pub go_read: RawFd,
    pub err_write: RawFd,
}

/// The init's argv and envp: `PATH`, `container=` and (on a pty) `TERM`
/// added when the spec has none. The strings come first in the vector,
/// argv's `argc` of them, then the environment's.
fn command(spec: &ContainerSpec) -> Result<(Vec<CString>, usize)> {
    let mut strings: Vec<CString> = Vec::new();
    for a in &spec.init {
        strings.push(cstring(a.as_bytes())?);
    }
    let argc = strings.len();
    let mut env = spec.env.clone();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.push(format!("PATH={DEFAULT_PATH}"));
    }
    if !env.iter().any(|e| e.starts_with("container=")) {
        env.push("container=kapsel".into());
    }
    if spec.console == ConsoleSpec::Pty && !env.iter().any(|e| e.starts_with("TERM=")) {
        env.push(format!(
            "TERM={}",
            std::env::var("TERM").unwrap_or_else(|_| "vt100".into())
        ));
    }
    for e in &env {
        strings.push(cstring(e.as_bytes())?);
    }
    Ok((strings, argc))
}

/// Builds the child's plan, without the extras ([`prepare_extra`]) and
/// the cgroup files (known once the cgroup exists).
pub(super) fn build(spec: &ContainerSpec, inp: &PlanInputs<'_>) -> Result<ChildPlan> {
    let (strings, argc) = command(spec)?;
    let mut argv: Vec<*const libc::c_char> = strings[..argc].iter().map(|s| s.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = strings[argc..].iter().map(|s| s.as_ptr()).collect();
    envp.push(std::ptr::null());
    Ok(ChildPlan {
        root: cstring(inp.root.as_os_str().as_bytes())?,
        hostname: cstring(spec.hostname.as_deref().unwrap_or(&spec.name).as_bytes())?,
        init: cstring(inp.init.as_os_str().as_bytes())?,
        cwd: cstring(spec.cwd.as_deref().unwrap_or("/").as_bytes())?,
        _strings: strings,
        argv,
        envp,
        stdio: inp.stdio.fds,
        console: inp.stdio.slave_path.clone(),
        keep_caps: inp.keep_caps,
        last_cap: caps::last_cap(),
        no_new_privs: spec.no_new_privs,
        die_with_parent: spec.die_with_parent,
        seccomp: match &spec.extra.seccomp_bpf {
            Some(bpf) => vec![seccomp::program_from_bpf(bpf)?],
            None if spec.seccomp => seccomp::profile(inp.keep_caps)?,
            None => Vec::new(),
        },
        seccomp_flags: spec.extra.seccomp_flags
            | if spec.extra.seccomp_listener && spec.extra.seccomp_bpf.is_some() {
                child::SECCOMP_FILTER_FLAG_NEW_LISTENER
            } else {
                0
            },
        preserve_fds: spec.extra.preserve_fds,
        devices: Vec::new(),
        root_propagation: spec
            .extra
            .root_propagation
            .unwrap_or((libc::MS_REC | libc::MS_PRIVATE, 0)),
        user_ns: spec.user_map.is_some(),
        idmap_root: spec.idmap_root,
        cgroup2: match (inp.systemd, inp.mode.is_unified()) {
            (true, _) => Cgroup2Mount::Delegated,
            (false, true) => Cgroup2Mount::ReadOnly,
            (false, false) => Cgroup2Mount::None,
        },
        tmpfs_run: inp.systemd,
        veth: spec.network.is_some(),
        cgroup_tasks: Vec::new(),
        go_read: inp.go_read,
        err_write: inp.err_write,
        join_ns: Vec::new(),
        set_hostname: true,
        new_net: true,
        mounts: Vec::new(),
        masked_extra: Vec::new(),
        readonly_extra: Vec::new(),
        readonly_root: spec.extra.readonly_root,
        rlimits: spec
            .extra
            .rlimits
            .iter()
            .map(|&(r, soft, hard)| {
                (
                    r,
                    libc::rlimit {
                        rlim_cur: soft,
                        rlim_max: hard,
                    },
                )
            })
            .collect(),
        user: spec
            .extra
            .user
            .as_ref()
            .map(|u| (u.uid, u.gid, u.groups.clone())),
        start_fifo: None,
        hook_sync: false,
        sysctls: Vec::new(),
    })
}

/// Descriptors the child uses (namespaces to join, the start FIFO); they
/// stay open until the child has been cloned.
pub(super) struct ExtraFds {
    _files: Vec<File>,
}

/// Fills the plan's OCI extras from `spec.extra`: opens the namespaces to
/// join and the start FIFO, and makes every mount destination outside
/// /dev, /proc and /sys in the root (links in the root resolved within it).
pub(super) fn prepare_extra(
    spec: &ContainerSpec,
    root: &Path,
    plan: &mut ChildPlan,
) -> Result<ExtraFds> {
    use crate::spec::Namespace;
    let extra = &spec.extra;
    let mut files = Vec::new();
    let shared = |ns: Namespace| {
        extra.host_namespaces.contains(&ns) || extra.join_namespaces.iter().any(|(n, _)| *n == ns)
    };
    plan.set_hostname = !shared(Namespace::Uts);
    plan.new_net = !shared(Namespace::Net);
    if !plan.set_hostname
        && spec.hostname.is_some()
        && extra.host_namespaces.contains(&Namespace::Uts)
    {
        return Err(Error::Invalid(
            "a hostname needs a UTS namespace of the container's own; drop the hostname or \
             share no UTS namespace with the host"
                .into(),
        ));
    }
    for (_, path) in &extra.join_namespaces {
        let f = File::open(path).map_err(|e| {
            Error::Invalid(format!(
                "namespace {}: {e}; give the path of an existing namespace (/proc/PID/ns/KIND \
                 or a bind-mounted namespace file)",
                path.display()
            ))
        })?;
        plan.join_ns.push(f.as_raw_fd());
        files.push(f);
    }
    if let Some(fifo) = &extra.start_fifo {
        let f = File::options()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_CLOEXEC)
            .open(fifo)
            .map_err(|e| Error::Invalid(format!("start FIFO {}: {e}", fifo.display())))?;
        plan.start_fifo = Some(cstring(
            format!("/proc/self/fd/{}", f.as_raw_fd()).as_bytes(),
        )?);
        files.push(f);
    }
    let rel = |p: &str| -> Result<CString> {
        let r = p.trim_start_matches('/');
        cstring(if r.is_empty() { b"." } else { r.as_bytes() })
    };
    for d in &extra.devices {
        let rel = d.path.trim_start_matches('/');
        let p = Path::new(rel);
        let bad = !p.starts_with("dev")
            || p == Path::new("dev")
            || p.components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)));
        if bad {
            return Err(Error::Invalid(format!(
                "device {}: give a path below /dev without \"..\"",
                d.path
            )));
        }
        let kind = match d.kind {
            'c' | 'u' => libc::S_IFCHR,
            'b' => libc::S_IFBLK,
            'p' => libc::S_IFIFO,
            other => {
                return Err(Error::Invalid(format!(
                    "device {}: type {other} is not c, b, u or p",
                    d.path
                )))
            }
        };
        let parents = p
            .ancestors()
            .skip(1)
            .filter(|a| a.components().count() > 1)
            .map(|a| cstring(a.as_os_str().as_bytes()))
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .rev()
            .collect();
        plan.devices.push(child::ChildDevice {
            target: cstring(rel.as_bytes())?,
            host: cstring(format!("/{rel}").as_bytes())?,
            parents,
            mode: kind | (d.mode & 0o7777),
            dev: libc::makedev(d.major, d.minor),
            uid: d.uid,
            gid: d.gid,
        });
    }
    for (name, value) in &extra.sysctls {
        if name.is_empty() || name.contains("..") || name.contains('/') {
            return Err(Error::Invalid(format!(
                "sysctl \"{name}\": give a dotted name such as net.ipv4.ip_forward"
            )));
        }
        let file = format!("proc/sys/{}", name.replace('.', "/"));
        plan.sysctls
            .push((cstring(file.as_bytes())?, cstring(value.as_bytes())?));
    }
    for p in &extra.masked_paths {
        plan.masked_extra.push(rel(p)?);
    }
    for p in &extra.readonly_paths {
        plan.readonly_extra.push(rel(p)?);
    }
    for m in &extra.mounts {
        let bind = m.flags & libc::MS_BIND != 0;
        let source_is_file = bind && std::fs::metadata(&m.source).is_ok_and(|md| !md.is_dir());
        if bind {
            std::fs::metadata(&m.source).map_err(|e| {
                Error::Invalid(format!(
                    "bind mount source {} (for {}): {e}; give an existing host path",
                    m.source, m.destination
                ))
            })?;
        }
        let dest = m.destination.trim_start_matches('/');
        let below_kernel = ["dev", "proc", "sys"]
            .iter()
            .any(|top| Path::new(dest).starts_with(top));
        let (target, make) = if below_kernel {
            (rel(dest)?, if source_is_file { 2 } else { 1 })
        } else {
            let inner = make_in_root(root, dest, source_is_file)?;
            (cstring(inner.as_os_str().as_bytes())?, 0)
        };
        plan.mounts.push(child::ChildMount {
            source: Some(cstring(m.source.as_bytes())?),
            target,
            fstype: m
                .fstype
                .as_deref()
                .map(|t| cstring(t.as_bytes()))
                .transpose()?,
            flags: m.flags,
            data: m
                .data
                .as_deref()
                .filter(|d| !d.is_empty())
                .map(|d| cstring(d.as_bytes()))
                .transpose()?,
            propagation: m.propagation,
            make,
        });
    }
    Ok(ExtraFds { _files: files })
}

/// Makes `dest` (relative) inside `root`, resolving links as if `root`
/// were `/` (a link cannot lead out of it), creating missing directories
/// and, with `file`, the last component as an empty file. Returns the
/// resolved path, relative to `root`.
fn make_in_root(root: &Path, dest: &str, file: bool) -> Result<std::path::PathBuf> {
    use std::path::{Component, PathBuf};
    let invalid = |e: io::Error| {
        Error::Invalid(format!(
            "mount destination /{dest} in root {}: {e}",
            root.display()
        ))
    };
    let mut todo: Vec<std::ffi::OsString> = Path::new(dest)
        .components()
        .rev()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    let mut at = PathBuf::new();
    let mut links = 0;
    while let Some(name) = todo.pop() {
        if name == ".." {
            at.pop();
            continue;
        }
        let next = at.join(&name);
        let full = root.join(&next);
        match std::fs::symlink_metadata(&full) {
            Ok(md) if md.file_type().is_symlink() => {
                links += 1;
                if links > 40 {
                    return Err(invalid(io::Error::from_raw_os_error(libc::ELOOP)));
                }
                let target = std::fs::read_link(&full).map_err(invalid)?;
                if target.is_absolute() {
                    at = PathBuf::new();
                }
                for c in target.components().rev() {
                    match c {
                        Component::Normal(n) => todo.push(n.to_os_string()),
                        Component::ParentDir => todo.push("..".into()),
                        _ => {}
                    }
                }
            }
            Ok(_) => at = next,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if file && todo.is_empty() {
                    File::options()
                        .write(true)
                        .create(true)
                        .truncate(false)
                        .custom_flags(libc::O_NOFOLLOW)
                        .open(&full)
                        .map_err(invalid)?;
                } else {
                    std::fs::create_dir(&full).map_err(invalid)?;
                }
                at = next;
            }
            Err(e) => return Err(invalid(e)),
        }
    }
    if at.as_os_str().is_empty() {
        at.push(".");
    }
    Ok(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_destinations_stay_in_the_root() {
        let base = std::env::temp_dir().join(format!("kapsel-mkroot-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let root = base.join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        // An image's links: absolute, and relative past the top.
        std::os::unix::fs::symlink("/outside-abs", root.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../../../outside-rel", root.join("etc/rel")).unwrap();
        std::os::unix::fs::symlink("../etc", root.join("etc/loop")).unwrap();
        let p = make_in_root(&root, "abs/x", false).unwrap();
        assert_eq!(p, Path::new("outside-abs/x"));
        assert!(root.join("outside-abs/x").is_dir());
        let p = make_in_root(&root, "etc/rel/hosts", true).unwrap();
        assert_eq!(p, Path::new("outside-rel/hosts"));
        assert!(root.join("outside-rel/hosts").is_file());
        assert!(!Path::new("/outside-abs").exists() && !Path::new("/outside-rel").exists());
        let p = make_in_root(&root, "etc/loop/loop/loop/y", false).unwrap();
        assert_eq!(p, Path::new("etc/y"));
        std::os::unix::fs::symlink("self", root.join("self")).unwrap();
        assert!(make_in_root(&root, "self/z", false).is_err());
        std::fs::remove_dir_all(&base).unwrap();
    }
}
