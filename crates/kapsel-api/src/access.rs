//! Authorization: privileges, roles, ACLs on paths, resource pools with
//! quotas, and `explain`, which says why a user may or may not.
//!
//! The model is Proxmox VE's (`pveum(1)`, "Permission Management"): an ACL
//! entry grants a role (a set of privileges) to a user or an API token on a
//! path; entries on a path apply to that path and, when they propagate, to
//! every path below it; on the way from `/` down to the path asked about,
//! the deepest level that has entries for the subject replaces what was
//! inherited from above; the role `NoAccess` on a level takes everything
//! away. A guest in a pool also gets what its pool's propagating entries
//! grant (union). The owner named in vm.conf holds `GuestUser` on its guest.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::util::valid_name;

/// One privilege. The names are stable: they appear in ACL files, API
/// replies and docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Privilege {
    /// See a guest, its state, config and figures.
    GuestAudit,
    /// Attach to a guest's console; exec in a container.
    GuestConsole,
    /// Start, stop, pause, unpause, reset a guest.
    GuestPowerMgmt,
    /// Change a guest's configuration.
    GuestConfig,
    /// Create and delete guests.
    GuestAllocate,
    /// List disk images.
    ImageAudit,
    /// Create, upload and delete disk images.
    ImageAllocate,
    /// See switches.
    SwitchAudit,
    /// Create, change and delete switches.
    SwitchModify,
    /// See pools and their quotas.
    PoolAudit,
    /// Create, change and delete pools; set quotas and members.
    PoolAllocate,
    /// Read host facts, the ACL and the audit log.
    SysAudit,
    /// Change host-wide settings.
    SysModify,
    /// Create, change and delete users, their tokens and TFA; realm settings.
    UserModify,
    /// Grant and revoke ACL entries; create and delete roles.
    PermissionsModify,
}

impl Privilege {
    /// Every privilege, in display order.
    pub const ALL: [Privilege; 15] = [
        Privilege::GuestAudit,
        Privilege::GuestConsole,
        Privilege::GuestPowerMgmt,
        Privilege::GuestConfig,
        Privilege::GuestAllocate,
        Privilege::ImageAudit,
        Privilege::ImageAllocate,
        Privilege::SwitchAudit,
        Privilege::SwitchModify,
        Privilege::PoolAudit,
        Privilege::PoolAllocate,
        Privilege::SysAudit,
        Privilege::SysModify,
        Privilege::UserModify,
        Privilege::PermissionsModify,
    ];

    /// The privilege's name, e.g. `Guest.PowerMgmt`.
    pub fn name(self) -> &'static str {
        match self {
            Privilege::GuestAudit => "Guest.Audit",
            Privilege::GuestConsole => "Guest.Console",
            Privilege::GuestPowerMgmt => "Guest.PowerMgmt",
            Privilege::GuestConfig => "Guest.Config",
            Privilege::GuestAllocate => "Guest.Allocate",
            Privilege::ImageAudit => "Image.Audit",
            Privilege::ImageAllocate => "Image.Allocate",
            Privilege::SwitchAudit => "Switch.Audit",
            Privilege::SwitchModify => "Switch.Modify",
            Privilege::PoolAudit => "Pool.Audit",
            Privilege::PoolAllocate => "Pool.Allocate",
            Privilege::SysAudit => "Sys.Audit",
            Privilege::SysModify => "Sys.Modify",
            Privilege::UserModify => "User.Modify",
            Privilege::PermissionsModify => "Permissions.Modify",
        }
    }

    /// Parse a privilege name.
    pub fn parse(s: &str) -> Option<Privilege> {
        Privilege::ALL.into_iter().find(|p| p.name() == s)
    }

    fn bit(self) -> u32 {
        1 << (self as u32)
    }
}

impl fmt::Display for Privilege {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of privileges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Privs(u32);

impl Privs {
    /// No privilege.
    pub const NONE: Privs = Privs(0);

    /// Every privilege.
    pub fn all() -> Privs {
        Privs::from_iter(Privilege::ALL)
    }

    /// Whether `p` is in the set.
    pub fn has(self, p: Privilege) -> bool {
        self.0 & p.bit() != 0
    }

    /// Union.
    pub fn union(self, o: Privs) -> Privs {
        Privs(self.0 | o.0)
    }

    /// Intersection.
    pub fn intersect(self, o: Privs) -> Privs {
        Privs(self.0 & o.0)
    }

