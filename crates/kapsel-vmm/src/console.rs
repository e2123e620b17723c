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

/// Restores the terminal's settings when dropped.
struct RawMode {
    fd: RawFd,
    saved: libc::termios,
}

impl RawMode {
    fn enter(fd: RawFd) -> Option<RawMode> {
        // SAFETY: isatty only inspects the descriptor.
        if unsafe { libc::isatty(fd) } != 1 {
            return None;
        }
        // SAFETY: termios is plain old data; tcgetattr fills it.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: fd is a terminal and `saved` is a valid termios to fill.
        if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
            return None;
        }
        let mut raw = saved;
        // SAFETY: cfmakeraw only edits the struct it is given.
        unsafe { libc::cfmakeraw(&mut raw) };
        // SAFETY: fd is a terminal and `raw` a valid termios.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) } != 0 {
            return None;
        }
        Some(RawMode { fd, saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: restores the settings read from the same terminal.
        unsafe { libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved) };
    }
}

/// The host end of the guest's serial console.
pub struct Console {
    file: Option<File>,
    input: Option<RawFd>,
    _raw: Option<RawMode>,
}

/// In raw mode Ctrl-C goes to the guest; Ctrl-A then `x` leaves, as in QEMU.
pub const ESCAPE_BYTE: u8 = 0x01;
/// The byte after [`ESCAPE_BYTE`] that stops the VM.
pub const ESCAPE_QUIT: u8 = b'x';

impl Console {
    /// Opens the console described by `spec`.
    pub fn open(spec: &ConsoleSpec) -> Result<Console> {
        match spec {
            ConsoleSpec::Stdio => {
                let stdin = std::io::stdin().as_raw_fd();
                Ok(Console {
                    file: None,
                    input: Some(stdin),
                    _raw: RawMode::enter(stdin),
                })
            }
            ConsoleSpec::None => Ok(Console {
                file: None,
                input: None,
                _raw: None,
            }),
            ConsoleSpec::File(path) => {
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| {
                        Error::InvalidConfig(format!(
                            "--console file:{}: cannot open for writing: {e}",
                            path.display()
                        ))
                    })?;
                Ok(Console {
                    file: Some(file),
                    input: None,
                    _raw: None,
                })
            }
        }
    }

    /// A writer for the serial port's output.
    pub fn output(&self) -> Result<Box<dyn Write + Send>> {
        Ok(match (&self.file, self.input) {
            (Some(f), _) => Box::new(
                f.try_clone()
                    .map_err(|e| Error::io("duplicating the console file", e))?,
            ),
            (None, Some(_)) => Box::new(FdWriter(std::io::stdout().as_raw_fd())),
            (None, None) => Box::new(std::io::sink()),
        })
    }

    /// The descriptor guest input is read from, if any.
    pub fn input_fd(&self) -> Option<RawFd> {
        self.input
    }

    /// Whether the input is an interactive terminal (escape sequence active).
    pub fn is_terminal(&self) -> bool {
        self._raw.is_some()
    }
}

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
            let c = Console::open(&ConsoleSpec::File(path.clone())).unwrap();
            assert!(c.input_fd().is_none());
            c.output().unwrap().write_all(b"one ").unwrap();
        }
        let c = Console::open(&ConsoleSpec::File(path.clone())).unwrap();
        c.output().unwrap().write_all(b"two").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "one two");
        let err = Console::open(&ConsoleSpec::File("/nonexistent/dir/log".into()))
            .err()
            .unwrap();
        assert_eq!(err.exit_code(), 2);
    }
}
