//! AWS Bedrock through the AWS SDK (cargo feature `aws`): the Converse API, whole or streamed
//! (ConverseStream), and the foundation-model list. Credentials come from the AWS default chain
//! (environment, profile, SSO, container or instance role), never from a key in the config; the
//! region is the deployment's `region`, else the chain's; `base_url` overrides the endpoint (VPC
//! endpoints, tests).
//!
//! The SDK's own retries are off ([`RetryConfig::disabled`]): the engine is the only retry loop,
//! and every failure is classified once, here (`classify.rs`). Its timeouts are off too, except
//! the connect timeout (`connect_timeout_ms`): the engine owns call timeouts, and cancels a call by
//! dropping its future.
//! Reference: <https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_Converse.html>.

mod classify;
mod reply;
mod request;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::stalled_stream_protection::StalledStreamProtectionConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_bedrock::types::InferenceType;
use aws_sdk_bedrockruntime::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_bedrockruntime::config::{ConfigBag, Credentials, Intercept, RuntimeComponents};
use aws_sdk_bedrockruntime::error::BoxError;
use aws_sdk_bedrockruntime::operation::RequestId;
use taskexec_core::error::ProviderError;
use taskexec_core::provider::{ProviderRequest, ProviderResponse};
use tokio::sync::OnceCell;
use tokio::time::Instant;

use self::classify::{sdk_error, stream_error};
use self::reply::StreamState;
use self::request::Converse;
use crate::answer::{Answer, ModelInfo};
use crate::capability::Capabilities;

/// A Converse or ConverseStream call builder with the model and the parts of a [`Converse`] set
/// (the two builders have the same setters but no common trait).
macro_rules! with_converse {
    ($builder:expr, $request:expr, $converse:expr) => {{
        let c = $converse;
        $builder
            .model_id(&$request.model)
            .set_messages(Some(c.messages))
            .set_system((!c.system.is_empty()).then_some(c.system))
            .set_inference_config(c.inference)
            .set_additional_model_request_fields(c.additional)
    }};
}

/// The environment variables read, through the caller's lookup, for static credentials.
const ACCESS_KEY_VAR: &str = "AWS_ACCESS_KEY_ID";
const SECRET_KEY_VAR: &str = "AWS_SECRET_ACCESS_KEY";
const SESSION_TOKEN_VAR: &str = "AWS_SESSION_TOKEN";

/// The moment the SDK hands a signed request to the HTTP client, recorded by an interceptor, so
/// that latency and TTFT cover the exchange only: not building and signing the request, nor
/// resolving (or refreshing) credentials from the default chain.
#[derive(Debug, Clone, Default)]
struct SentAt(Arc<Mutex<Option<Instant>>>);

impl SentAt {
    /// Time since the request was sent (zero if it never was: the call failed before sending).
    fn elapsed(&self) -> Duration {
        self.0.lock().ok().and_then(|at| *at).map_or(Duration::ZERO, |at| at.elapsed())
    }
}

impl Intercept for SentAt {
    fn name(&self) -> &'static str {
        "taskexec-sent-at"
    }

    fn read_before_transmit(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        _config: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if let Ok(mut at) = self.0.lock() {
            *at = Some(Instant::now());
        }
        Ok(())
    }
}

/// Where the SDK clients of one deployment connect.
#[derive(Debug, Clone)]
pub(crate) struct BedrockSettings {
    /// `region`, else the default chain's.
    pub region: Option<String>,
    /// `base_url`: an endpoint override for both the runtime and the model list.
    pub endpoint: Option<String>,
    /// TCP + TLS connect timeout.
    pub connect_timeout: Duration,
}

/// The clients, built on first use (loading the AWS config may read files and the instance
/// metadata service, so it is not done while the deployments are built).
#[derive(Debug)]
struct Clients {
    runtime: aws_sdk_bedrockruntime::Client,
    control: aws_sdk_bedrock::Client,
}

/// The adapter of one Bedrock deployment.
#[derive(Debug)]
pub struct BedrockConverse {
    name: String,
    settings: BedrockSettings,
    /// Static credentials when the caller's environment lookup has `AWS_ACCESS_KEY_ID` and
    /// `AWS_SECRET_ACCESS_KEY` (the first source of the default chain, read through the lookup
    /// like every other variable); otherwise the default chain resolves them.
    credentials: Option<Credentials>,
    clients: OnceCell<Clients>,
}

impl BedrockConverse {
    /// The adapter for deployment `name`; `env` is the caller's environment lookup.
    pub(crate) fn new(name: &str, settings: BedrockSettings, env: &impl Fn(&str) -> Option<String>) -> Self {
        let var = |name| env(name).filter(|v: &String| !v.trim().is_empty());
        let credentials = match (var(ACCESS_KEY_VAR), var(SECRET_KEY_VAR)) {
            (Some(id), Some(secret)) => {
                Some(Credentials::new(id, secret, var(SESSION_TOKEN_VAR), None, "taskexec-env"))
            }
            _ => None,
        };
        Self { name: name.to_owned(), settings, credentials, clients: OnceCell::new() }
    }

