//! One test per vm.conf construct.

use kapsel_config::*;
use std::net::Ipv4Addr;
use std::path::PathBuf;

fn parse(text: &str) -> Config {
    parse_with(text, &[])
}

fn parse_with(text: &str, defines: &[(&str, &str)]) -> Config {
    let opts = LoadOptions {
        defines: defines
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..LoadOptions::default()
    };
    match parse_str("vm.conf", text, &opts) {
        Ok((c, _)) => c,
        Err(d) => panic!("{}", d.iter().map(|d| d.render()).collect::<String>()),
    }
}

/// The rendered diagnostics of a file that must not load.
fn errors(text: &str) -> String {
    match parse_str("vm.conf", text, &LoadOptions::default()) {
        Ok(_) => panic!("loaded:\n{text}"),
        Err(d) => d.iter().map(|d| d.render()).collect(),
    }
}

fn warnings(text: &str) -> String {
    match parse_str("vm.conf", text, &LoadOptions::default()) {
        Ok((_, w)) => w.iter().map(|d| d.render()).collect(),
        Err(d) => panic!("{}", d.iter().map(|d| d.render()).collect::<String>()),
    }
}

#[test]
fn empty_file_and_comments() {
    let c = parse("# nothing\n\n   # more\n");
    assert!(c.vms.is_empty());
    assert_eq!(c.globals.local_prefix, Ipv4Prefix::default());
}

#[test]
fn line_continuation() {
    let c = parse("vm \"a\" {\n\tdisk \"/x.img\" \\\n\t\tformat raw\n}\n");
    assert_eq!(c.vms[0].disks[0].format, Some(DiskFormat::Raw));
}

#[test]
fn quoted_and_bare_strings_concatenate() {
    let c =
        parse("vms=\"/home/vm/\"\nvm \"a\" {\n\tdisk $vms \"a/disk1.img\"\n\tboot /bsd 'rd'\n}\n");
    assert_eq!(
        c.vms[0].disks[0].path,
        PathBuf::from("/home/vm/a/disk1.img")
    );
    assert_eq!(c.vms[0].boot, Some(PathBuf::from("/bsdrd")));
}

#[test]
fn macros_with_and_without_spaces() {
    let c = parse("a = \"1G\"\nb=\"2\"\nvm \"x\" {\n\tmemory $a\n\tcpus $b\n}\n");
    assert_eq!(c.vms[0].common.memory, Some(ByteSize(GIB)));
    assert_eq!(c.vms[0].common.cpus, Some(2));
}

#[test]
fn macro_holding_several_tokens() {
    let c = parse("opts=\"memory 2G\"\nvm \"x\" {\n\t$opts\n}\n");
    assert_eq!(c.vms[0].common.memory, Some(ByteSize(2 * GIB)));
}

#[test]
fn command_line_macros_override_the_file() {
    let c = parse_with(
        "mem=\"1G\"\nvm \"x\" {\n\tmemory $mem\n}\n",
        &[("mem", "4G")],
    );
    assert_eq!(c.vms[0].common.memory, Some(ByteSize(4 * GIB)));
}

#[test]
fn undefined_macro_is_an_error() {
    let e = errors("vm \"x\" {\n\tmemory $mem\n}\n");
    assert!(
        e.contains("vm.conf:2:9: macro \"mem\" is not defined"),
        "{e}"
    );
}

#[test]
fn macros_are_not_expanded_in_quotes() {
    let c = parse("x=\"y\"\nvm \"a\" {\n\tcmdline \"console=$x\"\n}\n");
    assert_eq!(c.vms[0].cmdline.as_deref(), Some("console=$x"));
}

#[test]
fn include_relative_to_including_file() {
    let loader = MemoryLoader::default()
        .with(
            "/etc/kapsel/vm.conf",
            "include \"vms/web.conf\"\nvm \"b\" { memory $m }\n",
        )
        .with("/etc/kapsel/vms/web.conf", "m=\"1G\"\nvm \"a\" {\n}\n");
    let opts = LoadOptions {
        loader: &loader,
        ..LoadOptions::default()
    };
    let (c, _) = load("/etc/kapsel/vm.conf", &opts).unwrap();
    assert_eq!(c.vms.len(), 2);
    assert_eq!(
        c.vms[0].common.span.file,
        PathBuf::from("/etc/kapsel/vms/web.conf")
    );
    assert_eq!(c.vms[1].common.memory, Some(ByteSize(GIB)));
}

#[test]
fn files_loaded_together_see_each_other() {
    let loader = MemoryLoader::default()
        .with(
            "/etc/vm.conf",
            "switch \"lan\" {\n}\nvm \"tmpl\" {\n\tallow instance { memory; interface }\n}\n",
        )
        .with(
            "/srv/more.conf",
            "vm \"tmpl\" instance \"child\" {\n\tmemory 1G\n\tinterface { switch \"lan\" }\n}\n",
        )
        .with(
            "/srv/bad.conf",
            "vm \"x\" {\n\tinterface { switch \"wan\" }\n}\nvm \"tmpl\" {\n}\n",
        );
    let opts = LoadOptions {
        loader: &loader,
        ..LoadOptions::default()
    };
    let main = std::path::Path::new("/etc/vm.conf");
    let (c, _) = load_all(&[main, std::path::Path::new("/srv/more.conf")], &opts).unwrap();
    assert_eq!(
        c.effective_vm("child").unwrap().common.memory,
        Some(ByteSize(GIB))
    );
    let d = load_all(&[main, std::path::Path::new("/srv/bad.conf")], &opts).unwrap_err();
    let text: String = d.iter().map(|d| d.render()).collect();
    assert!(text.contains("/srv/bad.conf:2:"), "{text}");
    assert!(
        text.contains("/srv/bad.conf:4:") && text.contains("declared twice"),
        "{text}"
    );
}

