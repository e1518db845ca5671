//! Discovery streams: scope, resume, coalescing, leases, convergence.

use std::time::Duration;

use raftmesh_api::v1 as pb;
use raftmesh_api::v1::proxy_message::Msg as In;
use raftmesh_api::{Health, Kind, Resource, ResourceKey, Spec};
use raftmesh_ctl::Parser as _;

use super::proxy::{hello, msg, FakeProxy};
use super::support::*;

fn doc(y: &str) -> Resource {
    serde_yaml_ng::from_str(y).unwrap()
}

fn endpoint(name: &str, service: &str, port: u32) -> Resource {
    doc(&format!(
        "kind: Endpoint\nmetadata: {{name: {name}}}\nspec: {{service: {service}, address: 10.0.0.1, port: {port}}}"
    ))
}

fn route(service: &str, v1: u32) -> Resource {
    doc(&format!(
        "kind: Route\nmetadata: {{name: {service}}}\nspec:\n  service: {service}\n  rules:\n    - backends:\n        - {{subset: {{version: v1}}, weight: {v1}}}\n        - {{subset: {{version: v2}}, weight: {}}}\n",
        100 - v1
    ))
}

async fn seed(admin: &mut Admin) -> u64 {
    admin
        .apply(apply_req(vec![
            service("web", 80),
            service("api", 81),
            service("db", 82),
            endpoint("api-1", "api", 9001),
            endpoint("db-1", "db", 9002),
            route("api", 90),
            doc("kind: Policy\nmetadata: {name: web-in}\nspec: {service: web, action: allow}"),
            doc("kind: Policy\nmetadata: {name: api-in}\nspec: {service: api, action: deny}"),
            doc("kind: MeshConfig\nmetadata: {name: mesh}\nspec: {mtls: permissive}"),
        ]))
        .await
        .unwrap()
        .into_inner()
        .revision
}

#[test]
fn a_proxy_receives_exactly_its_scope_then_deltas() {
    run(async {
        let c = TestCluster::start(1).await;
        let mut admin = c.client(1).await;
        let rev = seed(&mut admin).await;
        let token = bootstrap_token(&mut admin, "web").await;
        let mut p = FakeProxy::connect(c.addrs[&1], hello("web", "web-1", &token, &["api"]))
            .await
            .unwrap();
        let d = p.expect_acked().await;
        assert!(d.full);
        assert!(d.revision >= rev);
        assert_eq!(
            p.names(),
            [
                "Service/api",
                "Endpoint/api-1",
                "Route/api",
                "Policy/web-in",
                "MeshConfig/mesh"
            ]
        );
        // A change in scope arrives as a delta with only that change.
        admin
            .apply(apply_req(vec![route("api", 50)]))
            .await
            .unwrap();
        let d = p.expect_acked().await;
        assert!(!d.full);
        assert_eq!(d.upserts.len(), 1);
        let Spec::Route(r) = &p.held[&route("api", 0).key()].spec else {
            panic!()
        };
        assert_eq!(r.rules[0].backends[0].weight, 50);
        // A deletion in scope arrives as a removal.
        admin
            .delete(pb::DeleteRequest {
                kind: "ep".into(),
                namespace: String::new(),
                name: "api-1".into(),
                expected_revision: None,
            })
            .await
            .unwrap();
        let d = p.expect_acked().await;
        assert_eq!(d.removals.len(), 1);
        assert!(!p.names().contains(&"Endpoint/api-1".to_string()));
        c.shutdown().await;
    });
}

#[test]
fn a_change_to_a_service_sends_nothing_to_proxies_that_do_not_call_it() {
    run(async {
        let c = TestCluster::start(1).await;
        let mut admin = c.client(1).await;
        seed(&mut admin).await;
        let token = bootstrap_token(&mut admin, "web").await;
        let mut api_caller =
            FakeProxy::connect(c.addrs[&1], hello("web", "web-1", &token, &["api"]))
                .await
                .unwrap();
        let mut db_caller = FakeProxy::connect(c.addrs[&1], hello("web", "web-2", &token, &["db"]))
            .await
            .unwrap();
        api_caller.expect_acked().await;
        db_caller.expect_acked().await;
        for i in 0..5 {
            admin
                .apply(apply_req(vec![endpoint(
                    &format!("db-x{i}"),
                    "db",
                    9100 + i,
                )]))
                .await
                .unwrap();
        }
        // The db caller sees them; the api caller gets nothing at all.
        let mut seen = 0;
        while seen < 5 {
            let d = db_caller.expect_acked().await;
            seen += d.upserts.len();
        }
        let nothing = api_caller.next(Duration::from_millis(700)).await.unwrap();
        assert!(nothing.is_none(), "an unsubscribed proxy got {nothing:?}");
        c.shutdown().await;
    });
}

