//! The Postgres pool and the embedded migrations.
//!
//! The pool connects lazily so that `serve` starts and reports "not ready" (rather than
//! crash-looping) while Postgres is down; every query then fails fast after the acquire timeout
//! and the API maps that to 503.

use anyhow::Context;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use std::time::Duration;

/// The migrations in `migrations/`, compiled into the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

pub fn pool(database_url: &str, max_connections: u32) -> anyhow::Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(3))
        .connect_lazy(database_url)
        .context("while configuring the Postgres pool (DATABASE_URL)")
}

pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    MIGRATOR
        .run(pool)
        .await
        .context("while applying database migrations")
}
