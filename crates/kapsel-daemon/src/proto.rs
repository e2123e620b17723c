//! The control protocol between the command line and the daemon.
//!
//! A message is a 4-byte big-endian length followed by that many bytes of
//! JSON. Every request carries [`PROTOCOL_VERSION`]; the daemon answers a
//! request it cannot read (too long, not JSON, another version, an unknown
//! kind) with an error reply and keeps serving. After a successful
//! [`Request::Console`] reply the connection carries the console's raw bytes
//! both ways.
//!
//! # Bounds
//!
//! Every request is bounded in size, time and the work it may cause
//! ([`Request::check`] refuses one over its bounds before any work):
//!
//! | request | bound |
//! |---|---|
//! | any | [`MAX_MESSAGE`] bytes, arriving whole within the daemon's request deadline; names and IDs at most [`MAX_TARGET_LEN`] bytes |
//! | `stop` | at most [`MAX_TARGETS`] names; the daemon resolves and dedupes them, so the work is at most one power button per guest, from the connection's own thread |
//! | `start` | paths at most [`MAX_PATH_LEN`] bytes, at most [`MAX_START_DISKS`] disks, at most `MAX_VM_INTERFACES` interfaces |
//! | `exec` | at most [`MAX_EXEC_ARGS`] arguments (their total is bounded by the message) |
//! | `load` | a path of at most [`MAX_PATH_LEN`] bytes (root only) |
//! | `console`, `exec`, `wait`, `stop -w` | hold their connection (one of the caller's connection slots) while they last; a waiting request ends when its client hangs up |
//! | `status`, `pause`, `unpause`, `reload`, `reset`, `log` | one name at most; the last three are root's |

use serde::{Deserialize, Serialize};
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Instant;

/// The version of the protocol; a daemon refuses requests of another.
pub const PROTOCOL_VERSION: u32 = 1;

/// The largest message either side accepts.
pub const MAX_MESSAGE: u32 = 1 << 20;

/// The longest guest name or ID a request may give: names are at most
/// `kapsel_config::MAX_NAME_LEN` bytes, IDs fewer digits.
pub const MAX_TARGET_LEN: usize = kapsel_config::MAX_NAME_LEN;

/// The most names one `stop` may give (more guests: `stop -a`).
pub const MAX_TARGETS: usize = 1024;

/// The longest path a request may give (Linux's `PATH_MAX`).
pub const MAX_PATH_LEN: usize = 4096;

/// The most disks `start -d` may add (vmd's `VM_MAX_DISKS_PER_VM`).
pub const MAX_START_DISKS: usize = 16;

/// The most arguments of an `exec` command.
pub const MAX_EXEC_ARGS: usize = 4096;

/// What the command line asks for, with the protocol version.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Envelope {
    /// Must be [`PROTOCOL_VERSION`].
    pub version: u32,
    /// The request.
    pub request: Request,
}

/// One request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Request {
    /// Start a configured VM (with overrides), an instance of one, or a VM
    /// described entirely by the request.
    Start(StartRequest),
    /// Stop VMs: press the power button and, unless `wait` is false, wait
    /// for them to go; `force` kills at once.
    Stop {
        /// Names or IDs; empty with `all`.
        targets: Vec<String>,
        /// Every running VM.
        all: bool,
        /// Kill the VM process instead of asking the guest.
        force: bool,
        /// Wait until the VMs have stopped.
        wait: bool,
    },
    /// The table of VMs (all, or one).
    Status {
        /// Name or ID; all when None.
        target: Option<String>,
    },
    /// Attach to the serial console (replays what was kept).
    Console {
        /// Name or ID.
        target: String,
    },
    /// Run a command in a running container. After the Ok reply the
    /// connection carries the command's input (client to daemon, raw) and
    /// its output and exit status (daemon to client, framed: see
    /// `ctproc::exec_frames`).
    Exec {
        /// Name or ID of the container.
        target: String,
        /// The command and its arguments.
        argv: Vec<String>,
        /// Give the command a terminal.
        tty: bool,
        /// The terminal's size (rows, columns), with `tty`.
        #[serde(default)]
        winsize: Option<(u16, u16)>,
    },
    /// Stop the vCPUs of a running VM.
    Pause {
        /// Name or ID.
        target: String,
    },
    /// Let a paused VM run again.
    Unpause {
        /// Name or ID.
        target: String,
    },
    /// Wait until a VM has stopped.
    Wait {
        /// Name or ID.
        target: String,
    },
    /// Read the configuration file again.
    Reload,
    /// Add the VMs and switches of another configuration file.
    Load {
        /// The file (absolute, as the daemon reads it).
        path: String,
    },
    /// Reset the running state.
    Reset {
        /// What to reset.
        what: ResetWhat,
    },
    /// Change how much the daemon logs.
    Log {
        /// `brief` or `verbose`.
        level: LogLevel,
    },
}

