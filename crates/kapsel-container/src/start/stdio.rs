//! The init's standard input, output and error, from
//! [`ConsoleSpec`]: a new pty (its master stays with the caller), a file
//! for output, /dev/null, or the caller's own.

use crate::error::{Error, Result};
use crate::spec::{ConsoleSpec, ContainerSpec};
use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The descriptors of the init's stdio, open until the clone.
pub(super) struct Stdio {
    /// The master of the console pty (the caller's, with [`ConsoleSpec::Pty`]).
    pub console: Option<File>,
    /// The pty slave, or the output file.
    pub slave: Option<File>,
    /// The pty slave's host path (bound onto /dev/console).
    pub slave_path: Option<CString>,
    /// /dev/null for the input (and output, with [`ConsoleSpec::None`]).
    pub null: Option<File>,
    /// What becomes 0, 1 and 2 in the child.
    pub fds: [RawFd; 3],
}

impl Stdio {
    /// Opens what `spec.console` asks for.
    pub fn open(spec: &ContainerSpec) -> Result<Stdio> {
        let (mut console, mut slave, mut slave_path, mut null) = (None, None, None, None);
        match &spec.console {
            ConsoleSpec::Inherit => {}
            ConsoleSpec::Pty => {
                let (master, path) = open_pty()?;
                // O_NOCTTY: a caller that is a session leader without a
                // terminal (kapseld under systemd) would otherwise get the
                // pty as its controlling terminal, which the init's
                // TIOCSCTTY then cannot take, and a SIGHUP when it closes.
                let s = File::options()
                    .read(true)
                    .write(true)
                    .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
                    .open(Path::new(std::ffi::OsStr::from_bytes(path.as_bytes())))
                    .map_err(|source| Error::Os {
                        what: "opening the console pty",
                        source,
                    })?;
                if let Some(map) = &spec.user_map {
                    // The container's root owns its console (as on a
                    // machine of its own): systemd and getty reopen and
                    // chmod /dev/console, which a host-root pty refuses them.
                    std::os::unix::fs::fchown(&s, Some(map.host_uid), Some(map.host_gid)).map_err(
                        |source| Error::Os {
                            what: "handing the console pty to the container's root",
                            source,
                        },
                    )?;
                }
                console = Some(master);
                slave = Some(s);
                slave_path = Some(path);
            }
            ConsoleSpec::File(p) => {
                let out = File::options()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|e| {
                        Error::Invalid(format!(
                            "console file {}: {e}; pick a writable path",
                            p.display()
                        ))
                    })?;
                slave = Some(out);
                null = Some(File::open("/dev/null").map_err(|source| Error::Os {
                    what: "opening /dev/null",
                    source,
                })?);
            }
            ConsoleSpec::None => {
                null = Some(
                    File::options()
                        .read(true)
                        .write(true)
                        .open("/dev/null")
                        .map_err(|source| Error::Os {
                            what: "opening /dev/null",
                            source,
                        })?,
                );
            }
        }
        let fds: [RawFd; 3] = match (&spec.console, &slave, &null) {
            (ConsoleSpec::Pty, Some(s), _) => [s.as_raw_fd(); 3],
            (ConsoleSpec::File(_), Some(out), Some(null)) => {
                [null.as_raw_fd(), out.as_raw_fd(), out.as_raw_fd()]
            }
            (ConsoleSpec::None, _, Some(null)) => [null.as_raw_fd(); 3],
            _ => [0, 1, 2],
        };
        Ok(Stdio {
            console,
            slave,
            slave_path,
            null,
            fds,
        })
    }

    /// Closes the child's side (after the clone); the master stays.
    pub fn close_child_side(&mut self) {
        self.slave = None;
        self.null = None;
    }
}

/// A new pseudo-terminal: the master and the slave's path.
fn open_pty() -> Result<(File, CString)> {
    // SAFETY: posix_openpt with constant flags; the result is checked.
    let master = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
    if master < 0 {
        return Err(Error::last_os("opening /dev/ptmx"));
    }
    // SAFETY: `master` is a new descriptor we own.
    let file = unsafe { File::from_raw_fd(master) };
    let mut name = [0 as libc::c_char; 64];
    // SAFETY: grantpt/unlockpt on our master; ptsname_r writes at most
    // `name.len()` bytes into `name`.
    let ok = unsafe {
        libc::grantpt(master) == 0
            && libc::unlockpt(master) == 0
            && libc::ptsname_r(master, name.as_mut_ptr(), name.len()) == 0
    };
    if !ok {
        return Err(Error::last_os("setting up the console pty"));
    }
    // SAFETY: ptsname_r wrote a NUL-terminated string.
    let path = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) }.to_owned();
    Ok((file, path))
}
