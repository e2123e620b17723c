//! Disk image formats for Kapsel: raw files or block devices, and qcow2
//! (through the `imago` crate, with backing chains), behind one
//! [`BlockBackend`] trait.
//!
//! This crate knows nothing about virtio or guests: a device model checks a
//! request against [`BlockBackend::size`] and then calls the backend with
//! byte offsets. Backends still check bounds themselves, since a wrong
//! offset must never reach a qcow2 allocator.
//!
//! [`open`] detects the format from the file's magic when none is given, and
//! refuses a `format=` that does not match the file. An image opened as raw
//! by probing refuses writes that would give it a qcow2 magic, so a guest
//! cannot turn its raw disk into a qcow2 header that names a host file as
//! its backing file on the next start (QEMU guards probed raw images the
//! same way).

mod qcow2;
mod raw;

pub use qcow2::Qcow2Backend;
pub use raw::RawBackend;

use std::fmt;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// The first four bytes of every qcow2 image.
pub const QCOW2_MAGIC: [u8; 4] = *b"QFI\xfb";

/// Most backing files in one chain, the image itself not counted.
pub const MAX_BACKING_DEPTH: usize = 32;

/// A virtual disk: a flat array of bytes the guest reads and writes.
///
/// Offsets and lengths are in bytes. Every method fails (never panics) on a
/// range past [`size`](BlockBackend::size). Methods that change mappings
/// (discard, write zeroes) take `&mut self`.
pub trait BlockBackend: Send {
    /// Size of the virtual disk in bytes.
    fn size(&self) -> u64;

    /// Fills `buf` with the disk's bytes at `offset`.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;

    /// Writes all of `buf` at `offset`.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;

    /// Makes every completed write durable (metadata included).
    fn flush(&self) -> io::Result<()>;

    /// Hints that `len` bytes at `offset` are no longer needed. Reads of the
    /// range afterwards return unspecified data (old data, zeroes, or the
    /// backing file's data). A backend that cannot discard succeeds.
    fn discard(&mut self, offset: u64, len: u64) -> io::Result<()>;

    /// Makes `len` bytes at `offset` read as zeroes; with `may_unmap` the
    /// backend may deallocate them.
    fn write_zeroes(&mut self, offset: u64, len: u64, may_unmap: bool) -> io::Result<()>;

    /// Whether writes, discards and write-zeroes fail.
    fn read_only(&self) -> bool;

    /// The file that holds the disk's bytes one to one (a raw image), for
    /// a caller that does its own I/O on it (asynchronous, straight into
    /// guest memory); `None` for formats with metadata (qcow2), whose I/O
    /// must go through this trait. A write through the file bypasses the
    /// backend's checks: writes to the first [`RAW_GUARDED_BYTES`] bytes
    /// must still go through [`BlockBackend::write_at`].
    fn raw_file(&self) -> Option<&std::fs::File> {
        None
    }
}

/// Bytes at the start of a raw disk whose writes
/// [`BlockBackend::write_at`] checks (a probed raw image refuses a qcow2
/// magic there); see [`BlockBackend::raw_file`].
pub const RAW_GUARDED_BYTES: u64 = QCOW2_MAGIC.len() as u64;

/// A disk image format (serialized as its `format=` name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// The disk's bytes as they are, in a file or block device.
    Raw,
    /// QEMU copy-on-write v2/v3.
    Qcow2,
}

impl Format {
    /// The name used in `format=` options and by `qemu-img`.
    pub fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "raw" => Ok(Format::Raw),
            "qcow2" => Ok(Format::Qcow2),
            _ => Err(format!(
                "unknown disk image format \"{s}\"; use raw or qcow2"
            )),
        }
    }
}

