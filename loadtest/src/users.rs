//! Test users. With the natter's database and JWT secret they are inserted
//! in bulk and their tokens minted, so ten thousand users take a second;
//! without, they sign up over REST (argon2 makes that about 20 a second, and
//! the gateway's `AUTH_RATE_PER_MIN` must allow that many from one address).

use crate::cli::Target;
use anyhow::Context;
use natter_core::UserId;
use serde_json::json;
use std::time::Duration;
use uuid::Uuid;

#[derive(Clone, Debug)]
pub struct User {
    pub id: Uuid,
    pub token: String,
}

/// `count` new users named `lt-<run>-<prefix><i>`.
pub async fn create(target: &Target, prefix: &str, count: usize) -> anyhow::Result<Vec<User>> {
    let run = Uuid::now_v7().simple().to_string();
    let names: Vec<String> = (0..count)
        .map(|i| format!("lt{}{prefix}{i}", &run[20..]))
        .collect();
    match (&target.database_url, &target.jwt_secret) {
        (Some(database), Some(secret)) => seed(database, secret, &names).await,
        _ => sign_up(&target.first_gateway(), &names).await,
    }
}

async fn seed(database: &str, secret: &str, names: &[String]) -> anyhow::Result<Vec<User>> {
    let keys =
        natter_gateway::auth::TokenKeys::new(Some(secret), false, Duration::from_secs(24 * 3600))
            .context("JWT secret")?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(database)
        .await
        .context("connecting to DATABASE_URL")?;
    let ids: Vec<Uuid> = names.iter().map(|_| Uuid::now_v7()).collect();
    for (ids, names) in ids.chunks(5000).zip(names.chunks(5000)) {
        sqlx::query(
            "INSERT INTO users (id, username, display_name, password_hash)
             SELECT id, name, name, 'loadtest' FROM UNNEST($1::uuid[], $2::text[]) AS u(id, name)",
        )
        .bind(ids)
        .bind(names)
        .execute(&pool)
        .await
        .context("inserting users")?;
    }
    pool.close().await;
    ids.into_iter()
        .map(|id| {
            let token = keys
                .issue(UserId(id))
                .map_err(|e| anyhow::anyhow!("minting a token: {e}"))?;
            Ok(User { id, token })
        })
        .collect()
}

async fn sign_up(base: &str, names: &[String]) -> anyhow::Result<Vec<User>> {
    let http = reqwest::Client::new();
    let mut users = Vec::with_capacity(names.len());
    for name in names {
        let response = http
            .post(format!("{base}/api/auth/signup"))
            .json(&json!({"username": name, "password": "loadtest-password"}))
            .send()
            .await
            .context("signing up")?;
        anyhow::ensure!(
            response.status().as_u16() != 429,
            "signup answered 429: the gateway limits signups per client address \
             (AUTH_RATE_PER_MIN); raise it for load tests, or pass --database-url \
             and --jwt-secret to seed users instead"
        );
        anyhow::ensure!(
            response.status().as_u16() == 201,
            "signup answered {}",
            response.status()
        );
        let body: serde_json::Value = response.json().await?;
        let id = body["user"]["id"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .context("signup reply without a user id")?;
        let token = body["token"]
            .as_str()
            .context("signup reply without a token")?
            .to_owned();
        users.push(User { id, token });
    }
    Ok(users)
}
