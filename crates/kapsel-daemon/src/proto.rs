//! The control protocol between the command line and the daemon.
//!
//! A message is a 4-byte big-endian length followed by that many bytes of
//! JSON. Every request carries [`PROTOCOL_VERSION`]; the daemon answers a
//! request it cannot read (too long, not JSON, another version, an unknown
//! kind) with an error reply and keeps serving. After a successful
//! [`Request::Console`] reply the connection carries the console's raw bytes
//! both ways.

use serde::{Deserialize, Serialize};
use std::io::{self, Read, Write};

/// The version of the protocol; a daemon refuses requests of another.
pub const PROTOCOL_VERSION: u32 = 1;

/// The largest message either side accepts.
pub const MAX_MESSAGE: u32 = 1 << 20;

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
    let mut body = vec![0u8; len as usize];
    r.read_exact(&mut body)?;
    Ok(body)
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
