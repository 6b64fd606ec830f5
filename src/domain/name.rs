//! Parsed resource names.

use std::fmt;

/// The longest name accepted, in characters.
pub const MAX_NAME_CHARS: usize = 255;

/// A resource name: non-empty after trimming, at most 255 characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceName(String);

impl ResourceName {
    /// Parses a name, saying what is wrong with it.
    pub fn parse(raw: &str) -> Result<Self, &'static str> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err("must not be empty");
        }
        if trimmed.chars().count() > MAX_NAME_CHARS {
            return Err("must be at most 255 characters");
        }
        if trimmed.chars().any(char::is_control) {
            return Err("must not contain control characters");
        }
        Ok(Self(trimmed.to_owned()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ResourceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::ResourceName;

    #[test]
    fn names_are_trimmed_and_checked() {
        assert_eq!(ResourceName::parse("  web-1 ").unwrap().as_str(), "web-1");
        assert!(ResourceName::parse("   ").is_err());
        assert!(ResourceName::parse("a\nb").is_err());
        assert!(ResourceName::parse(&"x".repeat(256)).is_err());
        assert!(ResourceName::parse(&"x".repeat(255)).is_ok());
    }
}
