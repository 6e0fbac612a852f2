//! The repository stands alone: a plain clone, with nothing beside it, passes its tests and
//! its docs name no file outside it.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::path::{Path, PathBuf};

/// Folders that hold no file of the repository's own (build output, fetched packages).
const SKIP: &[&str] = &[".git", "target", ".upstream", "node_modules", ".venv"];

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let path = entry.path();
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            if !SKIP.iter().any(|s| entry.file_name() == *s) {
                files(&path, out);
            }
        } else if kind.is_file() {
            out.push(path);
        }
    }
}

#[test]
fn no_file_reaches_outside_the_repository() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // Spelled in two parts so that this file does not match itself.
    let outside = format!("{}/{}", "..", "shared");
    let mut all = Vec::new();
    files(root, &mut all);
    assert!(all.len() > 50, "walked {} files only", all.len());
    let offenders: Vec<String> = all
        .iter()
        .filter(|p| {
            std::fs::read(p)
                .map(|b| String::from_utf8_lossy(&b).contains(&outside))
                .unwrap_or(false)
        })
        .map(|p| p.strip_prefix(root).unwrap().display().to_string())
        .collect();
    assert!(
        offenders.is_empty(),
        "these files name `{outside}`, which a plain clone does not have: {offenders:?}"
    );
}
