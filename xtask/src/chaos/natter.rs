//! The natter that `chaos` breaks: three clustered nats-servers (R3 streams), PostgreSQL, two
//! persisters (a leader and a hot standby) and two gateways; the faults done and undone on
//! it, and what exited without being told to.

use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use natter_localinfra::{
    Fsync, NatsCluster, NodePlacement, Postgres, PostgresOptions, Signal, http_body, http_status,
    http_status_at, send_signal, try_free_port,
};

use super::netns::Partition;
use super::schedule::{Fault, NODES, PAIR};
use crate::service::Service;
use crate::signals::Stop;
use crate::step::banner;

const DATABASE: &str = "natter";
/// A cold persister creates the streams and runs migrations before it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const SERVICE_GRACE: Duration = Duration::from_secs(10);
const KILL_TIMEOUT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(100);
const GATEWAY_NAMES: [&str; PAIR] = ["natter-gateway g0", "natter-gateway g1"];
const PERSISTER_NAMES: [&str; PAIR] = ["natter-persister p0", "natter-persister p1"];

/// One of our services, restartable on the same port with the same environment.
struct Slot {
    name: &'static str,
    binary: PathBuf,
    port: u16,
    env: Vec<(String, String)>,
    log: PathBuf,
    /// `None` while down: killed by a fault, or crashed and not yet restarted.
    service: Option<Service>,
}

impl Slot {
    fn spawn(&mut self) -> anyhow::Result<()> {
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(key, value)| (key.as_str(), value.as_str()))
            .collect();
        self.service = Some(Service::spawn_logged(
            self.name,
            &self.binary,
            self.port,
            &env,
            &self.log,
        )?);
        Ok(())
    }

    /// SIGKILL, and wait until it is reaped.
    fn kill(&mut self) -> anyhow::Result<()> {
        let Some(mut service) = self.service.take() else {
            return Ok(());
        };
        send_signal(service.pid(), Signal::Kill)?;
        let deadline = Instant::now() + KILL_TIMEOUT;
        while service.exited()?.is_none() {
            if Instant::now() >= deadline {
                bail!("{} did not die of SIGKILL", self.name);
            }
            thread::sleep(POLL);
        }
        Ok(())
    }

    fn wait_ready(&mut self, stop: &Stop) -> anyhow::Result<bool> {
        match self.service.as_mut() {
            Some(service) => service.wait_ready(READY_TIMEOUT, stop),
            None => Ok(false),
        }
    }
}

/// Everything started, stopped in order by [`Natter::stop_all`] and killed on drop (fields
/// drop in order: the services, the servers, then the namespace the servers ran in).
#[derive(Default)]
pub struct Natter {
    gateways: Vec<Slot>,
    persisters: Vec<Slot>,
    nats: Option<NatsCluster>,
    postgres: Option<Postgres>,
    partition: Option<Partition>,
    /// The nodes a fault has down (killed) or paused.
    nats_down: [bool; NODES],
    paused: [bool; NODES],
    postgres_down: bool,
    /// What exited, or failed, without a fault asking for it.
    pub crashes: Vec<String>,
    /// What the verdict should say besides.
    pub notes: Vec<String>,
    pub database_url: String,
    pub jwt_secret: String,
}

impl Natter {
    /// Whether the partition fault can run.
    pub fn can_partition(&self) -> bool {
        self.partition.is_some()
    }

