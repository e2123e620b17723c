//! `kapsel-oci`: Kapsel's containers behind runc's command line, so that
//! podman (through conmon), containerd's runc shim and Docker can use
//! them. See docs/kapsel-oci.1.md.
//!
//! There is no daemon: `create` clones the container's init (through
//! kapsel-container, the code kapseld uses too), leaves it blocked on
//! `ROOT/ID/exec.fifo`, writes the state and exits, so that the init
//! becomes a child of the caller's subreaper (conmon, the shim), which
//! collects its exit status. `start` opens the FIFO for reading, which
//! lets the init execute the process.

mod config;
mod default_spec;
mod hooks;
mod idmap;
mod resources;
mod seccomp;
mod state;

use clap::{Parser, Subcommand};
use kapsel_container::caps::CapSet;
use kapsel_container::{exec_in, ConsoleSpec, Container, ExecOptions, User};
use state::{Record, Status};
use std::fs;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(
    name = "kapsel-oci",
    about = "Kapsel's containers as an OCI runtime (runc's command line)",
    disable_version_flag = true
)]
struct Cli {
    /// Directory for the containers' state.
    #[arg(long, global = true, default_value = "/run/kapsel-oci")]
    root: PathBuf,
    /// Append log lines (warnings, errors) to FILE.
    #[arg(long, global = true)]
    log: Option<PathBuf>,
    /// Log format: text or json.
    #[arg(long = "log-format", global = true, default_value = "text")]
    log_format: String,
    /// Accepted: a `slice:prefix:name` cgroupsPath is placed at
    /// SLICE/PREFIX-NAME.scope in cgroupfs; systemd is not told.
    #[arg(long = "systemd-cgroup", global = true)]
    systemd_cgroup: bool,
    /// Log debug lines as well.
    #[arg(long, global = true)]
    debug: bool,
    /// true, false or auto; kapsel-oci runs containers as root only (for
    /// `spec`, a bare --rootless writes the rootless variant).
    #[arg(long, global = true, num_args = 0..=1, default_missing_value = "true",
          value_parser = ["true", "false", "auto"])]
    rootless: Option<String>,
    /// Print the version.
    #[arg(short = 'v', long)]
    version: bool,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(clap::Args)]
struct CreateArgs {
    /// The container's id.
    id: String,
    /// The bundle directory (holding config.json).
    #[arg(short = 'b', long, default_value = ".")]
    bundle: PathBuf,
    /// Write the init's PID here.
    #[arg(long = "pid-file")]
    pid_file: Option<PathBuf>,
    /// An AF_UNIX socket that receives the terminal's master (process.terminal).
    #[arg(long = "console-socket")]
    console_socket: Option<PathBuf>,
    /// Pass N more descriptors (3 to 3 + N - 1) to the process.
    #[arg(long = "preserve-fds", default_value_t = 0)]
    preserve_fds: u32,
    /// Accepted; kapsel-oci always uses pivot_root.
    #[arg(long = "no-pivot")]
    no_pivot: bool,
    /// Accepted; no session keyring is created.
    #[arg(long = "no-new-keyring")]
    no_new_keyring: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a container: its init waits until `start`.
    Create(CreateArgs),
    /// Start the process of a created container.
    Start { id: String },
    /// Print the state of a container (OCI state JSON).
    State { id: String },
    /// Send a signal (number or name, default TERM) to the container's init.
    Kill {
        /// Send it to every process of the container.
        #[arg(short = 'a', long)]
        all: bool,
        id: String,
        signal: Option<String>,
    },
    /// Delete a stopped container (with --force, a running one).
    Delete {
        #[arg(short = 'f', long)]
        force: bool,
        id: String,
    },
    /// Create and start a container; without -d wait for it and delete it.
    Run {
        #[command(flatten)]
        create: CreateArgs,
        #[arg(short = 'd', long)]
        detach: bool,
        /// Keep the container's state after it exits.
        #[arg(long)]
        keep: bool,
    },
    /// Run a process in a running container.
    Exec(ExecArgs),
    /// List the processes of a container.
    Ps {
        #[arg(short = 'f', long, default_value = "table")]
        format: String,
        id: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        ps_args: Vec<String>,
    },
    /// List the containers under --root.
    List {
        #[arg(short = 'f', long, default_value = "table")]
        format: String,
        #[arg(short = 'q', long)]
        quiet: bool,
    },
    /// What this runtime supports (runtime-spec features JSON).
    Features,
    /// Freeze every process of a running container.
    Pause { id: String },
    /// Thaw a paused container.
    Resume { id: String },
    /// Change a running container's limits.
    Update {
        #[command(flatten)]
        args: resources::UpdateArgs,
        id: String,
    },
    /// Print the container's figures (--stats: once) and OOM events.
    Events {
        /// Print the figures once and exit.
        #[arg(long)]
        stats: bool,
        /// How often to print the figures.
        #[arg(long, default_value = "5s")]
        interval: String,
        id: String,
    },
    /// Write a default config.json (runc's) into the bundle.
    /// (`--rootless`: for a container of an unprivileged user, with a user
    /// namespace.)
    Spec {
        /// The bundle directory.
        #[arg(short = 'b', long, default_value = ".")]
        bundle: PathBuf,
    },
}

