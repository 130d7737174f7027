//! `taskexec providers`: the configured deployments, and the models a deployment serves as its
//! provider's model-list endpoint reports them (here the local OpenAI-compatible mock).

mod common;

use std::process::Stdio;

use common::{Scratch, bin, mock};
use taskexec_mockserver::{MODELS, MockConfig};

async fn taskexec(s: &Scratch, args: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::new(bin())
        .args(args)
        .current_dir(s.dir.path())
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

#[tokio::test]
async fn models_lists_what_the_deployment_serves() {
    let server = mock(MockConfig::default()).await;
    let s = Scratch::new();
    let config = s.config(&server.base_url(), "");
    let config = config.to_str().unwrap();
    let (code, stdout, stderr) = taskexec(&s, &["providers", "models", "mock", "--config", config]).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout.lines().collect::<Vec<_>>(), MODELS);
    let (code, stdout, _) = taskexec(&s, &["providers", "models", "mock", "--config", config, "--json"]).await;
    assert_eq!(code, 0);
    let first: serde_json::Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
    assert_eq!(first["id"], MODELS[0]);
}

#[tokio::test]
async fn an_unknown_deployment_is_exit_2_and_an_unreachable_one_exit_3() {
    let s = Scratch::new();
    let config = s.config("http://127.0.0.1:9/v1", "");
    let config = config.to_str().unwrap();
    let (code, _, stderr) = taskexec(&s, &["providers", "models", "nope", "--config", config]).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("unknown deployment `nope` (configured: mock)"), "{stderr}");
    let (code, _, stderr) = taskexec(&s, &["providers", "models", "mock", "--config", config]).await;
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("listing models failed") && stderr.contains("connect failed"), "{stderr}");
}

#[tokio::test]
async fn list_shows_kind_root_and_key_source_never_a_key() {
    let s = Scratch::new();
    let config = s.write(
        "p.toml",
        "[deployments.a]\nkind = \"anthropic\"\napi_key_env = \"ANTHROPIC_API_KEY\"\n[deployments.s]\nkind = \"sim\"\n",
    );
    let (code, stdout, stderr) = taskexec(&s, &["providers", "list", "--config", config.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("a\tanthropic\thttps://api.anthropic.com\tkey from $ANTHROPIC_API_KEY"), "{stdout}");
    assert!(stdout.contains("s\tsim\t-\tno key"), "{stdout}");
}
