//! The client side of meshd's gRPC port: how a program reaches meshd
//! (endpoint settings, TLS against the server CA of `meshd tls init`), who
//! it is (the admin token as a bearer header), and how it fails over
//! between nodes without ever sending a write twice.
//!
//! meshctl, the chaos harness, `meshd demo` and the tests all connect
//! through here. Depends on `api`, tonic and OpenTelemetry's OTLP exporter
//! (`otel`: the traces meshd and mesh-proxy both export) only: no openraft,
//! sled, actix or proxy code.

mod admin;
pub mod bins;
pub mod otel;
mod tls;

use std::time::Duration;

use tonic::transport::{ClientTlsConfig, Endpoint};

pub use admin::{admin_client, bootstrap_token, Admin, Bearer, Conn};
pub use tls::{client_tls, read_ca_file, read_certificate, read_pem, PemCertificate};

/// Largest gRPC message between meshd nodes and from meshd to its admin
/// clients (Raft log batches, snapshot chunks, large lists).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Largest admin request meshd decodes. A request is read whole before
/// its token is checked, so this bounds what a caller without a token can
/// make a node hold per request; meshctl refuses a larger apply before
/// sending it. (What one apply may write is bounded further by meshd: its
/// Raft entry at most 1 MiB, `raftmesh_storage::MAX_ENTRY_BYTES`.)
pub const MAX_ADMIN_REQUEST_BYTES: usize = 4 * 1024 * 1024;

/// Why a client could not be set up. Nothing was sent.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No meshd address was given.
    #[error("no server given: pass --server HOST:PORT or set RAFTMESH_SERVER")]
    NoServer,
    /// The token cannot travel in a header.
    #[error("the token holds characters that cannot be sent in a header")]
    BadToken,
    /// The address is not `host:port`.
    #[error("bad server address {addr}: {source}")]
    BadAddress {
        /// The address given.
        addr: String,
        /// What tonic said.
        #[source]
        source: tonic::transport::Error,
    },
    /// The CA file could not be read.
    #[error("cannot read {what} {path}: {source}")]
    Read {
        /// Which flag or file.
        what: &'static str,
        /// Its path.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file does not hold a usable certificate (or PEM block).
    #[error("{what} {path} is not a PEM certificate: {reason}")]
    NotCertificate {
        /// Which flag or file.
        what: &'static str,
        /// Its path.
        path: String,
        /// Why not.
        reason: String,
    },
}

/// The tonic endpoint for a meshd address (`https` when `tls` is given),
/// with the timeouts every node-to-node and client connection uses.
pub fn endpoint(addr: &str, tls: Option<&ClientTlsConfig>) -> Result<Endpoint, ClientError> {
    let bad = |source| ClientError::BadAddress {
        addr: addr.to_string(),
        source,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let ep = Endpoint::from_shared(format!("{scheme}://{addr}"))
        .map_err(bad)?
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5));
    match tls {
        Some(t) => ep.tls_config(t.clone()).map_err(bad),
        None => Ok(ep),
    }
}

/// Whether a failed call certainly never reached the other side (so a
/// retry cannot apply a write twice).
pub fn never_sent(status: &tonic::Status) -> bool {
    let m = status.message();
    status.code() == tonic::Code::Unavailable
        && (m.contains("tcp connect error")
            || m.contains("Connection refused")
            || m.contains("connect timeout"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_that_is_not_host_port_is_refused_by_name() {
        let e = endpoint("not a host", None).unwrap_err().to_string();
        assert!(e.contains("bad server address not a host"), "{e}");
        endpoint("127.0.0.1:7100", None).unwrap();
    }

    #[test]
    fn only_connection_failures_count_as_never_sent() {
        assert!(never_sent(&tonic::Status::unavailable(
            "tcp connect error: Connection refused"
        )));
        assert!(!never_sent(&tonic::Status::unavailable("no leader")));
        assert!(!never_sent(&tonic::Status::internal("tcp connect error")));
    }
}
