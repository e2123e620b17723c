//! Which devices a container may use, and the cgroup v2 device filter: a
//! small eBPF program (`BPF_PROG_TYPE_CGROUP_DEVICE`) attached to the
//! container's cgroup, the v2 equivalent of v1's `devices.allow`.
//!
//! The program is assembled here from the allow-list (a dozen
//! instructions per rule); no BPF toolchain or library is involved.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// A device (or all minors of a major) a container may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllowedDevice {
    /// Major number.
    pub major: u32,
    /// Minor number; `None` is every minor.
    pub minor: Option<u32>,
    /// A block device (else a character device).
    pub block: bool,
}

const fn dev(major: u32, minor: u32) -> AllowedDevice {
    AllowedDevice {
        major,
        minor: Some(minor),
        block: false,
    }
}

/// The character devices of Kapsel's /dev, and ptys. `/dev/kvm` (10:232),
/// disks and everything else are denied.
pub const ALLOWED: &[AllowedDevice] = &[
    dev(1, 3), // null
    dev(1, 5), // zero
    dev(1, 7), // full
    dev(1, 8), // random
    dev(1, 9), // urandom
    dev(5, 0), // tty
    dev(5, 1), // console
    dev(5, 2), // ptmx
    AllowedDevice {
        major: 136,
        minor: None,
        block: false,
    }, // pty slaves
];

/// The v1 `devices.allow` lines for [`ALLOWED`].
pub fn v1_rules() -> Vec<String> {
    v1_rules_for(ALLOWED)
}

/// The v1 `devices.allow` lines for `list`.
pub fn v1_rules_for(list: &[AllowedDevice]) -> Vec<String> {
    list.iter()
        .map(|d| {
            let t = if d.block { 'b' } else { 'c' };
            match d.minor {
                Some(m) => format!("{t} {}:{m} rwm", d.major),
                None => format!("{t} {}:* rwm", d.major),
            }
        })
        .collect()
}

// eBPF instruction encoding (linux/bpf_common.h, linux/bpf.h).
const BPF_LDX_MEM_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
const BPF_ALU64_AND_K: u8 = 0x57; // BPF_ALU64 | BPF_AND | BPF_K
const BPF_ALU64_MOV_K: u8 = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K
const BPF_JMP_JNE_K: u8 = 0x55; // BPF_JMP | BPF_JNE | BPF_K
const BPF_JMP_EXIT: u8 = 0x95; // BPF_JMP | BPF_EXIT
/// `bpf_cgroup_dev_ctx.access_type` low half: a block or character device.
const BPF_DEVCG_DEV_BLOCK: i32 = 1;
const BPF_DEVCG_DEV_CHAR: i32 = 2;
/// bpf(2) commands, program and attach types.
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
/// `BPF_F_ALLOW_MULTI`: groups below may attach programs of their own,
/// which run after this one; a device is allowed only if every program
/// on the path allows it, so none below can widen the list.
const BPF_F_ALLOW_MULTI: u32 = 1 << 1;

/// One eBPF instruction, `struct bpf_insn`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BpfInsn {
    code: u8,
    /// dst_reg in the low nibble, src_reg in the high one.
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> BpfInsn {
    BpfInsn {
        code,
        regs: dst | (src << 4),
        off,
        imm,
    }
}

/// The filter for `allowed`: r2 = device type, r4 = major, r5 = minor
/// (from `struct bpf_cgroup_dev_ctx` in r1); each rule either returns 1
/// (allow) or jumps to the next; the end returns 0 (deny, EPERM).
pub fn program(allowed: &[AllowedDevice]) -> Vec<BpfInsn> {
    let mut p = vec![
        insn(BPF_LDX_MEM_W, 2, 1, 0, 0),        // r2 = ctx->access_type
        insn(BPF_ALU64_AND_K, 2, 0, 0, 0xffff), // r2 &= 0xffff: the type
        insn(BPF_LDX_MEM_W, 4, 1, 4, 0),        // r4 = ctx->major
        insn(BPF_LDX_MEM_W, 5, 1, 8, 0),        // r5 = ctx->minor
    ];
    // The access bits (access_type >> 16) are not looked at: an allowed
    // device is allowed for mknod, read and write, as on v1 ("rwm").
    for d in allowed {
        // Instructions after each test up to the next rule: the jump skips them.
        let rest: i16 = if d.minor.is_some() { 4 } else { 3 };
        let kind = if d.block {
            BPF_DEVCG_DEV_BLOCK
        } else {
            BPF_DEVCG_DEV_CHAR
        };
        p.push(insn(BPF_JMP_JNE_K, 2, 0, rest, kind));
        p.push(insn(BPF_JMP_JNE_K, 4, 0, rest - 1, d.major as i32));
        if let Some(minor) = d.minor {
            p.push(insn(BPF_JMP_JNE_K, 5, 0, 2, minor as i32));
        }
        p.push(insn(BPF_ALU64_MOV_K, 0, 0, 0, 1));
        p.push(insn(BPF_JMP_EXIT, 0, 0, 0, 0));
    }
    p.push(insn(BPF_ALU64_MOV_K, 0, 0, 0, 0));
    p.push(insn(BPF_JMP_EXIT, 0, 0, 0, 0));
    p
}

