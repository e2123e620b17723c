//! `kapsel run-container`: run one container in the foreground.

use clap::Args;
use kapsel_container::{ConsoleSpec, Container, ContainerSpec, Error, IdMap, VethSpec};
use kapsel_host::signals::SignalFd;
use kapsel_host::term;
use std::io::{IsTerminal, Read, Write};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Arguments of `kapsel run-container`.
#[derive(Args, Debug)]
pub struct RunContainerArgs {
    /// The container's root directory.
    #[arg(long, value_name = "DIR")]
    pub root: PathBuf,
    /// The init of a system container (default /sbin/init when no command follows `--`).
    #[arg(long, value_name = "PATH", conflicts_with = "command")]
    pub init: Option<String>,
    /// Name: hostname inside and cgroup kapsel/NAME (default kapsel-PID).
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Memory limit, written like vm.conf sizes (512M, 2G).
    #[arg(long, short = 'm', value_name = "SIZE", value_parser = crate::run::parse_size)]
    pub memory: Option<u64>,
    /// CPU limit in CPUs (0.5, 2), enforced as a CFS quota.
    #[arg(long, short = 'c', value_name = "N")]
    pub cpus: Option<f64>,
    /// Limit on processes and threads.
    #[arg(long, value_name = "N")]
    pub pids: Option<u64>,
    /// A veth pair: host side HOSTIFNAME, eth0 inside: HOSTIFNAME[,mac=52:54:00:12:34:56].
    #[arg(long, value_name = "SPEC", value_parser = parse_veth)]
    pub net_veth: Option<VethSpec>,
    /// Console: stdio (a pty when stdin is a terminal, else the streams as they are), none, or file:PATH.
    #[arg(long, value_name = "WHERE", default_value = "stdio", value_parser = parse_console)]
    pub console: ConsoleArg,
    /// An environment variable for the init, KEY=VALUE (repeatable).
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Run in a user namespace: root inside is host uid/gid HOSTID, COUNT ids mapped.
    #[arg(long, value_name = "HOSTID:COUNT", value_parser = parse_userns)]
    pub userns: Option<IdMap>,
    /// Seconds the init gets to power off after SIGTERM/SIGINT/SIGHUP; then (or on a
    /// second signal) it is killed.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub stop_timeout: u64,
    /// The command of an application container and its arguments.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// `--console` values.
#[derive(Clone, Debug, PartialEq)]
pub enum ConsoleArg {
    /// The terminal or the streams as they are.
    Stdio,
    /// `/dev/null`.
    None,
    /// Output appended to a file.
    File(PathBuf),
}

/// `--console` is written as `kapsel run`'s.
fn parse_console(text: &str) -> Result<ConsoleArg, String> {
    use kapsel_vmm::ConsoleSpec as VmConsole;
    Ok(match crate::run::parse_console(text)? {
        VmConsole::Stdio => ConsoleArg::Stdio,
        VmConsole::None => ConsoleArg::None,
        VmConsole::File(path) => ConsoleArg::File(path),
    })
}

fn parse_veth(text: &str) -> Result<VethSpec, String> {
    let mut parts = text.split(',');
    let name = parts
        .next()
        .filter(|n| !n.is_empty() && !n.contains('='))
        .ok_or("give the host interface name first: HOSTIFNAME[,mac=MAC]")?;
    let mut veth = VethSpec {
        host_name: name.to_string(),
        mac: None,
    };
    for opt in parts {
        match opt.split_once('=') {
            Some(("mac", mac)) => veth.mac = Some(crate::run::parse_mac(mac)?),
            _ => return Err(format!("unknown veth option \"{opt}\"; use mac=MAC")),
        }
    }
    Ok(veth)
}

fn parse_userns(text: &str) -> Result<IdMap, String> {
    let bad = || format!("\"{text}\" is not HOSTID:COUNT (e.g. 100000:65536)");
    let (id, count) = text.split_once(':').ok_or_else(bad)?;
    let id: u32 = id.parse().map_err(|_| bad())?;
    Ok(IdMap {
        host_uid: id,
        host_gid: id,
        count: count.parse().map_err(|_| bad())?,
    })
}

/// Runs `kapsel run-container`; returns the process exit code.
pub fn main(args: RunContainerArgs) -> u8 {
    let init = if !args.command.is_empty() {
        args.command
    } else {
        vec![args.init.unwrap_or_else(|| "/sbin/init".into())]
    };
    let name = args
        .name
        .unwrap_or_else(|| format!("kapsel-{}", std::process::id()));
    let tty = std::io::stdin().is_terminal();
    let mut spec = ContainerSpec::new(name, args.root, init);
    spec.memory = args.memory;
    spec.cpus = args.cpus;
    spec.pids = args.pids;
    spec.network = args.net_veth;
    spec.env = args.env;
    spec.user_map = args.userns;
    // The root as it is when shifted to the map by hand, else idmapped.
    spec.idmap_root = args.userns.is_some_and(|m| !m.shifted(&spec.root));
    spec.console = match args.console {
        ConsoleArg::Stdio if tty => ConsoleSpec::Pty,
        ConsoleArg::Stdio => ConsoleSpec::Inherit,
        ConsoleArg::None => ConsoleSpec::None,
        ConsoleArg::File(p) => ConsoleSpec::File(p),
    };
    // Stop requests are read from a signalfd; block them before the
    // container is cloned (its init resets its own mask).
    let signals = match block_stop_signals() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("kapsel run-container: signalfd: {e}");
            return 1;
        }
    };
    let mut container = match Container::start(&spec) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kapsel run-container: {e}");
            return e.exit_code();
        }
    };
    let status = supervise(
        &mut container,
        &signals,
        Duration::from_secs(args.stop_timeout),
    );
    let cleanup = container.cleanup();
    match (status, cleanup) {
        (Ok(s), Ok(())) => {
            tracing::info!("container {s}");
            s.code().clamp(0, 255) as u8
        }
        (Err(e), _) | (Ok(_), Err(e)) => {
            eprintln!("kapsel run-container: {e}");
            1
        }
    }
}

