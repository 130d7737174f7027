//! OpenAI's chat-completions API, and every server that speaks it (vLLM, Ollama, llama.cpp,
//! OpenRouter, Together, Groq, GitHub Models …): `POST {base_url}/chat/completions`, whole or
//! streamed, models from `GET {base_url}/models`. The exchange itself is [`HttpAdapter`]'s; this
//! module is the wire format. Azure OpenAI reuses it with its own URLs and key header
//! (`azure.rs`); the Responses API is `responses.rs`.
//! Reference: <https://platform.openai.com/docs/api-reference/chat>.

pub(crate) mod classify;
pub(crate) mod stream;
pub(crate) mod wire;

use std::time::SystemTime;

use reqwest::header::HeaderMap;
use reqwest::{StatusCode, Url};
use serde_json::Value;
use taskexec_core::error::ProviderError;
use taskexec_core::provider::ProviderRequest;

use self::stream::ChatStream;
use crate::answer::{Answer, ModelPage};
use crate::capability::capabilities;
use crate::config::ProviderKind;
use crate::http::{AuthStyle, BuildError, HttpAdapter, Wire, join};

/// An adapter for one OpenAI-compatible deployment.
pub type OpenAiCompatible = HttpAdapter<OpenAiChat>;

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

    fn call(&self, request: &ProviderRequest) -> Result<(Url, Value), ProviderError> {
        Ok((self.chat.clone(), wire::request_body(request, &capabilities(self.kind, &request.model))?))
    }

    fn parse(&self, body: &[u8]) -> Result<Answer, ProviderError> {
        wire::parse_completion(body)
    }

    fn stream(&self) -> ChatStream {
        ChatStream::default()
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
