//! The gateway's integration tests: the whole pipeline against a real
//! nats-server and PostgreSQL, through the public REST and WebSocket API.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking

mod auth;
mod auth_flood;
mod auth_limits;
mod client_msg_id;
mod direct_messages;
mod durability;
mod errors;
mod expiry;
mod fairness;
mod group_bounds;
mod group_lifecycle;
mod groups;
mod lifecycle;
mod limits;
mod openapi;
mod people;
mod permissions;
mod presence;
mod pruning;
mod replay;
mod sessions;
mod web;

/// The allocator of the `natter-gateway` binary, so memory measured here
/// (the login flood's) is what the gateway would use. With glibc's malloc
/// the flood's freed 19 MiB Argon2 blocks stay resident, fragmented across
/// threads' arenas (about 1 GiB after 500 logins, four at a time).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
