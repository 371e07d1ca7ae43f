//! `connections`: many idle, authenticated connections held open at once.
//! Reports how fast they were opened and, given the gateway's pid, its
//! resident memory per connection (from `/proc/<pid>/status`).

use crate::cli::{Connections, Target};
use crate::client;
use crate::report::Report;
use crate::users;
use futures::StreamExt;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::time::Instant;

/// The resident set of a process, in KiB.
pub fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

pub async fn run(target: &Target, args: &Connections) -> anyhow::Result<Report> {
    let users = users::create(target, "c", args.count).await?;
    let rss_before = target.gateway_pid.and_then(rss_kb);
    let started_at = chrono::Utc::now().to_rfc3339();
    let gate = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(users.len());
    for user in users {
        let gate = gate.clone();
        let url = target.first_gateway();
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await?;
            let began = Instant::now();
            let (socket, _) = client::connect(&url, &user.token, "idle").await?;
            Ok::<_, anyhow::Error>((socket, began.elapsed()))
        }));
    }
    let mut sockets = Vec::with_capacity(tasks.len());
    let mut failures = Vec::new();
    let mut handshake = crate::measure::micros();
    for task in tasks {
        match task.await? {
            Ok((socket, took)) => {
                handshake.saturating_record(took.as_micros() as u64);
                sockets.push(socket);
            }
            Err(e) => failures.push(format!("{e:#}")),
        }
    }
    let opened_in = start.elapsed();
    // Idle, but read: a socket that is never read never answers the
    // server's pings and would be dropped as dead.
    let readers: Vec<_> = sockets
        .into_iter()
        .map(|socket| tokio::spawn(async move { socket.for_each(|_| async {}).await }))
        .collect();
    tokio::time::sleep(Duration::from_secs(args.hold)).await;
    let rss_after = target.gateway_pid.and_then(rss_kb);
    let held = readers.iter().filter(|r| !r.is_finished()).count();
    for reader in &readers {
        reader.abort();
    }

    let mut extra = std::collections::BTreeMap::new();
    extra.insert("connections".to_owned(), held as f64);
    extra.insert("connect_s".to_owned(), opened_in.as_secs_f64());
    extra.insert(
        "connect_per_s".to_owned(),
        (args.count - failures.len()) as f64 / opened_in.as_secs_f64().max(1e-9),
    );
    if let (Some(before), Some(after)) = (rss_before, rss_after) {
        extra.insert("gateway_rss_kb_before".to_owned(), before as f64);
        extra.insert("gateway_rss_kb_after".to_owned(), after as f64);
        if held > 0 {
            extra.insert(
                "rss_kb_per_connection".to_owned(),
                after.saturating_sub(before) as f64 / held as f64,
            );
        }
    }
    let mut problems = Vec::new();
    if !failures.is_empty() {
        problems.push(format!(
            "{} of {} connections FAILED, e.g. {}",
            failures.len(),
            args.count,
            failures[0]
        ));
    }
    if held + failures.len() < args.count {
        problems.push(format!(
            "{} connections were DROPPED while idle",
            args.count - failures.len() - held
        ));
    }
    Ok(Report {
        scenario: "connections".into(),
        started_at,
        duration_s: opened_in.as_secs_f64() + args.hold as f64,
        parameters: [
            ("count", json!(args.count)),
            ("concurrency", json!(args.concurrency)),
            ("hold", json!(args.hold)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect(),
        // The handshake through `ready`, per connection.
        accept_latency: crate::measure::summary(&handshake),
        extra,
        problems,
        ..Report::default()
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    #[test]
    fn reads_our_own_rss() {
        let kb = super::rss_kb(std::process::id()).unwrap();
        assert!(kb > 100, "{kb}");
    }
}
