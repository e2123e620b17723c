//! The attacker is a local user (`kapsel-test-owner`) allowed to make
//! instances of a template: the paths it names, the instances it makes and
//! the configuration root removes must not give it more than that.

use crate::common::kapseld::{idle_vm, out, owner_tests_ready, Kapseld, KAPSEL};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// The daemon's CLI as the test user.
fn as_user(d: &Kapseld, (uid, gid): (u32, u32), args: &[&str]) -> (i32, String, String) {
    let mut c = d.cmd(args);
    c.uid(uid).gid(gid);
    out(c.output().unwrap())
}

/// Waits up to 10 s for `name` to stop; its last exit, or None if it is
/// still running then.
fn stopped_with(d: &Kapseld, name: &str) -> Option<String> {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let vm = d.vm(name);
        if vm["state"] == "stopped" {
            return Some(vm["last_exit"].as_str().unwrap_or_default().to_string());
        }
        if Instant::now() > until {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `start` as the user must not run the VM: refused at once, or its
/// process ends with the permission error (that names the user) before
/// the guest runs. Returns what went wrong instead.
fn refused(d: &Kapseld, user: (u32, u32), args: &[&str], name: &str, want: &str) -> Option<String> {
    let (code, said, err) = as_user(d, user, args);
    if code != 0 {
        println!("{args:?}: {err}");
        return (!(err.contains(want) && err.contains("kapsel-test-owner")))
            .then(|| format!("{args:?}: {err}"));
    }
    match stopped_with(d, name) {
        Some(exit) => {
            println!("{args:?}: started, then {exit}");
            (!(exit.contains(want) && exit.contains("kapsel-test-owner")))
                .then(|| format!("{args:?}: {exit}"))
        }
        None => Some(format!(
            "{args:?} ({}): the VM process (root) opened a file the user may not open, \
             and the guest runs on it",
            said.trim()
        )),
    }
}

fn write_mode(path: &Path, data: &[u8], mode: u32) {
    std::fs::write(path, data).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn chown(path: &Path, (uid, gid): (u32, u32)) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
}

/// Finding 1: the disks, kernel and backing files a user names are
/// opened with the user's rights, not the VM process's (root's).
#[test]
fn a_user_cannot_have_root_open_files_the_user_may_not_open() {
    let Some(user) = owner_tests_ready() else {
        return;
    };
    let d = Kapseld::start(&idle_vm(
        "tmpl",
        "\tdisable\n\tallow instance { boot, disk, owner kapsel-test-owner }\n",
    ));
    // Root's: a 0700 directory with a 0600 disk and kernel.
    let secret = d.dir.join("root-only");
    std::fs::create_dir(&secret).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o700)).unwrap();
    let disk = secret.join("disk.img");
    write_mode(&disk, &vec![0xaa; 1 << 20], 0o600);
    let kernel = secret.join("vmlinuz");
    write_mode(
        &kernel,
        &std::fs::read(kapsel_testguest::IDLE).unwrap(),
        0o600,
    );
    let base = secret.join("base.img");
    write_mode(&base, &vec![0x55; 1 << 20], 0o600);
    let before = std::fs::metadata(&disk).unwrap();
    // The user's: a directory with its own disk and a qcow2 overlay whose
    // backing file is root's base.img.
    let home = d.dir.join("home");
    std::fs::create_dir(&home).unwrap();
    chown(&home, user);
    let own = home.join("own.img");
    write_mode(&own, &vec![0; 1 << 20], 0o600);
    chown(&own, user);
    let overlay = home.join("overlay.qcow2");
    let made = Command::new(KAPSEL)
        .args(["create", "-b"])
        .arg(&base)
        .arg(&overlay)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    chown(&overlay, user);

    let s = |p: &Path| p.to_str().unwrap().to_string();
    let (disk_s, kernel_s, overlay_s, own_s) = (s(&disk), s(&kernel), s(&overlay), s(&own));
    let failures: Vec<String> = [
        (
            ["start", "-t", "tmpl", "-d", &disk_s, "i-disk"],
            "permission denied",
        ),
        (
            ["start", "-t", "tmpl", "-b", &kernel_s, "i-kernel"],
            "permission denied",
        ),
        (
            ["start", "-t", "tmpl", "-d", &overlay_s, "i-backing"],
            "backing file",
        ),
    ]
    .iter()
    .filter_map(|(args, want)| refused(&d, user, args, args[5], want))
    .collect();
    assert!(failures.is_empty(), "{}\n{}", failures.join("\n"), d.log());
    let after = std::fs::metadata(&disk).unwrap();
    assert_eq!(
        (before.mtime(), before.mtime_nsec(), before.size()),
        (after.mtime(), after.mtime_nsec(), after.size())
    );
    assert_eq!(std::fs::read(&disk).unwrap(), vec![0xaa; 1 << 20]);
    // The user's own disk still works, and the template's kernel (root's,
    // from vm.conf) is still opened as root.
    let (code, _, err) = as_user(&d, user, &["start", "-t", "tmpl", "-d", &own_s, "i-own"]);
    assert_eq!(code, 0, "{err}");
    d.wait_state("i-own", "running");
    let (code, _, err) = as_user(&d, user, &["stop", "-w", "i-own"]);
    assert_eq!(code, 0, "{err}");
    // Restarts keep the user's rights.
    std::fs::set_permissions(&own, std::fs::Permissions::from_mode(0o400)).unwrap();
    let (code, said, err) = as_user(&d, user, &["start", "i-own"]);
    if code == 0 {
        let exit = stopped_with(&d, "i-own")
            .unwrap_or_else(|| panic!("{said}: a restart opened a read-only disk for writing"));
        assert!(exit.contains("permission denied"), "{exit}");
    } else {
        assert!(err.contains("permission denied"), "{err}");
    }
}

