//! Provider API keys read by reference at start-up, in the AWS shape: a deployment's
//! `api_key_secret` names a Secrets Manager secret (`secretsmanager:ID[#FIELD]`) or an SSM
//! parameter (`ssm:/NAME`, a SecureString is decrypted); [`read_secrets`] reads every reference
//! once, concurrently, and [`deployments`] builds the [`Deployments`] with the values.
//!
//! An error names the reference and the AWS error code, never the value: a response the SDK could
//! not parse is dropped rather than kept as the source (its body would be the secret), and the
//! JSON of a secret is never quoted.

use std::collections::{BTreeMap, BTreeSet};
use std::error::Error as StdError;
use std::fmt::Debug;

use aws_config::SdkConfig;
use aws_sdk_secretsmanager::error::{ProvideErrorMetadata, SdkError};
use futures::future::try_join_all;
use taskexec_providers::config::DeploymentConfig;
use taskexec_providers::secret::SecretRef;
use taskexec_providers::{Deployments, DeploymentsError};

use crate::error::SdkSource;

/// Why a key could not be read. Shows the reference, never the value.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    /// The AWS call failed: not found, access denied, throttled, network, ...
    #[error("cannot read {reference}: {operation} failed with {code}")]
    Read {
        /// The reference.
        reference: SecretRef,
        /// The API operation (`GetSecretValue`, `GetParameter`).
        operation: &'static str,
        /// The AWS error code (`ResourceNotFoundException`, `ParameterNotFound`, `AccessDeniedException`),
        /// or the SDK's failure kind (`DispatchFailure`, `TimeoutError`, `ResponseError`, ...).
        code: String,
        /// The SDK error (with the service's message), when it cannot hold the secret (none for
        /// `ResponseError`).
        #[source]
        source: Option<SdkSource>,
    },
    /// A Secrets Manager secret holding binary data only.
    #[error("{reference}: the secret has no SecretString (binary secrets are not supported)")]
    Binary {
        /// The reference.
        reference: SecretRef,
    },
    /// `#FIELD` was given but the secret string is not a JSON object.
    #[error("{reference}: the secret string is not a JSON object, so its field cannot be read")]
    NotJsonObject {
        /// The reference.
        reference: SecretRef,
    },
    /// The secret's JSON object has no such field, or it is not a string.
    #[error("{reference}: the secret's JSON object has no string field `{field}`")]
    MissingField {
        /// The reference.
        reference: SecretRef,
        /// The field.
        field: String,
    },
    /// No `#FIELD` was given but the secret string is a JSON object (a key never is).
    #[error("{reference}: the secret string is a JSON object: name the field holding the key with `#FIELD`")]
    FieldNeeded {
        /// The reference.
        reference: SecretRef,
    },
    /// The value is empty or blank.
    #[error("{reference}: the value is empty")]
    Empty {
        /// The reference.
        reference: SecretRef,
    },
}

