//! The Postgres pool and the embedded migrations.
//!
//! The pool connects lazily so that `serve` starts and reports "not ready" (rather than
//! crash-looping) while Postgres is down; every query then fails fast after the acquire timeout
//! and the API maps that to 503.
//!
//! Every connection carries session timeouts for its role ([`Role`]), so that no process can hold
//! the others up for long: a statement waiting on a row lock gives up after `lock_timeout` (a
//! worker's stock batch then gives its jobs back to retry, and the other tenants' shares of the
//! batch go on); a transaction left idle, as by a worker frozen with SIGSTOP, is ended by the
//! server after `idle_in_transaction_session_timeout`, which releases its locks; and a statement
//! that runs away is cancelled after `statement_timeout`.

use anyhow::Context;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use std::str::FromStr;
use std::time::Duration;

/// The migrations in `migrations/`, compiled into the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Who a pool serves, which sets its connections' session timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `serve`: requests answer in milliseconds, and the whole request has a 60 s deadline.
    Api,
    /// `work` and `schedule`: short transactions (the stock ledger's batches: tens of ms, never
    /// idle between their statements), long statements (a forecast chunk's `COPY`, an import's
    /// load) bounded by the job's own timeout too. A worker frozen inside a transaction holds
    /// its rows locked for the idle timeout (3 s): the other workers' batches wait at most a lock
    /// timeout (2 s) each and give their jobs back, so the ledger never stops for 5 s (the fault
    /// test `a_worker_frozen_mid_transaction…`; with 15 s it stopped for as long as the freeze).
    Worker,
    /// One-off commands (`migrate`, `create-tenant`, `forecast run`): no statement timeout, since
    /// a migration may take long, but the same lock and idle bounds.
    Tool,
}

impl Role {
    /// `(lock_timeout, idle_in_transaction_session_timeout, statement_timeout)`; "0" is none.
    pub fn timeouts(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Role::Api => ("3s", "10s", "15s"),
            Role::Worker => ("2s", "3s", "5min"),
            Role::Tool => ("5s", "60s", "0"),
        }
    }
}

pub fn pool(database_url: &str, max_connections: u32, role: Role) -> anyhow::Result<PgPool> {
    let (lock, idle, statement) = role.timeouts();
    let options = PgConnectOptions::from_str(database_url)
        .context("while configuring the Postgres pool (DATABASE_URL)")?
        .options([
            ("lock_timeout", lock),
            ("idle_in_transaction_session_timeout", idle),
            ("statement_timeout", statement),
        ]);
    let tcp_port = tcp_port(&options);
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(3))
        .after_connect(move |_conn, _meta| {
            Box::pin(async move {
                if let Some(port) = tcp_port {
                    set_nodelay_on_sockets_to(port);
                }
                Ok(())
            })
        })
        .connect_lazy_with(options))
}

/// The server port when the connection goes over TCP (not a Unix socket).
fn tcp_port(options: &PgConnectOptions) -> Option<u16> {
    let host = options.get_host();
    (options.get_socket().is_none() && !host.starts_with('/')).then(|| options.get_port())
}

/// Turns Nagle's algorithm off on this process's TCP sockets to `port`.
///
/// sqlx 0.9.0 opens TCP connections without `TCP_NODELAY` (transact-rs/sqlx#4335; the fix,
/// #4336, is merged but not released). A message longer than one segment then ends in a small
/// segment that waits for the server's delayed ACK, about 40 ms. Measured here: the stock
/// ledger's 1,000-row transactions ran at 5,600 adjustments/s over TCP and 48,000/s over the Unix
/// socket. sqlx gives no handle on its socket, so each new connection sets the option on every
/// socket of the process whose peer is the database port (setting it twice is harmless).
/// Remove once sqlx releases the fix.
#[cfg(target_os = "linux")]
fn set_nodelay_on_sockets_to(port: u16) {
    use std::os::fd::{BorrowedFd, RawFd};
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    for entry in dir.flatten() {
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<RawFd>().ok())
        else {
            continue;
        };
        let is_socket = std::fs::read_link(entry.path())
            .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"));
        if !is_socket {
            continue;
        }
        // SAFETY: the descriptor is borrowed for two socket calls only. If another thread closed
        // it since the listing, the calls fail; if the number was reused, the peer check below
        // decides again, and at worst another connection to the database gets the same option.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let socket = socket2::SockRef::from(&fd);
        let to_port = socket
            .peer_addr()
            .ok()
            .and_then(|addr| addr.as_socket())
            .is_some_and(|addr| addr.port() == port);
        if to_port && socket.r#type().is_ok_and(|t| t == socket2::Type::STREAM) {
            let _ = socket.set_tcp_nodelay(true);
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn set_nodelay_on_sockets_to(_port: u16) {}

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
