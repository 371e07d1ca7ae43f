//! The scenarios, and what they share: a clock that maps scheduled times to
//! the timestamps carried in messages, one reader task per socket that
//! keeps a device's log, live counters for progress and draining, and the
//! report built from the accounting and the measurements.

pub mod abuse;
pub mod connections;
pub mod device;
pub mod fanout;
pub mod steady;
pub mod storm;

use crate::accounting::{DeviceLog, MessageKey, Outcome, Sent, reconcile};
use crate::cli::Target;
use crate::client::{self, Socket};
use crate::measure::Collector;
use crate::report::{Report, Stall};
use crate::users::User;
use device::{Device, Link, Schedule};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use uuid::Uuid;

/// The run's time origin, as an `Instant` and as Unix microseconds, so a
/// timestamp written into a message maps back to an `Instant`.
#[derive(Clone, Debug)]
pub struct Clock {
    pub t0: Instant,
    unix0_us: i64,
}

impl Clock {
    /// A clock whose origin is `delay` from now (time to get going).
    pub fn start(delay: Duration) -> Self {
        Self {
            t0: Instant::now() + delay,
            unix0_us: chrono::Utc::now().timestamp_micros() + delay.as_micros() as i64,
        }
    }

    pub fn unix_us(&self, at: Instant) -> i64 {
        match at.checked_duration_since(self.t0) {
            Some(after) => self.unix0_us + after.as_micros() as i64,
            None => self.unix0_us - self.t0.duration_since(at).as_micros() as i64,
        }
    }

    pub fn instant(&self, unix_us: i64) -> Instant {
        let delta = unix_us - self.unix0_us;
        if delta >= 0 {
            self.t0 + Duration::from_micros(delta as u64)
        } else {
            self.t0
                .checked_sub(Duration::from_micros(delta.unsigned_abs()))
                .unwrap_or(self.t0)
        }
    }
}

/// How waiting for the last answers and deliveries ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drained {
    /// Everything owed arrived.
    Complete,
    /// Nothing arrived for the stall window: what is missing is lost.
    Stalled,
    /// Deliveries were still arriving at the cap: what is missing is late.
    StillMoving,
}

/// How long draining may take in all, whatever the stall window.
pub const DRAIN_CAP: Duration = Duration::from_secs(30);

/// Live totals, for progress and for knowing when a run has drained.
#[derive(Debug, Default)]
pub struct Counters {
    pub attempted: AtomicU64,
    pub answered: AtomicU64,
    pub accepted: AtomicU64,
    /// First receipts of owed messages.
    pub delivered: AtomicU64,
    /// Deliveries of another party's traffic (see [`Run::foreign`]), not
    /// counted in the books.
    pub foreign: AtomicU64,
    /// Sends that went out more than once (see [`device`]).
    pub retried: AtomicU64,
    /// Connections made again after one dropped.
    pub reconnects: AtomicU64,
}

/// What one socket's reader saw.
#[derive(Debug, Default)]
pub struct ReaderLog {
    pub device: DeviceLog,
    /// For a sending socket: the outcome of each send, by number.
    pub outcomes: Vec<Outcome>,
    /// The last cursor delivered to this socket.
    pub cursor: u64,
    /// For a sending socket: how many sends went out (retries not counted).
    pub sent: u32,
    /// The sends that went out more than once.
    pub retried: std::collections::HashSet<u32>,
    /// How many times the device connected again.
    pub reconnects: u64,
}

/// Per message, how many members still wait for it; when the last one
/// has it, the latency to the last member is recorded.
pub struct LastMember {
    waiting: std::sync::Mutex<std::collections::HashMap<MessageKey, u32>>,
    members: u32,
    latency: std::sync::Mutex<hdrhistogram::Histogram<u64>>,
}

impl LastMember {
    pub fn new(members: u32) -> Self {
        Self {
            waiting: std::sync::Mutex::new(std::collections::HashMap::new()),
            members,
            latency: std::sync::Mutex::new(crate::measure::micros()),
        }
    }

