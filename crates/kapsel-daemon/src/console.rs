//! A VM's serial console inside the daemon: the output since start kept in
//! a ring buffer for replay, several attached viewers, and their keyboard
//! input forwarded to the guest.
//!
//! The guest's output never waits for a viewer: it is appended to each
//! viewer's bounded queue, and each viewer's own connection thread sends
//! its queue with non-blocking writes. A viewer that falls more than
//! [`VIEWER_QUEUE_BYTES`] behind, or takes nothing for [`VIEWER_STALL`],
//! is detached (as a slow reader of `tail -f` over ssh loses its
//! connection, never the writer's time). A viewer that leaves is removed
//! at once, with its descriptors.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How much console output is kept for replay on attach.
pub const RING_BYTES: usize = 64 * 1024;

/// The most output that may wait for one viewer (the replay and what the
/// guest prints while the viewer is slow); a viewer further behind is
/// detached.
pub const VIEWER_QUEUE_BYTES: usize = 256 * 1024;

/// A viewer that takes no output for this long while some waits for it is
/// detached.
pub const VIEWER_STALL: Duration = Duration::from_secs(10);

/// How long a viewer's input may wait for a VM to take it; then that
/// viewer's input is dropped (its output goes on).
pub const INPUT_TIMEOUT: Duration = Duration::from_secs(2);

/// The most viewers of one console, root's beyond them not counted.
pub const MAX_VIEWERS: usize = 16;

/// How often a viewer's thread looks at the clock when nothing happens.
const POLL_MS: i32 = 1000;

/// Whether `e` means the viewer has left.
fn gone(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
    )
}

/// An eventfd that the guest's output rings to wake a viewer's thread.
struct Wake(OwnedFd);