#[test]
fn resume_sends_exactly_what_changed_no_gap_no_duplicate() {
    run(async {
        let c = TestCluster::start(1).await;
        let mut admin = c.client(1).await;
        seed(&mut admin).await;
        let token = bootstrap_token(&mut admin, "web").await;
        let h = || hello("web", "web-1", &token, &["api", "db"]);
        let mut p = FakeProxy::connect(c.addrs[&1], h()).await.unwrap();
        p.expect_acked().await;
        for round in 0..6u32 {
            let last = p.revision;
            let held = p.held.clone();
            drop(p);
            // Changes while disconnected: in scope, out of scope, deletes, moves.
            admin
                .apply(apply_req(vec![route("api", 10 * round)]))
                .await
                .unwrap();
            admin
                .apply(apply_req(vec![service("other", 1000 + round)]))
                .await
                .unwrap();
            admin
                .apply(apply_req(vec![endpoint(
                    &format!("e{round}"),
                    "db",
                    9000 + round,
                )]))
                .await
                .unwrap();
            if round > 0 {
                // Move the previous round's endpoint out of scope.
                admin
                    .apply(apply_req(vec![endpoint(
                        &format!("e{}", round - 1),
                        "other",
                        1,
                    )]))
                    .await
                    .unwrap();
            }
            let mut resumed = h();
            resumed.last_revision = last;
            p = FakeProxy::connect(c.addrs[&1], resumed).await.unwrap();
            p.held = held;
            p.revision = last;
            let d = p.expect_acked().await;
            assert!(
                !d.full,
                "the window reaches back: a delta, not a full state"
            );
            // No duplicate: every upsert is a resource that changed since.
            for u in &d.upserts {
                let r = Resource::try_from(u.clone()).unwrap();
                assert!(
                    r.metadata.revision.unwrap() > last,
                    "{} was sent again",
                    r.key()
                );
            }
            // No gap: what the proxy holds equals a fresh full state.
            let mut fresh = FakeProxy::connect(c.addrs[&1], h()).await.unwrap();
            fresh.expect_acked().await;
            assert_eq!(p.held, fresh.held, "round {round}");
        }
        c.shutdown().await;
    });
}

#[test]
fn revisions_never_go_back_across_a_reconnect_to_a_node_that_is_behind() {
    run(async {
        let mut c = TestCluster::start(3).await;
        let leader = c.wait_ready().await;
        let mut admin = c.client(leader).await;
        seed(&mut admin).await;
        let token = bootstrap_token(&mut admin, "web").await;
        let lagger = *c.nodes.keys().find(|id| **id != leader).unwrap();
        // The proxy follows the leader while another node is down...
        c.stop(lagger).await;
        let mut p = FakeProxy::connect(c.addrs[&leader], hello("web", "web-1", &token, &["api"]))
            .await
            .unwrap();
        p.expect_acked().await;
        for i in 0..20 {
            admin.apply(apply_req(vec![route("api", i)])).await.unwrap();
            p.expect_acked().await;
        }
        let last = p.revision;
        let held = p.held.clone();
        drop(p);
        // ...then reconnects to that node as soon as it is back: the node
        // waits until it has caught up rather than send an older view.
        c.restart(lagger).await;
        let mut h = hello("web", "web-1", &token, &["api"]);
        h.last_revision = last;
        let mut p = FakeProxy::connect(c.addrs[&lagger], h).await.unwrap();
        p.revision = last;
        p.held = held;
        admin
            .apply(apply_req(vec![route("api", 77)]))
            .await
            .unwrap();
        let d = p.expect_acked().await;
        assert!(d.revision > last);
        let Spec::Route(r) = &p.held[&route("api", 0).key()].spec else {
            panic!()
        };
        assert_eq!(r.rules[0].backends[0].weight, 77);
        c.shutdown().await;
    });
}

