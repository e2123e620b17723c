//! OCI image layouts (image-spec `image-layout.md`): `oci-layout`,
//! `index.json` and content-addressed `blobs/sha256/HEX`.
//!
//! The manifest is chosen from `index.json` (see [`Layout::choose_manifest`]),
//! every blob read is checked against its descriptor's size and SHA-256
//! digest, and the layers are applied in order with whiteouts by
//! [`super::extract::Extractor`].

use super::extract::Extractor;
use super::{decompress, make_dir, ImageDefaults, ImageError};
use oci_spec::image::{
    Arch, Descriptor, ImageConfiguration, ImageIndex, ImageManifest, MediaType, Os,
};
use sha2::{Digest as _, Sha256};
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The annotation that names a manifest in `index.json` (a tag).
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// JSON documents (index, manifest, config) larger than this are refused.
const MAX_JSON: u64 = 4 << 20;
/// Nested indexes deeper than this are refused.
const MAX_DEPTH: usize = 4;

const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// An OCI image layout directory.
pub struct Layout {
    dir: PathBuf,
}

impl Layout {
    /// Checks that `dir` holds an OCI image layout.
    pub fn open(dir: &Path) -> Result<Layout, ImageError> {
        let marker = std::fs::read(dir.join("oci-layout")).map_err(|e| {
            ImageError::io(
                format!("{}/oci-layout (is it an OCI image layout?)", dir.display()),
                e,
            )
        })?;
        let v: serde_json::Value = serde_json::from_slice(&marker)
            .map_err(|e| ImageError::new(format!("oci-layout is not JSON: {e}")))?;
        if v.get("imageLayoutVersion")
            .and_then(|v| v.as_str())
            .is_none()
        {
            return Err(ImageError::new(
                "oci-layout has no imageLayoutVersion; is it an OCI image layout?",
            ));
        }
        Ok(Layout {
            dir: dir.to_path_buf(),
        })
    }

    /// The manifest to run: with `reference`, the one `index.json` names so
    /// (annotation [`REF_NAME`]); without, the only one, or the only one
    /// for this host's platform. A nested index is followed to the
    /// manifest for this host's platform (`linux` and e.g. `amd64`).
    /// Returns the manifest's digest and the manifest.
    pub fn choose_manifest(
        &self,
        reference: Option<&str>,
    ) -> Result<(String, ImageManifest), ImageError> {
        let index = std::fs::read(self.dir.join("index.json"))
            .map_err(|e| ImageError::io("index.json", e))?;
        let index = ImageIndex::from_reader(&index[..])
            .map_err(|e| ImageError::new(format!("index.json: {e}")))?;
        let candidates: Vec<&Descriptor> = match reference {
            Some(r) => {
                let named: Vec<&Descriptor> = index
                    .manifests()
                    .iter()
                    .filter(|d| ref_name(d) == Some(r))
                    .collect();
                if named.is_empty() {
                    return Err(ImageError::new(format!(
                        "no manifest named \"{r}\" in index.json; it has: {}",
                        names(&index)
                    )));
                }
                named
            }
            None => index.manifests().iter().collect(),
        };
        let chosen = self.pick(&candidates, reference.is_none(), &index)?;
        self.resolve(chosen, 0)
    }