#[test]
fn include_cycle_is_detected() {
    let loader = MemoryLoader::default()
        .with("/a.conf", "include \"b.conf\"\n")
        .with("/b.conf", "include \"./a.conf\"\n");
    let opts = LoadOptions {
        loader: &loader,
        ..LoadOptions::default()
    };
    let d = load("/a.conf", &opts).unwrap_err();
    assert_eq!(d.len(), 1);
    assert!(
        d[0].message
            .contains("include cycle: /a.conf -> /b.conf -> /a.conf"),
        "{}",
        d[0]
    );
    assert_eq!(d[0].file, PathBuf::from("/b.conf"));
}

#[test]
fn missing_include() {
    let e = errors("include \"nope.conf\"\n");
    assert!(e.contains("vm.conf:1:9: cannot read nope.conf"), "{e}");
}

#[test]
fn global_options() {
    let c = parse(
        "local prefix 10.0.0.0/8\nlocal inet6\nsocket owner _vmd:wheel\nstaggered start parallel 4 delay 10\n",
    );
    let g = &c.globals;
    assert_eq!(g.local_prefix.addr, Ipv4Addr::new(10, 0, 0, 0));
    assert_eq!(g.local_prefix.len, 8);
    assert_eq!(g.local_inet6, Some(Ipv6Prefix::default()));
    assert_eq!(
        g.socket_owner,
        Some(Owner {
            user: Some("_vmd".into()),
            group: Some("wheel".into())
        })
    );
    assert_eq!(
        g.staggered_start,
        Some(StaggeredStart {
            parallel: 4,
            delay_secs: 10
        })
    );
    let c = parse("local inet6 prefix fd12:3456::/48\nsocket owner :operator\n");
    assert_eq!(c.globals.local_inet6.unwrap().to_string(), "fd12:3456::/48");
    assert_eq!(c.globals.socket_owner.unwrap().to_string(), ":operator");
}

#[test]
fn agentx_is_parsed_and_warned_about() {
    let w = warnings("agentx context \"vmd\" path \"/var/agentx/master\"\n");
    assert!(w.contains("agentx is not supported on Linux"), "{w}");
    let c = parse("agentx\n");
    assert_eq!(c.globals.agentx, Some(AgentX::default()));
}

#[test]
fn switch_block() {
    let c = parse(
        "switch \"up\" {\n\tinterface bridge0\n\tadd em0\n\tlocked lladdr\n\tdown\n\tdisable\n}\nswitch \"b\" {\n}\n",
    );
    let s = &c.switches[0];
    assert_eq!(s.interface.as_deref(), Some("bridge0"));
    assert_eq!(s.members, vec!["em0".to_string()]);
    assert!(s.locked_lladdr && !s.up && !s.enabled);
    assert!(c.switches[1].up && c.switches[1].enabled);
    let w = warnings("switch \"s\" {\n\tgroup g\n\trdomain 1\n\tenable\n\tup\n}\n");
    assert!(w.contains("rdomain") && w.contains("group"), "{w}");
}

#[test]
fn vm_block_with_every_keyword() {
    let c = parse(
        r#"switch "sw" { }
vm "full" {
	disable
	owner alice:staff
	memory 2G
	cpus 4
	boot "/boot/vmlinuz"
	boot device disk
	initrd "/boot/initrd.img"
	cmdline "console=ttyS0 root=/dev/vda"
	cdrom "/iso/install.iso"
	disk "/vm/a.qcow2" format qcow2
	disk "/vm/b.img" format raw
	disk "/vm/c.img"
	interfaces 3
	local interface
	interface "tap7" { switch "sw"; locked lladdr fe:e1:ba:d0:00:01; down }
	interface {
		switch "sw"
		lladdr
	}
	allow instance { boot, memory
		owner bob
	}
}
"#,
    );
    let v = &c.vms[0];
    assert!(!v.common.enabled);
    assert_eq!(v.common.owner.as_ref().unwrap().to_string(), "alice:staff");
    assert_eq!(v.common.memory, Some(ByteSize(2 * GIB)));
    assert_eq!(v.common.cpus, Some(4));
    assert_eq!(v.boot_device, Some(BootDevice::Disk));
    assert_eq!(v.initrd, Some(PathBuf::from("/boot/initrd.img")));
    assert_eq!(v.cmdline.as_deref(), Some("console=ttyS0 root=/dev/vda"));
    assert_eq!(v.cdrom, Some(PathBuf::from("/iso/install.iso")));
    assert_eq!(
        v.disks.iter().map(|d| d.format).collect::<Vec<_>>(),
        vec![Some(DiskFormat::Qcow2), Some(DiskFormat::Raw), None]
    );
    assert_eq!(v.interface_count, Some(3));
    assert_eq!(v.common.interfaces.len(), 3);
    assert!(v.common.interfaces[0].local);
    let tap = &v.common.interfaces[1];
    assert_eq!(tap.name.as_deref(), Some("tap7"));
    assert!(tap.locked && !tap.up);
    assert_eq!(tap.lladdr.unwrap().to_string(), "fe:e1:ba:d0:00:01");
    assert_eq!(v.common.interfaces[2].lladdr, None);
    let a = v.allow_instance.as_ref().unwrap();
    assert!(a.boot && a.memory && !a.disk);
    assert_eq!(a.owner.as_ref().unwrap().user.as_deref(), Some("bob"));
}

