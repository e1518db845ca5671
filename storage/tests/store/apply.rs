//! Apply semantics: CAS, deletes, batches, revisions, change events.

use openraft::storage::RaftStateMachine;
use raftmesh_api::Kind;
use raftmesh_storage::{Command, OpResult, WindowError};
use tempfile::TempDir;

use super::support::*;

#[tokio::test]
async fn cas_conflict_reports_the_current_revision() {
    let dir = TempDir::new().unwrap();
    let (_log, mut sm) = open_in(&dir);
    let r = sm
        .apply([
            entry(1, put_cas(service("web", 80), 0)), // create-only: absent → ok
            entry(2, put_cas(service("web", 81), 0)), // exists now → conflict
            entry(3, put_cas(service("web", 82), 1)), // matches → ok
            entry(4, put_cas(service("web", 83), 1)), // stale → conflict, current 3
        ])
        .await
        .unwrap();
    assert_eq!(
        r[0].results,
        [OpResult::Ok {
            revision: 1,
            unchanged: false
        }]
    );
    assert_eq!(r[1].results, [OpResult::Conflict { current: 1 }]);
    assert_eq!(
        r[2].results,
        [OpResult::Ok {
            revision: 3,
            unchanged: false
        }]
    );
    assert_eq!(r[3].results, [OpResult::Conflict { current: 3 }]);
    let (_, web) = sm.reader().get(&svc_key("web"));
    assert!(web.unwrap().same_content(&service("web", 82)));
}

#[tokio::test]
async fn delete_of_a_missing_key_is_not_found_and_changes_nothing() {
    let dir = TempDir::new().unwrap();
    let (_log, mut sm) = open_in(&dir);
    let r = sm
        .apply([
            entry(1, put(service("web", 80))),
            entry(2, delete(Kind::Service, "nope")),
            entry(
                3,
                Command::Delete {
                    key: svc_key("web"),
                    expected_revision: Some(7),
                },
            ),
            entry(4, delete(Kind::Service, "web")),
            entry(5, delete(Kind::Service, "web")),
        ])
        .await
        .unwrap();
    assert_eq!(r[1].results, [OpResult::NotFound]);
    assert_eq!(r[2].results, [OpResult::Conflict { current: 1 }]);
    assert_eq!(
        r[3].results,
        [OpResult::Ok {
            revision: 4,
            unchanged: false
        }]
    );
    assert_eq!(r[4].results, [OpResult::NotFound]);
    let (_, events) = sm.reader().changes_since(0).unwrap();
    let revs: Vec<(u64, bool)> = events
        .iter()
        .map(|e| (e.revision, e.value.is_some()))
        .collect();
    assert_eq!(
        revs,
        [(1, true), (4, false)],
        "failed deletes record no event"
    );
}

#[tokio::test]
async fn batch_is_all_or_nothing() {
    let dir = TempDir::new().unwrap();
    let (_log, mut sm) = open_in(&dir);
    sm.apply([entry(1, put(service("web", 80)))]).await.unwrap();
    let r = sm
        .apply([entry(
            2,
            Command::Batch(vec![
                put(service("api", 80)),
                put(endpoint("api-1", "api")),
                put_cas(service("web", 99), 5), // wrong revision: the batch fails
            ]),
        )])
        .await
        .unwrap();
    assert_eq!(
        r[0].results,
        [
            OpResult::Aborted,
            OpResult::Aborted,
            OpResult::Conflict { current: 1 }
        ]
    );
    let reader = sm.reader();
    assert!(reader.get(&svc_key("api")).1.is_none());
    assert!(reader
        .get(&svc_key("web"))
        .1
        .unwrap()
        .same_content(&service("web", 80)));
    assert_eq!(reader.changes_since(1).unwrap().1, vec![]);

    let r = sm
        .apply([entry(
            3,
            Command::Batch(vec![
                put(service("api", 80)),
                put(endpoint("api-1", "api")),
                put_cas(service("web", 99), 1),
            ]),
        )])
        .await
        .unwrap();
    assert!(r[0].results.iter().all(|x| *x
        == OpResult::Ok {
            revision: 3,
            unchanged: false
        }));
    let (rev, all) = sm.reader().list(None, None);
    assert_eq!(rev, 3);
    assert_eq!(all.len(), 3);
    assert_eq!(sm.reader().changes_since(2).unwrap().1.len(), 3);
}

