//! Settings, read once from the environment at start-up (12-factor).
//!
//! Every variable is parsed here and nowhere else, so a missing or malformed setting stops the
//! process before it binds a port or touches a queue, with one line naming the variable.
//! `.env.example` documents each variable; tests build `Settings` directly.

use crate::queue::QueueSettings;
use std::net::SocketAddr;
use std::time::Duration;

/// A setting that is missing or malformed. Its `Display` is the one line an operator sees.
#[derive(Debug, thiserror::Error)]
#[error("configuration error: {var}: {message}")]
pub struct SettingsError {
    pub var: &'static str,
    pub message: String,
}

/// `BACKROOM_COOKIE_SECURE`: whether dashboard cookies carry the `Secure` flag (and pages send
/// HSTS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CookieSecure {
    /// When the request came over TLS through a proxy (`X-Forwarded-Proto: https`).
    Auto,
    Always,
    Never,
}

/// The admin token must be at least this long.
pub const MIN_ADMIN_TOKEN_CHARS: usize = 32;

/// Refuses an admin token that is short or a placeholder left from an example file.
pub fn check_admin_token(token: &str) -> Result<(), String> {
    if token.chars().count() < MIN_ADMIN_TOKEN_CHARS {
        return Err(format!(
            "must be at least {MIN_ADMIN_TOKEN_CHARS} characters (e.g. `openssl rand -hex 32`)"
        ));
    }
    let lower = token.to_lowercase();
    let placeholder = [
        "change-me",
        "changeme",
        "change_me",
        "replace",
        "example",
        "placeholder",
    ]
    .iter()
    .any(|p| lower.contains(p));
    let distinct = token
        .chars()
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    if placeholder || distinct < 8 {
        return Err(
            "looks like a placeholder; set a long random value (e.g. `openssl rand -hex 32`)"
                .into(),
        );
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Pretty,
}

#[derive(Debug, Clone)]
pub struct Settings {
    /// `DATABASE_URL`: the Postgres database that holds tenants, ledgers, invoices, forecasts.
    pub database_url: String,
    /// `BACKROOM_DB_MAX_CONNECTIONS`: pool size per process.
    pub database_max_connections: u32,
    /// `REDIS_URL`: `redis://` (single node) or `redis+cluster://` (Redis Cluster seed node).
    pub redis_url: String,
    /// `BACKROOM_REDIS_NAMESPACE`: prefix of every Redis key, so several deployments (or tests)
    /// can share one Redis.
    pub redis_namespace: String,
    /// `SMTP_URL`: where emails go (`smtp://user:pass@host:port`, `smtps://…`). Optional for the
    /// API; workers that send email need it.
    pub smtp_url: Option<String>,
    /// `BACKROOM_ADMIN_TOKEN`: the bootstrap admin bearer token (at least 32 characters, not a
    /// placeholder); `None` when `BACKROOM_ADMIN_TOKEN_ENABLED=false` turns it off (admin users
    /// then sign in by email and password).
    pub admin_token: Option<String>,
    /// `BACKROOM_COOKIE_SECURE`: `auto` (default), `always` or `never`.
    pub cookie_secure: CookieSecure,
    /// `BACKROOM_BIND`: the HTTP listen address.
    pub bind: SocketAddr,
    /// `BACKROOM_MAX_BODY_BYTES`: the largest request body accepted (413 above it).
    pub max_body_bytes: usize,
    /// `BACKROOM_LOG_FORMAT`: `json` (production) or `pretty` (a terminal).
    pub log_format: LogFormat,
    /// `BACKROOM_LOG` (or `RUST_LOG`): a tracing filter such as `info,backroom=debug`.
    pub log_filter: String,
    /// The standard `OTEL_*` variables: where and how traces are exported (`None`, the
    /// default: no traces). See [`crate::telemetry::traces`].
    pub traces: Option<crate::telemetry::TraceSettings>,
    /// `BACKROOM_SHUTDOWN_GRACE_SECS`: how long in-flight work may run after SIGTERM.
    pub shutdown_grace: Duration,
    /// `BACKROOM_METRICS_BIND`: optional listener serving `/metrics` without credentials (for a
    /// Prometheus on a private network); `/metrics` on the API port needs the admin token.
    pub metrics_bind: Option<SocketAddr>,
    /// `BACKROOM_MAIL_FROM`: the sender of every email (default `backroom <noreply@backroom.local>`).
    pub mail_from: String,
    /// `BACKROOM_EMAILS_PER_MINUTE`: each tenant's sending limit (default 120).
    pub emails_per_minute: u32,
    /// `BACKROOM_INVOICE_FONT_DIR`: a directory with `DejaVuSans.ttf` and `DejaVuSans-Bold.ttf`
    /// to use instead of the fonts built into the binary.
    pub invoice_font_dir: Option<std::path::PathBuf>,
    /// `BACKROOM_MAX_IMPORT_BYTES`: the largest sales CSV upload (default 64 MiB).
    pub max_import_bytes: usize,
    /// `BACKROOM_MAX_IMPORT_ROWS`: the most rows a sales CSV may hold (default 2,000,000).
    pub max_import_rows: usize,
    /// `BACKROOM_MAX_PAST_DAYS`: how far back a date may go at any entry point (stock
    /// adjustments' `occurred_at`, sales import rows; default 3650, ten years): older is 422.
    pub dates: crate::domain::DateWindow,
    /// `BACKROOM_JOB_HISTORY_DAYS`: how many days of finished jobs `work` processes keep in
    /// Postgres's job history (default 30; 0 turns the copying off).
    pub job_history_days: u32,
    /// `BACKROOM_MAX_QUEUED_IMPORTS`: how many of one tenant's sales imports may wait to be
    /// loaded at once (default 3); another upload is 409 until one finishes.
    pub max_queued_imports: u32,
    /// `BACKROOM_TENANT_CONCURRENCY`: each queue's default limit on one tenant's jobs running at
    /// once across every worker, as `queue=n` pairs (default `forecasts=2,imports=1,invoices=4,webhooks=8`: a
    /// render takes a core, so one tenant's flood of orders may not hold every render slot; a
    /// queue not named has no default limit). Per-tenant overrides: `PATCH /admin/v1/tenants/{slug}`.
    pub tenant_concurrency: std::collections::BTreeMap<String, u32>,
    /// `BACKROOM_TENANT_JOB_RATES`: each queue's default limit on how many of one tenant's jobs
    /// start per second across every worker (a burst of one second's worth), as `queue=rate`
    /// pairs (default none). A tenant's flood of short jobs then takes at most that share of
    /// the machine however idle it is, so the others' latency does not follow its load. Per-tenant
    /// overrides: `PATCH /admin/v1/tenants/{slug}`.
    pub tenant_job_rates: std::collections::BTreeMap<String, f64>,
    /// `BACKROOM_TENANT_RATE_PER_SECOND` (default 1,000; 0 turns the limit off) and
    /// `BACKROOM_TENANT_RATE_BURST` (default 2,000): each tenant's API request rate, shared by
    /// every API process; over it a request gets 429 with `Retry-After`.
    pub tenant_rate: RateLimit,
    /// `BACKROOM_HEADER_TIMEOUT_SECS` (default 10: a request's head must arrive within it, and
    /// an idle keep-alive connection is closed after it; a stalled body is cut after it too) and
    /// `BACKROOM_MAX_CONNECTIONS` (default 4096: connections one API process holds open at once).
    pub connections: ConnectionLimits,
    /// `BACKROOM_REQUEST_TIMEOUT_SECS`: the longest one request may take, body included
    /// (default 60); past it the caller gets 503.
    pub request_timeout: Duration,
    /// `BACKROOM_AUTH_FAILURES_PER_MINUTE`: failed authentications one client address may make
    /// per minute per API process (default 60; 0 turns the throttle off); past it the address
    /// gets 429 without its credentials being looked up.
    pub auth_failures_per_minute: u32,
    /// `BACKROOM_TENANT_REQUESTS_IN_FLIGHT`: requests of one tenant that one API process handles
    /// at once (default a quarter of `BACKROOM_DB_MAX_CONNECTIONS`, at least 4; 0 for no limit);
    /// more wait their turn, at most 10 s, then get 429.
    pub tenant_requests_in_flight: usize,
    /// `BACKROOM_CLIENT_ADDRESS_HEADER`: behind a reverse proxy, the header whose last entry is
    /// the client's address (e.g. `x-forwarded-for`); unset, the peer's address is used.
    pub client_address_header: Option<axum::http::HeaderName>,
    /// Nightly forecasting.
    pub forecast: ForecastSettings,
    /// Webhook deliveries.
    pub webhooks: WebhookSettings,
    /// `BACKROOM_JOB_LEASE_SECS`, `BACKROOM_RETENTION_SUCCEEDED_SECS`,
    /// `BACKROOM_RETENTION_DEAD_SECS`, `BACKROOM_IDEMPOTENCY_RETENTION_SECS`.
    pub queue: QueueSettings,
}

/// Nightly forecasting settings.
#[derive(Debug, Clone)]
pub struct ForecastSettings {
    /// `BACKROOM_FORECAST_CRON`: when nightly runs start, a cron expression with seconds, in UTC
    /// (default `0 0 2 * * *`, 02:00).
    pub cron: String,
    /// `BACKROOM_FORECAST_HORIZON_DAYS`: days a nightly run forecasts (default 28).
    pub horizon_days: i32,
    /// `BACKROOM_FORECAST_SERVICE_LEVEL`: the chance of not running out during a lead time that
    /// reorder advice plans for (default 0.95).
    pub service_level: f64,
    /// `BACKROOM_FORECAST_KEEP_RUNS`: finished runs kept per tenant for comparison (default 30).
    pub keep_runs: i64,
    /// `BACKROOM_FORECAST_FULL_BACKTEST_MAX_SKUS`: runs over more SKUs than this backtest only
    /// the model chooser's pick against the baseline instead of every model (default 20000).
    pub full_backtest_max_skus: usize,
    /// `BACKROOM_FORECAST_HISTORY_DAYS`: the most days of history a forecast reads per SKU
    /// (default 1096, three years: two yearly seasons and a backtest), whatever the database holds.
    pub history_days: i32,
    /// `BACKROOM_FORECAST_RUN_GAP_SECS`: the least time between two runs one tenant starts on
    /// demand (default 60; 0: none); an earlier start is 429 with `Retry-After`. Nightly runs
    /// are exempt.
    pub run_gap: Duration,
}

/// Webhook delivery settings.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// `BACKROOM_WEBHOOK_TIMEOUT_SECS`: the longest one delivery may take, answer included
    /// (default 10).
    pub timeout: Duration,
    /// `BACKROOM_WEBHOOKS_ALLOW_PRIVATE`: `true` lets endpoints be on loopback, private and
    /// link-local addresses (tests, on-premises receivers); default `false`, public addresses only.
    pub allow_private: bool,
    /// `BACKROOM_WEBHOOK_RETRY_SECS`: the delays before each retry, comma-separated seconds
    /// (default `5,300,1800,7200,18000,36000,36000,36000`: about 37 hours; at most 15 delays).
    pub retry_after: Vec<Duration>,
    /// `BACKROOM_WEBHOOK_DISABLE_AFTER_DAYS`: an endpoint whose attempts have all failed for this
    /// long is disabled and its tenant told by email (default 5; 0.001 to 365).
    pub disable_after: Duration,
}

