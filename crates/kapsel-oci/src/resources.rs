//! The commands that act on a container's cgroup: `pause`, `resume`,
//! `update` and `events`, through kapsel-container's [`Cgroup`] (the code
//! kapseld's containers use).

use crate::state::Record;
use crate::Fail;
use kapsel_container::cgroup::{Cgroup, CgroupMode};
use kapsel_container::{Resources, Stats};
use serde_json::{json, Value};
use std::path::PathBuf;

/// The cgroup of a container created earlier.
pub fn cgroup_of(rec: &Record) -> Result<Cgroup, Fail> {
    let mode = CgroupMode::detect()?;
    Ok(Cgroup::open(&mode, &rec.cgroups))
}

/// `update`'s flags, as runc names them.
#[derive(clap::Args, Debug, Default)]
pub struct UpdateArgs {
    /// A JSON file (`-` for standard input) holding linux.resources.
    #[arg(short = 'r', long)]
    pub resources: Option<PathBuf>,
    /// Memory limit in bytes (suffixes k, m, g; -1: none).
    #[arg(long, allow_hyphen_values = true)]
    pub memory: Option<String>,
    /// Memory plus swap in bytes (-1: no swap limit).
    #[arg(long = "memory-swap", allow_hyphen_values = true)]
    pub memory_swap: Option<String>,
    /// Memory reservation (soft limit) in bytes.
    #[arg(long = "memory-reservation", allow_hyphen_values = true)]
    pub memory_reservation: Option<String>,
    /// Refused: kernel memory limits are gone from current kernels.
    #[arg(long = "kernel-memory")]
    pub kernel_memory: Option<String>,
    #[arg(long = "kernel-memory-tcp")]
    pub kernel_memory_tcp: Option<String>,
    /// CFS period in microseconds.
    #[arg(long = "cpu-period")]
    pub cpu_period: Option<String>,
    /// CFS quota in microseconds (-1: none).
    #[arg(long = "cpu-quota", allow_hyphen_values = true)]
    pub cpu_quota: Option<String>,
    /// CPU shares (relative weight).
    #[arg(long = "cpu-share")]
    pub cpu_share: Option<String>,
    /// Maximum number of tasks (-1: none; 0: unchanged).
    #[arg(long = "pids-limit", allow_hyphen_values = true)]
    pub pids_limit: Option<String>,
    /// Refused (not supported): cpusets, real-time, block I/O, Intel RDT.
    #[arg(long = "cpuset-cpus")]
    pub cpuset_cpus: Option<String>,
    #[arg(long = "cpuset-mems")]
    pub cpuset_mems: Option<String>,
    #[arg(long = "cpu-rt-period")]
    pub cpu_rt_period: Option<String>,
    #[arg(long = "cpu-rt-runtime")]
    pub cpu_rt_runtime: Option<String>,
    #[arg(long = "blkio-weight")]
    pub blkio_weight: Option<String>,
    #[arg(long = "l3-cache-schema")]
    pub l3_cache_schema: Option<String>,
    #[arg(long = "mem-bw-schema")]
    pub mem_bw_schema: Option<String>,
}

/// A size as runc's flags take it: bytes, or with a suffix k, m, g, t
/// (powers of 1024, optional `b`); -1 is no limit.
pub fn parse_size(flag: &str, s: &str) -> Result<i64, Fail> {
    let bad = || {
        Fail(format!(
            "--{flag} {s}: give bytes, optionally with k, m, g or t (e.g. 512m), or -1 for none"
        ))
    };
    let t = s.trim().to_ascii_lowercase();
    if t == "-1" {
        return Ok(-1);
    }
    let t = t.strip_suffix('b').unwrap_or(&t);
    let (num, mult) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1i64 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        Some('t') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    let n: f64 = num.parse().map_err(|_| bad())?;
    if n.is_nan() || n < 0.0 {
        return Err(bad());
    }
    let v = n * mult as f64;
    if v > i64::MAX as f64 {
        return Err(bad());
    }
    Ok(v as i64)
}

fn parse_int(flag: &str, s: &str) -> Result<i64, Fail> {
    s.trim()
        .parse()
        .map_err(|_| Fail(format!("--{flag} {s}: give a whole number")))
}

