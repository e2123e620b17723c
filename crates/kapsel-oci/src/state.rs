//! What `create` leaves under `--root`: `ROOT/ID/state.json` (written
//! atomically: a temporary file renamed over it) and `ROOT/ID/exec.fifo`
//! (the init blocks on it until `start`; its absence means started).

use serde::{Deserialize, Serialize};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The OCI runtime-spec version kapsel-oci reports.
pub const OCI_VERSION: &str = "1.0.2";

/// The record of one container.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    pub pid: i32,
    /// The init's start time (field 22 of /proc/PID/stat): a PID reused
    /// by another process is not taken for the init.
    pub start_time: u64,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    /// RFC 3339, UTC.
    pub created: String,
    #[serde(default)]
    pub annotations: serde_json::Map<String, serde_json::Value>,
    /// The container's cgroup directories (removed by `delete`).
    pub cgroups: Vec<PathBuf>,
    /// The init's confinement, for `exec`.
    pub capabilities: u64,
    pub no_new_privs: bool,
    pub seccomp: bool,
    /// config.json's hooks, for `start` (startContainer, poststart) and
    /// `delete` (poststop).
    #[serde(default)]
    pub hooks: crate::hooks::Hooks,
    /// The process user (uid, gid, groups), for `exec` and startContainer.
    #[serde(default)]
    pub user: Option<(u32, u32, Vec<u32>)>,
}

/// A container's status, as `state` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Created,
    Running,
    Paused,
    Stopped,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        }
    }
}

/// The directory of container `id` under `root`.
pub fn dir(root: &Path, id: &str) -> PathBuf {
    root.join(id)
}

pub fn fifo(root: &Path, id: &str) -> PathBuf {
    dir(root, id).join("exec.fifo")
}

/// Reads the record of `id`; `None` when there is no such container.
pub fn load(root: &Path, id: &str) -> io::Result<Option<Record>> {
    match fs::read(dir(root, id).join("state.json")) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes the record atomically.
pub fn save(root: &Path, r: &Record) -> io::Result<()> {
    let d = dir(root, &r.id);
    write_atomic(&d.join("state.json"), &serde_json::to_vec(r)?)
}

/// Writes `path` through a temporary file in the same directory renamed
/// over it: a reader sees the old or the new content, never a part.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}", std::process::id()));
    let mut f = fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    // No fsync (as runc): the state lives on /run, a tmpfs, and only has
    // to survive the runtime's own crash, which the rename covers.
    fs::rename(&tmp, path)
}

/// The start time of `pid` and whether it is a zombie; `None` if it is gone.
pub fn proc_start(pid: i32) -> Option<(u64, bool)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command may hold spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let zombie = fields.first() == Some(&"Z") || fields.first() == Some(&"X");
    Some((fields.get(19)?.parse().ok()?, zombie))
}

impl Record {
    /// Whether the init still runs (the same process: same start time).
    pub fn alive(&self) -> bool {
        matches!(proc_start(self.pid), Some((t, false)) if t == self.start_time)
    }

    pub fn status(&self, root: &Path) -> Status {
        if !self.alive() {
            Status::Stopped
        } else if fifo(root, &self.id).exists() {
            Status::Created
        } else if self.frozen() {
            Status::Paused
        } else {
            Status::Running
        }
    }

    /// Whether the container's freezer holds it (`pause`).
    fn frozen(&self) -> bool {
        let Ok(mode) = kapsel_container::cgroup::CgroupMode::detect() else {
            return false;
        };
        kapsel_container::cgroup::Cgroup::open(&mode, &self.cgroups)
            .is_frozen()
            .unwrap_or(false)
    }

    /// The state a hook reads on its standard input (runtime-spec's
    /// `state`, with `status` as the hook's moment has it).
    pub fn hook_state(&self, status: &str) -> serde_json::Value {
        hook_state(&self.id, status, self.pid, &self.bundle, &self.annotations)
    }

    /// The OCI state JSON (with runc's `rootfs`, `created` and `owner`).
    pub fn state_json(&self, root: &Path) -> serde_json::Value {
        let status = self.status(root);
        let mut v = serde_json::json!({
            "ociVersion": OCI_VERSION,
            "id": self.id,
            "pid": if status == Status::Stopped { 0 } else { self.pid },
            "status": status.as_str(),
            "bundle": self.bundle,
            "rootfs": self.rootfs,
            "created": self.created,
            "owner": "",
        });
        if !self.annotations.is_empty() {
            v["annotations"] = serde_json::Value::Object(self.annotations.clone());
        }
        v
    }
}

/// The state a hook reads, for a container not yet recorded.
pub fn hook_state(
    id: &str,
    status: &str,
    pid: i32,
    bundle: &Path,
    annotations: &serde_json::Map<String, serde_json::Value>,
) -> serde_json::Value {
    let mut v = serde_json::json!({
        "ociVersion": OCI_VERSION,
        "id": id,
        "status": status,
        "pid": pid,
        "bundle": bundle,
    });
    if !annotations.is_empty() {
        v["annotations"] = serde_json::Value::Object(annotations.clone());
    }
    v
}

/// Now as RFC 3339 in UTC with nanoseconds (as Go's time.RFC3339Nano).
pub fn now_rfc3339() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_nanos()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_format() {
        let t = now_rfc3339();
        assert_eq!(t.len(), 30, "{t}");
        assert!(t.starts_with("20") && t.ends_with('Z') && t.as_bytes()[10] == b'T');
    }

    #[test]
    fn own_start_time() {
        let (t, zombie) = proc_start(std::process::id() as i32).unwrap();
        assert!(t > 0 && !zombie);
        assert!(proc_start(-5).is_none());
    }
}
