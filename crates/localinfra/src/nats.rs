//! A nats-server with JetStream on a loopback port, its store and log under a caller's
//! directory, started and stopped by pid. A cluster's nodes may instead listen on another
//! local address and start through a command prefix (`ip netns exec <ns>`), so a fault
//! injector can cut one off from the others.

use std::fmt;
use std::fs::{self, File};
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::thread;
use std::time::{Duration, Instant};

use crate::error::{InfraError, IoContext, Result};
use crate::probe::{free_port, http_body_at, http_status_at, port_is_free, tcp_accepts_at};
use crate::process::{
    Group, POLL, Watchdog, kill_child, log_len, log_tail, sh_quote, terminate_child,
};
use crate::tools::nats_server_binary;

const START_TIMEOUT: Duration = Duration::from_secs(15);
const STOP_GRACE: Duration = Duration::from_secs(10);
/// Tries with a fresh port when another process grabbed the free one first.
const START_ATTEMPTS: usize = 3;
const LOG_TAIL_LINES: usize = 30;

/// When JetStream fsyncs its files.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Fsync {
    /// The server's default: fsync every couple of minutes, so a machine crash may lose the
    /// last writes (a process crash does not).
    #[default]
    Interval,
    /// `sync_interval: always`: fsync every write; durable across power loss, ~50x slower.
    Always,
}

impl FromStr for Fsync {
    type Err = InfraError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "interval" => Ok(Self::Interval),
            "always" => Ok(Self::Always),
            other => Err(InfraError::InvalidFsync(other.to_owned())),
        }
    }
}

impl fmt::Display for Fsync {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Interval => "interval",
            Self::Always => "always",
        })
    }
}

/// How to start a [`NatsServer`].
#[derive(Clone, Debug)]
pub struct NatsOptions {
    /// Holds the config file, the JetStream store (`js/`) and `nats.log`; created if missing.
    pub data_dir: PathBuf,
    /// The client port; `None` picks a free one.
    pub port: Option<u16>,
    pub fsync: Fsync,
    /// The node's place in a cluster; `None` for a server of its own.
    pub cluster: Option<ClusterNode>,
}

/// A node's place in a cluster of nats-servers on loopback routes.
#[derive(Clone, Debug)]
pub struct ClusterNode {
    /// The cluster's name, the same on every node.
    pub cluster_name: String,
    /// This node's name (JetStream needs one per node).
    pub server_name: String,
    /// The port this node's routes listen on.
    pub route_port: u16,
    /// Every node's route port, this one's included.
    pub routes: Vec<u16>,
}

/// Where a cluster node listens and how its process starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodePlacement {
    /// The address its client, route and monitoring listeners bind to: a local address of
    /// this host, or one reachable from it (a network namespace's end of a veth pair).
    pub host: Ipv4Addr,
    /// Words run before nats-server, e.g. `["ip", "netns", "exec", "<ns>"]`; the prefix must
    /// exec nats-server, so the child's pid stays the server's.
    pub prefix: Vec<String>,
    /// In a process group of its own, as [`NatsServer::start_in_own_process_group`].
    pub own_process_group: bool,
}

impl Default for NodePlacement {
    /// Loopback, started directly.
    fn default() -> Self {
        Self {
            host: Ipv4Addr::LOCALHOST,
            prefix: Vec::new(),
            own_process_group: false,
        }
    }
}

/// How many times [`NatsCluster::start`] tries, when a node loses its ports to another process.
const CLUSTER_START_ATTEMPTS: usize = 3;

/// A running (or stopped, restartable) nats-server; killed on drop, its data left in place.
#[derive(Debug)]
pub struct NatsServer {
    binary: PathBuf,
    data_dir: PathBuf,
    port: u16,
    fsync: Fsync,
    cluster: Option<ClusterNode>,
    placement: NodePlacement,
    /// The host of each of `cluster.routes`, in the same order; empty: all on loopback.
    route_hosts: Vec<Ipv4Addr>,
    /// The monitoring port of the current run.
    http_port: u16,
    own_process_group: bool,
    child: Option<Child>,
    /// Kills the server if this process dies without dropping it.
    watchdog: Option<Watchdog>,
    pid: u32,
}

