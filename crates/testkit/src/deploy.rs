//! The production deployment in `deploy/`, read and checked without Docker:
//! the compose file's services and mounts, the metric names the dashboard
//! and alert rules query, and nats-server runs of the NATS configs.

use anyhow::{Context, anyhow, bail};
use serde_norway::Value as Yaml;
use std::collections::BTreeSet;
use std::fs;
use std::net::TcpStream;
use std::path::{Component, Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The environment variables the NATS configs read their passwords from.
pub const NATS_PASSWORD_VARS: [&str; 3] = [
    "NATS_GATEWAY_PASSWORD",
    "NATS_PERSISTER_PASSWORD",
    "NATS_SYS_PASSWORD",
];

/// Every metric the gateway and the persister export (DESIGN.md §6), by base
/// name: a histogram's `_bucket`, `_sum` and `_count` series count as it.
/// The dashboard and the alert rules may query nothing else.
pub const EXPORTED_METRICS: [&str; 25] = [
    "natter_ws_connections_open",
    "natter_ws_connections_opened_total",
    "natter_ws_connections_closed_total",
    "natter_ws_frames_received_total",
    "natter_ws_frames_sent_total",
    "natter_messages_accepted_total",
    "natter_errors_total",
    "natter_http_requests_total",
    "natter_accept_latency_seconds",
    "natter_delivery_latency_seconds",
    "natter_replayed_events_total",
    "natter_replay_duration_seconds",
    "natter_active_users",
    "natter_persister_batch_size",
    "natter_persister_batch_duration_seconds",
    "natter_persister_projection_lag_seconds",
    "natter_persister_records_total",
    "natter_persister_fanout_published_total",
    "natter_persister_consumer_pending",
    "natter_persister_consumer_ack_pending",
    "natter_persister_redeliveries_total",
    "natter_persister_dead_letters_total",
    "natter_persister_leader",
    "natter_stream_bytes",
    "natter_stream_max_bytes",
];

/// `<workspace>/deploy`.
pub fn deploy_dir() -> PathBuf {
    natter_localinfra::workspace_root().join("deploy")
}

/// `deploy/compose/compose.yaml`.
pub fn compose_path() -> PathBuf {
    deploy_dir().join("compose").join("compose.yaml")
}

/// `deploy/grafana/natter.json`.
pub fn dashboard_path() -> PathBuf {
    deploy_dir().join("grafana").join("natter.json")
}

/// `deploy/prometheus/alerts.yml`.
pub fn alerts_path() -> PathBuf {
    deploy_dir().join("prometheus").join("alerts.yml")
}

/// Parses a YAML file with its `<<` merge keys applied, as compose applies
/// them: without that, services built from anchors would look empty.
pub fn read_yaml(path: &Path) -> anyhow::Result<Yaml> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut value: Yaml = serde_norway::from_str(&text)
        .with_context(|| format!("parsing {} as YAML", path.display()))?;
    // One pass leaves the `<<` of an anchor that itself merges another
    // (a service built from `x-gateway`, built from `x-natter-image`), so
    // repeat while any remain; the bound only stops a cycle.
    for _ in 0..8 {
        if !has_merge_key(&value) {
            return Ok(value);
        }
        value
            .apply_merge()
            .with_context(|| format!("applying merge keys in {}", path.display()))?;
    }
    bail!("{}: merge keys nest too deep", path.display())
}

fn has_merge_key(value: &Yaml) -> bool {
    match value {
        Yaml::Mapping(map) => map
            .iter()
            .any(|(key, value)| key.as_str() == Some("<<") || has_merge_key(value)),
        Yaml::Sequence(items) => items.iter().any(has_merge_key),
        Yaml::Tagged(tagged) => has_merge_key(&tagged.value),
        _ => false,
    }
}

/// Parses a JSON file.
pub fn read_json(path: &Path) -> anyhow::Result<serde_json::Value> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {} as JSON", path.display()))
}

/// A host directory or file that compose bind-mounts into a container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindMount {
    /// On the host, resolved against the compose file's directory.
    pub host: PathBuf,
    /// Inside the container.
    pub container: PathBuf,
}

/// One service of the compose file, reduced to what can be checked offline.
#[derive(Clone, Debug)]
pub struct Service {
    pub name: String,
    pub image: Option<String>,
    /// `build.context` and `build.dockerfile`, resolved on the host (the
    /// Dockerfile against the context, as compose does).
    pub build: Option<(PathBuf, PathBuf)>,
    pub bind_mounts: Vec<BindMount>,
    /// Named volumes mounted by the service.
    pub named_volumes: Vec<String>,
    pub env_files: Vec<PathBuf>,
    pub depends_on: Vec<String>,
    /// The raw service definition, merge keys applied.
    pub raw: Yaml,
}

