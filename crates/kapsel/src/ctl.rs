//! The vmctl-style verbs: they talk to the daemon over its control socket.

use clap::{Args, Subcommand, ValueEnum};
use kapsel_daemon::client;
use kapsel_daemon::proto::{LogLevel, Request, ResetWhat, Response, StartRequest, VmStatus};
use std::path::PathBuf;

/// Where the daemon listens (shared by every verb).
#[derive(Args, Debug, Clone)]
pub struct SocketArg {
    /// The daemon's control socket.
    #[arg(long, env = "KAPSEL_SOCKET", default_value = kapsel_daemon::server::DEFAULT_SOCKET, global = true)]
    pub socket: PathBuf,
}

/// The verbs that go to the daemon.
#[derive(Subcommand, Debug)]
pub enum Verb {
    /// Start a VM: one from vm.conf, an instance of one (-t), or a new one (-b).
    Start(StartArgs),
    /// Stop VMs: press the power button (or kill with -f).
    Stop(StopArgs),
    /// List the VMs: ID PID VCPUS MAXMEM CURMEM TTY OWNER STATE NAME.
    #[command(visible_alias = "show")]
    Status(StatusArgs),
    /// Attach to a VM's serial console or a container's console (type ~. to leave).
    Console(Target),
    /// Run a command in a running container (with a terminal when stdin is one).
    Exec(ExecArgs),
    /// Stop a VM's vCPUs.
    Pause(Target),
    /// Let a paused VM run again.
    Unpause(Target),
    /// Wait until a VM has stopped.
    Wait(Target),
    /// Read the daemon's configuration file again.
    Reload,
    /// Reset the running state: all, vms (stop every VM) or switches.
    Reset(ResetArgs),
    /// Change how much the daemon logs.
    Log(LogArgs),
    /// Add the VMs and switches of another configuration file.
    Load(LoadArgs),
}

/// One VM, by name or ID.
#[derive(Args, Debug)]
pub struct Target {
    /// The VM's name or ID.
    #[arg(value_name = "NAME|ID")]
    pub target: String,
}

/// `kapsel exec`.
#[derive(Args, Debug)]
pub struct ExecArgs {
    /// The container's name or ID.
    #[arg(value_name = "NAME|ID")]
    pub target: String,
    /// The command and its arguments (after `--`).
    #[arg(last = true, required = true, value_name = "CMD")]
    pub argv: Vec<String>,
}

/// `kapsel start`.
#[derive(Args, Debug)]
pub struct StartArgs {
    /// Attach to the console once started.
    #[arg(short = 'c')]
    pub console: bool,
    /// Add a local interface (an address from `local prefix`, DHCP).
    #[arg(short = 'L')]
    pub local: bool,
    /// The kernel to boot.
    #[arg(short = 'b', value_name = "KERNEL")]
    pub kernel: Option<PathBuf>,
    /// A disk image (repeatable).
    #[arg(short = 'd', value_name = "DISK")]
    pub disks: Vec<PathBuf>,
    /// Number of network interfaces.
    #[arg(short = 'i', value_name = "COUNT")]
    pub interfaces: Option<u32>,
    /// Guest memory (512M, 2G).
    #[arg(short = 'm', value_name = "SIZE", value_parser = crate::run::parse_size)]
    pub memory: Option<u64>,
    /// Add an interface on this switch.
    #[arg(short = 'n', value_name = "SWITCH")]
    pub switch: Option<String>,
    /// A cdrom image.
    #[arg(short = 'r', value_name = "ISO")]
    pub cdrom: Option<PathBuf>,
    /// Start a new instance of this VM, named NAME.
    #[arg(short = 't', value_name = "TEMPLATE")]
    pub template: Option<String>,
    /// The VM's name (or ID).
    #[arg(value_name = "NAME|ID")]
    pub name: String,
}

/// `kapsel stop`.
#[derive(Args, Debug)]
pub struct StopArgs {
    /// Kill the VM instead of pressing its power button.
    #[arg(short = 'f')]
    pub force: bool,
    /// Wait until the VM has stopped.
    #[arg(short = 'w')]
    pub wait: bool,
    /// Stop every running VM.
    #[arg(short = 'a', conflicts_with = "targets")]
    pub all: bool,
    /// The VMs' names or IDs.
    #[arg(value_name = "NAME|ID")]
    pub targets: Vec<String>,
}

/// `kapsel status`.
#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    /// Only this VM.
    #[arg(value_name = "NAME|ID")]
    pub target: Option<String>,
}

/// `kapsel reset`.
#[derive(Args, Debug)]
pub struct ResetArgs {
    /// What to reset.
    #[arg(value_enum, default_value_t = ResetArg::All)]
    pub what: ResetArg,
}

