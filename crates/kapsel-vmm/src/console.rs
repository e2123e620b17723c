//! The guest console on the host side: where serial output goes, and the
//! terminal the input comes from (put in raw mode while the VM runs, and
//! restored however the VMM exits through this guard).

use crate::config::ConsoleSpec;
use crate::error::{Error, Result};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};

/// Writes straight to a file descriptor, without buffering, so that every
/// byte the guest sends (a shell prompt without a newline) shows at once.
pub struct FdWriter(RawFd);

impl Write for FdWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        loop {
            // SAFETY: writing from a valid slice to stdout, which stays open
            // for the life of the process.
            let n = unsafe { libc::write(self.0, buf.as_ptr().cast(), buf.len()) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub use kapsel_host::term::RawMode;

/// Which guest console receives what the user types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputTarget {
    /// COM1 (ttyS0).
    Serial,
    /// virtio-console (hvc0).
    Virtio,
}

/// One console's output sink.
enum Sink {
    Stdout,
    File(File),
    Discard,
}

impl Sink {
    fn open(spec: &ConsoleSpec, flag: &str) -> Result<Sink> {
        Ok(match spec {
            ConsoleSpec::Stdio => Sink::Stdout,
            ConsoleSpec::None => Sink::Discard,
            ConsoleSpec::File(path) => Sink::File(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| {
                        Error::InvalidConfig(format!(
                            "{flag} file:{}: cannot open for writing: {e}",
                            path.display()
                        ))
                    })?,
            ),
        })
    }

    fn writer(&self) -> Result<Box<dyn Write + Send>> {
        Ok(match self {
            Sink::Stdout => Box::new(FdWriter(std::io::stdout().as_raw_fd())),
            Sink::File(f) => Box::new(
                f.try_clone()
                    .map_err(|e| Error::io("duplicating the console file", e))?,
            ),
            Sink::Discard => Box::new(std::io::sink()),
        })
    }
}

/// The host end of the guest's consoles: the serial port and, optionally,
/// a virtio console. Input comes from stdin when either console is on
/// stdio; it goes to the virtio console if that one is.
pub struct Console {
    serial: Sink,
    virtio: Option<Sink>,
    input: Option<(RawFd, InputTarget)>,
    _raw: Option<RawMode>,
}

impl Console {
    /// Opens the serial console `serial` and the virtio console `virtio`.
    pub fn open(serial: &ConsoleSpec, virtio: Option<&ConsoleSpec>) -> Result<Console> {
        let target = match (serial, virtio) {
            (_, Some(ConsoleSpec::Stdio)) => Some(InputTarget::Virtio),
            (ConsoleSpec::Stdio, _) => Some(InputTarget::Serial),
            _ => None,
        };
        let stdin = std::io::stdin().as_raw_fd();
        Ok(Console {
            serial: Sink::open(serial, "--console")?,
            virtio: virtio
                .map(|spec| Sink::open(spec, "--virtio-console"))
                .transpose()?,
            input: target.map(|t| (stdin, t)),
            _raw: target.and_then(|_| RawMode::enter(stdin)),
        })
    }

    /// A writer for the serial port's output.
    pub fn output(&self) -> Result<Box<dyn Write + Send>> {
        self.serial.writer()
    }

    /// A writer for the virtio console's output, if there is one.
    pub fn virtio_output(&self) -> Result<Option<Box<dyn Write + Send>>> {
        self.virtio.as_ref().map(Sink::writer).transpose()
    }

    /// The descriptor guest input is read from, if any.
    pub fn input_fd(&self) -> Option<RawFd> {
        self.input.map(|(fd, _)| fd)
    }

    /// Which console gets the input.
    pub fn input_target(&self) -> Option<InputTarget> {
        self.input.map(|(_, t)| t)
    }

    /// Whether the input is an interactive terminal (escape sequence active).
    pub fn is_terminal(&self) -> bool {
        self._raw.is_some()
    }
}

/// In raw mode Ctrl-C goes to the guest; Ctrl-A then `x` leaves, as in QEMU.
pub const ESCAPE_BYTE: u8 = 0x01;
/// The byte after [`ESCAPE_BYTE`] that stops the VM.
pub const ESCAPE_QUIT: u8 = b'x';

/// Tracks the Ctrl-A x escape across reads.
#[derive(Default)]
pub struct EscapeState {
    pending: bool,
}

impl EscapeState {
    /// Filters `input`; returns the bytes for the guest and whether the
    /// user asked to quit. Ctrl-A Ctrl-A sends one Ctrl-A to the guest.
    pub fn filter(&mut self, input: &[u8]) -> (Vec<u8>, bool) {
        let mut out = Vec::with_capacity(input.len());
        for &b in input {
            if self.pending {
                self.pending = false;
                match b {
                    ESCAPE_QUIT => return (out, true),
                    ESCAPE_BYTE => out.push(ESCAPE_BYTE),
                    other => {
                        out.push(ESCAPE_BYTE);
                        out.push(other);
                    }
                }
            } else if b == ESCAPE_BYTE {
                self.pending = true;
            } else {
                out.push(b);
            }
        }
        (out, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_sequence() {
        let mut e = EscapeState::default();
        assert_eq!(e.filter(b"ls\r"), (b"ls\r".to_vec(), false));
        assert_eq!(e.filter(b"a\x01"), (b"a".to_vec(), false));
        assert_eq!(e.filter(b"x"), (vec![], true));
        let mut e = EscapeState::default();
        assert_eq!(e.filter(b"\x01\x01b\x01c"), (b"\x01b\x01c".to_vec(), false));
    }

    #[test]
    fn file_console_appends() {
        let path = std::env::temp_dir().join(format!("kapsel-console-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        {
            let c = Console::open(&ConsoleSpec::File(path.clone()), None).unwrap();
            assert!(c.input_fd().is_none());
            c.output().unwrap().write_all(b"one ").unwrap();
        }
        let c = Console::open(&ConsoleSpec::File(path.clone()), None).unwrap();
        c.output().unwrap().write_all(b"two").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "one two");
        let err = Console::open(&ConsoleSpec::File("/nonexistent/dir/log".into()), None)
            .err()
            .unwrap();
        assert_eq!(err.exit_code(), 2);
        let err = Console::open(
            &ConsoleSpec::None,
            Some(&ConsoleSpec::File("/nonexistent/x".into())),
        )
        .err()
        .unwrap();
        assert!(err.to_string().contains("--virtio-console"), "{err}");
    }

    #[test]
    fn input_goes_to_the_console_on_stdio() {
        let c = Console::open(&ConsoleSpec::Stdio, None).unwrap();
        assert_eq!(c.input_target(), Some(InputTarget::Serial));
        let c = Console::open(&ConsoleSpec::Stdio, Some(&ConsoleSpec::Stdio)).unwrap();
        assert_eq!(c.input_target(), Some(InputTarget::Virtio));
        let c = Console::open(&ConsoleSpec::None, Some(&ConsoleSpec::None)).unwrap();
        assert_eq!(c.input_target(), None);
        assert!(c.virtio_output().unwrap().is_some());
    }
}
