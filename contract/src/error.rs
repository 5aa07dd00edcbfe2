//! Errors on one line, for logs, Events, dead-letter reasons and termination messages.

use std::error::Error;

/// The error and its sources, `outer: inner: innermost`. A source whose text is already part
/// of the line (some errors print their source in their own message) is not repeated.
///
/// ```
/// #[derive(Debug, thiserror::Error)]
/// #[error("cannot read the pipeline")]
/// struct Read(#[source] std::io::Error);
///
/// let e = Read(std::io::Error::other("permission denied"));
/// assert_eq!(
///     migrate_contract::error_chain(&e),
///     "cannot read the pipeline: permission denied"
/// );
/// ```
#[must_use]
pub fn error_chain(error: &dyn Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] Middle);

    #[derive(Debug, thiserror::Error)]
    #[error("middle")]
    struct Middle(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("request failed: {0}")]
    struct Repeating(#[source] std::io::Error);

    #[test]
    fn error_chains_are_flattened_in_order() {
        let e = Outer(Middle(std::io::Error::other("inner cause")));
        assert_eq!(error_chain(&e), "outer: middle: inner cause");
        assert_eq!(error_chain(&std::io::Error::other("alone")), "alone");
    }

    #[test]
    fn a_source_already_in_the_message_is_not_repeated() {
        let e = Repeating(std::io::Error::other("connection refused"));
        assert_eq!(error_chain(&e), "request failed: connection refused");
    }
}
