//! What the database-and-Redis benches share: the names of what a run creates (so cleanup
//! always works), the server and workers started in-process, `/proc` readings for CPU
//! accounting, and table and number formatting.
//!
//! Each bench uses a different part of it.
#![allow(dead_code)]

use anyhow::Context as _;
use backroom::config::Settings;
use backroom::queue::Queues;
use backroom::startup::Application;
use backroom::workers::{self, WorkPlan};
use sqlx::{Connection as _, PgPool};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use uuid::Uuid;

// ---------------------------------------------------------------------------------------------
// Harness: a database, a Redis namespace, the server and the workers.

/// Names of everything the run creates, known before anything exists so cleanup always works.
#[derive(Clone)]
pub struct Names {
    /// `DATABASE_URL` (any database of the server; its query, e.g. `?host=/var/run/postgresql`
    /// for the Unix socket, is kept).
    pub pg: url::Url,
    pub db_name: String,
    pub redis_url: String,
    pub namespace: String,
}

impl Names {
    pub fn new() -> Self {
        let url = std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let id = Uuid::new_v4().simple().to_string();
        Names {
            pg: url::Url::parse(&url).expect("DATABASE_URL is a URL"),
            db_name: format!("backroom_bench_{id}"),
            redis_url: std::env::var("REDIS_URL")
                .unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
            namespace: format!("bench-{id}"),
        }
    }

    /// The bench database over the server's Unix socket, when the server is on this machine and
    /// its socket is in Debian's place (`/var/run/postgresql`).
    pub fn unix_socket_url(&self) -> Option<String> {
        const DIR: &str = "/var/run/postgresql";
        let local = matches!(
            self.pg.host_str(),
            Some("127.0.0.1" | "localhost" | "[::1]")
        );
        let port = self.pg.port().unwrap_or(5432);
        let socket = std::path::Path::new(DIR).join(format!(".s.PGSQL.{port}"));
        (local && socket.exists()).then(|| {
            let mut url = self.pg.clone();
            url.set_path(&format!("/{}", self.db_name));
            url.set_query(Some(&format!("host={DIR}")));
            url.into()
        })
    }

    /// The URL of database `db` on the server.
    pub fn url_of(&self, db: &str) -> String {
        let mut url = self.pg.clone();
        url.set_path(&format!("/{db}"));
        url.into()
    }

    pub fn database_url(&self) -> String {
        self.url_of(&self.db_name)
    }

    /// Drops the database (closing whatever is still connected) and deletes the namespace's keys.
    pub async fn cleanup(&self) {
        let dropped = async {
            let mut conn = sqlx::PgConnection::connect(&self.url_of("postgres")).await?;
            sqlx::query(sqlx::AssertSqlSafe(format!(
                r#"DROP DATABASE IF EXISTS "{}" WITH (FORCE)"#,
                self.db_name
            )))
            .execute(&mut conn)
            .await?;
            conn.close().await?;
            anyhow::Ok(())
        };
        if let Err(e) = dropped.await {
            eprintln!("cleanup: could not drop database {}: {e:#}", self.db_name);
        }
        match delete_keys(&self.redis_url, &self.namespace).await {
            Ok(n) => eprintln!("cleanup: dropped {}, deleted {n} Redis keys", self.db_name),
            Err(e) => eprintln!("cleanup: deleting {{{}:* failed: {e:#}", self.namespace),
        }
    }
}

/// SCAN MATCH `{<namespace>:*` + UNLINK; returns how many keys went.
pub async fn delete_keys(redis_url: &str, namespace: &str) -> anyhow::Result<u64> {
    let mut conn = redis::Client::open(redis_url)?
        .get_multiplexed_async_connection()
        .await?;
    let pattern = format!("{{{namespace}:*");
    let (mut cursor, mut deleted) = (0u64, 0u64);
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(5000)
            .query_async(&mut conn)
            .await?;
        for chunk in keys.chunks(1000) {
            deleted += redis::cmd("UNLINK")
                .arg(chunk)
                .query_async::<u64>(&mut conn)
                .await?;
        }
        cursor = next;
        if cursor == 0 {
            return Ok(deleted);
        }
    }
}

/// The server under test, serving until stopped (or dropped).
pub struct Server {
    pub base: String,
    /// The server's own Postgres pool (to settle statistics, see `Ctx::pg_transactions`).
    pub db: PgPool,
    pub queues: Queues,
    pub stop: oneshot::Sender<()>,
    pub join: JoinHandle<anyhow::Result<()>>,
}

