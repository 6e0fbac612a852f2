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
//! | here-document body (`<<EOF`) | `${TURNSTILE_ARG_n}` |
//! | arithmetic (`$((..))`, `((..))`, `$[..]`) | `"${TURNSTILE_ARG_n}"`, integers only |
//!
//! The shell never parses the value, so quotes, `$(...)`, backticks, `;` or newlines in it
//! are printed, not run. A wrong guess of the context could only change how the value is
//! shown, never run it. `${NAME}` is shell syntax and is left alone; `#` comments are
//! skipped.
//!
//! Two places are different. Bash evaluates text in arithmetic as an expression, and an
//! array subscript in it runs command substitutions (`a[$(cmd)]`), even from a quoted
//! variable: a placeholder there only takes an integer, anything else fails the action.
//! A here-document with a quoted delimiter (`<<'EOF'`) expands nothing, so a placeholder
//! in it is a config error. A script that hands a value to something that evaluates it
//! itself (`eval`, `bash -c`, `[[ $a -eq $b ]]`, `${x:$n}`, `test -v`, `declare -i`) is
//! running that value as code by its own choice; quoting cannot help there.

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
    /// `$((`...`))` or `((`...`))` with its paren depth.
    Arith(u32),
    /// `$[`...`]` with its bracket depth.
    ArithBracket(u32),
    /// The body of a here-document; `quoted` when its delimiter is (nothing is expanded).
    HereDoc {
        quoted: bool,
    },
}

/// Where a `{` stands: its quoting context, and whether it is inside arithmetic.
#[derive(Debug, Clone, Copy)]
struct Spot {
    offset: usize,
    ctx: Ctx,
    arith: bool,
}

/// A here-document whose body starts after the current line.
struct PendingHereDoc {
    delimiter: Vec<u8>,
    quoted: bool,
    strip_tabs: bool,
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
    (word, quoted, j)
}