impl Service {
    /// The host path behind `container_path`, through the bind mount that
    /// holds it most closely; `None` when no bind mount does.
    pub fn host_path(&self, container_path: &Path) -> Option<PathBuf> {
        self.bind_mounts
            .iter()
            .filter_map(|m| {
                let rest = container_path.strip_prefix(&m.container).ok()?;
                Some((m.container.components().count(), m.host.join(rest)))
            })
            .max_by_key(|(depth, _)| *depth)
            .map(|(_, host)| host)
    }

    /// A string in the service's `environment` (map form).
    pub fn env(&self, name: &str) -> Option<String> {
        match self.raw.get("environment")?.get(name)? {
            Yaml::String(s) => Some(s.clone()),
            other => yaml_scalar(other),
        }
    }
}

/// The compose file: its directory and services.
#[derive(Clone, Debug)]
pub struct Compose {
    pub dir: PathBuf,
    pub services: Vec<Service>,
    /// Top-level named volumes.
    pub volumes: BTreeSet<String>,
}

impl Compose {
    /// Reads `deploy/compose/compose.yaml`.
    pub fn load() -> anyhow::Result<Self> {
        Self::read(&compose_path())
    }

    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let dir = path
            .parent()
            .ok_or_else(|| anyhow!("{} has no parent directory", path.display()))?
            .to_path_buf();
        let root = read_yaml(path)?;
        let services = root
            .get("services")
            .and_then(Yaml::as_mapping)
            .ok_or_else(|| anyhow!("{} has no `services` mapping", path.display()))?
            .iter()
            .map(|(name, raw)| {
                let name = name
                    .as_str()
                    .ok_or_else(|| anyhow!("a service name is not a string: {name:?}"))?;
                parse_service(&dir, name, raw).with_context(|| format!("service {name}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let volumes = root
            .get("volumes")
            .and_then(Yaml::as_mapping)
            .map(|m| {
                m.keys()
                    .filter_map(Yaml::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        Ok(Self {
            dir,
            services,
            volumes,
        })
    }

    pub fn service(&self, name: &str) -> anyhow::Result<&Service> {
        self.services
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| anyhow!("compose has no service {name:?}"))
    }

    pub fn names(&self) -> BTreeSet<&str> {
        self.services.iter().map(|s| s.name.as_str()).collect()
    }
}

fn parse_service(dir: &Path, name: &str, raw: &Yaml) -> anyhow::Result<Service> {
    let (bind_mounts, named_volumes) = volumes(dir, raw.get("volumes"))?;
    let env_files = match raw.get("env_file") {
        None => Vec::new(),
        Some(Yaml::String(path)) => vec![resolve(dir, path)],
        Some(files) => sequence(Some(files))?
            .iter()
            .filter_map(|f| f.as_str().or_else(|| f.get("path").and_then(Yaml::as_str)))
            .map(|path| resolve(dir, path))
            .collect(),
    };
    let depends_on = match raw.get("depends_on") {
        None => Vec::new(),
        Some(Yaml::Mapping(map)) => map
            .keys()
            .filter_map(Yaml::as_str)
            .map(str::to_owned)
            .collect(),
        Some(list) => sequence(Some(list))?
            .iter()
            .filter_map(Yaml::as_str)
            .map(str::to_owned)
            .collect(),
    };
    Ok(Service {
        name: name.to_owned(),
        image: raw.get("image").and_then(Yaml::as_str).map(str::to_owned),
        build: build(dir, raw.get("build")),
        bind_mounts,
        named_volumes,
        env_files,
        depends_on,
        raw: raw.clone(),
    })
}

/// A service's build context and Dockerfile, in the short or the long form.
fn build(dir: &Path, build: Option<&Yaml>) -> Option<(PathBuf, PathBuf)> {
    match build? {
        Yaml::String(context) => {
            let context = resolve(dir, context);
            let dockerfile = context.join("Dockerfile");
            Some((context, dockerfile))
        }
        build => {
            let context = resolve(
                dir,
                build.get("context").and_then(Yaml::as_str).unwrap_or("."),
            );
            let dockerfile = resolve(
                &context,
                build
                    .get("dockerfile")
                    .and_then(Yaml::as_str)
                    .unwrap_or("Dockerfile"),
            );
            Some((context, dockerfile))
        }
    }
}

/// A service's bind mounts and named volumes, in the short or the long form.
fn volumes(dir: &Path, raw: Option<&Yaml>) -> anyhow::Result<(Vec<BindMount>, Vec<String>)> {
    let mut bind_mounts = Vec::new();
    let mut named_volumes = Vec::new();
    for volume in sequence(raw)? {
        match volume {
            Yaml::String(short) => {
                let mut parts = short.splitn(3, ':');
                let source = parts.next().unwrap_or_default();
                let target = parts
                    .next()
                    .ok_or_else(|| anyhow!("volume {short:?} has no container path"))?;
                if is_host_path(source) {
                    bind_mounts.push(BindMount {
                        host: resolve(dir, source),
                        container: PathBuf::from(target),
                    });
                } else {
                    named_volumes.push(source.to_owned());
                }
            }
            long => {
                let field = |key: &str| long.get(key).and_then(Yaml::as_str);
                let source = field("source").unwrap_or_default();
                let target =
                    field("target").ok_or_else(|| anyhow!("volume {long:?} has no target"))?;
                match field("type") {
                    Some("bind") => bind_mounts.push(BindMount {
                        host: resolve(dir, source),
                        container: PathBuf::from(target),
                    }),
                    Some("volume") => named_volumes.push(source.to_owned()),
                    _ => {}
                }
            }
        }
    }
    Ok((bind_mounts, named_volumes))
}

fn sequence(value: Option<&Yaml>) -> anyhow::Result<&[Yaml]> {
    match value {
        None => Ok(&[]),
        Some(Yaml::Sequence(items)) => Ok(items),
        Some(other) => bail!("expected a list, found {other:?}"),
    }
}

fn yaml_scalar(value: &Yaml) -> Option<String> {
    match value {
        Yaml::Bool(b) => Some(b.to_string()),
        Yaml::Number(n) => Some(n.to_string()),
        Yaml::String(s) => Some(s.clone()),
        _ => None,
    }
}

/// Compose's rule: a volume source that looks like a path is a bind mount;
/// anything else names a volume.
fn is_host_path(source: &str) -> bool {
    source.starts_with('.') || source.starts_with('/') || source.starts_with('~')
}

/// `relative` against `base`, with `.` and `..` folded so that paths can be
/// compared and shown without the compose directory's detour.
fn resolve(base: &Path, relative: &str) -> PathBuf {
    let mut out = PathBuf::new();
    for component in base.join(relative).components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// Every base metric name (`natter_…`, histogram suffixes stripped) in
/// `text`.
pub fn metric_names_in(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find("natter_") {
        // `natter_` inside a longer identifier (say `my_natter_x`) is not a
        // natter metric.
        let preceded_by_ident = rest[..start]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        if !preceded_by_ident {
            names.insert(base_metric_name(&tail[..end]).to_owned());
        }
        rest = &tail[end..];
    }
    names
}

/// A histogram's series named by the histogram.
fn base_metric_name(series: &str) -> &str {
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|suffix| series.strip_suffix(suffix))
        .unwrap_or(series)
}

/// Every metric the dashboard's queries name: each `expr` (panel targets)
/// and each `query` (template variables), wherever it is in the JSON.
pub fn dashboard_metric_names() -> anyhow::Result<BTreeSet<String>> {
    let dashboard = read_json(&dashboard_path())?;
    let mut queries = Vec::new();
    collect_json_queries(&dashboard, &mut queries);
    Ok(queries.iter().flat_map(|q| metric_names_in(q)).collect())
}

fn collect_json_queries<'a>(value: &'a serde_json::Value, out: &mut Vec<&'a str>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                if let ("expr" | "query", serde_json::Value::String(q)) = (key.as_str(), value) {
                    out.push(q);
                }
                collect_json_queries(value, out);
            }
        }
        serde_json::Value::Array(items) => {
            for item in items {
                collect_json_queries(item, out);
            }
        }
        _ => {}
    }
}

