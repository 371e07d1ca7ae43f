//! Checks of `deploy/` that need no Docker: the compose file's references,
//! the Prometheus and Grafana files, the dashboard's and alerts' metric
//! names, the NATS configs under nats-server, and the NATS permissions
//! exercised with the calls the services make.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking

use async_nats::jetstream::{self, consumer::pull};
use futures::StreamExt;
use natter_core::{UserId, subjects};
use natter_runtime::jetstream::{StreamSettings, ensure_streams};
use natter_testkit::deploy::{
    self, Compose, DeployNats, EXPORTED_METRICS, NATS_PASSWORD_VARS, alert_metric_names,
    dashboard_metric_names, dashboard_panels, metric_names_in, read_yaml,
};
use serde_norway::Value as Yaml;
use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::mpsc;

#[test]
fn compose_defines_the_production_topology() {
    let compose = Compose::load().unwrap();
    let names = compose.names();
    for service in [
        "nats-1",
        "nats-2",
        "nats-3",
        "postgres",
        "gateway-1",
        "gateway-2",
        "persister-1",
        "persister-2",
        "proxy",
        "jaeger",
        "prometheus",
        "grafana",
    ] {
        assert!(names.contains(service), "compose has no {service}");
    }
}

#[test]
fn every_compose_service_has_an_image_or_a_build() {
    let compose = Compose::load().unwrap();
    for service in &compose.services {
        assert!(
            service.image.is_some() || service.build.is_some(),
            "{} has neither image nor build",
            service.name
        );
    }
}

#[test]
fn every_path_compose_references_exists() {
    let compose = Compose::load().unwrap();
    for service in &compose.services {
        for mount in &service.bind_mounts {
            assert!(
                mount.host.exists(),
                "{}: bind mount source {} does not exist",
                service.name,
                mount.host.display()
            );
        }
        if let Some((context, dockerfile)) = &service.build {
            assert!(
                context.is_dir(),
                "{}: build context {} is not a directory",
                service.name,
                context.display()
            );
            assert!(
                dockerfile.is_file(),
                "{}: Dockerfile {} is missing",
                service.name,
                dockerfile.display()
            );
        }
        for env_file in &service.env_files {
            assert!(
                env_file.exists(),
                "{}: env_file {} is missing",
                service.name,
                env_file.display()
            );
        }
        for volume in &service.named_volumes {
            assert!(
                compose.volumes.contains(volume),
                "{}: volume {volume} is not declared under top-level volumes",
                service.name
            );
        }
    }
}

#[test]
fn every_compose_dependency_is_a_defined_service() {
    let compose = Compose::load().unwrap();
    let names = compose.names();
    for service in &compose.services {
        for dependency in &service.depends_on {
            assert!(
                names.contains(dependency.as_str()),
                "{} depends on undefined service {dependency}",
                service.name
            );
            assert_ne!(
                dependency, &service.name,
                "{} depends on itself",
                service.name
            );
        }
    }
}

#[test]
fn each_nats_node_loads_its_own_config_from_the_mounted_folder() {
    let compose = Compose::load().unwrap();
    for node in ["nats-1", "nats-2", "nats-3"] {
        let service = compose.service(node).unwrap();
        let command: Vec<&str> = service
            .raw
            .get("command")
            .and_then(Yaml::as_sequence)
            .unwrap()
            .iter()
            .filter_map(Yaml::as_str)
            .collect();
        let config = command
            .iter()
            .position(|arg| *arg == "--config" || *arg == "-c")
            .and_then(|i| command.get(i + 1))
            .unwrap_or_else(|| panic!("{node} does not pass --config"));
        let host = service
            .host_path(Path::new(config))
            .unwrap_or_else(|| panic!("{node}: {config} is not in a bind mount"));
        assert_eq!(
            host.file_name().and_then(|n| n.to_str()),
            Some(format!("{node}.conf").as_str()),
            "{node} loads another node's config"
        );
        assert!(host.is_file(), "{node}: {} is missing", host.display());
        for var in NATS_PASSWORD_VARS {
            assert!(
                service.env(var).is_some(),
                "{node} does not pass {var}, which its config reads"
            );
        }
    }
}

