//! The API's persistent state: users, tokens, TFA, realm settings, roles,
//! ACL and pools, in one versioned JSON file written atomically (temporary
//! file, fsync, rename, fsync of the directory), plus the ticket signing key.
//!
//! The directory is the caller's (the daemon passes `STATE_DIR/api`); it
//! must be root's (the process's uid) and closed to others (0700).

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::access::AccessControl;

/// The format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
const DB_FILE: &str = "access.json";
const KEY_FILE: &str = "authkey";
/// Largest state file read (a sanity bound, far above real use).
const MAX_DB_BYTES: u64 = 64 << 20;

/// Realms users authenticate against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Realm {
    /// Kapsel's own users, passwords hashed with argon2id.
    Kapsel,
    /// The host's users, through PAM service `kapsel`.
    Pam,
}

impl Realm {
    /// The realm's name, as in user ids.
    pub fn name(self) -> &'static str {
        match self {
            Realm::Kapsel => "kapsel",
            Realm::Pam => "pam",
        }
    }

    /// Parse a realm name.
    pub fn parse(s: &str) -> Option<Realm> {
        match s {
            "kapsel" => Some(Realm::Kapsel),
            "pam" => Some(Realm::Pam),
            _ => None,
        }
    }
}

/// Parse a user id `NAME@REALM`.
pub fn parse_userid(userid: &str) -> Option<(&str, Realm)> {
    let (name, realm) = userid.rsplit_once('@')?;
    let realm = Realm::parse(realm)?;
    let ok = match realm {
        Realm::Kapsel => crate::util::valid_name(name),
        // Unix user names (useradd's default NAME_REGEX, plus upper case).
        Realm::Pam => {
            !name.is_empty()
                && name.len() <= 32
                && (name.as_bytes()[0].is_ascii_alphabetic() || name.as_bytes()[0] == b'_')
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
        }
    };
    ok.then_some((name, realm))
}

/// An API token of a user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiToken {
    /// SHA-256 (hex) of the secret; the secret itself is shown once.
    pub secret_sha256: String,
    /// Unix time it stops working; 0 never.
    #[serde(default)]
    pub expire: u64,
    /// Privilege separation: the token holds only what its own ACL entries
    /// grant, and never more than its user.
    #[serde(default = "yes")]
    pub privsep: bool,
    /// Free text.
    #[serde(default)]
    pub comment: String,
    /// When it was made.
    #[serde(default)]
    pub created: u64,
}

fn yes() -> bool {
    true
}

/// A user's TOTP second factor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TfaState {
    /// The TOTP secret, base32 (the server must know it to check codes).
    pub totp_secret: String,
    /// SHA-256 (hex) of each recovery code; `None` once used.
    pub recovery: Vec<Option<String>>,
    /// The last TOTP step accepted; a code is accepted only once.
    #[serde(default)]
    pub last_step: u64,
    /// Consecutive wrong TOTP codes.
    #[serde(default)]
    pub totp_failures: u32,
    /// Consecutive wrong recovery codes.
    #[serde(default)]
    pub recovery_failures: u32,
    /// Second factors refused until this Unix time (0: not locked).
    #[serde(default)]
    pub locked_until: u64,
}

/// A user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// Whether the user may authenticate.
    #[serde(default = "yes")]
    pub enable: bool,
    /// Unix time the account stops working; 0 never.
    #[serde(default)]
    pub expire: u64,
    /// argon2id PHC string, realm `kapsel` only.
    #[serde(default)]
    pub password: Option<String>,
    /// Free text.
    #[serde(default)]
    pub comment: String,
    /// Whether the user must log in with a second factor.
    #[serde(default)]
    pub require_tfa: bool,
    /// The TOTP second factor, if set up.
    #[serde(default)]
    pub tfa: Option<TfaState>,
    /// API tokens by token name.
    #[serde(default)]
    pub tokens: BTreeMap<String, ApiToken>,
    /// Tickets issued at or before this Unix time in ms are void (logout,
    /// password change).
    #[serde(default)]
    pub tickets_not_before_ms: u64,
}

impl User {
    /// A new enabled user with nothing set.
    pub fn new() -> User {
        User {
            enable: true,
            expire: 0,
            password: None,
            comment: String::new(),
            require_tfa: false,
            tfa: None,
            tokens: BTreeMap::new(),
            tickets_not_before_ms: 0,
        }
    }

