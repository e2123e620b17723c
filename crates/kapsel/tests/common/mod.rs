//! What the KVM test files share.

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
