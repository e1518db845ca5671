//! What sled's flush leaves out, done after it: sled 0.34 writes its log
//! with `pwrite` and `sync_file_range`, which pushes the written pages to
//! the drive but neither the file's size (the log grows at its end) nor the
//! drive's write cache, and it writes values over its blob threshold into
//! files under `blobs/` — and its `conf` — that it never syncs at all. So after every flush
//! that acknowledges something (a log append, a vote, a truncation, a
//! purge, a snapshot), [`DiskSync::sync`] `fdatasync`s the database file,
//! syncs every blob file written since the last time and the `blobs`
//! directory that names them. With it, what openraft was told is on disk
//! survives a power cut, not only a crash of the process.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

/// Syncs one sled directory.
pub(crate) struct DiskSync {
    db_file: File,
    dir: PathBuf,
    /// Blob files already synced (forgotten when sled removes them).
    synced_blobs: Mutex<HashSet<OsString>>,
}

impl DiskSync {
    /// Opens the database file of the sled directory `dir`, and syncs the
    /// directory entries sled may just have created.
    pub(crate) fn open(dir: &Path) -> io::Result<Self> {
        let s = Self {
            db_file: File::open(dir.join("db"))?,
            dir: dir.to_path_buf(),
            synced_blobs: Mutex::default(),
        };
        s.sync()?;
        // sled writes its `conf` once, at creation, and never syncs it; a
        // power cut that empties it leaves a database sled will not open.
        match File::open(dir.join("conf")) {
            Ok(f) => f.sync_all()?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        sync_dir(dir)?;
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
        Ok(s)
    }

    /// Makes everything sled has flushed durable (blocking: call it off
    /// the async workers).
    pub(crate) fn sync(&self) -> io::Result<()> {
        let blobs = self.dir.join("blobs");
        let mut synced = self
            .synced_blobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut present = HashSet::new();
        let mut new = false;
        match std::fs::read_dir(&blobs) {
            Ok(entries) => {
                for e in entries {
                    let e = e?;
                    let name = e.file_name();
                    if !synced.contains(&name) {
                        match File::open(e.path()) {
                            Ok(f) => f.sync_data()?,
                            // Removed by sled meanwhile: nothing to keep.
                            Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
                            Err(err) => return Err(err),
                        }
                        new = true;
                    }
                    present.insert(name);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        if new {
            sync_dir(&blobs)?;
        }
        *synced = present;
        self.db_file.sync_data()
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_files_are_synced_once_and_forgotten_when_removed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("db"), b"x").unwrap();
        let s = DiskSync::open(dir.path()).unwrap();
        std::fs::create_dir(dir.path().join("blobs")).unwrap();
        std::fs::write(dir.path().join("blobs/7"), b"blob").unwrap();
        s.sync().unwrap();
        assert!(s
            .synced_blobs
            .lock()
            .unwrap()
            .contains(&OsString::from("7")));
        std::fs::remove_file(dir.path().join("blobs/7")).unwrap();
        s.sync().unwrap();
        assert!(s.synced_blobs.lock().unwrap().is_empty());
    }
}
