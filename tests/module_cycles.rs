//! No import cycles between the files of a crate.
//!
//! For every crate of the workspace (each `Cargo.toml` with a `src/lib.rs` or `src/main.rs`;
//! a package's library and binary are separate crates), this test follows the `mod name;`
//! declarations from the crate root to find the crate's files, reads the paths each file names
//! into its own crate, builds the file-level graph "file A names an item of file B", and fails
//! listing every cycle it finds.
//!
//! What counts as a reference from a file:
//! - every path of a `use` declaration (`pub use` re-exports included) that starts with
//!   `crate`, `super`, `self`, a module declared in the file, or a name the file imported;
//! - every path elsewhere in the code that starts the same way and goes on with `::`
//!   (`crate::a::b::f()`, `super::X`, `child::f()`, `imported_module::Y`).
//!
//! A path goes to the file of its longest prefix that is a file module (`a/b.rs` or
//! `a/b/mod.rs` is module `a::b`; inline `mod x { .. }` blocks belong to their file). A path
//! through a `pub use` re-export goes on to where the re-export points, so `crate::Engine`
//! is a reference to `runtime/engine.rs`, not to `lib.rs`.
//!
//! What is ignored, by design:
//! - a file's references to its own ancestors (its parent `mod.rs`, the crate root and so
//!   on): a module's use of its parent is not counted as a cycle;
//! - comments (so intra-doc links), string and char literals;
//! - every item marked `#[cfg(test)]` (test modules, inline or in files, test-only `use`s);
//! - `mod` declarations themselves (declaring a child is not using it);
//! - paths into other crates.
//!
//! Limits of this scanner (simple tokens, no macro expansion): a name imported with a glob
//! (`use x::*`) is not followed, and an imported name is known for the whole file, whatever
//! the block it was imported in.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

// ---------------------------------------------------------------------------------------
// Tokens

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    /// `::`
    Path,
    Punct(char),
}

