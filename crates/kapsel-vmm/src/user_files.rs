//! Opening files with the rights of the user who named them.
//!
//! A VM process started by the daemon runs as root, but the kernel, initrd
//! and disks that a non-root user names in a start request are that
//! user's choice: root opening them would let the user read and overwrite
//! any file of the host through a guest (OpenBSD vmd checks the user's
//! access to every such file for the same reason). Those files are opened
//! on a thread of their own whose filesystem credentials are the user's
//! (setgroups, setfsgid, setfsuid made as raw system calls, which change
//! the calling thread only; glibc's wrappers would change every thread).
//! The kernel then checks the user's rights at every open, the backing
//! chain of a qcow2 image included, with no window between a check and
//! the open: while the thread's fsuid is not 0, the kernel also clears
//! CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER and the other file
//! capabilities from its effective set. The thread ends with the opens,
//! and its credentials with it.

use std::io;

/// The filesystem identity of the user on whose behalf files are opened.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserCredentials {
    /// The user id.
    pub uid: u32,
    /// The primary group id.
    pub gid: u32,
    /// The supplementary groups (the primary one may be among them).
    pub groups: Vec<u32>,
}

/// Most supplementary groups accepted (the kernel's NGROUPS_MAX).
pub const MAX_GROUPS: usize = 65536;

impl UserCredentials {
    /// Parses `UID:GID[:GID,GID...]` (the `--open-as` argument).
    pub fn parse(text: &str) -> Result<UserCredentials, String> {
        let bad = || format!("\"{text}\": write the credentials as UID:GID[:GID,GID...]");
        let mut parts = text.splitn(3, ':');
        let uid = parts.next().and_then(|u| u.parse().ok()).ok_or_else(bad)?;
        let gid = parts.next().and_then(|g| g.parse().ok()).ok_or_else(bad)?;
        let groups = match parts.next() {
            None | Some("") => Vec::new(),
            Some(list) => list
                .split(',')
                .map(|g| g.parse().map_err(|_| bad()))
                .collect::<Result<Vec<u32>, String>>()?,
        };
        if groups.len() > MAX_GROUPS {
            return Err(format!("{}: more than {MAX_GROUPS} groups", bad()));
        }
        Ok(UserCredentials { uid, gid, groups })
    }

    /// The user's name for messages: from the user database, or "uid N".
    pub fn describe(&self) -> String {
        let mut buf = vec![0u8; 16384];
        // SAFETY: passwd is plain old data that getpwuid_r fills in.
        let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call and buf's length is given.
        let rc = unsafe {
            libc::getpwuid_r(
                self.uid,
                &mut pw,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut result,
            )
        };
        if rc != 0 || result.is_null() || pw.pw_name.is_null() {
            return format!("uid {}", self.uid);
        }
        // SAFETY: pw_name points into buf, NUL-terminated by getpwuid_r.
        let name = unsafe { std::ffi::CStr::from_ptr(pw.pw_name) };
        name.to_string_lossy().into_owned()
    }

    /// Runs `f` on a new thread whose filesystem credentials are this
    /// user's, and returns what it returned. Fails without running `f`
    /// when the credentials cannot be taken.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> io::Result<T> {
        std::thread::scope(|s| {
            std::thread::Builder::new()
                .name("open-as-user".into())
                .spawn_scoped(s, || {
                    self.assume()?;
                    Ok(f())
                })?
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("the thread opening the files panicked")))
        })
    }

    /// Gives the calling thread this user's groups, fsgid and fsuid.
    fn assume(&self) -> io::Result<()> {
        // SAFETY: PR_GET_SECUREBITS takes no pointers.
        let securebits = unsafe { libc::prctl(libc::PR_GET_SECUREBITS) };
        if securebits < 0 || securebits & (1 << SECURE_NO_SETUID_FIXUP) != 0 {
            // Without the fixup, root's file capabilities would survive the
            // switch and the kernel would not check the user's rights.
            return Err(io::Error::other(
                "SECBIT_NO_SETUID_FIXUP is set: files cannot be opened with a user's rights",
            ));
        }
        let mut groups = self.groups.clone();
        if !groups.contains(&self.gid) {
            groups.push(self.gid);
        }
        // SAFETY: the raw setgroups system call reads groups.len() gids
        // from a live buffer; it changes this thread's credentials only.
        let rc = unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // setfsgid and setfsuid return the previous value and report no
        // error; asking again with an invalid id (which changes nothing)
        // returns the current one, so the switch can be checked.
        // SAFETY: raw setfsgid/setfsuid take integers and change this
        // thread's credentials only.
        let (fsgid, fsuid) = unsafe {
            libc::syscall(libc::SYS_setfsgid, self.gid);
            let fsgid = libc::syscall(libc::SYS_setfsgid, u32::MAX);
            libc::syscall(libc::SYS_setfsuid, self.uid);
            let fsuid = libc::syscall(libc::SYS_setfsuid, u32::MAX);
            (fsgid, fsuid)
        };
        if fsgid != i64::from(self.gid) || fsuid != i64::from(self.uid) {
            return Err(io::Error::other(format!(
                "cannot take the filesystem credentials {}:{} (got {fsuid}:{fsgid}); \
                 the VM process needs CAP_SETUID and CAP_SETGID",
                self.uid, self.gid
            )));
        }
        Ok(())
    }
}

/// The bit of SECBIT_NO_SETUID_FIXUP in the securebits (linux/securebits.h).
const SECURE_NO_SETUID_FIXUP: i32 = 2;

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn credentials_from_the_command_line() {
        assert_eq!(
            UserCredentials::parse("1000:1000").unwrap(),
            UserCredentials {
                uid: 1000,
                gid: 1000,
                groups: vec![]
            }
        );
        assert_eq!(
            UserCredentials::parse("1000:100:24,27").unwrap().groups,
            vec![24, 27]
        );
        for bad in ["", "1000", "x:1", "1:2:a", "1:2:3,", "-1:0"] {
            assert!(
                UserCredentials::parse(bad).unwrap_err().contains("UID:GID"),
                "{bad}"
            );
        }
    }

    #[test]
    fn files_are_opened_with_the_users_rights_on_that_thread_only() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIP: switching filesystem credentials needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, b"root only").unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        let public = dir.path().join("public");
        std::fs::write(&public, b"anyone").unwrap();
        std::fs::set_permissions(&public, std::fs::Permissions::from_mode(0o644)).unwrap();
        let nobody = UserCredentials {
            uid: 65534,
            gid: 65534,
            groups: vec![],
        };
        let err = nobody
            .run(|| std::fs::File::open(&secret))
            .unwrap()
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
        assert!(nobody.run(|| std::fs::File::open(&public)).unwrap().is_ok());
        // Write access is checked too.
        let err = nobody
            .run(|| std::fs::OpenOptions::new().write(true).open(&public))
            .unwrap()
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
        // The other threads kept root's rights.
        assert!(std::fs::File::open(&secret).is_ok());
    }
}