#[tokio::test]
async fn an_expect_makes_its_batch_conditional_and_writes_nothing() {
    let dir = TempDir::new().unwrap();
    let (_log, mut sm) = open_in(&dir);
    sm.apply([entry(1, put(service("token", 80)))])
        .await
        .unwrap();
    let guarded = |name: &str, at: u64| {
        Command::Batch(vec![
            Command::Expect {
                key: svc_key("token"),
                revision: at,
            },
            put(service(name, 80)),
        ])
    };
    let r = sm
        .apply([
            entry(2, guarded("api", 1)),
            entry(3, put(service("token", 81))), // the guarded resource changes
            entry(4, guarded("web", 1)),
        ])
        .await
        .unwrap();
    assert_eq!(
        r[0].results,
        [
            OpResult::Ok {
                revision: 1,
                unchanged: true
            },
            OpResult::Ok {
                revision: 2,
                unchanged: false
            }
        ]
    );
    assert_eq!(
        r[2].results,
        [OpResult::Conflict { current: 3 }, OpResult::Aborted]
    );
    let reader = sm.reader();
    assert!(reader.get(&svc_key("api")).1.is_some());
    assert!(reader.get(&svc_key("web")).1.is_none());
    // The expect itself records no change event.
    let (_, events) = reader.changes_since(3).unwrap();
    assert!(events.is_empty(), "{events:?}");
}

#[tokio::test]
async fn batch_sees_its_own_earlier_writes() {
    let dir = TempDir::new().unwrap();
    let (_log, mut sm) = open_in(&dir);
    let r = sm
        .apply([entry(
            1,
            Command::Batch(vec![
                put_cas(service("web", 80), 0),
                delete(Kind::Service, "web"),
            ]),
        )])
        .await
        .unwrap();
    assert_eq!(r[0].results.len(), 2);
    assert!(r[0].results.iter().all(OpResult::is_ok));
    assert!(sm.reader().get(&svc_key("web")).1.is_none());
    // One event per key per revision: the final value.
    let (_, ev) = sm.reader().changes_since(0).unwrap();
    assert_eq!(ev.len(), 1);
    assert!(ev[0].value.is_none());
}

#[tokio::test]
async fn identical_put_keeps_its_revision_and_records_no_event() {
    let dir = TempDir::new().unwrap();
    let (_log, mut sm) = open_in(&dir);
    let r = sm
        .apply([
            entry(1, put(service("web", 80))),
            entry(2, put(service("web", 80))),
        ])
        .await
        .unwrap();
    assert_eq!(
        r[1].results,
        [OpResult::Ok {
            revision: 1,
            unchanged: true
        }]
    );
    assert_eq!(sm.reader().changes_since(1).unwrap(), (2, vec![]));
}

#[tokio::test]
async fn revisions_strictly_increase_with_the_log_index() {
    let dir = TempDir::new().unwrap();
    let (_log, mut sm) = open_in(&dir);
    let mut entries = Vec::new();
    for i in 1..=50u64 {
        entries.push(if i % 7 == 0 {
            blank(i)
        } else {
            entry(i, put(service(&format!("s{}", i % 5), 1000 + i as u32)))
        });
    }
    let r = sm.apply(entries).await.unwrap();
    let mut last = 0;
    for resp in &r {
        assert!(resp.revision > last);
        last = resp.revision;
        for x in &resp.results {
            assert_eq!(
                *x,
                OpResult::Ok {
                    revision: resp.revision,
                    unchanged: false
                }
            );
        }
    }
    let (_, ev) = sm.reader().changes_since(0).unwrap();
    assert!(ev.windows(2).all(|w| w[0].revision < w[1].revision));
}

