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

    /// `{prefix}KEY` (`Bearer KEY`, or the bare key), flagged sensitive so `http`'s own `Debug`
    /// hides it too. `None` when the key holds characters a header cannot carry.
    #[must_use]
    pub fn header_value(&self, prefix: &str) -> Option<HeaderValue> {
        let mut value = HeaderValue::from_str(&format!("{prefix}{}", self.0)).ok()?;
        value.set_sensitive(true);
        Some(value)
    }

    /// The key itself, for an SDK that takes it as text (never log it).
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
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

/// Where a key is kept, in the AWS shape: `secretsmanager:SECRET_ID[#JSON_FIELD]` or
/// `ssm:/PARAMETER/NAME`. The reference is not secret; the value it names is.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum SecretRef {
    /// A Secrets Manager secret (name or ARN); with a field, the secret string is a JSON object
    /// and the key is that field's value.
    SecretsManager {
        /// Secret name or ARN.
        id: String,
        /// JSON field, if the secret holds an object.
        field: Option<String>,
    },
    /// An SSM parameter (a SecureString is decrypted).
    Ssm {
        /// Parameter name.
        name: String,
    },
}

impl SecretRef {
    /// Parse a reference; `None` when it names no known store or is empty.
    #[must_use]
    pub fn parse(text: &str) -> Option<Self> {
        if let Some(rest) = text.strip_prefix("secretsmanager:") {
            // An ARN holds `:` but never `#`.
            let (id, field) = match rest.split_once('#') {
                Some((id, field)) if !field.is_empty() => (id, Some(field.to_owned())),
                Some(_) => return None,
                None => (rest, None),
            };
            return (!id.is_empty()).then(|| Self::SecretsManager { id: id.to_owned(), field });
        }
        let name = text.strip_prefix("ssm:")?;
        (!name.is_empty()).then(|| Self::Ssm { name: name.to_owned() })
    }
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::SecretsManager { id, field: Some(field) } => write!(f, "secretsmanager:{id}#{field}"),
            Self::SecretsManager { id, field: None } => write!(f, "secretsmanager:{id}"),
            Self::Ssm { name } => write!(f, "ssm:{name}"),
        }
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
        let header = key.header_value("Bearer ").unwrap();
        assert!(header.is_sensitive());
        assert!(!format!("{header:?}").contains("sk-secret"));
        assert_eq!(key.scrub("bad key sk-secret-123!"), "bad key [redacted]!");
        assert_eq!(key.header_value("").unwrap().to_str().unwrap(), "sk-secret-123");
        assert!(ApiKey::new("a\nb").header_value("").is_none());
    }

    #[test]
    fn secret_references() {
        let arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/openai-AbCdEf";
        assert_eq!(
            SecretRef::parse(&format!("secretsmanager:{arn}#api_key")),
            Some(SecretRef::SecretsManager { id: arn.into(), field: Some("api_key".into()) })
        );
        assert_eq!(
            SecretRef::parse("secretsmanager:prod/openai"),
            Some(SecretRef::SecretsManager { id: "prod/openai".into(), field: None })
        );
        assert_eq!(
            SecretRef::parse("ssm:/taskexec/anthropic"),
            Some(SecretRef::Ssm { name: "/taskexec/anthropic".into() })
        );
        for bad in ["ssm:", "secretsmanager:", "secretsmanager:x#", "vault:x", "sk-live-123"] {
            assert_eq!(SecretRef::parse(bad), None, "{bad}");
        }
        let r = SecretRef::parse("secretsmanager:a#b").unwrap();
        assert_eq!(r.to_string(), "secretsmanager:a#b");
    }
}
