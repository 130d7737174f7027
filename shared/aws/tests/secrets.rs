//! Provider keys by reference on the local AWS emulator: a plain Secrets Manager secret, a field of
//! a JSON secret and an SSM SecureString are read; a missing secret, field or parameter is an error
//! naming the reference and never showing a value; and a deployment keyed by a secret sends it as
//! `Authorization: Bearer …` to a local OpenAI-compatible server.
//!
//! The server's answer follows the `chat.completion` object of
//! <https://platform.openai.com/docs/api-reference/chat/object>.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_dynamodb::config::Credentials;
use aws_sdk_secretsmanager::primitives::Blob;
use aws_sdk_ssm::types::ParameterType;
use axum::Router;
use axum::http::HeaderMap;
use axum::routing::post;
use taskexec_aws::secrets::{KeysError, SecretsError, deployments, read_secrets};
use taskexec_core::provider::{Provider, ProviderRequest};
use taskexec_core::task::BenchmarkTask;
use taskexec_providers::config::DeploymentConfig;
use taskexec_providers::secret::SecretRef;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

const PLAIN_KEY: &str = "sk-plain-SECRET-4b1e9a7c";
const JSON_KEY: &str = "sk-json-SECRET-88d0c2f1";
const JSON_OTHER: &str = "org-OTHER-SECRET-19ab";
const SSM_KEY: &str = "sk-ssm-SECRET-5e6f7a80";
const VALUES: [&str; 4] = [PLAIN_KEY, JSON_KEY, JSON_OTHER, SSM_KEY];

const COMPLETION: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","created":1741569952,"model":"m",
  "choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"logprobs":null,"finish_reason":"stop"}],
  "usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}"#;

async fn sdk() -> SdkConfig {
    let credentials = Credentials::new("testing", "testing", None, None, "taskexec-tests");
    aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(common::endpoint())
        .credentials_provider(credentials)
        .load()
        .await
}

/// The three stored keys: references to a plain secret, a field of a JSON secret, a SecureString.
struct Stored {
    plain: SecretRef,
    field: SecretRef,
    json_id: String,
    parameter: SecretRef,
}

async fn store_keys(sdk: &SdkConfig) -> Stored {
    let secrets = aws_sdk_secretsmanager::Client::new(sdk);
    let plain = common::unique_name("taskexec/plain");
    secrets.create_secret().name(&plain).secret_string(PLAIN_KEY).send().await.expect("create the plain secret");
    let json_id = common::unique_name("taskexec/json");
    let json = format!(r#"{{"api_key":"{JSON_KEY}","organization":"{JSON_OTHER}"}}"#);
    secrets.create_secret().name(&json_id).secret_string(json).send().await.expect("create the JSON secret");
    let name = format!("/{}", common::unique_name("taskexec/keys"));
    aws_sdk_ssm::Client::new(sdk)
        .put_parameter()
        .name(&name)
        .value(SSM_KEY)
        .r#type(ParameterType::SecureString)
        .send()
        .await
        .expect("put the SecureString");
    Stored {
        plain: SecretRef::SecretsManager { id: plain, field: None },
        field: SecretRef::SecretsManager { id: json_id.clone(), field: Some("api_key".into()) },
        json_id,
        parameter: SecretRef::Ssm { name },
    }
}

/// Everything an error shows: its Display, Debug and every source's Display and Debug.
fn everything_shown(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = format!("{err} | {err:?}");
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(&format!(" | {cause} | {cause:?}"));
        source = cause.source();
    }
    text
}

fn assert_no_value(text: &str) {
    for value in VALUES {
        assert!(!text.contains(value), "an error shows a secret value: {text}");
    }
}

async fn read_one(sdk: &SdkConfig, reference: &SecretRef) -> Result<BTreeMap<SecretRef, String>, SecretsError> {
    read_secrets(sdk, &BTreeSet::from([reference.clone()])).await
}

#[tokio::test]
async fn reads_secrets_plain_from_a_json_field_and_from_a_secure_string() {
    let sdk = sdk().await;
    let stored = store_keys(&sdk).await;
    let refs = BTreeSet::from([stored.plain.clone(), stored.field.clone(), stored.parameter.clone()]);

    let values = read_secrets(&sdk, &refs).await.expect("read the keys");

    let expected = BTreeMap::from([
        (stored.plain, PLAIN_KEY.to_owned()),
        (stored.field, JSON_KEY.to_owned()),
        (stored.parameter, SSM_KEY.to_owned()),
    ]);
    assert_eq!(values, expected);
    assert!(read_secrets(&sdk, &BTreeSet::new()).await.unwrap().is_empty());
}

