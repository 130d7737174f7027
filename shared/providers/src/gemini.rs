//! Google's Gemini API (`generateContent`): `POST {api_root}/v1beta/models/{model}:generateContent`,
//! or `:streamGenerateContent?alt=sse` for a stream, with the key in `x-goog-api-key`; models from
//! `GET {api_root}/v1beta/models` (paged by `pageToken`). The exchange itself is
//! [`HttpAdapter`]'s; this module is the wire format.
//!
//! Decisions the API leaves open:
//! - a model id may be given as `gemini-2.5-flash` or `models/gemini-2.5-flash`; it is put in the
//!   URL as one percent-encoded path segment (a `/` or `?` in it cannot change the path);
//! - a prompt blocked before any candidate (`promptFeedback.blockReason`) is a permanent failure
//!   whose code is the block reason: there is no answer to record and the same prompt is
//!   blocked again;
//! - output tokens are `candidatesTokenCount + thoughtsTokenCount` (both are generated and
//!   billed as output); thought parts are left out of the text.
//!
//! References: <https://ai.google.dev/api/generate-content>,
//! <https://ai.google.dev/gemini-api/docs/text-generation>, <https://ai.google.dev/api/models>,
//! <https://ai.google.dev/gemini-api/docs/troubleshooting>.

pub(crate) mod classify;
pub(crate) mod stream;
pub(crate) mod wire;

use std::time::SystemTime;

use reqwest::header::HeaderMap;
use reqwest::{StatusCode, Url};
use serde_json::Value;
use taskexec_core::error::ProviderError;
use taskexec_core::provider::ProviderRequest;

use self::stream::GeminiStream;
use self::wire::{GenerateResponse, normalise_finish_reason};
use crate::answer::{Answer, ModelPage, malformed};
use crate::capability::Capabilities;
use crate::http::{AuthStyle, BuildError, HttpAdapter, StreamParser, Wire, join};

/// Most models asked for per page of the model list (the API's maximum).
const MODELS_PAGE_SIZE: &str = "1000";

/// An adapter for one Gemini deployment.
pub type Gemini = HttpAdapter<GeminiGenerate>;

/// The `generateContent` wire format at one API root.
#[derive(Debug, Clone)]
pub struct GeminiGenerate {
    /// `{api_root}/v1beta/models`: calls add a segment, the model list is this URL.
    models: Url,
}

impl GeminiGenerate {
    /// The API rooted at `api_root` (such as `https://generativelanguage.googleapis.com`).
    pub(crate) fn new(api_root: &str) -> Result<Self, BuildError> {
        let models = join(api_root, "v1beta/models")?;
        if models.cannot_be_a_base() {
            return Err(BuildError::BadBaseUrl);
        }
        Ok(Self { models })
    }

    /// The URL of a call to `model`, streamed or not.
    pub(crate) fn endpoint(&self, model: &str, stream: bool) -> Result<Url, ProviderError> {
        let id = model.trim().strip_prefix("models/").unwrap_or(model.trim());
        if id.is_empty() {
            return Err(ProviderError::permanent("the model id is empty"));
        }
        let method = if stream { "streamGenerateContent" } else { "generateContent" };
        let mut url = self.models.clone();
        url.path_segments_mut()
            .map_err(|()| ProviderError::permanent("the API root cannot take a path"))?
            .pop_if_empty()
            .push(&format!("{id}:{method}"));
        if stream {
            url.set_query(Some("alt=sse"));
        }
        Ok(url)
    }
}

impl Wire for GeminiGenerate {
    type Stream = GeminiStream;

    fn auth(&self) -> AuthStyle {
        AuthStyle::Header("x-goog-api-key")
    }

    fn call(&self, request: &ProviderRequest, caps: &Capabilities) -> Result<(Url, Value), ProviderError> {
        let body = wire::request_body(request, caps)?;
        Ok((self.endpoint(&request.model, request.stream)?, body))
    }

    /// A whole answer; also a JSON array of chunks, which is what a stream looks like when the
    /// server ignored `alt=sse`.
    fn parse(&self, body: &[u8]) -> Result<Answer, ProviderError> {
        if body.trim_ascii_start().starts_with(b"[") {
            let chunks: Vec<GenerateResponse> = serde_json::from_slice(body).map_err(|e| malformed(&e))?;
            let mut stream = GeminiStream::default();
            for chunk in chunks {
                stream.chunk(chunk)?;
            }
            return stream.finish();
        }
        parse_response(GenerateResponse::from_slice(body)?)
    }

