//! Unpacking: ordinary and hostile archives, compression, OCI layouts.

use super::*;
use sha2::{Digest as _, Sha256};
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};

/// A directory removed when the test ends.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("kapsel-image-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A tar archive built entry by entry; names and link targets are written
/// into the header as given (the tar crate's setters refuse `..`, which
/// hostile archives are made of).
struct Tar(tar::Builder<Vec<u8>>);

impl Tar {
    fn new() -> Tar {
        Tar(tar::Builder::new(Vec::new()))
    }

    fn entry(&mut self, kind: tar::EntryType, name: &str, link: &str, mode: u32, data: &[u8]) {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_600_000_000);
        h.set_size(data.len() as u64);
        let old = h.as_old_mut();
        old.name[..name.len()].copy_from_slice(name.as_bytes());
        old.linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_cksum();
        self.0.append(&h, data).unwrap();
    }

    fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
        self.entry(tar::EntryType::Regular, name, "", 0o644, data);
        self
    }

    fn dir(&mut self, name: &str) -> &mut Self {
        self.entry(tar::EntryType::Directory, name, "", 0o755, b"");
        self
    }

    fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.entry(tar::EntryType::Symlink, name, target, 0o777, b"");
        self
    }

    fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.entry(tar::EntryType::Link, name, target, 0o644, b"");
        self
    }

    fn bytes(&mut self) -> Vec<u8> {
        let b = std::mem::replace(&mut self.0, tar::Builder::new(Vec::new()));
        b.into_inner().unwrap()
    }
}

fn extract(root: &Path, tar: &[u8], whiteouts: bool) -> Result<extract::Notes, ImageError> {
    let mut ex = extract::Extractor::new(root, whiteouts)?;
    ex.unpack(decompress(tar)?)?;
    ex.finish()
}

