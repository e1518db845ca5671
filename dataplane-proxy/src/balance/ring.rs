//! Consistent hashing (`load_balancer: consistent-hash`): a ring of points,
//! [`POINTS`] per endpoint, placed by a hash of the endpoint's name, so
//! every proxy builds the same ring and an endpoint leaving moves only the
//! keys that were its own (≈ 1/n of them). A key goes to the first point at
//! or after its hash whose endpoint is usable.

use std::hash::Hasher;

use sha2::Digest;

/// Points per endpoint: the share of keys each gets varies by about
/// 1/√POINTS (8 %) around 1/n.
pub const POINTS: usize = 160;

/// A hash ring over some endpoints of a service.
#[derive(Debug, Clone)]
pub struct Ring {
    /// (point, endpoint index into the service's endpoints), by point.
    points: Vec<(u64, usize)>,
}

impl Ring {
    /// The ring of `endpoints`: (index into the service's endpoints, name).
    pub fn new<'a>(endpoints: impl Iterator<Item = (usize, &'a str)>) -> Self {
        let mut points = Vec::new();
        for (i, name) in endpoints {
            for k in 0..POINTS {
                let d = sha2::Sha256::digest(format!("{name}#{k}").as_bytes());
                let mut b = [0u8; 8];
                b.copy_from_slice(&d[..8]);
                points.push((u64::from_be_bytes(b), i));
            }
        }
        points.sort_unstable();
        Ring { points }
    }

    /// The endpoint for `key`: the first point at or after it (wrapping)
    /// whose endpoint is among `usable`.
    pub fn find(&self, key: u64, usable: &[usize]) -> Option<usize> {
        let start = self.points.partition_point(|(p, _)| *p < key);
        let n = self.points.len();
        (0..n)
            .map(|k| self.points[(start + k) % n].1)
            .find(|i| usable.contains(i))
    }
}

/// A key's place on the ring: FNV-1a (stable across builds and proxies)
/// with a final mix, so near keys land far apart.
pub fn key_hash(key: &[u8]) -> u64 {
    let mut h = fnv::FnvHasher::default();
    h.write(key);
    let mut x = h.finish();
    // splitmix64's finaliser.
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("api-{i}")).collect()
    }

    #[test]
    fn one_endpoint_of_ten_leaving_moves_about_a_tenth_of_the_keys_and_only_its_own() {
        let names = names(10);
        let ring = Ring::new(names.iter().enumerate().map(|(i, n)| (i, n.as_str())));
        let all: Vec<usize> = (0..10).collect();
        let without_3: Vec<usize> = (0..10).filter(|i| *i != 3).collect();
        let keys = 100_000;
        let mut moved = 0;
        for k in 0..keys {
            let h = key_hash(format!("user-{k}").as_bytes());
            let before = ring.find(h, &all).unwrap();
            let after = ring.find(h, &without_3).unwrap();
            if before != after {
                // Only the leaving endpoint's keys move.
                assert_eq!(before, 3);
                moved += 1;
            } else {
                assert_ne!(before, 3);
            }
        }
        let share = f64::from(moved) / f64::from(keys);
        let shares: Vec<String> = (0..10)
            .map(|e| {
                let n = (0..keys)
                    .filter(|k| {
                        ring.find(key_hash(format!("user-{k}").as_bytes()), &all) == Some(e)
                    })
                    .count();
                format!("{:.2} %", 100.0 * n as f64 / f64::from(keys))
            })
            .collect();
        eprintln!(
            "one of ten endpoints leaving moved {:.2} % of {keys} keys; the ten shares: {}",
            share * 100.0,
            shares.join(", ")
        );
        // 1/10, within 3 standard deviations of the ring's spread
        // (1/√160 ≈ 8 % of the share).
        assert!((0.076..=0.124).contains(&share), "moved {share}");
        // The same ring from the names alone, in another order: every proxy
        // agrees.
        let again = Ring::new(names.iter().enumerate().rev().map(|(i, n)| (i, n.as_str())));
        assert_eq!(again.points, ring.points);
    }

    #[test]
    fn keys_spread_over_every_endpoint() {
        let names = names(4);
        let ring = Ring::new(names.iter().enumerate().map(|(i, n)| (i, n.as_str())));
        let all: Vec<usize> = (0..4).collect();
        let mut counts = [0u32; 4];
        for k in 0..40_000 {
            counts[ring.find(key_hash(&u32::to_be_bytes(k)), &all).unwrap()] += 1;
        }
        for c in counts {
            assert!((7_000..=13_000).contains(&c), "{counts:?}");
        }
        assert_eq!(ring.find(1, &[]), None);
    }
}