#[test]
fn defaults_are_filled_in() {
    let c = parse("vm \"a\" {\n}\n");
    assert_eq!(c.vms[0].common.memory, Some(DEFAULT_VM_MEMORY));
    assert_eq!(c.vms[0].common.cpus, Some(1));
    assert!(c.vms[0].common.enabled);
}

#[test]
fn sev_is_parsed_with_a_warning() {
    let w = warnings("vm \"a\" {\n\tsev\n\tseves\n}\n");
    assert_eq!(w.matches("not supported by Kapsel").count(), 2, "{w}");
}

#[test]
fn instances_inherit() {
    let c = parse(
        r#"switch "sw" { }
vm "tmpl" {
	memory 1G
	owner alice
	boot "/bsd"
	disk "/vm/tmpl.img"
	interface "tap0" { switch "sw"; lladdr fe:00:00:00:00:01 }
	allow instance { memory; disk; instance }
}
vm "tmpl" instance "one" {
	memory 2G
	disk "/vm/one.img"
}
vm "one" instance "two" {
}
"#,
    );
    assert_eq!(c.vm("one").unwrap().common.memory, Some(ByteSize(2 * GIB)));
    assert_eq!(c.vm("two").unwrap().common.memory, None);
    let one = c.effective_vm("one").unwrap();
    assert_eq!(one.common.owner.unwrap().user.as_deref(), Some("alice"));
    assert_eq!(one.boot, Some(PathBuf::from("/bsd")));
    assert_eq!(one.disks.len(), 1);
    assert_eq!(one.disks[0].path, PathBuf::from("/vm/one.img"));
    assert_eq!(one.common.interfaces.len(), 1);
    assert_eq!(one.common.interfaces[0].switch.as_deref(), Some("sw"));
    assert_eq!(one.common.interfaces[0].name, None);
    assert_eq!(one.common.interfaces[0].lladdr, None);
    let two = c.effective_vm("two").unwrap();
    assert_eq!(two.common.memory, Some(ByteSize(2 * GIB)));
    assert!(two.disks.is_empty());
    assert_eq!(c.effective_vm("nope"), None);
}

#[test]
fn instance_restrictions() {
    let e = errors("vm \"t\" {\n\tallow instance { memory }\n}\nvm \"t\" instance \"i\" {\n\tcdrom \"/x.iso\"\n\tmemory 1G\n}\n");
    assert!(
        e.contains("vm.conf:5:2: instance \"i\" may not set \"cdrom\""),
        "{e}"
    );
    assert!(!e.contains("\"memory\""), "{e}");
    let e = errors("vm \"t\" {\n}\nvm \"t\" instance \"i\" {\n}\nvm \"i\" instance \"j\" {\n}\n");
    assert!(e.contains("vm \"i\" is itself an instance"), "{e}");
    let e = errors("vm \"tmpl\" {\n}\nvm \"tmlp\" instance \"i\" {\n}\n");
    assert!(
        e.contains("of unknown vm \"tmlp\"; did you mean \"tmpl\"?"),
        "{e}"
    );
    let e = errors("vm \"a\" instance \"a\" {\n}\n");
    assert!(e.contains("instance of itself"), "{e}");
    let e = errors("vm \"t\" {\n\tdisk \"/d\"\n\tallow instance { disk }\n}\nvm \"t\" instance \"i\" {\n\tdisk \"/d\"\n}\n");
    assert!(e.contains("cannot share its parent's disks"), "{e}");
    let e = errors("vm \"a\" instance \"b\" {\n}\nvm \"b\" instance \"a\" {\n}\n");
    assert!(e.contains("cycle of instances"), "{e}");
}