    fn stream(&self) -> GeminiStream {
        GeminiStream::default()
    }

    fn classify(&self, status: StatusCode, headers: &HeaderMap, body: &[u8], now: SystemTime) -> ProviderError {
        classify::classify_response(status, headers, body, now)
    }

    fn models_url(&self, page: Option<&str>) -> Result<Url, ProviderError> {
        let mut url = self.models.clone();
        url.query_pairs_mut().append_pair("pageSize", MODELS_PAGE_SIZE);
        if let Some(token) = page {
            url.query_pairs_mut().append_pair("pageToken", token);
        }
        Ok(url)
    }

    fn parse_models(&self, body: &[u8]) -> Result<ModelPage, ProviderError> {
        wire::parse_models(body)
    }
}

/// A whole `GenerateContentResponse` as an answer.
fn parse_response(response: GenerateResponse) -> Result<Answer, ProviderError> {
    if let Some(error) = &response.error {
        return Err(classify::classify_stream_error(error));
    }
    if let Some(blocked) = response.blocked() {
        return Err(blocked);
    }
    if response.candidates.is_empty() {
        return Err(ProviderError::transient("malformed response body: no candidates"));
    }
    Ok(Answer {
        text: response.text().collect(),
        finish_reason: normalise_finish_reason(response.finish_reason()),
        usage: response.usage_metadata.map(Into::into).unwrap_or_default(),
        model: response.model_version,
        id: response.response_id,
    })
}

#[cfg(test)]
mod tests {
    use taskexec_core::error::ErrorClass;

    use super::*;

    fn wire() -> GeminiGenerate {
        GeminiGenerate::new("https://generativelanguage.googleapis.com/").unwrap()
    }

    #[test]
    fn urls_accept_both_model_forms_and_encode_the_id() {
        let w = wire();
        let base = "https://generativelanguage.googleapis.com/v1beta/models/";
        assert_eq!(
            w.endpoint("gemini-2.5-flash", false).unwrap().as_str(),
            format!("{base}gemini-2.5-flash:generateContent")
        );
        assert_eq!(
            w.endpoint("models/gemini-2.5-flash", true).unwrap().as_str(),
            format!("{base}gemini-2.5-flash:streamGenerateContent?alt=sse")
        );
        assert_eq!(
            w.endpoint("a/../b?x#y", false).unwrap().as_str(),
            format!("{base}a%2F..%2Fb%3Fx%23y:generateContent")
        );
        assert_eq!(w.endpoint("models/", false).unwrap_err().class(), ErrorClass::Permanent);
        let proxied = GeminiGenerate::new("http://127.0.0.1:9/proxy").unwrap();
        assert_eq!(
            proxied.endpoint("m", false).unwrap().as_str(),
            "http://127.0.0.1:9/proxy/v1beta/models/m:generateContent"
        );
    }

    #[test]
    fn model_list_urls_carry_page_size_and_token() {
        let w = wire();
        assert_eq!(w.models_url(None).unwrap().query(), Some("pageSize=1000"));
        assert_eq!(w.models_url(Some("a b&c")).unwrap().query(), Some("pageSize=1000&pageToken=a+b%26c"));
    }

    #[test]
    fn a_whole_answer_a_chunk_array_and_empty_candidates() {
        let w = wire();
        let one = br#"{"candidates":[{"content":{"parts":[{"text":"Hi"}],"role":"model"},"finishReason":"STOP"}],"modelVersion":"gemini-2.5-flash","responseId":"abc"}"#;
        let a = w.parse(one).unwrap();
        assert_eq!((a.text.as_str(), a.finish_reason.as_str(), a.id.as_deref()), ("Hi", "stop", Some("abc")));
        let array = br#"[{"candidates":[{"content":{"parts":[{"text":"H"}]}}]},{"candidates":[{"content":{"parts":[{"text":"i"}]},"finishReason":"SAFETY"}]}]"#;
        let a = w.parse(array).unwrap();
        assert_eq!((a.text.as_str(), a.finish_reason.as_str()), ("Hi", "content_filter"));
        assert_eq!(w.parse(br#"{"candidates":[]}"#).unwrap_err().class(), ErrorClass::Transient);
        let blocked = w.parse(br#"{"promptFeedback":{"blockReason":"SAFETY"}}"#).unwrap_err();
        assert_eq!(
            (blocked.class(), blocked.to_task_error().provider_code.as_deref()),
            (ErrorClass::Permanent, Some("SAFETY"))
        );
    }
}
