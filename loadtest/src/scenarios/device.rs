//! One device as a real client runs it: it reads its socket, sends on its
//! schedule (if it sends), acks what it received, and when the socket drops
//! it reconnects with backoff (to the next gateway once its own fails) and
//! resumes from its cursor. A send that went unanswered, or was answered
//! `unavailable`, goes out again with the same `clientMsgId`, which makes
//! the retry safe (DESIGN §4); the books count it once.

use crate::accounting::{MessageKey, Outcome};
use crate::client::{self, Incoming, Socket};
use crate::measure::Collector;
use crate::scenarios::clock::Clock;
use crate::scenarios::tally::{Counters, LastMember, ReaderLog};
use futures::{SinkExt, StreamExt};
use natter_runtime::backoff::Backoff;
use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

/// Waits between reconnects: what a mobile client does after its network
/// came back, short enough that a gateway's loss costs about a second.
const RECONNECT_MIN: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(2);
/// Waits between retries of a send answered `unavailable`, as the web client.
const RETRY_MIN: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(4);
/// A send unanswered this long, with nothing at all heard on the socket
/// for as long, means the connection is dead though the socket still looks
/// open (the gateway answers every send, `unavailable` included, within its
/// own publish timeout). Frames still arriving mean a busy gateway, not a
/// dead one: a client that reconnected then would replay its log and send
/// everything again, adding to what made the gateway slow.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);
/// A send is given up (left unanswered, which the books allow but report)
/// this long after it was scheduled.
const PATIENCE: Duration = Duration::from_secs(90);
/// Deliveries that broke the books, described per device.
const ANOMALIES_KEPT: usize = 3;
/// Sends a device leaves unanswered before it waits for answers: the
/// gateway's default `SESSION_MAX_INFLIGHT`. With more, the gateway stops
/// reading the socket, the device's next write blocks, it stops reading
/// too, and the gateway drops it as a slow reader.
const MAX_UNANSWERED: usize = 256;
/// Acks are cumulative; one goes out at most this often.
const ACK_EVERY: Duration = Duration::from_secs(1);

/// Where and as whom a device connects.
#[derive(Clone, Debug)]
pub struct Link {
    /// Every gateway; the device starts on `home` and moves on to the next
    /// one each time a reconnect fails.
    pub gateways: Arc<[String]>,
    pub home: usize,
    pub token: String,
    pub device: String,
}

/// What a sending device sends: send `n` is due at `t0 + offset + n × period`,
/// for `n` below `count`, whether or not the earlier ones were answered
/// (up to [`MAX_UNANSWERED`] of them; its latency still counts from when
/// it was due).
pub struct Schedule {
    pub sender: u32,
    pub offset: Duration,
    pub period: Duration,
    pub count: u32,
    /// Builds send `n` (its `ref` and `clientMsgId` are added here).
    pub frame: Box<dyn Fn(u32, String) -> serde_json::Value + Send>,
}

impl Schedule {
    /// How many sends of `period` starting at `offset` fall before `total`.
    pub fn count_within(offset: Duration, period: Duration, total: Duration) -> u32 {
        if offset >= total {
            return 0;
        }
        if period.is_zero() {
            return 1;
        }
        ((total - offset).as_secs_f64() / period.as_secs_f64()).ceil() as u32
    }
}

/// What a device shares with the rest of its run.
pub struct Shared {
    pub collector: Arc<Collector>,
    pub counters: Arc<Counters>,
    pub clock: Clock,
    pub last_member: Option<Arc<LastMember>>,
    pub foreign: Option<&'static str>,
    /// Unique to the run, so `clientMsgId`s never meet an earlier run's.
    pub run_id: String,
    pub stop: watch::Receiver<bool>,
}

/// The sends of one device that are not answered yet.
#[derive(Default)]
struct Pending {
    /// Sent and neither accepted nor refused for good.
    unanswered: BTreeSet<u32>,
    /// Every attempt in the order it went out, for the answer timeout;
    /// attempts already answered are skipped when they reach the front.
    attempts: VecDeque<(Instant, u32)>,
    /// Retries waiting for their time, after an `unavailable`.
    retries: BTreeSet<(Instant, u32)>,
    /// Retry backoff per send that was answered `unavailable`.
    backoffs: std::collections::HashMap<u32, Backoff>,
}

