//! `steady`: users in sender → receiver pairs, direct messages at a fixed
//! total rate, open loop (each send goes out on schedule whether or not the
//! previous ones were answered), so latency is honest under overload: it
//! is measured from the scheduled time, not from when the send got out.

use crate::accounting::{MessageKey, Outcome, Sent};
use crate::cli::{Steady, Target};
use crate::report::Report;
use crate::scenarios::device::Schedule;
use crate::scenarios::{Clock, DRAIN_CAP, Run, connect_all, link};
use crate::users::{self, User};
use serde_json::json;
use std::time::Duration;

pub async fn run(target: &Target, args: &Steady) -> anyhow::Result<Report> {
    let pairs = (args.users / 2).max(1);
    let users = users::create(target, "s", pairs * 2).await?;
    drive(target, &users, args, "steady", None).await
}

/// Runs `steady` traffic between `users` (in sender, receiver pairs),
/// reported as `scenario`. Deliveries whose content starts with `foreign`
/// are another party's and stay out of the books.
pub async fn drive(
    target: &Target,
    users: &[User],
    args: &Steady,
    scenario: &'static str,
    foreign: Option<&'static str>,
) -> anyhow::Result<Report> {
    let pairs = (users.len() / 2).max(1);
    let sockets = connect_all(target, users, scenario, 200).await?;
    let total = Duration::from_secs(args.warmup + args.duration);
    let period = Duration::from_secs_f64(pairs as f64 / args.rate.max(1) as f64);

    let clock = Clock::start(Duration::from_millis(200));
    let mut run = Run::new(target, &clock, args.warmup, scenario);
    run.foreign = foreign;
    let mut devices = Vec::new();
    for (index, socket) in sockets.into_iter().enumerate() {
        let pair = index / 2;
        // Senders start spread over one period so the load is even.
        let offset = period.mul_f64(pair as f64 / pairs as f64);
        let receiver = users[pair * 2 + 1].id;
        let schedule = (index % 2 == 0).then(|| Schedule {
            sender: pair as u32,
            offset,
            period,
            count: Schedule::count_within(offset, period, total),
            frame: Box::new(move |_, content| {
                json!({
                    "event": "send_direct_message",
                    "data": {"receiverId": receiver, "content": content},
                })
            }),
        });
        let link = link(target, index, &users[index], scenario);
        devices.push(run.device(link, socket, users[index].id, schedule));
    }
    // Every device keeps going until the books are settled.
    tokio::time::sleep_until(clock.t0 + total).await;
    let drained = run
        .drain(1, Duration::from_secs(args.drain), DRAIN_CAP)
        .await;
    let logs = run.stop(devices).await?;

    let mut sends = Vec::new();
    for pair in 0..pairs {
        let log = &logs[pair * 2];
        for number in 0..log.sent {
            sends.push(Sent {
                key: MessageKey::new(pair as u32, number),
                outcome: log
                    .outcomes
                    .get(number as usize)
                    .copied()
                    .unwrap_or(Outcome::Unanswered),
                recipients: vec![pair * 2 + 1],
            });
        }
    }
    let mut report = run.report(&sends, logs, args.duration, drained);
    report.parameters = [
        ("users", json!(pairs * 2)),
        ("rate", json!(args.rate)),
        ("duration", json!(args.duration)),
        ("warmup", json!(args.warmup)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    Ok(report)
}