/// Every path under `dir` (to prove nothing appeared outside a root).
fn listing(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            out.push(e.path());
            if e.file_type().unwrap().is_dir() {
                todo.push(e.path());
            }
        }
    }
    out.sort();
    out
}

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn unpacks_files_dirs_links_modes_and_special_files() {
    let t = TempDir::new("plain");
    let mut tar = Tar::new();
    tar.dir("./").dir("bin/").file("bin/tool", b"#!/bin/sh\n");
    tar.entry(tar::EntryType::Regular, "bin/suid", "", 0o4755, b"x");
    tar.symlink("bin/sh", "tool")
        .hardlink("bin/again", "bin/tool");
    tar.entry(tar::EntryType::Fifo, "run-fifo", "", 0o600, b"");
    // /dev/null: char 1:3.
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Char);
    h.set_path("null").unwrap();
    h.set_mode(0o666);
    h.set_device_major(1).unwrap();
    h.set_device_minor(3).unwrap();
    h.set_size(0);
    h.set_cksum();
    tar.0.append(&h, &b""[..]).unwrap();
    tar.file("deep/er/file", b"auto-created parents");
    let notes = extract(&t.0, &tar.bytes(), false).unwrap();

    assert_eq!(std::fs::read(t.0.join("bin/tool")).unwrap(), b"#!/bin/sh\n");
    let suid = std::fs::metadata(t.0.join("bin/suid")).unwrap();
    assert_eq!(
        suid.permissions().mode() & 0o7777,
        0o4755,
        "setuid bit kept"
    );
    assert_eq!(suid.mtime(), 1_600_000_000);
    assert_eq!(
        std::fs::read_link(t.0.join("bin/sh")).unwrap(),
        Path::new("tool")
    );
    let a = std::fs::metadata(t.0.join("bin/tool")).unwrap();
    let b = std::fs::metadata(t.0.join("bin/again")).unwrap();
    assert_eq!(a.ino(), b.ino(), "hard link");
    assert!(std::fs::symlink_metadata(t.0.join("run-fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
    if is_root() && notes.devices_skipped == 0 {
        let m = std::fs::symlink_metadata(t.0.join("null")).unwrap();
        assert!(m.file_type().is_char_device());
        assert_eq!(m.rdev(), libc::makedev(1, 3));
    }
    assert_eq!(
        std::fs::read(t.0.join("deep/er/file")).unwrap(),
        b"auto-created parents"
    );
    assert_eq!(
        std::fs::metadata(t.0.join("bin")).unwrap().mtime(),
        1_600_000_000
    );
}

#[test]
fn pax_mtimes_keep_their_fraction() {
    let t = TempDir::new("pax");
    let mut b = tar::Builder::new(Vec::new());
    b.append_pax_extensions([("mtime", &b"1600000000.123456789"[..])])
        .unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_size(1);
    h.set_mode(0o644);
    h.set_mtime(1_600_000_000);
    b.append_data(&mut h, "f", &b"x"[..]).unwrap();
    extract(&t.0, &b.into_inner().unwrap(), false).unwrap();
    let m = std::fs::metadata(t.0.join("f")).unwrap();
    assert_eq!((m.mtime(), m.mtime_nsec()), (1_600_000_000, 123_456_789));
}

#[test]
fn gzip_xz_and_zstd_are_told_by_their_magic() {
    let plain = Tar::new().file("hello", b"world").bytes();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&plain).unwrap();
    let gz = gz.finish().unwrap();
    let mut xz =
        lzma_rust2::XzWriter::new(Vec::new(), lzma_rust2::XzOptions::with_preset(1)).unwrap();
    xz.write_all(&plain).unwrap();
    let xz = xz.finish().unwrap();
    // Two frames, as parallel compressors write.
    let mut zst = ruzstd::encoding::compress_to_vec(
        &plain[..plain.len() / 2],
        ruzstd::encoding::CompressionLevel::Fastest,
    );
    zst.extend(ruzstd::encoding::compress_to_vec(
        &plain[plain.len() / 2..],
        ruzstd::encoding::CompressionLevel::Fastest,
    ));
    // A skippable frame (magic 0x184D2A50, length 3) between them.
    let mut zst_skip = Vec::new();
    zst_skip.extend(ruzstd::encoding::compress_to_vec(
        &plain[..],
        ruzstd::encoding::CompressionLevel::Fastest,
    ));
    zst_skip.splice(0..0, [0x50, 0x2a, 0x4d, 0x18, 3, 0, 0, 0, 1, 2, 3]);
    for (name, bytes) in [
        ("tar", plain.clone()),
        ("gz", gz),
        ("xz", xz),
        ("zst", zst),
        ("zst-skippable", zst_skip),
    ] {
        let t = TempDir::new(name);
        let file = t.0.join(format!("image.{name}"));
        std::fs::write(&file, &bytes).unwrap();
        let root = t.0.join("root");
        std::fs::create_dir(&root).unwrap();
        unpack_tarball(&file, &root, false).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            std::fs::read(root.join("hello")).unwrap(),
            b"world",
            "{name}"
        );
    }
}

/// A root and a sibling directory that hostile archives aim at.
struct Target {
    _t: TempDir,
    root: PathBuf,
    outside: PathBuf,
}

fn target(tag: &str) -> Target {
    let t = TempDir::new(tag);
    let root = t.0.join("root");
    let outside = t.0.join("outside");
    std::fs::create_dir(&root).unwrap();
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("victim"), b"untouched").unwrap();
    Target {
        _t: t,
        root,
        outside,
    }
}

impl Target {
    fn assert_outside_untouched(&self) {
        assert_eq!(listing(&self.outside), vec![self.outside.join("victim")]);
        assert_eq!(
            std::fs::read(self.outside.join("victim")).unwrap(),
            b"untouched"
        );
    }
}

#[test]
fn symlink_then_write_through_it_stays_inside() {
    for link in ["ABS", "../outside", "../../../../../../outside"] {
        let tg = target("through");
        let link = link.replace("ABS", tg.outside.to_str().unwrap());
        let mut tar = Tar::new();
        tar.symlink("evil", &link)
            .file("evil/pwned", b"escaped")
            .file("evil/victim", b"overwritten");
        let r = extract(&tg.root, &tar.bytes(), false);
        tg.assert_outside_untouched();
        // Either refused, or written where the link points inside the root.
        if r.is_ok() {
            assert!(!tg.outside.join("pwned").exists());
        }
    }
}

