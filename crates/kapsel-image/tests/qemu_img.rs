//! kapsel-image against QEMU's own tools: images made by `qemu-img` are read
//! and written through the backends, and what the backends wrote is checked
//! with `qemu-img check` and read back with `qemu-img convert -O raw`.
//! Every test prints a `SKIP:` line and passes when qemu-img is missing.

use kapsel_image::{open, BlockBackend, Format, ImageError};
use std::path::{Path, PathBuf};
use std::process::Command;

const MIB: u64 = 1 << 20;

/// The tests run one at a time. Image locks belong to open file
/// descriptions, and a `qemu-img` child that one test forks holds a copy of
/// every descriptor open in the process until it execs, so another test's
/// image, just closed, could still look locked to its next open.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn have_qemu_img() -> bool {
    let ok = Command::new("qemu-img")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        println!("SKIP: qemu-img not installed (apt-get install qemu-utils)");
    }
    ok
}

fn qemu_img(args: &[&str]) -> String {
    let out = Command::new("qemu-img").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "qemu-img {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `qemu-img check` finds no errors and no leaks.
fn assert_clean(img: &Path) {
    let out = qemu_img(&["check", s(img)]);
    assert!(out.contains("No errors were found"), "{out}");
}

/// The image's content as QEMU reads it.
fn qemu_read(img: &Path, dir: &Path) -> Vec<u8> {
    let raw = dir.join("converted.raw");
    let _ = std::fs::remove_file(&raw);
    qemu_img(&["convert", "-O", "raw", s(img), s(&raw)]);
    std::fs::read(raw).unwrap()
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(seed | 1) ^ (i >> 9) as u8 ^ seed)
        .collect()
}

/// Writes `data` at `offset` through the backend and into `model`.
fn write(b: &dyn BlockBackend, model: &mut [u8], offset: u64, data: &[u8]) {
    b.write_at(data, offset).unwrap();
    model[offset as usize..offset as usize + data.len()].copy_from_slice(data);
}

fn read_all(b: &dyn BlockBackend) -> Vec<u8> {
    let mut v = vec![0u8; b.size() as usize];
    // In pieces that do not line up with clusters.
    for (i, chunk) in v.chunks_mut(96 * 1024 + 512).enumerate() {
        b.read_at(chunk, i as u64 * (96 * 1024 + 512)).unwrap();
    }
    v
}

/// Writes, zeroes and discards at awkward places; returns the expected disk.
fn exercise(b: &mut dyn BlockBackend, size: u64) -> Vec<u8> {
    let mut model = vec![0u8; size as usize];
    let mut init = vec![0u8; size as usize];
    b.read_at(&mut init, 0).unwrap();
    model.copy_from_slice(&init);
    write(b, &mut model, 0, &pattern(512, 1));
    // Across a 64 KiB cluster boundary.
    write(b, &mut model, 65536 - 1024, &pattern(4096, 2));
    // Several clusters at once, not cluster-aligned.
    write(b, &mut model, 3 * MIB + 512, &pattern(300 * 1024, 3));
    // The last sector.
    write(b, &mut model, size - 512, &pattern(512, 4));
    // Overwrite inside an allocated cluster.
    write(b, &mut model, 3 * MIB + 4096, &pattern(1024, 5));
    b.write_zeroes(3 * MIB + 8192, 128 * 1024, false).unwrap();
    model[(3 * MIB + 8192) as usize..(3 * MIB + 8192 + 128 * 1024) as usize].fill(0);
    b.write_zeroes(MIB, 2 * 65536, true).unwrap();
    model[MIB as usize..(MIB + 2 * 65536) as usize].fill(0);
    // Discard leaves unspecified data: discard a range, then rewrite it so
    // the expected content is known again.
    b.discard(5 * MIB, MIB).unwrap();
    write(b, &mut model, 5 * MIB, &pattern(MIB as usize, 6));
    b.flush().unwrap();
    model
}

#[test]
fn raw_round_trip() {
    let _serial = serial();
    if !have_qemu_img() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.raw");
    qemu_img(&["create", "-f", "raw", s(&img), "8M"]);
    let mut b = open(&img, None, false).unwrap();
    assert_eq!(b.size(), 8 * MIB);
    let model = exercise(b.as_mut(), 8 * MIB);
    assert_eq!(read_all(b.as_ref()), model);
    drop(b);
    assert_eq!(std::fs::read(&img).unwrap(), model);
    assert_eq!(qemu_read(&img, dir.path()), model);
}

