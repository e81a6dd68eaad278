//! DNS name rules for configured domains and rendered hostnames.
//!
//! Route53 stores names case-insensitively and accepts `_` (service names like
//! `my_svc` produce such records), so labels are letters, digits, `-` and `_`,
//! never starting or ending with `-`.

use std::fmt;

/// Why a name is not a valid DNS name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsNameError {
    Empty,
    TooLong(usize),
    EmptyLabel,
    LabelTooLong(String),
    BadCharacter(String, char),
    HyphenAtEdge(String),
}

impl fmt::Display for DnsNameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => write!(f, "the name is empty"),
            Self::TooLong(n) => write!(f, "the name is {n} characters long, more than 253"),
            Self::EmptyLabel => write!(f, "the name has an empty label (a leading, trailing or double dot)"),
            Self::LabelTooLong(l) => write!(f, "label {} is longer than 63 characters", crate::excerpt::quoted(l)),
            Self::BadCharacter(l, c) => {
                write!(
                    f,
                    "label {} has {c:?}; labels hold only letters, digits, '-' and '_'",
                    crate::excerpt::quoted(l)
                )
            }
            Self::HyphenAtEdge(l) => write!(f, "label {} starts or ends with '-'", crate::excerpt::quoted(l)),
        }
    }
}

impl std::error::Error for DnsNameError {}

/// Checks a name written without a trailing dot.
pub fn validate(name: &str) -> Result<(), DnsNameError> {
    if name.is_empty() {
        return Err(DnsNameError::Empty);
    }
    if name.len() > 253 {
        return Err(DnsNameError::TooLong(name.len()));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err(DnsNameError::EmptyLabel);
        }
        if label.len() > 63 {
            return Err(DnsNameError::LabelTooLong(label.to_owned()));
        }
        if let Some(c) = label.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_')) {
            return Err(DnsNameError::BadCharacter(label.to_owned(), c));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(DnsNameError::HyphenAtEdge(label.to_owned()));
        }
    }
    Ok(())
}

/// Whether `name` is `domain` or a name below it (both lower-case, no trailing dot).
pub fn is_within(name: &str, domain: &str) -> bool {
    name == domain || name.strip_suffix(domain).is_some_and(|head| head.ends_with('.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_service_names() {
        for ok in ["mesh.local", "redis.mesh.local", "my_svc.mesh.local", "a-b.c", "x"] {
            assert_eq!(validate(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn rejects_with_reason() {
        assert_eq!(validate(""), Err(DnsNameError::Empty));
        assert_eq!(validate(".svc.mesh.local"), Err(DnsNameError::EmptyLabel));
        assert_eq!(validate("a..b"), Err(DnsNameError::EmptyLabel));
        assert_eq!(validate("-a.b"), Err(DnsNameError::HyphenAtEdge("-a".into())));
        assert_eq!(validate("a b.c"), Err(DnsNameError::BadCharacter("a b".into(), ' ')));
        assert!(matches!(validate(&"a".repeat(64)), Err(DnsNameError::LabelTooLong(_))));
        assert!(matches!(validate(&["abc"; 70].join(".")), Err(DnsNameError::TooLong(279))));
    }

    #[test]
    fn within_domain() {
        assert!(is_within("redis.mesh.local", "mesh.local"));
        assert!(is_within("mesh.local", "mesh.local"));
        assert!(!is_within("redismesh.local", "mesh.local"));
        assert!(!is_within("mesh.local", "redis.mesh.local"));
    }
}
