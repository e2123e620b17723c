//! Starting a container: [`Container::start`]. Its phases, each in its
//! own file, in order:
//!
//! 1. checks (here): root, the spec ([`ContainerSpec::validate`]),
//!    systemd as init;
//! 2. `stdio.rs`: the init's console (pty, file, /dev/null, inherited);
//! 3. `plan.rs`: everything the child needs, built before the clone
//!    (argv, env, confinement, namespaces to join, mounts);
//! 4. the cgroup (here, through [`Cgroup`]);
//! 5. `clone.rs`: the clone into new namespaces (and the v2 cgroup);
//!    the child then runs `child.rs`;
//! 6. `parent.rs`: the parent's steps while the child waits, its
//!    release, and the child's report.
//!
//! On any failure everything made so far is removed again and the child
//! is gone.

mod clone;
mod parent;
mod plan;
mod stdio;

use crate::caps::cap;
use crate::cgroup::{Cgroup, CgroupMode, Limits};
use crate::container::Container;
use crate::error::{Error, Result};
use crate::spec::ContainerSpec;
use crate::sys::{pipe, socket_pair};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

impl Container {
    /// Starts a container: checks `spec` (an [`Error::Invalid`] before
    /// anything is created), creates its cgroup, clones its init into new
    /// mount, PID, UTS, IPC, network and cgroup namespaces (and a user
    /// namespace with [`ContainerSpec::user_map`]), creates the veth, and
    /// returns once the init has been executed. On any failure everything
    /// created is removed again and the child is gone.
    pub fn start(spec: &ContainerSpec) -> Result<Container> {
        Self::start_in(spec, &CgroupMode::detect()?)
    }

    /// [`Container::start`] with the cgroup layout given: a daemon detects
    /// it once ([`CgroupMode::detect`]) instead of at every start.
    pub fn start_in(spec: &ContainerSpec, mode: &CgroupMode) -> Result<Container> {
        Self::start_hooked(spec, mode, None)
    }

