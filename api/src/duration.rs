//! Durations written as `2s`, `15m`, `24h` in resources, kept to the millisecond.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration in whole milliseconds, written in human form (`250ms`, `2s`, `1h 30m`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct HumanDuration {
    millis: u64,
}

impl HumanDuration {
    /// A duration of `millis` milliseconds.
    pub const fn from_millis(millis: u64) -> Self {
        Self { millis }
    }

    /// Whole milliseconds.
    pub const fn as_millis(self) -> u64 {
        self.millis
    }

    /// As a standard library duration.
    pub const fn as_duration(self) -> Duration {
        Duration::from_millis(self.millis)
    }
}

impl From<Duration> for HumanDuration {
    fn from(d: Duration) -> Self {
        Self {
            millis: u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
        }
    }
}

/// A duration that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration \"{input}\": {reason} (write e.g. 250ms, 2s, 15m, 24h)")]
pub struct InvalidDuration {
    input: String,
    reason: String,
}

impl FromStr for HumanDuration {
    type Err = InvalidDuration;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let d = humantime::parse_duration(s.trim()).map_err(|e| InvalidDuration {
            input: s.to_string(),
            reason: e.to_string(),
        })?;
        if d.subsec_nanos() % 1_000_000 != 0 {
            return Err(InvalidDuration {
                input: s.to_string(),
                reason: "finer than a millisecond".into(),
            });
        }
        Ok(d.into())
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.millis == 0 {
            return f.write_str("0s");
        }
        write!(f, "{}", humantime::format_duration(self.as_duration()))
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_common_forms() {
        assert_eq!("2s".parse::<HumanDuration>().unwrap().as_millis(), 2000);
        assert_eq!("250ms".parse::<HumanDuration>().unwrap().as_millis(), 250);
        assert_eq!("15m".parse::<HumanDuration>().unwrap().as_millis(), 900_000);
        assert_eq!(
            "1h 30m".parse::<HumanDuration>().unwrap().as_millis(),
            5_400_000
        );
    }

    #[test]
    fn rejects_garbage_with_a_hint() {
        let e = "2 parsecs"
            .parse::<HumanDuration>()
            .unwrap_err()
            .to_string();
        assert!(e.contains("invalid duration \"2 parsecs\""), "{e}");
        assert!(e.contains("write e.g."), "{e}");
        assert!("10us".parse::<HumanDuration>().is_err());
    }

    proptest! {
        #[test]
        fn display_parses_back(ms in 0u64..10_000_000_000) {
            let d = HumanDuration::from_millis(ms);
            prop_assert_eq!(d.to_string().parse::<HumanDuration>().unwrap(), d);
        }
    }
}