/// Why the deployments could not be built at start-up.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    /// A referenced key could not be read.
    #[error(transparent)]
    Secret(#[from] SecretsError),
    /// The deployments are invalid (or an `api_key_env` is unset).
    #[error(transparent)]
    Deployments(#[from] DeploymentsError),
}

/// Read the values of `refs`, concurrently; the first failure is returned.
pub async fn read_secrets(
    sdk: &SdkConfig,
    refs: &BTreeSet<SecretRef>,
) -> Result<BTreeMap<SecretRef, String>, SecretsError> {
    if refs.is_empty() {
        return Ok(BTreeMap::new());
    }
    let secrets = aws_sdk_secretsmanager::Client::new(sdk);
    let ssm = aws_sdk_ssm::Client::new(sdk);
    let reads = refs.iter().map(|reference| {
        let (secrets, ssm) = (&secrets, &ssm);
        async move {
            let value = match reference {
                SecretRef::SecretsManager { id, field } => {
                    secret_value(secrets, reference, id, field.as_deref()).await?
                }
                SecretRef::Ssm { name } => parameter_value(ssm, reference, name).await?,
            };
            Ok::<_, SecretsError>((reference.clone(), non_empty(reference, value)?))
        }
    });
    Ok(try_join_all(reads).await?.into_iter().collect())
}

/// [`Deployments::from_config_with_secrets`] after reading every `api_key_secret` of `configs`
/// once; `env` looks up `api_key_env` variables as in [`Deployments::from_config`]. An invalid
/// config fails before any AWS call.
pub async fn deployments(
    sdk: &SdkConfig,
    configs: &BTreeMap<String, DeploymentConfig>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Deployments, KeysError> {
    for (name, config) in configs {
        config.validate(name).map_err(DeploymentsError::from)?;
    }
    let secrets = read_secrets(sdk, &Deployments::secret_refs(configs)).await?;
    Ok(Deployments::from_config_with_secrets(configs, env, &secrets)?)
}

async fn secret_value(
    client: &aws_sdk_secretsmanager::Client,
    reference: &SecretRef,
    id: &str,
    field: Option<&str>,
) -> Result<String, SecretsError> {
    let out = client
        .get_secret_value()
        .secret_id(id)
        .send()
        .await
        .map_err(|e| read_failed(reference, "GetSecretValue", e))?;
    let text = out.secret_string().ok_or_else(|| SecretsError::Binary { reference: reference.clone() })?;
    key_of(reference, text, field)
}

async fn parameter_value(
    client: &aws_sdk_ssm::Client,
    reference: &SecretRef,
    name: &str,
) -> Result<String, SecretsError> {
    let out = client
        .get_parameter()
        .name(name)
        .with_decryption(true)
        .send()
        .await
        .map_err(|e| read_failed(reference, "GetParameter", e))?;
    let value = out.parameter.and_then(|p| p.value);
    value.ok_or_else(|| SecretsError::Empty { reference: reference.clone() })
}

/// The key in a secret string: the string itself, or the string field `field` of its JSON object.
fn key_of(reference: &SecretRef, text: &str, field: Option<&str>) -> Result<String, SecretsError> {
    // serde_json's own errors are not kept: with typed targets they may quote the input.
    let object = serde_json::from_str::<serde_json::Value>(text).ok().and_then(|v| match v {
        serde_json::Value::Object(map) => Some(map),
        _ => None,
    });
    match (field, object) {
        (None, None) => Ok(text.to_owned()),
        (None, Some(_)) => Err(SecretsError::FieldNeeded { reference: reference.clone() }),
        (Some(_), None) => Err(SecretsError::NotJsonObject { reference: reference.clone() }),
        (Some(field), Some(map)) => match map.get(field) {
            Some(serde_json::Value::String(key)) => Ok(key.clone()),
            _ => Err(SecretsError::MissingField { reference: reference.clone(), field: field.to_owned() }),
        },
    }
}

fn non_empty(reference: &SecretRef, value: String) -> Result<String, SecretsError> {
    if value.trim().is_empty() {
        return Err(SecretsError::Empty { reference: reference.clone() });
    }
    Ok(value)
}

/// The failure of one read, with the AWS error code. The source is kept except for a
/// `ResponseError`, whose raw HTTP response may be the secret itself (a successful response the SDK
/// could not parse).
fn read_failed<E, R>(reference: &SecretRef, operation: &'static str, err: SdkError<E, R>) -> SecretsError
where
    E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
    R: Debug + Send + Sync + 'static,
{
    let (code, source): (String, Option<SdkSource>) = match err {
        SdkError::ServiceError(service) => {
            // The modeled error: code, message and request id, without the HTTP response.
            let modeled = service.into_err();
            let code = modeled.code().unwrap_or("UnknownServiceError").to_owned();
            (code, Some(Box::new(modeled)))
        }
        SdkError::ResponseError(_) => ("ResponseError".to_owned(), None),
        other => {
            let kind = match &other {
                SdkError::ConstructionFailure(_) => "ConstructionFailure",
                SdkError::TimeoutError(_) => "TimeoutError",
                SdkError::DispatchFailure(_) => "DispatchFailure",
                _ => "SdkError",
            };
            (kind.to_owned(), Some(Box::new(other)))
        }
    };
    SecretsError::Read { reference: reference.clone(), operation, code, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "sk-test-VALUE-0d9e";

    fn reference() -> SecretRef {
        SecretRef::SecretsManager { id: "prod/openai".into(), field: Some("api_key".into()) }
    }

    fn shown(err: &SecretsError) -> String {
        format!("{err} {err:?}")
    }

    #[test]
    fn a_plain_string_or_a_json_field_is_the_key() {
        let r = reference();
        assert_eq!(key_of(&r, KEY, None).unwrap(), KEY);
        let json = format!(r#"{{"api_key":"{KEY}","org":"o"}}"#);
        assert_eq!(key_of(&r, &json, Some("api_key")).unwrap(), KEY);
    }

    #[test]
    fn a_bad_shape_names_the_reference_never_the_value() {
        let r = reference();
        let cases = [
            (key_of(&r, KEY, Some("api_key")), "not a JSON object"),
            (key_of(&r, &format!(r#"{{"other":"{KEY}"}}"#), Some("api_key")), "no string field `api_key`"),
            (key_of(&r, &format!(r#"{{"api_key":["{KEY}"]}}"#), Some("api_key")), "no string field"),
            (key_of(&r, &format!(r#"{{"api_key":"{KEY}"}}"#), None), "#FIELD"),
            (key_of(&r, &format!(r#"{{"api_key":"{KEY}""#), Some("api_key")), "not a JSON object"),
            (non_empty(&r, "  ".into()), "empty"),
        ];
        for (result, expected) in cases {
            let err = result.unwrap_err();
            let text = shown(&err);
            assert!(text.contains(expected), "{text}");
            assert!(text.contains("prod/openai"), "{text}");
            assert!(!text.contains(KEY), "{text}");
        }
    }
}
