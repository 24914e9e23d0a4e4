//! What the database-and-Redis benches share: the names of what a run creates (so cleanup
//! always works), the server and workers started in-process, Postgres transaction counts and
//! `/proc` readings for CPU accounting, table and number formatting, child processes (the real
//! `backroom serve` and `backroom work`, their logs and an SMTP sink for them) and Redis memory
//! readings.
//!
//! Each bench uses a different part of it.
#![allow(dead_code)]

#[path = "../../tests/support/mod.rs"]
pub mod support;
#[allow(unused_imports)]
pub use support::smtp::SmtpSink;

use anyhow::Context as _;
use backroom::queue::{QueueName, QueueSettings, Queues};
use backroom::redis_conn::RedisHandle;
use sqlx::{Connection as _, PgPool};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};
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

    /// Creates the run's database, applies the migrations and returns a small pool on it.
    pub async fn create_database(&self) -> anyhow::Result<PgPool> {
        let server = self.url_of("postgres");
        support::create_migrated_database(&server, &self.db_name, &self.database_url())
            .await
            .with_context(|| format!("creating the bench database on {server}"))?;
        Ok(sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect(&self.database_url())
            .await?)
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
    delete_matching(&mut conn, &format!("{{{namespace}:*")).await
}

/// SCAN MATCH `pattern` + UNLINK in batches; returns how many keys went.
pub async fn delete_matching(
    conn: &mut redis::aio::MultiplexedConnection,
    pattern: &str,
) -> anyhow::Result<u64> {
    let (mut cursor, mut deleted) = (0u64, 0u64);
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(5000)
            .query_async(conn)
            .await?;
        for chunk in keys.chunks(1000) {
            deleted += redis::cmd("UNLINK")
                .arg(chunk)
                .query_async::<u64>(conn)
                .await?;
        }
        cursor = next;
        if cursor == 0 {
            return Ok(deleted);
        }
    }
}

/// The server under test, serving until stopped (or dropped).
#[allow(unused_imports)]
pub use support::app::InProcessApp as Server;
/// In-process workers (`process::work::run`, as `backroom work` runs them); stop on `stop` or drop.
#[allow(unused_imports)]
pub use support::app::InProcessWorkers as Workers;

/// Transactions (committed or rolled back) of the bench database so far, without the bench's
/// own (`own_tx`, counted by the caller for each query it runs on `db`). Backends publish their
/// counts at most once a second, idle ones only after 10 s, and closing ones at once: so callers
/// stop the workers first, and this waits a second, then runs a query reading a table on every
/// connection of the server's pool (`server_db`) and of the bench's own (`db`), which makes each
/// publish (PostgreSQL 15 publishes a backend's transaction counts only along with table
/// statistics: a `SELECT 1` would not do). Every query of the bench's own is counted and
/// subtracted.
pub async fn pg_transactions(
    server_db: &PgPool,
    db: &PgPool,
    own_tx: &AtomicI64,
) -> anyhow::Result<i64> {
    let own_query = || own_tx.fetch_add(1, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for pool in [server_db, db] {
        let mut held = vec![];
        while (held.len() as u32) < pool.size() {
            match tokio::time::timeout(Duration::from_millis(200), pool.acquire()).await {
                Ok(Ok(conn)) => held.push(conn),
                _ => break,
            }
        }
        for conn in &mut held {
            own_query();
            sqlx::query("SELECT count(*) FROM tenants")
                .execute(&mut **conn)
                .await?;
        }
    }
    let own = own_tx.load(Ordering::Relaxed);
    own_query();
    let total: i64 = sqlx::query_scalar(
        "SELECT (xact_commit + xact_rollback)::bigint FROM pg_stat_database \
         WHERE datname = current_database()",
    )
    .fetch_one(db)
    .await?;
    Ok(total - own)
}

/// `comm` and (utime, stime, cutime, cstime) in clock ticks of `/proc/<pid>/stat`.
pub fn proc_stat(pid: &str) -> Option<(String, [f64; 4])> {
    let (comm, fields) = support::proc::stat(pid)?;
    // utime..cstime are the 12th to 15th fields after the command name.
    let times: Vec<f64> = fields
        .iter()
        .skip(11)
        .take(4)
        .filter_map(|f| f.parse().ok())
        .collect();
    (times.len() == 4).then(|| (comm, [times[0], times[1], times[2], times[3]]))
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

/// Clock ticks used so far by every `postgres` process and by `redis-server`: each one's own
/// time plus its reaped children's (ended backends count under the postmaster).
pub fn postgres_and_redis_ticks() -> (f64, f64) {
    let (mut postgres, mut redis) = (0.0, 0.0);
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return (postgres, redis);
    };
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        if let Some((comm, f)) = proc_stat(pid) {
            let total = f[0] + f[1] + f[2] + f[3];
            match comm.as_str() {
                "postgres" => postgres += total,
                "redis-server" => redis += total,
                _ => {}
            }
        }
    }
    (postgres, redis)
}

/// Cumulative CPU seconds of the named processes, of all `postgres` processes (their own and their
/// reaped children's: ended backends count under the postmaster), of `redis-server`, and of the
/// whole machine, at one instant.
pub struct CpuReading {
    pub at: Instant,
    pub named: Vec<(String, f64)>,
    pub postgres: f64,
    pub redis: f64,
    pub machine: f64,
}

