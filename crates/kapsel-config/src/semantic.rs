//! Checks that need the whole configuration: names, references between
//! blocks, and what instances may change.

use crate::diag::did_you_mean;
use crate::model::{
    BootDevice, Config, UserMap, VmSpec, DEFAULT_VM_CPUS, DEFAULT_VM_MEMORY, MAX_INSTANCE_DEPTH,
};
use crate::parser::{Ctx, Loc};
use std::collections::{HashMap, HashSet};

pub(crate) fn check(ctx: &mut Ctx) {
    duplicate_names(ctx);
    switch_references(ctx);
    instances(ctx);
    boot_devices(ctx);
    duplicate_disks(ctx);
    container_files(ctx);
    overlapping_user_maps(ctx);
}

/// Fills in the defaults of VMs that are not instances, so that
/// `--print` shows them (instances inherit instead).
pub(crate) fn apply_defaults(config: &mut Config) {
    for vm in config.vms.iter_mut().filter(|v| v.instance_of.is_none()) {
        vm.common.memory.get_or_insert(DEFAULT_VM_MEMORY);
        vm.common.cpus.get_or_insert(DEFAULT_VM_CPUS);
    }
}

fn duplicate_names(ctx: &mut Ctx) {
    let mut errors = Vec::new();
    let mut seen: HashMap<String, Loc> = HashMap::new();
    let guests = ctx
        .config
        .vms
        .iter()
        .map(|v| ("vm", &v.common.name))
        .zip(ctx.vm_notes.iter())
        .chain(
            ctx.config
                .containers
                .iter()
                .map(|c| ("container", &c.common.name))
                .zip(ctx.container_notes.iter()),
        );
    for ((kind, name), notes) in guests {
        match seen.get(name) {
            Some(first) => errors.push((
                notes.header.clone(),
                format!("{kind} \"{name}\" is declared twice"),
                Some(format!(
                    "VMs and containers share one namespace; \"{name}\" is first declared at {}:{}; rename one of them",
                    first.file.display(),
                    first.pos.line
                )),
            )),
            None => {
                seen.insert(name.clone(), notes.header.clone());
            }
        }
    }
    let mut seen: HashMap<String, Loc> = HashMap::new();
    for (sw, loc) in ctx.config.switches.iter().zip(ctx.switch_notes.iter()) {
        match seen.get(&sw.name) {
            Some(first) => errors.push((
                loc.clone(),
                format!("switch \"{}\" is declared twice", sw.name),
                Some(format!(
                    "it is first declared at {}:{}; merge the two blocks or rename one",
                    first.file.display(),
                    first.pos.line
                )),
            )),
            None => {
                seen.insert(sw.name.clone(), loc.clone());
            }
        }
    }
    for (loc, msg, help) in errors {
        ctx.error(&loc, msg, help);
    }
}

fn switch_references(ctx: &mut Ctx) {
    let switches: Vec<&str> = ctx
        .config
        .switches
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    let mut errors = Vec::new();
    let guests = ctx
        .config
        .vms
        .iter()
        .map(|v| (format!("vm \"{}\"", v.common.name), &v.common.interfaces))
        .zip(ctx.vm_notes.iter())
        .chain(
            ctx.config
                .containers
                .iter()
                .map(|c| {
                    (
                        format!("container \"{}\"", c.common.name),
                        &c.common.interfaces,
                    )
                })
                .zip(ctx.container_notes.iter()),
        );
    for ((desc, interfaces), notes) in guests {
        for (index, loc) in &notes.switch_refs {
            let Some(name) = interfaces.get(*index).and_then(|i| i.switch.as_deref()) else {
                continue;
            };
            if switches.contains(&name) {
                continue;
            }
            let message = match did_you_mean(name, switches.iter().copied()) {
                Some(s) => format!(
                    "interface of {desc} is on unknown switch \"{name}\"; did you mean \"{s}\"?"
                ),
                None => format!("interface of {desc} is on unknown switch \"{name}\""),
            };
            errors.push((
                loc.clone(),
                message,
                Some(format!(
                    "declare it: switch \"{name}\" {{ interface bridge0 }}"
                )),
            ));
        }
    }
    for (loc, msg, help) in errors {
        ctx.error(&loc, msg, help);
    }
}

/// VMs by name (the first of duplicates, like [`Config::vm`]).
fn vm_index(config: &Config) -> HashMap<&str, &VmSpec> {
    let mut index = HashMap::new();
    for vm in &config.vms {
        index.entry(vm.common.name.as_str()).or_insert(vm);
    }
    index
}