#[test]
fn qcow2_written_by_kapsel_reads_back_in_qemu() {
    let _serial = serial();
    if !have_qemu_img() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.qcow2");
    qemu_img(&["create", "-f", "qcow2", s(&img), "8M"]);
    let mut b = open(&img, None, false).unwrap();
    assert_eq!(b.size(), 8 * MIB);
    let model = exercise(b.as_mut(), 8 * MIB);
    assert_eq!(read_all(b.as_ref()), model);
    drop(b);
    assert_clean(&img);
    assert_eq!(qemu_read(&img, dir.path()), model);
    // Reopened, Kapsel reads what it wrote.
    let b = open(&img, Some(Format::Qcow2), true).unwrap();
    assert_eq!(read_all(b.as_ref()), model);
}

#[test]
fn qcow2_written_by_qemu_reads_in_kapsel() {
    let _serial = serial();
    if !have_qemu_img() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("src.raw");
    let mut data = pattern(6 * MIB as usize, 9);
    data[2 * MIB as usize..3 * MIB as usize].fill(0);
    std::fs::write(&raw, &data).unwrap();
    for (name, extra) in [("plain.qcow2", None), ("compressed.qcow2", Some("-c"))] {
        let img = dir.path().join(name);
        let mut args = vec!["convert", "-O", "qcow2"];
        args.extend(extra);
        args.extend([s(&raw), s(&img)]);
        qemu_img(&args);
        let b = open(&img, None, true).unwrap();
        assert_eq!(b.size(), 6 * MIB);
        assert_eq!(read_all(b.as_ref()), data, "{name}");
        assert!(b.read_only());
        assert!(b.write_at(&[1], 0).is_err());
        b.flush().unwrap();
        drop(b);
        // Opening read-only changed nothing, not even the dirty bit.
        assert_clean(&img);
    }
    let before = std::fs::read(dir.path().join("plain.qcow2")).unwrap();
    drop(open(&dir.path().join("plain.qcow2"), None, true).unwrap());
    assert_eq!(
        std::fs::read(dir.path().join("plain.qcow2")).unwrap(),
        before
    );
}

#[test]
fn qcow2_backing_chain() {
    let _serial = serial();
    if !have_qemu_img() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.raw");
    let base_data = pattern(8 * MIB as usize, 11);
    std::fs::write(&base, &base_data).unwrap();
    let mid = dir.path().join("mid.qcow2");
    let top = dir.path().join("top.qcow2");
    // Relative backing names, resolved against the image's directory.
    qemu_img(&[
        "create",
        "-f",
        "qcow2",
        "-b",
        "base.raw",
        "-F",
        "raw",
        s(&mid),
    ]);
    qemu_img(&[
        "create",
        "-f",
        "qcow2",
        "-b",
        "mid.qcow2",
        "-F",
        "qcow2",
        s(&top),
    ]);

    let mut expected = base_data.clone();
    {
        let m = open(&mid, None, false).unwrap();
        write(
            m.as_ref(),
            &mut expected,
            2 * MIB,
            &pattern(70000 - 70000 % 512, 12),
        );
    }
    let mid_after = qemu_read(&mid, dir.path());
    assert_eq!(mid_after, expected);

    let mut t = open(&top, None, false).unwrap();
    assert_eq!(t.size(), 8 * MIB);
    assert_eq!(read_all(t.as_ref()), expected);
    write(t.as_ref(), &mut expected, 2 * MIB + 4096, &pattern(512, 13));
    write(t.as_ref(), &mut expected, 7 * MIB, &pattern(65536, 14));
    // Zeroes must hide the backing data, with and without unmapping.
    t.write_zeroes(4 * MIB, 65536 + 1024, false).unwrap();
    expected[4 * MIB as usize..(4 * MIB + 65536 + 1024) as usize].fill(0);
    t.write_zeroes(5 * MIB + 512, 3 * 65536, true).unwrap();
    expected[(5 * MIB + 512) as usize..(5 * MIB + 512 + 3 * 65536) as usize].fill(0);
    t.flush().unwrap();
    assert_eq!(read_all(t.as_ref()), expected);
    drop(t);

    assert_clean(&top);
    assert_clean(&mid);
    assert_eq!(qemu_read(&top, dir.path()), expected);
    // The lower layers are untouched.
    assert_eq!(std::fs::read(&base).unwrap(), base_data);
    assert_eq!(qemu_read(&mid, dir.path()), mid_after);
}

