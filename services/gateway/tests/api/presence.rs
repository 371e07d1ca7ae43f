//! Presence, cluster-wide: online within a second, offline when a
//! connection drops or its gateway dies, and the admin view.

use natter_testkit::app::{TEST_JWT_SECRET, wait_until_ok};
use natter_testkit::{TestApp, TestOptions, TestUser, WsClient};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const TTL_SECS: u64 = 2;

fn short_ttl() -> TestOptions {
    TestOptions {
        gateway_args: vec![
            "--presence-ttl-secs".into(),
            TTL_SECS.to_string(),
            "--admin-users".into(),
            "root".into(),
        ],
        ..TestOptions::default()
    }
}

async fn contacts(app: &TestApp, one: &TestUser, two: &TestUser) {
    let mut c = app.connect(one, "setup").await;
    let sent = c.send_direct(two.id, "hello", "r").await;
    let conversation = sent["data"]["message"]["conversationId"]
        .as_str()
        .unwrap()
        .to_owned();
    app.history_eventually(two, &conversation, 1).await;
    c.close().await;
}

async fn online(app: &TestApp, viewer: &TestUser, user: &TestUser) -> bool {
    let (_, users) = app.get("/api/users", Some(&viewer.token)).await;
    users["users"]
        .as_array()
        .and_then(|l| l.iter().find(|u| u["id"] == user.id.to_string()))
        .and_then(|u| u["online"].as_bool())
        .unwrap_or(false)
}

/// The next presence frame about `user`, within `wait`.
async fn presence_of(
    client: &mut WsClient,
    user: &TestUser,
    wait: Duration,
) -> Option<serde_json::Value> {
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        let frame = client.try_next(deadline - Instant::now()).await?;
        if frame["event"] == "presence" && frame["data"]["userId"] == user.id.to_string() {
            return Some(frame["data"].clone());
        }
    }
    None
}

#[tokio::test]
async fn a_contact_sees_online_within_a_second_and_offline_after_a_drop() {
    let app = TestApp::spawn_with(short_ttl()).await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    contacts(&app, &alice, &bob).await;
    let mut b = app.connect(&bob, "b").await;
    b.drain(Duration::from_millis(200)).await;

    let started = Instant::now();
    let a = app.connect(&alice, "a").await;
    let seen = presence_of(&mut b, &alice, Duration::from_secs(1))
        .await
        .expect("online within 1 s");
    assert_eq!(seen["online"], true);
    assert!(seen["lastSeen"].as_str().is_some());
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(online(&app, &bob, &alice).await);

    // No close frame: the TCP connection just goes.
    a.drop_connection();
    let gone = presence_of(&mut b, &alice, Duration::from_secs(TTL_SECS + 1))
        .await
        .expect("offline within the TTL");
    assert_eq!(gone["online"], false);
    assert!(!online(&app, &bob, &alice).await);
}

