//! Formation, forwarding, failover and catch-up.

use std::time::{Duration, Instant};

use raftmesh_api::v1 as pb;
use raftmesh_api::{Resource, Spec};

use super::support::*;

#[test]
fn three_node_cluster_forms_from_initial_cluster() {
    run(async {
        let c = TestCluster::start(3).await;
        let leader = c.wait_leader().await;
        let mut cl = c.client(leader).await;
        let s = cl
            .cluster_status(pb::ClusterStatusRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(s.leader, Some(leader));
        assert_eq!(s.members.len(), 3);
        assert!(s.members.iter().all(|m| m.voter));
        assert!(s.commit_index >= 1);
        c.shutdown().await;
    });
}

#[test]
fn follower_forwards_write_to_leader_and_every_node_reads_it() {
    run(async {
        let c = TestCluster::start(3).await;
        let leader = c.wait_leader().await;
        let follower = *c.nodes.keys().find(|id| **id != leader).unwrap();
        let mut f = c.client(follower).await;
        let r = f
            .apply(apply_req(vec![service("web", 80)]))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.results[0].outcome, pb::WriteOutcome::Ok as i32);
        let rev = r.revision;
        // Linearizable reads on every node see the write at once.
        for id in c.nodes.keys() {
            let mut cl = c.client(*id).await;
            let g = cl.get(get_req("web", false)).await.unwrap().into_inner();
            assert!(
                g.revision >= rev,
                "node {id} answered at revision {} < {rev}",
                g.revision
            );
            let res = Resource::try_from(g.resource.unwrap()).unwrap();
            assert_eq!(res.metadata.revision, Some(rev));
        }
        c.shutdown().await;
    });
}

#[test]
fn killing_the_leader_elects_a_new_one_within_2s_and_writes_go_on() {
    run(async {
        let mut c = TestCluster::start(3).await;
        let old = c.wait_ready().await;
        let mut cl = c
            .client(*c.nodes.keys().find(|id| **id != old).unwrap())
            .await;
        cl.apply(apply_req(vec![service("before", 80)]))
            .await
            .unwrap();
        c.stop(old).await;
        let t0 = Instant::now();
        let new = c.wait_leader().await;
        let took = t0.elapsed();
        assert_ne!(new, old);
        assert!(took < Duration::from_secs(2), "new leader took {took:?}");
        let r = cl
            .apply(apply_req(vec![service("after", 81)]))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.results[0].outcome, pb::WriteOutcome::Ok as i32);
        assert!(
            cl.get(get_req("before", false)).await.is_ok(),
            "an acknowledged write survived"
        );
        c.shutdown().await;
    });
}

#[test]
fn restarted_node_catches_up_from_the_log() {
    run(async {
        let mut c = TestCluster::start(3).await;
        let leader = c.wait_ready().await;
        let victim = *c.nodes.keys().find(|id| **id != leader).unwrap();
        c.stop(victim).await;
        let mut cl = c.client(leader).await;
        for i in 0..20 {
            cl.apply(apply_req(vec![service(&format!("s{i}"), 1000 + i)]))
                .await
                .unwrap();
        }
        let want = c.nodes[&leader].reader.applied_revision();
        c.restart(victim).await;
        let n = &c.nodes[&victim];
        eventually(
            "the restarted node to catch up",
            Duration::from_secs(10),
            || async { (n.reader.applied_revision() >= want).then_some(()) },
        )
        .await;
        assert_eq!(
            n.reader
                .list(Some(raftmesh_api::Kind::Service), None)
                .1
                .len(),
            20
        );
        c.shutdown().await;
    });
}

