//! Tracing for the Lambda functions: JSON log lines, and X-Ray subsegments for the spans that
//! explain an invocation's time — every provider call (the engine's `provider_call` span) and
//! every AWS SDK call (the SDK's operation spans, `rpc.system = "aws-api"`).
//!
//! With `Tracing: Active` Lambda records a segment per sampled invocation, runs the X-Ray daemon
//! (`AWS_XRAY_DAEMON_ADDRESS`) and passes the invocation's trace header, which `lambda_runtime`
//! puts in `_X_AMZN_TRACE_ID` before each invocation. [`XRayLayer`] sends each finished span of
//! interest to the daemon as a subsegment of that invocation (one UDP datagram, the daemon's
//! protocol: a `{"format":"json","version":1}` header line, then the document). Unsampled
//! invocations and processes without a daemon send nothing.
//!
//! Written by hand: the maintained OpenTelemetry crates reach X-Ray only through a collector
//! (the ADOT layer), which these functions do not ship; the daemon's UDP protocol is a few lines.

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Subscriber, span};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

/// The engine's span around one provider call (`taskexec_core`'s attempt).
pub const PROVIDER_SPAN: &str = "provider_call";

/// The functions' tracing: JSON lines filtered by `RUST_LOG` (the template sets it), and the X-Ray
/// layer when Lambda runs an X-Ray daemon for the function (`AWS_XRAY_DAEMON_ADDRESS`). The AWS
/// SDK's operation spans are created at debug level, so they are enabled for the X-Ray layer
/// only, never printed.
pub fn init_tracing() {
    let logs = tracing_subscriber::fmt::layer().json().with_filter(tracing_subscriber::EnvFilter::from_default_env());
    let xray = XRayLayer::from_env().map(|layer| {
        let targets = tracing_subscriber::filter::Targets::new()
            .with_target("taskexec_core", tracing::Level::INFO)
            .with_target("aws_sdk_dynamodb", tracing::Level::DEBUG)
            .with_target("aws_sdk_sqs", tracing::Level::DEBUG)
            .with_target("aws_sdk_lambda", tracing::Level::DEBUG)
            .with_target("aws_sdk_bedrockruntime", tracing::Level::DEBUG);
        layer.with_filter(targets)
    });
    tracing_subscriber::registry().with(logs).with(xray).init();
}

/// Sends finished spans of interest to the X-Ray daemon as subsegments of the current invocation.
#[derive(Debug)]
pub struct XRayLayer {
    socket: UdpSocket,
    daemon: SocketAddr,
    /// Where the current invocation's trace comes from ([`TraceHeader::current`]; tests inject).
    trace: fn() -> Option<TraceHeader>,
}

impl XRayLayer {
    /// A layer sending to the daemon at `daemon`.
    pub fn new(daemon: SocketAddr) -> std::io::Result<Self> {
        // An outbound-only socket on an ephemeral port, of the daemon's address family.
        let local: SocketAddr = if daemon.ip().is_loopback() {
            (daemon.ip(), 0).into()
        } else if daemon.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            ([0u16; 8], 0).into()
        };
        let socket = UdpSocket::bind(local)?;
        socket.set_nonblocking(true)?;
        Ok(Self { socket, daemon, trace: TraceHeader::current })
    }

    /// Read the current invocation's trace with `trace` instead of the environment.
    #[must_use]
    pub fn with_trace_source(mut self, trace: fn() -> Option<TraceHeader>) -> Self {
        self.trace = trace;
        self
    }

    /// The layer for the daemon Lambda names in `AWS_XRAY_DAEMON_ADDRESS` (`host:port`, or
    /// `udp:host:port tcp:host:port`); `None` without one.
    #[must_use]
    pub fn from_env() -> Option<Self> {
        let value = std::env::var("AWS_XRAY_DAEMON_ADDRESS").ok()?;
        let address = value
            .split_whitespace()
            .find_map(|part| part.strip_prefix("udp:"))
            .unwrap_or_else(|| value.split_whitespace().next().unwrap_or(""));
        let daemon: SocketAddr = address.parse().ok()?;
        Self::new(daemon).ok()
    }

    fn send(&self, document: &serde_json::Value) {
        let datagram = format!("{{\"format\":\"json\",\"version\":1}}\n{document}");
        // Best effort, like the X-Ray SDKs: a lost subsegment must never slow or fail a task.
        let _ = self.socket.send_to(datagram.as_bytes(), self.daemon);
    }
}

