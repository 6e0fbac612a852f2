//! Safe interpolation into shell commands.
//!
//! A `{placeholder}` in a `bash` command is never pasted into the script text. Each one is
//! replaced by a reference to an environment variable (`TURNSTILE_ARG_n`) that holds the
//! rendered value, written so that the shell expands it as one literal word in the quoting
//! context where the placeholder stands:
//!
//! | context            | written as                    |
//! |--------------------|-------------------------------|
//! | unquoted, `$(..)`, backticks, arithmetic | `"${TURNSTILE_ARG_n}"` |
//! | inside `"..."`     | `${TURNSTILE_ARG_n}`          |
//! | inside `'...'`     | `'"${TURNSTILE_ARG_n}"'`      |
//! | inside `$'...'`    | `'"${TURNSTILE_ARG_n}"$'`     |
//! | here-document body (`<<EOF`) | `${TURNSTILE_ARG_n}` |
//!
//! The shell does not parse an expanded variable again, so quotes, `$(...)`, backticks,
//! `;` or newlines in a value are printed, not run. A wrong guess of the quoting context
//! could only change how the value is shown (word splitting), never run it.
//!
//! Some places evaluate a word *after* expansion, so a variable does not help there: bash
//! evaluates arithmetic (`$(( ))`, `(( ))`, `$[ ]`, `let`, `declare -i` variables, the
//! operands of `[[ -eq ]]` and its kin, array subscripts, substring offsets and lengths),
//! where an array subscript in the value runs command substitutions (`a[$(cmd)]`); it
//! resolves variable names it is given (`${!x}`, `unset`, `printf -v`, `read`, `test -v`,
//! `declare` names), subscripts included; and it runs text as code (`eval`, `source`, `trap`,
//! `sh -c`, a shell's script or standard input, `PS4`, ...). [`ShellTemplate::compile`]
//! finds these places with a small lexer of bash syntax (quotes, expansions, here-documents,
//! `[[ ]]`, simple commands, pipelines, assignments, redirections) and refuses a placeholder
//! there; in the numeric ones a placeholder whose last filter is `int` is accepted, and its
//! value is checked to be an integer when the action runs. What a script later does with a
//! variable it copied a value into (`v={x}; eval "$v"`) is its own code, as written in the
//! config; the checks look at where each placeholder itself stands.
//!
//! A here-document with a quoted delimiter (`<<'EOF'`) expands nothing, so a placeholder in
//! it is a config error too. `${NAME}` is shell syntax and is left alone; `#` comments are
//! skipped (a `#` starts one only at the beginning of a word, as in bash).

use std::collections::HashSet;

use serde_json::Value as Json;

use super::super::runtime::template::{
    push_text, resolve_checked, Placeholder, Scope, Segment, Template,
};

/// Prefix of the environment variables that carry interpolated values.
pub const ARG_PREFIX: &str = "TURNSTILE_ARG_";

/// Diagnostic code of a placeholder that stands where bash evaluates text as code.
pub const UNSAFE_CODE: &str = "unsafe-placeholder";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ctx {
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

/// A place where bash evaluates a placeholder's value as code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Eval {
    /// What the place is, for messages.
    pub what: &'static str,
    /// True when the place takes a number: a placeholder ending in `|int` is safe there.
    pub numeric: bool,
    /// How to fix it.
    pub hint: &'static str,
}

const INT_HINT: &str = "if the value is a number, write `{name|int}` (the action then fails unless the value is an integer)";
const DATA_HINT: &str = "pass the value as data instead: assign it to a variable and use \"$var\" where bash does not evaluate it";

