//! Sign-up, log-in and token checks at the handshake and on REST
//! (seed test case 8's auth half).

use natter_testkit::app::TEST_JWT_SECRET;
use natter_testkit::{TestApp, WsClient};
use serde_json::json;
use std::time::{SystemTime, UNIX_EPOCH};

fn forge(secret: &str, sub: &str, exp_offset: i64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let claims = json!({"sub": sub, "jti": uuid::Uuid::now_v7(), "iat": now, "nbf": now - 120, "exp": now + exp_offset});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn alg_none(sub: &str) -> String {
    use base64_url as b64;
    let header = b64::encode(br#"{"alg":"none","typ":"JWT"}"#);
    let body = b64::encode(
        format!(r#"{{"sub":"{sub}","jti":"{sub}","iat":0,"nbf":0,"exp":99999999999}}"#).as_bytes(),
    );
    format!("{header}.{body}.")
}

mod base64_url {
    pub fn encode(input: &[u8]) -> String {
        const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in input.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..=chunk.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    }
}

#[tokio::test]
async fn signup_login_and_me() {
    let app = TestApp::spawn().await;
    let alice = app.signup("Alice").await;
    assert_eq!(alice.username, "Alice");
    let (status, me) = app.get("/api/me", Some(&alice.token)).await;
    assert_eq!(status, 200);
    assert_eq!(me["username"], "alice");
    assert_eq!(me["displayName"], alice.display_name);

    let (status, body) = app
        .post(
            "/api/auth/signup",
            None,
            json!({"username": "alice", "password": "password-456"}),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    let (status, body) = app
        .post(
            "/api/auth/signup",
            None,
            json!({"username": "x", "password": "password-456"}),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("bad_request"))
    );
    let (status, _) = app
        .post(
            "/api/auth/signup",
            None,
            json!({"username": "carol", "password": "short"}),
        )
        .await;
    assert_eq!(status, 400);

    let (status, login) = app
        .post(
            "/api/auth/login",
            None,
            json!({"username": "ALICE", "password": "password-123"}),
        )
        .await;
    assert_eq!(status, 200, "{login}");
    assert_eq!(login["user"]["id"], alice.id.to_string());

    // Wrong password and unknown user answer alike.
    let (wrong_status, wrong) = app
        .post(
            "/api/auth/login",
            None,
            json!({"username": "alice", "password": "nope-nope-nope"}),
        )
        .await;
    let (unknown_status, unknown) = app
        .post(
            "/api/auth/login",
            None,
            json!({"username": "nobody", "password": "nope-nope-nope"}),
        )
        .await;
    assert_eq!((wrong_status, unknown_status), (401, 401));
    assert_eq!(wrong, unknown);

    let bob = app.signup("bob").await;
    let (_, users) = app.get("/api/users", Some(&alice.token)).await;
    let users = users["users"].as_array().unwrap();
    assert_eq!(users.len(), 1, "everyone else, not the caller");
    assert_eq!(users[0]["id"], bob.id.to_string());
    assert_eq!(users[0]["unreadCount"], 0);
    assert_eq!(users[0]["online"], false);
    assert!(users[0]["conversationId"].as_str().is_some());
}

#[tokio::test]
async fn bad_tokens_are_refused_at_the_handshake_and_on_rest() {
    let app = TestApp::spawn().await;
    let alice = app.signup("alice").await;
    let sub = alice.id.to_string();
    let bad_tokens = [
        (
            "wrong key",
            forge("another-secret-another-secret-0123456789", &sub, 3600),
        ),
        ("alg none", alg_none(&sub)),
        ("expired", forge(TEST_JWT_SECRET, &sub, -3600)),
        ("garbage", "not-a-token".to_owned()),
    ];
    for (name, token) in &bad_tokens {
        let refused = WsClient::connect(&app.ws_url(token, "d")).await;
        assert_eq!(
            refused.err().and_then(|e| e.status),
            Some(401),
            "{name} at the handshake"
        );
        let (status, body) = app.get("/api/me", Some(token)).await;
        assert_eq!(status, 401, "{name} on REST");
        assert_eq!(body["error"]["code"], "unauthorized");
    }
    // No token at all.
    let refused = WsClient::connect(&format!("ws://127.0.0.1:{}/ws", app.gateway_port)).await;
    assert_eq!(refused.err().and_then(|e| e.status), Some(401));
    let (status, _) = app.get("/api/users", None).await;
    assert_eq!(status, 401);
    // A valid token in the Authorization header works.
    let url = format!("ws://127.0.0.1:{}/ws?device=hdr", app.gateway_port);
    let bearer = format!("Bearer {}", alice.token);
    let client = WsClient::connect_with(&url, &[("authorization", &bearer)])
        .await
        .unwrap();
    assert_eq!(client.ready["userId"], sub);
    assert_eq!(client.ready["deviceId"], "hdr");
    assert_eq!(
        client.protocol, None,
        "no subprotocol offered, none answered"
    );
    // As browsers send it: the subprotocol pair, answered `natter.v1` and
    // never with the token.
    let url = format!("ws://127.0.0.1:{}/ws?device=proto", app.gateway_port);
    let offered = format!("natter.v1, bearer.{}", alice.token);
    let client = WsClient::connect_with(&url, &[("sec-websocket-protocol", &offered)])
        .await
        .unwrap();
    assert_eq!(client.ready["userId"], sub);
    assert_eq!(client.ready["deviceId"], "proto");
    assert_eq!(client.protocol.as_deref(), Some("natter.v1"));
    // A bad token there is refused like anywhere else.
    let forged = format!("natter.v1, bearer.{}x", alice.token);
    let refused = WsClient::connect_with(&url, &[("sec-websocket-protocol", &forged)]).await;
    assert_eq!(refused.err().and_then(|e| e.status), Some(401));
}

#[tokio::test]
async fn websocket_origin_must_be_allowed() {
    let app = TestApp::spawn().await;
    let alice = app.signup("alice").await;
    let url = app.ws_url(&alice.token, "d");
    let allowed = WsClient::connect_with(&url, &[("origin", "http://localhost:5173")]).await;
    assert!(allowed.is_ok());
    let own = format!("http://127.0.0.1:{}", app.gateway_port);
    assert!(
        WsClient::connect_with(&url, &[("origin", &own)])
            .await
            .is_ok()
    );
    let refused = WsClient::connect_with(&url, &[("origin", "http://evil.example")]).await;
    assert_eq!(refused.err().and_then(|e| e.status), Some(403));
    // CORS on REST follows the same list.
    let response = app
        .http
        .get(app.url("/api/me"))
        .header("origin", "http://localhost:5173")
        .bearer_auth(&alice.token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        response
            .headers()
            .get("access-control-allow-origin")
            .and_then(|v| v.to_str().ok()),
        Some("http://localhost:5173")
    );
    let response = app
        .http
        .get(app.url("/api/me"))
        .header("origin", "http://evil.example")
        .bearer_auth(&alice.token)
        .send()
        .await
        .unwrap();
    assert!(
        response
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
}
