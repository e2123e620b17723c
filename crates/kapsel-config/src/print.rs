//! `Config::to_vm_conf`: the normalized configuration in vm.conf syntax.

use crate::model::*;
use std::fmt::Write;
use std::path::Path;

/// A string in double quotes, with `\` and `"` escaped, so it reads back
/// exactly and is never taken for a keyword or a macro.
pub(crate) fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

fn quote_path(p: &Path) -> String {
    quote(&p.to_string_lossy())
}

impl Config {
    /// The configuration in vm.conf syntax: macros expanded, includes
    /// inlined, defaults shown, every string quoted. Parsing the text gives
    /// this configuration back (less the spans).
    pub fn to_vm_conf(&self) -> String {
        let mut out = String::new();
        let g = &self.globals;
        let _ = writeln!(out, "local prefix {}", g.local_prefix);
        if let Some(p) = &g.local_inet6 {
            let _ = writeln!(out, "local inet6 prefix {p}");
        }
        if let Some(o) = &g.socket_owner {
            let _ = writeln!(out, "socket owner {}", quote(&o.to_string()));
        }
        if let Some(s) = &g.staggered_start {
            let _ = writeln!(
                out,
                "staggered start parallel {} delay {}",
                s.parallel, s.delay_secs
            );
        }
        if let Some(a) = &g.agentx {
            out.push_str("agentx");
            if let Some(c) = &a.context {
                let _ = write!(out, " context {}", quote(c));
            }
            if let Some(p) = &a.path {
                let _ = write!(out, " path {}", quote_path(p));
            }
            out.push('\n');
        }
        for sw in &self.switches {
            out.push('\n');
            print_switch(&mut out, sw);
        }
        for vm in &self.vms {
            out.push('\n');
            print_vm(&mut out, vm);
        }
        for c in &self.containers {
            out.push('\n');
            print_container(&mut out, c);
        }
        out
    }
}

fn enable(enabled: bool) -> &'static str {
    if enabled {
        "enable"
    } else {
        "disable"
    }
}

fn print_switch(out: &mut String, sw: &SwitchSpec) {
    let _ = writeln!(out, "switch {} {{", quote(&sw.name));
    let _ = writeln!(out, "\t{}", enable(sw.enabled));
    if let Some(i) = &sw.interface {
        let _ = writeln!(out, "\tinterface {}", quote(i));
    }
    for m in &sw.members {
        let _ = writeln!(out, "\tadd {}", quote(m));
    }
    if let Some(g) = &sw.group {
        let _ = writeln!(out, "\tgroup {}", quote(g));
    }
    if sw.locked_lladdr {
        out.push_str("\tlocked lladdr\n");
    }
    if let Some(r) = sw.rdomain {
        let _ = writeln!(out, "\trdomain {r}");
    }
    let _ = writeln!(out, "\t{}", if sw.up { "up" } else { "down" });
    out.push_str("}\n");
}

fn print_interface(out: &mut String, i: &InterfaceSpec) {
    out.push('\t');
    if i.local {
        out.push_str("local ");
    }
    out.push_str("interface");
    if let Some(n) = &i.name {
        let _ = write!(out, " {}", quote(n));
    }
    out.push_str(" {\n");
    if let Some(s) = &i.switch {
        let _ = writeln!(out, "\t\tswitch {}", quote(s));
    }
    if i.locked || i.lladdr.is_some() {
        out.push_str("\t\t");
        if i.locked {
            out.push_str("locked ");
        }
        out.push_str("lladdr");
        if let Some(m) = &i.lladdr {
            let _ = write!(out, " {m}");
        }
        out.push('\n');
    }
    if let Some(g) = &i.group {
        let _ = writeln!(out, "\t\tgroup {}", quote(g));
    }
    if let Some(r) = i.rdomain {
        let _ = writeln!(out, "\t\trdomain {r}");
    }
    let _ = writeln!(out, "\t\t{}", if i.up { "up" } else { "down" });
    out.push_str("\t}\n");
}

