//! Admin tokens: secrets, their SHA-256, and checking a caller's token
//! against the Token resources in the mesh state.

use std::fmt::Write as _;

use raftmesh_api::{Kind, Role, Spec, TokenSpec};
use raftmesh_storage::StateReader;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// Who is calling, once their token checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's id (its resource name).
    pub token_id: String,
    /// What it may do.
    pub role: Role,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token was presented.
    #[error("missing admin token: pass --token or set RAFTMESH_TOKEN (meshd dev prints one)")]
    Missing,
    /// The token is not `Bearer <secret>`.
    #[error("malformed authorization metadata: expected \"Bearer <token>\"")]
    Malformed,
    /// No live admin token has this secret.
    #[error("invalid admin token: it is unknown, revoked or expired")]
    Invalid,
    /// A bootstrap token was used on the admin API.
    #[error("token {0} is a bootstrap token for proxies; the admin API needs an admin token")]
    NotAdmin(String),
}

/// A new random secret (`rmt_` + 64 hex digits).
pub fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("rmt_{}", hex(&bytes))
}

/// A new token id (`tok-` + 12 hex digits), a DNS label.
pub fn new_token_id() -> String {
    let mut bytes = [0u8; 6];
    rand::rng().fill_bytes(&mut bytes);
    format!("tok-{}", hex(&bytes))
}

/// Hex SHA-256 of a secret, as stored.
pub fn hash_secret(secret: &str) -> String {
    hex(&Sha256::digest(secret.trim().as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Whether a token is usable at `now_ms`.
pub fn is_live(t: &TokenSpec, now_ms: u64) -> bool {
    !t.revoked
        && t.expires_at_ms.is_none_or(|e| now_ms < e)
        && t.max_uses.is_none_or(|m| t.uses < m)
}

/// Checks an `authorization` header value against the admin tokens held in
/// the applied state.
pub fn authenticate(
    reader: &StateReader,
    header: Option<&str>,
    now_ms: u64,
) -> Result<Caller, AuthError> {
    let header = header.ok_or(AuthError::Missing)?;
    let secret = header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .ok_or(AuthError::Malformed)?
        .trim();
    if secret.is_empty() {
        return Err(AuthError::Missing);
    }
    let hash = hash_secret(secret);
    let (_, tokens) = reader.list(Some(Kind::Token), None);
    for r in tokens {
        let Spec::Token(t) = &r.spec else { continue };
        if t.secret_sha256 != hash {
            continue;
        }
        if !is_live(t, now_ms) {
            return Err(AuthError::Invalid);
        }
        return match t.role {
            Some(role) => Ok(Caller {
                token_id: r.metadata.name.clone(),
                role,
            }),
            None => Err(AuthError::NotAdmin(r.metadata.name.clone())),
        };
    }
    Err(AuthError::Invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_random_and_hash_to_64_hex_digits() {
        let (a, b) = (new_secret(), new_secret());
        assert_ne!(a, b);
        assert!(a.starts_with("rmt_") && a.len() == 68);
        let h = hash_secret(&a);
        assert_eq!(h.len(), 64);
        assert_eq!(
            h,
            hash_secret(&format!("{a}\n")),
            "a trailing newline from a file is ignored"
        );
        raftmesh_api::validate::dns_label(&new_token_id()).unwrap();
    }

    #[test]
    fn liveness_honours_revocation_expiry_and_uses() {
        let mut t = TokenSpec {
            secret_sha256: "0".repeat(64),
            role: Some(Role::Admin),
            created_at_ms: 1,
            ..Default::default()
        };
        assert!(is_live(&t, 10));
        t.expires_at_ms = Some(10);
        assert!(!is_live(&t, 10));
        t.expires_at_ms = None;
        t.max_uses = Some(1);
        assert!(is_live(&t, 10));
        t.uses = 1;
        assert!(!is_live(&t, 10));
        t.max_uses = None;
        t.revoked = true;
        assert!(!is_live(&t, 10));
    }
}

/// A bootstrap token that checked out for a service.
#[derive(Debug, Clone)]
pub struct Bootstrap {
    /// The token resource (with its revision, for compare-and-set).
    pub token: std::sync::Arc<raftmesh_api::Resource>,
}

/// Why a proxy's bootstrap token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BootstrapError {
    /// None given.
    #[error("missing bootstrap token: start mesh-proxy with --token-file or RAFTMESH_TOKEN (create one with `meshctl token create --service S`)")]
    Missing,
    /// Unknown secret.
    #[error("invalid bootstrap token: no such token")]
    Unknown,
    /// Revoked.
    #[error("bootstrap token {0} has been revoked")]
    Revoked(String),
    /// Expired.
    #[error("bootstrap token {0} has expired; create a new one")]
    Expired(String),
    /// Used up.
    #[error("bootstrap token {0} has been used {1} times, its limit")]
    UsedUp(String, u32),
    /// For another service.
    #[error("bootstrap token {id} is for service {token_service}, not {service}")]
    WrongService {
        /// Token id.
        id: String,
        /// The service it is for.
        token_service: String,
        /// The service asked for.
        service: String,
    },
    /// An admin token was presented.
    #[error("token {0} is an admin token, not a bootstrap token for a service")]
    AdminToken(String),
}

/// Checks a proxy's bootstrap token for `service` in `namespace`.
pub fn check_bootstrap(
    reader: &StateReader,
    secret: &str,
    service: &str,
    namespace: &str,
    now_ms: u64,
) -> Result<Bootstrap, BootstrapError> {
    let secret = secret.trim();
    if secret.is_empty() {
        return Err(BootstrapError::Missing);
    }
    let hash = hash_secret(secret);
    let (_, tokens) = reader.list(Some(Kind::Token), None);
    let token = tokens
        .into_iter()
        .find(|r| matches!(&r.spec, Spec::Token(t) if t.secret_sha256 == hash))
        .ok_or(BootstrapError::Unknown)?;
    let Spec::Token(t) = &token.spec else {
        return Err(BootstrapError::Unknown);
    };
    let id = token.metadata.name.clone();
    if t.role.is_some() {
        return Err(BootstrapError::AdminToken(id));
    }
    if t.revoked {
        return Err(BootstrapError::Revoked(id));
    }
    if t.expires_at_ms.is_some_and(|e| now_ms >= e) {
        return Err(BootstrapError::Expired(id));
    }
    if let Some(m) = t.max_uses {
        if t.uses >= m {
            return Err(BootstrapError::UsedUp(id, m));
        }
    }
    let tns = t
        .namespace
        .as_deref()
        .unwrap_or(raftmesh_api::DEFAULT_NAMESPACE);
    if t.service.as_deref() != Some(service) || tns != namespace {
        return Err(BootstrapError::WrongService {
            id,
            token_service: format!("{}.{tns}", t.service.as_deref().unwrap_or("?")),
            service: format!("{service}.{namespace}"),
        });
    }
    Ok(Bootstrap { token })
}