const ARITH: Eval = Eval {
    what: "shell arithmetic (`$(( ))`, `(( ))`, `$[ ]`)",
    numeric: true,
    hint: INT_HINT,
};
const COND_NUM: Eval = Eval {
    what: "an operand of a numeric `[[ ]]` comparison (`-eq`, `-ne`, `-lt`, `-le`, `-gt`, `-ge`)",
    numeric: true,
    hint: INT_HINT,
};
const SUBSCRIPT: Eval = Eval {
    what: "an array subscript (`a[...]`)",
    numeric: true,
    hint: INT_HINT,
};
const SUBSTRING: Eval = Eval {
    what: "a substring offset or length (`${s:offset:length}`)",
    numeric: true,
    hint: INT_HINT,
};
const LET: Eval = Eval {
    what: "a `let` expression",
    numeric: true,
    hint: INT_HINT,
};
const INT_VAR: Eval = Eval {
    what: "a value assigned to an integer variable (`declare -i`)",
    numeric: true,
    hint: INT_HINT,
};
const PARAM_NAME: Eval = Eval {
    what: "the name or operator of a `${...}` expansion (indirection `${!x}`, `${x@P}`)",
    numeric: false,
    hint: "a placeholder cannot name a variable; use it as a value: `\"{name}\"`",
};
const EVAL: Eval = Eval {
    what: "an argument of `eval`",
    numeric: false,
    hint: DATA_HINT,
};
const SOURCE: Eval = Eval {
    what: "the file `source` or `.` reads as code",
    numeric: false,
    hint: "name the file in the config; pass values to it as arguments after the file name",
};
const SHELL_C: Eval = Eval {
    what: "the command string of `sh -c`/`bash -c`",
    numeric: false,
    hint:
        "pass the value as an argument after the command string: `bash -c 'echo \"$1\"' _ {name}`",
};
const SHELL_SCRIPT: Eval = Eval {
    what: "the script a shell runs (its file argument, or what it reads on standard input)",
    numeric: false,
    hint: "name the script in the config; pass values to it as arguments",
};
const VAR_NAME: Eval = Eval {
    what: "a variable name given to a builtin (`unset`, `printf -v`, `read`, `mapfile`, `test -v`, `declare`, ...)",
    numeric: false,
    hint: "write the variable name in the config; a placeholder may only stand in its array subscript, as a number",
};
const DECLARE_VALUE: Eval = Eval {
    what: "a value given to `declare`, `typeset` or `local` (parsed as a compound assignment when the variable is an array)",
    numeric: true,
    hint: "assign it in a plain assignment first (`v={name}`), then `declare`/`local` the variable; for a number, `{name|int}` is accepted",
};
const COMMAND_NAME: Eval = Eval {
    what: "the name of the command to run",
    numeric: false,
    hint: "write the command in the config; pass values to it as arguments",
};
const TRAP: Eval = Eval {
    what: "a `trap` command",
    numeric: false,
    hint: DATA_HINT,
};
const CALLBACK: Eval = Eval {
    what: "the `-C` callback of `mapfile`",
    numeric: false,
    hint: DATA_HINT,
};
const CODE_VAR: Eval = Eval {
    what: "a variable bash runs or expands as code (`PS0`, `PS1`, `PS2`, `PS4`, `PROMPT_COMMAND`, `BASH_ENV`, `ENV`)",
    numeric: false,
    hint: DATA_HINT,
};
const REMOTE: Eval = Eval {
    what: "the remote command of `ssh` (a remote shell parses it)",
    numeric: false,
    hint: "pass the value on the remote command's standard input, or quote it for the remote shell yourself",
};

/// Variables whose value bash runs or prompt-expands.
const CODE_VARS: &[&[u8]] = &[
    b"PS0",
    b"PS1",
    b"PS2",
    b"PS4",
    b"PROMPT_COMMAND",
    b"BASH_ENV",
    b"ENV",
];

/// Where a placeholder stands: its quoting context, and whether bash evaluates it as code.
#[derive(Debug, Clone, Copy)]
struct Spot {
    offset: usize,
    ctx: Ctx,
    eval: Option<Eval>,
}

/// A here-document whose body starts after the current line.
struct PendingHereDoc {
    delimiter: Vec<u8>,
    quoted: bool,
    strip_tabs: bool,
    /// Set when a shell reads the body as its script.
    eval: Option<Eval>,
}

/// Reads the delimiter word of a here-document starting at `j`; returns it, whether it
/// was quoted, and the offset after it.
fn heredoc_word(b: &[u8], mut j: usize) -> (Vec<u8>, bool, usize) {
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

/// One shell word: its byte range and, when it holds no expansion, its value after quote
/// removal (to recognise command names, options and keywords).
#[derive(Debug, Clone)]
struct Word {
    start: usize,
    end: usize,
    text: Option<Vec<u8>>,
}

impl Word {
    fn is(&self, t: &[u8]) -> bool {
        self.text.as_deref() == Some(t)
    }

    fn is_option(&self) -> bool {
        self.text
            .as_deref()
            .is_some_and(|t| t.len() > 1 && t[0] == b'-')
    }
}

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sep {
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
enum End {
    Eof,
    Paren,
    Backtick,
}

/// What feeds a command's standard input, for shells that read their script from it.
struct Input {
    /// Start of the pipeline the command ends, when it is not its first command.
    pipe_from: Option<usize>,
    /// Index of the first here-document of that pipeline.
    heredocs_from: usize,
    /// Here-strings (`<<<`) of the command.
    herestrings: Vec<(usize, usize)>,
}

fn is_name_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_'
}

fn is_name_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

fn basename(t: &[u8]) -> &[u8] {
    t.rsplit(|&c| c == b'/').next().unwrap_or(t)
}

/// An assignment word `NAME=`, `NAME+=`, `NAME[..]=`: its name, subscript range and the
/// offset where the value starts.
struct Assign {
    name: Vec<u8>,
    subscript: Option<(usize, usize)>,
    value: usize,
}

struct Lexer<'a> {
    b: &'a [u8],
    i: usize,
    /// Placeholders: (offset, length), sorted.
    holes: &'a [(usize, usize)],
    spots: Vec<Spot>,
    heredocs: Vec<PendingHereDoc>,
    /// Variables declared with `-i` so far.
    int_vars: HashSet<Vec<u8>>,
    /// Nesting of backtick substitutions being read.
    backticks: u32,
}

