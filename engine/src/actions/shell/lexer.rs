//! The lexer of bash syntax behind [`analyse`]: it walks command lists, simple commands,
//! pipelines, words, quotes and redirections, and records for each placeholder the quoting
//! context it stands in (a [`Spot`]). Its methods are spread over three files, one `impl`
//! block each: the reading of words and commands here, expansions, `[[ ]]` and
//! here-document bodies in `expansions.rs`, and the rules of the commands that evaluate
//! their arguments as code in `rules.rs`.

use std::collections::HashSet;

use super::places::{Eval, ARITH};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ctx {
    /// Outside quotes (also in `$(..)`, backticks and arithmetic).
    Unquoted,
    Single,
    Double,
    AnsiC,
    /// The body of a here-document; `quoted` when its delimiter is (nothing is expanded).
    HereDoc {
        quoted: bool,
    },
}

/// Where a placeholder stands: its quoting context, and whether bash evaluates it as code.
#[derive(Debug, Clone, Copy)]
pub(super) struct Spot {
    pub(super) offset: usize,
    pub(super) ctx: Ctx,
    pub(super) eval: Option<Eval>,
}

/// A here-document whose body starts after the current line.
pub(super) struct PendingHereDoc {
    pub(super) delimiter: Vec<u8>,
    pub(super) quoted: bool,
    pub(super) strip_tabs: bool,
    /// Set when a shell reads the body as its script.
    pub(super) eval: Option<Eval>,
}

/// One shell word: its byte range and, when it holds no expansion, its value after quote
/// removal (to recognise command names, options and keywords).
#[derive(Debug, Clone)]
pub(super) struct Word {
    pub(super) start: usize,
    pub(super) end: usize,
    pub(super) text: Option<Vec<u8>>,
}

impl Word {
    pub(super) fn is(&self, t: &[u8]) -> bool {
        self.text.as_deref() == Some(t)
    }

    pub(super) fn is_option(&self) -> bool {
        self.text
            .as_deref()
            .is_some_and(|t| t.len() > 1 && t[0] == b'-')
    }
}

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Sep {
    /// `|` or `|&`: the next command reads this one's output.
    Pipe,
    /// A newline: here-document bodies follow.
    Newline,
    /// `;`, `&`, `&&`, `||`, `;;`, a stray `)`.
    Other,
    /// The end of the text, or of the enclosing `$(..)`/backticks/subshell.
    End,
}

/// Where a list of commands ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum End {
    Eof,
    Paren,
    Backtick,
}

/// What feeds a command's standard input, for shells that read their script from it.
pub(super) struct Input {
    /// Start of the pipeline the command ends, when it is not its first command.
    pub(super) pipe_from: Option<usize>,
    /// Index of the first here-document of that pipeline.
    pub(super) heredocs_from: usize,
    /// Here-strings (`<<<`) of the command.
    pub(super) herestrings: Vec<(usize, usize)>,
}

pub(super) fn is_name_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_'
}

pub(super) fn is_name_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

pub(super) fn basename(t: &[u8]) -> &[u8] {
    t.rsplit(|&c| c == b'/').next().unwrap_or(t)
}

/// An assignment word `NAME=`, `NAME+=`, `NAME[..]=`: its name, subscript range and the
/// offset where the value starts.
pub(super) struct Assign {
    pub(super) name: Vec<u8>,
    pub(super) subscript: Option<(usize, usize)>,
    pub(super) value: usize,
}

pub(super) struct Lexer<'a> {
    pub(super) b: &'a [u8],
    pub(super) i: usize,
    /// Placeholders: (offset, length), sorted.
    pub(super) holes: &'a [(usize, usize)],
    pub(super) spots: Vec<Spot>,
    pub(super) heredocs: Vec<PendingHereDoc>,
    /// Variables declared with `-i` so far.
    pub(super) int_vars: HashSet<Vec<u8>>,
    /// Nesting of backtick substitutions being read.
    pub(super) backticks: u32,
}

