//! Safe interpolation into shell commands.
//!
//! A `{placeholder}` in a `bash` command is never pasted into the script text. Each one is
//! replaced by a reference to an environment variable (`TURNSTILE_ARG_n`) that holds the
//! rendered value, written so that the shell expands it as one literal word in the quoting
//! context where the placeholder stands:
//!
//! | context            | written as                    |
//! |--------------------|-------------------------------|
//! | unquoted, `$(..)`, backticks | `"${TURNSTILE_ARG_n}"` |
//! | inside `"..."`     | `${TURNSTILE_ARG_n}`          |
//! | inside `'...'`     | `'"${TURNSTILE_ARG_n}"'`      |
//! | inside `$'...'`    | `'"${TURNSTILE_ARG_n}"$'`     |
//!
//! The shell never parses the value, so quotes, `$(...)`, backticks, `;` or newlines in it
//! are printed, not run. A wrong guess of the context could only change how the value is
//! shown, never run it. `${NAME}` is shell syntax and is left alone.

use super::super::runtime::template::{push_value, Placeholder, Scope, Segment, Template};

/// Prefix of the environment variables that carry interpolated values.
pub const ARG_PREFIX: &str = "TURNSTILE_ARG_";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ctx {
    Unquoted,
    Single,
    Double,
    AnsiC,
    Backtick,
    /// `$(`...`)` with its paren depth.
    Subst(u32),
}

/// A command with its placeholders turned into variable references.
#[derive(Debug, Clone)]
pub struct ShellTemplate {
    /// The script given to `bash -c`.
    script: String,
    /// The placeholders, in the order of their variables.
    args: Vec<Placeholder>,
    /// The command as written, for logs.
    source: String,
}

/// Finds the quoting context at each byte offset of `cmd` where a `{` starts.
fn contexts(cmd: &str) -> Vec<(usize, Ctx)> {
    let mut out = Vec::new();
    let mut stack = vec![Ctx::Unquoted];
    let b = cmd.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let top = *stack.last().unwrap_or(&Ctx::Unquoted);
        let c = b[i];
        if c == b'{' {
            out.push((i, top));
        }
        match top {
            Ctx::Single => {
                if c == b'\'' {
                    stack.pop();
                }
            }
            Ctx::AnsiC => {
                if c == b'\\' {
                    i += 1;
                } else if c == b'\'' {
                    stack.pop();
                }
            }
            Ctx::Double => match c {
                b'\\' => i += 1,
                b'"' => {
                    stack.pop();
                }
                b'`' => stack.push(Ctx::Backtick),
                b'$' if b.get(i + 1) == Some(&b'(') => {
                    stack.push(Ctx::Subst(0));
                }
                _ => {}
            },
            Ctx::Unquoted | Ctx::Backtick | Ctx::Subst(_) => match c {
                b'\\' => i += 1,
                b'\'' => stack.push(Ctx::Single),
                b'"' => stack.push(Ctx::Double),
                b'$' if b.get(i + 1) == Some(&b'\'') => {
                    stack.push(Ctx::AnsiC);
                    i += 1;
                }
                b'$' if b.get(i + 1) == Some(&b'(') => {
                    stack.push(Ctx::Subst(0));
                }
                b'`' if top == Ctx::Backtick => {
                    stack.pop();
                }
                b'`' => stack.push(Ctx::Backtick),
                b'(' => {
                    if let Some(Ctx::Subst(d)) = stack.last_mut() {
                        *d += 1;
                    }
                }
                b')' => {
                    if let Some(Ctx::Subst(d)) = stack.last_mut() {
                        if *d <= 1 {
                            stack.pop();
                        } else {
                            *d -= 1;
                        }
                    }
                }
                _ => {}
            },
        }
        i += 1;
    }
    out
}

impl ShellTemplate {
    /// Compiles a command. Errors only for a placeholder with a bad filter.
    pub fn compile(cmd: &str) -> Result<Self, String> {
        let ctxs = contexts(cmd);
        let ctx_at = |i: usize| {
            ctxs.binary_search_by_key(&i, |(o, _)| *o)
                .map(|k| ctxs[k].1)
                .unwrap_or(Ctx::Unquoted)
        };
        // `${NAME}` is shell syntax, not a placeholder.
        let tpl = Template::parse_with(cmd, |i| i == 0 || cmd.as_bytes()[i - 1] != b'$')?;
        // Walk the segments again to learn each placeholder's offset.
        let mut script = String::with_capacity(cmd.len() + 32);
        let mut args = Vec::new();
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
                    match ctx_at(offset) {
                        Ctx::Unquoted | Ctx::Backtick | Ctx::Subst(_) => {
                            script.push('"');
                            script.push_str(&var);
                            script.push('"');
                        }
                        Ctx::Double => script.push_str(&var),
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
                }
            }
        }
        Ok(Self {
            script,
            args,
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
    pub fn env(&self, scope: &dyn Scope) -> Vec<(String, String)> {
        self.args
            .iter()
            .enumerate()
            .map(|(n, ph)| {
                let mut v = String::new();
                push_value(&mut v, ph, scope);
                (format!("{ARG_PREFIX}{n}"), v)
            })
            .collect()
    }

    /// The command with values pasted in, for logs and traces only (never executed).
    pub fn display(&self, scope: &dyn Scope) -> String {
        Template::parse_with(&self.source, |i| {
            i == 0 || self.source.as_bytes()[i - 1] != b'$'
        })
        .map(|t| t.render_string(scope).into_owned())
        .unwrap_or_else(|_| self.source.clone())
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
}
