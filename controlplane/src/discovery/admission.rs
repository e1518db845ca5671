//! Admission: a stream's first message, `Hello`, validated field by field
//! (nothing a stranger sends is trusted), and the proxy's proof of who it
//! is — a bootstrap token the first time (`tokens`), its certificate and
//! proof of key possession after that (`ca`). A node behind the proxy's
//! revision catches up first, so a proxy is never handed an older view
//! than it holds.

use std::collections::BTreeSet;
use std::net::IpAddr;

use raftmesh_api::v1 as pb;
use raftmesh_api::{EndpointSpec, Health, Metadata, Resource, Spec, DEFAULT_NAMESPACE};
use tonic::Status;

use super::scope::{denied_message, may_subscribe, parse_subscription, Scope, MAX_SUBSCRIPTIONS};
use super::session::ProxyInfo;
use super::Ctx;
use crate::ca::{self, IdentityError};
use crate::procinfo::unix_ms;
use crate::tokens::{self, BootstrapError, TokenError};

/// A validated Hello.
pub(super) struct Admitted {
    pub(super) info: ProxyInfo,
    pub(super) scope: Scope,
    pub(super) endpoint: Option<Resource>,
    pub(super) last_revision: u64,
    pub(super) ready: bool,
    pub(super) csr_pem: String,
    /// Subscriptions of the Hello refused, one error each (told once the
    /// stream is open).
    pub(super) refused: Vec<pb::StreamError>,
}

fn invalid(field: &str, why: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("hello.{field}: {why}"))
}

fn check_hello(h: &pb::Hello, node_id: u64) -> Result<Admitted, Status> {
    let namespace = if h.namespace.is_empty() {
        DEFAULT_NAMESPACE.to_string()
    } else {
        h.namespace.clone()
    };
    raftmesh_api::validate::dns_label(&h.service).map_err(|e| invalid("service", e))?;
    raftmesh_api::validate::dns_label(&namespace).map_err(|e| invalid("namespace", e))?;
    raftmesh_api::validate::dns_label(&h.instance).map_err(|e| invalid("instance", e))?;
    if h.subscriptions.len() > MAX_SUBSCRIPTIONS {
        return Err(invalid(
            "subscriptions",
            format!(
                "{} listed, at most {MAX_SUBSCRIPTIONS}",
                h.subscriptions.len()
            ),
        ));
    }
    // A bad name is refused on its own (told after admission), never the
    // whole stream: a proxy that saved one would otherwise never reconnect.
    let mut calls = BTreeSet::new();
    let mut refused = Vec::new();
    for s in &h.subscriptions {
        match parse_subscription(s, &namespace) {
            Ok(id) => {
                calls.insert(id);
            }
            Err(e) => refused.push(pb::StreamError {
                code: "bad-subscription".into(),
                message: e.to_string(),
            }),
        }
    }
    let endpoint = if h.port == 0 {
        None
    } else {
        let r = Resource {
            metadata: Metadata {
                name: h.instance.clone(),
                namespace: namespace.clone(),
                revision: None,
            },
            spec: Spec::Endpoint(EndpointSpec {
                service: h.service.clone(),
                address: if h.address.is_empty() {
                    "127.0.0.1".into()
                } else {
                    h.address.clone()
                },
                port: h.port,
                labels: h.labels.clone(),
                cluster: h.cluster.clone(),
                locality: h.locality.clone(),
                health: if h.ready {
                    Health::Healthy
                } else {
                    Health::Unhealthy
                },
                identity: h.identity.clone(),
                lease_node: Some(node_id),
                gateway: h.gateway,
            }),
        };
        r.validate()
            .map_err(|e| Status::invalid_argument(format!("hello: {e}")))?;
        if let Spec::Endpoint(e) = &r.spec {
            if e.address.parse::<IpAddr>().is_err()
                && raftmesh_api::validate::dns_subdomain(&e.address).is_err()
            {
                return Err(invalid("address", "not an IP address or DNS name"));
            }
        }
        Some(r)
    };
    Ok(Admitted {
        info: ProxyInfo {
            instance: h.instance.clone(),
            service: h.service.clone(),
            namespace: namespace.clone(),
            node_id,
            connected_since_ms: unix_ms(),
        },
        scope: Scope {
            own: (namespace, h.service.clone()),
            calls,
        },
        endpoint,
        last_revision: h.last_revision,
        ready: h.ready,
        csr_pem: h.csr_pem.clone(),
        refused,
    })
}