impl CpuReading {
    /// Reads `/proc` for `named` (a name and a pid, or `"self"`).
    pub fn now(named: &[(&str, String)]) -> Self {
        let clk_tck = clock_ticks();
        let (postgres, redis) = postgres_and_redis_ticks();
        let named = named
            .iter()
            .map(|(name, pid)| {
                let own = proc_stat(pid).map_or(0.0, |(_, f)| f[0] + f[1]);
                (name.to_string(), own / clk_tck)
            })
            .collect();
        CpuReading {
            at: Instant::now(),
            named,
            postgres: postgres / clk_tck,
            redis: redis / clk_tck,
            machine: machine_busy_ticks() / clk_tck,
        }
    }

    /// Cores used on average since `earlier`, by part: the named processes, Postgres, Redis,
    /// everything else, and the whole machine.
    pub fn cores_since(&self, earlier: &CpuReading) -> Vec<(String, f64)> {
        let wall = (self.at - earlier.at).as_secs_f64().max(1e-9);
        let mut parts: Vec<(String, f64)> = self
            .named
            .iter()
            .zip(&earlier.named)
            .map(|((name, now), (_, then))| (name.clone(), (now - then).max(0.0)))
            .collect();
        parts.push((
            "Postgres".into(),
            (self.postgres - earlier.postgres).max(0.0),
        ));
        parts.push(("Redis".into(), (self.redis - earlier.redis).max(0.0)));
        let machine = (self.machine - earlier.machine).max(0.0);
        let known: f64 = parts.iter().map(|p| p.1).sum();
        parts.push(("everything else".into(), (machine - known).max(0.0)));
        parts.push(("machine".into(), machine));
        parts.into_iter().map(|(n, s)| (n, s / wall)).collect()
    }
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

/// `--smoke` on the command line, or `BENCH_SMOKE` set to anything but empty or `0`.
pub fn smoke_mode() -> bool {
    std::env::args().any(|a| a == "--smoke")
        || std::env::var("BENCH_SMOKE").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// The `main` of a bench that ends in a verdict table: logging (`BACKROOM_LOG`, default `info`),
/// a runtime, Ctrl-C, cleanup of the run's database and Redis keys (also after an error) and the
/// summary. `prepare` may change the run's names before anything is created ([`as_given`] if
/// not); `smoke_note` closes the summary of a smoke run.
pub fn bench_main<P, PF, R, RF>(
    bench: &str,
    smoke_note: &str,
    prepare: P,
    run: R,
) -> anyhow::Result<()>
where
    P: FnOnce(Names) -> PF,
    PF: std::future::Future<Output = anyhow::Result<Names>>,
    R: FnOnce(Names, bool) -> RF,
    RF: std::future::Future<Output = anyhow::Result<Vec<Verdict>>>,
{
    let smoke = smoke_mode();
    let filter = std::env::var("BACKROOM_LOG").unwrap_or_else(|_| "info".into());
    // A traced child logs as production does (JSON); a plain run for a terminal.
    let format = if is_traces_child() {
        backroom::config::LogFormat::Json
    } else {
        backroom::config::LogFormat::Pretty
    };
    init_telemetry(format, &filter)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let outcome = runtime.block_on(async move {
        let names = prepare(Names::new()).await?;
        let cleanup = names.clone();
        let started = Instant::now();
        let outcome = tokio::select! {
            r = run(names, smoke) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        };
        // Whatever is still running stops when its handle drops; give it a moment.
        tokio::time::sleep(Duration::from_millis(300)).await;
        cleanup.cleanup().await;
        let verdicts = outcome?;
        println!(
            "\n== summary ({bench}, {} mode, {:.0} s) ==",
            if smoke { "smoke" } else { "full" },
            started.elapsed().as_secs_f64()
        );
        let rows: Vec<Vec<String>> = verdicts
            .iter()
            .map(|v| vec![v.target.clone(), v.measured.clone(), verdict(v.pass).into()])
            .collect();
        print_table_aligned(&["target", "measured", "verdict"], &rows, 3);
        if smoke {
            println!("  ({smoke_note})");
        }
        Ok(())
    });
    drop(runtime);
    backroom::telemetry::shutdown();
    outcome
}

/// For [`bench_main`]: the run's names as [`Names::new`] made them.
pub async fn as_given(names: Names) -> anyhow::Result<Names> {
    Ok(names)
}

/// What most benches say under a smoke run's summary.
pub const SMOKE_NOTE: &str = "smoke sizes are too small to judge the targets; run the full mode";

/// The admin token every bench's server runs with.
pub const ADMIN_TOKEN: &str = "bench-admin-token-0123456789-abcdefghij";

/// Creates a tenant over the admin API of the server at `base`; returns (id, API key).
pub async fn create_tenant(
    http: &reqwest::Client,
    base: &str,
    slug: &str,
    name: &str,
) -> anyhow::Result<(Uuid, String)> {
    let created: serde_json::Value = http
        .post(format!("{base}/admin/v1/tenants"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!({"name": name, "slug": slug}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let id: Uuid = created["id"].as_str().unwrap_or_default().parse()?;
    let key = created["api_key"]
        .as_str()
        .context("no api_key in the tenant response")?
        .to_string();
    Ok((id, key))
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

// ---------------------------------------------------------------------------------------------
// Child processes, their memory, and an SMTP sink for them (benches that run the real binary).

/// A TCP port nothing listens on right now (for a child process to bind).
pub fn unused_port() -> anyhow::Result<u16> {
    Ok(support::free_port())
}

/// Resident set size of a process in KiB (`VmRSS`); `None` once it is gone.
pub fn vm_rss_kib(pid: u32) -> Option<u64> {
    support::proc::status_kib(pid, "VmRSS")
}

/// A child process that is SIGKILLed and reaped when dropped (an error or Ctrl-C in the bench),
/// and stopped with SIGTERM and a grace period by [`ChildProcess::stop`]. It runs in a process
/// group of its own, so a Ctrl-C in the terminal reaches only the bench, which then ends it.
pub struct ChildProcess {
    pub name: String,
    child: std::process::Child,
    reaped: bool,
}

impl ChildProcess {
    /// Starts `program args` with `env` added to this process's environment, stdout and stderr
    /// appended to `log`.
    pub fn spawn(
        name: &str,
        program: &std::path::Path,
        args: &[&str],
        env: &[(String, String)],
        log: &std::path::Path,
    ) -> anyhow::Result<Self> {
        use std::os::unix::process::CommandExt as _;
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let child = std::process::Command::new(program)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {} {}", program.display(), args.join(" ")))?;
        Ok(ChildProcess {
            name: name.to_string(),
            child,
            reaped: false,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (`STOP`, `CONT`, `KILL`, …) with kill(1); false if it could not.
    pub fn signal(&self, signal: &str) -> bool {
        std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// `Some(status)` once the process has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.child.try_wait().ok().flatten();
        if status.is_some() {
            self.reaped = true;
        }
        status
    }

    /// SIGTERM, then up to `grace` for the process to exit, then SIGKILL. Returns the exit
    /// status and whether it exited within the grace period.
    pub async fn stop(
        mut self,
        grace: Duration,
    ) -> anyhow::Result<(std::process::ExitStatus, bool)> {
        if let Some(status) = self.exited() {
            return Ok((status, true));
        }
        // No libc here: kill(1) sends the signal.
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let deadline = std::time::Instant::now() + grace;
        while std::time::Instant::now() < deadline {
            if let Some(status) = self.exited() {
                return Ok((status, true));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = self.child.kill();
        let status = self.child.wait()?;
        self.reaped = true;
        Ok((status, false))
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if !self.reaped && self.exited().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `used_memory` of Redis's `INFO memory` (the whole server, in bytes).
pub async fn redis_used_memory(
    conn: &mut redis::aio::MultiplexedConnection,
) -> anyhow::Result<u64> {
    let info: String = redis::cmd("INFO").arg("memory").query_async(conn).await?;
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .context("no used_memory in INFO memory")
}

/// How many keys match `{<namespace>:*` and the bytes they take (`MEMORY USAGE`, which samples
/// 5 elements of each aggregate), for one run's share of a Redis that others use too. SCAN, so
/// it costs a pass over the whole keyspace plus a call per key of the namespace.
pub async fn namespace_memory(
    conn: &mut redis::aio::MultiplexedConnection,
    namespace: &str,
) -> anyhow::Result<(u64, u64)> {
    let pattern = format!("{{{namespace}:*");
    let (mut cursor, mut keys, mut bytes) = (0u64, 0u64, 0u64);
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(5000)
            .query_async(conn)
            .await?;
        if !batch.is_empty() {
            let mut pipe = redis::pipe();
            for key in &batch {
                pipe.cmd("MEMORY").arg("USAGE").arg(key);
            }
            // A key that expired between SCAN and MEMORY USAGE answers nil.
            let sizes: Vec<Option<u64>> = pipe.query_async(conn).await?;
            keys += sizes.iter().flatten().count() as u64;
            bytes += sizes.iter().flatten().sum::<u64>();
        }
        cursor = next;
        if cursor == 0 {
            return Ok((keys, bytes));
        }
    }
}

/// `redis_url` pointing at a logical database of its own on a single-node Redis: the
/// highest-numbered one without keys. A Redis that others use may hold millions of keys in
/// database 0, and SCANning those to find one run's keys would cost seconds per pass; in a
/// database of its own SCAN visits only the run's keys. The URL stays as it is (and `None` is
/// returned) for Redis Cluster, a URL that already names a database, or when every database
/// holds keys.
pub async fn own_redis_database(redis_url: &str) -> anyhow::Result<(String, Option<u32>)> {
    let url = url::Url::parse(redis_url).context("REDIS_URL is not a URL")?;
    if !matches!(url.scheme(), "redis" | "rediss") || !matches!(url.path(), "" | "/") {
        return Ok((redis_url.to_string(), None));
    }
    let mut conn = redis_connection(redis_url).await?;
    // CONFIG may be disabled on a managed Redis; 16 is the default.
    let databases: u32 = redis::cmd("CONFIG")
        .arg("GET")
        .arg("databases")
        .query_async::<Vec<String>>(&mut conn)
        .await
        .ok()
        .and_then(|reply| reply.get(1).and_then(|n| n.parse().ok()))
        .unwrap_or(16);
    let keyspace: String = redis::cmd("INFO")
        .arg("keyspace")
        .query_async(&mut conn)
        .await?;
    // Lines such as "db0:keys=12,expires=0,avg_ttl=0".
    let used: Vec<u32> = keyspace
        .lines()
        .filter_map(|l| l.strip_prefix("db")?.split_once(':')?.0.parse().ok())
        .collect();
    match (1..databases).rev().find(|db| !used.contains(db)) {
        Some(db) => {
            let mut own = url.clone();
            own.set_path(&format!("/{db}"));
            Ok((own.into(), Some(db)))
        }
        None => Ok((redis_url.to_string(), None)),
    }
}

/// A multiplexed connection to the Redis at `redis_url`.
pub async fn redis_connection(
    redis_url: &str,
) -> anyhow::Result<redis::aio::MultiplexedConnection> {
    redis::Client::open(redis_url)?
        .get_multiplexed_async_connection()
        .await
        .with_context(|| format!("connecting to Redis at {redis_url}"))
}

/// For [`bench_main`]: the run in a Redis logical database of its own ([`own_redis_database`]),
/// so that SCANning this run's keys stays cheap.
pub async fn in_own_redis_database(mut names: Names) -> anyhow::Result<Names> {
    (names.redis_url, _) = own_redis_database(&names.redis_url).await?;
    Ok(names)
}

// ---------------------------------------------------------------------------------------------
// The real binary: `backroom serve` and `backroom work` as child processes (soak, noisy).

/// `name` parsed from the environment, or `default` when unset or empty.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> anyhow::Result<T> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .map_err(|_| anyhow::anyhow!("{name}: '{v}' is not a valid value")),
        _ => Ok(default),
    }
}

/// Where `target/` is: `CARGO_TARGET_DIR`, else the one this bench runs from
/// (`<target>/<profile>/deps/<bench>-<hash>`), else the package's.
pub fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.ancestors().nth(3).map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target")))
}

/// The `backroom` binary cargo built with this bench, else `backroom` in the profile directory
/// this bench runs from. Building it is the caller's job; `build_hint` ends the error without one
/// ("build it first").
pub fn backroom_binary(build_hint: &str) -> anyhow::Result<PathBuf> {
    let built = PathBuf::from(env!("CARGO_BIN_EXE_backroom"));
    if built.is_file() {
        return Ok(built);
    }
    let beside = std::env::current_exe()?
        .parent()
        .and_then(Path::parent)
        .map(|profile| profile.join("backroom"));
    match beside {
        Some(path) if path.is_file() => Ok(path),
        _ => anyhow::bail!(
            "no backroom binary at {} (nor next to this bench); {build_hint}",
            built.display()
        ),
    }
}

impl Names {
    /// The run's queues (its Redis namespace), as the bench sees them.
    pub fn queues(&self) -> anyhow::Result<Queues> {
        Ok(Queues::new(
            RedisHandle::open(&self.redis_url)?,
            &self.namespace,
            QueueSettings::default(),
        ))
    }
}

/// Polls `done` every 100 ms until it answers `true` (or fails); fails with `timeout` once
/// `limit` has passed.
pub async fn wait_until(
    limit: Duration,
    timeout: &str,
    mut done: impl AsyncFnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        if done().await? {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "{timeout}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One `backroom serve` and one `backroom work` (every queue, default concurrency) as child
/// processes, and the SMTP sink they mail to.
pub struct Children {
    pub serve: ChildProcess,
    pub work: ChildProcess,
    pub sink: SmtpSink,
    /// `<target>/<bench>-logs`, holding `serve.log` and `work.log`.
    pub logs: PathBuf,
    /// The port `serve` listens on (127.0.0.1).
    pub port: u16,
    /// What the children were started with, for [`Children::spawn`].
    binary: PathBuf,
    env: Vec<(String, String)>,
}

impl Children {
    /// Starts the sink, then `binary serve` on a free port and `binary work`, both against the
    /// run's database and Redis namespace with the bench's admin token, `SMTP_URL` at the sink, a
    /// 10 s shutdown grace and JSON logs in `<target>/<bench>-logs/{serve,work}.log` (emptied
    /// first), `env` on top (and the caller's environment under it). Waits until `/readyz`
    /// answers 2xx (at most `ready_within`) and the workers of the stock queue heartbeat (at
    /// most 30 s); fails as soon as a child exits.
    pub async fn start(
        bench: &str,
        binary: &Path,
        names: &Names,
        queues: &Queues,
        env: &[(&str, String)],
        ready_within: Duration,
    ) -> anyhow::Result<Self> {
        let logs = target_dir().join(format!("{bench}-logs"));
        std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
        for log in ["serve.log", "work.log"] {
            let _ = std::fs::remove_file(logs.join(log));
        }
        let sink = SmtpSink::start()?;
        let port = unused_port()?;
        let env: Vec<(String, String)> = [
            ("DATABASE_URL", names.database_url()),
            ("REDIS_URL", names.redis_url.clone()),
            ("BACKROOM_REDIS_NAMESPACE", names.namespace.clone()),
            ("BACKROOM_ADMIN_TOKEN", ADMIN_TOKEN.to_string()),
            ("BACKROOM_BIND", format!("127.0.0.1:{port}")),
            ("SMTP_URL", sink.url()),
            ("BACKROOM_SHUTDOWN_GRACE_SECS", "10".into()),
            ("BACKROOM_LOG_FORMAT", "json".into()),
        ]
        .into_iter()
        .chain(env.iter().cloned())
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let serve =
            ChildProcess::spawn("serve", binary, &["serve"], &env, &logs.join("serve.log"))?;
        let work = ChildProcess::spawn("work", binary, &["work"], &env, &logs.join("work.log"))?;
        let mut children = Children {
            serve,
            work,
            sink,
            logs,
            port,
            binary: binary.to_path_buf(),
            env,
        };
        eprintln!(
            "  started {} serve (pid {}, port {port}) and work (pid {}); logs in {}",
            binary.display(),
            children.serve.pid(),
            children.work.pid(),
            children.logs.display()
        );
        let (probe, ready) = (
            reqwest::Client::new(),
            format!("{}/readyz", children.base()),
        );
        let timeout = format!(
            "`backroom serve` was not ready within {} s",
            ready_within.as_secs()
        );
        wait_until(ready_within, &timeout, async || {
            children.check_alive()?;
            let response = probe.get(&ready).send().await;
            Ok(response.is_ok_and(|r| r.status().is_success()))
        })
        .await?;
        let stock = QueueName::parse("stock").expect("known queue");
        let timeout = "`backroom work` did not heartbeat within 30 s";
        wait_until(Duration::from_secs(30), timeout, async || {
            children.check_alive()?;
            Ok(!queues.workers(&stock).await?.is_empty())
        })
        .await?;
        Ok(children)
    }

    /// Another child like the first two: `backroom <command>` with the same environment,
    /// logging to `<logs>/<name>.log` (appended to). For more workers, or a restart.
    pub fn spawn(&self, name: &str, command: &str) -> anyhow::Result<ChildProcess> {
        ChildProcess::spawn(
            name,
            &self.binary,
            &[command],
            &self.env,
            &self.logs.join(format!("{name}.log")),
        )
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The log of child `name` ("serve" or "work").
    pub fn log(&self, name: &str) -> PathBuf {
        self.logs.join(format!("{name}.log"))
    }

    /// Fails when a child has exited, with the end of its log.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        for child in [&mut self.serve, &mut self.work] {
            if let Some(status) = child.exited() {
                let log = self.logs.join(format!("{}.log", child.name));
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                anyhow::bail!(
                    "`backroom {}` exited ({status}); the end of {}:\n{}",
                    child.name,
                    log.display(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
        }
        Ok(())
    }

    /// Stops `work`, then `serve` (SIGTERM, then SIGKILL after `grace`), then the sink; returns
    /// how each child stopped ("work: exit status: 0") and the log directory.
    pub async fn stop(self, grace: Duration) -> anyhow::Result<(Vec<String>, PathBuf)> {
        let Children {
            serve,
            work,
            sink,
            logs,
            ..
        } = self;
        let mut stops = vec![];
        for child in [work, serve] {
            let name = child.name.clone();
            let (status, in_time) = child.stop(grace).await?;
            let killed = format!(" (killed after {} s)", grace.as_secs());
            stops.push(format!(
                "{name}: {status}{}",
                if in_time { "" } else { &killed }
            ));
        }
        drop(sink);
        Ok((stops, logs))
    }
}

/// (level, what) → how often, most frequent first.
pub type Findings = Vec<((String, String), u64)>;

/// Warnings and errors in a child's JSON log, grouped by (level, `describe(event)`), the most
/// frequent first; and how many lines were not JSON (a panic's message, for one).
pub fn log_findings(
    path: &Path,
    describe: impl Fn(&serde_json::Value) -> String,
) -> (Findings, u64) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut found: std::collections::HashMap<(String, String), u64> = Default::default();
    let mut other = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            other += 1;
            continue;
        };
        let level = v["level"].as_str().unwrap_or("").to_string();
        if level == "WARN" || level == "ERROR" {
            *found.entry((level, describe(&v))).or_default() += 1;
        }
    }
    let mut found: Vec<_> = found.into_iter().collect();
    found.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    (found, other)
}

/// 1024 × 1024.
pub const MIB: f64 = 1024.0 * 1024.0;

// ---------------------------------------------------------------------------------------------
// Tracing cost (#20): the same part run in child processes of this bench, with traces off and
// on at two sampling ratios, exporting to an OTLP/HTTP sink in this process.

/// Set in the environment of a bench process started by [`traced_runs`]: it runs only the part
/// being compared and prints its figures on one line after [`TRACES_RESULT`].
pub const TRACES_CHILD: &str = "BENCH_TRACES_CHILD";
/// The prefix of a child's result line (JSON follows).
pub const TRACES_RESULT: &str = "BENCH_TRACES_RESULT ";

/// Whether this process is a child of [`traced_runs`].
pub fn is_traces_child() -> bool {
    std::env::var_os(TRACES_CHILD).is_some()
}

/// Logging as in production, plus traces when the `OTEL_*` variables of a [`traced_runs`]
/// child ask for them (never in a plain run).
pub fn init_telemetry(format: backroom::config::LogFormat, filter: &str) -> anyhow::Result<()> {
    let traces = if is_traces_child() {
        backroom::telemetry::TraceSettings::from_lookup(|k| std::env::var(k).ok())
            .map_err(|e| anyhow::anyhow!("{e}"))?
    } else {
        None
    };
    backroom::telemetry::init(format, filter, traces.as_ref());
    Ok(())
}

/// Prints a child's figures for its parent.
pub fn print_traces_result(figures: &serde_json::Value) {
    println!("{TRACES_RESULT}{figures}");
}

/// The modes compared: a label, and the sampling ratio (`None`: traces off).
pub const TRACE_MODES: [(&str, Option<&str>); 3] = [
    ("off", None),
    ("on, sampled 1.0", Some("1.0")),
    ("on, sampled 0.01", Some("0.01")),
];

/// A minimal OTLP/HTTP collector: counts the spans of each export. Runs on a thread and runtime
/// of its own (so the bench's own load does not slow it), until dropped. A real collector runs
/// on another machine; this one shares the bench's two cores, so it walks the protobuf wire
/// format to count spans ([`count_spans`]) rather than decoding every span and attribute.
pub struct OtlpSink {
    pub port: u16,
    spans: std::sync::Arc<std::sync::atomic::AtomicU64>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl OtlpSink {
    pub fn start() -> anyhow::Result<Self> {
        check_count_spans()?;
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let spans = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counted = spans.clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("otlp-sink".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime for the sink");
                runtime.block_on(async move {
                    let app = axum::Router::new().route(
                        "/v1/traces",
                        axum::routing::post(move |body: axum::body::Bytes| {
                            let counted = counted.clone();
                            async move {
                                let Some(n) = count_spans(&body) else {
                                    return axum::http::StatusCode::BAD_REQUEST;
                                };
                                counted.fetch_add(n, Ordering::Relaxed);
                                axum::http::StatusCode::OK
                            }
                        }),
                    );
                    let listener =
                        tokio::net::TcpListener::from_std(listener).expect("a tokio listener");
                    let _ = axum::serve(listener, app)
                        .with_graceful_shutdown(async move {
                            let _ = stopped.await;
                        })
                        .await;
                });
            })?;
        Ok(OtlpSink {
            port,
            spans,
            _stop: stop,
        })
    }

    pub fn spans(&self) -> u64 {
        self.spans.load(Ordering::Relaxed)
    }
}

/// [`count_spans`] agrees with a real decoder's count on an export of several resources, scopes
/// and spans with attributes.
fn check_count_spans() -> anyhow::Result<()> {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
    use prost::Message as _;
    let attr = |k: &str| KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(300)),
        }),
    };
    let span = |name: &str| Span {
        name: name.into(),
        trace_id: vec![7; 16],
        start_time_unix_nano: u64::MAX,
        attributes: vec![attr("attempt"), attr("job_id")],
        ..Default::default()
    };
    let scope = |n: usize| ScopeSpans {
        spans: (0..n).map(|i| span(&format!("job {i}"))).collect(),
        schema_url: "s".into(),
        ..Default::default()
    };
    let request = ExportTraceServiceRequest {
        resource_spans: vec![
            ResourceSpans {
                scope_spans: vec![scope(2), scope(0), scope(3)],
                ..Default::default()
            },
            ResourceSpans {
                scope_spans: vec![scope(1)],
                ..Default::default()
            },
        ],
    };
    let body = request.encode_to_vec();
    let decoded = ExportTraceServiceRequest::decode(body.as_slice())?;
    let expected: usize = decoded
        .resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .map(|s| s.spans.len())
        .sum();
    anyhow::ensure!(
        count_spans(&body) == Some(expected as u64) && expected == 6,
        "the sink's span counter disagrees with the decoder: {:?} against {expected}",
        count_spans(&body)
    );
    Ok(())
}

/// The spans in an OTLP `ExportTraceServiceRequest`, counted on the wire: its field 1 holds
/// `ResourceSpans`, whose field 2 holds `ScopeSpans`, whose field 2 holds each `Span`. `None`
/// when the body is not such a message.
pub fn count_spans(body: &[u8]) -> Option<u64> {
    /// The length-delimited fields numbered `field` in `message`.
    fn each(message: &[u8], field: u64, mut f: impl FnMut(&[u8]) -> Option<()>) -> Option<()> {
        let mut at = message;
        while !at.is_empty() {
            let key = varint(&mut at)?;
            match key & 7 {
                0 => {
                    varint(&mut at)?;
                }
                1 => at = at.get(8..)?,
                5 => at = at.get(4..)?,
                2 => {
                    let len = usize::try_from(varint(&mut at)?).ok()?;
                    let (inner, rest) = (at.get(..len)?, &at[len..]);
                    if key >> 3 == field {
                        f(inner)?;
                    }
                    at = rest;
                }
                _ => return None,
            }
        }
        Some(())
    }
    fn varint(at: &mut &[u8]) -> Option<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = at.split_first()?;
            *at = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }
    let mut spans = 0;
    each(body, 1, |resource| {
        each(resource, 2, |scope| {
            each(scope, 2, |_| {
                spans += 1;
                Some(())
            })
        })
    })?;
    Some(spans)
}

/// One child run of a [`traced_runs`] comparison.
pub struct TracedRun {
    pub mode: &'static str,
    pub round: usize,
    pub figures: serde_json::Value,
    /// Spans the sink received from this run.
    pub spans: u64,
}

/// Runs this bench binary again as a child for each of [`TRACE_MODES`], `rounds` times in
/// turn, each round starting one mode further on (off, 1.0, 0.01; 1.0, 0.01, off; …: drift on
/// a shared machine hits every mode alike, and no mode always runs first), with `args` and
/// `TRACES_CHILD` set, exporting to one [`OtlpSink`]; returns each run's figures.
pub fn traced_runs(args: &[&str], rounds: usize) -> anyhow::Result<Vec<TracedRun>> {
    let sink = OtlpSink::start()?;
    let mut runs = vec![];
    for round in 0..rounds {
        let mut modes = TRACE_MODES;
        modes.rotate_left(round % TRACE_MODES.len());
        for (mode, ratio) in modes {
            eprintln!("traces: round {} of {rounds}, {mode}", round + 1);
            let mut env = vec![];
            if let Some(ratio) = ratio {
                env = vec![
                    (
                        "OTEL_EXPORTER_OTLP_ENDPOINT",
                        format!("http://127.0.0.1:{}", sink.port),
                    ),
                    ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio".into()),
                    ("OTEL_TRACES_SAMPLER_ARG", ratio.into()),
                    ("OTEL_SERVICE_NAME", "bench".into()),
                ];
            }
            let before = sink.spans();
            let figures = child_figures(args, &env, mode)?;
            // The child flushes its spans before it exits; give the sink a moment to count them.
            std::thread::sleep(Duration::from_millis(200));
            runs.push(TracedRun {
                mode,
                round,
                figures,
                spans: sink.spans() - before,
            });
        }
    }
    Ok(runs)
}

/// Runs this bench binary again as a child with `args`, `TRACES_CHILD` and `env` set (traces
/// off unless `env` turns them on), and returns the figures it prints.
pub fn child_figures(
    args: &[&str],
    env: &[(&str, String)],
    label: &str,
) -> anyhow::Result<serde_json::Value> {
    let mut command = std::process::Command::new(std::env::current_exe()?);
    command
        .args(args)
        .env(TRACES_CHILD, "1")
        // Logs as in production (the default filter), so that every mode pays for the spans logs
        // need and the difference is what traces add.
        .env("BACKROOM_LOG", "info")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for (key, value) in env {
        command.env(key, value);
    }
    let output = command.output().context("starting a child run")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let Some(line) = stdout.lines().find_map(|l| l.strip_prefix(TRACES_RESULT)) else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(20).collect();
        anyhow::bail!(
            "a child run ({label}) printed no result ({}); its last lines:\n{}",
            output.status,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    };
    serde_json::from_str(line).context("a child's result line")
}

// ---------------------------------------------------------------------------------------------
// A network hop away (#24): the same child runs with Redis and Postgres behind a relay that
// delays every byte.

/// A TCP relay on 127.0.0.1 to `target` that holds every byte for `one_way` in each direction
/// before passing it on (so a request and its answer take two of it more), with no limit on
/// what is in flight: a link with latency and no bandwidth limit. `tc netem` would be the
/// kernel's way, but this machine's kernel has no `sch_netem` (`tc qdisc add dev lo root netem
/// delay 1ms` answers "Specified qdisc kind is unknown"), so the relay does it in user space:
/// one thread per direction reads, stamps each chunk with its due time and hands it to a thread
/// that sleeps until then and writes it (`thread::sleep`, microsecond-accurate, where tokio's
/// timer rounds to whole milliseconds). The relay costs CPU of its own, so the figures to judge
/// latency by are against the relay with no delay.
pub struct DelayLink {
    pub port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl DelayLink {
    pub fn start(target: std::net::SocketAddr, one_way: Duration) -> anyhow::Result<Self> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::spawn(move || {
            for inbound in listener.incoming() {
                if stopped.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(inbound) = inbound else { continue };
                std::thread::spawn(move || {
                    let Ok(outbound) = std::net::TcpStream::connect(target) else {
                        return;
                    };
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    let (Ok(inbound2), Ok(outbound2)) = (inbound.try_clone(), outbound.try_clone())
                    else {
                        return;
                    };
                    let up = std::thread::spawn(move || delayed_copy(inbound, outbound, one_way));
                    delayed_copy(outbound2, inbound2, one_way);
                    let _ = up.join();
                });
            }
        });
        Ok(DelayLink { port, stop })
    }
}

impl Drop for DelayLink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the accept loop so that it sees the flag.
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Copies `from` to `to`, each chunk `delay` after it was read; closes `to`'s sending side
/// when `from` ends.
fn delayed_copy(mut from: std::net::TcpStream, mut to: std::net::TcpStream, delay: Duration) {
    use std::io::{Read, Write};
    let (tx, rx) = std::sync::mpsc::channel::<(Instant, Vec<u8>)>();
    let writer = std::thread::spawn(move || {
        for (due, bytes) in rx {
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if to.write_all(&bytes).is_err() {
                break;
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Write);
    });
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if tx
                    .send((Instant::now() + delay, buf[..n].to_vec()))
                    .is_err()
                {
                    break;
                }
            }
        }
    }
    drop(tx);
    let _ = writer.join();
}

/// Set in a [`linked_runs`] child's environment (besides `TRACES_CHILD`): a bench may add
/// latency figures to its child's figures then.
pub const LINK_CHILD: &str = "BENCH_LINK_CHILD";

/// The links compared: a label and the one-way delay (`None`: straight to the servers, as every
/// other part runs).
pub const LINKS: [(&str, Option<Duration>); 4] = [
    ("loopback", None),
    ("relay, 0 ms", Some(Duration::ZERO)),
    ("relay, 0.5 ms round trip", Some(Duration::from_micros(250))),
    ("relay, 2 ms round trip", Some(Duration::from_millis(1))),
];

/// Runs this bench's child part over each of [`LINKS`], `rounds` times in turn, with Redis
/// (`redis_url`) and Postgres (`pg_url`) behind a [`DelayLink`] each; returns each run's
/// figures as [`TracedRun`]s (their `mode` is the link's label, no spans).
pub fn linked_runs(
    args: &[&str],
    rounds: usize,
    redis_url: &str,
    pg_url: &url::Url,
) -> anyhow::Result<Vec<TracedRun>> {
    let mut runs = vec![];
    for round in 0..rounds {
        for (label, delay) in LINKS {
            eprintln!("link: round {} of {rounds}, {label}", round + 1);
            let mut env = vec![(LINK_CHILD, "1".to_string())];
            let mut links = vec![];
            if let Some(delay) = delay {
                let redis = url::Url::parse(redis_url)?;
                for (var, url, port) in [
                    ("REDIS_URL", redis, 6379),
                    ("DATABASE_URL", pg_url.clone(), 5432),
                ] {
                    let target = url
                        .socket_addrs(|| Some(port))?
                        .into_iter()
                        .next()
                        .context("a server address")?;
                    let link = DelayLink::start(target, delay)?;
                    let mut via = url.clone();
                    via.set_host(Some("127.0.0.1"))?;
                    via.set_port(Some(link.port)).ok();
                    // A query naming a Unix socket would go around the link.
                    via.set_query(None);
                    env.push((var, String::from(via)));
                    links.push(link);
                }
            }
            let figures = child_figures(args, &env, label)?;
            runs.push(TracedRun {
                mode: label,
                round,
                figures,
                spans: 0,
            });
        }
    }
    Ok(runs)
}

/// The median of figure `key` over the runs of `mode` (a run that a burst of other work on the
/// machine slowed weighs no more than any other).
pub fn traced_median(runs: &[TracedRun], mode: &str, key: &str) -> f64 {
    let mut values: Vec<f64> = runs
        .iter()
        .filter(|r| r.mode == mode)
        .filter_map(|r| r.figures[key].as_f64())
        .collect();
    median(&mut values)
}

/// The issue's targets for what traces cost a rate (figure `key`, higher is better) of `what`:
/// at most 10 % more time per unit than traces off at sampling 1.0, 2 % at 0.01. Prints each and
/// returns the verdicts.
pub fn traced_verdicts(runs: &[TracedRun], key: &str, what: &str) -> Vec<Verdict> {
    [("on, sampled 1.0", 10.0), ("on, sampled 0.01", 2.0)]
        .into_iter()
        .map(|(mode, limit)| {
            let mut costs = traced_costs(runs, mode, key);
            let cost = median(&mut costs);
            let pass = cost <= limit;
            println!(
                "  {what}, traces {mode}: cost {cost:+.1} % of time per unit (median of {} rounds, each against its own round's off run; rounds from {:+.1} to {:+.1} %) (target ≤ {limit} %)  {}",
                costs.len(),
                costs.first().copied().unwrap_or(f64::NAN),
                costs.last().copied().unwrap_or(f64::NAN),
                verdict(pass)
            );
            Verdict {
                target: format!("{what}, traces {mode}: cost ≤ {limit} %"),
                measured: format!("{cost:+.1} %"),
                pass,
            }
        })
        .collect()
}

/// Per round, what `mode` cost in time per unit against the same round's off run, in percent
/// (a rate, higher is better, in figure `key`). Pairing runs that ran minutes apart cancels the
/// machine's slower drifts, which the medians of each mode alone carry into their ratio.
pub fn traced_costs(runs: &[TracedRun], mode: &str, key: &str) -> Vec<f64> {
    let figure = |mode: &str, round: usize| {
        runs.iter()
            .find(|r| r.mode == mode && r.round == round)
            .and_then(|r| r.figures[key].as_f64())
    };
    let rounds = runs.iter().map(|r| r.round + 1).max().unwrap_or(0);
    (0..rounds)
        .filter_map(|round| Some((figure("off", round)? / figure(mode, round)? - 1.0) * 100.0))
        .collect()
}

/// The median over rounds of [`traced_costs`]: what `mode` cost in time per unit, in percent.
pub fn traced_cost(runs: &[TracedRun], mode: &str, key: &str) -> f64 {
    median(&mut traced_costs(runs, mode, key))
}

/// Prints figure `key` (higher is better) of each link's runs (medians over rounds) against
/// loopback and against the relay with no delay, and judges the delayed links against the
/// latter (the relay's own CPU cost is the simulation's, not the network's): at 0.5 ms round
/// trip at least 80 %, at 2 ms at least 50 %.
pub fn link_verdicts(runs: &[TracedRun], key: &str, what: &str, unit: &str) -> Vec<Verdict> {
    let loopback = traced_median(runs, LINKS[0].0, key);
    let relay = traced_median(runs, LINKS[1].0, key);
    let rows: Vec<Vec<String>> = LINKS
        .iter()
        .map(|(label, _)| {
            let v = traced_median(runs, label, key);
            vec![
                label.to_string(),
                thousands(v),
                format!("{:.0} %", v / loopback * 100.0),
                format!("{:.0} %", v / relay * 100.0),
            ]
        })
        .collect();
    print_table(
        &[
            "link",
            &format!("{what} ({unit})"),
            "of loopback",
            "of the relay, 0 ms",
        ],
        &rows,
    );
    [(LINKS[2].0, 80.0), (LINKS[3].0, 50.0)]
        .into_iter()
        .map(|(label, target)| {
            let share = traced_median(runs, label, key) / relay * 100.0;
            let pass = share >= target;
            println!(
                "  {what}, {label}: {share:.0} % of the relay with no delay (target ≥ {target} %)  {}",
                verdict(pass)
            );
            Verdict {
                target: format!("{what}, {label}: ≥ {target} % of no delay"),
                measured: format!("{share:.0} %"),
                pass,
            }
        })
        .collect()
}

/// The median of `values` (sorted in place).
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// How many times each mode runs in turn: 9 (2 in smoke mode). On this 2-core machine one
/// round's cost moves by ±10 points from round to round; with 5 rounds the median's verdict
/// flipped between two runs of the same commit.
pub fn traced_rounds(smoke: bool) -> usize {
    if smoke { 2 } else { 9 }
}
