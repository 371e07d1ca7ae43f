//! Each scenario, small and short, against a real natter (nats-server,
//! PostgreSQL, gateway and persister from the test kit): it must run, count
//! every message right, and notice when delivery breaks.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking

use natter_loadtest::cli::{Abuse, Connections, Fanout, Steady, Storm, Target};
use natter_loadtest::render;
use natter_testkit::app::TEST_JWT_SECRET;
use natter_testkit::{TestApp, TestOptions};
use std::time::Duration;

async fn app() -> TestApp {
    TestApp::spawn_with(TestOptions {
        gateway_args: vec!["--send-rate-per-sec".into(), "100000".into()],
        ..TestOptions::default()
    })
    .await
}

fn target(app: &TestApp) -> Target {
    Target {
        url: format!("http://127.0.0.1:{}", app.gateway_port),
        database_url: Some(app.db.url.clone()),
        jwt_secret: Some(TEST_JWT_SECRET.to_owned()),
        nats_url: Some(app.nats.url()),
        gateway_pid: None,
        out: std::env::temp_dir(),
        quiet: true,
    }
}

#[tokio::test]
async fn steady_counts_every_message_and_measures_latency() {
    let app = app().await;
    let args = Steady {
        users: 10,
        rate: 200,
        duration: 2,
        warmup: 1,
        drain: 10,
    };
    let report = natter_loadtest::scenarios::steady::run(&target(&app), &args)
        .await
        .unwrap();
    let a = &report.accounting;
    assert!(report.ok(), "{}", render::summary(&report));
    // 3 s at 200/s: about 600 sends, every one accepted and delivered once.
    assert!((500..=700).contains(&a.attempted), "{a:?}");
    assert_eq!(a.accepted, a.attempted, "{a:?}");
    assert_eq!(a.delivered, a.accepted);
    assert_eq!(
        (a.lost, a.duplicated, a.out_of_order, a.unexpected),
        (0, 0, 0, 0)
    );
    let delivery = report.delivery_latency.as_ref().expect("delivery latency");
    assert!(delivery.count >= 300, "{delivery:?}");
    assert!(delivery.p50_ms > 0.0 && delivery.p50_ms <= delivery.p99_ms);
    assert!(report.accept_latency.is_some());
    assert!(!report.timeline.is_empty());
    assert!(report.delivered_per_s > 100.0, "{}", report.delivered_per_s);
}

#[tokio::test]
async fn steady_says_loudly_when_accepted_messages_are_not_delivered() {
    let mut app = app().await;
    let target = target(&app);
    let args = Steady {
        users: 4,
        rate: 100,
        duration: 3,
        warmup: 0,
        drain: 3,
    };
    let run =
        tokio::spawn(async move { natter_loadtest::scenarios::steady::run(&target, &args).await });
    // Messages accepted after this are stored in CHAT but never delivered
    // while the persister is down: the books must show them lost.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    app.stop_persister().await;
    let report = run.await.unwrap().unwrap();
    let a = &report.accounting;
    assert!(a.lost > 0, "{a:?}");
    assert_eq!(a.lost + a.delivered, a.accepted, "{a:?}");
    assert!(!report.ok());
    let summary = render::summary(&report);
    assert!(summary.contains("FAILED"), "{summary}");
    assert!(summary.contains("LOST"), "{summary}");
}

#[tokio::test]
async fn fanout_delivers_every_group_message_to_every_member() {
    let app = app().await;
    let args = Fanout {
        groups: 2,
        group_size: 5,
        rate: 40,
        duration: 2,
        warmup: 0,
        drain: 10,
    };
    let report = natter_loadtest::scenarios::fanout::run(&target(&app), &args)
        .await
        .unwrap();
    let a = &report.accounting;
    assert!(report.ok(), "{}", render::summary(&report));
    assert!(a.accepted >= 60, "{a:?}");
    // Four members besides the sender get each message.
    assert_eq!(a.delivered, a.accepted * 4, "{a:?}");
    assert!(report.extra["last_member_p99_ms"] >= report.extra["last_member_p50_ms"]);
    assert!(report.delivery_latency.is_some());
}

