//! The task routes over the in-memory store and queue: submission (validation, idempotency,
//! conflicts, the timeout bound), reading, cancelling and redriving.

mod common;

use axum::http::StatusCode;
use common::{api, task};
use serde_json::{Value, json};
use taskexec_core::ports::{ControlStore, TaskStore};
use taskexec_core::task::TaskState;

fn fields(body: &Value) -> Vec<(u64, String)> {
    body["error"]["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["index"].as_u64().unwrap(), p["field"].as_str().unwrap().to_owned()))
        .collect()
}

#[tokio::test]
async fn submits_one_task_or_an_array_and_queues_them() {
    let api = api();
    let (status, body) = api.call("POST", "/tasks", Some(task("a"))).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(
        body["tasks"],
        json!([{"index": 0, "id": "a", "outcome": "created", "status": "queued", "runId": "r1"}])
    );
    let (status, body) = api.call("POST", "/tasks", Some(json!([task("b"), task("c")]))).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(body["tasks"].as_array().unwrap().len(), 2);
    assert_eq!(api.drain_queue().await, ["a", "b", "c"]);
    let stored = api.store.get("b").await.unwrap().unwrap();
    assert_eq!((stored.state, stored.submitted_at), (TaskState::Queued, common::NOW));
}

#[tokio::test]
async fn a_task_without_run_joins_the_default_run() {
    let api = api();
    let (status, body) =
        api.call("POST", "/tasks", Some(json!({"id": "x", "providerId": "sim", "modelId": "m", "prompt": "p"}))).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(body["tasks"][0]["runId"], "default");
}

#[tokio::test]
async fn validation_names_every_problem_with_index_and_field_and_stores_nothing() {
    let api = api();
    let bad = json!([
        task("ok"),
        {"id": "b", "providerId": "sim", "modelId": "m", "prompt": "p", "priority": "urgent"},
        {"id": "c", "providerId": "nowhere", "modelId": "m", "prompt": "p", "parameters": {"topP": 3}},
        {"providerId": "sim", "modelId": "m", "prompt": "p"},
        task("ok"),
    ]);
    let (status, body) = api.call("POST", "/tasks", Some(bad)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "invalid_request");
    assert_eq!(
        fields(&body),
        [
            (1, "priority".to_owned()),
            (2, "parameters.topP".to_owned()),
            (2, "providerId".to_owned()),
            (3, "id".to_owned()),
            (4, "id".to_owned())
        ]
    );
    assert!(body["error"]["details"][2]["message"].as_str().unwrap().contains("unknown deployment `nowhere`"));
    assert!(api.store.get("ok").await.unwrap().is_none(), "nothing is stored when any task is invalid");
    assert!(api.drain_queue().await.is_empty());
}

#[tokio::test]
async fn rejects_malformed_bodies_and_oversized_batches() {
    let api = api();
    for body in [json!("text"), json!([]), json!(vec![task("a"); 501])] {
        let (status, answer) = api.call("POST", "/tasks", Some(body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    }
    let (status, _) = api.call("POST", "/tasks", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "an empty body is malformed JSON");
}

#[tokio::test]
async fn a_timeout_that_does_not_fit_in_the_worker_is_rejected() {
    let api = api();
    let mut long = task("long");
    long["timeout"] = json!(50_001);
    let mut fits = task("fits");
    fits["timeout"] = json!(50_000);
    let (status, body) = api.call("POST", "/tasks", Some(json!([fits, long]))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(fields(&body), [(1, "timeout".to_owned())]);
    let message = body["error"]["details"][0]["message"].as_str().unwrap();
    assert!(message.contains("at most 50000 ms"), "{message}");
}

#[tokio::test]
async fn resubmission_is_idempotent_and_resends_unfinished_duplicates() {
    let api = api();
    api.call("POST", "/tasks", Some(json!([task("a"), task("b")]))).await;
    assert_eq!(api.drain_queue().await, ["a", "b"]);
    api.complete("a", 12.0).await;
    // A client retry (say, after a 503 from a failed send): same content.
    let (status, body) = api.call("POST", "/tasks", Some(json!([task("a"), task("b")]))).await;
    assert_eq!(status, StatusCode::OK, "all duplicates: nothing created");
    assert_eq!(body["tasks"][0]["outcome"], "duplicate");
    assert_eq!(body["tasks"][0]["status"], "completed");
    assert_eq!(body["tasks"][1]["status"], "queued");
    assert_eq!(api.drain_queue().await, ["b"], "the unfinished duplicate is sent again, the finished one is not");
    assert_eq!(api.store.events("b").await.unwrap().len(), 1, "no second `submitted` event");
}

#[tokio::test]
async fn a_conflicting_id_is_409_and_the_rest_is_accepted() {
    let api = api();
    api.call("POST", "/tasks", Some(task("a"))).await;
    api.drain_queue().await;
    let mut changed = task("a");
    changed["prompt"] = json!("another question");
    let (status, body) = api.call("POST", "/tasks", Some(json!([task("new"), changed]))).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "conflict");
    assert_eq!(fields(&body), [(1, "id".to_owned())]);
    assert_eq!(api.drain_queue().await, ["new"]);
    assert_eq!(api.store.get("a").await.unwrap().unwrap().task.prompt, "question a", "the stored task is untouched");
}

#[tokio::test]
async fn reads_a_task_status() {
    let api = api();
    api.call("POST", "/tasks", Some(task("a"))).await;
    api.complete("a", 20.0).await;
    let (status, body) = api.call("GET", "/tasks/a", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!((body["id"].as_str(), body["status"].as_str()), (Some("a"), Some("completed")));
    assert_eq!(body["progress"], 1.0);
    assert_eq!(body["result"]["text"], "42");
    let (status, body) = api.call("GET", "/tasks/missing", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "not_found");
}

#[tokio::test]
async fn cancels_a_queued_task_once() {
    let api = api();
    api.call("POST", "/tasks", Some(task("a"))).await;
    let (status, body) = api.call("DELETE", "/tasks/a", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "cancelled");
    assert_eq!(body["error"]["class"], "cancelled");
    assert_eq!(api.store.control().await.unwrap().cancel_seq, 1, "runners see the cancel signal");
    let (status, body) = api.call("DELETE", "/tasks/a", None).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(body["error"]["message"].as_str().unwrap().contains("already finished (cancelled)"));
    let (status, _) = api.call("DELETE", "/tasks/missing", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn redrives_only_failed_tasks_and_queues_them() {
    let api = api();
    api.call("POST", "/tasks", Some(json!([task("bad"), task("good")]))).await;
    api.drain_queue().await;
    api.fail("bad").await;
    api.complete("good", 5.0).await;
    let (status, body) = api.call("POST", "/tasks/bad/redrive", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!((body["status"].as_str(), body["attempt"].as_u64()), (Some("queued"), Some(0)));
    assert_eq!(api.drain_queue().await, ["bad"]);
    let (status, body) = api.call("POST", "/tasks/good/redrive", None).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(body["error"]["message"].as_str().unwrap().contains("is completed, not failed"));
    let (status, _) = api.call("POST", "/tasks/missing/redrive", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_json() {
    let api = api();
    let (status, body) = api.call("GET", "/nowhere", None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")));
    let (status, body) = api.call("PUT", "/tasks/a", None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::METHOD_NOT_ALLOWED, Some("method_not_allowed")));
}

#[tokio::test]
async fn submissions_and_cancels_are_added_to_the_run_counters_once_per_request() {
    use taskexec_core::ports::RunDelta;
    let api = api();
    let batch: Vec<Value> = ["a", "b", "c"].iter().map(|id| task(id)).collect();
    api.call("POST", "/tasks", Some(Value::Array(batch.clone()))).await;
    api.call("POST", "/tasks", Some(Value::Array(batch))).await; // duplicates: nothing new
    api.call("DELETE", "/tasks/b", None).await;
    let run = task("a")["runId"].as_str().unwrap_or("default").to_owned();
    let calls = api.counters.0.lock().unwrap().clone();
    assert_eq!(
        calls,
        [
            (run.clone(), RunDelta { submitted: 3, ..RunDelta::default() }),
            (run, RunDelta { cancelled: 1, ..RunDelta::default() }),
        ]
    );
}

#[tokio::test]
async fn the_hosts_task_check_refuses_unsupported_parameters_before_anything_is_stored() {
    let api = api();
    let mut refused = task("s1");
    refused["providerId"] = json!("mock");
    refused["parameters"] = json!({"seed": 7});
    let mut fine = task("s2");
    fine["parameters"] = json!({"seed": 7});
    let (status, body) = api.call("POST", "/tasks", Some(json!([fine, refused]))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(fields(&body), [(1, "parameters.seed".to_owned())]);
    assert!(body["error"]["details"][0]["message"].as_str().unwrap().contains("model `m` on deployment `mock`"));
    assert!(api.drain_queue().await.is_empty(), "nothing was stored or queued");
}

/// The request id of a submission (the client's `x-request-id`) goes with each of its tasks'
/// deliveries to the queue, for the worker's log lines.
#[tokio::test]
async fn a_submissions_request_id_goes_with_its_tasks_to_the_queue() {
    use tower::ServiceExt;
    let api = common::api();
    let body = serde_json::to_vec(&serde_json::json!([common::task("a"), common::task("b")])).unwrap();
    let request = axum::http::Request::builder()
        .method("POST")
        .uri("/tasks")
        .header("content-type", "application/json")
        .header(taskexec_api::REQUEST_ID, "submit-7")
        .body(axum::body::Body::from(body))
        .unwrap();
    let response = api.app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), axum::http::StatusCode::CREATED);
    let queued = taskexec_core::ports::WorkQueue::receive(&*api.queue, 10, std::time::Duration::ZERO).await.unwrap();
    let correlations: Vec<Option<&str>> = queued.iter().map(|d| d.correlation.as_deref()).collect();
    assert_eq!(correlations, [Some("submit-7"), Some("submit-7")]);
}
