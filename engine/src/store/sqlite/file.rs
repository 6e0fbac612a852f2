//! Whether the database file is still the one opened: a file deleted or replaced under
//! a running process would take its writes to a file nobody reads.

use std::path::Path;

/// A file's identity: (device, inode); `(0, 0)` where there is none to read.
pub(super) type FileId = (u64, u64);

pub(super) fn file_id(path: &Path) -> std::io::Result<FileId> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path)?;
        Ok((m.dev(), m.ino()))
    }
    #[cfg(not(unix))]
    {
        std::fs::metadata(path).map(|_| (0, 0))
    }
}

/// `Err(why)` when `path` no longer names the file that was opened as `opened`.
pub(super) fn check_file(path: &Path, opened: FileId) -> Result<(), String> {
    match file_id(path) {
        Ok(id) if id == opened => Ok(()),
        Ok(_) => Err(format!(
            "the database file {} was replaced by another file while open: this process \
             still writes to the old one; restart it to use the new file",
            path.display()
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(format!(
            "the database file {} was deleted while open: writes would go to the deleted \
             file and be lost; put the file back (or restart with a new one)",
            path.display()
        )),
        // Unreadable for the moment (permissions): SQLite's own errors say more.
        Err(_) => Ok(()),
    }
}
