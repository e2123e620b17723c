//! Raw images: a regular file or a block device, read and written with
//! `pread`/`pwrite`; discard and write-zeroes through `fallocate`.

use crate::{check_bounds, read_only_error, BlockBackend, QCOW2_MAGIC};
use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

/// Size of the zero buffer written where `fallocate` cannot zero.
const ZERO_CHUNK: usize = 64 * 1024;

/// A raw image in a file or block device.
#[derive(Debug)]
pub struct RawBackend {
    file: File,
    size: u64,
    read_only: bool,
    guard_magic: bool,
}

impl RawBackend {
    /// A backend over `file`, whose current size (for a block device, its
    /// capacity) is the disk size. `file` must be open for writing unless
    /// `read_only`.
    pub fn from_file(file: File, read_only: bool) -> io::Result<Self> {
        // The seek works for block devices, whose metadata length is 0.
        let size = (&file).seek(SeekFrom::End(0))?;
        Ok(RawBackend {
            file,
            size,
            read_only,
            guard_magic: false,
        })
    }

    /// Refuse writes that would put [`QCOW2_MAGIC`] at the start of the
    /// disk. [`crate::open`] sets this when the format was probed rather
    /// than given, because the next probe would then read guest-written
    /// qcow2 metadata, backing file name included.
    pub fn set_guard_magic(&mut self, guard: bool) {
        self.guard_magic = guard;
    }

    /// The underlying file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Whether the write of `buf` at `offset` would leave the qcow2 magic in
    /// the first four bytes.
    fn writes_magic(&self, buf: &[u8], offset: u64) -> io::Result<bool> {
        let head_len = QCOW2_MAGIC.len() as u64;
        if offset >= head_len || buf.is_empty() {
            return Ok(false);
        }
        let mut head = [0u8; 4];
        // Short when the disk is smaller than 4 bytes: the rest stays zero.
        let _ = self.file.read_at(&mut head, 0)?;
        let start = offset as usize;
        let n = (head.len() - start).min(buf.len());
        head[start..start + n].copy_from_slice(&buf[..n]);
        Ok(head == QCOW2_MAGIC)
    }

    fn fallocate(&self, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
        let (Ok(offset), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len))
        else {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        };
        // SAFETY: fallocate only acts on the file descriptor `self.file`
        // owns, which stays open for the call; it touches no memory of this
        // process.
        let rc = unsafe { libc::fallocate(self.file.as_raw_fd(), mode, offset, len) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    fn write_zero_bytes(&self, offset: u64, len: u64) -> io::Result<()> {
        let zeroes = vec![0u8; ZERO_CHUNK];
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(ZERO_CHUNK as u64);
            self.file
                .write_all_at(&zeroes[..n as usize], offset + done)?;
            done += n;
        }
        Ok(())
    }
}

/// `fallocate` modes the file system (or kernel) does not implement.
fn unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) | Some(libc::ENODEV)
    )
}

const PUNCH_HOLE: libc::c_int = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
const ZERO_RANGE: libc::c_int = libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE;

