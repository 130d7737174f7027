//! Timing fidelity of the OpenAI-compatible adapter against [`TimedServer`], whose stage delays
//! are known: `latency` and `ttft` must cover them. Lower bounds only (the upper bound on a
//! second call is the sum of two calls' delays, far above any overhead); how close the
//! client's figures are to the server's is measured by the `fidelity` benchmark, not here.

use std::time::Duration;

use taskexec_core::provider::{Provider, ProviderResponse};
use taskexec_mockserver::timed::{Delays, TimedConfig, TimedServer};

const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

async fn server(head: u64, first_token: u64, rest: u64) -> TimedServer {
    let delays = Delays { head: ms(head), first_token: ms(first_token), rest: ms(rest) };
    TimedServer::start(TimedConfig { delays, spread: None }).await.unwrap()
}

async fn call(server: &TimedServer, task_id: &str, stream: bool) -> ProviderResponse {
    let deployments = server.deployments().unwrap();
    deployments.call(TimedServer::request(task_id, stream).unwrap()).await.unwrap()
}

#[tokio::test]
async fn streamed_latency_and_ttft_cover_every_stage() {
    let server = server(30, 40, 50).await;
    let answer = call(&server, "s1", true).await;
    assert_eq!(answer.text, "Hello world");
    let ttft = answer.ttft.expect("a streamed answer has a ttft");
    assert!(answer.latency >= ms(30 + 40 + 50), "latency {:?}", answer.latency);
    assert!(ttft >= ms(30 + 40), "ttft {ttft:?}");
    assert!(ttft <= answer.latency, "ttft {ttft:?} after latency {:?}", answer.latency);
    // The server's interval lies inside the client's: it starts later and ends sooner.
    let seen = server.timing("s1").unwrap();
    assert!(answer.latency >= seen.last_byte, "client {:?} < server {:?}", answer.latency, seen.last_byte);
    assert!(ttft >= seen.first_token.unwrap());
}

#[tokio::test]
async fn non_streamed_latency_covers_the_head_and_has_no_ttft() {
    let server = server(50, 0, 0).await;
    let answer = call(&server, "n1", false).await;
    assert_eq!(answer.text, "Hello world");
    assert!(answer.latency >= ms(50), "latency {:?}", answer.latency);
    assert_eq!(answer.ttft, None);
    let seen = server.timing("n1").unwrap();
    assert_eq!(seen.first_token, None);
    assert!(answer.latency >= seen.last_byte);
}

#[tokio::test]
async fn consecutive_calls_each_time_only_themselves() {
    let server = server(50, 50, 50).await;
    let deployments = server.deployments().unwrap();
    let each = ms(150);
    let mut latencies = Vec::new();
    for id in ["c1", "c2"] {
        let answer = deployments.call(TimedServer::request(id, true).unwrap()).await.unwrap();
        assert!(answer.latency >= each, "{id}: latency {:?}", answer.latency);
        latencies.push(answer.latency);
    }
    // The second call reuses the pooled connection; its clock starts with its own request.
    assert!(latencies[1] < each + each, "second latency {:?} includes the first call", latencies[1]);
}

#[test]
fn spread_lengthens_each_stage_by_a_stable_amount_within_bounds() {
    let config = TimedConfig { delays: Delays { head: ms(1), first_token: ms(2), rest: ms(3) }, spread: Some(ms(10)) };
    let a = config.delays_for("task-a");
    assert_eq!(a, config.delays_for("task-a"));
    assert!((ms(1)..=ms(11)).contains(&a.head) && (ms(3)..=ms(13)).contains(&a.rest), "{a:?}");
    let distinct: std::collections::HashSet<_> = (0..50).map(|i| config.delays_for(&format!("t{i}")).head).collect();
    assert!(distinct.len() > 40, "the spread varies by task");
}
