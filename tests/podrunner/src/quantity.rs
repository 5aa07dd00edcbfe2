//! Kubernetes resource quantities (`512Mi`, `1.5G`, `250m`, `1e3`), read exactly.
//!
//! A quantity is held in nano-units (`1` = 10^9 nano-units) as an `i128`, which represents every
//! quantity a pod spec can carry (up to `8Ei` and down to `1n`) without rounding.

/// Why a quantity could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    /// The text is not a Kubernetes quantity.
    #[error("{0:?} is not a quantity (e.g. 512Mi, 1G, 250m)")]
    Invalid(String),
}

const NANO: i128 = 1_000_000_000;

/// The quantity in nano-units.
///
/// # Errors
/// [`QuantityError::Invalid`] when `text` is not a quantity.
pub fn parse_nanos(text: &str) -> Result<i128, QuantityError> {
    let invalid = || QuantityError::Invalid(text.to_owned());
    let t = text.trim();
    let (negative, t) = match t.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    let number_end = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, suffix) = t.split_at(number_end);
    if number.is_empty() || number == "." {
        return Err(invalid());
    }
    let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
    if frac_part.contains('.') || frac_part.len() > 18 || int_part.len() > 20 {
        return Err(invalid());
    }
    let digits: i128 = format!("{int_part}{frac_part}")
        .parse()
        .map_err(|_| invalid())?;
    let scale = 10i128.pow(u32::try_from(frac_part.len()).map_err(|_| invalid())?);
    let multiplier: i128 = match suffix {
        "n" => 1,
        "u" => 1_000,
        "m" => 1_000_000,
        "" => NANO,
        "k" => NANO * 1_000,
        "M" => NANO * 1_000_000,
        "G" => NANO * 1_000_000_000,
        "T" => NANO * 1_000_000_000_000,
        "P" => NANO * 1_000_000_000_000_000,
        "E" => NANO * 1_000_000_000_000_000_000,
        "Ki" => NANO << 10,
        "Mi" => NANO << 20,
        "Gi" => NANO << 30,
        "Ti" => NANO << 40,
        "Pi" => NANO << 50,
        "Ei" => NANO << 60,
        exp if exp.starts_with(['e', 'E']) => {
            let power: i32 = exp[1..].parse().map_err(|_| invalid())?;
            if !(-9..=18).contains(&power) {
                return Err(invalid());
            }
            10i128.pow(u32::try_from(power + 9).map_err(|_| invalid())?)
        }
        _ => return Err(invalid()),
    };
    let product = digits.checked_mul(multiplier).ok_or_else(invalid)?;
    // Round up what is finer than a nano-unit, as Kubernetes does.
    let value = (product + scale - 1) / scale;
    Ok(if negative { -value } else { value })
}

/// The quantity in bytes (or whole units), rounded up: `1.5Ki` is 1536, `100m` is 1.
///
/// # Errors
/// [`QuantityError::Invalid`] when `text` is not a quantity or is negative.
pub fn parse_bytes(text: &str) -> Result<u64, QuantityError> {
    let nanos = parse_nanos(text)?;
    if nanos < 0 {
        return Err(QuantityError::Invalid(text.to_owned()));
    }
    u64::try_from((nanos + NANO - 1) / NANO).map_err(|_| QuantityError::Invalid(text.to_owned()))
}

/// What a `resourceFieldRef` exposes: `ceil(value / divisor)` as a decimal integer, as the
/// kubelet writes it (`limits.memory` of `512Mi` with the default divisor `1` is `536870912`).
/// A divisor of zero (what the API server stores for an unset one) counts as 1.
///
/// # Errors
/// [`QuantityError`] when either is not a quantity.
pub fn divide_ceil(value: &str, divisor: &str) -> Result<String, QuantityError> {
    let v = parse_nanos(value)?;
    // The API server defaults an unset divisor to "0", which the kubelet reads as 1.
    let d = match parse_nanos(divisor)? {
        0 => NANO,
        d => d,
    };
    let q = v / d;
    let ceil = if v % d != 0 && (v > 0) == (d > 0) {
        q + 1
    } else {
        q
    };
    Ok(ceil.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_decimal_and_milli_suffixes_are_read_exactly() {
        for (text, bytes) in [
            ("512Mi", 512 << 20),
            ("1Gi", 1 << 30),
            ("96Mi", 96 << 20),
            ("1G", 1_000_000_000),
            ("1.5Ki", 1_536),
            ("2k", 2_000),
            ("1e3", 1_000),
            ("123", 123),
            ("100m", 1),
            ("0", 0),
        ] {
            assert_eq!(parse_bytes(text), Ok(bytes), "{text}");
        }
    }

    #[test]
    fn text_that_is_no_quantity_is_refused() {
        for text in ["", "Mi", "1.2.3", "12XB", "-1Gi", "1e99"] {
            assert!(parse_bytes(text).is_err(), "{text}");
        }
    }

    #[test]
    fn a_resource_field_is_divided_and_rounded_up_like_the_kubelet() {
        assert_eq!(divide_ceil("512Mi", "1").as_deref(), Ok("536870912"));
        assert_eq!(divide_ceil("512Mi", "1Mi").as_deref(), Ok("512"));
        assert_eq!(divide_ceil("500m", "1").as_deref(), Ok("1"));
        assert_eq!(divide_ceil("1500m", "1m").as_deref(), Ok("1500"));
        assert_eq!(divide_ceil("96Mi", "0").as_deref(), Ok("100663296"));
    }
}
