//! Unpacking a tar stream into a root directory without trusting it.
//!
//! Every entry's path is cleaned first: a leading `/` is dropped (as GNU
//! tar does) and a `..` component refuses the whole archive. The entry's
//! parent directory is then opened with `openat2(RESOLVE_IN_ROOT |
//! RESOLVE_NO_MAGICLINKS)` relative to the root: a symlink the archive made
//! earlier (`lib -> /usr/lib`, or a hostile `x -> /etc`) is followed as the
//! container will see it, inside the root, never on the host. The entry
//! itself is created with `*at` calls on that directory descriptor and a
//! single file name (`O_CREAT|O_EXCL|O_NOFOLLOW`, `symlinkat`, `mknodat`,
//! `linkat` without `AT_SYMLINK_FOLLOW`), so its last component is never
//! followed either. Hard links are resolved the same way, so they can only
//! name files inside the root.

use super::ImageError;
use std::collections::HashSet;
use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// The whiteout prefix of OCI layers: `.wh.NAME` deletes NAME.
const WHITEOUT_PREFIX: &str = ".wh.";
/// The opaque whiteout: the directory holding it hides every lower entry.
const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";

/// What one unpack skipped, for the caller to report.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Notes {
    /// Device nodes that could not be created (no CAP_MKNOD).
    pub devices_skipped: usize,
    /// Entries of kinds that are not files (GNU volume labels, ...).
    pub others_skipped: usize,
}

/// A directory's owner, mode and mtime, set once everything below it is
/// written (writing into a directory changes its mtime, and a read-only
/// mode would stop an unprivileged unpack).
struct DirMeta {
    path: PathBuf,
    uid: u32,
    gid: u32,
    mode: u32,
    mtime: Mtime,
}

/// Seconds and nanoseconds.
type Mtime = (i64, i64);

/// Unpacks tar streams into one root directory.
pub struct Extractor {
    root: OwnedFd,
    /// Set owners from the archive (only root may).
    chown: bool,
    /// Whether `.wh.` entries are OCI whiteouts.
    whiteouts: bool,
    dirs: Vec<DirMeta>,
    /// Paths written by the current layer (an opaque whiteout hides only
    /// what the layers below made).
    this_layer: HashSet<PathBuf>,
    notes: Notes,
}

impl Extractor {
    /// An extractor writing into the existing directory `root`. With
    /// `whiteouts`, entries named `.wh.*` are applied as OCI whiteouts
    /// instead of being written.
    pub fn new(root: &Path, whiteouts: bool) -> Result<Extractor, ImageError> {
        let c = cstring(root.as_os_str())?;
        Ok(Extractor {
            root: open_dir_at(libc::AT_FDCWD, &c, root)?,
            // SAFETY: geteuid cannot fail.
            chown: unsafe { libc::geteuid() } == 0,
            whiteouts,
            dirs: Vec::new(),
            this_layer: HashSet::new(),
            notes: Notes::default(),
        })
    }

    /// Unpacks one tar stream (already decompressed) on top of what is in
    /// the root.
    pub fn unpack(&mut self, tar: impl Read) -> Result<(), ImageError> {
        self.this_layer.clear();
        let mut archive = tar::Archive::new(tar);
        let entries = archive
            .entries()
            .map_err(|e| ImageError::new(format!("not a tar archive: {e}")))?;
        for entry in entries {
            let mut entry =
                entry.map_err(|e| ImageError::new(format!("a damaged tar archive: {e}")))?;
            let raw = entry
                .path()
                .map_err(|e| ImageError::new(format!("an entry with a bad name: {e}")))?
                .into_owned();
            self.entry(&mut entry)
                .map_err(|e| e.context(&format!("entry {}", raw.display())))?;
        }
        Ok(())
    }

