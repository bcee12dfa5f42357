//! Durations written the way operators write them: `"30m"`, `"5s"`,
//! `"1h30m"`, `"500ms"` (units `ms`, `s`, `m`, `h`, `d`; components may be
//! combined, largest first is customary but not required).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A [`Duration`] that (de)serializes as a human string such as `"30m"`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct ReadableDuration(pub Duration);

impl ReadableDuration {
    /// `n` seconds.
    pub const fn secs(n: u64) -> Self {
        ReadableDuration(Duration::from_secs(n))
    }

    /// `n` minutes.
    pub const fn minutes(n: u64) -> Self {
        ReadableDuration(Duration::from_secs(n * 60))
    }
}

const UNITS: [(&str, u128); 5] =
    [("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1_000), ("ms", 1)];

impl FromStr for ReadableDuration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("empty duration".into());
        }
        let mut total_ms: u128 = 0;
        let mut rest = s;
        while !rest.is_empty() {
            let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
            if digits == 0 {
                return Err(format!("duration {s:?}: expected a number at {rest:?}"));
            }
            let n: u128 = rest[..digits].parse().map_err(|e| format!("duration {s:?}: {e}"))?;
            rest = &rest[digits..];
            let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
            let unit = &rest[..unit_len];
            let ms = UNITS
                .iter()
                .find(|(name, _)| *name == unit)
                .map(|(_, ms)| *ms)
                .ok_or_else(|| format!("duration {s:?}: unknown unit {unit:?} (use ms, s, m, h or d)"))?;
            total_ms = total_ms.saturating_add(n.saturating_mul(ms));
            rest = &rest[unit_len..];
        }
        let ms = u64::try_from(total_ms).map_err(|_| format!("duration {s:?} is too long"))?;
        Ok(ReadableDuration(Duration::from_millis(ms)))
    }
}

impl fmt::Display for ReadableDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ms = self.0.as_millis();
        if ms == 0 {
            return write!(f, "0s");
        }
        for (name, unit) in UNITS {
            if ms >= unit {
                write!(f, "{}{name}", ms / unit)?;
                ms %= unit;
            }
        }
        Ok(())
    }
}

impl Serialize for ReadableDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for ReadableDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Duration {
        s.parse::<ReadableDuration>().unwrap().0
    }

    #[test]
    fn parses_units_and_combinations() {
        assert_eq!(parse("30m"), Duration::from_secs(1800));
        assert_eq!(parse("5s"), Duration::from_secs(5));
        assert_eq!(parse("1h30m"), Duration::from_secs(5400));
        assert_eq!(parse("250ms"), Duration::from_millis(250));
        assert_eq!(parse("1d"), Duration::from_secs(86_400));
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "m", "10", "10x", "1.5h", "-3s"] {
            assert!(bad.parse::<ReadableDuration>().is_err(), "{bad:?} should fail");
        }
    }

    #[test]
    fn displays_round_trip() {
        for s in ["30m", "5s", "1h30m", "1s500ms", "0s"] {
            assert_eq!(s.parse::<ReadableDuration>().unwrap().to_string(), s);
        }
    }
}
