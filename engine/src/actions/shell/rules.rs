//! Where a placeholder is refused, and why (the `unsafe-placeholder` checks): each place
//! where bash evaluates a value as code is an [`Eval`], with the message and the hint shown
//! for it, and the rules of the commands that make such places (`eval`, `source`, `trap`,
//! `sh -c`, `let`, `declare`, `read`, `printf -v`, wrappers such as `env` or `sudo`, ...)
//! mark their arguments with one. The checks look at where each placeholder itself stands,
//! not at what the script later does with a variable it copied a value into.

use super::lexer::{basename, is_keyword, is_name_char, Assign, Input, Lexer, Word};
use super::places::{
    Eval, CALLBACK, CODE_VAR, CODE_VARS, COMMAND_NAME, DECLARE_VALUE, EVAL, INT_VAR, LET, REMOTE,
    SHELL_C, SHELL_SCRIPT, SOURCE, SUBSCRIPT, TRAP, VAR_NAME,
};

impl Lexer<'_> {
    /// Marks the placeholders in `from..to` as evaluated by `e`. A place that runs code
    /// wins over a numeric one (`eval "$(( {x} ))"` needs more than `|int`).
    pub(super) fn mark(&mut self, from: usize, to: usize, e: Eval) {
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

    pub(super) fn mark_word(&mut self, w: &Word, e: Eval) {
        self.mark(w.start, w.end, e);
    }

    /// A word naming a variable: `NAME`, `NAME[sub]`, maybe quoted. A placeholder may only
    /// stand in the subscript (numeric).
    pub(super) fn name_arg(&mut self, w: &Word) {
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
    pub(super) fn check_assignment(&mut self, w: &Word, a: &Assign) {
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

    /// Marks what a shell reading its script from standard input would run.
    pub(super) fn mark_input(&mut self, input: &Input, cmd_start: usize) {
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
    pub(super) fn analyze(&mut self, words: &[Word], input: &Input) {
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
    ///
    /// An argument that may expand to nothing is gone after expansion, and the words after
    /// it move up a place (`sh -c $EMPTY {x}` is `sh -c {x}`): the rules are applied with
    /// and without each such word (up to [`MAX_VANISHING`] of them; marks only add up).
    pub(super) fn simple(&mut self, words: &[Word], k: usize, input: &Input) {
        self.simple_from(words, k, k + 1, input, 0);
    }

    /// [`Self::simple`], for the words from `from` on kept or dropped when they may vanish.
    fn simple_from(&mut self, words: &[Word], k: usize, from: usize, input: &Input, n: usize) {
        let next = (from..words.len()).find(|&i| self.may_vanish(&words[i]));
        match next {
            Some(i) if n < MAX_VANISHING => {
                self.simple_from(words, k, i + 1, input, n + 1);
                let mut without = words.to_vec();
                without.remove(i);
                self.simple_from(&without, k, i, input, n + 1);
            }
            _ => self.command_rules(words, k, input),
        }
    }

    /// Whether a word is an unquoted expansion alone (`$x`, `${x@P}`, `$(cmd)`,
    /// backticks), which may expand to nothing.
    fn may_vanish(&self, w: &Word) -> bool {
        w.text.is_none()
            && (matches!(self.b.get(w.start), Some(b'`'))
                || (self.b.get(w.start) == Some(&b'$')
                    && !matches!(self.b.get(w.start + 1), Some(b'\'' | b'"'))))
    }

    /// The rules of the command named `words[k]`, its arguments taken as they stand.
    fn command_rules(&mut self, words: &[Word], k: usize, input: &Input) {
        let Some(w) = words.get(k) else { return };
        self.mark_word(w, COMMAND_NAME);
        let Some(name) = w.text.as_deref().map(basename) else {
            // A vanished command word: the next word may be the command
            // (`$EMPTY read {x}` is `read {x}`).
            if self.may_vanish(w) {
                self.simple(words, k + 1, input);
            }
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
                    if is_stdin(a) {
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
                let j = first_plain().unwrap_or(args.len());
                // `command -v NAME` describes NAME instead of running it; only the options
                // before the command count (`command test -v {x}` runs `test -v`).
                let describes = args[..j].iter().any(|a| {
                    a.text.as_deref().is_some_and(|t| {
                        t.len() > 1 && t[0] == b'-' && (t.contains(&b'v') || t.contains(&b'V'))
                    })
                });
                if describes {
                    return;
                }
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
            b"xargs" => self.xargs(words, k, input),
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
    pub(super) fn wrapped(
        &mut self,
        words: &[Word],
        k: usize,
        input: &Input,
        takes_arg: &[u8],
        env: bool,
    ) {
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
    pub(super) fn name_args(
        &mut self,
        args: &[Word],
        takes_arg: &[u8],
        names: &[u8],
        code: Option<u8>,
    ) {
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
    pub(super) fn declare(&mut self, name: &[u8], args: &[Word]) {
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

    /// `xargs`: runs the command after its options with what it reads as more arguments.
    /// When that command is a shell whose script those arguments would be (no command
    /// string after `-c`, no script file) or be put into (`-I`/`-i`/`--replace`), what
    /// `xargs` reads is code, as for a shell reading its standard input.
    pub(super) fn xargs(&mut self, words: &[Word], k: usize, input: &Input) {
        let args = &words[k + 1..];
        let j = skip_options(args, b"IinPdELsa");
        self.simple(words, k + 1 + j, input);
        let replace = args[..j.min(args.len())].iter().any(|a| {
            a.text.as_deref().is_some_and(|t| {
                t.starts_with(b"-I") || t.starts_with(b"-i") || t.starts_with(b"--replace")
            })
        });
        let Some(cmd) = args.get(j) else { return };
        if !cmd
            .text
            .as_deref()
            .is_some_and(|t| SHELLS.contains(&basename(t)))
        {
            return;
        }
        let shell_args = &args[j + 1..];
        let (c_flag, s_flag, n) = shell_options(shell_args);
        let script_from_items = if c_flag {
            shell_args.get(n).is_none()
        } else {
            !s_flag && shell_args.get(n).is_none()
        };
        if replace || script_from_items {
            self.mark_input(input, words[k].start);
        }
    }

    /// `sh`/`bash`/...: `-c STRING`, a script file, or a script on standard input.
    pub(super) fn shell(&mut self, args: &[Word], input: &Input, cmd_start: usize) {
        let (c_flag, s_flag, j) = shell_options(args);
        if c_flag {
            if let Some(a) = args.get(j) {
                self.mark_word(a, SHELL_C);
            }
            return;
        }
        if !s_flag {
            if let Some(a) = args.get(j) {
                self.mark_word(a, SHELL_SCRIPT);
                // `bash /dev/stdin` reads its script from standard input after all.
                if !is_stdin(a) {
                    return;
                }
            }
        }
        self.mark_input(input, cmd_start);
    }
}

/// Whether a word names the process's own standard input, which a shell or `source`
/// given it as a script file reads as code.
fn is_stdin(w: &Word) -> bool {
    [&b"/dev/stdin"[..], b"/dev/fd/0", b"/proc/self/fd/0"]
        .iter()
        .any(|p| w.is(p))
}

/// How many arguments that may vanish [`Lexer::simple`] tries both ways (2^n variants).
const MAX_VANISHING: usize = 6;

/// The shells whose arguments [`Lexer::shell`] reads.
const SHELLS: &[&[u8]] = &[
    b"sh", b"bash", b"dash", b"zsh", b"ksh", b"mksh", b"ash", b"rbash",
];

/// A shell's options: whether `-c` and `-s` are given, and the index of the first
/// argument after them.
fn shell_options(args: &[Word]) -> (bool, bool, usize) {
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
    (c_flag, s_flag, j)
}

/// Index of the first argument after the options (`-x`, `-x ARG` for letters in
/// `takes_arg`, `--`).
pub(super) fn skip_options(args: &[Word], takes_arg: &[u8]) -> usize {
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