impl WebhookSettings {
    fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, SettingsError> {
        let timeout: f64 = parse_or(
            get("BACKROOM_WEBHOOK_TIMEOUT_SECS"),
            "BACKROOM_WEBHOOK_TIMEOUT_SECS",
            "10",
            "a number of seconds",
        )?;
        if !(0.1..=120.0).contains(&timeout) {
            return Err(SettingsError {
                var: "BACKROOM_WEBHOOK_TIMEOUT_SECS",
                message: "must be between 0.1 and 120".into(),
            });
        }
        let allow_private = match get("BACKROOM_WEBHOOKS_ALLOW_PRIVATE")
            .as_deref()
            .map(str::trim)
        {
            None | Some("false") | Some("0") => false,
            Some("true") | Some("1") => true,
            Some(other) => {
                return Err(SettingsError {
                    var: "BACKROOM_WEBHOOKS_ALLOW_PRIVATE",
                    message: format!("'{other}' is not true or false"),
                });
            }
        };
        let var = "BACKROOM_WEBHOOK_RETRY_SECS";
        let raw = get(var).unwrap_or_else(|| "5,300,1800,7200,18000,36000,36000,36000".into());
        let mut retry_after = vec![];
        for part in raw.split(',').map(str::trim) {
            let secs: f64 = parse_or(Some(part.to_string()), var, "", "a list of seconds")?;
            if !(0.01..=86_400.0).contains(&secs) {
                return Err(SettingsError {
                    var,
                    message: format!("{part}: each delay must be between 0.01 and 86400 seconds"),
                });
            }
            retry_after.push(Duration::from_secs_f64(secs));
        }
        if retry_after.len() > 15 {
            return Err(SettingsError {
                var,
                message: "at most 15 delays".into(),
            });
        }
        let var = "BACKROOM_WEBHOOK_DISABLE_AFTER_DAYS";
        let days: f64 = parse_or(get(var), var, "5", "a number of days")?;
        if !(0.001..=365.0).contains(&days) {
            return Err(SettingsError {
                var,
                message: "must be between 0.001 and 365".into(),
            });
        }
        Ok(WebhookSettings {
            timeout: Duration::from_secs_f64(timeout),
            allow_private,
            retry_after,
            disable_after: Duration::from_secs_f64(days * 86_400.0),
        })
    }
}

