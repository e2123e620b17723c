//! Finding 3: a qcow2 image must survive its VM process being killed.
//!
//! The attacker (or just the OOM killer, a host crash, `kill -9`) ends the
//! VM process at any point of a guest's writes or flushes. Afterwards
//! `qemu-img check` must find no error (leaked clusters are allowed: "waste
//! of disk space, but no harm to data", as after a QEMU crash), every block
//! the guest saw a FLUSH complete for must hold what it wrote, no block may
//! hold anything the guest did not write, and the next run must read back
//! exactly what it writes (a cluster referenced by a table but left with
//! refcount 0 is handed out again and overwrites that table, or data).
//!
//! Three images: a plain one made by `kapsel create`, an overlay on a raw
//! base of known content, and one with 4 KiB clusters (made by `qemu-img`)
//! whose writes allocate L2 tables and refcount blocks all along. Each gets
//! a few kills, at random times or right as the guest issues a FLUSH; with
//! `KAPSEL_SOAK=N` each gets N. The random seed is printed
//! (`KAPSEL_SOAK_SEED` repeats a run).

use crate::common;
use kapsel_testguest::virtio;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// The disk's size; the guest writes its first [`WRITE_MIB`].
const DISK_BYTES: u64 = 32 << 20;
const WRITE_MIB: u64 = 4;
/// The raw base of the overlay holds this generation of the pattern.
const BASE_GEN: u64 = 0x7e;
/// A FLUSH after this many batches of 64 requests (`blk-flush=`).
const FLUSH_EVERY: u64 = 2;
/// An upper bound for one VM run.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// xorshift64*: enough randomness to spread the kills.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    /// `kapsel create -s`.
    Plain,
    /// `kapsel create -b base.raw`, the base holding [`BASE_GEN`].
    Overlay,
    /// `qemu-img create -o cluster_size=4096`.
    SmallClusters,
}

struct Case {
    kind: Kind,
    dir: PathBuf,
    image: PathBuf,
    /// What the guest sees before it writes anything.
    initial: Vec<u8>,
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn pattern_block(block: u64, gen: u64) -> Vec<u8> {
    let words = virtio::BLOCK / 8;
    (block * words..(block + 1) * words)
        .flat_map(|w| virtio::pattern(w, gen).to_le_bytes())
        .collect()
}

impl Case {
    fn new(kind: Kind, root: &Path) -> Case {
        let dir = root.join(format!("{kind:?}"));
        std::fs::create_dir_all(&dir).unwrap();
        let image = dir.join("disk.qcow2");
        let initial = match kind {
            Kind::Overlay => (0..DISK_BYTES / virtio::BLOCK)
                .flat_map(|b| pattern_block(b, BASE_GEN))
                .collect(),
            _ => vec![0; DISK_BYTES as usize],
        };
        if kind == Kind::Overlay {
            std::fs::write(dir.join("base.raw"), &initial).unwrap();
        }
        Case {
            kind,
            dir,
            image,
            initial,
        }
    }

    /// A new image, as the guest has never seen it.
    fn fresh(&self) {
        let _ = std::fs::remove_file(&self.image);
        let image = self.image.to_str().unwrap();
        match self.kind {
            Kind::Plain => run_ok(Command::new(env!("CARGO_BIN_EXE_kapsel")).args([
                "create",
                "-s",
                &DISK_BYTES.to_string(),
                image,
            ])),
            Kind::Overlay => run_ok(
                Command::new(env!("CARGO_BIN_EXE_kapsel"))
                    .args(["create", "-b", "base.raw", image])
                    .current_dir(&self.dir),
            ),
            Kind::SmallClusters => run_ok(Command::new("qemu-img").args([
                "create",
                "-q",
                "-f",
                "qcow2",
                "-o",
                "cluster_size=4096",
                image,
                &DISK_BYTES.to_string(),
            ])),
        };
    }

    /// `qemu-img check`: no error; leaked clusters are allowed (exit 3).
    fn check(&self, what: &str) {
        let out = Command::new("qemu-img")
            .args(["check", "-f", "qcow2"])
            .arg(&self.image)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            matches!(out.status.code(), Some(0) | Some(3)) && !text.contains("ERROR"),
            "{:?} image {what}: qemu-img check: {}\n{text}",
            self.kind,
            out.status
        );
    }

    /// The guest's view of the disk, read by QEMU's code.
    fn contents(&self) -> Vec<u8> {
        let raw = self.dir.join("contents.raw");
        let _ = std::fs::remove_file(&raw);
        run_ok(
            Command::new("qemu-img")
                .args(["convert", "-f", "qcow2", "-O", "raw"])
                .arg(&self.image)
                .arg(&raw),
        );
        let data = std::fs::read(&raw).unwrap();
        let _ = std::fs::remove_file(&raw);
        assert_eq!(data.len() as u64, DISK_BYTES, "the disk changed size");
        data
    }
}

