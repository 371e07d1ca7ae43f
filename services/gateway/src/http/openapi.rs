//! The OpenAPI 3.1 document, generated from the handlers' `#[utoipa::path]`
//! and their types, served at `GET /api/openapi.json`, with Swagger UI (its
//! assets built into the binary: no CDN) at `/api/docs`. The WebSocket's
//! events are listed in the `/ws` operation's `x-websocket` extension.

use super::{auth, contacts, conversations, debug, groups, health, messages, users, web};
use axum::Json;
use serde_json::json;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "natter",
        description = "A real-time chat backend: REST for accounts, people, conversations and \
            groups; a WebSocket (`/ws`) for sending, live delivery and replay from a per-device \
            cursor. Every error is `{\"error\": {\"code\", \"message\"}}`.",
    ),
    paths(
        openapi_json,
        auth::signup, auth::login, auth::logout,
        users::me, users::update_me, users::users,
        contacts::list, contacts::add, contacts::remove,
        conversations::list, conversations::history, conversations::read,
        messages::send,
        groups::create, groups::show, groups::destroy, groups::members, groups::add,
        groups::remove,
        health::healthz, health::readyz, health::metrics,
        debug::active_users,
        web::index, web::asset,
        crate::ws::upgrade::upgrade,
    ),
    components(schemas(crate::error::ErrorBody, crate::error::ErrorCode, natter_core::Message)),
    modifiers(&Security, &WebSocketEvents),
    tags(
        (name = "auth", description = "Sign-up, log-in, log-out"),
        (name = "users", description = "The caller and the people they can write to"),
        (name = "contacts", description = "The caller's contacts"),
        (name = "conversations", description = "History and read positions"),
        (name = "messages", description = "Sending over REST"),
        (name = "groups", description = "Groups and their members"),
        (name = "websocket", description = "The live connection"),
        (name = "operations", description = "Health, readiness, metrics, operator views"),
        (name = "web", description = "The web client"),
    )
)]
pub struct ApiDoc;

/// This document.
#[utoipa::path(get, path = "/api/openapi.json", tag = "operations",
    responses((status = 200, description = "the OpenAPI document", body = Object)))]
pub(super) async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

/// The `bearer` scheme: the JWT from sign-up or log-in.
struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let mut scheme = Http::new(HttpAuthScheme::Bearer);
        scheme.bearer_format = Some("JWT".to_owned());
        components.add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

/// The WebSocket's events (DESIGN §4), on the `/ws` operation.
struct WebSocketEvents;

impl Modify for WebSocketEvents {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let Some(operation) = openapi
            .paths
            .paths
            .get_mut("/ws")
            .and_then(|item| item.get.as_mut())
        else {
            return;
        };
        let extensions = operation.extensions.get_or_insert_with(Default::default);
        extensions.insert("x-websocket".to_owned(), websocket_events());
    }
}

/// Frames are `{"event", "data", "ref"?}`; a reply echoes its command's `ref`.
fn websocket_events() -> serde_json::Value {
    json!({
        "frame": {"event": "string", "data": "object", "ref": "any JSON value, echoed in the reply"},
        "subprotocol": "natter.v1",
        "clientToServer": {
            "send_direct_message": {"data": ["receiverId", "content", "clientMsgId?"], "reply": "message_sent or error"},
            "send_group_message": {"data": ["groupId", "content", "clientMsgId?"], "reply": "message_sent or error"},
            "join_group": {"data": ["groupId"], "reply": "none (membership is the server's business)"},
            "mark_read": {"data": ["conversationId", "upToSeq?"], "reply": "none; messages_read arrives via delivery"},
            "typing": {"data": ["conversationId"], "reply": "none"},
            "ack": {"data": ["cursor"], "reply": "none; cumulative"},
            "ping": {"data": [], "reply": "pong"},
        },
        "serverToClient": {
            "ready": ["userId", "deviceId", "cursor"],
            "resync_required": ["reason"],
            "receive_direct_message": ["message", "cursor (top level)"],
            "receive_group_message": ["message", "cursor (top level)"],
            "message_sent": ["message"],
            "messages_read": ["conversationId", "readerId", "upToSeq", "cursor (top level)"],
            "group_updated": ["group", "change", "cursor (top level)"],
            "typing": ["conversationId", "userId"],
            "presence": ["userId", "online", "lastSeen"],
            "error": ["code", "message"],
            "pong": [],
        },
        "message": {"$ref": "#/components/schemas/Message"},
        "errorCodes": {"$ref": "#/components/schemas/ErrorCode"},
    })
}
