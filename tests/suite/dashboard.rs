//! The admin dashboard: sessions, CSRF, and a real headless Chromium driving the pages.

use crate::helpers::*;
use backroom::queue::{NewJob, QueueName};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(60);

/// Signs in over HTTP with the token; returns (cookie header value, csrf token scraped from the
/// page), after checking the cookie's flags.
async fn sign_in(app: &TestApp) -> (String, String) {
    let set_cookie = post_login(app, &[("token", ADMIN_TOKEN)]).await.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_string();
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/admin"] {
        assert!(set_cookie.contains(flag), "{set_cookie} lacks {flag}");
    }
    dashboard_session(app, &[("token", ADMIN_TOKEN)]).await
}

#[tokio::test]
async fn every_admin_page_needs_a_session_and_every_action_its_csrf_token() {
    let app = spawn_app().await;
    let client = raw_client();
    for path in [
        "/admin",
        "/admin/queues/stock",
        "/admin/tenants",
        "/admin/emails",
        "/admin/webhooks",
        "/admin/forecasts",
        "/admin/forecasts/00000000-0000-0000-0000-000000000000",
        "/admin/forecasts/00000000-0000-0000-0000-000000000000/SKU-1",
        "/admin/jobs/stock_x",
    ] {
        let r = client
            .get(format!("{}{path}", app.address))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 303, "{path} redirects to sign-in");
        assert_eq!(r.headers()["location"], "/admin/login");
    }
    let r = client
        .post(format!("{}/admin/queues/stock/pause", app.address))
        .form(&[("csrf", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "actions without a session are refused");
    let wrong = client
        .post(format!("{}/admin/login", app.address))
        .form(&[("token", "not-the-token-at-all")])
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    assert!(wrong.headers().get("set-cookie").is_none());

    let (cookie, csrf) = sign_in(&app).await;
    let post = |path: &str, form: Vec<(&str, &str)>| {
        client
            .post(format!("{}{path}", app.address))
            .header("cookie", &cookie)
            .form(&form)
            .send()
    };
    let stock = QueueName::parse("stock").unwrap();
    for (form, why) in [
        (vec![], "a forged POST without the token"),
        (vec![("csrf", "0000")], "a wrong token"),
    ] {
        let r = post("/admin/queues/stock/pause", form).await.unwrap();
        assert_eq!(r.status(), 403, "{why}");
        assert!(
            !app.queues.counts(&stock).await.unwrap().paused,
            "{why} changed nothing"
        );
    }
    let r = post("/admin/queues/stock/pause", vec![("csrf", &csrf)])
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert!(app.queues.counts(&stock).await.unwrap().paused);

    // The JSON admin API accepts the session too, with the token in a header for writes.
    let json_get = client
        .get(format!("{}/admin/v1/queues", app.address))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(json_get.status(), 200);
    let forged = client
        .post(format!("{}/admin/v1/queues/stock/resume", app.address))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
    let ok = client
        .post(format!("{}/admin/v1/queues/stock/resume", app.address))
        .header("cookie", &cookie)
        .header("x-csrf-token", &csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);

    // Behind TLS the cookie is Secure.
    let tls = client
        .post(format!("{}/admin/login", app.address))
        .header("x-forwarded-proto", "https")
        .form(&[("token", ADMIN_TOKEN)])
        .send()
        .await
        .unwrap();
    assert!(
        tls.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Secure")
    );

    // Signing out ends the session for good.
    let r = post("/admin/logout", vec![("csrf", &csrf)]).await.unwrap();
    assert_eq!(r.status(), 303);
    let after = client
        .get(format!("{}/admin", app.address))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), 303, "the old cookie no longer works");
    // Secrets never appear in the pages.
    let (cookie, _) = sign_in(&app).await;
    let page = client
        .get(format!("{}/admin/tenants", app.address))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!page.contains(ADMIN_TOKEN));
}

struct Browser {
    client: Client,
    driver: Child,
    profile: std::path::PathBuf,
}

