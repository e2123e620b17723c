//! qcow2 images through the `imago` crate (its synchronous build: no async
//! runtime runs in the vCPU threads that call these methods).
//!
//! The backing chain is opened here rather than by imago's implicit
//! opening, so that a missing file is reported by name, the chain's depth
//! is bounded and loops are refused.

use crate::{
    check_bounds, detect_file, read_only_error, BlockBackend, Format, ImageError, MAX_BACKING_DEPTH,
};
use imago::file::File as ImagoFile;
use imago::qcow2::Qcow2;
use imago::raw::Raw;
use imago::{
    DenyImplicitOpenGate, FormatAccess, FormatCreateBuilder, FormatDriverBuilder, Storage,
    StorageCreateOptions, StorageOpenOptions,
};
use std::io;
use std::path::{Path, PathBuf};

/// A qcow2 image (v2 or v3), with its backing chain opened read-only.
#[derive(Debug)]
pub struct Qcow2Backend {
    image: FormatAccess<ImagoFile>,
    read_only: bool,
}

impl Qcow2Backend {
    /// Opens the qcow2 image at `path` and its backing chain.
    pub fn open(path: &Path, read_only: bool) -> Result<Self, ImageError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|source| ImageError::Open {
                path: path.to_owned(),
                source,
            })?;
        crate::lock(&file, path, !read_only)?;
        Self::open_file(path, file, read_only)
    }

    /// Opens the qcow2 image in `file`, already open (for writing unless
    /// `read_only`); relative backing file names are resolved against the
    /// directory of `path`.
    pub fn open_file(
        path: &Path,
        file: std::fs::File,
        read_only: bool,
    ) -> Result<Self, ImageError> {
        let mut chain = Vec::new();
        if let Ok(canonical) = path.canonicalize() {
            chain.push(canonical);
        }
        let qcow2 = open_layer(path, file, !read_only, path, &mut chain)?;
        Ok(Qcow2Backend {
            image: FormatAccess::new(qcow2),
            read_only,
        })
    }
}

/// The path a backing file name in the header of `image` refers to.
fn resolve_backing(image: &Path, name: &str) -> PathBuf {
    let name = Path::new(name);
    if name.is_absolute() {
        return name.to_owned();
    }
    match image.parent() {
        Some(dir) => dir.join(name),
        None => name.to_owned(),
    }
}

/// Opens one qcow2 layer at `path` (held open in `file`) and, recursively,
/// the layers below it. `top` is the image the user named; `chain` holds the
/// canonical paths opened so far.
fn open_layer(
    path: &Path,
    file: std::fs::File,
    writable: bool,
    top: &Path,
    chain: &mut Vec<PathBuf>,
) -> Result<Qcow2<ImagoFile>, ImageError> {
    let qcow2_err = |source| ImageError::Qcow2 {
        path: path.to_owned(),
        source,
    };
    let options = StorageOpenOptions::new().filename(path).write(writable);
    let storage = ImagoFile::from_open_file(file, options).map_err(|source| ImageError::Open {
        path: path.to_owned(),
        source,
    })?;
    let mut qcow2 = Qcow2::<ImagoFile>::open_image(storage, writable).map_err(qcow2_err)?;
    if qcow2.requires_external_data_file() {
        return Err(qcow2_err(io::Error::new(
            io::ErrorKind::Unsupported,
            "external data files are not supported",
        )));
    }
    qcow2.set_data_file(None);

    let Some(name) = qcow2.implicit_backing_file().cloned() else {
        qcow2.set_backing(None);
        return Ok(qcow2);
    };
    let backing = resolve_backing(path, &name);
    let missing = |source| ImageError::MissingBacking {
        image: path.to_owned(),
        backing: backing.clone(),
        source,
    };
    let chain_err = |reason: String| ImageError::BackingChain {
        path: top.to_owned(),
        reason,
    };
    if chain.len() > MAX_BACKING_DEPTH {
        return Err(chain_err(format!(
            "is longer than {MAX_BACKING_DEPTH} backing files"
        )));
    }
    let canonical = backing.canonicalize().map_err(missing)?;
    if chain.contains(&canonical) {
        return Err(chain_err(format!(
            "loops: {} is its own backing file",
            canonical.display()
        )));
    }
    chain.push(canonical);
    let backing_file = std::fs::File::open(&backing).map_err(missing)?;
    // Many overlays may read one base; none may while it is written.
    crate::lock(&backing_file, &backing, false)?;
    let format = match qcow2.implicit_backing_format().map(String::as_str) {
        Some("qcow2") => Format::Qcow2,
        Some("raw") | Some("file") => Format::Raw,
        Some(other) => {
            return Err(qcow2_err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("backing file format \"{other}\" is not supported (raw and qcow2 are)"),
            )))
        }
        // Probing is safe enough here: the backing file is opened read-only
        // and the guest cannot have written it through this chain.
        None => detect_file(&backing_file).map_err(missing)?,
    };
    let layer = match format {
        Format::Qcow2 => FormatAccess::new(open_layer(&backing, backing_file, false, top, chain)?),
        Format::Raw => {
            let options = StorageOpenOptions::new().filename(&backing).write(false);
            let storage = ImagoFile::from_open_file(backing_file, options).map_err(missing)?;
            let raw = Raw::builder(storage)
                .open(DenyImplicitOpenGate::default())
                .map_err(missing)?;
            FormatAccess::new(raw)
        }
    };
    qcow2.set_backing(Some(layer));
    Ok(qcow2)
}