/// Finds the quoting context of each placeholder (`holes`: offset, length) of `cmd`, and
/// whether bash evaluates its value as code there.
pub(super) fn analyse(cmd: &str, holes: &[(usize, usize)]) -> Vec<Spot> {
    let mut lx = Lexer {
        b: cmd.as_bytes(),
        i: 0,
        holes,
        spots: Vec::new(),
        heredocs: Vec::new(),
        int_vars: HashSet::new(),
        backticks: 0,
    };
    while lx.i < lx.b.len() {
        let before = lx.i;
        lx.list(End::Eof);
        if lx.i == before {
            lx.bump(1);
        }
    }
    lx.spots.sort_by_key(|s| s.offset);
    lx.spots.dedup_by_key(|s| s.offset);
    lx.spots
}

impl Lexer<'_> {
    pub(super) fn at(&self, k: usize) -> Option<u8> {
        self.b.get(self.i + k).copied()
    }

    pub(super) fn bump(&mut self, n: usize) {
        self.i = (self.i + n).min(self.b.len());
    }

    /// The length of the placeholder starting here, if one does.
    pub(super) fn hole(&self) -> Option<usize> {
        self.holes
            .binary_search_by_key(&self.i, |h| h.0)
            .ok()
            .map(|k| self.holes[k].1)
    }

    /// Records the placeholder starting here and steps over it.
    pub(super) fn spot(&mut self, len: usize, ctx: Ctx) {
        self.spots.push(Spot {
            offset: self.i,
            ctx,
            eval: None,
        });
        self.bump(len);
    }

    pub(super) fn skip_blanks(&mut self) {
        loop {
            match (self.at(0), self.at(1)) {
                (Some(b' ' | b'\t'), _) => self.bump(1),
                (Some(b'\\'), Some(b'\n')) => self.bump(2),
                _ => return,
            }
        }
    }

    /// A list of commands, up to `end`.
    pub(super) fn list(&mut self, end: End) {
        let mut pipe: Option<(usize, usize)> = None;
        loop {
            let start = self.i;
            let heredocs = self.heredocs.len();
            let input_from = pipe.unwrap_or((start, heredocs));
            let sep = self.command(end, pipe.map(|p| p.0), input_from.1);
            pipe = if sep == Sep::Pipe {
                Some(input_from)
            } else {
                None
            };
            if sep == Sep::End {
                return;
            }
            if self.i == start {
                // No progress (should not happen): step over one byte.
                self.bump(1);
            }
        }
    }

    /// One simple command (or compound-command keyword run), up to its separator.
    pub(super) fn command(
        &mut self,
        end: End,
        pipe_from: Option<usize>,
        heredocs_from: usize,
    ) -> Sep {
        let mut words: Vec<Word> = Vec::new();
        let mut input = Input {
            pipe_from,
            heredocs_from,
            herestrings: Vec::new(),
        };
        let sep = loop {
            self.skip_blanks();
            if self.hole().is_some() {
                let w = self.word();
                words.push(w);
                continue;
            }
            let Some(c) = self.at(0) else {
                break Sep::End;
            };
            let at_start = words.iter().all(is_keyword);
            match c {
                b'\n' => {
                    self.bump(1);
                    break Sep::Newline;
                }
                b'&' if self.at(1) == Some(b'>') => {
                    self.bump(1);
                    self.redirect(&mut input);
                }
                b'|' if self.at(1) != Some(b'|') => {
                    self.bump(if self.at(1) == Some(b'&') { 2 } else { 1 });
                    break Sep::Pipe;
                }
                b';' | b'&' | b'|' => {
                    self.bump(1);
                    while matches!(self.at(0), Some(b';' | b'&' | b'|')) {
                        self.bump(1);
                    }
                    break Sep::Other;
                }
                b')' => {
                    self.bump(1);
                    break if end == End::Paren {
                        Sep::End
                    } else {
                        Sep::Other
                    };
                }
                b'`' if self.backticks > 0 => {
                    self.bump(1);
                    break if end == End::Backtick {
                        Sep::End
                    } else {
                        Sep::Other
                    };
                }
                b'#' => {
                    // At the start of a word: a comment, to the end of the line.
                    while self.at(0).is_some_and(|n| n != b'\n') {
                        self.bump(1);
                    }
                }
                b'(' => {
                    let after_for = words.last().is_some_and(|w| w.is(b"for"));
                    if self.at(1) == Some(b'(') && (at_start || after_for) {
                        let s = self.i;
                        self.bump(2);
                        self.arith(b')');
                        self.mark(s, self.i, ARITH);
                    } else if at_start {
                        self.bump(1);
                        self.list(End::Paren);
                    } else {
                        // `name ()`: a function definition; the name is not a command.
                        self.bump(1);
                        self.skip_blanks();
                        if self.at(0) == Some(b')') {
                            self.bump(1);
                            words.clear();
                        } else {
                            self.list(End::Paren);
                        }
                    }
                }
                b'<' | b'>' if self.at(1) == Some(b'(') => {
                    let w = self.word();
                    words.push(w);
                }
                b'<' | b'>' => self.redirect(&mut input),
                _ => {
                    let w = self.word();
                    if w.start == w.end {
                        self.bump(1);
                        continue;
                    }
                    // A number right before `<` or `>` is a file descriptor.
                    if matches!(self.at(0), Some(b'<' | b'>'))
                        && w.text
                            .as_ref()
                            .is_some_and(|t| !t.is_empty() && t.iter().all(u8::is_ascii_digit))
                    {
                        continue;
                    }
                    let cond = at_start && w.is(b"[[");
                    words.push(w);
                    if cond {
                        self.cond();
                    }
                }
            }
        };
        self.analyze(&words, &input);
        if sep == Sep::Newline {
            self.heredoc_bodies();
        }
        sep
    }

    /// A redirection operator and its target word (here-documents are queued).
    pub(super) fn redirect(&mut self, input: &mut Input) {
        if self.at(0) == Some(b'<') && self.at(1) == Some(b'<') && self.at(2) == Some(b'<') {
            self.bump(3);
            self.skip_blanks();
            let w = self.word();
            input.herestrings.push((w.start, w.end));
            return;
        }
        if self.at(0) == Some(b'<') && self.at(1) == Some(b'<') {
            let strip_tabs = self.at(2) == Some(b'-');
            let (delimiter, quoted, end) =
                heredoc_word(self.b, self.i + 2 + usize::from(strip_tabs));
            if !delimiter.is_empty() {
                self.heredocs.push(PendingHereDoc {
                    delimiter,
                    quoted,
                    strip_tabs,
                    eval: None,
                });
            }
            self.i = end.max(self.i + 2).min(self.b.len());
            return;
        }
        self.bump(1);
        while matches!(self.at(0), Some(b'<' | b'>' | b'&' | b'|')) {
            self.bump(1);
        }
        self.skip_blanks();
        let _ = self.word();
    }

    /// One word, up to an unquoted metacharacter.
    pub(super) fn word(&mut self) -> Word {
        let start = self.i;
        let mut text = Some(Vec::new());
        loop {
            if let Some(len) = self.hole() {
                self.spot(len, Ctx::Unquoted);
                text = None;
                continue;
            }
            let Some(c) = self.at(0) else { break };
            match c {
                b' ' | b'\t' | b'\n' | b';' | b'&' | b'|' | b')' => break,
                b'<' | b'>' => {
                    if self.at(1) != Some(b'(') {
                        break;
                    }
                    self.bump(2);
                    self.list(End::Paren);
                    text = None;
                }
                b'(' => {
                    // `NAME=(` / `NAME+=(`: a compound array assignment.
                    if self
                        .assignment(start, self.i)
                        .is_some_and(|a| a.value == self.i)
                    {
                        self.bump(1);
                        self.compound();
                        text = None;
                    } else {
                        break;
                    }
                }
                b'`' => {
                    if self.backticks > 0 {
                        break;
                    }
                    self.bump(1);
                    self.backtick();
                    text = None;
                }
                b'\\' => {
                    if let (Some(t), Some(n)) = (&mut text, self.at(1)) {
                        if n != b'\n' {
                            t.push(n);
                        }
                    }
                    self.bump(2);
                }
                b'\'' | b'"' => {
                    let lit = self.quoted(if c == b'"' { Ctx::Double } else { Ctx::Single });
                    match (&mut text, lit) {
                        (Some(t), Some(l)) => t.extend(l),
                        _ => text = None,
                    }
                }
                b'$' => match self.at(1) {
                    Some(b'\'') => {
                        self.bump(1);
                        self.quoted(Ctx::AnsiC);
                        text = None;
                    }
                    Some(b'"') => {
                        self.bump(1);
                        self.quoted(Ctx::Double);
                        text = None;
                    }
                    _ => {
                        if self.dollar(Ctx::Unquoted) {
                            text = None;
                        } else if let Some(t) = &mut text {
                            t.push(b'$');
                        }
                    }
                },
                _ => {
                    if let Some(t) = &mut text {
                        t.push(c);
                    }
                    self.bump(1);
                }
            }
        }
        Word {
            start,
            end: self.i,
            text,
        }
    }

    /// A quoted string, from its opening quote: `'...'` (`ctx` is [`Ctx::Single`]), `"..."`
    /// ([`Ctx::Double`]) or `$'...'` ([`Ctx::AnsiC`], from its `'`). Returns its content when
    /// it holds no expansion or placeholder; never for `$'...'`, whose escapes are not decoded.
    /// The three share the stepping over placeholders and the closing quote; backslashes
    /// escape only in `"..."` and `$'...'`, and only `"..."` expands.
    pub(super) fn quoted(&mut self, ctx: Ctx) -> Option<Vec<u8>> {
        let close = if ctx == Ctx::Double { b'"' } else { b'\'' };
        self.bump(1);
        let mut lit = (ctx != Ctx::AnsiC).then(Vec::new);
        loop {
            if let Some(len) = self.hole() {
                self.spot(len, ctx);
                lit = None;
                continue;
            }
            match (ctx, self.at(0)) {
                (_, None) => return lit,
                (_, Some(c)) if c == close => {
                    self.bump(1);
                    return lit;
                }
                (Ctx::AnsiC, Some(b'\\')) => self.bump(2),
                (Ctx::Double, Some(b'\\')) => {
                    if let (Some(l), Some(n)) = (&mut lit, self.at(1)) {
                        if !matches!(n, b'$' | b'`' | b'"' | b'\\' | b'\n') {
                            l.push(b'\\');
                        }
                        if n != b'\n' {
                            l.push(n);
                        }
                    }
                    self.bump(2);
                }
                (Ctx::Double, Some(b'`')) => {
                    self.bump(1);
                    self.backtick();
                    lit = None;
                }
                (Ctx::Double, Some(b'$')) => {
                    if self.dollar(Ctx::Double) {
                        lit = None;
                    } else if let Some(l) = &mut lit {
                        l.push(b'$');
                    }
                }
                (_, Some(c)) => {
                    if let Some(l) = &mut lit {
                        l.push(c);
                    }
                    self.bump(1);
                }
            }
        }
    }

    /// A backtick substitution, after its opening backtick.
    pub(super) fn backtick(&mut self) {
        self.backticks += 1;
        self.list(End::Backtick);
        self.backticks -= 1;
    }
}

