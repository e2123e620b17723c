//! Builds the guest programs in `guest/` with the system C compiler.
//!
//! The guests are freestanding C and GNU assembly (the stable host toolchain
//! has no bare-metal Rust target). Every source file is compiled once to an
//! object in `OUT_DIR/obj`, then each guest is linked from the shared
//! runtime objects plus its own with `guest/link.ld` to `OUT_DIR/<name>.elf`.

use std::env;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;

/// The runtime every guest links: PVH entry, descriptor tables, console, ACPI.
const RUNTIME: &[&str] = &["entry.S", "rt.c", "acpi.c"];

/// Each guest and the sources it adds to the runtime.
const GUESTS: &[(&str, &[&str])] = &[
    ("hello", &["hello.c"]),
    ("user", &["user.c"]),
    ("smp", &["smp.c", "smp_trampoline.S"]),
    ("rtc", &["rtc.c"]),
    ("reset", &["reset.c"]),
    ("triplefault", &["triplefault.c"]),
    ("cpl0loop", &["cpl0loop.c"]),
    ("cmdline", &["cmdline.c"]),
    ("virtio", &["virtio.c"]),
    ("idle", &["idle.c"]),
];

/// Headers and the linker script: a change to any of them rebuilds everything.
const SHARED_INPUTS: &[&str] = &["tg.h", "layout.h", "link.ld"];

const COMPILE_FLAGS: &[&str] = &[
    "-m64",
    "-std=gnu11",
    "-O2",
    "-ffreestanding",
    "-fno-pic",
    "-fno-pie",
    "-fno-stack-protector",
    "-mno-red-zone",
    "-mgeneral-regs-only",
    "-fno-asynchronous-unwind-tables",
    "-fcf-protection=none",
    // Keep GCC from turning the memcpy/memset loops into calls to themselves.
    "-fno-tree-loop-distribute-patterns",
    "-ffunction-sections",
    "-fdata-sections",
    "-Wall",
    "-Wextra",
];

const LINK_FLAGS: &[&str] = &[
    "-m64",
    "-nostdlib",
    "-static",
    "-no-pie",
    "-Wl,--gc-sections",
    "-Wl,--build-id=none",
    "-Wl,-z,max-page-size=0x1000",
    "-Wl,-z,noexecstack",
    "-Wl,--no-warn-rwx-segments",
];

const CC_ENV: &str = "KAPSEL_TESTGUEST_CC";

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let guest_dir = manifest_dir.join("guest");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let obj_dir = out_dir.join("obj");
    std::fs::create_dir_all(&obj_dir).expect("create OUT_DIR/obj");

    println!("cargo:rerun-if-env-changed={CC_ENV}");
    for file in SHARED_INPUTS.iter().chain(RUNTIME) {
        println!("cargo:rerun-if-changed=guest/{file}");
    }
    for (_, sources) in GUESTS {
        for file in *sources {
            println!("cargo:rerun-if-changed=guest/{file}");
        }
    }

    let cc = env::var_os(CC_ENV).unwrap_or_else(|| OsString::from("gcc"));
    check_compiler(&cc);

    let mut sources: Vec<&str> = RUNTIME.to_vec();
    sources.extend(GUESTS.iter().flat_map(|(_, s)| s.iter().copied()));
    thread::scope(|scope| {
        for source in &sources {
            let (cc, guest_dir, obj_dir) = (&cc, &guest_dir, &obj_dir);
            scope.spawn(move || compile(cc, guest_dir, obj_dir, source));
        }
    });

    let script = guest_dir.join("link.ld");
    thread::scope(|scope| {
        for (name, own) in GUESTS {
            let (cc, obj_dir, out_dir, script) = (&cc, &obj_dir, &out_dir, &script);
            scope.spawn(move || {
                let objects = RUNTIME
                    .iter()
                    .chain(own.iter())
                    .map(|s| object_path(obj_dir, s));
                let elf = out_dir.join(format!("{name}.elf"));
                let mut cmd = Command::new(cc);
                cmd.args(LINK_FLAGS)
                    .arg("-Wl,-T")
                    .arg(script)
                    .arg("-o")
                    .arg(&elf)
                    .args(objects);
                run(cmd, &format!("link guest `{name}`"));
            });
        }
    });
}

fn object_path(obj_dir: &Path, source: &str) -> PathBuf {
    obj_dir.join(format!("{source}.o"))
}

fn compile(cc: &OsString, guest_dir: &Path, obj_dir: &Path, source: &str) {
    let mut cmd = Command::new(cc);
    cmd.args(COMPILE_FLAGS)
        .arg("-I")
        .arg(guest_dir)
        .arg("-c")
        .arg(guest_dir.join(source))
        .arg("-o")
        .arg(object_path(obj_dir, source));
    run(cmd, &format!("compile guest/{source}"));
}

fn check_compiler(cc: &OsString) {
    let found = Command::new(cc)
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !found {
        panic!(
            "kapsel-testguest: cannot run the C compiler `{}`: the test guests are \
             freestanding C and assembly built with GCC. Install it (Debian: \
             `apt install gcc`) or point {CC_ENV} at a GCC that targets x86_64.",
            cc.to_string_lossy()
        );
    }
}

/// Runs a compiler step, passing its warnings on and failing the build on error.
fn run(mut cmd: Command, what: &str) {
    let output = cmd
        .output()
        .unwrap_or_else(|e| panic!("kapsel-testguest: {what}: cannot run {cmd:?}: {e}"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        panic!(
            "kapsel-testguest: {what} failed ({}):\n{cmd:?}\n{stderr}",
            output.status
        );
    }
    for line in stderr.lines() {
        println!("cargo:warning={what}: {line}");
    }
}