#[test]
fn semantic_errors() {
    let e = errors("vm \"a\" {\n}\nvm \"a\" {\n}\n");
    assert!(e.contains("vm.conf:3:1: vm \"a\" is declared twice"), "{e}");
    let e = errors("vm \"a\" {\n}\ncontainer \"a\" {\n}\n");
    assert!(e.contains("container \"a\" is declared twice"), "{e}");
    let e = errors("switch \"s\" {\n}\nswitch \"s\" {\n}\n");
    assert!(e.contains("switch \"s\" is declared twice"), "{e}");
    let e = errors("vm \"a\" {\n\tinterface { switch \"nope\" }\n}\n");
    assert!(
        e.contains("vm.conf:2:21: interface of vm \"a\" is on unknown switch \"nope\""),
        "{e}"
    );
    let e = errors("vm \"a\" {\n\tmemory 1K\n}\n");
    assert!(e.contains("below the minimum of 1M"), "{e}");
    let e = errors("vm \"a\" {\n\tboot device cdrom\n}\n");
    assert!(e.contains("boots from a cdrom but has none"), "{e}");
    let e = errors("vm \"a\" {\n\tdisk \"/x\"\n\tdisk \"/x\"\n}\n");
    assert!(e.contains("vm.conf:3:2: disk /x is given twice"), "{e}");
    let e = errors("vm \"a\" {\n\tmemory 1G\n\tmemory 2G\n}\n");
    assert!(
        e.contains("vm.conf:3:2: \"memory\" is given more than once"),
        "{e}"
    );
}

struct FakeAccounts;
impl Accounts for FakeAccounts {
    fn user_exists(&self, name: &str) -> bool {
        name == "alice"
    }
    fn group_exists(&self, name: &str) -> bool {
        name == "staff"
    }
}

#[test]
fn owners_are_checked_against_the_host() {
    let text = "vm \"a\" {\n\towner bob:staff\n}\nsocket owner :nogroup\nvm \"b\" {\n\towner alice:staff\n}\n";
    let mut opts = LoadOptions {
        accounts: Some(&FakeAccounts),
        ..LoadOptions::default()
    };
    let d = parse_str("vm.conf", text, &opts).unwrap_err();
    assert_eq!(d.len(), 2);
    assert!(d[0].message.contains("user \"bob\" does not exist"));
    assert!(d[1].message.contains("group \"nogroup\" does not exist"));
    opts.foreign_host = true;
    let (_, w) = parse_str("vm.conf", text, &opts).unwrap();
    assert_eq!(w.len(), 2);
    assert!(w.iter().all(|w| w.severity == Severity::Warning));
    // Numeric ids are not looked up.
    opts.foreign_host = false;
    assert!(parse_str("vm.conf", "socket owner 1000:1000\n", &opts).is_ok());
}

#[test]
fn container_block() {
    let c = parse("switch \"s\" { }\ncontainer \"web\" {\n\troot \"/ct/web\"\n\tmemory 256M\n\tcpus 2\n\towner alice\n\tinterface { switch \"s\" }\n\tdisable\n}\n");
    let ct = &c.containers[0];
    assert_eq!(ct.common.memory, Some(ByteSize(256 * MIB)));
    assert_eq!(ct.common.cpus, Some(2));
    assert!(!ct.common.enabled);
    assert_eq!(ct.common.interfaces.len(), 1);
    let e = errors("container \"c\" {\n\tdisk \"/x\"\n}\n");
    assert!(
        e.contains("\"disk\" is not supported in a container block"),
        "{e}"
    );
}

#[test]
fn container_from_the_issue() {
    let c = parse(concat!(
        "switch \"uplink\" {\n}\n",
        "container \"web\" {\n",
        "    root \"/var/lib/kapsel/ct/web\"          # a directory\n",
        "    init \"/sbin/init\"\n",
        "    memory 512M\n",
        "    cpus 2\n",
        "    pids 512\n",
        "    interface { switch \"uplink\" }\n",
        "    owner alice\n",
        "}\n",
    ));
    let ct = c.container("web").unwrap();
    assert_eq!(ct.root, Some(PathBuf::from("/var/lib/kapsel/ct/web")));
    assert_eq!(ct.image, None);
    assert_eq!(ct.init, vec!["/sbin/init".to_string()]);
    assert_eq!(ct.pids, Some(512));
    assert_eq!(ct.common.memory, Some(ByteSize(512 * MIB)));
    assert_eq!(ct.common.cpus, Some(2));
    assert_eq!(ct.common.interfaces[0].switch.as_deref(), Some("uplink"));
    assert_eq!(
        ct.common.owner.as_ref().unwrap().user.as_deref(),
        Some("alice")
    );
}

#[test]
fn container_root() {
    let c = parse("ct=\"/var/lib/kapsel/ct/\"\ncontainer \"a\" {\n\troot $ct \"a\"\n}\n");
    assert_eq!(
        c.containers[0].root,
        Some(PathBuf::from("/var/lib/kapsel/ct/a"))
    );
    let e = errors("container \"a\" {\n\troot \"ct/a\"\n}\n");
    assert!(
        e.contains("vm.conf:2:7: root \"ct/a\" is not an absolute path"),
        "{e}"
    );
    assert!(e.contains("help: write the full path"), "{e}");
    let e = errors("container \"a\" {\n\troot \"//\"\n}\n");
    assert!(e.contains("cannot be the host's \"/\""), "{e}");
    let e = errors("container \"a\" {\n\troot \"\"\n}\n");
    assert!(e.contains("vm.conf:2:7:"), "{e}");
    let e = errors("container \"a\" {\n\troot \"/x\"\n\troot \"/y\"\n}\n");
    assert!(
        e.contains("vm.conf:3:2: \"root\" is given more than once"),
        "{e}"
    );
}

