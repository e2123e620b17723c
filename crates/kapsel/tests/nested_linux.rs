//! The acceptance test of the machine model: Debian's Linux kernel booted
//! by `kapsel run` to its busybox userspace, inside the nested testbed
//! (scripts/testbed: QEMU TCG with an emulated SVM CPU, real KVM inside).
//!
//! All scenarios run in one outer-VM boot (tests/nested/job.sh); each test
//! below checks one scenario. They run when KAPSEL_NESTED=1 (the README's
//! test command sets it) and print `SKIP: ...` otherwise.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

const KAPSEL: &str = env!("CARGO_BIN_EXE_kapsel");

/// The scenarios tests/nested/job.sh runs, in order; each test checks one.
const SCENARIOS: &[&str] = &[
    "cpus1",
    "cpus2",
    "cpus4",
    "reboot",
    "restart",
    "panic",
    "vmlinux",
    "virtio",
    "net",
    "button",
    "daemon",
    "cgroup2",
    "bios",
    "biosqcow2",
];
const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

struct Scenario {
    log: String,
    err: String,
    exit: i32,
    seen: Option<i64>,
    sandbox: String,
}

struct Batch {
    out: PathBuf,
    scenarios: HashMap<String, Scenario>,
}

type Results = Result<Batch, String>;

fn read(dir: &Path, name: &str, ext: &str) -> String {
    std::fs::read_to_string(dir.join(format!("{name}.{ext}"))).unwrap_or_default()
}

