//! Image archives are unpacked by a confined child, not by the root
//! daemon: a tarball or OCI layout is bytes an image author controls
//! (headers, paths, links, compressed streams, JSON), and its parser runs
//! where a bug in it reaches little. Docker unpacks layers the same way, in
//! a re-executed `docker-untar` chrooted into the destination.
//!
//! The child is `kapsel unpack-image` (the daemon's binary re-executed,
//! killed with the thread that started it). Before it reads the image it:
//!
//! 1. enters new mount, network and IPC namespaces whose root is an empty
//!    tmpfs holding only the image (bind-mounted read-only) and the
//!    container's directory `STATE_DIR/ct/NAME` (read-write), each at its
//!    own path, so that what it writes (paths, markers, errors) reads the
//!    same as before; the host's root is detached;
//! 2. keeps only the capabilities that making other owners' files needs
//!    (CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_FOWNER, CAP_FSETID, CAP_MKNOD,
//!    CAP_SETFCAP) in every set, the bounding set included, and sets
//!    no_new_privs;
//! 3. installs the containers' seccomp profile (Docker's default, for a
//!    process without CAP_SYS_ADMIN: no namespaces, mounts, keyrings, BPF,
//!    module or kexec calls), and writes no core file.
//!
//! It then runs `kapsel_container::image::prepare` and writes the outcome
//! as one JSON document (at most [`MAX_REPLY`] bytes) on stdout; its
//! stderr reaches the daemon's log bounded and escaped.

use kapsel_container::image::{self, ImageDefaults};
use serde::{Deserialize, Serialize};
use std::ffi::CString;
use std::io::{self, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};

/// The hidden subcommand of `kapsel` that unpacks.
pub const SUBCOMMAND: &str = "unpack-image";
/// The largest reply the daemon reads from the child.
pub const MAX_REPLY: usize = 1 << 20;

/// What the child reports.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Outcome {
    /// The root and the image's defaults.
    Prepared {
        /// The unpacked root.
        root: PathBuf,
        /// The image configuration's defaults.
        defaults: ImageDefaults,
    },
    /// Why it could not be unpacked (the image module's message).
    Failed(String),
}

/// The capabilities the child keeps: creating files, directories, device
/// nodes and links of any owner and mode, with their file capabilities.
const KEEP: [u32; 6] = [
    kapsel_container::caps::cap::CHOWN,
    kapsel_container::caps::cap::DAC_OVERRIDE,
    kapsel_container::caps::cap::FOWNER,
    kapsel_container::caps::cap::FSETID,
    kapsel_container::caps::cap::MKNOD,
    kapsel_container::caps::cap::SETFCAP,
];

fn keep_mask() -> u64 {
    KEEP.iter().fold(0u64, |m, &c| m | (1u64 << c))
}

/// The daemon's side: unpacks `image` into `dir` (see
/// `kapsel_container::image::prepare`) in a confined `kapsel unpack-image`
/// child. The error is the image module's message, or why the child failed.
pub fn prepare(
    kapsel: &Path,
    image: &Path,
    dir: &Path,
) -> Result<(PathBuf, ImageDefaults), String> {
    // A relative --state-dir: the child mounts the directory at its path.
    let dir = std::path::absolute(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut cmd = Command::new(kapsel);
    cmd.arg(SUBCOMMAND)
        .arg("--image")
        .arg(image)
        .arg("--dir")
        .arg(&dir)
        .env_clear()
        .env(
            "KAPSEL_LOG",
            std::env::var("KAPSEL_UNPACK_LOG").unwrap_or("warn".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork
    // and exec. The child dies with this (waiting) thread.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| {
        format!(
            "cannot run {} {SUBCOMMAND} to unpack the image: {e}",
            kapsel.display()
        )
    })?;
    let pid = child.id();
    let logger = child.stderr.take().map(|err| {
        std::thread::Builder::new()
            .name(format!("unpack-{pid}"))
            .spawn(move || crate::net::log_child_lines("image unpacker", pid, BufReader::new(err)))
    });
    let mut reply = Vec::new();
    let read = match child.stdout.take() {
        Some(out) => out.take(MAX_REPLY as u64 + 1).read_to_end(&mut reply),
        None => Ok(0),
    };
    let status = child.wait().map_err(|e| format!("image unpacker: {e}"))?;
    if let Some(Ok(h)) = logger {
        let _ = h.join();
    }
    if reply.len() > MAX_REPLY {
        return Err(format!(
            "the image unpacker's reply is over {MAX_REPLY} bytes"
        ));
    }
    read.map_err(|e| format!("image unpacker: {e}"))?;
    match serde_json::from_slice::<Outcome>(&reply) {
        Ok(Outcome::Prepared { root, defaults }) if status.success() => Ok((root, defaults)),
        Ok(Outcome::Failed(e)) => Err(e),
        _ => Err(format!(
            "the image unpacker (pid {pid}) failed ({status}); see the daemon's log"
        )),
    }
}

fn check(rc: libc::c_int, what: &str) -> Result<(), String> {
    if rc < 0 {
        Err(format!(
            "cannot confine the image unpacker: {what} failed: {}",
            io::Error::last_os_error()
        ))
    } else {
        Ok(())
    }
}

fn cstr(p: &Path) -> Result<CString, String> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| format!("{} holds a NUL byte", p.display()))
}

