//! `AUTH_RATE_PER_MIN`: login and signup attempts limited per client
//! address and per username, answered 429 `rate_limited` with `Retry-After`.

use natter_testkit::{TestApp, TestOptions};
use serde_json::{Value, json};
use std::net::IpAddr;

async fn app_with(args: &[&str]) -> TestApp {
    TestApp::spawn_with(TestOptions {
        persister: false,
        gateway_args: args.iter().map(|a| (*a).to_owned()).collect(),
        ..TestOptions::default()
    })
    .await
}

/// An HTTP client whose connections come from `source` (any 127.x.y.z is
/// this machine), so one test can be several clients.
fn client_from(source: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(source.parse::<IpAddr>().unwrap())
        .build()
        .unwrap()
}

/// Status, `Retry-After` and body of a POST.
async fn post(
    http: &reqwest::Client,
    app: &TestApp,
    path: &str,
    body: Value,
    forwarded_for: Option<&str>,
) -> (u16, Option<u64>, Value) {
    let mut request = http.post(app.url(path)).json(&body);
    if let Some(hop) = forwarded_for {
        request = request.header("x-forwarded-for", hop);
    }
    let response = request.send().await.unwrap();
    natter_testkit::app::limited(response).await
}

async fn login(http: &reqwest::Client, app: &TestApp, username: &str) -> (u16, Option<u64>, Value) {
    post(
        http,
        app,
        "/api/auth/login",
        json!({"username": username, "password": "wrong-password"}),
        None,
    )
    .await
}

fn assert_rate_limited((status, retry_after, body): &(u16, Option<u64>, Value)) {
    assert_eq!(*status, 429, "{body}");
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    assert!(
        retry_after.is_some_and(|secs| (1..=60).contains(&secs)),
        "Retry-After: {retry_after:?}"
    );
}

#[tokio::test]
async fn signups_and_logins_over_the_limit_from_one_address_get_429_with_retry_after() {
    let app = app_with(&["--auth-rate-per-min", "3"]).await;
    let http = client_from("127.0.0.2");
    for name in ["limit-a", "limit-b"] {
        let (status, _, body) = post(
            &http,
            &app,
            "/api/auth/signup",
            json!({"username": name, "password": "password-123"}),
            None,
        )
        .await;
        assert_eq!(status, 201, "{body}");
    }
    assert_eq!(login(&http, &app, "limit-c").await.0, 401);
    // The fourth attempt from this address, whatever it is for.
    assert_rate_limited(&login(&http, &app, "limit-a").await);
    assert_rate_limited(
        &post(
            &http,
            &app,
            "/api/auth/signup",
            json!({"username": "limit-d", "password": "password-123"}),
            None,
        )
        .await,
    );
    // Another address has its own allowance.
    assert_eq!(
        login(&client_from("127.0.0.3"), &app, "limit-a").await.0,
        401
    );
}

#[tokio::test]
async fn a_username_is_limited_across_addresses() {
    let app = app_with(&["--auth-rate-per-min", "3"]).await;
    for source in ["127.0.0.2", "127.0.0.3", "127.0.0.4"] {
        assert_eq!(login(&client_from(source), &app, "Victim").await.0, 401);
    }
    // The name is normalised: `victim` and ` VICTIM ` are the same account.
    let fresh = client_from("127.0.0.5");
    assert_rate_limited(&login(&fresh, &app, " victim ").await);
    // That refusal did not spend the fresh address's allowance.
    for name in ["other-1", "other-2", "other-3"] {
        assert_eq!(login(&fresh, &app, name).await.0, 401);
    }
    assert_rate_limited(&login(&fresh, &app, "other-4").await);
}

/// Three logins, each claiming a different `X-Forwarded-For`; the statuses.
async fn logins_claiming_three_addresses(app: &TestApp) -> Vec<u16> {
    let http = client_from("127.0.0.2");
    let mut statuses = Vec::new();
    for (i, hop) in ["203.0.113.1", "203.0.113.2", "203.0.113.3"]
        .into_iter()
        .enumerate()
    {
        let body = json!({"username": format!("forwarded-{i}"), "password": "wrong-password"});
        let (status, _, _) = post(&http, app, "/api/auth/login", body, Some(hop)).await;
        statuses.push(status);
    }
    statuses
}

#[tokio::test]
async fn x_forwarded_for_is_ignored_unless_the_peer_is_a_trusted_proxy() {
    let direct = app_with(&["--auth-rate-per-min", "2"]).await;
    assert_eq!(
        logins_claiming_three_addresses(&direct).await,
        [401, 401, 429],
        "a client cannot pick its own address"
    );
    let proxied = app_with(&[
        "--auth-rate-per-min",
        "2",
        "--trusted-proxies",
        "127.0.0.0/8",
    ])
    .await;
    assert_eq!(
        logins_claiming_three_addresses(&proxied).await,
        [401, 401, 401],
        "behind a trusted proxy, each forwarded client is counted apart"
    );
}