/// Start of the line the guest prints right before it starts writing.
const BLK_DEV: &str = "kapsel-testguest: blk dev=";

/// What the killed run printed that matters.
#[derive(Debug, Default)]
struct Seen {
    /// Per pass (0 write, 1 mixed): blocks below this were flushed.
    flushed: [u64; 2],
    completed: bool,
    /// From the guest's first write to the end of its output.
    writing: Option<Duration>,
    output: Vec<String>,
}

fn parse_pass_upto(rest: &str) -> Option<(usize, u64)> {
    let mut it = rest.split_whitespace();
    let pass = it.next()?.strip_prefix("pass=")?.parse().ok()?;
    let upto = it.next()?.strip_prefix("upto=")?.parse().ok()?;
    Some((pass, upto))
}

fn guest(case: &Case, cmdline: &str) -> Command {
    let mut cmd = common::kapsel_run(kapsel_testguest::VIRTIO);
    cmd.arg("--disk")
        .arg(&case.image)
        .args(["--cmdline", cmdline])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    cmd
}

/// Runs the guest's write test and SIGKILLs the VM process `delay` after
/// the guest starts writing, or, with `on_flush = Some(k)`, when the guest
/// announces its k-th FLUSH (plus up to half a millisecond), so that the
/// kill lands inside the flush.
fn killed_run(case: &Case, delay: Duration, on_flush: Option<u64>, jitter_us: u64) -> Seen {
    let cmdline = if on_flush.is_some() {
        format!("blk blk-mib={WRITE_MIB} blk-flush={FLUSH_EVERY}")
    } else {
        format!("blk blk-mib={WRITE_MIB}")
    };
    let mut child = guest(case, &cmdline).spawn().unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    let reader = thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Seen::default();
    let mut flushes = 0;
    let mut writing_since = None;
    let note = |seen: &mut Seen, line: String| {
        if let Some(rest) = line.strip_prefix(virtio::BLK_FLUSHED) {
            if let Some((pass, upto)) = parse_pass_upto(rest) {
                seen.flushed[pass.min(1)] = upto;
            }
        }
        if line == virtio::OK {
            seen.completed = true;
        }
        seen.output.push(line);
    };
    let started = Instant::now();
    loop {
        let deadline = match (on_flush, writing_since) {
            (None, Some(since)) => since + delay,
            _ => started + RUN_TIMEOUT,
        };
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        match rx.recv_timeout(deadline - now) {
            Ok(line) => {
                if line.starts_with(BLK_DEV) {
                    writing_since = Some(Instant::now());
                }
                let announce = line.starts_with(virtio::BLK_FLUSH);
                note(&mut seen, line);
                if announce {
                    flushes += 1;
                    if Some(flushes) == on_flush {
                        thread::sleep(Duration::from_micros(jitter_us));
                        break;
                    }
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => break,
            // The run ended before the kill.
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    seen.writing = writing_since.map(|since| since.elapsed());
    // SIGKILL, as `kill -9`: no chance for the VMM to write anything back.
    let _ = child.kill();
    let _ = child.wait();
    reader.join().unwrap();
    // Lines still in the pipe were printed before the kill.
    for line in rx.try_iter() {
        note(&mut seen, line);
    }
    seen
}

/// Every block of the guest's view holds something the guest wrote or
/// what was there before, and what a completed FLUSH covered is there.
fn check_after_kill(case: &Case, seen: &Seen, what: &str) {
    let data = case.contents();
    let blocks = WRITE_MIB << 20 >> 12;
    let bs = virtio::BLOCK as usize;
    for b in 0..DISK_BYTES / virtio::BLOCK {
        let at = b as usize * bs;
        let got = &data[at..at + bs];
        let initial = &case.initial[at..at + bs];
        if b >= blocks {
            assert!(
                got == initial,
                "{:?} image {what}: block {b}, which the guest never writes, changed",
                case.kind
            );
            continue;
        }
        let gen0 = pattern_block(b, 0);
        let gen1 = pattern_block(b, 1);
        let is_gen0 = got == gen0.as_slice();
        let is_gen1 = b % 4 == 0 && got == gen1.as_slice();
        let ok = if seen.flushed[1] > 0 {
            // Pass 0 is wholly on disk; pass 1's flushed blocks too.
            if b % 4 == 0 && b < seen.flushed[1] {
                is_gen1
            } else {
                is_gen0 || is_gen1
            }
        } else if b < seen.flushed[0] {
            is_gen0 || is_gen1
        } else {
            got == initial || is_gen0 || is_gen1
        };
        assert!(
            ok,
            "{:?} image {what}: block {b} holds {:02x?}..., which the guest did not write \
             or lost after a completed FLUSH (flushed: pass 0 to block {}, pass 1 to block {})\n\
             guest output:\n{}",
            case.kind,
            &got[..16],
            seen.flushed[0],
            seen.flushed[1],
            seen.output.join("\n")
        );
    }
}

/// A run to the end: the guest checks what it reads back itself, the host
/// checks the whole disk afterwards.
fn clean_run(case: &Case, what: &str) {
    let mut child = guest(case, &format!("blk blk-mib={WRITE_MIB}"))
        .spawn()
        .unwrap();
    let mut out = String::new();
    let mut stdout = child.stdout.take().unwrap();
    let reader = thread::spawn(move || {
        let _ = std::io::Read::read_to_string(&mut stdout, &mut out);
        out
    });
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if started.elapsed() > RUN_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(5));
    };
    let out = reader.join().unwrap();
    assert!(
        status.and_then(|s| s.code()) == Some(0)
            && out.lines().any(|l| l == virtio::OK)
            && !out.contains(virtio::FAIL),
        "{:?} image {what}: the clean run after the kill failed ({status:?}):\n{out}",
        case.kind
    );
    case.check(&format!("{what}, after the clean run"));
    let data = case.contents();
    let expected = virtio::disk_image(WRITE_MIB << 20);
    let n = expected.len();
    if let Some(at) = data[..n].iter().zip(&expected).position(|(a, b)| a != b) {
        panic!(
            "{:?} image {what}: after the clean run, byte {at:#x} (block {}) differs from \
             what the guest wrote",
            case.kind,
            at / virtio::BLOCK as usize
        );
    }
    assert!(
        data[n..] == case.initial[n..],
        "{:?} image {what}: after the clean run, the part the guest never writes changed",
        case.kind
    );
}

fn qemu_img_usable() -> bool {
    match Command::new("qemu-img").arg("--version").output() {
        Ok(o) if o.status.success() => true,
        _ => {
            println!("SKIP: qemu-img (the reference checker) is not installed");
            false
        }
    }
}

fn crash_case(kind: Kind, kills: u64, rng: &mut Rng, root: &Path) {
    let case = Case::new(kind, root);
    // How long the guest writes in a whole run here, to spread the kills
    // over that time.
    case.fresh();
    let first = killed_run(&case, RUN_TIMEOUT, None, 0);
    assert!(
        first.completed,
        "{kind:?} image: the first run did not complete:\n{}",
        first.output.join("\n")
    );
    let full = first.writing.unwrap_or(Duration::from_secs(1));
    clean_run(&case, "(first run)");
    let mut during_flush = 0;
    let mut completed = 0;
    for i in 0..kills {
        // Every other kill on a fresh image, the others on what the last
        // run left behind.
        if i % 2 == 0 {
            case.fresh();
        }
        let on_flush = (rng.below(2) == 0).then(|| 1 + rng.below(12));
        // Within the first three quarters of the guest's writing, so that
        // most kills land before its end.
        let delay = Duration::from_micros(rng.below(full.as_micros() as u64 * 3 / 4));
        let jitter = rng.below(500);
        let what = match on_flush {
            Some(k) => format!("killed at FLUSH {k} (+{jitter} us), kill {i}"),
            None => format!("killed after {delay:?}, kill {i}"),
        };
        let seen = killed_run(&case, delay, on_flush, jitter);
        if seen.completed {
            completed += 1;
        } else if on_flush.is_some() {
            during_flush += 1;
        }
        case.check(&what);
        check_after_kill(&case, &seen, &what);
        clean_run(&case, &what);
    }
    println!(
        "{kind:?}: {kills} kills ({during_flush} at a FLUSH, {completed} after the run ended), \
         image clean each time; the guest writes for {full:?} in a whole run"
    );
}

/// SIGKILL at random points of a guest's writes and flushes leaves every
/// qcow2 image consistent (leaks at most) and every flushed write in place.
#[test]
fn qcow2_survives_sigkill_of_the_vm_process() {
    if !common::kvm_usable() || !qemu_img_usable() {
        return;
    }
    let soak: Option<u64> = std::env::var("KAPSEL_SOAK")
        .ok()
        .map(|v| v.parse().unwrap_or(100));
    let seed = std::env::var("KAPSEL_SOAK_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
                | 1
        });
    println!("seed {seed} (KAPSEL_SOAK_SEED={seed} repeats it)");
    let mut rng = Rng(seed);
    let root = TempDir::new();
    let started = Instant::now();
    for (kind, kills) in [
        (Kind::Plain, soak.unwrap_or(4)),
        (Kind::Overlay, soak.unwrap_or(3)),
        (Kind::SmallClusters, soak.unwrap_or(3)),
    ] {
        crash_case(kind, kills, &mut rng, &root.0);
    }
    println!("all kills in {:?}", started.elapsed());
}

/// A directory of the test's own, removed afterwards (also on failure).
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let path = std::env::temp_dir().join(format!("kapsel-qcow2-crash-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