#[test]
fn restarted_node_catches_up_through_a_snapshot_after_the_log_was_purged() {
    run(async {
        let mut c = TestCluster::start_with(3, 20).await;
        let leader = c.wait_ready().await;
        let victim = *c.nodes.keys().find(|id| **id != leader).unwrap();
        let victim_applied_before = c.nodes[&victim].reader.applied_revision();
        c.stop(victim).await;
        let mut cl = c.client(leader).await;
        for i in 0..80 {
            cl.apply(apply_req(vec![service(&format!("s{i}"), 1000 + i)]))
                .await
                .unwrap();
        }
        // The leader has snapshotted and purged the entries the victim lacks.
        let purged = eventually(
            "the leader to purge its log",
            Duration::from_secs(10),
            || async {
                c.nodes[&leader]
                    .raft
                    .metrics()
                    .borrow()
                    .purged
                    .map(|p| p.index)
                    .filter(|i| *i > 10)
            },
        )
        .await;
        assert!(
            purged > victim_applied_before,
            "the entries the victim needs are gone from the log"
        );
        let want = c.nodes[&leader].reader.applied_revision();
        c.restart(victim).await;
        let n = &c.nodes[&victim];
        eventually(
            "the restarted node to catch up",
            Duration::from_secs(15),
            || async { (n.reader.applied_revision() >= want).then_some(()) },
        )
        .await;
        assert!(
            n.raft.metrics().borrow().snapshot.is_some(),
            "the node caught up through a snapshot"
        );
        let (_, all) = n.reader.list(Some(raftmesh_api::Kind::Service), None);
        assert_eq!(all.len(), 80);
        // Revisions came along unchanged.
        let (_, s0) = c.nodes[&leader].reader.get(&all[0].key());
        assert_eq!(s0.unwrap().metadata.revision, all[0].metadata.revision);
        c.shutdown().await;
    });
}

#[test]
fn cas_conflict_reports_the_current_revision() {
    run(async {
        let c = TestCluster::start(3).await;
        let leader = c.wait_ready().await;
        let mut cl = c.client(leader).await;
        let first = cl
            .apply(apply_req(vec![service("web", 80)]))
            .await
            .unwrap()
            .into_inner();
        let second = cl
            .apply(apply_req(vec![service("web", 81)]))
            .await
            .unwrap()
            .into_inner();
        let stale = pb::ApplyRequest {
            items: vec![pb::ApplyItem {
                expected_revision: Some(first.revision),
                resource: Some(service("web", 82).into()),
            }],
        };
        let r = cl.apply(stale).await.unwrap().into_inner();
        assert_eq!(r.results[0].outcome, pb::WriteOutcome::Conflict as i32);
        assert_eq!(r.results[0].revision, second.revision);
        let g = cl.get(get_req("web", false)).await.unwrap().into_inner();
        let Spec::Service(s) = Resource::try_from(g.resource.unwrap()).unwrap().spec else {
            panic!()
        };
        assert_eq!(s.ports[0].port, 81, "the failed CAS changed nothing");
        c.shutdown().await;
    });
}

#[test]
fn concurrent_writes_succeed_or_fail_each_on_their_own() {
    run(async {
        let c = TestCluster::start(3).await;
        let leader = c.wait_ready().await;
        let cl = c.client(leader).await;
        // Many writes at once share log entries on the leader (group commit);
        // the ones with a wrong expected revision must fail alone.
        let mut tasks = Vec::new();
        for i in 0..60u32 {
            let mut cl = cl.clone();
            tasks.push(tokio::spawn(async move {
                let req = pb::ApplyRequest {
                    items: vec![pb::ApplyItem {
                        expected_revision: (i % 10 == 0).then_some(999_999),
                        resource: Some(service(&format!("c{i}"), 100 + i).into()),
                    }],
                };
                (i, cl.apply(req).await.unwrap().into_inner())
            }));
        }
        for t in tasks {
            let (i, r) = t.await.unwrap();
            let want = if i % 10 == 0 {
                pb::WriteOutcome::Conflict
            } else {
                pb::WriteOutcome::Ok
            };
            assert_eq!(r.results[0].outcome, want as i32, "write {i}");
        }
        let (_, all) = c.nodes[&leader]
            .reader
            .list(Some(raftmesh_api::Kind::Service), None);
        assert_eq!(all.len(), 54);
        c.shutdown().await;
    });
}