#[tokio::test]
async fn resume_from_every_revision_gets_exactly_the_later_events() {
    let dir = TempDir::new().unwrap();
    let (_log, mut sm) = open_with_window(&dir, 1_000);
    let mut entries = Vec::new();
    for i in 1..=40u64 {
        entries.push(match i % 4 {
            0 => blank(i),
            1 => entry(i, put(service(&format!("s{}", i % 3), i as u32))),
            2 => entry(
                i,
                Command::Batch(vec![
                    put(endpoint(&format!("e{i}"), "s1")),
                    put(service("x", i as u32)),
                ]),
            ),
            _ => entry(i, delete(Kind::Service, &format!("s{}", (i + 1) % 3))),
        });
    }
    let responses = sm.apply(entries).await.unwrap();
    // The changes each entry actually made, from the apply results.
    let (_, all) = sm.reader().changes_since(0).unwrap();
    for after in 0..=40u64 {
        let (rev, got) = sm.reader().changes_since(after).unwrap();
        assert_eq!(rev, 40);
        let want: Vec<_> = all.iter().filter(|e| e.revision > after).cloned().collect();
        assert_eq!(got, want, "resume after {after}");
        // No gap: every revision with a successful write is present.
        for resp in responses.iter().filter(|r| r.revision > after) {
            let wrote = resp.results.iter().any(|x| {
                matches!(
                    x,
                    OpResult::Ok {
                        unchanged: false,
                        ..
                    }
                )
            });
            assert_eq!(
                wrote,
                got.iter().any(|e| e.revision == resp.revision),
                "revision {}",
                resp.revision
            );
        }
    }
}

#[tokio::test]
async fn a_window_that_no_longer_reaches_back_says_too_old() {
    let dir = TempDir::new().unwrap();
    let (_log, mut sm) = open_with_window(&dir, 10);
    let entries: Vec<_> = (1..=30u64)
        .map(|i| entry(i, put(service("web", i as u32))))
        .collect();
    sm.apply(entries).await.unwrap();
    let r = sm.reader();
    assert_eq!(r.window_start(), 20);
    for after in 0..20 {
        assert_eq!(
            r.changes_since(after).unwrap_err(),
            WindowError::TooOld {
                requested: after,
                oldest: 20
            }
        );
    }
    for after in 20..=30 {
        assert_eq!(r.changes_since(after).unwrap().1.len() as u64, 30 - after);
    }
    assert!(matches!(
        r.changes_since(31),
        Err(WindowError::Ahead { applied: 30, .. })
    ));
}

#[tokio::test]
async fn watchers_see_the_applied_revision() {
    let dir = TempDir::new().unwrap();
    let (_log, mut sm) = open_in(&dir);
    let mut rx = sm.reader().watch_applied();
    assert_eq!(*rx.borrow_and_update(), 0);
    sm.apply([entry(1, put(service("web", 80))), blank(2)])
        .await
        .unwrap();
    assert!(rx.has_changed().unwrap());
    assert_eq!(*rx.borrow_and_update(), 2);
}

#[tokio::test]
async fn group_commands_succeed_or_fail_each_on_their_own() {
    let dir = TempDir::new().unwrap();
    let (_log, mut sm) = open_in(&dir);
    sm.apply([entry(1, put(service("web", 80)))]).await.unwrap();
    let r = sm
        .apply([entry(
            2,
            Command::Group(vec![
                put(service("a", 1)),
                put_cas(service("web", 81), 7), // fails alone
                Command::Batch(vec![put(service("b", 2)), put(service("c", 3))]),
                put_cas(service("web", 82), 1), // sees the original revision
            ]),
        )])
        .await
        .unwrap();
    assert_eq!(
        r[0].results,
        [
            OpResult::Ok {
                revision: 2,
                unchanged: false
            },
            OpResult::Conflict { current: 1 },
            OpResult::Ok {
                revision: 2,
                unchanged: false
            },
            OpResult::Ok {
                revision: 2,
                unchanged: false
            },
            OpResult::Ok {
                revision: 2,
                unchanged: false
            },
        ]
    );
    let reader = sm.reader();
    for n in ["a", "b", "c"] {
        assert!(reader.get(&svc_key(n)).1.is_some(), "{n}");
    }
    assert!(reader
        .get(&svc_key("web"))
        .1
        .unwrap()
        .same_content(&service("web", 82)));
}

