//! Diagnostics: what went wrong, where, and how to fix it.

use std::fmt;
use std::path::PathBuf;

/// How bad a diagnostic is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// The configuration is not usable.
    Error,
    /// The configuration is usable, but something is ignored or suspicious.
    Warning,
}

/// One problem in a configuration, with its place and a suggested fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// The file, as named on the command line or by `include`.
    pub file: PathBuf,
    /// 1-based line; 0 when the problem has no place in a file.
    pub line: u32,
    /// 1-based column in characters; 0 when unknown.
    pub col: u32,
    /// How many characters the caret underlines (at least one).
    pub len: u32,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub help: Option<String>,
    /// The text of the offending line, for the caret display.
    pub source_line: Option<String>,
}

impl Diagnostic {
    /// Whether this is an error (not a warning).
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// `file:line:col: message`, then the line with a caret under the
    /// offending text, then `help: ...` when there is a suggestion.
    /// Warnings say `warning:` after the position.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str(&self.file.display().to_string());
        if self.line > 0 {
            out.push_str(&format!(":{}", self.line));
            if self.col > 0 {
                out.push_str(&format!(":{}", self.col));
            }
        }
        out.push_str(": ");
        if self.severity == Severity::Warning {
            out.push_str("warning: ");
        }
        out.push_str(&self.message);
        out.push('\n');
        if let (Some(src), true) = (&self.source_line, self.line > 0 && self.col > 0) {
            out.push_str(src);
            out.push('\n');
            // Keep tabs so the caret lines up however the terminal expands them.
            let pad: String = src
                .chars()
                .take(self.col as usize - 1)
                .map(|c| if c == '\t' { '\t' } else { ' ' })
                .collect();
            out.push_str(&pad);
            for _ in 0..self.len.max(1) {
                out.push('^');
            }
            out.push('\n');
        }
        if let Some(help) = &self.help {
            out.push_str("help: ");
            out.push_str(help);
            out.push('\n');
        }
        out
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render())
    }
}

/// The closest candidate to `word`, if it is close enough to be a typo.
pub(crate) fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let limit = match word.chars().count() {
        0..=2 => 0,
        3..=5 => 1,
        _ => 2,
    };
    let lower = word.to_lowercase();
    candidates
        .into_iter()
        .map(|c| (edit_distance(&lower, &c.to_lowercase()), c))
        .filter(|(d, _)| *d <= limit)
        // Ties go to the alphabetically first, so output does not depend
        // on hash order.
        .min_by_key(|(d, c)| (*d, *c))
        .map(|(_, c)| c)
        .filter(|c| *c != word)
}

/// Optimal string alignment distance: Levenshtein plus transpositions, so
/// `memroy` is one edit from `memory`.
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // Inputs are keywords and names; bound the work on hostile input anyway.
    if a.len() > 64 || b.len() > 64 {
        return usize::MAX;
    }
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distance() {
        assert_eq!(edit_distance("memroy", "memory"), 1);
        assert_eq!(edit_distance("disk", "disk"), 0);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn suggestions() {
        let kws = ["memory", "disk", "boot", "cdrom"];
        assert_eq!(did_you_mean("memroy", kws), Some("memory"));
        assert_eq!(did_you_mean("dsk", kws), Some("disk"));
        assert_eq!(did_you_mean("MEMORY", kws), Some("memory"));
        assert_eq!(did_you_mean("frobnicate", kws), None);
        assert_eq!(did_you_mean("disk", kws), None);
    }

    #[test]
    fn render_with_caret_and_help() {
        let d = Diagnostic {
            severity: Severity::Error,
            file: "vm.conf".into(),
            line: 3,
            col: 2,
            len: 6,
            message: "unknown keyword \"memroy\" in vm \"web\"; did you mean \"memory\"?".into(),
            help: Some("write: memory 1G".into()),
            source_line: Some("\tmemroy 1G".into()),
        };
        assert_eq!(
            d.render(),
            "vm.conf:3:2: unknown keyword \"memroy\" in vm \"web\"; did you mean \"memory\"?\n\tmemroy 1G\n\t^^^^^^\nhelp: write: memory 1G\n"
        );
        let w = Diagnostic {
            severity: Severity::Warning,
            line: 0,
            col: 0,
            help: None,
            source_line: None,
            ..d
        };
        assert!(w.render().starts_with("vm.conf: warning: unknown"));
    }
}
