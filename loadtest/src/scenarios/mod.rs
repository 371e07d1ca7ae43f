//! The scenarios, and what they share: a [`clock`] that maps scheduled
//! times to the timestamps carried in messages, one [`device`] task per
//! socket that behaves as a real client and keeps its log, the live
//! [`tally`] for progress and draining, and the report built from the
//! accounting and the measurements.

pub mod abuse;
pub mod clock;
pub mod connections;
pub mod device;
pub mod fanout;
pub mod steady;
pub mod storm;
pub mod tally;

pub use clock::Clock;
pub use tally::{Counters, LastMember, ReaderLog};

use crate::accounting::{DeviceLog, Sent, reconcile};
use crate::cli::Target;
use crate::client::{self, Socket};
use crate::measure::Collector;
use crate::report::{Report, Stall};
use crate::users::User;
use device::{Device, Link, Schedule};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use uuid::Uuid;

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

/// Deliveries that broke the books, described in the report.
const ANOMALIES_REPORTED: usize = 50;

/// How long draining may take in all, whatever the stall window.
pub const DRAIN_CAP: Duration = Duration::from_secs(30);

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
        let anomalies: Vec<String> = logs
            .iter()
            .flat_map(|l| l.anomalies.iter().cloned())
            .take(ANOMALIES_REPORTED)
            .collect();
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
            anomalies,
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
