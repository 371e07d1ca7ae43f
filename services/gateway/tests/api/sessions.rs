//! Multi-device, device replacement, logout, profile changes and typing.

use natter_testkit::{TestApp, WsClient};
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn every_device_of_a_user_receives_every_delivery() {
    let app = TestApp::spawn().await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let mut phone = app.connect(&bob, "phone").await;
    let mut laptop = app.connect(&bob, "laptop").await;
    let mut a = app.connect(&alice, "a").await;
    let mut a2 = app.connect(&alice, "a2").await;
    a.send_direct(bob.id, "to both devices", "r").await;
    for device in [&mut phone, &mut laptop] {
        assert_eq!(
            device.receive_messages(1).await[0]["data"]["message"]["content"],
            "to both devices"
        );
    }
    // The sender's other device sees its own message too.
    assert_eq!(
        a2.receive_messages(1).await[0]["data"]["message"]["content"],
        "to both devices"
    );
}

#[tokio::test]
async fn devices_of_one_user_connecting_at_once_all_receive_live() {
    let app = TestApp::spawn().await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    // All at once, so several may open the user's live feed concurrently.
    let names: Vec<String> = (0..8).map(|i| format!("d{i}")).collect();
    let mut devices =
        futures::future::join_all(names.iter().map(|name| app.connect(&bob, name))).await;
    let mut a = app.connect(&alice, "a").await;
    a.send_direct(bob.id, "to every device", "r").await;
    for device in &mut devices {
        assert_eq!(
            device.receive_messages(1).await[0]["data"]["message"]["content"],
            "to every device"
        );
    }
    // Closing all but one keeps the feed for the last.
    let mut last = devices.pop().unwrap();
    for device in devices {
        device.close().await;
    }
    a.send_direct(bob.id, "to the last", "r2").await;
    assert_eq!(
        last.receive_messages(1).await[0]["data"]["message"]["content"],
        "to the last"
    );
}

#[tokio::test]
async fn a_second_connection_of_a_device_replaces_the_first() {
    let app = TestApp::spawn().await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let mut old = app.connect(&bob, "phone").await;
    let mut new = app.connect(&bob, "phone").await;
    let closed = old.next_event("__closed").await;
    assert_eq!(closed["data"]["code"], 4000, "{closed}");
    assert!(
        closed["data"]["reason"]
            .as_str()
            .unwrap()
            .contains("replaced")
    );
    let mut a = app.connect(&alice, "a").await;
    a.send_direct(bob.id, "to the new one", "r").await;
    assert_eq!(
        new.receive_messages(1).await[0]["data"]["message"]["content"],
        "to the new one"
    );
}

#[tokio::test]
async fn logout_revokes_the_token_everywhere_and_closes_its_sockets() {
    let app = TestApp::spawn().await;
    let alice = app.signup("alice").await;
    let mut socket = app.connect(&alice, "d").await;
    // Another session of the same user, with another token, stays.
    let (_, login) = app
        .post(
            "/api/auth/login",
            None,
            json!({"username": "alice", "password": "password-123"}),
        )
        .await;
    let other_token = login["token"].as_str().unwrap().to_owned();
    let mut other = WsClient::connect(&app.ws_url(&other_token, "other"))
        .await
        .unwrap();

    let (status, _) = app
        .post("/api/auth/logout", Some(&alice.token), json!({}))
        .await;
    assert_eq!(status, 204);
    let closed = socket.next_event("__closed").await;
    assert_eq!(closed["data"]["code"], 1008, "{closed}");
    let (status, body) = app.get("/api/me", Some(&alice.token)).await;
    assert_eq!(status, 401, "{body}");
    let refused = WsClient::connect(&app.ws_url(&alice.token, "d")).await;
    assert_eq!(refused.err().and_then(|e| e.status), Some(401));

    let (status, _) = app.get("/api/me", Some(&other_token)).await;
    assert_eq!(status, 200);
    other.send_ref("ping", json!({}), "p").await;
    assert_eq!(other.reply_to("p").await["event"], "pong");
}