#[derive(clap::Args)]
struct ExecArgs {
    /// A JSON file holding the process (config.json's `process`).
    #[arg(short = 'p', long)]
    process: Option<PathBuf>,
    #[arg(short = 't', long)]
    tty: bool,
    #[arg(short = 'e', long = "env")]
    env: Vec<String>,
    #[arg(long)]
    cwd: Option<String>,
    /// UID[:GID].
    #[arg(short = 'u', long)]
    user: Option<String>,
    #[arg(short = 'g', long = "additional-gids")]
    additional_gids: Vec<u32>,
    #[arg(short = 'd', long)]
    detach: bool,
    #[arg(long = "pid-file")]
    pid_file: Option<PathBuf>,
    #[arg(long = "console-socket")]
    console_socket: Option<PathBuf>,
    #[arg(long = "preserve-fds", default_value_t = 0)]
    preserve_fds: u32,
    #[arg(long = "no-new-privs")]
    no_new_privs: bool,
    /// Accepted and ignored (no LSM labels).
    #[arg(long = "process-label")]
    process_label: Option<String>,
    #[arg(long = "apparmor")]
    apparmor: Option<String>,
    id: String,
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

/// Where warnings and errors go: the --log file (text or runc's JSON
/// lines) and, for errors, standard error too (as runc does).
struct Log {
    file: Option<fs::File>,
    json: bool,
    debug: bool,
}

impl Log {
    fn line(&self, level: &str, msg: &str) {
        match &self.file {
            Some(f) => {
                let line = if self.json {
                    serde_json::json!({"level": level, "msg": msg, "time": state::now_rfc3339()})
                        .to_string()
                } else {
                    format!(
                        "time=\"{}\" level={level} msg=\"{msg}\"",
                        state::now_rfc3339()
                    )
                };
                let _ = writeln!(&*f, "{line}");
            }
            None if level != "error" => eprintln!("kapsel-oci: {level}: {msg}"),
            None => {}
        }
    }
    fn warn(&self, msg: &str) {
        self.line("warning", msg);
    }
    fn debug(&self, msg: &str) {
        if self.debug {
            self.line("debug", msg);
        }
    }
    fn error(&self, msg: &str) {
        self.line("error", msg);
        eprintln!("kapsel-oci: {msg}");
    }
}

/// A failed command: its message (runc's wording where clients parse it).
struct Fail(String);

impl<E: std::fmt::Display> From<E> for Fail {
    fn from(e: E) -> Fail {
        Fail(e.to_string())
    }
}

fn fail<T>(msg: impl Into<String>) -> Result<T, Fail> {
    Err(Fail(msg.into()))
}

struct Ctx {
    /// --rootless true (or bare).
    rootless: bool,
    root: PathBuf,
    log: Log,
    systemd_cgroup: bool,
}

fn main() {
    // Output into a closed pipe (`kapsel-oci features | head`) ends the
    // process quietly, as with C tools, instead of a panic in println.
    // SAFETY: signal(2) with a constant disposition, before any thread.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    let file = cli.log.as_ref().and_then(|p| {
        fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .map_err(|e| eprintln!("kapsel-oci: log file {}: {e}", p.display()))
            .ok()
    });
    let log = Log {
        file,
        json: cli.log_format == "json",
        debug: cli.debug,
    };
    if cli.log_format != "json" && cli.log_format != "text" {
        log.error(&format!(
            "--log-format {}: unknown format; use text or json",
            cli.log_format
        ));
        std::process::exit(1);
    }
    if cli.version {
        println!("kapsel-oci version {}", env!("CARGO_PKG_VERSION"));
        println!(
            "commit: {}",
            option_env!("KAPSEL_COMMIT").unwrap_or("unknown")
        );
        println!("spec: {}", state::OCI_VERSION);
        return;
    }
    let Some(cmd) = cli.cmd else {
        log.error("no command given; see kapsel-oci --help");
        std::process::exit(1);
    };
    let rootless = cli.rootless.as_deref() == Some("true");
    if rootless && !matches!(cmd, Cmd::Spec { .. }) {
        log.warn("--rootless true: kapsel-oci runs containers as root only");
    }
    let ctx = Ctx {
        rootless,
        root: cli.root,
        log,
        systemd_cgroup: cli.systemd_cgroup,
    };
    let code = match run_cmd(&ctx, cmd) {
        Ok(code) => code,
        Err(Fail(msg)) => {
            ctx.log.error(&msg);
            1
        }
    };
    std::process::exit(code);
}