    /// Whether every privilege of `o` is in `self`.
    pub fn contains(self, o: Privs) -> bool {
        self.0 & o.0 == o.0
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The privileges, in display order.
    pub fn list(self) -> Vec<Privilege> {
        Privilege::ALL
            .into_iter()
            .filter(|p| self.has(*p))
            .collect()
    }

    /// The privileges' names.
    pub fn names(self) -> Vec<String> {
        self.list()
            .into_iter()
            .map(|p| p.name().to_string())
            .collect()
    }
}

impl FromIterator<Privilege> for Privs {
    fn from_iter<I: IntoIterator<Item = Privilege>>(iter: I) -> Self {
        Privs(iter.into_iter().fold(0, |acc, p| acc | p.bit()))
    }
}

/// The role that takes every privilege away on the level it is granted.
pub const NO_ACCESS: &str = "NoAccess";
/// The role vm.conf's `owner` holds on its guest.
pub const OWNER_ROLE: &str = "GuestUser";
/// The host's superuser: every privilege on every path, always.
pub const ROOT_USER: &str = "root@pam";

/// The built-in roles and their privileges.
pub fn builtin_roles() -> BTreeMap<String, Privs> {
    use Privilege::*;
    let all_audit = [GuestAudit, ImageAudit, SwitchAudit, PoolAudit, SysAudit];
    let mut roles = BTreeMap::new();
    roles.insert("Administrator".to_string(), Privs::all());
    roles.insert(NO_ACCESS.to_string(), Privs::NONE);
    roles.insert(
        "GuestAdmin".to_string(),
        Privs::from_iter([
            GuestAudit,
            GuestConsole,
            GuestPowerMgmt,
            GuestConfig,
            GuestAllocate,
            ImageAudit,
            ImageAllocate,
            SwitchAudit,
            PoolAudit,
        ]),
    );
    roles.insert(
        "GuestUser".to_string(),
        Privs::from_iter([GuestAudit, GuestConsole, GuestPowerMgmt]),
    );
    roles.insert("Auditor".to_string(), Privs::from_iter(all_audit));
    roles.insert(
        "UserAdmin".to_string(),
        Privs::from_iter([UserModify, PermissionsModify, SysAudit]),
    );
    roles.insert(
        "PoolAdmin".to_string(),
        Privs::from_iter([PoolAudit, PoolAllocate, GuestAudit]),
    );
    roles
}

/// An ACL entry: `role` granted to `subject` (a user id `NAME@REALM` or a
/// token id `NAME@REALM!TOKEN`) on `path`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AclEntry {
    /// `/`, `/guests`, `/guests/NAME`, `/pools/NAME`, `/switches/NAME`, `/images`, `/host`, `/access`.
    pub path: String,
    /// User id (`alice@kapsel`) or token id (`alice@kapsel!ci`).
    pub subject: String,
    /// Role name.
    pub role: String,
    /// Whether the entry also applies to every path below `path`.
    #[serde(default = "yes")]
    pub propagate: bool,
}

fn yes() -> bool {
    true
}

/// Check an ACL path and return it normalized (no trailing slash).
pub fn check_path(path: &str) -> Result<String, String> {
    let fix = "use /, /host, /access, /images, /guests, /guests/NAME, /pools, /pools/NAME, /switches or /switches/NAME";
    if path == "/" {
        return Ok("/".into());
    }
    let trimmed = path.strip_suffix('/').unwrap_or(path);
    let parts: Vec<&str> = match trimmed.strip_prefix('/') {
        Some(rest) => rest.split('/').collect(),
        None => return Err(format!("ACL path {path:?} must start with '/': {fix}")),
    };
    let ok = match parts.as_slice() {
        ["host"] | ["access"] | ["images"] | ["guests"] | ["pools"] | ["switches"] => true,
        ["guests" | "pools" | "switches", name] => valid_name(name),
        _ => false,
    };
    if ok {
        Ok(trimmed.to_string())
    } else {
        Err(format!("ACL path {path:?} is not one Kapsel knows: {fix}"))
    }
}

/// The paths from `/` down to `path`, inclusive.
fn chain(path: &str) -> Vec<String> {
    let mut out = vec!["/".to_string()];
    let mut cur = String::new();
    for part in path.split('/').filter(|p| !p.is_empty()) {
        cur.push('/');
        cur.push_str(part);
        out.push(cur.clone());
    }
    out
}

/// The subject of a user id or token id: the user part of a token id.
pub fn user_of(subject: &str) -> &str {
    subject.split_once('!').map_or(subject, |(u, _)| u)
}

/// What the evaluator knows about a guest besides the ACL.
#[derive(Debug, Clone, Default)]
pub struct GuestFacts {
    /// The unix user named by `owner` in vm.conf; holds `GuestUser` as `NAME@pam`.
    pub owner: Option<String>,
    /// The pool the guest belongs to.
    pub pool: Option<String>,
}

/// A resource pool: guests grouped for permissions, with quotas.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Pool {
    /// Free text.
    #[serde(default)]
    pub comment: String,
    /// Names of the guests in the pool.
    #[serde(default)]
    pub members: BTreeSet<String>,
    /// Limits on what the pool's guests may use together.
    #[serde(default)]
    pub quota: Quota,
}