impl BlockBackend for RawBackend {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        check_bounds(self.size, offset, buf.len() as u64)?;
        self.file.read_exact_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if self.read_only {
            return Err(read_only_error());
        }
        check_bounds(self.size, offset, buf.len() as u64)?;
        if self.guard_magic && self.writes_magic(buf, offset)? {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "refusing to write a qcow2 magic into a raw image whose format was probed; \
                 give format=raw to allow it",
            ));
        }
        self.file.write_all_at(buf, offset)
    }

    fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn discard(&mut self, offset: u64, len: u64) -> io::Result<()> {
        if self.read_only {
            return Err(read_only_error());
        }
        check_bounds(self.size, offset, len)?;
        if len == 0 {
            return Ok(());
        }
        match self.fallocate(PUNCH_HOLE, offset, len) {
            // Discard is a hint: not doing it is correct.
            Err(e) if unsupported(&e) => Ok(()),
            r => r,
        }
    }

    fn write_zeroes(&mut self, offset: u64, len: u64, may_unmap: bool) -> io::Result<()> {
        if self.read_only {
            return Err(read_only_error());
        }
        check_bounds(self.size, offset, len)?;
        if len == 0 {
            return Ok(());
        }
        // Both modes leave the range reading as zeroes; punching frees it.
        let modes: &[libc::c_int] = if may_unmap {
            &[PUNCH_HOLE, ZERO_RANGE]
        } else {
            &[ZERO_RANGE]
        };
        for &mode in modes {
            match self.fallocate(mode, offset, len) {
                Err(e) if unsupported(&e) => continue,
                r => return r,
            }
        }
        self.write_zero_bytes(offset, len)
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn raw_file(&self) -> Option<&File> {
        Some(&self.file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn backend(len: usize, read_only: bool) -> (tempfile::NamedTempFile, RawBackend) {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8 + 1).collect();
        f.write_all(&data).unwrap();
        let file = if read_only {
            File::open(f.path()).unwrap()
        } else {
            f.reopen().unwrap()
        };
        let b = RawBackend::from_file(file, read_only).unwrap();
        (f, b)
    }

    #[test]
    fn read_write_round_trip_and_bounds() {
        let (_f, b) = backend(8192, false);
        assert_eq!(b.size(), 8192);
        b.write_at(&[7u8; 512], 4096).unwrap();
        let mut buf = [0u8; 512];
        b.read_at(&mut buf, 4096).unwrap();
        assert_eq!(buf, [7u8; 512]);
        assert!(b.read_at(&mut buf, 8192 - 511).is_err());
        assert!(b.write_at(&buf, u64::MAX).is_err());
        assert!(b.read_at(&mut [], 8192).is_ok());
        b.flush().unwrap();
        // The file holds the disk's bytes one to one.
        let mut direct = [0u8; 512];
        b.raw_file()
            .unwrap()
            .read_exact_at(&mut direct, 4096)
            .unwrap();
        assert_eq!(direct, [7u8; 512]);
    }

    #[test]
    fn zeroes_and_discard() {
        let (f, mut b) = backend(1 << 20, false);
        b.write_zeroes(4096, 8192, false).unwrap();
        b.write_zeroes(65536, 4096, true).unwrap();
        let mut buf = vec![0u8; 8192];
        b.read_at(&mut buf, 4096).unwrap();
        assert!(buf.iter().all(|&x| x == 0));
        b.read_at(&mut buf[..4096], 65536).unwrap();
        assert!(buf[..4096].iter().all(|&x| x == 0));
        b.read_at(&mut buf[..1], 4095).unwrap();
        assert_ne!(buf[0], 0);
        b.discard(131072, 4096).unwrap();
        assert!(b.discard(1 << 20, 1).is_err());
        assert!(b.write_zeroes(u64::MAX, 2, false).is_err());
        assert_eq!(f.as_file().metadata().unwrap().len(), 1 << 20);
    }

    #[test]
    fn read_only_refuses_changes() {
        let (_f, mut b) = backend(4096, true);
        assert!(b.read_only());
        assert!(b.write_at(&[0], 0).is_err());
        assert!(b.discard(0, 512).is_err());
        assert!(b.write_zeroes(0, 512, false).is_err());
        let mut buf = [0u8; 4];
        b.read_at(&mut buf, 0).unwrap();
        assert_eq!(buf, [1, 2, 3, 4]);
        b.flush().unwrap();
    }

    #[test]
    fn probed_raw_refuses_qcow2_magic() {
        let (_f, mut b) = backend(4096, false);
        b.set_guard_magic(true);
        assert!(b.write_at(&QCOW2_MAGIC, 0).is_err());
        let mut sector = vec![0u8; 512];
        sector[..4].copy_from_slice(&QCOW2_MAGIC);
        assert!(b.write_at(&sector, 0).is_err());
        // Piecewise: the first two bytes, then the last two.
        b.write_at(b"QF", 0).unwrap();
        assert!(b.write_at(b"I\xfb", 2).is_err());
        b.write_at(b"I\xfa", 2).unwrap();
        b.write_at(&QCOW2_MAGIC, 4).unwrap();
        b.set_guard_magic(false);
        b.write_at(&QCOW2_MAGIC, 0).unwrap();
    }
}