    /// One descriptor of several: the only one, or the only one for this
    /// platform.
    fn pick<'a>(
        &self,
        candidates: &[&'a Descriptor],
        unnamed: bool,
        index: &ImageIndex,
    ) -> Result<&'a Descriptor, ImageError> {
        if candidates.len() == 1 {
            return Ok(candidates[0]);
        }
        let ours: Vec<&Descriptor> = candidates
            .iter()
            .copied()
            .filter(|d| d.platform().as_ref().is_some_and(host_platform))
            .collect();
        match ours.as_slice() {
            [one] => Ok(one),
            [] if candidates.is_empty() => Err(ImageError::new("index.json lists no manifest")),
            _ if unnamed => Err(ImageError::new(format!(
                "index.json lists {} manifests; name one with image \"{}:NAME\" (names: {})",
                candidates.len(),
                self.dir.display(),
                names(index)
            ))),
            _ => Err(ImageError::new(format!(
                "{} manifests share that name and none is the only one for {}/{}",
                candidates.len(),
                Os::default(),
                Arch::default()
            ))),
        }
    }

    /// Follows a descriptor to an image manifest, through nested indexes.
    fn resolve(&self, d: &Descriptor, depth: usize) -> Result<(String, ImageManifest), ImageError> {
        if depth > MAX_DEPTH {
            return Err(ImageError::new("image indexes nested too deep"));
        }
        let bytes = self.read_json(d)?;
        let is_index = match d.media_type() {
            MediaType::ImageIndex => true,
            MediaType::Other(t) if t == DOCKER_LIST => true,
            MediaType::ImageManifest => false,
            MediaType::Other(t) if t == DOCKER_MANIFEST => false,
            other => {
                return Err(ImageError::new(format!(
                    "{} is a {other}, not an image manifest or index",
                    d.digest()
                )))
            }
        };
        if is_index {
            let index = ImageIndex::from_reader(&bytes[..])
                .map_err(|e| ImageError::new(format!("index {}: {e}", d.digest())))?;
            let all: Vec<&Descriptor> = index.manifests().iter().collect();
            let ours: Vec<&Descriptor> = all
                .iter()
                .copied()
                .filter(|d| d.platform().as_ref().is_none_or(host_platform))
                .collect();
            let next = match ours.as_slice() {
                [one] => *one,
                [] => {
                    return Err(ImageError::new(format!(
                        "the image has no manifest for {}/{}",
                        Os::default(),
                        Arch::default()
                    )))
                }
                _ => ours
                    .iter()
                    .copied()
                    .find(|d| d.platform().is_some())
                    .unwrap_or(ours[0]),
            };
            return self.resolve(next, depth + 1);
        }
        let manifest = ImageManifest::from_reader(&bytes[..])
            .map_err(|e| ImageError::new(format!("manifest {}: {e}", d.digest())))?;
        Ok((d.digest().to_string(), manifest))
    }

    /// Unpacks the chosen manifest's layers into the new directory `dest`
    /// and returns its configuration's defaults.
    pub fn unpack(
        &self,
        reference: Option<&str>,
        dest: &Path,
    ) -> Result<ImageDefaults, ImageError> {
        let (_, manifest) = self.choose_manifest(reference)?;
        let config = self.read_json(manifest.config())?;
        let config = ImageConfiguration::from_reader(&config[..])
            .map_err(|e| ImageError::new(format!("image configuration: {e}")))?;
        make_dir(dest)?;
        let mut ex = Extractor::new(dest, true)?;
        for (i, layer) in manifest.layers().iter().enumerate() {
            self.apply_layer(&mut ex, layer)
                .map_err(|e| e.context(&format!("layer {} ({})", i + 1, layer.digest())))?;
        }
        super::note(&ex.finish()?);
        let c = config.config().clone().unwrap_or_default();
        Ok(ImageDefaults {
            entrypoint: c.entrypoint().clone().unwrap_or_default(),
            cmd: c.cmd().clone().unwrap_or_default(),
            env: c.env().clone().unwrap_or_default(),
            working_dir: c.working_dir().clone().filter(|w| !w.is_empty()),
        })
    }

    fn apply_layer(&self, ex: &mut Extractor, layer: &Descriptor) -> Result<(), ImageError> {
        let layer_type = match layer.media_type() {
            MediaType::ImageLayer | MediaType::ImageLayerGzip | MediaType::ImageLayerZstd => true,
            MediaType::ImageLayerNonDistributable
            | MediaType::ImageLayerNonDistributableGzip
            | MediaType::ImageLayerNonDistributableZstd => true,
            MediaType::Other(t) => t.starts_with("application/vnd.docker.image.rootfs.diff.tar"),
            _ => false,
        };
        if !layer_type {
            return Err(ImageError::new(format!(
                "media type {} is not a layer Kapsel can apply (tar, tar+gzip, tar+zstd)",
                layer.media_type()
            )));
        }
        let file = self.open_blob(layer)?;
        let mut hashed = Verified::new(file);
        let unpacked = decompress(BufReader::new(&mut hashed)).and_then(|s| ex.unpack(s));
        // What the tar reader left (end-of-archive padding) counts too. A
        // damaged blob is reported as such rather than as what it broke.
        io::copy(&mut hashed, &mut io::sink()).map_err(|e| ImageError::io("reading", e))?;
        hashed.check(layer)?;
        unpacked
    }

    fn open_blob(&self, d: &Descriptor) -> Result<File, ImageError> {
        let path = self.blob_path(d)?;
        File::options()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|e| ImageError::io(format!("blob {}", path.display()), e))
    }

    fn blob_path(&self, d: &Descriptor) -> Result<PathBuf, ImageError> {
        let hex = d.as_digest_sha256().ok_or_else(|| {
            ImageError::new(format!(
                "blob {}: only sha256 digests are supported",
                d.digest()
            ))
        })?;
        // The digest becomes a file name: nothing but 64 hex digits.
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ImageError::new(format!(
                "{} is not a sha256 digest",
                d.digest()
            )));
        }
        Ok(self.dir.join("blobs/sha256").join(hex))
    }

    /// A small JSON blob, checked against its descriptor.
    fn read_json(&self, d: &Descriptor) -> Result<Vec<u8>, ImageError> {
        if d.size() > MAX_JSON {
            return Err(ImageError::new(format!(
                "{} claims {} bytes; JSON documents over {MAX_JSON} are refused",
                d.digest(),
                d.size()
            )));
        }
        let mut r = Verified::new(self.open_blob(d)?);
        let mut bytes = Vec::new();
        (&mut r)
            .take(MAX_JSON + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| ImageError::io(format!("blob {}", d.digest()), e))?;
        r.check(d)?;
        Ok(bytes)
    }
}

fn ref_name(d: &Descriptor) -> Option<&str> {
    d.annotations()
        .as_ref()
        .and_then(|a| a.get(REF_NAME))
        .map(String::as_str)
}

fn names(index: &ImageIndex) -> String {
    let names: Vec<&str> = index.manifests().iter().filter_map(ref_name).collect();
    if names.is_empty() {
        "none named".into()
    } else {
        names.join(", ")
    }
}

fn host_platform(p: &oci_spec::image::Platform) -> bool {
    *p.os() == Os::default() && *p.architecture() == Arch::default()
}

/// A reader that hashes and counts what passes through it.
struct Verified<R> {
    inner: R,
    hash: Sha256,
    len: u64,
}

impl<R: Read> Verified<R> {
    fn new(inner: R) -> Self {
        Verified {
            inner,
            hash: Sha256::new(),
            len: 0,
        }
    }

    fn check(self, d: &Descriptor) -> Result<(), ImageError> {
        if self.len != d.size() {
            return Err(ImageError::new(format!(
                "blob {} has {} bytes, its descriptor says {}; the image is damaged or was tampered with",
                d.digest(),
                self.len,
                d.size()
            )));
        }
        let got: String = self
            .hash
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        if Some(got.as_str()) != d.as_digest_sha256() {
            return Err(ImageError::new(format!(
                "blob {} has digest sha256:{got}; the image is damaged or was tampered with",
                d.digest()
            )));
        }
        Ok(())
    }
}

impl<R: Read> Read for Verified<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
}