/// Limits for a pool; `None` is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Quota {
    /// Number of guests.
    pub guests: Option<u64>,
    /// vCPUs, summed over the guests.
    pub vcpus: Option<u64>,
    /// Memory in MiB, summed.
    pub memory_mib: Option<u64>,
    /// Disk in GiB, summed.
    pub disk_gib: Option<u64>,
}

/// What guests use (or ask for): the quantities a quota limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Usage {
    /// Number of guests.
    pub guests: u64,
    /// vCPUs.
    pub vcpus: u64,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// Disk in GiB.
    pub disk_gib: u64,
}

impl Usage {
    /// Sum.
    pub fn plus(self, o: Usage) -> Usage {
        Usage {
            guests: self.guests.saturating_add(o.guests),
            vcpus: self.vcpus.saturating_add(o.vcpus),
            memory_mib: self.memory_mib.saturating_add(o.memory_mib),
            disk_gib: self.disk_gib.saturating_add(o.disk_gib),
        }
    }
}

/// A quota a request would exceed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaExceeded {
    /// `guests`, `vcpus`, `memory_mib` or `disk_gib`.
    pub resource: &'static str,
    /// The pool's limit.
    pub limit: u64,
    /// In use now.
    pub used: u64,
    /// Asked for.
    pub requested: u64,
}

impl fmt::Display for QuotaExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pool quota for {} is {}, {} in use, {} more asked for: raise the pool's quota or free some",
            self.resource, self.limit, self.used, self.requested
        )
    }
}

impl Quota {
    /// Whether `used` plus `add` stays within the quota.
    pub fn check(&self, used: Usage, add: Usage) -> Result<(), QuotaExceeded> {
        let total = used.plus(add);
        let checks: [(&'static str, Option<u64>, u64, u64, u64); 4] = [
            ("guests", self.guests, used.guests, add.guests, total.guests),
            ("vcpus", self.vcpus, used.vcpus, add.vcpus, total.vcpus),
            (
                "memory_mib",
                self.memory_mib,
                used.memory_mib,
                add.memory_mib,
                total.memory_mib,
            ),
            (
                "disk_gib",
                self.disk_gib,
                used.disk_gib,
                add.disk_gib,
                total.disk_gib,
            ),
        ];
        for (resource, limit, used, requested, total) in checks {
            if let Some(limit) = limit {
                if requested > 0 && total > limit {
                    return Err(QuotaExceeded {
                        resource,
                        limit,
                        used,
                        requested,
                    });
                }
            }
        }
        Ok(())
    }
}

/// The authorization data: custom roles, ACL, pools.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessControl {
    /// Custom roles (the built-in ones are not stored).
    #[serde(default)]
    pub roles: BTreeMap<String, Vec<String>>,
    /// ACL entries.
    #[serde(default)]
    pub acl: Vec<AclEntry>,
    /// Resource pools.
    #[serde(default)]
    pub pools: BTreeMap<String, Pool>,
}

/// One ACL entry that took part in a decision, and what it gave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Grant {
    /// Where the entry is.
    pub path: String,
    /// Who it names.
    pub subject: String,
    /// The role it grants.
    pub role: String,
    /// How it reached the path asked about: `direct`, `inherited`, `pool POOL`, `owner`, `superuser`.
    pub via: String,
}