/// Reads the delimiter word of a here-document starting at `j`; returns it, whether it
/// was quoted, and the offset after it.
pub(super) fn heredoc_word(b: &[u8], mut j: usize) -> (Vec<u8>, bool, usize) {
    while matches!(b.get(j), Some(b' ' | b'\t')) {
        j += 1;
    }
    let (mut word, mut quoted, mut quote) = (Vec::new(), false, None);
    while let Some(&c) = b.get(j) {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => word.push(c),
            None => match c {
                b'\'' | b'"' => {
                    quoted = true;
                    quote = Some(c);
                }
                b'\\' => {
                    quoted = true;
                    j += 1;
                    if let Some(&n) = b.get(j) {
                        word.push(n);
                    }
                }
                b' ' | b'\t' | b'\n' | b';' | b'&' | b'|' | b'<' | b'>' | b'(' | b')' => break,
                _ => word.push(c),
            },
        }
        j += 1;
    }
    (word, quoted, j.min(b.len()))
}

/// Words that start a compound command or precede a command: not command names.
pub(super) fn is_keyword(w: &Word) -> bool {
    const KEYWORDS: &[&[u8]] = &[
        b"if", b"then", b"else", b"elif", b"fi", b"do", b"done", b"while", b"until", b"!", b"{",
        b"}", b"time", b"esac", b"coproc",
    ];
    KEYWORDS.iter().any(|k| w.is(k))
}