impl NatsServer {
    /// Writes `<data_dir>/nats.conf`, starts nats-server with it (output to
    /// `<data_dir>/nats.log`) and returns once clients can connect and `/healthz` on its
    /// monitoring port says JetStream is ready (at most 15 s).
    ///
    /// The server stays in the caller's process group, so a test harness that kills a test's
    /// group takes the server with it.
    pub fn start(opts: NatsOptions) -> Result<Self> {
        Self::launch(opts, false)
    }

    /// Like [`NatsServer::start`], but in a process group of its own, so a terminal's Ctrl-C
    /// reaches only the caller, which can then stop its services before NATS.
    pub fn start_in_own_process_group(opts: NatsOptions) -> Result<Self> {
        Self::launch(opts, true)
    }

    fn launch(opts: NatsOptions, own_process_group: bool) -> Result<Self> {
        let binary = nats_server_binary()?;
        fs::create_dir_all(&opts.data_dir)
            .context(|| format!("creating {}", opts.data_dir.display()))?;
        // nats-server resolves a relative store_dir against its own working directory.
        let data_dir = std::path::absolute(&opts.data_dir)
            .context(|| format!("resolving {}", opts.data_dir.display()))?;
        let attempts = if opts.port.is_some() {
            1
        } else {
            START_ATTEMPTS
        };
        let mut attempt = 1;
        loop {
            let mut server = Self {
                binary: binary.clone(),
                data_dir: data_dir.clone(),
                port: opts.port.unwrap_or_else(free_port),
                fsync: opts.fsync,
                cluster: opts.cluster.clone(),
                placement: NodePlacement::default(),
                route_hosts: Vec::new(),
                http_port: 0,
                own_process_group,
                child: None,
                watchdog: None,
                pid: 0,
            };
            match server.spawn_until_ready() {
                Ok(()) => return Ok(server),
                Err(error) if attempt < attempts && is_port_conflict(&error) => attempt += 1,
                Err(error) => return Err(error),
            }
        }
    }

    /// The client port on [`NatsServer::host`].
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The address the server listens on: 127.0.0.1 unless a cluster placed it elsewhere.
    pub fn host(&self) -> Ipv4Addr {
        self.placement.host
    }

    /// `nats://<host>:<port>`.
    pub fn url(&self) -> String {
        format!("nats://{}:{}", self.placement.host, self.port)
    }

    /// The pid of the server process (the last one, once it has been killed or stopped).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The monitoring port of the current run (`/healthz`, `/connz`, `/jsz`).
    pub fn monitor_port(&self) -> u16 {
        self.http_port
    }

    /// The node's name in its cluster, if it is in one.
    pub fn server_name(&self) -> Option<&str> {
        self.cluster.as_ref().map(|node| node.server_name.as_str())
    }

    /// The directory holding the config, the JetStream store and the log.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The server's log, appended to by every start.
    pub fn log_path(&self) -> PathBuf {
        self.data_dir.join("nats.log")
    }

    /// Whether the server process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// SIGKILL and wait: a simulated crash. The data stays.
    pub fn kill(&mut self) -> Result<()> {
        self.watchdog = None;
        match self.child.take() {
            Some(mut child) => kill_child(&mut child, "nats-server"),
            None => Ok(()),
        }
    }

    /// SIGTERM, up to 10 s to exit, then SIGKILL.
    pub fn stop(&mut self) -> Result<()> {
        self.watchdog = None;
        match self.child.take() {
            Some(mut child) => terminate_child(&mut child, "nats-server", STOP_GRACE),
            None => Ok(()),
        }
    }

