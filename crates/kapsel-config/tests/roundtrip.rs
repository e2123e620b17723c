//! Round trip: printing a configuration and parsing the text gives the
//! same model.

use kapsel_config::*;
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use std::path::PathBuf;

fn text() -> impl Strategy<Value = String> {
    // Printable ASCII, quotes, backslashes, '$' and '#' included.
    "[ -~]{0,24}"
}

fn path() -> impl Strategy<Value = PathBuf> {
    "/[ -~]{1,24}".prop_map(PathBuf::from)
}

fn word() -> impl Strategy<Value = String> {
    "[a-z_][a-z0-9_]{0,7}"
}

fn owner() -> impl Strategy<Value = Owner> {
    (option::of(word()), option::of(word())).prop_map(|(user, group)| match (user, group) {
        (None, None) => Owner {
            user: Some("root".into()),
            group: None,
        },
        (user, group) => Owner { user, group },
    })
}

fn size() -> impl Strategy<Value = ByteSize> {
    (1u64..=1 << 20).prop_map(|mib| ByteSize(mib * MIB))
}

fn interface(switches: usize) -> impl Strategy<Value = InterfaceSpec> {
    (
        option::of("[a-z][a-z0-9]{0,14}"),
        any::<bool>(),
        option::of(0..switches.max(1)),
        option::of(any::<[u8; 6]>()),
        any::<bool>(),
        option::of(word()),
        option::of(0u32..=255),
        any::<bool>(),
    )
        .prop_map(
            move |(name, local, sw, mac, locked, group, rdomain, up)| InterfaceSpec {
                name,
                local,
                switch: sw.filter(|_| switches > 0).map(|i| format!("sw{i}")),
                lladdr: mac.map(|mut m| {
                    m[0] &= 0xfe;
                    MacAddr(m)
                }),
                locked,
                group,
                rdomain,
                up,
            },
        )
}

fn vm(switches: usize) -> impl Strategy<Value = VmSpec> {
    (
        (
            any::<bool>(),
            option::of(owner()),
            size(),
            1u32..=MAX_VM_CPUS,
        ),
        (
            option::of(path()),
            option::of(path()),
            option::of(text()),
            option::of(path()),
        ),
        (
            vec(
                (
                    path(),
                    option::of(prop_oneof![Just(DiskFormat::Raw), Just(DiskFormat::Qcow2)]),
                ),
                0..3,
            ),
            vec(interface(switches), 0..3),
            option::of(0u32..=MAX_VM_INTERFACES),
            any::<(bool, bool)>(),
            option::of(prop_oneof![
                Just(BootDevice::Cdrom),
                Just(BootDevice::Disk),
                Just(BootDevice::Net)
            ]),
        ),
    )
        .prop_map(
            |(
                (enabled, owner, memory, cpus),
                (boot, initrd, cmdline, cdrom),
                (disks, interfaces, count, (sev, seves), dev),
            )| {
                let mut disks: Vec<DiskSpec> = disks
                    .into_iter()
                    .map(|(path, format)| DiskSpec { path, format })
                    .collect();
                disks.dedup_by(|a, b| a.path == b.path);
                let mut vm = VmSpec::new("x");
                vm.common.enabled = enabled;
                vm.common.owner = owner;
                vm.common.memory = Some(memory);
                vm.common.cpus = Some(cpus);
                vm.boot = boot;
                vm.boot_device = dev.filter(|d| *d != BootDevice::Cdrom || cdrom.is_some());
                vm.initrd = initrd;
                vm.cmdline = cmdline;
                vm.cdrom = cdrom;
                vm.disks = disks;
                vm.common.interfaces = interfaces;
                vm.interface_count = count;
                vm.sev = sev;
                vm.seves = seves;
                vm
            },
        )
}

/// Exactly one of `root` and `image`, an optional `init`, optional `pids`,
/// an optional user namespace.
type ContainerFiles = (
    Result<PathBuf, PathBuf>,
    Option<(PathBuf, Vec<String>)>,
    Option<u64>,
    Option<UserMap>,
);

/// The default map, or any valid one (host id 1.., within 32 bits).
fn user_map() -> impl Strategy<Value = UserMap> {
    prop_oneof![
        Just(UserMap::DEFAULT),
        (1u32..u32::MAX).prop_flat_map(|host_id| {
            (1u32..=u32::MAX - host_id).prop_map(move |count| UserMap { host_id, count })
        }),
    ]
}

fn container_files() -> impl Strategy<Value = ContainerFiles> {
    let root = path()
        .prop_filter("not the host's /", |p| {
            !p.components().all(|c| c == std::path::Component::RootDir)
        })
        .prop_map(Ok);
    let tarball = (
        "/[ -~]{0,16}",
        prop::sample::select(CONTAINER_IMAGE_EXTENSIONS),
    )
        .prop_map(|(p, ext)| PathBuf::from(format!("{p}{ext}")));
    let oci_dir = "/[a-z0-9_/-]{1,16}".prop_map(PathBuf::from);
    let image = prop_oneof![tarball, oci_dir].prop_map(Err);
    (
        prop_oneof![root, image],
        option::of((path(), vec(text(), 0..3))),
        option::of(1u64..=MAX_CONTAINER_PIDS),
        option::of(user_map()),
    )
}

