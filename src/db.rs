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

/// Takes the next number of a tenant's counter (`name`, `period`) inside the caller's
/// transaction. The counter row stays locked until that transaction ends, so numbers are
/// gapless (a rollback returns the number) and strictly increasing per tenant and period.
pub async fn next_counter(
    tx: &mut sqlx::PgConnection,
    tenant_id: uuid::Uuid,
    name: &str,
    period: i32,
) -> sqlx::Result<i64> {
    sqlx::query_scalar!(
        r#"INSERT INTO counters (tenant_id, name, period, last) VALUES ($1, $2, $3, 1)
           ON CONFLICT (tenant_id, name, period) DO UPDATE SET last = counters.last + 1
           RETURNING last"#,
        tenant_id,
        name,
        period
    )
    .fetch_one(tx)
    .await
}