#[tokio::test]
async fn connections_holds_idle_sockets_and_measures_gateway_memory() {
    let app = app().await;
    let mut target = target(&app);
    // The gateway runs in this process.
    target.gateway_pid = Some(std::process::id());
    let args = Connections {
        count: 200,
        concurrency: 50,
        hold: 1,
    };
    let report = natter_loadtest::scenarios::connections::run(&target, &args)
        .await
        .unwrap();
    assert!(report.ok(), "{}", render::summary(&report));
    assert_eq!(report.extra["connections"], 200.0);
    assert!(report.extra["connect_per_s"] > 0.0);
    assert!(
        report.extra.contains_key("rss_kb_per_connection"),
        "{:?}",
        report.extra
    );
    assert_eq!(report.accept_latency.as_ref().unwrap().count, 200);
}

#[tokio::test]
async fn storm_replays_every_missed_message_after_a_mass_reconnect() {
    let app = app().await;
    let args = Storm {
        devices: 50,
        missed: 10,
        deadline: 30,
        send_rate: 1000,
    };
    let report = natter_loadtest::scenarios::storm::run(&target(&app), &args)
        .await
        .unwrap();
    let a = &report.accounting;
    assert!(report.ok(), "{}", render::summary(&report));
    assert_eq!(a.accepted, 500, "{a:?}");
    assert_eq!(a.delivered, 500, "{a:?}");
    assert_eq!(report.extra["incomplete_devices"], 0.0);
    let per_device = report.delivery_latency.as_ref().unwrap();
    assert_eq!(per_device.count, 50);
    assert!(report.extra["storm_complete_s"] * 1000.0 >= per_device.p99_ms * 0.99);
}

/// Limits small enough that two abusers can exceed them a hundredfold.
const SEND_LIMIT: &str = "5";
const CONNECTION_LIMIT: &str = "4";

/// A natter whose gateway allows `send_rate` messages a second and
/// `connections` sockets per user.
async fn with_limits(send_rate: &str, connections: &str) -> TestApp {
    TestApp::spawn_with(TestOptions {
        gateway_args: [
            "--send-rate-per-sec",
            send_rate,
            "--max-connections-per-user",
            connections,
        ]
        .map(String::from)
        .to_vec(),
        ..TestOptions::default()
    })
    .await
}

fn abuse_args() -> Abuse {
    Abuse {
        honest: Steady {
            users: 10,
            rate: 20,
            duration: 2,
            warmup: 1,
            drain: 10,
        },
        abusers: 2,
        flood_factor: 100,
        connection_factor: 5,
        group_size: 30,
        big_rate: 20,
        send_limit: SEND_LIMIT.parse().unwrap(),
        connection_limit: CONNECTION_LIMIT.parse().unwrap(),
        max_message_bytes: 16 * 1024,
    }
}

#[tokio::test]
async fn abuse_holds_abusers_to_their_limits_and_keeps_honest_books() {
    let app = with_limits(SEND_LIMIT, CONNECTION_LIMIT).await;
    let report = natter_loadtest::scenarios::abuse::run(&target(&app), &abuse_args())
        .await
        .unwrap();
    let a = &report.accounting;
    let extra = &report.extra;
    assert!(report.ok(), "{}", render::summary(&report));
    // The honest senders (5 of them at 4/s) were all accepted and delivered.
    assert!(a.accepted >= 50, "{a:?}");
    assert_eq!((a.refused, a.delivered), (0, a.accepted), "{a:?}");
    // Each abuser flooded at about 500/s and got at most its 5/s (and a
    // burst of 10) through.
    assert!(extra["flood_sent_per_s"] > 300.0, "{extra:?}");
    let seconds = extra["attack_s"];
    let accepted = extra["flood_accepted_per_s"] * seconds + extra["big_accepted"];
    assert!(accepted <= 2.0 * (5.0 * seconds + 10.0) + 1.0, "{extra:?}");
    // Of 20 connections each, 4 were let in and the rest refused with 1008.
    assert_eq!(extra["connections_tried"], 40.0, "{extra:?}");
    assert_eq!(extra["connections_ready"], 8.0, "{extra:?}");
    assert_eq!(extra["connections_refused"], 32.0, "{extra:?}");
    // What the abusers got through reached the honest users, out of the books.
    assert!(extra["foreign_deliveries"] > 0.0, "{extra:?}");
    assert!(extra["big_sent"] > extra["big_accepted"], "{extra:?}");
    assert!(extra["refused_rate_limited"] > 0.0, "{extra:?}");
    for key in [
        "quiet_delivery_p99_ms",
        "delivery_p99_ratio",
        "quiet_jetstream_bytes_per_honest_msg",
        "attacked_jetstream_bytes_per_honest_msg",
    ] {
        assert!(extra[key] > 0.0, "{key}: {extra:?}");
    }
    assert!(report.delivery_latency.is_some());
}

