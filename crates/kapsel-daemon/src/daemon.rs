//! The daemon's state: the configuration, every known guest, and what the
//! control requests do to them. A guest's life is [`crate::guest::next`];
//! what its kind does its own way is [`crate::guest::GuestOps`].

use crate::accounts::{HostAccounts, Peer};
use crate::console::Console;
use crate::ctproc;
use crate::guest::{self, Event, GuestError};
use crate::monitor::{self, Act, ExitNote};
use crate::net;
use crate::proto::{LogLevel, Request, ResetWhat, Response, StartRequest, VmState, VmStatus};
use crate::state::{self, GuestRecord, InterfaceRecord, StateFile};
use crate::vmproc;
use kapsel_config::{Config, Diagnostic, GuestKind, GuestSpec, LoadOptions, Owner, VmSpec};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How the daemon is set up.
pub struct Options {
    /// The vm.conf to read.
    pub config: PathBuf,
    /// `-D name=value` macro overrides.
    pub defines: Vec<(String, String)>,
    /// Where the control socket goes.
    pub socket: PathBuf,
    /// Where state (VM logs) is kept.
    pub state_dir: PathBuf,
    /// The `kapsel` binary that runs each VM (`kapsel run`).
    pub kapsel: PathBuf,
    /// How long a guest has to power off after the power button.
    pub shutdown_timeout: Duration,
    /// Called by `kapsel log brief|verbose`.
    pub set_log_level: Option<Box<dyn Fn(LogLevel) + Send + Sync>>,
    /// Stop every guest when the daemon stops (else they run on, and the
    /// next daemon adopts them).
    pub stop_guests: bool,
}

/// Why the daemon could not start or reload.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The configuration has errors (rendered, with file:line).
    #[error("{0}")]
    Config(String),
    /// The socket or state directory.
    #[error("{0}")]
    Setup(String),
}

/// A guest's running process (a VM's `kapsel run`, or a container's
/// init), reached through its monitor.
pub type Proc = monitor::Handle;

/// A guest the daemon knows: declared, made by `kapsel start`, or
/// adopted from an earlier daemon.
pub(crate) struct Guest {
    pub id: u32,
    /// What it is (a VM's instances resolved).
    pub spec: GuestSpec,
    /// Declared in a configuration file (else started ad hoc).
    pub configured: bool,
    pub state: VmState,
    pub process: Option<Proc>,
    pub last_exit: Option<String>,
    pub console: Console,
    /// Counts the runs, so a late exit report of an old run is ignored.
    pub generation: u64,
    /// Host interfaces of the current run, released when it ends.
    pub net: Vec<Attachment>,
    /// For an instance a non-root user made: that user, and the files of
    /// its spec the user named (opened with the user's rights at every
    /// start).
    pub open_as: Option<vmproc::OpenAs>,
    /// Declared in the configuration until a reload removed it while it
    /// ran: it disappears when it stops.
    pub removed: bool,
}

/// A running guest's switch port, collected under the state lock to be
/// checked or put back outside it.
struct RunningPort {
    guest: String,
    /// The guest's run it belongs to.
    generation: u64,
    kind: net::InterfaceKind,
    port: net::SwitchPort,
}

/// What a guest's interfaces need from the configuration (see
/// [`Daemon::net_plan`]).
struct NetPlan {
    /// Each interface, with the switch it joins.
    interfaces: Vec<(
        kapsel_config::InterfaceSpec,
        Option<kapsel_config::SwitchSpec>,
    )>,
    /// `local prefix`.
    local_prefix: kapsel_config::Ipv4Prefix,
    /// `local inet6`.
    local_inet6: Option<kapsel_config::Ipv6Prefix>,
}

/// One host interface of a running guest.
pub(crate) struct Attachment {
    ifname: String,
    kind: net::InterfaceKind,
    /// The DHCP service of a local interface (in the DHCP helper process);
    /// dropping it stops it.
    dhcp: Option<net::DhcpService>,
    /// The lease it offers (to serve it again after a daemon restart).
    lease: Option<net::DhcpLease>,
    /// The interface as a port of its switch's bridge, to put back when
    /// the bridge was made again (reset, reload).
    port: Option<net::SwitchPort>,
}

impl Attachment {
    fn release(self, vm: &str) {
        drop(self.dhcp);
        if let Err(e) = net::release_interface(&self.ifname, self.kind) {
            tracing::warn!("{vm}: {e}");
        }
    }
}

pub(crate) struct Inner {
    pub config: Config,
    /// Files added with `kapsel load`, read again on reload.
    pub loaded: Vec<PathBuf>,
    pub guests: Vec<Guest>,
    pub next_id: u32,
    pub shutting_down: bool,
    /// Bridges this daemon created (removed at shutdown).
    pub created_switches: Vec<kapsel_config::SwitchSpec>,
    /// Switches a reload removed from the configuration (or renamed, or
    /// disabled) whose bridges running guests still use: each is removed
    /// once the last of them stops (see [`Daemon::retire_switches`]).
    pub retired_switches: Vec<kapsel_config::SwitchSpec>,
    /// `local interface` NAT and forwarding are set up.
    pub local_network: bool,
    /// Guests the last reload removed from the configuration, so that
    /// `start` can say so once they are gone.
    pub removed: Vec<String>,
    /// Counts the pictures of the state taken for the state file.
    pub state_seq: u64,
}

/// The daemon: shared by the connection threads.
pub struct Daemon {
    pub(crate) opts: Options,
    inner: Mutex<Inner>,
    changed: Condvar,
    /// Held while a container image is unpacked, outside `inner`: one
    /// unpack at a time, while every other request is served.
    unpacking: Mutex<()>,
    /// Orders the writes of the state file: (sequence written, lock).
    state_writes: Mutex<u64>,
    /// Held while the `local interface` network (NAT, forwarding) is set
    /// up, outside `inner`: two starts never set it up at once.
    local_setup: Mutex<()>,
    /// Held while switches are reconciled (outside `inner`; lock order:
    /// `reconciling`, then `inner`), so that two reloads or resets do not
    /// interleave creating and removing the same bridge.
    reconciling: Mutex<()>,
    /// One daemon per state directory, until this process ends.
    _state_lock: crate::statelock::StateLock,
    /// The process that answers guests' DHCP requests (started on first use).
    dhcp: net::DhcpHelper,
}

fn render(diags: &[Diagnostic]) -> String {
    diags.iter().map(|d| d.render()).collect::<String>()
}

/// Reads a configuration file the way the daemon does.
pub fn load_config(path: &std::path::Path, defines: &[(String, String)]) -> Result<Config, String> {
    load_configs(&[path], defines)
}

/// Reads vm.conf and the files added with `kapsel load` as one
/// configuration (see [`kapsel_config::load_all`]).
fn load_configs(
    paths: &[&std::path::Path],
    defines: &[(String, String)],
) -> Result<Config, String> {
    let accounts = HostAccounts::read();
    let opts = LoadOptions {
        defines: defines.to_vec(),
        accounts: Some(&accounts),
        ..LoadOptions::default()
    };
    match kapsel_config::load_all(paths, &opts) {
        Ok((config, warnings)) => {
            for w in &warnings {
                tracing::warn!("{}", w.render().trim_end());
            }
            Ok(config)
        }
        Err(diags) => Err(render(&diags)),
    }
}

/// `local`: the owner that a non-root peer gets for instances it creates.
fn owner_of(peer: &Peer) -> Owner {
    Owner {
        user: Some(peer.name.clone().unwrap_or_else(|| peer.uid.to_string())),
        group: None,
    }
}

fn describe_owner(owner: Option<&Owner>) -> String {
    owner.map_or_else(|| "root".to_string(), |o| o.to_string())
}