fn run_cmd(ctx: &Ctx, cmd: Cmd) -> Result<i32, Fail> {
    match cmd {
        Cmd::Create(a) => {
            let c = create(ctx, &a)?;
            c.detach();
            Ok(0)
        }
        Cmd::Start { id } => {
            let rec = existing(ctx, &id)?;
            match rec.status(&ctx.root) {
                Status::Created => start(ctx, &rec).map(|()| 0),
                Status::Running | Status::Paused => {
                    fail("cannot start an already running container")
                }
                Status::Stopped => fail("cannot start a container that has stopped"),
            }
        }
        Cmd::State { id } => {
            let rec = existing(ctx, &id)?;
            println!(
                "{}",
                serde_json::to_string_pretty(&rec.state_json(&ctx.root))?
            );
            Ok(0)
        }
        Cmd::Kill { all, id, signal } => {
            let sig = parse_signal(signal.as_deref().unwrap_or("SIGTERM"))?;
            let rec = existing(ctx, &id)?;
            if rec.status(&ctx.root) == Status::Stopped {
                return fail("container not running");
            }
            let pids = if all { cgroup_pids(&rec) } else { Vec::new() };
            signal_init(&rec, sig)?;
            for pid in pids.into_iter().filter(|&p| p != rec.pid) {
                // SAFETY: kill(2) with integer arguments.
                unsafe { libc::kill(pid, sig) };
            }
            // A frozen task acts on SIGKILL only once thawed (cgroup v1).
            if sig == libc::SIGKILL && rec.status(&ctx.root) == Status::Paused {
                resources::cgroup_of(&rec)?.thaw()?;
            }
            Ok(0)
        }
        Cmd::Delete { force, id } => {
            check_id(&id)?;
            check_root(ctx)?;
            let Some(rec) = state::load(&ctx.root, &id)? else {
                if force {
                    return Ok(0);
                }
                return fail(format!("container {id} does not exist"));
            };
            let status = rec.status(&ctx.root);
            if matches!(status, Status::Running | Status::Paused) && !force {
                return fail(format!(
                    "cannot delete container {id} that is not stopped: {} (stop it, or use --force)",
                    status.as_str()
                ));
            }
            destroy(ctx, &rec)?;
            Ok(0)
        }
        Cmd::Run {
            create: a,
            detach,
            keep,
        } => run(ctx, &a, detach, keep),
        Cmd::Exec(a) => exec(ctx, &a),
        Cmd::Ps {
            format,
            id,
            ps_args,
        } => {
            let rec = existing(ctx, &id)?;
            let pids = cgroup_pids(&rec);
            match format.as_str() {
                "json" => println!("{}", serde_json::to_string(&pids)?),
                "table" => ps_table(&pids, &ps_args)?,
                other => return fail(format!("ps --format {other}: use table or json")),
            }
            Ok(0)
        }
        Cmd::List { format, quiet } => {
            check_root(ctx)?;
            let mut all = Vec::new();
            if let Ok(entries) = fs::read_dir(&ctx.root) {
                for e in entries.flatten() {
                    let id = e.file_name().to_string_lossy().into_owned();
                    if let Ok(Some(r)) = state::load(&ctx.root, &id) {
                        all.push(r);
                    }
                }
            }
            all.sort_by(|a, b| a.id.cmp(&b.id));
            if quiet {
                for r in &all {
                    println!("{}", r.id);
                }
            } else if format == "json" {
                let v: Vec<_> = all.iter().map(|r| r.state_json(&ctx.root)).collect();
                println!("{}", serde_json::to_string(&v)?);
            } else {
                println!("ID\tPID\tSTATUS\tBUNDLE\tCREATED\tOWNER");
                for r in &all {
                    let s = r.state_json(&ctx.root);
                    println!(
                        "{}\t{}\t{}\t{}\t{}\troot",
                        r.id,
                        s["pid"],
                        r.status(&ctx.root).as_str(),
                        r.bundle.display(),
                        r.created
                    );
                }
            }
            Ok(0)
        }
        Cmd::Features => {
            println!("{}", serde_json::to_string_pretty(&features())?);
            Ok(0)
        }
        Cmd::Pause { id } => {
            let rec = existing(ctx, &id)?;
            match rec.status(&ctx.root) {
                Status::Running => {}
                Status::Paused => return Ok(0),
                _ => return fail("container not running"),
            }
            resources::cgroup_of(&rec)?.freeze()?;
            Ok(0)
        }
        Cmd::Resume { id } => {
            let rec = existing(ctx, &id)?;
            if rec.status(&ctx.root) != Status::Paused {
                return fail("container not paused");
            }
            resources::cgroup_of(&rec)?.thaw()?;
            Ok(0)
        }
        Cmd::Update { args, id } => {
            let rec = existing(ctx, &id)?;
            if rec.status(&ctx.root) == Status::Stopped {
                return fail("container not running");
            }
            let res = resources::requested(&args)?;
            resources::cgroup_of(&rec)?.update(&res)?;
            Ok(0)
        }
        Cmd::Events {
            stats,
            interval,
            id,
        } => events(ctx, &id, stats, &interval),
        Cmd::Spec { bundle } => {
            let rootless = ctx.rootless;
            let path = bundle.join("config.json");
            if path.exists() {
                return fail("File config.json exists. Remove it first");
            }
            // SAFETY: getuid and getgid have no preconditions.
            let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
            let text =
                serde_json::to_string_pretty(&default_spec::default_spec(rootless, uid, gid))?;
            fs::write(&path, text + "\n").map_err(|e| Fail(format!("{}: {e}", path.display())))?;
            Ok(0)
        }
    }
}

