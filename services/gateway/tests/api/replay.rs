//! Invariant 4, gap-free replay: a known device gets everything it missed,
//! in order, once, across dropped connections, gateway restarts and broker
//! restarts; a cursor older than the log gets `resync_required`.

use natter_testkit::ws::{contents, numbered};
use natter_testkit::{TestApp, TestOptions, TestUser, WsClient};
use serde_json::json;
use std::time::Duration;

async fn send_n(sender: &mut WsClient, receiver: &TestUser, prefix: &str, n: usize) {
    for i in 0..n {
        let reply = sender
            .send_direct(
                receiver.id,
                &format!("{prefix}{i}"),
                &format!("{prefix}-r{i}"),
            )
            .await;
        assert_eq!(reply["event"], "message_sent", "{reply}");
    }
}

#[tokio::test]
async fn dropped_connection_gets_missed_messages_in_order_once() {
    // Seed test case 5.
    let app = TestApp::spawn().await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let mut a = app.connect(&alice, "a").await;
    let b = app.connect(&bob, "phone").await;
    b.drop_connection();

    send_n(&mut a, &bob, "m", 20).await;

    let mut b = app.connect(&bob, "phone").await;
    let received = b.receive_messages(20).await;
    assert_eq!(contents(&received), numbered("m", 20));
    let cursors: Vec<u64> = received
        .iter()
        .map(|f| f["cursor"].as_u64().unwrap())
        .collect();
    assert!(cursors.windows(2).all(|w| w[0] < w[1]), "cursors increase");
    assert!(
        b.drain(Duration::from_millis(300))
            .await
            .iter()
            .all(|f| f["event"] != "receive_direct_message"),
        "no duplicates"
    );

    // After the ack, a reconnect replays nothing.
    b.ack(*cursors.last().unwrap()).await;
    b.close().await;
    let mut b = app.connect(&bob, "phone").await;
    assert_eq!(b.ready_cursor(), *cursors.last().unwrap());
    let again = b.drain(Duration::from_millis(500)).await;
    assert!(
        again.iter().all(|f| f["event"] != "receive_direct_message"),
        "replayed after ack: {again:?}"
    );
}

#[tokio::test]
async fn unacked_messages_are_replayed_again() {
    let app = TestApp::spawn().await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let mut a = app.connect(&alice, "a").await;
    let mut b = app.connect(&bob, "phone").await;
    send_n(&mut a, &bob, "m", 5).await;
    let first = b.receive_messages(5).await;
    b.ack(first[1]["cursor"].as_u64().unwrap()).await;
    b.close().await;
    let mut b = app.connect(&bob, "phone").await;
    let again = b.receive_messages(3).await;
    assert_eq!(contents(&again), ["m2", "m3", "m4"]);
}

#[tokio::test]
async fn a_new_device_starts_at_the_end_of_the_log() {
    let app = TestApp::spawn().await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let mut a = app.connect(&alice, "a").await;
    send_n(&mut a, &bob, "old", 3).await;
    // Let the fan-out land before the new device looks at the log.
    let conversation =
        a.next_event("receive_direct_message").await["data"]["message"]["conversationId"]
            .as_str()
            .unwrap()
            .to_owned();
    app.history_eventually(&bob, &conversation, 3).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut tablet = app.connect(&bob, "tablet").await;
    send_n(&mut a, &bob, "new", 1).await;
    let received = tablet.receive_messages(1).await;
    assert_eq!(contents(&received), ["new0"]);
}

#[tokio::test]
async fn replay_survives_a_gateway_restart() {
    let mut app = TestApp::spawn().await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let b = app.connect(&bob, "phone").await;
    b.drop_connection();
    let mut a = app.connect(&alice, "a").await;
    send_n(&mut a, &bob, "before", 5).await;
    drop(a);

    app.restart_gateway().await;

    let mut a = app.connect(&alice, "a").await;
    send_n(&mut a, &bob, "after", 5).await;
    let mut b = app.connect(&bob, "phone").await;
    let received = b.receive_messages(10).await;
    let expected: Vec<String> = (0..5)
        .map(|i| format!("before{i}"))
        .chain((0..5).map(|i| format!("after{i}")))
        .collect();
    assert_eq!(contents(&received), expected);
}