/// The answer of [`AccessControl::explain`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Explanation {
    /// The subject asked about.
    pub subject: String,
    /// The path asked about.
    pub path: String,
    /// The privilege asked about, if any.
    pub privilege: Option<String>,
    /// Whether the privilege is held.
    pub allowed: bool,
    /// Every privilege held on the path.
    pub privileges: Vec<String>,
    /// The entries that decided.
    pub grants: Vec<Grant>,
    /// The reasoning, one step a line.
    pub text: Vec<String>,
}

impl AccessControl {
    /// The privileges of role `name`, built-in or custom.
    pub fn role_privs(&self, name: &str) -> Option<Privs> {
        if let Some(p) = builtin_roles().get(name) {
            return Some(*p);
        }
        self.roles.get(name).map(|names| {
            names
                .iter()
                .filter_map(|n| Privilege::parse(n))
                .collect::<Privs>()
        })
    }

    /// Walk `path`'s chain for `subject`: the deepest level with entries
    /// for the subject decides; entries above the last level count only if
    /// they propagate. With `all_inherited`, even the last level needs
    /// propagating entries (a pool granting to its members).
    fn walk(
        &self,
        subject: &str,
        path: &str,
        all_inherited: bool,
        extra_last: &[Grant],
        via_prefix: &str,
        text: &mut Vec<String>,
    ) -> (Privs, Vec<Grant>) {
        let levels = chain(path);
        let mut privs = Privs::NONE;
        let mut grants = Vec::new();
        for (i, level) in levels.iter().enumerate() {
            let last = i + 1 == levels.len();
            let mut here: Vec<Grant> = self
                .acl
                .iter()
                .filter(|e| e.path == *level && e.subject == subject)
                .filter(|e| {
                    let applies = (last && !all_inherited) || e.propagate;
                    if !applies {
                        text.push(format!(
                            "{level}: {} holds {} without propagation, which does not reach {path}",
                            e.subject, e.role
                        ));
                    }
                    applies
                })
                .map(|e| Grant {
                    path: e.path.clone(),
                    subject: e.subject.clone(),
                    role: e.role.clone(),
                    via: if !via_prefix.is_empty() {
                        via_prefix.to_string()
                    } else if last {
                        "direct".into()
                    } else {
                        "inherited".into()
                    },
                })
                .collect();
            if last {
                here.extend(extra_last.iter().cloned());
            }
            if here.is_empty() {
                continue;
            }
            let no_access = here.iter().any(|g| g.role == NO_ACCESS);
            let level_privs = if no_access {
                Privs::NONE
            } else {
                here.iter()
                    .map(|g| self.role_privs(&g.role).unwrap_or(Privs::NONE))
                    .fold(Privs::NONE, Privs::union)
            };
            let roles: Vec<String> = here
                .iter()
                .map(|g| format!("{} ({})", g.role, g.via))
                .collect();
            if no_access {
                text.push(format!(
                    "{level}: {subject} holds {}; NoAccess takes every privilege away here",
                    roles.join(", ")
                ));
            } else if !grants.is_empty() {
                text.push(format!(
                    "{level}: {subject} holds {}, which replaces what was inherited from above: {}",
                    roles.join(", "),
                    join_or_none(level_privs)
                ));
            } else {
                text.push(format!(
                    "{level}: {subject} holds {}: {}",
                    roles.join(", "),
                    join_or_none(level_privs)
                ));
            }
            privs = level_privs;
            grants = here;
        }
        (privs, grants)
    }