impl<'a> Lexer<'a> {
    fn at(&self, k: usize) -> Option<u8> {
        self.b.get(self.i + k).copied()
    }

    fn bump(&mut self, n: usize) {
        self.i = (self.i + n).min(self.b.len());
    }

    /// The length of the placeholder starting here, if one does.
    fn hole(&self) -> Option<usize> {
        self.holes
            .binary_search_by_key(&self.i, |h| h.0)
            .ok()
            .map(|k| self.holes[k].1)
    }

    /// Records the placeholder starting here and steps over it.
    fn spot(&mut self, len: usize, ctx: Ctx) {
        self.spots.push(Spot {
            offset: self.i,
            ctx,
            eval: None,
        });
        self.bump(len);
    }

    /// Marks the placeholders in `from..to` as evaluated by `e`. A place that runs code
    /// wins over a numeric one (`eval "$(( {x} ))"` needs more than `|int`).
    fn mark(&mut self, from: usize, to: usize, e: Eval) {
        for s in &mut self.spots {
            if s.offset >= from && s.offset < to {
                match s.eval {
                    None => s.eval = Some(e),
                    Some(old) if old.numeric && !e.numeric => s.eval = Some(e),
                    Some(_) => {}
                }
            }
        }
    }

    fn mark_word(&mut self, w: &Word, e: Eval) {
        self.mark(w.start, w.end, e);
    }

    fn skip_blanks(&mut self) {
        loop {
            match (self.at(0), self.at(1)) {
                (Some(b' ' | b'\t'), _) => self.bump(1),
                (Some(b'\\'), Some(b'\n')) => self.bump(2),
                _ => return,
            }
        }
    }

