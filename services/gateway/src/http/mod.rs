//! The REST API (DESIGN.md §4): one router per resource, merged here, with
//! CORS from `ALLOWED_ORIGINS`.

mod auth;
mod conversations;
mod debug;
mod groups;
mod health;
mod messages;
mod users;

use crate::state::AppState;
use axum::Router;
use axum::http::{HeaderValue, Method, header};
use tower_http::cors::{AllowOrigin, CorsLayer};

pub fn router(state: AppState) -> Router {
    let origins: Vec<HeaderValue> = state
        .config
        .allowed_origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    let cors = CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_methods([Method::GET, Method::POST, Method::PATCH, Method::DELETE])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE]);
    Router::new()
        .merge(auth::router())
        .merge(users::router())
        .merge(conversations::router())
        .merge(messages::router())
        .merge(groups::router())
        .merge(debug::router())
        .merge(health::router())
        .route("/ws", axum::routing::get(crate::ws::session::upgrade))
        .layer(cors)
        .with_state(state)
}

/// A JSON body that answers malformed input with our error shape.
pub(crate) struct JsonBody<T>(pub T);

impl<T, S> axum::extract::FromRequest<S> for JsonBody<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = crate::error::ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(crate::error::ApiError::bad_request(rejection.body_text())),
        }
    }
}