/// Splits Rust source into identifiers, `::` and single punctuation characters, leaving out
/// whitespace, comments, string, char and number literals and lifetimes.
fn tokens(src: &str) -> Vec<Tok> {
    let c: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        let next = c.get(i + 1).copied();
        if ch.is_whitespace() {
            i += 1;
        } else if ch == '/' && next == Some('/') {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '/' && next == Some('*') {
            // Block comments nest.
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if ch == '"' {
            i = skip_string(&c, i);
        } else if ch == '\'' {
            // A char literal ('x', '\n', '\u{..}') or a lifetime ('a).
            if next == Some('\\') {
                i += 3;
                while i < c.len() && c[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if c.get(i + 2) == Some(&'\'') {
                i += 3;
            } else {
                i += 1;
                while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                    i += 1;
                }
            }
        } else if ch.is_ascii_digit() {
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
        } else if ch.is_alphabetic() || ch == '_' {
            let start = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            let word: String = c[start..i].iter().collect();
            // Raw strings (r"..", r#".."#, br#".."#) and byte strings (b"..").
            let raw = word == "r" || word == "br";
            if raw && matches!(c.get(i), Some('"') | Some('#')) {
                let mut hashes = 0;
                while c.get(i) == Some(&'#') {
                    hashes += 1;
                    i += 1;
                }
                if c.get(i) == Some(&'"') {
                    i += 1;
                    loop {
                        if i >= c.len() {
                            break;
                        }
                        if c[i] == '"' && (0..hashes).all(|h| c.get(i + 1 + h) == Some(&'#')) {
                            i += 1 + hashes;
                            break;
                        }
                        i += 1;
                    }
                    continue;
                }
                // `r#ident`: a raw identifier.
                let start = i;
                while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                    i += 1;
                }
                out.push(Tok::Ident(c[start..i].iter().collect()));
                continue;
            }
            if (word == "b" || word == "c") && c.get(i) == Some(&'"') {
                i = skip_string(&c, i);
                continue;
            }
            if word == "b" && c.get(i) == Some(&'\'') {
                i += 1;
                if c.get(i) == Some(&'\\') {
                    i += 1;
                }
                i += 1;
                while i < c.len() && c[i] != '\'' {
                    i += 1;
                }
                i += 1;
                continue;
            }
            out.push(Tok::Ident(word));
        } else if ch == ':' && next == Some(':') {
            out.push(Tok::Path);
            i += 2;
        } else {
            out.push(Tok::Punct(ch));
            i += 1;
        }
    }
    out
}

/// Index just past the string literal that opens at `c[i]` (a `"`).
fn skip_string(c: &[char], mut i: usize) -> usize {
    i += 1;
    while i < c.len() {
        match c[i] {
            '\\' => i += 2,
            '"' => return i + 1,
            _ => i += 1,
        }
    }
    i
}

// ---------------------------------------------------------------------------------------
// One file

/// A path as written, with the module it was written in.
#[derive(Debug, Clone)]
struct Written {
    /// The module (file module plus inline modules) the path appears in.
    scope: Vec<String>,
    segments: Vec<String>,
}

#[derive(Debug, Default)]
struct Scan {
    /// Child modules declared with `mod name;` (outside `#[cfg(test)]`).
    file_children: Vec<String>,
    /// Every module (file or inline) declared in the file, by scope: `scope -> names`.
    declared: BTreeSet<Vec<String>>,
    /// `use` imports: the name they bring in, the path, whether they are re-exports.
    imports: Vec<(Written, String, bool)>,
    /// Other paths.
    paths: Vec<Written>,
}

/// Expands the use tree in `t` (the tokens between `use` and `;`) into full paths, each with
/// the name it binds (`None` for `self`-less globs).
fn use_tree(t: &[Tok], prefix: &mut Vec<String>, out: &mut Vec<(Vec<String>, String)>) {
    // Split the top level of `t` on commas when called for a group's content.
    let mut i = 0;
    let mut seg: Vec<String> = Vec::new();
    while i < t.len() {
        match &t[i] {
            Tok::Ident(w) if w == "as" => {
                if let Some(Tok::Ident(alias)) = t.get(i + 1) {
                    let mut full = prefix.clone();
                    full.extend(seg.iter().cloned());
                    out.push((full, alias.clone()));
                }
                return;
            }
            Tok::Ident(w) => seg.push(w.clone()),
            Tok::Path => {}
            Tok::Punct('*') => return,
            Tok::Punct('{') => {
                // Find the matching `}` and split its content on top-level commas.
                let mut depth = 0;
                let mut end = i;
                for (j, tok) in t.iter().enumerate().skip(i) {
                    match tok {
                        Tok::Punct('{') => depth += 1,
                        Tok::Punct('}') => {
                            depth -= 1;
                            if depth == 0 {
                                end = j;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                let inner = &t[i + 1..end];
                let mut depth = 0;
                let mut start = 0;
                let n = prefix.len();
                prefix.extend(seg.iter().cloned());
                for (j, tok) in inner.iter().enumerate() {
                    match tok {
                        Tok::Punct('{') => depth += 1,
                        Tok::Punct('}') => depth -= 1,
                        Tok::Punct(',') if depth == 0 => {
                            use_tree(&inner[start..j], prefix, out);
                            start = j + 1;
                        }
                        _ => {}
                    }
                }
                use_tree(&inner[start..], prefix, out);
                prefix.truncate(n);
                return;
            }
            _ => {}
        }
        i += 1;
    }
    if seg.is_empty() {
        return;
    }
    let mut full = prefix.clone();
    full.extend(seg.iter().cloned());
    // `use a::b::{self}` binds `b`.
    if full.last().map(String::as_str) == Some("self") {
        full.pop();
    }
    if let Some(name) = full.last().cloned() {
        out.push((full, name));
    }
}

/// Index of the bracket that closes the one at `t[i]`.
fn matching(t: &[Tok], mut i: usize) -> usize {
    let mut depth = 0i32;
    while i < t.len() {
        match t[i] {
            Tok::Punct('{') | Tok::Punct('(') | Tok::Punct('[') => depth += 1,
            Tok::Punct('}') | Tok::Punct(')') | Tok::Punct(']') => {
                depth -= 1;
                if depth == 0 {
                    return i;
                }
            }
            _ => {}
        }
        i += 1;
    }
    t.len().saturating_sub(1)
}

/// Index of the token that closes the item starting at `t[i]`: its `;` or its last `}`
/// at the item's own depth.
fn item_end(t: &[Tok], mut i: usize) -> usize {
    let mut depth = 0i32;
    let is_use = matches!(t.get(i), Some(Tok::Ident(w)) if w == "use");
    while i < t.len() {
        match t[i] {
            Tok::Punct('{') | Tok::Punct('(') | Tok::Punct('[') => depth += 1,
            Tok::Punct('}') | Tok::Punct(')') | Tok::Punct(']') => {
                depth -= 1;
                if depth == 0 && t[i] == Tok::Punct('}') && !is_use {
                    // `struct S { .. }`, `fn f() { .. }`, `mod m { .. }`; not `S { .. }` of
                    // an expression followed by `;`, which ends below.
                    if !matches!(t.get(i + 1), Some(Tok::Punct(';'))) {
                        return i;
                    }
                }
            }
            Tok::Punct(';') if depth == 0 => return i,
            _ => {}
        }
        i += 1;
    }
    t.len().saturating_sub(1)
}

fn scan(src: &str, module: &[String]) -> Scan {
    let t = tokens(src);
    let mut s = Scan::default();
    s.declared.insert(module.to_vec());
    // Stack of open braces: `Some(name)` for an inline module.
    let mut braces: Vec<Option<String>> = Vec::new();
    let scope = |braces: &[Option<String>]| {
        let mut m = module.to_vec();
        m.extend(braces.iter().flatten().cloned());
        m
    };
    let mut cfg_test = false;
    let mut public = false;
    let mut i = 0;
    while i < t.len() {
        match &t[i] {
            Tok::Punct('#') => {
                // An attribute: `#[...]` or `#![...]`.
                let mut j = i + 1;
                if t.get(j) == Some(&Tok::Punct('!')) {
                    j += 1;
                }
                let end = matching(&t, j);
                let body = &t[j..=end.min(t.len() - 1)];
                let is_cfg_test = body.len() >= 6
                    && body[1] == Tok::Ident("cfg".into())
                    && body[2] == Tok::Punct('(')
                    && body[3] == Tok::Ident("test".into())
                    && body[4] == Tok::Punct(')');
                if is_cfg_test && t.get(i + 1) != Some(&Tok::Punct('!')) {
                    cfg_test = true;
                }
                i = end + 1;
                continue;
            }
            Tok::Ident(w) if w == "pub" => {
                public = true;
                i += 1;
                if t.get(i) == Some(&Tok::Punct('(')) {
                    i = matching(&t, i) + 1;
                }
                continue;
            }
            _ if cfg_test => {
                // Skip the whole test-only item.
                cfg_test = false;
                public = false;
                i = item_end(&t, i) + 1;
                continue;
            }
            Tok::Ident(w) if w == "use" => {
                let end = item_end(&t, i);
                let mut found = Vec::new();
                use_tree(&t[i + 1..end], &mut Vec::new(), &mut found);
                for (segments, name) in found {
                    let written = Written {
                        scope: scope(&braces),
                        segments,
                    };
                    s.imports.push((written, name, public));
                }
                public = false;
                i = end + 1;
                continue;
            }
            Tok::Ident(w) if w == "mod" => {
                if let Some(Tok::Ident(name)) = t.get(i + 1) {
                    let mut m = scope(&braces);
                    m.push(name.clone());
                    s.declared.insert(m);
                    match t.get(i + 2) {
                        Some(Tok::Punct(';')) => {
                            if braces.iter().all(Option::is_none) {
                                s.file_children.push(name.clone());
                            }
                            i += 3;
                        }
                        Some(Tok::Punct('{')) => {
                            braces.push(Some(name.clone()));
                            i += 3;
                        }
                        _ => i += 2,
                    }
                    public = false;
                    continue;
                }
            }
            Tok::Punct('{') => braces.push(None),
            Tok::Punct('}') => {
                braces.pop();
            }
            // A path `a::b::c` (not preceded by `::`, which would make it a tail).
            Tok::Ident(first)
                if t.get(i + 1) == Some(&Tok::Path) && (i == 0 || t[i - 1] != Tok::Path) =>
            {
                let mut segments = vec![first.clone()];
                let mut j = i + 1;
                while t.get(j) == Some(&Tok::Path) {
                    match t.get(j + 1) {
                        Some(Tok::Ident(w)) => segments.push(w.clone()),
                        _ => break,
                    }
                    j += 2;
                }
                s.paths.push(Written {
                    scope: scope(&braces),
                    segments,
                });
                public = false;
                i = j;
                continue;
            }
            _ => {}
        }
        public = false;
        i += 1;
    }
    s
}

// ---------------------------------------------------------------------------------------
// One crate

struct Crate {
    /// File of each file module (module path from the crate root).
    files: BTreeMap<Vec<String>, PathBuf>,
    scans: BTreeMap<Vec<String>, Scan>,
    /// Re-exports: `(module, name) -> path` for each `pub use`.
    reexports: BTreeMap<(Vec<String>, String), Vec<String>>,
}

fn load_crate(root_file: &Path) -> Crate {
    let mut krate = Crate {
        files: BTreeMap::new(),
        scans: BTreeMap::new(),
        reexports: BTreeMap::new(),
    };
    let mut todo = vec![(Vec::<String>::new(), root_file.to_path_buf())];
    while let Some((module, file)) = todo.pop() {
        let src = std::fs::read_to_string(&file).unwrap();
        let s = scan(&src, &module);
        // Children of `lib.rs`, `main.rs` and `x/mod.rs` live beside them; those of
        // `x/y.rs` in `x/y/`.
        let stem = file.file_stem().unwrap().to_str().unwrap();
        let dir = if module.is_empty() || stem == "mod" {
            file.parent().unwrap().to_path_buf()
        } else {
            file.with_extension("")
        };
        for child in &s.file_children {
            let flat = dir.join(format!("{child}.rs"));
            let nested = dir.join(child).join("mod.rs");
            let path = if flat.is_file() { flat } else { nested };
            assert!(
                path.is_file(),
                "{}: no file for `mod {child};`",
                file.display()
            );
            let mut m = module.clone();
            m.push(child.clone());
            todo.push((m, path));
        }
        krate.files.insert(module.clone(), file);
        krate.scans.insert(module, s);
    }
    // Re-exports need the imports resolved to absolute paths first.
    let mut reexports = BTreeMap::new();
    for s in krate.scans.values() {
        for (written, name, public) in &s.imports {
            if *public {
                if let Some(abs) = absolute(&krate, s, written) {
                    reexports.insert((written.scope.clone(), name.clone()), abs);
                }
            }
        }
    }
    krate.reexports = reexports;
    krate
}

/// The path from the crate root that `written` names, or `None` if it leads out of the
/// crate.
fn absolute(krate: &Crate, s: &Scan, written: &Written) -> Option<Vec<String>> {
    absolute_in(krate, s, written, 0)
}

fn absolute_in(krate: &Crate, s: &Scan, w: &Written, depth: usize) -> Option<Vec<String>> {
    if depth > 8 {
        return None;
    }
    let first = w.segments.first()?.as_str();
    let mut rest = &w.segments[1..];
    let mut base = match first {
        "crate" => Vec::new(),
        "self" => w.scope.clone(),
        "super" => {
            let mut b = w.scope.clone();
            b.pop()?;
            while rest.first().map(String::as_str) == Some("super") {
                b.pop()?;
                rest = &rest[1..];
            }
            b
        }
        name => {
            let mut child = w.scope.clone();
            child.push(name.to_string());
            if s.declared.contains(&child) || krate.files.contains_key(&child) {
                child
            } else {
                // A name brought in by a `use` of this file (in any block: see the limits).
                let import = s.imports.iter().find(|(i, n, _)| {
                    n == name && i.segments.first().map(String::as_str) != Some(name)
                })?;
                let mut abs = absolute_in(krate, s, &import.0, depth + 1)?;
                abs.extend(rest.iter().cloned());
                return Some(abs);
            }
        }
    };
    base.extend(rest.iter().cloned());
    Some(base)
}

/// The file module that holds what `path` names, following `pub use` re-exports.
fn file_of(krate: &Crate, path: &[String], depth: usize) -> Option<Vec<String>> {
    let n = (0..=path.len())
        .rev()
        .find(|n| krate.files.contains_key(&path[..*n]))?;
    let module = path[..n].to_vec();
    if depth < 8 && n < path.len() {
        // `module::name` may be a re-export; look in the inline modules too.
        for m in (n..path.len()).rev() {
            let key = (path[..m].to_vec(), path[m].clone());
            if let Some(target) = krate.reexports.get(&key) {
                let mut p = target.clone();
                p.extend(path[m + 1..].iter().cloned());
                return file_of(krate, &p, depth + 1);
            }
        }
    }
    Some(module)
}

/// File-level edges `from -> to` (module paths), the files' own ancestors left out.
fn edges(krate: &Crate) -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let mut out: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for (module, s) in &krate.scans {
        let written = s.imports.iter().map(|(w, _, _)| w).chain(s.paths.iter());
        for w in written {
            let Some(abs) = absolute(krate, s, w) else {
                continue;
            };
            let Some(to) = file_of(krate, &abs, 0) else {
                continue;
            };
            // A module's use of itself or of its own ancestors does not count.
            if module.starts_with(&to) {
                continue;
            }
            out.entry(module.clone()).or_default().insert(to);
        }
    }
    out
}

/// The strongly connected components with more than one file (Tarjan).
fn cycles(
    graph: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
    nodes: &[Vec<String>],
) -> Vec<Vec<Vec<String>>> {
    struct State<'a> {
        graph: &'a BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        index: BTreeMap<&'a Vec<String>, usize>,
        low: BTreeMap<&'a Vec<String>, usize>,
        stack: Vec<&'a Vec<String>>,
        on_stack: BTreeSet<&'a Vec<String>>,
        next: usize,
        out: Vec<Vec<Vec<String>>>,
    }
    fn visit<'a>(st: &mut State<'a>, v: &'a Vec<String>) {
        st.index.insert(v, st.next);
        st.low.insert(v, st.next);
        st.next += 1;
        st.stack.push(v);
        st.on_stack.insert(v);
        if let Some(succ) = st.graph.get(v) {
            for w in succ {
                if !st.index.contains_key(w) {
                    visit(st, w);
                    let lw = st.low[w];
                    let lv = st.low.get_mut(v).unwrap();
                    *lv = (*lv).min(lw);
                } else if st.on_stack.contains(w) {
                    let iw = st.index[w];
                    let lv = st.low.get_mut(v).unwrap();
                    *lv = (*lv).min(iw);
                }
            }
        }
        if st.low[v] == st.index[v] {
            let mut comp = Vec::new();
            loop {
                let w = st.stack.pop().unwrap();
                st.on_stack.remove(w);
                comp.push(w.clone());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                st.out.push(comp);
            }
        }
    }
    let mut st = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in nodes {
        if !st.index.contains_key(v) {
            visit(&mut st, v);
        }
    }
    st.out
}

/// One shortest cycle through `start` inside `comp`, for the message.
fn cycle_through(
    graph: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
    comp: &[Vec<String>],
    start: &Vec<String>,
) -> Vec<Vec<String>> {
    let mut prev: BTreeMap<Vec<String>, Vec<String>> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([start.clone()]);
    while let Some(v) = queue.pop_front() {
        for w in graph.get(&v).into_iter().flatten() {
            if !comp.contains(w) {
                continue;
            }
            if w == start {
                let mut path = vec![v.clone()];
                while let Some(p) = prev.get(path.last().unwrap()) {
                    path.push(p.clone());
                }
                path.reverse();
                return path;
            }
            if !prev.contains_key(w) && w != start {
                prev.insert(w.clone(), v.clone());
                queue.push_back(w.clone());
            }
        }
    }
    vec![start.clone()]
}

/// The crate roots of the workspace.
fn crate_roots(root: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        if dir.join("Cargo.toml").is_file() {
            for root in ["src/lib.rs", "src/main.rs"] {
                if dir.join(root).is_file() {
                    out.push(dir.join(root));
                }
            }
        }
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if entry.file_type().unwrap().is_dir()
                && !name.starts_with('.')
                && !["target", "src", "tests", "benches", "node_modules"].contains(&&*name)
            {
                walk(&entry.path(), out);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, &mut out);
    // The binary's package is the workspace root, its code in cli/ (`[[bin]] path`).
    let cli = root.join("cli/main.rs");
    if cli.is_file() {
        out.push(cli);
    }
    out.sort();
    out
}

fn describe(krate: &Crate, root: &Path, module: &Vec<String>) -> String {
    krate.files[module]
        .strip_prefix(root)
        .unwrap()
        .display()
        .to_string()
}

/// Cycles of the crate whose root is `root_file`, one line each.
fn crate_cycles(root: &Path, root_file: &Path) -> (usize, usize, Vec<String>) {
    let krate = load_crate(root_file);
    let graph = edges(&krate);
    let nodes: Vec<Vec<String>> = krate.files.keys().cloned().collect();
    let n_edges = graph.values().map(BTreeSet::len).sum();
    let found = cycles(&graph, &nodes)
        .into_iter()
        .map(|comp| {
            let cycle = cycle_through(&graph, &comp, &comp[0]);
            let mut names: Vec<String> = cycle.iter().map(|m| describe(&krate, root, m)).collect();
            names.push(names[0].clone());
            let all: Vec<String> = comp.iter().map(|m| describe(&krate, root, m)).collect();
            format!(
                "{}  (files in the cycle: {})",
                names.join(" -> "),
                all.join(", ")
            )
        })
        .collect();
    (krate.files.len(), n_edges, found)
}

#[test]
fn no_import_cycles_between_files() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let roots = crate_roots(root);
    assert!(
        roots.iter().any(|r| r.ends_with("engine/src/lib.rs")),
        "no engine crate among {roots:?}"
    );
    assert!(
        roots.iter().any(|r| r.ends_with("cli/main.rs")),
        "no binary crate among {roots:?}"
    );
    let mut problems = Vec::new();
    let mut n_files = 0;
    let mut n_edges = 0;
    for root_file in &roots {
        let (files, edges, found) = crate_cycles(root, root_file);
        n_files += files;
        n_edges += edges;
        problems.extend(found);
    }
    // The scanner found the files and their uses (a scanner that sees nothing finds no cycle).
    assert!(n_files > 60, "followed only {n_files} files");
    assert!(n_edges > 100, "found only {n_edges} file-to-file uses");
    assert!(
        problems.is_empty(),
        "import cycles between files:\n{}",
        problems.join("\n")
    );
}

// ---------------------------------------------------------------------------------------
// The checker checks: it finds the cycles it is made for and leaves out what it should.

/// Writes `files` (path, text) under a temp dir and returns the cycles of `src/lib.rs`.
fn cycles_of(files: &[(&str, &str)]) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    for (path, text) in files {
        let p = dir.path().join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    crate_cycles(dir.path(), &dir.path().join("src/lib.rs")).2
}

#[test]
fn checker_finds_a_cycle_through_use_super_and_plain_paths() {
    let found = cycles_of(&[
        ("src/lib.rs", "mod a;\nmod b;\npub mod c;\n"),
        ("src/a.rs", "use crate::b::{self, X as Y};\n"),
        ("src/b.rs", "fn f() { super::c::g(); }\n"),
        ("src/c/mod.rs", "mod d;\nfn k() { d::h(); }\n"),
        ("src/c/d.rs", "fn h() -> crate::a::Z { todo!() }\n"),
    ]);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains("src/c/mod.rs"), "{found:?}");
    assert!(found[0].contains("src/c/d.rs") && found[0].contains("src/a.rs"));
}

