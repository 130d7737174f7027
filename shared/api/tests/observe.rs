//! Control, observation, authentication and the OpenAPI document, over the in-memory ports.

mod common;

use std::sync::Arc;

use axum::http::StatusCode;
use common::{api, send, task};
use serde_json::json;
use taskexec_api::{ApiDoc, bearer_auth};
use taskexec_core::ports::ControlStore;
use utoipa::OpenApi;

#[tokio::test]
async fn pause_and_resume_globally_or_per_run_are_reflected_in_control() {
    let api = api();
    let (status, body) = api.call("POST", "/control/pause", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["paused"], true);
    assert!(api.store.control().await.unwrap().paused);
    let (_, body) = api.call("POST", "/control/pause", Some(json!({"runId": "r1"}))).await;
    assert_eq!(body["pausedRuns"], json!(["r1"]));
    let (_, body) = api.call("POST", "/control/resume", None).await;
    assert_eq!((body["paused"].as_bool(), &body["pausedRuns"]), (Some(false), &json!(["r1"])));
    let (_, body) = api.call("POST", "/control/resume", Some(json!({"runId": "r1"}))).await;
    assert_eq!(body["pausedRuns"], json!([]));
    let control = api.store.control().await.unwrap();
    assert!(!control.paused && control.paused_runs.is_empty());
    let (status, body) = api.call("GET", "/control", None).await;
    assert_eq!((status, body["paused"].as_bool()), (StatusCode::OK, Some(false)));
}

