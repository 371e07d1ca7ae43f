//! Device cursors of devices gone longer than the delivery log keeps
//! records are deleted, and such a device coming back is told to resync.

use natter_gateway::delivery::CursorStore;
use natter_testkit::{TestApp, TestOptions, TestUser};
use serde_json::Value;
use std::time::Duration;

async fn age_cursor(app: &TestApp, user: &TestUser, device: &str) {
    let pool = app.db.pool().await.unwrap();
    // Longer ago than `DELIVERY_MAX_AGE_SECS`'s default of 7 days.
    let aged = sqlx::query(
        "UPDATE device_cursors SET updated_at = now() - interval '8 days'
         WHERE user_id = $1 AND device_id = $2",
    )
    .bind(user.id.0)
    .bind(device)
    .execute(&pool)
    .await
    .unwrap();
    assert_eq!(aged.rows_affected(), 1, "{device} has a cursor");
}

async fn has_cursor(app: &TestApp, user: &TestUser, device: &str) -> bool {
    let pool = app.db.pool().await.unwrap();
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM device_cursors WHERE user_id = $1 AND device_id = $2)",
    )
    .bind(user.id.0)
    .bind(device)
    .fetch_one(&pool)
    .await
    .unwrap()
}

fn pruning_every_second() -> TestOptions {
    TestOptions {
        gateway_args: vec!["--device-prune-interval-secs".into(), "1".into()],
        ..TestOptions::default()
    }
}

#[tokio::test]
async fn connecting_marks_a_device_as_seen() {
    let app = TestApp::spawn().await;
    let alice = app.signup("alice").await;
    app.connect(&alice, "tablet").await.close().await;
    age_cursor(&app, &alice, "tablet").await;

    // Connected, never acking: still a device in use.
    let _tablet = app.connect(&alice, "tablet").await;
    let pool = app.db.pool().await.unwrap();
    let fresh: bool = sqlx::query_scalar(
        "SELECT updated_at > now() - interval '1 minute' FROM device_cursors
         WHERE user_id = $1 AND device_id = 'tablet'",
    )
    .bind(alice.id.0)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(fresh, "the connect refreshed the cursor's updated_at");
}

#[tokio::test]
async fn the_pruner_deletes_only_cursors_idle_longer_than_the_log_keeps() {
    let app = TestApp::spawn_with(pruning_every_second()).await;
    let alice = app.signup("alice").await;
    app.connect(&alice, "old").await.close().await;
    app.connect(&alice, "new").await.close().await;
    age_cursor(&app, &alice, "old").await;

    assert!(
        app.eventually(Duration::from_secs(10), || async {
            !has_cursor(&app, &alice, "old").await
        })
        .await,
        "the idle cursor is pruned"
    );
    assert!(has_cursor(&app, &alice, "new").await);
}

#[tokio::test]
async fn pruning_goes_in_batches() {
    let app = TestApp::spawn().await;
    let alice = app.signup("alice").await;
    let pool = app.db.pool().await.unwrap();
    for device in ["a", "b", "c", "d", "e"] {
        sqlx::query(
            "INSERT INTO device_cursors (user_id, device_id, updated_at)
             VALUES ($1, $2, now() - interval '8 days')",
        )
        .bind(alice.id.0)
        .bind(device)
        .execute(&pool)
        .await
        .unwrap();
    }
    let cursors = CursorStore::new(pool);
    let week = Duration::from_secs(7 * 24 * 3600);
    let mut batches = Vec::new();
    for _ in 0..4 {
        batches.push(cursors.prune(week, 2).await.unwrap());
    }
    assert_eq!(batches, [2, 2, 1, 0]);
}

#[tokio::test]
async fn a_pruned_device_coming_back_is_told_to_resync() {
    let app = TestApp::spawn_with(pruning_every_second()).await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    app.connect(&bob, "phone").await.close().await;
    let mut a = app.connect(&alice, "a").await;
    let first = a.send_direct(bob.id, "before", "r1").await;
    let conversation = first["data"]["message"]["conversationId"]
        .as_str()
        .unwrap()
        .to_owned();
    app.history_eventually(&bob, &conversation, 1).await;

    // Bob's phone stays away: the log drops what it missed (as max_age
    // would), and, unseen for longer than that, its cursor is pruned.
    let js = app.jetstream().await;
    let stream = js.get_stream("DELIVERY").await.unwrap();
    let last = stream.get_info().await.unwrap().state.last_sequence;
    stream.purge().sequence(last + 1).await.unwrap();
    a.send_direct(bob.id, "after", "r2").await;
    app.history_eventually(&bob, &conversation, 2).await;
    age_cursor(&app, &bob, "phone").await;
    assert!(
        app.eventually(Duration::from_secs(10), || async {
            !has_cursor(&app, &bob, "phone").await
        })
        .await,
        "the phone's cursor is pruned"
    );

    // Back: not a new device at the end of the log (a silent gap), but one
    // told its state is gone, and given what the log still holds.
    let mut phone = app.connect(&bob, "phone").await;
    let mut frames: Vec<Value> = Vec::new();
    while !frames
        .iter()
        .any(|f| f["event"] == "receive_direct_message")
    {
        frames.push(phone.next().await);
    }
    assert_eq!(frames[0]["event"], "resync_required", "{frames:?}");
    assert_eq!(
        frames[1]["data"]["message"]["content"], "after",
        "{frames:?}"
    );
}
