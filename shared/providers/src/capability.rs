//! What each provider and model accepts, and how a standard request maps onto it: the
//! capability table. A parameter a model does not accept is never silently dropped — the
//! deployment's `unsupported_params` says whether the task fails validation up front (the
//! default, with a message naming the parameter and the model) or the parameter is left out
//! with a logged warning. Mappings that keep the meaning (a system prompt moved to where the
//! provider wants it, `max_tokens` renamed, Anthropic's required `max_tokens` defaulted) are
//! applied by each adapter from the same table.
//!
//! Sources: the providers' public API references below, and the errors they answer (Anthropic's
//! "temperature and top_p cannot both be specified for this model"). The table goes by model-name
//! prefix and needs updating as providers ship models:
//! - OpenAI reasoning models (o1, o3, o4-mini, gpt-5): no `temperature`/`top_p`/`stop` (only the
//!   defaults), `max_completion_tokens` instead of `max_tokens`, `developer` messages instead of
//!   `system`; `*-pro`, `*-deep-research`, `codex-*`, `computer-use-*` only on the Responses API
//!   (<https://platform.openai.com/docs/guides/reasoning>, model pages). The Responses API has
//!   no `stop` and no `seed` (<https://platform.openai.com/docs/api-reference/responses/create>).
//! - Anthropic: `max_tokens` required; `system` is a top-level field; no `seed` or
//!   `response_format`; Claude Sonnet 4.5, Haiku 4.5 and Opus 4.1 and later take `temperature` or
//!   `top_p`, not both (<https://docs.anthropic.com/en/api/messages>, migration notes).
//! - Gemini: `generationConfig` has `temperature`, `topP`, `maxOutputTokens`, `stopSequences`
//!   (at most 5), `seed`, `responseMimeType`/`responseSchema`; the system prompt is
//!   `systemInstruction`, which Gemma models refuse (<https://ai.google.dev/api/generate-content>).
//! - Bedrock Converse: `inferenceConfig` has `maxTokens`, `temperature`, `topP`,
//!   `stopSequences`; no seed or response format; some older models take no system prompt
//!   (<https://docs.aws.amazon.com/bedrock/latest/userguide/conversation-inference-supported-models-features.html>).

use taskexec_core::provider::ProviderRequest;
use taskexec_core::task::Role;

use crate::config::{DeploymentConfig, ProviderKind};

/// Where the system prompt goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SystemPlacement {
    /// A message with role `system` (chat completions).
    Message,
    /// A message with role `developer` (OpenAI reasoning models).
    Developer,
    /// A separate field of the request (Anthropic `system`, Gemini `systemInstruction`,
    /// Bedrock `system`, Responses `instructions`).
    Field,
    /// Not accepted.
    Unsupported,
}

/// What one model on one kind of deployment accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// `temperature`.
    pub temperature: bool,
    /// `top_p`.
    pub top_p: bool,
    /// `temperature` and `top_p` may not both be set.
    pub sampling_exclusive: bool,
    /// Stop sequences, and how many at most (`None`: no stated limit).
    pub stop: bool,
    /// Most stop sequences accepted.
    pub max_stop: Option<usize>,
    /// `seed`.
    pub seed: bool,
    /// `response_format` (JSON mode or schema).
    pub response_format: bool,
    /// Where the system prompt goes.
    pub system: SystemPlacement,
    /// The name of the output-token bound in the request body.
    pub max_tokens_field: &'static str,
    /// A value for `max_tokens` when the task sets none, for providers that require one.
    pub default_max_tokens: Option<u32>,
    /// The model is only served by OpenAI's Responses API.
    pub responses_only: bool,
}

/// Every parameter accepted, as an OpenAI-compatible server is assumed to (it decides).
const OPEN: Capabilities = Capabilities {
    temperature: true,
    top_p: true,
    sampling_exclusive: false,
    stop: true,
    max_stop: None,
    seed: true,
    response_format: true,
    system: SystemPlacement::Message,
    max_tokens_field: "max_tokens",
    default_max_tokens: None,
    responses_only: false,
};

/// Output tokens asked of Anthropic when a task sets no `maxTokens` (the API requires a value).
pub const ANTHROPIC_DEFAULT_MAX_TOKENS: u32 = 4096;

