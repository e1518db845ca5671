//! The node credential: how a node proves, on every node-to-node call,
//! that it belongs to the cluster. With `--tls-dir` it is the node
//! certificate (checked by TLS and `rpc.rs`). Without TLS it is a cluster
//! secret every node holds — `--cluster-secret-file`, or one derived from
//! the first admin token's secret every node is started with — and each
//! call carries a fresh HMAC of the time under it, so the secret itself
//! never crosses the wire. A caller without it is refused: nobody who
//! merely reaches the port can append to the log, plant a token, replace
//! the workload CA or add a voter.

use std::time::Duration;

use ring::hmac;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::{Request, Status};

use crate::procinfo::unix_ms;

/// The metadata key a node's proof travels in.
pub const HEADER: &str = "x-raftmesh-node";

/// How far a proof's time may be from the receiver's clock.
pub const MAX_SKEW: Duration = Duration::from_secs(300);

/// The cluster secret, as an HMAC key.
#[derive(Clone)]
pub struct ClusterSecret(hmac::Key);

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterSecret(..)")
    }
}

impl ClusterSecret {
    /// The secret of a `--cluster-secret-file` (its trimmed contents).
    pub fn from_file_contents(secret: &str) -> Self {
        Self::derive("file", secret)
    }

    /// The secret derived from the first admin token's secret, which every
    /// node of a cluster started as the README shows is given.
    pub fn from_admin_token(secret: &str) -> Self {
        Self::derive("admin-token", secret)
    }

    fn derive(source: &str, secret: &str) -> Self {
        // Domain-separated, so the derived key is never the admin token's
        // hash that the state stores.
        let material = format!("raftmesh-cluster-secret|{source}|{}", secret.trim());
        let digest = ring::digest::digest(&ring::digest::SHA256, material.as_bytes());
        Self(hmac::Key::new(hmac::HMAC_SHA256, digest.as_ref()))
    }

    fn tag(&self, unix_ms: u64) -> hmac::Tag {
        hmac::sign(&self.0, format!("raftmesh-node|{unix_ms}").as_bytes())
    }

    /// A proof for a call made now: `v1.<unix_ms>.<hex HMAC>`.
    pub fn proof(&self, now_ms: u64) -> String {
        format!(
            "v1.{now_ms}.{}",
            crate::tokens::hex(self.tag(now_ms).as_ref())
        )
    }

    /// Checks a proof at `now_ms`.
    pub fn verify(&self, proof: &str, now_ms: u64) -> Result<(), CredentialError> {
        let mut parts = proof.splitn(3, '.');
        let (Some("v1"), Some(t), Some(mac)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(CredentialError::Malformed);
        };
        let t: u64 = t.parse().map_err(|_| CredentialError::Malformed)?;
        if now_ms.abs_diff(t) > MAX_SKEW.as_millis() as u64 {
            return Err(CredentialError::Stale);
        }
        let mac = unhex(mac).ok_or(CredentialError::Malformed)?;
        hmac::verify(&self.0, format!("raftmesh-node|{t}").as_bytes(), &mac)
            .map_err(|_| CredentialError::Wrong)
    }
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || s.len() > 128 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Why a node credential was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    /// None was presented.
    #[error("node-to-node calls need the cluster's node credential (the same --cluster-secret-file or --admin-token-file on every node, or --tls-dir)")]
    Missing,
    /// Not `v1.<ms>.<hex>`.
    #[error("malformed node credential")]
    Malformed,
    /// Older or newer than [`MAX_SKEW`].
    #[error("stale node credential (check the nodes' clocks)")]
    Stale,
    /// Made with another secret.
    #[error("node credential made with another cluster secret: give every node the same --cluster-secret-file or --admin-token-file")]
    Wrong,
}

impl From<CredentialError> for Status {
    fn from(e: CredentialError) -> Self {
        Status::unauthenticated(e.to_string())
    }
}

/// Checks the proof a call carries.
pub fn check<T>(secret: &ClusterSecret, req: &Request<T>) -> Result<(), CredentialError> {
    let proof = req
        .metadata()
        .get(HEADER)
        .ok_or(CredentialError::Missing)?
        .to_str()
        .map_err(|_| CredentialError::Malformed)?;
    secret.verify(proof, unix_ms())
}

/// Adds a fresh proof to every call (nothing when the node uses TLS, whose
/// certificate is the credential).
#[derive(Clone, Debug, Default)]
pub struct NodeAuth(Option<ClusterSecret>);

impl NodeAuth {
    /// Calls carry proofs under `secret`, or none.
    pub fn new(secret: Option<ClusterSecret>) -> Self {
        Self(secret)
    }
}

impl Interceptor for NodeAuth {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(s) = &self.0 {
            let v: MetadataValue<Ascii> = s
                .proof(unix_ms())
                .parse()
                .map_err(|_| Status::internal("node credential is not a header value"))?;
            req.metadata_mut().insert(HEADER, v);
        }
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proof_verifies_under_its_secret_only_and_only_while_fresh() {
        let s = ClusterSecret::from_admin_token("rmt_0123456789abcdef0123456789abcdef");
        let now = 1_800_000_000_000;
        let p = s.proof(now);
        assert!(!p.contains("rmt_"), "the secret never travels: {p}");
        s.verify(&p, now + 1_000).unwrap();
        assert_eq!(
            s.verify(&p, now + MAX_SKEW.as_millis() as u64 + 1),
            Err(CredentialError::Stale)
        );
        let other = ClusterSecret::from_admin_token("rmt_another");
        assert_eq!(other.verify(&p, now), Err(CredentialError::Wrong));
        let file = ClusterSecret::from_file_contents("rmt_0123456789abcdef0123456789abcdef");
        assert_eq!(
            file.verify(&p, now),
            Err(CredentialError::Wrong),
            "a file secret and an admin token are different keys"
        );
        // A proof for another time does not verify under a forged time.
        let forged = p.replacen(&now.to_string(), &(now + 1).to_string(), 1);
        assert_eq!(s.verify(&forged, now), Err(CredentialError::Wrong));
        for bad in ["", "v1", "v2.1.00", "v1.x.00", "v1.1.zz", "v1.1.0"] {
            assert!(s.verify(bad, now).is_err(), "{bad}");
        }
    }
}
