//! Kubernetes resource quantities, read by the crds crate's exact parser; only what the
//! kubelet stand-in needs beyond it (a `resourceFieldRef`'s division) lives here.

pub use migrate_crds::quantity::{QuantityError, bytes_rounded_up as parse_bytes, parse_nanos};

/// One unit in nano-units, the parser's fixed point.
const NANO: i128 = 1_000_000_000;

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
    fn a_resource_field_is_divided_and_rounded_up_like_the_kubelet() {
        assert_eq!(divide_ceil("512Mi", "1").as_deref(), Ok("536870912"));
        assert_eq!(divide_ceil("512Mi", "1Mi").as_deref(), Ok("512"));
        assert_eq!(divide_ceil("500m", "1").as_deref(), Ok("1"));
        assert_eq!(divide_ceil("1500m", "1m").as_deref(), Ok("1500"));
        assert_eq!(divide_ceil("96Mi", "0").as_deref(), Ok("100663296"));
    }
}
