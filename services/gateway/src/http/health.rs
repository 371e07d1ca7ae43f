//! Liveness, readiness and the Prometheus metrics.

use super::schema::{Liveness, Readiness};
use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

/// Alive: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "alive", body = Liveness)))]
async fn healthz() -> Json<Liveness> {
    Json(Liveness {
        status: "ok".to_owned(),
    })
}

/// The Prometheus metrics (text exposition format).
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "the metrics", content_type = "text/plain", body = String)))]
async fn metrics() -> axum::response::Response {
    use axum::response::IntoResponse;
    natter_runtime::metrics::endpoint().await.into_response()
}

/// Ready while NATS is connected and PostgreSQL answers.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, description = "ready", body = Readiness),
        (status = 503, description = "a dependency does not answer", body = Readiness)))]
async fn readyz(
    State(nats): State<async_nats::Client>,
    State(pool): State<sqlx::PgPool>,
) -> (StatusCode, Json<Readiness>) {
    let readiness = natter_runtime::health::probe(&nats, &pool).await;
    let status = if readiness.ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(Readiness {
            nats: readiness.nats,
            postgres: readiness.postgres,
        }),
    )
}
