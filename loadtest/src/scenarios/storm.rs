//! `storm`: a reconnection storm. Devices connect once (so each has a
//! cursor), all drop without a close frame, miss `missed` messages each,
//! then all reconnect at once. Measured: how long until every device has
//! every message it missed, per device and overall, with the books kept.

use crate::accounting::{DeviceLog, MessageKey, Outcome, Sent};
use crate::cli::{Storm, Target};
use crate::client::{self, Incoming};
use crate::report::Report;
use crate::scenarios::device::Schedule;
use crate::scenarios::{Clock, DRAIN_CAP, Drained, ReaderLog, Run, connect_all, link};
use crate::users;
use futures::StreamExt;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

/// Sockets that send the missed messages.
const SENDERS: usize = 20;
/// Reconnects in flight at once: "all at once", within what the listen
/// backlog takes without dropping handshakes.
const RECONNECTS_AT_ONCE: usize = 1000;

/// The device each send of sender `s` goes to, in sending order: every
/// device's messages are spread over the whole sending phase.
fn plan(sender: usize, senders: usize, devices: usize, missed: usize) -> Vec<usize> {
    let mine: Vec<usize> = (sender..devices).step_by(senders).collect();
    (0..missed).flat_map(|_| mine.iter().copied()).collect()
}

pub async fn run(target: &Target, args: &Storm) -> anyhow::Result<Report> {
    let senders_n = SENDERS.min(args.devices).max(1);
    let users = users::create(target, "d", args.devices + senders_n).await?;
    let (devices, senders) = users.split_at(args.devices);

    // Every device connects once, so the server has its cursor, then drops
    // without a close frame, as a lost network does.
    let first = connect_all(target, devices, "storm", 500).await?;
    drop(first);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let clock = Clock::start(Duration::ZERO);
    let mut run = Run::new(target, &clock, 0, "storm");
    let sockets = connect_all(target, senders, "storm-sender", senders_n).await?;
    // Each sender sends every `period`, the senders staggered across it.
    let period = match args.send_rate {
        0 => Duration::ZERO,
        rate => Duration::from_secs_f64(senders_n as f64 / rate as f64),
    };
    let mut readers = Vec::new();
    for (s, socket) in sockets.into_iter().enumerate() {
        let plan = plan(s, senders_n, args.devices, args.missed);
        let receivers: Vec<uuid::Uuid> = plan.iter().map(|&d| devices[d].id).collect();
        let schedule = Schedule {
            sender: s as u32,
            offset: period.mul_f64(s as f64 / senders_n as f64),
            period,
            count: receivers.len() as u32,
            frame: Box::new(move |n, content| {
                json!({
                    "event": "send_direct_message",
                    "data": {"receiverId": receivers[n as usize], "content": content},
                })
            }),
        };
        let link = link(target, s, &senders[s], "storm-sender");
        readers.push(run.device(link, socket, senders[s].id, Some(schedule)));
    }
    let planned = (args.devices * args.missed) as u64;
    let send_time = match args.send_rate {
        0 => Duration::ZERO,
        rate => Duration::from_secs_f64(planned as f64 / rate as f64),
    };
    let sending_deadline = Instant::now() + send_time + Duration::from_secs(args.deadline);
    while run
        .counters
        .attempted
        .load(std::sync::atomic::Ordering::Relaxed)
        < planned
        && Instant::now() < sending_deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let sending = clock.t0.elapsed();
    run.drain(0, Duration::from_secs(30), DRAIN_CAP).await;

    // The storm.
    let storm = Instant::now();
    let deadline = storm + Duration::from_secs(args.deadline);
    let gate = Arc::new(Semaphore::new(RECONNECTS_AT_ONCE));
    let mut reconnects = Vec::with_capacity(devices.len());
    for (index, device) in devices.iter().enumerate() {
        let gate = gate.clone();
        let url = target.gateway(index);
        let token = device.token.clone();
        let missed = args.missed;
        reconnects.push(tokio::spawn(async move {
            let mut log = DeviceLog::default();
            // A refused connect, or a session the gateway closes ("try
            // again"), is retried with backoff until the deadline, as a real
            // client reconnects; the replay then starts over from its cursor.
            let mut backoff = Duration::from_millis(100);
            let mut connections = 0u32;
            let mut socket = None;
            while log.received.len() < missed {
                let mut current = match socket.take() {
                    Some(current) => current,
                    None => match connect_gated(&gate, &url, &token).await {
                        Ok(current) => {
                            connections += 1;
                            if connections > 1 {
                                log.reconnected();
                            }
                            current
                        }
                        Err(_) if Instant::now() + backoff < deadline => {
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(Duration::from_secs(2));
                            continue;
                        }
                        Err(_) => return (log, None, connections),
                    },
                };
                let frame = match tokio::time::timeout_at(deadline, current.next()).await {
                    Ok(Some(Ok(Message::Text(text)))) => text,
                    Ok(Some(Ok(Message::Close(_)))) | Ok(Some(Err(_))) | Ok(None) => {
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                        continue;
                    }
                    Ok(Some(Ok(_))) => {
                        socket = Some(current);
                        continue;
                    }
                    Err(_) => return (log, None, connections),
                };
                if let Incoming::Delivery {
                    conversation,
                    seq,
                    content,
                    ..
                } = client::parse(frame.as_str())
                {
                    let key = MessageKey::parse(&content).map(|(key, _)| key);
                    log.record(key, &conversation, seq);
                }
                socket = Some(current);
            }
            let Some(mut socket) = socket else {
                return (log, Some(storm.elapsed()), connections);
            };
            let complete = storm.elapsed();
            // A moment longer, to catch a duplicate replayed after the last one.
            let _ = tokio::time::timeout(Duration::from_millis(200), async {
                while let Some(Ok(frame)) = socket.next().await {
                    if let Message::Text(text) = frame
                        && let Incoming::Delivery {
                            conversation,
                            seq,
                            content,
                            ..
                        } = client::parse(text.as_str())
                    {
                        let key = MessageKey::parse(&content).map(|(key, _)| key);
                        log.record(key, &conversation, seq);
                    }
                }
            })
            .await;
            (log, Some(complete), connections)
        }));
    }
    let mut device_logs = Vec::with_capacity(devices.len());
    let mut completion = crate::measure::micros();
    let mut incomplete = 0usize;
    let mut slowest = Duration::ZERO;
    let mut extra_connections = 0u64;
    let mut replayed_again = 0u64;
    for reconnect in reconnects {
        let (log, complete, connections) = reconnect.await?;
        extra_connections += u64::from(connections.saturating_sub(1));
        replayed_again += log.replayed_again;
        match complete {
            Some(took) => {
                completion.saturating_record(took.as_micros() as u64);
                slowest = slowest.max(took);
            }
            None => incomplete += 1,
        }
        device_logs.push(ReaderLog {
            device: log,
            ..ReaderLog::default()
        });
    }
    let sender_logs = run.stop(readers).await?;

    let mut sends = Vec::new();
    for (s, log) in sender_logs.iter().enumerate() {
        for (number, device) in plan(s, senders_n, args.devices, args.missed)
            .into_iter()
            .enumerate()
        {
            sends.push(Sent {
                key: MessageKey::new(s as u32, number as u32),
                outcome: log
                    .outcomes
                    .get(number)
                    .copied()
                    .unwrap_or(Outcome::Unanswered),
                recipients: vec![device],
            });
        }
    }
    // A device that did not get everything by the deadline was still
    // being served or had stalled; the deadline, not the drain, decides.
    let drained = if incomplete > 0 {
        Drained::Stalled
    } else {
        Drained::Complete
    };
    let mut report = run.report(&sends, device_logs, sending.as_secs().max(1), drained);
    report.duration_s = sending.as_secs_f64() + storm.elapsed().as_secs_f64();
    report.delivery_latency = crate::measure::summary(&completion);
    report.delivery_histogram = Vec::new();
    report.delivered_per_s =
        report.accounting.delivered as f64 / storm.elapsed().as_secs_f64().max(1e-9);
    report.extra.insert("devices".into(), args.devices as f64);
    report
        .extra
        .insert("missed_per_device".into(), args.missed as f64);
    report
        .extra
        .insert("send_phase_s".into(), sending.as_secs_f64());
    report
        .extra
        .insert("storm_complete_s".into(), slowest.as_secs_f64());
    report
        .extra
        .insert("incomplete_devices".into(), incomplete as f64);
    // Sessions the gateway closed mid-replay ("try again") and the records
    // their devices were sent again on the next connection.
    report
        .extra
        .insert("reconnects_again".into(), extra_connections as f64);
    report
        .extra
        .insert("replayed_again".into(), replayed_again as f64);
    if incomplete > 0 {
        report.problems.push(format!(
            "{incomplete} devices INCOMPLETE after {} s",
            args.deadline
        ));
    }
    report.parameters = [
        ("devices", json!(args.devices)),
        ("missed", json!(args.missed)),
        ("deadline", json!(args.deadline)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    Ok(report)
}

/// A connect that waits its turn: at most [`RECONNECTS_AT_ONCE`] handshakes
/// are in flight, the rest queue as clients behind a slow network would.
async fn connect_gated(
    gate: &Arc<Semaphore>,
    url: &str,
    token: &str,
) -> anyhow::Result<crate::client::Socket> {
    let _turn = gate.acquire().await?;
    Ok(client::connect(url, token, "storm").await?.0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_device_gets_its_share_from_exactly_one_sender() {
        let (senders, devices, missed) = (3, 7, 4);
        let mut per_device = vec![0; devices];
        for s in 0..senders {
            for d in super::plan(s, senders, devices, missed) {
                assert_eq!(d % senders, s);
                per_device[d] += 1;
            }
        }
        assert!(per_device.iter().all(|&n| n == missed));
    }
}
