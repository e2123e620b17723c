//! The parser: tokens to the model, reporting every problem it can and
//! resynchronising at the end of the statement after each one.

use crate::diag::{did_you_mean, Diagnostic, Severity};
use crate::lexer::{Lexer, Macro, Macros, Pos, Tok, Token};
use crate::model::*;
use crate::size::{parse_size, ByteSize, MIB};
use crate::LoadOptions;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;

const TOP_KEYWORDS: &[&str] = &[
    "agentx",
    "container",
    "include",
    "local",
    "socket",
    "staggered",
    "switch",
    "vm",
];
const VM_KEYWORDS: &[&str] = &[
    "allow",
    "boot",
    "cdrom",
    "cmdline",
    "cpus",
    "disable",
    "disk",
    "enable",
    "firmware",
    "initrd",
    "interface",
    "interfaces",
    "local",
    "memory",
    "owner",
    "sev",
    "seves",
];
const SWITCH_KEYWORDS: &[&str] = &[
    "add",
    "disable",
    "down",
    "enable",
    "group",
    "interface",
    "locked",
    "rdomain",
    "up",
];
const IFACE_KEYWORDS: &[&str] = &[
    "down", "group", "lladdr", "locked", "rdomain", "switch", "up",
];
const ALLOW_KEYWORDS: &[&str] = &[
    "boot",
    "cdrom",
    "cpus",
    "disk",
    "instance",
    "interface",
    "memory",
    "owner",
];
const CONTAINER_KEYWORDS: &[&str] = &[
    "cpus",
    "disable",
    "enable",
    "image",
    "init",
    "interface",
    "local",
    "memory",
    "owner",
    "pids",
    "root",
    "unprivileged",
];

/// The deepest `include` nesting we follow.
const MAX_INCLUDE_DEPTH: usize = 16;
/// Lines longer than this are not shown under a diagnostic.
const MAX_SHOWN_LINE: usize = 1000;
/// Diagnostics beyond this many are dropped (a file with that many
/// problems is not a configuration).
const MAX_DIAGNOSTICS: usize = 1000;
/// No string may grow beyond this by concatenation.
const MAX_STRING: usize = 64 * 1024;

/// A place in some file, with the caret length.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Loc {
    pub file: PathBuf,
    pub pos: Pos,
}

impl Loc {
    pub fn span(&self) -> Span {
        Span {
            file: self.file.clone(),
            line: self.pos.line,
            col: self.pos.col,
        }
    }
}

/// What the semantic checks need to point at, beyond the model's spans.
#[derive(Default)]
pub(crate) struct VmNotes {
    /// First occurrence of each statement keyword (`boot device` is "boot device").
    pub stmts: Vec<(&'static str, Loc)>,
    /// `switch NAME` references: interface index, place of the name.
    pub switch_refs: Vec<(usize, Loc)>,
    /// Places of the `disk` statements, in order.
    pub disks: Vec<Loc>,
    /// The block header.
    pub header: Loc,
    /// The parent name in `vm "parent" instance "name"`.
    pub parent: Option<Loc>,
}

impl VmNotes {
    pub fn stmt(&self, kw: &str) -> Option<&Loc> {
        self.stmts.iter().find(|(k, _)| *k == kw).map(|(_, l)| l)
    }
}

/// Everything shared while parsing a file and the files it includes.
pub(crate) struct Ctx<'o> {
    pub opts: &'o LoadOptions<'o>,
    pub macros: Macros,
    pub diags: Vec<Diagnostic>,
    pub config: Config,
    pub vm_notes: Vec<VmNotes>,
    pub container_notes: Vec<VmNotes>,
    pub switch_notes: Vec<Loc>,
    /// The files being read: identity (for cycles) and name (for messages).
    include_stack: Vec<(PathBuf, PathBuf)>,
    /// Every file read, in the order they were first opened.
    pub files: Vec<PathBuf>,
    /// File texts and where their lines start, for the caret display.
    sources: HashMap<PathBuf, (Rc<str>, Vec<usize>)>,
}

impl<'o> Ctx<'o> {
    pub fn new(opts: &'o LoadOptions<'o>) -> Self {
        let macros = opts
            .defines
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    Macro {
                        value: v.clone(),
                        from_command_line: true,
                    },
                )
            })
            .collect();
        Ctx {
            opts,
            macros,
            diags: Vec::new(),
            config: Config::default(),
            vm_notes: Vec::new(),
            container_notes: Vec::new(),
            switch_notes: Vec::new(),
            include_stack: Vec::new(),
            files: Vec::new(),
            sources: HashMap::new(),
        }
    }

    /// A diagnostic at `loc`, with the source line for the caret display.
    pub fn diag(
        &mut self,
        severity: Severity,
        loc: &Loc,
        message: impl Into<String>,
        help: Option<String>,
    ) {
        let source_line = self.sources.get(&loc.file).and_then(|(text, starts)| {
            let start = *starts.get(loc.pos.line.checked_sub(1)? as usize)?;
            let line = text.get(start..)?.split('\n').next()?;
            let line = line.strip_suffix('\r').unwrap_or(line);
            // A caret under column 20000 helps nobody, and copying huge
            // lines into many diagnostics costs memory.
            (line.len() <= MAX_SHOWN_LINE).then(|| line.to_string())
        });
        if self.diags.len() >= MAX_DIAGNOSTICS {
            if self.diags.len() == MAX_DIAGNOSTICS {
                self.diags.push(Diagnostic {
                    severity: Severity::Error,
                    file: loc.file.clone(),
                    line: 0,
                    col: 0,
                    len: 0,
                    message: format!("more than {MAX_DIAGNOSTICS} problems; stopping here"),
                    help: None,
                    source_line: None,
                });
            }
            return;
        }
        self.diags.push(Diagnostic {
            severity,
            file: loc.file.clone(),
            line: loc.pos.line,
            col: loc.pos.col,
            len: loc.pos.len.max(1),
            message: message.into(),
            help,
            source_line,
        });
    }

    pub fn error(&mut self, loc: &Loc, message: impl Into<String>, help: Option<String>) {
        self.diag(Severity::Error, loc, message, help);
    }

    pub fn warning(&mut self, loc: &Loc, message: impl Into<String>, help: Option<String>) {
        self.diag(Severity::Warning, loc, message, help);
    }

    /// Reads and parses `path`; `from` is the `include` that named it.
    pub fn load_file(&mut self, path: &Path, from: Option<Loc>) {
        let at = from.clone().unwrap_or_else(|| Loc {
            file: path.to_path_buf(),
            pos: Pos::default(),
        });
        if self.include_stack.len() >= MAX_INCLUDE_DEPTH {
            self.error(
                &at,
                format!("includes nest deeper than {MAX_INCLUDE_DEPTH} files"),
                Some("flatten the includes".into()),
            );
            return;
        }
        let identity = self.opts.loader.identity(path);
        if let Some(first) = self
            .include_stack
            .iter()
            .position(|(id, _)| *id == identity)
        {
            let mut cycle: Vec<String> = self.include_stack[first..]
                .iter()
                .map(|(_, name)| name.display().to_string())
                .collect();
            cycle.push(path.display().to_string());
            self.error(
                &at,
                format!("include cycle: {}", cycle.join(" -> ")),
                Some("remove one of the include statements of the cycle".into()),
            );
            return;
        }
        let text = match self.opts.loader.read(path) {
            Ok(text) => text,
            Err(e) => {
                let help = match from {
                    Some(_) => {
                        "relative include paths start from the directory of the including file"
                    }
                    None => "choose another file with -f",
                };
                self.error(
                    &at,
                    format!("cannot read {}: {e}", path.display()),
                    Some(help.into()),
                );
                return;
            }
        };
        let text: Rc<str> = Rc::from(text);
        if !self.files.iter().any(|f| f == path) {
            self.files.push(path.to_path_buf());
        }
        let starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        self.sources
            .insert(path.to_path_buf(), (text.clone(), starts));
        self.include_stack.push((identity, path.to_path_buf()));
        let mut parser = Parser {
            lex: Lexer::new(&text),
            peeked: None,
            file: path.to_path_buf(),
            ctx: self,
        };
        parser.top();
        self.include_stack.pop();
    }
}

