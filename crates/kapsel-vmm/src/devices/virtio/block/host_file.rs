//! The disk's host file for the fast path: the raw image's descriptor
//! shared with the io_uring, or the file opened again with O_DIRECT under
//! `cache=none`, with the alignment the file system needs found by probing.

use super::request::SECTOR_SIZE;
use super::uring::UringDisk;
use super::{CacheMode, BLOCK_QUEUE_SIZE};
use kapsel_image::BlockBackend;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::sync::Arc;

/// A raw image's file for the fast path: reopened with O_DIRECT under
/// [`CacheMode::None`] where the file system takes it, else shared with the
/// backend (page cache).
#[derive(Debug, Clone)]
pub struct FastFile {
    pub(super) file: Arc<File>,
    /// With O_DIRECT: the alignment the file needs of offsets, lengths and
    /// buffers (512 bytes, or 4 KiB on a 4Kn device).
    pub(super) direct_align: Option<u64>,
}

impl FastFile {
    /// Whether the file bypasses the page cache (O_DIRECT).
    pub fn is_direct(&self) -> bool {
        self.direct_align.is_some()
    }

    /// The alignment O_DIRECT needs of this file, when it is open so.
    pub fn direct_align(&self) -> Option<u64> {
        self.direct_align
    }

    /// The fast-path file of `disk`; None for images without one (qcow2)
    /// or where the file cannot be shared.
    pub fn open(disk: &dyn BlockBackend, cache: CacheMode, read_only: bool) -> Option<FastFile> {
        let file = disk.raw_file()?;
        let direct = match cache {
            CacheMode::None => match open_direct(file, !read_only, disk.size()) {
                Ok(f) => Some(f),
                Err(e) => {
                    tracing::debug!("virtio-blk: O_DIRECT refused ({e}); using the page cache");
                    None
                }
            },
            CacheMode::Writeback => None,
        };
        let direct_align = direct.as_ref().map(|(_, align)| *align);
        match direct.map_or_else(|| file.try_clone(), |(f, _)| Ok(f)) {
            Ok(f) => Some(FastFile {
                file: Arc::new(f),
                direct_align,
            }),
            Err(e) => {
                tracing::debug!("virtio-blk: cannot share the disk file ({e}); synchronous I/O");
                None
            }
        }
    }
}

/// Sets up the fast path's ring on `fast` (a duplicate of its descriptor:
/// each boot's device owns its ring and file). Returns no ring, and the
/// caching in effect, where any step fails: the device then serves
/// everything synchronously, as before.
pub(super) fn fast_path(fast: Option<FastFile>) -> (Option<UringDisk>, CacheMode) {
    let Some(fast) = fast else {
        return (None, CacheMode::Writeback);
    };
    let file = match fast.file.try_clone() {
        Ok(f) => f,
        Err(e) => {
            tracing::debug!("virtio-blk: cannot share the disk file ({e}); synchronous I/O");
            return (None, CacheMode::Writeback);
        }
    };
    match UringDisk::new(file, fast.direct_align, BLOCK_QUEUE_SIZE) {
        Ok(u) => {
            let mode = if fast.is_direct() {
                CacheMode::None
            } else {
                CacheMode::Writeback
            };
            (Some(u), mode)
        }
        Err(e) => {
            tracing::debug!("virtio-blk: io_uring unavailable ({e}); synchronous I/O");
            (None, CacheMode::Writeback)
        }
    }
}

/// The disk file opened again, with O_DIRECT: a new open file description
/// of the same file (through /proc, so the same inode even if renamed),
/// whose flag leaves the backend's buffered descriptor alone; and the
/// alignment it needs. Reads of one aligned block at an aligned buffer find
/// the smallest alignment the file takes: 512 bytes on most, 4 KiB on a
/// device with 4 KiB logical blocks (4Kn NVMe, zram, an XFS made with
/// 4 KiB sectors). Requests the guest aligns less than that take the
/// buffered path ([`UringDisk::start`] gives them back).
pub(super) fn open_direct(file: &File, writable: bool, size: u64) -> io::Result<(File, u64)> {
    let direct = OpenOptions::new()
        .read(true)
        .write(writable)
        .custom_flags(libc::O_DIRECT)
        .open(format!("/proc/self/fd/{}", file.as_raw_fd()))?;
    let mut last = io::Error::other("no probe");
    let mut buf = vec![0u8; 4 * MAX_DIRECT_ALIGN as usize];
    for align in DIRECT_ALIGNS {
        if size < 2 * align {
            // Too small to probe: nothing to read past the first block.
            return Ok((direct, align));
        }
        // An odd multiple of `align` past a MAX_DIRECT_ALIGN boundary:
        // aligned to `align` and no more, as a guest buffer may be.
        let at = buf.as_ptr().align_offset(MAX_DIRECT_ALIGN as usize) + align as usize;
        let probe = buf
            .get_mut(at..at + align as usize)
            .ok_or_else(|| io::Error::other("probe buffer"))?;
        match direct.read_at(probe, align) {
            Ok(_) => return Ok((direct, align)),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => last = e,
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

/// The O_DIRECT alignments tried, smallest first.
const DIRECT_ALIGNS: [u64; 4] = [SECTOR_SIZE, 1024, 2048, MAX_DIRECT_ALIGN];
/// The largest O_DIRECT alignment the fast path takes (a page).
const MAX_DIRECT_ALIGN: u64 = 4096;