/// The capabilities of `model` on a deployment of `kind`.
#[must_use]
pub fn capabilities(kind: ProviderKind, model: &str) -> Capabilities {
    let m = model.to_ascii_lowercase();
    match kind {
        ProviderKind::Sim | ProviderKind::OpenAiCompatible => OPEN,
        ProviderKind::OpenAi | ProviderKind::AzureOpenAi => openai(&m),
        ProviderKind::Anthropic => anthropic(&m),
        ProviderKind::Gemini => Capabilities {
            max_stop: Some(5),
            // Gemma models served by the Gemini API refuse `systemInstruction`.
            system: if m.trim_start_matches("models/").starts_with("gemma-") {
                SystemPlacement::Unsupported
            } else {
                SystemPlacement::Field
            },
            max_tokens_field: "maxOutputTokens",
            ..OPEN
        },
        ProviderKind::Bedrock => bedrock(&m),
    }
}

/// The capabilities of `model` on the deployment `config`: [`capabilities`] of its kind, with
/// the Responses API's limits (no `stop`, no `seed`) whenever the deployment sends `model` there
/// (`api = "responses"`, or `api = "auto"` and a Responses-only model). Validation, dispatch and
/// the wires all use this, so a parameter the API would refuse is rejected or dropped up front.
#[must_use]
pub fn for_deployment(config: &DeploymentConfig, model: &str) -> Capabilities {
    let caps = capabilities(config.kind, model);
    if crate::openai::uses_responses(config.kind, config.api, &caps) { caps.on_responses() } else { caps }
}

fn openai(m: &str) -> Capabilities {
    // Azure deployment names are the user's; a name that starts like a model gets its rules.
    let base = Capabilities { max_tokens_field: "max_completion_tokens", ..OPEN };
    let responses_only = [
        "o1-pro",
        "o3-pro",
        "o3-deep-research",
        "o4-mini-deep-research",
        "gpt-5-pro",
        "codex-",
        "gpt-5-codex",
        "computer-use",
    ]
    .iter()
    .any(|p| m.starts_with(p));
    let reasoning = ["o1", "o3", "o4", "gpt-5"].iter().any(|p| m.starts_with(p)) && !m.starts_with("gpt-5-chat");
    // The Responses API has neither `stop` nor `seed`.
    let base = if responses_only { base.on_responses() } else { base };
    if reasoning {
        Capabilities {
            temperature: false,
            top_p: false,
            stop: false,
            system: SystemPlacement::Developer,
            responses_only,
            ..base
        }
    } else {
        Capabilities { responses_only, ..base }
    }
}

fn anthropic(m: &str) -> Capabilities {
    let m = m.strip_prefix("anthropic.").unwrap_or(m); // Bedrock model ids
    let exclusive = [
        "claude-sonnet-4-5",
        "claude-haiku-4-5",
        "claude-opus-4-1",
        "claude-opus-4-5",
        "claude-sonnet-5",
        "claude-opus-5",
        "claude-haiku-5",
    ]
    .iter()
    .any(|p| m.starts_with(p));
    Capabilities {
        sampling_exclusive: exclusive,
        seed: false,
        response_format: false,
        system: SystemPlacement::Field,
        max_tokens_field: "max_tokens",
        default_max_tokens: Some(ANTHROPIC_DEFAULT_MAX_TOKENS),
        ..OPEN
    }
}

fn bedrock(m: &str) -> Capabilities {
    // Cross-region inference profiles prefix the model id with a geography (`us.`, `eu.`, …).
    let m = m
        .split_once('.')
        .filter(|(geo, _)| geo.len() <= 4 && !geo.contains('-'))
        .map_or(m, |(_, rest)| if rest.contains('.') { rest } else { m });
    let no_system = [
        "amazon.titan-text",
        "mistral.mistral-7b",
        "mistral.mixtral",
        "cohere.command-text",
        "cohere.command-light",
        "ai21.j2",
    ]
    .iter()
    .any(|p| m.starts_with(p));
    let exclusive = m.starts_with("anthropic.") && anthropic(m).sampling_exclusive;
    Capabilities {
        sampling_exclusive: exclusive,
        seed: false,
        response_format: false,
        system: if no_system { SystemPlacement::Unsupported } else { SystemPlacement::Field },
        max_tokens_field: "maxTokens",
        ..OPEN
    }
}

/// A parameter a task set that the model does not accept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsupported {
    /// The task field (`parameters.seed`, …).
    pub field: &'static str,
    /// Why, in a sentence.
    pub reason: String,
}