/// Every metric the Prometheus alert rules name (each rule's `expr`).
pub fn alert_metric_names() -> anyhow::Result<BTreeSet<String>> {
    let rules = read_yaml(&alerts_path())?;
    let mut queries = Vec::new();
    collect_yaml_exprs(&rules, &mut queries);
    Ok(queries.iter().flat_map(|q| metric_names_in(q)).collect())
}

fn collect_yaml_exprs<'a>(value: &'a Yaml, out: &mut Vec<&'a str>) {
    match value {
        Yaml::Mapping(map) => {
            for (key, value) in map {
                if let (Some("expr"), Yaml::String(q)) = (key.as_str(), value) {
                    out.push(q);
                }
                collect_yaml_exprs(value, out);
            }
        }
        Yaml::Sequence(items) => {
            for item in items {
                collect_yaml_exprs(item, out);
            }
        }
        _ => {}
    }
}

/// The dashboard's panels, those inside rows included, rows excluded.
pub fn dashboard_panels() -> anyhow::Result<Vec<serde_json::Value>> {
    let dashboard = read_json(&dashboard_path())?;
    let top = dashboard
        .get("panels")
        .and_then(serde_json::Value::as_array)
        .ok_or_else(|| anyhow!("the dashboard has no panels"))?;
    let mut panels = Vec::new();
    for panel in top {
        if panel.get("type").and_then(serde_json::Value::as_str) == Some("row") {
            // A collapsed row carries its panels inside it.
            if let Some(inner) = panel.get("panels").and_then(serde_json::Value::as_array) {
                panels.extend(inner.iter().cloned());
            }
        } else {
            panels.push(panel.clone());
        }
    }
    Ok(panels)
}