/// A device's task: reads, sends, acks and reconnects until the run stops.
pub struct Device {
    shared: Shared,
    link: Link,
    me: String,
    schedule: Option<Schedule>,
    log: ReaderLog,
    pending: Pending,
    /// The next scheduled send.
    next: u32,
    acked: u64,
    last_ack: Instant,
    /// When a text frame last arrived on the current socket.
    last_heard: Instant,
}

/// What woke the device up.
enum Event {
    Stop,
    Frame(Option<Result<Message, tokio_tungstenite::tungstenite::Error>>),
    Due,
}

impl Device {
    pub fn new(shared: Shared, link: Link, me: Uuid, schedule: Option<Schedule>) -> Self {
        let planned = schedule.as_ref().map_or(0, |s| s.count as usize);
        Self {
            shared,
            link,
            me: me.to_string(),
            schedule,
            log: ReaderLog {
                outcomes: vec![Outcome::Unanswered; planned],
                ..ReaderLog::default()
            },
            pending: Pending::default(),
            next: 0,
            acked: 0,
            last_ack: Instant::now(),
            last_heard: Instant::now(),
        }
    }

    /// Runs on `socket` (already `ready`, at `cursor`) until the run stops.
    pub async fn run(mut self, socket: Socket, cursor: u64) -> ReaderLog {
        self.acked = cursor;
        let mut socket = Some(socket);
        loop {
            let Some(current) = socket.as_mut() else {
                match self.reconnect().await {
                    Some(fresh) => socket = Some(fresh),
                    None => break,
                }
                continue;
            };
            let wake = self.next_wake();
            // What has arrived is read before anything more is sent, as a
            // client must: one that floods without reading makes the gateway
            // queue its deliveries, and then read them back from the log.
            let event = tokio::select! {
                biased;
                _ = self.shared.stop.changed() => Event::Stop,
                frame = current.next() => Event::Frame(frame),
                _ = sleep_until(wake) => Event::Due,
            };
            let alive = match event {
                Event::Stop => break,
                Event::Frame(Some(Ok(Message::Text(text)))) => {
                    self.last_heard = Instant::now();
                    self.on_frame(text.as_str());
                    true
                }
                Event::Frame(Some(Ok(Message::Close(_)) | Err(_)) | None) => false,
                Event::Frame(Some(Ok(_))) => true,
                Event::Due => self.on_due(current).await,
            };
            if !alive {
                socket = None;
            }
        }
        self.log.sent = self.next;
        self.log
    }

    /// The earliest of: the next scheduled send, the next retry, the next
    /// ack, and the answer timeout of the oldest attempt.
    fn next_wake(&mut self) -> Option<Instant> {
        let clock = &self.shared.clock;
        let room = self.pending.unanswered.len() < MAX_UNANSWERED;
        let scheduled = self
            .schedule
            .as_ref()
            .filter(|s| room && self.next < s.count)
            .map(|s| clock.t0 + s.offset + s.period.mul_f64(f64::from(self.next)));
        let retry = self.pending.retries.first().map(|(at, _)| *at);
        let ack = (self.log.cursor > self.acked).then_some(self.last_ack + ACK_EVERY);
        let timeout = self
            .oldest_attempt()
            .map(|at| at.max(self.last_heard) + ANSWER_TIMEOUT);
        [scheduled, retry, ack, timeout].into_iter().flatten().min()
    }

    /// When the oldest unanswered attempt went out.
    fn oldest_attempt(&mut self) -> Option<Instant> {
        while let Some(&(at, n)) = self.pending.attempts.front() {
            if self.pending.unanswered.contains(&n) {
                return Some(at);
            }
            self.pending.attempts.pop_front();
        }
        None
    }

