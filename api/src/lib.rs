//! The Raftmesh resource model: domain types with their YAML form and
//! validation, the protobuf/gRPC schema, and conversions between the two.
//!
//! This crate must not depend on an async runtime, openraft, sled or actix:
//! the proxy links it, and the proxy stays small.

pub mod convert;
pub mod duration;
pub mod kind;
pub mod resource;
pub mod validate;
pub mod yaml;

pub use duration::HumanDuration;
pub use kind::Kind;
pub use resource::*;
pub use validate::{ValidationError, ValidationErrors};
pub use yaml::{parse_documents, ParseError};

/// Code generated from `proto/raftmesh/v1/*.proto` by tonic/prost at build time.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("raftmesh.v1");
}

/// The SPIFFE ID of a workload: `spiffe://<trust-domain>/ns/<ns>/sa/<service>`.
pub fn spiffe_id(trust_domain: &str, namespace: &str, service: &str) -> String {
    format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service}")
}

/// The DNS name in a workload certificate (`<service>.<ns>.svc.<trust-domain>`),
/// which TLS clients verify the server against.
pub fn workload_dns_name(trust_domain: &str, namespace: &str, service: &str) -> String {
    format!("{service}.{namespace}.svc.{trust_domain}")
}

/// The default trust domain of a cluster.
pub fn default_trust_domain(cluster_name: &str) -> String {
    format!("{cluster_name}.mesh")
}

/// The namespace used when a resource names none.
pub const DEFAULT_NAMESPACE: &str = "default";