#[tokio::test]
async fn replay_survives_a_broker_crash_and_restart() {
    let mut app = TestApp::spawn().await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let mut a = app.connect(&alice, "a").await;
    let mut b = app.connect(&bob, "phone").await;
    send_n(&mut a, &bob, "before", 5).await;
    let live = b.receive_messages(5).await;
    assert_eq!(contents(&live)[4], "before4");
    drop(a);
    drop(b);

    app.crash_and_restart_nats().await;

    let mut a = app.connect(&alice, "a").await;
    send_n(&mut a, &bob, "after", 5).await;
    let mut b = app.connect(&bob, "phone").await;
    // Nothing was acked: everything since the device's first connection.
    let received = b.receive_messages(10).await;
    let expected: Vec<String> = (0..5)
        .map(|i| format!("before{i}"))
        .chain((0..5).map(|i| format!("after{i}")))
        .collect();
    assert_eq!(contents(&received), expected);
}

#[tokio::test]
async fn a_lagging_session_catches_up_from_the_log() {
    // A queue of 2 records per session: a burst overflows it, and the
    // session must fill the gap from the stream without loss or reordering.
    let app = TestApp::spawn_with(TestOptions {
        gateway_args: vec!["--session-queue".into(), "2".into()],
        ..TestOptions::default()
    })
    .await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let mut a = app.connect(&alice, "a").await;
    let mut b = app.connect(&bob, "phone").await;
    for i in 0..300 {
        a.send_ref(
            "send_direct_message",
            json!({"receiverId": bob.id.to_string(), "content": format!("m{i}")}),
            &format!("r{i}"),
        )
        .await;
    }
    let received = b.receive_messages(300).await;
    assert_eq!(contents(&received), numbered("m", 300));
    let extra = b.drain(Duration::from_millis(300)).await;
    assert!(
        extra.iter().all(|f| f["event"] != "receive_direct_message"),
        "duplicates: {extra:?}"
    );
}

#[tokio::test]
async fn cursor_older_than_the_log_gets_resync_required() {
    let app = TestApp::spawn().await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let b = app.connect(&bob, "phone").await;
    b.close().await;
    let mut a = app.connect(&alice, "a").await;
    send_n(&mut a, &bob, "m", 3).await;
    let conversation =
        a.next_event("receive_direct_message").await["data"]["message"]["conversationId"]
            .as_str()
            .unwrap()
            .to_owned();
    app.history_eventually(&bob, &conversation, 3).await;

    // Retention drops the oldest records (as max_age would).
    let js = app.jetstream().await;
    let stream = js.get_stream("DELIVERY").await.unwrap();
    let last = stream.get_info().await.unwrap().state.last_sequence;
    stream.purge().sequence(last).await.unwrap();

    let mut b = app.connect(&bob, "phone").await;
    let frame = b.next().await;
    assert_eq!(frame["event"], "resync_required", "{frame}");
    assert!(frame["data"]["reason"].as_str().is_some());
    // History is still there for the reload.
    assert_eq!(app.history(&bob, &conversation).await.len(), 3);
}