#[tokio::test]
async fn control_rejects_a_bad_body() {
    let api = api();
    let (status, body) = api.call("POST", "/control/pause", Some(json!({"runId": "not a run id"}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["details"][0]["field"], "runId");
    let (status, _) = api.call("POST", "/control/pause", Some(json!({"run": "r1"}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "unknown fields are rejected");
    // Only the documented shapes: not an array (serde would read `["r1"]` as run r1 and `[]` as
    // everything), not a null run id (a client that lost its run id must not pause everything).
    for body in
        [json!([]), json!(["r1"]), json!(["r1", "r2"]), json!({"runId": null}), json!({"runId": 7}), json!("r1")]
    {
        let (status, answer) = api.call("POST", "/control/pause", Some(body.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body} → {answer}");
        assert!(answer["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{answer}");
    }
    let control = api.store.control().await.unwrap();
    assert!(!control.paused && control.paused_runs.is_empty(), "nothing paused: {control:?}");
    // `null` is no body, as the document allows: everything; `{}` too.
    let (status, body) = api.call("POST", "/control/pause", Some(serde_json::Value::Null)).await;
    assert_eq!((status, &body["paused"]), (StatusCode::OK, &json!(true)), "{body}");
    let (status, body) = api.call("POST", "/control/resume", Some(json!({}))).await;
    assert_eq!((status, &body["paused"]), (StatusCode::OK, &json!(false)), "{body}");
}

/// Limits set at run time: a PUT replaces a deployment's override (shown in the control state
/// and stored for every engine), a DELETE removes it; unknown deployments, zero limits, unknown
/// fields and malformed bodies are refused with what is wrong, and change nothing.
#[tokio::test]
async fn limits_are_set_replaced_and_removed_per_deployment_and_bad_requests_change_nothing() {
    let api = api();
    let (status, body) = api.call("PUT", "/control/limits/sim", Some(json!({"rpm": 60, "concurrency": 4}))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["limits"], json!({"sim": {"rpm": 60, "concurrency": 4}}));
    let (_, body) = api.call("PUT", "/control/limits/sim", Some(json!({"tpm": 90000}))).await;
    assert_eq!(body["limits"]["sim"], json!({"tpm": 90000}), "a PUT replaces the whole override");
    let stored = api.store.control().await.unwrap().limits;
    assert_eq!(stored["sim"].tpm, Some(90_000));

    let (status, body) = api.call("PUT", "/control/limits/nope", Some(json!({"rpm": 1}))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["error"]["message"].as_str().unwrap().contains("unknown deployment `nope`"), "{body}");
    let (status, body) = api.call("PUT", "/control/limits/mock", Some(json!({"rpm": 0, "tpm": 0}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["error"]["message"].as_str().unwrap().contains("rpm, tpm must be at least 1"), "{body}");
    let (status, _) = api.call("PUT", "/control/limits/mock", Some(json!({"rpmm": 5}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "unknown fields are refused");
    let (status, _) = api.call("PUT", "/control/limits/mock", Some(json!({"rpm": -5}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(api.store.control().await.unwrap().limits.len(), 1, "nothing changed by the refused requests");

    let (status, body) = api.call("DELETE", "/control/limits/sim", None).await;
    assert_eq!((status, body.get("limits")), (StatusCode::OK, None), "{body}");
    assert!(api.store.control().await.unwrap().limits.is_empty());
}

#[tokio::test]
async fn metrics_globally_and_per_run() {
    let api = api();
    let mut other = task("o");
    other["runId"] = json!("r2");
    api.call("POST", "/tasks", Some(json!([task("a"), task("b"), task("c"), other]))).await;
    api.complete("a", 10.0).await;
    api.complete("b", 30.0).await;
    api.fail("c").await;
    let (status, m) = api.call("GET", "/metrics", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!((m["scope"].as_str(), m["totalTasks"].as_u64()), (Some("global"), Some(4)));
    let (_, m) = api.call("GET", "/metrics?runId=r1", None).await;
    assert_eq!((m["scope"].as_str(), m["runId"].as_str()), (Some("run"), Some("r1")));
    assert_eq!(
        (m["totalTasks"].as_u64(), m["completedTasks"].as_u64(), m["failedTasks"].as_u64()),
        (Some(3), Some(2), Some(1))
    );
    assert_eq!(m["averageExecutionTime"], 20.0);
    let (status, body) = api.call("GET", "/metrics?runId=bad%20id", None).await;
    assert_eq!((status, body["error"]["details"][0]["field"].as_str()), (StatusCode::BAD_REQUEST, Some("runId")));
}

#[tokio::test]
async fn run_progress_counts_statuses() {
    let api = api();
    api.call("POST", "/tasks", Some(json!([task("a"), task("b"), task("c"), task("d")]))).await;
    api.complete("a", 10.0).await;
    api.fail("b").await;
    api.call("DELETE", "/tasks/c", None).await;
    api.call("POST", "/control/pause", Some(json!({"runId": "r1"}))).await;
    let (status, run) = api.call("GET", "/runs/r1", None).await;
    assert_eq!(status, StatusCode::OK, "{run}");
    assert_eq!(run["runId"], "r1");
    assert_eq!(run["totalTasks"], 4);
    assert_eq!(run["counts"], json!({"queued": 1, "running": 0, "completed": 1, "failed": 1, "cancelled": 1}));
    assert_eq!(run["progress"], 0.75);
    assert_eq!(run["paused"], true);
    assert_eq!(run["metrics"]["completedTasks"], 1);
    let (status, _) = api.call("GET", "/runs/unknown", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn resources_are_a_real_sample_of_this_process() {
    let api = api();
    let (status, r) = api.call("GET", "/resources", None).await;
    assert_eq!(status, StatusCode::OK, "{r}");
    let memory = r["memoryBytes"].as_u64().unwrap();
    assert!(memory > 1024 * 1024 && memory < 1 << 40, "resident memory of a test process: {memory}");
    let percent = r["memoryPercent"].as_f64().unwrap();
    assert!(percent > 0.0 && percent < 100.0, "{percent}");
    assert!(r["cpuPercent"].as_f64().unwrap() >= 0.0);
    assert!(r["networkRxBytes"].is_u64() && r["networkTxBytes"].is_u64());
    assert_eq!(r["sampledAt"], "2027-01-15T08:00:00.000Z");
}

#[tokio::test]
async fn bearer_auth_guards_every_route() {
    let api = api();
    let app = api.app.clone().layer(bearer_auth("correct-token-0123456789"));
    for (method, uri) in [("GET", "/metrics"), ("POST", "/tasks"), ("GET", "/openapi.json"), ("GET", "/nowhere")] {
        let (status, body) = send(&app, method, uri, None, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {uri}");
        assert_eq!(body["error"]["code"], "unauthorized");
        let (status, _) = send(&app, method, uri, None, Some("wrong-token")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {uri} with a wrong token");
    }
    let (status, _) = send(&app, "GET", "/metrics", None, Some("correct-token-0123456789")).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = send(&app, "POST", "/tasks", Some(task("a")), Some("correct-token-0123456789")).await;
    assert_eq!(status, StatusCode::CREATED);
}

#[tokio::test]
async fn openapi_lists_every_route_and_the_contract_types() {
    let api = api();
    let (status, doc) = api.call("GET", "/openapi.json", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc, serde_json::to_value(ApiDoc::openapi()).unwrap(), "served as generated");
    let routes = [
        ("/tasks", "post"),
        ("/tasks/{id}", "get"),
        ("/tasks/{id}", "delete"),
        ("/tasks/{id}/redrive", "post"),
        ("/control", "get"),
        ("/control/pause", "post"),
        ("/control/resume", "post"),
        ("/control/limits/{deployment}", "put"),
        ("/control/limits/{deployment}", "delete"),
        ("/metrics", "get"),
        ("/runs/{id}", "get"),
        ("/resources", "get"),
        ("/openapi.json", "get"),
    ];
    for (path, method) in routes {
        assert!(doc["paths"][path][method].is_object(), "{method} {path} missing from the document");
    }
    let documented: usize = doc["paths"].as_object().unwrap().values().map(|p| p.as_object().unwrap().len()).sum();
    assert_eq!(documented, routes.len(), "no route undocumented, none extra");
    for schema in ["BenchmarkTask", "TaskStatus", "ExecutionMetrics", "ResourceUsage", "RunProgress", "ErrorBody"] {
        assert!(doc["components"]["schemas"][schema].is_object(), "schema {schema} missing");
    }
    assert_eq!(doc["components"]["securitySchemes"]["bearerAuth"]["scheme"], "bearer");
    // What the code enforces, the document says: a 401 on every operation, a batch of 1 to 500,
    // run ids by their pattern and never null.
    for (path, method) in routes {
        assert_eq!(
            doc["paths"][path][method]["responses"]["401"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/ErrorBody",
            "{method} {path}"
        );
    }
    let forms = doc["components"]["schemas"]["SubmitBody"]["oneOf"].as_array().unwrap();
    let batch = forms.iter().find(|f| f["type"] == "array").expect("the array form");
    assert_eq!((batch["minItems"].as_u64(), batch["maxItems"].as_u64()), (Some(1), Some(500)));
    let anchored = format!("^{}$", taskexec_core::validate::ID_PATTERN);
    let run_param =
        doc["paths"]["/metrics"]["get"]["parameters"].as_array().unwrap().iter().find(|p| p["name"] == "runId");
    assert_eq!(run_param.unwrap()["schema"], json!({"type": "string", "pattern": anchored}));
    assert_eq!(
        doc["components"]["schemas"]["ControlRequest"]["properties"]["runId"],
        json!({"type": "string", "description": "Pause or resume this run only.", "pattern": anchored})
    );
}

/// A host's pause hook (AWS: switch the worker's event source mappings) runs after every global
/// pause (`true`) and resume (`false`), never for one run's; its failure is logged and the
/// request still succeeds, since the pause holds at every claim.
#[tokio::test]
async fn a_global_pause_and_resume_run_the_hosts_pause_hook() {
    let calls: Arc<std::sync::Mutex<Vec<bool>>> = Arc::default();
    let seen = calls.clone();
    let hook: taskexec_api::PauseHook = Arc::new(move |paused| {
        seen.lock().unwrap().push(paused);
        Box::pin(async move { if paused { Ok(()) } else { Err("the mappings could not be enabled".into()) } })
    });
    let api = common::api_with(|s| s.with_pause_hook(hook));
    api.call("POST", "/control/pause", Some(json!({"runId": "r1"}))).await;
    assert!(calls.lock().unwrap().is_empty(), "one run's pause leaves the mappings alone");
    let (status, body) = api.call("POST", "/control/pause", None).await;
    assert_eq!((status, &body["paused"]), (StatusCode::OK, &json!(true)), "{body}");
    let (status, body) = api.call("POST", "/control/resume", None).await;
    assert_eq!((status, &body["paused"]), (StatusCode::OK, &json!(false)), "a failing hook fails nothing: {body}");
    assert_eq!(*calls.lock().unwrap(), [true, false]);
}

/// Where a global summary would read the whole store (DynamoDB), `GET /metrics` asks for a run.
#[tokio::test]
async fn metrics_without_a_run_are_refused_where_the_host_says_so() {
    let api = common::api_with(|s| s.without_global_metrics());
    let (status, body) = api.call("GET", "/metrics", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["details"][0]["field"], "runId", "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("CloudWatch"), "{body}");
    let (status, _) = api.call("GET", "/metrics?runId=r1", None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = common::api().call("GET", "/metrics", None).await;
    assert_eq!(status, StatusCode::OK, "the embedded host summarises everything");
}

/// Every answer carries a request id: the client's own `x-request-id` when it is a valid id,
/// else a fresh one (an invalid one is replaced, never echoed), errors included.
#[tokio::test]
async fn every_answer_carries_a_request_id_the_clients_own_when_valid() {
    use tower::ServiceExt;
    let api = api();
    let id_of = |sent: Option<&str>, uri: &str| {
        let mut request = axum::http::Request::builder().uri(uri);
        if let Some(id) = sent {
            request = request.header(taskexec_api::REQUEST_ID, id);
        }
        let response = api.app.clone().oneshot(request.body(axum::body::Body::empty()).unwrap());
        async move {
            let response = response.await.unwrap();
            let id = response.headers().get(taskexec_api::REQUEST_ID).map(|v| v.to_str().unwrap().to_owned());
            (response.status(), id.expect("x-request-id on every answer"))
        }
    };
    assert_eq!(id_of(Some("client-42"), "/control").await, (StatusCode::OK, "client-42".to_owned()));
    let (status, fresh) = id_of(None, "/nowhere").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(fresh.len() == 32 && taskexec_core::validate::is_valid_id(&fresh), "{fresh}");
    let (_, replaced) = id_of(Some("bad id with spaces"), "/control").await;
    assert!(replaced != "bad id with spaces" && replaced.len() == 32, "{replaced}");
    assert_ne!(id_of(None, "/control").await.1, fresh, "fresh ids differ");
}
