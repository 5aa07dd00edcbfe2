//! Memory thresholds: a percentage of a container limit or an absolute size.

use std::fmt;

use crate::quantity::{self, QuantityError};

/// Why a memory threshold could not be read. The messages are the ones the CRD's CEL rules give
/// at admission, so a pipeline file read without the API server gets the same answer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ThresholdError {
    /// The text is neither `N%` nor a quantity such as `512Mi`.
    #[error(
        "{field}: {value:?} is neither a percentage of the memory limit such as 80% nor a quantity such as 1536Mi"
    )]
    Syntax {
        /// The field the value came from.
        field: String,
        /// The offending value.
        value: String,
    },
    /// A percentage that is not a whole number in 1..=100.
    #[error("{field}: {value:?} is not a whole percentage between 1% and 100%")]
    PercentRange {
        /// The field the value came from.
        field: String,
        /// The offending value.
        value: String,
    },
    /// A bare number such as `800`: it would mean 800 bytes, which nobody means.
    #[error(
        "{field}: {value:?} has no unit, so it would mean {value} bytes; write a quantity with a unit such as {value}Mi, or a percentage of the memory limit such as 80%"
    )]
    NoUnit {
        /// The field the value came from.
        field: String,
        /// The offending value.
        value: String,
    },
    /// A quantity that is not a whole, representable number of bytes (`100m`, `-1Gi`).
    #[error("{field}: {source}")]
    Quantity {
        /// The field the value came from.
        field: String,
        /// What is wrong with the quantity (it names the value).
        source: QuantityError,
    },
    /// A size below [`MIN_THRESHOLD_BYTES`].
    #[error("{field}: {value:?} is below 1Mi, less than a worker uses before its first task")]
    BelowMinimum {
        /// The field the value came from.
        field: String,
        /// The offending value.
        value: String,
    },
}

/// The smallest size a threshold may have: 1 MiB. A worker's runtime uses more than that before
/// it takes its first task, so anything lower is a typo (`100Ki` for `100Mi`).
pub const MIN_THRESHOLD_BYTES: u64 = 1 << 20;

/// A memory threshold, as given in the spec.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Threshold {
    /// Percent of the container's memory limit.
    Percent(u8),
    /// An absolute number of bytes.
    Bytes(u64),
}

impl Threshold {
    /// Reads `80%` or a Kubernetes quantity with a unit (`1536Mi`, `1.5Gi`, `2G`, `1e9`) of at
    /// least 1Mi; `field` names the setting in errors.
    ///
    /// # Errors
    /// [`ThresholdError`] naming the field and the value when the text is not a threshold: not a
    /// percentage or quantity, a percentage outside 1..=100, a bare number, a fraction of a
    /// byte, or a size below 1Mi.
    pub fn parse(field: &str, value: &str) -> Result<Self, ThresholdError> {
        let text = value.trim();
        let at =
            |make: fn(String, String) -> ThresholdError| make(field.to_owned(), value.to_owned());
        if let Some(number) = text.strip_suffix('%') {
            let whole = !number.is_empty()
                && number.len() <= 3
                && number.bytes().all(|b| b.is_ascii_digit());
            return match number.parse::<u8>() {
                Ok(p) if whole && (1..=100).contains(&p) => Ok(Self::Percent(p)),
                _ => Err(at(|field, value| ThresholdError::PercentRange {
                    field,
                    value,
                })),
            };
        }
        let bare = !text.is_empty()
            && text
                .trim_start_matches(['+', '-'])
                .bytes()
                .all(|b| b.is_ascii_digit() || b == b'.');
        if bare && quantity::parse_nanos(text).is_ok() {
            return Err(at(|field, value| ThresholdError::NoUnit { field, value }));
        }
        let bytes = quantity::whole_bytes(text).map_err(|source| match source {
            QuantityError::Syntax(_) => at(|field, value| ThresholdError::Syntax { field, value }),
            source => ThresholdError::Quantity {
                field: field.to_owned(),
                source,
            },
        })?;
        if bytes < MIN_THRESHOLD_BYTES {
            return Err(at(|field, value| ThresholdError::BelowMinimum {
                field,
                value,
            }));
        }
        Ok(Self::Bytes(bytes))
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

/// Reads a Kubernetes memory quantity that a program reported, such as metrics-server's
/// `123456Ki` or a limit given on the command line, as bytes rounded up (see
/// [`quantity::bytes_rounded_up`]); `None` when it is not a non-negative quantity.
#[must_use]
pub fn parse_quantity_bytes(quantity: &str) -> Option<u64> {
    quantity::bytes_rounded_up(quantity).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Percentages and quantities with units, written every way Kubernetes reads them.
    #[test]
    fn thresholds_parse_in_percent_and_quantities() {
        let cases = [
            ("80%", Threshold::Percent(80)),
            ("100%", Threshold::Percent(100)),
            ("1%", Threshold::Percent(1)),
            ("1536Mi", Threshold::Bytes(1536 << 20)),
            ("1.5Gi", Threshold::Bytes(1536 << 20)),
            ("2G", Threshold::Bytes(2_000_000_000)),
            ("500M", Threshold::Bytes(500_000_000)),
            ("1e9", Threshold::Bytes(1_000_000_000)),
            ("1Mi", Threshold::Bytes(1 << 20)),
        ];
        for (text, expected) in cases {
            assert_eq!(
                Threshold::parse("memory.soft", text),
                Ok(expected),
                "{text}"
            );
        }
    }

    /// Each kind of bad threshold has its own message, naming the field and the value, the
    /// same words the CRD's CEL rules use at admission.
    #[test]
    fn bad_thresholds_say_what_is_wrong_with_the_value() {
        let cases = [
            (
                "0%",
                "memory.hard: \"0%\" is not a whole percentage between 1% and 100%",
            ),
            (
                "101%",
                "memory.hard: \"101%\" is not a whole percentage between 1% and 100%",
            ),
            (
                "1.5%",
                "memory.hard: \"1.5%\" is not a whole percentage between 1% and 100%",
            ),
            (
                "99999999999999999999%",
                "memory.hard: \"99999999999999999999%\" is not a whole percentage between 1% and 100%",
            ),
            (
                "800",
                "memory.hard: \"800\" has no unit, so it would mean 800 bytes; write a quantity with a unit such as 800Mi, or a percentage of the memory limit such as 80%",
            ),
            (
                "100m",
                "memory.hard: \"100m\" is not a whole number of bytes (the m suffix means thousandths of a byte; write 100M or 100Mi)",
            ),
            (
                "100Ki",
                "memory.hard: \"100Ki\" is below 1Mi, less than a worker uses before its first task",
            ),
            (
                "lots",
                "memory.hard: \"lots\" is neither a percentage of the memory limit such as 80% nor a quantity such as 1536Mi",
            ),
            (
                "Mi",
                "memory.hard: \"Mi\" is neither a percentage of the memory limit such as 80% nor a quantity such as 1536Mi",
            ),
            (
                "-1Gi",
                "memory.hard: \"-1Gi\" is out of range for a number of bytes",
            ),
            (
                "99999999999999999999Ti",
                "memory.hard: \"99999999999999999999Ti\" is neither a percentage of the memory limit such as 80% nor a quantity such as 1536Mi",
            ),
        ];
        for (text, message) in cases {
            let err = Threshold::parse("memory.hard", text).unwrap_err();
            assert_eq!(err.to_string(), message, "{text}");
        }
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
