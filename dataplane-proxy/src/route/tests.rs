//! Route matching and weighted splits.

use std::collections::BTreeMap;

use http::Request;
use raftmesh_api::RouteMatch;

use super::*;
use crate::compiled::{Backend, Rule};
use crate::route::matching::Match;

fn backend(label: &str, weight: u32) -> Backend {
    Backend {
        label: label.into(),
        subset: BTreeMap::new(),
        weight,
        endpoints: vec![],
        ring: None,
    }
}

#[test]
fn authority_comes_from_the_absolute_uri_or_the_host_header() {
    let r = Request::get("http://web/x").body(()).unwrap();
    assert_eq!(
        service_of(&r, "default").unwrap(),
        ("default".to_string(), "web".to_string())
    );
    let r = Request::get("/x")
        .header("host", "api.prod:8080")
        .body(())
        .unwrap();
    assert_eq!(
        service_of(&r, "default").unwrap(),
        ("prod".to_string(), "api".to_string())
    );
    let r = Request::get("/x").body(()).unwrap();
    assert!(matches!(
        service_of(&r, "default"),
        Err(ProxyError::BadRequest)
    ));
    // Not a service name: refused here, never looked up or subscribed to.
    for host in [
        "we_b",
        "-web",
        "web.pr*d",
        "",
        ".prod",
        "a".repeat(64).as_str(),
    ] {
        let r = Request::get("/x").header("host", host).body(()).unwrap();
        assert!(
            matches!(service_of(&r, "default"), Err(ProxyError::BadHost(_))),
            "{host:?}"
        );
    }
}

#[test]
fn the_first_matching_rule_wins_and_header_matches_select_it() {
    let canary = Rule {
        matches: vec![Match::compile(&RouteMatch {
            headers: [("x-canary".to_string(), "true".to_string())].into(),
            ..Default::default()
        })],
        backends: vec![backend("version=v2", 100)],
        actions: None,
        mirror: None,
    };
    let api = Rule {
        matches: vec![Match::compile(&RouteMatch {
            path_prefix: Some("/api/".into()),
            method: Some("POST".into()),
            ..Default::default()
        })],
        backends: vec![backend("version=v3", 100)],
        actions: None,
        mirror: None,
    };
    let default = Rule {
        matches: vec![],
        backends: vec![backend("version=v1", 100)],
        actions: None,
        mirror: None,
    };
    let rules = vec![canary, api, default];
    let r = Request::get("/")
        .header("x-canary", "true")
        .body(())
        .unwrap();
    assert_eq!(choose(&rules, &r), Some((0, 0)));
    let r = Request::post("/api/x").body(()).unwrap();
    assert_eq!(choose(&rules, &r), Some((1, 0)));
    let r = Request::get("/api/x")
        .header("x-canary", "false")
        .body(())
        .unwrap();
    assert_eq!(choose(&rules, &r), Some((2, 0)));
}

#[test]
fn weighted_split_follows_the_weights() {
    let rules = vec![Rule {
        matches: vec![],
        backends: vec![backend("v1", 90), backend("v2", 10)],
        actions: None,
        mirror: None,
    }];
    let r = Request::get("/").body(()).unwrap();
    let n = 20_000;
    let v2 = (0..n)
        .filter(|_| choose(&rules, &r) == Some((0, 1)))
        .count();
    // 10% of 20,000 = 2,000; the standard deviation is ~42, so ±250 is ~6σ.
    assert!((1_750..=2_250).contains(&v2), "{v2} of {n} went to v2");
}

#[test]
fn a_prefix_is_replaced_on_path_segments() {
    use crate::route::actions::join_prefix;
    let cases = [
        ("/api", "/items", "/v2", Some("/v2/items")),
        ("/api", "/items", "/", Some("/items")),
        ("/api", "", "/v2", Some("/v2")),
        ("/api", "", "/", Some("/")),
        ("/api/", "items", "/v2", Some("/v2/items")),
        ("/api/", "items", "/v2/", Some("/v2/items")),
        ("/api/", "items", "/", Some("/items")),
        ("/api/", "", "/v2", Some("/v2/")),
        // The prefix ended inside a segment: not rewritten.
        ("/api", "admin", "/", None),
        ("/api", "admin", "/v2", None),
    ];
    for (prefix, rest, to, want) in cases {
        assert_eq!(
            join_prefix(prefix, rest, to).as_deref(),
            want,
            "{prefix} + {rest} → {to}"
        );
    }
}