impl Settings {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, SettingsError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads settings through `lookup`, so the parsing rules are testable without touching the
    /// process environment. Empty values count as unset.
    ///
    /// Long on purpose: one block per setting, in the order of the README's table, each parsed
    /// and bounded where it is read, so a setting's whole rule is in one place.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, SettingsError> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let required = |name: &'static str| {
            get(name).ok_or_else(|| SettingsError {
                var: name,
                message: "is not set".into(),
            })
        };

        let database_url = required("DATABASE_URL")?;
        check_url("DATABASE_URL", &database_url, &["postgres", "postgresql"])?;
        let redis_url = required("REDIS_URL")?;
        check_url(
            "REDIS_URL",
            &redis_url,
            &["redis", "rediss", "redis+cluster", "rediss+cluster"],
        )?;
        let smtp_url = get("SMTP_URL");
        if let Some(url) = &smtp_url {
            check_url("SMTP_URL", url, &["smtp", "smtps"])?;
        }

        let token_enabled = match get("BACKROOM_ADMIN_TOKEN_ENABLED")
            .as_deref()
            .map(str::trim)
        {
            None | Some("true") | Some("1") => true,
            Some("false") | Some("0") => false,
            Some(other) => {
                return Err(SettingsError {
                    var: "BACKROOM_ADMIN_TOKEN_ENABLED",
                    message: format!("'{other}' is not true or false"),
                });
            }
        };
        let admin_token = if token_enabled {
            let token = required("BACKROOM_ADMIN_TOKEN")?;
            check_admin_token(&token).map_err(|message| SettingsError {
                var: "BACKROOM_ADMIN_TOKEN",
                message,
            })?;
            Some(token)
        } else {
            None
        };
        let cookie_secure = match get("BACKROOM_COOKIE_SECURE").as_deref().map(str::trim) {
            None | Some("auto") => CookieSecure::Auto,
            Some("always") | Some("true") => CookieSecure::Always,
            Some("never") | Some("false") => CookieSecure::Never,
            Some(other) => {
                return Err(SettingsError {
                    var: "BACKROOM_COOKIE_SECURE",
                    message: format!("'{other}' is not auto, always or never"),
                });
            }
        };

        let bind = parse_or(
            get("BACKROOM_BIND"),
            "BACKROOM_BIND",
            "0.0.0.0:8080",
            "a socket address such as 0.0.0.0:8080",
        )?;
        let database_max_connections: u32 = parse_or(
            get("BACKROOM_DB_MAX_CONNECTIONS"),
            "BACKROOM_DB_MAX_CONNECTIONS",
            "20",
            "a whole number",
        )?;
        if database_max_connections == 0 {
            return Err(SettingsError {
                var: "BACKROOM_DB_MAX_CONNECTIONS",
                message: "must be at least 1".into(),
            });
        }
        let max_body_bytes: usize = parse_or(
            get("BACKROOM_MAX_BODY_BYTES"),
            "BACKROOM_MAX_BODY_BYTES",
            "2097152",
            "a number of bytes",
        )?;
        let shutdown_secs: u64 = parse_or(
            get("BACKROOM_SHUTDOWN_GRACE_SECS"),
            "BACKROOM_SHUTDOWN_GRACE_SECS",
            "30",
            "a number of seconds",
        )?;

        let metrics_bind = match get("BACKROOM_METRICS_BIND") {
            None => None,
            Some(raw) => Some(parse_or(
                Some(raw),
                "BACKROOM_METRICS_BIND",
                "",
                "a socket address such as 0.0.0.0:9090",
            )?),
        };
        let defaults = QueueSettings::default();
        let secs = |var: &'static str, default: Duration| -> Result<Duration, SettingsError> {
            let n: u64 = parse_or(
                get(var),
                var,
                &default.as_secs().to_string(),
                "a number of seconds",
            )?;
            if n == 0 {
                return Err(SettingsError {
                    var,
                    message: "must be at least 1".into(),
                });
            }
            Ok(Duration::from_secs(n))
        };
        let queue = QueueSettings {
            lease: secs("BACKROOM_JOB_LEASE_SECS", defaults.lease)?,
            succeeded_retention: secs(
                "BACKROOM_RETENTION_SUCCEEDED_SECS",
                defaults.succeeded_retention,
            )?,
            dead_retention: secs("BACKROOM_RETENTION_DEAD_SECS", defaults.dead_retention)?,
            idempotency_retention: secs(
                "BACKROOM_IDEMPOTENCY_RETENTION_SECS",
                defaults.idempotency_retention,
            )?,
            ..defaults
        };

        let mail_from =
            get("BACKROOM_MAIL_FROM").unwrap_or_else(|| "backroom <noreply@backroom.local>".into());
        if mail_from.parse::<lettre::message::Mailbox>().is_err() {
            return Err(SettingsError {
                var: "BACKROOM_MAIL_FROM",
                message: format!("'{mail_from}' is not a mailbox such as Shop <shop@example.com>"),
            });
        }
        let emails_per_minute: u32 = parse_or(
            get("BACKROOM_EMAILS_PER_MINUTE"),
            "BACKROOM_EMAILS_PER_MINUTE",
            "120",
            "a whole number",
        )?;
        let invoice_font_dir = get("BACKROOM_INVOICE_FONT_DIR").map(std::path::PathBuf::from);
        let max_import_bytes: usize = parse_or(
            get("BACKROOM_MAX_IMPORT_BYTES"),
            "BACKROOM_MAX_IMPORT_BYTES",
            "67108864",
            "a number of bytes",
        )?;
        let max_import_rows: usize = parse_or(
            get("BACKROOM_MAX_IMPORT_ROWS"),
            "BACKROOM_MAX_IMPORT_ROWS",
            "2000000",
            "a number of rows",
        )?;
        let past_days: u32 = parse_or(
            get("BACKROOM_MAX_PAST_DAYS"),
            "BACKROOM_MAX_PAST_DAYS",
            "3650",
            "a whole number of days",
        )?;
        if !(1..=36_500).contains(&past_days) {
            return Err(SettingsError {
                var: "BACKROOM_MAX_PAST_DAYS",
                message: "must be between 1 and 36500".into(),
            });
        }
        let job_history_days: u32 = parse_or(
            get("BACKROOM_JOB_HISTORY_DAYS"),
            "BACKROOM_JOB_HISTORY_DAYS",
            "30",
            "a whole number of days",
        )?;
        if job_history_days > 3660 {
            return Err(SettingsError {
                var: "BACKROOM_JOB_HISTORY_DAYS",
                message: "must be between 0 (off) and 3660".into(),
            });
        }
        let max_queued_imports: u32 = parse_or(
            get("BACKROOM_MAX_QUEUED_IMPORTS"),
            "BACKROOM_MAX_QUEUED_IMPORTS",
            "3",
            "a whole number",
        )?;
        if max_queued_imports == 0 {
            return Err(SettingsError {
                var: "BACKROOM_MAX_QUEUED_IMPORTS",
                message: "must be at least 1".into(),
            });
        }
        let tenant_concurrency = parse_per_queue(
            "BACKROOM_TENANT_CONCURRENCY",
            &get("BACKROOM_TENANT_CONCURRENCY")
                .unwrap_or_else(|| "forecasts=2,imports=1,invoices=4,webhooks=8".into()),
            "the limit is not a whole number",
            |n: &u32| *n < u32::MAX,
        )?;
        let tenant_job_rates = parse_per_queue(
            "BACKROOM_TENANT_JOB_RATES",
            &get("BACKROOM_TENANT_JOB_RATES").unwrap_or_default(),
            "the rate is not a number of jobs per second from 0.001 to 1000000 (0: none)",
            |r: &f64| *r == 0.0 || (0.001..=1_000_000.0).contains(r),
        )?;
        let tenant_rate = RateLimit {
            per_second: parse_or(
                get("BACKROOM_TENANT_RATE_PER_SECOND"),
                "BACKROOM_TENANT_RATE_PER_SECOND",
                "1000",
                "a whole number of requests (0 for no limit)",
            )?,
            burst: parse_or(
                get("BACKROOM_TENANT_RATE_BURST"),
                "BACKROOM_TENANT_RATE_BURST",
                "2000",
                "a whole number of requests",
            )?,
        };
        if tenant_rate.burst == 0 {
            return Err(SettingsError {
                var: "BACKROOM_TENANT_RATE_BURST",
                message: "must be at least 1".into(),
            });
        }
        let header_timeout = secs("BACKROOM_HEADER_TIMEOUT_SECS", Duration::from_secs(10))?;
        let request_timeout = secs("BACKROOM_REQUEST_TIMEOUT_SECS", Duration::from_secs(60))?;
        let max_connections: usize = parse_or(
            get("BACKROOM_MAX_CONNECTIONS"),
            "BACKROOM_MAX_CONNECTIONS",
            "4096",
            "a whole number",
        )?;
        if max_connections == 0 {
            return Err(SettingsError {
                var: "BACKROOM_MAX_CONNECTIONS",
                message: "must be at least 1".into(),
            });
        }
        let auth_failures_per_minute: u32 = parse_or(
            get("BACKROOM_AUTH_FAILURES_PER_MINUTE"),
            "BACKROOM_AUTH_FAILURES_PER_MINUTE",
            "60",
            "a whole number (0 for no limit)",
        )?;
        let tenant_requests_in_flight: usize = parse_or(
            get("BACKROOM_TENANT_REQUESTS_IN_FLIGHT"),
            "BACKROOM_TENANT_REQUESTS_IN_FLIGHT",
            &(database_max_connections as usize / 4).max(4).to_string(),
            "a whole number of requests (0 for no limit)",
        )?;
        if tenant_requests_in_flight > 100_000 {
            return Err(SettingsError {
                var: "BACKROOM_TENANT_REQUESTS_IN_FLIGHT",
                message: "must be at most 100000 (0 for no limit)".into(),
            });
        }
        let client_address_header =
            match get("BACKROOM_CLIENT_ADDRESS_HEADER") {
                None => None,
                Some(raw) => Some(raw.trim().parse::<axum::http::HeaderName>().map_err(|_| {
                    SettingsError {
                        var: "BACKROOM_CLIENT_ADDRESS_HEADER",
                        message: format!("'{raw}' is not a header name"),
                    }
                })?),
            };
        let cron = get("BACKROOM_FORECAST_CRON").unwrap_or_else(|| "0 0 2 * * *".into());
        if let Err(e) = <cron::Schedule as std::str::FromStr>::from_str(&cron) {
            return Err(SettingsError {
                var: "BACKROOM_FORECAST_CRON",
                message: format!(
                    "'{cron}' is not a cron expression with seconds, e.g. '0 0 2 * * *' ({e})"
                ),
            });
        }
        let horizon_days: i32 = parse_or(
            get("BACKROOM_FORECAST_HORIZON_DAYS"),
            "BACKROOM_FORECAST_HORIZON_DAYS",
            "28",
            "a whole number of days",
        )?;
        if !(1..=365).contains(&horizon_days) {
            return Err(SettingsError {
                var: "BACKROOM_FORECAST_HORIZON_DAYS",
                message: "must be between 1 and 365".into(),
            });
        }
        let service_level: f64 = parse_or(
            get("BACKROOM_FORECAST_SERVICE_LEVEL"),
            "BACKROOM_FORECAST_SERVICE_LEVEL",
            "0.95",
            "a probability such as 0.95",
        )?;
        if !(0.5..=0.9999).contains(&service_level) {
            return Err(SettingsError {
                var: "BACKROOM_FORECAST_SERVICE_LEVEL",
                message: "must be between 0.5 and 0.9999".into(),
            });
        }
        let keep_runs: i64 = parse_or(
            get("BACKROOM_FORECAST_KEEP_RUNS"),
            "BACKROOM_FORECAST_KEEP_RUNS",
            "30",
            "a whole number",
        )?;
        let full_backtest_max_skus: usize = parse_or(
            get("BACKROOM_FORECAST_FULL_BACKTEST_MAX_SKUS"),
            "BACKROOM_FORECAST_FULL_BACKTEST_MAX_SKUS",
            "20000",
            "a whole number",
        )?;
        let history_days: i32 = parse_or(
            get("BACKROOM_FORECAST_HISTORY_DAYS"),
            "BACKROOM_FORECAST_HISTORY_DAYS",
            "1096",
            "a whole number of days",
        )?;
        if !(56..=3660).contains(&history_days) {
            return Err(SettingsError {
                var: "BACKROOM_FORECAST_HISTORY_DAYS",
                message: "must be between 56 and 3660".into(),
            });
        }
        let run_gap_secs: u32 = parse_or(
            get("BACKROOM_FORECAST_RUN_GAP_SECS"),
            "BACKROOM_FORECAST_RUN_GAP_SECS",
            "60",
            "a whole number of seconds",
        )?;
        if run_gap_secs > 86_400 {
            return Err(SettingsError {
                var: "BACKROOM_FORECAST_RUN_GAP_SECS",
                message: "must be at most 86400 (a day)".into(),
            });
        }
        if keep_runs < 1 {
            return Err(SettingsError {
                var: "BACKROOM_FORECAST_KEEP_RUNS",
                message: "must be at least 1".into(),
            });
        }

        let redis_namespace = get("BACKROOM_REDIS_NAMESPACE").unwrap_or_else(|| "backroom".into());
        if !redis_namespace
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | ':' | '.'))
        {
            return Err(SettingsError {
                var: "BACKROOM_REDIS_NAMESPACE",
                message: "may contain only letters, digits, '-', '_', ':' and '.'".into(),
            });
        }

        let log_format = match get("BACKROOM_LOG_FORMAT").as_deref() {
            None | Some("json") => LogFormat::Json,
            Some("pretty") => LogFormat::Pretty,
            Some(other) => {
                return Err(SettingsError {
                    var: "BACKROOM_LOG_FORMAT",
                    message: format!("'{other}' is not one of: json, pretty"),
                });
            }
        };
        let log_filter = get("BACKROOM_LOG")
            .or_else(|| get("RUST_LOG"))
            .unwrap_or_else(|| "info".into());
        if let Err(e) = log_filter.parse::<tracing_subscriber::EnvFilter>() {
            return Err(SettingsError {
                var: "BACKROOM_LOG",
                message: format!("'{log_filter}' is not a valid filter: {e}"),
            });
        }
        let traces = crate::telemetry::TraceSettings::from_lookup(get)?;

        Ok(Settings {
            database_url,
            database_max_connections,
            redis_url,
            redis_namespace,
            smtp_url,
            admin_token,
            cookie_secure,
            bind,
            max_body_bytes,
            log_format,
            log_filter,
            traces,
            shutdown_grace: Duration::from_secs(shutdown_secs),
            metrics_bind,
            mail_from,
            emails_per_minute,
            invoice_font_dir,
            max_import_bytes,
            max_import_rows,
            dates: crate::domain::DateWindow { past_days },
            job_history_days,
            max_queued_imports,
            tenant_concurrency,
            tenant_job_rates,
            tenant_rate,
            connections: ConnectionLimits {
                header_timeout,
                max_connections,
            },
            request_timeout,
            auth_failures_per_minute,
            tenant_requests_in_flight,
            client_address_header,
            forecast: ForecastSettings {
                cron,
                horizon_days,
                service_level,
                keep_runs,
                full_backtest_max_skus,
                history_days,
                run_gap: Duration::from_secs(u64::from(run_gap_secs)),
            },
            webhooks: WebhookSettings::from_lookup(get)?,
            queue,
        })
    }
}