fn print_vm(out: &mut String, vm: &VmSpec) {
    match &vm.instance_of {
        Some(parent) => {
            let _ = writeln!(
                out,
                "vm {} instance {} {{",
                quote(parent),
                quote(&vm.common.name)
            );
        }
        None => {
            let _ = writeln!(out, "vm {} {{", quote(&vm.common.name));
        }
    }
    let _ = writeln!(out, "\t{}", enable(vm.common.enabled));
    if let Some(o) = &vm.common.owner {
        let _ = writeln!(out, "\towner {}", quote(&o.to_string()));
    }
    if let Some(m) = vm.common.memory {
        let _ = writeln!(out, "\tmemory {m}");
    }
    if let Some(c) = vm.common.cpus {
        let _ = writeln!(out, "\tcpus {c}");
    }
    if let Some(b) = &vm.boot {
        let _ = writeln!(out, "\tboot {}", quote_path(b));
    }
    if let Some(d) = vm.boot_device {
        let _ = writeln!(out, "\tboot device {}", d.keyword());
    }
    if let Some(f) = vm.firmware {
        let _ = writeln!(out, "\tfirmware {}", f.keyword());
    }
    if let Some(i) = &vm.initrd {
        let _ = writeln!(out, "\tinitrd {}", quote_path(i));
    }
    if let Some(c) = &vm.cmdline {
        let _ = writeln!(out, "\tcmdline {}", quote(c));
    }
    if let Some(c) = &vm.cdrom {
        let _ = writeln!(out, "\tcdrom {}", quote_path(c));
    }
    for d in &vm.disks {
        let _ = write!(out, "\tdisk {}", quote_path(&d.path));
        if let Some(f) = d.format {
            let _ = write!(out, " format {}", f.keyword());
        }
        out.push('\n');
    }
    if let Some(n) = vm.interface_count {
        let _ = writeln!(out, "\tinterfaces {n}");
    }
    for i in &vm.common.interfaces {
        print_interface(out, i);
    }
    if vm.sev {
        out.push_str("\tsev\n");
    }
    if vm.seves {
        out.push_str("\tseves\n");
    }
    if let Some(a) = &vm.allow_instance {
        out.push_str("\tallow instance {\n");
        for (set, kw) in [
            (a.boot, "boot"),
            (a.cdrom, "cdrom"),
            (a.cpus, "cpus"),
            (a.disk, "disk"),
            (a.instance, "instance"),
            (a.interface, "interface"),
            (a.memory, "memory"),
        ] {
            if set {
                let _ = writeln!(out, "\t\t{kw}");
            }
        }
        if let Some(o) = &a.owner {
            let _ = writeln!(out, "\t\towner {}", quote(&o.to_string()));
        }
        out.push_str("\t}\n");
    }
    out.push_str("}\n");
}

fn print_container(out: &mut String, c: &ContainerSpec) {
    let _ = writeln!(out, "container {} {{", quote(&c.common.name));
    let _ = writeln!(out, "\t{}", enable(c.common.enabled));
    if let Some(o) = &c.common.owner {
        let _ = writeln!(out, "\towner {}", quote(&o.to_string()));
    }
    if let Some(m) = c.common.memory {
        let _ = writeln!(out, "\tmemory {m}");
    }
    if let Some(n) = c.common.cpus {
        let _ = writeln!(out, "\tcpus {n}");
    }
    if let Some(r) = &c.root {
        let _ = writeln!(out, "\troot {}", quote_path(r));
    }
    if let Some(i) = &c.image {
        let _ = writeln!(out, "\timage {}", quote_path(i));
    }
    if !c.init.is_empty() {
        out.push_str("\tinit");
        for arg in &c.init {
            out.push(' ');
            out.push_str(&quote(arg));
        }
        out.push('\n');
    }
    if let Some(p) = c.pids {
        let _ = writeln!(out, "\tpids {p}");
    }
    match c.unprivileged {
        None => {}
        Some(UserMap::DEFAULT) => out.push_str("\tunprivileged\n"),
        Some(m) => {
            let _ = writeln!(out, "\tunprivileged map {} {}", m.host_id, m.count);
        }
    }
    for i in &c.common.interfaces {
        print_interface(out, i);
    }
    out.push_str("}\n");
}
