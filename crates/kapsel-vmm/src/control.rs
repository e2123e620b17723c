//! The control channel of a VM process and its exit report: the typed
//! contract between a VM process and its supervisor (kapseld, or whoever
//! started `kapsel run --control-fd N --exit-fd M`).
//!
//! The channel is an inherited, connected Unix stream socket; only the
//! holder of its other end can use it. Each message is a frame: a 4-byte
//! big-endian length, then that many bytes of JSON, at most
//! [`MAX_FRAME`]. The supervisor sends [`RequestFrame`]s; the VM process
//! answers each with a [`ReplyFrame`] carrying the same id. A frame the VM
//! process cannot read gets an error reply (id 0) and the VM runs on; a
//! length over the bound cannot be skipped, so it is answered and the
//! channel closed (the VM still runs on).
//!
//! The exit report is one frame holding an [`EndReport`], written on the
//! inherited pipe `--exit-fd` just before the VM process exits: how the VM
//! ended, typed, instead of a line of stderr to be parsed.

use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// The largest frame either side accepts.
pub const MAX_FRAME: usize = 64 << 10;

/// What the supervisor asks of a VM: `"pause"`, or `{"name": {fields}}`
/// for a request with arguments (serde's external tagging, which leaves
/// no room for unknown fields beside a request's name).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Press the ACPI power button; the guest has the shutdown timeout to
    /// power off before the VM is stopped. A paused VM takes the press
    /// when it is resumed (the timeout runs from the press).
    PowerButton,
    /// Stop every vCPU where it is (out of KVM_RUN, parked).
    Pause,
    /// Let a paused VM's vCPUs run again.
    Resume,
    /// How the VM is doing ([`VmStatus`]).
    Status,
}

/// A request with the id its reply carries back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestFrame {
    /// Chosen by the supervisor; 0 is kept for replies to unreadable frames.
    pub id: u64,
    /// What is asked.
    pub request: Request,
}

/// Whether the vCPUs run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// The vCPUs run the guest.
    Running,
    /// The vCPUs are parked ([`Request::Pause`]).
    Paused,
}

/// A VM's figures, as [`Request::Status`] returns them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmStatus {
    /// Running or paused.
    pub state: RunState,
    /// The number of vCPUs.
    pub vcpus: u8,
    /// The guest memory size, in bytes.
    pub memory_bytes: u64,
    /// The guest memory resident in host RAM, in bytes.
    pub resident_bytes: u64,
    /// Milliseconds since the guest first booted.
    pub uptime_ms: u64,
    /// How many times the guest booted (a reset boots it again).
    pub boots: u32,
    /// Whether the power button was pressed and the guest has not yet
    /// powered off.
    pub powering_off: bool,
}

/// The answer to one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case", deny_unknown_fields)]
pub enum Reply {
    /// Done.
    Ok,
    /// The figures asked for.
    Status {
        /// The figures.
        status: VmStatus,
    },
    /// Not done, and why.
    Error {
        /// A sentence for the user.
        message: String,
    },
}

/// A reply with the id of its request (0: the request could not be read).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplyFrame {
    /// The request's id.
    pub id: u64,
    /// The answer.
    pub reply: Reply,
}

/// How a VM process ended, reported on `--exit-fd`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "ended", rename_all = "snake_case", deny_unknown_fields)]
pub enum EndReport {
    /// The guest powered off.
    PowerOff,
    /// The guest reset and the VM process was told to end on a reset.
    Reset,
    /// The guest kernel reported a panic through pvpanic.
    GuestPanic,
    /// A vCPU triple-faulted.
    TripleFault {
        /// The vCPU.
        cpu: u8,
    },
    /// The guest did not power off within this many seconds of the power
    /// button, and was stopped.
    ShutdownTimeout {
        /// The shutdown timeout.
        seconds: u64,
    },
    /// Stopped by the host without the guest's consent (a second signal,
    /// the console escape).
    Stopped {
        /// What happened.
        reason: String,
    },
    /// KVM could not run the guest.
    KvmFailure {
        /// The vCPU.
        cpu: u8,
        /// What KVM reported.
        reason: String,
    },
    /// The VM could not start or run (a file it cannot open, a host
    /// limit, a sandbox failure).
    Error {
        /// The error, for the user.
        message: String,
    },
}

impl EndReport {
    /// Whether this is a failure (anything but a power-off or a reset).
    pub fn is_failure(&self) -> bool {
        !matches!(self, EndReport::PowerOff | EndReport::Reset)
    }

