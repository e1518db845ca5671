//! The admin API's rules: tokens, validation, snapshots.

use std::time::Duration;

use raftmesh_api::v1 as pb;
use raftmesh_api::{Kind, Resource};
use raftmesh_controlplane::config::TestHooks;
use raftmesh_controlplane::node;
use tempfile::TempDir;
use tokio::net::TcpListener;

use super::support::*;

#[test]
fn missing_or_wrong_admin_token_is_refused() {
    run(async {
        let c = TestCluster::start(1).await;
        let addr = c.addrs[&1];
        let e = client(addr, None)
            .list(pb::ListRequest::default())
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        assert!(
            e.message().contains("missing admin token"),
            "{}",
            e.message()
        );
        let e = client(addr, Some("nope"))
            .apply(apply_req(vec![service("x", 1)]))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        assert!(
            e.message().contains("invalid admin token"),
            "{}",
            e.message()
        );
        // Nothing was written.
        assert!(c.nodes[&1]
            .reader
            .list(Some(Kind::Service), None)
            .1
            .is_empty());
        // Only the hash is stored.
        let (_, tokens) = c.nodes[&1].reader.list(Some(Kind::Token), None);
        let json = serde_json::to_string(&tokens).unwrap();
        assert!(!json.contains(TOKEN));
        assert!(json.contains(&raftmesh_controlplane::tokens::hash_secret(TOKEN)));
        c.shutdown().await;
    });
}