impl Daemon {
    /// Reads the configuration; nothing is started yet.
    pub fn new(opts: Options) -> Result<Arc<Daemon>, DaemonError> {
        let config = load_config(&opts.config, &opts.defines).map_err(DaemonError::Config)?;
        private_state_dir(&opts.state_dir).map_err(DaemonError::Setup)?;
        // Before anything on the host is touched (switches, NAT, guests).
        let state_lock = crate::statelock::StateLock::take(&opts.state_dir)
            .map_err(|e| DaemonError::Setup(e.to_string()))?;
        ctproc::close_container_dirs(&opts.state_dir).map_err(DaemonError::Setup)?;
        let daemon = Arc::new(Daemon {
            dhcp: net::DhcpHelper::new(opts.kapsel.clone()),
            opts,
            _state_lock: state_lock,
            inner: Mutex::new(Inner {
                config: Config::default(),
                loaded: Vec::new(),
                guests: Vec::new(),
                next_id: 1,
                shutting_down: false,
                created_switches: Vec::new(),
                retired_switches: Vec::new(),
                local_network: false,
                removed: Vec::new(),
                state_seq: 0,
            }),
            changed: Condvar::new(),
            state_writes: Mutex::new(0),
            unpacking: Mutex::new(()),
            local_setup: Mutex::new(()),
            reconciling: Mutex::new(()),
        });
        monitor::make_run_dir(&daemon.opts.state_dir).map_err(DaemonError::Setup)?;
        daemon.apply_config(config);
        let saved =
            state::load(&daemon.opts.state_dir).map_err(|e| DaemonError::Setup(e.to_string()))?;
        daemon.adopt(saved);
        daemon.reconcile_switches().map_err(DaemonError::Setup)?;
        daemon.save_state();
        Ok(daemon)
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes `config` the configuration: new VMs are added, changed ones
    /// take effect at their next start, removed ones that are stopped
    /// disappear. Returns the names of enabled VMs that are new.
    pub(crate) fn apply_config(&self, config: Config) -> Vec<String> {
        let mut inner = self.lock();
        let mut added = Vec::new();
        let guests = config.guests();
        let names: Vec<String> = guests.iter().map(|g| g.name().to_string()).collect();
        for spec in guests {
            match inner
                .guests
                .iter_mut()
                .find(|g| g.spec.name() == spec.name())
            {
                Some(guest) => {
                    guest.spec = spec;
                    guest.configured = true;
                    guest.removed = false;
                    // Root's file now: its next start opens it as root.
                    guest.open_as = None;
                }
                None => {
                    if spec.common().enabled {
                        added.push(spec.name().to_string());
                    }
                    let id = inner.next_id;
                    inner.next_id += 1;
                    inner.guests.push(Guest::new(id, spec, true));
                }
            }
        }
        let listed = |g: &Guest| names.iter().any(|n| n == g.spec.name());
        let mut removed: Vec<String> = inner
            .guests
            .iter()
            .filter(|g| g.configured && !listed(g))
            .map(|g| g.spec.name().to_string())
            .collect();
        inner
            .guests
            .retain(|g| listed(g) || g.state != VmState::Stopped);
        for vm in inner.guests.iter_mut() {
            if !names.iter().any(|n| n == vm.spec.name()) {
                // Running guests that are no longer configured go when
                // they stop (vmd forgets them the same way).
                vm.removed |= vm.configured;
                vm.configured = false;
            }
        }
        removed.retain(|n| !names.contains(n));
        inner.removed = removed;
        // Switches whose bridges the new configuration no longer has: a
        // switch removed, renamed, disabled, or given another `interface`.
        let bridges = |c: &Config| -> Vec<(String, kapsel_config::SwitchSpec)> {
            c.switches
                .iter()
                .filter(|s| s.enabled)
                .filter_map(|s| Some((net::bridge_name(s).ok()?, s.clone())))
                .collect()
        };
        let kept: Vec<String> = bridges(&config).into_iter().map(|(b, _)| b).collect();
        let bridge_of = |s: &kapsel_config::SwitchSpec| net::bridge_name(s).unwrap_or_default();
        inner
            .retired_switches
            .retain(|s| !kept.contains(&bridge_of(s)));
        for (bridge, spec) in bridges(&inner.config) {
            if !kept.contains(&bridge)
                && !inner
                    .retired_switches
                    .iter()
                    .any(|s| bridge_of(s) == bridge)
            {
                inner.retired_switches.push(spec);
            }
        }
        inner.config = config;
        added
    }

    /// Starts the enabled VMs, `staggered start parallel N delay S` at a
    /// time (all at once without it). Runs in its own thread.
    pub fn start_enabled(self: &Arc<Self>, names: Vec<String>) {
        let staggered = self.lock().config.globals.staggered_start;
        let daemon = self.clone();
        let _ = std::thread::Builder::new()
            .name("autostart".into())
            .spawn(move || {
                let (parallel, delay) = match staggered {
                    Some(s) => (
                        s.parallel.max(1) as usize,
                        Duration::from_secs(s.delay_secs.into()),
                    ),
                    None => (usize::MAX, Duration::ZERO),
                };
                for (i, batch) in names.chunks(parallel.min(names.len().max(1))).enumerate() {
                    if i > 0 {
                        std::thread::sleep(delay);
                    }
                    for name in batch {
                        if daemon.lock().shutting_down {
                            return;
                        }
                        if let Err(e) = daemon.start_vm(name) {
                            tracing::error!("{name}: {}", crate::proto::log_safe(&e.to_string()));
                        }
                    }
                }
            });
    }

    /// The names of the configured guests that are enabled.
    pub fn enabled_vms(&self) -> Vec<String> {
        let inner = self.lock();
        inner
            .guests
            .iter()
            // Adopted guests run already.
            .filter(|g| g.configured && g.spec.common().enabled && g.process.is_none())
            .map(|g| g.spec.name().to_string())
            .collect()
    }

    fn find<'a>(inner: &'a mut Inner, target: &str) -> Result<&'a mut Guest, GuestError> {
        let by_id = target.parse::<u32>().ok();
        let removed = inner.removed.iter().any(|n| n == target);
        inner
            .guests
            .iter_mut()
            .find(|g| g.spec.name() == target || Some(g.id) == by_id)
            .ok_or_else(|| {
                if removed {
                    GuestError::Removed(target.to_string())
                } else {
                    GuestError::NotFound(target.to_string())
                }
            })
    }

    /// The guest of run `generation` called `name`, if it is still that run.
    fn run_of<'a>(inner: &'a mut Inner, name: &str, generation: u64) -> Option<&'a mut Guest> {
        inner
            .guests
            .iter_mut()
            .find(|g| g.spec.name() == name && g.generation == generation)
    }

    /// Starts a known guest. Its state goes to starting under the state
    /// lock; what is slow or changes the host (an image unpacked, host
    /// interfaces made, its monitor forked) runs without the lock; it
    /// goes to running (or back to stopped, with everything released)
    /// under the lock again. Errors are for the user.
    pub fn start_vm(self: &Arc<Self>, target: &str) -> Result<String, GuestError> {
        let mut inner = self.lock();
        if inner.shutting_down {
            return Err(GuestError::ShuttingDown);
        }
        let name = Self::find(&mut inner, target)?.spec.name().to_string();
        inner = self.until_released(inner, &name);
        let guest = Self::find(&mut inner, &name)?;
        guest.state = guest::step(&guest.spec, guest.state, Event::Start)?;
        let spec = guest.spec.clone();
        let id = guest.id;
        let open_as = guest.open_as.clone();
        let paths = monitor::Paths::of(&self.opts.state_dir, &name);
        let record = record_of(guest, guest.generation + 1, &paths, &[]);
        let plan = Self::net_plan(&inner, &spec);
        drop(inner);
        let kind = spec.kind();
        let launched = plan
            .and_then(|plan| self.launch_guest(&spec, id, open_as.as_ref(), &paths, record, &plan));
        let mut inner = self.lock();
        let (process, attachments, ready) = match launched {
            Ok(l) => l,
            Err(e) => {
                if let Ok(g) = Self::find(&mut inner, &name) {
                    g.state = guest::next(g.state, Event::StartFailed).unwrap_or(VmState::Stopped);
                }
                drop(inner);
                self.changed.notify_all();
                return Err(e);
            }
        };
        // Kept while it started: a reload keeps guests that are not stopped.
        let guest = Self::find(&mut inner, &name)?;
        guest.net = attachments;
        guest.generation += 1;
        let generation = guest.generation;
        let pid = process.pid;
        guest.console = Console::new();
        guest.process = Some(process.clone());
        guest.state = guest::step(&guest.spec, guest.state, Event::Started)?;
        guest.last_exit = None;
        drop(inner);
        self.changed.notify_all();
        self.save_state();
        tracing::info!("{kind} {name}: started, pid {pid}");
        self.supervise(name.clone(), generation, process)?;
        // Like vmctl, say whether it could start: a VM process that cannot
        // open its kernel or a disk (a user's file the user may not open,
        // say) ends before it is ready, and its reason is the reply.
        if let Some(ready) = ready {
            if vmproc::wait_ready(&ready, READY_TIMEOUT) == vmproc::Ready::Failed {
                let mut inner = self.lock();
                loop {
                    let reason = match inner.guests.iter().find(|g| g.spec.name() == name) {
                        Some(g) if g.generation == generation && g.state != VmState::Stopped => {
                            None
                        }
                        Some(g) if g.generation == generation => {
                            Some(g.last_exit.clone().unwrap_or_else(|| "it ended".into()))
                        }
                        _ => Some("it ended".into()),
                    };
                    if let Some(reason) = reason {
                        return Err(GuestError::StartFailed { kind, name, reason });
                    }
                    inner = self.changed.wait(inner).unwrap_or_else(|e| e.into_inner());
                }
            }
        }
        Ok(format!("started {kind} {target} (pid {pid})"))
    }

    /// Waits (a few seconds at most) while the guest `name`'s last run
    /// releases its host interfaces: a new run reuses their names.
    fn until_released<'a>(
        &self,
        mut inner: MutexGuard<'a, Inner>,
        name: &str,
    ) -> MutexGuard<'a, Inner> {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let releasing = inner.guests.iter().any(|g| {
                g.spec.name() == name && g.state == VmState::Stopping && g.process.is_none()
            });
            let now = Instant::now();
            if !releasing || now >= until {
                return inner;
            }
            inner = self
                .changed
                .wait_timeout(inner, until - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// The part of a start that runs without the state lock (the guest
    /// is starting meanwhile, so nothing else starts, stops or forgets
    /// it): its kind's preparation, its host interfaces, its monitor.
    /// Returns the monitor's handle, the interfaces and, for a VM, the
    /// read end of its readiness pipe. On failure nothing is left behind.
    #[allow(clippy::type_complexity)]
    fn launch_guest(
        &self,
        spec: &GuestSpec,
        id: u32,
        open_as: Option<&vmproc::OpenAs>,
        paths: &monitor::Paths,
        record: GuestRecord,
        plan: &NetPlan,
    ) -> Result<(Proc, Vec<Attachment>, Option<std::os::fd::OwnedFd>), GuestError> {
        let name = spec.name();
        let ops = guest::ops(spec);
        // A report of an earlier run that nobody collected.
        monitor::collect_leftovers(paths);
        {
            // One unpack at a time (seconds for a distribution's image).
            let _one = self.unpacking.lock().unwrap_or_else(|e| e.into_inner());
            ops.prepare(&self.opts.state_dir, &self.opts.kapsel)?;
        }
        let (taps, mut attachments) = if ops.interfaces_first() {
            self.attach_interfaces(plan, name, id)?
        } else {
            (Vec::new(), Vec::new())
        };
        let release = |attachments: Vec<Attachment>| {
            for a in attachments {
                a.release(name);
            }
        };
        let launch = match ops.launch(guest::LaunchContext {
            id,
            state_dir: &self.opts.state_dir,
            kapsel: &self.opts.kapsel,
            shutdown_timeout: self.opts.shutdown_timeout,
            taps,
            open_as,
        }) {
            Ok(l) => l,
            Err(e) => {
                release(attachments);
                return Err(e);
            }
        };
        let mspec = monitor::MonitorSpec {
            version: monitor::MONITOR_VERSION,
            name: name.to_string(),
            paths: paths.clone(),
            log: self.opts.state_dir.join("vms").join(format!("{name}.log")),
            guest: launch.guest,
            record: Some(Box::new(GuestRecord {
                net: interface_records(&attachments),
                ..record.clone()
            })),
        };
        // The daemon's copies of the taps go with the descriptors.
        let process = match monitor::launch(&self.opts.kapsel, &mspec, launch.fds) {
            Ok(p) => p,
            Err(e) => {
                release(attachments);
                return Err(GuestError::Host(e));
            }
        };
        // A container's veth exists once it runs: onto its switch now.
        if let Some(host) = launch.veth {
            match self.attach_one(plan, name, id, 0, Some(&host)) {
                Ok((_, a)) => attachments.push(a),
                Err(e) => {
                    let _ = process.act(Act::Kill);
                    process.watch();
                    monitor::collect_leftovers(paths);
                    return Err(e);
                }
            }
            let full = GuestRecord {
                net: interface_records(&attachments),
                ..record
            };
            if let Err(e) = process.set_record(full) {
                tracing::warn!("{} {name}: {e}", spec.kind());
            }
        }
        Ok((process, attachments, launch.ready))
    }

    /// Watches a guest's run in a thread of its own until it ends.
    fn supervise(
        self: &Arc<Self>,
        name: String,
        generation: u64,
        process: Proc,
    ) -> Result<(), GuestError> {
        let daemon = self.clone();
        std::thread::Builder::new()
            .name(format!("wait-{}", process.pid))
            .spawn(move || {
                let note = process.watch();
                daemon.exited(&name, generation, note);
            })
            .map(|_| ())
            .map_err(|e| GuestError::Host(format!("cannot start the supervisor thread: {e}")))
    }

    /// Run `generation` of the guest `name` has ended: its console's last
    /// output is kept and its host interfaces are released (outside the
    /// state lock; it stays stopping meanwhile, so that no new run reuses
    /// their names), then it is stopped.
    fn exited(&self, name: &str, generation: u64, note: ExitNote) {
        let (process, attachments, kind) = {
            let mut inner = self.lock();
            let Some(guest) = Self::run_of(&mut inner, name, generation) else {
                return;
            };
            guest.state = guest::next(guest.state, Event::Exited).unwrap_or(VmState::Stopping);
            (
                guest.process.take(),
                std::mem::take(&mut guest.net),
                guest.spec.kind(),
            )
        };
        // The output the guest left, for `console` of a stopped guest.
        let history = process.map(|p| monitor::collect_leftovers(&p.paths));
        for a in attachments {
            a.release(name);
        }
        let ExitNote { reason, failure } = note;
        // The reason can be the VM process's last line of stderr.
        let logged = crate::proto::log_safe(&reason);
        if failure {
            tracing::warn!("{kind} {name}: {logged}");
        } else {
            tracing::info!("{kind} {name}: {logged}");
        }
        let mut inner = self.lock();
        let mut forget = false;
        if let Some(guest) = Self::run_of(&mut inner, name, generation) {
            if let Some(h) = history {
                guest.console = Console::ended_with(&h);
            }
            guest.state = guest::next(guest.state, Event::Released).unwrap_or(VmState::Stopped);
            guest.last_exit = Some(reason);
            if guest.removed {
                tracing::info!("{kind} {name}: removed from the configuration, forgotten");
                forget = true;
            }
        }
        if forget {
            inner.guests.retain(|g| g.spec.name() != name);
            if !inner.removed.iter().any(|n| n == name) {
                inner.removed.push(name.to_string());
            }
        }
        let retiring = !inner.retired_switches.is_empty();
        drop(inner);
        self.save_state();
        self.changed.notify_all();
        if retiring {
            // Its switch may have been removed by a reload while it ran.
            self.retire_switches(false);
        }
    }

    /// Does `act` to a running guest through its monitor: a VM's process
    /// gets the request on its control channel (power button, pause and
    /// resume of its vCPUs in KVM), or SIGKILL; a container's init gets its
    /// power-off signal, everything in it SIGKILL, or its cgroup is frozen
    /// or thawed.
    fn act(guest: &Guest, act: Act) -> Result<(), GuestError> {
        match guest.process.as_ref() {
            None => Err(GuestError::WrongState {
                kind: guest.spec.kind(),
                name: guest.spec.name().to_string(),
                state: VmState::Stopped,
                event: Event::Kill,
            }),
            Some(p) => p.act(act).map_err(GuestError::from),
        }
    }

    /// `stop`: the guests `targets` (names or IDs, each checked against
    /// `peer`, resolved and deduplicated: at most one power button per
    /// guest, however often a request names it), all from this thread:
    /// every power button first, then, with `wait`, one wait for all. A
    /// target that fails does not keep the others from stopping; its error
    /// is the answer.
    fn stop_many(
        self: &Arc<Self>,
        peer: &Peer,
        targets: &[String],
        force: bool,
        wait: bool,
        gone: &dyn Fn() -> bool,
    ) -> Result<String, GuestError> {
        let mut names: Vec<String> = Vec::new();
        for t in targets {
            self.authorize(peer, t, "stop")?;
            let name = Self::find(&mut self.lock(), t)?.spec.name().to_string();
            if !names.contains(&name) {
                names.push(name);
            }
        }
        let mut lines = Vec::new();
        let mut pressed = Vec::new();
        let mut failed = None;
        for name in names {
            match self.stop_vm(&name, force) {
                Ok((generation, line)) => {
                    pressed.push((name, generation));
                    lines.push(line);
                }
                Err(e) => failed = Some(e),
            }
        }
        if wait {
            lines.clear();
            for (name, generation) in &pressed {
                let inner = self.lock();
                lines.push(self.until_stopped(inner, name, *generation, gone));
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(lines.join("\n")),
        }
    }

    /// Asks a guest to stop (power button) or kills it; returns the
    /// generation of the run that stops and a line for the user. A guest
    /// that ignores the button is killed after the shutdown timeout.
    fn stop_vm(self: &Arc<Self>, target: &str, force: bool) -> Result<(u64, String), GuestError> {
        let mut inner = self.lock();
        let guest = Self::find(&mut inner, target)?;
        let generation = guest.generation;
        let name = guest.spec.name().to_string();
        let kind = guest.spec.kind();
        if force {
            guest::step(&guest.spec, guest.state, Event::Kill)?;
            Self::act(guest, Act::Kill)?;
        } else if guest.state != VmState::Stopping {
            let to = guest::step(&guest.spec, guest.state, Event::PowerButton)?;
            Self::act(guest, Act::PowerButton)?;
            if guest.state == VmState::Paused {
                Self::act(guest, Act::Resume)?;
            }
            guest.state = to;
            // kapsel run stops the VM itself after the timeout; this is the
            // backstop for a VM process that does not.
            let daemon = self.clone();
            let deadline = self.opts.shutdown_timeout + Duration::from_secs(5);
            let n = name.clone();
            let _ = std::thread::Builder::new()
                .name("stop-timer".into())
                .spawn(move || {
                    let mut inner = daemon.lock();
                    let until = Instant::now() + deadline;
                    loop {
                        let Some(guest) = Self::run_of(&mut inner, &n, generation) else {
                            return;
                        };
                        if guest.process.is_none() {
                            return;
                        }
                        let now = Instant::now();
                        if now >= until {
                            tracing::warn!("{n}: did not stop in time, killing it");
                            let _ = Self::act(guest, Act::Kill);
                            return;
                        }
                        inner = daemon
                            .changed
                            .wait_timeout(inner, until - now)
                            .unwrap_or_else(|e| e.into_inner())
                            .0;
                    }
                });
        } else {
            guest::step(&guest.spec, guest.state, Event::PowerButton)?;
        }
        Ok((
            generation,
            if force {
                format!("{kind} {name} killed")
            } else {
                format!("stopping {kind} {name}")
            },
        ))
    }

    /// Waits (releasing the lock) until run `generation` of the guest
    /// `name` has ended, or until `gone` (the client hung up); says how it
    /// ended.
    fn until_stopped(
        &self,
        mut inner: MutexGuard<'_, Inner>,
        name: &str,
        generation: u64,
        gone: &dyn Fn() -> bool,
    ) -> String {
        /// How often a waiting request looks whether its client is gone.
        const HANGUP_CHECK: Duration = Duration::from_secs(1);
        loop {
            match inner.guests.iter().find(|g| g.spec.name() == name) {
                Some(g) if g.generation == generation && g.state != VmState::Stopped => {}
                Some(g) => {
                    return format!(
                        "{} {name} stopped: {}",
                        g.spec.kind(),
                        g.last_exit.as_deref().unwrap_or("stopped")
                    )
                }
                None => return format!("{name} stopped; it was removed from the configuration"),
            }
            if gone() {
                return format!("{name}: the client left before it stopped");
            }
            inner = self
                .changed
                .wait_timeout(inner, HANGUP_CHECK)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// `wait`: until the guest's current run ends.
    fn wait_vm(&self, target: &str, gone: &dyn Fn() -> bool) -> Result<String, GuestError> {
        let mut inner = self.lock();
        let guest = Self::find(&mut inner, target)?;
        guest::step(&guest.spec, guest.state, Event::Watch)?;
        let (name, generation) = (guest.spec.name().to_string(), guest.generation);
        Ok(self.until_stopped(inner, &name, generation, gone))
    }

    fn status(&self, target: Option<&str>) -> Result<Vec<VmStatus>, GuestError> {
        let mut inner = self.lock();
        if let Some(t) = target {
            Self::find(&mut inner, t)?;
        }
        let by_id = target.and_then(|t| t.parse::<u32>().ok());
        let chosen: Vec<&Guest> = inner
            .guests
            .iter()
            .filter(|g| target.is_none_or(|t| g.spec.name() == t || Some(g.id) == by_id))
            .collect();
        let mut list: Vec<VmStatus> = chosen
            .iter()
            .map(|g| {
                let common = g.spec.common();
                VmStatus {
                    id: g.id,
                    name: common.name.clone(),
                    pid: g.process.as_ref().map(|p| p.pid),
                    vcpus: guest::ops(&g.spec).vcpus(),
                    max_mem: common.memory.map_or(0, |m| m.bytes()),
                    // Asked below, without the lock.
                    cur_mem: None,
                    kind: g.spec.kind().to_string(),
                    owner: describe_owner(common.owner.as_ref()),
                    state: g.state,
                    last_exit: g.last_exit.clone(),
                    enabled: g.configured && common.enabled,
                    detached: Vec::new(),
                }
            })
            .collect();
        let running: Vec<(String, GuestKind, Proc)> = chosen
            .iter()
            .filter_map(|g| Some((g.spec.name().to_string(), g.spec.kind(), g.process.clone()?)))
            .collect();
        drop(inner);
        // A VM process's resident memory, a container's cgroup figure
        // from its monitor: asked without the lock.
        for (name, kind, p) in running {
            if let Some(st) = list.iter_mut().find(|st| st.name == name) {
                st.cur_mem = match kind {
                    GuestKind::Vm => vmproc::resident_bytes(p.pid),
                    GuestKind::Container => p.memory(),
                };
            }
        }
        // Netlink lookups, outside the lock: only for the guest asked about.
        let only = target.and_then(|_| list.first().map(|st| st.name.clone()));
        for (guest, what) in self.detached_ports(only.as_deref()) {
            if let Some(st) = list.iter_mut().find(|st| st.name == guest) {
                st.detached.push(what);
            }
        }
        Ok(list)
    }

    /// Checks that `peer` may act on the guest `target`.
    fn authorize(&self, peer: &Peer, target: &str, what: &str) -> Result<(), GuestError> {
        let mut inner = self.lock();
        let guest = Self::find(&mut inner, target)?;
        let owner = guest.spec.common().owner.as_ref();
        if peer.may_control(owner) {
            Ok(())
        } else {
            Err(GuestError::Denied(format!(
                "{} may not {what} {} {}: it belongs to {}; ask root or its owner",
                peer.describe(),
                guest.spec.kind(),
                guest.spec.name(),
                describe_owner(owner)
            )))
        }
    }

    fn require_root(peer: &Peer, what: &str) -> Result<(), GuestError> {
        if peer.is_root() {
            Ok(())
        } else {
            Err(GuestError::Denied(format!("only root may {what}")))
        }
    }

    /// `kapsel start`: a configured VM, with vmctl's overrides; an instance
    /// of one (`-t`); or a new VM described by the options (`-b`).
    fn start(self: &Arc<Self>, peer: &Peer, req: &StartRequest) -> Result<String, GuestError> {
        let invalid = GuestError::Invalid;
        let mut inner = self.lock();
        let known = inner
            .guests
            .iter()
            .any(|g| g.spec.name() == req.name || req.name.parse::<u32>().ok() == Some(g.id));
        let overrides = req.kernel.is_some()
            || !req.disks.is_empty()
            || req.memory.is_some()
            || req.interfaces.is_some()
            || req.local_interface
            || req.switch.is_some()
            || req.cdrom.is_some();
        if req.cdrom.is_some() {
            return Err(invalid(
                "cdrom images are not supported yet; boot a kernel with -b".into(),
            ));
        }
        if let Some(template) = &req.template {
            if known {
                let kind = Self::find(&mut inner, &req.name)?.spec.kind();
                return Err(invalid(format!(
                    "{kind} {} exists; give the new instance another name",
                    req.name
                )));
            }
            kapsel_config::validate_name(&req.name)
                .map_err(|e| invalid(format!("{e}: choose another name for the instance")))?;
            if inner.config.container(template).is_some() {
                return Err(invalid(format!(
                    "{template} is a container; -t makes instances of VMs"
                )));
            }
            let parent = inner
                .config
                .effective_vm(template)
                .or_else(|| {
                    inner
                        .guests
                        .iter()
                        .find(|g| g.spec.name() == template)
                        .and_then(|g| g.spec.as_vm().cloned())
                })
                .ok_or_else(|| {
                    GuestError::NotFound(format!("{template} (no VM to make an instance of)"))
                })?;
            // The user files of a parent that is itself a user's instance
            // stay that user's in its instances.
            let parent_open_as = inner
                .guests
                .iter()
                .find(|g| g.spec.name() == template && !g.configured)
                .and_then(|g| g.open_as.clone());
            let allow = parent.allow_instance.clone();
            if !peer.is_root() {
                let permitted = allow
                    .as_ref()
                    .and_then(|a| a.owner.as_ref())
                    .or(parent.common.owner.as_ref())
                    .is_some_and(|o| peer.is(o));
                if !permitted {
                    return Err(GuestError::Denied(format!(
                        "{} may not make instances of vm {template}; its `allow instance` block must name you as owner",
                        peer.describe()
                    )));
                }
                let a = allow.clone().unwrap_or_default();
                let refused = [
                    (req.kernel.is_some(), a.boot, "boot"),
                    (!req.disks.is_empty(), a.disk, "disk"),
                    (req.memory.is_some(), a.memory, "memory"),
                    (
                        req.interfaces.is_some() || req.switch.is_some() || req.local_interface,
                        a.interface,
                        "interface",
                    ),
                ];
                if let Some((_, _, what)) = refused.iter().find(|(asked, ok, _)| *asked && !ok) {
                    return Err(GuestError::Invalid(format!(
                        "vm {template} does not allow instances to change `{what}`; add it to its `allow instance` block"
                    )));
                }
                // vmd: an instance of an instance needs `instance` in the
                // allow list the parent inherited.
                if parent.instance_of.is_some() && !a.instance {
                    return Err(GuestError::Denied(format!(
                        "{} may not make instances of vm {template}: it is itself an instance and does not allow instances of its own; \
                         add `instance` to the `allow instance` block it inherits",
                        peer.describe()
                    )));
                }
                let made = inner
                    .guests
                    .iter()
                    .filter(|g| {
                        !g.configured && g.open_as.as_ref().is_some_and(|u| u.uid == peer.uid)
                    })
                    .count();
                if made >= MAX_INSTANCES_PER_USER {
                    return Err(GuestError::Denied(format!(
                        "{} has {made} instances, the most one user may have; \
                         stopped ones are forgotten at the next `kapsel reload` (ask root), \
                         or start one of them again",
                        peer.describe()
                    )));
                }
            }
            let mut spec = parent;
            spec.common.name = req.name.clone();
            spec.instance_of = Some(template.clone());
            spec.disks.clear();
            // Inherited, as in vmd: it says whether instances of this
            // instance may be made, and what they may change.
            spec.common.owner = if peer.is_root() {
                spec.common.owner
            } else {
                Some(owner_of(peer))
            };
            // Which files of the new VM the requester named (opened with
            // that user's rights); root's own choices are opened as root.
            let inherited = parent_open_as.as_ref();
            let open_as = if peer.is_root() {
                inherited.map(|p| vmproc::OpenAs {
                    kernel: p.kernel && req.kernel.is_none(),
                    disks: Vec::new(),
                    ..p.clone()
                })
            } else {
                Some(vmproc::OpenAs {
                    uid: peer.uid,
                    gid: peer.gid,
                    groups: peer.groups.clone(),
                    kernel: req.kernel.is_some() || inherited.is_some_and(|p| p.kernel),
                    initrd: inherited.is_some_and(|p| p.initrd),
                    disks: (0..req.disks.len()).collect(),
                })
            };
            apply_overrides(&mut spec, req)?;
            self.add_adhoc(&mut inner, spec, open_as);
        } else if !known {
            if req.kernel.is_none() && inner.removed.contains(&req.name) {
                return Err(GuestError::Removed(req.name.clone()));
            }
            Self::require_root(peer, "create VMs that vm.conf does not declare")?;
            kapsel_config::validate_name(&req.name)
                .map_err(|e| invalid(format!("{e}: choose another name")))?;
            if req.kernel.is_none() {
                return Err(GuestError::Invalid(format!(
                    "no VM named {} in the configuration; declare it in vm.conf or give a kernel with -b",
                    req.name
                )));
            }
            let mut spec = VmSpec::new(req.name.clone());
            spec.common.memory = Some(kapsel_config::DEFAULT_VM_MEMORY);
            spec.common.cpus = Some(kapsel_config::DEFAULT_VM_CPUS);
            apply_overrides(&mut spec, req)?;
            self.add_adhoc(&mut inner, spec, None);
        } else {
            drop(inner);
            self.authorize(peer, &req.name, "start")?;
            inner = self.lock();
            if overrides {
                if Self::find(&mut inner, &req.name)?.spec.as_vm().is_none() {
                    return Err(GuestError::Invalid(format!(
                        "{} is a container: start options (-b, -d, -m, -i, -L, -n, -r) are for VMs; change it in vm.conf",
                        req.name
                    )));
                }
                if !peer.is_root() {
                    return Err(GuestError::Denied("only root may change a configured VM with start options; use -t to make an instance".into()));
                }
                let vm = Self::find(&mut inner, &req.name)?;
                if let (VmState::Stopped, GuestSpec::Vm(spec)) = (vm.state, &mut vm.spec) {
                    apply_overrides(spec, req)?;
                    // Root's -b replaces a user's kernel; root's disks
                    // are added after the user's, opened as root.
                    if let Some(user) = vm.open_as.as_mut().filter(|_| req.kernel.is_some()) {
                        user.kernel = false;
                    }
                }
            }
        }
        drop(inner);
        self.start_vm(&req.name)
    }

    fn add_adhoc(&self, inner: &mut Inner, spec: VmSpec, open_as: Option<vmproc::OpenAs>) {
        let id = inner.next_id;
        inner.next_id += 1;
        let mut guest = Guest::new(id, GuestSpec::Vm(spec), false);
        guest.open_as = open_as;
        inner.guests.push(guest);
    }

    /// Reads the configuration (and files added by `load`) again.
    pub fn reload(self: &Arc<Self>) -> Result<String, GuestError> {
        let loaded = self.lock().loaded.clone();
        let config = self.read_config(&loaded)?;
        let added = self.apply_config(config);
        self.reconcile_switches()?;
        let n = added.len();
        self.start_enabled(added);
        Ok(format!("configuration reloaded; {n} new guest(s) started"))
    }

    /// vm.conf and `loaded`, read and checked as one configuration.
    fn read_config(&self, loaded: &[PathBuf]) -> Result<Config, GuestError> {
        let paths: Vec<&std::path::Path> = std::iter::once(self.opts.config.as_path())
            .chain(loaded.iter().map(PathBuf::as_path))
            .collect();
        load_configs(&paths, &self.opts.defines).map_err(GuestError::Invalid)
    }

    /// `kapsel load FILE`: FILE is read and checked together with vm.conf
    /// and the files loaded before (so its VMs may use their switches and
    /// templates), and the whole takes effect as on a reload.
    fn load(self: &Arc<Self>, path: &str) -> Result<String, GuestError> {
        let path = PathBuf::from(path);
        let mut loaded = self.lock().loaded.clone();
        if loaded.contains(&path) {
            return Err(GuestError::Invalid(format!(
                "{} is loaded already; `kapsel reload` reads it again",
                path.display()
            )));
        }
        loaded.push(path.clone());
        let config = self.read_config(&loaded)?;
        {
            let mut inner = self.lock();
            if !inner.loaded.contains(&path) {
                inner.loaded.push(path.clone());
            }
        }
        let added = self.apply_config(config);
        self.reconcile_switches()?;
        let n = added.len();
        self.start_enabled(added);
        Ok(format!(
            "loaded {}; {n} new guest(s) started",
            path.display()
        ))
    }

    fn running_names(&self) -> Vec<String> {
        self.lock()
            .guests
            .iter()
            .filter(|g| g.state != VmState::Stopped)
            .map(|g| g.spec.name().to_string())
            .collect()
    }

    /// Ends the daemon's work. With `stop_guests`, stops every guest (the
    /// power button, then after the timeout a kill) and returns once all
    /// have stopped; without, the guests run on under their monitors, with
    /// their switches and NAT, for the next daemon to adopt.
    pub fn shutdown(self: &Arc<Self>) {
        self.lock().shutting_down = true;
        let names = self.running_names();
        if !self.opts.stop_guests && !names.is_empty() {
            tracing::info!(
                "{} guest(s) keep running for the next kapseld to adopt: {}",
                names.len(),
                names.join(", ")
            );
            self.save_state();
            return;
        }
        if !names.is_empty() {
            tracing::info!("stopping {} VM(s)", names.len());
        }
        // Every running guest's power button, also of a guest whose start
        // was under way (it runs once its monitor has started it).
        let mut pressed: Vec<(String, u64)> = Vec::new();
        let mut inner = self.lock();
        loop {
            let todo: Vec<String> = inner
                .guests
                .iter()
                .filter(|v| matches!(v.state, VmState::Running | VmState::Paused))
                .filter(|v| !pressed.contains(&(v.spec.name().to_string(), v.generation)))
                .map(|v| v.spec.name().to_string())
                .collect();
            if !todo.is_empty() {
                drop(inner);
                for name in todo {
                    if let Ok((generation, _)) = self.stop_vm(&name, false) {
                        pressed.push((name, generation));
                    }
                }
                inner = self.lock();
                continue;
            }
            if inner.guests.iter().all(|v| v.state == VmState::Stopped) {
                break;
            }
            inner = self.changed.wait(inner).unwrap_or_else(|e| e.into_inner());
        }
        let retired = std::mem::take(&mut inner.retired_switches);
        let switches: Vec<_> = inner.created_switches.drain(..).chain(retired).collect();
        let local_network = std::mem::take(&mut inner.local_network);
        drop(inner); // netlink and nft outside the state lock
        for sw in switches {
            if let Err(e) = net::remove_switch(&sw) {
                tracing::warn!("{e}");
            }
        }
        if local_network {
            if let Err(e) = net::LocalNetwork::remove().and_then(|()| net::remove_firewall()) {
                tracing::warn!("{e}");
            }
        }
        self.save_state();
    }

    /// Makes the host's switches what the configuration says (at startup,
    /// reload, `load` and `reset switches`): the bridges of the enabled
    /// switches exist (made again if deleted), switches the configuration
    /// no longer has go once no running guest uses them, and every running
    /// guest's switch port is a port of its bridge again, locked and up.
    /// Netlink and `nft` run outside the state lock.
    fn reconcile_switches(&self) -> Result<(), String> {
        let _one = self.reconciling.lock().unwrap_or_else(|e| e.into_inner());
        let switches: Vec<_> = self
            .lock()
            .config
            .switches
            .iter()
            .filter(|s| s.enabled)
            .cloned()
            .collect();
        let mut errors = Vec::new();
        let mut created = Vec::new();
        for spec in switches {
            match net::ensure_switch(&spec) {
                Ok(sw) => {
                    if sw.created {
                        tracing::info!("switch {}: bridge {} created", sw.name, sw.bridge);
                        created.push((spec, sw.bridge));
                    } else {
                        tracing::info!("switch {}: bridge {}", sw.name, sw.bridge);
                    }
                }
                Err(e) => errors.push(e.to_string()),
            }
        }
        {
            let mut inner = self.lock();
            for (spec, bridge) in created {
                let known = inner
                    .created_switches
                    .iter()
                    .any(|s| net::bridge_name(s).is_ok_and(|b| b == bridge));
                if !known {
                    inner.created_switches.push(spec);
                }
            }
        }
        self.retire_switches_locked(true);
        self.reattach_ports();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    /// Removes the switches a reload took out of the configuration whose
    /// bridges no running guest uses any more ([`net::remove_switch`]: a
    /// bridge Kapsel made is deleted, one the administrator made only
    /// loses its `add` ports). A bridge still in use stays, with its
    /// guests on it, until the last of them stops (Incus likewise refuses
    /// to delete a network instances use); `announce` logs that.
    fn retire_switches(&self, announce: bool) {
        let _one = self.reconciling.lock().unwrap_or_else(|e| e.into_inner());
        self.retire_switches_locked(announce);
    }

    /// [`Daemon::retire_switches`] with `reconciling` held.
    fn retire_switches_locked(&self, announce: bool) {
        let (remove, stay) = {
            let mut inner = self.lock();
            let mut remove = Vec::new();
            let mut stay = Vec::new();
            for spec in std::mem::take(&mut inner.retired_switches) {
                let Ok(bridge) = net::bridge_name(&spec) else {
                    continue;
                };
                let users: Vec<String> = inner
                    .guests
                    .iter()
                    .filter(|v| {
                        v.net
                            .iter()
                            .any(|a| a.port.as_ref().is_some_and(|p| p.bridge == bridge))
                    })
                    .map(|v| v.spec.name().to_string())
                    .collect();
                if users.is_empty() {
                    inner
                        .created_switches
                        .retain(|s| net::bridge_name(s).ok().as_deref() != Some(&bridge));
                    remove.push((spec, bridge));
                } else {
                    stay.push((spec.name.clone(), bridge, users));
                    inner.retired_switches.push(spec);
                }
            }
            (remove, stay)
        };
        for (spec, bridge) in remove {
            match net::remove_switch(&spec) {
                Ok(()) => tracing::info!(
                    "switch {}: no longer configured, bridge {bridge} removed (if Kapsel made it)",
                    spec.name
                ),
                Err(e) => tracing::warn!("{e}"),
            }
        }
        if announce {
            for (name, bridge, users) in stay {
                tracing::warn!(
                    "switch {name}: no longer configured, but {} still on its bridge {bridge}; \
                     the bridge stays, with their interfaces on it, until they stop",
                    users.join(", ")
                );
            }
        }
    }

    /// The switch ports of the running guests.
    fn running_ports(&self) -> Vec<RunningPort> {
        self.lock()
            .guests
            .iter()
            .filter(|v| v.process.is_some())
            .flat_map(|v| {
                v.net.iter().filter_map(|a| {
                    Some(RunningPort {
                        guest: v.spec.name().to_string(),
                        generation: v.generation,
                        kind: a.kind,
                        port: a.port.clone()?,
                    })
                })
            })
            .collect()
    }

    /// Puts every running guest's switch port back on its bridge, locked
    /// and up ([`net::reattach_port`]), outside the state lock.
    fn reattach_ports(&self) {
        for rp in self.running_ports() {
            let (guest, port) = (&rp.guest, &rp.port);
            match net::reattach_port(port) {
                Ok(net::PortState::Detached) => tracing::info!(
                    "{guest}: interface {} is a port of bridge {} again",
                    port.ifname,
                    port.bridge
                ),
                Ok(net::PortState::NoBridge) => tracing::warn!(
                    "{guest}: interface {} stays off the network: its bridge {} is gone \
                     (its switch is no longer configured, or could not be made); it joins \
                     a switch at the guest's next start",
                    port.ifname,
                    port.bridge
                ),
                Ok(net::PortState::Attached | net::PortState::Gone) => {}
                Err(e) => tracing::warn!("{guest}: {e}"),
            }
            self.undo_if_stopped(&rp);
        }
    }

    /// After [`net::reattach_port`] outside the lock: if the guest stopped
    /// meanwhile (its interfaces released), what the reattachment did
    /// to a surviving interface (an administrator's persistent tap) is
    /// released again, under the lock so that a new run of the guest,
    /// which may reuse the name, cannot interleave.
    fn undo_if_stopped(&self, rp: &RunningPort) {
        let inner = self.lock();
        let still = inner.guests.iter().any(|v| {
            v.spec.name() == rp.guest && v.generation == rp.generation && v.process.is_some()
        });
        let reused = inner
            .guests
            .iter()
            .any(|v| v.net.iter().any(|a| a.ifname == rp.port.ifname));
        if !still && !reused {
            if let Err(e) = net::release_interface(&rp.port.ifname, rp.kind) {
                tracing::warn!("{}: {e}", rp.guest);
            }
        }
        drop(inner);
    }

    /// Which running guests' interfaces (of the guest `only`, if given)
    /// are not ports of their bridges: guest name -> `IFNAME (STATE)`, by
    /// netlink lookups outside the lock.
    fn detached_ports(&self, only: Option<&str>) -> Vec<(String, String)> {
        self.running_ports()
            .into_iter()
            .filter(|rp| only.is_none_or(|n| rp.guest == n))
            .filter_map(|rp| match net::port_state(&rp.port) {
                Ok(s @ (net::PortState::Detached | net::PortState::NoBridge)) => Some((
                    rp.guest,
                    format!("{} (bridge {}: {s})", rp.port.ifname, rp.port.bridge),
                )),
                _ => None,
            })
            .collect()
    }

    /// Checks every `interval` that the running guests' interfaces are
    /// ports of their bridges, and warns once when one is not (a bridge
    /// deleted or a port taken out behind the daemon's back), naming the
    /// fix. It does not repair: the administrator may be at work on the
    /// bridge; `kapsel reset switches` or a reload does. Ends with the
    /// daemon.
    pub fn watch_switches(daemon: std::sync::Weak<Daemon>, interval: Duration) {
        let mut reported: Vec<(String, String)> = Vec::new();
        loop {
            std::thread::sleep(interval);
            let Some(d) = daemon.upgrade() else { return };
            if d.lock().shutting_down {
                return;
            }
            let now = d.detached_ports(None);
            for (guest, what) in &now {
                if !reported.contains(&(guest.clone(), what.clone())) {
                    tracing::warn!(
                        "{guest}: interface {what}; was the bridge deleted or the port taken \
                         out behind kapseld's back? `kapsel reset switches` puts it back"
                    );
                }
            }
            reported = now;
        }
    }

    /// What the interfaces of a guest about to start need from the
    /// configuration, taken under the state lock so that the host work
    /// ([`Daemon::attach_one`]) runs without it. A switch the guest names
    /// that is not there or disabled is an error here.
    fn net_plan(inner: &Inner, spec: &GuestSpec) -> Result<NetPlan, GuestError> {
        let common = spec.common();
        let count = match spec {
            GuestSpec::Vm(v) => v.interface_total(),
            GuestSpec::Container(c) => c.common.interfaces.len(),
        };
        let mut interfaces = Vec::with_capacity(count);
        for index in 0..count {
            let ispec = common.interfaces.get(index).cloned().unwrap_or_default();
            let err = |e: String| GuestError::Invalid(format!("{}: {e}", common.name));
            let switch = match &ispec.switch {
                Some(name) => match inner.config.switch(name) {
                    Some(s) if s.enabled => Some(s.clone()),
                    Some(_) => {
                        return Err(err(format!(
                            "switch \"{name}\" is disabled; enable it in vm.conf"
                        )))
                    }
                    None => {
                        return Err(err(format!("no switch \"{name}\"; declare it in vm.conf")))
                    }
                },
                None => None,
            };
            interfaces.push((ispec, switch));
        }
        let g = &inner.config.globals;
        Ok(NetPlan {
            interfaces,
            local_prefix: g.local_prefix,
            local_inet6: g.local_inet6,
        })
    }

    /// Sets up the `local interface` network (NAT and forwarding) unless
    /// it is: once, outside the state lock.
    fn ensure_local_network(&self, plan: &NetPlan) -> Result<(), String> {
        let _one = self.local_setup.lock().unwrap_or_else(|e| e.into_inner());
        if self.lock().local_network {
            return Ok(());
        }
        net::LocalNetwork::ensure(plan.local_prefix, plan.local_inet6)
            .map_err(|e| e.to_string())?;
        self.lock().local_network = true;
        Ok(())
    }

    /// Creates the host side of every interface of a VM about to start:
    /// the open taps (with the guest MACs) for its process, and what to
    /// release when it stops. On failure nothing is left behind. Runs
    /// without the state lock.
    #[allow(clippy::type_complexity)]
    fn attach_interfaces(
        &self,
        plan: &NetPlan,
        name: &str,
        id: u32,
    ) -> Result<
        (
            Vec<(std::os::fd::OwnedFd, kapsel_config::MacAddr)>,
            Vec<Attachment>,
        ),
        GuestError,
    > {
        let mut taps = Vec::new();
        let mut attached: Vec<Attachment> = Vec::new();
        for index in 0..plan.interfaces.len() {
            match self.attach_one(plan, name, id, index, None) {
                Ok((tap, a)) => {
                    taps.extend(tap);
                    attached.push(a);
                }
                Err(e) => {
                    for a in attached {
                        a.release(name);
                    }
                    return Err(e);
                }
            }
        }
        Ok((taps, attached))
    }

    /// Sets up interface `index` of the guest `name`: a new tap (returned
    /// open, with the guest's MAC), or the host side `veth` of a
    /// container's pair, on its switch or as a local interface with its
    /// DHCP server. Runs without the state lock.
    #[allow(clippy::type_complexity)]
    fn attach_one(
        &self,
        plan: &NetPlan,
        name: &str,
        id: u32,
        index: usize,
        veth: Option<&str>,
    ) -> Result<
        (
            Option<(std::os::fd::OwnedFd, kapsel_config::MacAddr)>,
            Attachment,
        ),
        GuestError,
    > {
        let err = |e: String| GuestError::Host(format!("{name}: {e}"));
        let Some((ispec, switch)) = plan.interfaces.get(index) else {
            return Err(err(format!("no interface {index}")));
        };
        if ispec.local {
            self.ensure_local_network(plan).map_err(err)?;
        }
        let dns = net::host_dns_servers(std::path::Path::new("/etc/resolv.conf"));
        let req = net::InterfaceRequest {
            guest: name,
            guest_id: id,
            index: index as u32,
            spec: ispec,
            switch: switch.as_ref(),
            local_prefix: plan.local_prefix,
            dns: &dns,
        };
        let mut iface = match veth {
            Some(host) => net::attach_veth(&req, host),
            None => net::start_vm_interface(&req),
        }
        .map_err(|e| err(e.to_string()))?;
        let lease = iface.dhcp.as_ref().map(|d| d.lease().clone());
        let dhcp = match iface.dhcp.take().map(|d| self.dhcp.serve(d)).transpose() {
            Ok(d) => d,
            Err(e) => {
                let _ = net::release_interface(&iface.ifname, iface.kind);
                return Err(err(e.to_string()));
            }
        };
        let tap = iface.tap.take().map(|t| (t.into_fd(), iface.mac));
        tracing::info!("{name}: interface {} ({})", iface.ifname, iface.mac);
        let port = iface.port(ispec.up);
        Ok((
            tap,
            Attachment {
                ifname: iface.ifname,
                kind: iface.kind,
                dhcp,
                lease,
                port,
            },
        ))
    }

    /// Answers one request from `peer`.
    pub fn handle(self: &Arc<Self>, peer: &Peer, request: Request) -> Response {
        self.handle_for(peer, request, None)
    }

    /// Does one request of `peer` that needs no connection (not status,
    /// console or exec) and waits for nobody's hang-up: for callers that
    /// want the typed error (the HTTPS API maps its class to a status).
    pub fn request(self: &Arc<Self>, peer: &Peer, request: Request) -> Result<String, GuestError> {
        self.dispatch(peer, request, &|| false)
    }

    /// Answers one request from `peer` on the connection `client`: a
    /// request that waits (`wait`, `stop -w`) gives up when the client
    /// hangs up, so that it holds nothing for nobody.
    pub fn handle_for(
        self: &Arc<Self>,
        peer: &Peer,
        request: Request,
        client: Option<&UnixStream>,
    ) -> Response {
        let gone = || client.is_some_and(crate::server::hung_up);
        match self.dispatch(peer, request, &gone) {
            Ok(message) => Response::Ok { message },
            Err(e) => Response::Error {
                message: e.to_string(),
            },
        }
    }

    fn dispatch(
        self: &Arc<Self>,
        peer: &Peer,
        request: Request,
        gone: &dyn Fn() -> bool,
    ) -> Result<String, GuestError> {
        request.check().map_err(GuestError::Invalid)?;
        match request {
            Request::Start(req) => self.start(peer, &req),
            Request::Stop {
                targets,
                all,
                force,
                wait,
            } => {
                let targets = if all {
                    Self::require_root(peer, "stop every VM")?;
                    self.running_names()
                } else {
                    targets
                };
                if targets.is_empty() && !all {
                    return Err(GuestError::Invalid(
                        "name the VM to stop, or give -a for all".into(),
                    ));
                }
                self.stop_many(peer, &targets, force, wait, gone)
            }
            Request::Pause { target } => self.pause(peer, &target, true),
            Request::Unpause { target } => self.pause(peer, &target, false),
            Request::Wait { target } => {
                self.authorize(peer, &target, "wait for")?;
                self.wait_vm(&target, gone)
            }
            Request::Reload => {
                Self::require_root(peer, "reload the configuration")?;
                self.reload()
            }
            Request::Load { path } => {
                Self::require_root(peer, "load configuration files")?;
                self.load(&path)
            }
            Request::Reset { what } => {
                Self::require_root(peer, "reset the daemon's state")?;
                if matches!(what, ResetWhat::All | ResetWhat::Vms) {
                    for name in self.running_names() {
                        if let Ok((generation, _)) = self.stop_vm(&name, true) {
                            let inner = self.lock();
                            self.until_stopped(inner, &name, generation, &|| false);
                        }
                    }
                }
                if what == ResetWhat::All {
                    // Reconciles the switches too.
                    self.reload()?;
                } else if what == ResetWhat::Switches {
                    self.reconcile_switches()?;
                }
                Ok("reset done".into())
            }
            Request::Log { level } => {
                Self::require_root(peer, "change the log level")?;
                match &self.opts.set_log_level {
                    Some(set) => {
                        set(level);
                        Ok(format!("logging {level:?}").to_lowercase())
                    }
                    None => Err(GuestError::Invalid(
                        "this daemon cannot change its log level".into(),
                    )),
                }
            }
            Request::Status { .. } | Request::Console { .. } | Request::Exec { .. } => Err(
                GuestError::Host("internal error: handled by the connection".into()),
            ),
        }
    }

    /// Pauses or unpauses a guest (see [`Daemon::act`]).
    fn pause(&self, peer: &Peer, target: &str, pause: bool) -> Result<String, GuestError> {
        let (verb, event, act) = if pause {
            ("pause", Event::Pause, Act::Pause)
        } else {
            ("unpause", Event::Resume, Act::Resume)
        };
        self.authorize(peer, target, verb)?;
        let mut inner = self.lock();
        let guest = Self::find(&mut inner, target)?;
        let to = guest::step(&guest.spec, guest.state, event)?;
        Self::act(guest, act)?;
        guest.state = to;
        let said = format!("{verb}d {} {}", guest.spec.kind(), guest.spec.name());
        drop(inner);
        self.save_state();
        Ok(said)
    }

    /// `kapsel status`.
    pub fn status_response(&self, target: Option<&str>) -> Response {
        match self.status(target) {
            Ok(vms) => Response::Status { vms },
            Err(e) => Response::Error {
                message: e.to_string(),
            },
        }
    }

    /// Checks an exec request and hands the client connection to the
    /// container's monitor, which replies and relays the command.
    pub fn exec_in(
        &self,
        peer: &Peer,
        target: &str,
        argv: &[String],
        tty: Option<(u16, u16)>,
        client: &UnixStream,
    ) -> Result<(), GuestError> {
        self.authorize(peer, target, "run commands in")?;
        if argv.is_empty() {
            return Err(GuestError::Invalid(
                "give the command to run: kapsel exec NAME -- CMD [ARG...]".into(),
            ));
        }
        let mut inner = self.lock();
        let guest = Self::find(&mut inner, target)?;
        let name = guest.spec.name().to_string();
        let process = match (&guest.process, guest.spec.kind()) {
            (Some(p), GuestKind::Container) => p.clone(),
            (None, GuestKind::Container) => {
                return Err(GuestError::Invalid(format!(
                    "container {name} is not running; start it with `kapsel start {name}`"
                )))
            }
            (_, GuestKind::Vm) => {
                return Err(GuestError::Invalid(format!(
                    "{name} is a VM; `kapsel exec` runs commands in containers (use `kapsel console {name}`)"
                )))
            }
        };
        drop(inner);
        process.exec(client, argv, tty).map_err(GuestError::from)
    }

    /// Checks a console request: a running guest's console is its
    /// monitor's; a stopped guest's last output is the daemon's.
    pub fn console_for(&self, peer: &Peer, target: &str) -> Result<ConsoleRoute, GuestError> {
        self.authorize(peer, target, "open the console of")?;
        let mut inner = self.lock();
        let guest = Self::find(&mut inner, target)?;
        if let Some(p) = &guest.process {
            return Ok(ConsoleRoute::Monitor(p.clone()));
        }
        guest
            .console
            .may_attach(peer.is_root())
            .map_err(GuestError::Denied)?;
        if guest.console.history().is_empty() {
            let name = guest.spec.name();
            return Err(GuestError::Invalid(format!(
                "{} {name} is not running; start it with `kapsel start -c {name}`",
                guest.spec.kind(),
            )));
        }
        Ok(ConsoleRoute::History(guest.console.clone()))
    }

    /// The state file's contents now: the running guests and the host
    /// resources the daemons made.
    fn state_file(inner: &Inner) -> StateFile {
        StateFile {
            version: state::STATE_VERSION,
            next_id: inner.next_id,
            created_switches: inner.created_switches.clone(),
            local_network: inner.local_network,
            guests: inner
                .guests
                .iter()
                .filter_map(|g| {
                    let p = g.process.as_ref()?;
                    let mut r = record_of(g, g.generation, &p.paths, &g.net);
                    r.pid = p.pid;
                    r.monitor_pid = p.monitor_pid;
                    Some(r)
                })
                .collect(),
        }
    }

    /// Writes the state file (atomically) as it is now. Concurrent writers
    /// are ordered: an older picture never overwrites a newer one.
    pub(crate) fn save_state(&self) {
        let (seq, picture) = {
            let mut inner = self.lock();
            inner.state_seq += 1;
            (inner.state_seq, Self::state_file(&inner))
        };
        let mut written = self.state_writes.lock().unwrap_or_else(|e| e.into_inner());
        if *written > seq {
            return;
        }
        if let Err(e) = state::save(&self.opts.state_dir, &picture) {
            tracing::error!(
                "state file {}: {e}; a daemon started after this one cannot adopt the guests",
                state::path(&self.opts.state_dir).display()
            );
        }
        *written = seq;
    }

    /// Adopts the guests a previous daemon left running: every monitor
    /// that answers in `STATE_DIR/run/` (with the record the daemon gave
    /// it, so a daemon killed between starting a guest and writing its
    /// state file loses nothing) and every guest of the state file. Each
    /// whose monitor answers runs again under this daemon, with its
    /// interfaces, DHCP servers and console; each that ended meanwhile is
    /// reported and its interfaces released.
    fn adopt(self: &Arc<Self>, saved: Option<StateFile>) {
        let saved = saved.unwrap_or(StateFile {
            version: state::STATE_VERSION,
            next_id: 1,
            created_switches: Vec::new(),
            local_network: false,
            guests: Vec::new(),
        });
        let mut supervise = Vec::new();
        {
            let mut inner = self.lock();
            inner.next_id = inner.next_id.max(saved.next_id);
            let configured: Vec<String> = inner
                .config
                .switches
                .iter()
                .filter(|s| s.enabled)
                .filter_map(|s| net::bridge_name(s).ok())
                .collect();
            for sw in saved.created_switches {
                let b = net::bridge_name(&sw).ok();
                if !inner
                    .created_switches
                    .iter()
                    .any(|s| net::bridge_name(s).ok() == b)
                {
                    // A switch removed from vm.conf while no daemon ran:
                    // its bridge goes once no adopted guest uses it.
                    if !b.as_ref().is_some_and(|b| configured.contains(b)) {
                        inner.retired_switches.push(sw.clone());
                    }
                    inner.created_switches.push(sw);
                }
            }
            inner.local_network |= saved.local_network;
        }
        // Every guest that may have a monitor or a report: the state
        // file's, and whatever the run directory holds.
        let mut names: Vec<String> = saved
            .guests
            .iter()
            .map(|g| g.spec.common.name.clone())
            .collect();
        if let Ok(entries) = std::fs::read_dir(monitor::run_dir(&self.opts.state_dir)) {
            for e in entries.flatten() {
                let file = e.file_name().to_string_lossy().into_owned();
                for ext in [".sock", ".exit"] {
                    if let Some(n) = file.strip_suffix(ext) {
                        if kapsel_config::validate_name(n).is_ok() && !names.iter().any(|x| x == n)
                        {
                            names.push(n.to_string());
                        }
                    }
                }
            }
        }
        for name in names {
            let from_file = saved
                .guests
                .iter()
                .find(|g| g.spec.common.name == name)
                .cloned();
            let paths = monitor::Paths::of(&self.opts.state_dir, &name);
            let probe = monitor::Handle {
                name: name.clone(),
                paths: paths.clone(),
                pid: 0,
                monitor_pid: 0,
            };
            let alive = match probe.hello() {
                Ok(monitor::MonitorReply::Info {
                    pid,
                    monitor,
                    paused,
                    record,
                    ..
                }) => {
                    // The monitor's record is the newest (the state file
                    // may not have caught up with the last start).
                    let newest = match (record, &from_file) {
                        (Some(r), Some(f)) if f.generation > r.generation => Some(f.clone()),
                        (Some(r), _) => Some(*r),
                        (None, f) => f.clone(),
                    };
                    if newest.is_none() {
                        // A monitor that answers but that no record
                        // describes (none can be made so): its guest would
                        // run unmanaged.
                        tracing::warn!(
                            "{name}: a monitor (guest pid {pid}) that neither it nor the state \
                             file describes; its guest is stopped"
                        );
                        let _ = probe.act(Act::Kill);
                        probe.watch();
                    }
                    newest.map(|mut g| {
                        g.pid = pid;
                        g.monitor_pid = monitor;
                        g.paths = paths.clone();
                        (g, paused)
                    })
                }
                Err(monitor::MonitorError::Protocol { what, .. }) => {
                    // Its guest runs, under a monitor this daemon cannot
                    // drive: leave both (and their interfaces) alone.
                    tracing::error!(
                        "{name}: its monitor answered {what}; it is left running unmanaged: \
                         stop it with the Kapsel version that started it"
                    );
                    continue;
                }
                _ => None,
            };
            let Some((g, paused)) = alive else {
                let kind = match &from_file {
                    Some(g) if g.container.is_some() => "container",
                    _ => "guest",
                };
                let note = monitor::read_exit(&paths).unwrap_or(ExitNote {
                    reason: "ended while no daemon ran (no report)".into(),
                    failure: true,
                });
                tracing::info!(
                    "{kind} {name}: ended while no daemon ran: {}",
                    crate::proto::log_safe(&note.reason)
                );
                let history = monitor::collect_leftovers(&paths);
                let _ = std::fs::remove_file(&paths.socket);
                for i in from_file.iter().flat_map(|g| &g.net) {
                    if let Err(e) = net::release_interface(&i.ifname, i.kind) {
                        tracing::warn!("{name}: {e}");
                    }
                }
                let mut inner = self.lock();
                if let Some(vm) = inner.guests.iter_mut().find(|v| v.spec.name() == name) {
                    vm.last_exit = Some(note.reason);
                    vm.console = Console::ended_with(&history);
                }
                continue;
            };
            let spec = g.guest_spec();
            let kind = spec.kind();
            let handle = monitor::Handle {
                name: name.clone(),
                paths: g.paths.clone(),
                pid: g.pid,
                monitor_pid: g.monitor_pid,
            };
            let mut net = Vec::new();
            for i in g.net {
                let dhcp = i.dhcp.clone().and_then(|lease| {
                    match net::DhcpServer::bind(&i.ifname, lease).and_then(|d| self.dhcp.serve(d)) {
                        Ok(d) => Some(d),
                        Err(e) => {
                            tracing::warn!("{name}: DHCP on {}: {e}", i.ifname);
                            None
                        }
                    }
                });
                net.push(Attachment {
                    ifname: i.ifname,
                    kind: i.kind,
                    dhcp,
                    lease: i.dhcp,
                    port: i.port,
                });
            }
            // A daemon killed between a container's start and its veth's
            // attachment left it off its switch: attach it now (netlink
            // outside the state lock).
            if let GuestSpec::Container(ct) = &spec {
                if net.is_empty() && !ct.common.interfaces.is_empty() {
                    let plan = Self::net_plan(&self.lock(), &spec);
                    let host = format!("kct{}-0", g.id);
                    match plan.and_then(|p| self.attach_one(&p, &name, g.id, 0, Some(&host))) {
                        Ok((_, a)) => net.push(a),
                        Err(e) => tracing::warn!("container {name}: {e}"),
                    }
                }
            }
            let state = match g.state {
                _ if paused => VmState::Paused,
                VmState::Stopped | VmState::Starting => VmState::Running,
                s => s,
            };
            let mut inner = self.lock();
            let existing = inner.guests.iter().position(|v| v.spec.name() == name);
            let idx = match existing {
                Some(i) => i,
                None => {
                    let mut guest = Guest::new(g.id, spec, false);
                    guest.open_as = g.open_as.clone();
                    // Declared when it started, gone from vm.conf now.
                    guest.removed = g.configured;
                    inner.guests.push(guest);
                    inner.guests.len() - 1
                }
            };
            let vm = &mut inner.guests[idx];
            vm.id = g.id;
            vm.generation = g.generation;
            vm.state = state;
            vm.net = net;
            vm.process = Some(handle.clone());
            if vm.open_as.is_none() {
                vm.open_as = g.open_as;
            }
            drop(inner);
            tracing::info!("{kind} {name}: adopted, pid {} ({state})", g.pid);
            supervise.push((name, g.generation, handle));
        }
        // Ids stay unique: a configured guest may have got the id an
        // adopted one holds.
        {
            let mut inner = self.lock();
            let mut seen = std::collections::HashSet::new();
            let max = inner.guests.iter().map(|v| v.id).max().unwrap_or(0);
            let mut next = inner.next_id.max(max + 1);
            let adopted: Vec<u32> = inner
                .guests
                .iter()
                .filter(|v| v.process.is_some())
                .map(|v| v.id)
                .collect();
            for id in &adopted {
                seen.insert(*id);
            }
            for vm in inner.guests.iter_mut().filter(|v| v.process.is_none()) {
                if !seen.insert(vm.id) {
                    vm.id = next;
                    next += 1;
                }
            }
            inner.next_id = next;
        }
        for (name, generation, handle) in supervise {
            if let Err(e) = self.supervise(name.clone(), generation, handle) {
                tracing::error!("{name}: {e}");
            }
        }
    }
}

/// The state file's interface records of a guest's attachments.
fn interface_records(net: &[Attachment]) -> Vec<InterfaceRecord> {
    net.iter()
        .map(|a| InterfaceRecord {
            ifname: a.ifname.clone(),
            kind: a.kind,
            port: a.port.clone(),
            dhcp: a.lease.clone(),
        })
        .collect()
}

/// The record of run `generation` of `guest` (pids not filled in).
fn record_of(
    guest: &Guest,
    generation: u64,
    paths: &monitor::Paths,
    net: &[Attachment],
) -> GuestRecord {
    let (spec, container) = GuestRecord::spec_fields(&guest.spec);
    GuestRecord {
        id: guest.id,
        generation,
        configured: guest.configured,
        spec,
        container,
        open_as: guest.open_as.clone(),
        state: match guest.state {
            VmState::Stopped | VmState::Starting => VmState::Running,
            s => s,
        },
        pid: 0,
        monitor_pid: 0,
        paths: paths.clone(),
        net: interface_records(net),
    }
}

/// Where a console request goes.
pub enum ConsoleRoute {
    /// A running guest's monitor serves it.
    Monitor(Proc),
    /// A stopped guest's last output, kept by the daemon.
    History(Console),
}

/// How long `start` waits for a VM process to open its resources before
/// it replies "started" all the same (a user's disk on a slow network
/// file system, a FIFO that blocks its open).
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// The most instances one non-root user may have (running or stopped):
/// each costs the host memory, interfaces and a process while it runs,
/// and the daemon's memory while it is known. vmd has no such limit.
pub const MAX_INSTANCES_PER_USER: usize = 16;

/// Makes the state directory and its `vms/` (the VMs' logs: command lines,
/// disk paths) exist, closed to other users, and closes existing ones
/// made by older releases. The state directory is 0711, as Incus keeps
/// /var/lib/incus: others may pass through it (an unprivileged
/// container's mapped root reaches its root tree under `ct/`) but not
/// list it; `vms/` is 0700 and each log 0600.
fn private_state_dir(dir: &std::path::Path) -> Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let vms = dir.join("vms");
    for (path, mode) in [(dir, 0o711), (vms.as_path(), 0o700)] {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(path)
            .and_then(|()| std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)))
            .map_err(|e| {
                format!(
                    "state directory {}: {e}; give a writable one with --state-dir",
                    path.display()
                )
            })?;
    }
    for entry in std::fs::read_dir(&vms).map_err(|e| format!("{}: {e}", vms.display()))? {
        let Ok(entry) = entry else { continue };
        if entry.file_type().is_ok_and(|t| t.is_file()) {
            let _ = std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o600));
        }
    }
    Ok(())
}

