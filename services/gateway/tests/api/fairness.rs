//! Per-user fairness (DESIGN.md §5): rate limits that hold across all of a
//! user's connections and REST together, and the cap on a user's sockets.

use futures::StreamExt;
use natter_testkit::app::{TEST_JWT_SECRET, wait_until_ok};
use natter_testkit::{TestApp, TestOptions, TestUser};
use serde_json::{Value, json};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

async fn spawn_with_gateway_args(args: &[&str]) -> TestApp {
    TestApp::spawn_with(TestOptions {
        gateway_args: args.iter().map(|a| (*a).to_owned()).collect(),
        ..TestOptions::default()
    })
    .await
}

/// A REST POST as `user`: status, `Retry-After` (in seconds) and body.
async fn post(
    app: &TestApp,
    user: &TestUser,
    path: &str,
    body: Value,
) -> (u16, Option<u64>, Value) {
    let response = app
        .http
        .post(app.url(path))
        .bearer_auth(&user.token)
        .json(&body)
        .send()
        .await
        .unwrap();
    natter_testkit::app::limited(response).await
}

async fn still_open(client: &mut natter_testkit::WsClient) {
    client.send_ref("ping", json!({}), "still-open").await;
    assert_eq!(client.reply_to("still-open").await["event"], "pong");
}

#[tokio::test]
async fn the_send_rate_is_per_user_across_sockets_and_rest() {
    // One message every two seconds, no burst: the second send within that
    // time is over the limit, whichever way it comes.
    let app = spawn_with_gateway_args(&["--send-rate-per-sec", "0.5"]).await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let mut phone = app.connect(&alice, "phone").await;
    let mut laptop = app.connect(&alice, "laptop").await;

    let first = phone.send_direct(bob.id, "first", "r1").await;
    assert_eq!(first["event"], "message_sent", "{first}");
    let second = laptop.send_direct(bob.id, "second", "r2").await;
    assert_eq!(second["event"], "error", "{second}");
    assert_eq!(second["data"]["code"], "rate_limited");
    let (status, retry_after, body) = post(
        &app,
        &alice,
        "/api/messages",
        json!({"receiverId": bob.id.to_string(), "content": "third"}),
    )
    .await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "rate_limited");
    let retry_after = retry_after.expect("a 429 says when to retry");
    assert!((1..=2).contains(&retry_after), "Retry-After: {retry_after}");

    // The limit is alice's alone, and refusing a send closes nothing.
    let (status, _, body) = post(
        &app,
        &bob,
        "/api/messages",
        json!({"receiverId": alice.id.to_string(), "content": "bob is fine"}),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    still_open(&mut laptop).await;
}

#[tokio::test]
async fn mark_read_is_rate_limited_per_user_on_rest_and_socket() {
    let app = TestApp::spawn().await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let mut a = app.connect(&alice, "a").await;
    let sent = a.send_direct(bob.id, "hello", "r").await;
    let conversation = sent["data"]["message"]["conversationId"]
        .as_str()
        .unwrap()
        .to_owned();
    app.history_eventually(&alice, &conversation, 1).await;

    let path = format!("/api/conversations/{conversation}/read");
    let mut accepted = 0;
    let mut limited = None;
    for _ in 0..30 {
        match post(&app, &alice, &path, json!({})).await {
            (204, _, _) => accepted += 1,
            (429, retry_after, body) => {
                assert_eq!(body["error"]["code"], "rate_limited");
                limited = retry_after;
                break;
            }
            (status, _, body) => panic!("{status}: {body}"),
        }
    }
    assert_eq!(limited, Some(1), "30 read markers at once are refused");
    assert!(accepted >= 10, "a burst of read markers passes: {accepted}");

    // The socket shares the limit the REST calls used up.
    a.send_ref("mark_read", json!({"conversationId": conversation}), "m")
        .await;
    assert_eq!(a.reply_to("m").await["data"]["code"], "rate_limited");
    still_open(&mut a).await;
}

