//! Snapshots: build, install elsewhere, get current; the window after install.

use openraft::storage::{RaftLogStorageExt, RaftStateMachine};
use openraft::{Membership, RaftSnapshotBuilder, StoredMembership};
use raftmesh_api::Kind;
use raftmesh_storage::{SnapshotData, WindowError};
use std::collections::BTreeSet;
use tempfile::TempDir;

use super::support::*;

#[tokio::test]
async fn snapshot_round_trips_the_whole_state() {
    let a_dir = TempDir::new().unwrap();
    let (_log, mut a) = open_in(&a_dir);
    let members = Membership::new(vec![BTreeSet::from([1u64, 2, 3])], None);
    a.apply([
        openraft::Entry {
            log_id: log_id(1, 1),
            payload: openraft::EntryPayload::Membership(members.clone()),
        },
        entry(2, put(service("web", 80))),
        entry(3, put(endpoint("web-1", "web"))),
        entry(4, put(service("api", 8080))),
        entry(5, delete(Kind::Service, "api")),
    ])
    .await
    .unwrap();
    let snap = a
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    assert_eq!(snap.meta.last_log_id, Some(log_id(1, 5)));
    let bytes = snap.snapshot.get_ref().clone();

    let b_dir = TempDir::new().unwrap();
    let (_blog, mut b) = open_in(&b_dir);
    // B has state of its own that the snapshot must replace.
    b.apply([entry(1, put(service("stale", 1)))]).await.unwrap();
    b.install_snapshot(&snap.meta, Box::new(std::io::Cursor::new(bytes.clone())))
        .await
        .unwrap();

    let (ra, rb) = (a.reader(), b.reader());
    assert_eq!(ra.list(None, None), rb.list(None, None));
    assert!(rb.get(&svc_key("stale")).1.is_none());
    let (applied, membership) = b.applied_state().await.unwrap();
    assert_eq!(applied, Some(log_id(1, 5)));
    assert_eq!(
        membership,
        StoredMembership::new(Some(log_id(1, 1)), members)
    );
    // Revisions are kept, not rewritten.
    assert_eq!(
        rb.get(&svc_key("web")).1.unwrap().metadata.revision,
        Some(2)
    );

    // The window's lower bound moves to the snapshot: older resumes need a
    // full state, newer ones work.
    assert_eq!(rb.window_start(), 5);
    assert!(matches!(
        rb.changes_since(4),
        Err(WindowError::TooOld { oldest: 5, .. })
    ));
    b.apply([entry(6, put(service("db", 5432)))]).await.unwrap();
    let (rev, ev) = rb.changes_since(5).unwrap();
    assert_eq!((rev, ev.len()), (6, 1));

    let current = b.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, snap.meta);
    assert_eq!(current.snapshot.into_inner(), bytes);
}

#[tokio::test]
async fn installed_snapshot_survives_reopen() {
    let a_dir = TempDir::new().unwrap();
    let (_l, mut a) = open_in(&a_dir);
    a.apply([
        entry(1, put(service("web", 80))),
        entry(2, put(service("api", 81))),
    ])
    .await
    .unwrap();
    let snap = a
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();

    let b_dir = TempDir::new().unwrap();
    {
        let (_l, mut b) = open_in(&b_dir);
        b.install_snapshot(&snap.meta, snap.snapshot).await.unwrap();
    }
    let (mut log, mut b) = open_in(&b_dir);
    assert_eq!(b.applied_state().await.unwrap().0, Some(log_id(1, 2)));
    assert_eq!(b.reader().list(Some(Kind::Service), None).1.len(), 2);
    // The log continues after the snapshot.
    log.blocking_append([entry(3, put(service("db", 1)))])
        .await
        .unwrap();
}

#[test]
fn snapshot_decode_refuses_foreign_or_inconsistent_data() {
    assert!(SnapshotData::decode(b"{}")
        .unwrap_err()
        .to_string()
        .contains("not a Raftmesh snapshot"));
    let mut s = SnapshotData {
        format: "other/v9".into(),
        last_applied: Some(log_id(1, 3)),
        membership: Default::default(),
        resources: vec![service("web", 80).with_revision(2)],
        integrity: None,
    };
    let e = SnapshotData::decode(&s.encode().unwrap())
        .unwrap_err()
        .to_string();
    assert!(e.contains("format \"other/v9\" is not supported"), "{e}");
    s.format = "raftmesh-snapshot/v1".into();
    s.resources[0].metadata.revision = Some(9);
    let e = SnapshotData::decode(&s.encode().unwrap())
        .unwrap_err()
        .to_string();
    assert!(e.contains("must be at most the snapshot's 3"), "{e}");
    s.resources[0].metadata.revision = Some(3);
    assert_eq!(SnapshotData::decode(&s.encode().unwrap()).unwrap(), s);
}

#[test]
fn a_backup_is_restored_only_when_it_is_whole_unchanged_and_valid() {
    let s = SnapshotData {
        format: "raftmesh-snapshot/v1".into(),
        last_applied: Some(log_id(1, 5)),
        membership: Default::default(),
        resources: vec![
            service("web", 80).with_revision(2),
            endpoint("web-1", "web").with_revision(4),
        ],
        integrity: None,
    };
    let bytes = s.encode_backup().unwrap();
    let back = SnapshotData::decode_backup(&bytes).unwrap();
    assert_eq!(back.resources, s.resources);
    assert!(String::from_utf8_lossy(&bytes).contains("\"integrity\":\"sha256:"));

    let refused = |b: &[u8]| SnapshotData::decode_backup(b).unwrap_err().to_string();
    // Changed: a port edited by hand.
    let text = String::from_utf8(bytes.clone()).unwrap();
    let tampered = text.replacen("\"port\":80", "\"port\":81", 1);
    assert_ne!(tampered, text);
    assert!(refused(tampered.as_bytes()).contains("does not match its contents"));
    // Truncated.
    assert!(refused(&bytes[..bytes.len() / 2]).contains("not a Raftmesh snapshot"));
    // No digest at all (a Raft snapshot's bytes, or an older backup).
    assert!(refused(&s.encode().unwrap()).contains("no integrity digest"));
    // A resource twice, or an invalid one, even with a matching digest.
    let mut twice = s.clone();
    twice.resources.push(service("web", 80).with_revision(3));
    assert!(refused(&twice.encode_backup().unwrap()).contains("twice"));
    let mut invalid = s.clone();
    invalid
        .resources
        .push(service("NOT_A_NAME", 80).with_revision(3));
    assert!(refused(&invalid.encode_backup().unwrap()).contains("invalid resource"));
}
