//! `abuse`: does one user's abuse reach anyone else? Honest users run
//! `steady` traffic twice, at the same rate: once with natter to
//! themselves (the quiet run), then, as other honest users, while
//! abusers (the attacked run):
//!
//! - flood direct messages at `--flood-factor` times their send limit,
//!   at the honest receivers (half of the abusers);
//! - send the largest messages natter takes, made of quotes that double
//!   once escaped, into a group of `--group-size`, of which the attacked
//!   run's honest users are members (the other half);
//! - open `--connection-factor` times their connection limit (all).
//!
//! The report is the attacked run's, with the quiet run's latencies, what
//! each kind of abuse achieved (what natter accepted of it) and, given
//! `--nats-url`, what JetStream held per honest message in each run.

use crate::cli::{Abuse, Target};
use crate::client::{self, Opened, Socket};
use crate::report::Report;
use crate::scenarios::{fanout, steady};
use crate::streams::{StreamBytes, Streams};
use crate::users::{self, User};
use futures::{SinkExt, StreamExt};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

/// Every abusive message starts with this, so honest books leave it out.
const FOREIGN: &str = "ab|";
/// How often a flooding socket writes its next batch of sends.
const FLOOD_TICK: Duration = Duration::from_millis(10);
/// How often, and how long at most, the streams are read until they settle.
const SETTLE_POLL: Duration = Duration::from_millis(500);
const SETTLE_CAP: Duration = Duration::from_secs(20);
/// The largest messages start a second after the honest run's warm-up
/// (its users connect first, which takes about a second), plus a fifth of
/// its measured part, at most this.
const BIG_DELAY: Duration = Duration::from_secs(3);
/// Connections an abuser opens at once.
const CONNECT_CONCURRENCY: usize = 32;

pub async fn run(target: &Target, args: &Abuse) -> anyhow::Result<Report> {
    let pairs = (args.honest.users / 2).max(1);
    let streams = match &target.nats_url {
        Some(url) => Some(Streams::connect(url).await?),
        None => None,
    };

    let quiet_users = users::create(target, "q", pairs * 2).await?;
    let before = read_bytes(&streams).await?;
    let quiet = steady::drive(target, &quiet_users, &args.honest, "abuse-quiet", None).await?;
    let quiet_bytes = written_since(&streams, before).await?;

    let honest = users::create(target, "h", pairs * 2).await?;
    let abusers = users::create(target, "a", args.abusers.max(1)).await?;
    let group = abusers_group(target, args, &abusers, &honest).await?;
    let receivers: Vec<Uuid> = honest.iter().skip(1).step_by(2).map(|u| u.id).collect();
    let before = read_bytes(&streams).await?;
    let attack = Attack::start(target, args, &abusers, group, receivers).await?;
    let attacked = steady::drive(target, &honest, &args.honest, "abuse", Some(FOREIGN)).await;
    let tally = attack.stop().await;
    let attacked = attacked?;
    let attacked_bytes = written_since(&streams, before).await?;

    Ok(verdict(
        args,
        quiet,
        attacked,
        &tally,
        quiet_bytes,
        attacked_bytes,
    ))
}

/// The group the abusers send into: the first abuser creates it with the
/// other abusers, the attacked run's honest users and idle users up to
/// `--group-size` members.
async fn abusers_group(
    target: &Target,
    args: &Abuse,
    abusers: &[User],
    honest: &[User],
) -> anyhow::Result<Uuid> {
    let known = abusers.len() + honest.len();
    let idle = users::create(target, "i", args.group_size.saturating_sub(known)).await?;
    let members: Vec<User> = abusers
        .iter()
        .chain(honest)
        .chain(&idle)
        .take(args.group_size.max(abusers.len() + 1))
        .cloned()
        .collect();
    fanout::create_group(target, "abuse", &members).await
}

/// The streams' bytes once they stop growing (the persister has fanned
/// out what was accepted last), or after [`SETTLE_CAP`].
async fn read_bytes(streams: &Option<Streams>) -> anyhow::Result<Option<StreamBytes>> {
    let Some(streams) = streams else {
        return Ok(None);
    };
    let started = Instant::now();
    let mut last = streams.bytes().await?;
    loop {
        tokio::time::sleep(SETTLE_POLL).await;
        let now = streams.bytes().await?;
        if now == last || started.elapsed() >= SETTLE_CAP {
            return Ok(Some(now));
        }
        last = now;
    }
}

