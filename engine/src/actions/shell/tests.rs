use super::*;

#[test]
fn contexts_are_recognised() {
    let t = ShellTemplate::compile(r#"echo {a} "{b}" '{c}' $'{d}' $(echo {e}) `echo {f}` ${HOME}"#)
        .unwrap();
    assert_eq!(
        t.script(),
        concat!(
            "export -n TURNSTILE_ARG_0 TURNSTILE_ARG_1 TURNSTILE_ARG_2 TURNSTILE_ARG_3 ",
            "TURNSTILE_ARG_4 TURNSTILE_ARG_5; ",
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
        "bash /dev/stdin <<EOF\n trap {x} cat ",
        "echo {x} | sh /dev/fd/0",
        "bash -- /proc/self/fd/0 <<< {x}",
        "source /dev/stdin <<< {x}",
        "sh -c ${x@P} {x} ",
        "command test -v  {x}",
        "builtin printf -v {x} x",
        "bash -c $(true) {x}",
        "eval `true` {x}",
        "trap $E $F {x}",
        "source $NONE {x}",
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

/// Found by the quoting oracle (`engine/tests/fuzz_shell.rs`): `xargs` running a shell whose
/// script is what `xargs` reads, and a command word that expands to nothing.
#[test]
fn xargs_into_a_shell_and_vanishing_command_words_are_refused() {
    for cmd in [
        "xargs -0 bash -c <<EOF\n{x}\nEOF",
        "printf '%s' {x} | xargs -0 bash -c",
        "echo {x} | xargs sh",
        "echo {x} | xargs -I% sh -c %",
        "echo {x} | xargs -I % sh -c 'echo %'",
        "xargs bash -c <<< {x}",
        "${x@P} read {x}",
        "$EMPTY eval {x}",
        "`true` let n={x}",
    ] {
        assert_eq!(refused(cmd), Some(UNSAFE_CODE), "accepted: {cmd:?}");
    }
    // The value as an argument after the command string, or as data: accepted.
    for cmd in [
        "printf '%s\\0' {x} | xargs -0 bash -c 'echo \"$@\"' _",
        "echo {x} | xargs echo",
        "echo {x} | xargs bash script.sh",
        "\"$CMD\" read -r v <<< {x}",
        "$CMD echo {x}",
    ] {
        assert_eq!(refused(cmd), None, "refused: {cmd:?}");
    }
}

#[test]
fn command_v_describes_and_does_not_run() {
    // `command -v NAME` only looks NAME up: nothing runs, nothing to refuse.
    for cmd in ["command -v {x}", "command -pV {x}", "command -v eval {x}"] {
        assert!(ShellTemplate::compile(cmd).is_ok(), "{cmd}");
    }
}

#[test]
fn commands_with_placeholders_must_parse() {
    // bash reports the error on line 1 and runs line 2, which the lexer read as array
    // elements.
    let e = ShellTemplate::compile("a=(; echo\nsh -c {x}").unwrap_err();
    assert_eq!(e[0].code, UNSAFE_CODE);
    assert!(e[0].message.contains("syntax error"), "{}", e[0].message);
    assert!(ShellTemplate::compile("echo {x}; if true; then echo {y}").is_err());
    // Without placeholders nothing can be injected: no check.
    assert!(ShellTemplate::compile("a=(; echo").is_ok());
    assert!(ShellTemplate::compile("echo {x}\nif true; then echo ok; fi").is_ok());
}

#[test]
fn values_are_not_exported_to_children() {
    let t = ShellTemplate::compile("echo {x} >/dev/null; env | grep -c TURNSTILE_ARG_ || true")
        .unwrap();
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(t.script())
        .env("TURNSTILE_ARG_0", "$(echo ran)")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "0");
}
