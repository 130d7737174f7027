//! Every API Gateway event in `events/` decoded as Lambda delivers it and run through the API
//! router (over in-memory ports), so the `sam local invoke -e` inputs can never rot.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use http_body_util::BodyExt;
use taskexec_api::{ApiSettings, ApiState, SystemSampler, router};
use taskexec_core::memory::{MemoryQueue, MemoryStore};
use taskexec_core::time::SystemClock;
use tower::ServiceExt;

async fn call(app: &axum::Router, event: &str) -> (u16, serde_json::Value) {
    let request = lambda_http::request::from_str(event).expect("the event decodes as an API Gateway request");
    let (parts, body) = request.into_parts();
    let request = axum::http::Request::from_parts(parts, Body::from(body.to_vec()));
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status().as_u16();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
}

#[tokio::test]
async fn every_api_event_is_answered_by_the_router() {
    let store = Arc::new(MemoryStore::default());
    let queue = Arc::new(MemoryQueue::new(Duration::from_secs(10), SystemClock));
    let settings = ApiSettings::new(["sim"], Arc::new(SystemSampler::new().unwrap()))
        .with_worker_timeout(Duration::from_secs(900));
    let app = router(ApiState::new(store, queue.clone(), settings));
    let (status, body) = call(&app, include_str!("../../../events/api-post-task.json")).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = call(&app, include_str!("../../../events/api-post-tasks-batch.json")).await;
    assert!(status == 201 || status == 200, "{status} {body}");
    assert!(taskexec_core::ports::WorkQueue::len(&*queue) >= 2, "submissions were sent to the queue");
    for (file, expected) in [
        (include_str!("../../../events/api-get-task.json"), [200, 404]),
        (include_str!("../../../events/api-get-run.json"), [200, 404]),
        (include_str!("../../../events/api-metrics.json"), [200, 200]),
        (include_str!("../../../events/api-resources.json"), [200, 200]),
        (include_str!("../../../events/api-openapi.json"), [200, 200]),
        (include_str!("../../../events/api-pause.json"), [200, 200]),
        (include_str!("../../../events/api-resume.json"), [200, 200]),
        (include_str!("../../../events/api-get-control.json"), [200, 200]),
        (include_str!("../../../events/api-set-limits.json"), [200, 200]),
        (include_str!("../../../events/api-reset-limits.json"), [200, 200]),
        (include_str!("../../../events/api-delete-task.json"), [200, 409]),
        (include_str!("../../../events/api-redrive.json"), [200, 409]),
    ] {
        let (status, body) = call(&app, file).await;
        assert!(expected.contains(&status), "{status} {body} for {}", &file[..file.len().min(120)]);
        assert!(!body.is_null(), "every answer is JSON");
    }
}