    /// The reason shown to users.
    pub fn describe(&self) -> String {
        match self {
            EndReport::PowerOff => "powered off".into(),
            EndReport::Reset => "reset".into(),
            EndReport::GuestPanic => {
                "failed: the guest kernel panicked (reported through pvpanic)".into()
            }
            EndReport::TripleFault { cpu } => format!("failed: guest triple fault on vCPU {cpu}"),
            EndReport::ShutdownTimeout { seconds } => format!(
                "stopped: the guest did not power off within {seconds} s of the ACPI power button"
            ),
            EndReport::Stopped { reason } => format!("stopped: {reason}"),
            EndReport::KvmFailure { cpu, reason } => {
                format!("failed: KVM failure on vCPU {cpu}: {reason}")
            }
            EndReport::Error { message } => format!("failed: {message}"),
        }
    }

    /// Writes the report as one frame on `fd` (the inherited exit pipe)
    /// and closes it. A supervisor that is gone is no reason to fail, so
    /// errors are ignored.
    pub fn send(&self, fd: std::os::fd::OwnedFd) {
        let _ = std::fs::File::from(fd).write_all(&encode(self));
    }

    /// Reads a report written by [`EndReport::send`] from everything the
    /// exit pipe held.
    pub fn parse(bytes: &[u8]) -> Result<EndReport, String> {
        let mut buf = FrameBuffer::default();
        buf.push(bytes);
        match buf.next_frame() {
            Some(Ok(body)) => serde_json::from_slice(&body)
                .map_err(|e| format!("the exit report is damaged: {e}")),
            Some(Err(e)) => Err(e),
            None if bytes.is_empty() => Err("no exit report".into()),
            None => Err("the exit report is cut short".into()),
        }
    }
}

impl From<&crate::VmExit> for EndReport {
    fn from(exit: &crate::VmExit) -> EndReport {
        use crate::VmExit;
        match exit {
            VmExit::PowerOff => EndReport::PowerOff,
            VmExit::Reset => EndReport::Reset,
            VmExit::GuestPanic => EndReport::GuestPanic,
            VmExit::TripleFault { cpu } => EndReport::TripleFault { cpu: *cpu },
            VmExit::ShutdownTimeout { seconds } => EndReport::ShutdownTimeout { seconds: *seconds },
            VmExit::ForcedStop { reason } => EndReport::Stopped {
                reason: reason.clone(),
            },
            VmExit::KvmFailure { cpu, reason } => EndReport::KvmFailure {
                cpu: *cpu,
                reason: reason.clone(),
            },
        }
    }
}

/// One frame: the length, then the JSON of `value`.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing these plain types cannot fail.
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    frame
}

/// Bytes received and not yet made into frames.
#[derive(Debug, Default)]
pub struct FrameBuffer {
    bytes: Vec<u8>,
}

impl FrameBuffer {
    /// Adds received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.bytes.extend_from_slice(bytes);
    }

    /// The next whole frame's body, or an error for a length over
    /// [`MAX_FRAME`] (the stream cannot be followed after it), or None
    /// when more bytes are needed.
    pub fn next_frame(&mut self) -> Option<Result<Vec<u8>, String>> {
        let header: [u8; 4] = self.bytes.get(..4)?.try_into().ok()?;
        let len = u32::from_be_bytes(header) as usize;
        if len > MAX_FRAME {
            return Some(Err(format!(
                "a frame of {len} bytes is larger than the {MAX_FRAME} allowed; frames are a \
                 4-byte big-endian length and that many bytes of JSON"
            )));
        }
        if self.bytes.len() < 4 + len {
            return None;
        }
        let body = self.bytes[4..4 + len].to_vec();
        self.bytes.drain(..4 + len);
        Some(Ok(body))
    }
}

/// What the VM process does with one frame's body: the reply to send.
pub fn parse_request(body: &[u8]) -> Result<RequestFrame, ReplyFrame> {
    serde_json::from_slice::<RequestFrame>(body).map_err(|e| ReplyFrame {
        id: 0,
        reply: Reply::Error {
            message: format!("unreadable request ({e}); send {{\"id\":N,\"request\":\"status\"}}"),
        },
    })
}

/// The supervisor's end of a control channel.
#[derive(Debug)]
pub struct Client {
    stream: UnixStream,
    buffer: FrameBuffer,
    next_id: u64,
}

impl Client {
    /// Takes over the supervisor's end of the socket.
    pub fn new(stream: UnixStream) -> Client {
        Client {
            stream,
            buffer: FrameBuffer::default(),
            next_id: 1,
        }
    }