#[tokio::test]
async fn abuse_says_so_when_a_gateway_does_not_hold_the_limits() {
    // The generous limits of `app()`: the abusers get through.
    let app = with_limits("100000", "1000").await;
    let report = natter_loadtest::scenarios::abuse::run(&target(&app), &abuse_args())
        .await
        .unwrap();
    assert!(!report.ok());
    let problems = report.problems.join("; ");
    assert!(problems.contains("over their cap"), "{problems}");
    assert!(problems.contains("over their limit"), "{problems}");
}

#[tokio::test]
async fn steady_spreads_its_pairs_over_several_gateways() {
    let app = app().await;
    // A second gateway on the same natter: each pair's sender and receiver
    // then sit on different gateways, and every message crosses NATS.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let second = listener.local_addr().unwrap().port();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let tasks = tokio_util::task::TaskTracker::new();
    let gateway = tokio::spawn(natter_gateway::serve(
        app.gateway_config(),
        listener,
        shutdown.clone(),
        tasks,
    ));
    let mut target = target(&app);
    target.url = format!("{},http://127.0.0.1:{second}", target.url);
    assert_eq!(
        target.gateway(0),
        format!("http://127.0.0.1:{}", app.gateway_port)
    );
    assert_eq!(target.gateway(1), format!("http://127.0.0.1:{second}"));
    assert_eq!(target.gateway(2), target.gateway(0));
    let args = Steady {
        users: 10,
        rate: 100,
        duration: 2,
        warmup: 1,
        drain: 10,
    };
    let report = natter_loadtest::scenarios::steady::run(&target, &args)
        .await
        .unwrap();
    let a = &report.accounting;
    assert!(report.ok(), "{}", render::summary(&report));
    assert!(a.attempted >= 200, "{a:?}");
    assert_eq!(
        (a.accepted, a.delivered),
        (a.attempted, a.attempted),
        "{a:?}"
    );
    // With the second gateway gone, half the users cannot connect: they
    // were going to it.
    shutdown.cancel();
    let _ = gateway.await;
    let refused = natter_loadtest::scenarios::steady::run(&target, &args).await;
    assert!(refused.is_err(), "every user went to the first gateway");
}

#[tokio::test]
async fn steady_clients_ride_out_the_restart_of_their_gateway() {
    let mut app = app().await;
    // Users alternate between the test kit's gateway and a second one.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let second = listener.local_addr().unwrap().port();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let gateway = tokio::spawn(natter_gateway::serve(
        app.gateway_config(),
        listener,
        shutdown.clone(),
        tokio_util::task::TaskTracker::new(),
    ));
    let mut target = target(&app);
    target.url = format!("{},http://127.0.0.1:{second}", target.url);
    let args = Steady {
        users: 10,
        rate: 100,
        duration: 4,
        warmup: 0,
        drain: 10,
    };
    let run =
        tokio::spawn(async move { natter_loadtest::scenarios::steady::run(&target, &args).await });
    // Half the sockets drop in the middle of the run: their devices come
    // back (to the other gateway while theirs is down), resume from their
    // cursors and send again what went unanswered.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    app.restart_gateway().await;
    let report = run.await.unwrap().unwrap();
    shutdown.cancel();
    let _ = gateway.await;
    let a = &report.accounting;
    assert!(report.ok(), "{}", render::summary(&report));
    assert!(a.attempted >= 350, "{a:?}");
    assert_eq!(
        (a.accepted, a.delivered),
        (a.attempted, a.attempted),
        "{a:?}"
    );
    assert!(report.extra["reconnects"] >= 5.0, "{:?}", report.extra);
}