    /// Everything `subject` (a user or token id) holds on `path`, and why.
    /// `guest` describes the guest when `path` is `/guests/NAME`.
    ///
    /// For a token: with `privsep`, the token's own entries intersected
    /// with its user's privileges; without, its user's privileges.
    pub fn explain(
        &self,
        subject: &str,
        privsep_token: bool,
        path: &str,
        guest: &GuestFacts,
        privilege: Option<Privilege>,
    ) -> Explanation {
        let mut text = Vec::new();
        let user = user_of(subject);
        let is_token = user != subject;
        let (privs, grants) = if is_token && privsep_token {
            text.push(format!(
                "{subject} is a privilege-separated token: it holds what both its own ACL entries and its user {user} grant"
            ));
            let (tok, mut tok_grants) = self.subject_privs(subject, path, guest, false, &mut text);
            let (usr, usr_grants) = self.subject_privs(user, path, guest, true, &mut text);
            let both = tok.intersect(usr);
            text.push(format!(
                "token {}; user {}; together {}",
                join_or_none(tok),
                join_or_none(usr),
                join_or_none(both)
            ));
            tok_grants.extend(usr_grants);
            (both, tok_grants)
        } else {
            if is_token {
                text.push(format!(
                    "{subject} is a token without privilege separation: it holds what its user {user} holds"
                ));
            }
            self.subject_privs(user, path, guest, true, &mut text)
        };
        let allowed = privilege.is_none_or(|p| privs.has(p));
        if let Some(p) = privilege {
            let why = if allowed {
                let from: Vec<String> = grants
                    .iter()
                    .filter(|g| {
                        g.via == "superuser" || self.role_privs(&g.role).is_some_and(|r| r.has(p))
                    })
                    .map(|g| {
                        format!(
                            "role {} on {} for {} ({})",
                            g.role, g.path, g.subject, g.via
                        )
                    })
                    .collect();
                format!("allowed: {p} on {path} comes from {}", from.join(" and "))
            } else if grants.is_empty() {
                format!("denied: no ACL entry grants {subject} anything on {path} or above it")
            } else {
                format!("denied: {p} is not among {}", join_or_none(privs))
            };
            text.push(why);
        }
        Explanation {
            subject: subject.to_string(),
            path: path.to_string(),
            privilege: privilege.map(|p| p.name().to_string()),
            allowed,
            privileges: privs.names(),
            grants,
            text,
        }
    }

    fn subject_privs(
        &self,
        subject: &str,
        path: &str,
        guest: &GuestFacts,
        is_user: bool,
        text: &mut Vec<String>,
    ) -> (Privs, Vec<Grant>) {
        if is_user && subject == ROOT_USER {
            text.push(format!(
                "{ROOT_USER} is the host's superuser: every privilege on every path"
            ));
            let g = Grant {
                path: "/".into(),
                subject: ROOT_USER.into(),
                role: "Administrator".into(),
                via: "superuser".into(),
            };
            return (Privs::all(), vec![g]);
        }
        let guest_name = path.strip_prefix("/guests/");
        let mut extra = Vec::new();
        if let (Some(name), Some(owner), true) = (guest_name, &guest.owner, is_user) {
            if subject == format!("{owner}@pam") {
                text.push(format!(
                    "{path}: {subject} is the owner of guest {name} in vm.conf, which grants role {OWNER_ROLE}"
                ));
                extra.push(Grant {
                    path: path.to_string(),
                    subject: subject.to_string(),
                    role: OWNER_ROLE.into(),
                    via: "owner".into(),
                });
            }
        }
        let (mut privs, mut grants) = self.walk(subject, path, false, &extra, "", text);
        if let (Some(name), Some(pool)) = (guest_name, &guest.pool) {
            let pool_path = format!("/pools/{pool}");
            let mut pool_text = Vec::new();
            let (pp, pg) = self.walk(
                subject,
                &pool_path,
                true,
                &[],
                &format!("pool {pool}"),
                &mut pool_text,
            );
            if !pg.is_empty() {
                text.push(format!(
                    "guest {name} is in pool {pool}, whose entries also reach it:"
                ));
                text.extend(pool_text);
                privs = privs.union(pp);
                grants.extend(pg);
            }
        }
        (privs, grants)
    }

    /// Shortcut: the privileges alone.
    pub fn privileges(
        &self,
        subject: &str,
        privsep: bool,
        path: &str,
        guest: &GuestFacts,
    ) -> Privs {
        let e = self.explain(subject, privsep, path, guest, None);
        e.privileges
            .iter()
            .filter_map(|n| Privilege::parse(n))
            .collect()
    }
}

