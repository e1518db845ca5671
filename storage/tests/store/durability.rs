//! What was written survives closing and reopening the same directory.

use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::{RaftLogReader, Vote};
use tempfile::TempDir;

use super::support::*;

#[tokio::test]
async fn log_vote_committed_and_state_survive_reopen() {
    let dir = TempDir::new().unwrap();
    {
        let (mut log, mut sm) = open_in(&dir);
        let entries = vec![
            blank(1),
            entry(2, put(service("web", 80))),
            entry(3, put(endpoint("web-1", "web"))),
            entry(4, put(service("api", 8080))),
        ];
        log.blocking_append(entries.clone()).await.unwrap();
        log.save_vote(&Vote::new(3, 2)).await.unwrap();
        log.save_committed(Some(log_id(1, 4))).await.unwrap();
        sm.apply(entries).await.unwrap();
        // Flush the state writes as a later append would.
        log.blocking_append([entry(5, put(service("db", 5432)))])
            .await
            .unwrap();
    }
    let (mut log, mut sm) = open_in(&dir);
    let st = log.get_log_state().await.unwrap();
    assert_eq!(st.last_log_id, Some(log_id(1, 5)));
    assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(3, 2)));
    assert_eq!(log.read_committed().await.unwrap(), Some(log_id(1, 4)));
    let got = log.try_get_log_entries(1..6).await.unwrap();
    assert_eq!(got.len(), 5);
    assert_eq!(got[1].log_id, log_id(1, 2));

    let (applied, _) = sm.applied_state().await.unwrap();
    assert_eq!(applied, Some(log_id(1, 4)));
    let reader = sm.reader();
    let (rev, web) = reader.get(&svc_key("web"));
    assert_eq!(rev, 4);
    let web = web.unwrap();
    assert_eq!(web.metadata.revision, Some(2));
    assert!(web.same_content(&service("web", 80)));
    let (_, eps) = reader.list(Some(raftmesh_api::Kind::Endpoint), None);
    assert_eq!(eps.len(), 1);
    assert!(
        reader.get(&svc_key("db")).1.is_none(),
        "entry 5 was never applied"
    );
}

#[tokio::test]
async fn purge_and_truncate_survive_reopen() {
    let dir = TempDir::new().unwrap();
    {
        let (mut log, _sm) = open_in(&dir);
        log.blocking_append((1..=10).map(blank)).await.unwrap();
        log.purge(log_id(1, 3)).await.unwrap();
        log.truncate(log_id(1, 8)).await.unwrap();
    }
    let (mut log, _sm) = open_in(&dir);
    let st = log.get_log_state().await.unwrap();
    assert_eq!(st.last_purged_log_id, Some(log_id(1, 3)));
    assert_eq!(st.last_log_id, Some(log_id(1, 7)));
    let idx: Vec<u64> = log
        .try_get_log_entries(0..100)
        .await
        .unwrap()
        .iter()
        .map(|e| e.log_id.index)
        .collect();
    assert_eq!(idx, vec![4, 5, 6, 7]);
}

#[tokio::test]
async fn reopen_restarts_the_change_window_at_the_applied_revision() {
    let dir = TempDir::new().unwrap();
    {
        let (mut log, mut sm) = open_in(&dir);
        let entries = vec![
            entry(1, put(service("a", 80))),
            entry(2, put(service("b", 80))),
        ];
        log.blocking_append(entries.clone()).await.unwrap();
        sm.apply(entries).await.unwrap();
        log.save_vote(&Vote::new(1, 1)).await.unwrap(); // flushes
    }
    let (_log, sm) = open_in(&dir);
    let r = sm.reader();
    assert_eq!(r.window_start(), 2);
    assert!(
        r.changes_since(1).is_err(),
        "events before the restart are not known"
    );
    assert_eq!(r.changes_since(2).unwrap(), (2, vec![]));
}
