//! Nothing one user, group or record holds can stall anyone else: the
//! member cap holds where events are applied, labels and content show what
//! they say, and a full group of the longest names delays no one's messages.

use natter_persister::FaultHooks;
use natter_testkit::{TestApp, TestUser};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// The `CHAT` stream's last sequence.
async fn chat_last_seq(app: &TestApp) -> u64 {
    let js = app.jetstream().await;
    let mut chat = js.get_stream("CHAT").await.unwrap();
    chat.info().await.unwrap().state.last_sequence
}

/// `POST /api/groups/{group}/members` as a task of its own.
fn add_members(
    app: &TestApp,
    actor: &TestUser,
    group: &str,
    users: &[TestUser],
) -> tokio::task::JoinHandle<(u16, Value)> {
    let ids: Vec<String> = users.iter().map(|u| u.id.to_string()).collect();
    let request = app
        .http
        .post(app.url(&format!("/api/groups/{group}/members")))
        .bearer_auth(&actor.token)
        .json(&json!({ "userIds": ids }))
        .send();
    tokio::spawn(async move {
        let response = request.await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    })
}

/// A gateway whose per-user fan-out budget lets one user make several
/// full-group changes at once (these tests are about the records, not the
/// budget, which `fairness` tests).
async fn with_fan_out_lifted() -> TestApp {
    TestApp::spawn_with(natter_testkit::TestOptions {
        gateway_args: vec!["--fanout-bytes-per-sec".into(), "1000000000000".into()],
        ..natter_testkit::TestOptions::default()
    })
    .await
}

