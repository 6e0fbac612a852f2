//! The places where bash evaluates a placeholder's value as code, each an [`Eval`] with
//! the message and hint shown when a placeholder stands there. A table of data that the
//! lexer and the command rules mark placeholders with; it depends on nothing else here,
//! so the lexer's files can all use it without importing each other in a circle.

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

pub(super) const INT_HINT: &str = "if the value is a number, write `{name|int}` (the action then fails unless the value is an integer)";
pub(super) const DATA_HINT: &str = "pass the value as data instead: assign it to a variable and use \"$var\" where bash does not evaluate it";

pub(super) const ARITH: Eval = Eval {
    what: "shell arithmetic (`$(( ))`, `(( ))`, `$[ ]`)",
    numeric: true,
    hint: INT_HINT,
};
pub(super) const COND_NUM: Eval = Eval {
    what: "an operand of a numeric `[[ ]]` comparison (`-eq`, `-ne`, `-lt`, `-le`, `-gt`, `-ge`)",
    numeric: true,
    hint: INT_HINT,
};
pub(super) const SUBSCRIPT: Eval = Eval {
    what: "an array subscript (`a[...]`)",
    numeric: true,
    hint: INT_HINT,
};
pub(super) const SUBSTRING: Eval = Eval {
    what: "a substring offset or length (`${s:offset:length}`)",
    numeric: true,
    hint: INT_HINT,
};
pub(super) const LET: Eval = Eval {
    what: "a `let` expression",
    numeric: true,
    hint: INT_HINT,
};
pub(super) const INT_VAR: Eval = Eval {
    what: "a value assigned to an integer variable (`declare -i`)",
    numeric: true,
    hint: INT_HINT,
};
pub(super) const PARAM_NAME: Eval = Eval {
    what: "the name or operator of a `${...}` expansion (indirection `${!x}`, `${x@P}`)",
    numeric: false,
    hint: "a placeholder cannot name a variable; use it as a value: `\"{name}\"`",
};
pub(super) const EVAL: Eval = Eval {
    what: "an argument of `eval`",
    numeric: false,
    hint: DATA_HINT,
};
pub(super) const SOURCE: Eval = Eval {
    what: "the file `source` or `.` reads as code",
    numeric: false,
    hint: "name the file in the config; pass values to it as arguments after the file name",
};
pub(super) const SHELL_C: Eval = Eval {
    what: "the command string of `sh -c`/`bash -c`",
    numeric: false,
    hint:
        "pass the value as an argument after the command string: `bash -c 'echo \"$1\"' _ {name}`",
};
pub(super) const SHELL_SCRIPT: Eval = Eval {
    what: "the script a shell runs (its file argument, or what it reads on standard input)",
    numeric: false,
    hint: "name the script in the config; pass values to it as arguments",
};
pub(super) const VAR_NAME: Eval = Eval {
    what: "a variable name given to a builtin (`unset`, `printf -v`, `read`, `mapfile`, `test -v`, `declare`, ...)",
    numeric: false,
    hint: "write the variable name in the config; a placeholder may only stand in its array subscript, as a number",
};
pub(super) const DECLARE_VALUE: Eval = Eval {
    what: "a value given to `declare`, `typeset` or `local` (parsed as a compound assignment when the variable is an array)",
    numeric: true,
    hint: "assign it in a plain assignment first (`v={name}`), then `declare`/`local` the variable; for a number, `{name|int}` is accepted",
};
pub(super) const COMMAND_NAME: Eval = Eval {
    what: "the name of the command to run",
    numeric: false,
    hint: "write the command in the config; pass values to it as arguments",
};
pub(super) const TRAP: Eval = Eval {
    what: "a `trap` command",
    numeric: false,
    hint: DATA_HINT,
};
pub(super) const CALLBACK: Eval = Eval {
    what: "the `-C` callback of `mapfile`",
    numeric: false,
    hint: DATA_HINT,
};
pub(super) const CODE_VAR: Eval = Eval {
    what: "a variable bash runs or expands as code (`PS0`, `PS1`, `PS2`, `PS4`, `PROMPT_COMMAND`, `BASH_ENV`, `ENV`)",
    numeric: false,
    hint: DATA_HINT,
};
pub(super) const REMOTE: Eval = Eval {
    what: "the remote command of `ssh` (a remote shell parses it)",
    numeric: false,
    hint: "pass the value on the remote command's standard input, or quote it for the remote shell yourself",
};

/// Variables whose value bash runs or prompt-expands.
pub(super) const CODE_VARS: &[&[u8]] = &[
    b"PS0",
    b"PS1",
    b"PS2",
    b"PS4",
    b"PROMPT_COMMAND",
    b"BASH_ENV",
    b"ENV",
];
