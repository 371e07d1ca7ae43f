//! Values that arrive from clients, parsed once at the edge. Each `parse`
//! returns a [`ValueError`] whose text is safe to show the client.

use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("{0}")]
    Invalid(String),
    #[error("{what} is {len} bytes; the limit is {max}")]
    TooLarge {
        what: &'static str,
        len: usize,
        max: usize,
    },
}

fn invalid(msg: impl Into<String>) -> ValueError {
    ValueError::Invalid(msg.into())
}

/// A login name: 3–32 characters of ASCII letters, digits, `_`, `.`, `-`.
/// Stored lower-cased so `Alice` and `alice` are one account.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Username(String);

impl Username {
    pub fn parse(raw: &str) -> Result<Self, ValueError> {
        let name = raw.trim();
        if !(3..=32).contains(&name.len()) {
            return Err(invalid("username must be 3 to 32 characters"));
        }
        if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        {
            return Err(invalid(
                "username may contain only letters, digits, '_', '.' and '-'",
            ));
        }
        Ok(Self(name.to_ascii_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A display name: 1–64 characters after trimming, no control characters
/// and none of the invisible ones a label could hide behind (see [`label`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DisplayName(String);

/// A trimmed, single-line label of 1 to `max` characters that shows what
/// it says: no control characters, no bidi controls (which reorder what
/// follows, so "Ann" can render as someone else's name) and no invisible
/// characters (which make two different names look the same).
fn label(raw: &str, what: &str, max: usize) -> Result<String, ValueError> {
    let text = raw.trim();
    let chars = text.chars().count();
    if chars == 0 || chars > max {
        return Err(invalid(format!("{what} must be 1 to {max} characters")));
    }
    if text.chars().any(char::is_control) {
        return Err(invalid(format!(
            "{what} must not contain control characters"
        )));
    }
    if text.chars().any(is_bidi_control) {
        return Err(invalid(format!(
            "{what} must not contain bidirectional control characters"
        )));
    }
    let chars: Vec<char> = text.chars().collect();
    let hidden = (0..chars.len()).any(|i| is_hidden(&chars, i));
    if hidden {
        return Err(invalid(format!(
            "{what} must not contain invisible characters"
        )));
    }
    Ok(text.to_owned())
}

/// Bidi embeddings, overrides, isolates and marks (Unicode's Bidi_Control).
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Whether `chars[i]` is an invisible character out of place. The zero-width
/// joiner and non-joiner are kept where scripts and emoji need them, between
/// two visible non-ASCII characters (`👩‍💻`, Persian and Indic names);
/// anywhere else they only hide a difference.
fn is_hidden(chars: &[char], i: usize) -> bool {
    let c = chars[i];
    match c {
        '\u{200C}' | '\u{200D}' => {
            let joins = |n: Option<&char>| {
                n.is_some_and(|n| !n.is_ascii() && !n.is_whitespace() && !is_invisible(*n))
            };
            !(i > 0 && joins(chars.get(i - 1)) && joins(chars.get(i + 1)))
        }
        _ => is_invisible(c),
    }
}

/// Characters that take no visible space: zero-width spaces and joiners,
/// the word joiner and invisible operators, the byte-order mark, soft
/// hyphens, fillers that render as nothing, tag characters, line and
/// paragraph separators and the interlinear annotation marks.
fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{034F}' | '\u{115F}' | '\u{1160}' | '\u{17B4}' | '\u{17B5}'
        | '\u{180B}'..='\u{180F}' | '\u{200B}'..='\u{200D}' | '\u{2028}' | '\u{2029}'
        | '\u{2060}'..='\u{2065}' | '\u{206A}'..='\u{206F}' | '\u{3164}' | '\u{FEFF}'
        | '\u{FFA0}' | '\u{FFF9}'..='\u{FFFB}' | '\u{1BCA0}'..='\u{1BCA3}'
        | '\u{1D173}'..='\u{1D17A}' | '\u{E0000}'..='\u{E0FFF}')
}

impl DisplayName {
    pub fn parse(raw: &str) -> Result<Self, ValueError> {
        label(raw, "display name", 64).map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

/// A group's name: 1–100 characters after trimming, no control characters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct GroupName(String);

impl GroupName {
    pub fn parse(raw: &str) -> Result<Self, ValueError> {
        label(raw, "group name", 100).map(Self)
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

/// A password as typed: 8–256 characters (as the API document says: JSON
/// Schema counts characters). Never logged (no `Debug` of the value).
#[derive(Clone)]
pub struct Password(String);

impl Password {
    pub fn parse(raw: &str) -> Result<Self, ValueError> {
        let chars = raw.chars().count();
        if chars < 8 {
            return Err(invalid("password must be at least 8 characters"));
        }
        if chars > 256 {
            return Err(invalid("password must be at most 256 characters"));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(..)")
    }
}

/// The most bytes [`MessageContent`] may ever be configured to hold. Every
/// character content may hold escapes to at most two bytes of JSON (control
/// characters, which escape to six, are refused), so a message record is at
/// most twice this plus its fixed fields: within a delivery record's bound
/// ([`crate::delivery::MAX_RECORD_BYTES`]) however the limit is set.
pub const MAX_CONTENT_BYTES: usize = 30 * 1024;

/// The text of a message: not blank, at most `max_bytes` of UTF-8, no
/// control characters but newline and tab.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageContent(String);

impl MessageContent {
    pub fn parse(raw: String, max_bytes: usize) -> Result<Self, ValueError> {
        if raw.len() > max_bytes {
            return Err(ValueError::TooLarge {
                what: "content",
                len: raw.len(),
                max: max_bytes,
            });
        }
        if raw.trim().is_empty() {
            return Err(invalid("content must not be empty"));
        }
        // PostgreSQL text cannot hold NUL (such a message could be accepted
        // but never stored), and each other control character costs six
        // bytes in every recipient's delivery record while showing nothing.
        if raw
            .chars()
            .any(|c| c.is_control() && c != '\n' && c != '\t')
        {
            return Err(invalid(
                "content must not contain control characters other than newline and tab",
            ));
        }
        Ok(Self(raw))
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

/// The client's own name for a send, used to make retries idempotent:
/// 1–64 printable ASCII characters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ClientMsgId(String);

impl ClientMsgId {
    pub fn parse(raw: &str) -> Result<Self, ValueError> {
        if raw.is_empty() || raw.len() > 64 {
            return Err(invalid("clientMsgId must be 1 to 64 characters"));
        }
        if !raw.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(invalid(
                "clientMsgId must be printable ASCII without spaces",
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A device's stable name, chosen by the client: 1–64 characters of ASCII
/// letters, digits, `_`, `.`, `:`, `-`. It keys the device's delivery cursor.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DeviceId(String);

impl DeviceId {
    pub fn parse(raw: &str) -> Result<Self, ValueError> {
        if raw.is_empty() || raw.len() > 64 {
            return Err(invalid("device must be 1 to 64 characters"));
        }
        if !raw
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-'))
        {
            return Err(invalid(
                "device may contain only letters, digits, '_', '.', ':' and '-'",
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for DeviceId {
    fn default() -> Self {
        Self("default".to_owned())
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn username_is_lowercased_and_checked() {
        assert_eq!(Username::parse(" Alice ").unwrap().as_str(), "alice");
        assert!(Username::parse("al").is_err());
        assert!(Username::parse("al ice").is_err());
        assert!(Username::parse(&"a".repeat(33)).is_err());
    }

    #[test]
    fn content_rejects_blank_and_oversized() {
        assert!(MessageContent::parse("   \n".into(), 10).is_err());
        assert!(matches!(
            MessageContent::parse("x".repeat(11), 10),
            Err(ValueError::TooLarge {
                len: 11,
                max: 10,
                ..
            })
        ));
        assert!(MessageContent::parse(" hi ".into(), 10).is_ok());
        assert!(MessageContent::parse("a\0b".into(), 10).is_err());
    }

    #[test]
    fn content_refuses_control_characters_but_newline_and_tab() {
        assert!(MessageContent::parse("line\n\tindented".into(), 64).is_ok());
        for bad in ["a\u{1}b", "a\rb", "a\u{7f}b", "a\u{85}b", "\u{1b}[31mred"] {
            let refused = MessageContent::parse(bad.into(), 64);
            assert!(
                matches!(&refused, Err(ValueError::Invalid(m)) if m.contains("control")),
                "{bad:?} was {refused:?}"
            );
        }
    }

    #[test]
    fn names_refuse_bidi_controls() {
        for bad in [
            "Ann\u{202E}gnp.exe",
            "\u{2067}Bob\u{2069}",
            "A\u{200F}nn",
            "x\u{061C}y",
        ] {
            assert!(DisplayName::parse(bad).is_err(), "{bad:?}");
            assert!(GroupName::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn names_refuse_invisible_characters() {
        for bad in [
            "Ann\u{200B}",
            "A\u{200B}nn",
            "\u{FEFF}Ann",
            "An\u{2060}n",
            "An\u{00AD}n",
            "Ann\u{200D}",
            "A\u{200D}nn",
            "Ann\u{2028}Bob",
            "\u{3164}",
            "Ann\u{E0041}",
        ] {
            assert!(DisplayName::parse(bad).is_err(), "{bad:?}");
            assert!(GroupName::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn names_keep_joiners_inside_emoji_and_scripts() {
        // A woman technologist, a family and a Persian name with a non-joiner.
        for good in [
            "\u{1F469}\u{200D}\u{1F4BB} Ann",
            "\u{1F468}\u{200D}\u{1F469}\u{200D}\u{1F467}",
            "\u{0645}\u{06CC}\u{200C}\u{0634}\u{0648}\u{062F}",
            "\u{2764}\u{FE0F} Zoë",
        ] {
            assert!(DisplayName::parse(good).is_ok(), "{good:?}");
            assert!(GroupName::parse(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn device_and_client_ids_are_bounded() {
        assert!(DeviceId::parse("phone-1").is_ok());
        assert!(DeviceId::parse("").is_err());
        assert!(DeviceId::parse("a/b").is_err());
        assert!(ClientMsgId::parse("c-1").is_ok());
        assert!(ClientMsgId::parse("has space").is_err());
        assert!(ClientMsgId::parse(&"x".repeat(65)).is_err());
    }

    #[test]
    fn password_debug_hides_the_value() {
        let p = Password::parse("correct horse").unwrap();
        assert!(!format!("{p:?}").contains("horse"));
        assert!(Password::parse("short").is_err());
        // Characters, not bytes, as the API document's lengths count them.
        assert!(Password::parse(&"é".repeat(7)).is_err());
        assert!(Password::parse(&"é".repeat(256)).is_ok());
        assert!(Password::parse(&"é".repeat(257)).is_err());
    }

    #[test]
    fn display_name_rejects_control_characters() {
        assert!(DisplayName::parse("Ann\u{7}").is_err());
        assert_eq!(DisplayName::parse("  Ann ").unwrap().as_str(), "Ann");
        assert!(GroupName::parse("  ").is_err());
        assert!(GroupName::parse(&"g".repeat(101)).is_err());
        assert_eq!(GroupName::parse(" Team ").unwrap().into_string(), "Team");
    }
}