/// What the streams gained since `before`.
async fn written_since(
    streams: &Option<Streams>,
    before: Option<StreamBytes>,
) -> anyhow::Result<Option<StreamBytes>> {
    let after = read_bytes(streams).await?;
    Ok(after.zip(before).map(|(after, before)| after.since(before)))
}

/// What the abusers tried and what natter let through.
#[derive(Debug, Default)]
pub struct Tally {
    pub flood_sent: AtomicU64,
    pub flood_accepted: AtomicU64,
    pub big_sent: AtomicU64,
    pub big_accepted: AtomicU64,
    /// Answers refusing a send, by error code.
    pub refused: std::sync::Mutex<BTreeMap<String, u64>>,
    pub connections_tried: AtomicU64,
    /// Connections that got `ready`, the working ones included.
    pub connections_ready: AtomicU64,
    /// Connections closed before `ready` with 1008.
    pub connections_refused: AtomicU64,
    /// Connections that failed otherwise.
    pub connections_failed: AtomicU64,
    /// How long the attack lasted, in milliseconds.
    pub elapsed_ms: AtomicU64,
}

impl Tally {
    fn refused(&self, code: &str) {
        if let Ok(mut refused) = self.refused.lock() {
            *refused.entry(code.to_owned()).or_default() += 1;
        }
    }
}

/// The abusers at work, until stopped.
struct Attack {
    tally: Arc<Tally>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    started: Instant,
}

impl Attack {
    /// Connects every abuser's flooding and big-message sockets, starts
    /// them sending, then opens each abuser's excess connections.
    async fn start(
        target: &Target,
        args: &Abuse,
        abusers: &[User],
        group: Uuid,
        receivers: Vec<Uuid>,
    ) -> anyhow::Result<Self> {
        let tally = Arc::new(Tally::default());
        let (stop, _) = watch::channel(false);
        let mut attack = Self {
            tally,
            stop,
            tasks: Vec::new(),
            started: Instant::now(),
        };
        let receivers = Arc::new(receivers);
        let flood_rate = args.send_limit * f64::from(args.flood_factor);
        let big = format!(
            "{FOREIGN}{}",
            "\"".repeat(args.max_message_bytes.saturating_sub(FOREIGN.len()))
        );
        // Half the abusers flood, half send the largest messages: one user
        // doing both would spend its send limit on the flood, and the
        // largest messages are what costs everyone most.
        for (index, abuser) in abusers.iter().enumerate() {
            if index % 2 == 0 {
                let flood = attack.working_socket(target, abuser, Kind::Flood).await?;
                let receivers = receivers.clone();
                let frame = move |n: u64| {
                    json!({
                        "event": "send_direct_message",
                        "data": {
                            "receiverId": receivers[(n as usize + index) % receivers.len()],
                            "content": format!("{FOREIGN}{index}|{n}"),
                        },
                    })
                };
                attack.send(flood, flood_rate, Duration::ZERO, Kind::Flood, frame);
            } else {
                let sink = attack.working_socket(target, abuser, Kind::Big).await?;
                let big = big.clone();
                let frame = move |_: u64| {
                    json!({
                        "event": "send_group_message",
                        "data": {"groupId": group, "content": big},
                    })
                };
                // Into the measured part of the honest run, not its
                // warm-up: the first largest messages are what the fan-out
                // budget's burst lets through at once.
                let into_measured = Duration::from_secs(args.honest.warmup + 1)
                    + Duration::from_secs(args.honest.duration / 5).min(BIG_DELAY);
                let rate = f64::from(args.big_rate);
                attack.send(sink, rate, into_measured, Kind::Big, frame);
            }
        }
        let excess = args.connection_limit * args.connection_factor;
        for abuser in abusers {
            attack.connection_flood(target, abuser, excess.saturating_sub(1));
        }
        Ok(attack)
    }

    /// Opens one of an abuser's sending sockets and reads its answers.
    async fn working_socket(
        &mut self,
        target: &Target,
        abuser: &User,
        kind: Kind,
    ) -> anyhow::Result<futures::stream::SplitSink<Socket, Message>> {
        self.tally.connections_tried.fetch_add(1, Ordering::Relaxed);
        let (socket, _) =
            client::connect(&target.first_gateway(), &abuser.token, kind.device()).await?;
        self.tally.connections_ready.fetch_add(1, Ordering::Relaxed);
        let (sink, stream) = socket.split();
        self.tasks.push(tokio::spawn(read_answers(
            stream,
            kind,
            self.tally.clone(),
            self.stop.subscribe(),
        )));
        Ok(sink)
    }

