//! Adding, removing and transferring leadership.

use std::time::Duration;

use raftmesh_api::v1 as pb;
use raftmesh_controlplane::config::TestHooks;
use raftmesh_controlplane::node;
use tokio::net::TcpListener;

use super::support::*;

#[test]
fn a_fourth_node_joins_then_one_is_removed() {
    run(async {
        let mut c = TestCluster::start(3).await;
        let leader = c.wait_ready().await;
        let mut cl = c.client(leader).await;
        cl.apply(apply_req(vec![service("web", 80)])).await.unwrap();

        // Node 4 starts with --join and no --initial-cluster.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let mut cfg = config(4, addr, &c.dir, 10_000);
        cfg.join = vec![c.addrs[&1].to_string()];
        let n4 = node::start_with_listener(cfg, l, TestHooks::default())
            .await
            .unwrap();
        c.addrs.insert(4, addr);
        c.nodes.insert(4, n4);
        let st = eventually("node 4 to become a voter", Duration::from_secs(15), || {
            let mut cl = cl.clone();
            async move {
                let s = cl
                    .cluster_status(pb::ClusterStatusRequest {})
                    .await
                    .ok()?
                    .into_inner();
                s.members.iter().any(|m| m.id == 4 && m.voter).then_some(s)
            }
        })
        .await;
        assert_eq!(st.members.len(), 4);
        let n4 = &c.nodes[&4];
        eventually(
            "node 4 to hold the data",
            Duration::from_secs(10),
            || async { n4.reader.get(&service("web", 80).key()).1.map(|_| ()) },
        )
        .await;

        // Remove a follower other than 4.
        let gone = *c
            .nodes
            .keys()
            .find(|id| **id != leader && **id != 4)
            .unwrap();
        let m = cl
            .remove_node(pb::RemoveNodeRequest { id: gone })
            .await
            .unwrap()
            .into_inner();
        assert!(!m.voters.contains(&gone) && !m.learners.contains(&gone));
        assert_eq!(m.voters.len(), 3);
        c.stop(gone).await;
        // Writes still work with the three that remain.
        cl.apply(apply_req(vec![service("api", 81)])).await.unwrap();

        // A learner added through the admin API (no --join), then removed.
        let l5 = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr5 = l5.local_addr().unwrap();
        let n5 =
            node::start_with_listener(config(5, addr5, &c.dir, 10_000), l5, TestHooks::default())
                .await
                .unwrap();
        let m = cl
            .add_node(pb::AddNodeRequest {
                id: 5,
                addr: addr5.to_string(),
                learner_only: true,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(m.learners.contains(&5) && !m.voters.contains(&5), "{m:?}");
        eventually(
            "the learner to replicate",
            Duration::from_secs(10),
            || async { n5.reader.get(&service("api", 81).key()).1.map(|_| ()) },
        )
        .await;
        let m = cl
            .remove_node(pb::RemoveNodeRequest { id: 5 })
            .await
            .unwrap()
            .into_inner();
        assert!(!m.learners.contains(&5));
        n5.shutdown().await.unwrap();

        let e = cl
            .remove_node(pb::RemoveNodeRequest { id: 42 })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(
            e.message().contains("node 42 is not a member"),
            "{}",
            e.message()
        );
        c.shutdown().await;
    });
}

#[test]
fn leadership_transfers_to_the_chosen_voter() {
    run(async {
        let c = TestCluster::start(3).await;
        let leader = c.wait_ready().await;
        let target = *c.nodes.keys().find(|id| **id != leader).unwrap();
        // Ask a node that is not the leader: the request is forwarded.
        let via = *c
            .nodes
            .keys()
            .find(|id| **id != leader && **id != target)
            .unwrap();
        let mut cl = c.client(via).await;
        let m = cl
            .transfer_leader(pb::TransferLeaderRequest { id: target })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(m.leader, Some(target));
        assert_eq!(c.wait_leader().await, target);
        // The cluster keeps working, elections included.
        cl.apply(apply_req(vec![service("web", 80)])).await.unwrap();
        let e = cl
            .transfer_leader(pb::TransferLeaderRequest { id: 9 })
            .await
            .unwrap_err();
        assert!(e.message().contains("not a voter"), "{}", e.message());
        c.shutdown().await;
    });
}
