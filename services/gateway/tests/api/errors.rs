//! Seed test case 8: every bad input gets a clear error and the connection
//! stays usable; frames over the hard cap close it with 1009.

use natter_testkit::TestApp;
use serde_json::json;

#[tokio::test]
async fn bad_frames_get_errors_and_the_socket_stays_open() {
    let app = TestApp::spawn().await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let mut a = app.connect(&alice, "d").await;
    let bob_id = bob.id.to_string();
    let unknown = uuid::Uuid::now_v7().to_string();
    let too_long = "x".repeat(16 * 1024 + 1);

    let cases: Vec<(&str, serde_json::Value, &str)> = vec![
        (
            "empty content",
            json!({"event": "send_direct_message", "data": {"receiverId": bob_id, "content": ""}}),
            "bad_request",
        ),
        (
            "blank content",
            json!({"event": "send_direct_message", "data": {"receiverId": bob_id, "content": "  \n\t "}}),
            "bad_request",
        ),
        (
            "non-string content",
            json!({"event": "send_direct_message", "data": {"receiverId": bob_id, "content": 42}}),
            "bad_request",
        ),
        (
            "missing content",
            json!({"event": "send_direct_message", "data": {"receiverId": bob_id}}),
            "bad_request",
        ),
        (
            "missing receiver",
            json!({"event": "send_direct_message", "data": {"content": "hi"}}),
            "bad_request",
        ),
        (
            "malformed receiver",
            json!({"event": "send_direct_message", "data": {"receiverId": "fake-user-id-12345", "content": "test"}}),
            "bad_request",
        ),
        (
            "unknown receiver",
            json!({"event": "send_direct_message", "data": {"receiverId": unknown, "content": "test"}}),
            "not_found",
        ),
        (
            "oversized content",
            json!({"event": "send_direct_message", "data": {"receiverId": bob_id, "content": too_long}}),
            "payload_too_large",
        ),
        (
            "unknown event",
            json!({"event": "launch_rockets", "data": {}}),
            "bad_request",
        ),
        ("missing event", json!({"data": {}}), "bad_request"),
        (
            "data not an object",
            json!({"event": "send_direct_message", "data": "hello"}),
            "bad_request",
        ),
        (
            "mark_read of a stranger's conversation",
            json!({"event": "mark_read", "data": {"conversationId": unknown}}),
            "not_found",
        ),
        (
            "ack ahead of delivery",
            json!({"event": "ack", "data": {"cursor": 1_000_000}}),
            "bad_request",
        ),
    ];
    for (i, (name, mut frame, code)) in cases.into_iter().enumerate() {
        let reference = format!("case-{i}");
        frame["ref"] = json!(reference);
        a.send_frame(frame).await;
        let reply = a.reply_to(&reference).await;
        assert_eq!(reply["event"], "error", "{name}: {reply}");
        assert_eq!(reply["data"]["code"], code, "{name}: {reply}");
        assert!(
            reply["data"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{name}"
        );
    }

    a.send_text("this is not json".into()).await;
    let reply = a.next_event("error").await;
    assert_eq!(reply["data"]["code"], "bad_request");

    // Still usable after all of that.
    let sent = a.send_direct(bob.id, "still here", "after").await;
    assert_eq!(sent["event"], "message_sent", "{sent}");
    a.send_ref("ping", json!({}), "p").await;
    assert_eq!(a.reply_to("p").await["event"], "pong");

    // Nothing refused was stored.
    let conversation = sent["data"]["message"]["conversationId"].as_str().unwrap();
    let history = app.history_eventually(&bob, conversation, 1).await;
    let contents: Vec<_> = history.iter().map(|m| m["content"].clone()).collect();
    assert_eq!(contents, [json!("still here")]);
}

#[tokio::test]
async fn frame_over_the_hard_cap_closes_with_1009() {
    let app = TestApp::spawn().await;
    let alice = app.signup("alice").await;
    let mut a = app.connect(&alice, "d").await;
    a.send_text(format!(
        r#"{{"event":"ping","data":{{"pad":"{}"}}}}"#,
        "x".repeat(70 * 1024)
    ))
    .await;
    let closed = a.next_event("__closed").await;
    assert_eq!(closed["data"]["code"], 1009, "{closed}");
}

#[tokio::test]
async fn rest_send_validates_like_the_socket() {
    let app = TestApp::spawn().await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let token = Some(alice.token.as_str());
    let unknown = uuid::Uuid::now_v7().to_string();
    for (body, status, code) in [
        (
            json!({"receiverId": bob.id.to_string(), "content": ""}),
            400,
            "bad_request",
        ),
        (
            json!({"receiverId": "nope", "content": "x"}),
            400,
            "bad_request",
        ),
        (
            json!({"receiverId": unknown, "content": "x"}),
            404,
            "not_found",
        ),
        (
            json!({"receiverId": bob.id.to_string(), "content": "x".repeat(20_000)}),
            413,
            "payload_too_large",
        ),
        (json!({"content": "x"}), 400, "bad_request"),
    ] {
        let (got, reply) = app.post("/api/messages", token, body.clone()).await;
        assert_eq!(got, status, "{body}: {reply}");
        assert_eq!(reply["error"]["code"], code, "{body}: {reply}");
    }
    let (status, reply) = app
        .post(
            "/api/messages",
            token,
            json!({"receiverId": bob.id.to_string(), "content": "over REST", "clientMsgId": "c-1"}),
        )
        .await;
    assert_eq!(status, 202, "{reply}");
    assert_eq!(reply["message"]["content"], "over REST");
    assert!(reply["message"]["seq"].as_u64().unwrap() > 0);

    // Malformed JSON is a clear 400 too.
    let response = app
        .http
        .post(app.url("/api/messages"))
        .bearer_auth(&alice.token)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "bad_request");
}

