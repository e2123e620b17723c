//! The command line's side of the control socket.

use crate::proto::{self, Envelope, Request, Response, PROTOCOL_VERSION};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

/// Connects to the daemon; the error says whether it runs and how to start it.
pub fn connect(socket: &Path) -> Result<UnixStream, String> {
    UnixStream::connect(socket).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => format!(
            "the daemon is not running ({}: {e}); start it with `kapsel daemon` or `systemctl start kapseld`",
            socket.display()
        ),
        std::io::ErrorKind::PermissionDenied => format!(
            "{}: {e}; the daemon's `socket owner` does not include you",
            socket.display()
        ),
        _ => format!("{}: {e}", socket.display()),
    })
}

/// Sends `request` and returns the daemon's answer and the connection.
pub fn send(socket: &Path, request: Request) -> Result<(Response, UnixStream), String> {
    let mut stream = connect(socket)?;
    let sent = proto::write_message(
        &mut stream,
        &Envelope {
            version: PROTOCOL_VERSION,
            request,
        },
    );
    // A daemon that refuses the connection (too many of this user's) replies
    // at once and closes: the write may then fail, but the reply says why.
    let response = proto::read_message(&mut stream);
    match (sent, response) {
        (_, Ok(response)) => Ok((response, stream)),
        (Err(e), Err(_)) => Err(format!("sending to the daemon: {e}")),
        (Ok(()), Err(e)) => Err(format!("the daemon did not answer: {e}")),
    }
}

/// Sends `request` and returns the answer.
pub fn request(socket: &Path, request: Request) -> Result<Response, String> {
    send(socket, request).map(|(r, _)| r)
}

/// Tracks cu's `~.` escape in keyboard input: a `~` right after a newline
/// (or at the start) followed by `.` disconnects.
#[derive(Debug, Default)]
pub struct Escape {
    at_line_start: bool,
    tilde: bool,
}

impl Escape {
    /// A tracker at the start of a line.
    pub fn new() -> Self {
        Escape {
            at_line_start: true,
            tilde: false,
        }
    }

    /// Filters input: returns what to send and whether the user asked to
    /// leave. A `~` at the start of a line is held until the next byte.
    pub fn feed(&mut self, input: &[u8]) -> (Vec<u8>, bool) {
        let mut out = Vec::with_capacity(input.len());
        for &b in input {
            if self.tilde {
                self.tilde = false;
                if b == b'.' {
                    return (out, true);
                }
                out.push(b'~');
                if b == b'~' {
                    self.at_line_start = false;
                    continue;
                }
            } else if self.at_line_start && b == b'~' {
                self.tilde = true;
                continue;
            }
            out.push(b);
            self.at_line_start = b == b'\r' || b == b'\n';
        }
        (out, false)
    }
}

/// Copies the console to `out` and `input` (filtered by [`Escape`]) to the
/// console until the VM stops or the user types `~.`. Returns true if the
/// VM's console closed (the VM stopped).
pub fn console_loop(
    stream: UnixStream,
    mut input: impl Read + Send + 'static,
    mut out: impl Write,
) -> std::io::Result<bool> {
    let mut to_vm = stream.try_clone()?;
    let closer = stream.try_clone()?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut esc = Escape::new();
        let mut buf = [0u8; 1024];
        loop {
            let n = match input.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let (send, leave) = esc.feed(&buf[..n]);
            if !send.is_empty() && to_vm.write_all(&send).is_err() {
                break;
            }
            if leave {
                let _ = tx.send(());
                let _ = closer.shutdown(std::net::Shutdown::Both);
                return;
            }
        }
    });
    let mut from_vm = stream;
    let mut buf = [0u8; 4096];
    loop {
        match from_vm.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                out.write_all(&buf[..n])?;
                out.flush()?;
            }
        }
    }
    Ok(rx.try_recv().is_err())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tilde_dot_at_line_start_leaves() {
        let mut e = Escape::new();
        assert_eq!(e.feed(b"~."), (vec![], true));
        let mut e = Escape::new();
        assert_eq!(e.feed(b"ls\r"), (b"ls\r".to_vec(), false));
        assert_eq!(e.feed(b"~"), (vec![], false));
        assert_eq!(e.feed(b"."), (vec![], true));
    }

    #[test]
    fn other_tildes_pass() {
        let mut e = Escape::new();
        assert_eq!(e.feed(b"a~.b"), (b"a~.b".to_vec(), false));
        let mut e = Escape::new();
        assert_eq!(e.feed(b"~x"), (b"~x".to_vec(), false));
        let mut e = Escape::new();
        assert_eq!(e.feed(b"~~."), (b"~.".to_vec(), false));
        assert_eq!(e.feed(b"\n~."), (b"\n".to_vec(), true));
    }
}