/// Finds the quoting context at each byte offset of `cmd` where a `{` starts.
fn contexts(cmd: &str) -> Vec<Spot> {
    let mut out = Vec::new();
    let mut stack = vec![Ctx::Unquoted];
    let mut heredocs: Vec<PendingHereDoc> = Vec::new();
    let b = cmd.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let top = *stack.last().unwrap_or(&Ctx::Unquoted);
        let c = b[i];
        if c == b'{' {
            let arith = stack
                .iter()
                .any(|c| matches!(c, Ctx::Arith(_) | Ctx::ArithBracket(_)));
            out.push(Spot {
                offset: i,
                ctx: top,
                arith,
            });
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
            Ctx::HereDoc { .. } => {}
            Ctx::Double => match c {
                b'\\' => i += 1,
                b'"' => {
                    stack.pop();
                }
                b'`' => stack.push(Ctx::Backtick),
                b'$' if b.get(i + 1) == Some(&b'(') && b.get(i + 2) == Some(&b'(') => {
                    stack.push(Ctx::Arith(0));
                    i += 2;
                }
                b'$' if b.get(i + 1) == Some(&b'[') => {
                    stack.push(Ctx::ArithBracket(0));
                    i += 1;
                }
                b'$' if b.get(i + 1) == Some(&b'(') => {
                    stack.push(Ctx::Subst(0));
                }
                _ => {}
            },
            Ctx::Arith(_) | Ctx::ArithBracket(_) => match c {
                b'\\' => i += 1,
                b'\'' => stack.push(Ctx::Single),
                b'"' => stack.push(Ctx::Double),
                b'`' => stack.push(Ctx::Backtick),
                b'$' if b.get(i + 1) == Some(&b'(') && b.get(i + 2) != Some(&b'(') => {
                    stack.push(Ctx::Subst(1));
                    i += 1;
                }
                b'(' | b'[' => {
                    if let Some(Ctx::Arith(d) | Ctx::ArithBracket(d)) = stack.last_mut() {
                        *d += 1;
                    }
                }
                b')' | b']' => match stack.last_mut() {
                    Some(Ctx::Arith(0)) if c == b')' => {
                        stack.pop();
                        if b.get(i + 1) == Some(&b')') {
                            i += 1;
                        }
                    }
                    Some(Ctx::ArithBracket(0)) if c == b']' => {
                        stack.pop();
                    }
                    Some(Ctx::Arith(d) | Ctx::ArithBracket(d)) => *d = d.saturating_sub(1),
                    _ => {}
                },
                _ => {}
            },
            Ctx::Unquoted | Ctx::Backtick | Ctx::Subst(_) => match c {
                b'\\' => i += 1,
                b'\'' => stack.push(Ctx::Single),
                b'"' => stack.push(Ctx::Double),
                b'#' if i == 0 || b" \t\n;&|()".contains(&b[i - 1]) => {
                    // A comment, to the end of the line.
                    while b.get(i + 1).is_some_and(|&n| n != b'\n') {
                        i += 1;
                    }
                }
                b'<' if b.get(i + 1) == Some(&b'<') && b.get(i + 2) == Some(&b'<') => i += 2,
                b'<' if b.get(i + 1) == Some(&b'<') => {
                    let strip_tabs = b.get(i + 2) == Some(&b'-');
                    let (delimiter, quoted, end) = heredoc_word(b, i + 2 + usize::from(strip_tabs));
                    if !delimiter.is_empty() {
                        heredocs.push(PendingHereDoc {
                            delimiter,
                            quoted,
                            strip_tabs,
                        });
                    }
                    i = end - 1;
                }
                b'\n' if !heredocs.is_empty() => {
                    // The bodies of the here-documents of this line follow it.
                    let mut pos = i + 1;
                    for h in heredocs.drain(..) {
                        while pos < b.len() {
                            let end = b[pos..]
                                .iter()
                                .position(|&n| n == b'\n')
                                .map_or(b.len(), |k| pos + k);
                            let line = &b[pos..end];
                            let tabs = if h.strip_tabs {
                                line.iter().take_while(|&&n| n == b'\t').count()
                            } else {
                                0
                            };
                            if line[tabs..] == h.delimiter[..] {
                                pos = end + 1;
                                break;
                            }
                            for (k, &n) in line.iter().enumerate() {
                                if n == b'{' {
                                    out.push(Spot {
                                        offset: pos + k,
                                        ctx: Ctx::HereDoc { quoted: h.quoted },
                                        arith: false,
                                    });
                                }
                            }
                            pos = end + 1;
                        }
                    }
                    i = pos - 1;
                }
                b'$' if b.get(i + 1) == Some(&b'(') && b.get(i + 2) == Some(&b'(') => {
                    stack.push(Ctx::Arith(0));
                    i += 2;
                }
                b'$' if b.get(i + 1) == Some(&b'[') => {
                    stack.push(Ctx::ArithBracket(0));
                    i += 1;
                }
                b'$' if b.get(i + 1) == Some(&b'\'') => {
                    stack.push(Ctx::AnsiC);
                    i += 1;
                }
                b'$' if b.get(i + 1) == Some(&b'(') => {
                    stack.push(Ctx::Subst(0));
                }
                b'(' if b.get(i + 1) == Some(&b'(') => {
                    stack.push(Ctx::Arith(0));
                    i += 1;
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

/// True for an integer as bash arithmetic reads it safely: optional sign, decimal digits.
fn is_integer(v: &str) -> bool {
    let t = v.trim();
    let digits = t.strip_prefix(['+', '-']).unwrap_or(t);
    !digits.is_empty() && digits.bytes().all(|c| c.is_ascii_digit())
}

/// A command with its placeholders turned into variable references.
#[derive(Debug, Clone)]
pub struct ShellTemplate {
    /// The script given to `bash -c`.
    script: String,
    /// The placeholders, in the order of their variables.
    args: Vec<Placeholder>,
    /// For each placeholder: true when it stands in arithmetic (integers only).
    numeric: Vec<bool>,
    /// The command as written, for logs.
    source: String,
}

impl ShellTemplate {
    /// Compiles a command. Errors only for a placeholder with a bad filter.
    pub fn compile(cmd: &str) -> Result<Self, String> {
        let spots = contexts(cmd);
        let spot_at = |i: usize| {
            spots
                .binary_search_by_key(&i, |s| s.offset)
                .map(|k| (spots[k].ctx, spots[k].arith))
                .unwrap_or((Ctx::Unquoted, false))
        };
        // `${NAME}` is shell syntax, not a placeholder.
        let tpl = Template::parse_with(cmd, |i| i == 0 || cmd.as_bytes()[i - 1] != b'$')?;
        // Walk the segments again to learn each placeholder's offset.
        let mut script = String::with_capacity(cmd.len() + 32);
        let mut args = Vec::new();
        let mut numeric = Vec::new();
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
                    let (ctx, arith) = spot_at(offset);
                    match ctx {
                        Ctx::Unquoted
                        | Ctx::Backtick
                        | Ctx::Subst(_)
                        | Ctx::Arith(_)
                        | Ctx::ArithBracket(_) => {
                            script.push('"');
                            script.push_str(&var);
                            script.push('"');
                        }
                        Ctx::Double | Ctx::HereDoc { quoted: false } => script.push_str(&var),
                        Ctx::HereDoc { quoted: true } => {
                            return Err(format!(
                                "`{}` stands in a here-document with a quoted delimiter (`<<'EOF'`), where nothing is expanded",
                                ph.raw
                            ));
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
                    numeric.push(arith);
                }
            }
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
    /// Fails when a placeholder in arithmetic has a value that is not an integer.
    pub fn env(&self, scope: &dyn Scope) -> Result<Vec<(String, String)>, String> {
        self.args
            .iter()
            .zip(&self.numeric)
            .enumerate()
            .map(|(n, (ph, &numeric))| {
                let mut v = String::new();
                push_value(&mut v, ph, scope);
                if numeric && !is_integer(&v) {
                    let shown: String = v.chars().take(60).collect();
                    return Err(format!(
                        "`{}` is {shown:?}, not an integer: a value in shell arithmetic must be an integer (bash would evaluate anything else as code)",
                        ph.raw
                    ));
                }
                Ok((format!("{ARG_PREFIX}{n}"), v))
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
