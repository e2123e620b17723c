//! Signals read through a signalfd: blocked for the calling thread (and
//! the threads it spawns afterwards) and polled like any descriptor.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// A set of signals blocked and delivered through a signalfd. Dropping it
/// puts back the signal mask the thread had before.
pub struct SignalFd {
    fd: OwnedFd,
    old_mask: libc::sigset_t,
}

impl SignalFd {
    /// Blocks `signals` for the calling thread (threads spawned later
    /// inherit the mask) and opens a non-blocking, close-on-exec signalfd
    /// for them.
    pub fn block(signals: &[libc::c_int]) -> io::Result<SignalFd> {
        // SAFETY: sigset_t is plain data, filled by sigemptyset/sigaddset.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: as above; pthread_sigmask fills it.
        let mut old_mask: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: valid pointers to local sigsets.
        unsafe {
            libc::sigemptyset(&mut set);
            for &sig in signals {
                if libc::sigaddset(&mut set, sig) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old_mask);
        }
        // SAFETY: a valid sigset; -1 asks for a new descriptor.
        let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
        if fd < 0 {
            let e = io::Error::last_os_error();
            // SAFETY: puts back the mask saved above.
            unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old_mask, std::ptr::null_mut()) };
            return Err(e);
        }
        // SAFETY: signalfd returned a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(SignalFd { fd, old_mask })
    }

    /// Takes one pending signal; its number, or `None` when none is pending.
    pub fn take(&self) -> Option<libc::c_int> {
        // SAFETY: signalfd_siginfo is plain data (128 bytes).
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: reads at most one record into `info`, which is that size.
        let n = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                (&mut info as *mut libc::signalfd_siginfo).cast(),
                size,
            )
        };
        (n == size as isize).then_some(info.ssi_signo as libc::c_int)
    }

    /// Takes every pending signal; how many there were.
    pub fn drain(&self) -> usize {
        std::iter::from_fn(|| self.take()).count()
    }
}

impl AsRawFd for SignalFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl Drop for SignalFd {
    fn drop(&mut self) {
        // SAFETY: restores the mask saved in block().
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.old_mask, std::ptr::null_mut()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blocked_signal_arrives_on_the_descriptor_and_the_mask_comes_back() {
        // On a thread of its own, so the harness's threads keep their masks.
        std::thread::spawn(|| {
            let sig = libc::SIGUSR2;
            let fd = SignalFd::block(&[sig]).unwrap();
            assert_eq!(fd.take(), None);
            // SAFETY: signals this thread only; the signal is blocked.
            unsafe { libc::pthread_kill(libc::pthread_self(), sig) };
            assert_eq!(fd.take(), Some(sig));
            assert_eq!(fd.drain(), 0);
            drop(fd);
            // SAFETY: sigset_t is plain data; pthread_sigmask fills it.
            let mut now: libc::sigset_t = unsafe { std::mem::zeroed() };
            // SAFETY: reads the current mask into a valid sigset.
            unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut now) };
            // SAFETY: a valid, filled sigset.
            assert_eq!(unsafe { libc::sigismember(&now, sig) }, 0);
        })
        .join()
        .unwrap();
    }
}
