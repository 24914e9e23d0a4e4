//! Test harness: every test gets its own Postgres database (UUID name, migrations applied) and
//! its own Redis key namespace, and talks to a real server bound to port 0. Tests run in parallel.

pub use crate::support::smtp::SmtpServer;
use crate::support::{
    self,
    proc::{children_of, is_alive},
};
pub use crate::support::{database_server_url, free_port, redis_url};
use backroom::config::Settings;
use reqwest::{Method, RequestBuilder, Response};
use serde_json::Value;
use sqlx::{Connection, PgPool};
use std::collections::HashMap;
use std::future::Future;
use std::process::{Child, Command, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};
use uuid::Uuid;

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789-abcdefghij";

fn init_logging() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        if std::env::var("TEST_LOG").is_ok() {
            backroom::telemetry::init(
                backroom::config::LogFormat::Pretty,
                "info,backroom=debug",
                None,
            );
        }
    });
}

/// A fresh database with the migrations applied on the Postgres server at `server_url`
/// (`postgres://user@host:port`, no database); returns its URL.
pub async fn fresh_database_on(server_url: &str) -> String {
    let name = format!("backroom_test_{}", Uuid::new_v4().simple());
    let url = format!("{server_url}/{name}");
    support::create_migrated_database(&format!("{server_url}/postgres"), &name, &url)
        .await
        .expect("Postgres must be reachable for the tests (run scripts/test)");
    url
}

/// Settings for a test: its own database and Redis namespace, port 0.
pub fn test_settings(database_url: &str) -> Settings {
    let namespace = format!("test-{}", Uuid::new_v4().simple());
    let env: HashMap<&str, String> = HashMap::from([
        ("DATABASE_URL", database_url.to_string()),
        ("REDIS_URL", redis_url()),
        ("BACKROOM_ADMIN_TOKEN", ADMIN_TOKEN.to_string()),
        ("BACKROOM_BIND", "127.0.0.1:0".to_string()),
        ("BACKROOM_REDIS_NAMESPACE", namespace),
        ("BACKROOM_MAX_BODY_BYTES", "1048576".to_string()),
    ]);
    Settings::from_lookup(|k| env.get(k).cloned()).expect("test settings are valid")
}

pub struct TestApp {
    pub address: String,
    pub db: PgPool,
    pub settings: Settings,
    /// The app's own queues (same Redis namespace).
    pub queues: backroom::queue::Queues,
    pub client: reqwest::Client,
    _server: support::app::InProcessApp,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(customize: impl FnOnce(&mut Settings)) -> TestApp {
    spawn_app_on(&database_server_url(), customize).await
}

/// An app (and its in-process workers) mailing to `smtp` as "Backroom Test".
pub async fn spawn_app_mailing_to(smtp: &SmtpServer) -> TestApp {
    let url = smtp.url();
    spawn_app_with(move |s| {
        s.smtp_url = Some(url);
        s.mail_from = "Backroom Test <noreply@backroom.test>".into();
    })
    .await
}

/// Like [`spawn_app_with`], with the app's database on the Postgres server at
/// `database_server_url` (e.g. a [`PostgresServer`] the test crashes and restarts).
pub async fn spawn_app_on(
    database_server_url: &str,
    customize: impl FnOnce(&mut Settings),
) -> TestApp {
    init_logging();
    let database_url = fresh_database_on(database_server_url).await;
    let mut settings = test_settings(&database_url);
    customize(&mut settings);
    let server = support::app::InProcessApp::start(&settings)
        .await
        .expect("application builds");
    TestApp {
        address: server.base.clone(),
        db: server.db.clone(),
        settings,
        queues: server.queues.clone(),
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap(),
        _server: server,
    }
}

/// In-process workers (the same `process::work::run` as `backroom work`); stopped gracefully on drop.
pub struct Workers(support::app::InProcessWorkers);

impl Workers {
    pub async fn stop(self) {
        self.0.stop().await.expect("workers stop gracefully");
    }
}

/// A created tenant and its first key.
pub struct TestTenant {
    pub id: String,
    pub slug: String,
    pub key: String,
}

impl TestApp {
    /// Starts workers for `queues` against this app's database and Redis namespace.
    pub fn start_workers(&self, queues: &str) -> Workers {
        let mut settings = self.settings.clone();
        settings.database_max_connections = 4;
        Workers(
            support::app::InProcessWorkers::start(&settings, queues, None).expect("known queues"),
        )
    }

