use std::fmt;

/// One broken rule: where (a field path such as `networking.inbound[0].port`) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationError {
    pub path: String,
    pub rule: String,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Rules quote what the operator wrote; a hostile value stays a line.
        let rule = crate::excerpt::cut(&self.rule, crate::excerpt::RULE_CHARS);
        if self.path.is_empty() {
            f.write_str(&rule)
        } else {
            write!(f, "{}: {rule}", crate::excerpt::cut(&self.path, crate::excerpt::VALUE_CHARS))
        }
    }
}

/// Every rule a document broke; a document is accepted only when this is empty.
#[derive(Debug, Clone, Default, PartialEq, Eq, thiserror::Error)]
pub struct ValidationErrors(pub Vec<ValidationError>);

impl ValidationErrors {
    pub fn push(&mut self, path: impl Into<String>, rule: impl Into<String>) {
        self.0.push(ValidationError { path: path.into(), rule: rule.into() });
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Ok(value)` when no rule was broken.
    pub fn into_result<T>(self, value: T) -> Result<T, Self> {
        if self.0.is_empty() { Ok(value) } else { Err(self) }
    }

    pub fn single(path: impl Into<String>, rule: impl Into<String>) -> Self {
        let mut e = Self::default();
        e.push(path, rule);
        e
    }
}

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Kuma's rule for resource and mesh names; they also become parts of table keys,
/// so `#` (the key separator) can never appear.
pub fn validate_resource_name(errors: &mut ValidationErrors, path: &str, name: &str) {
    if name.is_empty() {
        errors.push(path, "required, a non-empty name");
    } else if name.len() > 253 {
        errors.push(path, "at most 253 characters");
    } else if !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.' | b'_')) {
        errors.push(path, format!("{} may hold only a-z, 0-9, '-', '.' and '_'", crate::excerpt::quoted(name)));
    }
}
