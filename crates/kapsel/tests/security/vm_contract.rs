//! A local user against the daemon's VM processes: what the daemon hands a
//! VM process must not be readable by other users. Before the typed
//! contract, the whole VM description (kernel command line, disk paths,
//! the owner's uid and groups) was the `kapsel run` command line, which
//! every local user reads in `ps` or /proc/PID/cmdline; a kernel command
//! line often carries secrets (cloud-init seeds, root passwords, tokens).
//! Now it travels in a sealed memfd that the VM process closes once read.

use crate::common::kapseld::*;
use std::os::unix::process::CommandExt;
use std::process::Command;

const SECRET: &str = "kapsel-secret-8d1f3c";

#[test]
fn others_cannot_read_a_vms_config() {
    let Some((uid, gid)) = test_user() else {
        return;
    };
    if !crate::common::kvm_usable() {
        return;
    }
    let conf = idle_vm(
        "secretive",
        &format!("\tcmdline \"console=ttyS0 token={SECRET}\"\n"),
    );
    let d = Kapseld::start(&conf);
    let vm = d.wait_state("secretive", "running");
    let pid = pid_of(&vm);
    // The guest did get the command line.
    d.console_text("secretive", "idle ready");
    // As the local user: what `ps -ef` shows, and the process's descriptors.
    for path in [
        format!("/proc/{pid}/cmdline"),
        format!("/proc/{pid}/environ"),
        format!("/proc/{pid}/fd/3"),
    ] {
        let out = Command::new("cat")
            .arg(&path)
            .uid(uid)
            .gid(gid)
            .output()
            .unwrap();
        let seen = String::from_utf8_lossy(&out.stdout);
        if path.ends_with("cmdline") {
            // Readable, as for `ps`: the check below is not vacuous.
            assert!(
                out.status.success() && seen.contains("run"),
                "{path}: {out:?}"
            );
        }
        assert!(
            !seen.contains(SECRET),
            "{path} shows the VM's kernel command line to uid {uid}: {seen}"
        );
    }
    // Root's own view: the descriptor was closed once the configuration
    // was read, so not even a later exploit of the process finds it.
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        let target = std::fs::read_link(fd.unwrap().path()).unwrap_or_default();
        assert!(
            !target.to_string_lossy().contains("kapsel-vm-config"),
            "the configuration memfd stays open in the VM process"
        );
    }
}
