//! Peering between two in-process clusters serving TLS: the token's one
//! use, what a stranger gets from the federation service, the link
//! following leadership on both sides, and deletion on both sides.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use raftmesh_api::v1 as pb;
use raftmesh_api::v1::federation_client::FederationClient;
use raftmesh_controlplane::config::ServerConfig;
use raftmesh_controlplane::federation::PeeringToken;
use tonic::Code;

use raftmesh_client::Admin;

use crate::support::{apply_req, eventually, run, TestCluster};

/// One server CA and node certificates for every TLS cluster of this
/// binary (`meshd tls init`).
fn tls_dir() -> &'static PathBuf {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &DIR.get_or_init(|| {
        let t = tempfile::tempdir().unwrap();
        let out = t.path().join("tls");
        raftmesh_controlplane::server_tls::init(&raftmesh_controlplane::server_tls::InitOptions {
            out: out.clone(),
            nodes: 3,
            hosts: vec!["127.0.0.1".into(), "localhost".into()],
            validity: Duration::from_secs(86_400),
        })
        .unwrap();
        (t, out)
    })
    .1
}

fn with_tls(c: &mut ServerConfig) {
    c.tls_dir = Some(tls_dir().clone());
}

async fn mesh_config(admin: &mut Admin, td: &str) {
    let r: raftmesh_api::Resource = serde_yaml_ng::from_str(&format!(
        "kind: MeshConfig\nmetadata: {{name: mesh}}\nspec: {{trust_domain: {td}}}"
    ))
    .unwrap();
    admin.apply(apply_req(vec![r])).await.unwrap();
}

async fn token(admin: &mut Admin, peer: &str, ttl_ms: u64) -> String {
    eventually("the workload CA", Duration::from_secs(10), || {
        let mut a = admin.clone();
        let peer = peer.to_string();
        async move {
            a.generate_peering_token(pb::GeneratePeeringTokenRequest { peer, ttl_ms })
                .await
                .ok()
                .map(|r| r.into_inner().token)
        }
    })
    .await
}

async fn federation(c: &TestCluster, id: u64) -> FederationClient<tonic::transport::Channel> {
    let tls = raftmesh_client::client_tls(c.ca_pem.as_deref().unwrap());
    let ch = raftmesh_client::endpoint(&c.addrs[&id].to_string(), Some(&tls))
        .unwrap()
        .connect()
        .await
        .unwrap();
    FederationClient::new(ch)
}

fn exchange(t: &PeeringToken, trust_domain: &str) -> pb::ExchangeRequest {
    pb::ExchangeRequest {
        secret: t.secret.clone(),
        peer: t.peer.clone(),
        trust_domain: trust_domain.into(),
        trust_bundle_pem: t.trust_bundle_pem.clone(),
        server_ca_pem: String::new(),
        addresses: vec!["127.0.0.1:1".into()],
        name_at_peer: "west".into(),
    }
}

async fn peering(admin: &mut Admin, name: &str) -> Option<pb::PeeringStatus> {
    admin
        .list_peerings(pb::ListPeeringsRequest {})
        .await
        .unwrap()
        .into_inner()
        .peers
        .into_iter()
        .find(|p| p.name == name)
}

/// The node of `c` whose link to `peer` is connected.
async fn link_node(c: &TestCluster, peer: &str) -> u64 {
    eventually("a connected link", Duration::from_secs(15), || async {
        for id in c.nodes.keys() {
            let mut a = c.client(*id).await;
            if let Ok(r) = a.list_peerings(pb::ListPeeringsRequest {}).await {
                if r.into_inner()
                    .peers
                    .iter()
                    .any(|p| p.name == peer && p.state == "connected")
                {
                    return Some(*id);
                }
            }
        }
        None
    })
    .await
}

