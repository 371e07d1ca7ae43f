//! The `natter-persister` binary: configured by environment, keeping its
//! secrets out of `--help`, ready once the schema is applied, and stopping
//! cleanly on SIGTERM.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking

use natter_testkit::app::{terminate, wait_until_ok};
use natter_testkit::{TestApp, TestOptions};
use std::process::{Command, Stdio};

#[test]
fn help_never_shows_the_secrets_in_the_environment() {
    let output = Command::new(env!("CARGO_BIN_EXE_natter-persister"))
        .arg("--help")
        .env(
            "DATABASE_URL",
            "postgres://natter:db-pa55-s3cret@db.internal:5432/natter",
        )
        .env("NATS_URL", "nats://persister:nats-pa55-s3cret@nats-1:4222")
        .env("NATS_CREDS", "/run/secrets/creds-s3cret.creds")
        .output()
        .unwrap();
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(
        help.contains("DATABASE_URL") && help.contains("NATS_URL"),
        "{help}"
    );
    for secret in ["db-pa55", "nats-pa55", "creds-s3cret"] {
        assert!(!help.contains(secret), "--help shows {secret}:\n{help}");
    }
}

#[tokio::test]
async fn the_binary_serves_readyz_and_stops_on_sigterm() {
    let app = TestApp::spawn_with(TestOptions {
        persister: false,
        ..TestOptions::default()
    })
    .await;
    let port = natter_localinfra::free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_natter-persister"))
        .env("CHAT_MAX_BYTES", natter_testkit::app::TEST_STREAM_MAX_BYTES)
        .env(
            "DELIVERY_MAX_BYTES",
            natter_testkit::app::TEST_STREAM_MAX_BYTES,
        )
        .env("NATS_URL", app.nats.url())
        .env("DATABASE_URL", &app.db.url)
        .env("PERSISTER_PORT", port.to_string())
        .env("LOG_FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ready = wait_until_ok(&app.http, &format!("http://127.0.0.1:{port}/readyz")).await;
    assert_eq!(ready["migrated"], true);

    // A message sent now is projected by the binary.
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let mut b = app.connect(&bob, "d").await;
    let mut a = app.connect(&alice, "d").await;
    a.send_direct(bob.id, "via the binary", "r").await;
    let received = b.receive_messages(1).await;
    assert_eq!(received[0]["data"]["message"]["content"], "via the binary");

    let status = terminate(&mut child).await;
    assert!(status.success(), "{status}");
}