#[test]
fn missing_backing_file_is_named() {
    let _serial = serial();
    if !have_qemu_img() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.qcow2");
    let top = dir.path().join("top.qcow2");
    qemu_img(&["create", "-f", "qcow2", s(&base), "1M"]);
    qemu_img(&[
        "create",
        "-f",
        "qcow2",
        "-b",
        "base.qcow2",
        "-F",
        "qcow2",
        s(&top),
    ]);
    std::fs::remove_file(&base).unwrap();
    let err = open(&top, None, true).err().unwrap();
    match &err {
        ImageError::MissingBacking { image, backing, .. } => {
            assert_eq!(image, &top);
            assert_eq!(backing, &base);
        }
        e => panic!("wrong error {e:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains(s(&base)) && msg.contains("qemu-img rebase"),
        "{msg}"
    );
}

#[test]
fn backing_loop_is_refused() {
    let _serial = serial();
    if !have_qemu_img() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.qcow2");
    let b = dir.path().join("b.qcow2");
    qemu_img(&["create", "-f", "qcow2", s(&a), "1M"]);
    qemu_img(&[
        "create",
        "-f",
        "qcow2",
        "-b",
        "a.qcow2",
        "-F",
        "qcow2",
        s(&b),
    ]);
    qemu_img(&[
        "rebase",
        "-u",
        "-f",
        "qcow2",
        "-b",
        "b.qcow2",
        "-F",
        "qcow2",
        s(&a),
    ]);
    let err = open(&b, None, true).err().unwrap();
    assert!(matches!(err, ImageError::BackingChain { .. }), "{err}");
}

#[test]
fn format_mismatch_is_refused() {
    let _serial = serial();
    if !have_qemu_img() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let q = dir.path().join("disk.qcow2");
    let r = dir.path().join("disk.raw");
    qemu_img(&["create", "-f", "qcow2", s(&q), "1M"]);
    qemu_img(&["create", "-f", "raw", s(&r), "1M"]);
    let err = open(&q, Some(Format::Raw), false).err().unwrap();
    assert!(matches!(
        err,
        ImageError::FormatMismatch {
            given: Format::Raw,
            found: Format::Qcow2,
            ..
        }
    ));
    let msg = err.to_string();
    assert!(msg.contains(s(&q)) && msg.contains("format=qcow2"), "{msg}");
    let err = open(&r, Some(Format::Qcow2), false).err().unwrap();
    assert!(matches!(
        err,
        ImageError::FormatMismatch {
            given: Format::Qcow2,
            found: Format::Raw,
            ..
        }
    ));
    assert!(open(&q, Some(Format::Qcow2), false).is_ok());
    assert!(open(&r, Some(Format::Raw), false).is_ok());
}

#[test]
fn unopenable_file_is_named() {
    let _serial = serial();
    let missing = PathBuf::from("/nonexistent/kapsel/disk.img");
    let err = open(&missing, None, true).err().unwrap();
    assert!(matches!(err, ImageError::Open { .. }));
    assert!(err.to_string().contains("/nonexistent/kapsel/disk.img"));
}

#[test]
fn created_images_pass_qemu_img_check() {
    let _serial = serial();
    if !have_qemu_img() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("new.raw");
    kapsel_image::create(&raw, Format::Raw, Some(3 * MIB), None).unwrap();
    assert_eq!(std::fs::metadata(&raw).unwrap().len(), 3 * MIB);
    let base = dir.path().join("base.qcow2");
    kapsel_image::create(&base, Format::Qcow2, Some(16 * MIB), None).unwrap();
    assert_clean(&base);
    let info = qemu_img(&["info", s(&base)]);
    assert!(info.contains("virtual size: 16 MiB"), "{info}");
    assert!(info.contains("compat: 1.1"), "{info}");
    {
        let mut b = open(&base, None, false).unwrap();
        let model = exercise(b.as_mut(), 16 * MIB);
        drop(b);
        assert_clean(&base);
        assert_eq!(qemu_read(&base, dir.path()), model);
    }
    let top = dir.path().join("top.qcow2");
    kapsel_image::create(&top, Format::Qcow2, None, Some(Path::new("base.qcow2"))).unwrap();
    let info = qemu_img(&["info", s(&top)]);
    assert!(info.contains("backing file: base.qcow2"), "{info}");
    assert!(info.contains("backing file format: qcow2"), "{info}");
    assert_clean(&top);
    assert!(
        kapsel_image::create(&dir.path().join("x.raw"), Format::Raw, None, Some(&base)).is_err()
    );
    let err = kapsel_image::create(
        &dir.path().join("y.qcow2"),
        Format::Qcow2,
        None,
        Some(Path::new("nope.qcow2")),
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("nope.qcow2"), "{err}");
    assert!(!dir.path().join("y.qcow2").exists());
}

#[test]
fn convert_copies_through_backing_chains_and_stays_sparse() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.raw");
    let mut data = vec![0u8; 8 << 20];
    data[..1 << 20].copy_from_slice(&pattern(1 << 20, 7));
    std::fs::write(&base, &data).unwrap();
    let overlay = dir.path().join("top.qcow2");
    kapsel_image::create(&overlay, Format::Qcow2, None, Some(&base)).unwrap();
    {
        let top = kapsel_image::open(&overlay, None, false).unwrap();
        top.write_at(&pattern(4096, 9), 5 << 20).unwrap();
        top.flush().unwrap();
    }
    data[5 << 20..(5 << 20) + 4096].copy_from_slice(&pattern(4096, 9));
    // qcow2 chain -> raw, and back to a standalone qcow2.
    let flat = dir.path().join("flat.raw");
    let written = kapsel_image::convert(&overlay, &flat, Format::Raw).unwrap();
    assert_eq!(written, 2 << 20, "only the two non-zero MiB are written");
    assert_eq!(std::fs::read(&flat).unwrap(), data);
    let standalone = dir.path().join("standalone.qcow2");
    kapsel_image::convert(&flat, &standalone, Format::Qcow2).unwrap();
    let back = kapsel_image::open(&standalone, None, true).unwrap();
    assert_eq!(read_all(back.as_ref()), data);
    if have_qemu_img() {
        assert_clean(&standalone);
    }
    // The output must not exist; a failed convert leaves nothing behind.
    assert!(kapsel_image::convert(&overlay, &flat, Format::Raw).is_err());
    let missing = dir.path().join("nope.raw");
    assert!(kapsel_image::convert(&missing, &dir.path().join("x.raw"), Format::Raw).is_err());
    assert!(!dir.path().join("x.raw").exists());
}