#[test]
fn peering_over_tls_spends_a_token_once_refuses_strangers_follows_leaders_and_deletes_on_both_sides(
) {
    run(async {
        let mut west = TestCluster::start_tweaked(3, 10_000, with_tls).await;
        let east = TestCluster::start_tweaked(3, 10_000, with_tls).await;
        let mut wa = west.client(west.wait_leader().await).await;
        let mut ea = east.client(east.wait_leader().await).await;
        mesh_config(&mut wa, "west.mesh").await;
        mesh_config(&mut ea, "east.mesh").await;

        let text = token(&mut wa, "east", 0).await;
        let t = PeeringToken::decode(&text, raftmesh_controlplane::procinfo::unix_ms()).unwrap();
        assert!(
            t.server_ca_pem.contains("BEGIN CERTIFICATE"),
            "a TLS cluster's token carries its server CA"
        );
        assert_eq!(t.trust_domain, "west.mesh");
        let mut fw = federation(&west, 1).await;

        // A wrong secret spends nothing; the token still works afterwards.
        let mut wrong = exchange(&t, "east.mesh");
        wrong.secret = "rmt_not-the-secret".into();
        let e = fw.exchange(wrong).await.unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{e}");
        // A peer claiming west's own trust domain is refused, and spends nothing.
        let e = fw.exchange(exchange(&t, "west.mesh")).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e}");
        assert!(e.message().contains("this cluster's own"), "{e}");

        let r = ea
            .establish_peering(pb::EstablishPeeringRequest {
                peer: "west".into(),
                token: text.clone(),
            })
            .await
            .unwrap();
        assert!(r.into_inner().revision > 0);
        // Once only.
        let e = fw.exchange(exchange(&t, "north.mesh")).await.unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{e}");
        // The credential is never shown.
        let got = ea
            .get(pb::GetRequest {
                kind: "Peer".into(),
                namespace: String::new(),
                name: "west".into(),
                stale: false,
            })
            .await
            .unwrap()
            .into_inner();
        let shown = format!("{got:?}");
        assert!(!shown.contains("sealed:"), "{shown}");
        // Peers are made by peering, not applied.
        let forged: raftmesh_api::Resource = serde_yaml_ng::from_str(
            "kind: Peer\nmetadata: {name: evil}\nspec: {addresses: [\"127.0.0.1:1\"], trust_domain: evil.mesh}",
        )
        .unwrap();
        let e = ea.apply(apply_req(vec![forged])).await.unwrap_err();
        assert!(e.message().contains("made by peering"), "{e}");

        // Strangers to the federation service.
        let watch = |peer: Option<&str>, cred: Option<&str>| {
            let mut req = tonic::Request::new(pb::WatchRequest { from_revision: 0 });
            if let Some(p) = peer {
                req.metadata_mut()
                    .insert("x-raftmesh-peer", p.parse().unwrap());
            }
            if let Some(c) = cred {
                req.metadata_mut()
                    .insert("authorization", format!("Bearer {c}").parse().unwrap());
            }
            req
        };
        for (peer, cred) in [
            (None, None),
            (Some("east"), None),
            (Some("east"), Some("rmt_guess")),
            (Some("nobody"), Some("rmt_guess")),
            (Some("east"), Some(t.secret.as_str())),
        ] {
            let Err(e) = fw.watch(watch(peer, cred)).await else {
                panic!("{peer:?} {cred:?}: a stranger was given a stream");
            };
            assert_eq!(e.code(), Code::Unauthenticated, "{peer:?} {cred:?}: {e}");
        }

        // An expired token is refused by the establishing side.
        let short = token(&mut wa, "late", 1).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        let e = ea
            .establish_peering(pb::EstablishPeeringRequest {
                peer: "late".into(),
                token: short,
            })
            .await
            .unwrap_err();
        assert!(e.message().contains("expired"), "{e}");

        // East's leader runs the link; it follows leadership on east...
        let first = link_node(&east, "west").await;
        assert_eq!(first, east.wait_leader().await);
        let target = east.nodes.keys().copied().find(|id| *id != first).unwrap();
        ea.transfer_leader(pb::TransferLeaderRequest { id: target })
            .await
            .unwrap();
        eventually(
            "the link on the new leader",
            Duration::from_secs(15),
            || async { (link_node(&east, "west").await == target).then_some(()) },
        )
        .await;
        // ...and survives the loss of west's leader (made node 1, the
        // address the link tries first).
        let mut wa = west.client(west.wait_leader().await).await;
        wa.transfer_leader(pb::TransferLeaderRequest { id: 1 })
            .await
            .unwrap();
        eventually("node 1 leads west", Duration::from_secs(10), || async {
            (west.wait_leader().await == 1).then_some(())
        })
        .await;
        let wl = 1;
        let before = peering(&mut east.client(target).await, "west")
            .await
            .unwrap()
            .connects;
        west.stop(wl).await;
        eventually(
            "the link reconnected to another west node",
            Duration::from_secs(30),
            || async {
                let p = peering(&mut east.client(target).await, "west").await?;
                (p.state == "connected" && p.connects > before).then_some(())
            },
        )
        .await;
        west.restart(wl).await;

        // Deleted on east: west is told and forgets east too.
        let d = east
            .client(target)
            .await
            .delete_peering(pb::DeletePeeringRequest {
                peer: "west".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(d.peer_told, "west was reachable");
        let mut wa = west.client(west.wait_leader().await).await;
        eventually("west forgot east", Duration::from_secs(10), || {
            let mut wa = wa.clone();
            async move { peering(&mut wa, "east").await.is_none().then_some(()) }
        })
        .await;
        assert!(peering(&mut wa, "late")
            .await
            .is_some_and(|p| p.state == "pending"));
    });
}