#[tokio::test]
async fn the_service_index_follows_puts_moves_and_deletes() {
    let dir = TempDir::new().unwrap();
    let (_log, mut sm) = open_in(&dir);
    let names = |sm: &raftmesh_storage::StateMachine, svc: &str| -> Vec<String> {
        sm.reader().view(|v| {
            v.for_service(Kind::Endpoint, "default", svc)
                .iter()
                .map(|r| r.metadata.name.clone())
                .collect()
        })
    };
    sm.apply([
        entry(1, put(endpoint("e1", "web"))),
        entry(2, put(endpoint("e2", "web"))),
        entry(3, put(endpoint("e3", "api"))),
    ])
    .await
    .unwrap();
    assert_eq!(names(&sm, "web"), ["e1", "e2"]);
    // e2 moves to api; e1 is deleted.
    sm.apply([
        entry(4, put(endpoint("e2", "api"))),
        entry(5, delete(Kind::Endpoint, "e1")),
    ])
    .await
    .unwrap();
    assert!(names(&sm, "web").is_empty());
    assert_eq!(names(&sm, "api"), ["e2", "e3"]);
    let (_, ev) = sm.reader().changes_since(3).unwrap();
    assert_eq!(
        ev[0].previous.as_ref().unwrap().spec.service(),
        Some("web"),
        "a move carries the old value"
    );
    assert!(
        ev[1].value.is_none() && ev[1].previous.is_some(),
        "a delete carries the old value"
    );
}

fn vip(sm: &raftmesh_storage::StateMachine, name: &str) -> Option<std::net::Ipv4Addr> {
    match &sm.reader().get(&svc_key(name)).1?.spec {
        raftmesh_api::Spec::Service(s) => s.vip,
        _ => None,
    }
}

#[tokio::test]
async fn every_service_gets_its_own_virtual_address_and_keeps_it() {
    let dir = TempDir::new().unwrap();
    let (_log, mut sm) = open_in(&dir);
    sm.apply([
        entry(1, put(service("web", 80))),
        entry(
            2,
            Command::Batch(vec![put(service("api", 80)), put(service("db", 5432))]),
        ),
    ])
    .await
    .unwrap();
    let (web, api, db) = (vip(&sm, "web"), vip(&sm, "api"), vip(&sm, "db"));
    assert_eq!(web, Some("240.240.0.1".parse().unwrap()));
    assert_eq!(api, Some("240.240.0.2".parse().unwrap()));
    assert_eq!(db, Some("240.240.0.3".parse().unwrap()));
    // Applied again without the address (as a user's YAML has it): kept,
    // and nothing changed; a real change keeps it too.
    let r = sm
        .apply([
            entry(3, put(service("web", 80))),
            entry(4, put(service("web", 81))),
        ])
        .await
        .unwrap();
    assert_eq!(
        r[0].results,
        [OpResult::Ok {
            revision: 1,
            unchanged: true
        }]
    );
    assert_eq!(vip(&sm, "web"), web);
    // A deleted service's address is free again; live ones never are.
    sm.apply([
        entry(5, delete(Kind::Service, "db")),
        entry(6, put(service("cache", 80))),
    ])
    .await
    .unwrap();
    let cache = vip(&sm, "cache");
    assert!(cache.is_some() && cache != web && cache != api, "{cache:?}");
    // The range comes from MeshConfig.
    let mesh = raftmesh_api::parse_documents(
        "kind: MeshConfig\nmetadata: {name: mesh}\nspec: {service_vip_range: 10.96.0.0/30}\n",
    )
    .unwrap()
    .remove(0);
    sm.apply([
        entry(7, put(mesh)),
        entry(8, put(service("a", 80))),
        entry(9, put(service("b", 80))),
        entry(10, put(service("c", 80))),
    ])
    .await
    .unwrap();
    assert_eq!(vip(&sm, "a"), Some("10.96.0.1".parse().unwrap()));
    assert_eq!(vip(&sm, "b"), Some("10.96.0.2".parse().unwrap()));
    assert_eq!(vip(&sm, "c"), None, "a /30 holds two addresses");
    // A restart rebuilds the index: the next service gets a fresh address.
    drop(sm);
    drop(_log);
    let (_log, mut sm) = open_in(&dir);
    sm.apply([entry(11, put(service("d", 80)))]).await.unwrap();
    assert_eq!(vip(&sm, "d"), None, "the /30 is still full after a restart");
}