#[test]
fn a_symlink_replaced_by_a_file_is_not_written_through() {
    let tg = target("replace");
    let victim = tg.outside.join("victim");
    let mut tar = Tar::new();
    tar.symlink("link", victim.to_str().unwrap())
        .file("link", b"overwritten");
    extract(&tg.root, &tar.bytes(), false).unwrap();
    tg.assert_outside_untouched();
    assert_eq!(std::fs::read(tg.root.join("link")).unwrap(), b"overwritten");
}

#[test]
fn dotdot_paths_are_refused() {
    for name in ["../outside/pwned", "a/../../outside/pwned", "./../pwned"] {
        let tg = target("dotdot");
        let err = extract(&tg.root, &Tar::new().file(name, b"x").bytes(), false).unwrap_err();
        assert!(err.to_string().contains(".."), "{name}: {err}");
        tg.assert_outside_untouched();
        assert!(!tg.root.parent().unwrap().join("pwned").exists());
    }
}

#[test]
fn absolute_paths_land_inside_the_root() {
    let tg = target("abs");
    let name = format!("{}/pwned", tg.outside.display());
    extract(&tg.root, &Tar::new().file(&name, b"x").bytes(), false).unwrap();
    tg.assert_outside_untouched();
    assert!(tg.root.join(name.trim_start_matches('/')).is_file());
}

#[test]
fn absolute_symlinked_directory_then_file_under_it_stays_inside() {
    let tg = target("absdir");
    let mut tar = Tar::new();
    // An absolute link to a host directory, then a file "in" it and a
    // directory entry over it.
    tar.symlink("etc", tg.outside.to_str().unwrap())
        .file("etc/victim", b"overwritten")
        .dir("etc/sub/")
        .file("etc/sub/file", b"x");
    let _ = extract(&tg.root, &tar.bytes(), false);
    tg.assert_outside_untouched();
}

#[test]
fn hard_links_cannot_reach_host_files() {
    for target_name in ["/etc/passwd", "../../../../etc/passwd", "etc/passwd"] {
        let tg = target("hardlink");
        let passwd = std::fs::metadata("/etc/passwd").unwrap();
        let tar = Tar::new().hardlink("passwd", target_name).bytes();
        assert!(extract(&tg.root, &tar, false).is_err(), "{target_name}");
        if let Ok(m) = std::fs::metadata(tg.root.join("passwd")) {
            assert_ne!(
                m.ino(),
                passwd.ino(),
                "{target_name} linked the host's passwd"
            );
        }
        // Through a symlinked directory too.
        let tar = Tar::new()
            .symlink("hostetc", "/etc")
            .hardlink("passwd", "hostetc/passwd")
            .bytes();
        let _ = extract(&tg.root, &tar, false);
        if let Ok(m) = std::fs::metadata(tg.root.join("passwd")) {
            assert_ne!(m.ino(), passwd.ino());
        }
        tg.assert_outside_untouched();
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

    /// Any mix of files, directories, symlinks (absolute, relative, to the
    /// outside) and hard links, with `..` and absolute names, leaves
    /// everything outside the root as it was, as plain files or as OCI
    /// layers with whiteouts.
    #[test]
    fn no_archive_writes_outside_the_root(
        entries in proptest::collection::vec(
            (0u8..4, proptest::collection::vec(0usize..6, 1..4), 0usize..6),
            1..8,
        ),
        whiteouts: bool,
    ) {
        let tg = target("prop");
        let out = tg.outside.display().to_string();
        let parts = ["a", "b", "..", "victim", ".wh.victim", "."];
        let links = [
            out.clone(),
            format!("{out}/victim"),
            "../outside".to_string(),
            "../../outside/victim".to_string(),
            "/etc".to_string(),
            "a".to_string(),
        ];
        let hard = [
            format!("{out}/victim"),
            "../outside/victim".to_string(),
            "/etc/passwd".to_string(),
            "a/victim".to_string(),
            "a".to_string(),
            "b/../../outside/victim".to_string(),
        ];
        let mut tar = Tar::new();
        for (kind, path, t) in entries {
            let name: Vec<&str> = path.iter().map(|&i| parts[i]).collect();
            let name = name.join("/");
            if name.len() >= 100 || links[t].len() >= 100 || hard[t].len() >= 100 {
                continue;
            }
            match kind {
                0 => { tar.file(&name, b"written"); }
                1 => { tar.dir(&name); }
                2 => { tar.symlink(&name, &links[t]); }
                _ => { tar.hardlink(&name, &hard[t]); }
            }
        }
        let _ = extract(&tg.root, &tar.bytes(), whiteouts);
        tg.assert_outside_untouched();
    }
}

#[test]
fn whiteouts_are_plain_files_outside_oci_layers() {
    let t = TempDir::new("wh-plain");
    extract(&t.0, &Tar::new().file("a/.wh.b", b"").bytes(), false).unwrap();
    assert!(t.0.join("a/.wh.b").is_file());
}

// OCI image layouts.

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Writes a blob; returns its descriptor JSON.
fn blob(dir: &Path, media_type: &str, bytes: &[u8]) -> serde_json::Value {
    let hex = sha256_hex(bytes);
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    std::fs::write(dir.join("blobs/sha256").join(&hex), bytes).unwrap();
    serde_json::json!({"mediaType": media_type, "digest": format!("sha256:{hex}"), "size": bytes.len()})
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

/// An image manifest blob with these layers and config; returns its
/// descriptor.
fn manifest(dir: &Path, layers: &[Vec<u8>], config: serde_json::Value) -> serde_json::Value {
    let config = blob(
        dir,
        "application/vnd.oci.image.config.v1+json",
        config.to_string().as_bytes(),
    );
    let layers: Vec<serde_json::Value> = layers
        .iter()
        .map(|l| {
            if l.starts_with(&[0x1f, 0x8b]) {
                blob(dir, "application/vnd.oci.image.layer.v1.tar+gzip", l)
            } else {
                blob(dir, "application/vnd.oci.image.layer.v1.tar", l)
            }
        })
        .collect();
    let m = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config,
        "layers": layers,
    });
    blob(
        dir,
        "application/vnd.oci.image.manifest.v1+json",
        m.to_string().as_bytes(),
    )
}