/// `ps --format table`: the host's `ps` (with `ps_args`, default `-ef`),
/// its header and the lines of the container's processes (as runc).
fn ps_table(pids: &[i32], ps_args: &[String]) -> Result<(), Fail> {
    let args: Vec<String> = if ps_args.is_empty() {
        vec!["-ef".into()]
    } else {
        ps_args.to_vec()
    };
    let out = std::process::Command::new("ps")
        .args(&args)
        .output()
        .map_err(|e| {
            Fail(format!(
                "running ps {}: {e}; install procps",
                args.join(" ")
            ))
        })?;
    if !out.status.success() {
        return fail(format!(
            "ps {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default();
    let Some(col) = header.split_whitespace().position(|h| h == "PID") else {
        return fail("couldn't find PID field in ps output");
    };
    println!("{header}");
    for line in lines {
        let pid = line
            .split_whitespace()
            .nth(col)
            .and_then(|p| p.parse::<i32>().ok());
        if pid.is_some_and(|p| pids.contains(&p)) {
            println!("{line}");
        }
    }
    Ok(())
}

/// `events`: the figures once (`--stats`), or every `interval` with an
/// `oom` event whenever the container's OOM-kill count grows, until the
/// container stops (as runc).
fn events(ctx: &Ctx, id: &str, once: bool, interval: &str) -> Result<i32, Fail> {
    let rec = existing(ctx, id)?;
    if rec.status(&ctx.root) == Status::Stopped {
        return fail("container not running");
    }
    let every = resources::parse_duration(interval)?;
    let cg = resources::cgroup_of(&rec)?;
    let event = |kind: &str, data: Option<serde_json::Value>| {
        let mut e = serde_json::json!({"type": kind, "id": id});
        if let Some(d) = data {
            e["data"] = d;
        }
        println!("{e}");
    };
    if once {
        event("stats", Some(resources::stats_json(&cg.stats())));
        return Ok(0);
    }
    let mut ooms = cg.oom_kills().unwrap_or(0);
    let mut next = Instant::now();
    while rec.alive() {
        let now_ooms = cg.oom_kills().unwrap_or(ooms);
        if now_ooms > ooms {
            event("oom", None);
            ooms = now_ooms;
        }
        if Instant::now() >= next {
            event("stats", Some(resources::stats_json(&cg.stats())));
            next = Instant::now() + every;
        }
        std::thread::sleep(every.min(Duration::from_millis(200)));
    }
    Ok(0)
}

fn features() -> serde_json::Value {
    serde_json::json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": state::OCI_VERSION,
        "hooks": ["prestart", "createRuntime", "createContainer", "startContainer",
            "poststart", "poststop"],
        "mountOptions": ["ro", "rw", "nosuid", "suid", "nodev", "dev", "noexec", "exec",
            "bind", "rbind", "sync", "dirsync", "noatime", "nodiratime", "strictatime",
            "relatime", "private", "rprivate", "slave", "rslave", "shared", "rshared",
            "unbindable", "runbindable"],
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "user", "uts"],
            "capabilities": config::cap_names(CapSet(u64::MAX)),
            "cgroup": {"v1": true, "v2": true, "systemd": false, "systemdUser": false, "rdma": false},
            "seccomp": {
                "enabled": true,
                "actions": ["SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL",
                    "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL_THREAD", "SCMP_ACT_LOG",
                    "SCMP_ACT_NOTIFY", "SCMP_ACT_TRACE", "SCMP_ACT_TRAP"],
                "operators": ["SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_LE",
                    "SCMP_CMP_LT", "SCMP_CMP_MASKED_EQ", "SCMP_CMP_NE"],
                "archs": ["SCMP_ARCH_X86", "SCMP_ARCH_X86_64", "SCMP_ARCH_X32",
                    "SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
                "knownFlags": ["SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_LOG",
                    "SECCOMP_FILTER_FLAG_SPEC_ALLOW"],
                "supportedFlags": ["SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_LOG",
                    "SECCOMP_FILTER_FLAG_SPEC_ALLOW"]
            },
            "apparmor": {"enabled": false},
            "selinux": {"enabled": false},
            "mountExtensions": {"idmap": {"enabled": true}}
        },
        "annotations": {
            "io.github.seccomp.libseccomp.version": libseccomp_version()
        }
    })
}

/// The libseccomp version in use, as runc reports it in `features`.
fn libseccomp_version() -> String {
    match libseccomp::ScmpVersion::current() {
        Ok(v) => format!("{}.{}.{}", v.major, v.minor, v.micro),
        Err(_) => "unknown".into(),
    }
}

fn check_id(id: &str) -> Result<(), Fail> {
    let ok = !id.is_empty()
        && id.len() <= 1024
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        fail(format!(
            "invalid container id \"{id}\": use letters, digits, '-', '_' and '.'"
        ))
    }
}

/// The state directory must be root's and writable by no one else: its
/// records name the PIDs that kill, exec and delete act on.
fn check_root(ctx: &Ctx) -> Result<(), Fail> {
    use std::os::unix::fs::MetadataExt;
    match fs::metadata(&ctx.root) {
        Ok(m) if m.uid() != 0 || m.mode() & 0o022 != 0 => fail(format!(
            "state directory {} is not root's alone (owner {}, mode {:o}); give a --root \
             that only root can write (chown root and chmod 700 it)",
            ctx.root.display(),
            m.uid(),
            m.mode() & 0o7777
        )),
        _ => Ok(()),
    }
}

fn existing(ctx: &Ctx, id: &str) -> Result<Record, Fail> {
    check_id(id)?;
    check_root(ctx)?;
    match state::load(&ctx.root, id)? {
        Some(r) => Ok(r),
        None => fail(format!("container {id} does not exist")),
    }
}

