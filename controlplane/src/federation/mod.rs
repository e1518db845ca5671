//! Federation between clusters (ADR 0004, `docs/federation.md`): peering
//! tokens and their one-time exchange for the link's credential, the
//! `Federation` gRPC service an exporter serves, the importer's link
//! (`link.rs`), and what is exported to a peer (`exports.rs`).
//!
//! A peering is a `Peer` resource on each side. The side that generates a
//! token holds it *pending* (the SHA-256 of the token's secret, an expiry);
//! the side that establishes calls `Exchange` with the secret, and both
//! sides end up *established*, holding the same credential sealed under
//! their own cluster secret. Every later call between them carries it.

pub mod exports;
pub mod link;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use raftmesh_api::v1 as pb;
use raftmesh_api::{Kind, Metadata, PeerSpec, Resource, ResourceKey, Spec, DEFAULT_NAMESPACE};
use raftmesh_storage::{Command, StateReader};
use serde::{Deserialize, Serialize};
use tonic::{Request, Response, Status};

use crate::admin::AdminError;
use crate::cluster::ClusterOps;
use crate::cluster::{Change, UpdateError, Updated};
use crate::procinfo::unix_ms;
use crate::tokens::{hash_secret, new_secret};

/// How long a peering token is valid unless asked otherwise.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(15 * 60);
/// The metadata header a peer names itself in.
pub const PEER_HEADER: &str = "x-raftmesh-peer";

/// What a peering token carries (base64url of this JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeeringToken {
    /// Format version (1).
    pub v: u32,
    /// The name the generating cluster gives the establishing one.
    pub peer: String,
    /// The generating cluster's meshd addresses.
    pub addresses: Vec<String>,
    /// The CA that verifies them (empty: they serve plaintext).
    #[serde(default)]
    pub server_ca_pem: String,
    /// The generating cluster's trust domain and workload trust bundle.
    pub trust_domain: String,
    /// Its workload roots (PEM).
    pub trust_bundle_pem: Vec<String>,
    /// The one-time secret.
    pub secret: String,
    /// Unix milliseconds after which it is refused.
    pub expires_at_ms: u64,
}

impl PeeringToken {
    /// The text a user copies.
    pub fn encode(&self) -> String {
        // Serializing a struct of strings cannot fail.
        let json = serde_json::to_vec(self).unwrap_or_default();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
    }

    /// Reads and checks a token; the error says what is wrong with it.
    pub fn decode(text: &str, now_ms: u64) -> Result<Self, String> {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text.trim())
            .map_err(|e| format!("the peering token is not base64url ({e}); copy the whole last line `meshctl peering generate-token` printed"))?;
        let t: Self = serde_json::from_slice(&bytes)
            .map_err(|e| format!("the peering token is not one meshctl made: {e}"))?;
        if t.v != 1 {
            return Err(format!(
                "peering token version {} is not supported (1 is)",
                t.v
            ));
        }
        if t.expires_at_ms <= now_ms {
            return Err(
                "the peering token has expired; generate a new one on the other cluster".into(),
            );
        }
        raftmesh_api::validate::dns_label(&t.peer)
            .map_err(|e| format!("the peering token's peer name: {e}"))?;
        raftmesh_api::validate::dns_subdomain(&t.trust_domain)
            .map_err(|e| format!("the peering token's trust domain: {e}"))?;
        if t.addresses.is_empty()
            || !t
                .addresses
                .iter()
                .all(|a| raftmesh_api::validate::host_port(a))
        {
            return Err("the peering token's addresses must be HOST:PORT, at least one".into());
        }
        check_pems(&t.trust_bundle_pem, "trust bundle")?;
        if !t.server_ca_pem.is_empty() {
            check_pems(std::slice::from_ref(&t.server_ca_pem), "server CA")?;
        }
        Ok(t)
    }
}

/// Every PEM parses as at least one X.509 certificate.
fn check_pems(pems: &[String], what: &str) -> Result<(), String> {
    if pems.is_empty() {
        return Err(format!("the {what} is empty"));
    }
    for p in pems {
        let (_, pem) = x509_parser::pem::parse_x509_pem(p.as_bytes())
            .map_err(|e| format!("the {what} is not PEM: {e}"))?;
        pem.parse_x509()
            .map_err(|e| format!("the {what} is not an X.509 certificate: {e}"))?;
    }
    Ok(())
}