fn instances(ctx: &mut Ctx) {
    let config = &ctx.config;
    let index = vm_index(config);
    let lookup = |n: &str| index.get(n).copied();
    let names: Vec<&str> = index.keys().copied().collect();
    let mut errors = Vec::new();
    for (vm, notes) in config.vms.iter().zip(ctx.vm_notes.iter()) {
        let Some(parent_name) = vm.instance_of.as_deref() else {
            continue;
        };
        let at = notes.parent.clone().unwrap_or_else(|| notes.header.clone());
        if parent_name == vm.common.name {
            errors.push((
                at,
                format!("vm \"{}\" is an instance of itself", vm.common.name),
                None,
            ));
            continue;
        }
        let Some(parent) = lookup(parent_name) else {
            let message = match did_you_mean(parent_name, names.iter().copied()) {
                Some(s) => format!(
                    "instance \"{}\" of unknown vm \"{parent_name}\"; did you mean \"{s}\"?",
                    vm.common.name
                ),
                None => format!(
                    "instance \"{}\" of unknown vm \"{parent_name}\"",
                    vm.common.name
                ),
            };
            errors.push((
                at,
                message,
                Some(format!(
                    "declare vm \"{parent_name}\" {{ ... }} as the template"
                )),
            ));
            continue;
        };
        // Walk up the parents; a cycle never reaches a VM without a parent.
        let mut chain = vec![vm.common.name.as_str()];
        let mut cur = parent;
        let mut too_deep = false;
        loop {
            if chain.contains(&cur.common.name.as_str()) {
                errors.push((
                    at.clone(),
                    format!(
                        "vm \"{}\" is an instance in a cycle of instances",
                        vm.common.name
                    ),
                    Some("one VM of the chain must be a template, not an instance".into()),
                ));
                too_deep = true;
                break;
            }
            if chain.len() > MAX_INSTANCE_DEPTH {
                errors.push((
                    at.clone(),
                    format!(
                        "vm \"{}\" is more than {MAX_INSTANCE_DEPTH} instances away from its template",
                        vm.common.name
                    ),
                    Some("make it an instance of a VM nearer the template".into()),
                ));
                too_deep = true;
                break;
            }
            chain.push(cur.common.name.as_str());
            match cur.instance_of.as_deref().and_then(lookup) {
                Some(next) => cur = next,
                None => break,
            }
        }
        if too_deep {
            continue;
        }
        let Some(parent_eff) = config.effective_with(parent_name, lookup) else {
            continue; // the parent's own problem is reported on it
        };
        let allow = parent_eff.allow_instance.clone().unwrap_or_default();
        let fix = |what: &str| {
            Some(format!(
                "add \"{what}\" to the allow instance {{ }} block of vm \"{}\"",
                if parent.instance_of.is_some() {
                    parent_eff.instance_of.as_deref().unwrap_or(parent_name)
                } else {
                    parent_name
                }
            ))
        };
        if parent.instance_of.is_some() && !allow.instance {
            errors.push((
                at.clone(),
                format!(
                    "vm \"{parent_name}\" is itself an instance and does not allow instances of its own"
                ),
                fix("instance"),
            ));
        }
        let rules: [(&str, &str, bool); 12] = [
            ("memory", "memory", allow.memory),
            ("cpus", "cpus", allow.cpus),
            ("boot", "boot", allow.boot),
            ("firmware", "boot", allow.boot),
            ("boot device", "boot", allow.boot),
            ("initrd", "boot", allow.boot),
            ("cmdline", "boot", allow.boot),
            ("cdrom", "cdrom", allow.cdrom),
            ("disk", "disk", allow.disk),
            ("interface", "interface", allow.interface),
            ("interfaces", "interface", allow.interface),
            ("allow instance", "instance", allow.instance),
        ];
        for (stmt, flag, allowed) in rules {
            if allowed {
                continue;
            }
            if let Some(loc) = notes.stmt(stmt) {
                errors.push((
                    loc.clone(),
                    format!(
                        "instance \"{}\" may not set \"{stmt}\": vm \"{parent_name}\" does not allow it",
                        vm.common.name
                    ),
                    fix(flag),
                ));
            }
        }
        for (disk, loc) in vm.disks.iter().zip(notes.disks.iter()) {
            if parent_eff.disks.iter().any(|d| d.path == disk.path)
                || config
                    .vm(parent_name)
                    .is_some_and(|p| p.disks.iter().any(|d| d.path == disk.path))
            {
                errors.push((
                    loc.clone(),
                    format!(
                        "disk {} of instance \"{}\" is also a disk of vm \"{parent_name}\"",
                        disk.path.display(),
                        vm.common.name
                    ),
                    Some(
                        "an instance cannot share its parent's disks; give it an image of its own"
                            .into(),
                    ),
                ));
            }
        }
    }
    for (loc, msg, help) in errors {
        ctx.error(&loc, msg, help);
    }
}

