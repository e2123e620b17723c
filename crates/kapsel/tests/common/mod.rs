//! What the KVM test files share.

#![allow(dead_code)] // each test file uses its own part

pub mod firmware;
pub mod kapseld;

/// Whether /dev/kvm can be used; prints the `SKIP:` line when not.
pub fn kvm_usable() -> bool {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => true,
        Err(e) => {
            println!("SKIP: /dev/kvm not accessible ({e})");
            false
        }
    }
}

/// `kapsel run --kernel GUEST --memory 64M`: a test guest's VM, to which a
/// test adds its own options.
pub fn kapsel_run(guest: &str) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_kapsel"));
    cmd.args(["run", "--kernel", guest, "--memory", "64M"]);
    cmd
}
