//! Scalar value types of the config file that need exact parsing: percents and durations.

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use std::fmt;
use std::time::Duration;

/// A share of buckets, kept as hundredths of a percent (= buckets out of 10,000).
///
/// Parsed from the YAML scalar's decimal text, never through float arithmetic, so
/// `0.29` is exactly 29 buckets (docs/routing.md#bucketing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Percent(u16);

impl Percent {
    /// 0 %.
    pub const ZERO: Percent = Percent(0);
    /// 100 %.
    pub const FULL: Percent = Percent(10_000);

    /// The number of buckets (hundredths of a percent) this share covers.
    pub fn buckets(self) -> u16 {
        self.0
    }

    /// A share from a bucket count; counts above 10,000 are capped.
    pub fn from_buckets(buckets: u16) -> Percent {
        Percent(buckets.min(10_000))
    }

    /// The share as a ratio in `0..=1`, for the `rampart_split_ratio` gauge.
    pub fn ratio(self) -> f64 {
        f64::from(self.0) / 10_000.0
    }

    /// Parses `"10"`, `"10.5"`, `"10.25"`: 0 to 100 with at most two decimals.
    pub fn parse(text: &str) -> Result<Percent, String> {
        let text = text.trim();
        let (whole, frac) = match text.split_once('.') {
            Some((w, f)) => (w, f),
            None => (text, ""),
        };
        let digits_only = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if whole.is_empty() || !digits_only(whole) || !digits_only(frac) {
            return Err(format!(
                "invalid percent {text:?}: expected a number from 0 to 100"
            ));
        }
        let frac_trimmed = frac.trim_end_matches('0');
        if frac_trimmed.len() > 2 {
            return Err(format!("invalid percent {text}: at most two decimals"));
        }
        let whole: u32 = whole
            .parse()
            .map_err(|_| format!("invalid percent {text}: expected a number from 0 to 100"))?;
        let mut hundredths: u32 = 0;
        for (i, b) in frac_trimmed.bytes().enumerate() {
            let digit = u32::from(b - b'0');
            hundredths += if i == 0 { digit * 10 } else { digit };
        }
        let total = whole.saturating_mul(100).saturating_add(hundredths);
        if total > 10_000 {
            return Err(format!("invalid percent {text}: must be between 0 and 100"));
        }
        Ok(Percent(total as u16))
    }
}

impl fmt::Display for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (whole, frac) = (self.0 / 100, self.0 % 100);
        if frac == 0 {
            write!(f, "{whole}")
        } else if frac % 10 == 0 {
            write!(f, "{whole}.{}", frac / 10)
        } else {
            write!(f, "{whole}.{frac:02}")
        }
    }
}

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PercentVisitor;
        impl Visitor<'_> for PercentVisitor {
            type Value = Percent;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a percent from 0 to 100 with at most two decimals")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Percent, E> {
                Percent::parse(&v.to_string()).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Percent, E> {
                Percent::parse(&v.to_string()).map_err(E::custom)
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Percent, E> {
                // Display of f64 is the shortest text that reads back as the same float,
                // which for a YAML literal like 0.29 is that literal's own digits.
                if !v.is_finite() {
                    return Err(E::custom("percent must be a finite number"));
                }
                Percent::parse(&format!("{v}")).map_err(E::custom)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Percent, E> {
                Percent::parse(v).map_err(E::custom)
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Percent, E> {
                if v == super::lenient::PLACEHOLDER {
                    return Ok(Percent::ZERO);
                }
                Err(E::invalid_type(de::Unexpected::Bytes(v), &self))
            }
        }
        deserializer.deserialize_any(PercentVisitor)
    }
}

/// A duration written as `500ms`, `30s`, `5m` or `1h`, or a sum such as `1h 30m`.
///
/// Only these four units: the same grammar as the Helm chart's schema
/// (`^([0-9]+(ms|s|m|h) ?)+$`), so a value the chart accepts is one Rampart accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct DurationValue(pub Duration);

