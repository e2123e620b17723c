//! A VM's serial console inside the daemon: the output since start kept in
//! a ring buffer for replay, several attached readers, and their keyboard
//! input forwarded to the guest.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How much console output is kept for replay on attach.
pub const RING_BYTES: usize = 64 * 1024;

/// A client that does not take output for this long is detached, so that
/// one stuck reader cannot hold the console (or the guest) back.
const CLIENT_WRITE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Default)]
struct Inner {
    ring: VecDeque<u8>,
    clients: Vec<UnixStream>,
    /// The VM's end has closed: new clients get the replay and are closed.
    closed: bool,
}

/// One VM's console: output history and attached clients.
#[derive(Default, Clone)]
pub struct Console {
    inner: Arc<Mutex<Inner>>,
}

impl Console {
    /// A fresh console with no history.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records output from the guest and sends it to every client; a client
    /// whose socket fails or stalls is dropped.
    pub fn output(&self, bytes: &[u8]) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let overflow = (inner.ring.len() + bytes.len()).saturating_sub(RING_BYTES);
        let from_ring = overflow.min(inner.ring.len());
        inner.ring.drain(..from_ring);
        let kept = &bytes[overflow - from_ring..];
        inner.ring.extend(kept);
        inner.clients.retain_mut(|c| c.write_all(bytes).is_ok());
    }

    /// The kept output, oldest first.
    pub fn history(&self) -> Vec<u8> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.ring.iter().copied().collect()
    }

    /// Attaches a client: it gets the history, then live output; what it
    /// sends goes to `input` (the guest's console) until it disconnects.
    pub fn attach(
        &self,
        client: UnixStream,
        input: Option<Box<dyn Write + Send>>,
    ) -> std::io::Result<()> {
        client.set_write_timeout(Some(CLIENT_WRITE_TIMEOUT))?;
        let mut writer = client.try_clone()?;
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (a, b) = inner.ring.as_slices();
        writer.write_all(a)?;
        writer.write_all(b)?;
        if inner.closed {
            let _ = writer.shutdown(std::net::Shutdown::Both);
            return Ok(());
        }
        inner.clients.push(writer);
        drop(inner);
        if let Some(mut input) = input {
            let mut client = client;
            std::thread::Builder::new()
                .name("console-input".into())
                .spawn(move || {
                    // Until either side ends.
                    let _ = std::io::copy(&mut client, &mut input);
                })?;
        }
        Ok(())
    }

    /// Starts a new run of the VM: the history begins again.
    pub fn reopen(&self) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.ring.clear();
        inner.closed = false;
    }

    /// The VM's end has closed: every client is disconnected.
    pub fn close(&self) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.closed = true;
        for c in inner.clients.drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Copies everything the VM writes on `from` into the console until it
    /// closes, then disconnects the clients.
    pub fn pump(&self, mut from: impl Read) {
        let mut buf = [0u8; 4096];
        loop {
            match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => self.output(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_some(s: &mut UnixStream, n: usize) -> Vec<u8> {
        let mut out = vec![0u8; n];
        s.read_exact(&mut out).unwrap();
        out
    }

    #[test]
    fn ring_keeps_the_newest_bytes() {
        let c = Console::new();
        c.output(&vec![b'a'; RING_BYTES - 10]);
        c.output(&[b'b'; 20]);
        let h = c.history();
        assert_eq!(h.len(), RING_BYTES);
        assert_eq!(&h[RING_BYTES - 20..], &[b'b'; 20]);
        c.output(&vec![b'c'; RING_BYTES + 5]);
        assert_eq!(c.history(), vec![b'c'; RING_BYTES]);
    }

    #[test]
    fn clients_get_replay_live_output_and_send_input() {
        let c = Console::new();
        c.output(b"boot\r\n");
        let (mut user, daemon_side) = UnixStream::pair().unwrap();
        let (guest_in, mut guest) = UnixStream::pair().unwrap();
        c.attach(daemon_side, Some(Box::new(guest_in))).unwrap();
        assert_eq!(read_some(&mut user, 6), b"boot\r\n");
        c.output(b"login: ");
        assert_eq!(read_some(&mut user, 7), b"login: ");
        user.write_all(b"root\n").unwrap();
        assert_eq!(read_some(&mut guest, 5), b"root\n");
        // A second reader sees the same history.
        let (mut other, other_daemon) = UnixStream::pair().unwrap();
        c.attach(other_daemon, None).unwrap();
        assert_eq!(read_some(&mut other, 13), b"boot\r\nlogin: ");
        c.close();
        let mut rest = Vec::new();
        user.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
    }

    #[test]
    fn a_gone_client_is_dropped() {
        let c = Console::new();
        let (user, daemon_side) = UnixStream::pair().unwrap();
        c.attach(daemon_side, None).unwrap();
        drop(user);
        c.output(b"x");
        c.output(b"y");
        assert_eq!(c.inner.lock().unwrap().clients.len(), 0);
    }
}
