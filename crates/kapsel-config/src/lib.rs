//! The vm.conf language of Kapsel: OpenBSD vmd's configuration file, for
//! VMs and containers.
//!
//! [`load`] reads a file (following `include`s), expands macros, checks
//! the result and returns the typed [`Config`] with any warnings, or every
//! [`Diagnostic`] it found. [`Diagnostic::render`] gives the
//! `file:line:col: message` text with the offending line, a caret and a
//! suggested fix. [`Config::to_vm_conf`] prints the normalized
//! configuration, which parses back to the same model.
//!
//! ```
//! use kapsel_config::{parse_str, LoadOptions, ByteSize};
//! let text = "vms=\"/var/vm/\"\nvm \"web\" {\n\tmemory 1G\n\tdisk $vms \"web.img\"\n}\n";
//! let (config, warnings) = parse_str("vm.conf", text, &LoadOptions::default()).unwrap();
//! assert!(warnings.is_empty());
//! let web = config.effective_vm("web").unwrap();
//! assert_eq!(web.common.memory, Some(ByteSize(1 << 30)));
//! assert_eq!(web.disks[0].path.to_str(), Some("/var/vm/web.img"));
//! ```
//!
//! The crate touches the operating system only to read the configuration
//! files, and only through a [`Loader`]; user and group names are checked
//! through an [`Accounts`] the caller provides.

#![deny(missing_docs)]

mod diag;
mod lexer;
mod model;
mod parser;
mod print;
mod semantic;
mod size;

pub use diag::{Diagnostic, Severity};
pub use model::*;
pub use size::{parse_size, ByteSize, SizeError, GIB, KIB, MIB, TIB};

use std::collections::HashMap;
use std::io;
use std::path::{Component, Path, PathBuf};

/// The configuration file `kapsel check` and the daemon read by default.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/kapsel/vm.conf";

/// The largest configuration file [`FsLoader`] reads.
pub const MAX_FILE_SIZE: u64 = 16 << 20;

/// Where configuration files come from.
pub trait Loader {
    /// The text of the file at `path`.
    fn read(&self, path: &Path) -> io::Result<String>;
    /// A name that is equal for two paths of the same file; include
    /// cycles are found with it.
    fn identity(&self, path: &Path) -> PathBuf {
        normalize(path)
    }
}

/// Reads files from the file system: regular files up to [`MAX_FILE_SIZE`].
#[derive(Debug, Clone, Copy, Default)]
pub struct FsLoader;

impl Loader for FsLoader {
    fn read(&self, path: &Path) -> io::Result<String> {
        use std::io::Read;
        let file = std::fs::File::open(path)?;
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file",
            ));
        }
        if meta.len() > MAX_FILE_SIZE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("larger than {MAX_FILE_SIZE} bytes"),
            ));
        }
        let mut text = String::new();
        file.take(MAX_FILE_SIZE).read_to_string(&mut text)?;
        Ok(text)
    }

    fn identity(&self, path: &Path) -> PathBuf {
        std::fs::canonicalize(path).unwrap_or_else(|_| normalize(path))
    }
}

/// Files held in memory, for tests, fuzzing and configurations that do
/// not come from disk.
#[derive(Debug, Clone, Default)]
pub struct MemoryLoader {
    /// File contents by (normalized) path.
    pub files: HashMap<PathBuf, String>,
}

impl MemoryLoader {
    /// Adds a file.
    pub fn with(mut self, path: impl AsRef<Path>, text: impl Into<String>) -> Self {
        self.files.insert(normalize(path.as_ref()), text.into());
        self
    }
}

impl Loader for MemoryLoader {
    fn read(&self, path: &Path) -> io::Result<String> {
        self.files
            .get(&normalize(path))
            .cloned()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such file"))
    }
}

/// `a/./b/../c` is `a/c`: lexical, without asking the file system.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    out
}

/// The user and group database of the host, to check `owner` statements.
pub trait Accounts {
    /// Whether a user of that name exists.
    fn user_exists(&self, name: &str) -> bool;
    /// Whether a group of that name exists.
    fn group_exists(&self, name: &str) -> bool;
}

/// How to load a configuration.
pub struct LoadOptions<'a> {
    /// Macros set on the command line (`-D name=value`); they override
    /// definitions in the file.
    pub defines: Vec<(String, String)>,
    /// Checks `owner` names; `None` skips the check.
    pub accounts: Option<&'a dyn Accounts>,
    /// The file is meant for another host: unknown owners are warnings.
    pub foreign_host: bool,
    /// Reads the files.
    pub loader: &'a dyn Loader,
}