impl Server {
    pub async fn start(settings: &Settings) -> anyhow::Result<Self> {
        let app = Application::build(settings.clone()).await?;
        let base = format!("http://127.0.0.1:{}", app.port());
        let db = app.state().db.clone();
        let queues = app.state().queues.clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let join = tokio::spawn(app.run_until(async move {
            let _ = stopped.await;
        }));
        Ok(Server {
            base,
            db,
            queues,
            stop,
            join,
        })
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(30), self.join)
            .await
            .context("the server did not stop within 30 s")??
    }
}

/// In-process workers (`workers::run`, as `backroom work` runs them); stop on `stop` or drop.
pub struct Workers {
    pub stop: oneshot::Sender<()>,
    pub join: JoinHandle<anyhow::Result<()>>,
}

impl Workers {
    /// `concurrency`: jobs at once per queue (`None`: each queue's default).
    pub fn start(
        settings: &Settings,
        queues: &str,
        concurrency: Option<usize>,
    ) -> anyhow::Result<Self> {
        let plan = WorkPlan::parse(Some(queues), concurrency)?;
        let settings = settings.clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let join = tokio::spawn(async move {
            workers::run(&settings, plan, async move {
                let _ = stopped.await;
            })
            .await
        });
        Ok(Workers { stop, join })
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(40), self.join)
            .await
            .context("the workers did not stop within 40 s")??
    }
}

/// `comm` and (utime, stime, cutime, cstime) in clock ticks of `/proc/<pid>/stat`.
pub fn proc_stat(pid: &str) -> Option<(String, [f64; 4])> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat[open + 1..close].to_string();
    // After ")": state is field 3; utime..cstime are fields 14..17.
    let fields: Vec<f64> = stat[close + 1..]
        .split_whitespace()
        .skip(11)
        .take(4)
        .filter_map(|f| f.parse().ok())
        .collect();
    (fields.len() == 4).then(|| (comm, [fields[0], fields[1], fields[2], fields[3]]))
}

/// Non-idle ticks of all CPUs, from the first line of `/proc/stat`.
pub fn machine_busy_ticks() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return 0.0;
    };
    let ticks: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|t| t.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal.
    ticks.iter().take(8).sum::<f64>()
        - ticks.get(3).copied().unwrap_or(0.0)
        - ticks.get(4).copied().unwrap_or(0.0)
}

/// `sysconf(_SC_CLK_TCK)` without libc: the `AT_CLKTCK` entry of the auxiliary vector.
pub fn clock_ticks() -> f64 {
    const AT_CLKTCK: u64 = 17;
    let word = std::mem::size_of::<usize>();
    std::fs::read("/proc/self/auxv")
        .ok()
        .and_then(|auxv| {
            auxv.chunks_exact(2 * word).find_map(|pair| {
                let read = |b: &[u8]| {
                    let mut buf = [0u8; 8];
                    buf[..word].copy_from_slice(b);
                    u64::from_ne_bytes(buf)
                };
                (read(&pair[..word]) == AT_CLKTCK).then(|| read(&pair[word..]))
            })
        })
        .filter(|&t| t > 0)
        .unwrap_or(100) as f64
}

// ---------------------------------------------------------------------------------------------
// Output.

pub struct Verdict {
    pub target: String,
    pub measured: String,
    pub pass: bool,
}

pub fn verdict(pass: bool) -> &'static str {
    if pass { "PASS" } else { "MISS" }
}

pub fn dec(v: f64, places: usize) -> String {
    format!("{v:.places$}")
}

/// 12345.6 → "12,346".
pub fn thousands(v: f64) -> String {
    let digits = format!("{:.0}", v.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if v < 0.0 { format!("-{out}") } else { out }
}

/// Prints rows under headers: the first column left-aligned, the others right-aligned.
pub fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    print_table_aligned(headers, rows, 1);
}

/// Prints rows under headers: the first `left` columns left-aligned, the others right-aligned.
pub fn print_table_aligned(headers: &[&str], rows: &[Vec<String>], left: usize) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (c, &w))| {
                if i < left {
                    format!("{c:<w$}")
                } else {
                    format!("{c:>w$}")
                }
            })
            .collect();
        println!("  {}", parts.join("  ").trim_end());
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}