impl DurationValue {
    /// Parses `500ms`, `30s`, `5m`, `1h` and sums of them (`1h30m`, `1m 30s`).
    pub fn parse(text: &str) -> Result<DurationValue, String> {
        let invalid = || {
            format!("invalid duration {text:?}: write a whole number and a unit, ms, s, m or h (e.g. 500ms, 30s, 5m, 1h)")
        };
        let mut rest = text.trim();
        if rest.is_empty() {
            return Err(invalid());
        }
        let mut total = Duration::ZERO;
        while !rest.is_empty() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return Err(invalid());
            }
            let (number, after) = rest.split_at(digits);
            let number: u64 = number.parse().map_err(|_| invalid())?;
            let (unit, after) = if let Some(a) = after.strip_prefix("ms") {
                (Duration::from_millis(1), a)
            } else if let Some(a) = after.strip_prefix('s') {
                (Duration::from_secs(1), a)
            } else if let Some(a) = after.strip_prefix('m') {
                (Duration::from_secs(60), a)
            } else if let Some(a) = after.strip_prefix('h') {
                (Duration::from_secs(3600), a)
            } else if after.is_empty() && total.is_zero() {
                return Err(format!(
                    "invalid duration {text:?}: a unit is required (e.g. {number}s or {number}ms)"
                ));
            } else {
                return Err(invalid());
            };
            let term = u32::try_from(number)
                .ok()
                .and_then(|n| unit.checked_mul(n))
                .ok_or_else(|| format!("invalid duration {text:?}: too long"))?;
            total = total
                .checked_add(term)
                .ok_or_else(|| format!("invalid duration {text:?}: too long"))?;
            rest = after.strip_prefix(' ').unwrap_or(after);
        }
        Ok(DurationValue(total))
    }
}

impl<'de> Deserialize<'de> for DurationValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurationVisitor;
        impl Visitor<'_> for DurationVisitor {
            type Value = DurationValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as 500ms, 30s, 5m or 1h")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<DurationValue, E> {
                DurationValue::parse(v).map_err(E::custom)
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<DurationValue, E> {
                if v == super::lenient::PLACEHOLDER {
                    return Ok(DurationValue(Duration::ZERO));
                }
                Err(E::invalid_type(de::Unexpected::Bytes(v), &self))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<DurationValue, E> {
                Err(E::custom(format!(
                    "invalid duration {v}: a unit is required (e.g. {v}s or {v}ms)"
                )))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<DurationValue, E> {
                Err(E::custom(format!(
                    "invalid duration {v}: a unit is required (e.g. {v}s)"
                )))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<DurationValue, E> {
                Err(E::custom(format!(
                    "invalid duration {v}: write a whole number and a unit, ms, s, m or h (e.g. 1500ms)"
                )))
            }
        }
        deserializer.deserialize_any(DurationVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percents_become_exact_bucket_counts() {
        assert_eq!(Percent::parse("10").map(Percent::buckets), Ok(1000));
        assert_eq!(Percent::parse("10.25").map(Percent::buckets), Ok(1025));
        assert_eq!(Percent::parse("0.29").map(Percent::buckets), Ok(29));
        assert_eq!(Percent::parse("0.5").map(Percent::buckets), Ok(50));
        assert_eq!(Percent::parse("100").map(Percent::buckets), Ok(10_000));
        assert_eq!(Percent::parse("100.00").map(Percent::buckets), Ok(10_000));
    }

    #[test]
    fn percents_outside_the_grammar_are_refused() {
        assert!(Percent::parse("100.01").is_err());
        assert!(Percent::parse("10.255").is_err());
        assert!(Percent::parse("-1").is_err());
        assert!(Percent::parse("1e2").is_err());
        assert!(Percent::parse("").is_err());
        assert!(Percent::parse(".5").is_err());
    }

    #[test]
    fn durations_take_ms_s_m_h_and_sums_of_them() {
        let ms = |t: &str| DurationValue::parse(t).map(|d| d.0.as_millis());
        assert_eq!(ms("500ms"), Ok(500));
        assert_eq!(ms("30s"), Ok(30_000));
        assert_eq!(ms("5m"), Ok(300_000));
        assert_eq!(ms("1h"), Ok(3_600_000));
        assert_eq!(ms("1h30m"), Ok(5_400_000));
        assert_eq!(ms(" 1m 30s "), Ok(90_000));
        assert_eq!(ms("0s"), Ok(0));
    }

    #[test]
    fn durations_outside_the_grammar_name_only_the_units_rampart_reads() {
        for text in [
            "5x", "1d", "2weeks", "1.5s", "s", "", "10 s", "1h  30m", "-1s",
        ] {
            let Err(e) = DurationValue::parse(text) else {
                panic!("{text:?} was accepted");
            };
            let advice = e.split_once(": ").map(|(_, a)| a).unwrap_or_default();
            assert!(!advice.contains("week") && !advice.contains("month"), "{e}");
            assert!(e.contains("ms, s, m or h"), "{e}");
        }
        let Err(e) = DurationValue::parse("30") else {
            panic!("a bare number was accepted");
        };
        assert!(e.contains("a unit is required (e.g. 30s or 30ms)"), "{e}");
        assert!(DurationValue::parse("99999999999h").is_err());
    }

    #[test]
    fn percents_print_as_written() {
        for text in ["0", "0.29", "10", "10.5", "10.25", "100"] {
            assert_eq!(
                Percent::parse(text).map(|p| p.to_string()),
                Ok(text.to_string())
            );
        }
    }
}