/// `path` as an absolute path without `.` or `..`, as the daemon names
/// it: where it is bind-mounted in the new root.
fn plain(path: &Path) -> Result<PathBuf, String> {
    if !path.is_absolute() || path.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(format!(
            "{}: the image unpacker needs an absolute path without `..`",
            path.display()
        ));
    }
    Ok(path.components().collect())
}

/// Step 1: a root holding only `binds` (each path, writable or not), at
/// their own paths.
fn isolate(binds: &[(PathBuf, bool)]) -> Result<(), String> {
    check(
        // SAFETY: unshare takes flags only.
        unsafe { libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWNET | libc::CLONE_NEWIPC) },
        "unshare",
    )?;
    check(
        // SAFETY: valid NUL-terminated strings; null source/type/data are
        // allowed for a propagation change.
        unsafe {
            libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            )
        },
        "making the mounts private",
    )?;
    // Held open (O_PATH, opened in the new namespace: a bind mount's
    // source must be in it) and mounted through /proc/self/fd, since the
    // new root's tmpfs may hide where they are (an image in /tmp).
    let mut opened = Vec::new();
    for (path, writable) in binds {
        use std::os::unix::fs::OpenOptionsExt;
        let target = plain(path)?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let via = PathBuf::from(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&file)
        ));
        opened.push((file, via, target, *writable));
    }
    // Where the new root is mounted (in this namespace only): the first of
    // these that exists (an initramfs may have no /tmp).
    let new_root = [c"/tmp", c"/mnt", c"/dev"]
        .into_iter()
        .find(|d| Path::new(d.to_str().unwrap_or("/")).is_dir())
        .ok_or("cannot confine the image unpacker: none of /tmp, /mnt, /dev exists")?;
    check(
        // SAFETY: valid NUL-terminated strings for source, target, type and data.
        unsafe {
            libc::mount(
                c"kapsel-unpack".as_ptr(),
                new_root.as_ptr(),
                c"tmpfs".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                c"size=1m,mode=0755".as_ptr().cast(),
            )
        },
        "mounting the new root",
    )?;
    let root_path = Path::new(new_root.to_str().unwrap_or("/tmp"));
    for (_file, source, target, writable) in &opened {
        let inside = root_path.join(target.strip_prefix("/").unwrap_or(target));
        let is_dir = source.is_dir();
        if is_dir {
            std::fs::create_dir_all(&inside)
        } else {
            inside
                .parent()
                .map_or(Ok(()), std::fs::create_dir_all)
                .and_then(|()| std::fs::write(&inside, b""))
        }
        .map_err(|e| {
            format!(
                "cannot confine the image unpacker: {}: {e}",
                inside.display()
            )
        })?;
        let (src, dst) = (cstr(source)?, cstr(&inside)?);
        check(
            // SAFETY: valid NUL-terminated paths; a bind mount takes no type or data.
            unsafe {
                libc::mount(
                    src.as_ptr(),
                    dst.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND | libc::MS_REC,
                    std::ptr::null(),
                )
            },
            "bind-mounting the image or its directory",
        )?;
        let mut flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NOSUID | libc::MS_NODEV;
        if !*writable {
            flags |= libc::MS_RDONLY;
        }
        check(
            // SAFETY: as above.
            unsafe {
                libc::mount(
                    std::ptr::null(),
                    dst.as_ptr(),
                    std::ptr::null(),
                    flags,
                    std::ptr::null(),
                )
            },
            "remounting the bind mount",
        )?;
    }
    // No descriptor may lead outside the new root once it is entered
    // (fchdir to one, then `..`, would climb out of a chroot).
    drop(opened);
    // SAFETY: a valid NUL-terminated path.
    check(unsafe { libc::chdir(new_root.as_ptr()) }, "chdir")?;
    // SAFETY: valid NUL-terminated paths.
    let pivoted =
        unsafe { libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) as libc::c_int };
    if pivoted == 0 {
        check(
            // SAFETY: a valid NUL-terminated path.
            unsafe { libc::umount2(c".".as_ptr(), libc::MNT_DETACH) },
            "detaching the old root",
        )?;
    } else if io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
        // The initramfs cannot be pivoted away (as in kapsel-vmm's
        // sandbox): chroot instead. Without CAP_SYS_CHROOT afterwards and
        // holding no directory outside, the process cannot climb out.
        // SAFETY: a valid NUL-terminated path.
        check(unsafe { libc::chroot(c".".as_ptr()) }, "chroot")?;
    } else {
        check(pivoted, "pivot_root")?;
    }
    // SAFETY: a valid NUL-terminated path.
    check(unsafe { libc::chdir(c"/".as_ptr()) }, "chdir /")
}