    /// Sends `request` and waits up to `timeout` for its reply. A reply
    /// that comes too late is skipped by the next call.
    pub fn call(&mut self, request: Request, timeout: Duration) -> Result<Reply, String> {
        let id = self.next_id;
        self.next_id += 1;
        let deadline = Instant::now() + timeout;
        let gone = |e: std::io::Error| format!("the control channel is closed ({e})");
        self.stream
            .set_write_timeout(Some(timeout.max(Duration::from_millis(1))))
            .map_err(gone)?;
        self.stream
            .write_all(&encode(&RequestFrame { id, request }))
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                    format!("no answer within {} ms", timeout.as_millis())
                }
                _ => gone(e),
            })?;
        loop {
            while let Some(frame) = self.buffer.next_frame() {
                let body = frame?;
                let reply: ReplyFrame = serde_json::from_slice(&body)
                    .map_err(|e| format!("unreadable reply from the VM process: {e}"))?;
                if reply.id == id || reply.id == 0 {
                    return Ok(reply.reply);
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!("no answer within {} ms", timeout.as_millis()));
            }
            self.stream.set_read_timeout(Some(left)).map_err(gone)?;
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err("the VM process closed its control channel".into()),
                Ok(n) => self.buffer.push(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(gone(e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_cut_from_a_stream() {
        let mut buf = FrameBuffer::default();
        let frame = encode(&RequestFrame {
            id: 7,
            request: Request::Pause,
        });
        buf.push(&frame[..3]);
        assert!(buf.next_frame().is_none());
        buf.push(&frame[3..]);
        buf.push(&frame);
        for _ in 0..2 {
            let body = buf.next_frame().unwrap().unwrap();
            assert_eq!(
                parse_request(&body).unwrap(),
                RequestFrame {
                    id: 7,
                    request: Request::Pause
                }
            );
        }
        assert!(buf.next_frame().is_none());
        buf.push(b"GET / HTTP/1.1\r\n");
        assert!(buf.next_frame().unwrap().unwrap_err().contains("larger"));
    }

    #[test]
    fn bad_requests_get_an_error_reply() {
        for bad in [
            &br#"{"id":1,"request":"reboot"}"#[..],
            br#"{"id":1,"request":{"pause":{"now":true}}}"#,
            br#"{"id":1,"request":"pause","now":true}"#,
            br#"{"id":1}"#,
            b"\xff\x00",
            b"",
        ] {
            let reply = parse_request(bad).unwrap_err();
            assert_eq!(reply.id, 0);
            assert!(matches!(reply.reply, Reply::Error { .. }));
        }
    }

    #[test]
    fn replies_and_reports_round_trip() {
        let status = ReplyFrame {
            id: 3,
            reply: Reply::Status {
                status: VmStatus {
                    state: RunState::Paused,
                    vcpus: 2,
                    memory_bytes: 64 << 20,
                    resident_bytes: 1 << 20,
                    uptime_ms: 1500,
                    boots: 1,
                    powering_off: false,
                },
            },
        };
        let body = serde_json::to_vec(&status).unwrap();
        assert_eq!(serde_json::from_slice::<ReplyFrame>(&body).unwrap(), status);
        for report in [
            EndReport::PowerOff,
            EndReport::TripleFault { cpu: 1 },
            EndReport::ShutdownTimeout { seconds: 30 },
            EndReport::Error {
                message: "no kernel".into(),
            },
        ] {
            assert_eq!(EndReport::parse(&encode(&report)).unwrap(), report);
        }
        assert!(EndReport::parse(b"")
            .unwrap_err()
            .contains("no exit report"));
        assert!(EndReport::parse(&encode(&EndReport::PowerOff)[..5]).is_err());
        assert!(!EndReport::PowerOff.is_failure());
        assert!(EndReport::GuestPanic.describe().contains("pvpanic"));
    }

    #[test]
    fn the_client_skips_late_replies() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let mut client = Client::new(a);
        let err = client
            .call(Request::Status, Duration::from_millis(20))
            .unwrap_err();
        assert!(err.contains("no answer"), "{err}");
        let server = std::thread::spawn(move || {
            let mut buf = FrameBuffer::default();
            let mut ids = Vec::new();
            while ids.len() < 2 {
                let mut chunk = [0u8; 256];
                let n = b.read(&mut chunk).unwrap();
                buf.push(&chunk[..n]);
                while let Some(Ok(body)) = buf.next_frame() {
                    ids.push(parse_request(&body).unwrap().id);
                }
            }
            for id in ids {
                b.write_all(&encode(&ReplyFrame {
                    id,
                    reply: Reply::Error {
                        message: format!("reply {id}"),
                    },
                }))
                .unwrap();
            }
        });
        let reply = client.call(Request::Pause, Duration::from_secs(5)).unwrap();
        assert_eq!(
            reply,
            Reply::Error {
                message: "reply 2".into()
            }
        );
        server.join().unwrap();
        assert!(client
            .call(Request::Resume, Duration::from_secs(5))
            .unwrap_err()
            .contains("closed"));
    }
}