    /// Starts the server again on the same port and data dir (stopping it first if it runs).
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.spawn_until_ready()
    }

    fn spawn_until_ready(&mut self) -> Result<()> {
        let log_start = self.spawn_unready()?;
        self.wait_ready(log_start)
    }

    /// Writes the config and starts the process; returns where this run's
    /// part of the log starts. A cluster's nodes are all started before any
    /// is waited for: none is ready before a quorum is up.
    fn spawn_unready(&mut self) -> Result<u64> {
        let port = self.port;
        if !port_is_free(port) {
            return Err(InfraError::PortInUse { port });
        }
        self.http_port = loop {
            let candidate = free_port();
            if candidate != port {
                break candidate;
            }
        };
        let conf = self.data_dir.join("nats.conf");
        fs::write(&conf, self.config(self.http_port))
            .context(|| format!("writing {}", conf.display()))?;
        let log = self.log_path();
        let log_start = log_len(&log);
        self.spawn(&conf, &log)?;
        Ok(log_start)
    }

    /// Starts the process with its output appended to `log`, watched so it
    /// dies with its owner.
    fn spawn(&mut self, conf: &Path, log: &Path) -> Result<()> {
        let stdout = File::options()
            .create(true)
            .append(true)
            .open(log)
            .context(|| format!("opening {}", log.display()))?;
        let stderr = stdout
            .try_clone()
            .context(|| format!("duplicating the handle of {}", log.display()))?;
        let mut command = match self.placement.prefix.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(&self.binary);
                command
            }
            None => Command::new(&self.binary),
        };
        command
            .arg("-c")
            .arg(conf)
            .current_dir(&self.data_dir)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        if self.own_process_group {
            command.process_group(0);
        }
        let child = command
            .spawn()
            .context(|| format!("starting {}", self.binary.display()))?;
        let pid = child.id();
        self.pid = pid;
        self.child = Some(child);
        // The pid is checked against the config path so a recycled pid is never killed.
        let script = format!(
            "p={pid}; grep -qF -- {conf} /proc/$p/cmdline 2>/dev/null && kill -9 $p",
            conf = sh_quote(&conf.to_string_lossy())
        );
        let group = if self.own_process_group {
            Group::Join(pid)
        } else {
            Group::Caller
        };
        self.watchdog = Some(Watchdog::arm(&script, group)?);
        Ok(())
    }

    /// Polls until the server serves clients with JetStream, or fails with
    /// the tail of its log.
    fn wait_ready(&mut self, log_start: u64) -> Result<()> {
        let (host, port) = (self.placement.host, self.port);
        let http_port = self.http_port;
        let log = &self.log_path();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let exited = match self.child.as_mut() {
                Some(child) => child
                    .try_wait()
                    .context(|| "checking on nats-server".into())?,
                None => None,
            };
            if let Some(status) = exited {
                self.child = None;
                self.watchdog = None;
                return Err(InfraError::ExitedEarly {
                    what: format!("nats-server on port {port}"),
                    status: status.to_string(),
                    tail: log_tail(log, log_start, LOG_TAIL_LINES),
                    log: log.to_path_buf(),
                });
            }
            // A connect proves the client listener; /healthz answering 200 proves JetStream
            // is enabled and has recovered its streams, which clients need next.
            if tcp_accepts_at(host, port)
                && matches!(http_status_at(host, http_port, "/healthz"), Ok(200))
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = self.kill();
                return Err(InfraError::NotReady {
                    what: format!("nats-server on port {port}"),
                    secs: START_TIMEOUT.as_secs(),
                    tail: log_tail(log, log_start, LOG_TAIL_LINES),
                    log: log.to_path_buf(),
                });
            }
            thread::sleep(POLL);
        }
    }

    fn config(&self, http_port: u16) -> String {
        let store_dir = quote(&self.data_dir.join("js"));
        let sync = match self.fsync {
            Fsync::Interval => "",
            Fsync::Always => "  sync_interval: always\n",
        };
        let cluster = self.cluster.as_ref().map_or_else(String::new, |node| {
            let routes: Vec<String> = node
                .routes
                .iter()
                .enumerate()
                .filter(|(_, port)| **port != node.route_port)
                .map(|(i, port)| {
                    let host = self.route_hosts.get(i).unwrap_or(&Ipv4Addr::LOCALHOST);
                    format!("\"nats-route://{host}:{port}\"")
                })
                .collect();
            // A peer that hangs (paused, its machine gone) is dropped after
            // two unanswered route pings a second apart, not two minutes:
            // until then requests are still routed to what it served.
            format!(
                "server_name: \"{server}\"\n\
                 ping_max: 2\n\
                 cluster {{\n  name: \"{cluster}\"\n  listen: \"{host}:{route}\"\n  \
                 ping_interval: \"1s\"\n  routes: [{routes}]\n}}\n",
                server = node.server_name,
                host = self.placement.host,
                cluster = node.cluster_name,
                route = node.route_port,
                routes = routes.join(", "),
            )
        });
        format!(
            "# Written by natter-localinfra at every start; edits are overwritten.\n\
             listen: \"{host}:{port}\"\n\
             http: \"{host}:{http_port}\"\n\
             {cluster}\
             jetstream {{\n  store_dir: {store_dir}\n{sync}  \
             # 2.15 caps consumers per stream at 1,000 by default.\n  \
             limits {{ default_max_consumers: -1 }}\n}}\n",
            port = self.port,
            host = self.placement.host,
        )
    }
}

