//! Container images: a root file system tarball or an OCI image (a layout
//! directory, or an OCI archive: a tarball holding one), unpacked into a
//! directory that becomes a container's root.
//!
//! [`prepare`] is what the daemon calls: it unpacks `image` into
//! `DIR/root` once and again only when the image changes (the `DIR/unpacked`
//! marker records which image it was: a tarball's path, size and mtime, or
//! an OCI layout's manifest digest). Unpacking goes into a temporary
//! directory beside the root and is renamed into place only when it worked,
//! so a failure leaves nothing behind.
//!
//! Nothing in an image is trusted: [`extract`] never writes outside the
//! root, whatever the archive's paths and links say, and [`oci`] checks
//! every blob's size and SHA-256 digest.
//!
//! Naming a tag: `image "/srv/oci/alpine:3.19"` is the layout
//! `/srv/oci/alpine` and the manifest whose `org.opencontainers.image.ref.name`
//! is `3.19`, unless `/srv/oci/alpine:3.19` itself exists (then that is the
//! image, a directory or an OCI archive, and no reference is given). The
//! path is the longest existing one that ends before a `:`, so a reference
//! may hold `:` and `/` (`/srv/alpine.tar:docker.io/library/alpine:3.19`).

pub mod extract;
pub mod oci;

use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// What went wrong with an image: its own fault (damaged, hostile, not an
/// image) or the host's.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The image is not what it should be.
    #[error("{0}")]
    Invalid(String),
    /// A host operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: io::Error,
    },
}

impl ImageError {
    pub(crate) fn new(msg: impl Into<String>) -> Self {
        ImageError::Invalid(msg.into())
    }

    pub(crate) fn io(what: impl Into<String>, source: io::Error) -> Self {
        ImageError::Io {
            what: what.into(),
            source,
        }
    }

    /// The same error with `ctx: ` in front.
    pub(crate) fn context(self, ctx: &str) -> Self {
        match self {
            ImageError::Invalid(m) => ImageError::Invalid(format!("{ctx}: {m}")),
            ImageError::Io { what, source } => ImageError::Io {
                what: format!("{ctx}: {what}"),
                source,
            },
        }
    }
}

/// What an OCI image's configuration says about running it; empty for a
/// plain root tarball.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageDefaults {
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Cmd`: the entrypoint's arguments, or the command without one.
    pub cmd: Vec<String>,
    /// `Env`, `KEY=VALUE`.
    pub env: Vec<String>,
    /// `WorkingDir`, if set.
    pub working_dir: Option<String>,
}

impl ImageDefaults {
    /// The command the image asks to run: `Entrypoint` followed by `Cmd`;
    /// `None` if both are empty.
    pub fn command(&self) -> Option<Vec<String>> {
        let argv: Vec<String> = self.entrypoint.iter().chain(&self.cmd).cloned().collect();
        (!argv.is_empty()).then_some(argv)
    }
}

/// A container root made from an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    /// The root directory.
    pub root: PathBuf,
    /// The image configuration's defaults.
    pub defaults: ImageDefaults,
}

/// An image as named in vm.conf, found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A tarball: a root file system, or an OCI archive.
    Tarball {
        /// The file.
        path: PathBuf,
        /// The manifest's reference name, if one was given.
        reference: Option<String>,
    },
    /// A directory holding an OCI image layout.
    Layout {
        /// The directory.
        path: PathBuf,
        /// The manifest's reference name, if one was given.
        reference: Option<String>,
    },
}

impl Source {
    /// Finds `image`: a file or directory as it is, else `PATH:REF` (the
    /// part after the last `:` of the last component) if `PATH` exists.
    pub fn locate(image: &Path) -> Result<Source, ImageError> {
        let (path, reference) = match std::fs::metadata(image) {
            Ok(_) => (image.to_path_buf(), None),
            Err(e) => {
                // The longest existing PATH before a ':'; the rest is the
                // reference (which may hold ':' and '/' itself, as
                // `docker.io/library/alpine:3.19` does).
                let s = image.as_os_str().to_string_lossy();
                let split = s
                    .match_indices(':')
                    .rev()
                    .map(|(i, _)| (&s[..i], &s[i + 1..]))
                    .find(|(p, r)| !p.is_empty() && !r.is_empty() && Path::new(p).exists());
                match split {
                    Some((p, r)) => (PathBuf::from(p), Some(r.to_string())),
                    None => {
                        return Err(ImageError::io(
                            format!(
                                "image {} (a tarball, an OCI layout directory, or one of them and :TAG)",
                                image.display()
                            ),
                            e,
                        ))
                    }
                }
            }
        };
        if path.is_dir() {
            if !path.join("oci-layout").is_file() || !path.join("index.json").is_file() {
                return Err(ImageError::new(format!(
                    "image {} is a directory but not an OCI image layout (no oci-layout and index.json); \
                     give an OCI layout (e.g. from `skopeo copy docker://alpine oci:DIR`), a tarball, or use `root` for a plain directory",
                    path.display()
                )));
            }
            Ok(Source::Layout { path, reference })
        } else {
            Ok(Source::Tarball { path, reference })
        }
    }

    fn path(&self) -> &Path {
        match self {
            Source::Tarball { path, .. } | Source::Layout { path, .. } => path,
        }
    }

    /// A string that changes when the image does: a tarball's size and
    /// mtime, an OCI layout's chosen manifest digest.
    pub fn identity(&self) -> Result<String, ImageError> {
        match self {
            Source::Tarball { path, reference } => {
                let m = std::fs::metadata(path)
                    .map_err(|e| ImageError::io(format!("image {}", path.display()), e))?;
                Ok(format!(
                    "tar {} {} {}.{:09}{}",
                    path.display(),
                    m.size(),
                    m.mtime(),
                    m.mtime_nsec(),
                    reference
                        .as_deref()
                        .map(|r| format!(" ref {r}"))
                        .unwrap_or_default()
                ))
            }
            Source::Layout { path, reference } => {
                let layout = oci::Layout::open(path)?;
                let (digest, _) = layout.choose_manifest(reference.as_deref())?;
                Ok(format!("oci {} {digest}", path.display()))
            }
        }
    }
}