#[test]
fn changes_coalesce_while_a_proxy_has_not_acked() {
    run(async {
        let c = TestCluster::start(1).await;
        let mut admin = c.client(1).await;
        seed(&mut admin).await;
        let token = bootstrap_token(&mut admin, "web").await;
        let mut p = FakeProxy::connect(c.addrs[&1], hello("web", "web-1", &token, &["api"]))
            .await
            .unwrap();
        let first = p.expect().await; // not acked: the proxy is stalled
        for i in 0..100 {
            admin
                .apply(apply_req(vec![route("api", i % 100)]))
                .await
                .unwrap();
        }
        admin
            .apply(apply_req(vec![route("api", 33)]))
            .await
            .unwrap();
        // Nothing more is sent until the ack.
        assert!(p.next(Duration::from_millis(500)).await.unwrap().is_none());
        p.ack(&first).await;
        let d = p.expect_acked().await;
        assert_eq!(
            d.upserts.len(),
            1,
            "101 changes to one key coalesce into one upsert"
        );
        let Spec::Route(r) = &p.held[&route("api", 0).key()].spec else {
            panic!()
        };
        assert_eq!(r.rules[0].backends[0].weight, 33, "the latest value");
        c.shutdown().await;
    });
}

#[test]
fn a_subscription_added_at_run_time_brings_that_service() {
    run(async {
        let c = TestCluster::start(1).await;
        let mut admin = c.client(1).await;
        seed(&mut admin).await;
        let token = bootstrap_token(&mut admin, "web").await;
        let mut p = FakeProxy::connect(c.addrs[&1], hello("web", "web-1", &token, &["api"]))
            .await
            .unwrap();
        let d1 = p.expect_acked().await;
        p.tx.send(msg(In::Subscribe(pb::Subscribe {
            services: vec!["db".into()],
        })))
        .await
        .unwrap();
        let d2 = p.expect_acked().await;
        assert!(d2.full && d2.revision > d1.revision);
        assert!(p.names().contains(&"Endpoint/db-1".to_string()));
        assert!(p.names().contains(&"Route/api".to_string()));
        // And later changes to db arrive.
        admin
            .apply(apply_req(vec![endpoint("db-2", "db", 9003)]))
            .await
            .unwrap();
        p.expect_acked().await;
        assert!(p.names().contains(&"Endpoint/db-2".to_string()));
        c.shutdown().await;
    });
}

