//! What a proxy receives: the Services, Endpoints and Routes of the services
//! it calls, the Policies of its own service, and the MeshConfig.

use std::collections::BTreeSet;

use raftmesh_api::{Resource, Spec};

/// A service, by namespace and name.
pub type ServiceId = (String, String);

/// Who may care about a resource, for the hub's index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Interest {
    /// Proxies that call this service.
    Callers(ServiceId),
    /// Proxies of this service.
    Members(ServiceId),
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
        Spec::Route(x) => Interest::Callers((ns, x.service.clone())),
        Spec::Policy(p) => Interest::Members((ns, p.service.clone())),
        Spec::MeshConfig(_) => Interest::Everyone,
        _ => Interest::Nobody,
    }
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
            Interest::Everyone => true,
            Interest::Nobody => false,
        }
    }
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
