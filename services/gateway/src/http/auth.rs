//! Sign-up and log-in.

use super::extract::{AuthUser, JsonBody};
use crate::auth::{TokenKeys, hash_password, verify_password};
use crate::delivery::Hub;
use crate::directory::{Directory, UserRecord};
use crate::error::ApiError;
use crate::revocation::{REVOKED, Revocations};
use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use natter_core::{DisplayName, Password, UserId, Username};
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::PgPool;
use std::sync::Arc;
use uuid::Uuid;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/auth/signup", post(signup))
        .route("/api/auth/login", post(login))
        .route("/api/auth/logout", post(logout))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Signup {
    username: String,
    password: String,
    display_name: Option<String>,
}

#[derive(Deserialize)]
struct Login {
    username: String,
    password: String,
}

pub fn user_json(user: &UserRecord) -> Value {
    json!({"id": user.id, "username": user.username, "displayName": user.display_name})
}

async fn signup(
    State(pool): State<PgPool>,
    State(directory): State<Arc<Directory>>,
    State(tokens): State<Arc<TokenKeys>>,
    JsonBody(body): JsonBody<Signup>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let username = Username::parse(&body.username)?;
    let password = Password::parse(&body.password)?;
    let display_name = match body.display_name.as_deref() {
        Some(name) => DisplayName::parse(name)?,
        None => DisplayName::parse(username.as_str())?,
    };
    let hash = hash_password(password).await?;
    let id = UserId::generate();
    let inserted = sqlx::query(
        "INSERT INTO users (id, username, display_name, password_hash) VALUES ($1, $2, $3, $4)
         ON CONFLICT (username) DO NOTHING",
    )
    .bind(id.0)
    .bind(username.as_str())
    .bind(display_name.as_str())
    .bind(&hash)
    .execute(&pool)
    .await?;
    if inserted.rows_affected() == 0 {
        return Err(ApiError::Conflict("username is taken".into()));
    }
    let user = directory.remember(UserRecord {
        id,
        username: username.as_str().to_owned(),
        display_name: display_name.into_string(),
    });
    tracing::info!(user = %id, "user signed up");
    let token = tokens.issue(id)?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"token": token, "user": user_json(&user)})),
    ))
}

async fn login(
    State(pool): State<PgPool>,
    State(directory): State<Arc<Directory>>,
    State(tokens): State<Arc<TokenKeys>>,
    JsonBody(body): JsonBody<Login>,
) -> Result<Json<Value>, ApiError> {
    // Any malformed name is simply unknown: the answer never says which part was wrong.
    let row: Option<(Uuid, String, String, String)> =
        match Username::parse(&body.username) {
            Ok(username) => sqlx::query_as(
                "SELECT id, username, display_name, password_hash FROM users WHERE username = $1",
            )
            .bind(username.as_str())
            .fetch_optional(&pool)
            .await?,
            Err(_) => None,
        };
    let hash = row.as_ref().map(|r| r.3.clone());
    let valid = verify_password(body.password, hash).await?;
    let Some((id, username, display_name, _)) = row.filter(|_| valid) else {
        return Err(ApiError::Unauthorized(
            "invalid username or password".into(),
        ));
    };
    let user = directory.remember(UserRecord {
        id: UserId(id),
        username,
        display_name,
    });
    let token = tokens.issue(user.id)?;
    Ok(Json(json!({"token": token, "user": user_json(&user)})))
}

/// Revokes the caller's token everywhere and closes the sockets it opened.
async fn logout(
    State(revocations): State<Arc<Revocations>>,
    State(hub): State<Arc<Hub>>,
    caller: AuthUser,
) -> Result<StatusCode, ApiError> {
    revocations.revoke(&caller.claims).await?;
    // The cluster-wide watch closes them too; this gateway need not wait for it.
    let jti = caller.claims.jti;
    hub.close_sessions(caller.id, REVOKED, |info| info.jti == jti);
    tracing::info!(user = %caller.id, "logged out");
    Ok(StatusCode::NO_CONTENT)
}
