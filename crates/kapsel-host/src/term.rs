//! Terminals: raw mode for as long as a guest's console owns the user's
//! terminal, and window sizes.

use std::os::fd::RawFd;

/// A terminal in raw mode; its settings are restored when dropped, however
/// the holder exits (an error, a panic that unwinds).
#[derive(Debug)]
pub struct RawMode {
    fd: RawFd,
    saved: libc::termios,
}

impl RawMode {
    /// Puts the terminal on `fd` in raw mode (`cfmakeraw`); `None` if `fd`
    /// is no terminal or refuses the change.
    pub fn enter(fd: RawFd) -> Option<RawMode> {
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

/// The size (rows, columns) of the terminal on `fd`; `None` when `fd` is
/// no terminal or has no size.
pub fn window_size(fd: RawFd) -> Option<(u16, u16)> {
    // SAFETY: winsize is plain old data that TIOCGWINSZ fills in.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes one winsize to a valid pointer.
    let rc = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) };
    (rc == 0 && ws.ws_row > 0 && ws.ws_col > 0).then_some((ws.ws_row, ws.ws_col))
}

/// Sets the size of the terminal (a pty master) on `fd`; the kernel sends
/// SIGWINCH to its foreground process group.
pub fn set_window_size(fd: RawFd, rows: u16, cols: u16) -> std::io::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from a valid pointer.
    if unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    /// A pty pair: (master, slave).
    fn pty() -> (OwnedFd, OwnedFd) {
        // SAFETY: posix_openpt with constant flags; checked below.
        let m = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
        assert!(m >= 0);
        // SAFETY: m is a new descriptor that nothing else owns.
        let master = unsafe { OwnedFd::from_raw_fd(m) };
        // SAFETY: grantpt/unlockpt on our master; TIOCGPTPEER opens the slave.
        let s = unsafe {
            assert_eq!(libc::grantpt(m), 0);
            assert_eq!(libc::unlockpt(m), 0);
            libc::ioctl(
                m,
                libc::TIOCGPTPEER,
                libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
            )
        };
        assert!(s >= 0);
        // SAFETY: s is a new descriptor that nothing else owns.
        (master, unsafe { OwnedFd::from_raw_fd(s) })
    }

    fn lflag(fd: RawFd) -> libc::tcflag_t {
        // SAFETY: termios is plain data that tcgetattr fills.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: a valid termios to fill.
        assert_eq!(unsafe { libc::tcgetattr(fd, &mut t) }, 0);
        t.c_lflag
    }

    #[test]
    fn raw_mode_is_restored_on_drop() {
        let (_m, s) = pty();
        let before = lflag(s.as_raw_fd());
        assert_ne!(before & libc::ICANON, 0);
        let raw = RawMode::enter(s.as_raw_fd()).unwrap();
        assert_eq!(lflag(s.as_raw_fd()) & (libc::ICANON | libc::ECHO), 0);
        drop(raw);
        assert_eq!(lflag(s.as_raw_fd()), before);
        let null = std::fs::File::open("/dev/null").unwrap();
        assert!(RawMode::enter(null.as_raw_fd()).is_none());
    }

    #[test]
    fn window_sizes_go_through_the_pty() {
        let (m, s) = pty();
        set_window_size(m.as_raw_fd(), 40, 132).unwrap();
        assert_eq!(window_size(s.as_raw_fd()), Some((40, 132)));
        let null = std::fs::File::open("/dev/null").unwrap();
        assert_eq!(window_size(null.as_raw_fd()), None);
    }
}
