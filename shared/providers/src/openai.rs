//! OpenAI's chat-completions API, and every server that speaks it (vLLM, Ollama, llama.cpp,
//! OpenRouter, Together, Groq, GitHub Models …): `POST {base_url}/chat/completions`, whole or
//! streamed, models from `GET {base_url}/models`. The exchange itself is [`HttpAdapter`]'s; this
//! module is the wire format. Azure OpenAI reuses it with its own URLs and key header
//! (`azure.rs`); the Responses API is `responses.rs`.
//! Reference: <https://platform.openai.com/docs/api-reference/chat>.

pub(crate) mod classify;
pub(crate) mod responses;
pub(crate) mod stream;
pub(crate) mod wire;

use std::time::SystemTime;

use reqwest::header::HeaderMap;
use reqwest::{StatusCode, Url};
use serde_json::Value;
use taskexec_core::error::ProviderError;
use taskexec_core::provider::{ProviderRequest, ProviderResponse};

use self::responses::OpenAiResponses;
use self::stream::ChatStream;
use crate::answer::{Answer, ModelInfo, ModelPage};
use crate::capability::Capabilities;
use crate::config::{OpenAiApi, ProviderKind};
use crate::http::{AuthStyle, BuildError, HttpAdapter, HttpSettings, Wire, join};
use crate::secret::ApiKey;

/// An adapter for one OpenAI-compatible deployment.
pub type OpenAiCompatible = HttpAdapter<OpenAiChat>;

/// A deployment of kind `openai`: chat completions and the Responses API at one base URL,
/// chosen per call by the deployment's `api` and the model's capabilities.
#[derive(Debug)]
pub struct OpenAiDeployment {
    kind: ProviderKind,
    api: OpenAiApi,
    chat: OpenAiCompatible,
    responses: HttpAdapter<OpenAiResponses>,
}

impl OpenAiDeployment {
    /// Both APIs rooted at `base_url`, with the same key and settings.
    pub(crate) fn new(
        name: &str,
        base_url: &str,
        api: OpenAiApi,
        key: Option<ApiKey>,
        settings: &HttpSettings,
    ) -> Result<Self, BuildError> {
        let kind = ProviderKind::OpenAi;
        let chat = HttpAdapter::new(name, OpenAiChat::new(base_url, kind)?, key, settings)?;
        // One connection pool for both APIs: they are the same host.
        let responses = chat.sharing(OpenAiResponses::new(base_url)?)?;
        Ok(Self { kind, api, chat, responses })
    }

    /// Whether a call for `model` goes to the Responses API: always with `api = "responses"`,
    /// never with `api = "chat"`, and with `auto` when the model is served only there.
    #[cfg(test)]
    pub(crate) fn uses_responses(&self, model: &str) -> bool {
        uses_responses(self.kind, self.api, &crate::capability::capabilities(self.kind, model))
    }

    /// Make one call on the API the model needs.
    pub(crate) async fn call(
        &self,
        request: ProviderRequest,
        caps: &Capabilities,
    ) -> Result<ProviderResponse, ProviderError> {
        if uses_responses(self.kind, self.api, caps) {
            self.responses.call(request, caps).await
        } else {
            self.chat.call(request, caps).await
        }
    }

    /// The URL a call for `model` goes to.
    #[cfg(test)]
    pub(crate) fn endpoint(&self, model: &str) -> &Url {
        if self.uses_responses(model) { self.responses.wire().endpoint() } else { self.chat.wire().endpoint() }
    }

    /// Every model the deployment serves (`GET {base_url}/models`, shared by both APIs).
    pub async fn models(&self) -> Result<Vec<ModelInfo>, ProviderError> {
        self.chat.models().await
    }
}

/// Whether a deployment of `kind` with `api` sends calls for `model` to the Responses API: only
/// kind `openai` has one — always with `api = "responses"`, never with `api = "chat"`, and with
/// `auto` when the model is served only there. The one place this is decided: the routing of
/// [`OpenAiDeployment`] and the capabilities of [`crate::capability::for_deployment`] both ask it.
pub(crate) fn uses_responses(kind: ProviderKind, api: OpenAiApi, caps: &Capabilities) -> bool {
    kind == ProviderKind::OpenAi
        && match api {
            OpenAiApi::Responses => true,
            OpenAiApi::Chat => false,
            OpenAiApi::Auto => caps.responses_only,
        }
}

/// The chat-completions wire format at one base URL.
#[derive(Debug, Clone)]
pub struct OpenAiChat {
    kind: ProviderKind,
    chat: Url,
    models: Url,
}

impl OpenAiChat {
    /// The API rooted at `base_url` (such as `https://api.openai.com/v1`).
    pub(crate) fn new(base_url: &str, kind: ProviderKind) -> Result<Self, BuildError> {
        Ok(Self { kind, chat: join(base_url, "chat/completions")?, models: join(base_url, "models")? })
    }

    /// The URL called.
    #[cfg(test)]
    #[must_use]
    pub fn endpoint(&self) -> &Url {
        &self.chat
    }
}

impl Wire for OpenAiChat {
    type Stream = ChatStream;

    fn auth(&self) -> AuthStyle {
        AuthStyle::Bearer
    }

    fn call(&self, request: &ProviderRequest, caps: &Capabilities) -> Result<(Url, Value), ProviderError> {
        Ok((self.chat.clone(), wire::request_body(request, caps)?))
    }

    fn parse(&self, body: &[u8]) -> Result<Answer, ProviderError> {
        wire::parse_completion(body)
    }

    fn stream(&self) -> ChatStream {
        // OpenAI always sends the usage chunk `stream_options.include_usage` asks for; other
        // compatible servers may omit it.
        if self.kind == ProviderKind::OpenAi { ChatStream::strict() } else { ChatStream::default() }
    }

    fn classify(&self, status: StatusCode, headers: &HeaderMap, body: &[u8], now: SystemTime) -> ProviderError {
        classify::classify_response(status, headers, body, now)
    }

    fn models_url(&self, _page: Option<&str>) -> Result<Url, ProviderError> {
        Ok(self.models.clone())
    }

    fn parse_models(&self, body: &[u8]) -> Result<ModelPage, ProviderError> {
        wire::parse_models(body)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn deployment(api: OpenAiApi) -> OpenAiDeployment {
        let settings = HttpSettings { connect_timeout: Duration::from_secs(1), keep_raw: false };
        OpenAiDeployment::new("d", "https://api.openai.com/v1", api, None, &settings).unwrap()
    }

    #[test]
    fn routes_by_api_and_model() {
        let auto = deployment(OpenAiApi::Auto);
        assert_eq!(auto.endpoint("o3-pro").as_str(), "https://api.openai.com/v1/responses");
        assert_eq!(auto.endpoint("gpt-4o").as_str(), "https://api.openai.com/v1/chat/completions");
        assert!(deployment(OpenAiApi::Responses).uses_responses("gpt-4o"));
        assert!(!deployment(OpenAiApi::Chat).uses_responses("o3-pro"));
    }
}
