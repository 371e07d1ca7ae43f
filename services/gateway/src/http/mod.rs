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
mod openapi;
mod schema;
mod users;
mod web;

use crate::error::ApiError;
use crate::state::AppState;
use axum::Router;
use axum::extract::MatchedPath;
use axum::http::{HeaderValue, Method, Uri, header};
use axum::response::{IntoResponse, Response};
use natter_runtime::trace::Trace;
use std::time::Duration;
use tower_http::catch_panic::{CatchPanicLayer, ResponseForPanic};
use tower_http::cors::{AllowOrigin, CorsLayer};

/// How long a REST request may take before it is answered `unavailable`.
/// Every dependency call has a shorter bound of its own; this one catches
/// what slips through, so no client waits on a hung handler.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

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
    guarded(routes(), REQUEST_TIMEOUT)
        .layer(cors)
        .layer(axum::middleware::from_fn(observe))
        .with_state(state)
}

/// Every route, without state or layers: what the OpenAPI document must
/// describe, path for path and method for method.
pub(super) fn routes() -> Router<AppState> {
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
        .route(
            "/api/openapi.json",
            axum::routing::get(openapi::openapi_json),
        )
        .merge(api_viewer())
        .fallback(unknown_route)
        .method_not_allowed_fallback(wrong_method)
}

/// Swagger UI at `/api/docs`, its assets built in; a file it does not have
/// answers in the API's error shape, not with its bare 404.
fn api_viewer() -> Router<AppState> {
    Router::from(
        utoipa_swagger_ui::SwaggerUi::new("/api/docs")
            .config(utoipa_swagger_ui::Config::from("/api/openapi.json")),
    )
    .layer(axum::middleware::map_response(
        |response: Response| async move {
            if response.status() == axum::http::StatusCode::NOT_FOUND
                && !response.headers().contains_key(header::CONTENT_TYPE)
            {
                return ApiError::NotFound("no such file in the API viewer".into()).into_response();
            }
            response
        },
    ))
}

/// Every request answered in the API's error shape even when its handler
/// hangs (`unavailable` after `timeout`) or panics (`internal`).
fn guarded<S: Clone + Send + Sync + 'static>(routes: Router<S>, timeout: Duration) -> Router<S> {
    routes
        .layer(CatchPanicLayer::custom(PanicAnswer))
        .layer(axum::middleware::from_fn(
            move |request: axum::extract::Request, next: axum::middleware::Next| async move {
                match tokio::time::timeout(timeout, next.run(request)).await {
                    Ok(response) => response,
                    Err(_) => {
                        tracing::warn!(
                            timeout_ms = timeout.as_millis() as u64,
                            "request not answered in time; answered unavailable"
                        );
                        ApiError::Unavailable(format!(
                            "the request took longer than {} s; retry",
                            timeout.as_secs_f32()
                        ))
                        .into_response()
                    }
                }
            },
        ))
}

/// A handler that panicked: 500 `internal`. The log line and the answer
/// carry the request's trace id (a fresh id when tracing does not export),
/// so a report can be matched to the log; the panic's text, which may hold
/// anyone's data, stays out of the answer.
#[derive(Clone)]
struct PanicAnswer;

impl ResponseForPanic for PanicAnswer {
    type ResponseBody = axum::body::Body;

    fn response_for_panic(
        &mut self,
        _panic: Box<dyn std::any::Any + Send + 'static>,
    ) -> Response<Self::ResponseBody> {
        let trace_id = Trace::current()
            .trace_id()
            .map(|id| id.to_string())
            .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
        tracing::error!(%trace_id, "a request handler panicked; answered 500");
        crate::metrics::error("internal");
        let body = serde_json::json!({"error": {
            "code": "internal",
            "message": format!("internal error (trace {trace_id})"),
        }});
        (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            axum::Json(body),
        )
            .into_response()
    }
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
    let trace = Trace::start(|| {
        tracing::info_span!(
            parent: None,
            "http.request",
            method = %request.method(),
            route,
            status = tracing::field::Empty,
        )
    });
    let response = trace.clone().instrument(next.run(request)).await;
    let status = response.status().as_u16();
    if let Some(span) = trace.span() {
        span.record("status", status);
    }
    crate::metrics::http_request(status);
    response
}

#[cfg(test)]
mod document_tests;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use axum::body::Body;
    use axum::routing::get;
    use tower::ServiceExt;

    async fn answer(router: Router, path: &str) -> (u16, serde_json::Value) {
        let response = router
            .oneshot(
                axum::http::Request::builder()
                    .uri(path)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = response.status().as_u16();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    fn routes() -> Router {
        let router: Router = Router::new()
            .route(
                "/boom",
                get(|| async {
                    if true {
                        panic!("alice's secret text");
                    }
                    "never"
                }),
            )
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    "late"
                }),
            )
            .route(
                "/fine",
                get(|| async { axum::Json(serde_json::json!({"ok": true})) }),
            );
        guarded(router, Duration::from_millis(200))
    }

    #[tokio::test]
    async fn a_panicking_handler_answers_500_in_the_error_shape_without_its_text() {
        let (status, body) = answer(routes(), "/boom").await;
        assert_eq!(status, 500);
        assert_eq!(body["error"]["code"], "internal");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.starts_with("internal error (trace "), "{message}");
        assert!(!body.to_string().contains("secret"), "{body}");
        // The server goes on serving.
        assert_eq!(
            answer(routes(), "/fine").await,
            (200, serde_json::json!({"ok": true}))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_handler_answers_unavailable_in_the_error_shape() {
        let (status, body) = answer(routes(), "/slow").await;
        assert_eq!(status, 503);
        assert_eq!(body["error"]["code"], "unavailable");
    }
}