/// A cluster of nats-servers on loopback, each with its own store and
/// log under `<dir>/n<i>/`; every node is killed on drop, its data left.
#[derive(Debug)]
pub struct NatsCluster {
    nodes: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts `size` nodes routed to each other and returns once every one
    /// serves clients with JetStream (a meta leader is elected).
    ///
    /// Route ports are picked free before the nodes start, so another process
    /// may take one first (tests run in parallel): a node that exits during
    /// startup makes the whole cluster start again, on new ports and an empty
    /// `dir`, up to [`CLUSTER_START_ATTEMPTS`] times.
    pub fn start(dir: &Path, size: usize, fsync: Fsync) -> Result<Self> {
        let placements = vec![NodePlacement::default(); size];
        let mut attempt = 1;
        let cluster = loop {
            match Self::start_placed(dir, &placements, fsync) {
                Ok(cluster) => break cluster,
                Err(InfraError::ExitedEarly { .. }) if attempt < CLUSTER_START_ATTEMPTS => {
                    attempt += 1;
                    fs::remove_dir_all(dir).context(|| format!("emptying {}", dir.display()))?;
                }
                Err(error) => return Err(error),
            }
        };
        cluster.wait_for_meta_leader()?;
        Ok(cluster)
    }

    /// Starts a node per placement, routed to each other at their hosts, and
    /// returns once every one answers clients and `/healthz`, without waiting
    /// for a meta leader ([`NatsCluster::wait_for_meta_leader`]): a caller
    /// can start clients while the cluster still elects one.
    pub fn start_placed(dir: &Path, placements: &[NodePlacement], fsync: Fsync) -> Result<Self> {
        let binary = nats_server_binary()?;
        let routes: Vec<u16> = placements.iter().map(|_| free_port()).collect();
        let route_hosts: Vec<Ipv4Addr> = placements.iter().map(|p| p.host).collect();
        let mut nodes = Vec::with_capacity(placements.len());
        let mut log_starts = Vec::with_capacity(placements.len());
        for ((i, route_port), placement) in routes.iter().enumerate().zip(placements) {
            let data_dir = std::path::absolute(dir.join(format!("n{i}")))
                .context(|| format!("resolving {}", dir.display()))?;
            fs::create_dir_all(&data_dir).context(|| format!("creating {}", data_dir.display()))?;
            let mut node = NatsServer {
                binary: binary.clone(),
                data_dir,
                port: free_port(),
                fsync,
                cluster: Some(ClusterNode {
                    cluster_name: "natter".into(),
                    server_name: format!("n{i}"),
                    route_port: *route_port,
                    routes: routes.clone(),
                }),
                placement: placement.clone(),
                route_hosts: route_hosts.clone(),
                http_port: 0,
                own_process_group: placement.own_process_group,
                child: None,
                watchdog: None,
                pid: 0,
            };
            log_starts.push(node.spawn_unready()?);
            nodes.push(node);
        }
        for (node, log_start) in nodes.iter_mut().zip(log_starts) {
            node.wait_ready(log_start)?;
        }
        Ok(Self { nodes })
    }

    /// Waits until every node knows the JetStream meta leader (at most 15 s):
    /// before that, creating a stream times out (`/healthz` says ready sooner).
    pub fn wait_for_meta_leader(&self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let led = self.nodes.iter().all(|node| {
                http_body_at(node.host(), node.http_port, "/jsz")
                    .is_ok_and(|body| has_meta_leader(&body))
            });
            if led {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let log = self.nodes[0].log_path();
                return Err(InfraError::NotReady {
                    what: "the nats-server cluster's JetStream meta leader".into(),
                    secs: START_TIMEOUT.as_secs(),
                    tail: log_tail(&log, 0, LOG_TAIL_LINES),
                    log,
                });
            }
            thread::sleep(POLL);
        }
    }

    /// Every node's client URL, comma-separated (`NATS_URL` for a cluster).
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn nodes(&self) -> &[NatsServer] {
        &self.nodes
    }

    /// Node `i`, to kill, stop, pause or restart.
    pub fn node_mut(&mut self, i: usize) -> &mut NatsServer {
        &mut self.nodes[i]
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        // Nothing useful can be done with an error while dropping.
        let _ = self.kill();
    }
}

fn is_port_conflict(error: &InfraError) -> bool {
    match error {
        InfraError::PortInUse { .. } => true,
        InfraError::ExitedEarly { tail, .. } => tail.contains("address already in use"),
        _ => false,
    }
}

