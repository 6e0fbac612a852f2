//! The parts of the lexer that read what is expanded or evaluated inside a word:
//! `$`-expansions (`${..}`, `$(..)`, `$(( ))`, `$[ ]`), array elements and assignment
//! words, `[[ ]]`, and here-document bodies. The numeric places they find (arithmetic,
//! subscripts, substring offsets, the operands of `[[ -eq ]]` and its kin) are marked here.

use super::lexer::{is_name_char, is_name_start, Assign, Ctx, End, Lexer, Word};
use super::places::{ARITH, COND_NUM, PARAM_NAME, SUBSCRIPT, SUBSTRING};

impl Lexer<'_> {
    /// An expansion starting with `$`; false for a lone `$` (a literal).
    pub(super) fn dollar(&mut self, ctx: Ctx) -> bool {
        match (self.at(1), self.at(2)) {
            (Some(b'('), Some(b'(')) => {
                let s = self.i;
                self.bump(3);
                self.arith(b')');
                self.mark(s, self.i, ARITH);
            }
            (Some(b'('), _) => {
                self.bump(2);
                self.list(End::Paren);
            }
            (Some(b'['), _) => {
                let s = self.i;
                self.bump(2);
                self.arith(b']');
                self.mark(s, self.i, ARITH);
            }
            (Some(b'{'), _) => self.param(ctx),
            (Some(c), _)
                if is_name_char(c)
                    || matches!(c, b'@' | b'*' | b'#' | b'?' | b'-' | b'$' | b'!') =>
            {
                self.bump(1);
            }
            _ => {
                self.bump(1);
                return false;
            }
        }
        true
    }

    /// Arithmetic text up to its closing `))` (`close` = `)`) or `]`.
    pub(super) fn arith(&mut self, close: u8) {
        let mut depth = 0u32;
        loop {
            if let Some(len) = self.hole() {
                self.spot(len, Ctx::Unquoted);
                continue;
            }
            let Some(c) = self.at(0) else { return };
            match c {
                b'\\' => self.bump(2),
                b'\'' => {
                    self.quoted(Ctx::Single);
                }
                b'"' => {
                    self.quoted(Ctx::Double);
                }
                b'`' => {
                    if self.backticks > 0 {
                        return;
                    }
                    self.bump(1);
                    self.backtick();
                }
                b'$' => {
                    self.dollar(Ctx::Unquoted);
                }
                b'(' | b'[' => {
                    depth += 1;
                    self.bump(1);
                }
                b')' | b']' => {
                    if c == close && depth == 0 {
                        let two = close == b')' && self.at(1) == Some(b')');
                        self.bump(if two { 2 } else { 1 });
                        return;
                    }
                    depth = depth.saturating_sub(1);
                    self.bump(1);
                }
                _ => self.bump(1),
            }
        }
    }

    /// `${...}`, from its `$`.
    pub(super) fn param(&mut self, ctx: Ctx) {
        let word_ctx = if ctx == Ctx::Double {
            Ctx::Double
        } else {
            Ctx::Unquoted
        };
        self.bump(2);
        let name_start = self.i;
        if matches!(self.at(0), Some(b'!' | b'#')) && self.at(1) != Some(b'}') {
            self.bump(1);
        }
        if let Some(c) = self.at(0) {
            if c.is_ascii_digit() || matches!(c, b'@' | b'*' | b'#' | b'?' | b'-' | b'$' | b'!') {
                self.bump(1);
            }
        }
        loop {
            if let Some(len) = self.hole() {
                self.spot(len, word_ctx);
                continue;
            }
            match self.at(0) {
                Some(c) if is_name_char(c) => self.bump(1),
                _ => break,
            }
        }
        self.mark(name_start, self.i, PARAM_NAME);
        if self.at(0) == Some(b'[') {
            let s = self.i;
            self.bump(1);
            self.arith(b']');
            self.mark(s, self.i, SUBSCRIPT);
        }
        let s = self.i;
        match (self.at(0), self.at(1)) {
            (Some(b'}'), _) => self.bump(1),
            (Some(b':'), n) if !matches!(n, Some(b'-' | b'=' | b'+' | b'?')) => {
                self.bump(1);
                self.param_word(word_ctx);
                self.mark(s, self.i, SUBSTRING);
            }
            (Some(b'@'), _) => {
                self.bump(1);
                self.param_word(word_ctx);
                self.mark(s, self.i, PARAM_NAME);
            }
            (Some(b'-' | b'=' | b'+' | b'?' | b':' | b'#' | b'%' | b'/' | b'^' | b','), _) => {
                self.param_word(word_ctx);
            }
            _ => {
                // Not an operator bash knows (a bad substitution): nothing is safe here.
                self.param_word(word_ctx);
                self.mark(s, self.i, PARAM_NAME);
            }
        }
    }

    /// The word of a `${x op word}` expansion, up to its closing brace.
    pub(super) fn param_word(&mut self, ctx: Ctx) {
        let mut depth = 0u32;
        loop {
            if let Some(len) = self.hole() {
                self.spot(len, ctx);
                continue;
            }
            let Some(c) = self.at(0) else { return };
            match c {
                b'\\' => self.bump(2),
                b'\'' if ctx == Ctx::Unquoted => {
                    self.quoted(Ctx::Single);
                }
                b'"' => {
                    self.quoted(Ctx::Double);
                }
                b'`' => {
                    if self.backticks > 0 {
                        return;
                    }
                    self.bump(1);
                    self.backtick();
                }
                b'$' => {
                    self.dollar(ctx);
                }
                b'{' => {
                    depth += 1;
                    self.bump(1);
                }
                b'}' => {
                    self.bump(1);
                    if depth == 0 {
                        return;
                    }
                    depth -= 1;
                }
                _ => self.bump(1),
            }
        }
    }

    /// The elements of `NAME=(...)`, after the parenthesis.
    pub(super) fn compound(&mut self) {
        loop {
            while matches!(self.at(0), Some(b' ' | b'\t' | b'\n')) {
                self.bump(1);
            }
            match self.at(0) {
                None => return,
                Some(b')') => {
                    self.bump(1);
                    return;
                }
                Some(b'#') => {
                    while self.at(0).is_some_and(|n| n != b'\n') {
                        self.bump(1);
                    }
                }
                _ => {
                    let w = self.word();
                    if w.start == w.end {
                        self.bump(1);
                        continue;
                    }
                    if self.b[w.start] == b'[' {
                        if let Some(close) = self.subscript_end(w.start, w.end) {
                            self.mark(w.start, close + 1, SUBSCRIPT);
                        }
                    }
                }
            }
        }
    }

    /// The offset of the `]` that closes the `[` at `open`, within `..to`.
    pub(super) fn subscript_end(&self, open: usize, to: usize) -> Option<usize> {
        let mut depth = 0u32;
        let mut quote: Option<u8> = None;
        let mut j = open;
        while j < to {
            if let Ok(k) = self.holes.binary_search_by_key(&j, |h| h.0) {
                j += self.holes[k].1;
                continue;
            }
            let c = self.b[j];
            match quote {
                Some(q) if c == q => quote = None,
                Some(_) => {}
                None => match c {
                    b'\\' => j += 1,
                    b'\'' | b'"' => quote = Some(c),
                    b'[' => depth += 1,
                    b']' => {
                        depth = depth.saturating_sub(1);
                        if depth == 0 {
                            return Some(j);
                        }
                    }
                    _ => {}
                },
            }
            j += 1;
        }
        None
    }

    /// `NAME=`, `NAME+=` or `NAME[...]=` at the start of `from..to`.
    pub(super) fn assignment(&self, from: usize, to: usize) -> Option<Assign> {
        let b = &self.b[from..to];
        if !b.first().copied().is_some_and(is_name_start) {
            return None;
        }
        let n = b.iter().take_while(|&&c| is_name_char(c)).count();
        let mut j = from + n;
        let mut subscript = None;
        if self.b.get(j) == Some(&b'[') {
            let close = self.subscript_end(j, to)?;
            subscript = Some((j, close + 1));
            j = close + 1;
        }
        if self.b.get(j) == Some(&b'+') {
            j += 1;
        }
        (j < to && self.b[j] == b'=').then(|| Assign {
            name: b[..n].to_vec(),
            subscript,
            value: j + 1,
        })
    }

    /// `[[ ... ]]`, after its `[[`.
    pub(super) fn cond(&mut self) {
        let mut toks: Vec<Word> = Vec::new();
        loop {
            self.skip_blanks();
            let Some(c) = self.at(0) else { break };
            if self.hole().is_none() {
                match c {
                    b'\n' => {
                        self.bump(1);
                        continue;
                    }
                    b'&' | b'|' | b'(' | b')' | b'<' | b'>' | b';' => {
                        let s = self.i;
                        self.bump(1);
                        if matches!(c, b'&' | b'|') && self.at(0) == Some(c) {
                            self.bump(1);
                        }
                        toks.push(Word {
                            start: s,
                            end: self.i,
                            text: Some(self.b[s..self.i].to_vec()),
                        });
                        continue;
                    }
                    _ => {}
                }
            }
            let w = self.word();
            if w.start == w.end {
                self.bump(1);
                continue;
            }
            if w.is(b"]]") {
                break;
            }
            toks.push(w);
        }
        for k in 0..toks.len() {
            let numeric = [b"-eq", b"-ne", b"-lt", b"-le", b"-gt", b"-ge"]
                .iter()
                .any(|op| toks[k].is(*op));
            if numeric {
                for n in [k.wrapping_sub(1), k + 1] {
                    if let Some(w) = toks.get(n).cloned() {
                        self.mark_word(&w, COND_NUM);
                    }
                }
            } else if toks[k].is(b"-v") || toks[k].is(b"-R") {
                if let Some(w) = toks.get(k + 1).cloned() {
                    self.name_arg(&w);
                }
            }
        }
    }

    /// Here-document bodies after a newline.
    pub(super) fn heredoc_bodies(&mut self) {
        let pending = std::mem::take(&mut self.heredocs);
        for h in pending {
            let body_start = self.i;
            while self.i < self.b.len() {
                let line_end = self.b[self.i..]
                    .iter()
                    .position(|&n| n == b'\n')
                    .map_or(self.b.len(), |k| self.i + k);
                let line = &self.b[self.i..line_end];
                let tabs = if h.strip_tabs {
                    line.iter().take_while(|&&n| n == b'\t').count()
                } else {
                    0
                };
                if line[tabs..] == h.delimiter[..] {
                    let body_end = self.i;
                    self.i = (line_end + 1).min(self.b.len());
                    if let Some(e) = h.eval {
                        self.mark(body_start, body_end, e);
                    }
                    break;
                }
                let ctx = Ctx::HereDoc { quoted: h.quoted };
                while self.i < line_end {
                    if let Some(len) = self.hole() {
                        self.spot(len, ctx);
                        continue;
                    }
                    match self.at(0) {
                        Some(b'\\') if !h.quoted => self.bump(2),
                        Some(b'$') if !h.quoted => {
                            self.dollar(Ctx::Double);
                        }
                        Some(b'`') if !h.quoted => {
                            self.bump(1);
                            self.backtick();
                        }
                        _ => self.bump(1),
                    }
                }
                // An expansion may have run past the line: go on from the next one.
                let next = self.b[self.i..]
                    .iter()
                    .position(|&n| n == b'\n')
                    .map_or(self.b.len(), |k| self.i + k + 1);
                self.i = next.min(self.b.len());
                if self.i >= self.b.len() {
                    if let Some(e) = h.eval {
                        self.mark(body_start, self.i, e);
                    }
                }
            }
        }
    }
}