#[test]
fn container_image() {
    for name in [
        "/t/a.tar",
        "/t/a.tar.gz",
        "/t/a.tgz",
        "/t/a.tar.xz",
        "/t/a.tar.zst",
        "/t/A.TAR.ZST",
        "/srv/oci/debian-12.1",
        "/srv/oci/alpine/",
    ] {
        let c = parse(&format!("container \"a\" {{\n\timage \"{name}\"\n}}\n"));
        assert_eq!(c.containers[0].image, Some(PathBuf::from(name)), "{name}");
        assert_eq!(c.containers[0].root, None);
    }
    for name in [
        "/t/a.img",
        "/t/a.qcow2",
        "/t/a.iso",
        "/t/a.gz",
        "/t/a.tar.bz2",
        "/t/a.zip",
    ] {
        let e = errors(&format!("container \"a\" {{\n\timage \"{name}\"\n}}\n"));
        assert!(
            e.contains(&format!("vm.conf:2:8: image {name} is neither a tarball")),
            "{e}"
        );
        assert!(e.contains("help: "), "{e}");
    }
    let e = errors("container \"a\" {\n\timage \"t/a.tar\"\n}\n");
    assert!(
        e.contains("vm.conf:2:8: image \"t/a.tar\" is not an absolute path"),
        "{e}"
    );
}

#[test]
fn container_needs_exactly_one_of_root_and_image() {
    let e = errors("container \"a\" {\n\tmemory 1G\n}\n");
    assert!(
        e.contains("vm.conf:1:1: container \"a\" has no files"),
        "{e}"
    );
    assert!(
        e.contains("give it a root directory with `root PATH` or an image with `image PATH`"),
        "{e}"
    );
    let e = errors("container \"a\" {\n\timage \"/i.tar\"\n\troot \"/r\"\n}\n");
    assert!(
        e.contains("vm.conf:3:2: container \"a\" has both a root and an image"),
        "{e}"
    );
    assert!(
        e.contains("remove `root` (line 3) or `image` (line 2)"),
        "{e}"
    );
    // A root that was itself wrong is not also "missing".
    let e = errors("container \"a\" {\n\troot \"r\"\n}\n");
    assert!(!e.contains("has no files"), "{e}");
}

#[test]
fn container_init() {
    let ct = |text: &str| parse(text).containers[0].clone();
    let c = ct("container \"a\" {\n\troot \"/r\"\n}\n");
    assert!(c.init.is_empty());
    assert_eq!(c.init_command(), vec![DEFAULT_CONTAINER_INIT.to_string()]);
    let c = ct("container \"a\" {\n\troot \"/r\"\n\tinit \"/bin/sh\" \"-c\" \"echo hi\"\n}\n");
    assert_eq!(c.init, vec!["/bin/sh", "-c", "echo hi"]);
    assert_eq!(c.init_command(), c.init);
    // Bare words, macros holding several words, strings glued to a macro.
    let c = ct(concat!(
        "sh=\"/bin/sh -c\"\napp=\"/opt/app\"\n",
        "container \"a\" {\n\troot \"/r\"\n\tinit $sh 'exec '$app\"/run\" --verbose\n}\n"
    ));
    assert_eq!(
        c.init,
        vec!["/bin/sh", "-c", "exec /opt/app/run", "--verbose"]
    );
    // `;` ends the statement; quoted, it is part of an argument.
    let c = ct("container \"a\" {\n\troot \"/r\"; init /bin/sh \"-c\" \"a; b\"; pids 5\n}\n");
    assert_eq!(c.init, vec!["/bin/sh", "-c", "a; b"]);
    assert_eq!(c.pids, Some(5));
    let e = errors("container \"a\" {\n\troot \"/r\"\n\tinit\n}\n");
    assert!(
        e.contains("vm.conf:3:6: expected the program to run as init"),
        "{e}"
    );
    let e = errors("container \"a\" {\n\troot \"/r\"\n\tinit sh -c true\n}\n");
    assert!(
        e.contains("vm.conf:3:7: init program \"sh\" is not an absolute path"),
        "{e}"
    );
    assert!(e.contains("init \"/bin/sh\""), "{e}");
    let e = errors("container \"a\" {\n\troot \"/r\"\n\tinit \"/x\" { }\n}\n");
    assert!(
        e.contains("vm.conf:3:12: expected the end of the line after \"init\""),
        "{e}"
    );
}

#[test]
fn container_pids() {
    let c = parse(&format!(
        "container \"a\" {{\n\troot \"/r\"\n\tpids {MAX_CONTAINER_PIDS}\n}}\n"
    ));
    assert_eq!(c.containers[0].pids, Some(MAX_CONTAINER_PIDS));
    for bad in ["0", "4194305", "99999999999999999999999", "-1", "many"] {
        let e = errors(&format!(
            "container \"a\" {{\n\troot \"/r\"\n\tpids {bad}\n}}\n"
        ));
        assert!(e.contains("vm.conf:3:7:"), "{bad}: {e}");
    }
}