#[tokio::test]
async fn secrets_missing_or_misshapen_name_the_reference_and_no_value() {
    let sdk = sdk().await;
    let stored = store_keys(&sdk).await;
    let missing_secret = SecretRef::SecretsManager { id: common::unique_name("taskexec/none"), field: None };
    let missing_field = SecretRef::SecretsManager { id: stored.json_id.clone(), field: Some("nope".into()) };
    let no_field = SecretRef::SecretsManager { id: stored.json_id.clone(), field: None };
    let not_json = SecretRef::SecretsManager {
        id: match &stored.plain {
            SecretRef::SecretsManager { id, .. } => id.clone(),
            SecretRef::Ssm { .. } => unreachable!(),
        },
        field: Some("api_key".into()),
    };
    let unknown_parameter = SecretRef::Ssm { name: format!("/{}", common::unique_name("taskexec/none")) };
    let cases = [
        (&missing_secret, "ResourceNotFoundException"),
        (&missing_field, "no string field `nope`"),
        (&no_field, "#FIELD"),
        (&not_json, "not a JSON object"),
        (&unknown_parameter, "ParameterNotFound"),
    ];

    for (reference, expected) in cases {
        let err = read_one(&sdk, reference).await.expect_err("a bad reference");
        let shown = everything_shown(&err);
        assert!(err.to_string().contains(&reference.to_string()), "{err} does not name {reference}");
        assert!(shown.contains(expected), "{reference}: {shown}");
        assert_no_value(&shown);
    }

    // One bad reference among good ones fails the whole read, still without a value.
    let refs = BTreeSet::from([stored.plain, stored.field, stored.parameter, unknown_parameter.clone()]);
    let err = read_secrets(&sdk, &refs).await.expect_err("one reference is missing");
    assert!(err.to_string().contains(&unknown_parameter.to_string()), "{err}");
    assert_no_value(&everything_shown(&err));
}

#[tokio::test]
async fn binary_only_secrets_are_refused() {
    let sdk = sdk().await;
    let id = common::unique_name("taskexec/binary");
    aws_sdk_secretsmanager::Client::new(&sdk)
        .create_secret()
        .name(&id)
        .secret_binary(Blob::new(PLAIN_KEY.as_bytes()))
        .send()
        .await
        .expect("create the binary secret");
    let reference = SecretRef::SecretsManager { id, field: None };

    let err = read_one(&sdk, &reference).await.expect_err("binary only");

    assert!(matches!(err, SecretsError::Binary { .. }), "{err:?}");
    assert!(err.to_string().contains(&reference.to_string()));
    assert_no_value(&everything_shown(&err));
}

/// A chat-completions server that answers every call and reports each `Authorization` header.
async fn openai_server() -> (String, mpsc::UnboundedReceiver<String>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = Router::new().route(
        "/v1/chat/completions",
        post(move |headers: HeaderMap| {
            let tx = tx.clone();
            async move {
                let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default();
                let _ = tx.send(auth.to_owned());
                ([("content-type", "application/json")], COMPLETION)
            }
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}/v1", listener.local_addr().expect("local address"));
    tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
    (base, rx)
}

fn configs(text: &str) -> BTreeMap<String, DeploymentConfig> {
    toml::from_str(text).expect("a deployments config")
}

#[tokio::test]
async fn deployments_keyed_by_secrets_send_them_as_the_bearer_token() {
    let sdk = sdk().await;
    let stored = store_keys(&sdk).await;
    let (base, mut seen) = openai_server().await;
    let configs = configs(&format!(
        "[json]\nkind = \"openai-compatible\"\nbase_url = \"{base}\"\napi_key_secret = \"{}\"\n\
         [ssm]\nkind = \"openai-compatible\"\nbase_url = \"{base}\"\napi_key_secret = \"{}\"\n\
         [sim]\nkind = \"sim\"\n",
        stored.field, stored.parameter
    ));

    let deployments = deployments(&sdk, &configs, |_| None).await.expect("build the deployments");

    for (deployment, key) in [("json", JSON_KEY), ("ssm", SSM_KEY)] {
        let task: BenchmarkTask = serde_json::from_value(serde_json::json!(
            {"id": format!("t-{deployment}"), "providerId": deployment, "modelId": "m", "prompt": "hello"}
        ))
        .expect("a task");
        let answer = deployments.call(ProviderRequest::for_task(&task, deployment, 1)).await.expect("an answer");
        assert_eq!(answer.finish_reason, "stop");
        assert_eq!(seen.recv().await.expect("the server saw the call"), format!("Bearer {key}"));
        assert_no_value(&format!("{deployments:?}"));
    }
}

#[tokio::test]
async fn unreadable_secrets_stop_the_start_up() {
    let sdk = sdk().await;
    let missing = format!("secretsmanager:{}", common::unique_name("taskexec/none"));
    let configs = configs(&format!(
        "[d]\nkind = \"openai-compatible\"\nbase_url = \"http://127.0.0.1:9/v1\"\napi_key_secret = \"{missing}\"\n"
    ));

    let err = deployments(&sdk, &configs, |_| None).await.expect_err("the secret does not exist");

    assert!(matches!(err, KeysError::Secret(SecretsError::Read { .. })), "{err:?}");
    assert!(err.to_string().contains(&missing), "{err}");
}

#[tokio::test]
async fn secrets_are_not_read_for_an_invalid_config() {
    // No emulator: an invalid config must fail before any AWS call (this endpoint refuses them).
    let sdk = aws_config::SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url("http://127.0.0.1:9")
        .build();
    let configs = configs(
        "[d]\nkind = \"openai-compatible\"\nbase_url = \"http://127.0.0.1:9/v1\"\nregion = \"us-east-1\"\n\
         api_key_secret = \"ssm:/taskexec/keys/d\"\n",
    );

    let err = deployments(&sdk, &configs, |_| None).await.expect_err("`region` is not used by this kind");

    assert!(matches!(err, KeysError::Deployments(_)), "{err:?}");
}
