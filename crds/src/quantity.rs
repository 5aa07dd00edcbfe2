//! Kubernetes resource quantities (`1.5Gi`, `1536Mi`, `1e9`, `500M`, `250m`), read exactly as the
//! API server reads them.
//!
//! A quantity is held in nano-units (`1` = 10^9 nano-units) as an `i128`, which represents every
//! quantity a pod spec can carry (up to `8Ei`, down to `1n`) without rounding, so `1.5Gi` is
//! exactly 1,610,612,736 bytes and `100m` is exactly a tenth of one.
//!
//! Why not a crate: k8s-openapi's `Quantity` is only the string, and `kube_quantity` parses the
//! number as an `f64` and converts the mantissa to an integer before scaling in its integer
//! accessors, which loses `1.5Gi`'s half. The grammar is small; the tests below hold it to the
//! API server's examples. `tests/podrunner`'s kubelet stand-in reads quantities with it too.
//!
//! ```
//! use migrate_crds::quantity::{parse_nanos, whole_bytes};
//! assert_eq!(whole_bytes("1.5Gi"), Ok(1_610_612_736));
//! assert_eq!(whole_bytes("1e9"), Ok(1_000_000_000));
//! assert_eq!(parse_nanos("100m"), Ok(100_000_000)); // a tenth of one unit
//! assert!(whole_bytes("100m").is_err()); // not a whole number of bytes
//! ```

/// Why a quantity could not be read as a number of bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    /// The text is not a Kubernetes quantity.
    #[error("{0:?} is not a Kubernetes quantity such as 500m or 1536Mi")]
    Syntax(String),
    /// A quantity with a fraction of a byte, such as `100m` (a tenth of a byte) or `1.5`.
    #[error("{0:?} is not a whole number of bytes{hint}", hint = milli_hint(.0))]
    NotWholeBytes(String),
    /// A negative quantity, or one beyond 2^64 bytes.
    #[error("{0:?} is out of range for a number of bytes")]
    OutOfRange(String),
}

/// For `100m`: what was probably meant, since `m` means thousandths.
fn milli_hint(text: &str) -> String {
    match text.trim().strip_suffix('m') {
        Some(number) => {
            format!(" (the m suffix means thousandths of a byte; write {number}M or {number}Mi)")
        }
        None => String::new(),
    }
}

const NANO: i128 = 1_000_000_000;

/// The quantity in nano-units: `1` is 10^9, `1Ki` is 1024 × 10^9, `100m` is 10^8.
///
/// Accepts what the API server accepts: an optional sign, digits with an optional fraction, and
/// one of the binary suffixes (`Ki` … `Ei`), the decimal ones (`n`, `u`, `m`, `k`, `M` … `E`) or
/// a decimal exponent (`e3`, `E-2`). Fractions finer than a nano-unit are rounded up, as
/// Kubernetes does.
///
/// # Errors
/// [`QuantityError::Syntax`] when `text` is not a quantity (or is too large for `i128`).
pub fn parse_nanos(text: &str) -> Result<i128, QuantityError> {
    let invalid = || QuantityError::Syntax(text.to_owned());
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

/// The quantity as a whole number of bytes, for sizes a person wrote (a memory limit or
/// threshold): `1.5Gi` is 1,610,612,736, `1e9` is 1,000,000,000; `100m` (a tenth of a byte) is
/// refused rather than rounded, since it is almost always a mistake for `100M` or `100Mi`.
///
/// # Errors
/// [`QuantityError`]: not a quantity, not a whole number of bytes, negative or above 2^64.
pub fn whole_bytes(text: &str) -> Result<u64, QuantityError> {
    let nanos = parse_nanos(text)?;
    if nanos % NANO != 0 {
        return Err(QuantityError::NotWholeBytes(text.to_owned()));
    }
    u64::try_from(nanos / NANO).map_err(|_| QuantityError::OutOfRange(text.to_owned()))
}

/// The quantity in bytes rounded up, for sizes a program reported (metrics-server's usage,
/// `1.5Ki` is 1536, `100m` is 1), as the kubelet rounds them.
///
/// # Errors
/// [`QuantityError`]: not a quantity, negative or above 2^64.
pub fn bytes_rounded_up(text: &str) -> Result<u64, QuantityError> {
    let nanos = parse_nanos(text)?;
    if nanos < 0 {
        return Err(QuantityError::OutOfRange(text.to_owned()));
    }
    u64::try_from((nanos + NANO - 1) / NANO).map_err(|_| QuantityError::OutOfRange(text.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every way Kubernetes writes a memory size reads as the same bytes the API server means.
    #[test]
    fn sizes_read_as_kubernetes_reads_them() {
        for (text, bytes) in [
            ("1.5Gi", 1_610_612_736),
            ("1536Mi", 1_610_612_736),
            ("1e9", 1_000_000_000),
            ("1E9", 1_000_000_000),
            ("1G", 1_000_000_000),
            ("500M", 500_000_000),
            ("128974848", 128_974_848),
            ("129e6", 129_000_000),
            ("123Mi", 128_974_848),
            ("0.5Ki", 512),
            (".5Ki", 512),
            ("+2k", 2_000),
            ("1Ti", 1 << 40),
            ("8Ei", 8 << 60),
            ("1000m", 1),
            ("0", 0),
            (" 1Gi ", 1 << 30),
        ] {
            assert_eq!(whole_bytes(text), Ok(bytes), "{text}");
        }
    }

    /// A fraction of a byte is refused for a size, with a hint for the `m` suffix.
    #[test]
    fn fractions_of_a_byte_are_refused_and_explained() {
        for text in ["100m", "1.5", "0.1Ki", "1n"] {
            assert_eq!(
                whole_bytes(text),
                Err(QuantityError::NotWholeBytes(text.to_owned())),
                "{text}"
            );
        }
        assert_eq!(
            whole_bytes("100m").unwrap_err().to_string(),
            "\"100m\" is not a whole number of bytes (the m suffix means thousandths of a byte; write 100M or 100Mi)"
        );
        assert_eq!(
            whole_bytes("1.5").unwrap_err().to_string(),
            "\"1.5\" is not a whole number of bytes"
        );
    }

    /// Text that is no quantity, and sizes no u64 holds, are refused with what was given.
    #[test]
    fn text_that_is_no_quantity_is_refused() {
        for text in [
            "", "Mi", "1.2.3", "12XB", "1 Gi", "1gi", "1mi", "one gig", "1e99", "1e", "0x10",
            "1.5%",
        ] {
            assert_eq!(
                whole_bytes(text),
                Err(QuantityError::Syntax(text.to_owned())),
                "{text}"
            );
        }
        assert_eq!(
            whole_bytes("-1Gi"),
            Err(QuantityError::OutOfRange("-1Gi".to_owned()))
        );
        assert_eq!(
            whole_bytes("16Ei"),
            Err(QuantityError::OutOfRange("16Ei".to_owned()))
        );
    }

    /// Reported sizes are rounded up to whole bytes like the kubelet rounds them.
    #[test]
    fn reported_sizes_round_up() {
        assert_eq!(bytes_rounded_up("100m"), Ok(1));
        assert_eq!(bytes_rounded_up("1.5Ki"), Ok(1_536));
        assert_eq!(bytes_rounded_up("123456Ki"), Ok(123_456 * 1024));
        assert!(bytes_rounded_up("-1").is_err());
        assert!(bytes_rounded_up("lots").is_err());
    }
}
