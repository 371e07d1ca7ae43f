//! The streams' byte limits (DESIGN.md §2): a full `CHAT` refuses new
//! records and keeps every old one; a full `DELIVERY` drops its oldest,
//! and a device behind them is told to resync. Both sizes are exported.

use natter_testkit::scrape::Scrape;
use natter_testkit::{TestApp, TestOptions};
use serde_json::json;
use std::time::Duration;

const MIB: u64 = 1024 * 1024;

/// Both services declare the streams, so both get the same limits.
async fn spawn_with_stream_args(args: &[&str]) -> TestApp {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let mut persister_args = TestOptions::default().persister_args;
    persister_args.extend(args.iter().cloned());
    TestApp::spawn_with(TestOptions {
        gateway_args: args,
        persister_args,
        ..TestOptions::default()
    })
    .await
}

fn big(i: usize) -> String {
    format!("{i:04}{}", "x".repeat(16 * 1024 - 4))
}

#[tokio::test]
async fn a_full_chat_stream_refuses_sends_and_keeps_every_record() {
    let limit = MIB.to_string();
    let app = spawn_with_stream_args(&["--chat-max-bytes", &limit]).await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let mut a = app.connect(&alice, "a").await;

    let mut accepted = 0;
    let refused = loop {
        let reply = a
            .send_direct(bob.id, &big(accepted), &format!("r{accepted}"))
            .await;
        if reply["event"] != "message_sent" {
            break reply;
        }
        accepted += 1;
        assert!(accepted < 200, "1 MiB of CHAT never filled");
    };
    assert_eq!(refused["data"]["code"], "unavailable", "{refused}");
    assert!(accepted >= 50, "{accepted} sends of 16 KiB fill 1 MiB");
    let (status, body) = app
        .post(
            "/api/messages",
            Some(&bob.token),
            json!({"receiverId": alice.id.to_string(), "content": big(999)}),
        )
        .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "unavailable");

    // Nothing accepted was dropped to make room.
    let js = app.jetstream().await;
    let chat = js
        .get_stream("CHAT")
        .await
        .unwrap()
        .get_info()
        .await
        .unwrap();
    assert_eq!(chat.state.first_sequence, 1);
    assert_eq!(chat.state.messages, accepted as u64);
    let conversation = natter_core::ConversationId::direct(alice.id, bob.id).to_string();
    assert_eq!(
        app.history_eventually(&bob, &conversation, accepted)
            .await
            .len(),
        accepted
    );
}

#[tokio::test]
async fn a_full_delivery_stream_drops_its_oldest_and_a_device_behind_resyncs() {
    let limit = MIB.to_string();
    let app = spawn_with_stream_args(&["--delivery-max-bytes", &limit]).await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    app.connect(&bob, "phone").await.close().await;
    let mut a = app.connect(&alice, "a").await;
    // Each message is two delivery records (bob's and alice's own): 2 MiB.
    let sends = 64;
    for i in 0..sends {
        let reply = a.send_direct(bob.id, &big(i), &format!("r{i}")).await;
        assert_eq!(reply["event"], "message_sent", "{reply}");
    }
    let conversation = natter_core::ConversationId::direct(alice.id, bob.id).to_string();
    app.history_eventually(&bob, &conversation, sends).await;
    let js = app.jetstream().await;
    let delivery = js.get_stream("DELIVERY").await.unwrap();
    let dropped = app
        .eventually(Duration::from_secs(10), || {
            let mut delivery = delivery.clone();
            async move {
                let info = delivery.info().await.unwrap();
                info.state.first_sequence > 1 && info.state.bytes <= MIB
            }
        })
        .await;
    assert!(
        dropped,
        "DELIVERY stays under its limit by dropping its oldest"
    );

    let mut phone = app.connect(&bob, "phone").await;
    assert_eq!(phone.next().await["event"], "resync_required");
}

#[tokio::test]
async fn the_streams_sizes_and_limits_are_exported() {
    let app = spawn_with_stream_args(&[
        "--chat-max-bytes",
        &(64 * MIB).to_string(),
        "--delivery-max-bytes",
        &(32 * MIB).to_string(),
    ])
    .await;
    let url = format!("http://127.0.0.1:{}/metrics", app.persister_port);
    let exported = app
        .eventually(Duration::from_secs(10), || async {
            let text = app
                .http
                .get(&url)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            let scrape = Scrape::parse(&text);
            scrape.value("natter_stream_max_bytes", &[("stream", "CHAT")]) == (64 * MIB) as f64
                && scrape.value("natter_stream_max_bytes", &[("stream", "DELIVERY")])
                    == (32 * MIB) as f64
                && text.contains("natter_stream_bytes{stream=\"CHAT\"}")
                && text.contains("natter_stream_bytes{stream=\"DELIVERY\"}")
        })
        .await;
    let text = app
        .http
        .get(&url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        exported,
        "the persister exports both streams' bytes and limits: {text}"
    );
}