    /// Does what is due; `false` if the connection is dead.
    async fn on_due(&mut self, socket: &mut Socket) -> bool {
        let now = Instant::now();
        let last_heard = self.last_heard;
        if self
            .oldest_attempt()
            .is_some_and(|at| at.max(last_heard) + ANSWER_TIMEOUT <= now)
        {
            return false;
        }
        if self.log.cursor > self.acked && self.last_ack + ACK_EVERY <= now {
            let ack = serde_json::json!({"event": "ack", "data": {"cursor": self.log.cursor}});
            if socket
                .send(Message::Text(ack.to_string().into()))
                .await
                .is_err()
            {
                return false;
            }
            self.acked = self.log.cursor;
            self.last_ack = now;
        }
        while let Some(&(at, n)) = self.pending.retries.first() {
            if at > now {
                break;
            }
            self.pending.retries.pop_first();
            if self.pending.unanswered.contains(&n) && !self.send(socket, n).await {
                return false;
            }
        }
        let room = self.pending.unanswered.len() < MAX_UNANSWERED;
        let due = self.schedule.as_ref().is_some_and(|s| {
            room && self.next < s.count
                && self.shared.clock.t0 + s.offset + s.period.mul_f64(f64::from(self.next)) <= now
        });
        if due {
            let n = self.next;
            self.next += 1;
            self.pending.unanswered.insert(n);
            self.shared
                .counters
                .attempted
                .fetch_add(1, Ordering::Relaxed);
            self.shared.collector.sent(now);
            return self.send(socket, n).await;
        }
        true
    }

    /// Sends (or sends again) send `n`; `false` if the socket failed.
    async fn send(&mut self, socket: &mut Socket, n: u32) -> bool {
        let Some(schedule) = &self.schedule else {
            return true;
        };
        let scheduled =
            self.shared.clock.t0 + schedule.offset + schedule.period.mul_f64(f64::from(n));
        if scheduled.elapsed() > PATIENCE {
            // Given up: it stays unanswered in the books.
            self.pending.unanswered.remove(&n);
            return true;
        }
        let content =
            MessageKey::new(schedule.sender, n).content(self.shared.clock.unix_us(scheduled));
        let mut frame = (schedule.frame)(n, content);
        frame["ref"] = serde_json::Value::String(n.to_string());
        frame["data"]["clientMsgId"] =
            serde_json::Value::String(format!("{}.{}.{n}", self.shared.run_id, schedule.sender));
        let now = Instant::now();
        if self.log.retried.contains(&n) {
            self.shared.collector.retried(now);
        }
        self.pending.attempts.push_back((now, n));
        socket
            .send(Message::Text(frame.to_string().into()))
            .await
            .is_ok()
    }