fn index(dir: &Path, manifests: Vec<serde_json::Value>) {
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let i = serde_json::json!({"schemaVersion": 2, "manifests": manifests});
    std::fs::write(dir.join("index.json"), i.to_string()).unwrap();
}

fn named(mut d: serde_json::Value, name: &str) -> serde_json::Value {
    d["annotations"] = serde_json::json!({ oci::REF_NAME: name });
    d
}

fn config(entrypoint: &[&str], cmd: &[&str]) -> serde_json::Value {
    serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": entrypoint, "Cmd": cmd, "Env": ["PATH=/bin", "APP=1"], "WorkingDir": "/srv"},
        "rootfs": {"type": "layers", "diff_ids": []},
    })
}

/// Two layers: the second deletes a file and makes a directory opaque.
fn two_layers() -> Vec<Vec<u8>> {
    let base = Tar::new()
        .dir("etc/")
        .file("etc/keep", b"kept")
        .file("etc/gone", b"deleted above")
        .dir("d/")
        .file("d/lower", b"hidden by the opaque whiteout")
        .dir("d/sub/")
        .file("d/sub/lower", b"hidden too")
        .dir("d/both/")
        .file("d/both/lower", b"hidden as well")
        .bytes();
    // The opaque marker after entries of its directory: they stay, what
    // was below them goes (also inside a directory both layers have).
    let top = Tar::new()
        .file("etc/.wh.gone", b"")
        .file("d/new", b"this layer")
        .file("d/both/mine", b"this layer")
        .file("d/.wh..wh..opq", b"")
        .file("etc/added", b"new")
        .bytes();
    vec![gzip(&base), top]
}