/// `create`: everything but the start. The handle is the caller's to
/// detach (create, run -d) or wait for (run).
fn create(ctx: &Ctx, a: &CreateArgs) -> Result<Container, Fail> {
    check_id(&a.id)?;
    check_preserved(a.preserve_fds)?;
    let bundle = fs::canonicalize(&a.bundle)
        .map_err(|e| Fail(format!("bundle {}: {e}", a.bundle.display())))?;
    let spec = config::load(&bundle).map_err(|e| Fail(e.0))?;
    let t = config::translate(&a.id, &bundle, &spec, ctx.systemd_cgroup).map_err(|e| Fail(e.0))?;
    for w in &t.warnings {
        ctx.log.warn(w);
    }
    if t.terminal && a.console_socket.is_none() {
        return fail(
            "process.terminal is true but no --console-socket was given; give one (the \
             terminal's master is sent there) or set terminal to false",
        );
    }
    if !t.terminal && a.console_socket.is_some() {
        return fail("--console-socket given but process.terminal is false; drop one of them");
    }
    if let Some(first) = t.spec.init.first() {
        if let Err(e) = kapsel_container::resolve_init(&t.rootfs, first) {
            // podman maps this wording to exit status 127.
            return fail(format!(
                "exec: \"{first}\": executable file not found in $PATH: {e}"
            ));
        }
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&ctx.root)
        .map_err(|e| Fail(format!("state directory {}: {e}", ctx.root.display())))?;
    check_root(ctx)?;
    let dir = state::dir(&ctx.root, &a.id);
    match fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return fail(format!("container with id exists: {}", a.id))
        }
        Err(e) => return fail(format!("state directory {}: {e}", dir.display())),
    }
    let made = create_in(ctx, a, &bundle, t);
    if made.is_err() {
        let _ = fs::remove_dir_all(&dir);
    }
    made
}

fn create_in(
    ctx: &Ctx,
    a: &CreateArgs,
    bundle: &Path,
    t: config::Translated,
) -> Result<Container, Fail> {
    let fifo = state::fifo(&ctx.root, &a.id);
    let c_path = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes())?;
    // SAFETY: mkfifo on a NUL-terminated path.
    if unsafe { libc::mkfifo(c_path.as_ptr(), 0o622) } != 0 {
        return fail(format!(
            "creating {}: {}",
            fifo.display(),
            io::Error::last_os_error()
        ));
    }
    // 0622 whatever the umask (as runc): a container root mapped to
    // another host id (a user namespace) writes to it through its
    // descriptor; the 0700 state directory keeps everyone else out.
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&fifo, fs::Permissions::from_mode(0o622))?;
    let mut spec = t.spec;
    spec.extra.start_fifo = Some(fifo);
    spec.extra.preserve_fds = a.preserve_fds;
    ctx.log
        .debug(&format!("creating {} from {}", a.id, bundle.display()));
    let mode = kapsel_container::cgroup::CgroupMode::detect()?;
    let hooks = t.hooks;
    let idmaps = t.idmap_mounts;
    let mut c = if hooks.at_create() || !idmaps.is_empty() {
        // Once the namespaces exist and the root is mounted, before
        // pivot_root (see hooks.rs, idmap.rs): the idmapped mounts, then
        // the hooks (runc: the mounts are made before prestart).
        let mut run_hooks = |pid: i32| -> Result<(), String> {
            if !idmaps.is_empty() {
                idmap::mount_all(pid, &t.rootfs, &idmaps)?;
            }
            let st = state::hook_state(&a.id, "creating", pid, bundle, &t.annotations);
            hooks::run_all("prestart", &hooks.prestart, &st, None)?;
            hooks::run_all("createRuntime", &hooks.create_runtime, &st, None)?;
            hooks::run_all("createContainer", &hooks.create_container, &st, Some(pid))
        };
        Container::start_hooked(&spec, &mode, Some(&mut run_hooks))?
    } else {
        Container::start_in(&spec, &mode)?
    };
    if let Some((path, metadata)) = &t.seccomp_agent {
        let Some(fd) = c.take_seccomp_listener() else {
            return fail("the container's seccomp filter gave no notification descriptor");
        };
        let st = state::hook_state(&a.id, "creating", c.pid(), bundle, &t.annotations);
        seccomp::send_to_agent(path, metadata, &st, c.pid(), fd.as_fd()).map_err(Fail)?;
    }
    if spec.console == ConsoleSpec::Pty {
        let master = c.take_console();
        if let (Some(master), Some(sock)) = (master, &a.console_socket) {
            send_console(sock, master.as_fd())?;
        }
    }
    let pid = c.pid();
    let Some((start_time, _)) = state::proc_start(pid) else {
        return fail("the container's init ended during create");
    };
    let rec = Record {
        id: a.id.clone(),
        pid,
        start_time,
        bundle: bundle.to_path_buf(),
        rootfs: t.rootfs,
        created: state::now_rfc3339(),
        annotations: t.annotations,
        cgroups: c.cgroup().paths().map(Path::to_path_buf).collect(),
        capabilities: spec.capabilities.0,
        no_new_privs: spec.no_new_privs,
        seccomp: spec.seccomp,
        hooks,
        user: spec
            .extra
            .user
            .as_ref()
            .map(|u| (u.uid, u.gid, u.groups.clone())),
    };
    if let Some(bpf) = &spec.extra.seccomp_bpf {
        // For exec: the same program.
        state::write_atomic(&state::dir(&ctx.root, &a.id).join("seccomp.bpf"), bpf)?;
    }
    state::save(&ctx.root, &rec)?;
    if let Some(p) = &a.pid_file {
        state::write_atomic(p, pid.to_string().as_bytes())
            .map_err(|e| Fail(format!("pid file {}: {e}", p.display())))?;
    }
    Ok(c)
}