impl Default for LoadOptions<'_> {
    fn default() -> Self {
        LoadOptions {
            defines: Vec::new(),
            accounts: None,
            foreign_host: false,
            loader: &FsLoader,
        }
    }
}

/// The configuration and its warnings, or every diagnostic (errors and
/// warnings, in the order found).
pub type LoadResult = Result<(Config, Vec<Diagnostic>), Vec<Diagnostic>>;

/// Reads the configuration at `path` (and the files it includes), checks it
/// and fills in defaults.
pub fn load(path: impl AsRef<Path>, opts: &LoadOptions) -> LoadResult {
    let mut ctx = parser::Ctx::new(opts);
    ctx.load_file(path.as_ref(), None);
    finish(ctx)
}

/// Reads several configuration files as one, in order (the daemon's
/// vm.conf, then the files added with `kapsel load`): they are checked
/// together, so that a VM of one may use a switch or template of another,
/// and every diagnostic names the file and line it is about.
pub fn load_all(paths: &[&Path], opts: &LoadOptions) -> LoadResult {
    let mut ctx = parser::Ctx::new(opts);
    for path in paths {
        ctx.load_file(path, None);
    }
    finish(ctx)
}

/// Like [`load`], for text in memory that claims to come from `name`.
/// `include`s are still read with `opts.loader`.
pub fn parse_str(name: impl AsRef<Path>, text: &str, opts: &LoadOptions) -> LoadResult {
    let name = name.as_ref();
    let loader = Overlay {
        path: normalize(name),
        text,
        inner: opts.loader,
    };
    let opts = LoadOptions {
        defines: opts.defines.clone(),
        accounts: opts.accounts,
        foreign_host: opts.foreign_host,
        loader: &loader,
    };
    let mut ctx = parser::Ctx::new(&opts);
    ctx.load_file(name, None);
    finish(ctx)
}

/// One file in memory over another loader.
struct Overlay<'a> {
    path: PathBuf,
    text: &'a str,
    inner: &'a dyn Loader,
}

impl Loader for Overlay<'_> {
    fn read(&self, path: &Path) -> io::Result<String> {
        if normalize(path) == self.path {
            Ok(self.text.to_string())
        } else {
            self.inner.read(path)
        }
    }
    fn identity(&self, path: &Path) -> PathBuf {
        if normalize(path) == self.path {
            self.path.clone()
        } else {
            self.inner.identity(path)
        }
    }
}

fn finish(mut ctx: parser::Ctx) -> LoadResult {
    semantic::check(&mut ctx);
    let mut diags = std::mem::take(&mut ctx.diags);
    // In file order, so a reader can walk down the file; problems without
    // a line (an unreadable file, "too many problems") stay last.
    let file_rank = |d: &Diagnostic| {
        ctx.files
            .iter()
            .position(|f| *f == d.file)
            .unwrap_or(usize::MAX)
    };
    diags.sort_by_key(|d| (d.line == 0, file_rank(d), d.line, d.col));
    if diags.iter().any(Diagnostic::is_error) {
        return Err(diags);
    }
    let mut config = ctx.config;
    semantic::apply_defaults(&mut config);
    Ok((config, diags))
}

/// Parses a `-D name=value` argument.
pub fn parse_define(arg: &str) -> Result<(String, String), String> {
    let (name, value) = arg
        .split_once('=')
        .ok_or_else(|| format!("\"{arg}\" is not name=value"))?;
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!(
            "invalid macro name \"{name}\": use letters, digits and '_'"
        ));
    }
    Ok((name.to_string(), value.to_string()))
}

/// Checks a VM or switch name given outside a file (`kapsel start NAME`)
/// by the rules vm.conf applies to quoted VM names.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(format!(
            "the name \"{name}\" must be 1 to {} characters long",
            MAX_NAME_LEN
        ));
    }
    if !strict_name_chars(name) || name.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "invalid name \"{name}\": names start with a letter or digit, are not all digits, and contain only letters, digits, '.', '-' and '_'"
        ));
    }
    Ok(())
}

/// Whether a name starts with a letter or digit and holds only letters,
/// digits, '.', '-' and '_' (the rule for quoted VM and switch names).
pub(crate) fn strict_name_chars(name: &str) -> bool {
    name.chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_')
}
