//! Balancing decisions without sockets.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use raftmesh_api::{LoadBalancer, Protocol};

use super::*;
use crate::compiled::{Backend, Endpoint, Outlier, ServiceTable};
use crate::stats::EndpointStats;

fn table(n: usize, lb: LoadBalancer) -> ServiceTable {
    ServiceTable {
        id: ("default".into(), "web".into()),
        protocol: Protocol::Http,
        route: None,
        rules: vec![],
        timeout: None,
        retries: None,
        lb,
        hash_on: None,
        max_in_flight: None,
        max_connections: None,
        connect_timeout: crate::compiled::CONNECT_TIMEOUT,
        fault: None,
        outlier: Outlier {
            consecutive_failures: 3,
            base_ejection: Duration::from_secs(30),
            max_ejection_percent: 50,
        },
        endpoints: (0..n)
            .map(|i| Endpoint {
                name: format!("e{i}"),
                addr: format!("127.0.0.1:{}", 9000 + i).parse().unwrap(),
                labels: BTreeMap::new(),
                tier: 0,
                dial: None,
                subset_only: false,
                healthy: true,
                server_name: None,
                identity: None,
                stats: Arc::new(EndpointStats::default()),
            })
            .collect(),
    }
}

fn all(n: usize) -> Backend {
    Backend {
        label: String::new(),
        subset: BTreeMap::new(),
        weight: 100,
        endpoints: (0..n).collect(),
        ring: None,
    }
}

#[test]
fn round_robin_visits_every_endpoint_in_turn() {
    let t = table(3, LoadBalancer::RoundRobin);
    let rr = AtomicUsize::new(0);
    let picks: Vec<usize> = (0..6).map(|_| pick(&t, &all(3), &rr).unwrap()).collect();
    assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
}

#[test]
fn p2c_prefers_the_faster_endpoint() {
    let t = table(2, LoadBalancer::P2cEwma);
    t.endpoints[0].stats.observe(Duration::from_millis(50));
    t.endpoints[1].stats.observe(Duration::from_micros(200));
    let rr = AtomicUsize::new(0);
    let fast = (0..100)
        .filter(|_| pick(&t, &all(2), &rr) == Some(1))
        .count();
    assert_eq!(fast, 100, "with two endpoints P2C always compares both");
}

#[test]
fn unhealthy_and_ejected_endpoints_are_skipped_and_remote_ones_are_a_fallback() {
    let mut t = table(3, LoadBalancer::RoundRobin);
    t.endpoints[0].healthy = false;
    t.endpoints[2].tier = crate::compiled::tier::MESH;
    let rr = AtomicUsize::new(0);
    for _ in 0..5 {
        assert_eq!(
            pick(&t, &all(3), &rr),
            Some(1),
            "the local healthy one first"
        );
    }
    for _ in 0..3 {
        t.endpoints[1].stats.fail(&t.outlier, true);
    }
    assert!(t.endpoints[1].stats.ejected());
    assert_eq!(pick(&t, &all(3), &rr), Some(2), "then another cluster");
    t.endpoints[2].healthy = false;
    assert_eq!(pick(&t, &all(3), &rr), None);
}

#[test]
fn a_retry_goes_to_an_endpoint_not_tried_yet_when_there_is_one() {
    for lb in [LoadBalancer::P2cEwma, LoadBalancer::RoundRobin] {
        let t = table(3, lb);
        let rr = AtomicUsize::new(0);
        for _ in 0..50 {
            let i = pick_avoiding(&t, &all(3), &rr, &[0, 2], None).unwrap();
            assert_eq!(i, 1, "{lb:?}");
            let j = pick_avoiding(&t, &all(3), &rr, &[1], None).unwrap();
            assert_ne!(j, 1, "{lb:?}");
        }
        // Every endpoint tried: pick among all again rather than fail.
        assert!(pick_avoiding(&t, &all(3), &rr, &[0, 1, 2], None).is_some());
    }
}

#[test]
fn least_request_prefers_the_endpoint_with_fewer_in_flight() {
    let t = table(2, LoadBalancer::LeastRequest);
    t.endpoints[0].stats.pending.store(3, Ordering::Relaxed);
    let rr = AtomicUsize::new(0);
    let to_idle = (0..100)
        .filter(|_| pick(&t, &all(2), &rr) == Some(1))
        .count();
    assert_eq!(to_idle, 100);
}

#[test]
fn the_zone_spills_its_missing_share_times_1_4_to_the_rest_of_the_cluster() {
    // e0..e3 in the caller's zone, e4 in another zone of the cluster.
    let mut t = table(5, LoadBalancer::RoundRobin);
    t.endpoints[4].tier = crate::compiled::tier::CLUSTER;
    let rr = AtomicUsize::new(0);
    let far = |t: &ServiceTable| {
        (0..10_000)
            .filter(|_| pick(t, &all(5), &rr) == Some(4))
            .count()
    };
    // All four usable, or three (1.4 × 75 % ≥ 100 %): nothing spills.
    assert_eq!(far(&t), 0);
    t.endpoints[0].healthy = false;
    assert_eq!(far(&t), 0);
    // Two of four: the zone keeps 70 %, 30 % spills (sd 46 in 10,000).
    t.endpoints[1].healthy = false;
    let spilled = far(&t);
    assert!((2_800..=3_200).contains(&spilled), "{spilled}");
    // None usable: everything goes to the next tier.
    t.endpoints[2].healthy = false;
    t.endpoints[3].healthy = false;
    assert_eq!(far(&t), 10_000);
}

#[test]
fn consistent_hashing_follows_the_ring_and_a_retry_walks_on() {
    let mut t = table(4, LoadBalancer::ConsistentHash);
    let mut b = all(4);
    b.ring = Some(Arc::new(ring::Ring::new(
        t.endpoints
            .iter()
            .enumerate()
            .map(|(i, e)| (i, e.name.as_str())),
    )));
    let rr = AtomicUsize::new(0);
    let key = ring::key_hash(b"user-1");
    let first = pick_avoiding(&t, &b, &rr, &[], Some(key)).unwrap();
    for _ in 0..20 {
        assert_eq!(pick_avoiding(&t, &b, &rr, &[], Some(key)), Some(first));
    }
    // A retry avoids it and lands on the same next endpoint each time.
    let next = pick_avoiding(&t, &b, &rr, &[first], Some(key)).unwrap();
    assert_ne!(next, first);
    assert_eq!(pick_avoiding(&t, &b, &rr, &[first], Some(key)), Some(next));
    // The endpoint unhealthy: the key moves to where a retry went.
    t.endpoints[first].healthy = false;
    assert_eq!(pick_avoiding(&t, &b, &rr, &[], Some(key)), Some(next));
    // No key: any usable endpoint.
    assert!(pick_avoiding(&t, &b, &rr, &[], None).is_some());
}