impl Request {
    /// Checks the request against its bounds (the module's table): an
    /// error names the field and the limit.
    pub fn check(&self) -> Result<(), String> {
        let name = |what: &str, s: &str| {
            if s.len() > MAX_TARGET_LEN {
                Err(format!(
                    "{what} of {} bytes is longer than any VM or container name (at most {MAX_TARGET_LEN})",
                    s.len()
                ))
            } else {
                Ok(())
            }
        };
        let path = |what: &str, s: &str| {
            if s.len() > MAX_PATH_LEN {
                Err(format!(
                    "{what} of {} bytes is over the limit of {MAX_PATH_LEN}",
                    s.len()
                ))
            } else {
                Ok(())
            }
        };
        match self {
            Request::Start(s) => {
                name("the name", &s.name)?;
                for (what, p) in [("the kernel path", &s.kernel), ("the cdrom path", &s.cdrom)] {
                    if let Some(p) = p {
                        path(what, p)?;
                    }
                }
                if s.disks.len() > MAX_START_DISKS {
                    return Err(format!(
                        "{} disks given; a start adds at most {MAX_START_DISKS}",
                        s.disks.len()
                    ));
                }
                for d in &s.disks {
                    path("a disk path", d)?;
                }
                if let Some(n) = s.interfaces {
                    if n > kapsel_config::MAX_VM_INTERFACES {
                        return Err(format!(
                            "{n} interfaces asked; a VM has at most {}",
                            kapsel_config::MAX_VM_INTERFACES
                        ));
                    }
                }
                if let Some(sw) = &s.switch {
                    name("the switch name", sw)?;
                }
                if let Some(t) = &s.template {
                    name("the template name", t)?;
                }
                Ok(())
            }
            Request::Stop { targets, .. } => {
                if targets.len() > MAX_TARGETS {
                    return Err(format!(
                        "{} names given; one stop takes at most {MAX_TARGETS} (stop -a stops every VM)",
                        targets.len()
                    ));
                }
                targets.iter().try_for_each(|t| name("a name", t))
            }
            Request::Status { target } => target.as_deref().map_or(Ok(()), |t| name("the name", t)),
            Request::Console { target }
            | Request::Pause { target }
            | Request::Unpause { target }
            | Request::Wait { target } => name("the name", target),
            Request::Exec { target, argv, .. } => {
                name("the name", target)?;
                if argv.len() > MAX_EXEC_ARGS {
                    return Err(format!(
                        "a command of {} arguments; exec takes at most {MAX_EXEC_ARGS}",
                        argv.len()
                    ));
                }
                Ok(())
            }
            Request::Load { path: p } => path("the path", p),
            Request::Reload | Request::Reset { .. } | Request::Log { .. } => Ok(()),
        }
    }
}

/// `text` fit for one log line: control characters (newlines, carriage
/// returns, terminal escapes) are escaped as `\n`, `\u{1b}`..., so that
/// text from users or guests cannot forge or hide log lines.
pub fn log_safe(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    out
}

/// What `kapsel reset` resets.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ResetWhat {
    /// Stop every VM, recreate the switches, reload the configuration.
    All,
    /// Stop every VM.
    Vms,
    /// Recreate the switches.
    Switches,
}

/// `kapsel log` levels.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LogLevel {
    /// Warnings and VM state changes.
    Brief,
    /// Everything the daemon decides.
    Verbose,
}

/// `kapsel start NAME` and its options (vmctl's).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct StartRequest {
    /// The VM to start (or to create, for a VM that is not configured).
    pub name: String,
    /// `-b`: the kernel.
    pub kernel: Option<String>,
    /// `-d`: disks, added to the configured ones.
    pub disks: Vec<String>,
    /// `-i`: number of interfaces.
    pub interfaces: Option<u32>,
    /// `-L`: add a local interface.
    pub local_interface: bool,
    /// `-m`: memory in bytes.
    pub memory: Option<u64>,
    /// `-n`: add an interface on this switch.
    pub switch: Option<String>,
    /// `-r`: a cdrom image.
    pub cdrom: Option<String>,
    /// `-t`: start a new instance of this VM.
    pub template: Option<String>,
}

