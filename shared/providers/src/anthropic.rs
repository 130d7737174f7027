//! Anthropic's Messages API: `POST {api_root}/v1/messages` with the key in `x-api-key` and a
//! pinned `anthropic-version`, whole or streamed (named SSE events), models from
//! `GET {api_root}/v1/models` (paged by `after_id`). The exchange itself is [`HttpAdapter`]'s;
//! this module is the wire format.
//! Reference: <https://docs.anthropic.com/en/api/messages>,
//! <https://docs.anthropic.com/en/api/messages-streaming>, <https://docs.anthropic.com/en/api/errors>,
//! <https://docs.anthropic.com/en/api/models-list>.

pub(crate) mod classify;
pub(crate) mod stream;
pub(crate) mod wire;

use std::time::SystemTime;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{StatusCode, Url};
use serde_json::Value;
use taskexec_core::error::ProviderError;
use taskexec_core::provider::ProviderRequest;

use self::stream::MessageStream;
use crate::answer::{Answer, ModelPage};
use crate::capability::Capabilities;
use crate::http::{AuthStyle, BuildError, HttpAdapter, Wire, header_string, join};

/// The API version every request pins (<https://docs.anthropic.com/en/api/versioning>).
pub const ANTHROPIC_VERSION: &str = "2023-06-01";
/// Most models asked for per page of the model list (the API's maximum).
const MODELS_PAGE_LIMIT: &str = "1000";

/// An adapter for one Anthropic deployment.
pub type Anthropic = HttpAdapter<AnthropicMessages>;

/// The Messages wire format at one API root.
#[derive(Debug, Clone)]
pub struct AnthropicMessages {
    messages: Url,
    models: Url,
}

impl AnthropicMessages {
    /// The API rooted at `api_root` (such as `https://api.anthropic.com`, without `/v1`).
    pub(crate) fn new(api_root: &str) -> Result<Self, BuildError> {
        Ok(Self { messages: join(api_root, "v1/messages")?, models: join(api_root, "v1/models")? })
    }
}

impl Wire for AnthropicMessages {
    type Stream = MessageStream;

    fn auth(&self) -> AuthStyle {
        AuthStyle::Header("x-api-key")
    }

    fn fixed_headers(&self) -> Vec<(HeaderName, HeaderValue)> {
        vec![(HeaderName::from_static("anthropic-version"), HeaderValue::from_static(ANTHROPIC_VERSION))]
    }

    fn call(&self, request: &ProviderRequest, caps: &Capabilities) -> Result<(Url, Value), ProviderError> {
        Ok((self.messages.clone(), wire::request_body(request, caps)?))
    }

    fn parse(&self, body: &[u8]) -> Result<Answer, ProviderError> {
        wire::parse_message(body)
    }

    fn stream(&self) -> MessageStream {
        MessageStream::default()
    }

    fn classify(&self, status: StatusCode, headers: &HeaderMap, body: &[u8], now: SystemTime) -> ProviderError {
        classify::classify_response(status, headers, body, now)
    }

    fn request_id(&self, headers: &HeaderMap) -> Option<String> {
        header_string(headers, "request-id")
    }

    fn models_url(&self, page: Option<&str>) -> Result<Url, ProviderError> {
        let mut url = self.models.clone();
        url.query_pairs_mut().append_pair("limit", MODELS_PAGE_LIMIT);
        if let Some(after) = page {
            url.query_pairs_mut().append_pair("after_id", after);
        }
        Ok(url)
    }

    fn parse_models(&self, body: &[u8]) -> Result<ModelPage, ProviderError> {
        wire::parse_models(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_rooted_at_the_api_root() {
        let wire = AnthropicMessages::new("http://127.0.0.1:9/").unwrap();
        assert_eq!(wire.messages.as_str(), "http://127.0.0.1:9/v1/messages");
        assert_eq!(wire.models_url(None).unwrap().as_str(), "http://127.0.0.1:9/v1/models?limit=1000");
        assert_eq!(
            wire.models_url(Some("claude 3")).unwrap().as_str(),
            "http://127.0.0.1:9/v1/models?limit=1000&after_id=claude+3"
        );
    }
}
