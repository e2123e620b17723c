//! `kapsel`: one binary for running VMs and containers.

mod check;
mod create;
mod run;
mod run_container;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Run virtual machines and system containers on Linux.
#[derive(Parser)]
#[command(name = "kapsel", version, about)]
struct Cli {
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
    /// Run one container in the foreground from a root directory.
    RunContainer(run_container::RunContainerArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let code = match cli.command {
        Command::Run(args) => run::main(args),
        Command::Check(args) => check::main(args),
        Command::Create(args) => create::main(args),
        Command::RunContainer(args) => run_container::main(args),
    };
    ExitCode::from(code)
}

/// Logs go to stderr; `KAPSEL_LOG` sets the filter (e.g. `debug`), default `warn`.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KAPSEL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