#[tokio::test]
async fn a_connection_sending_too_fast_is_rate_limited_not_closed() {
    let app = TestApp::spawn_with(natter_testkit::TestOptions {
        gateway_args: vec!["--send-rate-per-sec".into(), "5".into()],
        ..natter_testkit::TestOptions::default()
    })
    .await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let mut a = app.connect(&alice, "d").await;
    for i in 0..30 {
        a.send_ref(
            "send_direct_message",
            json!({"receiverId": bob.id.to_string(), "content": format!("m{i}")}),
            &format!("r{i}"),
        )
        .await;
    }
    let mut accepted = 0;
    let mut limited = 0;
    for i in 0..30 {
        let reply = a.reply_to(&format!("r{i}")).await;
        match reply["event"].as_str() {
            Some("message_sent") => accepted += 1,
            _ if reply["data"]["code"] == "rate_limited" => limited += 1,
            _ => panic!("{reply}"),
        }
    }
    assert!(
        limited > 0 && accepted >= 10,
        "accepted {accepted}, limited {limited}"
    );
    a.send_ref("ping", json!({}), "p").await;
    assert_eq!(a.reply_to("p").await["event"], "pong");
}

#[tokio::test]
async fn a_reader_that_stops_reading_is_disconnected() {
    let app = TestApp::spawn_with(natter_testkit::TestOptions {
        gateway_args: vec![
            "--slow-reader-secs".into(),
            "1".into(),
            "--session-queue".into(),
            "8".into(),
            // 12 MB to one reader within seconds: far over a user's budget.
            "--fanout-bytes-per-sec".into(),
            "1000000000".into(),
        ],
        ..natter_testkit::TestOptions::default()
    })
    .await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let mut stalled = app.connect(&bob, "phone").await;
    // About 12 MB for bob, who reads nothing: the socket's buffers fill and
    // the gateway's writes block. (Sent over REST, so the sender's own
    // socket is not the one that fills.)
    let content = "x".repeat(15_000);
    for chunk in 0..16 {
        let sends = (0..50).map(|i| {
            app.post(
                "/api/messages",
                Some(&alice.token),
                json!({"receiverId": bob.id.to_string(), "content": content, "clientMsgId": format!("c{chunk}-{i}")}),
            )
        });
        for (status, body) in futures::future::join_all(sends).await {
            assert_eq!(status, 202, "{body}");
        }
    }
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    // Reading now drains what was buffered and then finds the socket closed.
    let closed = stalled.next_event("__closed").await;
    if let Some(code) = closed["data"]["code"].as_u64() {
        assert_eq!(code, 1008, "{closed}");
    }
}

#[tokio::test]
async fn every_rest_error_has_the_api_shape_and_its_status() {
    let app = TestApp::spawn().await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    // A conversation alice is in, for the read marker below.
    let (status, sent) = app
        .post(
            "/api/messages",
            Some(&alice.token),
            serde_json::json!({"receiverId": bob.id.to_string(), "content": "hi"}),
        )
        .await;
    assert_eq!(status, 202, "{sent}");
    let conversation = sent["message"]["conversationId"]
        .as_str()
        .unwrap()
        .to_owned();
    let http = reqwest::Client::new();
    let send = |request: reqwest::RequestBuilder| async move {
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        let body: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("{status} is not JSON: {text:?}"));
        (status, body)
    };
    let cases = [
        (http.get(app.url("/api/nothing-here")), 404, "not_found"),
        (http.put(app.url("/api/auth/login")), 405, "bad_request"),
        (
            http.get(app.url("/api/conversations?limit=abc"))
                .bearer_auth(&alice.token),
            400,
            "bad_request",
        ),
        // Found by schemathesis: a NUL reached PostgreSQL and came back 500.
        (
            http.get(app.url("/api/users?after=a%00b"))
                .bearer_auth(&alice.token),
            400,
            "bad_request",
        ),
        (
            http.get(app.url("/api/users?q=%00"))
                .bearer_auth(&alice.token),
            400,
            "bad_request",
        ),
        // A file the API viewer does not have: not Swagger UI's bare 404.
        (http.get(app.url("/api/docs/nope.js")), 404, "not_found"),
        // Found by schemathesis: a read marker past a bigint was accepted
        // and would have been stored as a negative sequence.
        (
            http.post(app.url(&format!("/api/conversations/{conversation}/read")))
                .bearer_auth(&alice.token)
                .json(&serde_json::json!({"upToSeq": 14922281529982437376u64})),
            400,
            "bad_request",
        ),
        // Not an upgrade: the API's shape, not axum's plain text.
        (
            http.get(app.url("/ws")).bearer_auth(&alice.token),
            400,
            "bad_request",
        ),
        (
            http.post(app.url("/api/auth/login"))
                .body(r#"{"username":"a","password":"b"}"#),
            415,
            "bad_request",
        ),
        (
            http.post(app.url("/api/auth/login"))
                .header("content-type", "application/json")
                .body(format!(r#"{{"username":"{}"}}"#, "a".repeat(3 << 20))),
            413,
            "payload_too_large",
        ),
        (
            http.post(app.url("/api/auth/login"))
                .header("content-type", "application/json")
                .body("{not json"),
            400,
            "bad_request",
        ),
    ];
    for (request, status, code) in cases {
        let (got, body) = send(request).await;
        assert_eq!(got, status, "{body}");
        assert_eq!(body["error"]["code"], code, "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{body}"
        );
    }
}
