//! config.json's `linux.seccomp` compiled to BPF with libseccomp (as runc
//! and crun do): every action (`SCMP_ACT_ALLOW`, `ERRNO` with its
//! `errnoRet`, `KILL`/`KILL_THREAD`, `KILL_PROCESS`, `TRAP`, `TRACE`,
//! `LOG`, `NOTIFY` to a seccomp agent on `listenerPath`), the
//! architectures, argument filters with every operator, and the filter
//! flags. The program is installed by kapsel-container in
//! place of Kapsel's own profile, and kept in the state for `exec`.

use crate::config::Refused;
use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};
use serde_json::Value;
use std::str::FromStr;

/// `SECCOMP_FILTER_FLAG_*` of seccomp(2).
const FLAGS: [(&str, u32); 3] = [
    ("SECCOMP_FILTER_FLAG_TSYNC", 1),
    ("SECCOMP_FILTER_FLAG_LOG", 2),
    ("SECCOMP_FILTER_FLAG_SPEC_ALLOW", 4),
];

/// The compiled profile: raw BPF and the seccomp(2) flags.
pub struct Compiled {
    pub bpf: Vec<u8>,
    pub flags: u32,
    /// Rule names libseccomp does not know on these architectures (runc
    /// skips them too), for a warning.
    pub unknown: Vec<String>,
    /// Rules answer SCMP_ACT_NOTIFY: the agent on `listenerPath` gets the
    /// notification descriptor, with `listenerMetadata`.
    pub listener: Option<(String, String)>,
}

fn refuse<T>(msg: impl Into<String>) -> Result<T, Refused> {
    Err(Refused(msg.into()))
}

/// EPERM: the errno of an `SCMP_ACT_ERRNO` without `errnoRet` (runc).
const EPERM: i32 = 1;

fn action(name: &str, errno: Option<i64>, what: &str) -> Result<ScmpAction, Refused> {
    let errno = match errno {
        Some(e) if !(0..=u16::MAX as i64).contains(&e) => {
            return refuse(format!("{what}: errnoRet {e} is not an errno (0 to 65535)"))
        }
        Some(e) => e as i32,
        None => EPERM,
    };
    Ok(match name {
        "SCMP_ACT_ALLOW" => ScmpAction::Allow,
        "SCMP_ACT_ERRNO" => ScmpAction::Errno(errno),
        "SCMP_ACT_KILL" | "SCMP_ACT_KILL_THREAD" => ScmpAction::KillThread,
        "SCMP_ACT_KILL_PROCESS" => ScmpAction::KillProcess,
        "SCMP_ACT_TRAP" => ScmpAction::Trap,
        // runc gives TRACE the errno value as its message.
        "SCMP_ACT_TRACE" => ScmpAction::Trace(errno as u16),
        "SCMP_ACT_LOG" => ScmpAction::Log,
        "SCMP_ACT_NOTIFY" => ScmpAction::Notify,
        other => return refuse(format!("{what}: unknown action \"{other}\"")),
    })
}

fn lib_err(what: &str, e: impl std::fmt::Display) -> Refused {
    Refused(format!("linux.seccomp: {what}: {e}"))
}