#[test]
fn oci_layout_layers_apply_in_order_with_whiteouts() {
    let t = TempDir::new("oci");
    let layout = t.0.join("layout");
    std::fs::create_dir(&layout).unwrap();
    let m = manifest(&layout, &two_layers(), config(&["/bin/app"], &["--flag"]));
    index(&layout, vec![m]);
    let p = prepare(&layout, &t.0.join("ct")).unwrap();
    let root = &p.root;
    assert_eq!(std::fs::read(root.join("etc/keep")).unwrap(), b"kept");
    assert_eq!(std::fs::read(root.join("etc/added")).unwrap(), b"new");
    assert!(!root.join("etc/gone").exists(), "whiteout applied");
    assert!(!root.join("etc/.wh.gone").exists(), "whiteout not written");
    assert!(!root.join("d/lower").exists(), "opaque directory");
    assert!(!root.join("d/sub").exists(), "opaque directory");
    assert!(!root.join("d/.wh..wh..opq").exists());
    assert_eq!(std::fs::read(root.join("d/new")).unwrap(), b"this layer");
    assert_eq!(
        std::fs::read(root.join("d/both/mine")).unwrap(),
        b"this layer"
    );
    assert!(
        !root.join("d/both/lower").exists(),
        "opaque below a shared directory"
    );
    assert_eq!(
        p.defaults.command(),
        Some(vec!["/bin/app".to_string(), "--flag".to_string()])
    );
    assert_eq!(p.defaults.env, vec!["PATH=/bin", "APP=1"]);
    assert_eq!(p.defaults.working_dir.as_deref(), Some("/srv"));
}

#[test]
fn a_tampered_blob_fails_and_leaves_nothing() {
    let t = TempDir::new("tamper");
    let layout = t.0.join("layout");
    std::fs::create_dir(&layout).unwrap();
    let layers = two_layers();
    let m = manifest(&layout, &layers, config(&[], &["/bin/sh"]));
    index(&layout, vec![m]);
    // Same size, one byte changed.
    let hex = sha256_hex(&layers[1]);
    let path = layout.join("blobs/sha256").join(hex);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[100] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let ct = t.0.join("ct");
    let err = prepare(&layout, &ct).unwrap_err().to_string();
    assert!(err.contains("tampered"), "{err}");
    assert!(
        err.contains(&layout.display().to_string()),
        "names the image: {err}"
    );
    assert_eq!(listing(&ct), Vec::<PathBuf>::new(), "nothing left behind");
    // A blob longer than its descriptor says.
    bytes[100] ^= 1;
    bytes.extend_from_slice(&[0; 512]);
    std::fs::write(&path, &bytes).unwrap();
    let err = prepare(&layout, &ct).unwrap_err().to_string();
    assert!(err.contains("bytes"), "{err}");
    assert_eq!(listing(&ct), Vec::<PathBuf>::new());
}

#[test]
fn manifests_are_chosen_by_tag_or_platform() {
    let t = TempDir::new("refs");
    let layout = t.0.join("alpine");
    std::fs::create_dir(&layout).unwrap();
    let one = manifest(
        &layout,
        &[Tar::new().file("v", b"1").bytes()],
        config(&[], &["one"]),
    );
    let two = manifest(
        &layout,
        &[Tar::new().file("v", b"2").bytes()],
        config(&[], &["two"]),
    );
    index(&layout, vec![named(one, "3.18"), named(two, "3.19")]);
    let err = prepare(&layout, &t.0.join("ct0")).unwrap_err().to_string();
    assert!(err.contains("3.18, 3.19") && err.contains(":NAME"), "{err}");
    let tagged = PathBuf::from(format!("{}:3.19", layout.display()));
    let p = prepare(&tagged, &t.0.join("ct")).unwrap();
    assert_eq!(std::fs::read(p.root.join("v")).unwrap(), b"2");
    let err = prepare(
        Path::new(&format!("{}:9", layout.display())),
        &t.0.join("ct2"),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("no manifest named \"9\""), "{err}");

    // A nested index with one manifest per platform.
    let t2 = TempDir::new("platform");
    let l2 = t2.0.join("multi");
    std::fs::create_dir(&l2).unwrap();
    let mut ours = manifest(
        &l2,
        &[Tar::new().file("arch", b"ours").bytes()],
        config(&[], &["x"]),
    );
    ours["platform"] = serde_json::json!({"architecture": oci_spec::image::Arch::default().to_string(), "os": "linux"});
    let mut other = manifest(
        &l2,
        &[Tar::new().file("arch", b"other").bytes()],
        config(&[], &["x"]),
    );
    other["platform"] = serde_json::json!({"architecture": "s390x", "os": "linux"});
    let nested = serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [other, ours]});
    let nested = blob(
        &l2,
        "application/vnd.oci.image.index.v1+json",
        nested.to_string().as_bytes(),
    );
    index(&l2, vec![named(nested, "latest")]);
    let p = prepare(&l2, &t2.0.join("ct")).unwrap();
    assert_eq!(std::fs::read(p.root.join("arch")).unwrap(), b"ours");
}