    fn arrived(&self, key: MessageKey, latency: Duration) {
        let Ok(mut waiting) = self.waiting.lock() else {
            return;
        };
        let left = waiting.entry(key).or_insert(self.members);
        *left = left.saturating_sub(1);
        if *left == 0 {
            waiting.remove(&key);
            if let Ok(mut h) = self.latency.lock() {
                h.saturating_record(latency.as_micros() as u64);
            }
        }
    }

    pub fn summary(&self) -> Option<crate::report::LatencySummary> {
        self.latency
            .lock()
            .ok()
            .and_then(|h| crate::measure::summary(&h))
    }
}

/// A run in progress.
pub struct Run {
    pub collector: Arc<Collector>,
    pub counters: Arc<Counters>,
    /// Set by `fanout`: latency to the last member of a group.
    pub last_member: Option<Arc<LastMember>>,
    /// Set by `abuse`: deliveries whose content starts with this are
    /// another party's traffic, counted apart and left out of the books.
    pub foreign: Option<&'static str>,
    pub clock: Clock,
    scenario: &'static str,
    started_at: String,
    /// Unique to the run: the prefix of its `clientMsgId`s.
    id: String,
    stop: watch::Sender<bool>,
    progress: Option<JoinHandle<()>>,
}

impl Run {
    pub fn new(target: &Target, clock: &Clock, warmup: u64, scenario: &'static str) -> Self {
        let counters = Arc::new(Counters::default());
        let (stop, _) = watch::channel(false);
        let progress = (!target.quiet).then(|| {
            let counters = counters.clone();
            let mut stopped = stop.subscribe();
            tokio::spawn(async move {
                let bar = indicatif::ProgressBar::new_spinner();
                bar.enable_steady_tick(Duration::from_millis(200));
                loop {
                    bar.set_message(format!(
                        "{scenario}: sent {} accepted {} delivered {}",
                        counters.attempted.load(Ordering::Relaxed),
                        counters.accepted.load(Ordering::Relaxed),
                        counters.delivered.load(Ordering::Relaxed),
                    ));
                    tokio::select! {
                        _ = stopped.changed() => break,
                        _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                    }
                }
                bar.finish_and_clear();
            })
        });
        Self {
            collector: Arc::new(Collector::new(clock.t0 + Duration::from_secs(warmup))),
            counters,
            last_member: None,
            foreign: None,
            clock: clock.clone(),
            scenario,
            started_at: chrono::Utc::now().to_rfc3339(),
            id: Uuid::new_v4().simple().to_string()[..12].to_owned(),
            stop,
            progress,
        }
    }

    /// Starts a device on `socket` (ready at `cursor`): it reads, sends on
    /// `schedule` if given, acks and reconnects until the run stops. `me`
    /// is the device's user (its own messages coming back for its other
    /// devices are not counted).
    pub fn device(
        &self,
        link: Link,
        (socket, cursor): (Socket, u64),
        me: Uuid,
        schedule: Option<Schedule>,
    ) -> JoinHandle<ReaderLog> {
        let shared = device::Shared {
            collector: self.collector.clone(),
            counters: self.counters.clone(),
            clock: self.clock.clone(),
            last_member: self.last_member.clone(),
            foreign: self.foreign,
            run_id: self.id.clone(),
            stop: self.stop.subscribe(),
        };
        tokio::spawn(Device::new(shared, link, me, schedule).run(socket, cursor))
    }

