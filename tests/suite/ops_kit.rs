//! The operations kit in `ops/`, checked with the real tools: the alert rules with `promtool`
//! (syntax and unit tests), the systemd units with `systemd-analyze verify`, and the Grafana
//! dashboard's queries through a real Prometheus (Debian's `prometheus`) scraping a running
//! `serve` and `work`.

use crate::helpers::*;
use serde_json::{Value, json};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const OPS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/ops");
const LIMIT: Duration = Duration::from_secs(90);

fn run(program: &str, args: &[&str], dir: &std::path::Path) -> (bool, String) {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("{program} runs (scripts/test installs it): {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn the_alert_rules_pass_promtool_check_and_their_unit_tests() {
    let dir = std::path::Path::new(OPS).join("prometheus");
    let (ok, out) = run("promtool", &["check", "rules", "alerts.yml"], &dir);
    assert!(ok, "promtool check rules: {out}");
    assert!(out.contains("SUCCESS: 6 rules found"), "{out}");
    let (ok, out) = run("promtool", &["test", "rules", "alerts_test.yml"], &dir);
    assert!(ok, "promtool test rules: {out}");
}

/// Every unit verifies without a word from systemd (a misspelt key or value is only a warning,
/// so the output must be empty too). The binary path is pointed at one that exists here.
#[test]
fn the_systemd_units_verify_cleanly() {
    let dir = tempfile_dir("units");
    let binary = env!("CARGO_BIN_EXE_backroom");
    let mut names = vec![];
    for entry in std::fs::read_dir(std::path::Path::new(OPS).join("systemd")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if !name.ends_with(".service") {
            continue;
        }
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("/usr/local/bin/backroom", binary);
        // A template is verified through an instance of it.
        let name = name.replace("@.service", "@stock.service");
        std::fs::write(dir.join(&name), text).unwrap();
        names.push(name);
    }
    assert_eq!(names.len(), 3, "serve, work@ and schedule: {names:?}");
    let args: Vec<&str> = std::iter::once("verify")
        .chain(names.iter().map(String::as_str))
        .collect();
    let (ok, out) = run("systemd-analyze", &args, &dir);
    assert!(ok && out.trim().is_empty(), "systemd-analyze verify: {out}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempfile_dir(what: &str) -> std::path::PathBuf {
    let dir =
        std::env::temp_dir().join(format!("backroom-{what}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A Prometheus server on a free port, scraping `targets` every second with the shipped alert
/// rules loaded. Killed on drop.
struct Prometheus {
    child: Child,
    base: String,
    dir: std::path::PathBuf,
}

impl Prometheus {
    async fn start(targets: &[String]) -> Self {
        let dir = tempfile_dir("prometheus");
        let rules = std::path::Path::new(OPS).join("prometheus/alerts.yml");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: backroom\n    static_configs:\n      - targets: [{}]\n",
            rules.display(),
            targets
                .iter()
                .map(|t| format!("'{t}'"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus runs (scripts/test installs Debian's prometheus)");
        let base = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        wait_for("Prometheus to be ready", LIMIT, || {
            let ready = client.get(format!("{base}/-/ready")).send();
            async move { ready.await.ok().filter(|r| r.status().is_success()) }
        })
        .await;
        Prometheus { child, base, dir }
    }

    /// The result vector of an instant query.
    async fn query(&self, expr: &str) -> Vec<Value> {
        let body: Value = reqwest::Client::new()
            .get(format!("{}/api/v1/query", self.base))
            .query(&[("query", expr)])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(body["status"], "success", "{expr}: {body}");
        body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Every query of the Grafana dashboard, with its variables set as Grafana would ("All" queues,
/// a one-minute rate window).
fn dashboard_queries() -> Vec<(String, String)> {
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(std::path::Path::new(OPS).join("grafana/backroom.json")).unwrap(),
    )
    .expect("the dashboard is JSON");
    let mut queries = vec![];
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"]
                .as_str()
                .unwrap()
                .replace("$queue", ".*")
                .replace("$__rate_interval", "1m");
            queries.push((panel["title"].as_str().unwrap().to_string(), expr));
        }
    }
    queries
}

/// A real Prometheus scrapes a `serve` and a `work` process while a tenant's stock adjustments,
/// an email the SMTP server refuses, and a webhook to a closed port go through; every query of
/// the dashboard then answers with data, and the alert rules are loaded and evaluate cleanly.
#[tokio::test]
async fn prometheus_scraping_serve_and_work_answers_every_dashboard_query() {
    let smtp = SmtpServer::start().await;
    let app = spawn_app_with(|s| s.webhooks.allow_private = true).await;
    let (serve_metrics, work_metrics) = (free_port(), free_port());
    let serve_bind = format!("127.0.0.1:{serve_metrics}");
    let _serve = ServeProcess::spawn(&app, &[("BACKROOM_METRICS_BIND", &serve_bind)], None).await;
    let _work = WorkerProcess::spawn(
        &app,
        "stock,emails,webhooks",
        &[
            ("BACKROOM_METRICS_BIND", format!("127.0.0.1:{work_metrics}")),
            ("SMTP_URL", smtp.url()),
            (
                "BACKROOM_MAIL_FROM",
                "Backroom <noreply@backroom.test>".into(),
            ),
            ("BACKROOM_WEBHOOKS_ALLOW_PRIVATE", "true".into()),
        ],
    );
    let prometheus = Prometheus::start(&[
        format!("127.0.0.1:{serve_metrics}"),
        format!("127.0.0.1:{work_metrics}"),
    ])
    .await;

    let t = app.create_tenant("observed").await;
    let closed = free_port();
    let r = app
        .post_json(
            "/v1/webhooks/endpoints",
            Some(&t.key),
            &json!({"url": format!("http://127.0.0.1:{closed}/hook")}),
        )
        .await;
    assert_eq!(r.status(), 201, "{:?}", r.text().await);
    put_product(&app, &t.key, "WIDGET").await;
    // A second tenant whose jobs all succeed: the first one's failures are not its series.
    let quiet = app.create_tenant("quiet").await;
    put_product(&app, &quiet.key, "WIDGET").await;
    // Traffic for a few scrapes, so rates and percentiles have two points with data between.
    for round in 0..4 {
        for (n, key) in (0..5).flat_map(|n| [(n, &t.key), (n, &quiet.key)]) {
            let r = app
                .post_json(
                    "/v1/stock-adjustments",
                    Some(key),
                    &json!({"sku": "WIDGET", "delta": 1, "reason": "receipt",
                            "idempotency_key": format!("r{round}-{n}")}),
                )
                .await;
            assert!(r.status().is_success(), "{}", r.status());
        }
        let r = app
            .post_json(
                "/v1/emails",
                Some(&t.key),
                &json!({"to": format!("reject-{round}@example.org"), "subject": "Refused",
                        "text": "The server refuses this recipient."}),
            )
            .await;
        assert_eq!(r.status(), 202);
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }

    for (panel, expr) in dashboard_queries() {
        let prometheus = &prometheus;
        let result = wait_for(&format!("data for panel '{panel}': {expr}"), LIMIT, || {
            let expr = expr.clone();
            async move {
                let result = prometheus.query(&expr).await;
                // A percentile over no observations is NaN: that is no answer either.
                let has_number = result.iter().any(|series| {
                    series["value"][1]
                        .as_str()
                        .and_then(|v| v.parse::<f64>().ok())
                        .is_some_and(f64::is_finite)
                });
                has_number.then_some(result)
            }
        })
        .await;
        assert!(!result.is_empty(), "{panel}");
    }
    let tenant_failures = prometheus
        .query("sum by (tenant) (backroom_tenant_jobs_failed_total)")
        .await;
    assert!(
        tenant_failures
            .iter()
            .any(|series| series["metric"]["tenant"] == t.id.as_str()),
        "the refused emails are counted for their tenant: {tenant_failures:?}"
    );
    assert!(
        tenant_failures
            .iter()
            .all(|series| series["metric"]["tenant"] != quiet.id.as_str()),
        "a tenant without failures has no failure series: {tenant_failures:?}"
    );

    let rules: Value = reqwest::get(format!("{}/api/v1/rules", prometheus.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let loaded: Vec<&Value> = rules["data"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .collect();
    assert_eq!(loaded.len(), 6, "{rules}");
    for rule in loaded {
        assert_eq!(rule["health"], "ok", "{rule}");
    }
}

/// `backroom dev` (what `scripts/demo` runs) prints a banner a newcomer can act on, and its first
/// traffic fills every dashboard page within a minute or two: emails (one refused), a dead job to
/// retry, a failing webhook endpoint, a finished forecast run, the demo tenant.
#[tokio::test]
async fn the_demo_prints_its_story_and_fills_every_dashboard_page() {
    let smtp = SmtpServer::start().await;
    let app = spawn_app().await;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let out = tempfile_dir("demo").join("banner.txt");
    let started = std::time::Instant::now();
    // Killed however the test ends (a failed wait would otherwise leave the demo running).
    struct Demo(std::process::Child);
    impl Drop for Demo {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _demo = Demo(
        Command::new(env!("CARGO_BIN_EXE_backroom"))
            .arg("dev")
            .envs(app.child_env())
            .env("BACKROOM_BIND", format!("127.0.0.1:{port}"))
            .env("SMTP_URL", smtp.url())
            .env("BACKROOM_DEMO_MAIL_DIR", &smtp.dir)
            .stdout(Stdio::from(std::fs::File::create(&out).unwrap()))
            .stderr(Stdio::null())
            .spawn()
            .expect("backroom dev starts"),
    );
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let cookie = wait_for("the demo to answer a sign-in", LIMIT, || {
        let login = client
            .post(format!("{base}/admin/login"))
            .form(&[("token", ADMIN_TOKEN)])
            .send();
        async move {
            let r = login.await.ok()?;
            let cookie = r.headers().get("set-cookie")?.to_str().ok()?;
            Some(cookie.split(';').next()?.to_string())
        }
    })
    .await;

    let banner = std::fs::read_to_string(&out).unwrap();
    // The owner the banner names signs in with the password it shows.
    let (email, password) = banner
        .lines()
        .find_map(|l| l.trim().strip_prefix("sign in as"))
        .and_then(|rest| rest.trim().split_once(" / "))
        .map(|(e, p)| {
            (
                e.to_string(),
                p.split_whitespace().next().unwrap().to_string(),
            )
        })
        .expect("the banner names a user to sign in as");
    let signed_in = client
        .post(format!("{base}/admin/login"))
        .form(&[("email", email.as_str()), ("password", password.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(signed_in.status(), 303, "{email} signs in");
    for expected in [
        "/admin",
        "admin token    ",
        "API key bk_",
        "/v1/stock-adjustments",
        "/v1/orders",
        "/pdf",
        "/forecast",
        smtp.dir.to_str().unwrap(),
    ] {
        assert!(
            banner.contains(expected),
            "the banner lacks {expected}: {banner}"
        );
    }
    assert_eq!(banner.matches("curl ").count(), 4, "{banner}");

    for (page, marker) in [
        ("/admin", "stock"),
        ("/admin/queues/stock?status=succeeded", "stock_adjustment"),
        ("/admin/tenants", "Demo Outdoor Supply"),
        ("/admin/emails", "reject-demo@example.com"),
        ("/admin/queues/emails?status=dead", "requested_email"),
        ("/admin/queues/imports?status=failed", "sales_import"),
        ("/admin/webhooks", "hooks.example.invalid"),
        ("/admin/forecasts", "succeeded"),
    ] {
        let (client, cookie, base) = (&client, &cookie, &base);
        // The README promises every page something to show within a minute of the start.
        let left = Duration::from_secs(60).saturating_sub(started.elapsed());
        wait_for(&format!("{page} to show {marker}"), left, || async move {
            let r = client
                .get(format!("{base}{page}"))
                .header("cookie", cookie)
                .send()
                .await
                .ok()?;
            let text = r.text().await.ok()?;
            text.contains(marker).then_some(())
        })
        .await;
    }
}