fn run_testbed() -> Results {
    let repo = PathBuf::from(REPO);
    let out = std::env::temp_dir().join(format!("kapsel-nested-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let vmlinux = repo.join(".testbed/l1-vmlinux");
    let images = make_qcow2_images(&out)?;
    let build = Command::new(repo.join("scripts/testbed/build.sh"))
        .status()
        .map_err(|e| format!("scripts/testbed/build.sh: {e}"))?;
    if !build.success() {
        return Err(format!("scripts/testbed/build.sh failed: {build}"));
    }
    // After build.sh: the GRUB disk carries the testbed's L2 kernel.
    make_grub_disk(&repo, &images)?;
    // kapseld's firewall and NAT rules go through nft (Debian: nftables).
    let nft = ["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .ok_or("nft not found (Debian: apt-get install nftables; scripts/setup.sh does)")?;
    // The cgroup2 scenario marks a cgroup delegated as systemd does.
    let setfattr = ["/usr/bin/setfattr", "/bin/setfattr"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .ok_or("setfattr not found (Debian: apt-get install attr; scripts/setup.sh does)")?;
    let status = Command::new(repo.join("scripts/testbed/run.sh"))
        .arg("--kapsel")
        .arg(KAPSEL)
        .arg("--bin")
        .arg(nft)
        .arg("--bin")
        .arg(setfattr)
        .arg("--add")
        .arg(format!("{}:files/vmlinux", vmlinux.display()))
        .arg("--add")
        .arg(format!(
            "{}:files/base.raw",
            images.join("base.raw").display()
        ))
        .arg("--add")
        .arg(format!(
            "{}:files/overlay.qcow2",
            images.join("overlay.qcow2").display()
        ))
        .arg("--add")
        .arg(format!(
            "{}:files/grub.img",
            images.join("grub.img").display()
        ))
        .arg("--add")
        .arg(format!(
            "{}:files/grub.qcow2",
            images.join("grub.qcow2").display()
        ))
        .arg("--add")
        .arg(format!("{SEABIOS}:files/bios-microvm.bin"))
        .arg("--env")
        .arg(format!(
            "KAPSEL_SCENARIOS={}",
            std::env::var("KAPSEL_NESTED_ONLY").unwrap_or_else(|_| SCENARIOS.join(" "))
        ))
        .arg("--out")
        .arg(&out)
        .arg("--timeout")
        .arg("1800")
        .arg("--")
        .arg(repo.join("crates/kapsel/tests/nested/job.sh"))
        .status()
        .map_err(|e| format!("scripts/testbed/run.sh: {e}"))?;
    if !status.success() {
        return Err(format!("the nested testbed failed: {status}"));
    }
    let mut results = HashMap::new();
    for &name in SCENARIOS {
        let exit = read(&out, name, "exit").trim().parse().unwrap_or(-1);
        results.insert(
            name.to_string(),
            Scenario {
                log: read(&out, name, "log"),
                err: read(&out, name, "err"),
                exit,
                seen: read(&out, name, "seen").trim().parse().ok(),
                sandbox: read(&out, name, "sandbox"),
            },
        );
    }
    Ok(Batch {
        out,
        scenarios: results,
    })
}

/// The raw base image's content: 4 MiB of a simple pattern.
fn base_pattern() -> Vec<u8> {
    (0..4u32 << 20).map(|i| (i % 251) as u8).collect()
}

/// A raw base and a qcow2 overlay on it (relative backing name), made with
/// qemu-img beside (not in) the output directory.
fn make_qcow2_images(out: &Path) -> Result<PathBuf, String> {
    let dir = out.with_extension("images");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("base.raw"), base_pattern()).map_err(|e| e.to_string())?;
    let status = Command::new("qemu-img")
        .args([
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "raw",
            "-b",
            "base.raw",
            "overlay.qcow2",
        ])
        .current_dir(&dir)
        .status()
        .map_err(|e| format!("qemu-img (Debian: qemu-utils): {e}"))?;
    if !status.success() {
        return Err(format!("qemu-img create failed: {status}"));
    }
    Ok(dir)
}

/// Debian's SeaBIOS, shipped into L1 for the firmware scenarios.
const SEABIOS: &str = "/usr/share/seabios/bios-microvm.bin";

/// A disk with its own boot loader for the firmware scenarios: GRUB for
/// BIOS (grub-mkrescue's hybrid image, whose MBR boots from a hard disk)
/// with a serial-only menu that boots the testbed's L2 kernel and initrd
/// at once; and the same disk as qcow2. Made from Debian's grub-pc-bin,
/// grub-common, xorriso and mtools (scripts/setup.sh installs them).
fn make_grub_disk(repo: &Path, dir: &Path) -> Result<(), String> {
    let tree = dir.join("grub-tree");
    let boot = tree.join("boot");
    std::fs::create_dir_all(boot.join("grub")).map_err(|e| e.to_string())?;
    for (from, to) in [("l2-vmlinuz", "vmlinuz"), ("l2-initrd.cpio", "initrd")] {
        std::fs::copy(repo.join(".testbed").join(from), boot.join(to))
            .map_err(|e| format!(".testbed/{from}: {e} (scripts/testbed/build.sh makes it)"))?;
    }
    std::fs::write(
        boot.join("grub/grub.cfg"),
        "serial --unit=0 --speed=115200\n\
         terminal_input serial\n\
         terminal_output serial\n\
         set timeout=0\n\
         menuentry kapsel {\n\
         \techo KAPSEL-GRUB-UP\n\
         \tlinux /boot/vmlinuz console=ttyS0 quiet mitigations=off\n\
         \tinitrd /boot/initrd\n\
         }\n",
    )
    .map_err(|e| e.to_string())?;
    let out = Command::new("grub-mkrescue")
        .arg("-o")
        .arg(dir.join("grub.img"))
        .arg(&tree)
        .output()
        .map_err(|e| format!("grub-mkrescue (Debian: grub-common, grub-pc-bin, xorriso): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "grub-mkrescue failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let status = Command::new("qemu-img")
        .args([
            "convert",
            "-q",
            "-f",
            "raw",
            "-O",
            "qcow2",
            "grub.img",
            "grub.qcow2",
        ])
        .current_dir(dir)
        .status()
        .map_err(|e| format!("qemu-img (Debian: qemu-utils): {e}"))?;
    if !status.success() {
        return Err(format!("qemu-img convert failed: {status}"));
    }
    Ok(())
}

/// Runs the testbed once per test process; None when it should not run.
fn results() -> Option<&'static Results> {
    if std::env::var("KAPSEL_NESTED").as_deref() != Ok("1") {
        println!("SKIP: the nested testbed runs with KAPSEL_NESTED=1 (scripts/test.sh sets it)");
        return None;
    }
    static RESULTS: OnceLock<Results> = OnceLock::new();
    Some(RESULTS.get_or_init(run_testbed))
}

fn batch() -> Option<&'static Batch> {
    match results()? {
        Ok(batch) => Some(batch),
        Err(e) => panic!("{e}"),
    }
}

fn scenario(name: &str) -> Option<&'static Scenario> {
    let batch = batch()?;
    match batch.scenarios.get(name) {
        Some(s) => Some(s),
        None => panic!("scenario {name} is not in SCENARIOS"),
    }
}

fn marker<'a>(log: &'a str, key: &str) -> Option<&'a str> {
    log.lines()
        .filter_map(|l| l.trim_end().strip_prefix(key))
        .next()
}

