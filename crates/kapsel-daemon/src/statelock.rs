//! One daemon per state directory: `STATE_DIR/kapseld.lock`, held with
//! flock(2) for the daemon's whole life (until its process ends, after it
//! has released every bridge, NAT table and guest), so that a second
//! daemon, or a successor started while its predecessor still shuts down,
//! cannot tear down the network under the other's guests.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The name of the lock file in the state directory.
pub const LOCK_FILE: &str = "kapseld.lock";

/// The held lock; released when the process ends (the descriptor is
/// close-on-exec, so no VM process or container init inherits it).
#[derive(Debug)]
pub struct StateLock {
    _file: File,
    path: PathBuf,
}

/// Why the lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another daemon holds it.
    #[error("another kapseld{holder} is running on the state directory {dir}; stop it first, or give this one another --state-dir")]
    Held {
        /// The state directory.
        dir: String,
        /// " (pid N)" when the holder wrote its pid.
        holder: String,
    },
    /// The lock file could not be opened or locked.
    #[error("lock file {path}: {source}; give a writable --state-dir")]
    Io {
        /// The lock file.
        path: String,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
}

impl StateLock {
    /// Takes the lock of `state_dir` (which must exist) without waiting,
    /// and records this process's pid in it.
    pub fn take(state_dir: &Path) -> Result<StateLock, LockError> {
        let path = state_dir.join(LOCK_FILE);
        let io = |source| LockError::Io {
            path: path.display().to_string(),
            source,
        };
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .map_err(io)?;
        // SAFETY: flock on a descriptor we own; no memory is passed.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(io(err));
            }
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            let holder = text
                .trim()
                .parse::<u32>()
                .map(|pid| format!(" (pid {pid})"))
                .unwrap_or_default();
            return Err(LockError::Held {
                dir: state_dir.display().to_string(),
                holder,
            });
        }
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        Ok(StateLock { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid() {
        let dir = std::env::temp_dir().join(format!("kapsel-statelock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let first = StateLock::take(&dir).unwrap();
        // flock locks belong to the open file description: a second open in
        // this process conflicts as another daemon's would.
        let err = StateLock::take(&dir).unwrap_err().to_string();
        assert!(
            err.contains(&format!("(pid {})", std::process::id())) && err.contains("--state-dir"),
            "{err}"
        );
        drop(first);
        let again = StateLock::take(&dir).unwrap();
        assert_eq!(again.path(), dir.join(LOCK_FILE));
        drop(again);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
