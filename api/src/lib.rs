//! The Raftmesh resource model: domain types with their YAML form and
//! validation, the protobuf/gRPC schema, and conversions between the two.
//!
//! This crate must not depend on an async runtime, openraft, sled, actix or
//! tonic's transport (hyper, h2, axum): the proxy links it, and the proxy
//! stays small. The generated gRPC code is message types, clients over any
//! tower service, and server traits; `.ci/run` checks this with `cargo tree`.

pub mod backup;
pub mod convert;
pub mod duration;
pub mod files;
pub mod identity;
pub mod kind;
pub mod resource;
pub mod stat;
pub mod validate;
pub mod yaml;

pub use duration::HumanDuration;
pub use identity::{default_trust_domain, spiffe_id, workload_dns_name};
pub use kind::Kind;
pub use resource::*;
pub use validate::{ValidationError, ValidationErrors};
pub use yaml::{parse_documents, ParseError};

/// Code generated from `proto/raftmesh/v1/*.proto` by tonic/prost at build time.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("raftmesh.v1");
}

/// The namespace used when a resource names none.
pub const DEFAULT_NAMESPACE: &str = "default";
