//! Bad input: every problem is reported with its line and field, the exit code is 2, and
//! nothing runs (no database is even created).

mod common;

use common::Scratch;

#[tokio::test]
async fn every_bad_line_is_reported_and_nothing_runs() {
    let s = Scratch::new();
    s.config("http://127.0.0.1:9/v1", "");
    let big = "x".repeat(1024 * 1024 + 1);
    let file = s.write(
        "tasks.jsonl",
        &[
            r#"{"id":"ok-1","providerId":"mock","modelId":"m","prompt":"fine"}"#.to_owned(),
            r#"{"id":"bad-json","providerId":"mock","modelId":"m","prompt":"x""#.to_owned(),
            r#"{"id":"p","providerId":"mock","modelId":"m","prompt":"x","priority":"urgent"}"#.to_owned(),
            r#"{"id":"t","providerId":"mock","modelId":"m","prompt":"x","timeout":-5}"#.to_owned(),
            r#"{"id":"np","providerId":"mock","modelId":"m"}"#.to_owned(),
            r#"{"id":"d","providerId":"nowhere","modelId":"m","prompt":"x"}"#.to_owned(),
            format!(r#"{{"id":"big","providerId":"mock","modelId":"m","prompt":"{big}"}}"#),
        ]
        .join("\n"),
    );
    let (code, stdout, stderr) = s.run(&["run", file.to_str().unwrap()]).await;
    assert_eq!(code, 2, "stderr: {stderr}");
    assert!(stdout.is_empty());
    let problems: Vec<&str> = stderr.lines().filter(|l| l.contains("tasks.jsonl: line")).collect();
    assert_eq!(problems.len(), 6, "one message per problem:\n{stderr}");
    let expect = [
        ("line 2: malformed JSON", ""),
        ("line 3: field `priority`", "urgent"),
        ("line 4: field `timeout`", "-5"),
        ("line 5: field `prompt`", "is required"),
        ("line 6: field `providerId`", "unknown deployment `nowhere`"),
        ("line 7: field `prompt`", "1048577 bytes"),
    ];
    for ((head, detail), line) in expect.iter().zip(&problems) {
        assert!(line.contains(head) && line.contains(detail), "expected {head} … {detail} in: {line}");
    }
    assert!(stderr.contains("6 problem(s)") && stderr.contains("nothing was run"), "{stderr}");
    assert!(!s.db().exists(), "no database was created: nothing ran");
}

#[tokio::test]
async fn a_bad_config_is_exit_2_with_its_path() {
    let s = Scratch::new();
    s.write("tasks.toml", "[engine]\nconcurency = 4\n");
    let file = s.tasks(1);
    let (code, _, stderr) = s.run(&["run", file.to_str().unwrap()]).await;
    assert_eq!(code, 2);
    assert!(stderr.contains("tasks.toml") && stderr.contains("concurency"), "{stderr}");
}

#[tokio::test]
async fn admin_commands_on_a_missing_database_are_exit_2() {
    let s = Scratch::new();
    let (code, _, stderr) = s.run(&["status"]).await;
    assert_eq!(code, 2);
    assert!(stderr.contains("no database at"), "{stderr}");
}

#[tokio::test]
async fn a_parameter_the_model_does_not_accept_is_named_with_the_model() {
    let s = Scratch::new();
    s.write(
        "tasks.toml",
        "[deployments.oai]\nkind = \"openai\"\n[deployments.lenient]\nkind = \"openai\"\nunsupported_params = \"drop\"\n",
    );
    let file = s.write(
        "tasks.jsonl",
        &[
            r#"{"id":"a","providerId":"oai","modelId":"gpt-4o-mini","prompt":"x","parameters":{"temperature":0.2}}"#,
            r#"{"id":"b","providerId":"oai","modelId":"o3-mini","prompt":"x","parameters":{"temperature":0.2,"stop":["x"]}}"#,
            r#"{"id":"c","providerId":"lenient","modelId":"o3-mini","prompt":"x","parameters":{"temperature":0.2}}"#,
        ]
        .join("\n"),
    );
    let (code, _, stderr) = s.run(&["run", file.to_str().unwrap()]).await;
    assert_eq!(code, 2, "stderr: {stderr}");
    let problems: Vec<&str> = stderr.lines().filter(|l| l.contains("tasks.jsonl: line")).collect();
    assert_eq!(problems.len(), 2, "{stderr}");
    assert!(problems[0].contains("line 2: field `parameters.temperature`: `temperature` is not accepted by model `o3-mini` on deployment `oai`"), "{}", problems[0]);
    assert!(problems[0].contains("unsupported_params = \"drop\""), "{}", problems[0]);
    assert!(problems[1].contains("line 2: field `parameters.stop`"), "{}", problems[1]);
    assert!(!s.db().exists(), "nothing ran");
}
