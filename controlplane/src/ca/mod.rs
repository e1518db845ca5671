//! The workload CA's life in the cluster: created once by the first leader,
//! kept in the replicated state (the `Authority/workload-ca` resource, so
//! any node can sign), rotated with an overlap, and used on the discovery
//! stream to issue certificates from proxies' CSRs, to check the
//! certificates proxies reconnect with, and to send trust bundles.
//!
//! The cryptography itself is in [`crypto`]. The names it gives are chosen
//! here from the checked token or certificate, never from the CSR. The
//! CA key is stored sealed under the cluster secret ([`seal`]).

pub mod crypto;
pub mod seal;

use std::sync::Arc;
use std::time::Duration;

use raftmesh_api::identity::CA_NAME;
use raftmesh_api::v1 as pb;
use raftmesh_api::{
    AuthoritySpec, CaRoot, Kind, Metadata, Resource, ResourceKey, Spec, DEFAULT_NAMESPACE,
};
use raftmesh_storage::StateReader;

pub use crypto::{new_root, CaError, ROOT_TTL};

use crate::cluster::{Change, ClusterError, ClusterOps, UpdateError, Updated};
use crate::meshconfig::{cert_ttl, trust_domain};
use crate::procinfo::unix_ms;

/// The key of the Authority resource.
pub fn ca_key() -> ResourceKey {
    ResourceKey::new(Kind::Authority, DEFAULT_NAMESPACE, CA_NAME)
}

/// The CA in force, if created yet.
pub fn authority(reader: &StateReader) -> Option<(Arc<Resource>, AuthoritySpec)> {
    let r = reader.get(&ca_key()).1?;
    match &r.spec {
        Spec::Authority(a) => {
            let a = a.clone();
            Some((r, a))
        }
        _ => None,
    }
}