#[test]
fn container_unprivileged() {
    let ct = |line: &str| {
        parse(&format!(
            "container \"a\" {{\n\troot \"/r\"\n\t{line}\n}}\n"
        ))
        .containers[0]
            .unprivileged
    };
    assert_eq!(
        ct("unprivileged"),
        Some(UserMap {
            host_id: 100_000,
            count: 65_536
        })
    );
    assert_eq!(
        ct("unprivileged map 200000 1000"),
        Some(UserMap {
            host_id: 200_000,
            count: 1000
        })
    );
    // The largest map there is: host ids 1..4294967294.
    assert_eq!(
        ct("unprivileged map 1 4294967294"),
        Some(UserMap {
            host_id: 1,
            count: u32::MAX - 1
        })
    );
    assert_eq!(
        ct("unprivileged map 4294967294 1"),
        Some(UserMap {
            host_id: u32::MAX - 1,
            count: 1
        })
    );
    assert_eq!(ct("pids 5"), None);
    // The default map prints as the bare keyword; others in full.
    let c = parse("container \"a\" {\n\troot \"/r\"\n\tunprivileged map 100000 65536\n}\n");
    assert!(
        c.to_vm_conf().contains("\tunprivileged\n"),
        "{}",
        c.to_vm_conf()
    );
    let c = parse("container \"a\" {\n\troot \"/r\"\n\tunprivileged map 7 8\n}\n");
    assert!(c.to_vm_conf().contains("\tunprivileged map 7 8\n"));
    for (bad, at, what) in [
        (
            "map 0 65536",
            "3:19",
            "host id 0 would make the container's root the host's root",
        ),
        (
            "map 100000 0",
            "3:26",
            "a map of 0 ids leaves the container no root",
        ),
        (
            "map 4294967295 1",
            "3:19",
            "the first host id must be between 0 and 4294967294",
        ),
        (
            "map 4294967000 296",
            "3:30",
            "host ids 4294967000 to 4294967295 run past 4294967294",
        ),
        (
            "map 100000",
            "3:25",
            "expected a number for the number of ids",
        ),
        (
            "100000 65536",
            "3:15",
            "expected \"map\" before the host ids",
        ),
        ("map x 1", "3:19", "expected a number for the first host id"),
    ] {
        let e = errors(&format!(
            "container \"a\" {{\n\troot \"/r\"\n\tunprivileged {bad}\n}}\n"
        ));
        assert!(e.contains(&format!("vm.conf:{at}: {what}")), "{bad}: {e}");
        assert!(
            e.contains("help: ")
                || bad.contains('x')
                || bad == "map 100000"
                || bad.starts_with("map 4294967295"),
            "{bad}: {e}"
        );
    }
    // The same map twice is a choice; maps that partly overlap are warned of.
    let two = |a: &str, b: &str| {
        warnings(&format!(
            "container \"a\" {{\n\troot \"/r\"\n\t{a}\n}}\ncontainer \"b\" {{\n\troot \"/r\"\n\t{b}\n}}\n"
        ))
    };
    assert_eq!(two("unprivileged", "unprivileged map 100000 65536"), "");
    assert_eq!(two("unprivileged", "unprivileged map 165536 65536"), "");
    assert_eq!(two("unprivileged map 1 1", "unprivileged map 2 1"), "");
    let w = two("unprivileged", "unprivileged map 1 99999");
    assert!(w.is_empty(), "{w}");
    let w = two("unprivileged", "unprivileged map 1 100000");
    assert!(
        w.contains("vm.conf:7:2: warning: container \"b\" shares host ids 100000 to 100000 with container \"a\""),
        "{w}"
    );
    let w = two(
        "unprivileged map 4294967000 295",
        "unprivileged map 4294967294 1",
    );
    assert!(w.contains("host ids 4294967294 to 4294967294"), "{w}");
    assert!(
        w.contains("help: give it a range of its own, or the same map"),
        "{w}"
    );
    let e = errors("container \"a\" {\n\troot \"/r\"\n\tunprivileged\n\tunprivileged\n}\n");
    assert!(
        e.contains("vm.conf:4:2: \"unprivileged\" is given more than once"),
        "{e}"
    );
}

#[test]
fn container_keywords_in_a_vm_are_errors() {
    let e = errors("vm \"a\" {\n\troot \"/r\"\n}\n");
    assert!(
        e.contains("vm.conf:2:2: \"root\" is for containers; a VM boots a kernel with `boot`"),
        "{e}"
    );
    for kw in [
        "image \"/i.tar\"",
        "init \"/sbin/init\"",
        "pids 5",
        "unprivileged",
        "unprivileged map 200000 65536",
    ] {
        let e = errors(&format!("vm \"a\" {{\n\t{kw}\n}}\n"));
        let word = kw.split(' ').next().unwrap();
        assert!(
            e.contains(&format!("vm.conf:2:2: \"{word}\" is for containers")),
            "{e}"
        );
        assert!(e.contains("help: "), "{e}");
    }
    let e = errors("container \"a\" {\n\troot \"/r\"\n\tboot \"/vmlinuz\"\n}\n");
    assert!(e.contains("a container runs on the host kernel"), "{e}");
}

#[test]
fn container_names_share_the_vm_namespace() {
    let e = errors("container \"a\" {\n\troot \"/r\"\n}\nvm \"a\" {\n}\n");
    assert!(e.contains("is declared twice"), "{e}");
    assert!(e.contains("VMs and containers share one namespace"), "{e}");
    let e = errors("container \"a\" {\n\troot \"/r\"\n\tinterface { switch \"s\" }\n}\n");
    assert!(
        e.contains("vm.conf:3:21: interface of container \"a\" is on unknown switch \"s\""),
        "{e}"
    );
}

