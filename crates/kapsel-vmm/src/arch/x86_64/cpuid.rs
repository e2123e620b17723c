//! CPUID for each vCPU: KVM's supported set, with the topology, APIC IDs
//! and hypervisor leaves filled in, minus features the user chose to hide.

use crate::error::{Error, Result};
use kvm_bindings::{kvm_cpuid_entry2, CpuId};

/// Leaf 1 ECX: running under a hypervisor.
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 1 ECX: the local APIC's TSC-deadline timer mode.
const LEAF1_ECX_TSC_DEADLINE: u32 = 1 << 24;
/// Leaf 1 EDX: HTT (more than one logical processor per package).
const LEAF1_EDX_HTT: u32 = 1 << 28;
/// KVM's signature in leaf 0x4000_0000.
const KVM_SIGNATURE: &[u8; 12] = b"KVMKVMKVM\0\0\0";

/// A CPUID register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reg {
    /// EAX
    Eax,
    /// EBX
    Ebx,
    /// ECX
    Ecx,
    /// EDX
    Edx,
}

/// A feature the user may hide: `(name, leaf, subleaf, register, bit)`.
pub type Feature = (&'static str, u32, u32, Reg, u8);

/// Features `--hide-cpuid` accepts, by their /proc/cpuinfo names.
pub const HIDEABLE_FEATURES: &[Feature] = &[
    ("sse4_1", 1, 0, Reg::Ecx, 19),
    ("sse4_2", 1, 0, Reg::Ecx, 20),
    ("cx16", 1, 0, Reg::Ecx, 13),
    ("pcid", 1, 0, Reg::Ecx, 17),
    ("x2apic", 1, 0, Reg::Ecx, 21),
    ("movbe", 1, 0, Reg::Ecx, 22),
    ("popcnt", 1, 0, Reg::Ecx, 23),
    ("tsc_deadline_timer", 1, 0, Reg::Ecx, 24),
    ("aes", 1, 0, Reg::Ecx, 25),
    ("xsave", 1, 0, Reg::Ecx, 26),
    ("avx", 1, 0, Reg::Ecx, 28),
    ("f16c", 1, 0, Reg::Ecx, 29),
    ("rdrand", 1, 0, Reg::Ecx, 30),
    ("fsgsbase", 7, 0, Reg::Ebx, 0),
    ("bmi1", 7, 0, Reg::Ebx, 3),
    ("avx2", 7, 0, Reg::Ebx, 5),
    ("smep", 7, 0, Reg::Ebx, 7),
    ("bmi2", 7, 0, Reg::Ebx, 8),
    ("erms", 7, 0, Reg::Ebx, 9),
    ("invpcid", 7, 0, Reg::Ebx, 10),
    ("avx512f", 7, 0, Reg::Ebx, 16),
    ("rdseed", 7, 0, Reg::Ebx, 18),
    ("smap", 7, 0, Reg::Ebx, 20),
    ("pku", 7, 0, Reg::Ecx, 3),
    ("la57", 7, 0, Reg::Ecx, 16),
    ("rdpid", 7, 0, Reg::Ecx, 22),
    ("xsaveopt", 0xd, 1, Reg::Eax, 0),
    ("xsavec", 0xd, 1, Reg::Eax, 1),
    ("xsaves", 0xd, 1, Reg::Eax, 3),
    ("rdtscp", 0x8000_0001, 0, Reg::Edx, 27),
];

/// Looks up a hideable feature by name.
pub fn feature(name: &str) -> Option<&'static Feature> {
    HIDEABLE_FEATURES.iter().find(|f| f.0 == name)
}

/// Checks every name in `names`; the error lists the valid ones.
pub fn validate_hidden(names: &[String]) -> Result<()> {
    for name in names {
        if feature(name).is_none() {
            let valid: Vec<&str> = HIDEABLE_FEATURES.iter().map(|f| f.0).collect();
            return Err(Error::InvalidConfig(format!(
                "--hide-cpuid: unknown CPU feature \"{name}\"; known features: {}",
                valid.join(", ")
            )));
        }
    }
    Ok(())
}

fn reg_mut(entry: &mut kvm_cpuid_entry2, reg: Reg) -> &mut u32 {
    match reg {
        Reg::Eax => &mut entry.eax,
        Reg::Ebx => &mut entry.ebx,
        Reg::Ecx => &mut entry.ecx,
        Reg::Edx => &mut entry.edx,
    }
}