    /// `--url` for the load test: every gateway.
    pub fn gateway_urls(&self) -> String {
        self.gateways
            .iter()
            .map(|slot| format!("http://127.0.0.1:{}", slot.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn persister_ports(&self) -> Vec<u16> {
        self.persisters.iter().map(|slot| slot.port).collect()
    }

    /// PostgreSQL, then the cluster; the gateways right after the cluster answers and before
    /// it has a meta leader (a gateway must survive that), then the persisters. `Ok(false)`
    /// on a stop request.
    pub fn start(
        &mut self,
        data: &Path,
        bin_dir: &Path,
        partition: Option<Partition>,
        stop: &Stop,
    ) -> anyhow::Result<bool> {
        banner(&format!(
            "starting PostgreSQL (data in {})",
            data.join("pg").display()
        ));
        let postgres = self.postgres.insert(Postgres::start(PostgresOptions {
            data_dir: data.join("pg"),
            port: None,
        })?);
        postgres.ensure_database(DATABASE)?;
        self.database_url = postgres.url(DATABASE);
        self.jwt_secret = crate::stack::random_secret()?;

        // A terminal's Ctrl-C then reaches only xtask, which stops the services before NATS.
        let loopback = NodePlacement {
            own_process_group: true,
            ..NodePlacement::default()
        };
        let placements = partition
            .as_ref()
            .map_or_else(|| vec![loopback; NODES], Partition::placements);
        self.partition = partition;
        banner(&format!(
            "starting 3 clustered nats-servers ({})",
            placements
                .iter()
                .map(|p| p.host.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
        self.nats = Some(NatsCluster::start_placed(
            &data.join("nats"),
            &placements,
            Fsync::Interval,
        )?);
        let mut taken = Vec::new();
        let gateway = ("natter-gateway", "PORT");
        self.gateways = self.slots(gateway, &GATEWAY_NAMES, (bin_dir, data), &mut taken)?;
        let persister = ("natter-persister", "PERSISTER_PORT");
        self.persisters = self.slots(persister, &PERSISTER_NAMES, (bin_dir, data), &mut taken)?;
        for slot in &mut self.gateways {
            slot.spawn()?;
        }
        banner("gateways started; waiting for the JetStream meta leader");
        self.nats
            .as_ref()
            .context("the cluster is gone")?
            .wait_for_meta_leader()?;
        self.start_services(stop)
    }

    /// The persisters, then every service ready; a gateway that exited while the cluster
    /// elected its leader is a crash, restarted so the run goes on.
    fn start_services(&mut self, stop: &Stop) -> anyhow::Result<bool> {
        for slot in &mut self.persisters {
            banner(&format!("starting {} on port {}", slot.name, slot.port));
            slot.spawn()?;
        }
        for slot in &mut self.persisters {
            if !slot.wait_ready(stop)? {
                return Ok(false);
            }
        }
        let crashes_before = self.crashes.len();
        for slot in &mut self.gateways {
            let exited = match slot.service.as_mut() {
                Some(service) => service.exited()?,
                None => None,
            };
            if let Some(status) = exited {
                self.crashes.push(format!(
                    "{} exited at start, while the cluster elected its JetStream meta leader \
                     ({status}; see {})",
                    slot.name,
                    slot.log.display()
                ));
                slot.spawn()?;
            }
            if !slot.wait_ready(stop)? {
                return Ok(false);
            }
        }
        if self.crashes.len() == crashes_before {
            self.notes.push(
                "both gateways, started before the cluster had a JetStream meta leader, \
                 stayed up"
                    .to_owned(),
            );
        }
        Ok(true)
    }

    /// The services of one binary on free ports (none in `taken`, each then added to it),
    /// with everything `bench` gives them and R3 streams.
    fn slots(
        &self,
        (binary, port_variable): (&str, &str),
        names: &[&'static str],
        (bin_dir, data): (&Path, &Path),
        taken: &mut Vec<u16>,
    ) -> anyhow::Result<Vec<Slot>> {
        let nats_url = self
            .nats
            .as_ref()
            .map(NatsCluster::urls)
            .unwrap_or_default();
        let mut slots = Vec::new();
        for name in names {
            let port = loop {
                let port = try_free_port()?;
                if !taken.contains(&port) {
                    break port;
                }
            };
            taken.push(port);
            let port_text = port.to_string();
            let env: Vec<(&str, &str)> = [
                ("NATS_URL", nats_url.as_str()),
                ("DATABASE_URL", &self.database_url),
                ("JWT_SECRET", &self.jwt_secret),
                ("STREAM_REPLICAS", "3"),
                (port_variable, &port_text),
                ("BIND_ADDRESS", "127.0.0.1"),
                ("RUST_LOG", "warn"),
            ]
            .into_iter()
            .chain(crate::stack::LIFTED_LIMITS)
            .collect();
            slots.push(Slot {
                name,
                binary: bin_dir.join(binary),
                port,
                env: env
                    .iter()
                    .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
                    .collect(),
                log: data.join(format!("{}.log", name.replace(' ', "-"))),
                service: None,
            });
        }
        Ok(slots)
    }
}

impl Natter {
    fn cluster(&mut self) -> anyhow::Result<&mut NatsCluster> {
        self.nats
            .as_mut()
            .context("the NATS cluster is not running")
    }

    /// Does `fault`; what it did, in words.
    pub fn inject(&mut self, fault: Fault) -> anyhow::Result<String> {
        match fault {
            Fault::KillNats(i) => {
                self.nats_down[i] = true;
                self.cluster()?.node_mut(i).kill()?;
            }
            Fault::PauseNats(i) => {
                let pid = self.cluster()?.nodes()[i].pid();
                self.paused[i] = true;
                send_signal(pid, Signal::Stop)?;
            }
            Fault::KillLeaderPersister => {
                let leader = self.leader_persister();
                let slot = &mut self.persisters[leader.unwrap_or(0)];
                slot.kill()?;
                return Ok(match leader {
                    Some(_) => format!("{fault} ({})", slot.name),
                    None => format!("{fault} ({}: no persister said it led)", slot.name),
                });
            }
            Fault::KillGateway(i) => self.gateways[i].kill()?,
            Fault::KillPostgres => {
                self.postgres_down = true;
                self.postgres
                    .as_mut()
                    .context("PostgreSQL is gone")?
                    .kill()?;
            }
            Fault::PartitionNats(_) => {
                self.partition.as_ref().context("no partition")?.cut()?;
            }
        }
        Ok(fault.to_string())
    }

    /// Undoes `fault`: restarts what it killed (ready before this returns), resumes what it
    /// paused, heals what it cut.
    pub fn undo(&mut self, fault: Fault, stop: &Stop) -> anyhow::Result<()> {
        match fault {
            Fault::KillNats(i) => {
                self.cluster()?.node_mut(i).restart()?;
                self.nats_down[i] = false;
            }
            Fault::PauseNats(i) => {
                let pid = self.cluster()?.nodes()[i].pid();
                send_signal(pid, Signal::Cont)?;
                self.paused[i] = false;
            }
            Fault::KillLeaderPersister => {
                for slot in self.persisters.iter_mut().filter(|s| s.service.is_none()) {
                    slot.spawn()?;
                    slot.wait_ready(stop)?;
                }
            }
            Fault::KillGateway(i) => {
                self.gateways[i].spawn()?;
                self.gateways[i].wait_ready(stop)?;
            }
            Fault::KillPostgres => {
                self.postgres
                    .as_mut()
                    .context("PostgreSQL is gone")?
                    .restart()?;
                self.postgres_down = false;
            }
            Fault::PartitionNats(_) => {
                self.partition.as_ref().context("no partition")?.heal()?;
            }
        }
        Ok(())
    }

    /// The persister whose `/metrics` says it holds the leader lock.
    fn leader_persister(&self) -> Option<usize> {
        self.persisters.iter().position(|slot| {
            http_body(slot.port, "/metrics").is_ok_and(|text| {
                crate::bench::gauge(&text, "natter_persister_leader") == Some(1.0)
            })
        })
    }

    /// Waits, at most `timeout`, until every node says it is healthy (JetStream current) and
    /// every service is ready: the next fault then starts from a whole cluster.
    pub fn wait_healthy(&mut self, timeout: Duration, stop: &Stop) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline && !stop.requested() {
            let nodes_healthy = self.nats.as_ref().is_some_and(|nats| {
                nats.nodes().iter().all(|node| {
                    matches!(
                        http_status_at(node.host(), node.monitor_port(), "/healthz"),
                        Ok(200)
                    )
                })
            });
            let services_ready = self
                .gateways
                .iter()
                .chain(&self.persisters)
                .all(|slot| matches!(http_status(slot.port, "/readyz"), Ok(200)));
            if nodes_healthy && services_ready {
                return true;
            }
            thread::sleep(POLL);
        }
        false
    }

    /// Waits, at most `timeout`, until the gateways both accept sends and deliver messages
    /// within one second: the load has recovered, not just the processes.
    pub fn wait_flowing(&mut self, timeout: Duration, stop: &Stop) -> bool {
        let deadline = Instant::now() + timeout;
        let mut before = self.gateway_counts();
        while Instant::now() < deadline && !stop.requested() {
            thread::sleep(Duration::from_secs(1));
            let now = self.gateway_counts();
            // Per gateway, so a restarted one (its counters from 0) adds nothing negative.
            let grew = |pick: fn(&(f64, f64)) -> f64| {
                before
                    .iter()
                    .zip(&now)
                    .any(|(was, is)| pick(is) > pick(was))
            };
            if grew(|counts| counts.0) && grew(|counts| counts.1) {
                return true;
            }
            before = now;
        }
        false
    }

    /// Each gateway's messages accepted and deliveries pushed so far (0 when unreadable).
    fn gateway_counts(&self) -> Vec<(f64, f64)> {
        self.gateways
            .iter()
            .map(|slot| {
                http_body(slot.port, "/metrics").map_or((0.0, 0.0), |text| {
                    (
                        crate::bench::sum(&text, "natter_messages_accepted_total"),
                        crate::bench::sum(&text, "natter_delivery_latency_seconds_count"),
                    )
                })
            })
            .collect()
    }

    /// Records what exited without a fault asking, and restarts it so the run goes on.
    pub fn check_crashes(&mut self) -> anyhow::Result<()> {
        for slot in self.gateways.iter_mut().chain(self.persisters.iter_mut()) {
            let exited = match slot.service.as_mut() {
                Some(service) => service.exited()?,
                None => None,
            };
            if let Some(status) = exited {
                self.crashes.push(format!(
                    "{} exited by itself ({status}; see {})",
                    slot.name,
                    slot.log.display()
                ));
                slot.spawn()?;
            }
        }
        let down = self.nats_down;
        if let Some(nats) = self.nats.as_mut() {
            for i in (0..NODES).filter(|i| !down[*i]) {
                let node = nats.node_mut(i);
                if !node.is_running() {
                    self.crashes.push(format!(
                        "nats n{i} exited by itself (see {})",
                        node.log_path().display()
                    ));
                    node.restart()?;
                }
            }
        }
        if let Some(postgres) = self.postgres.as_mut()
            && !self.postgres_down
            && postgres.pid().is_none()
        {
            self.crashes.push(format!(
                "PostgreSQL exited by itself (see {})",
                postgres.log_path().display()
            ));
            postgres.restart()?;
        }
        Ok(())
    }
}

impl Natter {
    /// Resumes and reconnects what a fault left broken, then stops the gateways (they drain
    /// their sockets), the persisters, the nodes, PostgreSQL, and removes the namespace.
    /// `false` if anything failed to stop.
    pub fn stop_all(&mut self) -> bool {
        let mut clean = true;
        let mut failed = |what: &str, error: &dyn std::fmt::Display| {
            eprintln!("error stopping {what}: {error:#}");
            clean = false;
        };
        if let Some(nats) = self.nats.as_ref() {
            for (node, _) in nats.nodes().iter().zip(self.paused).filter(|(_, p)| *p) {
                // A paused process never handles the SIGTERM that stops it.
                if let Err(error) = send_signal(node.pid(), Signal::Cont) {
                    failed("a paused nats-server", &error);
                }
            }
        }
        if let Some(partition) = self.partition.as_ref()
            && let Err(error) = partition.heal()
        {
            failed("the partition", &error);
        }
        for slot in self.gateways.iter_mut().chain(self.persisters.iter_mut()) {
            if let Some(mut service) = slot.service.take() {
                banner(&format!("stopping {}", slot.name));
                if let Err(error) = service.stop(SERVICE_GRACE) {
                    failed(slot.name, &error);
                }
            }
        }
        if let Some(mut nats) = self.nats.take() {
            banner("stopping the nats-servers");
            for i in 0..NODES {
                if let Err(error) = nats.node_mut(i).stop() {
                    failed(&format!("nats n{i}"), &error);
                }
            }
        }
        if let Some(mut postgres) = self.postgres.take() {
            banner("stopping PostgreSQL");
            if let Err(error) = postgres.stop() {
                failed("PostgreSQL", &error);
            }
        }
        self.partition = None;
        clean
    }
}