fn check_boot(name: &str, cpus: u32, memory_mib: u64) {
    let Some(s) = scenario(name) else { return };
    assert_eq!(s.exit, 0, "{name}: kapsel failed: {}\n{}", s.err, s.log);
    assert!(s.log.contains("KAPSEL-GUEST-UP"), "{name}: {}", s.log);
    let nproc: u32 = marker(&s.log, "KAPSEL-NPROC=").unwrap().parse().unwrap();
    assert_eq!(nproc, cpus, "{name}");
    let mem_kb: u64 = marker(&s.log, "KAPSEL-MEMTOTAL-KB=")
        .unwrap()
        .parse()
        .unwrap();
    // MemTotal is RAM less what the kernel keeps for itself (its image,
    // page structs): within 25 % below the configured size, never above.
    let configured = memory_mib * 1024;
    assert!(
        mem_kb <= configured && mem_kb * 4 >= configured * 3,
        "{name}: MemTotal {mem_kb} kB for {memory_mib} MiB"
    );
    let epoch: i64 = marker(&s.log, "KAPSEL-EPOCH=").unwrap().parse().unwrap();
    let seen = s.seen.expect("the job saw the clock marker");
    assert!(
        (epoch - seen).abs() <= 5,
        "{name}: guest clock {epoch}, host {seen}"
    );
    assert!(s.log.contains("KAPSEL-TEST=poweroff"), "{name}");
}

#[test]
fn linux_boots_with_one_vcpu() {
    check_boot("cpus1", 1, 256);
}

#[test]
fn linux_boots_with_two_vcpus() {
    check_boot("cpus2", 2, 512);
}

#[test]
fn linux_boots_with_four_vcpus() {
    check_boot("cpus4", 4, 384);
}

#[test]
fn linux_elf_vmlinux_boots_through_pvh() {
    let Some(s) = scenario("vmlinux") else { return };
    assert_eq!(s.exit, 0, "{}\n{}", s.err, s.log);
    assert!(s.log.contains("KAPSEL-GUEST-UP"), "{}", s.log);
    assert_eq!(marker(&s.log, "KAPSEL-NPROC="), Some("1"));
}

#[test]
fn linux_reboot_exits_under_on_reboot_exit() {
    let Some(s) = scenario("reboot") else { return };
    assert_eq!(s.exit, 0, "{}\n{}", s.err, s.log);
    assert!(s.log.contains("KAPSEL-TEST=reboot"), "{}", s.log);
    assert_eq!(s.log.matches("KAPSEL-GUEST-UP").count(), 1);
}

#[test]
fn linux_reboot_restarts_under_on_reboot_restart() {
    let Some(s) = scenario("restart") else { return };
    assert!(
        s.log.matches("KAPSEL-GUEST-UP").count() >= 2,
        "the guest did not come back after its reboot: {}\n{}",
        s.err,
        s.log
    );
}