/// The daemon's answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Response {
    /// Done; a line for the user (may be empty).
    Ok {
        /// What happened, for the user.
        message: String,
    },
    /// The VM table.
    Status {
        /// One entry per VM.
        vms: Vec<VmStatus>,
    },
    /// The request failed; a line that says why and what to do.
    Error {
        /// The reason and the fix.
        message: String,
    },
}

/// A VM's state.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    /// Not running.
    Stopped,
    /// Its monitor is starting it.
    Starting,
    /// Its process runs the guest.
    Running,
    /// Its vCPUs are stopped.
    Paused,
    /// The power button was pressed; waiting for the guest to go.
    Stopping,
}

impl std::fmt::Display for VmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            VmState::Stopped => "stopped",
            VmState::Starting => "starting",
            VmState::Running => "running",
            VmState::Paused => "paused",
            VmState::Stopping => "stopping",
        })
    }
}

/// One line of `kapsel status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VmStatus {
    /// The daemon's number for the VM.
    pub id: u32,
    /// Its name.
    pub name: String,
    /// The VM process, while it runs.
    pub pid: Option<u32>,
    /// vCPUs.
    pub vcpus: u32,
    /// Guest memory in bytes.
    pub max_mem: u64,
    /// Memory the VM process has resident, in bytes, while it runs.
    pub cur_mem: Option<u64>,
    /// `user[:group]` or `root`.
    pub owner: String,
    /// Its state.
    pub state: VmState,
    /// Why it last stopped (`powered off`, `killed by SIGKILL`, ...).
    pub last_exit: Option<String>,
    /// Started automatically by the daemon (`enable`, the default).
    pub enabled: bool,
    /// `vm` or `container`.
    #[serde(default = "vm_kind")]
    pub kind: String,
    /// Interfaces of a running guest that are not ports of their switch's
    /// bridge (`IFNAME (bridge BRIDGE: WHY)`): the bridge was deleted or
    /// the port taken out behind the daemon's back; `kapsel reset
    /// switches` puts them back.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub detached: Vec<String>,
}

fn vm_kind() -> String {
    "vm".into()
}

/// Errors reading or writing a message.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    /// The stream failed or ended.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// A message over [`MAX_MESSAGE`].
    #[error("message of {0} bytes is over the limit of {MAX_MESSAGE}")]
    TooLong(u32),
    /// Not the JSON of the expected type.
    #[error("malformed message: {0}")]
    Malformed(#[from] serde_json::Error),
}

/// Writes one message.
pub fn write_message<T: Serialize>(w: &mut impl Write, msg: &T) -> Result<(), ProtoError> {
    let body = serde_json::to_vec(msg)?;
    let len = u32::try_from(body.len())
        .ok()
        .filter(|&n| n <= MAX_MESSAGE)
        .ok_or(ProtoError::TooLong(u32::MAX))?;
    let mut frame = Vec::with_capacity(body.len() + 4);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&body);
    w.write_all(&frame)?;
    w.flush()?;
    Ok(())
}

/// Reads one message's bytes; the caller decodes them.
pub fn read_frame(r: &mut impl Read) -> Result<Vec<u8>, ProtoError> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len);
    if len > MAX_MESSAGE {
        return Err(ProtoError::TooLong(len));
    }
    // Grows with what arrives, not with what the header claims.
    let mut body = Vec::with_capacity((len as usize).min(64 * 1024));
    r.take(u64::from(len)).read_to_end(&mut body)?;
    if body.len() != len as usize {
        return Err(ProtoError::Io(io::ErrorKind::UnexpectedEof.into()));
    }
    Ok(body)
}

/// Reads one message's bytes from `stream`, which must deliver all of it
/// by `deadline` (a slow sender cannot hold the reader longer by sending a
/// byte now and then: the socket timeout shrinks as time passes).
pub fn read_frame_by(stream: &UnixStream, deadline: Instant) -> Result<Vec<u8>, ProtoError> {
    read_frame(&mut DeadlineReader { stream, deadline })
}

struct DeadlineReader<'a> {
    stream: &'a UnixStream,
    deadline: Instant,
}

impl Read for DeadlineReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the request did not arrive in time",
            ));
        }
        self.stream.set_read_timeout(Some(left))?;
        let mut stream = self.stream;
        stream.read(buf)
    }
}