    /// Waits until every send is answered and every owed delivery arrived
    /// (`owed_per_accept` devices per accepted send). Gives up when nothing
    /// new arrived for `stall`, or after `cap` in all. Returns how it ended,
    /// which tells a lost message (nothing moves any more) from a late one.
    pub async fn drain(&self, owed_per_accept: u64, stall: Duration, cap: Duration) -> Drained {
        let started = Instant::now();
        let mut last_progress = Instant::now();
        let mut seen = (0, 0);
        loop {
            let c = &self.counters;
            let answered = c.answered.load(Ordering::Relaxed);
            let delivered = c.delivered.load(Ordering::Relaxed);
            if answered >= c.attempted.load(Ordering::Relaxed)
                && delivered >= c.accepted.load(Ordering::Relaxed) * owed_per_accept
            {
                return Drained::Complete;
            }
            if (answered, delivered) != seen {
                seen = (answered, delivered);
                last_progress = Instant::now();
            }
            if last_progress.elapsed() >= stall {
                return Drained::Stalled;
            }
            if started.elapsed() >= cap {
                return Drained::StillMoving;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the readers and collects their logs, in socket order.
    pub async fn stop(
        &mut self,
        readers: Vec<JoinHandle<ReaderLog>>,
    ) -> anyhow::Result<Vec<ReaderLog>> {
        let _ = self.stop.send(true);
        if let Some(progress) = self.progress.take() {
            let _ = progress.await;
        }
        let mut logs = Vec::with_capacity(readers.len());
        for reader in readers {
            logs.push(reader.await?);
        }
        Ok(logs)
    }

    /// The report: accounting over the whole run, rates and latencies over
    /// the measured `seconds`.
    pub fn report(
        &self,
        sends: &[Sent],
        logs: Vec<ReaderLog>,
        seconds: u64,
        drained: Drained,
    ) -> Report {
        let devices: Vec<DeviceLog> = logs.into_iter().map(|l| l.device).collect();
        let mut accounting = reconcile(sends, &devices);
        if drained == Drained::StillMoving {
            accounting.late = accounting.lost;
            accounting.lost = 0;
        }
        let measured = self.collector.finish(seconds);
        let per_s = |n: u64| n as f64 / seconds.max(1) as f64;
        let mut extra = std::collections::BTreeMap::new();
        if self.foreign.is_some() {
            let foreign = self.counters.foreign.load(Ordering::Relaxed);
            extra.insert("foreign_deliveries".to_owned(), foreign as f64);
        }
        for (name, counter) in [
            ("retried_sends", &self.counters.retried),
            ("reconnects", &self.counters.reconnects),
        ] {
            extra.insert(name.to_owned(), counter.load(Ordering::Relaxed) as f64);
        }
        let unix_ms = |at: Instant| self.clock.unix_us(at) / 1000;
        let stalls = measured
            .stalls
            .iter()
            .map(|stall| Stall {
                kind: stall.kind.to_owned(),
                from_unix_ms: unix_ms(stall.from),
                to_unix_ms: unix_ms(stall.to),
            })
            .collect();
        Report {
            scenario: self.scenario.to_owned(),
            started_at: self.started_at.clone(),
            duration_s: seconds as f64,
            problems: accounting.problems(),
            accounting,
            sent_per_s: per_s(measured.sent),
            accepted_per_s: per_s(measured.accepted),
            delivered_per_s: per_s(measured.delivered),
            accept_latency: measured.accept,
            delivery_latency: measured.delivery,
            delivery_histogram: measured.histogram,
            timeline: measured.timeline,
            t0_unix_ms: Some(unix_ms(self.collector.from())),
            stalls,
            extra,
            ..Report::default()
        }
    }
}

/// Where user `index`'s device `device` connects: its gateway first (see
/// [`Target::gateway`]), the others when that one fails.
pub fn link(target: &Target, index: usize, user: &User, device: &str) -> Link {
    let gateways: Vec<String> = target.urls().into_iter().map(str::to_owned).collect();
    Link {
        home: index % gateways.len().max(1),
        gateways: gateways.into(),
        token: user.token.clone(),
        device: device.to_owned(),
    }
}

/// Connects every user's device `device`, at most `concurrency` at once,
/// each user to its gateway (see [`Target::gateway`]); returns the sockets
/// with their cursors, in user order.
pub async fn connect_all(
    target: &Target,
    users: &[User],
    device: &str,
    concurrency: usize,
) -> anyhow::Result<Vec<(Socket, u64)>> {
    let gate = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut tasks = Vec::with_capacity(users.len());
    for (index, user) in users.iter().enumerate() {
        let gate = gate.clone();
        let url = target.gateway(index);
        let token = user.token.clone();
        let device = device.to_owned();
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await?;
            client::connect(&url, &token, &device).await
        }));
    }
    let mut sockets = Vec::with_capacity(tasks.len());
    for task in tasks {
        sockets.push(task.await??);
    }
    Ok(sockets)
}