/// Why an image cannot be opened or created. Every message names the file
/// and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The file cannot be opened or read.
    #[error("disk image {}: {source}; check the path and its permissions", path.display())]
    Open {
        /// The image.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// `format=` names a format the file does not have.
    #[error(
        "disk image {}: format={given} was given, but the file is a {found} image; \
         use format={found}, or convert it (qemu-img convert -O {given} {} NEW)",
        path.display(), path.display()
    )]
    FormatMismatch {
        /// The image.
        path: PathBuf,
        /// The format asked for.
        given: Format,
        /// The format found in the file.
        found: Format,
    },
    /// A qcow2 image names a backing file that cannot be opened.
    #[error(
        "disk image {}: its backing file {} cannot be opened ({source}); restore that file, \
         or point the image at another one (qemu-img rebase -u -b NEW-BACKING {})",
        image.display(), backing.display(), image.display()
    )]
    MissingBacking {
        /// The image whose header names the backing file.
        image: PathBuf,
        /// The backing file, resolved against the image's directory.
        backing: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// The backing chain is longer than [`MAX_BACKING_DEPTH`] or loops.
    #[error(
        "disk image {}: its backing chain {reason}; check it with qemu-img info --backing-chain {}",
        path.display(), path.display()
    )]
    BackingChain {
        /// The top image.
        path: PathBuf,
        /// What is wrong with the chain.
        reason: String,
    },
    /// Another process (another VM, `kapsel create`, QEMU) holds a lock on
    /// the image that this use conflicts with.
    #[error(
        "disk image {}: {}; stop that VM or program first, or give each VM its own \
         copy-on-write overlay (kapsel create -b {} NEW.qcow2)",
        path.display(),
        if *write {
            "it is in use by another VM or program, and a disk that is written cannot be shared"
        } else {
            "it is in use: another VM or program is writing it, so it cannot be read consistently here"
        },
        path.display()
    )]
    Locked {
        /// The image.
        path: PathBuf,
        /// Whether this open wanted to write.
        write: bool,
    },
    /// The file is not a valid qcow2 image, or uses a feature Kapsel does
    /// not support.
    #[error(
        "disk image {}: {source}; check it with qemu-img check {}",
        path.display(), path.display()
    )]
    Qcow2 {
        /// The image.
        path: PathBuf,
        /// What imago said.
        source: io::Error,
    },
    /// An image cannot be created.
    #[error("cannot create disk image {}: {reason}", path.display())]
    Create {
        /// The image to create.
        path: PathBuf,
        /// Why, and what to do.
        reason: String,
    },
}

/// Reads the format from the file's first bytes: qcow2 if it starts with
/// [`QCOW2_MAGIC`], raw otherwise.
pub fn detect(path: &Path) -> Result<Format, ImageError> {
    let file = std::fs::File::open(path).map_err(|source| ImageError::Open {
        path: path.to_owned(),
        source,
    })?;
    detect_file(&file).map_err(|source| ImageError::Open {
        path: path.to_owned(),
        source,
    })
}

/// [`detect`] on an open file (read with `pread`, the file offset is not
/// moved).
pub fn detect_file(file: &std::fs::File) -> io::Result<Format> {
    let mut magic = [0u8; 4];
    let mut n = 0;
    // A file shorter than the magic is raw.
    while n < magic.len() {
        let got = file.read_at(&mut magic[n..], n as u64)?;
        if got == 0 {
            break;
        }
        n += got;
    }
    Ok(if n == magic.len() && magic == QCOW2_MAGIC {
        Format::Qcow2
    } else {
        Format::Raw
    })
}

/// Locks the image in `file` (at `path`) for as long as this open file
/// description lives, so that two VMs never write one image, nor does one
/// read an image another writes; many may read one (a base image under
/// overlays). The locks are QEMU's: open file description locks on single
/// bytes, a shared lock on byte 100 + P for each permission P held and on
/// byte 200 + P for each permission not shared with others, so QEMU, its
/// tools and Kapsel see each other's locks. Kapsel holds consistent-read
/// (and write and write-unchanged when writing) and shares neither write
/// nor resize. Where the file system has no locks (some network file
/// systems), the image is used unlocked.
pub fn lock(file: &std::fs::File, path: &Path, write: bool) -> Result<(), ImageError> {
    const PERM_BYTE: i64 = 100;
    const SHARED_BYTE: i64 = 200;
    const CONSISTENT_READ: i64 = 0;
    const WRITE: i64 = 1;
    const WRITE_UNCHANGED: i64 = 2;
    const RESIZE: i64 = 3;
    let held: &[i64] = if write {
        &[CONSISTENT_READ, WRITE, WRITE_UNCHANGED]
    } else {
        &[CONSISTENT_READ]
    };
    let unshared = [WRITE, RESIZE];
    let mine = held
        .iter()
        .map(|p| PERM_BYTE + p)
        .chain(unshared.iter().map(|p| SHARED_BYTE + p));
    for byte in mine {
        match byte_lock(file, libc::F_OFD_SETLK, libc::F_RDLCK, byte) {
            Ok(_) => {}
            // Someone holds a write lock there: not QEMU's protocol, but a
            // conflict all the same.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EACCES)) => {
                return Err(ImageError::Locked {
                    path: path.to_owned(),
                    write,
                })
            }
            // No lock support here (ENOLCK, EINVAL, EOPNOTSUPP): unlocked.
            Err(_) => return Ok(()),
        }
    }
    // Others deny what this open needs, or hold what it does not share.
    let theirs = held
        .iter()
        .map(|p| SHARED_BYTE + p)
        .chain(unshared.iter().map(|p| PERM_BYTE + p));
    for byte in theirs {
        if byte_lock(file, libc::F_OFD_GETLK, libc::F_WRLCK, byte).unwrap_or(false) {
            return Err(ImageError::Locked {
                path: path.to_owned(),
                write,
            });
        }
    }
    Ok(())
}