/// `kapsel reset` values.
#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum ResetArg {
    /// VMs and switches; the configuration is read again.
    All,
    /// Stop every VM.
    Vms,
    /// Recreate the switches.
    Switches,
}

/// `kapsel log`.
#[derive(Args, Debug)]
pub struct LogArgs {
    /// brief or verbose.
    #[arg(value_enum)]
    pub level: LogArg,
}

/// `kapsel log` values.
#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum LogArg {
    /// Warnings and VM state changes.
    Brief,
    /// Everything the daemon decides.
    Verbose,
}

/// `kapsel load`.
#[derive(Args, Debug)]
pub struct LoadArgs {
    /// The configuration file.
    pub file: PathBuf,
}

/// Sizes as vmctl prints them: 512M, 1.5G.
pub fn scaled(bytes: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("T", 1 << 40),
        ("G", 1 << 30),
        ("M", 1 << 20),
        ("K", 1 << 10),
    ];
    for (unit, size) in UNITS {
        if bytes >= size {
            return if bytes.is_multiple_of(size) {
                format!("{}{unit}", bytes / size)
            } else {
                format!("{:.1}{unit}", bytes as f64 / size as f64)
            };
        }
    }
    format!("{bytes}B")
}

/// The status table, aligned like vmctl's.
pub fn table(vms: &[VmStatus]) -> String {
    let mut out = format!(
        "{:>5} {:>7} {:>5} {:>7} {:>7} {:>5} {:>10} {:>8} {:>9} {}\n",
        "ID", "PID", "VCPUS", "MAXMEM", "CURMEM", "TTY", "OWNER", "STATE", "TYPE", "NAME"
    );
    for v in vms {
        let dash = || "-".to_string();
        out.push_str(&format!(
            "{:>5} {:>7} {:>5} {:>7} {:>7} {:>5} {:>10} {:>8} {:>9} {}\n",
            v.id,
            v.pid.map_or_else(dash, |p| p.to_string()),
            if v.vcpus == 0 {
                dash()
            } else {
                v.vcpus.to_string()
            },
            if v.max_mem == 0 {
                dash()
            } else {
                scaled(v.max_mem)
            },
            v.cur_mem.map_or_else(dash, scaled),
            "-",
            v.owner,
            v.state.to_string(),
            v.kind,
            v.name
        ));
    }
    out
}

fn fail(message: &str) -> u8 {
    eprintln!("kapsel: {message}");
    1
}

/// Prints a plain answer; returns the exit code.
fn answer(result: Result<Response, String>) -> u8 {
    match result {
        Ok(Response::Ok { message }) => {
            if !message.is_empty() {
                println!("{message}");
            }
            0
        }
        Ok(Response::Error { message }) => fail(&message),
        Ok(Response::Status { .. }) => fail("the daemon answered with a status table"),
        Err(e) => fail(&e),
    }
}

fn absolute(p: PathBuf) -> String {
    std::path::absolute(&p).unwrap_or(p).display().to_string()
}

/// Runs a verb; returns the process exit code.
pub fn main(socket: SocketArg, verb: Verb) -> u8 {
    let socket = socket.socket;
    let send = |r: Request| client::request(&socket, r);
    match verb {
        Verb::Start(a) => {
            let name = a.name.clone();
            let req = StartRequest {
                name: a.name,
                kernel: a.kernel.map(absolute),
                disks: a.disks.into_iter().map(absolute).collect(),
                interfaces: a.interfaces,
                local_interface: a.local,
                memory: a.memory,
                switch: a.switch,
                cdrom: a.cdrom.map(absolute),
                template: a.template,
            };
            let code = answer(send(Request::Start(req)));
            if code == 0 && a.console {
                return console(&socket, name);
            }
            code
        }
        Verb::Stop(a) => answer(send(Request::Stop {
            targets: a.targets,
            all: a.all,
            force: a.force,
            wait: a.wait,
        })),
        Verb::Status(a) => match send(Request::Status { target: a.target }) {
            Ok(Response::Status { vms }) if a.json => {
                println!("{}", serde_json::to_string_pretty(&vms).unwrap_or_default());
                0
            }
            Ok(Response::Status { vms }) => {
                print!("{}", table(&vms));
                // On stderr: the table stays what scripts parse.
                for v in &vms {
                    for what in &v.detached {
                        eprintln!(
                            "kapsel: warning: {} {}: interface {what}; \
                             `kapsel reset switches` puts it back",
                            v.kind, v.name
                        );
                    }
                }
                0
            }
            other => answer(other),
        },
        Verb::Console(t) => console(&socket, t.target),
        Verb::Exec(a) => exec(&socket, a),
        Verb::Pause(t) => answer(send(Request::Pause { target: t.target })),
        Verb::Unpause(t) => answer(send(Request::Unpause { target: t.target })),
        Verb::Wait(t) => answer(send(Request::Wait { target: t.target })),
        Verb::Reload => answer(send(Request::Reload)),
        Verb::Reset(a) => answer(send(Request::Reset {
            what: match a.what {
                ResetArg::All => ResetWhat::All,
                ResetArg::Vms => ResetWhat::Vms,
                ResetArg::Switches => ResetWhat::Switches,
            },
        })),
        Verb::Log(a) => answer(send(Request::Log {
            level: match a.level {
                LogArg::Brief => LogLevel::Brief,
                LogArg::Verbose => LogLevel::Verbose,
            },
        })),
        Verb::Load(a) => answer(send(Request::Load {
            path: absolute(a.file),
        })),
    }
}

