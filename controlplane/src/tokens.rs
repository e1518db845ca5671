//! Tokens, their whole life in one place: a secret is made and only its
//! SHA-256 stored (`create`), checked on every admin call
//! (`authenticate_admin`) or proxy admission (`admit_bootstrap`), counted
//! on use through Raft so a single-use token works once (`consume`),
//! revoked (`revoke`), and the first admin token of a cluster stored from
//! `--admin-token-file` by the first leader (`store_first_admin`).
//!
//! A token unknown to a lagging node is looked up again after a read
//! barrier, never refused for the node's lag.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use raftmesh_api::{
    Kind, Metadata, Resource, ResourceKey, Role, Spec, TokenSpec, DEFAULT_NAMESPACE,
};
use raftmesh_storage::StateReader;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::cluster::{Change, ClusterError, ClusterOps, UpdateError, Updated};
use crate::procinfo::unix_ms;

/// Default lifetime of a bootstrap token.
pub const DEFAULT_BOOTSTRAP_TTL: Duration = Duration::from_secs(15 * 60);

/// Name of the admin token created from `--admin-token-file`.
pub const FIRST_ADMIN_TOKEN_ID: &str = "admin-bootstrap";

/// Who is calling, once their token checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's id (its resource name).
    pub token_id: String,
    /// What it may do.
    pub role: Role,
    /// The token's revision when it was checked: a write carries it
    /// ([`Caller::guard`]) and is refused at apply time if the token has
    /// changed since (revoked).
    pub token_revision: u64,
}

impl Caller {
    /// The condition a write by this caller carries into its Raft entry:
    /// the token still at the revision it was checked at.
    pub fn guard(&self) -> raftmesh_storage::Command {
        raftmesh_storage::Command::Expect {
            key: ResourceKey::new(Kind::Token, DEFAULT_NAMESPACE, self.token_id.clone()),
            revision: self.token_revision,
        }
    }
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
    /// This node cannot confirm with the leader that the token is still
    /// live (a revocation may be committed that it has not applied).
    #[error("cannot confirm the token with the leader: {0}; try another node")]
    Unconfirmed(String),
}

/// How many look-ups of tokens a node does not know may cost a Raft round
/// (a read barrier) per second: a stranger sending made-up tokens gets
/// refused without costing the cluster more than this.
pub const UNKNOWN_LOOKUPS_PER_SEC: f64 = 20.0;

/// The budget of read barriers for unknown tokens (a token bucket).
#[derive(Debug)]
pub struct LookupBudget(std::sync::Mutex<(f64, std::time::Instant)>);

impl Default for LookupBudget {
    fn default() -> Self {
        Self(std::sync::Mutex::new((
            UNKNOWN_LOOKUPS_PER_SEC,
            std::time::Instant::now(),
        )))
    }
}

impl LookupBudget {
    /// Takes one look-up if the budget allows it.
    pub fn try_take(&self) -> bool {
        let mut b = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = std::time::Instant::now();
        let refill = now.duration_since(b.1).as_secs_f64() * UNKNOWN_LOOKUPS_PER_SEC;
        b.0 = (b.0 + refill).min(UNKNOWN_LOOKUPS_PER_SEC);
        b.1 = now;
        if b.0 >= 1.0 {
            b.0 -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A new random secret (`rmt_` + 64 hex digits): admin tokens, the
/// demo's and `meshd dev`'s first admin token, cluster secrets.
pub fn new_secret() -> String {
    secret_with_prefix("rmt_")
}

fn secret_with_prefix(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{prefix}{}", hex(&bytes))
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

/// Whether two hashes (hex) are equal, in time independent of where they
/// differ.
pub fn hash_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Lower-case hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
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
/// the applied state of this node, as it is now.
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
                token_revision: r.metadata.revision.unwrap_or(0),
            }),
            None => Err(AuthError::NotAdmin(r.metadata.name.clone())),
        };
    }
    Err(AuthError::Invalid)
}

/// A bootstrap token that checked out for a service.
#[derive(Debug, Clone)]
pub struct Bootstrap {
    /// The token resource (with its revision, for compare-and-set).
    pub token: Arc<Resource>,
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
    /// Another proxy used the last use at the same moment.
    #[error("bootstrap token {0} was used concurrently and is now used up")]
    UsedConcurrently(String),
}

