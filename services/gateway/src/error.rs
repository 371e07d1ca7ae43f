//! The gateway's one error type: an HTTP status and body for REST, an
//! `error` frame for WebSocket, with the codes of DESIGN.md §4. Internal
//! failures are logged with their cause and answered without it.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    /// A unique value is taken (HTTP 409; code `bad_request`).
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    /// The path exists, not with this method (HTTP 405; code `bad_request`).
    #[error("{0}")]
    MethodNotAllowed(String),
    /// A body that is not `application/json` (HTTP 415; code `bad_request`).
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// Too many requests; `retry_after` is when the next one would pass.
    #[error("{message}")]
    RateLimited {
        message: String,
        retry_after: Duration,
    },
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn bad_request(msg: impl Into<String>) -> Self {
        Self::BadRequest(msg.into())
    }

    pub fn rate_limited(message: impl Into<String>, retry_after: Duration) -> Self {
        Self::RateLimited {
            message: message.into(),
            retry_after,
        }
    }

    pub fn internal(context: impl std::fmt::Display) -> Self {
        Self::Internal(context.to_string())
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::BadRequest(_)
            | Self::Conflict(_)
            | Self::MethodNotAllowed(_)
            | Self::UnsupportedMediaType(_) => "bad_request",
            Self::Unauthorized(_) => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::NotFound(_) => "not_found",
            Self::PayloadTooLarge(_) => "payload_too_large",
            Self::RateLimited { .. } => "rate_limited",
            Self::Unavailable(_) => "unavailable",
            Self::Internal(_) => "internal",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The text a client may see.
    pub fn public_message(&self) -> String {
        match self {
            Self::Internal(cause) => {
                tracing::error!(error = %cause, "internal error");
                "internal error".to_owned()
            }
            other => other.to_string(),
        }
    }

    /// `{"code", "message"}`, the body of REST errors and `error` frames.
    pub fn body(&self) -> serde_json::Value {
        json!({"code": self.code(), "message": self.public_message()})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        crate::metrics::error(self.code());
        let mut response = (self.status(), Json(json!({"error": self.body()}))).into_response();
        if let Self::RateLimited { retry_after, .. } = &self {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(retry_after_secs(*retry_after)),
            );
        }
        response
    }
}

/// `Retry-After` counts whole seconds: round up, so a client that waits
/// that long is let through.
fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_) => {
                tracing::warn!(error = %e, "database unavailable");
                Self::Unavailable("the database is unavailable; retry shortly".into())
            }
            other => Self::internal(other),
        }
    }
}

impl From<natter_core::ValueError> for ApiError {
    fn from(e: natter_core::ValueError) -> Self {
        match e {
            natter_core::ValueError::TooLarge { .. } => Self::PayloadTooLarge(e.to_string()),
            natter_core::ValueError::Invalid(msg) => Self::BadRequest(msg),
        }
    }
}

// The error shape as types, for the OpenAPI document.

/// Every error: `{"error": {"code", "message"}}`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    pub code: ErrorCode,
    /// For people; clients act on `code`.
    pub message: String,
}

/// The error codes of the API (DESIGN §4).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[allow(dead_code)] // a schema: `ApiError::code` writes the codes
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    Unavailable,
    Internal,
}

/// The errors any operation may answer, each in [`ErrorBody`]'s shape.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // documents responses; `ApiError` makes them
pub enum ErrorResponses {
    /// Malformed input: a field, the query, the JSON, a path id.
    #[response(status = 400)]
    BadRequest(ErrorBody),
    /// A missing, invalid, expired or revoked token.
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// Not allowed for this user.
    #[response(status = 403)]
    Forbidden(ErrorBody),
    /// No such thing, or not one the caller may see.
    #[response(status = 404)]
    NotFound(ErrorBody),
    /// The method is not taken on this path.
    #[response(status = 405)]
    MethodNotAllowed(ErrorBody),
    /// The name is taken (sign-up).
    #[response(status = 409)]
    Conflict(ErrorBody),
    /// The body or the message is too large.
    #[response(status = 413)]
    PayloadTooLarge(ErrorBody),
    /// The body is not `application/json`.
    #[response(status = 415)]
    UnsupportedMediaType(ErrorBody),
    /// Over a per-user or per-address limit; `Retry-After` says when to retry.
    #[response(status = 429)]
    RateLimited(ErrorBody),
    /// A bug; the message carries a trace id to report.
    #[response(status = 500)]
    Internal(ErrorBody),
    /// A dependency did not answer (in time); retry. A send answered so
    /// may still be delivered: retry it with the same `clientMsgId`.
    #[response(status = 503)]
    Unavailable(ErrorBody),
}