/// Compiles `linux.seccomp` (as JSON).
pub fn compile(sc: &Value) -> Result<Compiled, Refused> {
    let listener_path = sc
        .get("listenerPath")
        .and_then(Value::as_str)
        .filter(|p| !p.is_empty());
    let notifies = |v: &Value| v.get("action").and_then(Value::as_str) == Some("SCMP_ACT_NOTIFY");
    if sc.get("defaultAction").and_then(Value::as_str) == Some("SCMP_ACT_NOTIFY") {
        return refuse(
            "linux.seccomp.defaultAction SCMP_ACT_NOTIFY would stop the container's own start \
             at the agent; notify chosen calls instead",
        );
    }
    let any_notify = sc
        .get("syscalls")
        .and_then(Value::as_array)
        .is_some_and(|r| r.iter().any(notifies));
    if any_notify && listener_path.is_none() {
        return refuse(
            "linux.seccomp: SCMP_ACT_NOTIFY needs a listenerPath (the seccomp agent's socket); \
             add one",
        );
    }
    let listener = listener_path.filter(|_| any_notify).map(|p| {
        (
            p.to_string(),
            sc.get("listenerMetadata")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
        )
    });
    let default_name = sc
        .get("defaultAction")
        .and_then(Value::as_str)
        .unwrap_or("SCMP_ACT_ALLOW");
    let default = action(
        default_name,
        sc.get("defaultErrnoRet").and_then(Value::as_i64),
        "linux.seccomp.defaultAction",
    )?;
    let mut ctx = ScmpFilterContext::new(default).map_err(|e| lib_err("a new filter", e))?;
    // no_new_privs is config.json's process.noNewPrivileges, set apart.
    ctx.set_ctl_nnp(false)
        .map_err(|e| lib_err("no_new_privs off", e))?;
    for a in sc
        .get("architectures")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let name = a.as_str().unwrap_or_default();
        let arch = ScmpArch::from_str(name).map_err(|_| {
            Refused(format!(
                "linux.seccomp.architectures: unknown architecture \"{name}\""
            ))
        })?;
        if !ctx.is_arch_present(arch).unwrap_or(false) {
            ctx.add_arch(arch)
                .map_err(|e| lib_err(&format!("architecture {name}"), e))?;
        }
    }
    let mut flags = 0;
    for f in sc
        .get("flags")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let name = f.as_str().unwrap_or_default();
        match FLAGS.iter().find(|(n, _)| *n == name) {
            Some((_, bit)) => flags |= bit,
            None => {
                return refuse(format!(
                    "linux.seccomp.flags: {name} is not supported (TSYNC, LOG and SPEC_ALLOW are)"
                ))
            }
        }
    }
    let mut unknown = Vec::new();
    let rules = sc.get("syscalls").and_then(Value::as_array);
    for (i, rule) in rules.into_iter().flatten().enumerate() {
        let what = format!("linux.seccomp.syscalls[{i}]");
        let act = action(
            rule.get("action")
                .and_then(Value::as_str)
                .unwrap_or_default(),
            rule.get("errnoRet").and_then(Value::as_i64),
            &what,
        )?;
        if act == default {
            // libseccomp refuses a rule that does what the default does.
            continue;
        }
        let mut cmps = Vec::new();
        for arg in rule
            .get("args")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let index = arg.get("index").and_then(Value::as_u64).unwrap_or(u64::MAX);
            if index > 5 {
                return refuse(format!("{what}.args: index {index} is not 0 to 5"));
            }
            let value = arg.get("value").and_then(Value::as_u64).unwrap_or(0);
            let two = arg.get("valueTwo").and_then(Value::as_u64).unwrap_or(0);
            let op = arg.get("op").and_then(Value::as_str).unwrap_or_default();
            let cmp = match op {
                // runc: the mask is `value`, the datum `valueTwo`.
                "SCMP_CMP_MASKED_EQ" => {
                    ScmpArgCompare::new(index as u32, ScmpCompareOp::MaskedEqual(value), two)
                }
                other => {
                    let op = ScmpCompareOp::from_str(other).map_err(|_| {
                        Refused(format!("{what}.args: unknown operator \"{other}\""))
                    })?;
                    ScmpArgCompare::new(index as u32, op, value)
                }
            };
            cmps.push((index, cmp));
        }
        // libseccomp takes one comparison per argument in a rule; several
        // on one argument become rules of their own (as runc does).
        let repeated = cmps
            .iter()
            .enumerate()
            .any(|(j, (ix, _))| cmps[..j].iter().any(|(other, _)| other == ix));
        for name in rule
            .get("names")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let name = name.as_str().unwrap_or_default();
            let Ok(call) = ScmpSyscall::from_name(name) else {
                unknown.push(name.to_string());
                continue;
            };
            let added = if cmps.is_empty() {
                ctx.add_rule(act, call)
            } else if repeated {
                cmps.iter()
                    .try_for_each(|(_, c)| ctx.add_rule_conditional(act, call, &[*c]).map(|_| ()))
                    .map(|()| &mut ctx)
            } else {
                let all: Vec<ScmpArgCompare> = cmps.iter().map(|(_, c)| *c).collect();
                ctx.add_rule_conditional(act, call, &all)
            };
            added.map_err(|e| lib_err(&format!("{what} ({name})"), e))?;
        }
    }
    let mut mem = tempfile()?;
    ctx.export_bpf(&mem)
        .map_err(|e| lib_err("exporting the program", e))?;
    use std::io::{Read, Seek};
    let mut bpf = Vec::new();
    mem.rewind()
        .and_then(|()| mem.read_to_end(&mut bpf))
        .map_err(|e| lib_err("reading the program", e))?;
    Ok(Compiled {
        bpf,
        flags,
        unknown,
        listener,
    })
}

/// An anonymous file (memfd) for libseccomp's export.
fn tempfile() -> Result<std::fs::File, Refused> {
    use std::os::fd::FromRawFd;
    // SAFETY: memfd_create with a NUL-terminated name; the result is checked.
    let fd = unsafe { libc::memfd_create(c"kapsel-oci-seccomp".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return refuse(format!(
            "linux.seccomp: a memfd for the program: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: a new descriptor we own.
    Ok(unsafe { std::fs::File::from_raw_fd(fd) })
}

/// Hands the notification descriptor `fd` to the seccomp agent listening
/// on `path`, as runc does: one message, the runtime-spec
/// `containerProcessState` JSON (`fds: ["seccompFd"]`, the process's pid,
/// `listenerMetadata`, the container's state) with the descriptor in
/// SCM_RIGHTS.
pub fn send_to_agent(
    path: &str,
    metadata: &str,
    state: &Value,
    pid: i32,
    fd: std::os::fd::BorrowedFd<'_>,
) -> Result<(), String> {
    use std::os::fd::AsFd;
    let sock = std::os::unix::net::UnixStream::connect(path)
        .map_err(|e| format!("seccomp agent {path}: {e}"))?;
    let msg = serde_json::json!({
        "ociVersion": crate::state::OCI_VERSION,
        "fds": ["seccompFd"],
        "pid": pid,
        "metadata": metadata,
        "state": state,
    })
    .to_string();
    let sent = kapsel_host::fd::send_with_fds(sock.as_fd(), msg.as_bytes(), &[fd], 0)
        .map_err(|e| format!("seccomp agent {path}: sending the notification descriptor: {e}"))?;
    if sent != msg.len() {
        return Err(format!(
            "seccomp agent {path}: sending the notification descriptor: {sent} of {} bytes went",
            msg.len()
        ));
    }
    Ok(())
}
