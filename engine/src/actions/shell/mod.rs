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
//! could only change how the value is shown (word splitting), never run it. The script
//! starts with `export -n` of its variables: they reach bash through its environment but
//! are not passed on to the commands it runs, so a command that prints its environment
//! (`env | bash`) cannot hand a value to a shell as code.
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
//! it is a config error too. A command with placeholders must parse (`bash -n`, see
//! [`syntax`]): after a syntax error bash resumes where the lexer cannot follow it. `${NAME}` is shell syntax and is left alone; `#` comments are
//! skipped (a `#` starts one only at the beginning of a word, as in bash).

mod expansions;
mod lexer;
mod places;
mod rules;
mod run;
mod syntax;
#[cfg(test)]
mod tests;

pub use places::Eval;

use super::super::runtime::template::{Placeholder, Segment, Template};
use lexer::{analyse, Ctx};

/// Prefix of the environment variables that carry interpolated values.
pub const ARG_PREFIX: &str = "TURNSTILE_ARG_";

/// Diagnostic code of a placeholder that stands where bash evaluates text as code.
pub const UNSAFE_CODE: &str = "unsafe-placeholder";

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
        if !args.is_empty() {
            if let Some(e) = syntax::bash_error(&script) {
                return Err(vec![ShellIssue {
                    code: UNSAFE_CODE,
                    message: format!(
                        "bash cannot parse this command ({e}); after a syntax error bash goes on with the next line, where what a placeholder stands in cannot be checked"
                    ),
                    hint: "a command with placeholders must be valid bash: check it with `bash -n -c '...'`".into(),
                    placeholder: None,
                }]);
            }
            // The values stay shell variables, not exported: a child process does not
            // inherit them (`env | bash` would otherwise print them as code).
            let mut prelude = String::from("export -n");
            for n in 0..args.len() {
                prelude.push_str(&format!(" {ARG_PREFIX}{n}"));
            }
            prelude.push_str("; ");
            script.insert_str(0, &prelude);
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
}