/// One byte's open file description lock: `cmd` F_OFD_SETLK takes it (Ok
/// with any value), F_OFD_GETLK asks whether another open file
/// description holds a lock that conflicts with `kind` there (Ok(true)).
fn byte_lock(
    file: &std::fs::File,
    cmd: libc::c_int,
    kind: libc::c_int,
    byte: i64,
) -> io::Result<bool> {
    use std::os::fd::AsRawFd;
    // SAFETY: an all-zero flock is a valid value of the plain C struct.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = byte;
    fl.l_len = 1;
    // SAFETY: F_OFD_SETLK reads and F_OFD_GETLK fills the flock we pass,
    // which lives across the call; the fd is open (borrowed from `file`).
    if unsafe { libc::fcntl(file.as_raw_fd(), cmd, &mut fl) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fl.l_type != libc::F_UNLCK as libc::c_short)
}

/// Opens the image at `path`. With `format` `None` the format is detected
/// from the magic; a given `format` must match the file. A qcow2 image's
/// backing chain is opened read-only, each file resolved against the
/// directory of the image naming it.
pub fn open(
    path: &Path,
    format: Option<Format>,
    read_only: bool,
) -> Result<Box<dyn BlockBackend>, ImageError> {
    let open_err = |source| ImageError::Open {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(!read_only)
        .open(path)
        .map_err(open_err)?;
    lock(&file, path, !read_only)?;
    let found = detect_file(&file).map_err(open_err)?;
    if let Some(given) = format.filter(|&g| g != found) {
        return Err(ImageError::FormatMismatch {
            path: path.to_owned(),
            given,
            found,
        });
    }
    match found {
        Format::Raw => {
            let mut raw = RawBackend::from_file(file, read_only).map_err(open_err)?;
            raw.set_guard_magic(format.is_none());
            Ok(Box::new(raw))
        }
        Format::Qcow2 => Ok(Box::new(Qcow2Backend::open_file(path, file, read_only)?)),
    }
}

/// Creates a new image at `path` (which must not exist). `size` is the
/// virtual size in bytes; `None` takes the backing file's size. A backing
/// file (qcow2 only) is recorded as given, relative to the new image's
/// directory when relative, with its detected format.
pub fn create(
    path: &Path,
    format: Format,
    size: Option<u64>,
    backing: Option<&Path>,
) -> Result<(), ImageError> {
    let create_err = |reason: String| ImageError::Create {
        path: path.to_owned(),
        reason,
    };
    match format {
        Format::Raw => {
            if backing.is_some() {
                return Err(create_err(
                    "a raw image cannot have a backing file; use format qcow2".into(),
                ));
            }
            let size = size.ok_or_else(|| create_err("no size given".into()))?;
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
                .map_err(|e| create_err(format!("{e}; choose a path that does not exist")))?;
            file.set_len(size)
                .map_err(|e| create_err(format!("cannot set the size to {size} bytes: {e}")))
        }
        Format::Qcow2 => qcow2::create(path, size, backing),
    }
}

/// Copies the disk seen through `input` (any format, backing files
/// followed) into a new image at `output` in `format`, leaving the output
/// sparse where the input reads as zeroes. Returns the bytes written. A
/// failed copy removes the partial output.
pub fn convert(input: &Path, output: &Path, format: Format) -> Result<u64, ImageError> {
    const CHUNK: usize = 1 << 20;
    let src = open(input, None, true)?;
    let size = src.size();
    create(output, format, Some(size), None)?;
    let copy = || -> Result<u64, ImageError> {
        let dst = open(output, Some(format), false)?;
        let io_err = |path: &Path, what: &str, e: io::Error| ImageError::Create {
            path: path.to_owned(),
            reason: format!("{what}: {e}"),
        };
        let mut buf = vec![0u8; CHUNK];
        let (mut offset, mut written) = (0u64, 0u64);
        while offset < size {
            let n = (size - offset).min(CHUNK as u64) as usize;
            src.read_at(&mut buf[..n], offset)
                .map_err(|e| io_err(input, "reading", e))?;
            if buf[..n].iter().any(|b| *b != 0) {
                dst.write_at(&buf[..n], offset)
                    .map_err(|e| io_err(output, "writing", e))?;
                written += n as u64;
            }
            offset += n as u64;
        }
        dst.flush().map_err(|e| io_err(output, "flushing", e))?;
        Ok(written)
    };
    copy().inspect_err(|_| {
        let _ = std::fs::remove_file(output);
    })
}

/// Checks that `len` bytes at `offset` lie within a disk of `size` bytes.
pub(crate) fn check_bounds(size: u64, offset: u64, len: u64) -> io::Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("range {offset}+{len} past the end of the disk ({size} bytes)"),
        )),
    }
}

/// The error of a write-like request to a read-only backend.
pub(crate) fn read_only_error() -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, "disk image is read-only")
}
