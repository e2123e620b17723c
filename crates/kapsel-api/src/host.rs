//! Host facts for `GET /api/v1/host`, read from /proc and /dev.

use serde::Serialize;

/// What the host is.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct HostFacts {
    /// The host name.
    pub hostname: String,
    /// The kernel release (`uname -r`).
    pub kernel: String,
    /// Online CPUs.
    pub cpus: u64,
    /// Total memory in MiB.
    pub memory_mib: u64,
    /// Available memory in MiB.
    pub memory_available_mib: u64,
    /// Whether /dev/kvm exists.
    pub kvm: bool,
    /// Kapsel's version.
    pub version: String,
}

fn read_trim(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn meminfo(key: &str) -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|rest| {
                    rest.trim_start_matches(':')
                        .split_whitespace()
                        .next()?
                        .parse::<u64>()
                        .ok()
                })
        })
        .unwrap_or(0)
        / 1024
}

/// Read the host's facts now.
pub fn facts() -> HostFacts {
    HostFacts {
        hostname: read_trim("/proc/sys/kernel/hostname"),
        kernel: read_trim("/proc/sys/kernel/osrelease"),
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get() as u64),
        memory_mib: meminfo("MemTotal"),
        memory_available_mib: meminfo("MemAvailable"),
        kvm: std::path::Path::new("/dev/kvm").exists(),
        version: env!("CARGO_PKG_VERSION").to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn facts_are_read() {
        let f = super::facts();
        assert!(f.cpus >= 1);
        assert!(f.memory_mib > 0);
        assert!(!f.kernel.is_empty());
    }
}