/// Unpacks `image` (as named in vm.conf) into `dir/root` unless the root
/// there already holds the same image; returns the root and the image's
/// defaults. `dir` is created if missing; `dir/unpacked` and
/// `dir/image.json` are kept beside the root (not in it, so the container
/// cannot fake them).
pub fn prepare(image: &Path, dir: &Path) -> Result<Prepared, ImageError> {
    let source = Source::locate(image)?;
    let identity = source.identity()?;
    let root = dir.join("root");
    let marker = dir.join("unpacked");
    let config = dir.join("image.json");
    let done = std::fs::read_to_string(&marker).ok();
    // Before the image module, the daemon wrote the tarball's path: that root
    // is kept (it may hold the container's state) and the marker updated.
    let legacy = matches!(source, Source::Tarball { .. })
        && done.as_deref() == Some(&*image.display().to_string());
    if legacy && root.is_dir() {
        let _ = std::fs::write(&marker, &identity);
    }
    if root.is_dir() && (legacy || done.as_deref() == Some(&identity)) {
        // The old daemon kept no configuration (its images had none); a
        // lost or damaged one means unpacking again, not running the
        // wrong command.
        let defaults = match std::fs::read(&config) {
            Err(e) if legacy && e.kind() == io::ErrorKind::NotFound => {
                Some(ImageDefaults::default())
            }
            Err(_) => None,
            Ok(b) => serde_json::from_slice(&b).ok(),
        };
        if let Some(defaults) = defaults {
            return Ok(Prepared { root, defaults });
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| ImageError::io(dir.display().to_string(), e))?;
    let tmp = dir.join(".root.tmp");
    let layout_tmp = dir.join(".oci.tmp");
    remove_tree(&tmp)?;
    remove_tree(&layout_tmp)?;
    let result = unpack_source(&source, &tmp, &layout_tmp);
    let _ = remove_tree(&layout_tmp);
    let defaults = match result {
        Ok(d) => d,
        Err(e) => {
            let _ = remove_tree(&tmp);
            return Err(e.context(&format!("unpacking image {}", source.path().display())));
        }
    };
    // The marker goes first: if anything below fails, the next start
    // unpacks again.
    let _ = std::fs::remove_file(&marker);
    let json = serde_json::to_vec_pretty(&defaults).expect("plain data serializes");
    std::fs::write(&config, json).map_err(|e| ImageError::io(config.display().to_string(), e))?;
    remove_tree(&root)?;
    std::fs::rename(&tmp, &root).map_err(|e| {
        let _ = remove_tree(&tmp);
        ImageError::io(
            format!("moving the unpacked image to {}", root.display()),
            e,
        )
    })?;
    std::fs::write(&marker, &identity)
        .map_err(|e| ImageError::io(marker.display().to_string(), e))?;
    Ok(Prepared { root, defaults })
}

/// Unpacks `source` into the new directory `dest`; an OCI archive is first
/// unpacked as it is into `layout_tmp`.
fn unpack_source(
    source: &Source,
    dest: &Path,
    layout_tmp: &Path,
) -> Result<ImageDefaults, ImageError> {
    match source {
        Source::Layout { path, reference } => {
            oci::Layout::open(path)?.unpack(reference.as_deref(), dest)
        }
        Source::Tarball { path, reference } => {
            make_dir(dest)?;
            let notes = unpack_tarball(path, dest, false)?;
            note(&notes);
            if dest.join("oci-layout").is_file() && dest.join("index.json").is_file() {
                // An OCI archive: the tarball held a layout, not a root.
                std::fs::rename(dest, layout_tmp)
                    .map_err(|e| ImageError::io(layout_tmp.display().to_string(), e))?;
                return oci::Layout::open(layout_tmp)?.unpack(reference.as_deref(), dest);
            }
            if let Some(r) = reference {
                return Err(ImageError::new(format!(
                    "it is a root file system tarball, not an OCI image, so it has no reference \"{r}\"; \
                     drop \":{r}\" from the path"
                )));
            }
            Ok(ImageDefaults::default())
        }
    }
}

fn note(notes: &extract::Notes) {
    if notes.devices_skipped > 0 {
        tracing::warn!(
            "image: {} device nodes skipped (no CAP_MKNOD); the container's /dev is made at start anyway",
            notes.devices_skipped
        );
    }
}

pub(crate) fn make_dir(dir: &Path) -> Result<(), ImageError> {
    std::fs::create_dir(dir).map_err(|e| ImageError::io(dir.display().to_string(), e))
}

fn remove_tree(dir: &Path) -> Result<(), ImageError> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(ImageError::io(format!("removing {}", dir.display()), e))
        }
        _ => Ok(()),
    }
}