#[test]
fn one_bad_subscription_is_refused_by_name_the_set_is_capped_and_unsubscribing_drops_a_service() {
    run(async {
        let c = TestCluster::start(1).await;
        let mut admin = c.client(1).await;
        seed(&mut admin).await;
        let token = bootstrap_token(&mut admin, "web").await;
        // A bad name in the Hello: refused by name (not echoed whole), and
        // the stream opens with the rest.
        let huge = "Bad_".repeat(1000);
        let mut p = FakeProxy::connect(c.addrs[&1], hello("web", "web-1", &token, &["api", &huge]))
            .await
            .unwrap();
        let e = p.next(Duration::from_secs(10)).await.unwrap_err();
        assert!(
            e.message().starts_with("bad-subscription:"),
            "{}",
            e.message()
        );
        assert!(
            e.message().len() < 600,
            "echoed a huge value: {} bytes",
            e.message().len()
        );
        p.expect_acked().await;
        assert!(p.names().contains(&"Endpoint/api-1".to_string()));
        // At run time: the bad name alone is refused, the good one taken.
        p.tx.send(msg(In::Subscribe(pb::Subscribe {
            services: vec!["no/such".into(), "db".into()],
        })))
        .await
        .unwrap();
        let e = p.next(Duration::from_secs(10)).await.unwrap_err();
        assert!(e.message().contains("no/such"), "{}", e.message());
        p.expect_acked().await;
        assert!(p.names().contains(&"Endpoint/db-1".to_string()));
        // The set is capped: what exceeds it is refused, name by name.
        let max = raftmesh_controlplane::discovery::scope::MAX_SUBSCRIPTIONS;
        p.tx.send(msg(In::Subscribe(pb::Subscribe {
            services: (0..max + 5).map(|i| format!("svc-{i}")).collect(),
        })))
        .await
        .unwrap();
        let mut refused = 0;
        loop {
            match p.next(Duration::from_secs(10)).await {
                Err(e) if e.message().starts_with("subscription-limit:") => refused += 1,
                Ok(Some(d)) => {
                    p.ack(&d).await;
                    break;
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(
            refused,
            7,
            "api and db held, {} of {} new fit",
            max - 2,
            max + 5
        );
        // Unsubscribing drops a service from what the proxy receives.
        p.tx.send(msg(In::Unsubscribe(pb::Subscribe {
            services: vec!["db".into()],
        })))
        .await
        .unwrap();
        p.expect_acked().await;
        assert!(!p.names().contains(&"Endpoint/db-1".to_string()));
        assert!(p.names().contains(&"Endpoint/api-1".to_string()));
        c.shutdown().await;
    });
}

#[test]
fn bad_hellos_and_oversized_messages_close_only_that_stream() {
    run(async {
        let c = TestCluster::start(1).await;
        let mut admin = c.client(1).await;
        seed(&mut admin).await;
        let token = bootstrap_token(&mut admin, "web").await;
        let addr = c.addrs[&1];
        let mut good = FakeProxy::connect(addr, hello("web", "web-1", &token, &["api"]))
            .await
            .unwrap();
        good.expect_acked().await;

        let e = FakeProxy::connect(addr, hello("web", "web-2", "", &[]))
            .await
            .err()
            .unwrap();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        assert!(
            e.message().contains("missing bootstrap token"),
            "{}",
            e.message()
        );
        let api_token = bootstrap_token(&mut admin, "api").await;
        let e = FakeProxy::connect(addr, hello("web", "web-2", &api_token, &[]))
            .await
            .err()
            .unwrap();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(
            e.message()
                .contains("is for service api.default, not web.default"),
            "{}",
            e.message()
        );
        let e = FakeProxy::connect(addr, hello("Web!", "web-2", &token, &[]))
            .await
            .err()
            .unwrap();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().starts_with("hello.service:"), "{}", e.message());
        let e =
            FakeProxy::connect_raw(addr, vec![msg(In::Heartbeat(pb::Heartbeat { unix_ms: 1 }))])
                .await
                .err()
                .unwrap();
        assert!(
            e.message()
                .contains("first message of a stream must be Hello"),
            "{}",
            e.message()
        );

        // An oversized message ends that stream with an error...
        let mut big = FakeProxy::connect(addr, hello("web", "web-3", &token, &["api"]))
            .await
            .unwrap();
        big.expect_acked().await;
        big.tx
            .send(msg(In::Subscribe(pb::Subscribe {
                services: vec!["x".repeat(100); 5_000],
            })))
            .await
            .unwrap();
        let e = loop {
            match big.next(Duration::from_secs(5)).await {
                Err(e) => break e,
                Ok(None) => panic!("the oversized message was accepted"),
                Ok(Some(_)) => continue,
            }
        };
        assert!(
            e.code() == tonic::Code::ResourceExhausted
                || e.code() == tonic::Code::OutOfRange
                || e.message().contains("message"),
            "{e:?}"
        );
        // ...and the other stream goes on.
        admin
            .apply(apply_req(vec![route("api", 10)]))
            .await
            .unwrap();
        let d = good.expect_acked().await;
        assert_eq!(d.upserts.len(), 1);
        c.shutdown().await;
    });
}

fn fast_leases(c: &mut raftmesh_controlplane::config::ServerConfig) {
    c.endpoint_grace = Duration::from_secs(2);
    c.endpoint_expiry = Duration::from_secs(5);
}

fn health(c: &TestCluster, node: u64, name: &str) -> Option<Health> {
    let (_, r) = c.nodes[&node]
        .reader
        .get(&ResourceKey::new(Kind::Endpoint, "default", name));
    r.map(|r| match &r.spec {
        Spec::Endpoint(e) => e.health,
        _ => unreachable!(),
    })
}

#[test]
fn an_endpoint_goes_unhealthy_then_away_after_its_proxy_is_gone() {
    run(async {
        let c = TestCluster::start_tweaked(1, 10_000, fast_leases).await;
        let mut admin = c.client(1).await;
        let token = bootstrap_token(&mut admin, "api").await;
        let mut h = hello("api", "api-7", &token, &[]);
        h.port = 15006;
        let mut p = FakeProxy::connect(c.addrs[&1], h).await.unwrap();
        p.expect_acked().await;
        eventually(
            "the endpoint to be registered healthy",
            Duration::from_secs(5),
            || async { (health(&c, 1, "api-7") == Some(Health::Healthy)).then_some(()) },
        )
        .await;
        // Still healthy past the grace period while the stream lives.
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(health(&c, 1, "api-7"), Some(Health::Healthy));
        drop(p); // the proxy dies
        eventually(
            "the endpoint to turn unhealthy",
            Duration::from_secs(8),
            || async { (health(&c, 1, "api-7") == Some(Health::Unhealthy)).then_some(()) },
        )
        .await;
        eventually(
            "the endpoint to be removed",
            Duration::from_secs(10),
            || async { health(&c, 1, "api-7").is_none().then_some(()) },
        )
        .await;
        c.shutdown().await;
    });
}

#[test]
fn a_proxy_that_moves_to_another_node_within_the_grace_period_stays_healthy() {
    run(async {
        let mut c = TestCluster::start_tweaked(3, 10_000, fast_leases).await;
        let leader = c.wait_ready().await;
        let mut admin = c.client(leader).await;
        let token = bootstrap_token(&mut admin, "api").await;
        // The proxy's node dies (here: the leader, so leases change hands too).
        let mut h = hello("api", "api-8", &token, &[]);
        h.port = 15006;
        let mut p = FakeProxy::connect(c.addrs[&leader], h.clone())
            .await
            .unwrap();
        p.expect_acked().await;
        let other = *c.nodes.keys().find(|id| **id != leader).unwrap();
        eventually(
            "the endpoint to be registered healthy",
            Duration::from_secs(5),
            || async { (health(&c, other, "api-8") == Some(Health::Healthy)).then_some(()) },
        )
        .await;
        c.stop(leader).await;
        drop(p);
        h.last_revision = 0;
        let mut p = eventually(
            "the proxy to reconnect elsewhere",
            Duration::from_secs(5),
            || {
                let h = h.clone();
                let addr = c.addrs[&other];
                async move { FakeProxy::connect(addr, h).await.ok() }
            },
        )
        .await;
        p.expect_acked().await;
        // Well past the grace period: never marked unhealthy.
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            assert_eq!(health(&c, other, "api-8"), Some(Health::Healthy));
        }
        c.shutdown().await;
    });
}

#[test]
fn proxies_are_listed_with_their_acked_revision_and_apply_wait_waits_for_them() {
    run(async {
        let c = TestCluster::start(3).await;
        let leader = c.wait_ready().await;
        let mut admin = c.client(leader).await;
        seed(&mut admin).await;
        let token = bootstrap_token(&mut admin, "web").await;
        let ids: Vec<u64> = c.nodes.keys().copied().collect();
        let mut proxies = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            let mut p = FakeProxy::connect(
                c.addrs[id],
                hello("web", &format!("web-{i}"), &token, &["api"]),
            )
            .await
            .unwrap();
            p.expect_acked().await;
            proxies.push(p);
        }
        let other = FakeProxy::connect(c.addrs[&ids[0]], hello("web", "web-db", &token, &["db"]))
            .await
            .unwrap();
        let listed = admin
            .list_proxies(pb::ListProxiesRequest {})
            .await
            .unwrap()
            .into_inner()
            .proxies;
        assert_eq!(listed.len(), 4, "every node's proxies are listed");
        assert!(listed
            .iter()
            .any(|p| p.instance == "web-2" && p.node_id == ids[2]));

        // apply --wait returns once every subscribed proxy acked; proxies
        // not subscribed (web-db) are not waited for.
        let servers = c
            .addrs
            .values()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("r.yaml");
        std::fs::write(&file, serde_yaml_ng::to_string(&route("api", 20)).unwrap()).unwrap();
        let cli = |timeout: &str| {
            raftmesh_ctl::Cli::try_parse_from([
                "meshctl",
                "--server",
                &servers,
                "--token",
                TOKEN,
                "apply",
                "-f",
                file.to_str().unwrap(),
                "--wait",
                "--timeout",
                timeout,
            ])
            .unwrap()
        };
        let waiter = tokio::spawn(raftmesh_ctl::run(cli("20s")));
        for p in &mut proxies {
            p.expect_acked().await;
        }
        waiter
            .await
            .unwrap()
            .expect("apply --wait succeeds once all have acked");

        // A proxy that never acks makes --wait time out.
        std::fs::write(&file, serde_yaml_ng::to_string(&route("api", 30)).unwrap()).unwrap();
        let waiter = tokio::spawn(raftmesh_ctl::run(cli("2s")));
        for p in proxies.iter_mut().take(2) {
            p.expect_acked().await;
        }
        let _unacked = proxies[2].expect().await;
        let e = waiter.await.unwrap().expect_err("one proxy never acked");
        assert!(
            e.message.contains("2/3 proxies at revision"),
            "{}",
            e.message
        );
        assert!(e.message.contains("web-2"), "{}", e.message);

        // A proxy that dropped is not converged, and is named, until it
        // acknowledges or its lease ends ("0/0 proxies", exit 0, before).
        let gone = proxies.pop().unwrap();
        drop(gone);
        std::fs::write(&file, serde_yaml_ng::to_string(&route("api", 40)).unwrap()).unwrap();
        let waiter = tokio::spawn(raftmesh_ctl::run(cli("2s")));
        for p in proxies.iter_mut() {
            p.expect_acked().await;
        }
        let e = waiter
            .await
            .unwrap()
            .expect_err("a dropped proxy never acked");
        assert!(
            e.message.contains("2/3 proxies at revision"),
            "{}",
            e.message
        );
        assert!(e.message.contains("web-2 (disconnected"), "{}", e.message);
        let listed = admin
            .list_proxies(pb::ListProxiesRequest {})
            .await
            .unwrap()
            .into_inner()
            .proxies;
        assert!(listed
            .iter()
            .any(|p| p.instance == "web-2" && p.disconnected_since_ms > 0));

        // proxy-config shows what one proxy holds.
        let pc = admin
            .proxy_config(pb::ProxyConfigRequest {
                instance: "web-0".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(pc.resources.len(), 5);
        assert!(pc.status.unwrap().acked_revision > 0);
        drop(other);
        c.shutdown().await;
    });
}

#[test]
fn a_proxy_registers_only_its_own_identity_s_endpoints_and_discovers_only_what_it_may_call() {
    run(async {
        let c = TestCluster::start(1).await;
        let mut admin = c.client(1).await;
        seed(&mut admin).await;
        let addr = c.addrs[&1];
        let get = |name: &str| {
            c.nodes[&1]
                .reader
                .get(&ResourceKey::new(Kind::Endpoint, "default", name))
                .1
        };
        // web's proxy claiming instance "api-1" (an admin's Endpoint of api).
        let token = bootstrap_token(&mut admin, "web").await;
        let mut h = hello("web", "api-1", &token, &[]);
        h.port = 9999;
        let e = FakeProxy::connect(addr, h).await.err().unwrap();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(
            e.message().contains("registered by an admin"),
            "{}",
            e.message()
        );
        let Spec::Endpoint(ep) = &get("api-1").unwrap().spec else {
            panic!()
        };
        assert_eq!((ep.service.as_str(), ep.port), ("api", 9001), "unchanged");
        // web's own instance registers; api's proxy cannot take it over.
        let mut h = hello("web", "web-1", &token, &[]);
        h.port = 9999;
        let mut web = FakeProxy::connect(addr, h).await.unwrap();
        web.expect_acked().await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while get("web-1").is_none() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "web-1 never registered"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let api_token = bootstrap_token(&mut admin, "api").await;
        let mut h = hello("api", "web-1", &api_token, &[]);
        h.port = 7777;
        let e = FakeProxy::connect(addr, h).await.err().unwrap();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(
            e.message().contains("spiffe://test.mesh/ns/default/sa/web"),
            "{}",
            e.message()
        );
        let Spec::Endpoint(ep) = &get("web-1").unwrap().spec else {
            panic!()
        };
        assert_eq!((ep.service.as_str(), ep.port), ("web", 9999));

        // Another namespace's service is not discovered by default...
        admin
            .apply(apply_req(vec![
                doc("kind: Service\nmetadata: {name: pay, namespace: prod}\nspec: {}"),
                doc("kind: Endpoint\nmetadata: {name: pay-1, namespace: prod}\nspec: {service: pay, address: 10.0.0.9, port: 9009}"),
            ]))
            .await
            .unwrap();
        let mut p = FakeProxy::connect(addr, hello("web", "web-2", &token, &["api", "pay.prod"]))
            .await
            .unwrap();
        let e = p.next(Duration::from_secs(10)).await.unwrap_err();
        assert!(
            e.message().starts_with("subscription-denied:"),
            "{}",
            e.message()
        );
        p.expect_acked().await;
        assert!(p.names().contains(&"Endpoint/api-1".to_string()));
        assert!(!p.names().contains(&"Endpoint/pay-1".to_string()));
        // ...until an allow Policy of that service covers the caller.
        admin
            .apply(apply_req(vec![doc(
                "kind: Policy\nmetadata: {name: pay-in, namespace: prod}\nspec: {service: pay, action: allow, from: ['spiffe://test.mesh/ns/default/*']}",
            )]))
            .await
            .unwrap();
        p.tx.send(msg(In::Subscribe(pb::Subscribe {
            services: vec!["pay.prod".into()],
        })))
        .await
        .unwrap();
        p.expect_acked().await;
        assert!(p.names().contains(&"Endpoint/pay-1".to_string()));
        // MeshConfig discovery_scope: mesh opens every namespace.
        admin
            .apply(apply_req(vec![doc(
                "kind: Endpoint\nmetadata: {name: ledger-1, namespace: prod}\nspec: {service: ledger, address: 10.0.0.8, port: 9008}",
            )]))
            .await
            .unwrap();
        let ledger = || {
            msg(In::Subscribe(pb::Subscribe {
                services: vec!["ledger.prod".into()],
            }))
        };
        p.tx.send(ledger()).await.unwrap();
        let e = p.next(Duration::from_secs(10)).await.unwrap_err();
        assert!(
            e.message().starts_with("subscription-denied:"),
            "{}",
            e.message()
        );
        admin
            .apply(apply_req(vec![doc(
                "kind: MeshConfig\nmetadata: {name: mesh}\nspec: {mtls: permissive, discovery_scope: mesh}",
            )]))
            .await
            .unwrap();
        p.expect_acked().await;
        p.tx.send(ledger()).await.unwrap();
        p.expect_acked().await;
        assert!(p.names().contains(&"Endpoint/ledger-1".to_string()));
        c.shutdown().await;
    });
}

#[test]
fn a_live_ready_proxy_s_endpoint_marked_unhealthy_behind_its_back_is_put_right() {
    run(async {
        let c = TestCluster::start(1).await;
        let mut admin = c.client(1).await;
        seed(&mut admin).await;
        let token = bootstrap_token(&mut admin, "web").await;
        let mut h = hello("web", "web-live", &token, &[]);
        h.port = 9999;
        let mut p = FakeProxy::connect(c.addrs[&1], h).await.unwrap();
        p.expect_acked().await;
        let wait_for = |want: Health| {
            let c = &c;
            async move {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
                while health(c, 1, "web-live") != Some(want) {
                    assert!(tokio::time::Instant::now() < deadline, "never {want:?}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        wait_for(Health::Healthy).await;
        // What a lease does after missed reports (a node too busy to send
        // them): unhealthy, while the proxy is connected and ready.
        let key = ResourceKey::new(Kind::Endpoint, "default", "web-live");
        c.nodes[&1]
            .ops
            .update(&key, 1, |cur| {
                let mut u = (**cur.unwrap()).clone();
                if let Spec::Endpoint(e) = &mut u.spec {
                    e.health = Health::Unhealthy;
                }
                raftmesh_controlplane::cluster::Change::<std::io::Error>::Put(u)
            })
            .await
            .unwrap();
        assert_eq!(health(&c, 1, "web-live"), Some(Health::Unhealthy));
        // Its node puts it right (it stayed unhealthy for good before).
        wait_for(Health::Healthy).await;
        c.shutdown().await;
    });
}