/// The node configs `deploy/nats/nats-*.conf`, in name order.
pub fn nats_node_configs() -> anyhow::Result<Vec<PathBuf>> {
    let dir = deploy_dir().join("nats");
    let mut configs: Vec<PathBuf> = fs::read_dir(&dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("nats-") && n.ends_with(".conf"))
        })
        .collect();
    configs.sort();
    Ok(configs)
}

/// A nats-server command with a throwaway value for each password variable,
/// so the configs' `$NATS_…_PASSWORD` references resolve.
fn nats_server_command() -> anyhow::Result<Command> {
    let binary = natter_localinfra::nats_server_binary()?;
    let mut command = Command::new(binary);
    for var in NATS_PASSWORD_VARS {
        command.env(var, test_password(var));
    }
    Ok(command)
}

/// The password a variable of [`NATS_PASSWORD_VARS`] has in the servers
/// this module starts.
pub fn test_password(var: &str) -> String {
    format!("deploy-test-{}", var.to_ascii_lowercase())
}

/// Runs `nats-server -t -c <config>` (parse and validate, start nothing);
/// the error carries the server's complaint.
pub fn check_nats_config(config: &Path) -> anyhow::Result<()> {
    let output = nats_server_command()?
        .arg("-t")
        .arg("-c")
        .arg(config)
        .stdin(Stdio::null())
        .output()
        .context("running nats-server -t")?;
    if output.status.success() {
        Ok(())
    } else {
        bail!(
            "nats-server -t -c {} failed ({}): {}{}",
            config.display(),
            output.status,
            String::from_utf8_lossy(&output.stdout).trim(),
            String::from_utf8_lossy(&output.stderr).trim()
        )
    }
}

/// A single nats-server with JetStream and exactly the accounts, users and
/// permissions of `deploy/nats/accounts.conf`, on a free loopback port;
/// killed on drop. The cluster settings are left out: one server cannot
/// form the three-node JetStream cluster, and permissions do not depend on
/// it.
pub struct DeployNats {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl DeployNats {
    pub fn start() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir().context("creating a temporary directory")?;
        let accounts = deploy_dir().join("nats").join("accounts.conf");
        fs::copy(&accounts, dir.path().join("accounts.conf"))
            .with_context(|| format!("copying {}", accounts.display()))?;
        let port = natter_localinfra::try_free_port()?;
        let store = dir.path().join("jetstream");
        let config = dir.path().join("server.conf");
        fs::write(
            &config,
            format!(
                "listen: 127.0.0.1:{port}\njetstream {{ store_dir: {store:?} }}\ninclude ./accounts.conf\n"
            ),
        )
        .with_context(|| format!("writing {}", config.display()))?;
        let log = fs::File::create(dir.path().join("nats.log")).context("creating nats.log")?;
        let child = nats_server_command()?
            .arg("-c")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting nats-server")?;
        let mut server = Self {
            child,
            port,
            _dir: dir,
        };
        server.wait_until_accepting()?;
        Ok(server)
    }

    fn wait_until_accepting(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait().context("polling nats-server")? {
                let log = fs::read_to_string(self._dir.path().join("nats.log")).unwrap_or_default();
                bail!("nats-server exited with {status}: {log}");
            }
            if Instant::now() > deadline {
                bail!(
                    "nats-server did not accept connections on port {}",
                    self.port
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `nats://127.0.0.1:<port>`, without credentials.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The URL a service connects with: `user`'s name and test password
    /// (`gateway` or `persister`).
    pub fn url_as(&self, user: &str) -> String {
        let var = format!("NATS_{}_PASSWORD", user.to_ascii_uppercase());
        format!(
            "nats://{user}:{}@127.0.0.1:{}",
            test_password(&var),
            self.port
        )
    }

    /// The permission violations the server has logged so far.
    pub fn violations(&self) -> Vec<String> {
        fs::read_to_string(self._dir.path().join("nats.log"))
            .unwrap_or_default()
            .lines()
            .filter(|line| line.to_ascii_lowercase().contains("violation"))
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for DeployNats {
    fn drop(&mut self) {
        // What a failing test needs to see, before the log goes with the
        // temporary directory.
        for violation in self.violations() {
            eprintln!("nats-server: {violation}");
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
