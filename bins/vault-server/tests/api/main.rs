//! End-to-end tests of the HTTP API: a real server on a loopback port, a
//! real SQLite file, real HTTP.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    unreachable_pub
)]

mod auth;
mod authz;
mod delete;
mod errors;
mod faults;
mod fetch;
mod helpers;
mod hostile;
mod refresh;
mod store;
mod tls;