/// Every node of the R3 cluster holds a replica of both streams and
/// reserves their `max_bytes` in its `max_file_store`: if they did not fit,
/// the streams could not be declared and nothing would start.
#[test]
fn compose_stream_limits_fit_each_nats_nodes_file_store() {
    let compose = Compose::load().unwrap();
    let conf = std::fs::read_to_string(deploy::deploy_dir().join("nats/natter.conf")).unwrap();
    let store = conf
        .lines()
        .find_map(|l| l.trim().strip_prefix("max_file_store:"))
        .and_then(|v| v.trim().strip_suffix("GB"))
        .and_then(|gb| gb.parse::<u64>().ok())
        .expect("natter.conf sets max_file_store in GB")
        * 1024
        * 1024
        * 1024;
    for name in ["gateway-1", "gateway-2", "persister-1", "persister-2"] {
        let service = compose.service(name).unwrap();
        let limit = |var: &str| -> u64 {
            service
                .env(var)
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{name} sets {var}"))
        };
        let (chat, delivery) = (limit("CHAT_MAX_BYTES"), limit("DELIVERY_MAX_BYTES"));
        assert!(chat > 0 && delivery > 0, "{name}: both streams are bounded");
        assert!(
            chat + delivery <= store * 8 / 10,
            "{name}: {chat} + {delivery} bytes leave too little of {store} for the KV buckets"
        );
    }
}

#[test]
fn services_connect_to_every_nats_node_as_their_own_user() {
    let compose = Compose::load().unwrap();
    for (service, user, password) in [
        ("gateway-1", "gateway", "NATS_GATEWAY_PASSWORD"),
        ("gateway-2", "gateway", "NATS_GATEWAY_PASSWORD"),
        ("persister-1", "persister", "NATS_PERSISTER_PASSWORD"),
        ("persister-2", "persister", "NATS_PERSISTER_PASSWORD"),
    ] {
        let service = compose.service(service).unwrap();
        let url = service.env("NATS_URL").unwrap();
        let servers: Vec<&str> = url.split(',').collect();
        assert_eq!(
            servers.len(),
            3,
            "{}: NATS_URL should list the three nodes",
            service.name
        );
        for (i, server) in servers.iter().enumerate() {
            assert_eq!(
                *server,
                format!("nats://{user}:${{{password}}}@nats-{}:4222", i + 1),
                "{}: NATS_URL entry {i}",
                service.name
            );
        }
        assert_eq!(service.env("STREAM_REPLICAS").as_deref(), Some("3"));
        assert_eq!(service.env("LOG_FORMAT").as_deref(), Some("json"));
    }
}

#[test]
fn prometheus_config_and_rules_parse_and_exist_where_mounted() {
    let compose = Compose::load().unwrap();
    let prometheus = compose.service("prometheus").unwrap();
    let config_arg = prometheus
        .raw
        .get("command")
        .and_then(Yaml::as_sequence)
        .unwrap()
        .iter()
        .filter_map(Yaml::as_str)
        .find_map(|arg| arg.strip_prefix("--config.file="))
        .expect("prometheus runs with --config.file");
    let config_path = prometheus
        .host_path(Path::new(config_arg))
        .expect("the prometheus config is bind-mounted");
    assert_eq!(
        config_path,
        deploy::deploy_dir().join("prometheus/prometheus.yml")
    );
    let config = read_yaml(&config_path).unwrap();

    // Prometheus resolves rule files against its config file's directory,
    // inside the container; map that back through the mounts.
    let container_dir = Path::new(config_arg).parent().unwrap();
    let rule_files: Vec<&str> = config
        .get("rule_files")
        .and_then(Yaml::as_sequence)
        .expect("prometheus.yml has rule_files")
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    assert!(!rule_files.is_empty());
    for rule_file in rule_files {
        let host = prometheus
            .host_path(&container_dir.join(rule_file))
            .unwrap_or_else(|| panic!("rule file {rule_file} is not mounted"));
        let rules = read_yaml(&host).unwrap();
        let groups = rules.get("groups").and_then(Yaml::as_sequence).unwrap();
        assert!(!groups.is_empty(), "{rule_file} has no rule groups");
    }

    // Every scrape target is a compose service on the port it listens on.
    let mut targets = BTreeSet::new();
    for job in config
        .get("scrape_configs")
        .and_then(Yaml::as_sequence)
        .unwrap()
    {
        for static_config in job
            .get("static_configs")
            .and_then(Yaml::as_sequence)
            .unwrap()
        {
            for target in static_config
                .get("targets")
                .and_then(Yaml::as_sequence)
                .unwrap()
            {
                targets.insert(target.as_str().unwrap().to_owned());
            }
        }
    }
    for expected in [
        "gateway-1:8000",
        "gateway-2:8000",
        "persister-1:8001",
        "persister-2:8001",
    ] {
        assert!(
            targets.contains(expected),
            "prometheus does not scrape {expected}"
        );
    }
    for target in &targets {
        let host = target.split(':').next().unwrap();
        assert!(
            host == "localhost" || compose.names().contains(host),
            "scrape target {target} is not a compose service"
        );
    }
}