/// An error was reported; skip to the end of the statement.
struct Reported;

type PResult<T> = Result<T, Reported>;

struct Parser<'c, 'o, 's> {
    lex: Lexer<'s>,
    peeked: Option<Token>,
    file: PathBuf,
    ctx: &'c mut Ctx<'o>,
}

/// A VM or container block being parsed.
struct GuestState {
    vm: VmSpec,
    /// The container-only settings (`root`, `image`, `init`, `pids`).
    ct: ContainerSpec,
    notes: VmNotes,
    container: bool,
    desc: String,
}

struct IfaceState {
    iface: InterfaceSpec,
    switch_ref: Option<Loc>,
    seen: Vec<(&'static str, Loc)>,
}

impl Parser<'_, '_, '_> {
    // ---- tokens -------------------------------------------------------

    fn next(&mut self) -> Token {
        if let Some(t) = self.peeked.take() {
            return t;
        }
        let t = self.lex.next_token(&self.ctx.macros);
        for e in std::mem::take(&mut self.lex.errors) {
            let loc = self.loc(e.pos);
            self.ctx.error(&loc, e.message, e.help);
        }
        t
    }

    fn peek(&mut self) -> &Tok {
        if self.peeked.is_none() {
            let t = self.next();
            self.peeked = Some(t);
        }
        match &self.peeked {
            Some(t) => &t.tok,
            None => &Tok::Eof,
        }
    }

    fn peek_word(&mut self) -> Option<&str> {
        match self.peek() {
            Tok::Word(w) => Some(w.as_str()),
            _ => None,
        }
    }

    /// Consumes the bare word `w` if it comes next.
    fn eat_word(&mut self, w: &str) -> bool {
        if self.peek_word() == Some(w) {
            self.next();
            true
        } else {
            false
        }
    }

    fn loc(&self, pos: Pos) -> Loc {
        Loc {
            file: self.file.clone(),
            pos,
        }
    }

    fn peek_pos(&mut self) -> Pos {
        self.peek();
        self.peeked.as_ref().map(|t| t.pos).unwrap_or_default()
    }

    // ---- diagnostics --------------------------------------------------

    fn error(&mut self, pos: Pos, message: impl Into<String>, help: Option<String>) -> Reported {
        let loc = self.loc(pos);
        self.ctx.error(&loc, message, help);
        Reported
    }

    fn warning(&mut self, pos: Pos, message: impl Into<String>, help: Option<String>) {
        let loc = self.loc(pos);
        self.ctx.warning(&loc, message, help);
    }

    /// Reports that the next token is not `expected`, without consuming it.
    fn unexpected(&mut self, expected: &str, help: Option<String>) -> Reported {
        let pos = self.peek_pos();
        let tok = self.peek().clone();
        if tok == Tok::Invalid {
            return Reported; // the lexer said why
        }
        self.error(
            pos,
            format!("expected {expected}, found {}", tok.describe()),
            help,
        )
    }

    /// Skips the rest of a statement: to the next newline or `;`
    /// (consumed), or a `}` closing the block (not consumed).
    fn recover(&mut self, top_level: bool) {
        let mut depth = 0u32;
        loop {
            match self.peek() {
                Tok::Eof => return,
                Tok::Newline | Tok::Semi if depth == 0 => {
                    self.next();
                    return;
                }
                Tok::LBrace => depth += 1,
                Tok::RBrace if depth > 0 => depth -= 1,
                Tok::RBrace if !top_level => return,
                _ => {}
            }
            self.next();
        }
    }

    // ---- values -------------------------------------------------------

    /// A string: one or more adjacent quoted or bare strings, concatenated
    /// (vmd's `string`). Bare words in `stops` end it.
    fn string(&mut self, what: &str, stops: &[&str]) -> PResult<(String, Pos)> {
        let pos = self.peek_pos();
        let mut s = match self.peek() {
            Tok::Word(w) if !stops.contains(&w.as_str()) => w.clone(),
            Tok::Quoted(q) => q.clone(),
            _ => return Err(self.unexpected(what, None)),
        };
        self.next();
        loop {
            let more = match self.peek() {
                Tok::Word(w) if !stops.contains(&w.as_str()) => w.clone(),
                Tok::Quoted(q) => q.clone(),
                _ => break,
            };
            self.next();
            if s.len() + more.len() <= MAX_STRING {
                s.push_str(&more);
            }
        }
        Ok((s, pos))
    }

