//! backroom: an HTTP intake and a fleet of workers on Redis for multi-tenant inventory and order
//! businesses. `main.rs` only parses the command line; everything else lives here.

pub mod api;
pub mod clock;
pub mod config;
pub mod db;
pub mod domain;
pub mod forecast;
pub mod history;
pub mod jobs;
pub mod outbox;
pub mod process;
pub mod queue;
pub mod redis_conn;
pub mod telemetry;