/// The invocation's trace, from its header (`Root=…;Parent=…;Sampled=1`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceHeader {
    /// The trace id (`1-5759e988-bd862e3fe1be46a994272793`).
    pub root: String,
    /// The id of the function's segment, the parent of the subsegments sent.
    pub parent: String,
    /// Whether the trace is sampled.
    pub sampled: bool,
}

impl TraceHeader {
    /// Parse a header; `None` without a root and a parent.
    #[must_use]
    pub fn parse(header: &str) -> Option<Self> {
        let mut fields = BTreeMap::new();
        for part in header.split(';') {
            if let Some((key, value)) = part.trim().split_once('=') {
                fields.insert(key, value);
            }
        }
        Some(Self {
            root: (*fields.get("Root")?).to_owned(),
            parent: (*fields.get("Parent")?).to_owned(),
            sampled: fields.get("Sampled").is_some_and(|s| *s == "1"),
        })
    }

    /// The current invocation's (`_X_AMZN_TRACE_ID`).
    #[must_use]
    pub fn current() -> Option<Self> {
        Self::parse(&std::env::var("_X_AMZN_TRACE_ID").ok()?)
    }
}

/// What is kept of an open span of interest.
#[derive(Debug)]
struct Open {
    id: String,
    start: f64,
    fields: BTreeMap<String, String>,
}

#[derive(Default)]
struct Fields(BTreeMap<String, String>);

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}").trim_matches('"').to_owned());
    }
}

fn seconds_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// A subsegment id: 16 hex digits.
fn subsegment_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

impl<S> Layer<S> for XRayLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        let ours = attrs.metadata().name() == PROVIDER_SPAN;
        let sdk = fields.0.get("rpc.system").is_some_and(|s| s == "aws-api");
        if !(ours || sdk) {
            return;
        }
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(Open { id: subsegment_id(), start: seconds_now(), fields: fields.0 });
        }
    }

    fn on_record(&self, id: &Id, values: &span::Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut extensions = span.extensions_mut();
        if let Some(open) = extensions.get_mut::<Open>() {
            let mut fields = Fields::default();
            values.record(&mut fields);
            open.fields.extend(fields.0);
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else { return };
        let Some(open) = span.extensions_mut().remove::<Open>() else { return };
        let Some(trace) = (self.trace)().filter(|t| t.sampled) else { return };
        self.send(&subsegment(span.name(), open, &trace, seconds_now()));
    }
}

