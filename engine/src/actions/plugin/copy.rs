//! Private copies of library files, and the fingerprint that notices a changed file.
//!
//! A library is never loaded from the file as named: it is read once into a fresh file in
//! a private directory (mode 0700), checked there (`check.rs`), and that copy is loaded.
//! So the original can be rebuilt or replaced while the engine runs, a file still being
//! written is refused instead of mapped (which would be `SIGBUS`), and what was checked is
//! what gets loaded. The fingerprint (size, modification time, inode) taken around the copy
//! is also what the change check (`slot.rs`) compares.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use super::{check, LoadError, MAX_LIBRARY_BYTES};

/// Size, modification time and inode of a file: how a change is noticed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Fingerprint {
    pub(super) len: u64,
    pub(super) modified: Option<SystemTime>,
    pub(super) ino: u64,
}

pub(super) fn fingerprint(path: &Path) -> std::io::Result<Fingerprint> {
    let m = std::fs::metadata(path)?;
    #[cfg(unix)]
    let ino = std::os::unix::fs::MetadataExt::ino(&m);
    #[cfg(not(unix))]
    let ino = 0;
    Ok(Fingerprint {
        len: m.len(),
        modified: m.modified().ok(),
        ino,
    })
}

/// A private copy of a library file, checked before it is loaded. Its directory (mode 0700)
/// and the copy are removed when it is dropped, right after the copy is loaded: the loaded
/// library stays mapped, so nothing is left in the temporary directory, even after a crash.
pub(super) struct PrivateCopy {
    pub(super) path: PathBuf,
    _dir: tempfile::TempDir,
}

/// Creates a private directory (mode 0700) for one copy, under `parent` or `$TMPDIR`.
fn private_dir(parent: Option<&Path>) -> std::io::Result<tempfile::TempDir> {
    let mut b = tempfile::Builder::new();
    b.prefix("turnstile-plugins-");
    #[cfg(unix)]
    b.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700));
    match parent {
        Some(parent) => b.tempdir_in(parent),
        None => b.tempdir(),
    }
}

/// Copies `original` to a fresh, unique path in a private directory, checks that it did
/// not change while it was copied and that the copy is a complete shared library for
/// this machine. Returns the copy and the file's fingerprint. `counter` numbers the
/// copies of the process.
pub(super) fn copy_of(
    counter: &AtomicU64,
    original: &Path,
) -> Result<(PrivateCopy, Fingerprint), LoadError> {
    use std::io::Read as _;
    let io = |message: String| LoadError::Io {
        path: original.to_path_buf(),
        message,
    };
    let meta = std::fs::metadata(original).map_err(|e| io(e.to_string()))?;
    if !meta.is_file() {
        return Err(LoadError::NotALibrary {
            path: original.to_path_buf(),
            message: "not a regular file".into(),
        });
    }
    let before = fingerprint(original).map_err(|e| io(e.to_string()))?;
    if before.len > MAX_LIBRARY_BYTES {
        return Err(LoadError::NotALibrary {
            path: original.to_path_buf(),
            message: format!(
                "the file has {} bytes, more than the {MAX_LIBRARY_BYTES} a plugin library may have",
                before.len
            ),
        });
    }
    let parent = std::env::var_os("TURNSTILE_PLUGIN_COPY_DIR");
    let dir = private_dir(parent.as_deref().map(Path::new)).map_err(|e| {
        io(format!("cannot create a private directory for plugin copies: {e} (set TURNSTILE_PLUGIN_COPY_DIR to a writable directory)"))
    })?;
    // A path never used before in this process: the dynamic loader returns the library
    // already loaded from a path instead of opening the file again.
    let n = counter.fetch_add(1, Ordering::Relaxed);
    let file = original
        .file_name()
        .map_or_else(|| "plugin".into(), |f| f.to_string_lossy().into_owned());
    let path = dir.path().join(format!("{n}-{file}"));
    let mut out = std::fs::OpenOptions::new();
    out.read(true).write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut out, 0o700);
    let copy = PrivateCopy { path, _dir: dir };
    let mut out = out
        .open(&copy.path)
        .map_err(|e| io(format!("cannot copy it to {}: {e}", copy.path.display())))?;
    let copied = std::fs::File::open(original)
        .and_then(|f| std::io::copy(&mut f.take(before.len + 1), &mut out))
        .map_err(|e| io(format!("cannot copy it to {}: {e}", copy.path.display())))?;
    let after = fingerprint(original).map_err(|e| io(e.to_string()))?;
    if before != after || copied != after.len {
        return Err(LoadError::Changing {
            path: original.to_path_buf(),
        });
    }
    // The copy is what gets loaded, and nobody else can write it (a new file in a
    // private directory): checked, it stays as checked.
    check::check_file(&out).map_err(|message| LoadError::NotALibrary {
        path: original.to_path_buf(),
        message,
    })?;
    Ok((copy, after))
}

#[cfg(test)]
mod tests {
    #[cfg(unix)]
    #[test]
    fn copies_go_to_a_private_directory() {
        use std::os::unix::fs::PermissionsExt as _;
        let parent = tempfile::tempdir().expect("tempdir");
        let dir = super::private_dir(Some(parent.path())).expect("private dir");
        let mode = std::fs::metadata(dir.path())
            .expect("metadata")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        let path = dir.path().to_path_buf();
        drop(dir);
        assert!(!path.exists());
    }
}
