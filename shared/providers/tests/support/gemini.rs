//! A local server speaking the Gemini API's wire format (see `gemini_fixtures.rs`), one scenario
//! per path prefix (`{base}/{scenario}/v1beta/models/{model}:{method}`), recording what it
//! receives; the model list is served at `{base}/{scenario}/v1beta/models`.

#![allow(dead_code)]

use std::collections::BTreeMap;

use taskexec_providers::Deployments;
use taskexec_providers::config::DeploymentConfig;

use crate::fixtures;
use crate::support::FAKE_KEY;
use crate::support::recording::{RecordingServer, Reply, Seen};

/// A recording server speaking the Gemini API; `deployments(scenario)` points at one scenario.
pub async fn gemini_server() -> RecordingServer {
    RecordingServer::start_for(route, deployments_at).await
}

/// Deployments with one Gemini deployment, `d`, at `base_url`, with [`FAKE_KEY`].
pub fn deployments_at(base_url: &str) -> Deployments {
    let text = format!(
        "[d]\nkind = \"gemini\"\nbase_url = \"{base_url}\"\napi_key_env = \"FAKE_GEMINI_KEY\"\nconnect_timeout_ms = 2000"
    );
    let configs: BTreeMap<String, DeploymentConfig> = toml::from_str(&text).unwrap();
    Deployments::from_config(&configs, |var| (var == "FAKE_GEMINI_KEY").then(|| FAKE_KEY.to_owned())).unwrap()
}

/// A JSON reply as Google sends it.
fn json(status: u16, body: impl Into<String>) -> Reply {
    Reply {
        status,
        headers: vec![("content-type", "application/json; charset=UTF-8".into())],
        body: body.into(),
        linger: None,
    }
}

fn route(seen: &Seen) -> Reply {
    if seen.call() == "models" {
        return list(seen);
    }
    match seen.scenario() {
        "ok" => json(200, fixtures::COMPLETION),
        "stream" => Reply::sse(fixtures::stream_body()),
        "truncated_stream" => Reply::sse(fixtures::truncated_stream_body()),
        "malformed" => json(200, r#"{"candidates": [{"content": {"parts": [{"text": "Hel"#),
        "blocked" => json(200, fixtures::PROMPT_BLOCKED),
        "rate_limit" => json(429, fixtures::rate_limit_body()),
        "rate_limit_array" => json(429, fixtures::rate_limit_array_body()).with("retry-after", "5"),
        "invalid_argument" => json(400, fixtures::invalid_argument_body()),
        "failed_precondition" => json(400, fixtures::failed_precondition_body()),
        "permission_denied" => json(403, fixtures::permission_denied_body()),
        "unauthenticated" => json(401, fixtures::unauthenticated_body(&seen.header("x-goog-api-key"))),
        "internal" => json(500, fixtures::internal_body()),
        "unavailable" => json(503, fixtures::unavailable_body()).with("retry-after", "3"),
        "deadline" => json(504, fixtures::deadline_body()),
        _ => json(404, fixtures::not_found_body()),
    }
}

/// The model list, in pages.
fn list(seen: &Seen) -> Reply {
    let token = seen.query.as_deref().unwrap_or_default().split('&').find_map(|p| p.strip_prefix("pageToken="));
    match token {
        None => json(200, fixtures::MODELS_PAGE_1),
        Some(t) if t.replace("%3D", "=") == fixtures::PAGE_2_TOKEN => json(200, fixtures::MODELS_PAGE_2),
        Some(_) => json(400, fixtures::invalid_argument_body()),
    }
}
