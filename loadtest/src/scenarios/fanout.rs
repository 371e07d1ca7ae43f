//! `fanout`: groups of `group_size`; one member of each sends at a fixed
//! total rate (open loop). Measured: deliveries per second and the latency
//! to each member and to the last member of the group.

use crate::accounting::{MessageKey, Outcome, Sent};
use crate::cli::{Fanout, Target};
use crate::report::Report;
use crate::scenarios::device::Schedule;
use crate::scenarios::{Clock, DRAIN_CAP, LastMember, Run, connect_all, link};
use crate::users::{self, User};
use anyhow::Context;
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

    let clock = Clock::start(Duration::from_millis(200));
    let mut run = Run::new(target, &clock, args.warmup, "fanout");
    let last_member = Arc::new(LastMember::new((size - 1) as u32));
    run.last_member = Some(last_member.clone());
    let mut devices = Vec::new();
    for (index, socket) in sockets.into_iter().enumerate() {
        let group = index / size;
        let group_id = groups[group];
        let offset = period.mul_f64(group as f64 / groups_n as f64);
        let schedule = (index % size == 0).then(|| Schedule {
            sender: group as u32,
            offset,
            period,
            count: Schedule::count_within(offset, period, total),
            frame: Box::new(move |_, content| {
                json!({
                    "event": "send_group_message",
                    "data": {"groupId": group_id, "content": content},
                })
            }),
        });
        let link = link(target, index, &users[index], "fanout");
        devices.push(run.device(link, socket, users[index].id, schedule));
    }
    tokio::time::sleep_until(clock.t0 + total).await;
    let drained = run
        .drain(
            (size - 1) as u64,
            Duration::from_secs(args.drain),
            DRAIN_CAP,
        )
        .await;
    let logs = run.stop(devices).await?;

    let mut sends = Vec::new();
    for group in 0..groups_n {
        let log = &logs[group * size];
        let recipients: Vec<usize> = (group * size + 1..(group + 1) * size).collect();
        for number in 0..log.sent {
            sends.push(Sent {
                key: MessageKey::new(group as u32, number),
                outcome: log
                    .outcomes
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
