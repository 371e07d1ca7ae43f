//! The Prometheus registry every natter process exports on `/metrics`.
//! Metric names start with `natter_` and end in their unit; latencies are
//! histograms with buckets around the seed's 100 ms delivery goal.

use axum::http::header;
use axum::response::IntoResponse;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use std::time::Duration;

/// Upper bounds, in seconds, of every `*_seconds` histogram.
const LATENCY_BUCKETS: [f64; 16] = [
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];
/// Upper bounds of every `*_size` histogram (records per batch).
const SIZE_BUCKETS: [f64; 11] = [
    1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0,
];
/// How often histograms are compacted.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder once and returns its handle. Several
/// services in one process (the tests) share it; their names never collide.
pub fn install() -> Result<PrometheusHandle, MetricsError> {
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &LATENCY_BUCKETS)
        .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_size".into()), &SIZE_BUCKETS))
        .map_err(|e| MetricsError(e.to_string()))?
        .build_recorder();
    let handle = recorder.handle();
    // Losing a race with another installer is fine: use the winner's handle.
    if metrics::set_global_recorder(recorder).is_ok() {
        let _ = HANDLE.set(handle.clone());
        let upkeep = handle.clone();
        std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(UPKEEP_EVERY);
                    upkeep.run_upkeep();
                }
            })
            .map_err(|e| MetricsError(e.to_string()))?;
    }
    HANDLE
        .get()
        .cloned()
        .ok_or_else(|| MetricsError("another metrics recorder is installed".into()))
}

/// `GET /metrics`: the Prometheus text exposition.
pub async fn endpoint() -> impl IntoResponse {
    let body = HANDLE
        .get()
        .map(PrometheusHandle::render)
        .unwrap_or_default();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
}

/// Seconds since `at`, for latency histograms; 0 if the clock went back.
pub fn seconds_since(at: chrono::DateTime<chrono::Utc>) -> f64 {
    seconds_between(at, chrono::Utc::now())
}

/// Seconds from `from` to `to`; 0 if `to` is earlier (clocks of two hosts).
pub fn seconds_between(
    from: chrono::DateTime<chrono::Utc>,
    to: chrono::DateTime<chrono::Utc>,
) -> f64 {
    (to - from).to_std().map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

#[derive(Debug, thiserror::Error)]
#[error("could not install the metrics recorder: {0}")]
pub struct MetricsError(String);
