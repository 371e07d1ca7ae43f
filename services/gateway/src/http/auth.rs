//! Sign-up and log-in, each attempt counted per client address and per
//! username before any password is hashed.

use super::extract::{AuthUser, ClientAddr, JsonBody};
use super::schema::{Session, User};
use crate::auth::TokenKeys;
use crate::auth::attempts::{AttemptLimiter, RetryAfter};
use crate::auth::hashing::PasswordHashing;
use crate::delivery::Hub;
use crate::directory::{Directory, UserRecord};
use crate::error::ApiError;
use crate::error::ErrorResponses;
use crate::revocation::{REVOKED, Revocations};
use crate::state::AppState;
use axum::extract::{FromRef, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use natter_core::{DisplayName, Password, UserId, Username};
use serde::Deserialize;
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// What sign-up and log-in use: attempt limits, password hashing, the
/// users' table and cache, and the token keys.
#[derive(Clone)]
struct Accounts {
    attempts: Arc<AttemptLimiter>,
    hashing: Arc<PasswordHashing>,
    pool: PgPool,
    directory: Arc<Directory>,
    tokens: Arc<TokenKeys>,
}

impl FromRef<AppState> for Accounts {
    fn from_ref(state: &AppState) -> Self {
        Self {
            attempts: FromRef::from_ref(state),
            hashing: FromRef::from_ref(state),
            pool: state.pool.clone(),
            directory: state.directory.clone(),
            tokens: state.tokens.clone(),
        }
    }
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/auth/signup", post(signup))
        .route("/api/auth/login", post(login))
        .route("/api/auth/logout", post(logout))
}

/// `POST /api/auth/signup`: a username, a password and an optional display
/// name. The constraints are `natter_core`'s (`Username`, `Password`,
/// `DisplayName`), which the handler applies.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct Signup {
    /// 3–32 letters, digits, `_`, `.` or `-` (surrounding spaces dropped);
    /// stored in lowercase.
    #[schema(pattern = r"^\s*[A-Za-z0-9_.\-]{3,32}\s*$")]
    username: String,
    #[schema(min_length = 8, max_length = 256)]
    password: String,
    /// 1–64 characters after trimming, none of them control, bidirectional
    /// or invisible; the username when absent.
    display_name: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
struct Login {
    username: String,
    password: String,
}

/// Counts an attempt by `client` on `username` (if it is a valid name: an
/// invalid one never reaches a password, so only the address counts); the
/// refusal if it is over the limit.
fn over_limit(attempts: &AttemptLimiter, client: ClientAddr, username: &str) -> Option<Response> {
    let username = Username::parse(username).ok();
    let key = crate::address::limit_key(client.0);
    let wait: RetryAfter = attempts
        .attempt(key, username.as_ref().map(Username::as_str))
        .err()?;
    tracing::debug!(client = %client.0, "login or signup attempt over the limit");
    Some(
        ApiError::rate_limited(
            "too many attempts; retry later",
            Duration::from_secs(wait.secs()),
        )
        .into_response(),
    )
}

/// An error with `Retry-After` (seconds).
fn retry_later(error: ApiError, secs: u64) -> Response {
    let mut response = error.into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    response
}

/// The handler's answer; a busy hasher (or database) says when to retry.
fn answer(result: Result<impl IntoResponse, ApiError>) -> Response {
    match result {
        Err(error @ ApiError::Unavailable(_)) => retry_later(error, 1),
        other => other.into_response(),
    }
}

/// Signs up: the new user and their first token.
#[utoipa::path(post, path = "/api/auth/signup", tag = "auth", request_body = Signup,
    responses((status = 201, description = "signed up", body = Session), ErrorResponses))]
async fn signup(
    State(accounts): State<Accounts>,
    client: ClientAddr,
    JsonBody(body): JsonBody<Signup>,
) -> Response {
    if let Some(refused) = over_limit(&accounts.attempts, client, &body.username) {
        return refused;
    }
    answer(accounts.create_user(body).await)
}

impl Accounts {
    async fn create_user(&self, body: Signup) -> Result<(StatusCode, Json<Session>), ApiError> {
        let Accounts {
            hashing,
            pool,
            directory,
            tokens,
            ..
        } = self;
        let username = Username::parse(&body.username)?;
        let password = Password::parse(&body.password)?;
        let display_name = match body.display_name.as_deref() {
            Some(name) => DisplayName::parse(name)?,
            None => DisplayName::parse(username.as_str())?,
        };
        let hash = hashing.hash(password).await?;
        let id = UserId::generate();
        let inserted = sqlx::query(
            "INSERT INTO users (id, username, display_name, password_hash) VALUES ($1, $2, $3, $4)
         ON CONFLICT (username) DO NOTHING",
        )
        .bind(id.0)
        .bind(username.as_str())
        .bind(display_name.as_str())
        .bind(&hash)
        .execute(pool)
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
            Json(Session {
                token,
                user: User::from(user.as_ref()),
            }),
        ))
    }

    async fn check_password(&self, body: Login) -> Result<Json<Session>, ApiError> {
        let Accounts {
            hashing,
            pool,
            directory,
            tokens,
            ..
        } = self;
        // Any malformed name is simply unknown: the answer never says which part was wrong.
        let row: Option<(Uuid, String, String, String)> = match Username::parse(&body.username) {
            Ok(username) => sqlx::query_as(
                "SELECT id, username, display_name, password_hash FROM users WHERE username = $1",
            )
            .bind(username.as_str())
            .fetch_optional(pool)
            .await?,
            Err(_) => None,
        };
        let hash = row.as_ref().map(|r| r.3.clone());
        let valid = hashing.verify(body.password, hash).await?;
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
        Ok(Json(Session {
            token,
            user: User::from(user.as_ref()),
        }))
    }
}

/// Logs in: a new token for the user.
#[utoipa::path(post, path = "/api/auth/login", tag = "auth", request_body = Login,
    responses((status = 200, description = "logged in", body = Session), ErrorResponses))]
async fn login(
    State(accounts): State<Accounts>,
    client: ClientAddr,
    JsonBody(body): JsonBody<Login>,
) -> Response {
    if let Some(refused) = over_limit(&accounts.attempts, client, &body.username) {
        return refused;
    }
    answer(accounts.check_password(body).await)
}

/// Revokes the caller's token everywhere and closes the sockets it opened.
#[utoipa::path(post, path = "/api/auth/logout", tag = "auth", security(("bearer" = [])),
    responses((status = 204, description = "the token is revoked"), ErrorResponses))]
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
