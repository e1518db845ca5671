//! Inbound authorization: Policy resources of this proxy's service against
//! the caller's identity (from its mTLS certificate), method and path.
//!
//! Deny wins. If any allow policy exists, a request must match one; with
//! no policy, MeshConfig's `default_policy` decides (allow unless set).
//! `from` entries are exact SPIFFE IDs, prefixes ending in `*`, or `*` (any
//! authenticated caller); a policy without `from` matches every caller,
//! anonymous ones too. `to` lists methods and path prefixes (empty = all).
//!
//! Across trust domains, deny by default: a caller of a peer cluster is
//! allowed only when this service is exported to that peer and an allow
//! policy names the peer's trust domain explicitly (`spiffe://td/...`;
//! `*`, a policy without `from` and MeshConfig's default never do). A
//! caller of a trust domain that is no peer's is refused.

use raftmesh_api::{Action, PolicySpec};

use crate::compiled::Authz;

fn to_matches(p: &PolicySpec, method: &str, path: &str) -> bool {
    p.to.is_empty()
        || p.to.iter().any(|t| {
            (t.methods.is_empty() || t.methods.iter().any(|m| m == method))
                && (t.paths.is_empty() || t.paths.iter().any(|x| path.starts_with(x.as_str())))
        })
}

/// The header that tells the app who called (Envoy's and Istio's name):
/// `URI=<caller's SPIFFE ID>`, set by the callee's proxy from the
/// caller's certificate.
pub const CALLER_HEADER: &str = "x-forwarded-client-cert";

/// Drops every `x-forwarded-client-cert`, in any spelling.
fn remove_caller(headers: &mut http::HeaderMap) {
    headers.remove(CALLER_HEADER);
    // Frameworks that read `X_FORWARDED_CLIENT_CERT` (CGI, WSGI) take the
    // underscore spelling for the same header: never pass that on either.
    let lookalikes: Vec<http::HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().contains('_') && k.as_str().replace('_', "-") == CALLER_HEADER)
        .cloned()
        .collect();
    for k in lookalikes {
        headers.remove(k);
    }
}

/// A request body's frames with any `x-forwarded-client-cert` dropped from
/// its trailers: an app that merges trailers into the headers (or an
/// HTTP/1 request that declares the field in `Trailer:`) never sees a
/// caller the sender forged there.
pub fn without_caller_trailers(
    mut f: hyper::body::Frame<bytes::Bytes>,
) -> hyper::body::Frame<bytes::Bytes> {
    if let Some(t) = f.trailers_mut() {
        remove_caller(t);
    }
    f
}

/// Tells the app who called: any `x-forwarded-client-cert` the request
/// arrived with is dropped (a caller cannot forge it) and, for a caller
/// with a certificate, replaced by its SPIFFE ID.
pub fn set_caller(headers: &mut http::HeaderMap, who: Option<&str>) {
    remove_caller(headers);
    if let Some(v) = who.and_then(|w| http::HeaderValue::from_str(&format!("URI={w}")).ok()) {
        headers.insert(CALLER_HEADER, v);
    }
}