/// The subsegment document of a finished span.
fn subsegment(span_name: &str, open: Open, trace: &TraceHeader, end: f64) -> serde_json::Value {
    let mut doc = serde_json::json!({
        "id": open.id,
        "trace_id": trace.root,
        "parent_id": trace.parent,
        "type": "subsegment",
        "start_time": open.start,
        "end_time": end,
    });
    if span_name == PROVIDER_SPAN {
        let deployment = open.fields.get("deployment").cloned().unwrap_or_else(|| "provider".into());
        doc["name"] = deployment.into();
        doc["namespace"] = "remote".into();
        if open.fields.get("outcome").is_some_and(|o| o != "ok") {
            doc["fault"] = true.into();
        }
        // Annotations are indexed (searchable in X-Ray): keys of letters, digits and underscores.
        let annotations: serde_json::Map<String, serde_json::Value> =
            open.fields.into_iter().map(|(k, v)| (k.replace(['.', '-'], "_"), v.into())).collect();
        doc["annotations"] = annotations.into();
    } else {
        let service = open.fields.get("rpc.service").cloned().unwrap_or_else(|| span_name.to_owned());
        doc["name"] = service.into();
        doc["namespace"] = "aws".into();
        doc["aws"] = serde_json::json!({ "operation": open.fields.get("rpc.method") });
    }
    doc
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn trace_headers_parse_and_say_whether_they_are_sampled() {
        let header = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1;Lineage=a:0";
        let t = TraceHeader::parse(header).unwrap();
        assert_eq!(
            (t.root.as_str(), t.parent.as_str(), t.sampled),
            ("1-5759e988-bd862e3fe1be46a994272793", "53995c3f42cd8ad8", true)
        );
        assert!(!TraceHeader::parse("Root=1-a-b;Parent=c;Sampled=0").unwrap().sampled);
        assert_eq!(TraceHeader::parse("Root=1-a-b"), None, "no parent: nothing to attach to");
    }

    const HEADER: &str = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1";

    fn sampled() -> Option<TraceHeader> {
        TraceHeader::parse(HEADER)
    }

    fn unsampled() -> Option<TraceHeader> {
        TraceHeader::parse("Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=0")
    }

    /// The documents a "daemon" on 127.0.0.1 receives while `spans` runs under the layer.
    fn received(trace: fn() -> Option<TraceHeader>, spans: impl FnOnce()) -> Vec<serde_json::Value> {
        let daemon = UdpSocket::bind("127.0.0.1:0").unwrap();
        daemon.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        let layer = XRayLayer::new(daemon.local_addr().unwrap()).unwrap().with_trace_source(trace);
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), spans);
        let mut docs = Vec::new();
        let mut buf = [0u8; 8192];
        while let Ok(n) = daemon.recv(&mut buf) {
            let text = std::str::from_utf8(&buf[..n]).unwrap();
            let (head, body) = text.split_once('\n').unwrap();
            assert_eq!(head, r#"{"format":"json","version":1}"#);
            docs.push(serde_json::from_str(body).unwrap());
        }
        docs
    }

    /// A provider call and an AWS SDK call of a sampled invocation each reach the daemon as a
    /// subsegment of the function's segment; other spans do not.
    #[test]
    fn provider_and_aws_spans_become_subsegments_of_the_invocation() {
        let docs = received(sampled, || {
            let call = tracing::info_span!(
                PROVIDER_SPAN,
                deployment = "openai-east",
                model = "gpt-4o-mini",
                task_id = "t-1",
                outcome = tracing::field::Empty
            );
            call.in_scope(|| std::thread::sleep(Duration::from_millis(5)));
            call.record("outcome", "transient");
            drop(call);
            let sdk = tracing::info_span!(
                "DynamoDB.GetItem",
                "rpc.service" = "DynamoDB",
                "rpc.method" = "GetItem",
                "rpc.system" = "aws-api"
            );
            drop(sdk);
            drop(tracing::info_span!("batch", size = 10));
        });
        assert_eq!(docs.len(), 2, "{docs:?}");
        let provider = &docs[0];
        assert_eq!((provider["name"].as_str(), provider["namespace"].as_str()), (Some("openai-east"), Some("remote")));
        assert_eq!(provider["trace_id"], "1-5759e988-bd862e3fe1be46a994272793");
        assert_eq!(provider["parent_id"], "53995c3f42cd8ad8");
        assert_eq!(provider["type"], "subsegment");
        assert_eq!(provider["id"].as_str().unwrap().len(), 16);
        assert_eq!(provider["annotations"]["task_id"], "t-1");
        assert_eq!(provider["fault"], true, "a failed call is a fault");
        assert!(provider["end_time"].as_f64().unwrap() >= provider["start_time"].as_f64().unwrap() + 0.004);
        let aws = &docs[1];
        assert_eq!((aws["name"].as_str(), aws["namespace"].as_str()), (Some("DynamoDB"), Some("aws")));
        assert_eq!(aws["aws"]["operation"], "GetItem");
    }

    #[test]
    fn an_unsampled_invocation_sends_nothing() {
        let docs = received(unsampled, || drop(tracing::info_span!(PROVIDER_SPAN, deployment = "d")));
        assert!(docs.is_empty(), "{docs:?}");
    }
}