/// Number of bits needed to number `n` items (x2APIC ID shift width).
fn id_bits(n: u32) -> u32 {
    n.next_power_of_two().trailing_zeros()
}

/// What the host's KVM offers beyond its supported CPUID list.
#[derive(Debug, Clone, Copy, Default)]
pub struct HostCaps {
    /// `KVM_CAP_TSC_DEADLINE_TIMER`: KVM's in-kernel local APIC (which
    /// Kapsel always uses) emulates the TSC-deadline timer mode.
    /// `KVM_GET_SUPPORTED_CPUID` leaves the bit clear because it depends on
    /// the in-kernel irqchip (Documentation/virt/kvm/api.rst); the VMM sets
    /// it, as QEMU, Firecracker and Cloud Hypervisor do.
    pub tsc_deadline: bool,
}

/// Adapts KVM's supported CPUID entries for vCPU `cpu` of `cpus`: APIC IDs,
/// one package of `cpus` cores with one thread each, the hypervisor bit,
/// the TSC-deadline timer where KVM emulates it, KVM's paravirtual leaves,
/// and the hidden features cleared.
///
/// Without the TSC-deadline bit Linux runs its local APIC timer in one-shot
/// mode: it calibrates that timer against another clock at boot (about
/// 100 ms of waiting) and then programs it through the initial-count
/// register, converting every deadline into bus cycles.
pub fn filter_entries(
    entries: &mut [kvm_cpuid_entry2],
    cpu: u8,
    cpus: u8,
    host: HostCaps,
    hide: &[String],
) {
    let apic_id = u32::from(cpu);
    let n = u32::from(cpus);
    for e in entries.iter_mut() {
        match e.function {
            1 => {
                e.ebx = (apic_id << 24) | ((n & 0xff) << 16) | (8 << 8) | (e.ebx & 0xff);
                e.ecx |= LEAF1_ECX_HYPERVISOR;
                if host.tsc_deadline {
                    e.ecx |= LEAF1_ECX_TSC_DEADLINE;
                }
                if n > 1 {
                    e.edx |= LEAF1_EDX_HTT;
                } else {
                    e.edx &= !LEAF1_EDX_HTT;
                }
            }
            4 => {
                let level = (e.eax >> 5) & 7;
                e.eax &= 0x3fff;
                e.eax |= (n - 1) << 26;
                if level >= 3 {
                    e.eax |= (n - 1) << 14;
                }
            }
            0xb | 0x1f => {
                // Level 0: threads (one per core); level 1: cores.
                let (shift, count, kind) = match e.index {
                    0 => (0, 1, 1),
                    1 => (id_bits(n), n, 2),
                    _ => (0, 0, 0),
                };
                e.eax = shift;
                e.ebx = count;
                e.ecx = (kind << 8) | (e.index & 0xff);
                e.edx = apic_id;
            }
            0x4000_0000 => {
                e.ebx = u32::from_le_bytes(KVM_SIGNATURE[0..4].try_into().unwrap_or_default());
                e.ecx = u32::from_le_bytes(KVM_SIGNATURE[4..8].try_into().unwrap_or_default());
                e.edx = u32::from_le_bytes(KVM_SIGNATURE[8..12].try_into().unwrap_or_default());
            }
            0x8000_0008 => {
                // AMD: number of cores minus one, and the APIC ID width.
                e.ecx = (e.ecx & !0xf0ff) | (id_bits(n) << 12) | (n - 1);
            }
            0x8000_001e => {
                e.eax = apic_id;
                e.ebx = apic_id & 0xff;
                e.ecx = 0;
            }
            _ => {}
        }
    }
    for name in hide {
        if let Some(&(_, leaf, subleaf, reg, bit)) = feature(name) {
            for e in entries
                .iter_mut()
                .filter(|e| e.function == leaf && e.index == subleaf)
            {
                *reg_mut(e, reg) &= !(1u32 << bit);
            }
        }
    }
}

