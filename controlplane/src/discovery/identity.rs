//! Workload identity on the discovery stream: which trust domain and CA are
//! in force, how a proxy proves who it is (a bootstrap token the first time,
//! then its certificate and proof of holding its key), and the certificates
//! and trust bundles sent to it.

use std::sync::Arc;
use std::time::Duration;

use raftmesh_api::v1 as pb;
use raftmesh_api::{AuthoritySpec, Kind, Resource, ResourceKey, Spec, DEFAULT_NAMESPACE};
use raftmesh_storage::StateReader;
use tonic::Status;

use crate::ca;

/// Name of the Authority resource holding the workload CA.
pub const CA_NAME: &str = "workload-ca";

/// Default lifetime of workload certificates.
pub const DEFAULT_CERT_TTL: Duration = Duration::from_secs(24 * 3600);

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

fn mesh_config(reader: &StateReader) -> Option<raftmesh_api::MeshConfigSpec> {
    let r = reader
        .get(&ResourceKey::new(
            Kind::MeshConfig,
            DEFAULT_NAMESPACE,
            "mesh",
        ))
        .1?;
    match &r.spec {
        Spec::MeshConfig(m) => Some(m.clone()),
        _ => None,
    }
}

/// The trust domain: MeshConfig's, else `<cluster-name>.mesh`.
pub fn trust_domain(reader: &StateReader, cluster_name: &str) -> String {
    mesh_config(reader)
        .and_then(|m| m.trust_domain)
        .unwrap_or_else(|| raftmesh_api::default_trust_domain(cluster_name))
}

/// Lifetime of workload certificates: MeshConfig's, else 24 h.
pub fn cert_ttl(reader: &StateReader) -> Duration {
    mesh_config(reader)
        .and_then(|m| m.cert_ttl)
        .map(|d| d.as_duration())
        .unwrap_or(DEFAULT_CERT_TTL)
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
) -> Result<(), Status> {
    let (_, ca) = authority(reader)
        .ok_or_else(|| Status::unavailable("the workload CA is not ready yet; retry"))?;
    let id = ca::verify_workload(&ca, &h.certificate_pem, now_ms).map_err(|e| {
        Status::unauthenticated(format!(
            "certificate refused: {e}; start again with a bootstrap token"
        ))
    })?;
    let want = raftmesh_api::spiffe_id(&trust_domain(reader, cluster_name), namespace, service);
    if id != want {
        return Err(Status::permission_denied(format!(
            "the certificate is for {id}, not {want}"
        )));
    }
    ca::verify_proof(
        &h.certificate_pem,
        &h.instance,
        h.proof_unix_ms,
        &h.proof,
        now_ms,
    )
    .map_err(|e| Status::unauthenticated(e.to_string()))
}

/// Issues a certificate for a CSR and packs it with the trust bundle.
pub fn certificate(
    reader: &StateReader,
    cluster_name: &str,
    service: &str,
    namespace: &str,
    csr_pem: &str,
    now_ms: u64,
) -> Result<pb::CertificateResponse, Status> {
    let (_, ca) = authority(reader)
        .ok_or_else(|| Status::unavailable("the workload CA is not ready yet; retry"))?;
    let td = trust_domain(reader, cluster_name);
    let issued = ca::issue(
        &ca,
        &td,
        namespace,
        service,
        csr_pem,
        cert_ttl(reader),
        now_ms,
    )
    .map_err(|e| Status::invalid_argument(e.to_string()))?;
    Ok(pb::CertificateResponse {
        certificate_pem: issued.cert_pem,
        trust_bundle_pem: ca::bundle(&ca),
        expires_at_ms: issued.not_after_ms,
    })
}

/// The trust bundle alone (sent when the CA's roots change).
pub fn bundle_only(reader: &StateReader) -> Option<pb::CertificateResponse> {
    let (_, ca) = authority(reader)?;
    Some(pb::CertificateResponse {
        certificate_pem: String::new(),
        trust_bundle_pem: ca::bundle(&ca),
        expires_at_ms: 0,
    })
}