/// `queue=value` pairs, each queue named once at most.
fn parse_per_queue<T: std::str::FromStr>(
    var: &'static str,
    raw: &str,
    not_a_value: &str,
    valid: impl Fn(&T) -> bool,
) -> Result<std::collections::BTreeMap<String, T>, SettingsError> {
    let fail = |message: String| SettingsError { var, message };
    let mut limits = std::collections::BTreeMap::new();
    for pair in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (queue, n) = pair
            .split_once('=')
            .ok_or_else(|| fail(format!("'{pair}' is not queue=n")))?;
        let queue = queue.trim();
        if crate::jobs::queues::Queue::parse(queue).is_none() {
            return Err(fail(format!("'{queue}' is not a queue")));
        }
        let n: T = n
            .trim()
            .parse()
            .ok()
            .filter(&valid)
            .ok_or_else(|| fail(format!("'{pair}': {not_a_value}")))?;
        limits.insert(queue.to_string(), n);
    }
    Ok(limits)
}

fn check_url(var: &'static str, value: &str, schemes: &[&str]) -> Result<(), SettingsError> {
    let url = url::Url::parse(value).map_err(|e| SettingsError {
        var,
        message: format!("is not a URL ({e})"),
    })?;
    if !schemes.contains(&url.scheme()) {
        return Err(SettingsError {
            var,
            message: format!(
                "scheme '{}' is not one of: {}",
                url.scheme(),
                schemes.join(", ")
            ),
        });
    }
    Ok(())
}

