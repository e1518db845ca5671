//! Node-to-node calls without TLS: a stranger who reaches the port cannot
//! write through Raft, and learns nothing from `node_info`.

use std::time::Duration;

use raftmesh_api::v1::raft_client::RaftClient;
use raftmesh_api::v1::{NodeInfoRequest, RaftPayload};
use raftmesh_api::{Kind, Metadata, Resource, ResourceKey, Role, Spec, TokenSpec};
use raftmesh_controlplane::cluster::credential::{ClusterSecret, NodeAuth, HEADER};
use raftmesh_controlplane::cluster::{LeaderRequest, Write};
use raftmesh_storage::Command;
use tonic::transport::Channel;

use crate::support::*;

fn channel(addr: std::net::SocketAddr) -> Channel {
    raftmesh_client::endpoint(&addr.to_string(), None)
        .unwrap()
        .connect_lazy()
}

/// A planted admin token, as an attacker would forward it to the leader.
fn plant() -> RaftPayload {
    let token = Resource {
        metadata: Metadata::named("tok-planted"),
        spec: Spec::Token(TokenSpec {
            secret_sha256: raftmesh_controlplane::tokens::hash_secret("attacker"),
            role: Some(Role::Admin),
            created_at_ms: 1,
            ..Default::default()
        }),
    };
    let req = LeaderRequest::Write(Write(Command::Put {
        resource: token,
        expected_revision: None,
    }));
    RaftPayload {
        json: serde_json::to_vec(&req).unwrap(),
    }
}

#[test]
fn a_stranger_cannot_write_through_raft_or_learn_from_node_info() {
    run(async {
        let c = TestCluster::start(3).await;
        let leader = c.wait_leader().await;
        let addr = c.addrs[&leader];
        let planted = ResourceKey::new(Kind::Token, "default", "tok-planted");

        // No credential at all: every node-to-node call is refused.
        let mut stranger = RaftClient::new(channel(addr));
        let e = stranger.forward(plant()).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e}");
        let e = stranger.relay(plant()).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e}");
        let e = stranger
            .append_entries(RaftPayload {
                json: b"{}".to_vec(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e}");

        // A credential made with another secret, or a replayed stale one.
        let wrong = NodeAuth::new(Some(ClusterSecret::from_admin_token("not-the-cluster's")));
        let mut forger = RaftClient::with_interceptor(channel(addr), wrong);
        let e = forger.forward(plant()).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e}");
        let stale = ClusterSecret::from_admin_token(TOKEN).proof(1_000);
        let mut req = tonic::Request::new(plant());
        req.metadata_mut().insert(HEADER, stale.parse().unwrap());
        let e = stranger.forward(req).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e}");

        // Nothing was planted, on any node.
        tokio::time::sleep(Duration::from_millis(300)).await;
        for n in c.nodes.values() {
            assert!(n.reader.get(&planted).1.is_none(), "a token was planted");
        }

        // node_info: nothing for a stranger, everything for a node.
        let info = stranger
            .node_info(NodeInfoRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (
                info.id,
                info.term,
                info.leader,
                info.applied_index,
                info.rss_bytes
            ),
            (0, 0, None, 0, 0),
            "a stranger learns nothing: {info:?}"
        );
        let node = NodeAuth::new(Some(ClusterSecret::from_admin_token(TOKEN)));
        let mut node = RaftClient::with_interceptor(channel(addr), node);
        let info = node
            .node_info(NodeInfoRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(info.id, leader);
        assert_eq!(info.leader, Some(leader));
        c.shutdown().await;
    });
}
