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

/// A display name: 1–64 characters after trimming, no control characters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DisplayName(String);

/// A trimmed, single-line label of 1 to `max` characters.
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
    Ok(text.to_owned())
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

/// A password as typed: 8–256 bytes. Never logged (no `Debug` of the value).
#[derive(Clone)]
pub struct Password(String);

impl Password {
    pub fn parse(raw: &str) -> Result<Self, ValueError> {
        if raw.len() < 8 {
            return Err(invalid("password must be at least 8 characters"));
        }
        if raw.len() > 256 {
            return Err(invalid("password must be at most 256 bytes"));
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

/// The text of a message: not blank, at most `max_bytes` of UTF-8.
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
        // PostgreSQL text cannot hold NUL: such a message could be accepted
        // but never stored.
        if raw.contains('\0') {
            return Err(invalid("content must not contain NUL characters"));
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