    async fn clients(&self) -> &Clients {
        self.clients
            .get_or_init(|| async {
                let config = self.sdk_config().await;
                Clients {
                    runtime: aws_sdk_bedrockruntime::Client::new(&config),
                    control: aws_sdk_bedrock::Client::new(&config),
                }
            })
            .await
    }

    async fn sdk_config(&self) -> SdkConfig {
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(self.settings.connect_timeout)
            .disable_read_timeout()
            .disable_operation_timeout()
            .disable_operation_attempt_timeout()
            .build();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .retry_config(RetryConfig::disabled())
            .timeout_config(timeouts)
            // A model that thinks before it writes pauses mid-stream; the engine owns timeouts.
            .stalled_stream_protection(StalledStreamProtectionConfig::disabled());
        if let Some(region) = &self.settings.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some(endpoint) = &self.settings.endpoint {
            loader = loader.endpoint_url(endpoint.clone());
        }
        if let Some(credentials) = &self.credentials {
            loader = loader.credentials_provider(credentials.clone());
        }
        loader.load().await
    }

    /// Make one call.
    pub(crate) async fn call(
        &self,
        request: ProviderRequest,
        caps: &Capabilities,
    ) -> Result<ProviderResponse, ProviderError> {
        tracing::debug!(deployment = %self.name, model = %request.model, task_id = %request.task_id,
            attempt = request.attempt, stream = request.stream, "provider call");
        let result = self.exchange(&request, caps).await;
        if let Err(e) = &result {
            tracing::debug!(deployment = %self.name, task_id = %request.task_id, class = e.class().as_str(),
                status = e.status(), error = %e, "provider call failed");
        }
        result
    }

    async fn exchange(
        &self,
        request: &ProviderRequest,
        caps: &Capabilities,
    ) -> Result<ProviderResponse, ProviderError> {
        let converse = Converse::new(request, caps)?;
        let clients = self.clients().await;
        let (answer, request_id, latency, ttft) = if request.stream {
            self.streamed(&clients.runtime, request, converse).await?
        } else {
            self.whole(&clients.runtime, request, converse).await?
        };
        Ok(ProviderResponse {
            text: answer.text,
            finish_reason: answer.finish_reason,
            usage: answer.usage,
            model: request.model.clone(),
            request_id,
            latency,
            ttft,
            limits: Default::default(),
            raw: None,
        })
    }

    async fn whole(
        &self,
        client: &aws_sdk_bedrockruntime::Client,
        request: &ProviderRequest,
        c: Converse,
    ) -> Result<(Answer, Option<String>, Duration, Option<Duration>), ProviderError> {
        let sent = SentAt::default();
        let call = with_converse!(client.converse(), request, c).customize().interceptor(sent.clone());
        let output = call.send().await.map_err(|e| sdk_error(&e))?;
        let latency = sent.elapsed();
        Ok((reply::whole(&output), output.request_id().map(str::to_owned), latency, None))
    }

    async fn streamed(
        &self,
        client: &aws_sdk_bedrockruntime::Client,
        request: &ProviderRequest,
        c: Converse,
    ) -> Result<(Answer, Option<String>, Duration, Option<Duration>), ProviderError> {
        let sent = SentAt::default();
        let call = with_converse!(client.converse_stream(), request, c).customize().interceptor(sent.clone());
        let mut output = call.send().await.map_err(|e| sdk_error(&e))?;
        let request_id = output.request_id().map(str::to_owned);
        let mut state = StreamState::default();
        let mut ttft = None;
        // An exception event arrives as a service error of the stream; a cut body as a
        // dispatch or response error.
        while let Some(event) = output.stream.recv().await.map_err(|e| stream_error(&e))? {
            state.event(&event);
            if ttft.is_none() && state.has_content() {
                ttft = Some(sent.elapsed());
            }
        }
        let latency = sent.elapsed();
        Ok((state.finish()?, request_id, latency, ttft))
    }

    /// The foundation models this account can call on demand. Models served only through an
    /// inference profile (`us.anthropic…`, the ids of cross-region inference) or provisioned
    /// throughput are not listed; such ids are still accepted as a task's `modelId`.
    pub(crate) async fn models(&self) -> Result<Vec<ModelInfo>, ProviderError> {
        let clients = self.clients().await;
        let output = clients.control.list_foundation_models().send().await.map_err(|e| sdk_error(&e))?;
        Ok(output
            .model_summaries()
            .iter()
            .filter(|m| m.inference_types_supported().contains(&InferenceType::OnDemand))
            .map(|m| ModelInfo { id: m.model_id().to_owned(), display_name: m.model_name().map(str::to_owned) })
            .collect())
    }
}
