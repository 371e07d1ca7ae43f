//! `fanout`: groups of `group_size`; one member of each sends at a fixed
//! total rate (open loop). Measured: deliveries per second and the latency
//! to each member and to the last member of the group.

use crate::accounting::{MessageKey, Outcome, Sent};
use crate::cli::{Fanout, Target};
use crate::report::Report;
use crate::scenarios::{Clock, DRAIN_CAP, LastMember, Run, connect_all, send_on_schedule};
use crate::users::{self, User};
use anyhow::Context;
use futures::StreamExt;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// How long group creation is retried while natter answers `unavailable`
/// (it waits for the persister, which may be catching up).
const CREATE_RETRY: Duration = Duration::from_secs(60);

/// Creates a group of `members` (the first is its creator) over REST,
/// retrying while natter answers 503, as a client would.
pub(crate) async fn create_group(
    target: &Target,
    name: &str,
    members: &[User],
) -> anyhow::Result<uuid::Uuid> {
    let deadline = tokio::time::Instant::now() + CREATE_RETRY;
    loop {
        match try_create_group(target, name, members).await {
            Err(e) if e.to_string().contains("503") && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            other => return other,
        }
    }
}

async fn try_create_group(
    target: &Target,
    name: &str,
    members: &[User],
) -> anyhow::Result<uuid::Uuid> {
    let ids: Vec<String> = members[1..].iter().map(|m| m.id.to_string()).collect();
    let response = reqwest::Client::new()
        .post(format!("{}/api/groups", target.first_gateway()))
        .bearer_auth(&members[0].token)
        .json(&json!({"name": name, "memberIds": ids}))
        .send()
        .await
        .context("creating a group")?;
    anyhow::ensure!(
        response.status().as_u16() == 201,
        "group creation answered {}",
        response.status()
    );
    let body: serde_json::Value = response.json().await?;
    body["group"]["id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .context("group reply without an id")
}

pub async fn run(target: &Target, args: &Fanout) -> anyhow::Result<Report> {
    let size = args.group_size.max(2);
    let groups_n = args.groups.max(1);
    let users = users::create(target, "g", groups_n * size).await?;
    let mut groups = Vec::with_capacity(groups_n);
    for (i, members) in users.chunks(size).enumerate() {
        groups.push(create_group(target, &format!("loadtest {i}"), members).await?);
    }
    let sockets = connect_all(target, &users, "fanout", 200).await?;
    let total = Duration::from_secs(args.warmup + args.duration);
    let period = Duration::from_secs_f64(groups_n as f64 / args.rate.max(1) as f64);
    let planned = (total.as_secs_f64() / period.as_secs_f64()).ceil() as usize + 1;

    let clock = Clock::start(Duration::from_millis(200));
    let mut run = Run::new(target, &clock, args.warmup, "fanout");
    let last_member = Arc::new(LastMember::new((size - 1) as u32));
    run.last_member = Some(last_member.clone());
    let mut readers = Vec::new();
    let mut senders = Vec::new();
    let mut keep_open = Vec::new();
    for (index, (socket, _)) in sockets.into_iter().enumerate() {
        let (sink, stream) = socket.split();
        let group = index / size;
        let sender = index % size == 0;
        readers.push(run.read(stream, users[index].id, sender.then_some(planned)));
        if !sender {
            keep_open.push(tokio::spawn(async move { sink }));
            continue;
        }
        let group_id = groups[group];
        let offset = period.mul_f64(group as f64 / groups_n as f64);
        senders.push(send_on_schedule(
            &run,
            sink,
            group as u32,
            offset,
            period,
            total,
            move |n, content| {
                json!({
                    "event": "send_group_message",
                    "data": {"groupId": group_id, "content": content},
                    "ref": n.to_string(),
                })
            },
        ));
    }
    let mut sent_counts = Vec::new();
    let mut sinks = Vec::new();
    for sender in senders {
        let (sent, sink) = sender.await?;
        sent_counts.push(sent);
        sinks.push(sink);
    }
    let drained = run
        .drain(
            (size - 1) as u64,
            Duration::from_secs(args.drain),
            DRAIN_CAP,
        )
        .await;
    let logs = run.stop(readers).await?;
    drop(sinks);
    drop(keep_open);

    let mut sends = Vec::new();
    for (group, &count) in sent_counts.iter().enumerate() {
        let outcomes = &logs[group * size].outcomes;
        let recipients: Vec<usize> = (group * size + 1..(group + 1) * size).collect();
        for number in 0..count {
            sends.push(Sent {
                key: MessageKey::new(group as u32, number),
                outcome: outcomes
                    .get(number as usize)
                    .copied()
                    .unwrap_or(Outcome::Unanswered),
                recipients: recipients.clone(),
            });
        }
    }
    let mut report = run.report(&sends, logs, args.duration, drained);
    if let Some(last) = last_member.summary() {
        report
            .extra
            .insert("last_member_p50_ms".into(), last.p50_ms);
        report
            .extra
            .insert("last_member_p99_ms".into(), last.p99_ms);
        report
            .extra
            .insert("last_member_p999_ms".into(), last.p999_ms);
    }
    report.parameters = [
        ("groups", json!(groups_n)),
        ("group_size", json!(size)),
        ("rate", json!(args.rate)),
        ("duration", json!(args.duration)),
        ("warmup", json!(args.warmup)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    Ok(report)
}