#[test]
fn read_only_token_cannot_write_and_revoked_token_stops_working() {
    run(async {
        let c = TestCluster::start(1).await;
        let mut admin = c.client(1).await;
        let t = role_token(&mut admin, pb::TokenRole::ReadOnly).await;
        let mut ro = client(c.addrs[&1], Some(&t.secret));
        ro.list(pb::ListRequest::default()).await.unwrap();
        // A read-only caller sees the tokens, not their hashes; an admin does.
        let hashes = |tokens: Vec<pb::Resource>| -> Vec<String> {
            tokens
                .into_iter()
                .filter_map(|r| match raftmesh_api::Resource::try_from(r).ok()?.spec {
                    raftmesh_api::Spec::Token(t) => Some(t.secret_sha256),
                    _ => None,
                })
                .collect()
        };
        let seen = hashes(
            ro.list_tokens(pb::ListTokensRequest {})
                .await
                .unwrap()
                .into_inner()
                .tokens,
        );
        assert!(
            seen.len() >= 2 && seen.iter().all(String::is_empty),
            "{seen:?}"
        );
        let listed = ro
            .list(pb::ListRequest {
                kind: "token".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .resources;
        assert!(hashes(listed).iter().all(String::is_empty));
        let seen = hashes(
            admin
                .list_tokens(pb::ListTokensRequest {})
                .await
                .unwrap()
                .into_inner()
                .tokens,
        );
        assert!(seen.iter().all(|h| h.len() == 64), "{seen:?}");
        let e = ro
            .apply(apply_req(vec![service("x", 1)]))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(e.message().contains("read-only"), "{}", e.message());
        admin
            .revoke_token(pb::RevokeTokenRequest { id: t.id.clone() })
            .await
            .unwrap();
        let e = ro.list(pb::ListRequest::default()).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        // A bootstrap token is not an admin token.
        let b = admin
            .create_token(pb::CreateTokenRequest {
                scope: Some(pb::create_token_request::Scope::Service(pb::ServiceScope {
                    service: "web".into(),
                    namespace: String::new(),
                })),
                ttl_ms: 0,
                max_uses: 0,
            })
            .await
            .unwrap()
            .into_inner();
        let e = client(c.addrs[&1], Some(&b.secret))
            .list(pb::ListRequest::default())
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        c.shutdown().await;
    });
}

#[test]
fn invalid_resources_get_a_clear_error_and_change_nothing() {
    run(async {
        let c = TestCluster::start(1).await;
        let mut cl = c.client(1).await;
        let before = c.nodes[&1].reader.applied_revision();
        let bad: Resource = serde_yaml_ng::from_str(
            "kind: Route\nmetadata: {name: web}\nspec: {service: web, rules: [{backends: [{subset: {v: a}, weight: 90}]}]}\n",
        )
        .unwrap();
        let e = cl
            .apply(apply_req(vec![service("ok", 80), bad]))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            e.message(),
            "document 2: route \"web\": spec.rules[0].backends: weights sum to 90, must be 100"
        );
        // A malformed wire message: a resource without a spec.
        let e = cl
            .apply(pb::ApplyRequest {
                items: vec![pb::ApplyItem {
                    expected_revision: None,
                    resource: Some(pb::Resource {
                        metadata: Some(pb::Metadata::default()),
                        spec: None,
                    }),
                }],
            })
            .await
            .unwrap_err();
        assert!(
            e.message().contains("resource.spec: is missing"),
            "{}",
            e.message()
        );
        assert_eq!(
            c.nodes[&1].reader.applied_revision(),
            before,
            "nothing was written"
        );
        assert!(c.nodes[&1]
            .reader
            .list(Some(Kind::Service), None)
            .1
            .is_empty());
        c.shutdown().await;
    });
}

#[test]
fn snapshot_save_wipe_restore_gives_the_same_state_and_revisions() {
    run(async {
        let c = TestCluster::start(3).await;
        let leader = c.wait_ready().await;
        let mut cl = c.client(leader).await;
        for i in 0..5 {
            cl.apply(apply_req(vec![service(&format!("s{i}"), 80 + i)]))
                .await
                .unwrap();
        }
        cl.delete(pb::DeleteRequest {
            kind: "svc".into(),
            namespace: String::new(),
            name: "s0".into(),
            expected_revision: None,
        })
        .await
        .unwrap();
        let mut stream = cl
            .save_backup(pb::SaveBackupRequest {})
            .await
            .unwrap()
            .into_inner();
        let mut bytes = Vec::new();
        while let Some(ch) = stream.message().await.unwrap() {
            bytes.extend(ch.data);
        }
        let before = c.nodes[&leader].reader.list(None, None);
        c.shutdown().await; // the old cluster and its data are gone

        let dir = TempDir::new().unwrap();
        let file = dir.path().join("backup.json");
        std::fs::write(&file, &bytes).unwrap();
        let mut listeners = Vec::new();
        for _ in 0..3 {
            listeners.push(TcpListener::bind("127.0.0.1:0").await.unwrap());
        }
        let initial: std::collections::BTreeMap<u64, String> = listeners
            .iter()
            .enumerate()
            .map(|(i, l)| (i as u64 + 1, l.local_addr().unwrap().to_string()))
            .collect();
        let mut nodes = Vec::new();
        for (i, l) in listeners.into_iter().enumerate() {
            let id = i as u64 + 1;
            let mut cfg = config(id, l.local_addr().unwrap(), &dir, 10_000);
            cfg.initial_cluster = initial.clone();
            cfg.restore = Some(file.clone());
            nodes.push(
                node::start_with_listener(cfg, l, TestHooks::default())
                    .await
                    .unwrap(),
            );
        }
        let after = nodes[0].reader.list(None, None);
        assert_eq!(
            after, before,
            "same resources, same revisions, same applied revision"
        );
        // The restored cluster elects a leader and writes above the old revisions.
        let mut cl = client(nodes[1].addr, Some(TOKEN));
        let r = eventually(
            "the restored cluster to take writes",
            std::time::Duration::from_secs(10),
            || {
                let mut cl = cl.clone();
                async move { cl.apply(apply_req(vec![service("new", 9)])).await.ok() }
            },
        )
        .await
        .into_inner();
        assert!(r.revision > before.0);
        let _ = &mut cl;
        for n in nodes {
            n.shutdown().await.unwrap();
        }
    });
}

#[test]
fn a_write_is_refused_where_it_is_applied_when_its_token_was_revoked_before_it() {
    run(async {
        let c = TestCluster::start(3).await;
        let leader = c.wait_leader().await;
        let follower = *c.addrs.keys().find(|id| **id != leader).unwrap();
        let mut admin = c.client(leader).await;
        let t = role_token(&mut admin, pb::TokenRole::Admin).await;
        let mut on_follower = client(c.addrs[&follower], Some(&t.secret));
        on_follower
            .apply(apply_req(vec![service("before-revoke", 80)]))
            .await
            .expect("the new token writes through the follower");
        // The follower hears the leader late (not so late that it stands
        // for election), so it still holds the token live after the
        // revocation commits.
        c.faults(
            leader,
            &format!("{{\"delay_ms\": {{\"{follower}\": 200}}}}"),
        )
        .await;
        admin
            .revoke_token(pb::RevokeTokenRequest { id: t.id.clone() })
            .await
            .unwrap();
        let e = on_follower
            .apply(apply_req(vec![service("after-revoke", 80)]))
            .await
            .expect_err("a write with a revoked token was applied");
        let token = raftmesh_api::ResourceKey::new(Kind::Token, "default", &t.id);
        let Some(seen) = c.nodes[&follower].reader.get(&token).1 else {
            panic!("the follower lost the token")
        };
        let raftmesh_api::Spec::Token(spec) = &seen.spec else {
            panic!("not a token")
        };
        assert!(
            !spec.revoked,
            "the follower caught up before the write: this run tests nothing"
        );
        assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
        assert!(
            e.message()
                .contains("was revoked or changed before this write"),
            "{}",
            e.message()
        );
        let written = raftmesh_api::ResourceKey::new(Kind::Service, "default", "after-revoke");
        assert!(c.nodes[&leader].reader.get(&written).1.is_none());
        c.faults(leader, "{}").await;
        c.shutdown().await;
    });
}

#[test]
fn a_revoked_token_is_refused_from_the_commit_on_even_by_a_lagging_follower() {
    run(async {
        let c = TestCluster::start(3).await;
        let leader = c.wait_leader().await;
        let follower = *c.addrs.keys().find(|id| **id != leader).unwrap();
        let mut admin = c.client(leader).await;
        let t = role_token(&mut admin, pb::TokenRole::Admin).await;
        let mut on_follower = client(c.addrs[&follower], Some(&t.secret));
        eventually(
            "the follower knows the token",
            Duration::from_secs(10),
            || {
                let mut f = on_follower.clone();
                async move { f.list(pb::ListRequest::default()).await.ok().map(|_| ()) }
            },
        )
        .await;
        // The follower stops hearing from the leader (it still reaches it).
        c.faults(leader, &format!("{{\"drop\": {{\"{follower}\": 1.0}}}}"))
            .await;
        admin
            .revoke_token(pb::RevokeTokenRequest { id: t.id.clone() })
            .await
            .unwrap();
        // Its state still holds the token live; it must not let it in.
        let e = on_follower
            .list(pb::ListRequest::default())
            .await
            .expect_err("a lagging follower accepted a revoked token");
        assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
        assert!(
            e.message().contains("cannot confirm the token"),
            "{}",
            e.message()
        );
        // Caught up, it refuses it as revoked.
        c.faults(leader, "{}").await;
        eventually(
            "the follower refuses the revoked token",
            Duration::from_secs(15),
            || {
                let mut f = on_follower.clone();
                async move {
                    match f.list(pb::ListRequest::default()).await {
                        Err(e) if e.code() == tonic::Code::Unauthenticated => Some(()),
                        _ => None,
                    }
                }
            },
        )
        .await;
        c.shutdown().await;
    });
}

#[test]
fn a_huge_header_block_is_refused_by_the_transport() {
    run(async {
        let c = TestCluster::start(1).await;
        let mut admin = c.client(1).await;
        admin.list(pb::ListRequest::default()).await.unwrap();
        let mut req = tonic::Request::new(pb::ListRequest::default());
        let huge = "x".repeat(200 * 1024);
        req.metadata_mut().insert("x-filler", huge.parse().unwrap());
        let e = admin
            .list(req)
            .await
            .expect_err("a 200 KiB header block was read");
        assert_ne!(e.code(), tonic::Code::Ok, "{e:?}");
        assert!(
            !e.message().contains("admin token"),
            "the header block reached the handler: {e:?}"
        );
        // The node goes on serving.
        let mut again = c.client(1).await;
        again.list(pb::ListRequest::default()).await.unwrap();
        const { assert!(raftmesh_controlplane::node::limits::MAX_HEADER_LIST_BYTES < 200 * 1024) };
        c.shutdown().await;
    });
}

#[test]
fn an_apply_too_large_for_one_raft_entry_is_refused_and_the_cluster_keeps_writing() {
    run(async {
        let c = TestCluster::start(3).await;
        let leader = c.wait_ready().await;
        let mut cl = c.client(leader).await;
        let before = c.nodes[&leader].reader.applied_revision();
        // About 1.3 MiB as a log entry: over the 1 MiB one entry may hold
        // (openraft resends a too-slow AppendEntries without end; an entry
        // of 30,000 Services once stopped every later write of a cluster).
        let many: Vec<Resource> = (0..9_000)
            .map(|i| service(&format!("bulk-{i}"), 80))
            .collect();
        let e = cl
            .apply(apply_req(many))
            .await
            .expect_err("an apply over the entry limit was accepted");
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
        assert!(
            e.message().contains("9000 documents make a")
                && e.message().contains("split them into several files"),
            "{}",
            e.message()
        );
        assert_eq!(c.nodes[&leader].reader.applied_revision(), before);
        // The cluster still takes writes, large ones under the limit too.
        let some: Vec<Resource> = (0..2_000)
            .map(|i| service(&format!("part-{i}"), 80))
            .collect();
        cl.apply(apply_req(some)).await.unwrap();
        cl.apply(apply_req(vec![service("after", 80)]))
            .await
            .unwrap();
        let (_, all) = c.nodes[&leader].reader.list(Some(Kind::Service), None);
        assert_eq!(all.len(), 2_001);
        c.shutdown().await;
    });
}

#[test]
fn services_get_a_virtual_address_from_meshd_that_an_apply_cannot_change() {
    run(async {
        let c = TestCluster::start(3).await;
        let leader = c.wait_ready().await;
        let mut cl = c.client(leader).await;
        cl.apply(apply_req(vec![service("web", 80), service("api", 80)]))
            .await
            .unwrap();
        let vip_on = |node: u64, name: &str| match &c.nodes[&node]
            .reader
            .get(&raftmesh_api::ResourceKey::new(
                Kind::Service,
                "default",
                name,
            ))
            .1
            .unwrap()
            .spec
        {
            raftmesh_api::Spec::Service(s) => s.vip,
            _ => None,
        };
        let web = vip_on(leader, "web").expect("no virtual address");
        assert_ne!(Some(web), vip_on(leader, "api"));
        // Every replica holds the same address.
        eventually("every node applied", Duration::from_secs(10), || {
            let all = c.addrs.keys().all(|n| {
                c.nodes[n].reader.applied_revision() >= c.nodes[&leader].reader.applied_revision()
            });
            async move { all.then_some(()) }
        })
        .await;
        for n in c.addrs.keys() {
            assert_eq!(vip_on(*n, "web"), Some(web), "node {n}");
        }
        // The stored document applies again as it is; another address does not.
        let mut stored = service("web", 80);
        if let raftmesh_api::Spec::Service(s) = &mut stored.spec {
            s.vip = Some(web);
        }
        cl.apply(apply_req(vec![stored.clone()])).await.unwrap();
        if let raftmesh_api::Spec::Service(s) = &mut stored.spec {
            s.vip = Some("10.1.2.3".parse().unwrap());
        }
        let e = cl.apply(apply_req(vec![stored])).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
        assert!(
            e.message()
                .contains("spec.vip 10.1.2.3 is assigned by meshd"),
            "{}",
            e.message()
        );
        assert_eq!(vip_on(leader, "web"), Some(web));
        c.shutdown().await;
    });
}

/// A new admin or read-only token, made by `admin`.
async fn role_token(admin: &mut Admin, role: pb::TokenRole) -> pb::CreateTokenResponse {
    admin
        .create_token(pb::CreateTokenRequest {
            scope: Some(pb::create_token_request::Scope::Role(role as i32)),
            ttl_ms: 0,
            max_uses: 0,
        })
        .await
        .unwrap()
        .into_inner()
}
