//! Small value parsers shared by the test kit's command-line tools.

/// A number written the way people write large numbers: `100000`, `100,000` or `100_000`.
///
/// # Errors
/// A message naming the text when it is not a whole number.
pub fn number(text: &str) -> Result<u64, String> {
    text.replace([',', '_'], "")
        .parse::<u64>()
        .map_err(|_| format!("{text:?} is not a number"))
}

/// A [`number`] of at least 1.
///
/// # Errors
/// A message naming the text when it is not a whole number of at least 1.
pub fn count(text: &str) -> Result<u64, String> {
    match number(text)? {
        0 => Err(format!("{text:?} must be at least 1")),
        n => Ok(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_take_thousands_separators_and_counts_refuse_zero() {
        assert_eq!(number("100,000"), Ok(100_000));
        assert_eq!(number("2_000"), Ok(2_000));
        assert_eq!(number("0"), Ok(0));
        assert!(number("many").unwrap_err().contains("\"many\""));
        assert_eq!(count("3"), Ok(3));
        assert!(count("0").unwrap_err().contains("at least 1"));
    }
}
