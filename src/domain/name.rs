//! Parsed resource names.

use std::fmt;

/// The longest name accepted, in characters.
pub const MAX_NAME_CHARS: usize = 255;

/// A resource name: non-empty after trimming, at most 255 characters, and
/// nothing that is invisible or reorders text where people read it (see
/// [`NameError::Forbidden`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceName(String);

/// Why a name is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Nothing but whitespace.
    #[error("must not be empty")]
    Empty,
    /// Over [`MAX_NAME_CHARS`].
    #[error("must be at most 255 characters")]
    TooLong,
    /// A character that would make the name look like another one: control
    /// characters, bidirectional controls (which can show `exe.txt` for
    /// `txt.exe`), zero-width characters, and line or paragraph separators.
    #[error("must not contain U+{:04X} ({})", u32::from(*.0), what(*.0))]
    Forbidden(char),
}

/// What kind of forbidden character `c` is, or `None` if it is allowed.
fn forbidden(c: char) -> Option<&'static str> {
    match c {
        c if c.is_control() => Some("a control character"),
        '\u{061C}'
        | '\u{200E}'
        | '\u{200F}'
        | '\u{202A}'..='\u{202E}'
        | '\u{2066}'..='\u{2069}' => Some("a bidirectional control character"),
        '\u{200B}'..='\u{200D}' | '\u{2060}' | '\u{FEFF}' => Some("a zero-width character"),
        '\u{2028}' | '\u{2029}' => Some("a line or paragraph separator"),
        _ => None,
    }
}

fn what(c: char) -> &'static str {
    forbidden(c).unwrap_or("a forbidden character")
}

impl ResourceName {
    /// Parses a name, saying what is wrong with it.
    pub fn parse(raw: &str) -> Result<Self, NameError> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(NameError::Empty);
        }
        if trimmed.chars().count() > MAX_NAME_CHARS {
            return Err(NameError::TooLong);
        }
        if let Some(c) = trimmed.chars().find(|c| forbidden(*c).is_some()) {
            return Err(NameError::Forbidden(c));
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

    #[test]
    fn invisible_and_bidi_characters_are_refused_by_code_point() {
        for c in [
            '\u{202A}', '\u{202B}', '\u{202C}', '\u{202D}', '\u{202E}', '\u{2066}', '\u{2067}',
            '\u{2068}', '\u{2069}', '\u{200E}', '\u{200F}', '\u{061C}', '\u{200B}', '\u{200C}',
            '\u{200D}', '\u{FEFF}', '\u{2060}', '\u{2028}', '\u{2029}',
        ] {
            let error = ResourceName::parse(&format!("web{c}1"))
                .unwrap_err()
                .to_string();
            let code_point = format!("U+{:04X}", u32::from(c));
            assert!(error.contains(&code_point), "{code_point}: {error}");
        }
        assert!(
            ResourceName::parse("a\u{85}b")
                .unwrap_err()
                .to_string()
                .contains("U+0085")
        );
        assert_eq!(
            ResourceName::parse("café-東京").unwrap().as_str(),
            "café-東京"
        );
    }
}
