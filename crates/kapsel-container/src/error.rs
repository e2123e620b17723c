//! Errors of the container runtime: bad input (the caller can fix it, exit
//! status 2) apart from failures of the host (exit status 1).

use std::io;
use std::path::PathBuf;

/// Why a container could not be started or driven.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The specification is wrong; the message names the thing and the fix.
    /// Reported before anything is created.
    #[error("{0}")]
    Invalid(String),
    /// A cgroup file or directory could not be created, written or read.
    #[error("cgroup {path}: {source}")]
    Cgroup {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Creating or configuring the veth pair failed.
    #[error("network: {what}: {source}")]
    Network {
        /// The step that failed.
        what: String,
        /// The OS error.
        source: io::Error,
    },
    /// A step inside the new container failed before its init ran.
    #[error("container setup: {step}: {source}")]
    Setup {
        /// The step, as named by [`crate::child`].
        step: &'static str,
        /// The OS error of that step.
        source: io::Error,
    },
    /// The seccomp profile could not be compiled.
    #[error("seccomp profile: {0}")]
    Seccomp(String),
    /// A system call of the runtime itself failed.
    #[error("{what}: {source}")]
    Os {
        /// What was being done.
        what: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// A hook of the caller (OCI hooks) failed; the container is gone.
    #[error("{0}")]
    Hook(String),
    /// The operation needs a running container but it has exited.
    #[error("the container has exited")]
    Exited,
    /// `stop` waited out its timeout and then killed the container.
    #[error("the container did not stop within {0:?}; it was killed")]
    StopTimeout(std::time::Duration),
}

impl Error {
    /// The exit status `kapsel` uses for this error: 2 for bad input, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Invalid(_) => 2,
            _ => 1,
        }
    }

    /// An `Os` error from `errno`.
    pub(crate) fn last_os(what: &'static str) -> Error {
        Error::Os {
            what,
            source: io::Error::last_os_error(),
        }
    }
}

/// Results of this crate.
pub type Result<T> = std::result::Result<T, Error>;
