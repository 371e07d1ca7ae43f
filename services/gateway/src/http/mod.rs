//! The REST API (DESIGN.md §4): one router per resource, merged here, with
//! CORS from `ALLOWED_ORIGINS`.

mod auth;
mod contacts;
mod conversations;
mod debug;
mod extract;
mod groups;
mod health;
mod messages;
mod users;
mod web;

use crate::error::ApiError;
use crate::state::AppState;
use axum::Router;
use axum::extract::MatchedPath;
use axum::http::{HeaderValue, Method, Uri, header};
use axum::response::Response;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tracing::Instrument;

pub fn router(state: AppState) -> Router {
    let origins: Vec<HeaderValue> = state
        .config
        .allowed_origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    let cors = CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
        ])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE]);
    Router::new()
        .merge(auth::router())
        .merge(users::router())
        .merge(contacts::router())
        .merge(conversations::router())
        .merge(messages::router())
        .merge(groups::router())
        .merge(debug::router())
        .merge(health::router())
        .merge(web::router())
        .route("/ws", axum::routing::get(crate::ws::upgrade::upgrade))
        .fallback(unknown_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(cors)
        .layer(axum::middleware::from_fn(observe))
        .with_state(state)
}

/// A path natter does not serve: the API's error shape, not an empty 404.
async fn unknown_route(method: Method, uri: Uri) -> ApiError {
    ApiError::NotFound(format!("no route for {method} {}", uri.path()))
}

/// A path natter serves, with a method it does not take there.
async fn wrong_method(method: Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed(format!("{} does not take {method}", uri.path()))
}

/// Every request gets a span (the root of a REST send's trace) and is
/// counted by status.
async fn observe(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let span = tracing::info_span!(
        parent: None,
        "http.request",
        method = %request.method(),
        route,
        status = tracing::field::Empty,
    );
    let response = next.run(request).instrument(span.clone()).await;
    let status = response.status().as_u16();
    span.record("status", status);
    crate::metrics::http_request(status);
    response
}