#[test]
fn images_in_use_are_locked() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.raw");
    std::fs::write(&base, vec![0u8; MIB as usize]).unwrap();
    let locked = |r: Result<Box<dyn BlockBackend>, ImageError>, want_write: bool| match r {
        Err(ImageError::Locked { path, write }) => {
            assert_eq!((path, write), (base.clone(), want_write));
        }
        Err(e) => panic!("expected a lock error, got {e}"),
        Ok(_) => panic!("expected a lock error, the image opened"),
    };
    {
        let _writer = open(&base, None, false).unwrap();
        locked(open(&base, None, false), true);
        locked(open(&base, None, true), false);
        let msg = open(&base, None, false).err().unwrap().to_string();
        assert!(
            msg.contains("base.raw") && msg.contains("kapsel create -b"),
            "{msg}"
        );
    }
    // Closed: free again. Readers share.
    let r1 = open(&base, None, true).unwrap();
    let r2 = open(&base, None, true).unwrap();
    locked(open(&base, None, false), true);
    drop((r1, r2));
    if !have_qemu_img() {
        return;
    }
    // Overlays over one base share it; the base cannot be written meanwhile.
    let a = dir.path().join("a.qcow2");
    let b = dir.path().join("b.qcow2");
    for o in [&a, &b] {
        qemu_img(&["create", "-f", "qcow2", "-b", "base.raw", "-F", "raw", s(o)]);
    }
    let ta = open(&a, None, false).unwrap();
    let tb = open(&b, None, false).unwrap();
    locked(open(&base, None, false), true);
    // QEMU's tools see Kapsel's lock, and Kapsel sees theirs.
    let out = Command::new("qemu-img")
        .args(["info", s(&a)])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "qemu-img info opened an image in use"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("lock"));
    drop((ta, tb));
    let mut qemu = Command::new("qemu-io")
        .args(["-f", "qcow2", s(&a)])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // qemu-io holds the image open (and locked) until its stdin closes.
    // Wait until its locks show in /proc/locks (trying to open the image
    // meanwhile could take the lock first and make qemu-io give up).
    use std::os::unix::fs::MetadataExt;
    let inode = format!(":{} ", std::fs::metadata(&a).unwrap().ino());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !std::fs::read_to_string("/proc/locks")
        .unwrap()
        .lines()
        .any(|l| l.contains("OFDLCK") && l.contains(&inode))
    {
        assert!(
            std::time::Instant::now() < deadline && qemu.try_wait().unwrap().is_none(),
            "qemu-io did not lock the image"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let seen = matches!(open(&a, None, false), Err(ImageError::Locked { .. }));
    drop(qemu.stdin.take());
    qemu.wait().unwrap();
    assert!(seen, "Kapsel opened an image qemu-io holds");
}