/// How a refused identity looks to the proxy (the one mapping at this edge).
pub(super) fn identity_status(e: IdentityError) -> Status {
    match e {
        IdentityError::NotReady | IdentityError::Sealed(_) => Status::unavailable(e.to_string()),
        IdentityError::Refused(_) | IdentityError::Proof(_) => {
            Status::unauthenticated(e.to_string())
        }
        IdentityError::WrongIdentity { .. } => Status::permission_denied(e.to_string()),
        IdentityError::Issue(_) => Status::invalid_argument(e.to_string()),
    }
}

/// How a refused bootstrap token looks to the proxy.
fn token_status(e: TokenError) -> Status {
    match e {
        TokenError::Refused(BootstrapError::Missing | BootstrapError::Unknown) => {
            Status::unauthenticated(e.to_string())
        }
        TokenError::Cluster(_) => Status::unavailable(e.to_string()),
        _ => Status::permission_denied(e.to_string()),
    }
}

impl Ctx {
    /// Admits a proxy: its Hello is valid and it proved who it is.
    pub(super) async fn admit(&self, h: &pb::Hello) -> Result<Admitted, Status> {
        let mut a = check_hello(h, self.ops.id())?;
        let td = crate::meshconfig::trust_domain(&self.reader, self.cluster_name());
        if let Some(Resource {
            spec: Spec::Endpoint(e),
            ..
        }) = &mut a.endpoint
        {
            e.identity = raftmesh_api::spiffe_id(&td, &a.info.namespace, &a.info.service);
        }
        let who = raftmesh_api::spiffe_id(&td, &a.info.namespace, &a.info.service);
        // A revoked identity or instance is not admitted.
        if let Some(why) =
            crate::revocation::revoked(&self.reader, &who, &a.info.namespace, &a.info.instance)
        {
            return Err(Status::permission_denied(why));
        }
        // Only services its identity may call (its namespace's by default).
        let own = a.scope.own.clone();
        let denied: Vec<_> = a
            .scope
            .calls
            .iter()
            .filter(|t| !may_subscribe(&self.reader, &own, &who, t))
            .cloned()
            .collect();
        for t in denied {
            a.scope.calls.remove(&t);
            a.refused.push(pb::StreamError {
                code: "subscription-denied".into(),
                message: denied_message(&who, &t),
            });
        }
        if !h.certificate_pem.is_empty() {
            // A proxy that holds a certificate proves who it is with it,
            // over a nonce of this node's that it can use once.
            let now = unix_ms();
            self.challenges
                .check(&h.proof_nonce, now)
                .map_err(|e| Status::unauthenticated(e.to_string()))?;
            ca::check_certificate(
                &self.reader,
                self.cluster_name(),
                h,
                &a.info.service,
                &a.info.namespace,
                now,
            )
            .map_err(identity_status)?;
            self.challenges
                .spend(&h.proof_nonce, now)
                .map_err(|e| Status::unauthenticated(e.to_string()))?;
        } else {
            tokens::admit_bootstrap(&self.ops, &h.token, &a.info.service, &a.info.namespace)
                .await
                .map_err(token_status)?;
        }
        // Its Endpoint replaces only one its own identity registered.
        if let Some(ep) = &a.endpoint {
            if let Some(cur) = self.reader.get(&ep.key()).1 {
                if !super::registration::owned_by(&cur, &who) {
                    return Err(Status::permission_denied(super::registration::not_owned(
                        &cur,
                    )));
                }
            }
        }
        self.caught_up(a).await
    }

    /// Never hand a proxy an older view than it holds.
    async fn caught_up(&self, a: Admitted) -> Result<Admitted, Status> {
        if a.last_revision > self.reader.applied_revision() {
            self.ops
                .wait_applied(a.last_revision, self.cfg.catch_up_timeout)
                .await
                .map_err(|_| {
                    Status::unavailable(format!(
                        "node {} has applied revision {}, behind the proxy's {}; try another node",
                        self.ops.id(),
                        self.reader.applied_revision(),
                        a.last_revision
                    ))
                })?;
        }
        Ok(a)
    }
}