/// The change `update` asks for: the `--resources` JSON first, then the
/// flags over it (as runc).
pub fn requested(a: &UpdateArgs) -> Result<Resources, Fail> {
    let mut r = Resources::default();
    if let Some(p) = &a.resources {
        let text = if p.as_os_str() == "-" {
            std::io::read_to_string(std::io::stdin())?
        } else {
            std::fs::read_to_string(p)
                .map_err(|e| Fail(format!("--resources {}: {e}", p.display())))?
        };
        let v: Value = serde_json::from_str(&text).map_err(|e| {
            Fail(format!(
                "--resources {}: {e}; give linux.resources as JSON",
                p.display()
            ))
        })?;
        from_json(&v, &mut r)?;
    }
    let refused = [
        ("kernel-memory", &a.kernel_memory),
        ("kernel-memory-tcp", &a.kernel_memory_tcp),
        ("cpuset-cpus", &a.cpuset_cpus),
        ("cpuset-mems", &a.cpuset_mems),
        ("cpu-rt-period", &a.cpu_rt_period),
        ("cpu-rt-runtime", &a.cpu_rt_runtime),
        ("blkio-weight", &a.blkio_weight),
        ("l3-cache-schema", &a.l3_cache_schema),
        ("mem-bw-schema", &a.mem_bw_schema),
    ];
    for (flag, v) in refused {
        if v.is_some() {
            return Err(Fail(format!(
                "update --{flag} is not supported by kapsel-oci; kapsel-oci updates memory, \
                 memory-swap, memory-reservation, cpu-period, cpu-quota, cpu-share and pids-limit"
            )));
        }
    }
    if let Some(s) = &a.memory {
        r.memory = Some(parse_size("memory", s)?);
    }
    if let Some(s) = &a.memory_swap {
        r.memory_swap = Some(parse_size("memory-swap", s)?);
    }
    if let Some(s) = &a.memory_reservation {
        r.memory_reservation = Some(parse_size("memory-reservation", s)?);
    }
    if let Some(s) = &a.cpu_period {
        let p = parse_int("cpu-period", s)?;
        r.cpu_period =
            Some(u64::try_from(p).map_err(|_| Fail("--cpu-period must be positive".into()))?);
    }
    if let Some(s) = &a.cpu_quota {
        r.cpu_quota = Some(parse_int("cpu-quota", s)?);
    }
    if let Some(s) = &a.cpu_share {
        let n = parse_int("cpu-share", s)?;
        r.cpu_shares =
            Some(u64::try_from(n).map_err(|_| Fail("--cpu-share must be positive".into()))?);
    }
    if let Some(s) = &a.pids_limit {
        // 0 leaves the limit as it is (runc); -1 removes it.
        r.pids = Some(parse_int("pids-limit", s)?).filter(|&n| n != 0);
    }
    Ok(r)
}

/// The fields of a linux.resources JSON object that Kapsel updates; a
/// field it cannot change, when set, is an error naming it.
pub fn from_json(v: &Value, r: &mut Resources) -> Result<(), Fail> {
    let num = |v: &Value, path: &str| -> Result<Option<i64>, Fail> {
        match v.pointer(path) {
            None | Some(Value::Null) => Ok(None),
            Some(n) => n
                .as_i64()
                .or_else(|| n.as_u64().map(|u| u.min(i64::MAX as u64) as i64))
                .map(Some)
                .ok_or_else(|| Fail(format!("resources{path}: give a number"))),
        }
    };
    // 0 is "not set" (runc; containerd's shim and Docker send every field).
    let set = |n: Option<i64>| n.filter(|&n| n != 0);
    r.memory = set(num(v, "/memory/limit")?).or(r.memory);
    r.memory_swap = set(num(v, "/memory/swap")?).or(r.memory_swap);
    r.memory_reservation = set(num(v, "/memory/reservation")?).or(r.memory_reservation);
    r.cpu_quota = set(num(v, "/cpu/quota")?).or(r.cpu_quota);
    if let Some(p) = num(v, "/cpu/period")?.filter(|&p| p > 0) {
        r.cpu_period = Some(p as u64);
    }
    if let Some(s) = num(v, "/cpu/shares")?.filter(|&s| s > 0) {
        r.cpu_shares = Some(s as u64);
    }
    r.pids = set(num(v, "/pids/limit")?).or(r.pids);
    let given = |p: &str| {
        v.pointer(p).is_some_and(|x| match x {
            Value::Null => false,
            Value::String(s) => !s.is_empty(),
            Value::Array(a) => !a.is_empty(),
            Value::Object(o) => !o.is_empty(),
            Value::Number(n) => n.as_i64() != Some(0),
            Value::Bool(_) => true,
        })
    };
    for p in [
        "/cpu/cpus",
        "/cpu/mems",
        "/cpu/realtimePeriod",
        "/cpu/realtimeRuntime",
        "/blockIO/weight",
        "/blockIO/weightDevice",
        "/blockIO/throttleReadBpsDevice",
        "/blockIO/throttleWriteBpsDevice",
        "/hugepageLimits",
        "/memory/kernel",
        "/memory/kernelTCP",
    ] {
        if given(p) {
            return Err(Fail(format!(
                "update: resources{p} is not supported by kapsel-oci; remove it (memory limit, \
                 swap and reservation, cpu quota, period and shares, pids limit are)"
            )));
        }
    }
    Ok(())
}

