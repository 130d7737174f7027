//! Anthropic's wire format (see `fixtures.rs`) served by the shared recording server, one
//! scenario per path prefix (`{base}/{scenario}/v1/messages`, `{base}/{scenario}/v1/models`).

#![allow(dead_code)] // each test uses a different part

pub mod fixtures;

use std::collections::BTreeMap;

use taskexec_providers::Deployments;
use taskexec_providers::config::DeploymentConfig;

use crate::support::FAKE_KEY;
use crate::support::recording::{RecordingServer, Reply, Seen};

/// A recording server speaking Anthropic's API; `deployments(scenario)` points at one scenario.
pub async fn anthropic_server() -> RecordingServer {
    RecordingServer::start_for(route, anthropic_at).await
}

/// Deployments with one Anthropic deployment, `d`, at `base_url`, with [`FAKE_KEY`].
pub fn anthropic_at(base_url: &str) -> Deployments {
    let text = format!(
        "[d]\nkind = \"anthropic\"\nbase_url = \"{base_url}\"\napi_key_env = \"FAKE_ANTHROPIC_KEY\"\nconnect_timeout_ms = 2000"
    );
    let configs: BTreeMap<String, DeploymentConfig> = toml::from_str(&text).unwrap();
    Deployments::from_config(&configs, |var| (var == "FAKE_ANTHROPIC_KEY").then(|| FAKE_KEY.to_owned())).unwrap()
}

/// Response headers of a scenario.
type Headers = &'static [(&'static str, &'static str)];

/// The error scenarios: name, status, `error.type`, extra headers.
pub const ERRORS: [(&str, u16, &str, Headers); 10] = [
    ("rate_limit", 429, "rate_limit_error", &[("retry-after", "12")]),
    ("overloaded", 529, "overloaded_error", &[]),
    ("overloaded_hinted", 529, "overloaded_error", &[("retry-after", "5")]),
    ("api_error", 500, "api_error", &[]),
    ("timeout", 504, "timeout_error", &[]),
    ("invalid_request", 400, "invalid_request_error", &[]),
    ("billing", 402, "billing_error", &[]),
    ("permission", 403, "permission_error", &[]),
    ("not_found", 404, "not_found_error", &[]),
    ("too_large", 413, "request_too_large", &[]),
];

/// Every reply carries a `request-id`.
fn route(seen: &Seen) -> Reply {
    let reply = if seen.call() == "models" { models(seen) } else { messages(seen) };
    reply.with("request-id", fixtures::REQUEST_ID)
}

fn messages(seen: &Seen) -> Reply {
    match seen.scenario() {
        "ok" => Reply::json(200, fixtures::MESSAGE).with_all(&fixtures::RATE_LIMIT_HEADERS),
        "stream" => Reply::sse(fixtures::stream_body()),
        "truncated_stream" => Reply::sse(fixtures::truncated_stream_body()),
        "error_event" => Reply::sse(fixtures::error_event_stream_body()),
        "malformed" => Reply::json(200, r#"{"id":"msg_1","type":"message","content":[{"type":"te"#),
        // A careless server echoing the whole key (Anthropic itself does not).
        "unauthorized" => Reply::json(
            401,
            fixtures::error_body("authentication_error", &format!("invalid x-api-key: {}", seen.header("x-api-key"))),
        ),
        "rate_limit_with_limits" => Reply::json(
            429,
            fixtures::error_body(
                "rate_limit_error",
                "Number of request tokens has exceeded your per-minute rate limit",
            ),
        )
        .with_all(&fixtures::RATE_LIMIT_HEADERS)
        .with("retry-after", "12"),
        other => match ERRORS.iter().find(|(name, ..)| *name == other) {
            Some((_, status, kind, headers)) => {
                Reply::json(*status, fixtures::error_body(kind, &format!("{kind} happened"))).with_all(headers)
            }
            None => Reply::json(404, fixtures::error_body("not_found_error", "Unknown scenario")),
        },
    }
}

fn models(seen: &Seen) -> Reply {
    let after_first = seen.query.as_deref().is_some_and(|q| q.contains("after_id=claude-opus-4-1-20250805"));
    Reply::json(200, if after_first { fixtures::MODELS_PAGE_2 } else { fixtures::MODELS_PAGE_1 })
}