/// A template whose kernel does not exist: every instance fails at once,
/// so that many of them cost nothing.
const FAILING_TEMPLATE: &str = "vm \"tmpl\" {\n\tdisable\n\tboot \"/nonexistent/vmlinuz\"\n\
                                \tmemory 64M\n\tallow instance { owner kapsel-test-owner }\n}\n";

/// Finding 9: an instance of an instance needs `instance` in the allow
/// list it inherits.
#[test]
fn instances_of_instances_need_instance_in_the_allow_list() {
    let Some(user) = owner_tests_ready() else {
        return;
    };
    let d = Kapseld::start(&idle_vm(
        "tmpl",
        "\tdisable\n\tallow instance { owner kapsel-test-owner }\n",
    ));
    let (code, _, err) = as_user(&d, user, &["start", "-t", "tmpl", "first"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = as_user(&d, user, &["start", "-t", "first", "second"]);
    assert_eq!(
        code, 1,
        "an instance of an instance without `instance`: {err}"
    );
    assert!(err.contains("does not allow instances of its own"), "{err}");
}

/// Finding 9: one user cannot make instances without end.
#[test]
fn a_user_may_make_a_bounded_number_of_instances() {
    let Some(user) = owner_tests_ready() else {
        return;
    };
    let d = Kapseld::start(FAILING_TEMPLATE);
    let mut made = 0;
    let limit = loop {
        let name = format!("many{made}");
        let (code, _, err) = as_user(&d, user, &["start", "-t", "tmpl", &name]);
        if err.contains("the most one user may have") {
            break made;
        }
        // Made, and its VM process failed at once.
        assert!(code == 0 || err.contains("could not start"), "{err}");
        made += 1;
        assert!(made <= 64, "{made} instances and no limit");
    };
    assert_eq!(limit, kapsel_daemon::daemon::MAX_INSTANCES_PER_USER);
    // Root is not limited.
    let (_, _, err) = d.run(&["start", "-t", "tmpl", "roots"]);
    assert!(err.is_empty() || err.contains("could not start"), "{err}");
}

/// Finding 12: a guest removed from vm.conf is gone once it stops.
#[test]
fn a_vm_removed_from_the_configuration_cannot_be_started_again() {
    let Some(user) = owner_tests_ready() else {
        return;
    };
    let d = Kapseld::start(&format!(
        "{}{}",
        idle_vm("gone", "\towner kapsel-test-owner\n"),
        idle_vm("stays", "\tdisable\n")
    ));
    d.wait_state("gone", "running");
    std::fs::write(d.dir.join("vm.conf"), idle_vm("stays", "\tdisable\n")).unwrap();
    d.ok(&["reload"]);
    d.ok(&["stop", "-w", "gone"]);
    let (code, _, err) = as_user(&d, user, &["start", "gone"]);
    assert_eq!(code, 1, "the removed VM started again: {err}");
    assert!(err.contains("removed from the configuration"), "{err}");
    let (code, _, err) = d.run(&["start", "gone"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("removed from the configuration"), "{err}");
    assert!(
        d.status().iter().all(|v| v["name"] != "gone"),
        "{:?}",
        d.status()
    );
}

/// Finding 12: `kapsel load FILE` checks FILE with vm.conf, so a VM of
/// FILE may be an instance of a template in vm.conf, and its errors name
/// FILE and the line.
#[test]
fn load_reads_the_file_with_the_main_configuration() {
    if owner_tests_ready().is_none() {
        return;
    }
    let d = Kapseld::start(&idle_vm("tmpl", "\tdisable\n\tallow instance { memory }\n"));
    let extra = d.dir.join("extra.conf");
    std::fs::write(&extra, "vm \"tmpl\" instance \"child\" {\n\tdisable\n}\n").unwrap();
    let (code, _, err) = d.run(&["load", extra.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(d.vm("child")["state"], "stopped");
    let bad = d.dir.join("bad.conf");
    std::fs::write(
        &bad,
        "vm \"tmpl\" instance \"other\" {\n\tdisable\n\tcpus 2\n}\n",
    )
    .unwrap();
    let (code, _, err) = d.run(&["load", bad.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("bad.conf:3"), "{err}");
}

/// Finding 12: a refusal about a container calls it a container.
#[test]
fn refusals_name_containers_as_containers() {
    let Some(user) = owner_tests_ready() else {
        return;
    };
    let root = std::env::temp_dir().join("kapsel-user-paths-ct");
    let _ = std::fs::create_dir_all(&root);
    let d = Kapseld::start(&format!(
        "container \"box\" {{\n\tdisable\n\troot \"{}\"\n}}\n",
        root.display()
    ));
    let (code, _, err) = as_user(&d, user, &["start", "box"]);
    assert_eq!(code, 1);
    assert!(err.contains("may not start container box"), "{err}");
}