#[test]
fn containers_print_and_read_back() {
    let text = "container \"a\" {\n\timage \"/i \\\"q\\\".tar\"\n\tinit \"/bin/sh\" \"-c\" \"echo \\\"$x\\\"\" \"\"\n\tpids 7\n}\n";
    let c = parse(text);
    assert_eq!(
        c.containers[0].init,
        vec!["/bin/sh", "-c", "echo \"$x\"", ""]
    );
    let printed = c.to_vm_conf();
    assert!(printed.contains("\tpids 7\n"), "{printed}");
    assert!(
        printed.contains("\tinit \"/bin/sh\" \"-c\" \"echo \\\"$x\\\"\" \"\"\n"),
        "{printed}"
    );
    let mut again = parse(&printed);
    let mut c = c;
    again.clear_spans();
    c.clear_spans();
    assert_eq!(again, c);
}

#[test]
fn all_errors_are_reported() {
    let e = errors("vm \"a\" {\n\tmemroy 1G\n\tcpuz 2\n\tdsk \"/x\"\n}\nfoo bar\n");
    assert_eq!(e.matches("unknown keyword").count(), 4, "{e}");
    assert!(e.contains("did you mean \"memory\"?"));
    assert!(e.contains("did you mean \"cpus\"?"));
    assert!(e.contains("did you mean \"disk\"?"));
}

#[test]
fn names_are_validated() {
    let e = errors("vm \"bad name\" {\n}\n");
    assert!(e.contains("invalid vm name"), "{e}");
    let e = errors("vm \"a\" {\n\tinterface \"averyveryverylongname\"\n}\n");
    assert!(e.contains("invalid network interface name"), "{e}");
}

#[test]
fn bad_values() {
    for (text, want) in [
        ("vm \"a\" {\n\tmemory lots\n}\n", "invalid size \"lots\""),
        (
            "vm \"a\" {\n\tboot device floppy\n}\n",
            "expected a boot device",
        ),
        (
            "vm \"a\" {\n\tdisk \"/x\" format vmdk\n}\n",
            "expected a disk format",
        ),
        (
            "vm \"a\" {\n\tinterface { lladdr 01:00:00:00:00:00 }\n}\n",
            "multicast",
        ),
        (
            "vm \"a\" {\n\tinterface { lladdr zz }\n}\n",
            "not a MAC address",
        ),
        (
            "vm \"a\" {\n\tinterfaces 100\n}\n",
            "interfaces must be between 0 and 32",
        ),
        (
            "vm \"a\" {\n\towner :\n}\n",
            "names neither a user nor a group",
        ),
        ("local prefix fd00::/8\n", "local inet6 prefix"),
        (
            "staggered start parallel 0 delay 1\n",
            "parallel must be between",
        ),
        (
            "vm \"a\" {\n\tmemory 1G 2G\n}\n",
            "expected the end of the line after \"memory\"",
        ),
        ("vm \"a\" {\n", "vm \"a\" is not closed"),
        ("}\n", "unmatched \"}\""),
        (
            "\"vm\" \"a\" {\n}\n",
            "keywords and macro names are not quoted",
        ),
        ("vms \"/x\"\n", "to define a macro, write vms = \"value\""),
        (
            "vm \"a\" {\n\tadd em0\n}\n",
            "\"add\" is valid in a switch block",
        ),
    ] {
        let e = errors(text);
        assert!(e.contains(want), "{text:?} gave:\n{e}");
    }
}

#[test]
fn old_kernel_keyword() {
    let w = warnings("vm \"a\" {\n\tkernel \"/bsd\"\n}\n");
    assert!(w.contains("\"kernel\" is the old name of \"boot\""), "{w}");
    assert_eq!(
        parse("vm \"a\" {\n\tkernel \"/bsd\"\n}\n").vms[0].boot,
        Some(PathBuf::from("/bsd"))
    );
}

#[test]
fn crlf_files() {
    let c = parse(
        "m=\"1G\"\r\nvm \"a\" {\r\n\tmemory $m\r\n\tdisk \"/x\" \\\r\n\t\tformat raw\r\n}\r\n",
    );
    assert_eq!(c.vms[0].common.memory, Some(ByteSize(GIB)));
    assert_eq!(c.vms[0].disks[0].format, Some(DiskFormat::Raw));
    let c = parse("vm \"a\" {\r\n\tcmdline \"a \\\r\nb\"\r\n}\r\n");
    assert_eq!(c.vms[0].cmdline.as_deref(), Some("a b"));
}

#[test]
fn errors_point_into_macros_at_the_reference() {
    let e = errors("m=\"lots\"\nvm \"a\" {\n\tmemory $m\n}\n");
    assert!(e.contains("vm.conf:3:9: invalid size \"lots\""), "{e}");
    assert!(e.contains("\tmemory $m\n\t       ^^\n"), "{e}");
}

