//! Errors of the VMM. Each message names the thing, the problem and the fix;
//! [`Error::exit_code`] separates bad input (2) from failures (1).

use std::path::PathBuf;

/// Everything that can stop a VM from being built or run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// /dev/kvm could not be opened.
    #[error("cannot open /dev/kvm: {source}; {hint}")]
    KvmUnavailable {
        /// The OS error.
        source: std::io::Error,
        /// How to fix it.
        hint: &'static str,
    },
    /// The KVM API of the host is unusable for Kapsel.
    #[error("KVM on this host cannot be used: {0}")]
    KvmUnsupported(String),
    /// A KVM ioctl failed while building or running the VM.
    #[error("KVM {what} failed: {source}")]
    Kvm {
        /// Which operation failed.
        what: &'static str,
        /// The error KVM returned.
        source: kvm_ioctls::Error,
    },
    /// A file given by the user could not be opened or read.
    #[error("cannot read {what} {path}: {source}; check the path and its permissions")]
    File {
        /// "kernel", "initrd", ...
        what: &'static str,
        /// The path as given.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The kernel file is not a format Kapsel can boot.
    #[error("{path}: not a bootable kernel ({detail}); give a Linux bzImage, or an ELF vmlinux/guest with a PVH entry note (CONFIG_PVH=y)")]
    BadKernel {
        /// The kernel path.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// The firmware image is not where it was looked for.
    #[error("firmware {path} is missing; install Debian's {package} package (apt install {package}), or give another build with {option} PATH")]
    FirmwareMissing {
        /// The path looked at.
        path: PathBuf,
        /// The Debian package that ships it.
        package: &'static str,
        /// The option that names another image.
        option: &'static str,
    },
    /// The firmware image cannot be used.
    #[error("firmware {path}: {detail}")]
    BadFirmware {
        /// The image's path.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// The initrd does not fit into guest memory.
    #[error("initrd {path} ({size} bytes) does not fit in guest memory below {limit:#x} next to the kernel; give the VM more memory (--memory)")]
    InitrdTooLarge {
        /// The initrd path.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The highest address it could end at.
        limit: u64,
    },
    /// A configuration value is out of range.
    #[error("{0}")]
    InvalidConfig(String),
    /// Guest memory could not be set up.
    #[error("guest memory: {0}")]
    Memory(String),
    /// The VM process could not confine itself.
    #[error(
        "{0}; this kernel lacks what the sandbox needs (seccomp filters, namespaces); \
             --no-sandbox runs without it, for debugging only"
    )]
    Sandbox(#[from] crate::sandbox::SandboxError),
    /// Another host resource (thread, eventfd, terminal, file) failed.
    #[error("{what}: {source}")]
    Io {
        /// What the VMM was doing.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
}

impl Error {
    /// The process exit code for this error: 2 for input the user can fix,
    /// 1 for failures of the host or the VMM.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::KvmUnavailable { .. }
            | Error::File { .. }
            | Error::BadKernel { .. }
            | Error::FirmwareMissing { .. }
            | Error::BadFirmware { .. }
            | Error::InitrdTooLarge { .. }
            | Error::InvalidConfig(_) => 2,
            _ => 1,
        }
    }

    /// Shorthand for an I/O error with context.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }

    /// Shorthand for a failed KVM ioctl.
    pub fn kvm(what: &'static str, source: kvm_ioctls::Error) -> Self {
        Error::Kvm { what, source }
    }
}

/// Result type of the VMM.
pub type Result<T> = std::result::Result<T, Error>;