/// vmctl's start options on a VM spec.
fn apply_overrides(spec: &mut VmSpec, req: &StartRequest) -> Result<(), String> {
    if let Some(k) = &req.kernel {
        spec.boot = Some(k.into());
    }
    for d in &req.disks {
        spec.disks.push(kapsel_config::DiskSpec {
            path: d.into(),
            format: None,
        });
    }
    if let Some(m) = req.memory {
        spec.common.memory = Some(kapsel_config::ByteSize(m));
    }
    if let Some(n) = req.interfaces {
        spec.interface_count = Some(n);
    }
    if req.local_interface {
        spec.common.interfaces.push(kapsel_config::InterfaceSpec {
            local: true,
            ..kapsel_config::InterfaceSpec::default()
        });
    }
    if let Some(sw) = &req.switch {
        spec.common.interfaces.push(kapsel_config::InterfaceSpec {
            switch: Some(sw.clone()),
            ..kapsel_config::InterfaceSpec::default()
        });
    }
    Ok(())
}

impl Guest {
    /// A stopped guest, never run.
    fn new(id: u32, spec: GuestSpec, configured: bool) -> Guest {
        Guest {
            id,
            spec,
            configured,
            state: VmState::Stopped,
            process: None,
            last_exit: None,
            console: Console::new(),
            generation: 0,
            net: Vec::new(),
            open_as: None,
            removed: false,
        }
    }
}

