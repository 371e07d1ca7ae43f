//! What an operator sees (DESIGN.md §6): one trace per message across both
//! services, metrics that count what happened, log lines that tell the
//! message flow without bodies or secrets, and a dead trace collector that
//! costs nothing on the message path.
//!
//! Each test installs the process-wide subscriber, so each runs in a
//! process of its own (nextest's model).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking

use natter_runtime::config::{LogFormat, SamplerKind, TelemetryArgs};
use natter_runtime::telemetry;
use natter_runtime::trace::Sampling;
use natter_testkit::scrape::Scrape;
use natter_testkit::{TestApp, TestUser, WsClient};
use opentelemetry::trace::{SpanId, TraceId};
use opentelemetry_sdk::trace::{InMemorySpanExporter, Sampler, SdkTracerProvider, SpanData};
use serde_json::{Value, json};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

/// The one span named `name` in `spans`.
fn only<'a>(spans: &'a [SpanData], name: &str) -> &'a SpanData {
    let found: Vec<&SpanData> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(found.len(), 1, "spans named {name}: {found:#?}");
    found[0]
}

/// A fresh natter with alice and bob signed up and connected: the app
/// (keep it alive), bob, alice's socket and bob's.
async fn two_connected_users() -> (TestApp, TestUser, WsClient, WsClient) {
    let app = TestApp::spawn().await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let a = app.connect(&alice, "a1").await;
    let b = app.connect(&bob, "b1").await;
    (app, bob, a, b)
}

fn assert_child(child: &SpanData, parent: &SpanData) {
    assert_eq!(
        child.parent_span_id,
        parent.span_context.span_id(),
        "{} should be a child of {}",
        child.name,
        parent.name
    );
    assert_eq!(
        child.span_context.trace_id(),
        parent.span_context.trace_id()
    );
}

/// Installs the subscriber with traces picked by `sampling` kept in memory
/// (the provider keeps every span it is given: natter decides which traces
/// get spans, once, before building any); the exporter and the guard.
fn spans_in_memory(sampling: Sampling) -> (InMemorySpanExporter, telemetry::Telemetry) {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_sampler(Sampler::AlwaysOn)
        .with_simple_exporter(exporter.clone())
        .build();
    let traces = telemetry::Traces::new(provider, sampling);
    let telemetry =
        telemetry::install(LogFormat::Json, "warn", Some(traces), false, std::io::sink).unwrap();
    (exporter, telemetry)
}

