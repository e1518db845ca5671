//! The state directory: what a restarted proxy needs to serve before it
//! reaches any meshd. Files are written atomically and readable by the
//! proxy's user only (`raftmesh_api::files`; the workload key and
//! certificate are saved by `tls.rs` the same way).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use raftmesh_api::Resource;
use serde::{Deserialize, Serialize};

/// The last good configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Saved {
    /// Its revision.
    pub revision: u64,
    /// The services the proxy calls.
    pub subscriptions: BTreeSet<String>,
    /// Everything it held.
    pub resources: Vec<Resource>,
}

fn file(dir: &Path) -> PathBuf {
    dir.join("config.json")
}

/// Writes `saved` to `dir` (created owner-only if needed).
pub fn save(dir: &Path, saved: &Saved) -> std::io::Result<()> {
    raftmesh_api::files::create_private_dir(dir)?;
    let bytes = serde_json::to_vec(saved).map_err(std::io::Error::other)?;
    raftmesh_api::files::write_private(&file(dir), &bytes)
}

/// Reads the saved config, if any; a corrupt file is an error that names it.
pub fn load(dir: &Path) -> Result<Option<Saved>, String> {
    let path = file(dir);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            format!(
                "{} is not a saved config ({e}); remove it to start without one",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_config_round_trips_and_is_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("state");
        let r: Resource =
            serde_yaml_ng::from_str("kind: Service\nmetadata: {name: web}\nspec: {}").unwrap();
        let s = Saved {
            revision: 7,
            subscriptions: ["web".to_string()].into(),
            resources: vec![r],
        };
        save(&d, &s).unwrap();
        assert_eq!(load(&d).unwrap(), Some(s));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(file(&d)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        std::fs::write(file(&d), b"garbage").unwrap();
        assert!(load(&d).unwrap_err().contains("is not a saved config"));
        assert_eq!(load(&dir.path().join("none")).unwrap(), None);
    }
}
