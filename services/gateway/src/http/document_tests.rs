//! The OpenAPI document against the router: every route documented, every
//! operation routed, the security scheme on every operation that needs it,
//! and the WebSocket's events listed.

#![allow(clippy::unwrap_used)]

use super::openapi::ApiDoc;
use std::collections::{BTreeMap, BTreeSet};
use utoipa::OpenApi;

/// The document's own viewer (Swagger UI's page and assets).
const VIEWER: [&str; 3] = ["/api/docs", "/api/docs/", "/api/docs/{*rest}"];

/// `(path, method)` for every route of `router`, read from its `Debug`
/// text (axum has no other way to list them): each route id's
/// `allow_header` and path, in the main router (not the fallback's).
fn routed(router: &axum::Router<crate::state::AppState>) -> BTreeSet<(String, String)> {
    let text = format!("{router:?}");
    let main = text.split("fallback_router").next().unwrap();
    let mut methods: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let mut paths: BTreeMap<&str, &str> = BTreeMap::new();
    for chunk in main.split("RouteId(").skip(1) {
        let (id, rest) = chunk.split_once(')').unwrap();
        if let Some(rest) = rest.strip_prefix(": MethodRouter(") {
            let allow = rest
                .split("allow_header: Bytes(b\"")
                .nth(1)
                .and_then(|a| a.split('"').next())
                .unwrap_or_else(|| panic!("no allow_header in {rest}"));
            let listed = allow
                .split(',')
                .filter(|m| !m.is_empty() && *m != "HEAD")
                .map(str::to_lowercase)
                .collect();
            methods.insert(id, listed);
        } else if let Some(rest) = rest.strip_prefix(": \"") {
            paths.insert(id, rest.split('"').next().unwrap());
        }
    }
    assert_eq!(
        methods.len(),
        paths.len(),
        "every route id has a path: {text}"
    );
    paths
        .iter()
        .filter(|(_, path)| !VIEWER.contains(path))
        .flat_map(|(id, path)| {
            methods[id]
                .iter()
                .map(|method| (path.to_string(), method.clone()))
        })
        .collect()
}

/// `(path, method)` for every operation of the document.
fn documented() -> BTreeSet<(String, String)> {
    let document = serde_json::to_value(ApiDoc::openapi()).unwrap();
    let mut operations = BTreeSet::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for method in [
            "get", "put", "post", "delete", "patch", "options", "head", "trace",
        ] {
            if item.get(method).is_some() {
                operations.insert((path.clone(), method.to_owned()));
            }
        }
    }
    operations
}

#[test]
fn every_route_is_documented_and_every_operation_is_routed() {
    let routed = routed(&super::routes());
    assert!(routed.len() >= 25, "the routes were read: {routed:?}");
    let documented = documented();
    let undocumented: Vec<_> = routed.difference(&documented).collect();
    let unrouted: Vec<_> = documented.difference(&routed).collect();
    assert!(
        undocumented.is_empty(),
        "routes not in the document: {undocumented:?}"
    );
    assert!(
        unrouted.is_empty(),
        "operations no route serves: {unrouted:?}"
    );
}

#[test]
fn the_route_list_sees_a_route_missing_from_the_document() {
    let extra = super::routes().route(
        "/api/undocumented",
        axum::routing::get(|| async { "hidden" }),
    );
    let routed = routed(&extra);
    assert!(routed.contains(&("/api/undocumented".to_owned(), "get".to_owned())));
    assert!(!documented().contains(&("/api/undocumented".to_owned(), "get".to_owned())));
}

#[test]
fn every_operation_but_the_open_ones_requires_the_bearer_token() {
    let document = serde_json::to_value(ApiDoc::openapi()).unwrap();
    assert_eq!(
        document["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    let open = [
        "/api/auth/signup",
        "/api/auth/login",
        "/healthz",
        "/readyz",
        "/metrics",
        "/api/openapi.json",
        "/",
        "/assets/{name}",
    ];
    for (path, method) in documented() {
        let operation = &document["paths"][&path][&method];
        let secured = operation["security"]
            .as_array()
            .is_some_and(|s| s.iter().any(|r| r.get("bearer").is_some()));
        assert_eq!(secured, !open.contains(&path.as_str()), "{method} {path}");
    }
}

#[test]
fn the_websocket_events_are_in_the_document() {
    let document = serde_json::to_value(ApiDoc::openapi()).unwrap();
    let events = &document["paths"]["/ws"]["get"]["x-websocket"];
    for event in [
        "send_direct_message",
        "send_group_message",
        "mark_read",
        "ack",
        "ping",
    ] {
        assert!(events["clientToServer"].get(event).is_some(), "{event}");
    }
    for event in [
        "ready",
        "receive_direct_message",
        "message_sent",
        "error",
        "resync_required",
    ] {
        assert!(events["serverToClient"].get(event).is_some(), "{event}");
    }
    assert!(document["openapi"].as_str().unwrap().starts_with("3.1"));
}