    /// The answer to send `reference`, final or to be retried.
    fn answered(&mut self, reference: Option<u64>, outcome: Outcome, code: Option<&str>) {
        let Some(n) = reference.and_then(|r| u32::try_from(r).ok()) else {
            return;
        };
        if !self.pending.unanswered.contains(&n) {
            return;
        }
        if code == Some("unavailable") {
            // The outcome is unknown: the message may be stored. Retried
            // with the same clientMsgId until accepted or given up.
            self.mark_retried(n);
            let delay = self
                .pending
                .backoffs
                .entry(n)
                .or_insert_with(|| Backoff::new(RETRY_MIN, RETRY_MAX))
                .next_delay();
            self.pending.retries.insert((Instant::now() + delay, n));
            return;
        }
        self.pending.unanswered.remove(&n);
        self.pending.backoffs.remove(&n);
        if let Some(slot) = self.log.outcomes.get_mut(n as usize) {
            *slot = outcome;
        }
        let counters = &self.shared.counters;
        counters.answered.fetch_add(1, Ordering::Relaxed);
        if outcome == Outcome::Accepted {
            counters.accepted.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn mark_retried(&mut self, n: u32) {
        if self.log.retried.insert(n) {
            self.shared.counters.retried.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn on_frame(&mut self, text: &str) {
        let now = Instant::now();
        // Another party's traffic is counted without being parsed: the
        // load generator shares the machine with natter, and parsing
        // frames no one measures would slow what it does.
        if let Some(prefix) = self.shared.foreign
            && client::content_starts_with(text, prefix)
        {
            self.shared.counters.foreign.fetch_add(1, Ordering::Relaxed);
            return;
        }
        match client::parse(text) {
            Incoming::Sent { reference, content } => {
                let first = reference
                    .and_then(|r| u32::try_from(r).ok())
                    .is_some_and(|n| self.pending.unanswered.contains(&n));
                self.answered(reference, Outcome::Accepted, None);
                if first && let Some((_, scheduled)) = MessageKey::parse(&content) {
                    let latency = now - self.shared.clock.instant(scheduled);
                    self.shared.collector.accepted(now, latency);
                }
            }
            Incoming::Refused { reference, code } => {
                self.answered(reference, Outcome::Refused, Some(&code));
            }
            Incoming::Delivery {
                sender,
                conversation,
                seq,
                cursor,
                content,
            } => self.delivered(now, &sender, &conversation, seq, cursor, &content),
            Incoming::Ready { .. } | Incoming::Other => {}
        }
    }

    fn delivered(
        &mut self,
        now: Instant,
        sender: &str,
        conversation: &str,
        seq: u64,
        cursor: u64,
        content: &str,
    ) {
        self.log.cursor = self.log.cursor.max(cursor);
        if sender == self.me {
            return;
        }
        let parsed = MessageKey::parse(content);
        let first = parsed.is_some_and(|(key, _)| !self.log.device.received.contains_key(&key));
        let (misordered, duplicated) = (self.log.device.out_of_order, self.log.device.duplicated);
        self.log
            .device
            .record(parsed.map(|(key, _)| key), conversation, seq);
        let what = if self.log.device.out_of_order > misordered {
            Some("out of order")
        } else if self.log.device.duplicated > duplicated {
            Some("duplicated")
        } else {
            None
        };
        if let Some(what) = what
            && self.log.anomalies.len() < ANOMALIES_KEPT
        {
            self.log.anomalies.push(format!(
                "{what}: {content:?} (seq {seq}, cursor {cursor}, conversation {conversation}) \
                 to user {} at {} ms, connection {}",
                self.me,
                self.shared.clock.unix_us(now) / 1000,
                self.log.reconnects + 1,
            ));
        }
        if let (true, Some((key, scheduled))) = (first, parsed) {
            let latency = now - self.shared.clock.instant(scheduled);
            self.shared
                .counters
                .delivered
                .fetch_add(1, Ordering::Relaxed);
            self.shared.collector.delivered(now, latency);
            if let Some(tracker) = &self.shared.last_member {
                tracker.arrived(key, latency);
            }
        }
    }

    /// Connects again, with backoff and jitter, moving to the next gateway
    /// after each failure; then sends again everything unanswered. `None`
    /// once the run stops.
    async fn reconnect(&mut self) -> Option<Socket> {
        let mut backoff = Backoff::new(RECONNECT_MIN, RECONNECT_MAX);
        for attempt in 0usize.. {
            let delay = jitter(backoff.next_delay(), &self.link.device, attempt);
            tokio::select! {
                _ = self.shared.stop.changed() => return None,
                _ = tokio::time::sleep(delay) => {}
            }
            let gateways = &self.link.gateways;
            let url = &gateways[(self.link.home + attempt) % gateways.len().max(1)];
            let opened = tokio::select! {
                _ = self.shared.stop.changed() => return None,
                opened = client::connect(url, &self.link.token, &self.link.device) => opened,
            };
            let Ok((mut socket, cursor)) = opened else {
                continue;
            };
            self.log.reconnects += 1;
            self.shared
                .counters
                .reconnects
                .fetch_add(1, Ordering::Relaxed);
            // Replay starts over from the server's cursor.
            self.log.device.reconnected();
            self.acked = cursor;
            self.last_heard = Instant::now();
            self.pending.retries.clear();
            self.pending.attempts.clear();
            let again: Vec<u32> = self.pending.unanswered.iter().copied().collect();
            let mut alive = true;
            for n in again {
                self.mark_retried(n);
                if !self.send(&mut socket, n).await {
                    alive = false;
                    break;
                }
            }
            if alive {
                return Some(socket);
            }
        }
        None
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// `delay` scaled by a factor in [0.5, 1.5) that differs per device and
/// attempt, so devices that dropped together do not come back together.
fn jitter(delay: Duration, device: &str, attempt: usize) -> Duration {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (device, attempt).hash(&mut hasher);
    let unit = (hasher.finish() % 1000) as f64 / 1000.0;
    delay.mul_f64(0.5 + unit)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use tokio::net::TcpListener;
    use tokio::sync::mpsc;

    /// A gateway that plays a script: `ready`, then for each frame it
    /// reads, the next answer (`None`: drop the connection unanswered). It
    /// hands every frame it read to `seen` and takes one connection only.
    async fn scripted_gateway(
        script: Vec<Option<&'static str>>,
        seen: mpsc::UnboundedSender<serde_json::Value>,
    ) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            drop(listener);
            let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
            let ready = r#"{"event":"ready","data":{"cursor":0}}"#;
            ws.send(Message::Text(ready.into())).await.unwrap();
            for answer in script {
                let Some(Ok(Message::Text(text))) = ws.next().await else {
                    return;
                };
                let frame: serde_json::Value = serde_json::from_str(text.as_str()).unwrap();
                let reference = frame["ref"].clone();
                let content = frame["data"]["content"].clone();
                seen.send(frame).unwrap();
                let Some(event) = answer else { return };
                let reply = match event {
                    "message_sent" => serde_json::json!({
                        "event": event, "ref": reference,
                        "data": {"message": {"content": content}},
                    }),
                    code => serde_json::json!({
                        "event": "error", "ref": reference,
                        "data": {"code": code, "message": "try again"},
                    }),
                };
                ws.send(Message::Text(reply.to_string().into()))
                    .await
                    .unwrap();
            }
            // Stay open until the client goes.
            while let Some(Ok(_)) = ws.next().await {}
        });
        url
    }

    /// What a device under test shares with its run ("run1", started now),
    /// and the run's counters, collector and stop switch.
    struct TestRun {
        shared: Shared,
        counters: Arc<Counters>,
        collector: Arc<Collector>,
        stop: watch::Sender<bool>,
    }

    impl TestRun {
        fn new() -> Self {
            let clock = Clock::start(Duration::ZERO);
            let counters = Arc::new(Counters::default());
            let collector = Arc::new(Collector::new(clock.t0));
            let (stop, stopped) = watch::channel(false);
            let shared = Shared {
                collector: collector.clone(),
                counters: counters.clone(),
                clock,
                last_member: None,
                foreign: None,
                run_id: "run1".into(),
                stop: stopped,
            };
            TestRun {
                shared,
                counters,
                collector,
                stop,
            }
        }
    }

    /// Device "d" with token "t", at home on the first of `gateways`.
    fn test_link(gateways: Vec<String>) -> Link {
        Link {
            gateways: gateways.into(),
            home: 0,
            token: "t".into(),
            device: "d".into(),
        }
    }

    /// `count` direct messages by user `sender`, one every `period`.
    fn direct_sends(sender: u32, period: Duration, count: u32) -> Schedule {
        Schedule {
            sender,
            offset: Duration::ZERO,
            period,
            count,
            frame: Box::new(
                |_, content| serde_json::json!({"event": "send_direct_message", "data": {"content": content}}),
            ),
        }
    }

    #[tokio::test]
    async fn a_send_is_retried_with_its_client_msg_id_until_accepted_and_counted_once() {
        let (seen, mut frames) = mpsc::unbounded_channel();
        // The home gateway answers the send `unavailable`, then drops the
        // connection on its retry and is gone; the other one accepts it.
        let home = scripted_gateway(vec![Some("unavailable"), None], seen.clone()).await;
        let other = scripted_gateway(vec![Some("message_sent")], seen).await;
        let run = TestRun::new();
        let (counters, collector, stop) = (run.counters.clone(), run.collector.clone(), run.stop);
        let schedule = direct_sends(3, Duration::from_secs(1), 1);
        let device = Device::new(
            run.shared,
            test_link(vec![home.clone(), other]),
            Uuid::nil(),
            Some(schedule),
        );
        let (socket, cursor) = client::connect(&home, "t", "d").await.unwrap();
        let task = tokio::spawn(device.run(socket, cursor));
        let mut ids = Vec::new();
        for _ in 0..3 {
            let frame = tokio::time::timeout(Duration::from_secs(10), frames.recv())
                .await
                .expect("the send goes out three times")
                .unwrap();
            assert_eq!(frame["ref"], "0");
            ids.push(frame["data"]["clientMsgId"].as_str().unwrap().to_owned());
        }
        assert_eq!(
            ids,
            vec!["run1.3.0"; 3],
            "one clientMsgId for every attempt"
        );
        let answered = tokio::time::timeout(Duration::from_secs(5), async {
            while counters.answered.load(Ordering::Relaxed) == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        answered.await.expect("the retry is answered");
        stop.send(true).unwrap();
        let log = task.await.unwrap();
        assert_eq!(log.outcomes, vec![Outcome::Accepted]);
        assert_eq!(log.sent, 1);
        assert_eq!(log.reconnects, 1);
        assert_eq!(log.retried.len(), 1, "one send, retried, counted once");
        assert_eq!(counters.attempted.load(Ordering::Relaxed), 1);
        assert_eq!(counters.accepted.load(Ordering::Relaxed), 1);
        assert_eq!(counters.retried.load(Ordering::Relaxed), 1);
        let timeline = collector.finish(60).timeline;
        let again: u64 = timeline.iter().map(|s| s.retried).sum();
        assert_eq!(again, 2, "two attempts after the first: {timeline:?}");
    }

    #[tokio::test]
    async fn a_device_leaves_at_most_its_window_of_sends_unanswered() {
        // A gateway that reads every frame and answers none.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (seen, mut frames) = mpsc::unbounded_channel::<()>();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
            let ready = r#"{"event":"ready","data":{"cursor":0}}"#;
            ws.send(Message::Text(ready.into())).await.unwrap();
            while let Some(Ok(_)) = ws.next().await {
                let _ = seen.send(());
            }
        });
        let run = TestRun::new();
        let (counters, stop) = (run.counters.clone(), run.stop);
        // All due at once, more than the window.
        let schedule = direct_sends(0, Duration::ZERO, (MAX_UNANSWERED + 100) as u32);
        let device = Device::new(
            run.shared,
            test_link(vec![url.clone()]),
            Uuid::nil(),
            Some(schedule),
        );
        let (socket, cursor) = client::connect(&url, "t", "d").await.unwrap();
        let task = tokio::spawn(device.run(socket, cursor));
        for _ in 0..MAX_UNANSWERED {
            tokio::time::timeout(Duration::from_secs(10), frames.recv())
                .await
                .expect("the window's sends go out")
                .unwrap();
        }
        // Nothing more while none is answered.
        let more = tokio::time::timeout(Duration::from_millis(500), frames.recv()).await;
        assert!(more.is_err(), "a send beyond the window went out");
        assert_eq!(
            counters.attempted.load(Ordering::Relaxed),
            MAX_UNANSWERED as u64
        );
        stop.send(true).unwrap();
        task.await.unwrap();
    }

    #[test]
    fn a_schedule_counts_the_sends_that_fall_before_its_end() {
        let ms = Duration::from_millis;
        assert_eq!(Schedule::count_within(ms(0), ms(100), ms(1000)), 10);
        assert_eq!(Schedule::count_within(ms(50), ms(100), ms(1000)), 10);
        assert_eq!(Schedule::count_within(ms(0), ms(300), ms(1000)), 4);
        assert_eq!(Schedule::count_within(ms(1000), ms(100), ms(1000)), 0);
    }

    #[test]
    fn jitter_stays_within_half_to_one_and_a_half_and_spreads() {
        let base = Duration::from_millis(1000);
        let delays: BTreeSet<Duration> =
            (0..50).map(|i| jitter(base, &format!("d{i}"), 0)).collect();
        assert!(delays.iter().all(|d| *d >= base / 2 && *d < base * 3 / 2));
        assert!(delays.len() > 40, "devices come back at different times");
    }
}