/// `start`: the startContainer hooks, the release, the poststart hooks.
fn start(ctx: &Ctx, rec: &Record) -> Result<(), Fail> {
    // A failing hook ends the container (runc).
    let ended = |e: String| {
        let _ = signal_init(rec, libc::SIGKILL);
        Fail(e)
    };
    // In the container, with its process's confinement (runc runs them
    // in its init just before the exec): the hook's binary is the image's.
    hooks::run_all_confined(
        "startContainer",
        &rec.hooks.start_container,
        &rec.hook_state("created"),
        rec.pid,
        &confinement(ctx, rec),
    )
    .map_err(ended)?;
    release(ctx, rec)?;
    hooks::run_all(
        "poststart",
        &rec.hooks.poststart,
        &rec.hook_state("running"),
        None,
    )
    .map_err(ended)
}

/// Lets the created init run: opens the FIFO it waits on for reading and
/// takes its byte.
fn release(ctx: &Ctx, rec: &Record) -> Result<(), Fail> {
    let fifo = state::fifo(&ctx.root, &rec.id);
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(&fifo)
        .map_err(|e| Fail(format!("{}: {e}", fifo.display())))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut pfd = libc::pollfd {
            fd: f.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: polls one descriptor we own.
        unsafe { libc::poll(&mut pfd, 1, 50) };
        let mut b = [0u8; 1];
        // SAFETY: reads at most one byte into `b`.
        let n = unsafe { libc::read(f.as_raw_fd(), b.as_mut_ptr().cast(), 1) };
        if n == 1 {
            break;
        }
        if !rec.alive() {
            let _ = fs::remove_file(&fifo);
            return fail("the container's init exited before it was started");
        }
        if Instant::now() > deadline {
            return fail("the container's init did not take the start signal within 10 s");
        }
    }
    fs::remove_file(&fifo)?;
    Ok(())
}

fn run(ctx: &Ctx, a: &CreateArgs, detach: bool, keep: bool) -> Result<i32, Fail> {
    let mut c = create(ctx, a)?;
    let Some(rec) = state::load(&ctx.root, &a.id)? else {
        return fail("state vanished during create");
    };
    if let Err(e) = start(ctx, &rec) {
        drop(c);
        let _ = fs::remove_dir_all(state::dir(&ctx.root, &a.id));
        return Err(e);
    }
    if detach {
        c.detach();
        return Ok(0);
    }
    forward_signals(c.pid());
    let status = c.wait()?;
    if !keep {
        c.cleanup()?;
        let _ = fs::remove_dir_all(state::dir(&ctx.root, &a.id));
        poststop(ctx, &rec);
    } else {
        c.detach();
    }
    Ok(status.code())
}

/// Forwards SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 to the
/// container's init (as `runc run` does) from a thread that waits for them.
fn forward_signals(pid: i32) {
    // SAFETY: builds a signal set in a local and blocks it for this thread
    // (threads started later inherit the mask).
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [
            libc::SIGINT,
            libc::SIGTERM,
            libc::SIGHUP,
            libc::SIGQUIT,
            libc::SIGUSR1,
            libc::SIGUSR2,
        ] {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    std::thread::spawn(move || loop {
        let mut sig = 0;
        // SAFETY: sigwait on a set we built, writing into a local.
        if unsafe { libc::sigwait(&set, &mut sig) } == 0 {
            // SAFETY: kill(2) with integer arguments.
            unsafe { libc::kill(pid, sig) };
        }
    });
}

/// Kills what is left of the container and removes its cgroup and state.
fn destroy(ctx: &Ctx, rec: &Record) -> Result<(), Fail> {
    if rec.alive() {
        if let Ok(cg) = resources::cgroup_of(rec) {
            let _ = cg.thaw();
        }
        let _ = signal_init(rec, libc::SIGKILL);
        let deadline = Instant::now() + Duration::from_secs(10);
        while rec.alive() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    // With a PID namespace the init's death kills the rest; a process
    // that is still on its way out keeps the cgroup busy for a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut dirs = rec.cgroups.clone();
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for d in &dirs {
        loop {
            for pid in read_pids(d) {
                // SAFETY: kill(2) with integer arguments.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            match remove_cgroup(d) {
                Ok(()) => break,
                Err(e) if Instant::now() < deadline && e.raw_os_error() == Some(libc::EBUSY) => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Err(e) => {
                    ctx.log
                        .warn(&format!("cannot remove cgroup {}: {e}", d.display()));
                    break;
                }
            }
        }
    }
    fs::remove_dir_all(state::dir(&ctx.root, &rec.id))
        .map_err(|e| Fail(format!("removing the state of {}: {e}", rec.id)))?;
    poststop(ctx, rec);
    Ok(())
}

/// The poststop hooks; a failure is a warning (runc).
fn poststop(ctx: &Ctx, rec: &Record) {
    if let Err(e) = hooks::run_all(
        "poststop",
        &rec.hooks.poststop,
        &rec.hook_state("stopped"),
        None,
    ) {
        ctx.log.warn(&e);
    }
}

/// Removes a cgroup directory and the groups below it.
fn remove_cgroup(dir: &Path) -> io::Result<()> {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup(&e.path())?;
            }
        }
    }
    match fs::remove_dir(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

fn read_pids(dir: &Path) -> Vec<i32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn cgroup_pids(rec: &Record) -> Vec<i32> {
    rec.cgroups
        .first()
        .map(|d| read_pids(d))
        .unwrap_or_default()
}

/// Signals the init through a pidfd opened after checking that the PID
/// is still the init's (not reused).
fn signal_init(rec: &Record, sig: i32) -> Result<(), Fail> {
    // SAFETY: pidfd_open with integer arguments; the result is checked.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, rec.pid, 0) };
    if fd < 0 {
        return fail("container not running");
    }
    // SAFETY: a new descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    if !rec.alive() {
        return fail("container not running");
    }
    // SAFETY: pidfd_send_signal on our pidfd, no siginfo.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if r != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ESRCH) {
            return fail("container not running");
        }
        return fail(format!("signalling the container's init: {e}"));
    }
    Ok(())
}