fn join_or_none(p: Privs) -> String {
    if p.is_empty() {
        "no privilege".into()
    } else {
        p.names().join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Privilege::*;

    fn entry(path: &str, subject: &str, role: &str, propagate: bool) -> AclEntry {
        AclEntry {
            path: path.into(),
            subject: subject.into(),
            role: role.into(),
            propagate,
        }
    }

    /// Each built-in role against each privilege: the matrix the docs show.
    #[test]
    fn role_privilege_matrix() {
        let roles = builtin_roles();
        let expect: &[(&str, &[Privilege])] = &[
            ("Administrator", &Privilege::ALL),
            ("NoAccess", &[]),
            (
                "GuestAdmin",
                &[
                    GuestAudit,
                    GuestConsole,
                    GuestPowerMgmt,
                    GuestConfig,
                    GuestAllocate,
                    ImageAudit,
                    ImageAllocate,
                    SwitchAudit,
                    PoolAudit,
                ],
            ),
            ("GuestUser", &[GuestAudit, GuestConsole, GuestPowerMgmt]),
            (
                "Auditor",
                &[GuestAudit, ImageAudit, SwitchAudit, PoolAudit, SysAudit],
            ),
            ("UserAdmin", &[UserModify, PermissionsModify, SysAudit]),
            ("PoolAdmin", &[PoolAudit, PoolAllocate, GuestAudit]),
        ];
        assert_eq!(roles.len(), expect.len());
        for (role, privs) in expect {
            let have = roles[*role];
            for p in Privilege::ALL {
                assert_eq!(
                    have.has(p),
                    privs.contains(&p),
                    "role {role}, privilege {p}"
                );
            }
        }
    }

    #[test]
    fn privilege_names_round_trip() {
        for p in Privilege::ALL {
            assert_eq!(Privilege::parse(p.name()), Some(p));
        }
        assert_eq!(Privilege::parse("VM.PowerMgmt"), None);
    }

    #[test]
    fn paths_are_checked() {
        assert_eq!(check_path("/").unwrap(), "/");
        assert_eq!(check_path("/guests/web/").unwrap(), "/guests/web");
        assert!(check_path("/guests/web/disk").is_err());
        assert!(check_path("guests").is_err());
        assert!(check_path("/vms/100").is_err());
        assert!(check_path("/guests/").is_ok());
        assert!(check_path("/guests//").is_err());
        assert!(check_path("/guests/../x").is_err());
    }

    #[test]
    fn inheritance_propagation_and_replacement() {
        let ac = AccessControl {
            acl: vec![
                entry("/", "alice@kapsel", "Auditor", true),
                entry("/guests/db", "alice@kapsel", "GuestAdmin", true),
                entry("/guests", "bob@kapsel", "GuestUser", false),
                entry("/guests/secret", "alice@kapsel", "NoAccess", true),
            ],
            ..Default::default()
        };
        let none = GuestFacts::default();
        // Inherited from / to a guest.
        let p = ac.privileges("alice@kapsel", false, "/guests/web", &none);
        assert!(p.has(GuestAudit) && !p.has(GuestPowerMgmt));
        // Replaced by a deeper level.
        let p = ac.privileges("alice@kapsel", false, "/guests/db", &none);
        assert!(p.has(GuestAllocate) && !p.has(SysAudit));
        // NoAccess cancels what / gave.
        assert!(ac
            .privileges("alice@kapsel", false, "/guests/secret", &none)
            .is_empty());
        // Without propagation: /guests itself, not its guests.
        assert!(ac
            .privileges("bob@kapsel", false, "/guests", &none)
            .has(GuestPowerMgmt));
        assert!(ac
            .privileges("bob@kapsel", false, "/guests/web", &none)
            .is_empty());
        // Nobody else.
        assert!(ac.privileges("eve@kapsel", false, "/", &none).is_empty());
        // root@pam holds everything.
        assert_eq!(
            ac.privileges(ROOT_USER, false, "/guests/secret", &none),
            Privs::all()
        );
    }

    #[test]
    fn pools_owner_and_tokens() {
        let ac = AccessControl {
            acl: vec![
                entry("/pools/web", "carol@kapsel", "GuestUser", true),
                entry("/pools/db", "carol@kapsel", "GuestUser", false),
                entry("/", "alice@kapsel", "Administrator", true),
                entry("/guests", "alice@kapsel!ci", "GuestUser", true),
            ],
            ..Default::default()
        };
        let in_web = GuestFacts {
            owner: Some("dave".into()),
            pool: Some("web".into()),
        };
        let in_db = GuestFacts {
            owner: None,
            pool: Some("db".into()),
        };
        assert!(ac
            .privileges("carol@kapsel", false, "/guests/w1", &in_web)
            .has(GuestPowerMgmt));
        // A pool entry without propagation governs the pool, not its members.
        assert!(ac
            .privileges("carol@kapsel", false, "/guests/d1", &in_db)
            .is_empty());
        // vm.conf's owner.
        let p = ac.privileges("dave@pam", false, "/guests/w1", &in_web);
        assert_eq!(
            p,
            Privs::from_iter([GuestAudit, GuestConsole, GuestPowerMgmt])
        );
        assert!(ac
            .privileges("dave@kapsel", false, "/guests/w1", &in_web)
            .is_empty());
        // A privilege-separated token: at most what its entries grant.
        let p = ac.privileges("alice@kapsel!ci", true, "/guests/w1", &in_web);
        assert_eq!(
            p,
            Privs::from_iter([GuestAudit, GuestConsole, GuestPowerMgmt])
        );
        assert!(ac
            .privileges("alice@kapsel!ci", true, "/access", &in_web)
            .is_empty());
        // Without separation: the user's.
        assert_eq!(
            ac.privileges("alice@kapsel!ci", false, "/access", &in_web),
            Privs::all()
        );
        // A separated token of a user without rights gets none, whatever its entries say.
        let ac2 = AccessControl {
            acl: vec![entry("/", "eve@kapsel!t", "Administrator", true)],
            ..Default::default()
        };
        assert!(ac2
            .privileges("eve@kapsel!t", true, "/", &GuestFacts::default())
            .is_empty());
    }

    #[test]
    fn explain_says_which_entry_and_where_from() {
        let ac = AccessControl {
            acl: vec![
                entry("/guests", "alice@kapsel", "GuestUser", true),
                entry("/guests/db", "alice@kapsel", "NoAccess", false),
            ],
            ..Default::default()
        };
        let none = GuestFacts::default();
        let e = ac.explain(
            "alice@kapsel",
            false,
            "/guests/web",
            &none,
            Some(GuestPowerMgmt),
        );
        assert!(e.allowed);
        assert_eq!(e.grants.len(), 1);
        assert_eq!(e.grants[0].via, "inherited");
        assert_eq!(
            e.text.last().unwrap(),
            "allowed: Guest.PowerMgmt on /guests/web comes from role GuestUser on /guests for alice@kapsel (inherited)"
        );
        let e = ac.explain("alice@kapsel", false, "/guests/db", &none, Some(GuestAudit));
        assert!(!e.allowed);
        assert!(
            e.text
                .iter()
                .any(|l| l.contains("NoAccess takes every privilege away")),
            "{:?}",
            e.text
        );
        let e = ac.explain("alice@kapsel", false, "/host", &none, Some(SysAudit));
        assert_eq!(
            e.text.last().unwrap(),
            "denied: no ACL entry grants alice@kapsel anything on /host or above it"
        );
        let e = ac.explain("alice@kapsel", false, "/guests", &none, Some(GuestConfig));
        assert_eq!(
            e.text.last().unwrap(),
            "denied: Guest.Config is not among Guest.Audit, Guest.Console, Guest.PowerMgmt"
        );
    }

    #[test]
    fn custom_roles() {
        let mut ac = AccessControl::default();
        ac.roles.insert(
            "Starter".into(),
            vec!["Guest.Audit".into(), "Guest.PowerMgmt".into()],
        );
        ac.acl.push(entry("/guests", "u@kapsel", "Starter", true));
        let p = ac.privileges("u@kapsel", false, "/guests/x", &GuestFacts::default());
        assert_eq!(p, Privs::from_iter([GuestAudit, GuestPowerMgmt]));
    }

    #[test]
    fn quotas() {
        let q = Quota {
            guests: Some(3),
            vcpus: Some(8),
            memory_mib: Some(4096),
            disk_gib: None,
        };
        let used = Usage {
            guests: 2,
            vcpus: 6,
            memory_mib: 2048,
            disk_gib: 500,
        };
        let one = |vcpus, memory_mib| Usage {
            guests: 1,
            vcpus,
            memory_mib,
            disk_gib: 100,
        };
        assert!(q.check(used, one(2, 2048)).is_ok());
        let e = q.check(used, one(4, 1024)).unwrap_err();
        assert_eq!(
            (e.resource, e.limit, e.used, e.requested),
            ("vcpus", 8, 6, 4)
        );
        assert_eq!(
            q.check(used, one(1, 4096)).unwrap_err().resource,
            "memory_mib"
        );
        let full = Usage { guests: 3, ..used };
        assert_eq!(q.check(full, one(1, 1)).unwrap_err().resource, "guests");
        // Nothing asked for: never refused, even over the limit.
        assert!(q.check(full.plus(full), Usage::default()).is_ok());
        assert!(e.to_string().contains("raise the pool's quota"));
    }
}
