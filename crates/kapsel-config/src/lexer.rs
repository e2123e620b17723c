//! The lexer: characters to tokens, with `#` comments, `\` line
//! continuation, quoted strings and `$macro` expansion.
//!
//! Like vmd, a macro is expanded by pushing its value back into the input,
//! so `$dir/x` glues the value to `/x`, and a value may hold several
//! tokens. Text that came from a macro is not expanded again.

use std::collections::HashMap;

/// A position in the current file: where a token starts and how many
/// characters it spans on that line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Pos {
    pub line: u32,
    pub col: u32,
    pub len: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Tok {
    /// A bare word: a keyword, number, or unquoted string.
    Word(String),
    /// A quoted string, quotes and escapes removed.
    Quoted(String),
    LBrace,
    RBrace,
    Eq,
    Semi,
    Comma,
    Newline,
    Eof,
    /// Something the lexer already reported; the statement is abandoned.
    Invalid,
}

impl Tok {
    /// How a token is named in messages.
    pub fn describe(&self) -> String {
        match self {
            Tok::Word(w) => format!("\"{w}\""),
            Tok::Quoted(q) => format!("quoted string \"{q}\""),
            Tok::LBrace => "\"{\"".into(),
            Tok::RBrace => "\"}\"".into(),
            Tok::Eq => "\"=\"".into(),
            Tok::Semi => "\";\"".into(),
            Tok::Comma => "\",\"".into(),
            Tok::Newline => "end of line".into(),
            Tok::Eof => "end of file".into(),
            Tok::Invalid => "invalid input".into(),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Token {
    pub tok: Tok,
    pub pos: Pos,
}

/// A problem the lexer found; the parser turns it into a diagnostic.
pub(crate) struct LexError {
    pub pos: Pos,
    pub message: String,
    pub help: Option<String>,
}

/// What a macro expands to.
pub(crate) struct Macro {
    pub value: String,
    /// Set with `-D`: definitions in the file do not override it.
    pub from_command_line: bool,
}

pub(crate) type Macros = HashMap<String, Macro>;

struct Expansion {
    text: Vec<char>,
    next: usize,
    at: Pos,
}

/// No token may grow beyond this; it bounds memory on hostile input.
const MAX_TOKEN_CHARS: usize = 64 * 1024;

pub(crate) struct Lexer<'a> {
    src: std::iter::Peekable<std::str::Chars<'a>>,
    line: u32,
    col: u32,
    expansion: Option<Expansion>,
    pub errors: Vec<LexError>,
}

fn is_word_char(c: char) -> bool {
    !c.is_whitespace() && !c.is_control() && !"{}=#\"';,()<>!".contains(c)
}

impl<'a> Lexer<'a> {
    pub fn new(src: &'a str) -> Self {
        Lexer {
            src: src.chars().peekable(),
            line: 1,
            col: 1,
            expansion: None,
            errors: Vec::new(),
        }
    }

    fn in_expansion(&self) -> bool {
        self.expansion
            .as_ref()
            .is_some_and(|e| e.next < e.text.len())
    }

    fn peek(&mut self) -> Option<char> {
        if let Some(e) = &self.expansion {
            if let Some(&c) = e.text.get(e.next) {
                return Some(c);
            }
        }
        self.src.peek().copied()
    }

    /// The character after `peek()` in the same source (for `\` + newline).
    fn peek2(&mut self) -> Option<char> {
        if let Some(e) = &self.expansion {
            if e.next < e.text.len() {
                return e.text.get(e.next + 1).copied();
            }
        }
        let mut it = self.src.clone();
        it.next();
        it.next()
    }

    fn bump(&mut self) -> Option<char> {
        if let Some(e) = &mut self.expansion {
            if let Some(&c) = e.text.get(e.next) {
                e.next += 1;
                return Some(c);
            }
            self.expansion = None;
        }
        let c = self.src.next()?;
        if c == '\n' {
            self.line += 1;
            self.col = 1;
        } else {
            self.col += 1;
        }
        Some(c)
    }

    /// The position of the next character: macro text reports the place
    /// of the `$name` that produced it.
    fn here(&self) -> Pos {
        match &self.expansion {
            Some(e) if e.next < e.text.len() => e.at,
            _ => Pos {
                line: self.line,
                col: self.col,
                len: 1,
            },
        }
    }

    /// Skips `\` + newline (vmd joins the lines without a space).
    fn skip_continuation(&mut self) -> bool {
        if self.peek() == Some('\\') {
            match self.peek2() {
                Some('\n') => {
                    self.bump();
                    self.bump();
                    return true;
                }
                Some('\r') => {
                    // Tolerate CRLF files.
                    let mut it = self.src.clone();
                    it.next();
                    it.next();
                    if !self.in_expansion() && it.next() == Some('\n') {
                        self.bump();
                        self.bump();
                        self.bump();
                        return true;
                    }
                }
                _ => {}
            }
        }
        false
    }

    fn error(&mut self, pos: Pos, message: String, help: Option<String>) {
        self.errors.push(LexError { pos, message, help });
    }

    /// The next token. Macros are looked up in `macros` as they are met.
    pub fn next_token(&mut self, macros: &Macros) -> Token {
        loop {
            if self.skip_continuation() {
                continue;
            }
            let start = self.here();
            let Some(c) = self.peek() else {
                return Token {
                    tok: Tok::Eof,
                    pos: start,
                };
            };
            let single = |tok| Token { tok, pos: start };
            match c {
                ' ' | '\t' | '\r' => {
                    self.bump();
                }
                '#' => {
                    while let Some(c) = self.peek() {
                        if c == '\n' {
                            break;
                        }
                        self.bump();
                    }
                }
                '\n' => {
                    self.bump();
                    return single(Tok::Newline);
                }
                '{' | '}' | '=' | ';' | ',' => {
                    self.bump();
                    return single(match c {
                        '{' => Tok::LBrace,
                        '}' => Tok::RBrace,
                        '=' => Tok::Eq,
                        ';' => Tok::Semi,
                        _ => Tok::Comma,
                    });
                }
                '"' | '\'' => return self.quoted(c, start),
                '$' if !self.in_expansion() => {
                    if let Some(tok) = self.expand(start, macros) {
                        return tok;
                    }
                }
                c if is_word_char(c) => return self.word(start),
                c => {
                    self.bump();
                    let shown = if c.is_control() {
                        format!("U+{:04X}", c as u32)
                    } else {
                        c.to_string()
                    };
                    self.error(
                        start,
                        format!("unexpected character '{shown}'"),
                        Some("put strings that contain it in double quotes".into()),
                    );
                    return single(Tok::Invalid);
                }
            }
        }
    }

    fn word(&mut self, start: Pos) -> Token {
        let from_macro = self.in_expansion();
        let mut text = String::new();
        loop {
            if self.skip_continuation() {
                continue;
            }
            match self.peek() {
                Some(c) if is_word_char(c) => {
                    self.bump();
                    if text.len() < MAX_TOKEN_CHARS {
                        text.push(c);
                    }
                }
                _ => break,
            }
        }
        let mut pos = start;
        if !from_macro && self.line == start.line {
            pos.len = (self.col - start.col).max(1);
        }
        Token {
            tok: Tok::Word(text),
            pos,
        }
    }

    fn quoted(&mut self, quote: char, start: Pos) -> Token {
        let from_macro = self.in_expansion();
        self.bump();
        let mut text = String::new();
        loop {
            match self.peek() {
                None | Some('\n') => {
                    self.error(
                        start,
                        "unterminated quoted string".into(),
                        Some(format!(
                            "close the string with {quote} on the same line, or end the line with \\ to continue it"
                        )),
                    );
                    return Token {
                        tok: Tok::Invalid,
                        pos: start,
                    };
                }
                Some('\\') => {
                    self.bump();
                    match self.peek() {
                        Some('\n') => {
                            self.bump();
                        }
                        Some('\r') if self.peek2() == Some('\n') => {
                            self.bump();
                            self.bump();
                        }
                        Some(c) if c == quote || c == '\\' => {
                            self.bump();
                            text.push(c);
                        }
                        _ => text.push('\\'),
                    }
                }
                Some(c) if c == quote => {
                    self.bump();
                    break;
                }
                Some(c) => {
                    self.bump();
                    if text.len() < MAX_TOKEN_CHARS {
                        text.push(c);
                    }
                }
            }
        }
        let mut pos = start;
        if !from_macro && self.line == start.line {
            pos.len = (self.col - start.col).max(1);
        }
        Token {
            tok: Tok::Quoted(text),
            pos,
        }
    }

    /// Handles `$name`: starts expanding it, or reports it and returns an
    /// invalid token.
    fn expand(&mut self, start: Pos, macros: &Macros) -> Option<Token> {
        self.bump();
        let mut name = String::new();
        while let Some(c) = self.peek() {
            if c.is_ascii_alphanumeric() || c == '_' {
                self.bump();
                if name.len() < MAX_TOKEN_CHARS {
                    name.push(c);
                }
            } else {
                break;
            }
        }
        let mut at = start;
        at.len = (self.col - start.col).max(1);
        if name.is_empty() {
            self.error(
                at,
                "\"$\" is not followed by a macro name".into(),
                Some("write $name to use a macro, or quote a string that contains $".into()),
            );
            return Some(Token {
                tok: Tok::Invalid,
                pos: at,
            });
        }
        match macros.get(&name) {
            Some(m) => {
                if !m.value.is_empty() {
                    self.expansion = Some(Expansion {
                        text: m.value.chars().collect(),
                        next: 0,
                        at,
                    });
                }
                None
            }
            None => {
                let suggestion =
                    crate::diag::did_you_mean(&name, macros.keys().map(|k| k.as_str()));
                let message = match suggestion {
                    Some(s) => format!("macro \"{name}\" is not defined; did you mean \"${s}\"?"),
                    None => format!("macro \"{name}\" is not defined"),
                };
                self.error(
                    at,
                    message,
                    Some(format!(
                        "define it before its first use, e.g. {name}=\"value\", or pass -D {name}=value"
                    )),
                );
                Some(Token {
                    tok: Tok::Invalid,
                    pos: at,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lex(src: &str, macros: &[(&str, &str)]) -> (Vec<Tok>, usize) {
        let macros: Macros = macros
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    Macro {
                        value: v.to_string(),
                        from_command_line: false,
                    },
                )
            })
            .collect();
        let mut lx = Lexer::new(src);
        let mut out = Vec::new();
        loop {
            let t = lx.next_token(&macros);
            if t.tok == Tok::Eof {
                break;
            }
            out.push(t.tok);
        }
        (out, lx.errors.len())
    }

    fn w(s: &str) -> Tok {
        Tok::Word(s.into())
    }

    #[test]
    fn words_strings_and_punctuation() {
        let (toks, errs) = lex("vm \"a b\" { memory 1G }\n", &[]);
        assert_eq!(errs, 0);
        assert_eq!(
            toks,
            vec![
                w("vm"),
                Tok::Quoted("a b".into()),
                Tok::LBrace,
                w("memory"),
                w("1G"),
                Tok::RBrace,
                Tok::Newline
            ]
        );
    }

    #[test]
    fn comments_and_continuation() {
        let (toks, _) = lex("a # comment \\\nb\\\n c 'x\\'y'", &[]);
        assert_eq!(
            toks,
            vec![
                w("a"),
                Tok::Newline,
                w("b"),
                w("c"),
                Tok::Quoted("x'y".into())
            ]
        );
        let (toks, _) = lex("mem\\\nory", &[]);
        assert_eq!(toks, vec![w("memory")]);
    }

    #[test]
    fn macros_expand_and_glue() {
        let (toks, errs) = lex(
            "disk $vms\"a.img\" $vms/b $opt",
            &[("vms", "/v/"), ("opt", "memory 1G")],
        );
        assert_eq!(errs, 0);
        assert_eq!(
            toks,
            vec![
                w("disk"),
                w("/v/"),
                Tok::Quoted("a.img".into()),
                w("/v//b"),
                w("memory"),
                w("1G")
            ]
        );
        // Not expanded inside quotes, nor again inside a macro value.
        let (toks, _) = lex("\"$x\" $y", &[("y", "$x")]);
        assert_eq!(toks, vec![Tok::Quoted("$x".into()), w("$x")]);
    }

    #[test]
    fn errors_do_not_stop_lexing() {
        let (toks, errs) = lex("$undefined ( \"open\nnext", &[]);
        assert_eq!(errs, 3);
        assert_eq!(
            toks,
            vec![
                Tok::Invalid,
                Tok::Invalid,
                Tok::Invalid,
                Tok::Newline,
                w("next")
            ]
        );
    }
}