impl Wake {
    fn new() -> io::Result<Wake> {
        // SAFETY: eventfd takes no pointers; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a new descriptor that nothing else owns.
        Ok(Wake(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn ring(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a valid buffer; a full counter
        // (EAGAIN) already means "wake up".
        unsafe { libc::write(self.0.as_raw_fd(), one.as_ptr().cast(), one.len()) };
    }

    fn clear(&self) {
        let mut count = [0u8; 8];
        // SAFETY: reads 8 bytes into a valid buffer; non-blocking.
        unsafe { libc::read(self.0.as_raw_fd(), count.as_mut_ptr().cast(), count.len()) };
    }
}

struct Viewer {
    id: u64,
    /// Output not yet taken by the viewer's thread.
    queue: Vec<u8>,
    /// Output the viewer's thread took last and may still be sending.
    taken: usize,
    /// It fell more than [`VIEWER_QUEUE_BYTES`] behind.
    overflowed: bool,
    wake: Arc<Wake>,
}

#[derive(Default)]
struct Inner {
    ring: VecDeque<u8>,
    viewers: Vec<Viewer>,
    next_id: u64,
    /// The VM's end has closed: viewers get what is queued and are closed.
    closed: bool,
}

/// One VM's console: output history and attached viewers.
#[derive(Default, Clone)]
pub struct Console {
    inner: Arc<Mutex<Inner>>,
}

impl Console {
    /// A fresh console with no history.
    pub fn new() -> Self {
        Self::default()
    }

    /// The console of a guest that has ended: `history` to replay, and
    /// no input.
    pub fn ended_with(history: &[u8]) -> Self {
        let console = Self::new();
        console.output(history);
        console.close();
        console
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records output from the guest and queues it for every viewer;
    /// never blocks on a viewer.
    pub fn output(&self, bytes: &[u8]) {
        let mut inner = self.lock();
        let overflow = (inner.ring.len() + bytes.len()).saturating_sub(RING_BYTES);
        let from_ring = overflow.min(inner.ring.len());
        inner.ring.drain(..from_ring);
        let kept = &bytes[overflow - from_ring..];
        inner.ring.extend(kept);
        for v in inner.viewers.iter_mut().filter(|v| !v.overflowed) {
            if v.taken + v.queue.len() + bytes.len() > VIEWER_QUEUE_BYTES {
                v.overflowed = true;
                v.queue = Vec::new();
            } else {
                v.queue.extend_from_slice(bytes);
            }
            v.wake.ring();
        }
    }

    /// The kept output, oldest first.
    pub fn history(&self) -> Vec<u8> {
        self.lock().ring.iter().copied().collect()
    }

    /// Whether another viewer may attach (`privileged`: root, always).
    pub fn may_attach(&self, privileged: bool) -> Result<(), String> {
        if privileged || self.lock().viewers.len() < MAX_VIEWERS {
            Ok(())
        } else {
            Err(format!(
                "the console has {MAX_VIEWERS} viewers already, the most it takes; detach one first"
            ))
        }
    }

    /// Attaches a viewer and serves it in this thread until it leaves or
    /// the console closes: it gets the history, then live output; what it
    /// sends goes to `input` (the guest's console). `privileged` (root)
    /// attaches beyond [`MAX_VIEWERS`].
    pub fn attach(
        &self,
        client: UnixStream,
        input: Option<Box<dyn Write + Send>>,
        privileged: bool,
    ) -> io::Result<()> {
        let wake = Arc::new(Wake::new()?);
        let id = {
            let mut inner = self.lock();
            if !privileged && inner.viewers.len() >= MAX_VIEWERS {
                return Err(io::Error::other("too many viewers"));
            }
            let id = inner.next_id;
            inner.next_id += 1;
            let queue = inner.ring.iter().copied().collect();
            inner.viewers.push(Viewer {
                id,
                queue,
                taken: 0,
                overflowed: false,
                wake: wake.clone(),
            });
            id
        };
        let result = self.serve_viewer(id, &client, input, &wake);
        self.lock().viewers.retain(|v| v.id != id);
        let _ = client.shutdown(std::net::Shutdown::Both);
        result
    }

    /// The viewer's loop: sends its queue as the socket takes it, forwards
    /// its input, and ends when it hangs up, falls behind or stalls, or
    /// when the console has closed and everything is sent.
    fn serve_viewer(
        &self,
        id: u64,
        client: &UnixStream,
        mut input: Option<Box<dyn Write + Send>>,
        wake: &Wake,
    ) -> io::Result<()> {
        client.set_nonblocking(true)?;
        let mut pending: Vec<u8> = Vec::new();
        let mut sent = 0;
        let mut reading = true;
        let mut progress = Instant::now();
        let mut buf = [0u8; 4096];
        loop {
            {
                let mut inner = self.lock();
                let closed = inner.closed;
                let Some(v) = inner.viewers.iter_mut().find(|v| v.id == id) else {
                    return Ok(());
                };
                if v.overflowed {
                    return Err(io::Error::other(format!(
                        "the viewer fell more than {VIEWER_QUEUE_BYTES} bytes behind; detached"
                    )));
                }
                if sent == pending.len() {
                    pending.clear();
                    sent = 0;
                    std::mem::swap(&mut pending, &mut v.queue);
                    v.taken = pending.len();
                    if pending.is_empty() && closed {
                        return Ok(());
                    }
                    // Nothing waited for the viewer until now.
                    progress = Instant::now();
                }
            }
            while sent < pending.len() {
                match (&*client).write(&pending[sent..]) {
                    Ok(0) => return Ok(()),
                    Ok(n) => {
                        sent += n;
                        progress = Instant::now();
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if gone(&e) => return Ok(()),
                    Err(e) => return Err(e),
                }
            }
            if sent == pending.len() && !pending.is_empty() {
                continue; // take what came meanwhile
            }
            if sent < pending.len() && progress.elapsed() > VIEWER_STALL {
                return Err(io::Error::other(format!(
                    "the viewer took no output for {VIEWER_STALL:?}; detached"
                )));
            }
            let mut events = 0;
            if reading {
                events |= libc::POLLIN;
            }
            if sent < pending.len() {
                events |= libc::POLLOUT;
            }
            let mut fds = [
                libc::pollfd {
                    fd: client.as_raw_fd(),
                    events,
                    revents: 0,
                },
                libc::pollfd {
                    fd: wake.0.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: two valid pollfds, their count given.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, POLL_MS) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if fds[1].revents & libc::POLLIN != 0 {
                wake.clear();
            }
            let revents = fds[0].revents;
            if revents & libc::POLLIN != 0 {
                match (&*client).read(&mut buf) {
                    Ok(0) => reading = false,
                    Ok(n) => {
                        // A guest that does not take input stops it for
                        // this viewer only.
                        if let Some(i) = input.as_mut() {
                            if i.write_all(&buf[..n]).is_err() {
                                input = None;
                            }
                        }
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                        ) => {}
                    Err(e) if gone(&e) => return Ok(()),
                    Err(e) => return Err(e),
                }
            } else if revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0 {
                // Gone (input still unread is taken first, above).
                return Ok(());
            }
        }
    }

    /// Starts a new run of the VM: the history begins again.
    pub fn reopen(&self) {
        let mut inner = self.lock();
        inner.ring.clear();
        inner.closed = false;
    }

    /// The VM's end has closed: every viewer gets what is queued for it
    /// and is disconnected.
    pub fn close(&self) {
        let mut inner = self.lock();
        inner.closed = true;
        for v in &inner.viewers {
            v.wake.ring();
        }
    }

    /// Copies everything the VM writes on `from` into the console until it
    /// closes, then disconnects the viewers.
    pub fn pump(&self, mut from: impl Read) {
        let mut buf = [0u8; 4096];
        loop {
            match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => self.output(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread::JoinHandle;

    fn read_some(s: &mut UnixStream, n: usize) -> Vec<u8> {
        let mut out = vec![0u8; n];
        s.read_exact(&mut out).unwrap();
        out
    }

    /// Attaches the daemon's end of a new pair in a thread; returns the
    /// viewer's end and the session.
    fn viewer(
        c: &Console,
        input: Option<Box<dyn Write + Send>>,
        privileged: bool,
    ) -> (UnixStream, JoinHandle<io::Result<()>>) {
        let (user, daemon_side) = UnixStream::pair().unwrap();
        let c = c.clone();
        let session = std::thread::spawn(move || c.attach(daemon_side, input, privileged));
        (user, session)
    }

    fn viewers(c: &Console) -> usize {
        c.lock().viewers.len()
    }

    fn eventually(mut f: impl FnMut() -> bool) -> bool {
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            if f() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        f()
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
    fn viewers_get_replay_live_output_and_send_input() {
        let c = Console::new();
        c.output(b"boot\r\n");
        let (guest_in, mut guest) = UnixStream::pair().unwrap();
        let (mut user, session) = viewer(&c, Some(Box::new(guest_in)), false);
        assert_eq!(read_some(&mut user, 6), b"boot\r\n");
        c.output(b"login: ");
        assert_eq!(read_some(&mut user, 7), b"login: ");
        user.write_all(b"root\n").unwrap();
        assert_eq!(read_some(&mut guest, 5), b"root\n");
        // A second viewer sees the same history.
        let (mut other, other_session) = viewer(&c, None, false);
        assert_eq!(read_some(&mut other, 13), b"boot\r\nlogin: ");
        c.output(b"ok");
        c.close();
        let mut rest = Vec::new();
        user.read_to_end(&mut rest).unwrap();
        assert_eq!(rest, b"ok");
        session.join().unwrap().unwrap();
        other_session.join().unwrap().unwrap();
        assert_eq!(viewers(&c), 0);
    }

    #[test]
    fn a_viewer_that_leaves_is_released_at_once() {
        let c = Console::new();
        c.output(b"quiet guest\r\n");
        for _ in 0..50 {
            let (guest_in, _guest) = UnixStream::pair().unwrap();
            let (user, session) = viewer(&c, Some(Box::new(guest_in)), false);
            drop(user);
            // No output follows: the session ends all the same.
            session.join().unwrap().unwrap();
        }
        assert_eq!(viewers(&c), 0);
    }

    #[test]
    fn a_slow_viewer_holds_nobody_back() {
        let c = Console::new();
        let (_stuck, stuck_session) = viewer(&c, None, false);
        let (mut user, session) = viewer(&c, None, false);
        assert!(eventually(|| viewers(&c) == 2));
        let received = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = received.clone();
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            let mut buf = [0u8; 65536];
            loop {
                match user.read(&mut buf) {
                    Ok(0) | Err(_) => return got,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
                counter.store(got.len(), std::sync::atomic::Ordering::SeqCst);
            }
        });
        let total = 8 * VIEWER_QUEUE_BYTES;
        let start = Instant::now();
        let mut longest = Duration::ZERO;
        for i in 0..total / 1024 {
            let t = Instant::now();
            c.output(&[(i % 251) as u8; 1024]);
            longest = longest.max(t.elapsed());
            if i % 64 == 63 {
                // A reader that keeps up, as a terminal does.
                let pushed = (i + 1) * 1024;
                assert!(eventually(|| received
                    .load(std::sync::atomic::Ordering::SeqCst)
                    >= pushed - 64 * 1024));
            }
        }
        c.close();
        assert!(longest < Duration::from_millis(100), "{longest:?}");
        let got = reader.join().unwrap();
        assert_eq!(got.len(), total, "the reading viewer got everything");
        assert!(got
            .chunks(1024)
            .enumerate()
            .all(|(i, c)| c.iter().all(|&b| b == (i % 251) as u8)));
        session.join().unwrap().unwrap();
        let e = stuck_session.join().unwrap().unwrap_err();
        assert!(e.to_string().contains("behind"), "{e}");
        assert!(start.elapsed() < Duration::from_secs(5));
        assert_eq!(viewers(&c), 0);
    }

    #[test]
    fn viewers_are_capped_but_root_gets_in() {
        let c = Console::new();
        let mut held: Vec<_> = (0..MAX_VIEWERS).map(|_| viewer(&c, None, false)).collect();
        assert!(eventually(|| viewers(&c) == MAX_VIEWERS));
        assert!(c.may_attach(false).is_err());
        let (_u, refused) = viewer(&c, None, false);
        assert!(refused.join().unwrap().is_err());
        assert!(c.may_attach(true).is_ok());
        held.push(viewer(&c, None, true));
        assert!(eventually(|| viewers(&c) == MAX_VIEWERS + 1));
        c.close();
        for (_, s) in held {
            s.join().unwrap().unwrap();
        }
    }
}