impl Browser {
    async fn start() -> Browser {
        // Several rustls crypto providers are linked into the test binary; pick one.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver is installed (scripts/test installs chromium-driver)");
        let profile =
            std::env::temp_dir().join(format!("backroom-chrome-{}", uuid::Uuid::new_v4().simple()));
        let caps = json!({
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--disable-background-networking", "--disable-component-update",
                         "--disable-sync", "--no-first-run", "--window-size=1280,900",
                         format!("--user-data-dir={}", profile.display())]
            }
        });
        let capabilities: serde_json::Map<String, serde_json::Value> =
            caps.as_object().unwrap().clone();
        let url = format!("http://127.0.0.1:{port}");
        let client = wait_for(
            "chromedriver to accept a session",
            Duration::from_secs(30),
            || {
                let (url, capabilities) = (url.clone(), capabilities.clone());
                async move {
                    ClientBuilder::rustls()
                        .ok()?
                        .capabilities(capabilities)
                        .connect(&url)
                        .await
                        .ok()
                }
            },
        )
        .await;
        Browser {
            client,
            driver,
            profile,
        }
    }

    async fn text(&self, css: &str) -> String {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    async fn wait_text(&self, css: &str, expected: &str) {
        wait_for(&format!("{css} to read {expected:?}"), LIMIT, || async {
            let el = self.client.find(Locator::Css(css)).await.ok()?;
            (el.text().await.ok()?.trim() == expected).then_some(())
        })
        .await;
    }

    /// The element matching `css`, once the page shows it.
    async fn wait_find(&self, css: &str) -> fantoccini::elements::Element {
        wait_for(&format!("{css} to appear"), LIMIT, || async {
            self.client.find(Locator::Css(css)).await.ok()
        })
        .await
    }

    /// Submits the form holding `button`, accepting its confirmation dialog.
    async fn confirm_click(&self, button: &str) {
        self.client
            .find(Locator::Css(button))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        self.client
            .accept_alert()
            .await
            .expect("the action asks for confirmation");
    }

    /// On the login page: opens the token form, types the admin token and sends it.
    async fn sign_in_with_token(&self) {
        let b = &self.client;
        b.find(Locator::Css("#use-token"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        b.find(Locator::Css("#token-form input[name=token]"))
            .await
            .unwrap()
            .send_keys(ADMIN_TOKEN)
            .await
            .unwrap();
        b.find(Locator::Css("#token-form button"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
    }

    /// On the login page: signs in as an admin user and waits for the overview.
    async fn sign_in_with_password(&self, app: &TestApp, email: &str, password: &str) {
        let b = &self.client;
        b.goto(&format!("{}/admin/login", app.address))
            .await
            .unwrap();
        for (field, value) in [("email", email), ("password", password)] {
            b.find(Locator::Css(&format!("#password-form input[name={field}]")))
                .await
                .unwrap()
                .send_keys(value)
                .await
                .unwrap();
        }
        b.find(Locator::Css("#password-form button"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        self.wait_find("tr[data-queue=stock]").await;
    }

    /// Signs in on the login page and waits for the overview.
    async fn sign_in(&self, app: &TestApp) {
        let b = &self.client;
        b.goto(&format!("{}/admin/login", app.address))
            .await
            .unwrap();
        self.sign_in_with_token().await;
        self.wait_text("tr[data-queue=stock] td[data-field=pending]", "0")
            .await;
    }

    async fn screenshot(&self, name: &str) {
        if let Ok(dir) = std::env::var("BACKROOM_SCREENSHOTS") {
            let png = self.client.screenshot().await.unwrap();
            std::fs::write(format!("{dir}/{name}.png"), png).unwrap();
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        // Chromium outlives a killed chromedriver; its processes are the ones with our profile.
        // `--` ends pkill's options: the pattern itself starts with `--`.
        let _ = Command::new("pkill")
            .args(["-f", "--"])
            .arg(format!("--user-data-dir={}", self.profile.display()))
            .status();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

#[tokio::test]
async fn an_admin_signs_in_watches_queues_live_and_repairs_a_dead_job() {
    let port = free_port();
    let app = spawn_app_with(move |s| s.smtp_url = Some(format!("smtp://127.0.0.1:{port}"))).await;
    let t = app.create_tenant("clinic").await;
    let browser = Browser::start().await;
    let b = &browser.client;

    b.goto(&format!("{}/admin", app.address)).await.unwrap();
    assert!(
        b.current_url()
            .await
            .unwrap()
            .path()
            .ends_with("/admin/login")
    );
    browser.sign_in_with_token().await;
    browser
        .wait_text("tr[data-queue=stock] td[data-field=pending]", "0")
        .await;

    // Counts change live as jobs are pushed.
    let tenant = uuid::Uuid::parse_str(&t.id).unwrap();
    let stock = QueueName::parse("stock").unwrap();
    let jobs = (0..3)
        .map(|n| NewJob::new("stock_adjustment", &json!({"n": n})).tenant(tenant))
        .collect();
    app.queues.push(&stock, jobs).await.unwrap();
    browser
        .wait_text("tr[data-queue=stock] td[data-field=pending]", "3")
        .await;
    browser.screenshot("dashboard-overview").await;

    // An email that dies (SMTP down, one attempt allowed).
    let emails = QueueName::parse("emails").unwrap();
    let accepted: serde_json::Value = app
        .post_json(
            "/v1/emails",
            Some(&t.key),
            &json!({"to": "p@example.org", "subject": "Hi", "text": "Body"}),
        )
        .await
        .json()
        .await
        .unwrap();
    let job_id = accepted["job_id"].as_str().unwrap().to_string();
    let mut conn = app.queues.redis().conn().await.unwrap();
    let _: () = redis::cmd("HSET")
        .arg(app.queues.keys(&emails).job(&job_id))
        .arg("max_attempts")
        .arg(1)
        .query_async(&mut conn)
        .await
        .unwrap();
    let workers = app.start_workers("emails");
    browser
        .wait_text("tr[data-queue=emails] td[data-field=dead]", "1")
        .await;

    // Open the dead job from the queue page and retry it once SMTP is back.
    b.goto(&format!("{}/admin/queues/emails?status=dead", app.address))
        .await
        .unwrap();
    b.find(Locator::Css(&format!("a[href='/admin/jobs/{job_id}']")))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    assert_eq!(browser.text("#job-status").await, "dead");
    assert!(b.source().await.unwrap().contains("attempt 1 failed"));
    browser.screenshot("dashboard-job").await;
    let _smtp = SmtpServer::start_on(port).await;
    browser.confirm_click("#retry").await;
    wait_for("the retried job to succeed", LIMIT, || async {
        b.refresh().await.ok()?;
        let status = b
            .find(Locator::Css("#job-status"))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        (status == "succeeded").then_some(())
    })
    .await;

    // Pause and resume the queue from its page.
    b.goto(&format!("{}/admin/queues/stock", app.address))
        .await
        .unwrap();
    browser
        .confirm_click("form[action='/admin/queues/stock/pause'] button")
        .await;
    browser.wait_text("h1 .badge", "paused").await;
    assert!(app.queues.counts(&stock).await.unwrap().paused);
    browser
        .confirm_click("form[action='/admin/queues/stock/resume'] button")
        .await;
    wait_for("the queue to resume", LIMIT, || async {
        (!app.queues.counts(&stock).await.ok()?.paused).then_some(())
    })
    .await;

    // The overview's throughput chart is an SVG with one bar per minute.
    b.goto(&format!("{}/admin/charts/throughput.svg", app.address))
        .await
        .unwrap();
    let svg = b.source().await.unwrap();
    assert_eq!(svg.matches("<rect x=").count(), 60, "60 minute bars");
    workers.stop().await;
    let _ = b.clone().close().await;
}

#[tokio::test]
async fn an_admin_opens_a_forecast_run_and_its_sku_chart() {
    let app = spawn_app().await;
    let t = app.create_tenant("outdoor").await;
    let yesterday = chrono::Utc::now().date_naive() - chrono::Duration::days(1);
    let skus = backroom::forecast::demo::generate(12, 200, yesterday, 3);
    backroom::forecast::demo::load(&app.db, t.id.parse().unwrap(), &skus)
        .await
        .unwrap();
    let run_id = backroom::jobs::forecasts::create_run(
        &app.db,
        t.id.parse().unwrap(),
        backroom::jobs::forecasts::Trigger::Cli,
        14,
        None,
        app.settings.queue.clock.today(),
    )
    .await
    .unwrap();
    backroom::jobs::forecasts::run_in_process(
        &app.db,
        &Default::default(),
        t.id.parse().unwrap(),
        run_id,
        |_, _| {},
    )
    .await
    .unwrap();

    let browser = Browser::start().await;
    let b = &browser.client;
    browser.sign_in(&app).await;
    b.goto(&format!("{}/admin/forecasts", app.address))
        .await
        .unwrap();
    let row = browser.text("table tbody tr").await;
    assert!(
        row.contains("outdoor") && row.contains("succeeded") && row.contains("12/12"),
        "{row}"
    );
    b.find(Locator::Css("table tbody tr a"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    // The run page: the model mix chart and every SKU.
    browser.wait_find("#model-mix svg .series rect").await;
    assert_eq!(
        b.find_all(Locator::Css("#skus tbody tr"))
            .await
            .unwrap()
            .len(),
        12
    );
    b.find(Locator::Css("#skus tbody tr a"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    // The SKU page: history, forecast and band in one SVG.
    let forecast = browser
        .wait_find("#forecast-chart svg polyline.series.forecast")
        .await;
    let points = forecast.attr("points").await.unwrap().unwrap();
    assert_eq!(points.split(' ').count(), 14, "one vertex per forecast day");
    let history = b
        .find(Locator::Css("#forecast-chart svg polyline.series.history"))
        .await
        .unwrap();
    assert_eq!(
        history
            .attr("points")
            .await
            .unwrap()
            .unwrap()
            .split(' ')
            .count(),
        90
    );
    b.find(Locator::Css("#forecast-chart svg polygon.band"))
        .await
        .unwrap();
    browser.screenshot("dashboard-forecast").await;
    // Ending the session quits Chromium; killing only chromedriver would orphan it.
    let _ = browser.client.clone().close().await;
}

#[tokio::test]
async fn an_admin_limits_and_pauses_one_tenant_from_its_page() {
    let app = spawn_app().await;
    app.create_tenant("clinic").await;
    app.create_tenant("shop").await;
    let browser = Browser::start().await;
    let b = &browser.client;
    browser.sign_in(&app).await;
    b.goto(&format!("{}/admin/tenants", app.address))
        .await
        .unwrap();
    browser
        .wait_find("a[href='/admin/tenants/clinic']")
        .await
        .click()
        .await
        .unwrap();
    // No worker has copied BACKROOM_TENANT_CONCURRENCY's defaults into Redis yet.
    browser
        .wait_text("tr[data-queue=invoices] td.limit", "none (default)")
        .await;

    // Two invoices at once for this tenant.
    let limit = browser
        .wait_find("tr[data-queue=invoices] input[name=limit]")
        .await;
    limit.clear().await.unwrap();
    limit.send_keys("2").await.unwrap();
    browser
        .confirm_click("tr[data-queue=invoices] button")
        .await;
    browser
        .wait_text(
            ".flash",
            "clinic on invoices: at most 2 at once, the queue's default rate, running.",
        )
        .await;
    browser
        .wait_text("tr[data-queue=invoices] td.limit", "2")
        .await;

    // And at most 5 of its emails started a second.
    let rate = browser
        .wait_find("tr[data-queue=emails] input[name=rate]")
        .await;
    rate.send_keys("5").await.unwrap();
    browser.confirm_click("tr[data-queue=emails] button").await;
    browser
        .wait_text(
            ".flash",
            "clinic on emails: the queue's default limit, at most 5 started a second, running.",
        )
        .await;
    browser
        .wait_text("tr[data-queue=emails] td.rate", "5")
        .await;

    // Pause its stock adjustments.
    b.find(Locator::Css("tr[data-queue=stock] input[name=paused]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser.confirm_click("tr[data-queue=stock] button").await;
    browser
        .wait_text(
            ".flash",
            "clinic on stock: the queue's default limit, the queue's default rate, paused.",
        )
        .await;
    browser.screenshot("dashboard-tenant").await;

    // A bad limit changes nothing and says why.
    let limit = browser
        .wait_find("tr[data-queue=emails] input[name=limit]")
        .await;
    b.execute(
        "arguments[0].removeAttribute('max'); arguments[0].removeAttribute('type');",
        vec![serde_json::to_value(&limit).unwrap()],
    )
    .await
    .unwrap();
    limit.send_keys("1000001").await.unwrap();
    browser.confirm_click("tr[data-queue=emails] button").await;
    browser
        .wait_text(
            ".flash",
            "Not changed: the limit must be a whole number from 0 to 100000.",
        )
        .await;

    // The engine holds the new rules, for this tenant only.
    let rules = |slug: &'static str| {
        let app = &app;
        async move {
            let v: serde_json::Value = app
                .get(
                    &format!("/admin/v1/tenants/{slug}/queues"),
                    Some(ADMIN_TOKEN),
                )
                .await
                .json()
                .await
                .unwrap();
            v.as_array()
                .unwrap()
                .iter()
                .map(|q| {
                    (
                        q["queue"].as_str().unwrap().to_string(),
                        (
                            q["limit"].as_u64(),
                            q["rate"].as_f64(),
                            q["paused"].as_bool().unwrap(),
                        ),
                    )
                })
                .collect::<std::collections::HashMap<_, _>>()
        }
    };
    let clinic = rules("clinic").await;
    assert_eq!(clinic["invoices"], (Some(2), None, false));
    assert_eq!(clinic["stock"], (None, None, true));
    assert_eq!(clinic["emails"], (None, Some(5.0), false));
    let shop = rules("shop").await;
    assert_eq!(shop["invoices"], (None, None, false));
    assert_eq!(shop["stock"], (None, None, false));
    assert_eq!(shop["emails"], (None, None, false));
}

/// A tenant's endpoint fails; the admin finds it with the "failing endpoints only" filter (the
/// other tenant's healthy endpoint is not listed), and once the receiver is back, replays the
/// failed delivery from the page: it is delivered under its event's id.
#[tokio::test]
async fn an_admin_finds_a_failing_webhook_endpoint_and_replays_its_delivery() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let app = spawn_app_with(|s| {
        s.webhooks.allow_private = true;
        s.webhooks.retry_after = vec![Duration::from_millis(100)];
        s.webhooks.timeout = Duration::from_secs(1);
    })
    .await;
    let up = Arc::new(AtomicBool::new(false));
    let answers = up.clone();
    let receiver = axum::Router::new().route(
        "/hook",
        axum::routing::post(move || {
            let up = answers.clone();
            async move {
                if up.load(Ordering::SeqCst) {
                    axum::http::StatusCode::OK
                } else {
                    axum::http::StatusCode::SERVICE_UNAVAILABLE
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, receiver).await.unwrap() });

    let erp = app.create_tenant("erp").await;
    let calm = app.create_tenant("calm").await;
    for (t, types) in [(&erp, ["stock.adjusted"]), (&calm, ["invoice.ready"])] {
        let r = app
            .post_json(
                "/v1/webhooks/endpoints",
                Some(&t.key),
                &json!({"url": url, "event_types": types}),
            )
            .await;
        assert_eq!(r.status(), 201);
    }
    let _workers = app.start_workers("stock,webhooks");
    let r = app
        .send_json(
            reqwest::Method::PUT,
            "/v1/products/SKU-1",
            Some(&erp.key),
            &json!({"name": "Article", "unit_price": "1.00", "currency": "EUR",
                    "reorder_point": 0, "reorder_quantity": 1, "lead_time_days": 1}),
        )
        .await;
    assert!(r.status().is_success());
    let r = app
        .post_json(
            "/v1/stock-adjustments",
            Some(&erp.key),
            &json!({"sku": "SKU-1", "delta": 2, "reason": "receipt", "idempotency_key": "r-1"}),
        )
        .await;
    assert_eq!(r.status(), 202);
    let delivery_status = || async {
        let page: serde_json::Value = app
            .get("/v1/webhooks/deliveries", Some(&erp.key))
            .await
            .json()
            .await
            .unwrap();
        page["items"][0]["status"].as_str().map(str::to_string)
    };
    wait_for("the delivery to fail", LIMIT, || async {
        (delivery_status().await.as_deref() == Some("failed")).then_some(())
    })
    .await;

    let browser = Browser::start().await;
    let b = &browser.client;
    browser.sign_in(&app).await;
    b.goto(&format!("{}/admin", app.address)).await.unwrap();
    browser
        .wait_find("a[href='/admin/webhooks']")
        .await
        .click()
        .await
        .unwrap();
    browser
        .wait_find("input[name=failing]")
        .await
        .click()
        .await
        .unwrap();
    b.find(Locator::Css("form.filters button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser
        .wait_text("tr[data-tenant=erp] td.state", "failing")
        .await;
    assert!(
        b.find(Locator::Css("tr[data-tenant=calm]")).await.is_err(),
        "a healthy endpoint is not listed as failing"
    );
    browser
        .wait_text("#deliveries tr[data-delivery] td.status", "failed")
        .await;
    browser.screenshot("dashboard-webhooks").await;

    up.store(true, Ordering::SeqCst);
    browser.confirm_click("#deliveries button.replay").await;
    browser.wait_text(".flash", "Delivery queued again.").await;
    wait_for("the replayed delivery to arrive", LIMIT, || async {
        (delivery_status().await.as_deref() == Some("delivered")).then_some(())
    })
    .await;
    // Healthy again, it has left the failing filter; the tenant's own view shows it delivered.
    b.goto(&format!("{}/admin/webhooks?tenant=erp", app.address))
        .await
        .unwrap();
    browser
        .wait_text("#deliveries tr[data-delivery] td.status", "delivered")
        .await;
    browser
        .wait_text("tr[data-tenant=erp] td.state", "healthy")
        .await;
}

#[tokio::test]
async fn an_operator_retries_a_job_the_audit_page_names_them_and_a_viewer_is_refused() {
    let app = spawn_app().await;
    let t = app.create_tenant("clinic").await;
    let operator = app.create_admin_user("otto@example.com", "operator").await;
    let viewer = app.create_admin_user("vera@example.com", "viewer").await;
    let tenant = uuid::Uuid::parse_str(&t.id).unwrap();
    let mut ids = vec![];
    for _ in 0..2 {
        ids.push(app.cancelled_job(tenant).await);
    }
    let browser = Browser::start().await;
    let b = &browser.client;

    browser
        .sign_in_with_password(&app, "otto@example.com", &operator)
        .await;
    b.goto(&format!("{}/admin/jobs/{}", app.address, ids[0]))
        .await
        .unwrap();
    browser.confirm_click("#retry").await;
    browser.wait_text("#job-status", "queued").await;
    b.goto(&format!("{}/admin/audit", app.address))
        .await
        .unwrap();
    browser
        .wait_text(
            "tr[data-action='job.retry'] td.actor",
            "user:otto@example.com",
        )
        .await;
    assert!(b.source().await.unwrap().contains(&ids[0]));
    browser.screenshot("dashboard-audit").await;
    b.find(Locator::Css("form[action='/admin/logout'] button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();

    // A viewer sees the same page, but the server refuses the retry.
    browser
        .sign_in_with_password(&app, "vera@example.com", &viewer)
        .await;
    b.goto(&format!("{}/admin/jobs/{}", app.address, ids[1]))
        .await
        .unwrap();
    browser.confirm_click("#retry").await;
    wait_for("the refusal", LIMIT, || async {
        let source = b.source().await.ok()?;
        source.contains("needs the operator role").then_some(())
    })
    .await;
    let job = app.queues.get(&ids[1]).await.unwrap().unwrap();
    assert_ne!(job.status.as_str(), "queued", "the viewer changed nothing");
    assert_eq!(job.last_error.as_deref(), Some("cancelled for the test"));
    let _ = b.clone().close().await;
}

#[tokio::test]
async fn support_finds_by_order_number_a_job_that_died_six_days_ago() {
    use backroom::history::{self, Partitions};
    use backroom::queue::{FinishedJob, JobStatus};
    let app = spawn_app().await;
    let t = app.create_tenant("clinic").await;
    let died = chrono::Utc::now() - chrono::TimeDelta::days(6);
    let job = FinishedJob {
        id: "invoices_0123456789abcdef".into(),
        queue: "invoices".into(),
        kind: "render_invoice".into(),
        tenant: Some(uuid::Uuid::parse_str(&t.id).unwrap()),
        status: JobStatus::Dead,
        attempts: 6,
        max_attempts: 6,
        payload: json!({"invoice_id": uuid::Uuid::new_v4(), "order_number": "ORD-2026-000123"})
            .to_string(),
        result: None,
        last_error: Some("the font directory is unreadable".into()),
        errors: "[]".into(),
        idempotency_key: None,
        group: None,
        created_at: died - chrono::TimeDelta::minutes(30),
        started_at: Some(died - chrono::TimeDelta::seconds(2)),
        finished_at: died,
    };
    history::store(&app.db, &[job], &mut Partitions::default())
        .await
        .unwrap();
    let browser = Browser::start().await;
    let b = &browser.client;
    browser.sign_in(&app).await;
    b.find(Locator::Css("nav a[href='/admin/search']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    b.find(Locator::Css("#search-form input[name=q]"))
        .await
        .unwrap()
        .send_keys("args.order_number:ORD-2026-000123 status:dead")
        .await
        .unwrap();
    b.find(Locator::Css("#search-form button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let row = browser
        .wait_find("tr[data-job='invoices_0123456789abcdef']")
        .await;
    let text = row.text().await.unwrap();
    assert!(text.contains("clinic") && text.contains("dead"), "{text}");
    assert!(text.contains("the font directory is unreadable"), "{text}");
    browser.screenshot("dashboard-search").await;
    let _ = b.clone().close().await;
}
