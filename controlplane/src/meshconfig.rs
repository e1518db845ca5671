//! The MeshConfig in force and the defaults that apply without one: the
//! trust domain (`<cluster-name>.mesh`) and the workload certificate
//! lifetime (24 h).

use std::time::Duration;

use raftmesh_api::{Kind, MeshConfigSpec, ResourceKey, Spec, DEFAULT_NAMESPACE};
use raftmesh_storage::StateReader;

/// Default lifetime of workload certificates.
pub const DEFAULT_CERT_TTL: Duration = Duration::from_secs(24 * 3600);

/// The MeshConfig resource, if one was applied.
pub fn mesh_config(reader: &StateReader) -> Option<MeshConfigSpec> {
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
