//! Liveness and readiness for orchestrators, and `/metrics` for Prometheus.
//!
//! `/healthz` answers while the process runs; `/readyz` only once the schema
//! is applied and while NATS and PostgreSQL are reachable.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use sqlx::PgPool;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Clone)]
pub struct HealthState {
    pub pool: PgPool,
    pub nats: async_nats::Client,
    /// Set once the schema is applied: not ready before.
    pub migrated: Arc<AtomicBool>,
}

pub async fn serve(listener: TcpListener, state: HealthState, shutdown: CancellationToken) {
    let app = Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(natter_runtime::metrics::endpoint))
        .with_state(state);
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "health server failed");
    }
}

async fn readyz(State(state): State<HealthState>) -> (StatusCode, Json<serde_json::Value>) {
    let readiness = natter_runtime::health::probe(&state.nats, &state.pool).await;
    let migrated = state.migrated.load(Ordering::Relaxed);
    let status = if readiness.ready() && migrated {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({"nats": readiness.nats, "postgres": readiness.postgres, "migrated": migrated})),
    )
}