    /// Whether the account may authenticate at `now`.
    pub fn active(&self, now: u64) -> bool {
        self.enable && (self.expire == 0 || now < self.expire)
    }
}

impl Default for User {
    fn default() -> Self {
        User::new()
    }
}

/// Settings of a realm.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RealmSettings {
    /// Every user of the realm must log in with a second factor.
    #[serde(default)]
    pub require_tfa: bool,
}

/// Everything stored, as written to `access.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Db {
    /// [`FORMAT_VERSION`].
    pub version: u32,
    /// Users by user id.
    #[serde(default)]
    pub users: BTreeMap<String, User>,
    /// Realm settings by realm name.
    #[serde(default)]
    pub realms: BTreeMap<String, RealmSettings>,
    /// Roles, ACL, pools.
    #[serde(default)]
    pub access: AccessControl,
}

impl Default for Db {
    fn default() -> Self {
        Db {
            version: FORMAT_VERSION,
            users: BTreeMap::new(),
            realms: BTreeMap::new(),
            access: AccessControl::default(),
        }
    }
}

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The directory or a file in it could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The directory is open to others or not the process's.
    #[error("{path}: {problem}; fix: chown root:root {path} && chmod 0700 {path}")]
    Unsafe {
        /// The directory.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// The state file is damaged or of a newer format.
    #[error("{path}: {problem}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong and what to do.
        problem: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The state directory and what was read from it.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    db: Db,
    key: Vec<u8>,
}

impl Store {
    /// Open (or create, 0700) the state directory `dir` and read it.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        match fs::DirBuilder::new().mode(0o700).create(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err(dir)(e)),
        }
        let meta = fs::symlink_metadata(dir).map_err(io_err(dir))?;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let euid = unsafe { libc::geteuid() };
        if !meta.is_dir() {
            return Err(StoreError::Unsafe {
                path: dir.into(),
                problem: "is not a directory".into(),
            });
        }
        if meta.uid() != euid {
            return Err(StoreError::Unsafe {
                path: dir.into(),
                problem: format!(
                    "is owned by uid {}, not by this process's uid {euid}",
                    meta.uid()
                ),
            });
        }
        if meta.mode() & 0o077 != 0 {
            return Err(StoreError::Unsafe {
                path: dir.into(),
                problem: format!("has mode {:04o}, open to other users", meta.mode() & 0o7777),
            });
        }
        let db_path = dir.join(DB_FILE);
        let db = match read_bounded(&db_path) {
            Ok(bytes) => {
                let value: serde_json::Value =
                    serde_json::from_slice(&bytes).map_err(|e| StoreError::Format {
                        path: db_path.clone(),
                        problem: format!(
                            "damaged ({e}); restore it from a backup, or move it away to start with no users"
                        ),
                    })?;
                let version = value.get("version").and_then(|v| v.as_u64()).unwrap_or(0);
                if version > u64::from(FORMAT_VERSION) {
                    return Err(StoreError::Format {
                        path: db_path,
                        problem: format!(
                            "format version {version} is newer than this kapseld's {FORMAT_VERSION}; run the newer kapseld"
                        ),
                    });
                }
                serde_json::from_value(value).map_err(|e| StoreError::Format {
                    path: db_path.clone(),
                    problem: format!(
                        "damaged ({e}); restore it from a backup, or move it away to start with no users"
                    ),
                })?
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Db::default(),
            Err(e) => return Err(io_err(&db_path)(e)),
        };
        let key_path = dir.join(KEY_FILE);
        let key = match read_bounded(&key_path) {
            Ok(bytes) if bytes.len() == 32 => bytes,
            Ok(_) => return Err(StoreError::Format {
                path: key_path,
                problem:
                    "not a 32-byte key; delete it (every session ticket becomes void) and restart"
                        .into(),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let key = crate::util::random_bytes(32).map_err(io_err(&key_path))?;
                write_atomic(dir, KEY_FILE, &key)?;
                key
            }
            Err(e) => return Err(io_err(&key_path)(e)),
        };
        Ok(Store {
            dir: dir.to_path_buf(),
            db,
            key,
        })
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What is stored.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// The ticket signing key.
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// Change the state with `f` and write it; on any error (of `f` or of
    /// the write) nothing changes.
    pub fn update<T, E: From<StoreError>>(
        &mut self,
        f: impl FnOnce(&mut Db) -> Result<T, E>,
    ) -> Result<T, E> {
        let mut next = self.db.clone();
        let out = f(&mut next)?;
        if next != self.db {
            let bytes = serde_json::to_vec_pretty(&next).map_err(|e| StoreError::Format {
                path: self.dir.join(DB_FILE),
                problem: format!("cannot encode: {e}"),
            })?;
            write_atomic(&self.dir, DB_FILE, &bytes)?;
            self.db = next;
        }
        Ok(out)
    }
}

fn read_bounded(path: &Path) -> io::Result<Vec<u8>> {
    let file = File::open(path)?;
    let mut bytes = Vec::new();
    file.take(MAX_DB_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_DB_BYTES {
        return Err(io::Error::other(format!(
            "larger than {MAX_DB_BYTES} bytes"
        )));
    }
    Ok(bytes)
}

/// Write `dir/name` atomically and durably, mode 0600.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let path = dir.join(name);
    let _ = fs::remove_file(&tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    f.write_all(bytes).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    drop(f);
    fs::rename(&tmp, &path).map_err(io_err(&path))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))?;
    Ok(())
}

