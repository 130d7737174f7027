//! What every emulator test needs: the endpoint of a local AWS emulator and clients for it.
//!
//! One switch selects the emulator: `TASKEXEC_TEST_EMULATOR=localstack` (the default) or `moto`.
//! The endpoint comes from `TASKEXEC_TEST_AWS_ENDPOINT`; when that is unset, the first test to
//! ask runs `scripts/emulators ensure-localstack` (or `ensure-moto`), which installs the emulator
//! if needed and reuses a running one, and every test panics if that fails: an emulator test is
//! never skipped silently. [`moto_endpoint`] is moto whatever the switch says, for the few tests
//! that need what only moto has. Tests isolate themselves with unique table and queue names.
#![allow(dead_code)]

pub mod workload;

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};

/// The local AWS emulators the tests can run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Emulator {
    /// LocalStack core, in-process, in a network namespace of its own (`scripts/emulators
    /// ensure-localstack`): SQS, DynamoDB (its DynamoDB Local), CloudWatch with alarm evaluation.
    LocalStack,
    /// moto server (`scripts/emulators ensure-moto`).
    Moto,
}

/// The emulator `TASKEXEC_TEST_EMULATOR` selects (`localstack`, the default, or `moto`).
pub fn emulator() -> Emulator {
    match std::env::var("TASKEXEC_TEST_EMULATOR").as_deref() {
        Ok("moto") => Emulator::Moto,
        Ok("localstack" | "") | Err(_) => Emulator::LocalStack,
        Ok(other) => panic!("TASKEXEC_TEST_EMULATOR={other:?}: expected localstack or moto"),
    }
}

/// The selected emulator's endpoint (`TASKEXEC_TEST_AWS_ENDPOINT` if set), started on first use.
pub fn endpoint() -> &'static str {
    static ENDPOINT: OnceLock<String> = OnceLock::new();
    ENDPOINT.get_or_init(|| match std::env::var("TASKEXEC_TEST_AWS_ENDPOINT") {
        Ok(endpoint) if !endpoint.is_empty() => endpoint,
        _ => start(emulator()),
    })
}

/// A moto server's endpoint whatever the switch says: for what LocalStack lacks here (Lambda
/// functions and event source mappings need Docker in LocalStack; moto stores them).
pub fn moto_endpoint() -> &'static str {
    static ENDPOINT: OnceLock<String> = OnceLock::new();
    ENDPOINT.get_or_init(|| match emulator() {
        Emulator::Moto => endpoint().to_owned(),
        Emulator::LocalStack => start(Emulator::Moto),
    })
}

fn start(emulator: Emulator) -> String {
    // The workspace root: the nearest ancestor of this crate holding scripts/emulators (this
    // helper is shared by crates at different depths).
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let root = manifest
        .ancestors()
        .find(|dir| dir.join("scripts/emulators").is_file())
        .expect("scripts/emulators in an ancestor of the crate")
        .to_owned();
    let (command, portfile) = match emulator {
        Emulator::LocalStack => ("ensure-localstack", ".emulators/localstack.endpoint"),
        Emulator::Moto => ("ensure-moto", ".emulators/moto.endpoint"),
    };
    let out = Command::new("bash")
        .arg(root.join("scripts/emulators"))
        .arg(command)
        .arg(root.join(portfile))
        .output()
        .expect("cannot run scripts/emulators (bash missing?)");
    assert!(
        out.status.success(),
        "the AWS emulator did not start (scripts/emulators {command}): {}\n\
         set TASKEXEC_TEST_AWS_ENDPOINT to use a running emulator, or TASKEXEC_TEST_EMULATOR=moto",
        String::from_utf8_lossy(&out.stderr)
    );
    let endpoint = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(endpoint.starts_with("http://127.0.0.1:"), "unexpected emulator endpoint {endpoint:?}");
    endpoint
}

fn credentials() -> Credentials {
    Credentials::new("testing", "testing", None, None, "taskexec-tests")
}

/// A DynamoDB client for the emulator.
pub fn dynamo_client() -> aws_sdk_dynamodb::Client {
    dynamo_client_at(endpoint())
}

/// A DynamoDB client for the endpoint given.
pub fn dynamo_client_at(endpoint: &str) -> aws_sdk_dynamodb::Client {
    let config = aws_sdk_dynamodb::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(credentials())
        .build();
    aws_sdk_dynamodb::Client::from_conf(config)
}

/// An SQS client for the emulator.
pub fn sqs_client() -> aws_sdk_sqs::Client {
    sqs_client_at(endpoint())
}

/// An SQS client for moto (beside [`moto_endpoint`]'s Lambda mappings, which need their queues).
pub fn moto_sqs_client() -> aws_sdk_sqs::Client {
    sqs_client_at(moto_endpoint())
}

/// An SQS client for the endpoint given.
pub fn sqs_client_at(endpoint: &str) -> aws_sdk_sqs::Client {
    let config = aws_sdk_sqs::Config::builder()
        .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
        .region(aws_sdk_sqs::config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(credentials())
        .build();
    aws_sdk_sqs::Client::from_conf(config)
}

/// A name no other test (of this run or an earlier one on the same emulator) uses.
pub fn unique_name(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos();
    format!("{prefix}-{}-{nanos}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// A store over a fresh table.
pub async fn fresh_store() -> taskexec_aws::DynamoStore {
    fresh_store_on(dynamo_client()).await
}

/// A store over a fresh table with its configuration changed by `configure`.
pub async fn fresh_store_with(
    configure: impl FnOnce(taskexec_aws::DynamoConfig) -> taskexec_aws::DynamoConfig,
) -> taskexec_aws::DynamoStore {
    let client = dynamo_client();
    let table = unique_name("tasks");
    taskexec_aws::create_table(&client, &table).await.expect("create the table");
    let config = configure(taskexec_aws::DynamoConfig::new(table).with_unsent_shards(4));
    taskexec_aws::DynamoStore::new(client, config)
}

/// A store over a fresh table reached through `client`.
pub async fn fresh_store_on(client: aws_sdk_dynamodb::Client) -> taskexec_aws::DynamoStore {
    let table = unique_name("tasks");
    taskexec_aws::create_table(&client, &table).await.expect("create the table");
    taskexec_aws::DynamoStore::new(client, taskexec_aws::DynamoConfig::new(table).with_unsent_shards(4))
}

/// Three fresh priority queues, each with its own DLQ (redrive after
/// `taskexec_lambda::worker::MAX_RECEIVE_COUNT` receives, as in template.yaml), as the Lambda
/// glue addresses them.
pub async fn fresh_topology(sqs: &aws_sdk_sqs::Client) -> taskexec_core::ports::Topology {
    let prefix = unique_name("q");
    let max_receives = taskexec_lambda::worker::MAX_RECEIVE_COUNT;
    taskexec_aws::create_queues(sqs, &prefix, max_receives, std::time::Duration::from_secs(30))
        .await
        .expect("create the queues")
}
