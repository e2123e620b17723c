//! The audit log: one JSON object a line in `DIR/audit.log`, append-only,
//! mode 0600, rotated by size (`audit.log.1` … `audit.log.N`), so it never
//! takes more than `max_bytes × (keep + 1)`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Serialize;

/// One audited event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct AuditEntry {
    /// RFC 3339 UTC time.
    pub time: String,
    /// Who: the user id (the one claimed, for a failed login), or null.
    pub user: Option<String>,
    /// The API token's name, if one was used.
    pub token: Option<String>,
    /// The peer's address.
    pub address: String,
    /// What: method and path, e.g. `POST /api/v1/guests/web/start`.
    pub action: String,
    /// The HTTP status answered.
    pub status: u16,
    /// `ok` or the error word.
    pub result: String,
}

/// The log file and its bounds.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    max_bytes: u64,
    keep: u32,
    file: Mutex<Option<File>>,
}

/// Longest line written; longer fields are cut.
const MAX_LINE: usize = 4096;

impl AuditLog {
    /// The log in `dir`, rotated when it would pass `max_bytes`, keeping
    /// `keep` old files.
    pub fn new(dir: &Path, max_bytes: u64, keep: u32) -> AuditLog {
        AuditLog {
            path: dir.join("audit.log"),
            max_bytes: max_bytes.max(MAX_LINE as u64),
            keep: keep.max(1),
            file: Mutex::new(None),
        }
    }

    /// The current file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn open(&self) -> io::Result<File> {
        OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&self.path)
    }

    fn rotated(&self, n: u32) -> PathBuf {
        let mut s = self.path.clone().into_os_string();
        s.push(format!(".{n}"));
        PathBuf::from(s)
    }

    /// Append `entry` (and sync it: an audit line must survive a crash).
    pub fn write(&self, entry: &AuditEntry) -> io::Result<()> {
        let mut e = entry.clone();
        for f in [&mut e.action, &mut e.result] {
            if f.len() > MAX_LINE / 4 {
                let mut cut = MAX_LINE / 4;
                while !f.is_char_boundary(cut) {
                    cut -= 1;
                }
                f.truncate(cut);
            }
        }
        let mut line = serde_json::to_vec(&e).map_err(io::Error::other)?;
        line.push(b'\n');
        let mut guard = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            *guard = Some(self.open()?);
        }
        let size = guard
            .as_ref()
            .map_or(Ok(0), |f| f.metadata().map(|m| m.len()))?;
        if size > 0 && size + line.len() as u64 > self.max_bytes {
            *guard = None;
            for n in (1..self.keep).rev() {
                let _ = fs::rename(self.rotated(n), self.rotated(n + 1));
            }
            fs::rename(&self.path, self.rotated(1))?;
            *guard = Some(self.open()?);
        }
        let f = guard
            .as_mut()
            .ok_or_else(|| io::Error::other("audit log not open"))?;
        f.write_all(&line)?;
        f.sync_data()
    }

    /// The last `n` entries of the current file (older files not read).
    pub fn tail(&self, n: usize) -> io::Result<Vec<AuditEntry>> {
        let text = match fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let lines: Vec<&str> = text.lines().collect();
        let start = lines.len().saturating_sub(n);
        Ok(lines[start..]
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn entry(i: usize) -> AuditEntry {
        AuditEntry {
            time: crate::util::rfc3339(i as u64),
            user: Some("alice@kapsel".into()),
            token: None,
            address: "127.0.0.1".into(),
            action: format!("POST /api/v1/guests/g{i}/start"),
            status: 200,
            result: "ok".into(),
        }
    }

    #[test]
    fn appends_json_lines_and_rotates_within_bounds() {
        let t = tempfile::tempdir().unwrap();
        let log = AuditLog::new(t.path(), 8192, 2);
        for i in 0..200 {
            log.write(&entry(i)).unwrap();
        }
        let cur = fs::metadata(log.path()).unwrap();
        assert_eq!(cur.mode() & 0o777, 0o600);
        assert!(cur.len() <= 8192);
        assert!(log.rotated(1).exists() && log.rotated(2).exists());
        assert!(!log.rotated(3).exists(), "only `keep` old files");
        let total: u64 = [log.path().to_path_buf(), log.rotated(1), log.rotated(2)]
            .iter()
            .map(|p| fs::metadata(p).unwrap().len())
            .sum();
        assert!(total <= 3 * 8192);
        let last = log.tail(3).unwrap();
        assert_eq!(last.len(), 3);
        assert_eq!(last[2], entry(199));
        // Every line of every file is one JSON object.
        for p in [log.path().to_path_buf(), log.rotated(1)] {
            for l in fs::read_to_string(p).unwrap().lines() {
                serde_json::from_str::<AuditEntry>(l).unwrap();
            }
        }
    }

    #[test]
    fn long_fields_are_cut() {
        let t = tempfile::tempdir().unwrap();
        let log = AuditLog::new(t.path(), 1 << 20, 1);
        let mut e = entry(1);
        e.action = "é".repeat(10_000);
        log.write(&e).unwrap();
        assert!(fs::metadata(log.path()).unwrap().len() < MAX_LINE as u64);
    }
}