/// Why a proxy's identity could not be checked or a certificate issued.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The first leader has not created the CA yet.
    #[error("the workload CA is not ready yet; retry")]
    NotReady,
    /// The certificate a proxy presented does not check out.
    #[error("certificate refused: {0}; start again with a bootstrap token")]
    Refused(#[source] CaError),
    /// The certificate is for another workload.
    #[error("the certificate is for {have}, not {want}")]
    WrongIdentity {
        /// Whom it names.
        have: String,
        /// Whom the proxy claims to be.
        want: String,
    },
    /// The proof of key possession does not check out.
    #[error("{0}")]
    Proof(#[source] CaError),
    /// The CSR could not be signed.
    #[error("{0}")]
    Issue(#[source] CaError),
    /// This node cannot open the CA key (another cluster secret).
    #[error("{0}; it serves everything but new certificates: try another node")]
    Sealed(#[source] seal::SealError),
}

/// Checks a Hello that presents a certificate instead of a token: it must
/// chain to the CA, name this workload, and come with proof of the key.
pub fn check_certificate(
    reader: &StateReader,
    cluster_name: &str,
    h: &pb::Hello,
    service: &str,
    namespace: &str,
    now_ms: u64,
) -> Result<(), IdentityError> {
    let (_, ca) = authority(reader).ok_or(IdentityError::NotReady)?;
    let have =
        crypto::verify_workload(&ca, &h.certificate_pem, now_ms).map_err(IdentityError::Refused)?;
    let want = raftmesh_api::spiffe_id(&trust_domain(reader, cluster_name), namespace, service);
    if have != want {
        return Err(IdentityError::WrongIdentity { have, want });
    }
    crypto::verify_proof(
        &h.certificate_pem,
        &h.instance,
        &h.proof_nonce,
        &h.csr_pem,
        &h.proof,
    )
    .map_err(IdentityError::Proof)
}

/// Issues a certificate for a CSR and packs it with the trust bundle.
pub fn certificate(
    reader: &StateReader,
    kek: &seal::Kek,
    cluster_name: &str,
    service: &str,
    namespace: &str,
    csr_pem: &str,
    now_ms: u64,
) -> Result<pb::CertificateResponse, IdentityError> {
    let (_, mut ca) = authority(reader).ok_or(IdentityError::NotReady)?;
    for r in ca.roots.iter_mut().filter(|r| r.signing) {
        r.key_pem = seal::key_pem(Some(kek), &r.id, &r.key_pem).map_err(|e| {
            tracing::error!(error = %e, "cannot sign a workload certificate");
            IdentityError::Sealed(e)
        })?;
    }
    let td = trust_domain(reader, cluster_name);
    let issued = crypto::issue(
        &ca,
        &td,
        namespace,
        service,
        csr_pem,
        cert_ttl(reader),
        now_ms,
    )
    .map_err(IdentityError::Issue)?;
    Ok(pb::CertificateResponse {
        certificate_pem: issued.cert_pem,
        trust_bundle_pem: crypto::bundle(&ca),
        expires_at_ms: issued.not_after_ms,
    })
}

/// The trust bundle alone (sent when the CA's roots change).
pub fn bundle_only(reader: &StateReader) -> Option<pb::CertificateResponse> {
    let (_, ca) = authority(reader)?;
    Some(pb::CertificateResponse {
        certificate_pem: String::new(),
        trust_bundle_pem: crypto::bundle(&ca),
        expires_at_ms: 0,
    })
}

/// Why the CA could not be created or rotated.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    /// There is no CA yet to rotate.
    #[error("the workload CA does not exist yet; retry in a moment")]
    NotReady,
    /// A new root could not be made.
    #[error(transparent)]
    Make(#[from] CaError),
    /// Another change to the CA got in between; nothing more was written.
    #[error("{0}")]
    Conflict(&'static str),
    /// Through the cluster.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
}

impl From<UpdateError<LifecycleError>> for LifecycleError {
    fn from(e: UpdateError<LifecycleError>) -> Self {
        match e {
            UpdateError::Cluster(c) => LifecycleError::Cluster(c),
            UpdateError::Conflict { .. } => {
                LifecycleError::Conflict("the CA changed meanwhile; run the rotation again")
            }
            UpdateError::Refused(e) => e,
        }
    }
}

fn sealed(kek: &seal::Kek, mut root: CaRoot) -> CaRoot {
    root.key_pem = kek.seal(&root.id, &root.key_pem);
    root
}

/// Whether this node can open the signing root's key: the error says why
/// not (a backup restored under another cluster secret). Every node's
/// watcher asks once per signing root, and logs the answer when it is no.
pub fn can_sign(kek: &seal::Kek, ca: &AuthoritySpec) -> Result<(), seal::SealError> {
    for r in ca.roots.iter().filter(|r| r.signing) {
        seal::key_pem(Some(kek), &r.id, &r.key_pem)?;
    }
    Ok(())
}

/// Seals the keys of a CA written before keys were sealed (the leader's
/// watcher calls this when it sees one in clear).
pub async fn seal_plain_keys(ops: &ClusterOps) -> Result<Updated, LifecycleError> {
    let r = ops
        .update(&ca_key(), 1, |cur| {
            let Some(cur) = cur else {
                return Change::<LifecycleError>::Keep;
            };
            let Spec::Authority(ca) = &cur.spec else {
                return Change::Keep;
            };
            if ca.roots.iter().all(|r| seal::is_sealed(&r.key_pem)) {
                return Change::Keep;
            }
            let roots = ca
                .roots
                .iter()
                .map(|r| match seal::is_sealed(&r.key_pem) {
                    true => r.clone(),
                    false => sealed(ops.kek(), r.clone()),
                })
                .collect();
            Change::Put(authority_resource(cur.metadata.clone(), roots))
        })
        .await;
    match r {
        // Changed meanwhile (a rotation): the next look seals it.
        Err(UpdateError::Conflict { .. }) => Ok(Updated::Kept(None)),
        other => Ok(other?),
    }
}

fn authority_resource(metadata: Metadata, roots: Vec<CaRoot>) -> Resource {
    Resource {
        metadata,
        spec: Spec::Authority(AuthoritySpec { roots }),
    }
}

/// Creates the workload CA unless it exists (create-only, so a race
/// between leaders keeps the first). The first leader calls this.
pub async fn create_if_missing(
    ops: &ClusterOps,
    cluster_name: &str,
) -> Result<Updated, LifecycleError> {
    let current = ops.reader().get(&ca_key()).1;
    if current.is_some() {
        return Ok(Updated::Kept(current));
    }
    let td = trust_domain(ops.reader(), cluster_name);
    let root = sealed(ops.kek(), new_root(&td, unix_ms())?);
    let resource = authority_resource(Metadata::named(CA_NAME), vec![root]);
    let r = ops
        .update_from(&ca_key(), Some(None), 1, |cur| match cur {
            Some(_) => Change::<LifecycleError>::Keep,
            None => Change::Put(resource.clone()),
        })
        .await;
    match r {
        // Another leader created it first: that one stands.
        Err(UpdateError::Conflict { .. }) => Ok(Updated::Kept(None)),
        other => Ok(other?),
    }
}

/// Rolls the workload CA to a new root, with overlap: the new root is added
/// (trusted, not signing) first, proxies get the new bundle, and only then
/// does it become the signing root. The root before the current one is
/// dropped (its certificates have had a whole rotation to be renewed).
/// Answers the revision and the new root's id.
pub async fn rotate(
    ops: &ClusterOps,
    cluster_name: &str,
    overlap: Duration,
) -> Result<(u64, String), LifecycleError> {
    let mut step1 = None;
    let r = ops
        .update(&ca_key(), 1, |cur| {
            let Some(cur) = cur else {
                return Change::Refuse(LifecycleError::NotReady);
            };
            let Spec::Authority(ca) = &cur.spec else {
                return Change::Refuse(LifecycleError::NotReady);
            };
            let td = trust_domain(ops.reader(), cluster_name);
            let mut new = match new_root(&td, unix_ms()) {
                Ok(r) => r,
                Err(e) => return Change::Refuse(e.into()),
            };
            new.signing = false;
            let new = sealed(ops.kek(), new);
            let mut roots: Vec<CaRoot> = ca.roots.iter().filter(|r| r.signing).cloned().collect();
            roots.push(new.clone());
            let resource = authority_resource(cur.metadata.clone(), roots);
            step1 = Some((resource.clone(), new.id));
            Change::Put(resource)
        })
        .await?;
    let (Updated::Written(revision), Some((step1, new_id))) = (r, step1) else {
        return Err(LifecycleError::Conflict(
            "the CA changed meanwhile; run the rotation again",
        ));
    };
    tracing::info!(root = %new_id, "new workload CA root is trusted; it signs after the overlap");
    tokio::time::sleep(overlap).await;
    let step1 = Arc::new(step1.with_revision(revision));
    let r = ops
        .update_from(&ca_key(), Some(Some(step1.clone())), 1, |_| {
            let mut next = (*step1).clone();
            if let Spec::Authority(a) = &mut next.spec {
                for root in &mut a.roots {
                    root.signing = root.id == new_id;
                }
            }
            Change::<LifecycleError>::Put(next)
        })
        .await;
    match r {
        Ok(Updated::Written(revision)) => Ok((revision, new_id)),
        Err(UpdateError::Cluster(c)) => Err(c.into()),
        _ => Err(LifecycleError::Conflict(
            "the CA changed during the rotation; the new root is trusted but not signing; run it again",
        )),
    }
}