#[tokio::test]
async fn one_message_is_one_trace_across_gateway_persister_and_delivery() {
    let (exporter, _telemetry) = spans_in_memory(Sampling::always());

    let (_app, bob, mut a, mut b) = two_connected_users().await;
    let sent = a.send_direct(bob.id, "trace me", "t1").await;
    let message_id = sent["data"]["message"]["id"].as_str().unwrap().to_owned();
    b.receive_messages(1).await;

    // Spans end asynchronously (the persister's when its ack is sent):
    // wait for the last ones of the chain.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (trace, spans) = loop {
        let spans = exporter.get_finished_spans().unwrap();
        let root = spans.iter().find(|s| {
            s.name == "ws.send_message"
                && attribute(s, "message_id").as_deref() == Some(message_id.as_str())
        });
        if let Some(root) = root {
            let trace = root.span_context.trace_id();
            let in_trace: Vec<SpanData> = spans
                .iter()
                .filter(|s| s.span_context.trace_id() == trace)
                .cloned()
                .collect();
            let delivered = in_trace.iter().filter(|s| s.name == "ws.write").count();
            let persisted = in_trace.iter().any(|s| s.name == "persister.persist");
            // The message reaches bob's socket and alice's own (her other devices' view).
            if delivered >= 2 && persisted {
                break (trace, in_trace);
            }
        }
        assert!(
            Instant::now() < deadline,
            "trace incomplete: {:#?}",
            spans.iter().map(|s| &s.name).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    let root = only(&spans, "ws.send_message");
    assert_eq!(
        root.parent_span_id,
        SpanId::INVALID,
        "a send starts its own trace"
    );
    let publish = only(&spans, "jetstream.publish");
    assert_child(publish, root);
    // Across NATS: the persister's span continues the publish span.
    let persist = only(&spans, "persister.persist");
    assert_child(persist, publish);
    assert!(persist.parent_span_is_remote);
    // Across NATS again: each delivery continues the persister's span.
    let deliveries: Vec<&SpanData> = spans
        .iter()
        .filter(|s| s.name == "gateway.deliver")
        .collect();
    assert_eq!(deliveries.len(), 2, "one delivery per connected device");
    for delivery in &deliveries {
        assert_child(delivery, persist);
        assert!(delivery.parent_span_is_remote);
        let write = spans
            .iter()
            .find(|s| s.name == "ws.write" && s.parent_span_id == delivery.span_context.span_id())
            .expect("a socket write under each delivery");
        assert_child(write, delivery);
    }

    // The batch is a trace of its own, linked to the message's span, with
    // the database transaction and the fan-out under it.
    let all = exporter.get_finished_spans().unwrap();
    let batch = all
        .iter()
        .find(|s| {
            s.name == "persister.batch"
                && s.links
                    .iter()
                    .any(|l| l.span_context.span_id() == persist.span_context.span_id())
        })
        .expect("a batch span linked to the message's persister span");
    assert_ne!(batch.span_context.trace_id(), trace);
    assert_ne!(batch.span_context.trace_id(), TraceId::INVALID);
    for name in ["postgres.commit", "fanout.publish"] {
        let step = all
            .iter()
            .find(|s| s.name == name && s.parent_span_id == batch.span_context.span_id())
            .unwrap_or_else(|| panic!("{name} under the batch span"));
        assert_child(step, batch);
    }
    a.close().await;
    b.close().await;
}

#[tokio::test]
async fn only_sampled_traces_build_spans_and_each_sampled_one_is_whole() {
    let (exporter, _telemetry) =
        spans_in_memory(Sampling::of(SamplerKind::ParentBasedTraceIdRatio, 0.5));

    let (_app, bob, mut a, mut b) = two_connected_users().await;
    let count = 40;
    for i in 0..count {
        let sent = a
            .send_direct(bob.id, &format!("m{i}"), &format!("c{i}"))
            .await;
        assert_eq!(sent["event"], "message_sent", "{sent}");
    }
    b.receive_messages(count).await;

    // Each sampled send has its whole chain in both services; an unsampled
    // one has no span anywhere. Spans end asynchronously: wait for them.
    let named = |spans: &[SpanData], name: &str| spans.iter().filter(|s| s.name == name).count();
    let deadline = Instant::now() + Duration::from_secs(10);
    let (sampled, spans) = loop {
        let spans = exporter.get_finished_spans().unwrap();
        let sampled = named(&spans, "ws.send_message");
        let whole = named(&spans, "jetstream.publish") == sampled
            && named(&spans, "persister.persist") == sampled
            && named(&spans, "gateway.deliver") == 2 * sampled
            && named(&spans, "ws.write") == 2 * sampled;
        if whole {
            break (sampled, spans);
        }
        assert!(
            Instant::now() < deadline,
            "{sampled} sampled sends, whose spans are: {:#?}",
            spans.iter().map(|s| &s.name).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Half of 40 by trace id: all or none is a 1 in 10^12 chance.
    assert!(
        (1..count).contains(&sampled),
        "{sampled} of {count} sends sampled at a ratio of 0.5"
    );
    // No span is cut off from its trace: every parent was sampled too.
    let ids: std::collections::HashSet<SpanId> =
        spans.iter().map(|s| s.span_context.span_id()).collect();
    for span in &spans {
        assert!(
            span.parent_span_id == SpanId::INVALID || ids.contains(&span.parent_span_id),
            "{} lost its parent",
            span.name
        );
    }
    a.close().await;
    b.close().await;
}

async fn scrape(app: &TestApp, port: u16) -> Scrape {
    let response = app
        .http
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    Scrape::parse(&response.text().await.unwrap())
}

/// A series, the labels it must carry, and how much it must have grown.
type Growth<'a> = (&'a str, &'a [(&'a str, &'a str)], f64);

/// Checks every expected growth, reporting all that are wrong at once.
fn expect_growth(before: &Scrape, after: &Scrape, expected: &[Growth<'_>]) {
    let wrong: Vec<String> = expected
        .iter()
        .filter_map(|(name, labels, by)| {
            let got = grew(before, after, name, labels);
            (got != *by).then(|| format!("{name}{labels:?} grew by {got}, expected {by}"))
        })
        .collect();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// How much each watched series grew between two scrapes.
fn grew(before: &Scrape, after: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    after.value(name, labels) - before.value(name, labels)
}

#[tokio::test]
async fn metrics_count_connections_messages_errors_latency_and_replays() {
    let app = TestApp::spawn().await;
    let gateway_port = app.gateway_port;
    let persister_port = app.persister_port;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let g0 = scrape(&app, gateway_port).await;
    let p0 = scrape(&app, persister_port).await;

    let mut a = app.connect(&alice, "a1").await;
    let mut b = app.connect(&bob, "b1").await;
    for i in 0..3 {
        let reply = a
            .send_direct(bob.id, &format!("m{i}"), &format!("r{i}"))
            .await;
        assert_eq!(reply["event"], "message_sent", "{reply}");
    }
    let got = b.receive_messages(3).await;
    a.receive_messages(3).await;
    a.send_text("not json".into()).await;
    assert_eq!(a.next_event("error").await["data"]["code"], "bad_request");
    let (status, _) = app
        .get(
            &format!("/api/groups/{}", uuid::Uuid::now_v7()),
            Some(&alice.token),
        )
        .await;
    assert_eq!(status, 404);

    // Bob misses one message and gets it replayed when he comes back.
    b.ack(got[2]["cursor"].as_u64().unwrap()).await;
    b.close().await;
    let reply = a.send_direct(bob.id, "while away", "r-away").await;
    assert_eq!(reply["event"], "message_sent");
    a.receive_messages(1).await;
    let mut b = app.connect(&bob, "b1").await;
    b.receive_messages(1).await;

    let settled = app
        .eventually(Duration::from_secs(10), || async {
            let p = scrape(&app, persister_port).await;
            grew(
                &p0,
                &p,
                "natter_persister_records_total",
                &[("kind", "direct")],
            ) >= 4.0
        })
        .await;
    assert!(settled, "the persister counted its records");
    let g1 = scrape(&app, gateway_port).await;
    let p1 = scrape(&app, persister_port).await;

    // Gateway: (series, labels, how much it must have grown).
    expect_growth(
        &g0,
        &g1,
        &[
            ("natter_ws_connections_opened_total", &[], 3.0),
            (
                "natter_ws_connections_closed_total",
                &[("reason", "client")],
                1.0,
            ),
            ("natter_ws_connections_open", &[], 2.0),
            ("natter_messages_accepted_total", &[("kind", "direct")], 4.0),
            (
                "natter_ws_frames_received_total",
                &[("event", "send_message")],
                4.0,
            ),
            (
                "natter_ws_frames_received_total",
                &[("event", "invalid")],
                1.0,
            ),
            (
                "natter_ws_frames_sent_total",
                &[("event", "message_sent")],
                4.0,
            ),
            ("natter_ws_frames_sent_total", &[("event", "delivery")], 8.0),
            ("natter_errors_total", &[("code", "bad_request")], 1.0),
            ("natter_errors_total", &[("code", "not_found")], 1.0),
            ("natter_accept_latency_seconds_count", &[], 4.0),
            // Live: bob's 3 and alice's 4 (her own sends, for her other devices).
            (
                "natter_delivery_latency_seconds_count",
                &[("path", "live")],
                7.0,
            ),
            (
                "natter_delivery_latency_seconds_count",
                &[("path", "replay")],
                1.0,
            ),
            // Every delivery is under the biggest bucket: it is cumulative.
            (
                "natter_delivery_latency_seconds_bucket",
                &[("path", "live"), ("le", "+Inf")],
                7.0,
            ),
            ("natter_replayed_events_total", &[], 1.0),
            ("natter_replay_duration_seconds_count", &[], 1.0),
        ],
    );
    assert_eq!(g1.value("natter_active_users", &[]), 2.0);
    assert!(grew(&g0, &g1, "natter_http_requests_total", &[("status", "404")]) >= 1.0);

    // Persister.
    expect_growth(
        &p0,
        &p1,
        &[
            ("natter_persister_records_total", &[("kind", "direct")], 4.0),
            ("natter_persister_batch_size_sum", &[], 4.0),
            ("natter_persister_projection_lag_seconds_count", &[], 4.0),
            ("natter_persister_fanout_published_total", &[], 8.0),
            ("natter_persister_dead_letters_total", &[], 0.0),
        ],
    );
    assert!(grew(&p0, &p1, "natter_persister_batch_size_count", &[]) >= 1.0);
    assert_eq!(p1.value("natter_persister_leader", &[]), 1.0);

    // The dashboard and the alerts query only what the services export.
    let exported: std::collections::BTreeSet<String> =
        g1.families().union(&p1.families()).cloned().collect();
    let mut queried = natter_testkit::deploy::dashboard_metric_names().unwrap();
    queried.extend(natter_testkit::deploy::alert_metric_names().unwrap());
    let missing: Vec<&String> = queried.difference(&exported).collect();
    assert!(missing.is_empty(), "queried but not exported: {missing:?}");
    a.close().await;
    b.close().await;
}

/// A `MakeWriter` that keeps every log line in memory.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// The JSON log lines whose message contains `needle`.
fn lines_with(logs: &[Value], needle: &str) -> Vec<Value> {
    logs.iter()
        .filter(|l| {
            l["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(needle))
        })
        .cloned()
        .collect()
}

#[tokio::test]
async fn logs_tell_the_message_flow_without_bodies_passwords_or_tokens() {
    // What production runs without a collector: trace ids are still made,
    // propagated and logged, nothing is exported.
    let traces = telemetry::traces("natter-test", &telemetry_args(None)).unwrap();
    let captured = Captured::default();
    let _telemetry = telemetry::install(
        LogFormat::Json,
        "debug,natter_gateway=trace,natter_persister=trace,natter_runtime=trace",
        Some(traces),
        false,
        captured.clone(),
    )
    .unwrap();

    let app = TestApp::spawn().await;
    let password = "correct-horse-battery-staple-42";
    let (status, body) = app
        .post(
            "/api/auth/signup",
            None,
            json!({"username": "carol", "password": password}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let carol = TestUser {
        id: body["user"]["id"].as_str().unwrap().parse().unwrap(),
        username: "carol".into(),
        display_name: "carol".into(),
        token: body["token"].as_str().unwrap().to_owned(),
    };
    let (status, login) = app
        .post(
            "/api/auth/login",
            None,
            json!({"username": "carol", "password": password}),
        )
        .await;
    assert_eq!(status, 200, "{login}");
    let login_token = login["token"].as_str().unwrap().to_owned();
    let (status, _) = app
        .post(
            "/api/auth/login",
            None,
            json!({"username": "carol", "password": "wrong-password-for-carol"}),
        )
        .await;
    assert_eq!(status, 401);
    let dave = app.signup("dave").await;

    let body_text = "the secret plans are in the blue folder";
    let mut c = app.connect(&carol, "c1").await;
    let sent = c.send_direct(dave.id, body_text, "m1").await;
    assert_eq!(sent["event"], "message_sent", "{sent}");
    let message_id = sent["data"]["message"]["id"].as_str().unwrap().to_owned();
    // Dave is offline, then comes online and gets it.
    let mut d = app.connect(&dave, "d1").await;
    d.receive_messages(1).await;
    let (status, _) = app
        .post(
            "/api/messages",
            Some(&login_token),
            json!({"receiverId": dave.id, "content": body_text}),
        )
        .await;
    assert_eq!(status, 202);
    d.receive_messages(1).await;
    c.close().await;
    d.close().await;
    let logged_out = app
        .post("/api/auth/logout", Some(&login_token), json!({}))
        .await;
    assert_eq!(logged_out.0, 204);

    let finished = app
        .eventually(Duration::from_secs(5), || async {
            captured.text().contains("[DISCONNECT]")
                && captured.text().matches("[STORED]").count() >= 2
        })
        .await;
    let text = captured.text();
    assert!(finished, "the flow was logged: {text}");

    for (what, secret) in [
        ("a password", password),
        ("the wrong password", "wrong-password-for-carol"),
        ("a token", carol.token.as_str()),
        ("a login token", login_token.as_str()),
        ("the JWT secret", natter_testkit::app::TEST_JWT_SECRET),
        ("a message body", body_text),
    ] {
        assert!(!text.contains(secret), "the logs hold {what}");
    }
    // Token fragments count too (a JWT's signature is its last part).
    let signature = carol.token.rsplit('.').next().unwrap();
    assert!(!text.contains(signature), "the logs hold a token signature");

    let logs: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let accepted = lines_with(&logs, "[DIRECT MESSAGE]");
    let first = accepted
        .iter()
        .find(|l| l["fields"]["message_id"] == message_id.as_str())
        .expect("the accepted message is logged");
    assert_eq!(first["fields"]["sender"], carol.id.to_string());
    assert_eq!(first["fields"]["receiver"], dave.id.to_string());
    assert_eq!(first["fields"]["receiver_online"], false);
    let trace_id = first["trace_id"]
        .as_str()
        .expect("a trace id on the line")
        .to_owned();
    assert_eq!(trace_id.len(), 32);
    assert!(!lines_with(&logs, "receiver is offline").is_empty());
    // The same trace id follows the message through both services.
    for step in ["[STORED]", "delivered to the socket", "confirmation sent"] {
        let same_trace = lines_with(&logs, step)
            .into_iter()
            .any(|l| l["trace_id"] == trace_id.as_str());
        assert!(same_trace, "{step} is logged in the message's trace");
    }
    assert!(!lines_with(&logs, "[CONNECTION]").is_empty());
    assert!(!lines_with(&logs, "[DISCONNECT]").is_empty());
}

fn telemetry_args(endpoint: Option<String>) -> TelemetryArgs {
    TelemetryArgs {
        log_format: LogFormat::Json,
        otel_exporter_otlp_endpoint: endpoint,
        otel_traces_sampler: None,
        otel_traces_sampler_arg: 1.0,
        otel_sdk_disabled: false,
    }
}

#[tokio::test]
async fn a_dead_trace_collector_does_not_slow_or_stop_messages() {
    // Nothing listens on this port: every export fails.
    let port = natter_localinfra::free_port();
    let mut args = telemetry_args(Some(format!("http://127.0.0.1:{port}")));
    args.otel_traces_sampler = Some(SamplerKind::AlwaysOn);
    let traces = telemetry::traces("natter-test", &args).unwrap();
    let _telemetry =
        telemetry::install(LogFormat::Json, "warn", Some(traces), false, std::io::sink).unwrap();

    let (_app, bob, mut a, mut b) = two_connected_users().await;
    let count = 300;
    for i in 0..count {
        a.send(
            "send_direct_message",
            json!({"receiverId": bob.id, "content": format!("m{i}")}),
        )
        .await;
    }
    let received = b.receive_messages(count).await;
    assert_eq!(received.len(), count);
    let contents = natter_testkit::ws::contents(&received);
    assert_eq!(contents, natter_testkit::ws::numbered("m", count));
    a.close().await;
    b.close().await;
}

#[tokio::test]
async fn sockets_over_the_per_user_cap_are_logged_once_per_interval() {
    let captured = Captured::default();
    let _telemetry =
        telemetry::install(LogFormat::Json, "warn", None, false, captured.clone()).unwrap();
    let app = TestApp::spawn_with(natter_testkit::TestOptions {
        gateway_args: ["--max-connections-per-user", "1"]
            .map(String::from)
            .to_vec(),
        ..natter_testkit::TestOptions::default()
    })
    .await;
    let alice = app.signup("alice").await;
    let _held = app.connect(&alice, "held").await;
    // Twenty sockets over the cap: each is refused, one log line says so.
    for i in 0..20 {
        use futures::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        let url = app.ws_url(&alice.token, &format!("extra-{i}"));
        let (mut extra, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        let code = loop {
            match tokio::time::timeout(Duration::from_secs(10), extra.next()).await {
                Ok(Some(Ok(Message::Close(frame)))) => break frame.map(|f| u16::from(f.code)),
                Ok(Some(Ok(_))) => continue,
                other => panic!("no close frame: {other:?}"),
            }
        };
        assert_eq!(code, Some(1008));
    }
    let logs: Vec<Value> = captured
        .text()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let refused = lines_with(&logs, "connection refused: too many connections");
    assert_eq!(refused.len(), 1, "{refused:#?}");
}