fn boot_devices(ctx: &mut Ctx) {
    let mut errors = Vec::new();
    let index = vm_index(&ctx.config);
    for (vm, notes) in ctx.config.vms.iter().zip(ctx.vm_notes.iter()) {
        let Some(eff) = ctx
            .config
            .effective_with(&vm.common.name, |n| index.get(n).copied())
        else {
            continue;
        };
        // Reported where `boot device` is written, not on every instance.
        if let Some(loc) = notes.stmt("boot device") {
            if eff.boot_device == Some(BootDevice::Cdrom) && eff.cdrom.is_none() {
                errors.push((
                    loc.clone(),
                    format!("vm \"{}\" boots from a cdrom but has none", vm.common.name),
                    Some("add the image: cdrom \"/path/to/install.iso\"".to_string()),
                ));
            }
        }
        // Where `firmware` or `boot` is written (an instance may inherit
        // one and set the other).
        let at = notes.stmt("firmware").or_else(|| notes.stmt("boot"));
        if let (Some(fw), Some(_), Some(loc)) = (eff.firmware, &eff.boot, at) {
            errors.push((
                loc.clone(),
                format!(
                    "vm \"{}\" has both a kernel (`boot`) and `firmware {}`: a VM boots one of them",
                    vm.common.name,
                    fw.keyword()
                ),
                Some(
                    "remove `boot` to boot its disks through the firmware, or `firmware` to boot the kernel"
                        .to_string(),
                ),
            ));
        }
    }
    for (loc, msg, help) in errors {
        ctx.error(&loc, msg, help);
    }
}

fn duplicate_disks(ctx: &mut Ctx) {
    let mut errors = Vec::new();
    for (vm, notes) in ctx.config.vms.iter().zip(ctx.vm_notes.iter()) {
        let mut seen = HashSet::new();
        for (disk, loc) in vm.disks.iter().zip(notes.disks.iter()) {
            if !seen.insert(&disk.path) {
                errors.push((
                    loc.clone(),
                    format!(
                        "disk {} is given twice in vm \"{}\"",
                        disk.path.display(),
                        vm.common.name
                    ),
                    Some("remove one of them".to_string()),
                ));
            }
        }
    }
    for (loc, msg, help) in errors {
        ctx.error(&loc, msg, help);
    }
}

/// A container has exactly one of `root` and `image`.
/// Two `unprivileged` containers whose different maps share host ids: a
/// mistake, surely (the same map for several containers is a choice, as
/// Proxmox VE makes it by default; a partial overlap is not).
fn overlapping_user_maps(ctx: &mut Ctx) {
    let last = |m: &UserMap| u64::from(m.host_id) + u64::from(m.count) - 1;
    let maps: Vec<(&str, UserMap, Option<&Loc>)> = ctx
        .config
        .containers
        .iter()
        .zip(ctx.container_notes.iter())
        .filter_map(|(c, n)| {
            Some((
                c.common.name.as_str(),
                c.unprivileged?,
                n.stmt("unprivileged"),
            ))
        })
        .collect();
    let mut warnings = Vec::new();
    for (i, (name, map, loc)) in maps.iter().enumerate() {
        let Some((other, first, _)) = maps[..i].iter().find(|(_, m, _)| {
            m != map && u64::from(m.host_id) <= last(map) && u64::from(map.host_id) <= last(m)
        }) else {
            continue;
        };
        let Some(loc) = loc else { continue };
        let from = first.host_id.max(map.host_id);
        let to = last(first).min(last(map));
        let free = last(first).max(last(map)) + 1;
        let help = if free + u64::from(map.count) <= u64::from(u32::MAX) {
            format!(
                "give it a range of its own, e.g. unprivileged map {free} {}, or the same map as \"{other}\"",
                map.count
            )
        } else {
            format!("give it a range of its own, or the same map as \"{other}\"")
        };
        warnings.push((
            (*loc).clone(),
            format!(
                "container \"{name}\" shares host ids {from} to {to} with container \"{other}\", whose map differs"
            ),
            Some(help),
        ));
    }
    for (loc, msg, help) in warnings {
        ctx.warning(&loc, msg, help);
    }
}

fn container_files(ctx: &mut Ctx) {
    let mut errors = Vec::new();
    for (ct, notes) in ctx.config.containers.iter().zip(ctx.container_notes.iter()) {
        match (notes.stmt("root"), notes.stmt("image")) {
            (Some(root), Some(image)) => {
                let second = if root.pos.line <= image.pos.line {
                    image
                } else {
                    root
                };
                errors.push((
                    second.clone(),
                    format!("container \"{}\" has both a root and an image", ct.common.name),
                    Some(format!(
                        "its files come from one of them: remove `root` (line {}) or `image` (line {})",
                        root.pos.line, image.pos.line
                    )),
                ));
            }
            (None, None) if ct.root.is_none() && ct.image.is_none() => {
                errors.push((
                    notes.header.clone(),
                    format!("container \"{}\" has no files", ct.common.name),
                    Some(
                        "give it a root directory with `root PATH` or an image with `image PATH`"
                            .into(),
                    ),
                ));
            }
            _ => {}
        }
    }
    for (loc, msg, help) in errors {
        ctx.error(&loc, msg, help);
    }
}