#[test]
fn checker_follows_reexports_and_imported_modules() {
    // `crate::Thing` is `b.rs`'s; `a` uses `b` only through the root's re-export.
    let found = cycles_of(&[
        ("src/lib.rs", "mod a;\nmod b;\npub use b::Thing;\n"),
        ("src/a.rs", "use crate::Thing;\npub struct A;\n"),
        ("src/b.rs", "use crate::a;\nfn f(_: a::A) {}\n"),
    ]);
    assert_eq!(found.len(), 1, "{found:?}");
}

#[test]
fn checker_leaves_out_parents_tests_comments_and_strings() {
    let found = cycles_of(&[
        ("src/lib.rs", "mod a;\nmod b;\n"),
        // A child's use of its parent is no cycle.
        (
            "src/a/mod.rs",
            "mod x;\nuse x::Y;\nfn f(_: crate::b::B) {}\n",
        ),
        ("src/a/x.rs", "use super::Z;\nuse crate::a::W;\n"),
        // b -> a only in comments, strings, tests; a -> b for real.
        (
            "src/b.rs",
            "// crate::a::Y\n/* crate::a::Y */\nconst S: &str = \"crate::a::Y\";\n\
             const R: &str = r#\"crate::a::Y\"#;\nconst C: char = '\"';\n\
             #[cfg(test)]\nmod tests { use crate::a::Y; }\n\
             #[cfg(test)]\nuse crate::a::Q;\npub struct B;\n",
        ),
        ("src/a/y.rs", ""),
    ]);
    assert!(found.is_empty(), "{found:?}");
    let found = cycles_of(&[
        ("src/lib.rs", "mod a;\nmod b;\n"),
        ("src/a.rs", "pub fn f() -> crate::b::B { todo!() }\n"),
        ("src/b.rs", "pub struct B;\nfn g() { crate::a::f(); }\n"),
    ]);
    assert_eq!(found.len(), 1, "{found:?}");
}
