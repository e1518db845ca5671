//! What a proxy receives: the Services, Endpoints and Routes of the services
//! it calls, the Policies and Route of its own service (a Route's
//! `rate_limit` is kept by the callee's proxies), the Externals of its
//! namespace and their Policies (egress), and the MeshConfig.

use std::collections::BTreeSet;

use raftmesh_api::{Action, DiscoveryScope, Kind, Resource, Spec};
use raftmesh_storage::StateReader;

/// A service, by namespace and name.
pub type ServiceId = (String, String);

/// Who may care about a resource, for the hub's index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Interest {
    /// Proxies that call this service.
    Callers(ServiceId),
    /// Proxies of this service.
    Members(ServiceId),
    /// Proxies that call this service, and its own.
    CallersAndMembers(ServiceId),
    /// Every proxy of this namespace.
    Namespace(String),
    /// Every proxy.
    Everyone,
    /// No proxy.
    Nobody,
}

/// Who may care about `r`.
pub fn interest(r: &Resource) -> Interest {
    let ns = r.metadata.namespace.clone();
    match &r.spec {
        Spec::Service(_) => Interest::Callers((ns, r.metadata.name.clone())),
        Spec::Endpoint(e) => Interest::Callers((ns, e.service.clone())),
        Spec::Route(x) => Interest::CallersAndMembers((ns, x.service.clone())),
        // Egress: kept by every proxy of the namespace (their outbound).
        Spec::External(_) => Interest::Namespace(ns),
        Spec::Policy(p) if p.external => Interest::Namespace(ns),
        Spec::Policy(p) => Interest::Members((ns, p.service.clone())),
        // An import is reached as `service.namespace.peer`, or through a
        // Route's failover: its callers are the local service's.
        Spec::Import(i) => Interest::Callers((ns, i.service.clone())),
        // A token not exchanged yet is nothing a proxy can use.
        Spec::Peer(p) if p.pending() => Interest::Nobody,
        // Peers' trust domains and bundles (the credential scrubbed, see
        // `for_proxy`) verify callers and gateways of other clusters;
        // exports tell callees and gateways what peers may reach.
        Spec::MeshConfig(_) | Spec::Revocation(_) | Spec::Peer(_) | Spec::Export(_) => {
            Interest::Everyone
        }
        _ => Interest::Nobody,
    }
}

/// `r` as a proxy receives it: a Peer without its credential, token secret
/// hash and server CA (proxies need its trust domain and bundle; its
/// addresses stay, as a Peer must have them).
pub fn for_proxy(r: &Resource) -> Resource {
    let mut r = r.clone();
    if let Spec::Peer(p) = &mut r.spec {
        p.credential.clear();
        p.secret_sha256.clear();
        p.server_ca_pem.clear();
    }
    r
}

/// One proxy's scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// The proxy's own service.
    pub own: ServiceId,
    /// The services it calls.
    pub calls: BTreeSet<ServiceId>,
}

/// Most services one proxy may subscribe to.
pub const MAX_SUBSCRIPTIONS: usize = 1_000;

impl Scope {
    /// Whether the proxy receives `r`.
    pub fn wants(&self, r: &Resource) -> bool {
        match interest(r) {
            Interest::Callers(s) => self.calls.contains(&s),
            Interest::Members(s) => s == self.own,
            Interest::CallersAndMembers(s) => s == self.own || self.calls.contains(&s),
            Interest::Namespace(ns) => ns == self.own.0,
            Interest::Everyone => true,
            Interest::Nobody => false,
        }
    }
}

/// Whether a proxy of service `own` with identity `who` may subscribe to
/// `target`: a service of its own namespace; of another only when the
/// MeshConfig's `discovery_scope` is `mesh`, or an allow Policy of that
/// service covers `who` (it may call it, so it may find it).
pub fn may_subscribe(reader: &StateReader, own: &ServiceId, who: &str, target: &ServiceId) -> bool {
    if target.0 == own.0 {
        return true;
    }
    reader.view(|v| {
        let mesh_wide = v.of_kind(Kind::MeshConfig).iter().any(|r| {
            matches!(&r.spec, Spec::MeshConfig(m) if m.discovery_scope == Some(DiscoveryScope::Mesh))
        });
        mesh_wide
            || v.for_service(Kind::Policy, &target.0, &target.1)
                .iter()
                .any(|r| matches!(&r.spec, Spec::Policy(p) if p.action == Action::Allow && p.covers(Some(who))))
    })
}