fn config() -> impl Strategy<Value = Config> {
    (0usize..3).prop_flat_map(|nsw| {
        (
            (
                any::<[u8; 4]>(),
                0u8..=32,
                option::of((any::<[u16; 8]>(), 0u8..=128)),
            ),
            (option::of(owner()), option::of((1u32..100, 0u32..100))),
            option::of((option::of(text()), option::of(path()))),
            vec(
                (
                    option::of("[a-z][a-z0-9]{0,14}"),
                    vec("[a-z][a-z0-9]{0,14}", 0..2),
                    any::<(bool, bool, bool)>(),
                ),
                nsw..=nsw,
            ),
            vec(vm(nsw), 0..4),
            vec(option::of(size()), 0..3),
            vec(
                (
                    option::of(size()),
                    option::of(1u32..=8),
                    vec(interface(nsw), 0..2),
                    container_files(),
                    any::<bool>(),
                ),
                0..3,
            ),
        )
            .prop_map(
                |(net, (sock, stag), agentx, switches, vms, instances, containers)| {
                    let mut c = Config::default();
                    let (v4, len4, v6) = net;
                    c.globals.local_prefix = Ipv4Prefix {
                        addr: v4.into(),
                        len: len4,
                    };
                    c.globals.local_inet6 = v6.map(|(a, len)| Ipv6Prefix {
                        addr: a.into(),
                        len,
                    });
                    c.globals.socket_owner = sock;
                    c.globals.staggered_start = stag.map(|(parallel, delay_secs)| StaggeredStart {
                        parallel,
                        delay_secs,
                    });
                    c.globals.agentx = agentx.map(|(context, path)| AgentX { context, path });
                    for (i, (iface, members, (locked, up, enabled))) in
                        switches.into_iter().enumerate()
                    {
                        let mut s = SwitchSpec::new(format!("sw{i}"));
                        s.interface = iface;
                        s.members = members;
                        s.locked_lladdr = locked;
                        s.up = up;
                        s.enabled = enabled;
                        c.switches.push(s);
                    }
                    for (i, mut vm) in vms.into_iter().enumerate() {
                        vm.common.name = format!("vm{i}");
                        c.vms.push(vm);
                    }
                    if let Some(first) = c.vms.first_mut() {
                        first.allow_instance = Some(AllowInstance {
                            boot: true,
                            cdrom: true,
                            disk: true,
                            interface: true,
                            memory: true,
                            cpus: true,
                            instance: true,
                            owner: None,
                        });
                        for (i, memory) in instances.into_iter().enumerate() {
                            let mut inst = VmSpec::new(format!("inst{i}"));
                            inst.instance_of = Some("vm0".into());
                            inst.common.memory = memory;
                            c.vms.push(inst);
                        }
                    }
                    for (
                        i,
                        (memory, cpus, interfaces, (files, init, pids, unprivileged), enabled),
                    ) in containers.into_iter().enumerate()
                    {
                        let mut ct = ContainerSpec::new(format!("ct{i}"));
                        match files {
                            Ok(root) => ct.root = Some(root),
                            Err(image) => ct.image = Some(image),
                        }
                        if let Some((program, args)) = init {
                            ct.init.push(program.to_string_lossy().into_owned());
                            ct.init.extend(args);
                        }
                        ct.pids = pids;
                        ct.unprivileged = unprivileged;
                        ct.common.enabled = enabled;
                        ct.common.memory = memory;
                        ct.common.cpus = cpus;
                        ct.common.interfaces = interfaces;
                        c.containers.push(ct);
                    }
                    c
                },
            )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn print_then_parse_is_identity(config in config()) {
        let text = config.to_vm_conf();
        let parsed = parse_str("printed.conf", &text, &LoadOptions::default());
        let (mut again, _) = match parsed {
            Ok(ok) => ok,
            Err(d) => {
                let rendered: String = d.iter().map(|d| d.render()).collect();
                return Err(TestCaseError::fail(format!("{text}\n{rendered}")));
            }
        };
        again.clear_spans();
        prop_assert_eq!(&again, &config, "{}", text);
        // Printing is stable.
        prop_assert_eq!(again.to_vm_conf(), text);
    }

    #[test]
    fn sizes_round_trip(n in any::<u64>()) {
        prop_assert_eq!(parse_size(&ByteSize(n).to_string()), Ok(ByteSize(n)));
    }

    #[test]
    fn container_statements_never_panic(words in vec(prop::sample::select(vec![
        "root", "image", "init", "pids", "unprivileged", "map", "100000", "4294967295", "memory", "cpus", "interface", "local", "boot",
        "\"/r\"", "\"/i.tar.zst\"", "\"r\"", "\"/\"", "/bin/sh", "-c", "$m", "$m\"/x\"", "0", "1",
        "4194305", "{", "}", ";", "\n", "\"\"", "vm", "container", "\"c\"", "\"/a.qcow2\"",
    ]), 0..40)) {
        let text = format!("m=\"/opt a\"\ncontainer \"c\" {{\n{}\n}}\n", words.join(" "));
        match parse_str("vm.conf", &text, &LoadOptions::default()) {
            Ok((c, _)) => {
                let printed = c.to_vm_conf();
                let (mut again, _) = parse_str("p.conf", &printed, &LoadOptions::default())
                    .map_err(|d| TestCaseError::fail(format!("{printed}\n{d:?}")))?;
                let mut c = c;
                c.clear_spans();
                again.clear_spans();
                prop_assert_eq!(again, c);
            }
            Err(d) => {
                for d in d {
                    let _ = d.render();
                }
            }
        }
    }

    #[test]
    fn arbitrary_text_never_panics(text in "[ -~\n\t]{0,200}") {
        if let Err(d) = parse_str("vm.conf", &text, &LoadOptions::default()) {
            for d in d {
                let _ = d.render();
            }
        }
    }
}