/// Checks a proxy's bootstrap token for `service` in `namespace` against
/// this node's applied state, as it is now.
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

/// Checks an admin call's `authorization` header against the leader's
/// commit: a token this node accepts is confirmed after a read barrier (a
/// revocation committed but not applied here yet is seen: a lagging
/// follower never lets a revoked token in); a token it does not know is
/// looked up again the same way (it may have been created a moment ago),
/// within [`LookupBudget`], so made-up tokens cannot make every call cost
/// a Raft round.
pub async fn authenticate_admin(
    ops: &ClusterOps,
    header: Option<&str>,
) -> Result<Caller, AuthError> {
    let r = authenticate_admin_now(ops, header).await;
    ops.metrics()
        .admin_auth(r.as_ref().err().map(AuthError::reason));
    r
}

async fn authenticate_admin_now(
    ops: &ClusterOps,
    header: Option<&str>,
) -> Result<Caller, AuthError> {
    let checked = authenticate(ops.reader(), header, unix_ms());
    match checked {
        Ok(_) => {
            ops.read_barrier()
                .await
                .map_err(|e| AuthError::Unconfirmed(e.to_string()))?;
            authenticate(ops.reader(), header, unix_ms())
        }
        Err(AuthError::Invalid) if ops.token_lookups().try_take() => {
            match ops.read_barrier().await {
                Ok(_) => authenticate(ops.reader(), header, unix_ms()),
                Err(_) => Err(AuthError::Invalid),
            }
        }
        other => other,
    }
}

/// Checks the token of an admin call that writes through Raft without a
/// read barrier: the write carries [`Caller::guard`], so the state machine
/// refuses it if the token was revoked (or changed) in any entry before
/// it — the same cut-off as [`authenticate_admin`] at one Raft round
/// less. A token this node does not know yet is looked up as there.
pub async fn authenticate_writer(
    ops: &ClusterOps,
    header: Option<&str>,
) -> Result<Caller, AuthError> {
    let r = match authenticate(ops.reader(), header, unix_ms()) {
        Err(AuthError::Invalid) if ops.token_lookups().try_take() => {
            match ops.read_barrier().await {
                Ok(_) => authenticate(ops.reader(), header, unix_ms()),
                Err(_) => Err(AuthError::Invalid),
            }
        }
        other => other,
    };
    ops.metrics()
        .admin_auth(r.as_ref().err().map(AuthError::reason));
    r
}

/// Admits a proxy with its bootstrap token: checks it (again after a read
/// barrier if this node does not know it yet), then counts the use.
pub async fn admit_bootstrap(
    ops: &ClusterOps,
    secret: &str,
    service: &str,
    namespace: &str,
) -> Result<(), TokenError> {
    let r = admit_bootstrap_now(ops, secret, service, namespace).await;
    ops.metrics()
        .bootstrap(r.as_ref().err().map(TokenError::reason));
    r
}

async fn admit_bootstrap_now(
    ops: &ClusterOps,
    secret: &str,
    service: &str,
    namespace: &str,
) -> Result<(), TokenError> {
    let check = || check_bootstrap(ops.reader(), secret, service, namespace, unix_ms());
    // As for admin tokens: confirmed against the leader's commit, and
    // unknown ones looked up within the budget.
    let b = match check() {
        Ok(_) => {
            ops.read_barrier().await?;
            check()
        }
        Err(BootstrapError::Unknown) if ops.token_lookups().try_take() => {
            match ops.read_barrier().await {
                Ok(_) => check(),
                Err(_) => Err(BootstrapError::Unknown),
            }
        }
        other => other,
    }?;
    consume(ops, &b).await
}

/// Why a token could not be created, used or revoked.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The bootstrap token was refused.
    #[error(transparent)]
    Refused(#[from] BootstrapError),
    /// The token does not exist.
    #[error("token {0} not found")]
    NotFound(String),
    /// The request is invalid; nothing was written.
    #[error("{0}")]
    Invalid(String),
    /// A concurrent change won; nothing was written.
    #[error("{0}")]
    Conflict(String),
    /// Through the cluster.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
}

