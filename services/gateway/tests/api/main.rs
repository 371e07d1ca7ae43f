//! The gateway's integration tests: the whole pipeline against a real
//! nats-server and PostgreSQL, through the public REST and WebSocket API.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking

mod auth;
mod direct_messages;
mod durability;
mod errors;
mod fairness;
mod groups;
mod lifecycle;
mod limits;
mod presence;
mod pruning;
mod replay;
mod sessions;
mod web;