    /// A list of commands, up to `end`.
    fn list(&mut self, end: End) {
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
    fn command(&mut self, end: End, pipe_from: Option<usize>, heredocs_from: usize) -> Sep {
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
    fn redirect(&mut self, input: &mut Input) {
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
    fn word(&mut self) -> Word {
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
                b'\'' => {
                    let lit = self.single();
                    match (&mut text, lit) {
                        (Some(t), Some(l)) => t.extend(l),
                        _ => text = None,
                    }
                }
                b'"' => {
                    let lit = self.double();
                    match (&mut text, lit) {
                        (Some(t), Some(l)) => t.extend(l),
                        _ => text = None,
                    }
                }
                b'$' => match self.at(1) {
                    Some(b'\'') => {
                        self.bump(1);
                        self.ansi_c();
                        text = None;
                    }
                    Some(b'"') => {
                        self.bump(1);
                        self.double();
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

    /// `'...'`; returns its content when it holds no placeholder.
    fn single(&mut self) -> Option<Vec<u8>> {
        self.bump(1);
        let mut lit = Some(Vec::new());
        loop {
            if let Some(len) = self.hole() {
                self.spot(len, Ctx::Single);
                lit = None;
                continue;
            }
            match self.at(0) {
                None => return lit,
                Some(b'\'') => {
                    self.bump(1);
                    return lit;
                }
                Some(c) => {
                    if let Some(l) = &mut lit {
                        l.push(c);
                    }
                    self.bump(1);
                }
            }
        }
    }

    /// `$'...'`, from its quote.
    fn ansi_c(&mut self) {
        self.bump(1);
        loop {
            if let Some(len) = self.hole() {
                self.spot(len, Ctx::AnsiC);
                continue;
            }
            match self.at(0) {
                None => return,
                Some(b'\\') => self.bump(2),
                Some(b'\'') => {
                    self.bump(1);
                    return;
                }
                Some(_) => self.bump(1),
            }
        }
    }

    /// `"..."`; returns its content when it holds no expansion or placeholder.
    fn double(&mut self) -> Option<Vec<u8>> {
        self.bump(1);
        let mut lit = Some(Vec::new());
        loop {
            if let Some(len) = self.hole() {
                self.spot(len, Ctx::Double);
                lit = None;
                continue;
            }
            match self.at(0) {
                None => return lit,
                Some(b'"') => {
                    self.bump(1);
                    return lit;
                }
                Some(b'\\') => {
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
                Some(b'`') => {
                    self.bump(1);
                    self.backtick();
                    lit = None;
                }
                Some(b'$') => {
                    if self.dollar(Ctx::Double) {
                        lit = None;
                    } else if let Some(l) = &mut lit {
                        l.push(b'$');
                    }
                }
                Some(c) => {
                    if let Some(l) = &mut lit {
                        l.push(c);
                    }
                    self.bump(1);
                }
            }
        }
    }

    /// A backtick substitution, after its opening backtick.
    fn backtick(&mut self) {
        self.backticks += 1;
        self.list(End::Backtick);
        self.backticks -= 1;
    }

    /// An expansion starting with `$`; false for a lone `$` (a literal).
    fn dollar(&mut self, ctx: Ctx) -> bool {
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
    fn arith(&mut self, close: u8) {
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
                    self.single();
                }
                b'"' => {
                    self.double();
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
    fn param(&mut self, ctx: Ctx) {
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
    fn param_word(&mut self, ctx: Ctx) {
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
                    self.single();
                }
                b'"' => {
                    self.double();
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
    fn compound(&mut self) {
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
    fn subscript_end(&self, open: usize, to: usize) -> Option<usize> {
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
    fn assignment(&self, from: usize, to: usize) -> Option<Assign> {
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

    /// A word naming a variable: `NAME`, `NAME[sub]`, maybe quoted. A placeholder may only
    /// stand in the subscript (numeric).
    fn name_arg(&mut self, w: &Word) {
        let raw = &self.b[w.start..w.end];
        let mut j = 0;
        while j < raw.len() && (is_name_char(raw[j]) || matches!(raw[j], b'\'' | b'"')) {
            j += 1;
        }
        if j > 0 && raw.get(j) == Some(&b'[') {
            if let Some(close) = raw.iter().rposition(|&c| c == b']') {
                if close > j {
                    let (s, e) = (w.start + j, w.start + close + 1);
                    self.mark(s, e, SUBSCRIPT);
                    self.mark(w.start, s, VAR_NAME);
                    self.mark(e, w.end, VAR_NAME);
                    return;
                }
            }
        }
        self.mark_word(w, VAR_NAME);
    }

    /// A plain assignment (before a command, or alone).
    fn check_assignment(&mut self, w: &Word, a: &Assign) {
        if let Some((s, e)) = a.subscript {
            self.mark(s, e, SUBSCRIPT);
        }
        if self.int_vars.contains(&a.name) {
            self.mark(a.value, w.end, INT_VAR);
        }
        if CODE_VARS.contains(&a.name.as_slice()) {
            self.mark(a.value, w.end, CODE_VAR);
        }
    }

    /// `[[ ... ]]`, after its `[[`.
    fn cond(&mut self) {
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
    fn heredoc_bodies(&mut self) {
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

    /// Marks what a shell reading its script from standard input would run.
    fn mark_input(&mut self, input: &Input, cmd_start: usize) {
        if let Some(p) = input.pipe_from {
            self.mark(p, cmd_start, SHELL_SCRIPT);
        }
        for &(s, e) in &input.herestrings {
            self.mark(s, e, SHELL_SCRIPT);
        }
        for h in self.heredocs.iter_mut().skip(input.heredocs_from) {
            h.eval = Some(SHELL_SCRIPT);
        }
    }

    /// Applies the rules of the command whose words these are.
    fn analyze(&mut self, words: &[Word], input: &Input) {
        let mut k = 0;
        while let Some(w) = words.get(k) {
            if is_keyword(w) {
                k += 1;
            } else if w.is(b"function") {
                k += 2;
            } else if w.is(b"for") || w.is(b"select") || w.is(b"case") || w.is(b"in") {
                // `for x in WORDS`, `case WORD in`: the words are data.
                return;
            } else {
                break;
            }
        }
        while let Some(w) = words.get(k) {
            let Some(a) = self.assignment(w.start, w.end) else {
                break;
            };
            self.check_assignment(w, &a);
            k += 1;
        }
        self.simple(words, k, input);
    }

    /// The command whose name is `words[k]`, with its arguments after it.
    fn simple(&mut self, words: &[Word], k: usize, input: &Input) {
        let Some(w) = words.get(k) else { return };
        self.mark_word(w, COMMAND_NAME);
        let Some(name) = w.text.as_deref().map(basename) else {
            return;
        };
        let args = &words[k + 1..];
        let first_plain = || args.iter().position(|a| !a.is_option());
        match name {
            b"eval" => {
                for a in args {
                    self.mark_word(a, EVAL);
                }
            }
            b"source" | b"." => {
                let j = usize::from(args.first().is_some_and(|a| a.is(b"--")));
                if let Some(a) = args.get(j) {
                    self.mark_word(a, SOURCE);
                    if a.is(b"/dev/stdin") {
                        self.mark_input(input, w.start);
                    }
                }
            }
            b"let" => {
                for a in args {
                    self.mark_word(a, LET);
                }
            }
            b"trap" => {
                for a in args {
                    self.mark_word(a, TRAP);
                }
            }
            b"declare" | b"typeset" | b"local" | b"export" | b"readonly" => {
                self.declare(name, args);
            }
            b"unset" => {
                for a in args.iter().filter(|a| !a.is_option()) {
                    self.name_arg(a);
                }
            }
            b"read" => self.name_args(args, b"adeinNptu", b"a", None),
            b"mapfile" | b"readarray" => self.name_args(args, b"dnOsuCc", b"", Some(b'C')),
            b"printf" | b"wait" | b"test" | b"[" => {
                let flag: &[u8] = match name {
                    b"printf" => b"-v",
                    b"wait" => b"-p",
                    _ => b"-v",
                };
                for n in 0..args.len() {
                    if args[n].is(flag) {
                        if let Some(a) = args.get(n + 1) {
                            self.name_arg(a);
                        }
                    }
                }
                if name == b"printf" {
                    if let Some(a) = args.first() {
                        if a.text
                            .as_deref()
                            .is_some_and(|t| t.starts_with(b"-v") && t.len() > 2)
                        {
                            self.name_arg(a);
                        }
                    }
                }
            }
            b"getopts" => {
                if let Some(a) = args.get(1) {
                    self.name_arg(a);
                }
            }
            b"command" | b"builtin" => {
                if args.iter().any(|a| a.is(b"-v") || a.is(b"-V")) {
                    return;
                }
                let j = first_plain().unwrap_or(args.len());
                self.simple(words, k + 1 + j, input);
            }
            b"exec" => self.wrapped(words, k, input, b"a", false),
            b"nohup" | b"time" | b"setsid" | b"busybox" => {
                self.wrapped(words, k, input, b"", false);
            }
            b"env" => self.wrapped(words, k, input, b"uCS", true),
            b"nice" => self.wrapped(words, k, input, b"n", false),
            b"stdbuf" => self.wrapped(words, k, input, b"ioe", false),
            b"sudo" | b"doas" => self.wrapped(words, k, input, b"ugCDhprtUTa", false),
            b"xargs" => self.wrapped(words, k, input, b"IinPdELsa", false),
            b"timeout" => {
                let j = skip_options(args, b"sk");
                // The duration, then the command.
                self.simple(words, k + 1 + j + 1, input);
            }
            b"sh" | b"bash" | b"dash" | b"zsh" | b"ksh" | b"mksh" | b"ash" | b"rbash" => {
                self.shell(args, input, w.start);
            }
            b"ssh" => {
                let j = skip_options(args, b"BbcDEeFIiJLlmOopQRSWw");
                for a in args.iter().skip(j + 1) {
                    self.mark_word(a, REMOTE);
                }
            }
            _ => {}
        }
    }

    /// A command that runs the command after its options (`exec`, `env`, `sudo`, ...).
    fn wrapped(&mut self, words: &[Word], k: usize, input: &Input, takes_arg: &[u8], env: bool) {
        let args = &words[k + 1..];
        let mut j = skip_options(args, takes_arg);
        if env {
            while let Some(a) = args.get(j) {
                if a.is_option() || self.assignment(a.start, a.end).is_some() {
                    j += 1;
                } else {
                    break;
                }
            }
        }
        self.simple(words, k + 1 + j, input);
    }

    /// `read`/`mapfile` arguments: options (some with an argument), then variable names.
    fn name_args(&mut self, args: &[Word], takes_arg: &[u8], names: &[u8], code: Option<u8>) {
        let mut j = 0;
        while let Some(a) = args.get(j) {
            if a.is(b"--") {
                j += 1;
                break;
            }
            if !a.is_option() {
                break;
            }
            let opt = a.text.as_deref().and_then(|t| t.last().copied());
            j += 1;
            if let Some(o) = opt.filter(|o| takes_arg.contains(o)) {
                if let Some(v) = args.get(j) {
                    if names.contains(&o) {
                        self.name_arg(v);
                    } else if Some(o) == code {
                        self.mark_word(v, CALLBACK);
                    }
                }
                j += 1;
            }
        }
        for a in args.iter().skip(j) {
            self.name_arg(a);
        }
    }

    /// `declare`, `typeset`, `local`, `export`, `readonly`.
    fn declare(&mut self, name: &[u8], args: &[Word]) {
        let mut flags = Vec::new();
        let mut j = 0;
        while let Some(a) = args.get(j) {
            match a.text.as_deref() {
                Some(t) if t.len() > 1 && (t[0] == b'-' || t[0] == b'+') => {
                    if t[0] == b'-' {
                        flags.extend_from_slice(&t[1..]);
                    }
                    j += 1;
                }
                _ => break,
            }
        }
        let int = flags.contains(&b'i');
        let values_parsed = matches!(name, b"declare" | b"typeset" | b"local");
        for a in &args[j..] {
            if let Some(asg) = self.assignment(a.start, a.end) {
                if let Some((s, e)) = asg.subscript {
                    self.mark(s, e, SUBSCRIPT);
                }
                if int || self.int_vars.contains(&asg.name) {
                    self.mark(asg.value, a.end, INT_VAR);
                }
                if flags.contains(&b'n') {
                    self.mark(asg.value, a.end, VAR_NAME);
                }
                if values_parsed {
                    self.mark(asg.value, a.end, DECLARE_VALUE);
                }
                if CODE_VARS.contains(&asg.name.as_slice()) {
                    self.mark(asg.value, a.end, CODE_VAR);
                }
                if int {
                    self.int_vars.insert(asg.name);
                }
            } else {
                if int {
                    if let Some(t) = &a.text {
                        self.int_vars.insert(t.clone());
                    }
                }
                self.name_arg(a);
            }
        }
    }

    /// `sh`/`bash`/...: `-c STRING`, a script file, or a script on standard input.
    fn shell(&mut self, args: &[Word], input: &Input, cmd_start: usize) {
        let (mut c_flag, mut s_flag) = (false, false);
        let mut j = 0;
        while let Some(a) = args.get(j) {
            let Some(t) = a.text.as_deref() else { break };
            if t == b"--" || t == b"-" {
                j += 1;
                break;
            }
            if t.starts_with(b"--") {
                j += if t == b"--rcfile" || t == b"--init-file" {
                    2
                } else {
                    1
                };
                continue;
            }
            if t.len() > 1 && (t[0] == b'-' || t[0] == b'+') {
                if t[0] == b'-' && t.contains(&b'c') {
                    c_flag = true;
                }
                if t.contains(&b's') {
                    s_flag = true;
                }
                j += 1;
                if t.ends_with(b"o") || t.ends_with(b"O") {
                    j += 1;
                }
                continue;
            }
            break;
        }
        if c_flag {
            if let Some(a) = args.get(j) {
                self.mark_word(a, SHELL_C);
            }
            return;
        }
        if !s_flag {
            if let Some(a) = args.get(j) {
                self.mark_word(a, SHELL_SCRIPT);
                return;
            }
        }
        self.mark_input(input, cmd_start);
    }
}

/// Words that start a compound command or precede a command: not command names.
fn is_keyword(w: &Word) -> bool {
    const KEYWORDS: &[&[u8]] = &[
        b"if", b"then", b"else", b"elif", b"fi", b"do", b"done", b"while", b"until", b"!", b"{",
        b"}", b"time", b"esac", b"coproc",
    ];
    KEYWORDS.iter().any(|k| w.is(k))
}

/// Index of the first argument after the options (`-x`, `-x ARG` for letters in
/// `takes_arg`, `--`).
fn skip_options(args: &[Word], takes_arg: &[u8]) -> usize {
    let mut j = 0;
    while let Some(a) = args.get(j) {
        if a.is(b"--") {
            return j + 1;
        }
        let Some(t) = a.text.as_deref().filter(|t| t.len() > 1 && t[0] == b'-') else {
            return j;
        };
        j += 1;
        if t.len() == 2 && takes_arg.contains(&t[1]) {
            j += 1;
        }
    }
    j
}

/// Finds the quoting context of each placeholder (`holes`: offset, length) of `cmd`, and
/// whether bash evaluates its value as code there.
fn analyse(cmd: &str, holes: &[(usize, usize)]) -> Vec<Spot> {
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

/// True for an integer as bash arithmetic reads it safely: optional sign, decimal digits.
fn is_integer(v: &str) -> bool {
    let t = v.trim();
    let digits = t.strip_prefix(['+', '-']).unwrap_or(t);
    !digits.is_empty() && digits.bytes().all(|c| c.is_ascii_digit())
}

/// Why a command cannot be compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShellIssue {
    /// Diagnostic code: [`UNSAFE_CODE`], or `bad-parameter`.
    pub code: &'static str,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub hint: String,
    /// The placeholder as written, and how many times that text occurs in the command
    /// before it (to point at it in the config file).
    pub placeholder: Option<(String, usize)>,
}

/// A command with its placeholders turned into variable references.
#[derive(Debug, Clone)]
pub struct ShellTemplate {
    /// The script given to `bash -c`.
    script: String,
    /// The placeholders, in the order of their variables.
    args: Vec<Placeholder>,
    /// For each placeholder: true when it stands where bash evaluates a number.
    numeric: Vec<bool>,
    /// The command as written, for messages.
    source: String,
}

impl ShellTemplate {
    /// Compiles a command. Fails for a placeholder with a bad filter, one in a quoted
    /// here-document, and every placeholder that stands where bash would evaluate its value
    /// as code (numeric places accept one ending in `|int`).
    pub fn compile(cmd: &str) -> Result<Self, Vec<ShellIssue>> {
        // `${NAME}` is shell syntax, not a placeholder.
        let tpl = Template::parse_with(cmd, |i| i == 0 || cmd.as_bytes()[i - 1] != b'$').map_err(
            |e| {
                vec![ShellIssue {
                    code: "bad-parameter",
                    message: e,
                    hint: "placeholders look like `{name}`; `${NAME}` is left to the shell".into(),
                    placeholder: None,
                }]
            },
        )?;
        let mut holes = Vec::new();
        let mut offset = 0;
        for seg in tpl.segments() {
            match seg {
                Segment::Lit(l) => offset += l.len(),
                Segment::Var(ph) => {
                    holes.push((offset, ph.raw.len()));
                    offset += ph.raw.len();
                }
            }
        }
        let spots = analyse(cmd, &holes);
        let spot_at = |i: usize| {
            spots
                .binary_search_by_key(&i, |s| s.offset)
                .map(|k| (spots[k].ctx, spots[k].eval))
                .unwrap_or((Ctx::Unquoted, None))
        };
        let mut script = String::with_capacity(cmd.len() + 32);
        let mut args = Vec::new();
        let mut numeric = Vec::new();
        let mut issues = Vec::new();
        let mut offset = 0;
        for seg in tpl.segments() {
            match seg {
                Segment::Lit(l) => {
                    script.push_str(l);
                    offset += l.len();
                }
                Segment::Var(ph) => {
                    let n = args.len();
                    let var = format!("${{{ARG_PREFIX}{n}}}");
                    let (ctx, eval) = spot_at(offset);
                    let before = cmd[..offset].matches(ph.raw.as_str()).count();
                    if let Some(e) = eval {
                        if !(e.numeric && ph.ends_with_int()) {
                            let message = if e.numeric && !ph.filters.is_empty() {
                                format!(
                                    "`{}` stands in {}, where bash evaluates its value as code; only a placeholder whose last filter is `int` may stand there",
                                    ph.raw, e.what
                                )
                            } else {
                                format!(
                                    "`{}` stands in {}, where bash evaluates its value as code",
                                    ph.raw, e.what
                                )
                            };
                            issues.push(ShellIssue {
                                code: UNSAFE_CODE,
                                message,
                                hint: e.hint.replace("{name", &format!("{{{}", ph.path.join("."))),
                                placeholder: Some((ph.raw.clone(), before)),
                            });
                        }
                    }
                    match ctx {
                        Ctx::Unquoted => {
                            script.push('"');
                            script.push_str(&var);
                            script.push('"');
                        }
                        Ctx::Double | Ctx::HereDoc { quoted: false } => script.push_str(&var),
                        Ctx::HereDoc { quoted: true } => {
                            issues.push(ShellIssue {
                                code: "bad-parameter",
                                message: format!(
                                    "`{}` stands in a here-document with a quoted delimiter (`<<'EOF'`), where nothing is expanded",
                                    ph.raw
                                ),
                                hint: "use an unquoted delimiter (`<<EOF`) for the value to be expanded".into(),
                                placeholder: None,
                            });
                        }
                        Ctx::Single => {
                            script.push_str("'\"");
                            script.push_str(&var);
                            script.push_str("\"'");
                        }
                        Ctx::AnsiC => {
                            script.push_str("'\"");
                            script.push_str(&var);
                            script.push_str("\"$'");
                        }
                    }
                    offset += ph.raw.len();
                    args.push(ph.clone());
                    numeric.push(eval.is_some_and(|e| e.numeric));
                }
            }
        }
        if !issues.is_empty() {
            return Err(issues);
        }
        Ok(Self {
            script,
            args,
            numeric,
            source: cmd.to_owned(),
        })
    }

    /// The script to run with `bash -c`.
    pub fn script(&self) -> &str {
        &self.script
    }

    /// The command as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders each placeholder: `(variable name, value)` pairs for the child's environment.
    /// Fails when a filter fails (`int` on a value that is not an integer), when a
    /// placeholder ending in `|int` has no value, or when a placeholder in a numeric place
    /// is not an integer. Messages name the placeholder, never its value.
    pub fn env(&self, scope: &dyn Scope) -> Result<Vec<(String, String)>, String> {
        self.args
            .iter()
            .zip(&self.numeric)
            .enumerate()
            .map(|(n, (ph, &numeric))| {
                let mut v = String::new();
                match resolve_checked(ph, scope)? {
                    Some(j) => push_text(&mut v, &j),
                    None if ph.ends_with_int() => {
                        return Err(format!(
                            "`{}` has no value, and an integer is required",
                            ph.raw
                        ));
                    }
                    None => v.push_str(&ph.raw),
                }
                if numeric && !is_integer(&v) {
                    return Err(format!(
                        "`{}` is not an integer: a value in a numeric place of a shell command must be one (bash would evaluate anything else as code)",
                        ph.raw
                    ));
                }
                Ok((format!("{ARG_PREFIX}{n}"), v))
            })
            .collect()
    }

    /// The values of the placeholders, for error records: placeholder as written → value
    /// (placeholders that do not resolve are left out; a value a filter refused is shown
    /// unfiltered).
    pub fn values(&self, scope: &dyn Scope) -> serde_json::Map<String, Json> {
        let mut out = serde_json::Map::new();
        for ph in &self.args {
            if out.contains_key(&ph.raw) {
                continue;
            }
            let v = match resolve_checked(ph, scope) {
                Ok(v) => v.map(std::borrow::Cow::into_owned),
                Err(_) => {
                    let bare = Placeholder {
                        filters: Vec::new(),
                        ..ph.clone()
                    };
                    resolve_checked(&bare, scope)
                        .ok()
                        .flatten()
                        .map(std::borrow::Cow::into_owned)
                }
            };
            if let Some(v) = v {
                let mut text = String::new();
                push_text(&mut text, &v);
                out.insert(ph.raw.clone(), Json::String(text));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contexts_are_recognised() {
        let t =
            ShellTemplate::compile(r#"echo {a} "{b}" '{c}' $'{d}' $(echo {e}) `echo {f}` ${HOME}"#)
                .unwrap();
        assert_eq!(
            t.script(),
            concat!(
                r#"echo "${TURNSTILE_ARG_0}" "${TURNSTILE_ARG_1}" ''"${TURNSTILE_ARG_2}"'' "#,
                r#"$''"${TURNSTILE_ARG_3}"$'' $(echo "${TURNSTILE_ARG_4}") "#,
                r#"`echo "${TURNSTILE_ARG_5}"` ${HOME}"#
            )
        );
    }

    fn refused(cmd: &str) -> Option<&'static str> {
        match ShellTemplate::compile(cmd) {
            Ok(_) => None,
            Err(e) => Some(e[0].code),
        }
    }

    #[test]
    fn evaluated_places_are_refused() {
        for cmd in [
            "id=$(hostname)#$(( {n} + 1 )); echo $id",
            "echo $(( {n} ))",
            "(( x = {n} ))",
            "for (( i = {n}; i < 3; i++ )); do :; done",
            "echo $[ {n} ]",
            "[[ {n} -eq 1 ]]",
            "if [[ 1 -lt \"{n}\" ]]; then :; fi",
            "let x={n}",
            "let \"x = {n}\"",
            "declare -i x={n}",
            "typeset -i x; x={n}",
            "echo ${a[{n}]}",
            "a[{n}]=1",
            "a=([{n}]=1)",
            "echo ${s:{n}}",
            "echo ${s:1:{n}}",
            "echo \"${s:{n}:2}\"",
            "unset 'a[{n}]'",
            "cat <<EOF\n$(( {n} ))\nEOF",
        ] {
            let t = ShellTemplate::compile(cmd);
            assert!(t.is_err(), "accepted: {cmd}");
            let int = cmd.replace("{n}", "{n|int}");
            assert!(
                ShellTemplate::compile(&int).is_ok(),
                "{int}: {:?}",
                ShellTemplate::compile(&int).err()
            );
        }
        for cmd in [
            "eval {x}",
            "eval \"echo {x}\"",
            "eval 'echo {x}'",
            "eval \"$(( {x|int} ))\"",
            "source {x}",
            ". {x}",
            "printf -v {x} %s 1",
            "bash -c {x}",
            "sh -c \"echo {x}\"",
            "bash -ec 'echo {x}'",
            "/bin/bash -c 'echo {x}'",
            "nohup sh -c 'echo {x}'",
            "timeout 5 bash -c 'echo {x}'",
            "echo {x} | bash",
            "bash <<< {x}",
            "bash <<EOF\necho {x}\nEOF",
            "bash {x}",
            "unset {x}",
            "read {x}",
            "[[ -v {x} ]]",
            "test -v {x}",
            "declare {x}=1",
            "local v={x}",
            "local -a v={x}",
            "declare -n r={x}",
            "echo ${!{x}}",
            "{x} arg",
            "exec {x}",
            "x=1 {x}",
            "trap {x} EXIT",
            "PS4={x}",
            "ssh host echo {x}",
            "mapfile -C {x} a",
            "echo $(eval {x})",
            "f() { eval \"{x}\"; }",
            "if true; then eval {x}; fi",
            "2>/dev/null eval {x}",
            "\"eval\" {x}",
        ] {
            assert_eq!(refused(cmd), Some(UNSAFE_CODE), "accepted: {cmd}");
        }
    }

    #[test]
    fn data_places_are_accepted() {
        for cmd in [
            "echo {x}",
            "echo \"{x}\" '{x}' $'{x}' pre{x}post",
            "x={x}; echo \"$x\"",
            "export x={x}",
            "[[ {x} == a* && -n {x} ]]",
            "[ {x} -eq 1 ]",
            "test {x} != broken || { echo \"cannot index {x}\" >&2; exit 1; }; echo ok",
            "case {x} in bad) echo no >&2; exit 3 ;; slow) sleep 5 ;; esac; echo checked",
            "echo ${x:-{x}} \"${x#{x}}\" ${x/{x}/y}",
            "bash -c 'echo \"$1\"' _ {x}",
            "cat <<EOF\nit's {x}\nEOF",
            "cat <<< {x}",
            "printf '%s' {x} > {x}.out",
            "echo $$ > {x}.tmp && mv {x}.tmp {x}",
            "item={x}; echo \"processed $item (${#item} characters)\"",
            "echo ${#} $# a#{x}",
            "cd /tmp # it's \"here\"\nprintf '%s' {x}",
            "for f in {x} b; do echo \"$f\"; done",
            "command -v {x}",
            "grep -e {x} file | sort",
        ] {
            assert!(
                ShellTemplate::compile(cmd).is_ok(),
                "{cmd}: {:?}",
                ShellTemplate::compile(cmd).err()
            );
        }
    }
}