#[test]
fn grafana_provisioning_parses_and_points_at_the_dashboard() {
    let compose = Compose::load().unwrap();
    let grafana = compose.service("grafana").unwrap();
    let provisioning = grafana
        .host_path(Path::new("/etc/grafana/provisioning"))
        .expect("grafana's provisioning folder is mounted");

    let datasources = read_yaml(&provisioning.join("datasources/prometheus.yml")).unwrap();
    let uids: Vec<&str> = datasources
        .get("datasources")
        .and_then(Yaml::as_sequence)
        .unwrap()
        .iter()
        .filter_map(|d| d.get("uid").and_then(Yaml::as_str))
        .collect();
    assert!(
        uids.contains(&"prometheus"),
        "no datasource with uid prometheus: {uids:?}"
    );

    let providers = read_yaml(&provisioning.join("dashboards/natter.yml")).unwrap();
    let mut dashboards: Vec<PathBuf> = Vec::new();
    for provider in providers
        .get("providers")
        .and_then(Yaml::as_sequence)
        .unwrap()
    {
        let path = provider
            .get("options")
            .and_then(|o| o.get("path"))
            .and_then(Yaml::as_str)
            .expect("a file provider has options.path");
        // Either a folder holding the provider's path is mounted, or files
        // are mounted into it.
        if let Some(host) = grafana.host_path(Path::new(path))
            && host.is_dir()
        {
            dashboards.extend(
                std::fs::read_dir(&host)
                    .unwrap()
                    .map(|e| e.unwrap().path())
                    .filter(|p| p.extension().is_some_and(|e| e == "json")),
            );
        }
        dashboards.extend(
            grafana
                .bind_mounts
                .iter()
                .filter(|m| m.container.starts_with(path))
                .map(|m| m.host.clone()),
        );
    }
    assert!(
        dashboards.contains(&deploy::dashboard_path()),
        "no provider loads natter.json: {dashboards:?}"
    );
}

#[test]
fn every_dashboard_panel_has_a_datasource_and_a_query() {
    let dashboard = deploy::read_json(&deploy::dashboard_path()).unwrap();
    assert!(
        dashboard
            .get("schemaVersion")
            .and_then(|v| v.as_u64())
            .unwrap()
            >= 36
    );
    let panels = dashboard_panels().unwrap();
    assert!(!panels.is_empty());
    for panel in &panels {
        let title = panel.get("title").and_then(|t| t.as_str()).unwrap_or("?");
        let uid = panel
            .get("datasource")
            .and_then(|d| d.get("uid"))
            .and_then(|u| u.as_str());
        assert_eq!(uid, Some("prometheus"), "panel {title:?} datasource");
        let targets = panel
            .get("targets")
            .and_then(|t| t.as_array())
            .unwrap_or_else(|| panic!("panel {title:?} has no targets"));
        assert!(!targets.is_empty(), "panel {title:?} has no targets");
        for target in targets {
            let expr = target
                .get("expr")
                .and_then(|e| e.as_str())
                .unwrap_or_default();
            assert!(
                !expr.trim().is_empty(),
                "panel {title:?} has a target without expr"
            );
        }
    }
}