const SIGNALS: &[(&str, i32)] = &[
    ("HUP", libc::SIGHUP),
    ("INT", libc::SIGINT),
    ("QUIT", libc::SIGQUIT),
    ("ILL", libc::SIGILL),
    ("TRAP", libc::SIGTRAP),
    ("ABRT", libc::SIGABRT),
    ("IOT", libc::SIGIOT),
    ("BUS", libc::SIGBUS),
    ("FPE", libc::SIGFPE),
    ("KILL", libc::SIGKILL),
    ("USR1", libc::SIGUSR1),
    ("SEGV", libc::SIGSEGV),
    ("USR2", libc::SIGUSR2),
    ("PIPE", libc::SIGPIPE),
    ("ALRM", libc::SIGALRM),
    ("TERM", libc::SIGTERM),
    ("STKFLT", libc::SIGSTKFLT),
    ("CHLD", libc::SIGCHLD),
    ("CONT", libc::SIGCONT),
    ("STOP", libc::SIGSTOP),
    ("TSTP", libc::SIGTSTP),
    ("TTIN", libc::SIGTTIN),
    ("TTOU", libc::SIGTTOU),
    ("URG", libc::SIGURG),
    ("XCPU", libc::SIGXCPU),
    ("XFSZ", libc::SIGXFSZ),
    ("VTALRM", libc::SIGVTALRM),
    ("PROF", libc::SIGPROF),
    ("WINCH", libc::SIGWINCH),
    ("IO", libc::SIGIO),
    ("PWR", libc::SIGPWR),
    ("SYS", libc::SIGSYS),
];

/// A signal as runc takes it: a number, a name, or a name with SIG.
fn parse_signal(s: &str) -> Result<i32, Fail> {
    if let Ok(n) = s.parse::<i32>() {
        if (1..=libc::SIGRTMAX()).contains(&n) {
            return Ok(n);
        }
        return fail(format!("invalid signal {s}"));
    }
    let up = s.to_ascii_uppercase();
    let name = up.strip_prefix("SIG").unwrap_or(&up);
    if let Some(&(_, n)) = SIGNALS.iter().find(|(k, _)| *k == name) {
        return Ok(n);
    }
    if let Some(off) = name
        .strip_prefix("RTMIN+")
        .and_then(|n| n.parse::<i32>().ok())
    {
        return Ok(libc::SIGRTMIN() + off);
    }
    fail(format!(
        "unknown signal \"{s}\"; give a number or a name such as TERM or SIGKILL"
    ))
}

/// Sends the terminal master `fd` to the AF_UNIX socket at `path`, as runc
/// does: one message, the file's name as payload and the descriptor in
/// SCM_RIGHTS.
fn send_console(path: &Path, fd: BorrowedFd<'_>) -> Result<(), Fail> {
    let sock = std::os::unix::net::UnixStream::connect(path)
        .map_err(|e| Fail(format!("console socket {}: {e}", path.display())))?;
    kapsel_host::fd::send_with_fds(sock.as_fd(), b"/dev/ptmx", &[fd], 0)
        .map_err(|e| Fail(format!("sending the terminal to {}: {e}", path.display())))?;
    Ok(())
}

/// A new pty: master and slave.
fn open_pty() -> Result<(fs::File, fs::File), Fail> {
    let master = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open("/dev/ptmx")?;
    let mut name = [0 as libc::c_char; 64];
    // SAFETY: grantpt/unlockpt on our master; ptsname_r writes at most
    // name.len() bytes.
    let ok = unsafe {
        libc::grantpt(master.as_raw_fd()) == 0
            && libc::unlockpt(master.as_raw_fd()) == 0
            && libc::ptsname_r(master.as_raw_fd(), name.as_mut_ptr(), name.len()) == 0
    };
    if !ok {
        return fail(format!("setting up a pty: {}", io::Error::last_os_error()));
    }
    // SAFETY: ptsname_r wrote a NUL-terminated string.
    let path = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) }
        .to_string_lossy()
        .into_owned();
    let slave = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)?;
    Ok((master, slave))
}

/// `--preserve-fds N`: descriptors 3 to 3 + N - 1 must be open.
fn check_preserved(n: u32) -> Result<(), Fail> {
    for fd in 3..3 + n.min(65536) as RawFd {
        // SAFETY: F_GETFD on a descriptor number; no memory is touched.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            return fail(format!(
                "--preserve-fds {n}: descriptor {fd} is not open; pass that many descriptors \
                 from 3 on"
            ));
        }
    }
    if n > 65536 {
        return fail(format!("--preserve-fds {n}: too many descriptors"));
    }
    Ok(())
}

