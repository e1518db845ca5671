//! A real control plane in one process: nodes on loopback sockets with
//! their own sled directories, driven through the admin gRPC API.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod admin;
mod collectors;
mod dashboard;
mod deploys;
mod discovery;
mod federation;
mod livestats;
mod membership;
mod node_auth;
mod observability;
// Shared with the proxy's suite (which reads every field).
#[allow(dead_code)]
#[path = "../../../dataplane-proxy/tests/proxy/otlp.rs"]
mod otlp;
// Shared with the proxy's suite.
#[allow(dead_code)]
#[path = "../../../dataplane-proxy/tests/proxy/prom.rs"]
mod prom;
mod proxy;
mod replication;
mod security;
mod support;
mod traffic;