/// Whether a `/jsz` answer names a meta leader: `"meta_cluster": {…
/// "leader": "<name>"`.
fn has_meta_leader(jsz: &str) -> bool {
    jsz.split_once("\"meta_cluster\"")
        .and_then(|(_, rest)| rest.split_once('}'))
        .and_then(|(meta, _)| meta.split_once("\"leader\""))
        .is_some_and(|(_, rest)| {
            rest.trim_start_matches([':', ' '])
                .strip_prefix('"')
                .is_some_and(|name| !name.starts_with('"'))
        })
}

/// A path as a double-quoted NATS config string.
fn quote(path: &Path) -> String {
    let text = path.to_string_lossy();
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpStream;

    use super::*;
    use crate::probe::tcp_accepts;
    use crate::process::is_alive;

    fn options(dir: &Path) -> NatsOptions {
        NatsOptions {
            data_dir: dir.join("nats"),
            port: None,
            fsync: Fsync::Interval,
            cluster: None,
        }
    }

    /// Speaks just enough of the NATS protocol to prove a server answers: INFO, then PING/PONG.
    fn assert_answers_ping(port: u16) {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0_u8; 4096];
        let n = stream.read(&mut buf).unwrap();
        assert!(
            buf[..n].starts_with(b"INFO "),
            "{:?}",
            String::from_utf8_lossy(&buf[..n])
        );
        stream
            .write_all(b"CONNECT {\"verbose\":false}\r\nPING\r\n")
            .unwrap();
        let mut reply = Vec::new();
        while !reply.ends_with(b"PONG\r\n") {
            let n = stream.read(&mut buf).unwrap();
            assert_ne!(n, 0, "connection closed before PONG");
            reply.extend_from_slice(&buf[..n]);
        }
    }

    #[test]
    fn tells_a_meta_leader_from_none() {
        let led = r#"{"meta_cluster": {"name": "natter", "leader": "n1", "peer": "x"}}"#;
        assert!(has_meta_leader(led));
        assert!(!has_meta_leader(
            r#"{"meta_cluster": {"name": "natter", "leader": ""}}"#
        ));
        assert!(!has_meta_leader(
            r#"{"meta_cluster": {"name": "natter"}, "leader": "x"}"#
        ));
        assert!(!has_meta_leader(r#"{"config": {}}"#));
    }

    #[test]
    fn parses_and_prints_fsync_modes() {
        assert_eq!("always".parse::<Fsync>().unwrap(), Fsync::Always);
        assert_eq!("interval".parse::<Fsync>().unwrap(), Fsync::Interval);
        assert!("sometimes".parse::<Fsync>().is_err());
        assert_eq!(Fsync::Always.to_string(), "always");
    }

    #[test]
    fn starts_with_jetstream_and_answers_clients() {
        let dir = tempfile::tempdir().unwrap();
        let started = Instant::now();
        let server = NatsServer::start(options(dir.path())).unwrap();
        eprintln!("nats-server ready in {:?}", started.elapsed());
        assert_eq!(server.url(), format!("nats://127.0.0.1:{}", server.port()));
        assert_answers_ping(server.port());
        assert!(dir.path().join("nats/js/jetstream").is_dir());
    }

    #[test]
    fn restarts_on_the_same_port_with_its_data_after_a_kill() {
        let dir = tempfile::tempdir().unwrap();
        let mut server = NatsServer::start(options(dir.path())).unwrap();
        let (port, first_pid) = (server.port(), server.pid());
        // A file in the store stands for JetStream data: it must survive the crash.
        let marker = dir.path().join("nats/js/marker");
        fs::write(&marker, "kept").unwrap();

        server.kill().unwrap();
        assert!(!is_alive(first_pid));
        assert!(!tcp_accepts(port));

        server.restart().unwrap();
        assert_eq!(server.port(), port);
        assert_ne!(server.pid(), first_pid);
        assert_answers_ping(port);
        assert_eq!(fs::read_to_string(&marker).unwrap(), "kept");
    }

    #[test]
    fn stops_gracefully_and_writes_sync_always_config() {
        let dir = tempfile::tempdir().unwrap();
        let mut server = NatsServer::start(NatsOptions {
            fsync: Fsync::Always,
            ..options(dir.path())
        })
        .unwrap();
        let conf = fs::read_to_string(dir.path().join("nats/nats.conf")).unwrap();
        assert!(conf.contains("sync_interval: always"), "{conf}");
        let pid = server.pid();
        server.stop().unwrap();
        assert!(!is_alive(pid));
        assert!(!server.is_running());
        let log = fs::read_to_string(server.log_path()).unwrap();
        assert!(log.contains("Server Exiting"), "{log}");
    }

    #[test]
    fn refuses_a_port_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let error = NatsServer::start(NatsOptions {
            port: Some(port),
            ..options(dir.path())
        })
        .unwrap_err();
        assert!(
            matches!(error, InfraError::PortInUse { port: p } if p == port),
            "{error}"
        );
    }

    #[test]
    fn a_cluster_elects_and_keeps_serving_with_one_node_down() {
        let dir = tempfile::tempdir().unwrap();
        let started = Instant::now();
        let mut cluster = NatsCluster::start(dir.path(), 3, Fsync::Interval).unwrap();
        eprintln!("3-node cluster ready in {:?}", started.elapsed());
        assert_eq!(cluster.urls().split(',').count(), 3);
        for node in cluster.nodes() {
            assert_answers_ping(node.port());
            let conf = fs::read_to_string(node.data_dir().join("nats.conf")).unwrap();
            // Routes to the two others, not to itself.
            assert_eq!(conf.matches("nats-route://").count(), 2, "{conf}");
        }
        let names: Vec<&str> = cluster
            .nodes()
            .iter()
            .filter_map(|n| n.server_name())
            .collect();
        assert_eq!(names, ["n0", "n1", "n2"]);
        // A killed node comes back into its cluster on the same ports.
        let port = cluster.nodes()[1].port();
        cluster.node_mut(1).kill().unwrap();
        assert!(!tcp_accepts(port));
        cluster.node_mut(1).restart().unwrap();
        assert_answers_ping(port);
    }

    #[test]
    fn a_placed_node_listens_on_its_host_and_routes_to_its_peers_hosts() {
        let host = Ipv4Addr::new(10, 1, 2, 2);
        let node = NatsServer {
            binary: PathBuf::from("nats-server"),
            data_dir: PathBuf::from("/data"),
            port: 4222,
            fsync: Fsync::Interval,
            cluster: Some(ClusterNode {
                cluster_name: "natter".into(),
                server_name: "n2".into(),
                route_port: 6003,
                routes: vec![6001, 6002, 6003],
            }),
            placement: NodePlacement {
                host,
                prefix: vec!["ip".into(), "netns".into(), "exec".into(), "ns".into()],
                own_process_group: true,
            },
            route_hosts: vec![Ipv4Addr::new(10, 1, 2, 1), Ipv4Addr::new(10, 1, 2, 1), host],
            http_port: 8222,
            own_process_group: false,
            child: None,
            watchdog: None,
            pid: 0,
        };
        let conf = node.config(8222);
        assert!(conf.contains("listen: \"10.1.2.2:4222\""), "{conf}");
        assert!(conf.contains("http: \"10.1.2.2:8222\""), "{conf}");
        assert!(conf.contains("listen: \"10.1.2.2:6003\""), "{conf}");
        assert!(
            conf.contains(
                "routes: [\"nats-route://10.1.2.1:6001\", \"nats-route://10.1.2.1:6002\"]"
            ),
            "{conf}"
        );
        assert_eq!(node.url(), "nats://10.1.2.2:4222");
    }

    #[test]
    fn a_cluster_started_through_a_prefix_elects_a_leader() {
        let dir = tempfile::tempdir().unwrap();
        // `env` execs its command, as `ip netns exec` does.
        let placement = NodePlacement {
            prefix: vec!["env".into()],
            ..NodePlacement::default()
        };
        let cluster =
            NatsCluster::start_placed(dir.path(), &vec![placement; 3], Fsync::Interval).unwrap();
        cluster.wait_for_meta_leader().unwrap();
        for node in cluster.nodes() {
            assert_answers_ping(node.port());
            let cmdline = fs::read(format!("/proc/{}/cmdline", node.pid())).unwrap();
            assert!(
                !String::from_utf8_lossy(&cmdline).starts_with("env"),
                "the pid is nats-server's"
            );
        }
    }

    #[test]
    fn drop_kills_the_server() {
        let dir = tempfile::tempdir().unwrap();
        let server = NatsServer::start(options(dir.path())).unwrap();
        let pid = server.pid();
        drop(server);
        assert!(!is_alive(pid));
    }
}