/// `kapsel exec`: the command's output and exit status come back framed;
/// what the user types goes to it. Exits with the command's status.
fn exec(socket: &std::path::Path, a: ExecArgs) -> u8 {
    use kapsel_daemon::ctproc::exec_frames;
    use std::io::{IsTerminal, Write};
    let tty = std::io::stdin().is_terminal();
    let winsize = tty.then(terminal_size).flatten();
    let (response, stream) = match client::send(
        socket,
        Request::Exec {
            target: a.target,
            argv: a.argv,
            tty,
            winsize,
        },
    ) {
        Ok(r) => r,
        Err(e) => return fail(&e),
    };
    if let Response::Error { message } = response {
        return fail(&message);
    }
    let raw = if tty {
        kapsel_host::term::RawMode::enter(0)
    } else {
        None
    };
    if let Ok(mut to_cmd) = stream.try_clone() {
        std::thread::spawn(move || {
            // Until the user's input ends (or the connection breaks, when
            // the shutdown below changes nothing).
            let _ = std::io::copy(&mut std::io::stdin(), &mut to_cmd);
            let _ = to_cmd.shutdown(std::net::Shutdown::Write);
        });
    }
    let mut from = stream;
    let mut out = std::io::stdout();
    let code = loop {
        match exec_frames::read(&mut from) {
            Ok((exec_frames::OUTPUT, bytes)) => {
                let _ = out.write_all(&bytes);
                let _ = out.flush();
            }
            Ok((exec_frames::EXIT, b)) if b.len() == 4 => {
                break i32::from_be_bytes([b[0], b[1], b[2], b[3]]);
            }
            Ok(_) => continue,
            Err(e) => {
                drop(raw);
                return fail(&format!("exec: the connection to the daemon ended: {e}"));
            }
        }
    };
    drop(raw);
    u8::try_from(code).unwrap_or(1)
}

/// The size (rows, columns) of the terminal on stdin.
fn terminal_size() -> Option<(u16, u16)> {
    kapsel_host::term::window_size(0)
}

/// `kapsel console`: the terminal in raw mode, `~.` leaves.
fn console(socket: &std::path::Path, target: String) -> u8 {
    let (response, stream) = match client::send(
        socket,
        Request::Console {
            target: target.clone(),
        },
    ) {
        Ok(r) => r,
        Err(e) => return fail(&e),
    };
    if let Response::Error { message } = response {
        return fail(&message);
    }
    let raw = kapsel_host::term::RawMode::enter(0);
    if raw.is_some() {
        eprint!("Connected to {target} (type ~. to leave)\r\n");
    }
    let ended = client::console_loop(stream, std::io::stdin(), std::io::stdout());
    drop(raw);
    match ended {
        Ok(true) => {
            eprintln!("\n[vm {target} stopped]");
            0
        }
        Ok(false) => {
            eprintln!("\n[left the console of {target}]");
            0
        }
        Err(e) => fail(&format!("console: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kapsel_daemon::proto::VmState;

    #[test]
    fn sizes_like_vmctl() {
        assert_eq!(scaled(512 << 20), "512M");
        assert_eq!(scaled(3 << 29), "1.5G");
        assert_eq!(scaled(37_748_736), "36M");
        assert_eq!(scaled(1000), "1000B");
    }

    #[test]
    fn status_table_is_aligned() {
        let vms = vec![VmStatus {
            id: 1,
            name: "web".into(),
            pid: Some(4242),
            vcpus: 2,
            max_mem: 1 << 30,
            cur_mem: Some(3 << 20),
            owner: "alice".into(),
            state: VmState::Running,
            last_exit: None,
            enabled: true,
            kind: "vm".into(),
            detached: Vec::new(),
        }];
        let t = table(&vms);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].trim_start().starts_with("ID"));
        assert!(lines[0].ends_with("NAME") && lines[1].ends_with("web"));
        assert_eq!(
            lines[0].find("STATE").map(|i| i + 5),
            lines[1].find("running").map(|i| i + 7)
        );
        assert!(lines[1].contains("4242") && lines[1].contains("1G") && lines[1].contains("3M"));
    }
}