/// What a process joining the container gets: its cgroup, the init's
/// capabilities, no_new_privs, seccomp program and user (runc's `exec`
/// defaults to the container's process user too).
fn confinement(ctx: &Ctx, rec: &Record) -> ExecOptions {
    ExecOptions {
        argv: Vec::new(),
        env: Vec::new(),
        cwd: None,
        user: rec.user.as_ref().map(|(uid, gid, groups)| User {
            uid: *uid,
            gid: *gid,
            groups: groups.clone(),
        }),
        root: PathBuf::from(format!("/proc/{}/root", rec.pid)),
        keep_caps: CapSet(rec.capabilities),
        no_new_privs: rec.no_new_privs,
        seccomp: rec.seccomp,
        seccomp_bpf: fs::read(state::dir(&ctx.root, &rec.id).join("seccomp.bpf")).ok(),
        stdio: None,
        cgroup_files: rec.cgroups.iter().map(|d| d.join("cgroup.procs")).collect(),
    }
}

fn exec(ctx: &Ctx, a: &ExecArgs) -> Result<i32, Fail> {
    let rec = existing(ctx, &a.id)?;
    if rec.status(&ctx.root) == Status::Stopped {
        return fail("cannot exec in a stopped container");
    }
    check_preserved(a.preserve_fds)?;
    for fd in 3..3 + a.preserve_fds as RawFd {
        // SAFETY: fcntl(2) on a descriptor number the caller passed on.
        unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
    }
    let container_caps = CapSet(rec.capabilities);
    let mut opts = confinement(ctx, &rec);
    opts.argv = a.command.clone();
    opts.env = a.env.clone();
    opts.cwd = a.cwd.clone();
    opts.no_new_privs |= a.no_new_privs;
    let mut tty = a.tty;
    if let Some(p) = &a.process {
        let text = fs::read_to_string(p)
            .map_err(|e| Fail(format!("process file {}: {e}", p.display())))?;
        let proc: oci_spec::runtime::Process = serde_json::from_str(&text)
            .map_err(|e| Fail(format!("process file {}: {e}", p.display())))?;
        opts.argv = proc.args().clone().unwrap_or_default();
        opts.env = proc.env().clone().unwrap_or_default();
        let cwd = proc.cwd().to_string_lossy().into_owned();
        opts.cwd = (!cwd.is_empty()).then_some(cwd);
        let u = proc.user();
        let groups = u.additional_gids().clone().unwrap_or_default();
        if u.uid() != 0 || u.gid() != 0 || !groups.is_empty() {
            opts.user = Some(User {
                uid: u.uid(),
                gid: u.gid(),
                groups,
            });
        }
        if let Some(b) = proc
            .capabilities()
            .as_ref()
            .and_then(|c| c.bounding().clone())
        {
            opts.keep_caps = CapSet(config::capset(b.iter()).0 & container_caps.0);
        }
        opts.no_new_privs |= proc.no_new_privileges().unwrap_or(false);
        tty = proc.terminal().unwrap_or(false);
    } else if let Some(u) = &a.user {
        let (uid, gid) = match u.split_once(':') {
            Some((u, g)) => (u.parse::<u32>(), g.parse::<u32>()),
            None => (u.parse::<u32>(), Ok(0)),
        };
        match (uid, gid) {
            (Ok(uid), Ok(gid)) => {
                opts.user = Some(User {
                    uid,
                    gid,
                    groups: a.additional_gids.clone(),
                })
            }
            _ => return fail(format!("--user {u}: give UID[:GID] as numbers")),
        }
    }
    if opts.argv.is_empty() {
        return fail("exec: give a command (after the id) or --process FILE");
    }
    let first = opts.argv[0].clone();
    if let Err(e) = kapsel_container::resolve_init(&opts.root, &first) {
        return fail(format!(
            "exec: \"{first}\": executable file not found in $PATH: {e}"
        ));
    }
    let slave = if tty {
        let Some(sock) = &a.console_socket else {
            return fail("exec with a terminal needs --console-socket (the master is sent there)");
        };
        let (master, slave) = open_pty()?;
        send_console(sock, master.as_fd())?;
        Some(slave)
    } else {
        None
    };
    opts.stdio = slave.as_ref().map(|s| s.as_raw_fd());
    let mut p = exec_in(rec.pid, &opts)?;
    drop(slave);
    if let Some(f) = &a.pid_file {
        state::write_atomic(f, p.pid().to_string().as_bytes())
            .map_err(|e| Fail(format!("pid file {}: {e}", f.display())))?;
    }
    if a.detach {
        return Ok(0);
    }
    Ok(p.wait()?.code())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_as_runc_takes_them() {
        for (s, n) in [
            ("9", 9),
            ("KILL", 9),
            ("SIGKILL", 9),
            ("term", 15),
            ("15", 15),
            ("SIGRTMIN+3", libc::SIGRTMIN() + 3),
        ] {
            assert_eq!(parse_signal(s).ok(), Some(n), "{s}");
        }
        assert!(parse_signal("NOPE").is_err());
        assert!(parse_signal("0").is_err());
    }

    #[test]
    fn ids() {
        assert!(check_id("abc-1.2_x").is_ok());
        assert!(check_id("../x").is_err());
        assert!(check_id("").is_err());
        assert!(check_id("..").is_err());
    }
}