    fn number(&mut self, what: &str, min: u32, max: u32) -> PResult<(u32, Pos)> {
        let pos = self.peek_pos();
        let word = match self.peek() {
            Tok::Word(w) if !w.is_empty() && w.bytes().all(|b| b.is_ascii_digit()) => w.clone(),
            _ => return Err(self.unexpected(&format!("a number for {what}"), None)),
        };
        self.next();
        match word.parse::<u64>() {
            Ok(n) if n >= u64::from(min) && n <= u64::from(max) => Ok((n as u32, pos)),
            _ => Err(self.error(
                pos,
                format!("{what} must be between {min} and {max}, not {word}"),
                None,
            )),
        }
    }

    /// What follows `unprivileged`: nothing (the default map) or
    /// `map HOSTID COUNT`.
    fn user_map(&mut self) -> PResult<UserMap> {
        if !self.eat_word("map") {
            if let Tok::Word(w) = self.peek().clone() {
                if !w.is_empty() && w.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(self.unexpected(
                        "\"map\" before the host ids",
                        Some(format!("write: unprivileged map {w} COUNT")),
                    ));
                }
            }
            return Ok(UserMap::DEFAULT);
        }
        let (host_id, hpos) = self.number("the first host id", 0, u32::MAX - 1)?;
        if host_id == 0 {
            return Err(self.error(
                hpos,
                "host id 0 would make the container's root the host's root",
                Some(format!(
                    "map it to ids no host user has, e.g. unprivileged map {} {} (what `unprivileged` alone does)",
                    UserMap::DEFAULT.host_id,
                    UserMap::DEFAULT.count
                )),
            ));
        }
        let (count, cpos) = self.number("the number of ids", 0, u32::MAX)?;
        if count == 0 {
            return Err(self.error(
                cpos,
                "a map of 0 ids leaves the container no root",
                Some(format!(
                    "map at least 1 id; {} holds a distribution's users and groups",
                    UserMap::DEFAULT.count
                )),
            ));
        }
        let max = u32::MAX - host_id;
        if count > max {
            return Err(self.error(
                cpos,
                format!(
                    "host ids {host_id} to {} run past 4294967294, the last id there is",
                    u64::from(host_id) + u64::from(count) - 1
                ),
                Some(format!(
                    "map at most {max} ids from {host_id}, or start lower"
                )),
            ));
        }
        Ok(UserMap { host_id, count })
    }

    /// A name of a VM, container or switch.
    fn name(&mut self, what: &str, stops: &[&str], strict: bool) -> PResult<(String, Pos)> {
        let (name, pos) = self.string(&format!("the {what} name"), stops)?;
        if name.is_empty() || name.len() > MAX_NAME_LEN {
            return Err(self.error(
                pos,
                format!("the {what} name must be 1 to {MAX_NAME_LEN} characters long"),
                None,
            ));
        }
        if strict && !crate::strict_name_chars(&name) {
            return Err(self.error(
                pos,
                format!("invalid {what} name \"{name}\""),
                Some("names start with a letter or digit and contain only letters, digits, '.', '-' and '_'".into()),
            ));
        }
        if !strict
            && name
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == '/')
        {
            return Err(self.error(
                pos,
                format!("invalid {what} name \"{name}\""),
                Some("names may not contain whitespace or '/'".into()),
            ));
        }
        Ok((name, pos))
    }

    /// A network interface name on the host.
    fn ifname(&mut self, what: &str, stops: &[&str]) -> PResult<String> {
        let (name, pos) = self.string(what, stops)?;
        if name.is_empty()
            || name.len() > MAX_IFNAME_LEN
            || name
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == '/' || c == ':')
        {
            return Err(self.error(
                pos,
                format!("invalid network interface name \"{name}\""),
                Some(format!(
                    "Linux interface names have 1 to {MAX_IFNAME_LEN} characters and no whitespace, '/' or ':'"
                )),
            ));
        }
        Ok(name)
    }

    fn path(&mut self, what: &str, stops: &[&str]) -> PResult<(PathBuf, Pos)> {
        let (s, pos) = self.string(what, stops)?;
        if s.is_empty() {
            return Err(self.error(pos, format!("{what} is empty"), None));
        }
        Ok((PathBuf::from(s), pos))
    }

    /// Reports `path` (of `kw`, at `pos`) unless it is absolute.
    fn absolute(&mut self, path: &Path, kw: &str, pos: Pos, example: &str) -> PResult<()> {
        if path.is_absolute() {
            return Ok(());
        }
        Err(self.error(
            pos,
            format!("{kw} \"{}\" is not an absolute path", path.display()),
            Some(format!(
                "write the full path, starting with \"/\", e.g. {kw} \"{example}\""
            )),
        ))
    }

    /// `image PATH` must be a tarball Kapsel unpacks or a directory (an
    /// OCI image layout). Whether it is a directory depends on the host
    /// that runs the container, so only names that are certainly neither
    /// are reported here; the daemon checks the rest when it unpacks.
    fn check_image_name(&mut self, path: &Path, pos: Pos) -> PResult<()> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        if CONTAINER_IMAGE_EXTENSIONS.iter().any(|e| name.ends_with(e)) {
            return Ok(());
        }
        let ext = name.rsplit_once('.').map(|(_, e)| e).unwrap_or_default();
        let help = match ext {
            "img" | "raw" | "qcow2" | "iso" | "vmdk" | "vdi" => {
                "a disk image is for a VM (`disk PATH`); a container needs a tarball of its files or an OCI image directory"
            }
            "gz" | "xz" | "zst" | "bz2" | "tbz" | "tbz2" | "lz4" | "lzma" | "lz" | "zip" | "7z"
            | "rar" | "txz" | "tzst" => {
                "repack it as .tar, .tar.gz, .tgz, .tar.xz or .tar.zst, or unpack it and use `root PATH`"
            }
            _ => return Ok(()), // maybe a directory: an OCI image layout
        };
        Err(self.error(
            pos,
            format!(
                "image {} is neither a tarball Kapsel can unpack (.tar, .tar.gz, .tgz, .tar.xz, .tar.zst) nor an OCI image directory",
                path.display()
            ),
            Some(help.into()),
        ))
    }

    /// One or more strings to the end of the statement, each one
    /// argument. Strings written with no space between them (`$dir"/x"`)
    /// join into one argument, and a macro may hold several.
    fn arguments(&mut self, what: &str) -> PResult<(Vec<String>, Pos)> {
        let first = self.peek_pos();
        let mut args: Vec<String> = Vec::new();
        let mut last: Option<Pos> = None;
        let mut total = 0usize;
        loop {
            let pos = self.peek_pos();
            let s = match self.peek() {
                Tok::Word(w) => w.clone(),
                Tok::Quoted(q) => q.clone(),
                _ => break,
            };
            self.next();
            total += s.len();
            if total > MAX_STRING {
                return Err(self.error(
                    pos,
                    format!("the {what} is longer than {MAX_STRING} bytes"),
                    None,
                ));
            }
            let glued = last.is_some_and(|l| {
                l.line == pos.line && l.col.saturating_add(l.len) == pos.col && l.col != pos.col
            });
            match args.last_mut() {
                Some(prev) if glued => prev.push_str(&s),
                _ => args.push(s),
            }
            last = Some(pos);
        }
        if args.is_empty() {
            return Err(self.unexpected(what, None));
        }
        Ok((args, first))
    }

    fn owner(&mut self, stops: &[&str]) -> PResult<Owner> {
        let (s, pos) = self.string("an owner: user, user:group or :group", stops)?;
        let owner: Owner = s.parse().map_err(|e: String| {
            self.error(
                pos,
                e,
                Some("write owner user, owner user:group or owner :group".into()),
            )
        })?;
        self.check_owner(&owner, pos);
        Ok(owner)
    }

    fn check_owner(&mut self, owner: &Owner, pos: Pos) {
        let Some(accounts) = self.ctx.opts.accounts else {
            return;
        };
        let numeric = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        let severity = if self.ctx.opts.foreign_host {
            Severity::Warning
        } else {
            Severity::Error
        };
        let mut problems = Vec::new();
        if let Some(u) = &owner.user {
            if !numeric(u) && !accounts.user_exists(u) {
                problems.push(format!("user \"{u}\" does not exist on this host"));
            }
        }
        if let Some(g) = &owner.group {
            if !numeric(g) && !accounts.group_exists(g) {
                problems.push(format!("group \"{g}\" does not exist on this host"));
            }
        }
        for p in problems {
            let loc = self.loc(pos);
            self.ctx.diag(
                severity,
                &loc,
                p,
                Some("create it first, or fix the name".into()),
            );
        }
    }

    fn size(&mut self, what: &str) -> PResult<ByteSize> {
        let pos = self.peek_pos();
        let word = match self.peek() {
            Tok::Word(w) => w.clone(),
            Tok::Quoted(q) => q.clone(),
            _ => return Err(self.unexpected(&format!("a size for {what}, e.g. 512M or 2G"), None)),
        };
        self.next();
        let size = parse_size(&word).map_err(|e| {
            self.error(
                pos,
                e.to_string(),
                Some("sizes are a number with K, M, G or T: 512M, 2G".into()),
            )
        })?;
        if size.0 < MIB {
            let help = if word.bytes().all(|b| b.is_ascii_digit()) {
                format!("a number without unit is in bytes; did you mean {word}M?")
            } else {
                "give at least 1M".to_string()
            };
            return Err(self.error(
                pos,
                format!("{what} {word} is below the minimum of 1M"),
                Some(help),
            ));
        }
        Ok(size.round_up_to_mib())
    }

    // ---- statements ---------------------------------------------------

    /// After a statement: the line must end (or `;`, or the block closes).
    fn end_statement(&mut self, what: &str, top_level: bool) {
        match self.peek() {
            Tok::Newline | Tok::Semi => {
                self.next();
            }
            Tok::Eof | Tok::RBrace => {}
            Tok::Invalid => self.recover(top_level),
            _ => {
                let _ = self.unexpected(
                    &format!("the end of the line after \"{what}\""),
                    Some("put each statement on a line of its own".into()),
                );
                self.recover(top_level);
            }
        }
    }

    fn unknown_keyword(&mut self, word: &str, pos: Pos, here: &[&str], desc: &str) -> Reported {
        let suggestion = did_you_mean(word, here.iter().copied());
        let message = match suggestion {
            Some(s) => format!("unknown keyword \"{word}\" {desc}; did you mean \"{s}\"?"),
            None => format!("unknown keyword \"{word}\" {desc}"),
        };
        let elsewhere: Vec<&str> = [
            ("at the top level", TOP_KEYWORDS),
            ("in a vm block", VM_KEYWORDS),
            ("in a switch block", SWITCH_KEYWORDS),
            ("in an interface block", IFACE_KEYWORDS),
            ("in a container block", CONTAINER_KEYWORDS),
        ]
        .iter()
        .filter(|(_, kws)| kws.contains(&word))
        .map(|(w, _)| *w)
        .collect();
        let help = if !elsewhere.is_empty() {
            Some(format!("\"{word}\" is valid {}", elsewhere.join(" and ")))
        } else if suggestion.is_none() {
            Some(format!("valid here: {}", here.join(", ")))
        } else {
            None
        };
        self.error(pos, message, help)
    }

    fn top(&mut self) {
        loop {
            let pos = self.peek_pos();
            match self.peek().clone() {
                Tok::Eof => return,
                Tok::Newline | Tok::Semi => {
                    self.next();
                }
                Tok::Word(w) => {
                    self.next();
                    let result = if *self.peek() == Tok::Eq {
                        self.next();
                        self.macro_definition(&w, pos)
                    } else {
                        match w.as_str() {
                            "include" => self.include(),
                            "local" => self.local(),
                            "socket" => self.socket(),
                            "staggered" => self.staggered(),
                            "agentx" => self.agentx(pos),
                            "switch" => self.switch(pos),
                            "vm" => self.guest(pos, false),
                            "container" => self.guest(pos, true),
                            _ => Err(self.unknown_top(&w, pos)),
                        }
                    };
                    match result {
                        Ok(()) => self.end_statement(&w, true),
                        Err(Reported) => self.recover(true),
                    }
                }
                Tok::RBrace => {
                    self.next();
                    let _ = self.error(
                        pos,
                        "unmatched \"}\"",
                        Some("remove it, or add the block it should close".into()),
                    );
                }
                Tok::Invalid => self.recover(true),
                other => {
                    let help = matches!(other, Tok::Quoted(_))
                        .then(|| "keywords and macro names are not quoted".to_string());
                    let _ = self.error(
                        pos,
                        format!("expected a statement, found {}", other.describe()),
                        help,
                    );
                    self.recover(true);
                }
            }
        }
    }

    fn unknown_top(&mut self, w: &str, pos: Pos) -> Reported {
        if matches!(self.peek(), Tok::Quoted(_)) {
            let message = match did_you_mean(w, TOP_KEYWORDS.iter().copied()) {
                Some(s) => {
                    format!("unknown keyword \"{w}\" at the top level; did you mean \"{s}\"?")
                }
                None => format!("unknown keyword \"{w}\" at the top level"),
            };
            return self.error(
                pos,
                message,
                Some(format!("to define a macro, write {w} = \"value\"")),
            );
        }
        self.unknown_keyword(w, pos, TOP_KEYWORDS, "at the top level")
    }

    fn macro_definition(&mut self, name: &str, pos: Pos) -> PResult<()> {
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(self.error(
                pos,
                format!("invalid macro name \"{name}\""),
                Some("macro names contain only letters, digits and '_'".into()),
            ));
        }
        let value = if matches!(self.peek(), Tok::Newline | Tok::Eof | Tok::Semi) {
            String::new()
        } else {
            self.string("the macro value", &[])?.0
        };
        let overridden = self
            .ctx
            .macros
            .get(name)
            .is_some_and(|m| m.from_command_line);
        if !overridden {
            self.ctx.macros.insert(
                name.to_string(),
                Macro {
                    value,
                    from_command_line: false,
                },
            );
        }
        Ok(())
    }

    fn include(&mut self) -> PResult<()> {
        let (name, pos) = self.string("the file to include, in quotes", &[])?;
        if name.is_empty() {
            return Err(self.error(pos, "include of an empty file name", None));
        }
        let path = Path::new(&name);
        let path = if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.file
                .parent()
                .map(|d| d.join(path))
                .unwrap_or_else(|| path.to_path_buf())
        };
        // `./x` reads better as `x` in messages; `..` stays (symlinks).
        let path: PathBuf = path
            .components()
            .filter(|c| *c != std::path::Component::CurDir)
            .collect();
        // The statement must end before the included file is read, so the
        // included file sees the macros defined so far and no more.
        if !matches!(self.peek(), Tok::Newline | Tok::Semi | Tok::Eof) {
            return Err(self.unexpected(
                "the end of the line after the include",
                Some("put each statement on a line of its own".into()),
            ));
        }
        let from = self.loc(pos);
        self.ctx.load_file(&path, Some(from));
        Ok(())
    }

    fn local(&mut self) -> PResult<()> {
        if self.eat_word("prefix") {
            let (s, pos) = self.string("an IPv4 prefix, e.g. 100.64.0.0/10", &[])?;
            return match s.parse::<Ipv4Prefix>() {
                Ok(p) => {
                    self.ctx.config.globals.local_prefix = p;
                    Ok(())
                }
                Err(e) => {
                    let help = if s.parse::<Ipv6Prefix>().is_ok() {
                        format!("for IPv6, write: local inet6 prefix {s}")
                    } else {
                        "write it as A.B.C.D/LENGTH, e.g. 100.64.0.0/10".into()
                    };
                    Err(self.error(pos, e, Some(help)))
                }
            };
        }
        if self.eat_word("inet6") {
            let mut prefix = Ipv6Prefix::default();
            if self.eat_word("prefix") {
                let (s, pos) = self.string("an IPv6 prefix, e.g. fd00::/8", &[])?;
                prefix = s.parse().map_err(|e: String| {
                    self.error(
                        pos,
                        e,
                        Some("write it as ADDRESS/LENGTH, e.g. fd00::/8".into()),
                    )
                })?;
            }
            self.ctx.config.globals.local_inet6 = Some(prefix);
            return Ok(());
        }
        let help = (self.peek_word() == Some("interface"))
            .then(|| "\"local interface\" belongs in a vm block".to_string());
        Err(self.unexpected("\"prefix\" or \"inet6\" after \"local\"", help))
    }

    fn socket(&mut self) -> PResult<()> {
        if !self.eat_word("owner") {
            return Err(self.unexpected("\"owner\" after \"socket\"", None));
        }
        let owner = self.owner(&[])?;
        self.ctx.config.globals.socket_owner = Some(owner);
        Ok(())
    }

    fn staggered(&mut self) -> PResult<()> {
        let help = || Some("write: staggered start parallel N delay SECONDS".to_string());
        if !self.eat_word("start") {
            return Err(self.unexpected("\"start\"", help()));
        }
        if !self.eat_word("parallel") {
            return Err(self.unexpected("\"parallel\"", help()));
        }
        let (parallel, _) = self.number("parallel", 1, u32::MAX)?;
        if !self.eat_word("delay") {
            return Err(self.unexpected("\"delay\"", help()));
        }
        let (delay_secs, _) = self.number("delay", 0, u32::MAX)?;
        self.ctx.config.globals.staggered_start = Some(StaggeredStart {
            parallel,
            delay_secs,
        });
        Ok(())
    }

    fn agentx(&mut self, pos: Pos) -> PResult<()> {
        let mut agentx = AgentX::default();
        loop {
            if self.eat_word("context") {
                agentx.context = Some(self.string("the SNMP context", &["path"])?.0);
            } else if self.eat_word("path") {
                agentx.path = Some(self.path("the AgentX socket path", &["context"])?.0);
            } else {
                break;
            }
        }
        self.ctx.config.globals.agentx = Some(agentx);
        self.warning(
            pos,
            "agentx is not supported on Linux; the statement is ignored",
            None,
        );
        Ok(())
    }

    /// `{`, then statements parsed by `stmt` until `}`. In a `strict`
    /// block each statement ends its line; otherwise (interface options,
    /// `allow instance`) they may share one.
    fn block<S>(
        &mut self,
        st: &mut S,
        desc: &str,
        open: Pos,
        strict: bool,
        stmt: fn(&mut Self, &mut S, &str, Pos) -> PResult<()>,
    ) -> PResult<()> {
        if strict {
            while *self.peek() == Tok::Newline {
                self.next();
            }
        }
        if *self.peek() != Tok::LBrace {
            return Err(self.unexpected(&format!("\"{{\" to open {desc}"), None));
        }
        self.next();
        loop {
            let pos = self.peek_pos();
            match self.peek().clone() {
                Tok::Newline | Tok::Semi => {
                    self.next();
                }
                Tok::Comma if !strict => {
                    self.next();
                }
                Tok::RBrace => {
                    self.next();
                    return Ok(());
                }
                Tok::Eof => {
                    let _ = self.error(
                        open,
                        format!("{desc} is not closed"),
                        Some("add \"}\" at its end".into()),
                    );
                    return Ok(());
                }
                Tok::Word(w) => {
                    self.next();
                    match stmt(self, st, &w, pos) {
                        Ok(()) if strict => self.end_statement(&w, false),
                        Ok(()) => {}
                        Err(Reported) => self.recover(false),
                    }
                }
                Tok::Invalid => self.recover(false),
                other => {
                    let help = matches!(other, Tok::Quoted(_))
                        .then(|| "keywords are not quoted".to_string());
                    let _ = self.error(
                        pos,
                        format!("expected a keyword in {desc}, found {}", other.describe()),
                        help,
                    );
                    self.next();
                    if other != Tok::LBrace {
                        self.recover(false);
                    } else {
                        // Skip the stray block whole.
                        let mut depth = 1u32;
                        while depth > 0 {
                            match self.next().tok {
                                Tok::LBrace => depth += 1,
                                Tok::RBrace => depth -= 1,
                                Tok::Eof => return Ok(()),
                                _ => {}
                            }
                        }
                    }
                }
            }
        }
    }

    fn switch(&mut self, pos: Pos) -> PResult<()> {
        let (name, _) = self.name("switch", &[], false)?;
        let mut sw = SwitchSpec::new(name.clone());
        sw.span = self.loc(pos).span();
        let desc = format!("switch \"{name}\"");
        self.block(&mut sw, &desc, pos, true, Self::switch_statement)?;
        self.ctx.config.switches.push(sw);
        let loc = self.loc(pos);
        self.ctx.switch_notes.push(loc);
        Ok(())
    }

    fn switch_statement(&mut self, sw: &mut SwitchSpec, kw: &str, pos: Pos) -> PResult<()> {
        match kw {
            "enable" => sw.enabled = true,
            "disable" => sw.enabled = false,
            "up" => sw.up = true,
            "down" => sw.up = false,
            "interface" => {
                sw.interface = Some(self.ifname("the bridge interface, e.g. bridge0", &[])?)
            }
            "add" => {
                let member = self.ifname("a host interface to add, e.g. eth0", &[])?;
                sw.members.push(member);
            }
            "group" => {
                sw.group = Some(self.string("an interface group name", &[])?.0);
                self.warning(
                    pos,
                    "interface groups are not supported on Linux; \"group\" is ignored",
                    None,
                );
            }
            "locked" => {
                if !self.eat_word("lladdr") {
                    return Err(self.unexpected("\"lladdr\" after \"locked\"", None));
                }
                sw.locked_lladdr = true;
            }
            "rdomain" => {
                sw.rdomain = Some(self.number("rdomain", 0, 255)?.0);
                self.warning(
                    pos,
                    "routing domains are not supported on Linux; \"rdomain\" is ignored",
                    None,
                );
            }
            _ => {
                let desc = format!("in switch \"{}\"", sw.name);
                return Err(self.unknown_keyword(kw, pos, SWITCH_KEYWORDS, &desc));
            }
        }
        Ok(())
    }

    /// `vm NAME [instance NAME] { ... }` or `container NAME { ... }`.
    fn guest(&mut self, pos: Pos, container: bool) -> PResult<()> {
        let what = if container { "container" } else { "vm" };
        let (first, first_pos) = self.name(what, &["instance"], true)?;
        let mut notes = VmNotes {
            header: self.loc(pos),
            ..VmNotes::default()
        };
        let mut vm = if !container && self.eat_word("instance") {
            let (name, _) = self.name("instance", &[], true)?;
            notes.parent = Some(self.loc(first_pos));
            let mut vm = VmSpec::new(name);
            vm.instance_of = Some(first);
            vm
        } else {
            VmSpec::new(first)
        };
        vm.common.span = self.loc(pos).span();
        let desc = format!("{what} \"{}\"", vm.common.name);
        let mut st = GuestState {
            ct: ContainerSpec::new(vm.common.name.clone()),
            vm,
            notes,
            container,
            desc: desc.clone(),
        };
        self.block(&mut st, &desc, pos, true, Self::guest_statement)?;
        let GuestState { vm, ct, notes, .. } = st;
        if container {
            self.ctx.config.containers.push(ContainerSpec {
                common: vm.common,
                ..ct
            });
            self.ctx.container_notes.push(notes);
        } else {
            self.ctx.config.vms.push(vm);
            self.ctx.vm_notes.push(notes);
        }
        Ok(())
    }

    /// Records a statement that may appear once per block.
    fn once(&mut self, st: &mut GuestState, kw: &'static str, pos: Pos) -> PResult<()> {
        if let Some(first) = st.notes.stmt(kw) {
            let line = first.pos.line;
            return Err(self.error(
                pos,
                format!("\"{kw}\" is given more than once in {}", st.desc),
                Some(format!("the first is on line {line}; keep one of them")),
            ));
        }
        let loc = self.loc(pos);
        st.notes.stmts.push((kw, loc));
        Ok(())
    }

    fn guest_statement(&mut self, st: &mut GuestState, kw: &str, pos: Pos) -> PResult<()> {
        if st.container && !CONTAINER_KEYWORDS.contains(&kw) {
            if VM_KEYWORDS.contains(&kw) {
                let help = match kw {
                    "boot" | "initrd" | "cmdline" | "cdrom" | "disk" | "firmware" => format!(
                        "a container runs on the host kernel: give its files with `root PATH` or `image PATH`; containers take: {}",
                        CONTAINER_KEYWORDS.join(", ")
                    ),
                    _ => format!("containers take: {}", CONTAINER_KEYWORDS.join(", ")),
                };
                return Err(self.error(
                    pos,
                    format!("\"{kw}\" is not supported in a container block"),
                    Some(help),
                ));
            }
            let desc = format!("in {}", st.desc);
            return Err(self.unknown_keyword(kw, pos, CONTAINER_KEYWORDS, &desc));
        }
        if !st.container {
            let hint = match kw {
                "root" => Some((
                    "\"root\" is for containers; a VM boots a kernel with `boot`",
                    "give the VM its root file system with `disk PATH`, or make this block a `container`",
                )),
                "image" => Some((
                    "\"image\" is for containers; a VM's images are given with `disk` or `cdrom`",
                    "write disk PATH, or make this block a `container`",
                )),
                "init" => Some((
                    "\"init\" is for containers; a VM's kernel starts its init",
                    "to choose it, pass it on the kernel command line: cmdline \"init=/sbin/init\"",
                )),
                "pids" => Some((
                    "\"pids\" is for containers; a VM's processes are limited inside its guest",
                    "remove it, or make this block a `container`",
                )),
                "unprivileged" => Some((
                    "\"unprivileged\" is for containers; a VM's guest has a kernel of its own and its process runs sandboxed already",
                    "remove it, or make this block a `container`",
                )),
                _ => None,
            };
            if let Some((message, help)) = hint {
                return Err(self.error(pos, message, Some(help.into())));
            }
        }
        match kw {
            "enable" => st.vm.common.enabled = true,
            "disable" => st.vm.common.enabled = false,
            "root" => {
                self.once(st, "root", pos)?;
                let (path, ppos) = self.path("the root directory of the container", &[])?;
                self.absolute(&path, "root", ppos, "/var/lib/kapsel/ct/NAME")?;
                if path
                    .components()
                    .all(|c| c == std::path::Component::RootDir)
                {
                    return Err(self.error(
                        ppos,
                        "the root of a container cannot be the host's \"/\"",
                        Some("give it a directory of its own, e.g. /var/lib/kapsel/ct/NAME".into()),
                    ));
                }
                st.ct.root = Some(path);
            }
            "image" => {
                self.once(st, "image", pos)?;
                let (path, ppos) =
                    self.path("the image: a tarball or an OCI image directory", &[])?;
                self.absolute(&path, "image", ppos, "/srv/templates/debian-12.tar.zst")?;
                self.check_image_name(&path, ppos)?;
                st.ct.image = Some(path);
            }
            "init" => {
                self.once(st, "init", pos)?;
                let (argv, ipos) =
                    self.arguments("the program to run as init, e.g. \"/sbin/init\"")?;
                let program = argv.first().map(String::as_str).unwrap_or_default();
                if !program.starts_with('/') {
                    return Err(self.error(
                        ipos,
                        format!("init program \"{program}\" is not an absolute path"),
                        Some(format!(
                            "init is not looked up in $PATH; write the full path inside the container, e.g. init \"/bin/{}\"",
                            if program.is_empty() { "sh" } else { program }
                        )),
                    ));
                }
                st.ct.init = argv;
            }
            "pids" => {
                self.once(st, "pids", pos)?;
                let max = u32::try_from(MAX_CONTAINER_PIDS).unwrap_or(u32::MAX);
                st.ct.pids = Some(u64::from(self.number("pids", 1, max)?.0));
            }
            "unprivileged" => {
                self.once(st, "unprivileged", pos)?;
                st.ct.unprivileged = Some(self.user_map()?);
            }
            "memory" => {
                self.once(st, "memory", pos)?;
                st.vm.common.memory = Some(self.size("memory")?);
            }
            "cpus" => {
                self.once(st, "cpus", pos)?;
                st.vm.common.cpus = Some(self.number("cpus", 1, MAX_VM_CPUS)?.0);
            }
            "owner" => {
                self.once(st, "owner", pos)?;
                st.vm.common.owner = Some(self.owner(&[])?);
            }
            "boot" => {
                if self.eat_word("device") {
                    self.once(st, "boot device", pos)?;
                    let dpos = self.peek_pos();
                    let dev = match self.peek_word() {
                        Some("cdrom") => BootDevice::Cdrom,
                        Some("disk") => BootDevice::Disk,
                        Some("net") => BootDevice::Net,
                        _ => return Err(self.unexpected("a boot device: cdrom, disk or net", None)),
                    };
                    let _ = dpos;
                    self.next();
                    st.vm.boot_device = Some(dev);
                } else {
                    self.once(st, "boot", pos)?;
                    st.vm.boot = Some(self.path("the kernel or BIOS image to boot", &[])?.0);
                }
            }
            "kernel" if !st.container => {
                // OpenBSD before 6.7 called `boot` `kernel`.
                self.once(st, "boot", pos)?;
                st.vm.boot = Some(self.path("the kernel to boot", &[])?.0);
                self.warning(
                    pos,
                    "\"kernel\" is the old name of \"boot\"",
                    Some("write: boot PATH".into()),
                );
            }
            "firmware" => {
                self.once(st, "firmware", pos)?;
                let fw = match self.peek_word() {
                    Some("bios") => Firmware::Bios,
                    Some("uefi") => Firmware::Uefi,
                    _ => return Err(self.unexpected("a firmware: bios or uefi", None)),
                };
                self.next();
                st.vm.firmware = Some(fw);
            }
            "initrd" => {
                self.once(st, "initrd", pos)?;
                st.vm.initrd = Some(self.path("the initrd image", &[])?.0);
            }
            "cmdline" => {
                self.once(st, "cmdline", pos)?;
                st.vm.cmdline = Some(self.string("the kernel command line, in quotes", &[])?.0);
            }
            "cdrom" => {
                self.once(st, "cdrom", pos)?;
                st.vm.cdrom = Some(self.path("the ISO image", &[])?.0);
            }
            "disk" => {
                let (path, _) = self.path("the disk image path", &["format"])?;
                let mut format = None;
                if self.eat_word("format") {
                    format = Some(match self.peek_word() {
                        Some("raw") => DiskFormat::Raw,
                        Some("qcow2") => DiskFormat::Qcow2,
                        _ => return Err(self.unexpected("a disk format: raw or qcow2", None)),
                    });
                    self.next();
                }
                let loc = self.loc(pos);
                if st.notes.stmt("disk").is_none() {
                    st.notes.stmts.push(("disk", loc.clone()));
                }
                st.notes.disks.push(loc);
                st.vm.disks.push(DiskSpec { path, format });
            }
            "interfaces" => {
                self.once(st, "interfaces", pos)?;
                st.vm.interface_count = Some(self.number("interfaces", 0, MAX_VM_INTERFACES)?.0);
            }
            "local" | "interface" => {
                let local = kw == "local";
                if local && !self.eat_word("interface") {
                    return Err(self.unexpected("\"interface\" after \"local\"", None));
                }
                let loc = self.loc(pos);
                if st.notes.stmt("interface").is_none() {
                    st.notes.stmts.push(("interface", loc));
                }
                let (iface, switch_ref) = self.interface(local)?;
                if let Some(r) = switch_ref {
                    st.notes
                        .switch_refs
                        .push((st.vm.common.interfaces.len(), r));
                }
                st.vm.common.interfaces.push(iface);
            }
            "allow" => {
                if !self.eat_word("instance") {
                    return Err(self.unexpected("\"instance\" after \"allow\"", None));
                }
                self.once(st, "allow instance", pos)?;
                let mut allow = AllowInstance::default();
                if *self.peek() == Tok::LBrace {
                    self.block(
                        &mut allow,
                        "allow instance",
                        pos,
                        false,
                        Self::allow_statement,
                    )?;
                } else {
                    let fpos = self.peek_pos();
                    let Some(flag) = self.peek_word().map(str::to_string) else {
                        return Err(
                            self.unexpected("\"{\" or an option after \"allow instance\"", None)
                        );
                    };
                    self.next();
                    self.allow_statement(&mut allow, &flag, fpos)?;
                }
                st.vm.allow_instance = Some(allow);
            }
            "sev" | "seves" => {
                if kw == "sev" {
                    st.vm.sev = true;
                } else {
                    st.vm.seves = true;
                }
                self.warning(
                    pos,
                    format!("\"{kw}\" (AMD memory encryption) is not supported by Kapsel; this VM will not start"),
                    Some("remove it to run the VM unencrypted".into()),
                );
            }
            _ => {
                let desc = format!("in {}", st.desc);
                return Err(self.unknown_keyword(kw, pos, VM_KEYWORDS, &desc));
            }
        }
        Ok(())
    }

    fn allow_statement(&mut self, a: &mut AllowInstance, kw: &str, pos: Pos) -> PResult<()> {
        match kw {
            "boot" => a.boot = true,
            "cdrom" => a.cdrom = true,
            "disk" => a.disk = true,
            "instance" => a.instance = true,
            "interface" => a.interface = true,
            "memory" => a.memory = true,
            "cpus" => a.cpus = true,
            "owner" => a.owner = Some(self.owner(ALLOW_KEYWORDS)?),
            _ => return Err(self.unknown_keyword(kw, pos, ALLOW_KEYWORDS, "in allow instance")),
        }
        Ok(())
    }

    /// `[local] interface [NAME] [{ ... }]`, after the keywords.
    fn interface(&mut self, local: bool) -> PResult<(InterfaceSpec, Option<Loc>)> {
        let mut st = IfaceState {
            iface: InterfaceSpec {
                local,
                ..InterfaceSpec::default()
            },
            switch_ref: None,
            seen: Vec::new(),
        };
        let stops = IFACE_KEYWORDS;
        if matches!(self.peek(), Tok::Word(w) if !stops.contains(&w.as_str()))
            || matches!(self.peek(), Tok::Quoted(_))
        {
            st.iface.name = Some(self.ifname("the interface name, e.g. tap0", stops)?);
        }
        if let Some(w) = self.peek_word().map(str::to_string) {
            if IFACE_KEYWORDS.contains(&w.as_str()) {
                return Err(self.unexpected(
                    "\"{\" or the end of the line",
                    Some(format!(
                        "interface options go in braces: interface {{ {w} ... }}"
                    )),
                ));
            }
        }
        if *self.peek() == Tok::LBrace {
            let pos = self.peek_pos();
            self.block(
                &mut st,
                "the interface block",
                pos,
                false,
                Self::iface_statement,
            )?;
        }
        Ok((st.iface, st.switch_ref))
    }

    fn iface_once(&mut self, st: &mut IfaceState, key: &'static str, pos: Pos) -> PResult<()> {
        if let Some((_, first)) = st.seen.iter().find(|(k, _)| *k == key) {
            let line = first.pos.line;
            return Err(self.error(
                pos,
                format!("\"{key}\" is given more than once in this interface"),
                Some(format!("the first is on line {line}; keep one of them")),
            ));
        }
        st.seen.push((key, self.loc(pos)));
        Ok(())
    }

    fn iface_statement(&mut self, st: &mut IfaceState, kw: &str, pos: Pos) -> PResult<()> {
        match kw {
            "switch" => {
                self.iface_once(st, "switch", pos)?;
                let (name, npos) = self.string("the switch name", IFACE_KEYWORDS)?;
                st.iface.switch = Some(name);
                st.switch_ref = Some(self.loc(npos));
            }
            "lladdr" | "locked" => {
                if kw == "locked" {
                    if !self.eat_word("lladdr") {
                        return Err(self.unexpected("\"lladdr\" after \"locked\"", None));
                    }
                    st.iface.locked = true;
                }
                self.iface_once(st, "lladdr", pos)?;
                let is_mac = match self.peek() {
                    Tok::Word(w) => !IFACE_KEYWORDS.contains(&w.as_str()),
                    Tok::Quoted(_) => true,
                    _ => false,
                };
                if is_mac {
                    let (s, mpos) = self.string("a MAC address", IFACE_KEYWORDS)?;
                    let mac: MacAddr = s.parse().map_err(|e: String| self.error(mpos, e, None))?;
                    if mac.0[0] & 1 != 0 {
                        return Err(self.error(
                            mpos,
                            format!("{mac} is a multicast address"),
                            Some(
                                "the first byte of a unicast MAC is even, e.g. fe:e1:ba:d0:00:01"
                                    .into(),
                            ),
                        ));
                    }
                    st.iface.lladdr = Some(mac);
                }
            }
            "group" => {
                self.iface_once(st, "group", pos)?;
                st.iface.group = Some(self.string("an interface group name", IFACE_KEYWORDS)?.0);
                self.warning(
                    pos,
                    "interface groups are not supported on Linux; \"group\" is ignored",
                    None,
                );
            }
            "rdomain" => {
                self.iface_once(st, "rdomain", pos)?;
                st.iface.rdomain = Some(self.number("rdomain", 0, 255)?.0);
                self.warning(
                    pos,
                    "routing domains are not supported on Linux; \"rdomain\" is ignored",
                    None,
                );
            }
            "up" => st.iface.up = true,
            "down" => st.iface.up = false,
            _ => {
                return Err(self.unknown_keyword(kw, pos, IFACE_KEYWORDS, "in an interface block"))
            }
        }
        Ok(())
    }
}
