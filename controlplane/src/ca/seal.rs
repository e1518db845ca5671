//! The workload CA key at rest: sealed (AES-256-GCM) under a
//! key-encryption key derived from the cluster secret every node is given
//! (`--cluster-secret-file`, else the first admin token's secret). The KEK
//! is never written anywhere: the Raft log, the state, snapshots and
//! backups hold only `sealed:v1:<hex nonce and ciphertext>`, bound to the
//! root's id. A node given another secret (or a backup restored under
//! another secret) cannot open it: it serves everything except signing,
//! and says why.

use rand::RngCore;
use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};

const PREFIX: &str = "sealed:v1:";

/// Why a sealed key cannot be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// This node has no cluster secret.
    #[error("this node has no cluster secret to open the workload CA key (give --cluster-secret-file or --admin-token-file)")]
    NoKek,
    /// Not the form [`Kek::seal`] writes.
    #[error("the sealed workload CA key is malformed")]
    Malformed,
    /// Sealed under another secret, or changed.
    #[error("this node cannot decrypt the workload CA key: it was sealed under another cluster secret (every node needs the same --cluster-secret-file or --admin-token-file; a backup restored under another secret cannot sign), or it was altered")]
    WrongKey,
}

/// The key-encryption key.
pub struct Kek(LessSafeKey);

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Kek(..)")
    }
}

impl Kek {
    /// The KEK of a secret (`source` names where it came from, so the two
    /// sources never yield the same key). Domain-separated from the node
    /// credential and the stored token hashes.
    pub fn derive(source: &str, secret: &str) -> Self {
        let material = format!("raftmesh-ca-kek-v1|{source}|{}", secret.trim());
        let digest = ring::digest::digest(&ring::digest::SHA256, material.as_bytes());
        let key =
            UnboundKey::new(&AES_256_GCM, digest.as_ref()).expect("32 bytes is an AES-256 key");
        Self(LessSafeKey::new(key))
    }

    /// `key_pem` sealed, bound to root `root_id`.
    pub fn seal(&self, root_id: &str, key_pem: &str) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let mut data = key_pem.as_bytes().to_vec();
        self.0
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), aad(root_id), &mut data)
            .expect("AES-GCM sealing of a small buffer cannot fail");
        let mut out = String::with_capacity(PREFIX.len() + 2 * (NONCE_LEN + data.len()));
        out.push_str(PREFIX);
        for b in nonce.iter().chain(data.iter()) {
            out.push_str(&format!("{b:02x}"));
        }
        out
    }

    /// The PEM key inside `sealed` (root `root_id`'s).
    pub fn open(&self, root_id: &str, sealed: &str) -> Result<String, SealError> {
        let hex = sealed.strip_prefix(PREFIX).ok_or(SealError::Malformed)?;
        if hex.len() % 2 != 0 || hex.len() < 2 * (NONCE_LEN + aead::AES_256_GCM.tag_len()) {
            return Err(SealError::Malformed);
        }
        let mut bytes = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16))
            .collect::<Result<Vec<u8>, _>>()
            .map_err(|_| SealError::Malformed)?;
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&bytes[..NONCE_LEN]);
        let plain = self
            .0
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                aad(root_id),
                &mut bytes[NONCE_LEN..],
            )
            .map_err(|_| SealError::WrongKey)?;
        String::from_utf8(plain.to_vec()).map_err(|_| SealError::Malformed)
    }
}

fn aad(root_id: &str) -> Aad<Vec<u8>> {
    Aad::from(format!("raftmesh-ca-key|{root_id}").into_bytes())
}

/// Whether a stored key is sealed (an older cluster's may be plain PEM).
pub fn is_sealed(key: &str) -> bool {
    key.starts_with(PREFIX)
}

/// The usable PEM of a stored key: opened when sealed, as is when plain
/// (written before keys were sealed).
pub fn key_pem(kek: Option<&Kek>, root_id: &str, stored: &str) -> Result<String, SealError> {
    if !is_sealed(stored) {
        return Ok(stored.to_string());
    }
    kek.ok_or(SealError::NoKek)?.open(root_id, stored)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEM: &str = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMG\n-----END PRIVATE KEY-----\n";

    #[test]
    fn a_sealed_key_opens_under_its_secret_and_root_only() {
        let kek = Kek::derive("file", "a-cluster-secret-of-32-bytes....");
        let sealed = kek.seal("root-1", PEM);
        assert!(is_sealed(&sealed));
        assert!(!sealed.contains("PRIVATE KEY"));
        assert_eq!(kek.open("root-1", &sealed).unwrap(), PEM);
        assert_ne!(kek.seal("root-1", PEM), sealed, "a fresh nonce each time");
        // Another secret, another source, another root, a changed byte.
        let other = Kek::derive("file", "another-cluster-secret-32-bytes.");
        assert_eq!(other.open("root-1", &sealed), Err(SealError::WrongKey));
        let token = Kek::derive("admin-token", "a-cluster-secret-of-32-bytes....");
        assert_eq!(token.open("root-1", &sealed), Err(SealError::WrongKey));
        assert_eq!(kek.open("root-2", &sealed), Err(SealError::WrongKey));
        let mut changed = sealed.clone().into_bytes();
        let last = changed.len() - 1;
        changed[last] = if changed[last] == b'0' { b'1' } else { b'0' };
        let changed = String::from_utf8(changed).unwrap();
        assert_eq!(kek.open("root-1", &changed), Err(SealError::WrongKey));
        assert_eq!(
            kek.open("root-1", "sealed:v1:zz"),
            Err(SealError::Malformed)
        );
        // A plain (older) key is used as is; a sealed one needs a KEK.
        assert_eq!(key_pem(None, "root-1", PEM).unwrap(), PEM);
        assert_eq!(key_pem(None, "root-1", &sealed), Err(SealError::NoKek));
        assert_eq!(key_pem(Some(&kek), "root-1", &sealed).unwrap(), PEM);
    }
}