#[tokio::test]
async fn a_revocation_survives_a_gateway_restart() {
    let mut app = TestApp::spawn().await;
    let alice = app.signup("alice").await;
    let (status, _) = app
        .post("/api/auth/logout", Some(&alice.token), json!({}))
        .await;
    assert_eq!(status, 204);
    app.restart_gateway().await;
    let (status, _) = app.get("/api/me", Some(&alice.token)).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn a_new_display_name_shows_in_lists_and_later_messages() {
    let app = TestApp::spawn().await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let mut a = app.connect(&alice, "a").await;
    let mut b = app.connect(&bob, "b").await;
    for bad in [
        json!({"displayName": ""}),
        json!({"displayName": "x".repeat(65)}),
        json!({"displayName": 3}),
        json!({}),
    ] {
        let response = app
            .http
            .patch(app.url("/api/me"))
            .bearer_auth(&alice.token)
            .json(&bad)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 400, "{bad}");
    }
    let response = app
        .http
        .patch(app.url("/api/me"))
        .bearer_auth(&alice.token)
        .json(&json!({"displayName": "Alice Liddell"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let (_, users) = app.get("/api/users", Some(&bob.token)).await;
    assert_eq!(users["users"][0]["displayName"], "Alice Liddell");
    a.send_direct(bob.id, "renamed", "r").await;
    let got = b.receive_messages(1).await;
    assert_eq!(got[0]["data"]["message"]["senderName"], "Alice Liddell");
}

#[tokio::test]
async fn typing_reaches_the_other_members_only_and_is_rate_limited() {
    let app = TestApp::spawn().await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let carol = app.signup("carol").await;
    let mut a = app.connect(&alice, "a").await;
    let mut a2 = app.connect(&alice, "a2").await;
    let mut b = app.connect(&bob, "b").await;
    let mut c = app.connect(&carol, "c").await;
    let sent = a.send_direct(bob.id, "hi", "r").await;
    let conversation = sent["data"]["message"]["conversationId"]
        .as_str()
        .unwrap()
        .to_owned();
    app.history_eventually(&bob, &conversation, 1).await;

    a.send("typing", json!({"conversationId": conversation}))
        .await;
    let typing = b.next_event("typing").await;
    assert_eq!(typing["data"]["userId"], alice.id.to_string());
    assert_eq!(typing["data"]["conversationId"], conversation);
    for (who, client) in [("carol", &mut c), ("alice's other device", &mut a2)] {
        let frames = client.drain(Duration::from_millis(300)).await;
        assert!(
            frames.iter().all(|f| f["event"] != "typing"),
            "{who}: {frames:?}"
        );
    }
    // Never stored: a reconnect replays no typing.
    let mut b2 = app.connect(&bob, "b").await;
    let replayed = b2.drain(Duration::from_millis(300)).await;
    assert!(replayed.iter().all(|f| f["event"] != "typing"));

    c.send_ref("typing", json!({"conversationId": conversation}), "t")
        .await;
    assert_eq!(c.reply_to("t").await["data"]["code"], "not_found");

    let mut limited = false;
    for i in 0..20 {
        a.send_ref(
            "typing",
            json!({"conversationId": conversation}),
            &format!("t{i}"),
        )
        .await;
    }
    for frame in a.drain(Duration::from_millis(500)).await {
        if frame["event"] == "error" && frame["data"]["code"] == "rate_limited" {
            limited = true;
        }
    }
    assert!(limited, "a burst of typing signals is rate limited");
}

/// How many subscriptions the NATS server holds for `subject`.
fn subscriptions_to(app: &TestApp, subject: &str) -> u64 {
    let path = format!("/subsz?subs=1&test={subject}");
    let body = natter_localinfra::http_body(app.nats.node(0).monitor_port(), &path)
        .expect("the monitoring port answers");
    let subsz: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    subsz["total"].as_u64().expect("a total")
}

#[tokio::test]
async fn a_users_live_subscription_is_shared_and_ends_with_their_last_connection() {
    let app = TestApp::spawn().await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let subject = natter_core::subjects::live_deliver(bob.id);
    assert_eq!(subscriptions_to(&app, &subject), 0);
    let phone = app.connect(&bob, "phone").await;
    let mut laptop = app.connect(&bob, "laptop").await;
    assert_eq!(
        subscriptions_to(&app, &subject),
        1,
        "one subscription, shared by the user's sessions"
    );

    // The first to leave does not take the live feed from the other.
    phone.close().await;
    let mut a = app.connect(&alice, "a").await;
    a.send_direct(bob.id, "still live", "r").await;
    assert_eq!(
        laptop.receive_messages(1).await[0]["data"]["message"]["content"],
        "still live"
    );
    assert_eq!(subscriptions_to(&app, &subject), 1);

    // The last one ends it: the server stops sending what nobody here reads.
    laptop.close().await;
    let gone = app
        .eventually(Duration::from_secs(10), || async {
            subscriptions_to(&app, &subject) == 0
        })
        .await;
    assert!(gone, "the subscription outlived the user's last connection");
}
