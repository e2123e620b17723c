//! `kapsel`: one binary for running VMs and containers.

mod check;
mod create;
mod ctl;
mod daemon;
mod run;
mod run_container;

use clap::{Parser, Subcommand};
use std::process::ExitCode;
use tracing_subscriber::{layer::SubscriberExt, reload, util::SubscriberInitExt, EnvFilter};

/// Run virtual machines and system containers on Linux.
#[derive(Parser)]
#[command(name = "kapsel", version, about)]
struct Cli {
    #[command(flatten)]
    socket: ctl::SocketArg,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot one VM in the foreground from a kernel (and optional initrd).
    Run(run::RunArgs),
    /// Check a vm.conf file and report every problem (like `vmd -n`).
    Check(check::CheckArgs),
    /// Create a disk image: raw or qcow2, empty, an overlay (-b) or a copy (-i).
    Create(create::CreateArgs),
    /// Run kapseld, the daemon that starts the VMs of vm.conf and serves the
    /// commands below, in the foreground.
    Daemon(daemon::DaemonArgs),
    #[command(flatten)]
    Verb(ctl::Verb),
    /// Run one container in the foreground from a root directory.
    RunContainer(run_container::RunContainerArgs),
    /// A guest's monitor, started by kapseld (not by hand).
    #[command(hide = true)]
    Monitor {
        /// The guest's name (shown by ps; the launch description on stdin
        /// decides).
        name: Option<String>,
    },
    /// kapseld's DHCP helper process (started by the daemon only).
    #[command(name = "dhcp-helper", hide = true)]
    DhcpHelper(DhcpHelperArgs),
    /// kapseld's image unpacker (started by the daemon only).
    #[command(name = "unpack-image", hide = true)]
    UnpackImage {
        #[arg(long)]
        image: std::path::PathBuf,
        #[arg(long)]
        dir: std::path::PathBuf,
    },
}

/// `kapsel dhcp-helper`: the daemon passes who to become and its own pid.
#[derive(clap::Args)]
struct DhcpHelperArgs {
    #[arg(long)]
    uid: u32,
    #[arg(long)]
    gid: u32,
    #[arg(long)]
    parent: u32,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let logging = init_logging();
    let code = match cli.command {
        Command::Run(args) => run::main(args),
        Command::Check(args) => check::main(args),
        Command::Create(args) => create::main(args),
        Command::Daemon(args) => daemon::main(args, cli.socket.socket, logging),
        Command::Verb(verb) => ctl::main(cli.socket, verb),
        Command::RunContainer(args) => run_container::main(args),
        Command::Monitor { .. } => kapsel_daemon::monitor::main().clamp(0, 255) as u8,
        Command::UnpackImage { image, dir } => kapsel_daemon::unpack::main(&image, &dir),
        Command::DhcpHelper(a) => {
            kapsel_daemon::net::dhcp_helper_main(kapsel_daemon::net::DhcpHelperArgs {
                uid: a.uid,
                gid: a.gid,
                parent: a.parent,
            })
        }
    };
    ExitCode::from(code)
}

/// The log filter, changeable while running (`kapsel log`).
pub struct Logging {
    handle: reload::Handle<EnvFilter, tracing_subscriber::Registry>,
    from_env: bool,
}

impl Logging {
    /// Sets the filter (`info`, `debug`, ...) unless KAPSEL_LOG chose one.
    pub fn set(&self, filter: &str) {
        if !self.from_env {
            let _ = self.handle.modify(|f| *f = EnvFilter::new(filter));
        }
    }
}

/// Logs go to stderr; `KAPSEL_LOG` sets the filter (e.g. `debug`), default `warn`.
fn init_logging() -> Logging {
    let env = EnvFilter::try_from_env("KAPSEL_LOG").ok();
    let from_env = env.is_some();
    let (filter, handle) = reload::Layer::new(env.unwrap_or_else(|| EnvFilter::new("warn")));
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .try_init();
    Logging { handle, from_env }
}