#[tokio::test]
async fn two_concurrent_adds_never_grow_a_group_past_1000() {
    let mut app = with_fan_out_lifted().await;
    let creator = app.signup("creator").await;
    let first = app.seed_users("first", 600).await;
    let second = app.seed_users("second", 600).await;
    let group = app.create_group(&creator, "Capped", &[]).await;
    let id = group["id"].as_str().unwrap().to_owned();

    // With the persister stopped both adds pass the gateway's check against
    // the projection (one member each time); only the persister, applying
    // them in CHAT order, can see that the second is one too many.
    app.stop_persister().await;
    let before = chat_last_seq(&app).await;
    let one = add_members(&app, &creator, &id, &first);
    let two = add_members(&app, &creator, &id, &second);
    let deadline = Instant::now() + Duration::from_secs(10);
    while chat_last_seq(&app).await < before + 2 {
        assert!(Instant::now() < deadline, "both adds reach CHAT");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    app.start_persister(FaultHooks::default()).await;
    let mut answers = vec![one.await.unwrap(), two.await.unwrap()];
    answers.sort_by_key(|(status, _)| *status);
    assert_eq!(answers[0].0, 200, "{answers:?}");
    assert_eq!(answers[0].1["group"]["memberCount"], 601);
    assert_eq!(answers[1].0, 400, "{answers:?}");
    assert_eq!(answers[1].1["error"]["code"], "bad_request");
    assert_eq!(
        answers[1].1["error"]["message"],
        "a group has at most 1000 members"
    );

    let (_, now) = app
        .get(&format!("/api/groups/{id}"), Some(&creator.token))
        .await;
    assert_eq!(
        now["group"]["memberCount"], 601,
        "the refused add is not applied at all"
    );
    let pool = app.db.pool().await.unwrap();
    let dead: Vec<String> = sqlx::query_scalar("SELECT error FROM dead_letters")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(dead[0].contains("at most 1000 members"), "{dead:?}");
}

#[tokio::test]
async fn names_and_content_refuse_what_would_not_show() {
    let app = TestApp::spawn().await;
    let (status, body) = app
        .post(
            "/api/auth/signup",
            None,
            json!({"username": "mallory", "password": "long enough pw", "displayName": "Ann\u{202E}gnp"}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "bad_request");

    let ann = app.signup("ann").await;
    let bob = app.signup("bob").await;
    let response = app
        .http
        .patch(app.url("/api/me"))
        .bearer_auth(&ann.token)
        .json(&json!({"displayName": "B\u{200B}ob"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "bad_request");
    let (status, body) = app
        .post(
            "/api/groups",
            Some(&ann.token),
            json!({"name": "\u{2067}Team", "memberIds": [bob.id]}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "bad_request");

    let (status, body) = app
        .post(
            "/api/messages",
            Some(&ann.token),
            json!({"receiverId": bob.id, "content": "ring\u{7}"}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "bad_request");
    let mut a = app.connect(&ann, "a").await;
    a.send_ref(
        "send_direct_message",
        json!({"receiverId": bob.id, "content": "\u{1}".repeat(100)}),
        "c1",
    )
    .await;
    let refused = a.reply_to("c1").await;
    assert_eq!(refused["event"], "error", "{refused}");
    assert_eq!(refused["data"]["code"], "bad_request", "{refused}");
    // The socket stays open, and lines and tabs are still content.
    let sent = a.send_direct(bob.id, "two\n\tlines", "c2").await;
    assert_eq!(sent["event"], "message_sent", "{sent}");
}

/// A display name of 64 characters, each as many bytes as any.
fn longest_name() -> String {
    "\u{1F600}".repeat(64)
}

#[tokio::test]
async fn a_full_group_of_the_longest_names_holds_up_no_one() {
    let app = with_fan_out_lifted().await;
    let members = app.seed_users("crowd", 1000).await;
    let ann = app.signup("ann").await;
    let bob = app.signup("bob").await;
    let pool = app.db.pool().await.unwrap();
    sqlx::query("UPDATE users SET display_name = $1 WHERE username LIKE 'crowd%'")
        .bind(longest_name())
        .execute(&pool)
        .await
        .unwrap();
    let js = app.jetstream().await;
    let mut delivery = js.get_stream("DELIVERY").await.unwrap();

    // Created with 999, one more added, one removed: every kind of change
    // a full group's members hear of, each to all of them.
    let name = "\u{1F600}".repeat(100);
    let others: Vec<&TestUser> = members[1..999].iter().collect();
    let group = app.create_group(&members[0], &name, &others).await;
    let id = group["id"].as_str().unwrap().to_owned();
    let path = format!("/api/groups/{id}/members");
    let t = Some(members[0].token.as_str());
    let (status, body) = app
        .post(&path, t, json!({"userIds": [members[999].id]}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["group"]["memberCount"], 1000);
    let (status, body) = app.delete(&format!("{path}/{}", members[999].id), t).await;
    assert_eq!(status, 204, "{body}");
    let records = 999 + 1000 + 1000;
    let deadline = Instant::now() + Duration::from_secs(60);
    while delivery.info().await.unwrap().state.messages < records {
        assert!(
            Instant::now() < deadline,
            "the group's updates are fanned out"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let largest = largest_record(&delivery, members[0].id).await;
    println!("largest delivery record of a full group: {largest} bytes");
    assert!(largest <= natter_core::delivery::MAX_RECORD_BYTES);

    let mut b = app.connect(&bob, "b").await;
    let mut a = app.connect(&ann, "a").await;
    let started = Instant::now();
    let sent = a.send_direct(bob.id, "still here", "dm").await;
    assert_eq!(sent["event"], "message_sent", "{sent}");
    let got = b.receive_messages(1).await;
    let took = started.elapsed();
    println!("direct message beside a full group arrived in {took:?}");
    assert_eq!(got[0]["data"]["message"]["content"], "still here");
    assert!(took <= Duration::from_secs(1), "took {took:?}");
}

/// The largest record in `user`'s delivery log.
async fn largest_record(
    delivery: &async_nats::jetstream::stream::Stream,
    user: natter_core::UserId,
) -> usize {
    let subject = format!("deliver.{user}");
    let mut largest = 0;
    let mut seq = 1;
    while let Ok(record) = delivery
        .direct_get_next_for_subject(&subject, Some(seq))
        .await
    {
        largest = largest.max(record.payload.len());
        seq = record.sequence + 1;
    }
    largest
}