#[test]
fn dashboard_panel_ids_are_unique() {
    let dashboard = deploy::read_json(&deploy::dashboard_path()).unwrap();
    let mut ids = HashSet::new();
    let mut all = Vec::new();
    for panel in dashboard.get("panels").and_then(|p| p.as_array()).unwrap() {
        all.push(panel.clone());
        if let Some(inner) = panel.get("panels").and_then(|p| p.as_array()) {
            all.extend(inner.iter().cloned());
        }
    }
    for panel in all {
        let id = panel
            .get("id")
            .and_then(|i| i.as_u64())
            .expect("every panel has an id");
        assert!(ids.insert(id), "panel id {id} is used twice");
    }
}

#[test]
fn dashboard_and_alerts_query_only_exported_metrics() {
    let exported: BTreeSet<String> = EXPORTED_METRICS.iter().map(|m| (*m).to_owned()).collect();
    let dashboard = dashboard_metric_names().unwrap();
    assert!(!dashboard.is_empty());
    assert!(dashboard.iter().all(|m| m.starts_with("natter_")));
    let unknown: Vec<_> = dashboard.difference(&exported).collect();
    assert!(
        unknown.is_empty(),
        "the dashboard queries unexported metrics: {unknown:?}"
    );
    // A metric nobody looks at is one nobody will notice breaking.
    let unused: Vec<_> = exported.difference(&dashboard).collect();
    assert!(
        unused.is_empty(),
        "exported metrics missing from the dashboard: {unused:?}"
    );

    let alerts = alert_metric_names().unwrap();
    assert!(!alerts.is_empty());
    let unknown: Vec<_> = alerts.difference(&exported).collect();
    assert!(
        unknown.is_empty(),
        "the alerts query unexported metrics: {unknown:?}"
    );
}

#[test]
fn metric_names_are_extracted_as_base_names() {
    let names = metric_names_in(
        r#"histogram_quantile(0.99, sum by (le) (rate(natter_delivery_latency_seconds_bucket{path="live"}[5m]))) + natter_x_count + my_natter_y"#,
    );
    assert_eq!(
        names,
        BTreeSet::from([
            "natter_delivery_latency_seconds".to_owned(),
            "natter_x".to_owned()
        ])
    );
}

#[test]
fn each_nats_node_config_passes_nats_server_config_test() {
    let configs = deploy::nats_node_configs().unwrap();
    assert_eq!(configs.len(), 3, "expected three node configs: {configs:?}");
    for config in configs {
        deploy::check_nats_config(&config).unwrap();
    }
}

#[test]
fn nats_config_test_rejects_a_broken_config() {
    // Guards the test above: a check that passes everything checks nothing.
    let dir = tempfile::tempdir().unwrap();
    let source = deploy::deploy_dir().join("nats");
    for entry in std::fs::read_dir(&source).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    let shared = dir.path().join("natter.conf");
    let text = std::fs::read_to_string(&shared).unwrap();
    assert!(text.contains("default_max_consumers"));
    std::fs::write(
        &shared,
        text.replace("default_max_consumers", "default_max_consumerz"),
    )
    .unwrap();
    let error = deploy::check_nats_config(&dir.path().join("nats-1.conf")).unwrap_err();
    assert!(
        error.to_string().contains("default_max_consumerz"),
        "{error:#}"
    );
}

// --- NATS permissions, with the calls the services make ----------------------

type Events = mpsc::UnboundedReceiver<async_nats::Event>;