/// The peer key of `name`.
pub fn peer_key(name: &str) -> ResourceKey {
    ResourceKey::new(Kind::Peer, DEFAULT_NAMESPACE, name)
}

/// The Peer `name`, if stored.
pub fn peer(reader: &StateReader, name: &str) -> Option<(Arc<Resource>, PeerSpec)> {
    let r = reader.get(&peer_key(name)).1?;
    match &r.spec {
        Spec::Peer(p) => Some((r.clone(), p.clone())),
        _ => None,
    }
}

/// The sealing context of a peer's credential (bound to its name).
fn seal_context(name: &str) -> String {
    format!("peer/{name}")
}

/// What the federation parts of a node share.
pub struct Federation {
    pub(crate) ops: Arc<ClusterOps>,
    pub(crate) cluster_name: String,
    /// This cluster's server CA, for tokens (none: plaintext).
    pub(crate) server_ca_pem: Option<String>,
    /// The links this node runs, and their state.
    pub links: link::LinkTable,
    /// Set when the node stops: watch streams end with it.
    pub(crate) shutdown: tokio::sync::watch::Receiver<bool>,
}

impl Federation {
    /// Federation over a node's cluster.
    pub fn new(
        ops: Arc<ClusterOps>,
        cluster_name: String,
        server_ca_pem: Option<String>,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Arc<Self> {
        Arc::new(Self {
            ops,
            cluster_name,
            server_ca_pem,
            links: Default::default(),
            shutdown,
        })
    }

    fn reader(&self) -> &StateReader {
        self.ops.reader()
    }

    /// This cluster's trust domain.
    pub fn trust_domain(&self) -> String {
        crate::meshconfig::trust_domain(self.reader(), &self.cluster_name)
    }

    /// This cluster's workload roots.
    pub fn trust_bundle(&self) -> Vec<String> {
        crate::ca::authority(self.reader())
            .map(|(_, ca)| crate::ca::crypto::bundle(&ca))
            .unwrap_or_default()
    }

    /// This cluster's meshd addresses (its members').
    pub fn addresses(&self) -> Vec<String> {
        self.reader()
            .membership()
            .membership()
            .nodes()
            .map(|(_, n)| n.addr.clone())
            .collect()
    }

    /// `meshctl peering generate-token`: stores `peer` pending and answers
    /// the token. A pending peer is replaced (its old token stops
    /// working); an established one must be deleted first.
    pub async fn generate_token(
        &self,
        peer_name: &str,
        ttl: Option<Duration>,
    ) -> Result<(String, u64), AdminError> {
        raftmesh_api::validate::dns_label(peer_name)
            .map_err(|e| AdminError::Invalid(format!("peer name: {e}")))?;
        let bundle = self.trust_bundle();
        if bundle.is_empty() {
            return Err(AdminError::Conflict(
                "the workload CA does not exist yet; retry in a moment".into(),
            ));
        }
        let ttl = ttl.unwrap_or(DEFAULT_TOKEN_TTL);
        let secret = new_secret();
        let expires_at_ms =
            unix_ms().saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
        let new = Resource {
            metadata: Metadata::named(peer_name),
            spec: Spec::Peer(PeerSpec {
                secret_sha256: hash_secret(&secret),
                expires_at_ms,
                ..Default::default()
            }),
        };
        let r = self
            .ops
            .update(&peer_key(peer_name), 3, |cur| match cur.map(|r| &r.spec) {
                Some(Spec::Peer(p)) if !p.pending() => Change::Refuse(AdminError::Conflict(format!(
                    "peer {peer_name} is already established; delete it first (`meshctl peering delete {peer_name}`)"
                ))),
                _ => Change::Put(new.clone()),
            })
            .await;
        written(r)?;
        let token = PeeringToken {
            v: 1,
            peer: peer_name.to_string(),
            addresses: self.addresses(),
            server_ca_pem: self.server_ca_pem.clone().unwrap_or_default(),
            trust_domain: self.trust_domain(),
            trust_bundle_pem: bundle,
            secret,
            expires_at_ms,
        };
        Ok((token.encode(), expires_at_ms))
    }

    /// `meshctl peering establish`: exchanges the token's secret with the
    /// cluster that made it and stores the peering.
    pub async fn establish(&self, peer_name: &str, token: &str) -> Result<u64, AdminError> {
        raftmesh_api::validate::dns_label(peer_name)
            .map_err(|e| AdminError::Invalid(format!("peer name: {e}")))?;
        let t = PeeringToken::decode(token, unix_ms()).map_err(AdminError::Invalid)?;
        let own_td = self.trust_domain();
        self.check_trust_domain(peer_name, &t.trust_domain, &own_td)?;
        if peer(self.reader(), peer_name).is_some() {
            return Err(AdminError::Conflict(format!(
                "peer {peer_name} exists already; delete it first (`meshctl peering delete {peer_name}`)"
            )));
        }
        let req = pb::ExchangeRequest {
            secret: t.secret.clone(),
            peer: t.peer.clone(),
            trust_domain: own_td,
            trust_bundle_pem: self.trust_bundle(),
            server_ca_pem: self.server_ca_pem.clone().unwrap_or_default(),
            addresses: self.addresses(),
            name_at_peer: peer_name.to_string(),
        };
        let credential = link::exchange(&t.addresses, &t.server_ca_pem, req)
            .await
            .map_err(AdminError::Invalid)?;
        let new = Resource {
            metadata: Metadata::named(peer_name),
            spec: Spec::Peer(PeerSpec {
                addresses: t.addresses,
                trust_domain: t.trust_domain,
                root_ca_pem: t.trust_bundle_pem.concat(),
                server_ca_pem: t.server_ca_pem,
                name_at_peer: t.peer,
                credential: self.ops.kek().seal(&seal_context(peer_name), &credential),
                ..Default::default()
            }),
        };
        let r = self
            .ops
            .update(&peer_key(peer_name), 1, |_| {
                Change::<AdminError>::Put(new.clone())
            })
            .await;
        written(r)
    }

    /// A peer's trust domain must not be this cluster's or another
    /// peer's: identities of two clusters would be confused.
    fn check_trust_domain(&self, name: &str, td: &str, own: &str) -> Result<(), AdminError> {
        if td == own {
            return Err(AdminError::Invalid(format!(
                "the peer's trust domain {td} is this cluster's own; give one of the clusters another trust domain (MeshConfig trust_domain) before peering"
            )));
        }
        let (_, peers) = self.reader().list(Some(Kind::Peer), None);
        for r in peers {
            if let Spec::Peer(p) = &r.spec {
                if r.metadata.name != name && p.trust_domain == td {
                    return Err(AdminError::Invalid(format!(
                        "trust domain {td} is peer {}'s already",
                        r.metadata.name
                    )));
                }
            }
        }
        Ok(())
    }

    /// The exporter's side of `Exchange`: spends the pending peer's secret
    /// (compare-and-set, so it works once) and stores the peering.
    pub async fn serve_exchange(&self, req: pb::ExchangeRequest) -> Result<String, Status> {
        let name = req.peer.clone();
        raftmesh_api::validate::dns_label(&name)
            .map_err(|e| Status::invalid_argument(format!("peer: {e}")))?;
        let bad = || {
            Status::permission_denied("the peering token is not valid here (unknown, used, or expired); generate a new one")
        };
        let (_, cur) = peer(self.reader(), &name).ok_or_else(bad)?;
        if !cur.pending() || !crate::tokens::hash_eq(&cur.secret_sha256, &hash_secret(&req.secret))
        {
            return Err(bad());
        }
        if cur.expires_at_ms <= unix_ms() {
            return Err(bad());
        }
        let own = self.trust_domain();
        self.check_trust_domain(&name, &req.trust_domain, &own)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        check_pems(&req.trust_bundle_pem, "trust bundle").map_err(Status::invalid_argument)?;
        if !req.server_ca_pem.is_empty() {
            check_pems(std::slice::from_ref(&req.server_ca_pem), "server CA")
                .map_err(Status::invalid_argument)?;
        }
        raftmesh_api::validate::dns_label(&req.name_at_peer)
            .map_err(|e| Status::invalid_argument(format!("name_at_peer: {e}")))?;
        let credential = new_secret();
        let new = Resource {
            metadata: Metadata::named(name.clone()),
            spec: Spec::Peer(PeerSpec {
                addresses: req.addresses,
                trust_domain: req.trust_domain,
                root_ca_pem: req.trust_bundle_pem.concat(),
                server_ca_pem: req.server_ca_pem,
                name_at_peer: req.name_at_peer,
                credential: self.ops.kek().seal(&seal_context(&name), &credential),
                ..Default::default()
            }),
        };
        new.validate()
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let secret_hash = cur.secret_sha256.clone();
        let r = self
            .ops
            .update(&peer_key(&name), 1, |c| match c.map(|r| &r.spec) {
                Some(Spec::Peer(p)) if p.pending() && p.secret_sha256 == secret_hash => {
                    Change::Put(new.clone())
                }
                _ => Change::Refuse(AdminError::Conflict("used".into())),
            })
            .await;
        match r {
            Ok(Updated::Written(_)) => Ok(credential),
            Ok(Updated::Kept(_))
            | Err(UpdateError::Refused(_))
            | Err(UpdateError::Conflict { .. }) => Err(bad()),
            Err(UpdateError::Cluster(e)) => Err(Status::unavailable(e.to_string())),
        }
    }

    /// Which established peer a federation call comes from: it names
    /// itself in [`PEER_HEADER`] and presents the credential as a bearer
    /// token; anything else is refused.
    pub fn authenticate<T>(&self, req: &Request<T>) -> Result<String, Status> {
        let denied = || {
            Status::unauthenticated("not a peer of this cluster (unknown peer or wrong credential)")
        };
        let name = req
            .metadata()
            .get(PEER_HEADER)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(denied)?
            .to_string();
        let presented = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(denied)?;
        let (_, p) = peer(self.reader(), &name).ok_or_else(denied)?;
        if p.pending() || p.credential.is_empty() {
            return Err(denied());
        }
        let stored = self
            .ops
            .kek()
            .open(&seal_context(&name), &p.credential)
            .map_err(|e| {
                Status::unavailable(format!("this node cannot open the peering credential: {e}"))
            })?;
        if !crate::tokens::hash_eq(&hash_secret(&stored), &hash_secret(presented)) {
            return Err(denied());
        }
        Ok(name)
    }

    /// The credential of an established peer, opened.
    pub fn credential(&self, name: &str, p: &PeerSpec) -> Result<String, String> {
        self.ops
            .kek()
            .open(&seal_context(name), &p.credential)
            .map_err(|e| e.to_string())
    }

    /// Removes peer `name` and everything imported from it, in one write.
    pub async fn remove_peer(&self, name: &str) -> Result<u64, AdminError> {
        let (_, imports) = self.reader().list(Some(Kind::Import), None);
        let mut cmds = vec![Command::Delete {
            key: peer_key(name),
            expected_revision: None,
        }];
        for r in imports {
            if matches!(&r.spec, Spec::Import(i) if i.peer == name) {
                cmds.push(Command::Delete {
                    key: r.key(),
                    expected_revision: None,
                });
            }
        }
        let resp = self.ops.write(Command::Batch(cmds)).await?;
        Ok(resp.revision)
    }

    /// `meshctl peering delete`: tells the peer (when it can be reached;
    /// the local delete never waits for it) and removes the peering here.
    pub async fn delete(&self, name: &str) -> Result<(u64, bool), AdminError> {
        let (_, p) = peer(self.reader(), name)
            .ok_or_else(|| AdminError::NotFound(format!("no peer {name}")))?;
        let told = if p.pending() {
            false
        } else {
            match self.credential(name, &p) {
                Ok(cred) => link::forget(&p, &cred).await.is_ok(),
                Err(_) => false,
            }
        };
        let rev = self.remove_peer(name).await?;
        Ok((rev, told))
    }

    /// `meshctl peering list`.
    pub fn list(&self) -> Vec<pb::PeeringStatus> {
        let (_, peers) = self.reader().list(Some(Kind::Peer), None);
        let (_, imports) = self.reader().list(Some(Kind::Import), None);
        let links = self.links.snapshot();
        peers
            .iter()
            .filter_map(|r| match &r.spec {
                Spec::Peer(p) => Some((r.metadata.name.clone(), p)),
                _ => None,
            })
            .map(|(name, p)| {
                let live = links.get(&name);
                pb::PeeringStatus {
                    state: match (p.pending(), live) {
                        (true, _) => "pending".into(),
                        (false, Some(l)) if l.connected => "connected".into(),
                        (false, Some(_)) => "connecting".into(),
                        (false, None) => "established".into(),
                    },
                    trust_domain: p.trust_domain.clone(),
                    addresses: p.addresses.clone(),
                    imported_revision: p.imported_revision,
                    peer_revision: live.map(|l| l.peer_revision).unwrap_or(0),
                    last_contact_ms: live.map(|l| l.last_contact_ms).unwrap_or(0),
                    imports: u32::try_from(
                        imports
                            .iter()
                            .filter(|i| matches!(&i.spec, Spec::Import(x) if x.peer == name))
                            .count(),
                    )
                    .unwrap_or(u32::MAX),
                    batches: live.map(|l| l.batches).unwrap_or(0),
                    full_batches: live.map(|l| l.full_batches).unwrap_or(0),
                    last_error: live.map(|l| l.last_error.clone()).unwrap_or_default(),
                    connects: live.map(|l| l.connects).unwrap_or(0),
                    name,
                }
            })
            .collect()
    }
}

fn written(r: Result<Updated, UpdateError<AdminError>>) -> Result<u64, AdminError> {
    match r {
        Ok(Updated::Written(rev)) => Ok(rev),
        Ok(Updated::Kept(_)) => Err(AdminError::Conflict("nothing was written".into())),
        Err(UpdateError::Refused(e)) => Err(e),
        Err(UpdateError::Conflict { key, .. }) => Err(AdminError::Conflict(format!(
            "{key} changed meanwhile; try again"
        ))),
        Err(UpdateError::Cluster(e)) => Err(e.into()),
    }
}

/// The `Federation` gRPC service of one node.
pub struct FederationService(pub Arc<Federation>);

type BatchStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::ExportBatch, Status>> + Send>>;

#[tonic::async_trait]
impl pb::federation_server::Federation for FederationService {
    type WatchStream = BatchStream;