/// SIGTERM, SIGINT and SIGHUP (stop requests) and SIGWINCH (the terminal's
/// size changed), blocked and read through a signalfd.
type StopSignals = SignalFd;

fn block_stop_signals() -> std::io::Result<StopSignals> {
    SignalFd::block(&[libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGWINCH])
}

/// Gives the container's pty the size of kapsel's terminal.
fn copy_window_size(master: &std::fs::File) {
    if let Some((rows, cols)) = term::window_size(0) {
        let _ = term::set_window_size(master.as_raw_fd(), rows, cols);
    }
}

/// Waits for the init to exit, relaying the console pty. The first stop
/// signal asks the init to power off; a second one, or `timeout` passing,
/// kills the container.
fn supervise(
    c: &mut Container,
    signals: &StopSignals,
    timeout: Duration,
) -> Result<kapsel_container::ExitStatus, Error> {
    let console = c.console().and_then(|m| m.try_clone().ok());
    let _raw = console.as_ref().and_then(|m| {
        copy_window_size(m);
        term::RawMode::enter(0)
    });
    let mut stdin_open = console.is_some();
    // With no slave open (the init closed its console, and may open it
    // again), the master reports a hang-up at every poll: look at it again
    // only after a pause instead of spinning.
    let mut console_quiet_until: Option<Instant> = None;
    let mut kill_at: Option<Instant> = None;
    let mut buf = [0u8; 4096];
    loop {
        let now = Instant::now();
        if console_quiet_until.is_some_and(|t| now >= t) {
            console_quiet_until = None;
        }
        let mut fds = vec![
            kapsel_host::fd::pollin(c.pidfd().as_raw_fd()),
            kapsel_host::fd::pollin(signals.as_raw_fd()),
        ];
        let watch_console = console.is_some() && console_quiet_until.is_none();
        if let (Some(m), true) = (&console, watch_console) {
            fds.push(kapsel_host::fd::pollin(m.as_raw_fd()));
        }
        if stdin_open {
            fds.push(kapsel_host::fd::pollin(0));
        }
        let wake = [console_quiet_until, kill_at].into_iter().flatten().min();
        let wait_ms = wake.map_or(-1, |t| {
            t.saturating_duration_since(now)
                .as_millis()
                .min(i32::MAX as u128) as i32
        });
        // SAFETY: polls the pollfds in `fds`.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, wait_ms) };
        if n < 0 {
            continue; // EINTR
        }
        if let Some(m) = &console {
            let mut next = 2;
            if watch_console {
                if fds[2].revents != 0 {
                    match (&*m).read(&mut buf) {
                        Ok(k) if k > 0 => {
                            let mut out = std::io::stdout().lock();
                            let _ = out.write_all(&buf[..k]);
                            let _ = out.flush();
                        }
                        _ => {
                            console_quiet_until = Some(Instant::now() + Duration::from_millis(100))
                        }
                    }
                }
                next = 3;
            }
            if stdin_open && fds.get(next).is_some_and(|f| f.revents != 0) {
                match std::io::stdin().lock().read(&mut buf) {
                    Ok(k) if k > 0 => {
                        let _ = (&*m).write_all(&buf[..k]);
                    }
                    _ => stdin_open = false,
                }
            }
        }
        if fds[1].revents != 0 {
            match signals.take() {
                Some(libc::SIGWINCH) => {
                    if let Some(m) = &console {
                        copy_window_size(m);
                    }
                }
                Some(_) if kill_at.is_none() => {
                    tracing::info!(
                        "stop requested: sending signal {} to the init",
                        c.stop_signal()
                    );
                    let _ = c.thaw();
                    match c.signal(c.stop_signal()) {
                        Ok(()) | Err(Error::Exited) => {}
                        Err(e) => return Err(e),
                    }
                    kill_at = Some(Instant::now() + timeout);
                }
                Some(_) => {
                    eprintln!("kapsel run-container: second stop request: killing the container");
                    return c.kill();
                }
                None => {}
            }
        }
        if let Some(s) = c.try_wait()? {
            return Ok(s);
        }
        if kill_at.is_some_and(|t| Instant::now() >= t) {
            eprintln!("kapsel run-container: the init did not stop within {timeout:?}: killing the container");
            return c.kill();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_specs() {
        let v = parse_veth("kc0,mac=52:54:00:aa:bb:cc").unwrap();
        assert_eq!(v.host_name, "kc0");
        assert_eq!(v.mac, Some([0x52, 0x54, 0, 0xaa, 0xbb, 0xcc]));
        assert_eq!(parse_veth("kc1").unwrap().mac, None);
        assert!(parse_veth("mac=52:54:00:aa:bb:cc").is_err());
        assert!(parse_veth("kc0,mtu=9000")
            .unwrap_err()
            .contains("unknown veth option"));
        assert!(parse_veth("kc0,mac=53:00:00:00:00:00").is_err());
    }

    #[test]
    fn userns_specs() {
        let m = parse_userns("100000:65536").unwrap();
        assert_eq!((m.host_uid, m.count), (100000, 65536));
        assert!(parse_userns("100000").is_err());
        assert!(parse_userns("x:1").is_err());
    }

    #[test]
    fn console_specs() {
        assert_eq!(parse_console("stdio"), Ok(ConsoleArg::Stdio));
        assert_eq!(
            parse_console("file:/tmp/c.log"),
            Ok(ConsoleArg::File("/tmp/c.log".into()))
        );
        assert!(parse_console("pty").is_err());
    }
}