#[test]
fn linux_kernel_panic_is_a_failure() {
    let Some(s) = scenario("panic") else { return };
    assert_ne!(s.exit, 0, "{}", s.log);
    assert!(s.err.contains("panicked"), "stderr: {}", s.err);
    assert!(s.log.contains("KAPSEL-TEST=badinit"), "{}", s.log);
}

fn md5_of(path: &Path, skip: u64, len: u64) -> String {
    let bytes = std::fs::read(path).unwrap();
    let end = (skip + len).min(bytes.len() as u64) as usize;
    let mut child = Command::new("md5sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&bytes[skip as usize..end])
        .unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn linux_sees_virtio_disks_and_writes_reach_the_host() {
    let Some(s) = scenario("virtio") else { return };
    let out = &batch().unwrap().out;
    assert_eq!(s.exit, 0, "{}\n{}", s.err, s.log);
    let disks: Vec<&str> = s
        .log
        .lines()
        .filter_map(|l| l.trim_end().strip_prefix("KAPSEL-DISK="))
        .collect();
    assert_eq!(
        disks,
        [
            "vda size=8192 ro=0 serial=kapsel-vda",
            "vdb size=8192 ro=0 serial=",
            "vdc size=2048 ro=1 serial=ro-disk",
            "vdd size=8192 ro=0 serial="
        ],
        "{}",
        s.log
    );
    // The guest read vda exactly as the host wrote it.
    let vda = md5_of(&out.join("vda.img"), 0, 4 << 20);
    assert_eq!(marker(&s.log, "KAPSEL-VDA-MD5="), Some(vda.as_str()));
    // What the guest wrote to vdb is in the host's file, byte for byte.
    let wrote = marker(&s.log, "KAPSEL-VDB-WROTE-MD5=").expect("vdb written");
    assert_eq!(md5_of(&out.join("vdb.img"), 1 << 20, 1 << 20), wrote);
    assert_eq!(marker(&s.log, "KAPSEL-VDB-READBACK-MD5="), Some(wrote));
    assert_eq!(
        std::fs::metadata(out.join("vdb.img")).unwrap().len(),
        4 << 20
    );
    // The read-only disk refused the write and is unchanged.
    assert_eq!(marker(&s.log, "KAPSEL-RO-WRITE="), Some("refused"));
    assert!(std::fs::read(out.join("vdc.img"))
        .unwrap()
        .iter()
        .all(|b| *b == 0));
    assert_eq!(marker(&s.log, "KAPSEL-RNG="), Some("virtio_rng.0"));
    assert_eq!(marker(&s.log, "KAPSEL-RNG-BYTES="), Some("32"));
    // hvc0: the guest's output reached kapsel's stdout, the typed line the guest.
    let hvc = std::fs::read_to_string(out.join("virtio.hvc")).unwrap_or_default();
    assert!(hvc.contains("KAPSEL-HVC-HELLO"), "hvc0 output: {hvc:?}");
    assert_eq!(
        marker(&s.log, "KAPSEL-HVC-IN="),
        Some("typed-on-hvc0"),
        "{}",
        s.log
    );
}

#[test]
fn linux_talks_to_the_host_over_virtio_net_on_a_tap() {
    let Some(s) = scenario("net") else { return };
    let out = &batch().unwrap().out;
    assert_eq!(s.exit, 0, "{}\n{}", s.err, s.log);
    assert_eq!(marker(&s.log, "KAPSEL-NET-MAC="), Some("52:54:00:12:34:56"));
    assert_eq!(marker(&s.log, "KAPSEL-PING="), Some("ok"), "{}", s.log);
    // 100 MiB over HTTP, checksummed on both ends.
    let sent = std::fs::read_to_string(out.join("net.md5")).unwrap();
    assert_eq!(
        marker(&s.log, "KAPSEL-NET-RX-MD5="),
        Some(sent.trim()),
        "{}",
        s.log
    );
}

#[test]
fn linux_writes_a_qcow2_overlay_that_qemu_img_accepts() {
    let Some(s) = scenario("virtio") else { return };
    let out = &batch().unwrap().out;
    assert_eq!(s.exit, 0, "{}\n{}", s.err, s.log);
    // The guest read the raw base through the overlay.
    let base = out.join("base.raw");
    assert_eq!(
        marker(&s.log, "KAPSEL-VDD-MD5="),
        Some(md5_of(&base, 0, 4 << 20).as_str()),
        "{}",
        s.log
    );
    // The base is untouched; the overlay is a clean qcow2 holding the write.
    assert_eq!(std::fs::read(&base).unwrap(), base_pattern());
    let overlay = out.join("overlay.qcow2");
    let check = Command::new("qemu-img")
        .args(["check", "-q"])
        .arg(&overlay)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "qemu-img check: {}",
        String::from_utf8_lossy(&check.stdout)
    );
    let flat = out.join("overlay.raw");
    let convert = Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(&overlay)
        .arg(&flat)
        .status()
        .unwrap();
    assert!(convert.success());
    let wrote = marker(&s.log, "KAPSEL-VDD-WROTE-MD5=").expect("vdd written");
    assert_eq!(md5_of(&flat, 2 << 20, 1 << 20), wrote);
    assert_eq!(md5_of(&flat, 0, 2 << 20), md5_of(&base, 0, 2 << 20));
}

#[test]
fn sigterm_presses_the_acpi_power_button_and_linux_powers_off() {
    let Some(s) = scenario("button") else { return };
    assert!(s.log.contains("KAPSEL-BUTTON-READY"), "{}", s.log);
    assert!(
        s.log.contains("KAPSEL-POWER-BUTTON"),
        "{}\n{}",
        s.err,
        s.log
    );
    assert!(
        s.err.contains("pressing the guest's ACPI power button"),
        "{}",
        s.err
    );
    assert_eq!(
        s.exit, 0,
        "a guest that powers off on the button exits 0: {}",
        s.err
    );
}

#[test]
fn every_scenario_ran_in_the_sandbox() {
    // cgroup2 runs containers, not VMs.
    for &name in SCENARIOS.iter().filter(|&&n| n != "cgroup2") {
        let Some(s) = scenario(name) else { return };
        let field = |key: &str| {
            s.sandbox
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .map(str::trim)
                .unwrap_or_else(|| panic!("{name}: no {key} in {:?}", s.sandbox))
                .to_string()
        };
        assert_eq!(field("Seccomp:"), "2", "{name}");
        assert_eq!(field("NoNewPrivs:"), "1", "{name}");
        assert_eq!(field("CapEff:"), "0000000000000000", "{name}");
        assert_eq!(field("CapBnd:"), "0000000000000000", "{name}");
    }
}

/// A file of the daemon scenario in the output directory.
fn daemon_file(name: &str) -> String {
    std::fs::read_to_string(batch().unwrap().out.join(name)).unwrap_or_default()
}

/// One guest of the daemon scenario: its console (replayed by `kapsel
/// console` after it stopped), after checking that `kapsel wait` saw it
/// power off by itself.
fn daemon_guest(s: &Scenario, name: &str) -> String {
    let console = daemon_file(&format!("daemon-{name}.console"));
    let wait = daemon_file(&format!("daemon-{name}.wait"));
    assert_eq!(
        wait.trim(),
        format!("vm {name} stopped: powered off"),
        "daemon log:\n{}\nVM stderr:\n{}\nconsole:\n{console}",
        s.err,
        daemon_file("daemon.vmerr")
    );
    assert!(console.contains("KAPSEL-GUEST-UP"), "{name}: {console}");
    console
}

#[test]
fn kapseld_local_interface_gives_linux_its_address_by_dhcp() {
    let Some(s) = scenario("daemon") else { return };
    let log = daemon_guest(s, "dhcp");
    // vm "dhcp" is the first VM of the vm.conf, so its id is 1; its only
    // interface is 0. vmd's scheme (vm_priv_addr) gives the /31 at offset
    // 1 << 8 | (0 + 1) * 2 of 100.64.0.0/10: the host 100.64.1.2, the
    // guest 100.64.1.3; net::LocalLink computes the same.
    let link =
        kapsel_daemon::net::LocalLink::new(kapsel_config::Ipv4Prefix::default(), 1, 0).unwrap();
    assert_eq!(link.gateway.to_string(), "100.64.1.2");
    assert_eq!(link.guest.to_string(), "100.64.1.3");
    assert_eq!(marker(&log, "KAPSEL-DHCP-IP="), Some("100.64.1.3"), "{log}");
    assert_eq!(marker(&log, "KAPSEL-DHCP-MASK="), Some("255.255.255.254"));
    assert_eq!(marker(&log, "KAPSEL-DHCP-ROUTER="), Some("100.64.1.2"));
    // The outer VM has no /etc/resolv.conf: the host side is offered.
    assert_eq!(marker(&log, "KAPSEL-DHCP-DNS="), Some("100.64.1.2"));
    assert_eq!(marker(&log, "KAPSEL-DHCP-HOSTNAME="), Some("dhcp"));
    assert_eq!(marker(&log, "KAPSEL-DHCP-LEASE="), Some("86400"));
    // The guest applied the lease, and its MAC is the one the daemon
    // derived for it (and logged with the tap).
    assert_eq!(marker(&log, "KAPSEL-DHCP-ADDR="), Some("100.64.1.3/31"));
    let mac = kapsel_daemon::net::guest_mac("dhcp", 0, &Default::default()).to_string();
    assert_eq!(marker(&log, "KAPSEL-NET-MAC="), Some(mac.as_str()));
    assert!(
        s.err.contains(&format!("dhcp: interface ktap1-0 ({mac})")),
        "{}",
        s.err
    );
}

#[test]
fn kapseld_local_interface_guest_reaches_the_host() {
    let Some(s) = scenario("daemon") else { return };
    let log = daemon_guest(s, "dhcp");
    assert_eq!(marker(&log, "KAPSEL-PING="), Some("ok"), "{log}");
}

#[test]
fn kapseld_switch_carries_traffic_between_two_linux_guests() {
    let Some(s) = scenario("daemon") else { return };
    let a = daemon_guest(s, "switch-a");
    let b = daemon_guest(s, "switch-b");
    assert_eq!(marker(&a, "KAPSEL-PING="), Some("ok"), "{a}");
    assert_eq!(marker(&b, "KAPSEL-PING="), Some("ok"), "{b}");
    let (a_mac, b_mac) = (marker(&a, "KAPSEL-NET-MAC="), marker(&b, "KAPSEL-NET-MAC="));
    assert!(a_mac.is_some() && a_mac != b_mac, "{a_mac:?} {b_mac:?}");
    // 1 MiB of random data each way (HTTP from a to b, nc from b to a).
    let md5 = |log: &str, key: &str| marker(log, key).unwrap_or("").to_string();
    let (a_tx, b_tx) = (
        md5(&a, "KAPSEL-SWITCH-TX-MD5="),
        md5(&b, "KAPSEL-SWITCH-TX-MD5="),
    );
    assert_eq!(a_tx.len(), 32, "{a}");
    assert_eq!(b_tx.len(), 32, "{b}");
    assert_ne!(a_tx, b_tx);
    assert_eq!(md5(&b, "KAPSEL-SWITCH-RX-MD5="), a_tx, "a -> b\n{a}\n{b}");
    assert_eq!(md5(&a, "KAPSEL-SWITCH-RX-MD5="), b_tx, "b -> a\n{a}\n{b}");
}

/// kill -9 of kapseld while three Linux guests boot (one getting its
/// address by DHCP, two talking over a switch): a new kapseld adopts all
/// three with the same pids, and the scenario's checks above (DHCP, the
/// switch, `wait`, the consoles replayed from the guests' monitors) ran
/// under the new daemon.
#[test]
fn kapseld_adopts_linux_guests_after_kill_9() {
    let Some(s) = scenario("daemon") else { return };
    let adopt = daemon_file("daemon.adopt");
    assert!(adopt.contains("adopted: yes"), "{adopt}\n{}", s.err);
    let before = adopt.lines().next().unwrap_or_default();
    for name in ["dhcp", "switch-a", "switch-b"] {
        assert!(before.contains(name), "{adopt}");
    }
}

#[test]
fn kapseld_leaves_no_links_or_rules_behind() {
    let Some(s) = scenario("daemon") else { return };
    assert_eq!(s.exit, 0, "kapseld after SIGTERM: {}", s.err);
    // While the VMs ran: the three taps, the switch's bridge, the NAT table
    // and the tables locking the guests' MACs (switch and local interface).
    let during = daemon_file("daemon.during");
    for name in ["ktap1-0", "ktap2-0", "ktap3-0", "kbr-lan"] {
        assert!(during.lines().any(|l| l == name), "{name}: {during}");
    }
    for table in [
        "table ip kapsel-nat",
        "table ip kapsel",
        "table bridge kapsel",
    ] {
        assert!(during.lines().any(|l| l == table), "{table}: {during}");
    }
    // After the daemon stopped: none of them, and no table of Kapsel's.
    let after = daemon_file("daemon.after");
    assert!(
        after.contains("# links") && after.contains("# nft"),
        "{after}"
    );
    for l in after.lines() {
        assert!(
            !l.starts_with("ktap") && !l.starts_with("kbr-") && !l.contains("kapsel"),
            "left behind: {l}\n{after}"
        );
    }
}

/// The cgroup2 scenario's KEY=VALUE results (tests/nested/job.sh).
fn cgroup2_results() -> Option<(&'static Scenario, HashMap<String, String>)> {
    let s = scenario("cgroup2")?;
    let values = s
        .log
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect();
    Some((s, values))
}

/// On a pure cgroup v2 host (L1 with cgroup2 alone, every controller in
/// the root's subtree_control): `kapsel run-container` from the root
/// cgroup and a vm.conf container of kapseld in a delegated service
/// cgroup get their limits enforced, pause through cgroup.freeze, and
/// leave nothing behind.
#[test]
fn containers_on_a_pure_cgroup_v2_host() {
    let Some((s, v)) = cgroup2_results() else {
        return;
    };
    let get = |key: &str| v.get(key).map(String::as_str).unwrap_or("<missing>");
    let ctx = || format!("results:\n{}\nstderr:\n{}", s.log, s.err);
    assert_eq!(s.exit, 0, "the scenario did not finish: {}", ctx());
    let expect = |key: &str, want: &str| assert_eq!(get(key), want, "{key}: {}", ctx());
    // L1 is a pure v2 host.
    expect("V1_MOUNTS", "0");
    expect("V2_MOUNTS", "1");
    // On a fresh hierarchy Kapsel enabled the controllers itself, in the
    // root and in kapsel/.
    expect("BARE_SUBTREE", "");
    expect("BARE_EXIT", "0");
    expect("BARE_MEMORY_MAX", &(16u64 << 20).to_string());
    expect("BARE_PIDS_MAX", "24");
    expect("BARE_CPU_MAX", "50000 100000");
    for c in ["cpu", "io", "memory", "pids"] {
        for key in ["BARE_ROOT_SUBTREE", "BARE_KAPSEL_SUBTREE"] {
            assert!(get(key).split(' ').any(|h| h == c), "{key} {c}: {}", ctx());
        }
    }
    for c in ["cpu", "io", "memory", "pids"] {
        assert!(
            get("ROOT_SUBTREE").split(' ').any(|h| h == c),
            "{c}: {}",
            ctx()
        );
    }
    // run-container: limits as the container sees them in its cgroup
    // namespace, an allocation past memory OOM-killed (SIGKILL: 137),
    // forks stopped at pids, the CPU quota throttling a busy loop.
    expect("RUN_EXIT", "0");
    expect("RUN_DONE", "1");
    expect("RUN_CGROUP", "/");
    expect("RUN_MEMORY_MAX", &(16u64 << 20).to_string());
    expect("RUN_SWAP_MAX", "0");
    expect("RUN_PIDS_MAX", "24");
    expect("RUN_CPU_MAX", "50000 100000");
    expect("RUN_ALLOC_EXIT", "137");
    expect("RUN_OOM_KILL", "1");
    expect("RUN_PIDS_CURRENT", "24");
    let forked: u32 = get("RUN_FORKED").parse().unwrap_or(0);
    assert!((1..100).contains(&forked), "forks: {}", ctx());
    assert_ne!(get("RUN_PIDS_EVENTS_MAX"), "0", "{}", ctx());
    let throttled: u64 = get("RUN_THROTTLED").parse().unwrap_or(0);
    assert!(throttled > 0, "no throttling at cpus 0.5: {}", ctx());
    expect("RUN_LEFT", "");
    // kapseld in system.slice/kapseld.service (trusted.delegate=1): it
    // moved itself to a leaf and put the container below its own group,
    // with the controllers enabled there.
    expect("DAEMON_CGROUP", "/system.slice/kapseld.service/supervisor");
    expect("WEB_CGROUP", "/system.slice/kapseld.service/kapsel/web");
    expect("SVC_PROCS", "0");
    for c in ["cpu", "io", "memory", "pids"] {
        assert!(
            get("SVC_SUBTREE").split(' ').any(|h| h == c),
            "{c}: {}",
            ctx()
        );
    }
    expect("WEB_MEMORY_MAX", &(16u64 << 20).to_string());
    expect("WEB_PIDS_MAX", "24");
    expect("WEB_CPU_MAX", "100000 100000");
    expect("EXEC_CGROUP", "/");
    expect("EXEC_MEMORY_MAX", &(16u64 << 20).to_string());
    expect("EXEC_ALLOC_EXIT", "137");
    expect("WEB_OOM_KILL", "1");
    // The OOM kill took the exec'd process, not the container or kapseld.
    expect("WEB_AFTER_OOM", "running");
    let forked: u32 = get("EXEC_FORKED").parse().unwrap_or(0);
    assert!((1..100).contains(&forked), "forks: {}", ctx());
    assert_ne!(get("WEB_PIDS_EVENTS_MAX"), "0", "{}", ctx());
    // pause and unpause through cgroup.freeze.
    expect("PAUSED_FREEZE", "1");
    expect("PAUSED_EVENTS", "frozen 1");
    expect("PAUSED_STATE", "paused");
    expect("UNPAUSED_EVENTS", "frozen 0");
    // stop: a clean power-off; nothing left.
    expect("STOP", "container web stopped: exited (status 0)");
    expect("WEB_LEFT", "");
    expect("MOUNTS_LEFT", "0");
    expect("DAEMON_EXIT", "0");
    let tree = get("TREE_LEFT");
    assert!(
        tree.split_whitespace()
            .all(|d| d == "./supervisor" || d == "./kapsel"),
        "left in kapseld.service: {tree}\n{}",
        ctx()
    );
    expect("ROOT_LEFT", "");
}

/// A disk with its own boot loader boots through SeaBIOS (no --kernel):
/// the firmware's and GRUB's output reach the serial console, GRUB loads
/// Linux from the disk through the firmware's virtio-blk driver, the guest
/// reaches userspace and powers off.
fn check_bios(name: &str) {
    let Some(s) = scenario(name) else { return };
    assert_eq!(s.exit, 0, "{name}: kapsel failed: {}\n{}", s.err, s.log);
    for want in ["SeaBIOS (version", "KAPSEL-GRUB-UP", "KAPSEL-GUEST-UP"] {
        assert!(s.log.contains(want), "{name}: no {want} in\n{}", s.log);
    }
    let nproc: u32 = marker(&s.log, "KAPSEL-NPROC=").unwrap().parse().unwrap();
    assert_eq!(nproc, 2, "{name}: both vCPUs came up through the firmware");
}

#[test]
fn a_grub_disk_boots_through_seabios() {
    check_bios("bios");
}

#[test]
fn a_grub_qcow2_disk_boots_through_seabios() {
    check_bios("biosqcow2");
}
