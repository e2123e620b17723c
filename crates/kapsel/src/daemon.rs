//! `kapsel daemon`: kapseld in the foreground, logging to stderr.

use clap::Args;
use kapsel_config::DEFAULT_CONFIG_PATH;
use kapsel_daemon::daemon::Options;
use kapsel_daemon::proto::LogLevel;
use kapsel_daemon::server;
use std::path::PathBuf;
use std::time::Duration;

/// Arguments of `kapsel daemon`.
#[derive(Args, Debug)]
pub struct DaemonArgs {
    /// The configuration file.
    #[arg(short = 'f', long = "file", default_value = DEFAULT_CONFIG_PATH)]
    pub file: PathBuf,
    /// Set a macro, overriding its definition in the file.
    #[arg(short = 'D', value_name = "NAME=VALUE", value_parser = kapsel_config::parse_define)]
    pub defines: Vec<(String, String)>,
    /// Where the VM logs and other state are kept.
    #[arg(long, value_name = "DIR", default_value = server::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// Seconds a guest gets to power off after its power button is pressed
    /// (by `kapsel stop` or when the daemon stops) before it is killed.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub shutdown_timeout: u64,
    /// Log every decision (like `kapsel log verbose`).
    #[arg(short = 'v', long)]
    pub verbose: bool,
    /// Stop every guest when the daemon stops. Without it, guests run on
    /// under their monitors and the next daemon adopts them.
    #[arg(long)]
    pub stop_guests: bool,
    /// Serve the HTTPS management API on this address (docs/API.md); off
    /// without it.
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<std::net::SocketAddr>,
    /// The API's certificate chain (PEM); a self-signed one is made in
    /// STATE_DIR/api otherwise.
    #[arg(long, value_name = "FILE", requires_all = ["listen", "tls_key"])]
    pub tls_cert: Option<PathBuf>,
    /// The API's private key (PEM).
    #[arg(long, value_name = "FILE", requires_all = ["listen", "tls_cert"])]
    pub tls_key: Option<PathBuf>,
}

/// Runs the daemon until SIGTERM or SIGINT; returns the exit code.
pub fn main(args: DaemonArgs, socket: PathBuf, logging: crate::Logging) -> u8 {
    let kapsel = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("kapsel daemon: cannot find its own binary to run VMs: {e}");
            return 1;
        }
    };
    let set = move |level: LogLevel| {
        logging.set(match level {
            LogLevel::Brief => "info",
            LogLevel::Verbose => "debug",
        })
    };
    set(if args.verbose {
        LogLevel::Verbose
    } else {
        LogLevel::Brief
    });
    let api = args.listen.map(|listen| kapsel_daemon::api::ApiOptions {
        listen,
        tls: args.tls_cert.clone().zip(args.tls_key.clone()),
        state_dir: args.state_dir.clone(),
    });
    let opts = Options {
        config: args.file,
        defines: args.defines,
        socket,
        state_dir: args.state_dir,
        kapsel,
        shutdown_timeout: Duration::from_secs(args.shutdown_timeout),
        set_log_level: Some(Box::new(set)),
        stop_guests: args.stop_guests,
    };
    match server::run_with_api(opts, api) {
        Ok(()) => 0,
        Err(e) => {
            eprint!("kapsel daemon: {e}");
            if !e.to_string().ends_with('\n') {
                eprintln!();
            }
            if matches!(e, kapsel_daemon::daemon::DaemonError::Config(_)) {
                2
            } else {
                1
            }
        }
    }
}