    /// [`Container::start_in`] that stops the child once its root is
    /// mounted, before `pivot_root` (the host's root still visible in its
    /// mount namespace), and calls `hook` with the init's host PID: the
    /// moment of the OCI `prestart`, `createRuntime` and `createContainer`
    /// hooks. An `Err` from `hook` ends the start ([`Error::Hook`]) and
    /// removes everything.
    pub fn start_hooked(
        spec: &ContainerSpec,
        mode: &CgroupMode,
        hook: Option<&mut dyn FnMut(i32) -> std::result::Result<(), String>>,
    ) -> Result<Container> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(Error::Invalid(
                "containers need root (cgroups, namespaces, mounts); run as root or with sudo"
                    .into(),
            ));
        }
        let mode = mode.clone();
        let init = spec.validate(&mode)?;
        // systemd as init (see systemd's CONTAINER_INTERFACE) mounts file
        // systems for its services and manages a cgroup2 tree of its own:
        // it gets CAP_SYS_ADMIN (as under LXC) and its cgroup namespace's
        // root writable at /sys/fs/cgroup. Everything else stays: the
        // seccomp denylist, the device cgroup, no CAP_SYS_BOOT (so its
        // power-off ends in exit(0) instead of reboot(2)), no /dev/kvm.
        let systemd = spec.init_is_systemd();
        if systemd && !mode.can_delegate() {
            return Err(Error::Invalid(format!(
                "container {}: systemd as init needs a cgroup2 hierarchy (a v2 or hybrid host); \
                 this host has cgroup v1 only: boot with systemd.unified_cgroup_hierarchy=1 \
                 or use another init",
                spec.name
            )));
        }
        let keep_caps = if systemd {
            spec.capabilities.with(cap::SYS_ADMIN)
        } else {
            spec.capabilities
        };

        let root = std::fs::canonicalize(&spec.root)
            .map_err(|e| Error::Invalid(format!("root {}: {e}", spec.root.display())))?;
        let mut stdio = stdio::Stdio::open(spec)?;
        let (go_read, go_write) = socket_pair()?;
        let (err_read, err_write) = pipe()?;
        // Everything the child uses is built now: after clone it must not allocate.
        let mut plan = plan::build(
            spec,
            &plan::PlanInputs {
                mode: &mode,
                root: &root,
                init: &init,
                keep_caps,
                systemd,
                stdio: &stdio,
                go_read: go_read.as_raw_fd(),
                err_write: err_write.as_raw_fd(),
            },
        )?;
        let extra = plan::prepare_extra(spec, &root, &mut plan)?;
        plan.hook_sync = hook.is_some();

        let mut cgroup = create_cgroup(spec, &mode, systemd)?;
        // v1: the child moves itself in through these (see
        // Cgroup::v1_task_files); empty on v2.
        let task_files: Vec<File> = match cgroup
            .v1_task_files()
            .iter()
            .map(|f| File::options().write(true).open(f))
            .collect::<io::Result<_>>()
        {
            Ok(files) => files,
            Err(source) => {
                cgroup.remove();
                return Err(Error::Os {
                    what: "opening the container's cgroup tasks files",
                    source,
                });
            }
        };
        plan.cgroup_tasks = task_files.iter().map(|f| f.as_raw_fd()).collect();

        let cloned = match clone::clone_init(spec, &plan, &cgroup) {
            Ok(c) => c,
            Err(e) => {
                cgroup.remove();
                return Err(e);
            }
        };
        // The child has its copies of these.
        drop(go_read);
        drop(err_write);
        drop(extra);
        drop(task_files);
        stdio.close_child_side();
        let mut c = Container {
            name: spec.name.clone(),
            pid: cloned.pid,
            pidfd: cloned.pidfd,
            cgroup,
            veth: None,
            stop_signal: spec.stop_signal(),
            console: stdio.console.take(),
            status: None,
            root,
            keep_caps,
            no_new_privs: spec.no_new_privs,
            seccomp: spec.seccomp,
            cleaned: false,
            seccomp_listener: None,
        };
        // From here on a failure drops `c`, which kills the child and
        // removes the cgroup and the veth.
        let move_into_cgroup = !cloned.born_in_cgroup && plan.cgroup_tasks.is_empty();
        let listener = spec.extra.seccomp_listener && spec.extra.seccomp_bpf.is_some();
        parent::finish(
            &mut c,
            spec,
            move_into_cgroup,
            go_write,
            err_read,
            hook,
            listener,
        )?;
        drop(plan);
        tracing::debug!("container {} started, init pid {}", c.name, c.pid);
        Ok(c)
    }
}

/// Creates the container's cgroup with the spec's limits (at its
/// `cgroup_path`, else `kapsel/NAME`), delegated to the container's root
/// with a user namespace.
fn create_cgroup(spec: &ContainerSpec, mode: &CgroupMode, systemd: bool) -> Result<Cgroup> {
    let limits = Limits {
        memory: spec.memory,
        cpus: spec.cpus,
        pids: spec.pids,
    };
    // The configuration's device nodes are allowed too (FIFOs need no rule).
    let allowed: Vec<crate::devices::AllowedDevice> = spec
        .extra
        .devices
        .iter()
        .filter(|d| d.kind != 'p')
        .map(|d| crate::devices::AllowedDevice {
            major: d.major,
            minor: Some(d.minor),
            block: d.kind == 'b',
        })
        .collect();
    let default_path;
    let path = match &spec.extra.cgroup_path {
        Some(path) => path,
        None => {
            default_path = std::path::Path::new(crate::cgroup::PARENT).join(&spec.name);
            &default_path
        }
    };
    let mut cgroup = Cgroup::create_allowing(mode, path, &limits, systemd, &allowed)?;
    if let Some(map) = &spec.user_map {
        // The cgroup2 tree belongs to the container's root.
        if let Err(e) = cgroup.delegate_to(map.host_uid, map.host_gid) {
            cgroup.remove();
            return Err(e);
        }
    }
    Ok(cgroup)
}