    async fn exchange(
        &self,
        req: Request<pb::ExchangeRequest>,
    ) -> Result<Response<pb::ExchangeResponse>, Status> {
        let credential = self.0.serve_exchange(req.into_inner()).await?;
        Ok(Response::new(pb::ExchangeResponse { credential }))
    }

    async fn watch(
        &self,
        req: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let name = self.0.authenticate(&req)?;
        let from = req.into_inner().from_revision;
        Ok(Response::new(exports::watch(self.0.clone(), name, from)))
    }

    async fn forget(
        &self,
        req: Request<pb::ForgetRequest>,
    ) -> Result<Response<pb::ForgetResponse>, Status> {
        let name = self.0.authenticate(&req)?;
        tracing::info!(peer = %name, "the peer deleted the peering; removing it here");
        self.0
            .remove_peer(&name)
            .await
            .map_err(crate::admin::status)?;
        Ok(Response::new(pb::ForgetResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> PeeringToken {
        let ca = rcgen::generate_simple_self_signed(vec!["x".into()]).unwrap();
        PeeringToken {
            v: 1,
            peer: "east".into(),
            addresses: vec!["127.0.0.1:7100".into()],
            server_ca_pem: String::new(),
            trust_domain: "west.mesh".into(),
            trust_bundle_pem: vec![ca.cert.pem()],
            secret: "rmt_x".into(),
            expires_at_ms: 2_000,
        }
    }

    #[test]
    fn a_token_round_trips_and_bad_ones_are_refused_naming_what_is_wrong() {
        let t = token();
        assert_eq!(PeeringToken::decode(&t.encode(), 1_000).unwrap(), t);
        let e = PeeringToken::decode(&t.encode(), 2_000).unwrap_err();
        assert!(e.contains("expired"), "{e}");
        let e = PeeringToken::decode("not a token!", 1_000).unwrap_err();
        assert!(e.contains("base64url"), "{e}");
        let e = PeeringToken::decode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b"{\"v\":1}"),
            1_000,
        )
        .unwrap_err();
        assert!(e.contains("not one meshctl made"), "{e}");
        for (f, want) in [
            (
                Box::new(|t: &mut PeeringToken| t.addresses = vec!["nope".into()])
                    as Box<dyn Fn(&mut PeeringToken)>,
                "addresses",
            ),
            (
                Box::new(|t: &mut PeeringToken| t.trust_bundle_pem = vec!["junk".into()]),
                "trust bundle",
            ),
            (
                Box::new(|t: &mut PeeringToken| t.trust_domain = "Bad Domain".into()),
                "trust domain",
            ),
            (
                Box::new(|t: &mut PeeringToken| t.peer = "a.b".into()),
                "peer name",
            ),
            (Box::new(|t: &mut PeeringToken| t.v = 2), "version"),
        ] {
            let mut bad = token();
            f(&mut bad);
            let e = PeeringToken::decode(&bad.encode(), 1_000).unwrap_err();
            assert!(e.contains(want), "{want}: {e}");
        }
    }
}
