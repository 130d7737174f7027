//! The API key: a value that never shows in `Debug` output, logs or error messages. It has no
//! `Display`; the only ways out are the `Authorization` header (marked sensitive) and
//! [`ApiKey::scrub`], which removes it from text that came back from a server.

use std::fmt;

use reqwest::header::HeaderValue;

/// A provider API key.
#[derive(Clone)]
pub struct ApiKey(String);

impl ApiKey {
    /// Wrap a key.
    #[must_use]
    pub fn new(key: impl Into<String>) -> Self {
        Self(key.into())
    }

    /// `Bearer KEY`, flagged sensitive so `http`'s own `Debug` hides it too. `None` when the key
    /// holds characters a header cannot carry.
    #[must_use]
    pub fn bearer_header(&self) -> Option<HeaderValue> {
        let mut value = HeaderValue::from_str(&format!("Bearer {}", self.0)).ok()?;
        value.set_sensitive(true);
        Some(value)
    }

    /// `text` with every occurrence of the key replaced by `[redacted]` (a server may echo it).
    #[must_use]
    pub fn scrub(&self, text: &str) -> String {
        if self.0.is_empty() {
            return text.to_owned();
        }
        text.replace(&self.0, "[redacted]")
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey([redacted])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_shows_the_key() {
        let key = ApiKey::new("sk-secret-123");
        assert_eq!(format!("{key:?}"), "ApiKey([redacted])");
        let header = key.bearer_header().unwrap();
        assert!(header.is_sensitive());
        assert!(!format!("{header:?}").contains("sk-secret"));
        assert_eq!(key.scrub("bad key sk-secret-123!"), "bad key [redacted]!");
        assert!(key.bearer_header().is_some());
        assert!(ApiKey::new("a\nb").bearer_header().is_none());
    }
}
