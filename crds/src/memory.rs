//! Memory thresholds: a percentage of a container limit or an absolute size.

use std::fmt;

/// Why a memory threshold could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ThresholdError {
    /// The text is neither `N%` nor a size such as `512Mi`.
    #[error("{field}: {value:?} is neither a percentage like \"80%\" nor a size like \"1536Mi\"")]
    Syntax {
        /// The field the value came from.
        field: String,
        /// The offending value.
        value: String,
    },
    /// A percentage outside 1..=100.
    #[error("{field}: {value:?} must be between 1% and 100%")]
    PercentRange {
        /// The field the value came from.
        field: String,
        /// The offending value.
        value: String,
    },
}

/// A memory threshold, as given in the spec.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Threshold {
    /// Percent of the container's memory limit.
    Percent(u8),
    /// An absolute number of bytes.
    Bytes(u64),
}

impl Threshold {
    /// Reads `80%`, `1536Mi`, `2G` or `1048576`; `field` names the setting in errors.
    ///
    /// # Errors
    /// [`ThresholdError`] naming the field and the value when the text is not a threshold.
    pub fn parse(field: &str, value: &str) -> Result<Self, ThresholdError> {
        let syntax = || ThresholdError::Syntax {
            field: field.to_owned(),
            value: value.to_owned(),
        };
        let text = value.trim();
        if let Some(number) = text.strip_suffix('%') {
            let percent: u32 = number.parse().map_err(|_| syntax())?;
            return match u8::try_from(percent) {
                Ok(p) if (1..=100).contains(&p) => Ok(Self::Percent(p)),
                _ => Err(ThresholdError::PercentRange {
                    field: field.to_owned(),
                    value: value.to_owned(),
                }),
            };
        }
        const SUFFIXES: [(&str, u64); 8] = [
            ("Ki", 1 << 10),
            ("Mi", 1 << 20),
            ("Gi", 1 << 30),
            ("Ti", 1 << 40),
            ("k", 1_000),
            ("M", 1_000_000),
            ("G", 1_000_000_000),
            ("T", 1_000_000_000_000),
        ];
        let (digits, unit) = SUFFIXES
            .iter()
            .find_map(|(suffix, unit)| text.strip_suffix(suffix).map(|d| (d, *unit)))
            .unwrap_or((text, 1));
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(syntax());
        }
        let n: u64 = digits.parse().map_err(|_| syntax())?;
        n.checked_mul(unit).map(Self::Bytes).ok_or_else(syntax)
    }

    /// The threshold in bytes for a container with the given memory limit; `None` for a
    /// percentage when the limit is unknown.
    #[must_use]
    pub fn resolve(self, limit_bytes: Option<u64>) -> Option<u64> {
        match self {
            Self::Bytes(b) => Some(b),
            Self::Percent(p) => {
                limit_bytes.map(|l| l / 100 * u64::from(p) + l % 100 * u64::from(p) / 100)
            }
        }
    }
}

impl fmt::Display for Threshold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Percent(p) => write!(f, "{p}%"),
            Self::Bytes(b) => write!(f, "{b} bytes"),
        }
    }
}

/// Reads a Kubernetes memory quantity such as `512Mi`, `1G` or `1073741824` as bytes
/// (the subset used for memory: binary and decimal suffixes, no fractions or exponents).
#[must_use]
pub fn parse_quantity_bytes(quantity: &str) -> Option<u64> {
    match Threshold::parse("quantity", quantity) {
        Ok(Threshold::Bytes(b)) => Some(b),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_parse_in_percent_and_bytes() {
        let cases = [
            ("80%", Ok(Threshold::Percent(80))),
            ("100%", Ok(Threshold::Percent(100))),
            ("1536Mi", Ok(Threshold::Bytes(1536 << 20))),
            ("2G", Ok(Threshold::Bytes(2_000_000_000))),
            ("4096", Ok(Threshold::Bytes(4096))),
            ("1Ki", Ok(Threshold::Bytes(1024))),
        ];
        for (text, expected) in cases {
            assert_eq!(Threshold::parse("memory.soft", text), expected, "{text}");
        }
    }

    #[test]
    fn bad_thresholds_name_the_field_and_value() {
        let err = Threshold::parse("memory.hard", "0%").unwrap_err();
        assert_eq!(
            err.to_string(),
            "memory.hard: \"0%\" must be between 1% and 100%"
        );
        let err = Threshold::parse("memory.soft", "lots").unwrap_err();
        assert!(err.to_string().contains("memory.soft: \"lots\""), "{err}");
        assert!(Threshold::parse("memory.soft", "101%").is_err());
        assert!(Threshold::parse("memory.soft", "1.5Gi").is_err());
        assert!(Threshold::parse("memory.soft", "Mi").is_err());
        assert!(Threshold::parse("memory.soft", "99999999999999999999Ti").is_err());
    }

    #[test]
    fn percent_resolves_against_the_limit() {
        assert_eq!(Threshold::Percent(80).resolve(Some(1000)), Some(800));
        assert_eq!(
            Threshold::Percent(50).resolve(Some(u64::MAX)),
            Some(u64::MAX / 2)
        );
        assert_eq!(Threshold::Percent(80).resolve(None), None);
        assert_eq!(Threshold::Bytes(7).resolve(None), Some(7));
    }
}