#[tokio::test]
async fn typing_is_rate_limited_per_user_across_devices() {
    let app = TestApp::spawn().await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let mut a = app.connect(&alice, "a").await;
    let mut a2 = app.connect(&alice, "a2").await;
    let sent = a.send_direct(bob.id, "hi", "r").await;
    let conversation = sent["data"]["message"]["conversationId"]
        .as_str()
        .unwrap()
        .to_owned();
    app.history_eventually(&bob, &conversation, 1).await;

    // Four signals from each device: within one connection's burst (5),
    // over the user's.
    for i in 0..8 {
        let client = if i % 2 == 0 { &mut a } else { &mut a2 };
        client
            .send_ref(
                "typing",
                json!({"conversationId": conversation}),
                &format!("t{i}"),
            )
            .await;
    }
    let mut limited = 0;
    for client in [&mut a, &mut a2] {
        for frame in client.drain(Duration::from_millis(500)).await {
            if frame["event"] == "error" && frame["data"]["code"] == "rate_limited" {
                limited += 1;
            }
        }
    }
    assert!(limited >= 1, "eight signals in a burst from one user");
    still_open(&mut a2).await;
}

/// How a socket's start went: `Ok` with its `ready`, or the close frame's
/// code and reason.
async fn open(url: &str) -> Result<Value, (u16, String)> {
    let (mut socket, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("the handshake completes");
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(15), socket.next())
            .await
            .expect("a frame within 15 s");
        match frame {
            Some(Ok(Message::Text(text))) => {
                let frame: Value = serde_json::from_str(text.as_str()).unwrap();
                if frame["event"] == "ready" {
                    return Ok(frame["data"].clone());
                }
            }
            Some(Ok(Message::Close(Some(close)))) => {
                return Err((u16::from(close.code), close.reason.to_string()));
            }
            Some(Ok(_)) => {}
            other => panic!("socket ended without a close frame: {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_socket_over_the_per_user_cap_is_closed_with_a_reason() {
    let app = spawn_with_gateway_args(&["--max-connections-per-user", "2"]).await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let _phone = app.connect(&alice, "phone").await;
    let laptop = app.connect(&alice, "laptop").await;

    let refused = open(&app.ws_url(&alice.token, "tablet")).await;
    assert_eq!(refused, Err((1008, "too many connections".to_owned())));
    // Another user is not affected.
    let _b = app.connect(&bob, "b").await;
    // A device reconnecting replaces its older connection: that one does
    // not count against it.
    let again = open(&app.ws_url(&alice.token, "phone")).await;
    assert!(again.is_ok(), "{again:?}");
    // A place freed is a place taken.
    laptop.close().await;
    let tablet = app
        .eventually(Duration::from_secs(5), || async {
            open(&app.ws_url(&alice.token, "tablet")).await.is_ok()
        })
        .await;
    assert!(tablet, "a freed place is given to a new device");
}

#[tokio::test]
async fn the_connection_cap_counts_the_users_sockets_on_other_gateways() {
    // A gateway learns of connections older than itself from their
    // heartbeats, every third of the TTL: keep that short.
    let app = spawn_with_gateway_args(&[
        "--max-connections-per-user",
        "2",
        "--presence-ttl-secs",
        "2",
    ])
    .await;
    let root = app.signup("root").await;
    let alice = app.signup("alice").await;
    let _phone = app.connect(&alice, "phone").await;
    let _laptop = app.connect(&alice, "laptop").await;

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
        .env("MAX_CONNECTIONS_PER_USER", "2")
        .env("PRESENCE_TTL_SECS", "2")
        .env("ADMIN_USERS", "root")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    wait_until_ok(&app.http, &format!("{base}/readyz")).await;
    // Once the other gateway's view of the cluster has alice's sockets...
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let view: Value = app
            .http
            .get(format!("{base}/debug/active-users"))
            .bearer_auth(&root.token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if view["connections"] == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "never saw alice: {view}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // ...a third socket there is one too many.
    let url = format!(
        "ws://127.0.0.1:{port}/ws?token={}&device=tablet",
        alice.token
    );
    let refused = open(&url).await;
    let _ = other.kill();
    let _ = other.wait();
    assert_eq!(refused, Err((1008, "too many connections".to_owned())));
}

#[tokio::test]
async fn group_changes_are_rate_limited_per_user() {
    let app = TestApp::spawn().await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    // A burst of changes passes; past it, each one waits its turn.
    let mut statuses = Vec::new();
    let mut retry = None;
    for i in 0..14 {
        let (status, retry_after, body) = post(
            &app,
            &alice,
            "/api/groups",
            json!({"name": format!("g{i}"), "memberIds": [bob.id.to_string()]}),
        )
        .await;
        if status == 429 {
            assert_eq!(body["error"]["code"], "rate_limited", "{body}");
            retry = retry_after;
        }
        statuses.push(status);
    }
    let created = statuses.iter().filter(|s| **s == 201).count();
    assert!((10..14).contains(&created), "{statuses:?}");
    assert!(statuses.contains(&429), "{statuses:?}");
    assert!(
        retry.is_some_and(|s| (1..=2).contains(&s)),
        "Retry-After {retry:?}"
    );
    // Someone else's changes are not held up.
    let (status, _, _) = post(
        &app,
        &bob,
        "/api/groups",
        json!({"name": "bob's", "memberIds": [alice.id.to_string()]}),
    )
    .await;
    assert_eq!(status, 201);
}

/// A gateway with a fan-out budget of 20,000 bytes a second and messages of
/// at most 1 KiB, and two users on it.
async fn small_fan_out_budget() -> (TestApp, TestUser, TestUser) {
    let app = spawn_with_gateway_args(&[
        "--fanout-bytes-per-sec",
        "20000",
        "--max-message-bytes",
        "1024",
    ])
    .await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    (app, alice, bob)
}

#[tokio::test]
async fn a_users_fan_out_is_bounded_in_bytes_and_holds_up_no_one_else() {
    // Burst: one largest message to a full group, 1,000 x (2 x 1,024 + 512)
    // bytes (content of quotes doubles once escaped); a 1 KiB message of
    // letters to 100 members costs 100 x (1,024 + 512), a sixteenth of it.
    let (app, alice, bob) = small_fan_out_budget().await;
    let members = app.seed_users("member", 98).await;
    // Bob makes the group (which costs his budget, not Alice's).
    let refs: Vec<&TestUser> = members.iter().chain([&alice]).collect();
    let group = app.create_group(&bob, "everyone", &refs).await;
    let group_id = group["id"].as_str().unwrap().to_owned();
    let mut a = app.connect(&alice, "a").await;
    let content = "x".repeat(1024);
    let mut outcomes = Vec::new();
    for i in 0..25 {
        let reference = format!("g{i}");
        a.send_ref(
            "send_group_message",
            json!({"groupId": group_id, "content": content}),
            &reference,
        )
        .await;
        let reply = a.reply_to(&reference).await;
        outcomes.push(match reply["event"].as_str() {
            Some("message_sent") => "sent".to_owned(),
            _ => reply["data"]["code"].as_str().unwrap_or("?").to_owned(),
        });
    }
    let sent = outcomes.iter().filter(|o| *o == "sent").count();
    assert!((16..=18).contains(&sent), "{outcomes:?}");
    assert!(
        outcomes[sent..].iter().all(|o| o == "rate_limited"),
        "{outcomes:?}"
    );
    still_open(&mut a).await;
    // Small messages to one person cost little: Alice's direct message and
    // Bob's are both accepted.
    let mut b = app.connect(&bob, "b").await;
    let reply = b.send_direct(alice.id, "hello", "dm").await;
    assert_eq!(reply["event"], "message_sent", "{reply}");
}

#[tokio::test]
async fn group_changes_to_many_members_spend_the_fan_out_budget() {
    // Burst: 1,000 x (2 x 1,024 + 512) bytes. Making a 200-member group names
    // 200 users to each of 200 members: 200 x (200 x 40 + 512) bytes, so
    // the burst holds one such group and the rate refills little of it.
    let (app, alice, bob) = small_fan_out_budget().await;
    let members = app.seed_users("member", 199).await;
    let ids: Vec<String> = members.iter().map(|m| m.id.to_string()).collect();
    let mut statuses = Vec::new();
    for i in 0..3 {
        let (status, retry, body) = post(
            &app,
            &alice,
            "/api/groups",
            json!({"name": format!("all hands {i}"), "memberIds": ids}),
        )
        .await;
        if status == 429 {
            assert_eq!(body["error"]["code"], "rate_limited", "{body}");
            assert!(retry.is_some_and(|s| s >= 1), "Retry-After {retry:?}");
        }
        statuses.push(status);
    }
    assert_eq!(statuses, [201, 429, 429]);
    // Small groups and other users are not held up.
    let (status, _, _) = post(
        &app,
        &bob,
        "/api/groups",
        json!({"name": "bob's", "memberIds": [alice.id.to_string()]}),
    )
    .await;
    assert_eq!(status, 201);
    let mut b = app.connect(&bob, "b").await;
    let reply = b.send_direct(alice.id, "hello", "dm").await;
    assert_eq!(reply["event"], "message_sent", "{reply}");
}