/// The daemon's request handling and guest states, without root and
/// without starting anything real: the `kapsel` binary does not exist, so
/// every start fails at the monitor's fork.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest::ErrorClass;

    const CONF: &str = r#"
vm "web" {
	disable
	owner 61001
	memory 64M
	boot "/nonexistent/kapsel-unit/bzImage"
}
container "db" {
	disable
	root "/nonexistent/kapsel-unit/db"
}
"#;

    fn root() -> Peer {
        Peer {
            uid: 0,
            gid: 0,
            groups: vec![0],
            name: Some("root".into()),
        }
    }

    fn user(uid: u32) -> Peer {
        Peer {
            uid,
            gid: uid,
            groups: vec![uid],
            name: None,
        }
    }

    struct Setup {
        daemon: Arc<Daemon>,
        dir: PathBuf,
    }

    impl Drop for Setup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn daemon(name: &str) -> Setup {
        let dir =
            std::env::temp_dir().join(format!("kapsel-daemon-unit-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("vm.conf");
        std::fs::write(&config, CONF).unwrap();
        let opts = Options {
            config,
            defines: Vec::new(),
            socket: dir.join("kapsel.sock"),
            state_dir: dir.join("state"),
            kapsel: PathBuf::from("/nonexistent/kapsel-unit/kapsel"),
            shutdown_timeout: Duration::from_secs(1),
            set_log_level: None,
            stop_guests: true,
        };
        Setup {
            daemon: Daemon::new(opts).unwrap(),
            dir,
        }
    }

    fn state_of(d: &Daemon, name: &str) -> VmState {
        Daemon::find(&mut d.lock(), name).unwrap().state
    }

    #[test]
    fn a_failed_start_leaves_the_guest_stopped_and_startable_again() {
        let s = daemon("failed-start");
        for _ in 0..2 {
            let err = s.daemon.start_vm("web").unwrap_err();
            assert_eq!(err.class(), ErrorClass::Failed, "{err}");
            assert!(
                err.to_string().contains("/nonexistent/kapsel-unit/kapsel"),
                "{err}"
            );
            assert_eq!(state_of(&s.daemon, "web"), VmState::Stopped);
        }
        // Nothing of a run was recorded.
        assert!(Daemon::state_file(&s.daemon.lock()).guests.is_empty());
    }

    #[test]
    fn requests_on_a_stopped_guest_name_its_state() {
        let s = daemon("stopped");
        let d = &s.daemon;
        for (request, text) in [
            (
                Request::Stop {
                    targets: vec!["web".into()],
                    all: false,
                    force: false,
                    wait: false,
                },
                "vm web is not running",
            ),
            (
                Request::Pause {
                    target: "db".into(),
                },
                "container db is not running",
            ),
            (
                Request::Unpause {
                    target: "web".into(),
                },
                "vm web is not running",
            ),
            (
                Request::Wait {
                    target: "db".into(),
                },
                "container db is not running",
            ),
        ] {
            let err = d.dispatch(&root(), request, &|| false).unwrap_err();
            assert_eq!(err.to_string(), text);
            assert_eq!(err.class(), ErrorClass::Conflict);
        }
    }

    #[test]
    fn a_starting_guest_refuses_a_second_start_and_a_stop() {
        let s = daemon("starting");
        let d = &s.daemon;
        Daemon::find(&mut d.lock(), "web").unwrap().state = VmState::Starting;
        let err = d.start_vm("web").unwrap_err();
        assert_eq!(err.to_string(), "vm web is already starting");
        let err = d.stop_vm("web", false).unwrap_err();
        assert!(err.to_string().starts_with("vm web is starting"), "{err}");
        // A reload keeps it (its start is under way), marked removed.
        std::fs::write(&d.opts.config, "").unwrap();
        d.reload().unwrap();
        let mut inner = d.lock();
        assert!(Daemon::find(&mut inner, "web").unwrap().removed);
        assert!(matches!(
            Daemon::find(&mut inner, "db"),
            Err(GuestError::Removed(_))
        ));
    }

    #[test]
    fn owners_are_checked_before_the_state() {
        let s = daemon("owners");
        let d = &s.daemon;
        let stop = |target: &str| Request::Stop {
            targets: vec![target.into()],
            all: false,
            force: true,
            wait: false,
        };
        // db is root's: another user learns that, not its state.
        let err = d.dispatch(&user(61001), stop("db"), &|| false).unwrap_err();
        assert_eq!(err.class(), ErrorClass::Denied, "{err}");
        assert!(err.to_string().contains("belongs to root"), "{err}");
        // web is 61001's: its state is the answer.
        let err = d
            .dispatch(&user(61001), stop("web"), &|| false)
            .unwrap_err();
        assert_eq!(err.class(), ErrorClass::Conflict, "{err}");
        let err = d
            .dispatch(&user(61002), stop("web"), &|| false)
            .unwrap_err();
        assert_eq!(err.class(), ErrorClass::Denied, "{err}");
        let err = d
            .dispatch(&user(61001), Request::Reload, &|| false)
            .unwrap_err();
        assert_eq!(err.to_string(), "only root may reload the configuration");
    }

    #[test]
    fn each_kind_is_itself_in_status_and_requests() {
        let s = daemon("kinds");
        let d = &s.daemon;
        let list = d.status(None).unwrap();
        let web = list.iter().find(|g| g.name == "web").unwrap();
        let db = list.iter().find(|g| g.name == "db").unwrap();
        assert_eq!((web.kind.as_str(), web.vcpus), ("vm", 1));
        assert_eq!(
            (db.kind.as_str(), db.vcpus, db.max_mem),
            ("container", 0, 0)
        );
        assert_ne!(web.id, db.id);
        let start = |template: &str| {
            Request::Start(StartRequest {
                name: "copy".into(),
                template: Some(template.into()),
                ..StartRequest::default()
            })
        };
        let err = d.dispatch(&root(), start("db"), &|| false).unwrap_err();
        assert_eq!(
            err.to_string(),
            "db is a container; -t makes instances of VMs"
        );
        let err = d
            .dispatch(&root(), start("nothing"), &|| false)
            .unwrap_err();
        assert_eq!(err.class(), ErrorClass::NotFound, "{err}");
        let err = d.status(Some("nothing")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no VM or container named nothing; `kapsel status` lists them"
        );
    }
}