/// Reads and decodes one message.
pub fn read_message<T: for<'de> Deserialize<'de>>(r: &mut impl Read) -> Result<T, ProtoError> {
    let body = read_frame(r)?;
    Ok(serde_json::from_slice(&body)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let req = Envelope {
            version: PROTOCOL_VERSION,
            request: Request::Stop {
                targets: vec!["web".into()],
                all: false,
                force: true,
                wait: false,
            },
        };
        let mut buf = Vec::new();
        write_message(&mut buf, &req).unwrap();
        assert_eq!(&buf[..4], &((buf.len() - 4) as u32).to_be_bytes());
        let back: Envelope = read_message(&mut buf.as_slice()).unwrap();
        assert_eq!(back, req);
    }

    #[test]
    fn oversize_and_garbage_are_errors() {
        let mut huge = (MAX_MESSAGE + 1).to_be_bytes().to_vec();
        huge.extend_from_slice(b"{}");
        assert!(matches!(
            read_frame(&mut huge.as_slice()),
            Err(ProtoError::TooLong(_))
        ));
        let mut bad = 5u32.to_be_bytes().to_vec();
        bad.extend_from_slice(b"hello");
        assert!(matches!(
            read_message::<Envelope>(&mut bad.as_slice()),
            Err(ProtoError::Malformed(_))
        ));
        let mut short = 10u32.to_be_bytes().to_vec();
        short.extend_from_slice(b"{}");
        assert!(matches!(
            read_message::<Envelope>(&mut short.as_slice()),
            Err(ProtoError::Io(_))
        ));
    }

    #[test]
    fn a_slow_sender_meets_the_deadline() {
        let (mut client, server) = UnixStream::pair().unwrap();
        let start = Instant::now();
        let sender = std::thread::spawn(move || {
            // A byte every 100 ms: each read is quick, the whole is not.
            for b in [0u8, 0, 0, 10] {
                if client.write_all(&[b]).is_err() {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            let _ = client.write_all(b"0123456789");
        });
        let deadline = start + std::time::Duration::from_millis(250);
        let err = read_frame_by(&server, deadline).unwrap_err();
        let waited = start.elapsed();
        assert!(
            matches!(&err, ProtoError::Io(e) if matches!(e.kind(), io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock)),
            "{err}"
        );
        assert!(waited < std::time::Duration::from_millis(400), "{waited:?}");
        drop(server);
        sender.join().unwrap();
        // In time, it is read.
        let (mut client, server) = UnixStream::pair().unwrap();
        let mut msg = 2u32.to_be_bytes().to_vec();
        msg.extend_from_slice(b"{}");
        client.write_all(&msg).unwrap();
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        assert_eq!(read_frame_by(&server, deadline).unwrap(), b"{}");
    }

    #[test]
    fn requests_over_their_bounds_are_refused() {
        let stop = |targets: Vec<String>| Request::Stop {
            targets,
            all: false,
            force: false,
            wait: false,
        };
        assert!(stop(vec!["web".into(); MAX_TARGETS]).check().is_ok());
        let e = stop(vec!["web".into(); MAX_TARGETS + 1])
            .check()
            .unwrap_err();
        assert!(e.contains("at most 1024"), "{e}");
        assert!(stop(vec!["x".repeat(MAX_TARGET_LEN + 1)]).check().is_err());
        let exec = |n: usize| Request::Exec {
            target: "ct".into(),
            argv: vec!["a".into(); n],
            tty: false,
            winsize: None,
        };
        assert!(exec(MAX_EXEC_ARGS).check().is_ok());
        assert!(exec(MAX_EXEC_ARGS + 1).check().is_err());
        let start = |f: &dyn Fn(&mut StartRequest)| {
            let mut s = StartRequest {
                name: "vm".into(),
                ..StartRequest::default()
            };
            f(&mut s);
            Request::Start(s).check()
        };
        assert!(start(&|_| {}).is_ok());
        assert!(start(&|s| s.disks = vec!["/d".into(); MAX_START_DISKS + 1]).is_err());
        assert!(start(&|s| s.interfaces = Some(u32::MAX)).is_err());
        assert!(start(&|s| s.kernel = Some("/".repeat(MAX_PATH_LEN + 1))).is_err());
        assert!(Request::Wait {
            target: "w".repeat(1 << 16)
        }
        .check()
        .is_err());
    }

    #[test]
    fn log_lines_cannot_be_forged() {
        assert_eq!(
            log_safe("x\nkapseld: vm web: powered off\r\u{1b}[2K"),
            "x\\nkapseld: vm web: powered off\\r\\u{1b}[2K"
        );
        assert_eq!(log_safe("plain é"), "plain é");
    }

    #[test]
    fn unknown_kind_is_malformed() {
        let body = br#"{"version":1,"request":{"kind":"format_disk"}}"#;
        let mut msg = (body.len() as u32).to_be_bytes().to_vec();
        msg.extend_from_slice(body);
        assert!(matches!(
            read_message::<Envelope>(&mut msg.as_slice()),
            Err(ProtoError::Malformed(_))
        ));
    }
}