impl TokenError {
    /// Why, as a metrics label.
    pub fn reason(&self) -> &'static str {
        match self {
            TokenError::Refused(b) => b.reason(),
            TokenError::NotFound(_) => "not-found",
            TokenError::Invalid(_) => "invalid",
            TokenError::Conflict(_) => "conflict",
            TokenError::Cluster(_) => "unavailable",
        }
    }
}

impl BootstrapError {
    /// Why, as a metrics label.
    pub fn reason(&self) -> &'static str {
        match self {
            BootstrapError::Missing => "missing",
            BootstrapError::Unknown => "unknown",
            BootstrapError::Revoked(_) => "revoked",
            BootstrapError::Expired(_) => "expired",
            BootstrapError::UsedUp(..) => "used-up",
            BootstrapError::WrongService { .. } => "wrong-service",
            BootstrapError::AdminToken(_) => "admin-token",
            BootstrapError::UsedConcurrently(_) => "used-concurrently",
        }
    }
}

impl AuthError {
    /// Why, as a metrics label.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Malformed => "malformed",
            AuthError::Invalid => "invalid",
            AuthError::NotAdmin(_) => "not-admin",
            AuthError::Unconfirmed(_) => "unconfirmed",
        }
    }
}

impl From<UpdateError<TokenError>> for TokenError {
    fn from(e: UpdateError<TokenError>) -> Self {
        match e {
            UpdateError::Cluster(c) => TokenError::Cluster(c),
            UpdateError::Conflict { key, .. } => {
                TokenError::Conflict(format!("token {} kept changing; try again", key.name))
            }
            UpdateError::Refused(e) => e,
        }
    }
}

/// Counts a use of a limited token, through Raft (compare-and-set on the
/// token as checked), so a single-use token works once even against two
/// nodes at once.
pub async fn consume(ops: &ClusterOps, b: &Bootstrap) -> Result<(), TokenError> {
    let Spec::Token(t) = &b.token.spec else {
        return Ok(());
    };
    if t.max_uses.is_none() {
        return Ok(());
    }
    let name = b.token.metadata.name.clone();
    let r = ops
        .update_from(&b.token.key(), Some(Some(b.token.clone())), 1, |cur| {
            let Some(cur) = cur else {
                return Change::Refuse(TokenError::NotFound(name.clone()));
            };
            let mut updated = (**cur).clone();
            if let Spec::Token(t) = &mut updated.spec {
                t.uses += 1;
            }
            Change::Put(updated)
        })
        .await;
    match r {
        Ok(_) => Ok(()),
        Err(UpdateError::Conflict { .. }) => {
            Err(TokenError::Refused(BootstrapError::UsedConcurrently(name)))
        }
        Err(e) => Err(e.into()),
    }
}

/// What a new token may do.
#[derive(Debug, Clone)]
pub enum TokenScope {
    /// Register proxies of this service.
    Service {
        /// Service name.
        service: String,
        /// Its namespace.
        namespace: String,
    },
    /// Call the admin API with this role.
    Role(Role),
}

/// A new token.
#[derive(Debug, Clone)]
pub struct CreatedToken {
    /// Its id.
    pub id: String,
    /// Its secret (shown once, never stored).
    pub secret: String,
    /// The stored resource.
    pub resource: Resource,
}