#[tokio::test]
async fn a_connected_session_keeps_receiving_across_a_broker_crash() {
    let mut app = TestApp::spawn().await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let mut a = app.connect(&alice, "a").await;
    let mut b = app.connect(&bob, "phone").await;
    send_n(&mut a, &bob, "before", 3).await;
    assert_eq!(
        contents(&b.receive_messages(3).await),
        ["before0", "before1", "before2"]
    );

    app.crash_and_restart_nats().await;

    // The same sockets, still open: sends are accepted again and delivered
    // live to the session that never disconnected.
    let mut accepted = 0;
    for i in 0..50 {
        let reply = a
            .send_direct(bob.id, &format!("after{accepted}"), &format!("after-r{i}"))
            .await;
        if reply["event"] == "message_sent" {
            accepted += 1;
            if accepted == 3 {
                break;
            }
        } else {
            // While the client reconnects, a send may be refused (never lost).
            assert_eq!(reply["data"]["code"], "unavailable", "{reply}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert_eq!(accepted, 3);
    assert_eq!(
        contents(&b.receive_messages(3).await),
        ["after0", "after1", "after2"]
    );
}

/// `natter_log_reads_total{how}` on the gateway's `/metrics`.
async fn log_reads(app: &TestApp, how: &str) -> f64 {
    app.scrape(app.gateway_port)
        .await
        .value("natter_log_reads_total", &[("how", how)])
}

#[tokio::test]
async fn a_replay_walks_back_along_the_users_records_and_scans_past_a_broken_chain() {
    let app = TestApp::spawn().await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let mut a = app.connect(&alice, "a").await;
    let b = app.connect(&bob, "phone").await;
    b.drop_connection();
    send_n(&mut a, &bob, "m", 5).await;

    // Each record names the one before it: the replay reads them by
    // sequence, walking back from bob's newest.
    let (walks, scans) = (log_reads(&app, "walk").await, log_reads(&app, "scan").await);
    let mut b = app.connect(&bob, "phone").await;
    let first = b.receive_messages(5).await;
    assert_eq!(contents(&first), numbered("m", 5));
    assert!(log_reads(&app, "walk").await > walks, "the replay walked");
    assert_eq!(log_reads(&app, "scan").await, scans, "and scanned nothing");
    b.ack(first[4]["cursor"].as_u64().unwrap()).await;
    b.close().await;

    // A record that names nothing (stored by an older natter, or by hand)
    // breaks the chain: the replay scans instead, and misses nothing.
    let js = app.jetstream().await;
    js.publish(
        natter_core::subjects::deliver(bob.id),
        r#"{"event":"presence","data":{"userId":"x","online":true}}"#.into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    send_n(&mut a, &bob, "n", 3).await;
    let scans = log_reads(&app, "scan").await;
    let mut b = app.connect(&bob, "phone").await;
    assert_eq!(contents(&b.receive_messages(3).await), numbered("n", 3));
    assert!(log_reads(&app, "scan").await > scans, "the replay scanned");
}

#[tokio::test]
async fn a_chain_longer_than_one_read_is_scanned_from_its_start() {
    let app = TestApp::spawn().await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let mut a = app.connect(&alice, "a").await;
    send_n(&mut a, &bob, "m", 5).await;
    let js = app.jetstream().await;
    let stream = js.get_stream("DELIVERY").await.unwrap();
    let log = natter_gateway::delivery::DeliveryLog::new(vec![js.client()], stream);
    let text = |records: &[natter_gateway::delivery::Stored]| -> Vec<String> {
        records
            .iter()
            .map(|r| {
                let v: serde_json::Value = serde_json::from_slice(&r.payload).unwrap();
                v["data"]["message"]["content"].as_str().unwrap().to_owned()
            })
            .collect()
    };
    let all = app
        .eventually(Duration::from_secs(10), || async {
            log.read(bob.id, 1, 10).await.unwrap().len() == 5
        })
        .await;
    assert!(all, "bob's five records are logged");
    // Walked back: all five fit in one read.
    let five = log.read(bob.id, 1, 10).await.unwrap();
    assert_eq!(text(&five), numbered("m", 5));
    // Five do not fit in a read of two: the first two, scanned for.
    let two = log.read(bob.id, 1, 2).await.unwrap();
    assert_eq!(text(&two), ["m0", "m1"]);
    // From the third on, walked or not, in order.
    let rest = log.read(bob.id, two[1].seq + 1, 3).await.unwrap();
    assert_eq!(text(&rest), ["m2", "m3", "m4"]);
    assert_eq!(log.read(bob.id, five[4].seq + 1, 3).await.unwrap().len(), 0);
}

#[tokio::test]
async fn reads_go_out_on_the_read_connections_in_turn() {
    let app = TestApp::spawn().await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let mut a = app.connect(&alice, "a").await;
    send_n(&mut a, &bob, "m", 2).await;
    let js = app.jetstream().await;
    let stream = js.get_stream("DELIVERY").await.unwrap();
    let readers = [
        app.jetstream().await.client(),
        app.jetstream().await.client(),
    ];
    let sent = |reader: &async_nats::Client| {
        reader
            .statistics()
            .out_messages
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let before = readers.each_ref().map(sent);
    let log = natter_gateway::delivery::DeliveryLog::new(readers.to_vec(), stream);
    let logged = app
        .eventually(Duration::from_secs(10), || async {
            log.read(bob.id, 1, 10).await.unwrap().len() == 2
        })
        .await;
    assert!(logged, "bob's two records are logged");
    for _ in 0..4 {
        assert_eq!(log.read(bob.id, 1, 10).await.unwrap().len(), 2);
    }
    // Each read is a few direct gets on one connection; five or more reads
    // in turn put at least two on each.
    let after = readers.each_ref().map(sent);
    for (reader, (before, after)) in before.iter().zip(after).enumerate() {
        assert!(
            after >= before + 2 * 2,
            "reader {reader} sent {} messages",
            after - before
        );
    }
}
