//! The `natter-gateway` binary: refuses a weak secret or a bad origin, serves
//! with a good one, keeps secrets out of `--help`, stops cleanly on SIGTERM,
//! and keeps serving when nobody reads its logs.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking

use natter_testkit::TestApp;
use natter_testkit::app::{terminate, wait_until_ok};
use std::process::{Command, Stdio};

#[tokio::test]
async fn refuses_to_start_without_a_strong_secret() {
    for secret in [None, Some("too-short")] {
        let mut command = Command::new(env!("CARGO_BIN_EXE_natter-gateway"));
        command
            .env_remove("JWT_SECRET")
            .env_remove("NATTER_DEV")
            .env("PORT", natter_localinfra::free_port().to_string())
            .env("NATS_URL", "nats://127.0.0.1:1")
            .stdout(Stdio::null());
        if let Some(secret) = secret {
            command.env("JWT_SECRET", secret);
        }
        let output = command.output().unwrap();
        assert!(!output.status.success(), "started with {secret:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("JWT_SECRET"), "{stderr}");
    }
}

#[test]
fn help_never_shows_the_secrets_in_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("natter.creds");
    std::fs::write(
        &creds,
        "-----BEGIN NATS USER JWT-----\ncreds-contents-s3cret\n",
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_natter-gateway"))
        .arg("--help")
        .env("DATABASE_URL", "postgres://natter:db-pa55-s3cret@db.internal:5432/natter")
        .env("NATS_URL", "nats://gateway:nats-pa55-s3cret@nats-1:4222,nats://gateway:nats-pa55-s3cret@nats-2:4222")
        .env("JWT_SECRET", "jwt-s3cret-jwt-s3cret-jwt-s3cret-jwt-s3cret")
        .env("NATS_CREDS", &creds)
        .output()
        .unwrap();
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(
        help.contains("DATABASE_URL") && help.contains("NATS_URL"),
        "{help}"
    );
    for secret in [
        "db-pa55",
        "nats-pa55",
        "jwt-s3cret",
        "creds-contents",
        "natter.creds",
    ] {
        assert!(!help.contains(secret), "--help shows {secret}:\n{help}");
    }
}

/// Runs the binary with `ALLOWED_ORIGINS=origins` and everything else valid
/// (but no NATS to reach, so a gateway that accepted the origins would wait
/// for it); its exit status and stderr, or `None` if it was still running
/// after 10 s.
fn start_with_origins(origins: &str) -> Option<(std::process::ExitStatus, String)> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_natter-gateway"))
        .env("CHAT_MAX_BYTES", natter_testkit::app::TEST_STREAM_MAX_BYTES)
        .env(
            "DELIVERY_MAX_BYTES",
            natter_testkit::app::TEST_STREAM_MAX_BYTES,
        )
        .env("ALLOWED_ORIGINS", origins)
        .env("JWT_SECRET", "a-strong-secret-of-at-least-32-bytes!!")
        .env("PORT", natter_localinfra::free_port().to_string())
        .env("BIND_ADDRESS", "127.0.0.1")
        .env("NATS_URL", "nats://127.0.0.1:1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    Some((
        output.status,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

#[test]
fn refuses_a_wildcard_or_malformed_allowed_origin_at_start() {
    for (origins, reason) in [
        ("*", "wildcard"),
        ("http://localhost:5173,*", "wildcard"),
        ("https://*.example.com", "wildcard"),
        ("https://chat.example.com/", "no path"),
        ("chat.example.com", "scheme://host"),
    ] {
        let (status, stderr) = start_with_origins(origins)
            .unwrap_or_else(|| panic!("started with ALLOWED_ORIGINS={origins}"));
        // clap's usage error: exit code 2, not a panic's 101.
        assert_eq!(status.code(), Some(2), "{origins}: {status}\n{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(
            stderr.contains("ALLOWED_ORIGINS") || stderr.contains("allowed-origins"),
            "{stderr}"
        );
        assert!(stderr.contains(reason), "{origins}: {stderr}");
    }
}

/// The gateway binary, set to run against `app`'s NATS and database on
/// `port`, its output discarded.
fn gateway_command(app: &TestApp, port: u16) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_natter-gateway"));
    command
        .env("CHAT_MAX_BYTES", natter_testkit::app::TEST_STREAM_MAX_BYTES)
        .env(
            "DELIVERY_MAX_BYTES",
            natter_testkit::app::TEST_STREAM_MAX_BYTES,
        )
        .env("NATS_URL", app.nats.url())
        .env("DATABASE_URL", &app.db.url)
        .env("JWT_SECRET", "a-strong-secret-of-at-least-32-bytes!!")
        .env("PORT", port.to_string())
        .env("BIND_ADDRESS", "127.0.0.1")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    command
}

/// Starts the gateway binary against `app`'s NATS and database with
/// `env` on top, waits until it is ready, signs a user up through it, and
/// returns the child.
async fn run_gateway_with_a_signup(app: &TestApp, env: &[(&str, String)]) -> std::process::Child {
    let port = natter_localinfra::free_port();
    let child = gateway_command(app, port)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    wait_until_ok(&app.http, &format!("{base}/readyz")).await;
    let signup = app
        .http
        .post(format!("{base}/api/auth/signup"))
        .json(&serde_json::json!({"username": "alice", "password": "password-123"}))
        .send()
        .await
        .unwrap();
    assert_eq!(signup.status().as_u16(), 201);
    child
}

#[tokio::test]
async fn the_binary_serves_the_api_and_stops_on_sigterm() {
    let app = TestApp::spawn().await;
    let mut child = run_gateway_with_a_signup(&app, &[]).await;
    let status = terminate(&mut child).await;
    assert!(status.success(), "{status}");
}

/// What a stand-in OTLP/HTTP collector received: (path, body) per export.
type Exports = std::sync::Arc<std::sync::Mutex<Vec<(String, Vec<u8>)>>>;

/// A stand-in collector on a free port that keeps every export it gets.
async fn collector() -> (u16, Exports) {
    let exports = Exports::default();
    let kept = exports.clone();
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri, body: axum::body::Bytes| {
        let kept = kept.clone();
        async move {
            kept.lock()
                .unwrap()
                .push((uri.path().to_owned(), body.to_vec()));
            axum::http::StatusCode::OK
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (port, exports)
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle.as_bytes())
}

#[tokio::test]
async fn the_binary_exports_its_spans_over_otlp_and_flushes_them_at_shutdown() {
    let app = TestApp::spawn().await;
    let (collector_port, exports) = collector().await;
    let mut child = run_gateway_with_a_signup(
        &app,
        &[
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("http://127.0.0.1:{collector_port}"),
            ),
            ("OTEL_TRACES_SAMPLER", "always_on".into()),
        ],
    )
    .await;
    // The batch exporter waits up to 5 s before sending; shutdown must
    // not lose what is queued.
    let status = terminate(&mut child).await;
    assert!(status.success(), "{status}");

    let exports = exports.lock().unwrap();
    assert!(!exports.is_empty(), "nothing was exported");
    assert!(exports.iter().all(|(path, _)| path == "/v1/traces"));
    let body: Vec<u8> = exports.iter().flat_map(|(_, b)| b.clone()).collect();
    assert!(
        contains(&body, "natter-gateway"),
        "the service name is sent"
    );
    assert!(
        contains(&body, "http.request"),
        "the request's span is sent"
    );
    assert!(contains(&body, "/api/auth/signup"));
}

#[tokio::test]
async fn the_binary_waits_for_a_nats_server_that_starts_after_it() {
    let app = TestApp::spawn().await;
    let nats_port = natter_localinfra::free_port();
    let http_port = natter_localinfra::free_port();
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("gateway.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_natter-gateway"))
        .env("CHAT_MAX_BYTES", natter_testkit::app::TEST_STREAM_MAX_BYTES)
        .env(
            "DELIVERY_MAX_BYTES",
            natter_testkit::app::TEST_STREAM_MAX_BYTES,
        )
        .env("NATS_URL", format!("nats://127.0.0.1:{nats_port}"))
        .env("DATABASE_URL", &app.db.url)
        .env("JWT_SECRET", "a-strong-secret-of-at-least-32-bytes!!")
        .env("PORT", http_port.to_string())
        .env("BIND_ADDRESS", "127.0.0.1")
        .env("LOG_FORMAT", "json")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();

    // Nothing answers on the NATS port: the gateway keeps trying, and says so.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        if text.contains("not ready yet; retrying") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no retry logged while NATS was down:\n{text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(child.try_wait().unwrap().is_none(), "the gateway gave up");

    let nats_dir = dir.path().join("nats");
    let _nats = tokio::task::spawn_blocking(move || {
        natter_localinfra::NatsServer::start(natter_localinfra::NatsOptions {
            data_dir: nats_dir,
            port: Some(nats_port),
            fsync: natter_localinfra::Fsync::Interval,
            cluster: None,
        })
    })
    .await
    .unwrap()
    .unwrap();
    wait_until_ok(&app.http, &format!("http://127.0.0.1:{http_port}/readyz")).await;
    let status = terminate(&mut child).await;
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn a_log_output_nobody_reads_costs_log_lines_not_service() {
    let app = TestApp::spawn().await;
    let port = natter_localinfra::free_port();
    // Every step logged (about 3 KB per send): the pipe's 64 KiB are full
    // after a few sends, and the gateway's 8 MiB queue after a few thousand.
    let mut child = gateway_command(&app, port)
        .env("SEND_RATE_PER_SEC", "1000000")
        .env("RUST_LOG", "trace")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Held open and never read.
    let _stdout = child.stdout.take();
    let base = format!("http://127.0.0.1:{port}");
    wait_until_ok(&app.http, &format!("{base}/readyz")).await;
    let signup = |name: &'static str| {
        let request = app
            .http
            .post(format!("{base}/api/auth/signup"))
            .json(&serde_json::json!({"username": name, "password": "password-123"}));
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status().as_u16(), 201);
            response.json::<serde_json::Value>().await.unwrap()
        }
    };
    let alice = signup("alice").await;
    let bob = signup("bob").await;
    let token = alice["token"].as_str().unwrap();

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let mut sent = 0;
    let dropped = loop {
        let send = app
            .http
            .post(format!("{base}/api/messages"))
            .bearer_auth(token)
            .json(&serde_json::json!({"receiverId": bob["user"]["id"], "content": format!("m{sent}")}))
            .send();
        let response = tokio::time::timeout(std::time::Duration::from_secs(10), send)
            .await
            .unwrap_or_else(|_| panic!("send {sent} stalled"))
            .unwrap();
        assert_eq!(response.status().as_u16(), 202);
        sent += 1;
        if sent % 250 == 0 {
            let dropped = app
                .scrape(port)
                .await
                .value("natter_log_lines_dropped_total", &[]);
            if dropped > 0.0 {
                break dropped;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{sent} sends and no log line dropped"
        );
    };
    assert!(
        dropped > 0.0 && sent > 25,
        "{sent} sends, {dropped} dropped"
    );
    let status = terminate(&mut child).await;
    assert!(status.success(), "{status}");
}
