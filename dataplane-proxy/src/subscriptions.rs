//! The services a proxy asks the control plane for: the fixed ones (its
//! `--upstream` and `--subscribe` services) and those learned from traffic
//! (a Host not seen before). Learned ones are bounded — at most
//! [`MAX_SUBSCRIPTIONS`], as meshd allows — and expire once no request
//! has used them for a whole idle period, so a client sending made-up
//! service names cannot grow what the proxy holds or is sent.

use std::collections::{BTreeSet, HashMap, HashSet};

use crate::compiled::ServiceId;

/// Most services one proxy subscribes to (meshd refuses more).
pub const MAX_SUBSCRIPTIONS: usize = 1_000;

/// A subscription's name on the wire: `name.namespace`.
pub fn name_of(id: &ServiceId) -> String {
    format!("{}.{}", id.1, id.0)
}

/// The local service a request's service is subscribed through: an
/// import from a peer (`svc.peer`) comes with the local `svc`.
pub fn local_id(id: &ServiceId) -> ServiceId {
    match id.1.split_once('.') {
        Some((svc, _peer)) => (id.0.clone(), svc.to_string()),
        None => id.clone(),
    }
}

fn id_of(name: &str) -> Option<ServiceId> {
    let (svc, ns) = name.split_once('.')?;
    Some((ns.to_string(), svc.to_string()))
}

/// What learning a service did.
#[derive(Debug, PartialEq, Eq)]
pub enum Learned {
    /// A new subscription, to send.
    New(String),
    /// Already subscribed (its use is noted).
    Known,
    /// Not taken: the set is full.
    Full,
}

/// The subscription set of one proxy, across its streams.
#[derive(Debug, Default)]
pub struct Subscriptions {
    fixed: BTreeSet<String>,
    all: BTreeSet<String>,
    /// Sweeps in a row a learned subscription went unused.
    idle_sweeps: HashMap<String, u8>,
    /// Learned subscriptions asked for again since the last sweep.
    asked: HashSet<String>,
}

impl Subscriptions {
    /// `fixed` never expire; `saved` (from the state directory) are
    /// learned ones from an earlier run.
    pub fn new(fixed: BTreeSet<String>, saved: BTreeSet<String>) -> Self {
        let mut all = fixed.clone();
        all.extend(
            saved
                .into_iter()
                .take(MAX_SUBSCRIPTIONS.saturating_sub(fixed.len())),
        );
        Self {
            fixed,
            all,
            ..Default::default()
        }
    }

    /// Every subscription, for the Hello and the state directory.
    pub fn all(&self) -> &BTreeSet<String> {
        &self.all
    }

    /// A service seen in traffic.
    pub fn learn(&mut self, id: &ServiceId) -> Learned {
        let name = name_of(id);
        if self.all.contains(&name) {
            self.asked.insert(name);
            return Learned::Known;
        }
        if self.all.len() >= MAX_SUBSCRIPTIONS {
            return Learned::Full;
        }
        self.all.insert(name.clone());
        Learned::New(name)
    }

    /// Forgets a learned (not fixed) subscription; whether it was one.
    pub fn forget_learned(&mut self, id: &ServiceId) -> bool {
        let name = name_of(id);
        if self.fixed.contains(&name) || !self.all.remove(&name) {
            return false;
        }
        self.idle_sweeps.remove(&name);
        self.asked.remove(&name);
        true
    }

    /// Forgets a subscription meshd refused.
    pub fn refused(&mut self, name: &str) {
        if !self.fixed.contains(name) {
            self.all.remove(name);
            self.idle_sweeps.remove(name);
        }
    }

    /// Called every half idle period: the learned subscriptions unused
    /// (per `used`, which also resets the mark) for two sweeps in a row,
    /// removed and returned (to unsubscribe).
    pub fn sweep(&mut self, mut used: impl FnMut(&ServiceId) -> bool) -> Vec<String> {
        let mut expired = Vec::new();
        for name in self.all.difference(&self.fixed) {
            let was_used = self.asked.contains(name) | id_of(name).is_some_and(|id| used(&id));
            if was_used {
                self.idle_sweeps.remove(name);
                continue;
            }
            let n = self.idle_sweeps.entry(name.clone()).or_default();
            *n += 1;
            if *n >= 2 {
                expired.push(name.clone());
            }
        }
        self.asked.clear();
        for name in &expired {
            self.all.remove(name);
            self.idle_sweeps.remove(name);
        }
        expired
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> ServiceId {
        ("default".into(), s.into())
    }

    #[test]
    fn learned_subscriptions_are_capped_and_expire_after_two_idle_sweeps() {
        let mut s = Subscriptions::new(["web.default".to_string()].into(), BTreeSet::new());
        assert_eq!(s.learn(&id("api")), Learned::New("api.default".into()));
        assert_eq!(s.learn(&id("db")), Learned::New("db.default".into()));
        assert_eq!(s.learn(&id("api")), Learned::Known);
        // api asked again, db used by requests: both stay.
        assert!(s.sweep(|i| i.1 == "db").is_empty());
        // Nothing used: one idle sweep is not enough...
        assert!(s.sweep(|_| false).is_empty());
        // ...two are; the fixed one never expires.
        assert_eq!(s.sweep(|_| false), vec!["api.default", "db.default"]);
        assert_eq!(s.all().iter().collect::<Vec<_>>(), vec!["web.default"]);
        // At the cap nothing new is taken.
        for i in 0..MAX_SUBSCRIPTIONS - 1 {
            assert!(matches!(s.learn(&id(&format!("s{i}"))), Learned::New(_)));
        }
        assert_eq!(s.learn(&id("one-more")), Learned::Full);
        s.refused("s0.default");
        assert!(matches!(s.learn(&id("one-more")), Learned::New(_)));
    }

    #[test]
    fn a_name_that_never_arrived_is_forgotten_at_once_a_fixed_one_never() {
        let mut s = Subscriptions::new(["web.default".to_string()].into(), BTreeSet::new());
        let made_up: ServiceId = ("default".into(), "xkcd".into());
        assert!(matches!(s.learn(&made_up), Learned::New(_)));
        assert!(s.forget_learned(&made_up));
        assert!(!s.all().contains("xkcd.default"));
        assert!(!s.forget_learned(&made_up), "forgotten twice");
        let web: ServiceId = ("default".into(), "web".into());
        assert!(!s.forget_learned(&web));
        assert!(s.all().contains("web.default"));
    }

    #[test]
    fn saved_subscriptions_count_toward_the_cap() {
        let saved = (0..MAX_SUBSCRIPTIONS + 10)
            .map(|i| format!("s{i}.default"))
            .collect();
        let s = Subscriptions::new(["web.default".to_string()].into(), saved);
        assert_eq!(s.all().len(), MAX_SUBSCRIPTIONS);
        assert!(s.all().contains("web.default"));
    }
}