/// Builds the CPUID of vCPU `cpu` from KVM's supported set.
pub fn for_vcpu(
    supported: &CpuId,
    cpu: u8,
    cpus: u8,
    host: HostCaps,
    hide: &[String],
) -> Result<CpuId> {
    let mut entries = supported.as_slice().to_vec();
    filter_entries(&mut entries, cpu, cpus, host, hide);
    CpuId::from_entries(&entries).map_err(|e| Error::KvmUnsupported(format!("CPUID list: {e:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: 0xffff_ffff,
            ebx: 0xffff_ffff,
            ecx: 0xffff_ffff,
            edx: 0xffff_ffff,
            ..Default::default()
        }
    }

    #[test]
    fn leaf1_carries_apic_id_and_hypervisor_bit() {
        let mut e = [entry(1, 0)];
        e[0].ecx = 0;
        filter_entries(&mut e, 3, 4, HostCaps::default(), &[]);
        assert_eq!(e[0].ebx >> 24, 3);
        assert_eq!((e[0].ebx >> 16) & 0xff, 4);
        assert_ne!(e[0].ecx & LEAF1_ECX_HYPERVISOR, 0);
        assert_ne!(e[0].edx & LEAF1_EDX_HTT, 0);
        let mut e = [entry(1, 0)];
        filter_entries(&mut e, 0, 1, HostCaps::default(), &[]);
        assert_eq!(e[0].edx & LEAF1_EDX_HTT, 0);
    }

    #[test]
    fn tsc_deadline_follows_kvm_and_can_be_hidden() {
        let caps = HostCaps { tsc_deadline: true };
        let mut e = [entry(1, 0)];
        e[0].ecx = 0;
        filter_entries(&mut e, 0, 1, caps, &[]);
        assert_ne!(e[0].ecx & LEAF1_ECX_TSC_DEADLINE, 0);
        e[0].ecx = 0;
        filter_entries(&mut e, 0, 1, HostCaps::default(), &[]);
        assert_eq!(e[0].ecx & LEAF1_ECX_TSC_DEADLINE, 0);
        filter_entries(&mut e, 0, 1, caps, &["tsc_deadline_timer".into()]);
        assert_eq!(e[0].ecx & LEAF1_ECX_TSC_DEADLINE, 0);
    }

    #[test]
    fn x2apic_topology() {
        let mut e = [entry(0xb, 0), entry(0xb, 1), entry(0xb, 2)];
        filter_entries(&mut e, 5, 6, HostCaps::default(), &[]);
        assert_eq!((e[0].eax, e[0].ebx, e[0].ecx >> 8, e[0].edx), (0, 1, 1, 5));
        assert_eq!((e[1].eax, e[1].ebx, e[1].ecx >> 8), (3, 6, 2));
        assert_eq!((e[2].eax, e[2].ebx, e[2].ecx, e[2].edx), (0, 0, 2, 5));
    }

    #[test]
    fn cache_leaf_counts_cores() {
        let mut e = [entry(4, 0)];
        e[0].eax = 1 << 5; // L1
        filter_entries(&mut e, 0, 4, HostCaps::default(), &[]);
        assert_eq!(e[0].eax >> 26, 3);
        assert_eq!((e[0].eax >> 14) & 0xfff, 0);
        let mut e = [entry(4, 3)];
        e[0].eax = 3 << 5; // L3, shared
        filter_entries(&mut e, 0, 4, HostCaps::default(), &[]);
        assert_eq!((e[0].eax >> 14) & 0xfff, 3);
    }

    #[test]
    fn kvm_signature() {
        let mut e = [entry(0x4000_0000, 0)];
        filter_entries(&mut e, 0, 1, HostCaps::default(), &[]);
        let mut sig = Vec::new();
        for r in [e[0].ebx, e[0].ecx, e[0].edx] {
            sig.extend_from_slice(&r.to_le_bytes());
        }
        assert_eq!(&sig[..], KVM_SIGNATURE);
    }

    #[test]
    fn hidden_features_are_cleared_and_names_checked() {
        let mut e = [entry(1, 0), entry(7, 0), entry(7, 1)];
        filter_entries(
            &mut e,
            0,
            1,
            HostCaps::default(),
            &["xsave".into(), "avx2".into()],
        );
        assert_eq!(e[0].ecx & (1 << 26), 0);
        assert_eq!(e[1].ebx & (1 << 5), 0);
        assert_eq!(e[2].ebx, 0xffff_ffff, "other subleaves untouched");
        assert!(validate_hidden(&["xsave".into()]).is_ok());
        let err = validate_hidden(&["xsav".into()]).unwrap_err().to_string();
        assert!(err.contains("unknown CPU feature \"xsav\""), "{err}");
        assert!(err.contains("xsave"), "{err}");
    }
}