#[tokio::test]
async fn a_killed_gateways_users_go_offline_within_the_ttl() {
    let app = TestApp::spawn_with(short_ttl()).await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    contacts(&app, &alice, &bob).await;
    let mut b = app.connect(&bob, "b").await;
    // The setup connection's "offline" may still be on its way to bob.
    b.drain(Duration::from_millis(200)).await;
    while presence_of(&mut b, &alice, Duration::from_millis(300))
        .await
        .is_some()
    {}

    // A second gateway, as its own process, holds alice's connection.
    let port = natter_localinfra::free_port();
    let mut other = Command::new(env!("CARGO_BIN_EXE_natter-gateway"))
        .env("CHAT_MAX_BYTES", natter_testkit::app::TEST_STREAM_MAX_BYTES)
        .env(
            "DELIVERY_MAX_BYTES",
            natter_testkit::app::TEST_STREAM_MAX_BYTES,
        )
        .env("NATS_URL", app.nats.url())
        .env("DATABASE_URL", &app.db.url)
        .env("JWT_SECRET", TEST_JWT_SECRET)
        .env("PORT", port.to_string())
        .env("BIND_ADDRESS", "127.0.0.1")
        .env("PRESENCE_TTL_SECS", TTL_SECS.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until_ok(&app.http, &format!("http://127.0.0.1:{port}/readyz")).await;
    let _a = WsClient::connect(&format!(
        "ws://127.0.0.1:{port}/ws?token={}&device=a",
        alice.token
    ))
    .await
    .unwrap();
    let seen = presence_of(&mut b, &alice, Duration::from_secs(2))
        .await
        .expect("online");
    assert_eq!(seen["online"], true);

    let killed = Instant::now();
    Command::new("kill")
        .args(["-9", &other.id().to_string()])
        .status()
        .unwrap();
    let _ = other.wait();
    let gone = presence_of(&mut b, &alice, Duration::from_secs(TTL_SECS * 3))
        .await
        .expect("offline after the kill");
    assert_eq!(gone["online"], false);
    let took = killed.elapsed();
    assert!(
        took <= Duration::from_secs(TTL_SECS + 2),
        "offline after {took:?}"
    );
    assert!(!online(&app, &bob, &alice).await);
}

#[tokio::test]
async fn only_admins_see_active_users_and_never_tokens() {
    let app = TestApp::spawn_with(short_ttl()).await;
    let root = app.signup("root").await;
    let alice = app.signup("alice").await;
    let _a1 = app.connect(&alice, "one").await;
    let _a2 = app.connect(&alice, "two").await;
    let (status, _) = app.get("/debug/active-users", Some(&alice.token)).await;
    assert_eq!(status, 403);
    let (status, _) = app.get("/debug/active-users", None).await;
    assert_eq!(status, 401);
    let deadline = Instant::now() + Duration::from_secs(2);
    let body = loop {
        let (status, body) = app.get("/debug/active-users", Some(&root.token)).await;
        assert_eq!(status, 200, "{body}");
        let listed = body["activeUsers"].as_array().is_some_and(|l| {
            l.iter()
                .any(|u| u["userId"] == alice.id.to_string() && u["connections"] == 2)
        });
        if listed {
            break body;
        }
        assert!(Instant::now() < deadline, "alice not listed: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let text = body.to_string();
    assert!(!text.contains(&alice.token) && !text.to_lowercase().contains("socket"));
    assert_eq!(
        body["activeUsers"][0]["gateways"].as_array().unwrap().len(),
        1
    );
}

#[tokio::test]
async fn contacts_who_come_and_go_together_are_each_told_in_order() {
    // Changes that arrive together are told with one query: each contact
    // still gets every change of every user, in order.
    let app = TestApp::spawn().await;
    let bob = app.signup("bob").await;
    let mut friends = Vec::new();
    for i in 0..12 {
        let friend = app.signup(&format!("friend{i}")).await;
        contacts(&app, &friend, &bob).await;
        friends.push(friend);
    }
    let stranger = app.signup("stranger").await;
    let mut b = app.connect(&bob, "b").await;
    b.drain(Duration::from_millis(300)).await;

    let mut sockets = Vec::new();
    for friend in friends.iter().chain([&stranger]) {
        sockets.push(app.connect(friend, "phone").await);
    }
    for socket in sockets {
        socket.drop_connection();
    }
    let mut seen: std::collections::HashMap<String, Vec<bool>> = Default::default();
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.values().map(Vec::len).sum::<usize>() < 2 * friends.len()
        && Instant::now() < deadline
    {
        let Some(frame) = b.try_next(deadline - Instant::now()).await else {
            break;
        };
        if frame["event"] == "presence" {
            let user = frame["data"]["userId"].as_str().unwrap().to_owned();
            seen.entry(user)
                .or_default()
                .push(frame["data"]["online"].as_bool().unwrap());
        }
    }
    for friend in &friends {
        assert_eq!(
            seen.get(&friend.id.to_string()),
            Some(&vec![true, false]),
            "{seen:?}"
        );
    }
    assert!(
        !seen.contains_key(&stranger.id.to_string()),
        "bob shares nothing with the stranger"
    );
}