impl Capabilities {
    /// Whether every standard parameter is accepted as given (nothing to check or strip).
    #[must_use]
    pub fn accepts_everything(&self) -> bool {
        self.temperature
            && self.top_p
            && !self.sampling_exclusive
            && self.stop
            && self.max_stop.is_none()
            && self.seed
            && self.response_format
            && self.system != SystemPlacement::Unsupported
    }

    /// These capabilities on OpenAI's Responses API, which has neither `stop` nor `seed`.
    #[must_use]
    pub fn on_responses(self) -> Self {
        Self { stop: false, max_stop: None, seed: false, ..self }
    }

    /// Every parameter `request` sets that these capabilities do not accept.
    #[must_use]
    pub fn unsupported(&self, request: &ProviderRequest) -> Vec<Unsupported> {
        let mut found = Vec::new();
        let mut refuse = |field, ok: bool| {
            if !ok {
                found.push(Unsupported { field, reason: "is not accepted".into() });
            }
        };
        refuse("parameters.temperature", self.temperature || request.temperature.is_none());
        refuse("parameters.topP", self.top_p || request.top_p.is_none());
        refuse("parameters.stop", self.stop || request.stop.is_empty());
        refuse("parameters.seed", self.seed || request.seed.is_none());
        refuse("parameters.responseFormat", self.response_format || request.response_format.is_none());
        let has_system = request.messages.iter().any(|m| m.role == Role::System);
        refuse("parameters.system", self.system != SystemPlacement::Unsupported || !has_system);
        if self.sampling_exclusive && request.temperature.is_some() && request.top_p.is_some() {
            found.push(Unsupported {
                field: "parameters.topP",
                reason: "cannot be set together with `temperature`".into(),
            });
        }
        if let Some(max) = self.max_stop.filter(|max| request.stop.len() > *max) {
            found.push(Unsupported { field: "parameters.stop", reason: format!("takes at most {max} sequences") });
        }
        found
    }