/// Whether a request may pass; the error says why not. An empty method
/// and path is an opaque TCP connection, decided so that it fails closed:
/// a deny policy covering the caller refuses it whatever its `to` (the
/// methods and paths inside cannot be seen), and only an allow policy
/// without `to` allows it.
pub fn decide(a: &Authz, who: Option<&str>, method: &str, path: &str) -> Result<(), String> {
    if let Some(w) = who.filter(|w| !a.revoked.is_empty() && a.revoked.contains(*w)) {
        return Err(format!("{w} is revoked"));
    }
    let caller = who.unwrap_or("an unauthenticated caller");
    let opaque = method.is_empty() && path.is_empty();
    let foreign = who.and_then(|w| {
        let td = raftmesh_api::identity::parse_spiffe_id(w)?
            .trust_domain
            .to_string();
        (a.peer_domains.contains_key(&td) || (!a.trust_domain.is_empty() && td != a.trust_domain))
            .then_some((w, td))
    });
    let applies = |p: &&PolicySpec| {
        p.covers(who)
            && match (opaque, p.action) {
                (true, Action::Deny) => true,
                (true, Action::Allow) => p.to.is_empty(),
                (false, _) => to_matches(p, method, path),
            }
    };
    if a.policies
        .iter()
        .filter(|p| p.action == Action::Deny)
        .any(|p| applies(&p))
    {
        return Err(format!("a deny policy matches {caller} {method} {path}"));
    }
    if let Some((w, td)) = foreign {
        let Some(peer) = a.peer_domains.get(&td) else {
            return Err(format!(
                "{w} is of trust domain {td}, which is no peer's of this cluster"
            ));
        };
        if !a.exported_to.contains(peer) {
            return Err(format!("this service is not exported to peer {peer} ({w})"));
        }
        return if a
            .policies
            .iter()
            .filter(|p| p.action == Action::Allow)
            .any(|p| p.names_caller_in(w, &td) && applies(&p))
        {
            Ok(())
        } else {
            Err(format!(
                "no allow policy names {w} (callers of peer {peer} are denied unless a policy names trust domain {td})"
            ))
        };
    }
    let allows: Vec<&PolicySpec> = a
        .policies
        .iter()
        .filter(|p| p.action == Action::Allow)
        .collect();
    if !allows.is_empty() {
        return if allows.iter().any(applies) {
            Ok(())
        } else {
            Err(format!("no allow policy matches {caller} {method} {path}"))
        };
    }
    match a.default {
        Action::Allow => Ok(()),
        Action::Deny => Err(format!(
            "no policy allows {caller} and the mesh default is deny"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raftmesh_api::PolicyTarget;

    fn pol(action: Action, from: &[&str], methods: &[&str], paths: &[&str]) -> PolicySpec {
        PolicySpec {
            service: "api".into(),
            external: false,
            action,
            from: from.iter().map(|s| s.to_string()).collect(),
            to: if methods.is_empty() && paths.is_empty() {
                vec![]
            } else {
                vec![PolicyTarget {
                    methods: methods.iter().map(|s| s.to_string()).collect(),
                    paths: paths.iter().map(|s| s.to_string()).collect(),
                }]
            },
        }
    }

    const FRONT: &str = "spiffe://east.mesh/ns/default/sa/frontend";
    const BATCH: &str = "spiffe://east.mesh/ns/default/sa/batch";

    #[test]
    fn the_caller_header_is_the_proxy_s_alone() {
        let mut h = http::HeaderMap::new();
        h.insert(
            CALLER_HEADER,
            "URI=spiffe://x/ns/a/sa/admin".parse().unwrap(),
        );
        h.insert(
            "x_forwarded_client_cert",
            "URI=spiffe://x/ns/a/sa/admin".parse().unwrap(),
        );
        h.insert("x-other", "kept".parse().unwrap());
        set_caller(&mut h, Some(FRONT));
        assert_eq!(h[CALLER_HEADER], format!("URI={FRONT}").as_str());
        assert!(h.get("x_forwarded_client_cert").is_none());
        assert_eq!(h["x-other"], "kept");
        set_caller(&mut h, None);
        assert!(
            h.get(CALLER_HEADER).is_none(),
            "an anonymous caller is named by no one"
        );
    }

    #[test]
    fn a_caller_forged_in_trailers_is_dropped_and_other_trailers_and_data_pass() {
        let mut t = http::HeaderMap::new();
        t.insert(
            CALLER_HEADER,
            "URI=spiffe://x/ns/a/sa/admin".parse().unwrap(),
        );
        t.insert("x_forwarded_client_cert", "URI=forged".parse().unwrap());
        t.insert("x-checksum", "abc".parse().unwrap());
        let t = without_caller_trailers(hyper::body::Frame::trailers(t))
            .into_trailers()
            .unwrap();
        assert_eq!(t.len(), 1, "{t:?}");
        assert_eq!(t["x-checksum"], "abc");
        let d = without_caller_trailers(hyper::body::Frame::data(bytes::Bytes::from_static(
            b"x-forwarded-client-cert: URI=in-the-data",
        )));
        assert_eq!(
            d.into_data().unwrap(),
            &b"x-forwarded-client-cert: URI=in-the-data"[..]
        );
    }

    #[test]
    fn opaque_tcp_fails_closed_against_policies_scoped_to_methods_or_paths() {
        // A deny of batch's POSTs to /admin: batch's TCP tunnel could carry
        // one, so it is refused; frontend's is not covered.
        let a = Authz {
            policies: vec![pol(Action::Deny, &[BATCH], &["POST"], &["/admin"])],
            ..Default::default()
        };
        assert!(decide(&a, Some(BATCH), "", "").is_err());
        assert!(decide(&a, Some(BATCH), "GET", "/").is_ok());
        assert!(decide(&a, Some(FRONT), "", "").is_ok());
        // Allowed only GETs: no tunnel; allowed everything: tunnels too.
        let a = Authz {
            policies: vec![pol(Action::Allow, &[FRONT], &["GET"], &[])],
            ..Default::default()
        };
        assert!(decide(&a, Some(FRONT), "", "").is_err());
        assert!(decide(&a, Some(FRONT), "GET", "/x").is_ok());
        let a = Authz {
            policies: vec![pol(Action::Allow, &[FRONT], &[], &[])],
            ..Default::default()
        };
        assert!(decide(&a, Some(FRONT), "", "").is_ok());
    }

    #[test]
    fn deny_wins_over_allow() {
        let a = Authz {
            policies: vec![
                pol(Action::Allow, &["*"], &[], &[]),
                pol(Action::Deny, &[BATCH], &[], &[]),
            ],
            ..Default::default()
        };
        assert!(decide(&a, Some(FRONT), "GET", "/").is_ok());
        assert!(decide(&a, Some(BATCH), "GET", "/")
            .unwrap_err()
            .contains("deny policy"));
    }

    #[test]
    fn allow_policies_must_match_methods_paths_and_callers() {
        let a = Authz {
            policies: vec![pol(
                Action::Allow,
                &["spiffe://east.mesh/ns/default/*"],
                &["GET"],
                &["/api/"],
            )],
            ..Default::default()
        };
        assert!(decide(&a, Some(FRONT), "GET", "/api/x").is_ok());
        assert!(decide(&a, Some(FRONT), "POST", "/api/x").is_err());
        assert!(decide(&a, Some(FRONT), "GET", "/admin").is_err());
        assert!(decide(&a, Some("spiffe://east.mesh/ns/prod/sa/x"), "GET", "/api/x").is_err());
        assert!(
            decide(&a, None, "GET", "/api/x").is_err(),
            "anonymous callers match no from list"
        );
    }

    #[test]
    fn with_no_policy_the_mesh_default_decides() {
        let mut a = Authz::default();
        assert!(decide(&a, None, "GET", "/").is_ok());
        a.default = Action::Deny;
        assert!(decide(&a, Some(FRONT), "GET", "/")
            .unwrap_err()
            .contains("default is deny"));
        // A policy without `from` matches anonymous callers too.
        a.policies = vec![pol(Action::Allow, &[], &[], &[])];
        assert!(decide(&a, None, "GET", "/").is_ok());
    }

    #[test]
    fn identity_prefixes_end_on_a_segment_boundary() {
        for prefix in [
            "spiffe://east.mesh/ns/prod*",
            "spiffe://east.mesh/ns/prod/*",
        ] {
            let a = Authz {
                policies: vec![pol(Action::Allow, &[prefix], &[], &[])],
                ..Default::default()
            };
            assert!(decide(&a, Some("spiffe://east.mesh/ns/prod/sa/x"), "GET", "/").is_ok());
            assert!(
                decide(
                    &a,
                    Some("spiffe://east.mesh/ns/production/sa/x"),
                    "GET",
                    "/"
                )
                .is_err(),
                "{prefix} must not cover another namespace"
            );
        }
    }

    #[test]
    fn callers_of_peers_are_denied_unless_exported_and_named_by_an_allow_policy() {
        const PEER: &str = "spiffe://west.mesh/ns/default/sa/client";
        let mut a = Authz {
            trust_domain: "east.mesh".into(),
            peer_domains: [("west.mesh".to_string(), "west".to_string())].into(),
            ..Default::default()
        };
        // The mesh default (allow) and `*` do not reach across peers.
        assert!(decide(&a, Some(PEER), "GET", "/").is_err());
        a.policies = vec![pol(Action::Allow, &["*"], &[], &[])];
        assert!(decide(&a, Some(FRONT), "GET", "/").is_ok());
        let e = decide(&a, Some(PEER), "GET", "/").unwrap_err();
        assert!(e.contains("not exported"), "{e}");
        a.exported_to.insert("west".into());
        let e = decide(&a, Some(PEER), "GET", "/").unwrap_err();
        assert!(e.contains("names trust domain west.mesh"), "{e}");
        // Named explicitly: allowed, within the policy's `to`.
        a.policies = vec![pol(
            Action::Allow,
            &["spiffe://west.mesh/ns/default/*"],
            &["GET"],
            &[],
        )];
        assert!(decide(&a, Some(PEER), "GET", "/").is_ok());
        assert!(decide(&a, Some(PEER), "POST", "/").is_err());
        // Deny still wins.
        a.policies.push(pol(Action::Deny, &[PEER], &[], &[]));
        assert!(decide(&a, Some(PEER), "GET", "/").is_err());
        // A trust domain that is no peer's (only reachable if TLS let it
        // in): refused whatever the policies.
        a.policies = vec![pol(Action::Allow, &["spiffe://north.mesh/*"], &[], &[])];
        let e = decide(&a, Some("spiffe://north.mesh/ns/x/sa/y"), "GET", "/").unwrap_err();
        assert!(e.contains("no peer"), "{e}");
    }
}