/// Creates a token; the secret is returned once and only its hash stored.
/// `ttl` `None` means the default for its kind (bootstrap tokens expire,
/// admin tokens do not); `max_uses` `None` means unlimited.
pub async fn create(
    ops: &ClusterOps,
    scope: TokenScope,
    ttl: Option<Duration>,
    max_uses: Option<u32>,
) -> Result<CreatedToken, TokenError> {
    let secret = match scope {
        TokenScope::Service { .. } => {
            secret_with_prefix(raftmesh_api::identity::BOOTSTRAP_TOKEN_PREFIX)
        }
        TokenScope::Role(_) => new_secret(),
    };
    let id = new_token_id();
    let now = unix_ms();
    let (service, namespace, role, default_ttl) = match scope {
        TokenScope::Service { service, namespace } => (
            Some(service),
            Some(namespace),
            None,
            Some(DEFAULT_BOOTSTRAP_TTL),
        ),
        TokenScope::Role(r) => (None, None, Some(r), None),
    };
    let ttl = ttl.or(default_ttl);
    let resource = Resource {
        metadata: Metadata::named(id.clone()),
        spec: Spec::Token(TokenSpec {
            secret_sha256: hash_secret(&secret),
            service,
            namespace,
            role,
            created_at_ms: now,
            expires_at_ms: ttl
                .map(|t| now.saturating_add(u64::try_from(t.as_millis()).unwrap_or(u64::MAX))),
            max_uses,
            uses: 0,
            revoked: false,
        }),
    };
    resource
        .validate()
        .map_err(|e| TokenError::Invalid(e.to_string()))?;
    let key = resource.key();
    let new = resource.clone();
    let r = ops
        .update_from(&key, Some(None), 1, |_| {
            Change::<TokenError>::Put(new.clone())
        })
        .await;
    match r {
        Ok(Updated::Written(revision)) => Ok(CreatedToken {
            id,
            secret,
            resource: resource.with_revision(revision),
        }),
        Err(UpdateError::Conflict { .. }) | Ok(Updated::Kept(_)) => Err(TokenError::Conflict(
            format!("token id {id} is taken (a collision); create it again"),
        )),
        Err(e) => Err(e.into()),
    }
}

/// Revokes token `id`; answers the revision it is revoked at (its current
/// one if it already was).
pub async fn revoke(ops: &ClusterOps, id: &str) -> Result<u64, TokenError> {
    let key = ResourceKey::new(Kind::Token, DEFAULT_NAMESPACE, id);
    let r = ops
        .update(&key, 5, |cur| {
            let Some(cur) = cur else {
                return Change::Refuse(TokenError::NotFound(id.to_string()));
            };
            let mut updated = (**cur).clone();
            match &mut updated.spec {
                Spec::Token(t) if t.revoked => Change::Keep,
                Spec::Token(t) => {
                    t.revoked = true;
                    Change::Put(updated)
                }
                _ => Change::Refuse(TokenError::Invalid(format!("{key} holds no token spec"))),
            }
        })
        .await?;
    Ok(match r {
        Updated::Written(rev) => rev,
        Updated::Kept(cur) => cur.and_then(|c| c.metadata.revision).unwrap_or(0),
    })
}

/// Stores the first admin token (its SHA-256 only) unless one by that name
/// exists: create-only, so if two leaders race, the first stands.
pub async fn store_first_admin(
    ops: &ClusterOps,
    secret_sha256: String,
) -> Result<Updated, TokenError> {
    let key = ResourceKey::new(Kind::Token, DEFAULT_NAMESPACE, FIRST_ADMIN_TOKEN_ID);
    let resource = Resource {
        metadata: Metadata::named(FIRST_ADMIN_TOKEN_ID),
        spec: Spec::Token(TokenSpec {
            secret_sha256,
            role: Some(Role::Admin),
            created_at_ms: unix_ms(),
            ..Default::default()
        }),
    };
    let current = ops.reader().get(&key).1;
    let r = ops
        .update_from(&key, Some(current), 1, |cur| match cur {
            Some(_) => Change::<TokenError>::Keep,
            None => Change::Put(resource.clone()),
        })
        .await;
    match r {
        // Another leader stored it first: that one stands.
        Err(UpdateError::Conflict { .. }) => Ok(Updated::Kept(None)),
        other => Ok(other?),
    }
}

/// Whether the first admin token is stored.
pub fn first_admin_stored(reader: &StateReader) -> bool {
    reader
        .get(&ResourceKey::new(
            Kind::Token,
            DEFAULT_NAMESPACE,
            FIRST_ADMIN_TOKEN_ID,
        ))
        .1
        .is_some()
}

#[cfg(test)]
mod tests {
    #[test]
    fn made_up_tokens_get_a_bounded_number_of_raft_lookups() {
        let b = LookupBudget::default();
        let granted = (0..1000).filter(|_| b.try_take()).count();
        assert_eq!(
            granted, UNKNOWN_LOOKUPS_PER_SEC as usize,
            "a burst gets the budget, no more"
        );
    }

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
