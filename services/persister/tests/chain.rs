//! Each delivery record names its user's record before it, as the stream
//! checked when it stored it: across persister restarts, and when some
//! other writer stored a record on the user's log meanwhile (the chain a
//! gateway's replay walks; DESIGN.md §1, invariant 2).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking

use async_nats::jetstream::message::StreamMessage;
use natter_core::delivery::PREVIOUS_HEADER;
use natter_persister::FaultHooks;
use natter_testkit::{TestApp, TestUser, WsClient};
use std::time::Duration;

/// Every record of `user`'s delivery log, in log order, once there are
/// `count` (or whatever is there after 20 s).
async fn log_eventually(app: &TestApp, user: &TestUser, count: usize) -> Vec<StreamMessage> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let log = app.delivery_log(user.id).await;
        if log.len() >= count || tokio::time::Instant::now() > deadline {
            return log;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn previous(record: &StreamMessage) -> Option<u64> {
    record.headers.get(PREVIOUS_HEADER)?.as_str().parse().ok()
}

async fn send(a: &mut WsClient, to: &TestUser, text: &str) {
    let reply = a.send_direct(to.id, text, text).await;
    assert_eq!(reply["event"], "message_sent", "{reply}");
}

#[tokio::test]
async fn each_record_names_the_one_before_it_across_restarts_and_other_writers() {
    let mut app = TestApp::spawn().await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let mut a = app.connect(&alice, "a").await;
    for text in ["m0", "m1", "m2"] {
        send(&mut a, &bob, text).await;
    }
    let log = log_eventually(&app, &bob, 3).await;
    assert_eq!(log.len(), 3);

    // Another writer (a persister that lost its lock but still publishes,
    // an operator) stores a record on bob's log: the persister's idea of
    // where the log ends is now wrong, and the stream refuses it.
    let js = app.jetstream().await;
    let foreign = js
        .publish(
            natter_core::subjects::deliver(bob.id),
            r#"{"event":"presence","data":{}}"#.into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    for text in ["m3", "m4"] {
        send(&mut a, &bob, text).await;
    }
    // Fanned out by the same persister, which learns where the log ends.
    assert_eq!(log_eventually(&app, &bob, 6).await.len(), 6);
    // A new persister starts knowing no tails.
    app.stop_persister().await;
    app.start_persister(FaultHooks::default()).await;
    for text in ["m5", "m6"] {
        send(&mut a, &bob, text).await;
    }

    let log = log_eventually(&app, &bob, 8).await;
    assert_eq!(log.len(), 8, "three, the foreign one, and four");
    assert_eq!(log[3].sequence, foreign.sequence);
    assert_eq!(previous(&log[0]), Some(0), "bob's first record");
    for pair in log.windows(2) {
        if pair[1].sequence == foreign.sequence {
            assert_eq!(previous(&pair[1]), None, "the foreign record names nothing");
            continue;
        }
        assert_eq!(
            previous(&pair[1]),
            Some(pair[0].sequence),
            "record {} names {:?}, not the one before it",
            pair[1].sequence,
            previous(&pair[1])
        );
    }
}