/// Make `dir` 0700 (for tests and first start).
pub fn close_dir(dir: &Path) -> io::Result<()> {
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> (tempfile::TempDir, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("api");
        (t, d)
    }

    #[test]
    fn creates_closed_directory_and_key_and_survives_reopen() {
        let (_t, d) = dir();
        let mut s = Store::open(&d).unwrap();
        assert_eq!(fs::metadata(&d).unwrap().mode() & 0o777, 0o700);
        assert_eq!(
            fs::metadata(d.join(KEY_FILE)).unwrap().mode() & 0o777,
            0o600
        );
        let key = s.key().to_vec();
        s.update(|db| {
            db.users.insert("alice@kapsel".into(), User::new());
            Ok::<_, StoreError>(())
        })
        .unwrap();
        assert_eq!(fs::metadata(d.join(DB_FILE)).unwrap().mode() & 0o777, 0o600);
        let s2 = Store::open(&d).unwrap();
        assert!(s2.db().users.contains_key("alice@kapsel"));
        assert_eq!(s2.key(), key);
        assert!(!d.join(".access.json.tmp").exists());
    }

    #[test]
    fn a_failed_update_changes_nothing() {
        let (_t, d) = dir();
        let mut s = Store::open(&d).unwrap();
        let r: Result<(), StoreError> = s.update(|db| {
            db.users.insert("x@kapsel".into(), User::new());
            Err(StoreError::Format {
                path: "x".into(),
                problem: "no".into(),
            })
        });
        assert!(r.is_err());
        assert!(s.db().users.is_empty());
        assert!(!d.join(DB_FILE).exists());
    }

    #[test]
    fn refuses_open_directory_damaged_and_newer_files() {
        let (_t, d) = dir();
        Store::open(&d).unwrap();
        fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
        let e = Store::open(&d).unwrap_err().to_string();
        assert!(
            e.contains("open to other users") && e.contains("chmod 0700"),
            "{e}"
        );
        close_dir(&d).unwrap();
        fs::write(d.join(DB_FILE), b"{\"version\":1,\"users\":").unwrap();
        let e = Store::open(&d).unwrap_err().to_string();
        assert!(e.contains("damaged"), "{e}");
        fs::write(d.join(DB_FILE), b"{\"version\":2}").unwrap();
        let e = Store::open(&d).unwrap_err().to_string();
        assert!(e.contains("newer"), "{e}");
    }

    #[test]
    fn userids() {
        assert_eq!(parse_userid("alice@kapsel"), Some(("alice", Realm::Kapsel)));
        assert_eq!(
            parse_userid("kapsel-test-owner@pam"),
            Some(("kapsel-test-owner", Realm::Pam))
        );
        assert_eq!(parse_userid("alice"), None);
        assert_eq!(parse_userid("alice@ldap"), None);
        assert_eq!(parse_userid("a:b@kapsel"), None);
        assert_eq!(parse_userid("a!t@kapsel"), None);
        assert_eq!(parse_userid("@pam"), None);
    }
}