async fn connect(
    server: &DeployNats,
    user: &str,
    password_var: &str,
) -> (async_nats::Client, Events) {
    let (tx, rx) = mpsc::unbounded_channel();
    // Each service's replies come to its own inbox prefix.
    let inbox = match user {
        "persister" => subjects::PERSISTER_INBOX,
        _ => subjects::GATEWAY_INBOX,
    };
    let client = async_nats::ConnectOptions::with_user_and_password(
        user.to_owned(),
        deploy::test_password(password_var),
    )
    .custom_inbox_prefix(inbox)
    .event_callback(move |event| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(event);
        }
    })
    .connect(server.url())
    .await
    .unwrap();
    (client, rx)
}

/// The permission violations the server reported so far.
fn violations(events: &mut Events) -> Vec<String> {
    let mut found = Vec::new();
    while let Ok(event) = events.try_recv() {
        if let async_nats::Event::ServerError(async_nats::ServerError::Other(text)) = &event
            && text.to_ascii_lowercase().contains("permissions violation")
        {
            found.push(text.clone());
        }
    }
    found
}

/// Waits for the server to report a permission violation naming `subject`.
async fn expect_violation(events: &mut Events, subject: &str) {
    let found = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(event) = events.recv().await {
            if let async_nats::Event::ServerError(async_nats::ServerError::Other(text)) = &event
                && text.to_ascii_lowercase().contains("permissions violation")
                && text.contains(subject)
            {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(found, Ok(true), "no permission violation for {subject}");
}

async fn next_message(subscriber: &mut async_nats::Subscriber, what: &str) -> async_nats::Message {
    tokio::time::timeout(Duration::from_secs(5), subscriber.next())
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
        .unwrap_or_else(|| panic!("subscription for {what} ended"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_permissions_allow_what_each_service_does() {
    let server = DeployNats::start().unwrap();
    let (persister, mut persister_events) =
        connect(&server, "persister", "NATS_PERSISTER_PASSWORD").await;
    let (gateway, mut gateway_events) = connect(&server, "gateway", "NATS_GATEWAY_PASSWORD").await;
    let pjs = jetstream::new(persister.clone());
    let gjs = jetstream::new(gateway.clone());
    let settings = StreamSettings::default();

    // Both declare the streams at start.
    ensure_streams(&pjs, &settings).await.unwrap();
    ensure_streams(&gjs, &settings).await.unwrap();

    // The gateway's KV buckets, declared and used as the gateway does.
    natter_gateway::presence::Presence::open(&gjs, Duration::from_secs(30), 1)
        .await
        .map_err(|e| format!("{e:?}"))
        .unwrap();
    natter_gateway::revocation::Revocations::open(&gjs, Duration::from_secs(3600), 1)
        .await
        .map_err(|e| format!("{e:?}"))
        .unwrap();
    let presence = gjs.get_key_value(subjects::PRESENCE_BUCKET).await.unwrap();
    let mut watch = presence.watch_all().await.unwrap();
    presence.put("user.gateway.1", "{}".into()).await.unwrap();
    let entry = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .expect("the presence watch saw the put")
        .unwrap()
        .unwrap();
    assert_eq!(entry.key, "user.gateway.1");
    presence.delete("user.gateway.1").await.unwrap();
    let revocations = gjs
        .get_key_value(subjects::REVOCATIONS_BUCKET)
        .await
        .unwrap();
    revocations.put("jti", "1".into()).await.unwrap();
    let keys: Vec<String> = revocations
        .keys()
        .await
        .unwrap()
        .map(|k| k.unwrap())
        .collect()
        .await;
    assert_eq!(keys, ["jti"]);
    assert_eq!(
        revocations.get("jti").await.unwrap().as_deref(),
        Some(&b"1"[..])
    );

    // Ephemeral signals between gateways.
    let user = UserId::generate();
    let mut typing = gateway.subscribe(subjects::TYPING_ALL).await.unwrap();
    let mut control = gateway.subscribe(subjects::CONTROL_ALL).await.unwrap();
    let mut live = gateway
        .subscribe(subjects::live_deliver(user))
        .await
        .unwrap();
    gateway.flush().await.unwrap();
    let conversation = natter_core::ConversationId::direct(user, UserId::generate());
    gateway
        .publish(subjects::typing(conversation), "t".into())
        .await
        .unwrap();
    gateway
        .publish(subjects::control(user), "c".into())
        .await
        .unwrap();
    next_message(&mut typing, "a typing signal").await;
    next_message(&mut control, "a control signal").await;

    // A message: published and read back by the gateway...
    let ack = gjs
        .publish(subjects::chat_message(conversation), "{}".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let chat = gjs.get_stream(subjects::CHAT_STREAM).await.unwrap();
    chat.direct_get(ack.sequence).await.unwrap();
    // Read markers and group changes go to CHAT too.
    for subject in [
        subjects::chat_read(conversation),
        subjects::chat_group(natter_core::GroupId::generate()),
    ] {
        gjs.publish(subject, "{}".into())
            .await
            .unwrap()
            .await
            .unwrap();
    }

    // ...consumed, fanned out and acked by the persister...
    let chat_for_persister = pjs.get_stream(subjects::CHAT_STREAM).await.unwrap();
    let consumer = chat_for_persister
        .create_consumer(pull::Config {
            durable_name: Some(subjects::PERSISTER_CONSUMER.to_owned()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .unwrap();
    chat_for_persister
        .reset_consumer(subjects::PERSISTER_CONSUMER, None)
        .await
        .unwrap();
    let mut batch = consumer.fetch().max_messages(1).messages().await.unwrap();
    let record = tokio::time::timeout(Duration::from_secs(5), batch.next())
        .await
        .expect("the persister pulled the record")
        .unwrap()
        .unwrap();
    pjs.publish(subjects::deliver(user), "{}".into())
        .await
        .unwrap()
        .await
        .unwrap();
    record.double_ack().await.unwrap();

    // ...and delivered live and by replay to the gateway.
    next_message(&mut live, "the republished delivery record").await;
    let replayed = natter_gateway::delivery::read_log(&gateway, user, 1, 10)
        .await
        .unwrap();
    assert_eq!(replayed.len(), 1);

    gateway.flush().await.unwrap();
    persister.flush().await.unwrap();
    assert_eq!(violations(&mut gateway_events), Vec::<String>::new());
    assert_eq!(violations(&mut persister_events), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_permissions_deny_each_service_the_others_subjects() {
    let server = DeployNats::start().unwrap();
    let (persister, mut persister_events) =
        connect(&server, "persister", "NATS_PERSISTER_PASSWORD").await;
    let (gateway, mut gateway_events) = connect(&server, "gateway", "NATS_GATEWAY_PASSWORD").await;
    let user = UserId::generate();

    // Only the persister writes delivery logs, only gateways accept chat.
    gateway
        .publish(subjects::deliver(user), "x".into())
        .await
        .unwrap();
    gateway.flush().await.unwrap();
    expect_violation(&mut gateway_events, &subjects::deliver(user)).await;
    let conversation = natter_core::ConversationId::direct(user, UserId::generate());
    persister
        .publish(subjects::chat_message(conversation), "x".into())
        .await
        .unwrap();
    persister.flush().await.unwrap();
    expect_violation(&mut persister_events, &subjects::chat_message(conversation)).await;

    // Neither may read everyone's delivery logs from the stored subjects.
    let _sub = gateway.subscribe("deliver.>").await.unwrap();
    gateway.flush().await.unwrap();
    expect_violation(&mut gateway_events, "deliver.>").await;
    let _sub = persister.subscribe("live.>").await.unwrap();
    persister.flush().await.unwrap();
    expect_violation(&mut persister_events, "live.>").await;

    // A compromised gateway cannot destroy history or revocations: no
    // stream may be deleted or purged, the revocations bucket included.
    let gjs = jetstream::new(gateway.clone());
    ensure_streams(&gjs, &StreamSettings::default())
        .await
        .unwrap();
    for (request, subject) in [
        ("STREAM.DELETE.CHAT", "$JS.API.STREAM.DELETE.CHAT"),
        ("STREAM.PURGE.CHAT", "$JS.API.STREAM.PURGE.CHAT"),
        ("STREAM.DELETE.DELIVERY", "$JS.API.STREAM.DELETE.DELIVERY"),
        (
            "STREAM.PURGE.KV_revocations",
            "$JS.API.STREAM.PURGE.KV_revocations",
        ),
        // Nor take over the persister's consumer.
        (
            "CONSUMER.DELETE.CHAT.persister",
            "$JS.API.CONSUMER.DELETE.CHAT.persister",
        ),
    ] {
        // A denied request is dropped by the server: no answer comes.
        let answer: Result<Result<serde_json::Value, _>, _> =
            tokio::time::timeout(Duration::from_secs(2), gjs.request(request, &())).await;
        assert!(
            !matches!(answer, Ok(Ok(_))),
            "{request} was answered: {answer:?}"
        );
        expect_violation(&mut gateway_events, subject).await;
    }
    assert!(
        gjs.get_stream(subjects::CHAT_STREAM).await.is_ok(),
        "CHAT is still there"
    );
    // Nor read the persister's replies (pulled records, PubAcks).
    let _sub = gateway
        .subscribe(format!("{}.>", subjects::PERSISTER_INBOX))
        .await
        .unwrap();
    gateway.flush().await.unwrap();
    expect_violation(&mut gateway_events, subjects::PERSISTER_INBOX).await;
    // The persister pushes nothing to sockets: live delivery is the
    // stream's republish, not the persister's to fake.
    persister
        .publish(subjects::live_deliver(user), "x".into())
        .await
        .unwrap();
    persister.flush().await.unwrap();
    expect_violation(&mut persister_events, &subjects::live_deliver(user)).await;

    // A wrong password is refused outright.
    let refused =
        async_nats::ConnectOptions::with_user_and_password("gateway".into(), "wrong".into())
            .connect(server.url())
            .await;
    assert!(refused.is_err(), "a wrong password was accepted");
}

// --- Prometheus rules under promtool -------------------------------------------

fn promtool(args: &[&str]) {
    let dir = deploy::deploy_dir().join("prometheus");
    let output = std::process::Command::new("promtool")
        .args(args)
        .current_dir(&dir)
        .output()
        .expect("promtool runs (Debian: apt-get install prometheus)");
    assert!(
        output.status.success(),
        "promtool {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// promtool validates PromQL and runs `alerts.test.yml`, which makes every
/// alert fire on its failure and stay quiet when healthy. It is not part of
/// the toolchain CI installs, hence ignored by default.
#[test]
#[ignore = "needs promtool (Debian: apt-get install prometheus); run with --run-ignored all"]
fn prometheus_config_and_alerts_pass_promtool() {
    promtool(&["check", "config", "prometheus.yml"]);
    promtool(&["check", "rules", "alerts.yml"]);
    promtool(&["test", "rules", "alerts.test.yml"]);
}

// --- NATS credentials as compose passes them ----------------------------------

/// compose gives each service its NATS user and password inside NATS_URL;
/// async-nats 0.51 parses them but does not send them, so natter-runtime
/// must hand them to `ConnectOptions` itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_connects_with_the_credentials_in_nats_url() {
    let server = DeployNats::start().unwrap();
    let port = server.url().rsplit(':').next().unwrap().to_owned();
    let password = deploy::test_password("NATS_PERSISTER_PASSWORD");
    // Parsed as the binaries parse it, so new NATS flags need no change here.
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        nats: natter_runtime::config::NatsArgs,
    }
    let url = format!("nats://persister:{password}@127.0.0.1:{port}");
    let args = <Cli as clap::Parser>::parse_from(["deploy-test", "--nats-url", &url]).nats;
    let client = natter_runtime::jetstream::connect(
        &args,
        "deploy-test",
        natter_core::subjects::PERSISTER_INBOX,
        None,
    )
    .await
    .unwrap();
    let connected = tokio::time::timeout(Duration::from_secs(5), async {
        while client.connection_state() != async_nats::connection::State::Connected {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        connected.is_ok(),
        "not connected: {:?}",
        client.connection_state()
    );
    ensure_streams(&jetstream::new(client), &StreamSettings::default())
        .await
        .unwrap();
}
