//! Support shared by the integration suite (`tests/suite`) and the benches (`benches/`): ports,
//! bounded waits, databases with the migrations applied, the app and its workers in-process,
//! `/proc` readings, and the SMTP servers they mail to. Each includes this folder by path
//! (`#[path = …] mod support;`) and uses a part of it.
#![allow(dead_code)]

pub mod app;
pub mod proc;
pub mod smtp;

use sqlx::Connection as _;
use std::future::Future;
use std::time::{Duration, Instant};

/// A TCP port on 127.0.0.1 nothing listens on right now (for a server or child to bind).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

/// Calls `check` every `every` until it answers `Some`, for at most `limit`; `None` if it never
/// did. (Tests turn `None` into a panic naming what they waited for, benches into an error.)
pub async fn poll<T, F, Fut>(limit: Duration, every: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(every).await;
    }
}

/// The Postgres server of `DATABASE_URL` (default the local one), without a database:
/// `postgres://user@host:port`.
pub fn database_server_url() -> String {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    match url.rsplit_once('/') {
        Some((server, _db)) if server.contains("://") && server.ends_with(|c: char| c != '/') => {
            server.to_string()
        }
        _ => url,
    }
}

/// `REDIS_URL` (default the local server).
pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// Creates database `name` through `maintenance_url` (a URL of an existing database of the
/// server) and applies the migrations through `database_url` (the new database's URL).
pub async fn create_migrated_database(
    maintenance_url: &str,
    name: &str,
    database_url: &str,
) -> anyhow::Result<()> {
    let mut conn = sqlx::PgConnection::connect(maintenance_url).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(r#"CREATE DATABASE "{name}""#)))
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(database_url)
        .await?;
    backroom::db::migrate(&pool).await?;
    pool.close().await;
    Ok(())
}