impl BlockBackend for Qcow2Backend {
    fn size(&self) -> u64 {
        self.image.size()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        check_bounds(self.size(), offset, buf.len() as u64)?;
        self.image.read(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if self.read_only {
            return Err(read_only_error());
        }
        check_bounds(self.size(), offset, buf.len() as u64)?;
        self.image.write(buf, offset)
    }

    fn flush(&self) -> io::Result<()> {
        // flush writes imago's cached metadata; sync makes it durable.
        self.image.flush()?;
        self.image.sync()
    }

    fn discard(&mut self, offset: u64, len: u64) -> io::Result<()> {
        if self.read_only {
            return Err(read_only_error());
        }
        check_bounds(self.size(), offset, len)?;
        match self.image.discard_to_any(offset, len) {
            // Discard is a hint: not doing it is correct.
            Err(e) if e.kind() == io::ErrorKind::Unsupported => Ok(()),
            r => r,
        }
    }

    fn write_zeroes(&mut self, offset: u64, len: u64, may_unmap: bool) -> io::Result<()> {
        if self.read_only {
            return Err(read_only_error());
        }
        check_bounds(self.size(), offset, len)?;
        if may_unmap {
            self.image.discard_to_zero(offset, len)
        } else {
            self.image.write_zeroes(offset, len)
        }
    }

    fn read_only(&self) -> bool {
        self.read_only
    }
}

/// Creates a qcow2 v3 image (64 KiB clusters, 16-bit refcounts).
pub(crate) fn create(
    path: &Path,
    size: Option<u64>,
    backing: Option<&Path>,
) -> Result<(), ImageError> {
    let create_err = |reason: String| ImageError::Create {
        path: path.to_owned(),
        reason,
    };
    let backing = match backing {
        None => None,
        Some(name) => {
            let name_str = name.to_str().ok_or_else(|| {
                create_err(format!(
                    "backing file name {} is not UTF-8; rename it",
                    name.display()
                ))
            })?;
            let resolved = resolve_backing(path, name_str);
            let format = crate::detect(&resolved).map_err(|e| create_err(e.to_string()))?;
            let size = crate::open(&resolved, Some(format), true)
                .map_err(|e| create_err(e.to_string()))?
                .size();
            Some((name_str.to_owned(), format, size))
        }
    };
    let size = size
        .or(backing.as_ref().map(|b| b.2))
        .ok_or_else(|| create_err("no size given".into()))?;
    let storage = ImagoFile::create_open(StorageCreateOptions::new().filename(path))
        .map_err(|e| create_err(format!("{e}; choose a path that does not exist")))?;
    let mut builder = Qcow2::<ImagoFile>::create_builder(storage).size(size);
    if let Some((name, format, _)) = backing {
        builder = builder.backing(name, format.name().to_owned());
    }
    builder.create().map_err(|e| {
        // Leave no half-formatted image behind.
        let _ = std::fs::remove_file(path);
        create_err(e.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backing_names_resolve_against_the_image_directory() {
        assert_eq!(
            resolve_backing(Path::new("/vm/disks/top.qcow2"), "base.raw"),
            PathBuf::from("/vm/disks/base.raw")
        );
        assert_eq!(
            resolve_backing(Path::new("/vm/top.qcow2"), "/img/base.qcow2"),
            PathBuf::from("/img/base.qcow2")
        );
        assert_eq!(
            resolve_backing(Path::new("top.qcow2"), "base.qcow2"),
            PathBuf::from("base.qcow2")
        );
    }

    /// A corrupt image that maps guest data onto its own metadata: writes
    /// there are refused (QEMU's overlap check), not let through to
    /// destroy the image further.
    #[test]
    fn writes_onto_metadata_are_refused() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.qcow2");
        crate::create(&path, Format::Qcow2, Some(4 << 20), None).unwrap();
        {
            let b = crate::open(&path, Some(Format::Qcow2), false).unwrap();
            b.write_at(&[0x5a; 4096], 0).unwrap();
            b.flush().unwrap();
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let be64 = |at: u64| {
            let mut w = [0u8; 8];
            file.read_exact_at(&mut w, at).unwrap();
            u64::from_be_bytes(w)
        };
        const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
        const COPIED: u64 = 1 << 63;
        let l1 = be64(40);
        let l2 = be64(l1) & OFFSET_MASK;
        let reftable = be64(48);
        let refblock = be64(reftable) & OFFSET_MASK;
        for (target, what) in [
            (l1, "L1"),
            (l2, "L2"),
            (reftable, "reftable"),
            (refblock, "refblock"),
        ] {
            // Guest cluster 1 mapped onto the metadata cluster (offset 0, the
            // header, would mean "unallocated" in an L2 entry).
            file.write_all_at(&(target | COPIED).to_be_bytes(), l2 + 8)
                .unwrap();
            file.sync_all().unwrap();
            let before = std::fs::read(&path).unwrap();
            let b = crate::open(&path, Some(Format::Qcow2), false).unwrap();
            let Err(err) = b.write_at(&[0xa5; 512], 1 << 16) else {
                panic!("a write onto the {what} went through");
            };
            assert!(err.to_string().contains("would overwrite"), "{what}: {err}");
            drop(b);
            assert!(
                std::fs::read(&path).unwrap() == before,
                "{what} was overwritten"
            );
        }
    }

    #[test]
    fn create_then_open_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.qcow2");
        crate::create(&base, Format::Qcow2, Some(4 << 20), None).unwrap();
        {
            let b = crate::open(&base, Some(Format::Qcow2), false).unwrap();
            assert_eq!(b.size(), 4 << 20);
            b.write_at(&[0x5a; 4096], 1 << 20).unwrap();
            b.flush().unwrap();
        }
        let top = dir.path().join("top.qcow2");
        crate::create(&top, Format::Qcow2, None, Some(Path::new("base.qcow2"))).unwrap();
        let mut t = crate::open(&top, None, false).unwrap();
        assert_eq!(t.size(), 4 << 20);
        // Its file holds metadata: no caller may bypass the backend.
        assert!(t.raw_file().is_none());
        let mut buf = [0u8; 4096];
        t.read_at(&mut buf, 1 << 20).unwrap();
        assert_eq!(buf, [0x5a; 4096]);
        t.write_zeroes(1 << 20, 4096, true).unwrap();
        t.read_at(&mut buf, 1 << 20).unwrap();
        assert_eq!(buf, [0; 4096]);
        t.discard(0, 1 << 16).unwrap();
        assert!(t.read_at(&mut buf, (4 << 20) - 4095).is_err());
        // An existing file is not overwritten.
        assert!(matches!(
            crate::create(&top, Format::Qcow2, Some(1 << 20), None),
            Err(ImageError::Create { .. })
        ));
    }
}
