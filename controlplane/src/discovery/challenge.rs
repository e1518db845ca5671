//! Server nonces for the proof of key possession. A proxy that reconnects
//! with its certificate first asks this node for a nonce
//! (`Discovery/Challenge`) and signs it, with its Hello's CSR, by its key.
//! A nonce is stateless until used — the issue time and a random part,
//! sealed by an HMAC under a key only this node knows — so strangers who
//! ask for millions cost no memory; a nonce that carried a verified proof
//! is remembered until it expires, so it works once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use rand::RngCore;
use ring::hmac;

/// How long a nonce stays valid.
pub const VALID_FOR: Duration = Duration::from_secs(60);

const TIME: usize = 8;
const RANDOM: usize = 16;
const TAG: usize = 32;
/// A nonce's length: issue time, random part, HMAC tag.
pub const NONCE_BYTES: usize = TIME + RANDOM + TAG;

/// Why a nonce is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NonceError {
    /// The Hello carries no nonce.
    #[error("the Hello has no proof nonce (ask this node for one with Discovery/Challenge; mesh-proxy older than meshd?)")]
    Missing,
    /// Another node's nonce, or not a nonce at all.
    #[error(
        "the proof nonce was not issued by this node (the proxy reconnected elsewhere: ask again)"
    )]
    Foreign,
    /// Older than [`VALID_FOR`], or from the future.
    #[error("the proof nonce has expired (it is valid for {}s)", VALID_FOR.as_secs())]
    Expired,
    /// Spent by an earlier Hello.
    #[error("the proof nonce was already used")]
    Used,
}

/// The nonces of one node.
pub struct Challenges {
    key: hmac::Key,
    used: Mutex<HashMap<Vec<u8>, u64>>,
}

impl Default for Challenges {
    fn default() -> Self {
        let mut k = [0u8; 32];
        rand::rng().fill_bytes(&mut k);
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, &k),
            used: Mutex::default(),
        }
    }
}

impl Challenges {
    /// A fresh nonce, issued at `now_ms`.
    pub fn issue(&self, now_ms: u64) -> Vec<u8> {
        let mut n = Vec::with_capacity(NONCE_BYTES);
        n.extend_from_slice(&now_ms.to_be_bytes());
        let mut r = [0u8; RANDOM];
        rand::rng().fill_bytes(&mut r);
        n.extend_from_slice(&r);
        let tag = hmac::sign(&self.key, &n);
        n.extend_from_slice(tag.as_ref());
        n
    }

    /// Whether `nonce` was issued here and is fresh (nothing is recorded).
    pub fn check(&self, nonce: &[u8], now_ms: u64) -> Result<(), NonceError> {
        if nonce.is_empty() {
            return Err(NonceError::Missing);
        }
        if nonce.len() != NONCE_BYTES {
            return Err(NonceError::Foreign);
        }
        let (body, tag) = nonce.split_at(TIME + RANDOM);
        hmac::verify(&self.key, body, tag).map_err(|_| NonceError::Foreign)?;
        let mut t = [0u8; TIME];
        t.copy_from_slice(&body[..TIME]);
        let issued = u64::from_be_bytes(t);
        if issued > now_ms + 1_000 || now_ms - issued.min(now_ms) > VALID_FOR.as_millis() as u64 {
            return Err(NonceError::Expired);
        }
        if self.lock().contains_key(nonce) {
            return Err(NonceError::Used);
        }
        Ok(())
    }

    /// Spends a nonce that carried a verified proof: refused if it was
    /// spent meanwhile (two Hellos racing with one nonce: one wins).
    pub fn spend(&self, nonce: &[u8], now_ms: u64) -> Result<(), NonceError> {
        self.check(nonce, now_ms)?;
        let mut used = self.lock();
        used.retain(|_, expires| *expires > now_ms);
        let expires = now_ms + VALID_FOR.as_millis() as u64 + 1_000;
        match used.insert(nonce.to_vec(), expires) {
            Some(_) => Err(NonceError::Used),
            None => Ok(()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Vec<u8>, u64>> {
        self.used
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000_000;

    #[test]
    fn a_nonce_works_once_here_only_and_only_while_fresh() {
        let c = Challenges::default();
        let n = c.issue(NOW);
        assert_eq!(n.len(), NONCE_BYTES);
        assert_eq!(c.check(&n, NOW + 1), Ok(()));
        assert_eq!(c.spend(&n, NOW + 1), Ok(()));
        assert_eq!(c.check(&n, NOW + 2), Err(NonceError::Used));
        assert_eq!(c.spend(&n, NOW + 2), Err(NonceError::Used));
        // Another node's nonce, a changed one, none at all.
        let other = Challenges::default().issue(NOW);
        assert_eq!(c.check(&other, NOW), Err(NonceError::Foreign));
        let mut changed = c.issue(NOW);
        changed[3] ^= 1;
        assert_eq!(c.check(&changed, NOW), Err(NonceError::Foreign));
        assert_eq!(c.check(&changed[..10], NOW), Err(NonceError::Foreign));
        assert_eq!(c.check(&[], NOW), Err(NonceError::Missing));
        // Stale, and from the future.
        let old = c.issue(NOW);
        let late = NOW + VALID_FOR.as_millis() as u64 + 1;
        assert_eq!(c.check(&old, late), Err(NonceError::Expired));
        assert_eq!(
            c.check(&c.issue(NOW + 10_000), NOW),
            Err(NonceError::Expired)
        );
    }

    #[test]
    fn spent_nonces_are_forgotten_once_they_expired_anyway() {
        let c = Challenges::default();
        for i in 0..100 {
            c.spend(&c.issue(NOW + i), NOW + i).unwrap();
        }
        let later = NOW + VALID_FOR.as_millis() as u64 * 3;
        c.spend(&c.issue(later), later).unwrap();
        assert_eq!(c.lock().len(), 1);
    }
}
