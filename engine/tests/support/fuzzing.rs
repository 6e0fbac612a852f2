//! Shared pieces of the property tests (`fuzz_*.rs`): the checked-in seed corpora, case
//! counts that `PROPTEST_CASES` can raise for long runs, and a mutation strategy that
//! turns seeds into nearby inputs (what a coverage-guided fuzzer would try first).

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use proptest::prelude::*;

/// The repository's root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .find(|p| p.join("Cargo.lock").is_file())
        .expect("the crate is inside the workspace")
        .to_path_buf()
}

/// Every file under `dir` (recursively) whose name ends in one of `exts` (all when empty),
/// sorted; nothing when `dir` does not exist.
pub fn files_under(dir: &Path, exts: &[&str]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p, exts));
        } else if exts.is_empty()
            || exts
                .iter()
                .any(|x| p.to_string_lossy().ends_with(&format!(".{x}")))
        {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// The seed corpus of a target: `fuzz/corpus/<target>/*` (the same files cargo-fuzz starts
/// from). Panics when it is empty, so a moved folder cannot turn the tests vacuous.
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = root().join("fuzz/corpus").join(target);
    let files = files_under(&dir, &[]);
    assert!(!files.is_empty(), "no seeds in {}", dir.display());
    files
        .iter()
        .map(|p| std::fs::read(p).expect("a seed file is readable"))
        .collect()
}

/// The number of cases: `PROPTEST_CASES` when set (long runs), else `default` (CI).
pub fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One edit of a byte string.
#[derive(Debug, Clone)]
pub enum Edit {
    /// Insert these bytes at (position % len).
    Insert(usize, Vec<u8>),
    /// Remove up to n bytes at a position.
    Remove(usize, usize),
    /// Overwrite one byte.
    Set(usize, u8),
    /// Repeat a span (position, length, times).
    Repeat(usize, usize, usize),
    /// Swap two bytes.
    Swap(usize, usize),
}

fn edit(interesting: &'static [&'static [u8]]) -> impl Strategy<Value = Edit> {
    let chunk = prop_oneof![
        proptest::collection::vec(any::<u8>(), 1..8),
        proptest::sample::select(interesting).prop_map(<[u8]>::to_vec),
    ];
    prop_oneof![
        (any::<usize>(), chunk).prop_map(|(i, b)| Edit::Insert(i, b)),
        (any::<usize>(), 1usize..16).prop_map(|(i, n)| Edit::Remove(i, n)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Set(i, b)),
        (any::<usize>(), 1usize..32, 1usize..8).prop_map(|(i, n, k)| Edit::Repeat(i, n, k)),
        (any::<usize>(), any::<usize>()).prop_map(|(i, j)| Edit::Swap(i, j)),
    ]
}

/// Applies edits to a copy of `seed`.
pub fn apply(seed: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for e in edits {
        let at = |i: usize, b: &Vec<u8>| if b.is_empty() { 0 } else { i % (b.len() + 1) };
        match e {
            Edit::Insert(i, bytes) => {
                let i = at(*i, &b);
                b.splice(i..i, bytes.iter().copied());
            }
            Edit::Remove(i, n) => {
                let i = at(*i, &b);
                let end = (i + n).min(b.len());
                b.drain(i..end);
            }
            Edit::Set(i, v) => {
                if !b.is_empty() {
                    let i = i % b.len();
                    b[i] = *v;
                }
            }
            Edit::Repeat(i, n, k) => {
                let i = at(*i, &b);
                let end = (i + n).min(b.len());
                let span = b[i..end].to_vec();
                for _ in 0..*k {
                    b.splice(end..end, span.iter().copied());
                }
            }
            Edit::Swap(i, j) => {
                if !b.is_empty() {
                    let (i, j) = (i % b.len(), j % b.len());
                    b.swap(i, j);
                }
            }
        }
    }
    b
}

/// A seed (from `seeds`) changed by up to `max_edits` edits, some of them inserting the
/// `interesting` fragments of the format.
pub fn mutated(
    seeds: Vec<Vec<u8>>,
    interesting: &'static [&'static [u8]],
    max_edits: usize,
) -> impl Strategy<Value = Vec<u8>> {
    (
        proptest::sample::select(seeds),
        proptest::collection::vec(edit(interesting), 0..=max_edits),
    )
        .prop_map(|(seed, edits)| apply(&seed, &edits))
}

/// Line `line` (1-based) of `text` exists, or is the empty line after a final newline.
pub fn line_exists(text: &str, line: usize) -> bool {
    line >= 1 && line <= text.split('\n').count()
}