/// runc's `stats` event data (libcontainer's `types.Stats`).
pub fn stats_json(s: &Stats) -> Value {
    let limit = |v: u64| {
        if v == u64::MAX {
            json!(u64::MAX)
        } else {
            json!(v)
        }
    };
    let raw: serde_json::Map<String, Value> = s
        .memory_raw
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    json!({
        "cpu": {
            "usage": {
                "total": s.cpu_total,
                "percpu": s.cpu_percpu,
                "kernel": s.cpu_kernel,
                "user": s.cpu_user
            },
            "throttling": {
                "periods": s.throttling.0,
                "throttled_periods": s.throttling.1,
                "throttled_time": s.throttling.2
            }
        },
        "cpuset": {},
        "memory": {
            "cache": s.memory_cache,
            "usage": {
                "limit": limit(s.memory_limit),
                "usage": s.memory_usage,
                "max": s.memory_max_usage,
                "failcnt": s.memory_failcnt
            },
            "swap": {"limit": limit(s.swap_limit), "usage": s.swap_usage, "failcnt": 0},
            "kernel": {"limit": 0, "failcnt": 0},
            "kernelTCP": {"limit": 0, "failcnt": 0},
            "raw": raw
        },
        "pids": {"current": s.pids_current, "limit": s.pids_limit},
        "blkio": {},
        "hugetlb": {},
        "intel_rdt": {},
        "network_interfaces": null
    })
}

/// A Go duration as runc's `--interval` takes it: `5s`, `100ms`, `1m`,
/// `1h`, `1.5s`, or combinations such as `1m30s`.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, Fail> {
    let bad = || {
        Fail(format!(
            "--interval {s}: give a duration such as 5s, 500ms or 1m"
        ))
    };
    let mut total = 0f64;
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let n_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let n: f64 = rest[..n_end].parse().map_err(|_| bad())?;
        rest = &rest[n_end..];
        let u_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = match &rest[..u_end] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += n * unit;
        rest = &rest[u_end..];
    }
    if total <= 0.0 {
        return Err(bad());
    }
    Ok(std::time::Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_as_runc_takes_them() {
        assert_eq!(parse_size("memory", "1024").ok(), Some(1024));
        assert_eq!(parse_size("memory", "64m").ok(), Some(64 << 20));
        assert_eq!(parse_size("memory", "1G").ok(), Some(1 << 30));
        assert_eq!(parse_size("memory", "512kb").ok(), Some(512 << 10));
        assert_eq!(parse_size("memory", "-1").ok(), Some(-1));
        assert!(parse_size("memory", "lots").is_err());
        assert!(parse_size("memory", "-5").is_err());
        assert_eq!(
            parse_duration("5s").ok(),
            Some(std::time::Duration::from_secs(5))
        );
        assert_eq!(
            parse_duration("1m30s").ok(),
            Some(std::time::Duration::from_secs(90))
        );
        assert_eq!(
            parse_duration("250ms").ok(),
            Some(std::time::Duration::from_millis(250))
        );
        assert!(parse_duration("5").is_err() && parse_duration("").is_err());
    }

    #[test]
    fn resources_json_fields() {
        let mut r = Resources::default();
        let v = json!({"memory": {"limit": 1000, "swap": 2000}, "cpu": {"quota": 5000, "period": 10000, "shares": 512}, "pids": {"limit": 7}});
        from_json(&v, &mut r).ok().unwrap();
        assert_eq!(r.memory, Some(1000));
        assert_eq!(r.memory_swap, Some(2000));
        assert_eq!(
            (r.cpu_quota, r.cpu_period, r.cpu_shares),
            (Some(5000), Some(10000), Some(512))
        );
        assert_eq!(r.pids, Some(7));
        let v = json!({"cpu": {"cpus": "0-1"}});
        assert!(from_json(&v, &mut r).is_err());
        let v = json!({"cpu": {"cpus": ""}, "blockIO": {}});
        assert!(from_json(&v, &mut r).is_ok());
        // Zeroes, as containerd's shim sends them, change nothing.
        let mut z = Resources::default();
        let v = json!({"memory": {"limit": 0, "swap": 0}, "cpu": {"quota": 0, "period": 0, "shares": 0}, "pids": {"limit": 0}});
        from_json(&v, &mut z).ok().unwrap();
        assert_eq!(z, Resources::default());
    }
}