/// Unpacks the tarball at `path` (plain, gzip, xz or zstd, told by its
/// first bytes) into the existing directory `dest`.
pub fn unpack_tarball(
    path: &Path,
    dest: &Path,
    whiteouts: bool,
) -> Result<extract::Notes, ImageError> {
    let file = File::open(path).map_err(|e| ImageError::io(path.display().to_string(), e))?;
    let mut ex = extract::Extractor::new(dest, whiteouts)?;
    ex.unpack(decompress(BufReader::new(file))?)?;
    ex.finish()
}

/// A reader of the decompressed stream, the format told by its magic
/// bytes: gzip, xz, zstd, or none.
pub fn decompress<'a, R: BufRead + 'a>(mut r: R) -> Result<Box<dyn Read + 'a>, ImageError> {
    let head = r
        .fill_buf()
        .map_err(|e| ImageError::io("reading the image", e))?;
    let starts = |magic: &[u8]| head.starts_with(magic);
    if starts(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::bufread::MultiGzDecoder::new(r)))
    } else if starts(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Ok(Box::new(lzma_rust2::XzReader::new(r, true)))
    } else if starts(&[0x28, 0xb5, 0x2f, 0xfd])
        // A skippable frame (0x184D2A50 to 0x184D2A5F) first.
        || (head.len() >= 4 && head[0] & 0xf0 == 0x50 && head[1..4] == [0x2a, 0x4d, 0x18])
    {
        Ok(Box::new(ZstdFrames {
            src: r,
            dec: ruzstd::decoding::FrameDecoder::new(),
            in_frame: false,
        }))
    } else if starts(b"BZh") {
        Err(ImageError::new(
            "bzip2 is not supported; repack it as .tar, .tar.gz, .tar.xz or .tar.zst",
        ))
    } else {
        Ok(Box::new(r))
    }
}

/// A zstd stream of one or more frames (as `zstd -T0` and pzstd write),
/// skippable frames skipped.
struct ZstdFrames<R: BufRead> {
    src: R,
    dec: ruzstd::decoding::FrameDecoder,
    in_frame: bool,
}

impl<R: BufRead> Read for ZstdFrames<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use ruzstd::decoding::errors::{FrameDecoderError, ReadFrameHeaderError};
        use ruzstd::decoding::BlockDecodingStrategy;
        let bad =
            |e: FrameDecoderError| io::Error::new(io::ErrorKind::InvalidData, format!("zstd: {e}"));
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if self.in_frame {
                if self.dec.can_collect() > 0 {
                    return self.dec.read(buf);
                }
                if self.dec.is_finished() {
                    self.in_frame = false;
                    continue;
                }
                self.dec
                    .decode_blocks(&mut self.src, BlockDecodingStrategy::UptoBlocks(1))
                    .map_err(bad)?;
                continue;
            }
            if self.src.fill_buf()?.is_empty() {
                return Ok(0);
            }
            match self.dec.init(&mut self.src) {
                Ok(()) => self.in_frame = true,
                Err(FrameDecoderError::ReadFrameHeaderError(ReadFrameHeaderError::SkipFrame {
                    length,
                    ..
                })) => {
                    io::copy(
                        &mut (&mut self.src).take(u64::from(length)),
                        &mut io::sink(),
                    )?;
                }
                Err(e) => return Err(bad(e)),
            }
        }
    }
}

#[cfg(test)]
mod tests;
