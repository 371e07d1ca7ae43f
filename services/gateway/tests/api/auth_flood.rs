//! A flood of logins for unknown users: password hashing runs a memory
//! budget's worth at a time, so the gateway's memory stays bounded and it
//! keeps answering `/readyz` and its sockets. Prints the numbers measured.

use natter_testkit::{TestApp, TestOptions};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const FLOOD: usize = 500;
const MAX_GROWTH_BYTES: u64 = 200 * 1024 * 1024;

/// This process's resident memory; the gateway runs in it.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status");
    kib * 1024
}

/// Samples RSS until `done`, keeping the peak in `peak`.
async fn sample_rss(peak: Arc<AtomicU64>, done: Arc<AtomicBool>) {
    while !done.load(Ordering::Relaxed) {
        peak.fetch_max(rss_bytes(), Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `/readyz` until `done`; the slowest answer, and how many were not 200.
async fn poll_readyz(app_url: String, done: Arc<AtomicBool>) -> (Duration, usize, usize) {
    let http = reqwest::Client::new();
    let (mut slowest, mut answered, mut failed) = (Duration::ZERO, 0, 0);
    while !done.load(Ordering::Relaxed) {
        let started = Instant::now();
        let ok = http
            .get(&app_url)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        slowest = slowest.max(started.elapsed());
        answered += 1;
        failed += usize::from(!ok);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (slowest, answered, failed)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_logins_keeps_memory_bounded_and_the_gateway_serving() {
    let app = TestApp::spawn_with(TestOptions {
        persister: false,
        ..TestOptions::default()
    })
    .await;
    let alice = app.signup("flood-alice").await;
    let mut socket = app.connect(&alice, "phone").await;
    // Warm up: the first unknown-user login makes the decoy hash.
    let (status, _) = app
        .post(
            "/api/auth/login",
            None,
            json!({"username": "nobody-0", "password": "wrong-password"}),
        )
        .await;
    assert_eq!(status, 401);
    let baseline = rss_bytes();

    let done = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(baseline));
    let sampler = tokio::spawn(sample_rss(peak.clone(), done.clone()));
    let readyz = tokio::spawn(poll_readyz(app.url("/readyz"), done.clone()));
    let flood_http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let flood: Vec<_> = (0..FLOOD)
        .map(|i| {
            let request = flood_http
                .post(app.url("/api/auth/login"))
                .json(&json!({"username": format!("nobody-{i}"), "password": "wrong-password"}));
            tokio::spawn(async move {
                let started = Instant::now();
                let status = request.send().await.map(|r| {
                    // A login told to wait is told for how long.
                    let retry_after = r.headers().contains_key("retry-after");
                    match r.status().as_u16() {
                        503 if !retry_after => 0,
                        status => status,
                    }
                });
                (status, started.elapsed())
            })
        })
        .collect();

    // A real user logs in and uses a socket while the flood is in line.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let (alice_status, _) = app
        .post(
            "/api/auth/login",
            None,
            json!({"username": "flood-alice", "password": "password-123"}),
        )
        .await;
    let alice_latency = started.elapsed();
    socket.send_ref("ping", json!({}), "during-flood").await;
    let pong = socket.reply_to("during-flood").await;

    let mut latencies = Vec::new();
    let mut statuses = std::collections::BTreeMap::<String, usize>::new();
    for task in flood {
        let (status, latency) = task.await.unwrap();
        let status = status.map_or_else(|e| format!("error: {e}"), |s| s.to_string());
        *statuses.entry(status).or_default() += 1;
        latencies.push(latency);
    }
    done.store(true, Ordering::Relaxed);
    sampler.await.unwrap();
    let (readyz_slowest, readyz_answers, readyz_failed) = readyz.await.unwrap();
    latencies.sort();
    let growth = peak.load(Ordering::Relaxed).saturating_sub(baseline);

    eprintln!(
        "login flood of {FLOOD}: peak RSS growth {:.1} MiB (baseline {:.1} MiB); \
         flood login latency p50 {:?}, p99 {:?}, max {:?}; statuses {statuses:?}; \
         a user's login during it: {alice_status} in {alice_latency:?}; \
         /readyz: {readyz_answers} answers, {readyz_failed} failed, slowest {readyz_slowest:?}",
        growth as f64 / 1048576.0,
        baseline as f64 / 1048576.0,
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or_default(),
    );
    assert!(
        growth < MAX_GROWTH_BYTES,
        "RSS grew by {} MiB",
        growth / 1048576
    );
    assert!(
        readyz_answers > 0 && readyz_failed == 0,
        "/readyz failed during the flood"
    );
    assert!(
        readyz_slowest < Duration::from_secs(1),
        "{readyz_slowest:?}"
    );
    assert_eq!(pong["event"], "pong", "{pong}");
    // Every flood login was answered: refused as unknown, or told when to retry.
    let answered =
        statuses.get("401").copied().unwrap_or(0) + statuses.get("503").copied().unwrap_or(0);
    assert_eq!(answered, FLOOD, "{statuses:?}");
    assert!(
        matches!(alice_status, 200 | 503),
        "a real user's login answered {alice_status}"
    );
}
