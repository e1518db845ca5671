//! Files that hold secrets or state a restart needs, written the one way
//! every program of the mesh writes them: owner-only (0600 in a 0700
//! folder), atomically (a temporary file, synced, then renamed over the
//! old one), so a crash leaves the old file or the new one, never half.
//!
//! `meshctl backup save`, `meshd tls init`, mesh-proxy (its state
//! directory: saved config, workload key and certificate) and `meshd demo`
//! (token files) write through here.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Creates `dir` (and its parents) if needed and makes it owner-only.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Replaces `path` with `data`, atomically, readable by its owner only.
///
/// Symlinks are never followed: the temporary file is created anew
/// (`O_EXCL`, after removing a stale one — `remove_file` removes a link,
/// not what it points to), and the rename replaces `path` itself, so a
/// link planted at either name cannot redirect the write.
pub fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = Path::new(&tmp);
    match std::fs::remove_file(tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(tmp)?;
        // The mode passed at creation is filtered by the umask: set it exactly.
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    std::fs::rename(tmp, path)
}

/// Writes a new file, readable by its owner only when `secret`; refuses to
/// replace one that exists (for files an operator keeps, like a CA key).
pub fn create_new(path: &Path, data: &[u8], secret: bool) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(path)?;
    f.write_all(data)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_private_file_replaces_the_old_one_owner_only() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        create_private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        let f = dir.join("key.pem");
        std::fs::write(&f, b"old").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_private(&f, b"new").unwrap();
        assert_eq!(std::fs::read(&f).unwrap(), b"new");
        assert_eq!(mode(&f), 0o600);
        assert!(!dir.join("key.pem.tmp").exists());
    }

    #[test]
    fn a_symlink_at_the_file_or_its_temporary_is_replaced_never_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let victim = tmp.path().join("victim");
        std::fs::write(&victim, b"untouched").unwrap();
        let f = tmp.path().join("config.json");
        std::os::unix::fs::symlink(&victim, &f).unwrap();
        std::os::unix::fs::symlink(&victim, tmp.path().join("config.json.tmp")).unwrap();
        write_private(&f, b"new").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"untouched");
        assert!(!std::fs::symlink_metadata(&f)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read(&f).unwrap(), b"new");
        assert_eq!(mode(&f), 0o600);
    }

    #[test]
    fn create_new_refuses_to_overwrite() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("ca-key.pem");
        create_new(&f, b"k", true).unwrap();
        assert_eq!(mode(&f), 0o600);
        assert_eq!(
            create_new(&f, b"k2", true).unwrap_err().kind(),
            std::io::ErrorKind::AlreadyExists
        );
    }
}