    /// Sends `rate` frames a second on `sink` from `delay` on, in batches
    /// every [`FLOOD_TICK`], as fast as the socket takes them, until stopped.
    fn send(
        &mut self,
        mut sink: futures::stream::SplitSink<Socket, Message>,
        rate: f64,
        delay: Duration,
        kind: Kind,
        frame: impl Fn(u64) -> serde_json::Value + Send + 'static,
    ) {
        let tally = self.tally.clone();
        let mut stop = self.stop.subscribe();
        self.tasks.push(tokio::spawn(async move {
            tokio::select! {
                _ = stop.changed() => return,
                _ = tokio::time::sleep(delay) => {}
            }
            let started = Instant::now();
            let mut sent = 0u64;
            let mut tick = tokio::time::interval(FLOOD_TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tokio::select! {
                    _ = stop.changed() => break,
                    _ = tick.tick() => {}
                }
                let due = (started.elapsed().as_secs_f64() * rate) as u64;
                while sent < due {
                    let text = frame(sent).to_string();
                    if sink.feed(Message::Text(text.into())).await.is_err() {
                        return;
                    }
                    sent += 1;
                    kind.sent(&tally).fetch_add(1, Ordering::Relaxed);
                }
                if sink.flush().await.is_err() {
                    return;
                }
            }
        }));
    }

