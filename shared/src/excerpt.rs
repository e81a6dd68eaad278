//! Text that came from outside, as messages show it: at most a short prefix
//! and the full length, so a 50 MB value makes a one-line error, not a 50 MB
//! log line or table item.

use std::borrow::Cow;

/// The most characters of an outside value a message quotes.
pub const VALUE_CHARS: usize = 64;
/// The most characters of one rule (which may quote values) a message shows.
pub const RULE_CHARS: usize = 512;

/// `text` cut to `max` characters, with its length in bytes when cut.
pub fn cut(text: &str, max: usize) -> Cow<'_, str> {
    match text.char_indices().nth(max) {
        Some((at, _)) => Cow::Owned(format!("{}... ({} bytes)", &text[..at], text.len())),
        None => Cow::Borrowed(text),
    }
}

/// A value quoted for a message (`"abc"`), cut to [`VALUE_CHARS`].
pub fn quoted(value: &str) -> String {
    match value.char_indices().nth(VALUE_CHARS) {
        Some((at, _)) => format!("{:?}... ({} bytes)", &value[..at], value.len()),
        None => format!("{value:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_values_become_a_prefix_and_a_length() {
        assert_eq!(quoted("short"), "\"short\"");
        let huge = "x".repeat(50_000_000);
        let q = quoted(&huge);
        assert!(q.len() < 100 && q.ends_with("(50000000 bytes)"), "{q}");
        assert_eq!(cut("abc", 2), "ab... (3 bytes)");
        assert_eq!(cut("abc", 3), "abc");
    }
}