/// Why a subscription across namespaces is refused.
pub fn denied_message(who: &str, target: &ServiceId) -> String {
    format!(
        "subscription \"{}.{}\" refused: {who} may not discover services of namespace {} \
         (an allow Policy of that service for it, or MeshConfig discovery_scope: mesh, opens it)",
        target.1, target.0, target.0
    )
}

/// Parses a subscription, `name` or `name.namespace`, relative to the
/// proxy's namespace.
pub fn parse_subscription(s: &str, default_ns: &str) -> Result<ServiceId, BadSubscription> {
    let (name, ns) = match s.split_once('.') {
        Some((n, ns)) => (n, ns),
        None => (s, default_ns),
    };
    let bad = |part: &'static str, rule: String| BadSubscription {
        // Never echo a huge value.
        subscription: s.chars().take(256).collect(),
        part,
        rule,
    };
    raftmesh_api::validate::dns_label(name).map_err(|e| bad("", e))?;
    raftmesh_api::validate::dns_label(ns).map_err(|e| bad("namespace ", e))?;
    Ok((ns.to_string(), name.to_string()))
}

/// A subscription that does not name a service.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("subscription \"{subscription}\": {part}{rule}")]
pub struct BadSubscription {
    /// What the proxy sent.
    pub subscription: String,
    /// Which part is wrong (`""` for the name, `"namespace "`).
    pub part: &'static str,
    /// The rule it breaks.
    pub rule: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(y: &str) -> Resource {
        serde_yaml_ng::from_str(y).unwrap()
    }

    #[test]
    fn a_proxy_wants_what_it_calls_its_own_policies_and_the_mesh_config() {
        let scope = Scope {
            own: ("default".into(), "web".into()),
            calls: [("default".into(), "api".into())].into_iter().collect(),
        };
        assert!(scope.wants(&doc("kind: Service\nmetadata: {name: api}\nspec: {}")));
        assert!(!scope.wants(&doc("kind: Service\nmetadata: {name: db}\nspec: {}")));
        assert!(!scope.wants(&doc(
            "kind: Service\nmetadata: {name: api, namespace: prod}\nspec: {}"
        )));
        assert!(scope.wants(&doc(
            "kind: Endpoint\nmetadata: {name: api-1}\nspec: {service: api, address: 10.0.0.1, port: 80}"
        )));
        assert!(scope.wants(&doc(
            "kind: Route\nmetadata: {name: r}\nspec: {service: api}"
        )));
        assert!(scope.wants(&doc(
            "kind: Policy\nmetadata: {name: p}\nspec: {service: web}"
        )));
        assert!(!scope.wants(&doc(
            "kind: Policy\nmetadata: {name: p}\nspec: {service: api}"
        )));
        // Its own service's Route (a rate limit), not another's it does
        // not call.
        assert!(scope.wants(&doc(
            "kind: Route\nmetadata: {name: w}\nspec: {service: web}"
        )));
        assert!(!scope.wants(&doc(
            "kind: Route\nmetadata: {name: d}\nspec: {service: db}"
        )));
        // Egress: its namespace's Externals and the Policies on them, not
        // another namespace's.
        assert!(scope.wants(&doc(
            "kind: External\nmetadata: {name: stripe}\nspec: {hosts: [api.stripe.com]}"
        )));
        assert!(scope.wants(&doc(
            "kind: Policy\nmetadata: {name: p}\nspec: {service: stripe, external: true}"
        )));
        assert!(!scope.wants(&doc(
            "kind: External\nmetadata: {name: stripe, namespace: prod}\nspec: {hosts: [api.stripe.com]}"
        )));
        assert!(!scope.wants(&doc(
            "kind: Policy\nmetadata: {name: p, namespace: prod}\nspec: {service: stripe, external: true}"
        )));
        assert!(scope.wants(&doc("kind: MeshConfig\nmetadata: {name: mesh}\nspec: {}")));
        assert!(!scope.wants(&doc(&format!(
            "kind: Token\nmetadata: {{name: t}}\nspec: {{secret_sha256: {}, role: admin, created_at_ms: 1}}",
            "0".repeat(64)
        ))));
    }

    #[test]
    fn subscriptions_parse_with_an_optional_namespace() {
        assert_eq!(
            parse_subscription("api", "default").unwrap(),
            ("default".into(), "api".into())
        );
        assert_eq!(
            parse_subscription("api.prod", "default").unwrap(),
            ("prod".into(), "api".into())
        );
        assert!(parse_subscription("API", "default").is_err());
        assert!(parse_subscription("a.b.c", "default").is_err());
    }
}