fn bpf(cmd: libc::c_long, attr: &mut [u8; 128]) -> io::Result<libc::c_long> {
    // SAFETY: bpf(2) reads (and for some commands writes) a bpf_attr of the
    // given size; `attr` is a zero-filled buffer of that size.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Loads the filter for [`ALLOWED`] and attaches it to the cgroup v2
/// directory open as `cgroup`. The attachment lives as long as the cgroup.
/// It is attached with `BPF_F_ALLOW_MULTI`: attached without flags, it
/// would make the kernel refuse every program in the groups below, so a
/// systemd init could not apply its services' `DeviceAllow=` and
/// `PrivateDevices=` in its delegated tree.
pub fn attach(cgroup: &impl AsRawFd) -> io::Result<()> {
    attach_with(cgroup, &[])
}

/// [`attach`] with `extra` allowed besides [`ALLOWED`] (an OCI
/// configuration's `linux.devices`).
pub fn attach_with(cgroup: &impl AsRawFd, extra: &[AllowedDevice]) -> io::Result<()> {
    let all: Vec<AllowedDevice> = ALLOWED.iter().chain(extra).copied().collect();
    let prog = program(&all);
    let license = b"Apache-2.0\0";
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&BPF_PROG_TYPE_CGROUP_DEVICE.to_ne_bytes());
    attr[4..8].copy_from_slice(&(prog.len() as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(prog.as_ptr() as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
    let fd = bpf(BPF_PROG_LOAD, &mut attr)?;
    // SAFETY: BPF_PROG_LOAD returned a new descriptor that we own.
    let prog_fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&(cgroup.as_raw_fd() as u32).to_ne_bytes());
    attr[4..8].copy_from_slice(&(prog_fd.as_raw_fd() as u32).to_ne_bytes());
    attr[8..12].copy_from_slice(&BPF_CGROUP_DEVICE.to_ne_bytes());
    attr[12..16].copy_from_slice(&BPF_F_ALLOW_MULTI.to_ne_bytes());
    bpf(BPF_PROG_ATTACH, &mut attr)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the program the way the kernel would, for tests.
    fn interpret(p: &[BpfInsn], dev_type: u32, major: u32, minor: u32) -> u64 {
        let ctx = [dev_type | (6 << 16), major, minor];
        let mut r = [0u64; 11];
        let mut pc = 0usize;
        loop {
            let i = p[pc];
            let (dst, src) = ((i.regs & 0xf) as usize, (i.regs >> 4) as usize);
            pc += 1;
            match i.code {
                BPF_LDX_MEM_W => {
                    assert_eq!(src, 1);
                    r[dst] = ctx[i.off as usize / 4] as u64;
                }
                BPF_ALU64_AND_K => r[dst] &= i.imm as u64,
                BPF_ALU64_MOV_K => r[dst] = i.imm as u64,
                BPF_JMP_JNE_K => {
                    if r[dst] != i.imm as u64 {
                        pc += i.off as usize;
                    }
                }
                BPF_JMP_EXIT => return r[0],
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
    }

    #[test]
    fn filter_allows_the_list_and_nothing_else() {
        let p = program(ALLOWED);
        const CHAR: u32 = 2;
        const BLOCK: u32 = 1;
        for d in ALLOWED {
            let minor = d.minor.unwrap_or(7);
            assert_eq!(interpret(&p, CHAR, d.major, minor), 1, "{d:?}");
            assert_eq!(interpret(&p, BLOCK, d.major, minor), 0, "block {d:?}");
        }
        assert_eq!(interpret(&p, CHAR, 136, 4242), 1, "any pty slave");
        assert_eq!(interpret(&p, CHAR, 10, 232), 0, "/dev/kvm");
        assert_eq!(interpret(&p, CHAR, 1, 1), 0, "/dev/mem");
        assert_eq!(interpret(&p, CHAR, 1, 4), 0, "/dev/port");
        assert_eq!(interpret(&p, BLOCK, 253, 0), 0, "a disk");
        assert_eq!(interpret(&p, CHAR, 5, 3), 0);
    }

    /// A fresh group in this host's cgroup2 hierarchy, if it can be made.
    fn v2_group(tag: &str) -> Option<std::path::PathBuf> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return None;
        }
        let mode = crate::cgroup::CgroupMode::detect().ok()?;
        let v2 = match &mode {
            crate::cgroup::CgroupMode::Unified { base, .. } => base.clone(),
            crate::cgroup::CgroupMode::Legacy { hybrid_v2, .. } => hybrid_v2.clone()?,
        };
        let dir = v2.join(format!("kapsel-devtest-{}-{tag}", std::process::id()));
        std::fs::create_dir(&dir).ok()?;
        Some(dir)
    }

    #[test]
    fn groups_below_the_filter_may_attach_their_own() {
        let Some(dir) = v2_group("multi") else {
            println!("SKIP: needs root and a cgroup2 hierarchy");
            return;
        };
        let child = dir.join("init.scope");
        std::fs::create_dir(&child).unwrap();
        let attached = std::fs::File::open(&dir).and_then(|d| attach(&d));
        // What systemd does in a container's delegated tree.
        let below = std::fs::File::open(&child).and_then(|d| attach(&d));
        std::fs::remove_dir(&child).unwrap();
        std::fs::remove_dir(&dir).unwrap();
        match attached {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                println!("SKIP: no cgroup device programs here ({e})")
            }
            other => {
                other.unwrap();
                below.expect("a program below Kapsel's filter");
            }
        }
    }

    #[test]
    fn v1_rules_match_the_list() {
        let rules = v1_rules();
        assert!(rules.contains(&"c 1:3 rwm".to_string()));
        assert!(rules.contains(&"c 136:* rwm".to_string()));
        assert_eq!(rules.len(), ALLOWED.len());
    }
}
