//! Azure OpenAI: OpenAI's chat-completions wire format (body, answer, stream and error
//! classification are `openai/`'s, not copies) at Azure's URLs, with the key in the `api-key`
//! header. `base_url` is the resource endpoint (`https://RES.openai.azure.com`) and a task's
//! `modelId` the Azure deployment name.
//!
//! - With `api_version` set, the deployment-scoped API:
//!   `POST {base}/openai/deployments/{deployment}/chat/completions?api-version={v}`, models from
//!   `GET {base}/openai/models?api-version={v}` (the models the resource can deploy: Azure lists
//!   deployments only through its management API).
//! - Without it, the v1 API: `POST {base}/openai/v1/chat/completions` with `model` (the deployment
//!   name) in the body, models from `GET {base}/openai/v1/models`.
//!
//! Azure's errors share OpenAI's body (`{"error":{"code","message",...}}`); its 429s carry a
//! string code `"429"`, `retry-after` and `retry-after-ms`, and a prompt its content filter
//! blocks is a 400 with code `content_filter` (permanent); an answer the filter cut is a 200 with
//! `finish_reason: "content_filter"`.
//! References: <https://learn.microsoft.com/en-us/azure/ai-foundry/openai/reference>,
//! <https://learn.microsoft.com/en-us/azure/ai-foundry/openai/api-version-lifecycle>,
//! <https://learn.microsoft.com/en-us/azure/ai-foundry/openai/quotas-limits>,
//! <https://learn.microsoft.com/en-us/azure/ai-foundry/openai/concepts/content-filter>.

use std::time::SystemTime;

use reqwest::header::HeaderMap;
use reqwest::{StatusCode, Url};
use serde_json::Value;
use taskexec_core::error::ProviderError;
use taskexec_core::provider::ProviderRequest;

use crate::answer::{Answer, ModelPage};
use crate::capability::Capabilities;
use crate::http::{AuthStyle, BuildError, HttpAdapter, Wire, header_string, join};
use crate::openai::classify::classify_response;
use crate::openai::stream::ChatStream;
use crate::openai::wire;

/// An adapter for one Azure OpenAI resource.
pub type AzureOpenAi = HttpAdapter<AzureChat>;

/// Azure's chat-completions URLs for one resource.
#[derive(Debug, Clone)]
pub struct AzureChat {
    /// `{base}/openai/deployments` (with an API version) or `{base}/openai/v1/chat/completions`.
    chat: Url,
    models: Url,
    api_version: Option<String>,
}

impl AzureChat {
    /// The resource at `base_url`; `api_version` selects the deployment-scoped API.
    pub(crate) fn new(base_url: &str, api_version: Option<&str>) -> Result<Self, BuildError> {
        let api_version = api_version.map(str::to_owned);
        let (chat, mut models) = match &api_version {
            Some(_) => (join(base_url, "openai/deployments")?, join(base_url, "openai/models")?),
            None => (join(base_url, "openai/v1/chat/completions")?, join(base_url, "openai/v1/models")?),
        };
        if let Some(version) = &api_version {
            models.query_pairs_mut().append_pair("api-version", version);
        }
        Ok(Self { chat, models, api_version })
    }

    /// The URL called for deployment `model`.
    pub(crate) fn endpoint(&self, model: &str) -> Result<Url, ProviderError> {
        let Some(version) = &self.api_version else { return Ok(self.chat.clone()) };
        let mut url = self.chat.clone();
        // Pushing a segment percent-encodes it: a deployment name cannot reach another path.
        url.path_segments_mut().map_err(|()| ProviderError::permanent("`base_url` cannot take a path"))?.extend([
            model,
            "chat",
            "completions",
        ]);
        url.query_pairs_mut().append_pair("api-version", version);
        Ok(url)
    }
}

impl Wire for AzureChat {
    type Stream = ChatStream;

    fn auth(&self) -> AuthStyle {
        AuthStyle::Header("api-key")
    }

    fn call(&self, request: &ProviderRequest, caps: &Capabilities) -> Result<(Url, Value), ProviderError> {
        let mut body = wire::request_body(request, caps)?;
        if self.api_version.is_some() {
            // The deployment in the path names the model; the body's field is not part of this API.
            if let Some(fields) = body.as_object_mut() {
                fields.remove("model");
            }
        }
        Ok((self.endpoint(&request.model)?, body))
    }

    fn parse(&self, body: &[u8]) -> Result<Answer, ProviderError> {
        wire::parse_completion(body)
    }

    fn stream(&self) -> ChatStream {
        // Azure always sends the usage chunk `stream_options.include_usage` asks for.
        ChatStream::strict()
    }

    fn classify(&self, status: StatusCode, headers: &HeaderMap, body: &[u8], now: SystemTime) -> ProviderError {
        classify_response(status, headers, body, now)
    }

    fn request_id(&self, headers: &HeaderMap) -> Option<String> {
        ["apim-request-id", "x-request-id", "x-ms-request-id"].iter().find_map(|name| header_string(headers, name))
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
    use serde_json::json;
    use taskexec_core::task::Role;

    use super::*;
    use crate::capability::capabilities;
    use crate::config::ProviderKind;
    use crate::test_support::{bare_request, message};

    fn request(model: &str) -> ProviderRequest {
        ProviderRequest { max_tokens: Some(5), ..bare_request(model, vec![message(Role::User, "hi")]) }
    }

    #[test]
    fn deployment_scoped_urls_encode_the_deployment_and_carry_the_version() {
        let w = AzureChat::new("https://res.openai.azure.com/", Some("2024-10-21")).unwrap();
        let (url, body) =
            w.call(&request("my gpt/4o?x"), &capabilities(ProviderKind::AzureOpenAi, "my gpt/4o?x")).unwrap();
        assert_eq!(
            url.as_str(),
            "https://res.openai.azure.com/openai/deployments/my%20gpt%2F4o%3Fx/chat/completions?api-version=2024-10-21"
        );
        assert!(body.get("model").is_none());
        assert_eq!(body["max_completion_tokens"], json!(5));
        assert_eq!(
            w.models_url(None).unwrap().as_str(),
            "https://res.openai.azure.com/openai/models?api-version=2024-10-21"
        );
    }

    #[test]
    fn the_v1_api_names_the_deployment_in_the_body() {
        let w = AzureChat::new("https://res.openai.azure.com", None).unwrap();
        let (url, body) =
            w.call(&request("gpt-4o-prod"), &capabilities(ProviderKind::AzureOpenAi, "gpt-4o-prod")).unwrap();
        assert_eq!(url.as_str(), "https://res.openai.azure.com/openai/v1/chat/completions");
        assert_eq!(body["model"], json!("gpt-4o-prod"));
        assert_eq!(w.models_url(None).unwrap().as_str(), "https://res.openai.azure.com/openai/v1/models");
        assert_eq!(w.auth(), AuthStyle::Header("api-key"));
    }

    #[test]
    fn the_apim_request_id_is_preferred() {
        let w = AzureChat::new("https://res.openai.azure.com", None).unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("x-request-id", "x".parse().unwrap());
        headers.insert("apim-request-id", "apim".parse().unwrap());
        assert_eq!(w.request_id(&headers).as_deref(), Some("apim"));
    }
}