    /// Sets the directories' owners, modes and mtimes, deepest first, and
    /// says what was skipped.
    pub fn finish(mut self) -> Result<Notes, ImageError> {
        let dirs = std::mem::take(&mut self.dirs);
        for d in dirs.iter().rev() {
            let fd = match self.open_in_root(&d.path, libc::O_RDONLY | libc::O_NOFOLLOW) {
                Ok(fd) => fd,
                // Removed or replaced by a later entry or layer.
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ELOOP)) => continue,
                Err(e) => return Err(ImageError::io(format!("directory {}", d.path.display()), e)),
            };
            self.set_meta(fd.as_raw_fd(), d.uid, d.gid, d.mode, d.mtime)
                .map_err(|e| ImageError::io(format!("directory {}", d.path.display()), e))?;
        }
        Ok(self.notes)
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<R>) -> Result<(), ImageError> {
        let path = clean(&entry.path().map_err(|e| ImageError::new(e.to_string()))?)?;
        let pax = pax_mtime(entry);
        let header = entry.header();
        let kind = header.entry_type();
        let mode = header.mode().unwrap_or(0o644) & 0o7777;
        let uid = header.uid().unwrap_or(0) as u32;
        let gid = header.gid().unwrap_or(0) as u32;
        let mtime = pax.unwrap_or((header.mtime().unwrap_or(0) as i64, 0));
        let Some(name) = path.file_name().map(|n| n.to_owned()) else {
            // "./": the root itself.
            if kind.is_dir() {
                self.dirs.push(DirMeta {
                    path,
                    uid,
                    gid,
                    mode,
                    mtime,
                });
            }
            return Ok(());
        };
        let parent = path.parent().unwrap_or(Path::new("")).to_path_buf();
        if self.whiteouts {
            if let Some(hidden) = name.to_str().and_then(|n| n.strip_prefix(WHITEOUT_PREFIX)) {
                return self.whiteout(&parent, hidden);
            }
        }
        // With its parents: they hold what this layer adds.
        for p in path.ancestors() {
            if !self.this_layer.insert(p.to_path_buf()) {
                break;
            }
        }
        let dir = self.make_dirs(&parent)?;
        let dirfd = dir.as_raw_fd();
        let cname = cstring(&name)?;
        use tar::EntryType as T;
        match kind {
            T::Directory => {
                match file_type_at(dirfd, &cname)? {
                    Some(libc::S_IFDIR) => {}
                    Some(_) => {
                        remove_at(dirfd, &cname)?;
                        mkdir_at(dirfd, &cname)?;
                    }
                    None => mkdir_at(dirfd, &cname)?,
                }
                self.dirs.push(DirMeta {
                    path,
                    uid,
                    gid,
                    mode,
                    mtime,
                });
            }
            T::Regular | T::Continuous | T::GNUSparse => {
                remove_if_present(dirfd, &cname)?;
                // SAFETY: a valid name relative to a directory descriptor we
                // own; O_EXCL|O_NOFOLLOW never opens what was there.
                let fd = unsafe {
                    libc::openat(
                        dirfd,
                        cname.as_ptr(),
                        libc::O_WRONLY
                            | libc::O_CREAT
                            | libc::O_EXCL
                            | libc::O_NOFOLLOW
                            | libc::O_CLOEXEC,
                        0o600,
                    )
                };
                if fd < 0 {
                    return Err(ImageError::io("creating it", io::Error::last_os_error()));
                }
                // SAFETY: fd is a new descriptor that nothing else owns.
                let mut file = unsafe { File::from_raw_fd(fd) };
                io::copy(entry, &mut file).map_err(|e| ImageError::io("writing it", e))?;
                if let Ok(Some(exts)) = entry.pax_extensions() {
                    for ext in exts.flatten() {
                        if let Some(attr) =
                            ext.key().ok().and_then(|k| k.strip_prefix("SCHILY.xattr."))
                        {
                            set_xattr(file.as_raw_fd(), attr, ext.value_bytes());
                        }
                    }
                }
                self.set_meta(file.as_raw_fd(), uid, gid, mode, mtime)
                    .map_err(|e| ImageError::io("setting its owner, mode or time", e))?;
            }
            T::Symlink => {
                let target = link_target(entry, "a symbolic link")?;
                let ctarget = cstring(target.as_os_str())?;
                remove_if_present(dirfd, &cname)?;
                // SAFETY: valid NUL-terminated strings; a symlink's target
                // is stored, never resolved here.
                if unsafe { libc::symlinkat(ctarget.as_ptr(), dirfd, cname.as_ptr()) } != 0 {
                    return Err(ImageError::io("creating it", io::Error::last_os_error()));
                }
                self.set_meta_at(dirfd, &cname, uid, gid, None, mtime)
                    .map_err(|e| ImageError::io("setting its owner or time", e))?;
            }
            T::Link => {
                let target = link_target(entry, "a hard link")?;
                let target = clean(&target)?;
                if target == path {
                    return Ok(());
                }
                let Some(tname) = target.file_name() else {
                    return Err(ImageError::new("a hard link to the root directory"));
                };
                let tdir = self
                    .open_in_root(target.parent().unwrap_or(Path::new("")), libc::O_PATH)
                    .map_err(|e| ImageError::io(format!("link target {}", target.display()), e))?;
                let ctname = cstring(tname)?;
                remove_if_present(dirfd, &cname)?;
                // SAFETY: valid names relative to directory descriptors we
                // own; without AT_SYMLINK_FOLLOW a symlink target is linked
                // itself, not followed.
                let r = unsafe {
                    libc::linkat(tdir.as_raw_fd(), ctname.as_ptr(), dirfd, cname.as_ptr(), 0)
                };
                if r != 0 {
                    return Err(ImageError::io(
                        format!("linking to {}", target.display()),
                        io::Error::last_os_error(),
                    ));
                }
            }
            T::Char | T::Block | T::Fifo => {
                let (kind_bits, dev) = match kind {
                    T::Char | T::Block => {
                        let major = header.device_major().ok().flatten().unwrap_or(0);
                        let minor = header.device_minor().ok().flatten().unwrap_or(0);
                        let bits = if kind == T::Char {
                            libc::S_IFCHR
                        } else {
                            libc::S_IFBLK
                        };
                        (bits, libc::makedev(major, minor))
                    }
                    _ => (libc::S_IFIFO, 0),
                };
                remove_if_present(dirfd, &cname)?;
                // SAFETY: a valid name relative to a directory we own.
                let r = unsafe { libc::mknodat(dirfd, cname.as_ptr(), kind_bits | 0o600, dev) };
                if r != 0 {
                    let e = io::Error::last_os_error();
                    if kind_bits != libc::S_IFIFO && e.raw_os_error() == Some(libc::EPERM) {
                        tracing::info!(
                            "image: device node {} skipped (no CAP_MKNOD)",
                            path.display()
                        );
                        self.notes.devices_skipped += 1;
                        return Ok(());
                    }
                    return Err(ImageError::io("creating it", e));
                }
                self.set_meta_at(dirfd, &cname, uid, gid, Some(mode), mtime)
                    .map_err(|e| ImageError::io("setting its owner, mode or time", e))?;
            }
            // Headers the tar crate has already applied to the next entry.
            T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink => {}
            _ => {
                tracing::info!("image: entry {} of an unknown kind skipped", path.display());
                self.notes.others_skipped += 1;
            }
        }
        Ok(())
    }

    /// Applies `.wh.HIDDEN` in `parent`.
    fn whiteout(&mut self, parent: &Path, hidden: &str) -> Result<(), ImageError> {
        let dir = match self.open_in_root(parent, libc::O_RDONLY) {
            Ok(d) => d,
            // Nothing below to hide.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => {
                return Ok(())
            }
            Err(e) => return Err(ImageError::io("opening its directory", e)),
        };
        if format!("{WHITEOUT_PREFIX}{hidden}") == OPAQUE_WHITEOUT {
            return self.hide_lower(dir.as_raw_fd(), parent);
        }
        if hidden.is_empty() || hidden == "." || hidden == ".." || hidden.contains('/') {
            return Err(ImageError::new("a whiteout that names no file"));
        }
        remove_if_present(dir.as_raw_fd(), &cstring(OsStr::new(hidden))?)
    }

    /// Removes what the layers below put in `dir` (at `rel`): every entry
    /// this layer did not write, and the same inside the directories it
    /// wrote into (the opaque marker may come before or after them).
    fn hide_lower(&self, dirfd: RawFd, rel: &Path) -> Result<(), ImageError> {
        for child in read_dir_fd(dirfd)? {
            let path = rel.join(&child);
            let cname = cstring(&child)?;
            if !self.this_layer.contains(&path) {
                remove_at(dirfd, &cname)?;
            } else if file_type_at(dirfd, &cname)? == Some(libc::S_IFDIR) {
                let sub = open_dir_at(dirfd, &cname, &path)?;
                self.hide_lower(sub.as_raw_fd(), &path)?;
            }
        }
        Ok(())
    }

    /// Opens the directory `rel` inside the root, creating what is missing.
    fn make_dirs(&self, rel: &Path) -> Result<OwnedFd, ImageError> {
        match self.open_in_root(rel, libc::O_PATH) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                let Some(name) = rel.file_name() else {
                    return Err(ImageError::io("the root", e));
                };
                let parent = self.make_dirs(rel.parent().unwrap_or(Path::new("")))?;
                let cname = cstring(name)?;
                match mkdir_at(parent.as_raw_fd(), &cname) {
                    Ok(()) => {}
                    // A dangling symlink: it points where nothing is.
                    Err(e) if matches!(&e, ImageError::Io { source, .. } if source.raw_os_error() == Some(libc::EEXIST)) =>
                        {}
                    Err(e) => return Err(e.context(&format!("creating {}", rel.display()))),
                }
                self.open_in_root(rel, libc::O_PATH).map_err(|e| {
                    ImageError::io(format!("directory {} (a dangling link?)", rel.display()), e)
                })
            }
            Err(e) => Err(ImageError::io(format!("directory {}", rel.display()), e)),
            Ok(fd) => Ok(fd),
        }
    }

    /// `openat2(root, rel, O_DIRECTORY | flags, RESOLVE_IN_ROOT |
    /// RESOLVE_NO_MAGICLINKS)`: symlinks are resolved as if the root were
    /// `/`, so nothing outside it can be reached.
    fn open_in_root(&self, rel: &Path, flags: libc::c_int) -> io::Result<OwnedFd> {
        let c = if rel.as_os_str().is_empty() {
            CString::new(".").expect("no NUL")
        } else {
            CString::new(rel.as_os_str().as_bytes())
                .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?
        };
        // SAFETY: open_how is plain data; zeroed is a valid value.
        let mut how: libc::open_how = unsafe { std::mem::zeroed() };
        how.flags = (flags | libc::O_DIRECTORY | libc::O_CLOEXEC) as u64;
        how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
        // SAFETY: openat2 reads a valid path and an open_how of the given
        // size; the result is checked.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                self.root.as_raw_fd(),
                c.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a new descriptor that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
    }

    /// Owner first: chown clears setuid and setgid bits, chmod sets them.
    fn set_meta(&self, fd: RawFd, uid: u32, gid: u32, mode: u32, mtime: Mtime) -> io::Result<()> {
        // SAFETY: fchown, fchmod and futimens on a descriptor we own; the
        // timespec array is valid for the call.
        unsafe {
            if self.chown && libc::fchown(fd, uid, gid) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::fchmod(fd, mode as libc::mode_t) != 0 {
                return Err(io::Error::last_os_error());
            }
            let times = [timespec(mtime), timespec(mtime)];
            if libc::futimens(fd, times.as_ptr()) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }

    /// For entries that cannot be opened (symlinks, device nodes, FIFOs):
    /// by name in their directory, never following a symlink.
    fn set_meta_at(
        &self,
        dirfd: RawFd,
        name: &CString,
        uid: u32,
        gid: u32,
        mode: Option<u32>,
        mtime: Mtime,
    ) -> io::Result<()> {
        // SAFETY: valid names relative to a directory descriptor we own;
        // the timespec array is valid for the call.
        unsafe {
            if self.chown
                && libc::fchownat(dirfd, name.as_ptr(), uid, gid, libc::AT_SYMLINK_NOFOLLOW) != 0
            {
                return Err(io::Error::last_os_error());
            }
            // Only for nodes this extractor has just made (not links).
            if let Some(mode) = mode {
                if libc::fchmodat(dirfd, name.as_ptr(), mode as libc::mode_t, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            let times = [timespec(mtime), timespec(mtime)];
            if libc::utimensat(
                dirfd,
                name.as_ptr(),
                times.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

/// An archive path made relative and checked: no `..`.
pub(crate) fn clean(path: &Path) -> Result<PathBuf, ImageError> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
            Component::ParentDir => {
                return Err(ImageError::new(format!(
                    "{} climbs out of the root with \"..\"; the archive is damaged or hostile",
                    path.display()
                )))
            }
        }
    }
    Ok(out)
}

fn cstring(s: &OsStr) -> Result<CString, ImageError> {
    CString::new(s.as_bytes()).map_err(|_| ImageError::new("a name with a NUL byte"))
}

fn timespec((secs, nsec): Mtime) -> libc::timespec {
    libc::timespec {
        tv_sec: secs as libc::time_t,
        tv_nsec: nsec as libc::c_long,
    }
}

/// A PAX `mtime` record (`SECONDS[.FRACTION]`), which keeps what the
/// header's whole seconds lose.
fn pax_mtime<R: Read>(entry: &mut tar::Entry<R>) -> Option<Mtime> {
    let exts = entry.pax_extensions().ok()??;
    let value = exts
        .flatten()
        .find(|e| e.key() == Ok("mtime"))?
        .value()
        .ok()?
        .to_string();
    let (secs, frac) = value.split_once('.').unwrap_or((&value, ""));
    let secs: i64 = secs.parse().ok()?;
    let digits: String = frac.chars().take(9).collect();
    let nsec = if digits.is_empty() {
        0
    } else {
        digits.parse::<i64>().ok()? * 10i64.pow(9 - digits.len() as u32)
    };
    // Times before 1970 keep whole seconds from the header.
    (secs >= 0 && digits.bytes().all(|b| b.is_ascii_digit())).then_some((secs, nsec))
}

/// The `S_IFMT` bits of `name` in `dirfd` (not following a symlink), or
/// `None` if there is nothing.
fn file_type_at(dirfd: RawFd, name: &CString) -> Result<Option<libc::mode_t>, ImageError> {
    // SAFETY: stat is plain data; zeroed is a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a valid name and a stat buffer valid for the call.
    let r = unsafe { libc::fstatat(dirfd, name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) };
    if r != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENOENT) {
            return Ok(None);
        }
        return Err(ImageError::io("looking at what is there", e));
    }
    Ok(Some(st.st_mode & libc::S_IFMT))
}

fn mkdir_at(dirfd: RawFd, name: &CString) -> Result<(), ImageError> {
    // SAFETY: a valid name relative to a directory descriptor we own.
    if unsafe { libc::mkdirat(dirfd, name.as_ptr(), 0o755) } != 0 {
        return Err(ImageError::io(
            "creating a directory",
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

fn remove_if_present(dirfd: RawFd, name: &CString) -> Result<(), ImageError> {
    if file_type_at(dirfd, name)?.is_some() {
        remove_at(dirfd, name)?;
    }
    Ok(())
}

/// Removes `name` in `dirfd`: a file or link with unlinkat, a directory
/// with everything in it (std's remove_dir_all opens each level with
/// O_NOFOLLOW, so a link in the tree is removed, not followed).
fn remove_at(dirfd: RawFd, name: &CString) -> Result<(), ImageError> {
    if file_type_at(dirfd, name)? == Some(libc::S_IFDIR) {
        let path =
            Path::new(&format!("/proc/self/fd/{dirfd}")).join(OsStr::from_bytes(name.as_bytes()));
        return std::fs::remove_dir_all(&path)
            .map_err(|e| ImageError::io("removing the directory there", e));
    }
    // SAFETY: a valid name relative to a directory descriptor we own.
    if unsafe { libc::unlinkat(dirfd, name.as_ptr(), 0) } != 0 {
        return Err(ImageError::io(
            "removing what was there",
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

fn read_dir_fd(dirfd: RawFd) -> Result<Vec<std::ffi::OsString>, ImageError> {
    std::fs::read_dir(format!("/proc/self/fd/{dirfd}"))
        .and_then(|rd| rd.map(|e| e.map(|e| e.file_name())).collect())
        .map_err(|e| ImageError::io("listing a directory", e))
}

/// Sets one extended attribute from a PAX `SCHILY.xattr.` record; a file
/// system without them loses it (logged), the unpack goes on.
fn set_xattr(fd: RawFd, name: &str, value: &[u8]) {
    let Ok(cname) = CString::new(name) else {
        return;
    };
    // SAFETY: a valid name and a value buffer valid for the call.
    let r = unsafe { libc::fsetxattr(fd, cname.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    if r != 0 {
        tracing::debug!(
            "image: extended attribute {name} not kept: {}",
            io::Error::last_os_error()
        );
    }
}

/// Opens the directory `name` (relative to `dirfd`, or AT_FDCWD) itself:
/// O_NOFOLLOW|O_DIRECTORY opens a real directory and never a link to one.
/// `shown` names it in the error.
fn open_dir_at(dirfd: RawFd, name: &CStr, shown: &Path) -> Result<OwnedFd, ImageError> {
    // SAFETY: a valid NUL-terminated name relative to an open directory
    // (or the working directory); the result is checked.
    let fd = unsafe {
        libc::openat(
            dirfd,
            name.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(ImageError::io(
            format!("opening {}", shown.display()),
            io::Error::last_os_error(),
        ));
    }
    // SAFETY: fd is a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The target a link entry names; `what` says which kind in the error.
fn link_target<R: Read>(entry: &tar::Entry<'_, R>, what: &str) -> Result<PathBuf, ImageError> {
    entry
        .link_name()
        .map_err(|e| ImageError::new(e.to_string()))?
        .map(|t| t.into_owned())
        .ok_or_else(|| ImageError::new(format!("{what} without a target")))
}