    /// `request` without the parameters listed in `unsupported` (stop sequences beyond the
    /// limit are cut, not all dropped).
    pub fn strip(&self, request: &mut ProviderRequest, unsupported: &[Unsupported]) {
        for u in unsupported {
            match u.field {
                "parameters.temperature" => request.temperature = None,
                "parameters.topP" => request.top_p = None,
                "parameters.stop" => match self.max_stop.filter(|_| self.stop) {
                    Some(max) => request.stop.truncate(max),
                    None => request.stop.clear(),
                },
                "parameters.seed" => request.seed = None,
                "parameters.responseFormat" => request.response_format = None,
                "parameters.system" => request.messages.retain(|m| m.role != Role::System),
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::test_support::{bare_request, message};

    fn request(model: &str) -> ProviderRequest {
        ProviderRequest {
            temperature: Some(0.5),
            top_p: Some(0.9),
            stop: vec!["a".into(); 6],
            seed: Some(1),
            response_format: Some(serde_json::json!({"type": "json_object"})),
            ..bare_request(model, vec![message(Role::System, "s"), message(Role::User, "u")])
        }
    }

    fn fields(kind: ProviderKind, model: &str) -> Vec<&'static str> {
        capabilities(kind, model).unsupported(&request(model)).into_iter().map(|u| u.field).collect()
    }

    #[test]
    fn the_table() {
        use ProviderKind as K;
        assert!(fields(K::OpenAiCompatible, "anything").is_empty());
        assert!(fields(K::OpenAi, "gpt-4o-mini").is_empty());
        assert_eq!(fields(K::OpenAi, "o3-mini"), ["parameters.temperature", "parameters.topP", "parameters.stop"]);
        assert_eq!(fields(K::AzureOpenAi, "gpt-5"), ["parameters.temperature", "parameters.topP", "parameters.stop"]);
        assert!(fields(K::OpenAi, "gpt-5-chat-latest").is_empty());
        assert_eq!(
            fields(K::OpenAi, "o3-pro"),
            ["parameters.temperature", "parameters.topP", "parameters.stop", "parameters.seed"]
        );
        assert_eq!(fields(K::OpenAi, "codex-mini-latest"), ["parameters.stop", "parameters.seed"]);
        assert_eq!(fields(K::Anthropic, "claude-3-5-haiku-latest"), ["parameters.seed", "parameters.responseFormat"]);
        assert_eq!(
            fields(K::Anthropic, "claude-sonnet-4-5-20250929"),
            ["parameters.seed", "parameters.responseFormat", "parameters.topP"]
        );
        assert_eq!(fields(K::Gemini, "gemini-2.5-flash"), ["parameters.stop"]);
        assert_eq!(fields(K::Gemini, "models/gemma-3-27b-it"), ["parameters.system", "parameters.stop"]);
        assert_eq!(fields(K::Bedrock, "amazon.nova-pro-v1:0"), ["parameters.seed", "parameters.responseFormat"]);
        assert_eq!(
            fields(K::Bedrock, "mistral.mistral-7b-instruct-v0:2"),
            ["parameters.seed", "parameters.responseFormat", "parameters.system"]
        );
        assert!(fields(K::Bedrock, "us.anthropic.claude-sonnet-4-5-20250929-v1:0").contains(&"parameters.topP"));
    }

    #[test]
    fn accepts_everything_exactly_when_nothing_can_be_unsupported() {
        use ProviderKind as K;
        for (kind, model) in [(K::Sim, "m"), (K::OpenAiCompatible, "x"), (K::OpenAi, "gpt-4o-mini")] {
            let caps = capabilities(kind, model);
            assert!(caps.accepts_everything(), "{kind:?} {model}");
            assert!(caps.unsupported(&request(model)).is_empty());
        }
        for (kind, model) in [(K::OpenAi, "o3"), (K::Anthropic, "claude-3-5-haiku"), (K::Gemini, "gemini-2.5-pro")] {
            assert!(!capabilities(kind, model).accepts_everything(), "{kind:?} {model}");
            assert!(!capabilities(kind, model).unsupported(&request(model)).is_empty());
        }
    }

    #[test]
    fn mappings() {
        use ProviderKind as K;
        let o = capabilities(K::OpenAi, "o1");
        assert_eq!((o.system, o.max_tokens_field), (SystemPlacement::Developer, "max_completion_tokens"));
        assert!(capabilities(K::OpenAi, "o3-pro").responses_only);
        assert!(!capabilities(K::OpenAi, "o3").responses_only);
        assert_eq!(
            capabilities(K::Anthropic, "claude-opus-4-1").default_max_tokens,
            Some(ANTHROPIC_DEFAULT_MAX_TOKENS)
        );
        assert_eq!(capabilities(K::OpenAiCompatible, "x").max_tokens_field, "max_tokens");
    }

    #[test]
    fn a_deployment_on_the_responses_api_refuses_stop_and_seed() {
        let deployment = |table: &str| -> DeploymentConfig { toml::from_str(table).unwrap() };
        let on = |table: &str, model: &str| {
            for_deployment(&deployment(table), model)
                .unsupported(&request(model))
                .into_iter()
                .map(|u| u.field)
                .collect::<Vec<_>>()
        };
        let forced = "kind = \"openai\"\napi = \"responses\"";
        assert_eq!(on(forced, "gpt-4o"), ["parameters.stop", "parameters.seed"]);
        assert!(on("kind = \"openai\"\napi = \"auto\"", "gpt-4o").is_empty());
        assert!(on("kind = \"openai\"\napi = \"chat\"", "gpt-4o").is_empty());
        assert_eq!(on("kind = \"openai\"", "codex-mini-latest"), ["parameters.stop", "parameters.seed"]);
        // Only kind `openai` has a Responses API; the others keep their table.
        assert!(on("kind = \"openai-compatible\"\nbase_url = \"http://x\"", "gpt-4o").is_empty());
        assert_eq!(for_deployment(&deployment(forced), "o3"), capabilities(ProviderKind::OpenAi, "o3").on_responses());
    }

    #[test]
    fn strip_removes_exactly_what_is_unsupported() {
        let caps = capabilities(ProviderKind::Gemini, "gemini-2.5-pro");
        let mut r = request("gemini-2.5-pro");
        let found = caps.unsupported(&r);
        caps.strip(&mut r, &found);
        assert_eq!(r.stop.len(), 5);
        assert!(caps.unsupported(&r).is_empty());
        let caps = capabilities(ProviderKind::Bedrock, "ai21.j2-ultra-v1");
        let mut r = request("ai21.j2-ultra-v1");
        let found = caps.unsupported(&r);
        caps.strip(&mut r, &found);
        assert!(r.messages.iter().all(|m| m.role != Role::System) && r.seed.is_none() && r.response_format.is_none());
        assert_eq!(r.temperature, Some(0.5));
    }
}