    /// Opens `count` more of an abuser's connections, a few at once, and
    /// holds the ones natter lets in until the attack stops.
    fn connection_flood(&mut self, target: &Target, abuser: &User, count: usize) {
        let gate = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
        for n in 0..count {
            let gate = gate.clone();
            let url = target.gateway(n);
            let token = abuser.token.clone();
            let tally = self.tally.clone();
            let mut stop = self.stop.subscribe();
            self.tasks.push(tokio::spawn(async move {
                let Ok(_permit) = gate.acquire_owned().await else {
                    return;
                };
                tally.connections_tried.fetch_add(1, Ordering::Relaxed);
                match client::open(&url, &token, &format!("extra-{n}")).await {
                    Ok(Opened::Ready(socket, _)) => {
                        tally.connections_ready.fetch_add(1, Ordering::Relaxed);
                        drop(_permit);
                        // Read (pings, deliveries) so natter keeps it.
                        let mut socket = socket;
                        loop {
                            tokio::select! {
                                _ = stop.changed() => break,
                                frame = socket.next() => if frame.is_none() { break },
                            }
                        }
                    }
                    Ok(Opened::Closed {
                        code: Some(1008), ..
                    }) => {
                        tally.connections_refused.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Opened::Closed { .. }) | Err(_) => {
                        tally.connections_failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
    }

    async fn stop(self) -> Arc<Tally> {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
        self.tally
            .elapsed_ms
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
        self.tally
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Flood,
    Big,
}

impl Kind {
    /// The device name of the abuser's socket for this kind of send.
    fn device(self) -> &'static str {
        match self {
            Self::Flood => "flood",
            Self::Big => "big",
        }
    }

    fn sent(self, tally: &Tally) -> &AtomicU64 {
        match self {
            Self::Flood => &tally.flood_sent,
            Self::Big => &tally.big_sent,
        }
    }

    fn accepted(self, tally: &Tally) -> &AtomicU64 {
        match self {
            Self::Flood => &tally.flood_accepted,
            Self::Big => &tally.big_accepted,
        }
    }
}

/// Reads an abuser's sending socket of `kind`: counts what natter accepted
/// and refused (by code), until stopped.
async fn read_answers(
    mut stream: futures::stream::SplitStream<Socket>,
    kind: Kind,
    tally: Arc<Tally>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let frame = tokio::select! {
            _ = stop.changed() => break,
            frame = stream.next() => frame,
        };
        let Some(Ok(frame)) = frame else { break };
        let Message::Text(text) = frame else { continue };
        match client::parse(text.as_str()) {
            client::Incoming::Sent { .. } => {
                kind.accepted(&tally).fetch_add(1, Ordering::Relaxed);
            }
            client::Incoming::Refused { code, .. } => tally.refused(&code),
            _ => {}
        }
    }
}

/// The attacked run's report, with the quiet run and the attack beside it.
fn verdict(
    args: &Abuse,
    quiet: Report,
    mut report: Report,
    tally: &Tally,
    quiet_bytes: Option<StreamBytes>,
    attacked_bytes: Option<StreamBytes>,
) -> Report {
    let seconds = tally.elapsed_ms.load(Ordering::Relaxed) as f64 / 1000.0;
    let load = |n: &AtomicU64| n.load(Ordering::Relaxed) as f64;
    let mut extra = BTreeMap::new();
    if let (Some(q), Some(a)) = (&quiet.delivery_latency, &report.delivery_latency) {
        extra.insert("quiet_delivery_p50_ms".into(), q.p50_ms);
        extra.insert("quiet_delivery_p99_ms".into(), q.p99_ms);
        extra.insert("quiet_delivery_p999_ms".into(), q.p999_ms);
        extra.insert("delivery_p99_ratio".into(), a.p99_ms / q.p99_ms.max(1e-3));
    }
    for (name, bytes, run) in [
        ("quiet", quiet_bytes, &quiet),
        ("attacked", attacked_bytes, &report),
    ] {
        if let Some(bytes) = bytes {
            let honest = run.accounting.accepted.max(1) as f64;
            extra.insert(
                format!("{name}_jetstream_bytes_per_honest_msg"),
                bytes.total() as f64 / honest,
            );
        }
    }
    extra.insert("attack_s".into(), seconds);
    extra.insert(
        "flood_sent_per_s".into(),
        load(&tally.flood_sent) / seconds.max(1e-3),
    );
    extra.insert(
        "flood_accepted_per_s".into(),
        load(&tally.flood_accepted) / seconds.max(1e-3),
    );
    extra.insert("big_sent".into(), load(&tally.big_sent));
    extra.insert("big_accepted".into(), load(&tally.big_accepted));
    extra.insert("connections_tried".into(), load(&tally.connections_tried));
    extra.insert("connections_ready".into(), load(&tally.connections_ready));
    extra.insert(
        "connections_refused".into(),
        load(&tally.connections_refused),
    );
    extra.insert("connections_failed".into(), load(&tally.connections_failed));
    if let Ok(refused) = tally.refused.lock() {
        for (code, count) in refused.iter() {
            extra.insert(format!("refused_{code}"), *count as f64);
        }
    }
    report
        .problems
        .extend(problems(args, &quiet, &report, tally));
    report.extra.extend(extra);
    report.scenario = "abuse".into();
    report.parameters.extend(
        [
            ("abusers", json!(args.abusers)),
            ("flood_factor", json!(args.flood_factor)),
            ("connection_factor", json!(args.connection_factor)),
            ("group_size", json!(args.group_size)),
            ("big_rate", json!(args.big_rate)),
            ("send_limit", json!(args.send_limit)),
            ("connection_limit", json!(args.connection_limit)),
            ("max_message_bytes", json!(args.max_message_bytes)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v)),
    );
    report
}

/// What makes the run wrong: anything wrong with either honest run, an
/// honest send refused, or an abuser getting past a limit.
fn problems(args: &Abuse, quiet: &Report, attacked: &Report, tally: &Tally) -> Vec<String> {
    let seconds = tally.elapsed_ms.load(Ordering::Relaxed) as f64 / 1000.0;
    let mut problems: Vec<String> = quiet
        .problems
        .iter()
        .map(|p| format!("quiet run: {p}"))
        .collect();
    for (name, run) in [("quiet", quiet), ("attacked", attacked)] {
        if run.accounting.refused > 0 {
            problems.push(format!(
                "{} honest sends REFUSED in the {name} run",
                run.accounting.refused
            ));
        }
    }
    let ready = tally.connections_ready.load(Ordering::Relaxed) as usize;
    let cap = args.connection_limit * args.abusers.max(1);
    if ready > cap {
        problems.push(format!(
            "abusers held {ready} connections, over their cap of {cap} in all"
        ));
    }
    let allowed = args.send_limit * (seconds + 2.0) * args.abusers.max(1) as f64 * 1.1;
    let accepted = (tally.flood_accepted.load(Ordering::Relaxed)
        + tally.big_accepted.load(Ordering::Relaxed)) as f64;
    if accepted > allowed {
        problems.push(format!(
            "abusers got {accepted} sends accepted in {seconds:.1} s, over their limit \
             ({allowed:.0} with bursts)"
        ));
    }
    problems
}
