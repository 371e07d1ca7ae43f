//! A socket lives no longer than the token that opened it (DESIGN §4).

use natter_testkit::{TestApp, TestOptions};
use std::time::Duration;

#[tokio::test]
async fn a_socket_is_closed_when_its_token_expires() {
    let app = TestApp::spawn_with(TestOptions {
        gateway_args: vec!["--token-ttl-secs".into(), "3".into()],
        ..TestOptions::default()
    })
    .await;
    let alice = app.signup("alice").await;
    let mut socket = app.connect(&alice, "phone").await;
    // Pings from the client would keep it open if anything did.
    for _ in 0..2 {
        socket.send("ping", serde_json::json!({})).await;
        socket.next_event("pong").await;
    }
    let closed = loop {
        let frame = socket
            .try_next(Duration::from_secs(10))
            .await
            .expect("the socket was closed within 10 s of its token's expiry");
        if frame["event"] == "__closed" {
            break frame;
        }
    };
    assert_eq!(closed["data"]["code"], 1008, "{closed}");
    assert_eq!(closed["data"]["reason"], "token expired", "{closed}");
}