#[test]
fn semicolons_and_one_line_blocks() {
    let c = parse("switch \"s\" { interface br0; up }\nvm \"a\" { memory 1G; interface { switch \"s\" lladdr fe:00:00:00:00:01 up } }\n");
    assert_eq!(c.switches[0].interface.as_deref(), Some("br0"));
    assert_eq!(
        c.vms[0].common.interfaces[0].lladdr.unwrap().to_string(),
        "fe:00:00:00:00:01"
    );
}

#[test]
fn brace_on_the_next_line() {
    let c = parse("vm \"a\"\n{\n\tmemory 1G\n}\n");
    assert_eq!(c.vms[0].common.memory, Some(ByteSize(GIB)));
}

#[test]
fn default_path_is_documented() {
    assert_eq!(DEFAULT_CONFIG_PATH, "/etc/kapsel/vm.conf");
}

#[test]
fn parse_define_arguments() {
    assert_eq!(parse_define("a=b=c"), Ok(("a".into(), "b=c".into())));
    assert_eq!(parse_define("x="), Ok(("x".into(), String::new())));
    assert!(parse_define("novalue").is_err());
    assert!(parse_define("bad name=1").is_err());
}

#[test]
fn unreadable_file() {
    let d = load("/nonexistent/vm.conf", &LoadOptions::default()).unwrap_err();
    assert_eq!(
        d[0].render(),
        "/nonexistent/vm.conf: cannot read /nonexistent/vm.conf: No such file or directory (os error 2)\nhelp: choose another file with -f\n"
    );
}

#[test]
fn instance_chains_are_bounded() {
    let mut text = String::from("vm \"v0\" {\n\tallow instance { instance }\n}\n");
    for i in 1..=20 {
        text += &format!("vm \"v{}\" instance \"v{i}\" {{\n}}\n", i - 1);
    }
    let e = errors(&text);
    assert!(
        e.contains("more than 16 instances away from its template"),
        "{e}"
    );
    let ok: String = text
        .lines()
        .take(3 + 2 * 16)
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(
        parse(&ok).effective_vm("v16").unwrap().common.memory,
        Some(DEFAULT_VM_MEMORY)
    );
}

#[test]
fn hostile_input_is_bounded() {
    let d = parse_str("vm.conf", &"(".repeat(5000), &LoadOptions::default()).unwrap_err();
    assert_eq!(d.len(), 1001);
    assert!(d[1000].message.contains("stopping here"));
    assert!(d[0].source_line.is_none()); // a 5000-character line is not copied
    let deep = "{".repeat(100_000);
    assert!(parse_str("vm.conf", &deep, &LoadOptions::default()).is_err());
}

#[test]
fn value_types_are_strict() {
    assert!("+f:0:0:0:0:1".parse::<MacAddr>().is_err());
    assert!("fe:0:0:0:0".parse::<MacAddr>().is_err());
    assert!("fe:0:0:0:0:1:2".parse::<MacAddr>().is_err());
    assert_eq!(
        "FE:0:0:0:0:A".parse::<MacAddr>().unwrap().to_string(),
        "fe:00:00:00:00:0a"
    );
    assert!("10.0.0.0/+8".parse::<Ipv4Prefix>().is_err());
    assert!("10.0.0.0".parse::<Ipv4Prefix>().is_err());
    assert!("fd00::/129".parse::<Ipv6Prefix>().is_err());
    assert!("user:".parse::<Owner>().is_err());
    assert!("a b".parse::<Owner>().is_err());
    assert_eq!(":g".parse::<Owner>().unwrap().user, None);
}

#[test]
fn firmware_chooses_what_a_vm_without_a_kernel_boots() {
    let c = parse(
        "vm \"a\" {\n\tfirmware uefi\n\tdisk \"/d.qcow2\"\n}\nvm \"b\" {\n\tdisk \"/e\"\n}\n",
    );
    assert_eq!(c.vms[0].firmware, Some(Firmware::Uefi));
    assert_eq!(c.vms[1].firmware, None);
    // Instances inherit it.
    let c = parse(
        "vm \"t\" {\n\tfirmware bios\n\tallow instance { boot }\n}\nvm \"t\" instance \"i\" {\n}\n",
    );
    assert_eq!(c.effective_vm("i").unwrap().firmware, Some(Firmware::Bios));
    // It prints back.
    assert!(c.to_vm_conf().contains("\tfirmware bios\n"));
    let e = errors("vm \"a\" {\n\tfirmware efi\n}\n");
    assert!(
        e.contains("vm.conf:2:11: expected a firmware: bios or uefi"),
        "{e}"
    );
    let e = errors("vm \"a\" {\n\tboot \"/k\"\n\tfirmware bios\n}\n");
    assert!(
        e.contains("vm.conf:3:2: vm \"a\" has both a kernel (`boot`) and `firmware bios`"),
        "{e}"
    );
    let e = errors("container \"c\" {\n\tfirmware bios\n}\n");
    assert!(
        e.contains("\"firmware\" is not supported in a container block"),
        "{e}"
    );
    // An instance may change it only where `boot` is allowed.
    let e = errors("vm \"t\" {\n\tallow instance { memory }\n}\nvm \"t\" instance \"i\" {\n\tfirmware uefi\n}\n");
    assert!(e.contains("firmware"), "{e}");
}