    /// What a kind's `worker::deps` builds from: this app's database, queues and settings. With
    /// `backroom::jobs::perform`, runs one job's handler in the test (see `job_kinds.rs`).
    pub fn worker_context(&self) -> backroom::jobs::WorkerContext<'_> {
        backroom::jobs::WorkerContext {
            db: &self.db,
            queues: &self.queues,
            settings: &self.settings,
        }
    }

    /// Environment for a `backroom` child process sharing this app's database and namespace.
    pub fn child_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("DATABASE_URL", self.settings.database_url.clone()),
            ("REDIS_URL", self.settings.redis_url.clone()),
            (
                "BACKROOM_REDIS_NAMESPACE",
                self.settings.redis_namespace.clone(),
            ),
            ("BACKROOM_ADMIN_TOKEN", ADMIN_TOKEN.to_string()),
            ("BACKROOM_DB_MAX_CONNECTIONS", "4".to_string()),
            ("BACKROOM_LOG", "warn".to_string()),
        ]
    }

    pub fn request(&self, method: Method, path: &str, token: Option<&str>) -> RequestBuilder {
        let builder = self
            .client
            .request(method, format!("{}{}", self.address, path));
        match token {
            Some(t) => builder.bearer_auth(t),
            None => builder,
        }
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Response {
        self.request(Method::GET, path, token)
            .send()
            .await
            .expect("request sent")
    }

    /// Sends `csv` as a sales upload (`POST /v1/sales/import`, `text/csv`) with `key`.
    pub async fn upload_sales(&self, key: &str, csv: impl Into<reqwest::Body>) -> Response {
        self.request(Method::POST, "/v1/sales/import", Some(key))
            .header("content-type", "text/csv")
            .body(csv)
            .send()
            .await
            .expect("request sent")
    }

    /// Sends `body` as JSON; the returned future borrows nothing, so closures can return it.
    pub fn send_json(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: &Value,
    ) -> impl Future<Output = Response> + use<> {
        let pending = self.request(method, path, token).json(body).send();
        async move { pending.await.expect("request sent") }
    }

    pub fn post_json(
        &self,
        path: &str,
        token: Option<&str>,
        body: &Value,
    ) -> impl Future<Output = Response> + use<> {
        self.send_json(Method::POST, path, token, body)
    }

    /// A job of `tenant` on the emails queue that ended without running (cancelled), so an
    /// admin may retry it.
    pub async fn cancelled_job(&self, tenant: uuid::Uuid) -> String {
        let queue = backroom::queue::QueueName::parse("emails").unwrap();
        let job = backroom::queue::NewJob::new("test", &serde_json::json!({"n": 1})).tenant(tenant);
        let id = self
            .queues
            .push(&queue, vec![job])
            .await
            .unwrap()
            .remove(0)
            .id;
        self.queues
            .cancel(&id, "cancelled for the test")
            .await
            .unwrap();
        id
    }

    /// Creates an admin user with the bootstrap token; returns the password the server chose.
    pub async fn create_admin_user(&self, email: &str, role: &str) -> String {
        let r = self
            .post_json(
                "/admin/v1/users",
                Some(ADMIN_TOKEN),
                &serde_json::json!({"email": email, "role": role}),
            )
            .await;
        assert_eq!(r.status(), 201, "creating {email}");
        let body: Value = r.json().await.expect("a JSON body");
        assert_eq!(body["user"]["role"], role);
        body["password"]
            .as_str()
            .expect("a generated password")
            .to_string()
    }

    pub async fn create_tenant_raw(&self, body: &Value) -> Response {
        self.post_json("/admin/v1/tenants", Some(ADMIN_TOKEN), body)
            .await
    }

    pub async fn create_tenant(&self, slug: &str) -> TestTenant {
        let response = self
            .create_tenant_raw(&serde_json::json!({"name": format!("Tenant {slug}"), "slug": slug}))
            .await;
        assert_eq!(response.status(), 201, "tenant {slug} is created");
        let body: Value = response.json().await.unwrap();
        TestTenant {
            id: body["id"].as_str().unwrap().to_string(),
            slug: slug.to_string(),
            key: body["api_key"].as_str().unwrap().to_string(),
        }
    }

    pub async fn rotate_key(&self, slug: &str) -> (String, String) {
        let response = self
            .request(
                Method::POST,
                &format!("/admin/v1/tenants/{slug}/api-keys"),
                Some(ADMIN_TOKEN),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        let body: Value = response.json().await.unwrap();
        (
            body["id"].as_str().unwrap().to_string(),
            body["api_key"].as_str().unwrap().to_string(),
        )
    }

    pub async fn revoke_key(&self, id: &str) -> Response {
        self.request(
            Method::DELETE,
            &format!("/admin/v1/api-keys/{id}"),
            Some(ADMIN_TOKEN),
        )
        .send()
        .await
        .unwrap()
    }

    pub async fn me(&self, key: &str) -> Response {
        self.get("/v1/me", Some(key)).await
    }
}

/// Asserts a problem+json response and returns its body.
pub async fn assert_problem(response: Response, status: u16, why: &str) -> Value {
    assert_eq!(response.status().as_u16(), status, "{why}: status");
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    assert_eq!(
        content_type, "application/problem+json",
        "{why}: content type"
    );
    let body: Value = response.json().await.expect("problem body is JSON");
    for key in ["type", "title", "status", "detail", "errors", "request_id"] {
        assert!(
            body.get(key).is_some(),
            "{why}: problem lacks {key}: {body}"
        );
    }
    assert_eq!(body["status"], status, "{why}: status field");
    assert!(
        body["request_id"].as_str().is_some_and(|s| !s.is_empty()),
        "{why}: request_id"
    );
    body
}

/// The `field`s of a problem's `errors`.
pub fn problem_fields(body: &Value) -> Vec<String> {
    body["errors"]
        .as_array()
        .map(|errors| {
            errors
                .iter()
                .map(|e| e["field"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Polls `check` until it returns `Some`, or panics after `limit` naming `what`.
pub async fn wait_for<T, F, Fut>(what: &str, limit: Duration, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    support::poll(limit, Duration::from_millis(20), check)
        .await
        .unwrap_or_else(|| panic!("timed out after {limit:?} waiting for {what}"))
}

/// Worker children hold leases this short, so a killed worker's jobs are taken over quickly.
pub const CHILD_LEASE: Duration = Duration::from_secs(2);

/// A `backroom work` child process; SIGKILLed on drop, so a failing test leaves none behind.
pub struct WorkerProcess(Child);

impl WorkerProcess {
    /// Works `queues` for `app`, with the fault tests' short lease and `env` on top.
    pub fn spawn(app: &TestApp, queues: &str, env: &[(&str, String)]) -> Self {
        let logs = if std::env::var_os("TEST_LOG").is_some() {
            Stdio::inherit()
        } else {
            Stdio::null()
        };
        Self::spawn_with_log(app, queues, env, logs)
    }

    /// Like [`WorkerProcess::spawn`], its log (JSON lines) written to `log`.
    pub fn spawn_logged(
        app: &TestApp,
        queues: &str,
        env: &[(&str, String)],
        log: &std::path::Path,
    ) -> Self {
        let file = std::fs::File::create(log).expect("create the worker's log");
        Self::spawn_with_log(app, queues, env, Stdio::from(file))
    }

    fn spawn_with_log(app: &TestApp, queues: &str, env: &[(&str, String)], logs: Stdio) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_backroom"))
            .args(["work", "--queues", queues])
            .envs(app.child_env())
            .env("BACKROOM_JOB_LEASE_SECS", CHILD_LEASE.as_secs().to_string())
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::null())
            .stderr(logs)
            .spawn()
            .expect("backroom work starts");
        WorkerProcess(child)
    }

    pub fn kill9(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(None))
    }

    /// Sends SIGTERM (a graceful stop) and waits for the exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        terminate(&mut self.0)
    }

    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A real `backroom serve` child process on `app`'s database and namespace, answering on
/// `base`; SIGKILLed on drop unless [`ServeProcess::terminate`] stopped it.
pub struct ServeProcess {
    child: Child,
    pub base: String,
}

impl ServeProcess {
    /// Starts the server with `env` on top of the app's, its output into `log` (or nowhere),
    /// and waits until it answers.
    pub async fn spawn(app: &TestApp, env: &[(&str, &str)], log: Option<&std::path::Path>) -> Self {
        let port = free_port();
        let output = || match log {
            Some(path) => Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .unwrap(),
            ),
            None => Stdio::null(),
        };
        let child = Command::new(env!("CARGO_BIN_EXE_backroom"))
            .arg("serve")
            .envs(app.child_env())
            .env("BACKROOM_BIND", format!("127.0.0.1:{port}"))
            .envs(env.iter().copied())
            .stdout(output())
            .stderr(output())
            .spawn()
            .expect("backroom serve starts");
        let server = ServeProcess {
            child,
            base: format!("http://127.0.0.1:{port}"),
        };
        let client = reqwest::Client::new();
        wait_for("the server to answer", Duration::from_secs(30), || async {
            client
                .get(format!("{}/healthz", server.base))
                .send()
                .await
                .ok()
                .filter(|r| r.status().is_success())
        })
        .await;
        server
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        terminate(&mut self.child)
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A process's peak resident memory so far (`VmHWM`), in KiB.
pub fn peak_rss_kib(pid: u32) -> u64 {
    support::proc::status_kib(pid, "VmHWM").expect("VmHWM in /proc status")
}

/// A real, private `redis-server` process on a free port; killed on drop.
pub struct RedisServer {
    pub port: u16,
    child: Child,
}

impl RedisServer {
    pub async fn start() -> Self {
        Self::start_on(free_port()).await
    }

    /// Starts on a chosen port (to bring a stopped server back where clients expect it).
    pub async fn start_on(port: u16) -> Self {
        Self::spawn(port, &["--save", "", "--appendonly", "no"]).await
    }

    /// Starts with every write fsynced to an append-only file in `dir` before it is answered, so
    /// a server SIGKILLed and started again on the same port and `dir` has lost nothing.
    pub async fn start_durable(port: u16, dir: &std::path::Path) -> Self {
        let dir = dir.to_str().expect("a UTF-8 directory");
        let persistence = [
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
        ];
        Self::spawn(port, &[&persistence[..], &["--dir", dir]].concat()).await
    }

    /// Runs `redis-server` on `port` with `args` and waits until it answers.
    async fn spawn(port: u16, args: &[&str]) -> Self {
        let server = Self::launch(port, args);
        wait_until_redis_answers(&server.url()).await;
        server
    }

    /// Starts with the data of an earlier [`RedisServer::start_durable`] on `dir` and returns as
    /// soon as the port accepts connections: while it loads the data, Redis answers every
    /// command with a `LOADING` error.
    pub async fn start_loading(port: u16, dir: &std::path::Path) -> Self {
        let dir = dir.to_str().expect("a UTF-8 directory");
        let persistence = [
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
        ];
        let server = Self::launch(port, &[&persistence[..], &["--dir", dir]].concat());
        wait_for(
            "redis-server to listen",
            Duration::from_secs(15),
            || async { std::net::TcpStream::connect(("127.0.0.1", port)).ok() },
        )
        .await;
        server
    }

    fn launch(port: u16, args: &[&str]) -> Self {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--enable-debug-command", "local"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/test installs it)");
        RedisServer { port, child }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A directory under the system temp dir, removed with everything in it on drop.
pub struct ScratchDir {
    pub path: std::path::PathBuf,
}

impl ScratchDir {
    pub fn new(what: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("backroom-{what}-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&path).expect("create a scratch directory");
        ScratchDir { path }
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Sends SIGTERM (a graceful stop) to `child` and waits for its exit.
pub fn terminate(child: &mut Child) -> std::process::ExitStatus {
    send_signal("TERM", child.id());
    child.wait().unwrap()
}

/// Sends `signal` (`KILL`, `STOP`, `CONT`, …) to process `pid`; false if it is gone.
pub fn send_signal(signal: &str, pid: u32) -> bool {
    Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Polls `url` with `PING` until a Redis server answers (also while it loads its data).
async fn wait_until_redis_answers(url: &str) {
    wait_for("redis-server to answer", Duration::from_secs(15), || {
        let url = url.to_string();
        async move {
            let client = redis::Client::open(url).ok()?;
            let mut conn = client.get_multiplexed_async_connection().await.ok()?;
            redis::cmd("PING")
                .query_async::<String>(&mut conn)
                .await
                .ok()
        }
    })
    .await;
}

/// A real, private Postgres cluster (the distribution's `initdb` and `postgres`) with trust
/// authentication on a free port, its data in a temp dir. Tests crash it (SIGKILL to the
/// postmaster and every backend at once) and start it again on the same port and data, so it
/// comes back through crash recovery. Killed and removed on drop.
///
/// Postgres refuses to run as root; when the tests do, the server runs as the `postgres` user.
pub struct PostgresServer {
    pub port: u16,
    dir: ScratchDir,
    postmaster: Option<Child>,
}

impl PostgresServer {
    pub async fn start() -> Self {
        let dir = ScratchDir::new("postgres");
        if running_as_root() {
            let status = Command::new("chown")
                .arg("postgres:postgres")
                .arg(&dir.path)
                .status()
                .expect("chown runs");
            assert!(status.success(), "chown the data directory to postgres");
        }
        let initdb = Self::command("initdb")
            .arg("-D")
            .arg(dir.path.join("data"))
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C"])
            .arg("--no-sync")
            .output()
            .expect("initdb runs (apt-get install postgresql)");
        assert!(
            initdb.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&initdb.stderr)
        );
        let mut server = PostgresServer {
            port: free_port(),
            dir,
            postmaster: None,
        };
        server.start_again().await;
        server
    }

    /// `postgres://postgres@127.0.0.1:<port>`, without a database.
    pub fn server_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}", self.port)
    }

    /// Starts the server on its port and data (after [`Self::crash`]), and waits until it
    /// accepts connections, crash recovery included.
    pub async fn start_again(&mut self) {
        assert!(self.postmaster.is_none(), "the server is already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path.join("postgres.log"))
            .expect("open the server log");
        let mut postgres = Self::command("postgres");
        postgres
            .arg("-D")
            .arg(self.dir.path.join("data"))
            .args(["-p", &self.port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!(
                "unix_socket_directories={}",
                self.dir.path.display()
            ))
            // A process crash loses nothing without fsync (the kernel keeps the WAL); only a
            // machine crash would, and the tests do not crash machines.
            .args(["-c", "fsync=off", "-c", "max_connections=200"])
            .stdout(Stdio::null())
            .stderr(log);
        self.postmaster = Some(postgres.spawn().expect("postgres starts"));
        let url = format!("{}/postgres", self.server_url());
        wait_for(
            "the private Postgres to accept connections",
            Duration::from_secs(30),
            || {
                let url = url.clone();
                async move { sqlx::PgConnection::connect(&url).await.ok().map(|_| ()) }
            },
        )
        .await;
    }

    /// Kills the postmaster and all its backends with SIGKILL, as a crash would, and waits until
    /// none of them runs any more.
    pub fn crash(&mut self) {
        let Some(mut postmaster) = self.postmaster.take() else {
            return;
        };
        let pid = postmaster.id();
        // Frozen first, so it forks no backend between the listing and the kill. Backends lead
        // process groups of their own, so they are found as the postmaster's children.
        send_signal("STOP", pid);
        let backends = children_of(pid);
        for backend in &backends {
            send_signal("KILL", *backend);
        }
        let _ = postmaster.kill();
        let _ = postmaster.wait();
        let started = Instant::now();
        while backends.iter().any(|&b| is_alive(b)) {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "Postgres backends outlived SIGKILL"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The server's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path.join("postgres.log")).unwrap_or_default()
    }

    /// A command for one of the server's binaries, run as `postgres` when the tests run as root.
    fn command(binary: &str) -> Command {
        let path = postgres_bin_dir().join(binary);
        if running_as_root() {
            let mut command = Command::new("setpriv");
            command
                .args([
                    "--reuid=postgres",
                    "--regid=postgres",
                    "--init-groups",
                    "--",
                ])
                .arg(path);
            command
        } else {
            Command::new(path)
        }
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        self.crash();
    }
}

fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Debian's server binaries (`/usr/lib/postgresql/<newest>/bin`), or `BACKROOM_PG_BIN`.
fn postgres_bin_dir() -> std::path::PathBuf {
    if let Ok(dir) = std::env::var("BACKROOM_PG_BIN") {
        return dir.into();
    }
    let newest = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|v| std::path::Path::new(&format!("/usr/lib/postgresql/{v}/bin/initdb")).exists())
        .max()
        .expect("a Postgres server is installed under /usr/lib/postgresql");
    format!("/usr/lib/postgresql/{newest}/bin").into()
}

/// Creates product `sku` for the tenant of `key` (12.50 EUR, negative stock allowed, so every
/// adjustment applies); panics unless the API accepts it.
pub async fn put_product(app: &TestApp, key: &str, sku: &str) {
    let r = app
        .send_json(
            Method::PUT,
            &format!("/v1/products/{sku}"),
            Some(key),
            &serde_json::json!({"name": format!("Article {sku}"), "unit_price": "12.50", "currency": "EUR",
                    "reorder_point": 0, "reorder_quantity": 10, "lead_time_days": 3,
                    "allow_negative": true}),
        )
        .await;
    assert!(r.status().is_success(), "product {sku}: {}", r.status());
}

/// A client that follows no redirects and keeps no cookies (the dashboard tests read both).
pub fn raw_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Posts the dashboard's sign-in form (`token`, or `email` and `password`).
pub async fn post_login(app: &TestApp, form: &[(&str, &str)]) -> Response {
    raw_client()
        .post(format!("{}/admin/login", app.address))
        .form(form)
        .send()
        .await
        .unwrap()
}

/// The `name=value` of the session cookie a response sets.
pub fn session_cookie(r: &Response) -> String {
    r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string()
}

/// Signs in to the dashboard with `form`; returns the session cookie and the CSRF token its
/// pages carry.
pub async fn dashboard_session(app: &TestApp, form: &[(&str, &str)]) -> (String, String) {
    let r = post_login(app, form).await;
    assert_eq!(
        r.status(),
        303,
        "signed in with {:?}",
        form.first().map(|f| f.0)
    );
    let cookie = session_cookie(&r);
    // The search page: every signed-in admin may open it, those limited to some tenants too.
    let page = raw_client()
        .get(format!("{}/admin/search", app.address))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the page carries a CSRF token")
        .to_string();
    (cookie, csrf)
}

/// Waits until the job history of `queue` is on (a `work` process switches it on at start).
pub async fn wait_history_on(app: &TestApp, queue: &backroom::queue::QueueName) {
    wait_for(
        "the history to be switched on",
        Duration::from_secs(60),
        || async {
            let mut conn = app.queues.redis().conn().await.ok()?;
            let on: i64 = redis::cmd("EXISTS")
                .arg(format!("{}:history:on", app.queues.keys(queue).prefix()))
                .query_async(&mut conn)
                .await
                .ok()?;
            (on == 1).then_some(())
        },
    )
    .await;
}