fn parse_or<T: std::str::FromStr>(
    value: Option<String>,
    var: &'static str,
    default: &str,
    expected: &str,
) -> Result<T, SettingsError> {
    let raw = value.unwrap_or_else(|| default.to_string());
    raw.trim().parse().map_err(|_| SettingsError {
        var,
        message: format!("'{raw}' is not {expected}"),
    })
}

/// `DATABASE_URL` alone, for commands that touch only Postgres (`migrate`, `tenant create`).
pub fn database_url_from_env() -> Result<String, SettingsError> {
    let url = std::env::var("DATABASE_URL")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .ok_or_else(|| SettingsError {
            var: "DATABASE_URL",
            message: "is not set".into(),
        })?;
    check_url("DATABASE_URL", &url, &["postgres", "postgresql"])?;
    Ok(url)
}

/// A per-tenant limit: `per_second` requests a second on average, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub per_second: u32,
    pub burst: u32,
}

/// What one API process allows its clients.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConnectionLimits {
    /// A request's head (request line and headers) must arrive within this; also how long an
    /// idle keep-alive connection stays open.
    pub header_timeout: Duration,
    /// Connections open at once.
    pub max_connections: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn base() -> HashMap<&'static str, &'static str> {
        HashMap::from([
            (
                "DATABASE_URL",
                "postgres://postgres@127.0.0.1:5432/backroom",
            ),
            ("REDIS_URL", "redis://127.0.0.1:6379"),
            (
                "BACKROOM_ADMIN_TOKEN",
                "0123456789abcdef-admin-token-for-tests",
            ),
        ])
    }

    fn parse(env: &HashMap<&'static str, &'static str>) -> Result<Settings, SettingsError> {
        Settings::from_lookup(|k| env.get(k).map(|v| v.to_string()))
    }

    #[test]
    fn the_admin_token_can_be_turned_off_and_is_then_not_needed() {
        let mut env = base();
        env.remove("BACKROOM_ADMIN_TOKEN");
        env.insert("BACKROOM_ADMIN_TOKEN_ENABLED", "false");
        let s = parse(&env).expect("valid without a token");
        assert_eq!(s.admin_token, None);
        let s = parse(&base()).expect("valid");
        assert!(s.admin_token.is_some());
        assert_eq!(s.cookie_secure, CookieSecure::Auto);
    }

    #[test]
    fn per_queue_tenant_rates_are_read_as_jobs_per_second() {
        let mut env = base();
        env.insert(
            "BACKROOM_TENANT_JOB_RATES",
            "stock=2000, invoices=2.5,emails=0",
        );
        let s = parse(&env).expect("valid");
        assert_eq!(
            s.tenant_job_rates,
            [
                ("emails".to_string(), 0.0),
                ("invoices".to_string(), 2.5),
                ("stock".to_string(), 2000.0)
            ]
            .into()
        );
    }

    #[test]
    fn minimal_environment_gives_documented_defaults() {
        let s = parse(&base()).expect("valid");
        assert_eq!(s.bind.to_string(), "0.0.0.0:8080");
        assert_eq!(s.redis_namespace, "backroom");
        assert_eq!(s.log_format, LogFormat::Json);
        assert_eq!(s.max_body_bytes, 2 * 1024 * 1024);
        assert_eq!(s.shutdown_grace, Duration::from_secs(30));
        assert_eq!(s.queue.lease, Duration::from_secs(30));
        assert_eq!(s.queue.succeeded_retention, Duration::from_secs(24 * 3600));
        assert_eq!(s.queue.dead_retention, Duration::from_secs(7 * 24 * 3600));
        assert!(s.metrics_bind.is_none());
        assert_eq!(s.dates.past_days, 3650);
        assert_eq!(s.forecast.history_days, 1096);
        assert_eq!(s.forecast.run_gap, Duration::from_secs(60));
        assert_eq!(s.max_queued_imports, 3);
        assert_eq!(s.connections.header_timeout, Duration::from_secs(10));
        assert_eq!(s.connections.max_connections, 4096);
        assert_eq!(s.request_timeout, Duration::from_secs(60));
        assert_eq!(s.auth_failures_per_minute, 60);
        // A quarter of the default pool of 20, at least 4.
        assert_eq!(s.database_max_connections, 20);
        assert_eq!(s.tenant_requests_in_flight, 5);
        assert!(s.client_address_header.is_none());
        assert_eq!(
            s.tenant_concurrency,
            [
                ("forecasts".to_string(), 2),
                ("imports".to_string(), 1),
                ("invoices".to_string(), 4),
                ("webhooks".to_string(), 8)
            ]
            .into()
        );
        assert!(s.tenant_job_rates.is_empty());
        assert_eq!(s.webhooks.timeout, Duration::from_secs(10));
        assert!(!s.webhooks.allow_private);
        assert_eq!(s.webhooks.retry_after.len(), 8);
        assert_eq!(s.webhooks.retry_after[1], Duration::from_secs(300));
        assert_eq!(s.webhooks.disable_after, Duration::from_secs(5 * 86_400));
    }

    #[test]
    fn each_bad_setting_names_its_variable() {
        let cases: &[(&str, Option<&'static str>, &str)] = &[
            ("DATABASE_URL", None, "is not set"),
            ("DATABASE_URL", Some("mysql://x"), "scheme 'mysql'"),
            ("DATABASE_URL", Some("not a url"), "is not a URL"),
            ("REDIS_URL", None, "is not set"),
            ("REDIS_URL", Some("http://x"), "scheme 'http'"),
            ("BACKROOM_ADMIN_TOKEN", None, "is not set"),
            ("BACKROOM_ADMIN_TOKEN", Some("short"), "at least 32"),
            (
                "BACKROOM_ADMIN_TOKEN",
                Some("change-me-to-a-long-random-string"),
                "placeholder",
            ),
            (
                "BACKROOM_ADMIN_TOKEN_ENABLED",
                Some("maybe"),
                "not true or false",
            ),
            (
                "BACKROOM_COOKIE_SECURE",
                Some("yes"),
                "not auto, always or never",
            ),
            ("BACKROOM_BIND", Some("localhost"), "socket address"),
            ("BACKROOM_DB_MAX_CONNECTIONS", Some("0"), "at least 1"),
            ("BACKROOM_DB_MAX_CONNECTIONS", Some("many"), "whole number"),
            ("BACKROOM_LOG_FORMAT", Some("xml"), "not one of"),
            ("BACKROOM_REDIS_NAMESPACE", Some("a b"), "may contain only"),
            ("SMTP_URL", Some("http://mail"), "scheme 'http'"),
            ("BACKROOM_JOB_LEASE_SECS", Some("0"), "at least 1"),
            (
                "BACKROOM_RETENTION_DEAD_SECS",
                Some("a week"),
                "number of seconds",
            ),
            ("BACKROOM_METRICS_BIND", Some("9090"), "socket address"),
            ("BACKROOM_MAIL_FROM", Some("not a mailbox"), "not a mailbox"),
            ("BACKROOM_EMAILS_PER_MINUTE", Some("lots"), "whole number"),
            (
                "BACKROOM_WEBHOOK_TIMEOUT_SECS",
                Some("0"),
                "between 0.1 and 120",
            ),
            (
                "BACKROOM_WEBHOOKS_ALLOW_PRIVATE",
                Some("yes"),
                "true or false",
            ),
            (
                "BACKROOM_WEBHOOK_RETRY_SECS",
                Some("5,soon"),
                "list of seconds",
            ),
            ("BACKROOM_WEBHOOK_RETRY_SECS", Some("5,0"), "between 0.01"),
            (
                "BACKROOM_WEBHOOK_DISABLE_AFTER_DAYS",
                Some("0"),
                "between 0.001 and 365",
            ),
            (
                "BACKROOM_WEBHOOK_DISABLE_AFTER_DAYS",
                Some("a week"),
                "number of days",
            ),
            ("BACKROOM_MAX_PAST_DAYS", Some("0"), "between 1 and 36500"),
            (
                "BACKROOM_JOB_HISTORY_DAYS",
                Some("9999"),
                "between 0 (off) and 3660",
            ),
            ("BACKROOM_MAX_QUEUED_IMPORTS", Some("0"), "at least 1"),
            ("BACKROOM_HEADER_TIMEOUT_SECS", Some("0"), "at least 1"),
            (
                "BACKROOM_REQUEST_TIMEOUT_SECS",
                Some("soon"),
                "number of seconds",
            ),
            ("BACKROOM_MAX_CONNECTIONS", Some("0"), "at least 1"),
            (
                "BACKROOM_AUTH_FAILURES_PER_MINUTE",
                Some("-1"),
                "whole number",
            ),
            (
                "BACKROOM_CLIENT_ADDRESS_HEADER",
                Some("x y"),
                "not a header name",
            ),
            (
                "BACKROOM_TENANT_REQUESTS_IN_FLIGHT",
                Some("-1"),
                "whole number of requests",
            ),
            // A semaphore of more permits than tokio allows would panic at the first request.
            (
                "BACKROOM_TENANT_REQUESTS_IN_FLIGHT",
                Some("18446744073709551615"),
                "at most 100000",
            ),
            (
                "BACKROOM_TENANT_CONCURRENCY",
                Some("nope=1"),
                "is not a queue",
            ),
            (
                "BACKROOM_TENANT_CONCURRENCY",
                Some("invoices"),
                "is not queue=n",
            ),
            (
                "BACKROOM_TENANT_CONCURRENCY",
                Some("invoices=x"),
                "not a whole number",
            ),
            (
                "BACKROOM_TENANT_JOB_RATES",
                Some("stock=-1"),
                "jobs per second",
            ),
            (
                "BACKROOM_TENANT_JOB_RATES",
                Some("stock=NaN"),
                "jobs per second",
            ),
            (
                "BACKROOM_TENANT_JOB_RATES",
                Some("nope=5"),
                "is not a queue",
            ),
            (
                "BACKROOM_FORECAST_HISTORY_DAYS",
                Some("7"),
                "between 56 and 3660",
            ),
        ];
        for (var, value, expected) in cases {
            let mut env = base();
            match value {
                Some(v) => env.insert(var, v),
                None => env.remove(var),
            };
            let err = parse(&env).expect_err(&format!("{var}={value:?} must be refused"));
            assert_eq!(err.var, *var, "wrong variable blamed for {var}={value:?}");
            let line = err.to_string();
            assert!(
                line.contains(expected) && line.contains(var) && !line.contains('\n'),
                "{var}={value:?}: unexpected message {line:?}"
            );
        }
    }
}
