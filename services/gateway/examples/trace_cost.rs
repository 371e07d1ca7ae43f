//! What tracing costs on the message path, until the load-test harness
//! exists: the whole pipeline in one process (gateway, persister, a
//! nats-server and PostgreSQL from the test kit), `PAIRS` senders pushing
//! direct messages as fast as the gateway takes them, and the throughput
//! until every receiver has every message.
//!
//! ```text
//! cargo run --release -p natter-gateway --example trace_cost -- <mode> [messages]
//! ```
//! `mode`: `disabled` (`OTEL_SDK_DISABLED=true`), `ids` (the default without
//! a collector: trace ids made, propagated and logged, no span built),
//! `sampled` (100 % sampling, exported to a stand-in collector that
//! discards), `dead` (100 % sampling, exported to a port nobody listens on).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a measuring tool: fail loudly

use futures::{SinkExt, StreamExt};
use natter_runtime::config::{LogFormat, SamplerKind, TelemetryArgs};
use natter_testkit::{TestApp, TestOptions};
use serde_json::json;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

const PAIRS: usize = 20;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "ids".into());
    let total: usize = args.next().map(|n| n.parse().unwrap()).unwrap_or(40_000);
    let per_pair = total / PAIRS;

    let telemetry = TelemetryArgs {
        log_format: LogFormat::Pretty,
        otel_exporter_otlp_endpoint: None,
        otel_traces_sampler: None,
        otel_traces_sampler_arg: 1.0,
        otel_sdk_disabled: mode == "disabled",
    };
    let telemetry = match mode.as_str() {
        "disabled" | "ids" => telemetry,
        "sampled" => TelemetryArgs {
            otel_exporter_otlp_endpoint: Some(format!("http://127.0.0.1:{}", sink().await)),
            otel_traces_sampler: Some(SamplerKind::AlwaysOn),
            ..telemetry
        },
        "dead" => TelemetryArgs {
            otel_exporter_otlp_endpoint: Some(format!(
                "http://127.0.0.1:{}",
                natter_localinfra::free_port()
            )),
            otel_traces_sampler: Some(SamplerKind::AlwaysOn),
            ..telemetry
        },
        other => panic!("unknown mode {other}: disabled | ids | sampled | dead"),
    };
    let traces = (!telemetry.otel_sdk_disabled)
        .then(|| natter_runtime::telemetry::traces("natter-bench", &telemetry).unwrap());
    let guard = natter_runtime::telemetry::install(
        LogFormat::Pretty,
        "warn",
        traces,
        false,
        std::io::stderr,
    )
    .unwrap();

    let app = TestApp::spawn_with(TestOptions {
        gateway_args: vec!["--send-rate-per-sec".into(), "1000000".into()],
        ..TestOptions::default()
    })
    .await;
    let users = app.seed_users("u", PAIRS * 2).await;
    let mut tasks = Vec::new();
    let mut senders = Vec::new();
    let started = Instant::now();
    for pair in users.chunks(2) {
        let (sender, receiver) = (&pair[0], &pair[1]);
        let (to_sender, _) = tokio_tungstenite::connect_async(app.ws_url(&sender.token, "bench"))
            .await
            .unwrap();
        let (to_receiver, _) =
            tokio_tungstenite::connect_async(app.ws_url(&receiver.token, "bench"))
                .await
                .unwrap();
        let receiver_id = receiver.id;
        let (mut tx, mut rx) = to_sender.split();
        // The sender's own socket gets its confirmations and copies: read
        // them so the gateway never waits on it. Kept open until the end.
        senders.push(tokio::spawn(
            async move { while rx.next().await.is_some() {} },
        ));
        tokio::spawn(async move {
            for i in 0..per_pair {
                let frame = json!({"event": "send_direct_message",
                    "data": {"receiverId": receiver_id, "content": format!("m{i}")}});
                tx.send(Message::Text(frame.to_string().into()))
                    .await
                    .unwrap();
            }
            // Holding the sink keeps the connection open.
            std::future::pending::<()>().await;
        });
        tasks.push(tokio::spawn(async move {
            let (tx, mut rx) = to_receiver.split();
            let mut got = 0;
            while got < per_pair {
                let frame = tokio::time::timeout(Duration::from_secs(60), rx.next())
                    .await
                    .expect("messages keep coming")
                    .expect("socket open")
                    .unwrap();
                if let Message::Text(text) = frame
                    && text.contains("receive_direct_message")
                {
                    got += 1;
                }
            }
            drop(tx);
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let elapsed = started.elapsed();
    let delivered = per_pair * PAIRS;
    println!(
        "mode={mode} messages={delivered} seconds={:.2} throughput={:.0} msg/s",
        elapsed.as_secs_f64(),
        delivered as f64 / elapsed.as_secs_f64()
    );
    for sender in senders {
        sender.abort();
    }
    tokio::task::spawn_blocking(move || guard.shutdown())
        .await
        .unwrap();
}

/// A stand-in OTLP collector that accepts and discards: exporting costs
/// what it costs to send, not what a real backend costs to store.
async fn sink() -> u16 {
    let app = axum::Router::new().fallback(|| async { axum::http::StatusCode::OK });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}