/// Step 2: [`KEEP`] in the bounding, effective and permitted sets; nothing
/// inheritable or ambient; no_new_privs.
fn keep_capabilities() -> Result<(), String> {
    use kapsel_host::caps::{self, CapError, CapSet};
    let keep = CapSet(keep_mask());
    let failed = |e: CapError| format!("cannot confine the image unpacker: {e}");
    caps::drop_bounding(keep, 63).map_err(failed)?;
    caps::clear_ambient().map_err(failed)?;
    caps::set_sets(keep, CapSet::EMPTY).map_err(failed)?;
    kapsel_vmm::sandbox::set_no_new_privs().map_err(|e| e.to_string())
}

fn confine(image: &Path, dir: &Path) -> Result<(), String> {
    // SAFETY: close_range takes integers only.
    let _ = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0) };
    // The seccomp programs are built while the host's files are there.
    let programs = kapsel_container::seccomp::profile(kapsel_container::caps::CapSet(keep_mask()))
        .map_err(|e| format!("image unpacker: {e}"))?;
    let source = image::Source::locate(image).map_err(|e| e.to_string())?;
    let source_path = match &source {
        image::Source::Tarball { path, .. } | image::Source::Layout { path, .. } => path.clone(),
    };
    let mut binds = vec![(source_path.clone(), false), (dir.to_path_buf(), true)];
    // An outer directory first, so that an inner one is not hidden.
    binds.sort_by_key(|(target, _)| target.components().count());
    isolate(&binds)?;
    let none = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    check(
        // SAFETY: a valid rlimit for the call.
        unsafe { libc::setrlimit(libc::RLIMIT_CORE, &none) },
        "setrlimit(RLIMIT_CORE)",
    )?;
    keep_capabilities()?;
    for program in &programs {
        kapsel_vmm::sandbox::seccomp::install_program("image unpacker", program)
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// `kapsel unpack-image --image IMAGE --dir DIR`: confines itself, unpacks,
/// and writes the [`Outcome`] on stdout. Returns the exit status.
pub fn main(image: &Path, dir: &Path) -> u8 {
    let outcome = match confine(image, dir) {
        Err(e) => Outcome::Failed(e),
        Ok(()) => match image::prepare(image, dir) {
            Ok(p) => Outcome::Prepared {
                root: p.root,
                defaults: p.defaults,
            },
            Err(e) => Outcome::Failed(e.to_string()),
        },
    };
    let failed = matches!(outcome, Outcome::Failed(_));
    let json = serde_json::to_vec(&outcome).unwrap_or_default();
    let mut out = io::stdout().lock();
    let written = io::Write::write_all(&mut out, &json).and_then(|()| io::Write::flush(&mut out));
    if failed || written.is_err() {
        1
    } else {
        0
    }
}
