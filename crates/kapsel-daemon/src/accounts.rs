//! Users and groups of this host: `owner` checks for vm.conf and the
//! authorization of control-socket peers (SO_PEERCRED).

use kapsel_config::{Accounts, Owner};
use std::collections::HashSet;
use std::ffi::{CStr, CString};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

/// The users and groups of this host, from /etc/passwd and /etc/group,
/// then NSS. A database that cannot be read accepts every name.
pub struct HostAccounts {
    users: Option<HashSet<String>>,
    groups: Option<HashSet<String>>,
}

impl HostAccounts {
    /// Reads /etc/passwd and /etc/group.
    pub fn read() -> Self {
        let names = |path: &str| {
            std::fs::read_to_string(path).ok().map(|text| {
                text.lines()
                    .filter(|l| !l.starts_with('#'))
                    .filter_map(|l| l.split(':').next())
                    .filter(|n| !n.is_empty())
                    .map(str::to_string)
                    .collect()
            })
        };
        HostAccounts {
            users: names("/etc/passwd"),
            groups: names("/etc/group"),
        }
    }
}

impl Accounts for HostAccounts {
    fn user_exists(&self, name: &str) -> bool {
        self.users.as_ref().is_none_or(|u| u.contains(name)) || uid_of(name).is_some()
    }
    fn group_exists(&self, name: &str) -> bool {
        self.groups.as_ref().is_none_or(|g| g.contains(name)) || gid_of(name).is_some()
    }
}

/// The uid of a user name (or a numeric uid), through NSS.
pub fn uid_of(name: &str) -> Option<u32> {
    match name.parse() {
        Ok(n) => Some(n),
        Err(_) => user_ids(name).map(|(uid, _)| uid),
    }
}

/// The uid and primary gid of a user name, through NSS.
pub fn user_ids(name: &str) -> Option<(u32, u32)> {
    let cname = CString::new(name).ok()?;
    let mut buf = vec![0u8; 16384];
    // SAFETY: passwd is plain old data that getpwnam_r fills in.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call and buf's length is given.
    let rc = unsafe {
        libc::getpwnam_r(
            cname.as_ptr(),
            &mut pw,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        )
    };
    (rc == 0 && !result.is_null()).then_some((pw.pw_uid, pw.pw_gid))
}

/// The gid of a group name (or a numeric gid), through NSS.
pub fn gid_of(name: &str) -> Option<u32> {
    if let Ok(n) = name.parse() {
        return Some(n);
    }
    let cname = CString::new(name).ok()?;
    let mut buf = vec![0u8; 65536];
    // SAFETY: group is plain old data that getgrnam_r fills in.
    let mut gr: libc::group = unsafe { std::mem::zeroed() };
    let mut result = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call and buf's length is given.
    let rc = unsafe {
        libc::getgrnam_r(
            cname.as_ptr(),
            &mut gr,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        )
    };
    (rc == 0 && !result.is_null()).then_some(gr.gr_gid)
}

/// The name and every group (primary and supplementary) of a uid.
fn user_and_groups(uid: u32, primary: u32) -> (Option<String>, Vec<u32>) {
    let mut buf = vec![0u8; 16384];
    // SAFETY: passwd is plain old data that getpwuid_r fills in.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call and buf's length is given.
    let rc = unsafe {
        libc::getpwuid_r(
            uid,
            &mut pw,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() {
        return (None, vec![primary]);
    }
    // SAFETY: pw_name points into buf, NUL-terminated by getpwuid_r.
    let name = unsafe { CStr::from_ptr(pw.pw_name) };
    let mut groups = vec![0 as libc::gid_t; 256];
    let mut count = groups.len() as libc::c_int;
    // SAFETY: groups has room for count entries; name is NUL-terminated.
    let rc = unsafe { libc::getgrouplist(name.as_ptr(), primary, groups.as_mut_ptr(), &mut count) };
    groups.truncate(if rc < 0 { 0 } else { count.max(0) as usize });
    if !groups.contains(&primary) {
        groups.push(primary);
    }
    (Some(name.to_string_lossy().into_owned()), groups)
}

/// Who is on the other end of a control connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Effective uid of the connecting process.
    pub uid: u32,
    /// Its primary gid.
    pub gid: u32,
    /// Its primary gid and supplementary groups.
    pub groups: Vec<u32>,
    /// Its user name, when it has one.
    pub name: Option<String>,
}

/// The pid, uid and gid of the process that connected `stream`
/// (SO_PEERCRED), without name service look-ups.
pub fn peer_cred(stream: &UnixStream) -> std::io::Result<libc::ucred> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: cred and len are valid for writes of the sizes given.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cred)
}

impl Peer {
    /// The credentials of the process that connected `stream` (SO_PEERCRED).
    pub fn of(stream: &UnixStream) -> std::io::Result<Peer> {
        let cred = peer_cred(stream)?;
        Ok(Peer::from_ids(cred.uid, cred.gid))
    }

    /// A peer with this uid and primary gid, its other groups from NSS.
    pub fn from_ids(uid: u32, gid: u32) -> Peer {
        let (name, groups) = user_and_groups(uid, gid);
        Peer {
            uid,
            gid,
            groups,
            name,
        }
    }

    /// Root may do everything.
    pub fn is_root(&self) -> bool {
        self.uid == 0
    }

    /// Whether this peer is `owner` (its user, or a member of its group).
    pub fn is(&self, owner: &Owner) -> bool {
        let user = owner.user.as_deref().and_then(uid_of);
        let group = owner.group.as_deref().and_then(gid_of);
        user == Some(self.uid) || group.is_some_and(|g| self.groups.contains(&g))
    }

    /// Whether this peer may control a guest owned by `owner`.
    pub fn may_control(&self, owner: Option<&Owner>) -> bool {
        self.is_root() || owner.is_some_and(|o| self.is(o))
    }

    /// How to name this peer in a refusal.
    pub fn describe(&self) -> String {
        match &self.name {
            Some(n) => n.clone(),
            None => format!("uid {}", self.uid),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(s: &str) -> Owner {
        s.parse().unwrap()
    }

    #[test]
    fn root_controls_everything() {
        let root = Peer::from_ids(0, 0);
        assert!(root.may_control(None));
        assert!(root.may_control(Some(&owner("nobody"))));
    }

    #[test]
    fn owners_by_user_and_group() {
        let nobody = uid_of("nobody").expect("Debian has nobody");
        let nogroup = gid_of("nogroup").expect("Debian has nogroup");
        let peer = Peer::from_ids(nobody, nogroup);
        assert!(!peer.may_control(None), "unowned VMs are root's");
        assert!(peer.may_control(Some(&owner("nobody"))));
        assert!(peer.may_control(Some(&owner(&nobody.to_string()))));
        assert!(peer.may_control(Some(&owner(":nogroup"))));
        assert!(!peer.may_control(Some(&owner("root"))));
        assert!(!peer.may_control(Some(&owner(":root"))));
        assert!(!peer.may_control(Some(&owner("no-such-user-here"))));
        assert_eq!(peer.describe(), "nobody");
    }

    #[test]
    fn peer_of_a_socket_is_this_process() {
        let (a, _b) = UnixStream::pair().unwrap();
        let peer = Peer::of(&a).unwrap();
        // SAFETY: geteuid has no preconditions.
        assert_eq!(peer.uid, unsafe { libc::geteuid() });
    }
}
