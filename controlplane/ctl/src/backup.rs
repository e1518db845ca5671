//! `meshctl backup save FILE` (also `meshctl snapshot save`): the whole
//! state at one revision, from the admin API to a file only its owner can
//! read (it holds token hashes and the workload CA), written atomically so
//! a partial download never looks like a backup.

use std::path::PathBuf;

use raftmesh_api::v1 as pb;

use super::{Conn, CtlError, CtlResult, ExitCode};

/// `meshctl backup`.
#[derive(Debug, clap::Subcommand)]
pub enum BackupCmd {
    /// Write a backup of the whole state, at one revision, to FILE.
    Save {
        /// Where to write it.
        file: PathBuf,
    },
}

/// Runs `meshctl backup ...`.
pub async fn run(conn: &Conn, cmd: BackupCmd) -> CtlResult {
    let BackupCmd::Save { file } = cmd;
    let data = conn
        .call(true, |mut c| async move {
            let mut stream = c.save_backup(pb::SaveBackupRequest {}).await?.into_inner();
            let mut data = Vec::new();
            while let Some(chunk) = stream.message().await? {
                data.extend_from_slice(&chunk.data);
            }
            Ok(data)
        })
        .await?;
    let summary = raftmesh_api::backup::summarize(&data).map_err(|e| {
        CtlError::new(
            ExitCode::Failed,
            format!("the server sent a bad backup: {e}"),
        )
    })?;
    raftmesh_api::files::write_private(&file, &data).map_err(|e| {
        CtlError::new(
            ExitCode::Failed,
            format!("cannot write {}: {e}", file.display()),
        )
    })?;
    outln!(
        "saved revision {} ({} resources, {} bytes) to {}",
        summary.revision,
        summary.resources,
        data.len(),
        file.display()
    );
    eprintln!(
        "meshctl: {} holds the workload CA's private key (encrypted under the cluster secret) and every token's hash: it is readable by you only; keep it that way, and keep the cluster secret apart from it",
        file.display()
    );
    Ok(())
}