#[test]
fn an_oci_archive_is_unpacked_like_its_layout() {
    let t = TempDir::new("archive");
    let layout = t.0.join("layout");
    std::fs::create_dir(&layout).unwrap();
    let m = manifest(&layout, &two_layers(), config(&["/bin/app"], &[]));
    index(&layout, vec![named(m, "v1")]);
    let mut b = tar::Builder::new(Vec::new());
    b.append_dir_all(".", &layout).unwrap();
    let archive = t.0.join("image.tar");
    std::fs::write(&archive, b.into_inner().unwrap()).unwrap();
    let p = prepare(&archive, &t.0.join("ct")).unwrap();
    // A reference with ':' and '/' in it.
    let full = PathBuf::from(format!("{}:docker.io/library/app:v1", archive.display()));
    let err = prepare(&full, &t.0.join("ct2")).unwrap_err().to_string();
    assert!(
        err.contains("no manifest named \"docker.io/library/app:v1\""),
        "{err}"
    );
    assert!(p.root.join("etc/keep").is_file());
    assert!(!p.root.join("etc/gone").exists());
    assert!(!p.root.join("oci-layout").exists());
    assert_eq!(p.defaults.command(), Some(vec!["/bin/app".to_string()]));
    assert_eq!(listing(&t.0.join("ct")).len(), listing(&p.root).len() + 3);
}

#[test]
fn a_plain_directory_is_not_an_image() {
    let t = TempDir::new("notoci");
    let err = prepare(&t.0, &t.0.join("ct")).unwrap_err().to_string();
    assert!(
        err.contains("not an OCI image layout") && err.contains("`root`"),
        "{err}"
    );
}

#[test]
fn a_tarball_is_unpacked_once_and_again_when_it_changes() {
    let t = TempDir::new("once");
    let image = t.0.join("root.tar");
    std::fs::write(&image, Tar::new().file("v", b"1").bytes()).unwrap();
    let ct = t.0.join("ct");
    let p = prepare(&image, &ct).unwrap();
    assert_eq!(p.defaults, ImageDefaults::default());
    // A change inside the root survives a second prepare: not unpacked again.
    std::fs::write(p.root.join("local"), b"state").unwrap();
    prepare(&image, &ct).unwrap();
    assert!(p.root.join("local").exists());
    // A damaged image.json means unpacking again.
    std::fs::write(ct.join("image.json"), b"{").unwrap();
    prepare(&image, &ct).unwrap();
    assert!(!p.root.join("local").exists());
    std::fs::write(p.root.join("local"), b"state").unwrap();
    // A marker in the old format (the tarball's path) keeps the root.
    std::fs::remove_file(ct.join("image.json")).unwrap();
    std::fs::write(ct.join("unpacked"), image.display().to_string()).unwrap();
    prepare(&image, &ct).unwrap();
    assert!(p.root.join("local").exists());
    assert!(std::fs::read_to_string(ct.join("unpacked"))
        .unwrap()
        .starts_with("tar "));
    // A new image replaces the root.
    std::fs::write(&image, Tar::new().file("v", b"22").bytes()).unwrap();
    let p = prepare(&image, &ct).unwrap();
    assert_eq!(std::fs::read(p.root.join("v")).unwrap(), b"22");
    assert!(!p.root.join("local").exists());
    // A damaged one fails, naming it, and keeps nothing half-done.
    std::fs::write(&image, b"\x1f\x8bnot really gzip").unwrap();
    let err = prepare(&image, &ct).unwrap_err().to_string();
    assert!(err.contains(&image.display().to_string()), "{err}");
    assert!(!ct.join(".root.tmp").exists());
    let err = prepare(Path::new(&format!("{}:tag", image.display())), &ct)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("not an OCI image") || err.contains("gzip"),
        "{err}"
    );
}
