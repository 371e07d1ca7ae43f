//! Liveness, readiness and the Prometheus metrics.

use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(natter_runtime::metrics::endpoint))
}

/// Ready while NATS is connected and PostgreSQL answers.
async fn readyz(
    State(nats): State<async_nats::Client>,
    State(pool): State<sqlx::PgPool>,
) -> (StatusCode, Json<Value>) {
    let readiness = natter_runtime::health::probe(&nats, &pool).await;
    let status = if readiness.ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({"nats": readiness.nats, "postgres": readiness.postgres})),
    )
}
