//! Operators: named admin users with roles enforced by the server, sessions bound to their
//! credentials, throttled sign-in, the audit log of every admin change, and the dashboard's
//! security headers.

use crate::helpers::*;
use crate::support::app::InProcessApp;
use backroom::queue::QueueName;
use reqwest::Method;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use uuid::Uuid;

/// A signed-in dashboard user: the cookie and the page's CSRF token.
struct SignedIn {
    cookie: String,
    csrf: String,
}

async fn sign_in(app: &TestApp, email: &str, password: &str) -> SignedIn {
    let (cookie, csrf) = dashboard_session(app, &[("email", email), ("password", password)]).await;
    SignedIn { cookie, csrf }
}

impl SignedIn {
    /// A JSON admin API call made with the session (the CSRF token in its header).
    async fn api(&self, app: &TestApp, method: Method, path: &str, body: Option<Value>) -> u16 {
        let mut r = raw_client()
            .request(method, format!("{}{path}", app.address))
            .header("cookie", &self.cookie)
            .header("x-csrf-token", &self.csrf);
        if let Some(body) = body {
            r = r.json(&body);
        }
        r.send().await.unwrap().status().as_u16()
    }

    /// A dashboard form POST.
    async fn form(&self, app: &TestApp, path: &str, fields: &[(&str, &str)]) -> u16 {
        let mut form = vec![("csrf", self.csrf.as_str())];
        form.extend_from_slice(fields);
        raw_client()
            .post(format!("{}{path}", app.address))
            .header("cookie", &self.cookie)
            .form(&form)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    /// Whether the session still opens the overview (else it is sent to sign in).
    async fn is_live(&self, app: &TestApp) -> bool {
        let r = raw_client()
            .get(format!("{}/admin", app.address))
            .header("cookie", &self.cookie)
            .send()
            .await
            .unwrap();
        match r.status().as_u16() {
            200 => true,
            303 => false,
            other => panic!("unexpected {other}"),
        }
    }
}

#[tokio::test]
async fn a_viewer_reads_an_operator_repairs_and_only_an_owner_manages_tenants_keys_and_users() {
    let app = spawn_app().await;
    let t = app.create_tenant("acme").await;
    let viewer = app.create_admin_user("vera@example.com", "viewer").await;
    let operator = app.create_admin_user("otto@example.com", "operator").await;
    let owner = app.create_admin_user("olga@example.com", "owner").await;
    let viewer = sign_in(&app, "vera@example.com", &viewer).await;
    let operator = sign_in(&app, "Otto@Example.com", &operator).await;
    let owner = sign_in(&app, "olga@example.com", &owner).await;
    let job = app.cancelled_job(Uuid::parse_str(&t.id).unwrap()).await;

    // Every read is open to every role.
    for who in [&viewer, &operator, &owner] {
        for path in ["/admin/v1/queues", "/admin/v1/tenants", "/admin/v1/audit"] {
            assert_eq!(who.api(&app, Method::GET, path, None).await, 200, "{path}");
        }
    }
    // Every change is refused to a viewer, on the JSON API and on the dashboard's forms alike.
    let changes: [(Method, String, Option<Value>); 7] = [
        (Method::POST, format!("/admin/v1/jobs/{job}/retry"), None),
        (Method::DELETE, format!("/admin/v1/jobs/{job}"), None),
        (Method::POST, "/admin/v1/queues/emails/pause".into(), None),
        (
            Method::POST,
            "/admin/v1/queues/emails/retry-dead".into(),
            None,
        ),
        (
            Method::PATCH,
            "/admin/v1/tenants/acme".into(),
            Some(json!({"name": "ACME"})),
        ),
        (Method::POST, "/admin/v1/tenants/acme/api-keys".into(), None),
        (
            Method::POST,
            "/admin/v1/users".into(),
            Some(json!({"email": "x@example.com", "role": "owner"})),
        ),
    ];
    for (method, path, body) in &changes {
        let status = viewer.api(&app, method.clone(), path, body.clone()).await;
        assert_eq!(status, 403, "a viewer's {method} {path}");
    }
    for path in [
        format!("/admin/jobs/{job}/retry"),
        "/admin/queues/emails/pause".to_string(),
        "/admin/queues/emails/discard-dead".to_string(),
        "/admin/tenants/acme/rotate-key".to_string(),
        "/admin/tenants/acme/queues/emails".to_string(),
    ] {
        assert_eq!(
            viewer.form(&app, &path, &[]).await,
            403,
            "a viewer's {path}"
        );
    }
    let key_count = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM api_keys")
            .fetch_one(&app.db)
            .await
            .unwrap()
    };
    assert_eq!(key_count().await, 1, "nothing was changed");
    assert!(
        !app.queues
            .counts(&QueueName::parse("emails").unwrap())
            .await
            .unwrap()
            .paused
    );

    // An operator repairs queues, but cannot touch tenants, keys or users.
    assert_eq!(
        operator
            .api(&app, Method::POST, "/admin/v1/queues/emails/pause", None)
            .await,
        200
    );
    assert_eq!(
        operator
            .form(&app, "/admin/queues/emails/resume", &[])
            .await,
        303
    );
    assert_eq!(
        operator
            .form(&app, &format!("/admin/jobs/{job}/retry"), &[])
            .await,
        303
    );
    for (method, path, body) in &changes[4..] {
        let status = operator.api(&app, method.clone(), path, body.clone()).await;
        assert_eq!(status, 403, "an operator's {method} {path}");
    }
    assert_eq!(
        operator
            .form(&app, "/admin/tenants/acme/rotate-key", &[])
            .await,
        403
    );
    assert_eq!(key_count().await, 1);

    // An owner does all of it.
    for (method, path, body) in &changes[4..] {
        let status = owner.api(&app, method.clone(), path, body.clone()).await;
        assert!(
            (200..300).contains(&status),
            "an owner's {method} {path}: {status}"
        );
    }
    assert_eq!(key_count().await, 2);
}

#[tokio::test]
async fn every_admin_change_is_audited_once_with_who_what_and_from_where() {
    let app = spawn_app().await;
    let client = raw_client();
    // Through the JSON API with the token, each with a request id to find it by.
    let token_call = |method: Method, path: &str, body: Option<Value>, request_id: &str| {
        let mut r = client
            .request(method, format!("{}{path}", app.address))
            .bearer_auth(ADMIN_TOKEN)
            .header("x-request-id", request_id);
        if let Some(body) = body {
            r = r.json(&body);
        }
        async move { r.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(
        token_call(
            Method::POST,
            "/admin/v1/tenants",
            Some(json!({"slug": "acme", "name": "ACME"})),
            "req-tenant-create",
        )
        .await,
        201
    );
    let tenant: Uuid = sqlx::query_scalar("SELECT id FROM tenants WHERE slug = 'acme'")
        .fetch_one(&app.db)
        .await
        .unwrap();
    let tenant_id = tenant.to_string();
    assert_eq!(
        token_call(
            Method::PATCH,
            "/admin/v1/tenants/acme",
            Some(json!({"name": "ACME Ltd", "queue_limits": {"invoices": 2}})),
            "req-tenant-update",
        )
        .await,
        200
    );
    assert_eq!(
        token_call(
            Method::POST,
            "/admin/v1/tenants/acme/api-keys",
            None,
            "req-key"
        )
        .await,
        201
    );
    let key: Uuid = sqlx::query_scalar("SELECT id FROM api_keys ORDER BY id DESC LIMIT 1")
        .fetch_one(&app.db)
        .await
        .unwrap();
    for request_id in ["req-revoke-1", "req-revoke-2"] {
        let path = format!("/admin/v1/api-keys/{key}");
        assert_eq!(
            token_call(Method::DELETE, &path, None, request_id).await,
            204
        );
    }
    assert_eq!(
        token_call(
            Method::POST,
            "/admin/v1/queues/emails/pause",
            None,
            "req-pause"
        )
        .await,
        200
    );
    let job = app
        .cancelled_job(Uuid::parse_str(&tenant_id).unwrap())
        .await;
    let status_before = app.queues.get(&job).await.unwrap().unwrap().status;
    let path = format!("/admin/v1/jobs/{job}/retry");
    assert_eq!(
        token_call(Method::POST, &path, None, "req-retry").await,
        200
    );
    // A refused change (a queued job cannot be retried) writes nothing.
    assert_eq!(
        token_call(Method::POST, &path, None, "req-refused").await,
        409
    );
    let path = format!("/admin/v1/jobs/{job}");
    assert_eq!(
        token_call(Method::DELETE, &path, None, "req-discard").await,
        204
    );

    // Through the dashboard as a user.
    let password = app.create_admin_user("olga@example.com", "owner").await;
    let olga = sign_in(&app, "olga@example.com", &password).await;
    assert_eq!(
        olga.form(&app, "/admin/queues/emails/resume", &[]).await,
        303
    );
    assert_eq!(
        olga.form(
            &app,
            "/admin/tenants/acme/queues/emails",
            &[("limit", "3"), ("paused", "on")]
        )
        .await,
        303
    );

    let all: Value = app
        .get("/admin/v1/audit?limit=500", Some(ADMIN_TOKEN))
        .await
        .json()
        .await
        .unwrap();
    let rows = all["items"].as_array().unwrap();
    let mut actions: BTreeMap<&str, usize> = BTreeMap::new();
    for row in rows {
        *actions.entry(row["action"].as_str().unwrap()).or_default() += 1;
    }
    let expected = BTreeMap::from([
        ("tenant.create", 1),
        ("tenant.update", 1),
        ("api_key.create", 1),
        ("api_key.revoke", 1),
        ("queue.pause", 1),
        ("job.retry", 1),
        ("job.discard", 1),
        ("user.create", 1),
        ("queue.resume", 1),
        ("tenant.queue_rules", 1),
    ]);
    assert_eq!(actions, expected, "each change exactly once: {rows:#?}");
    let find = |action: &str| rows.iter().find(|r| r["action"] == action).unwrap();

    let update = find("tenant.update");
    assert_eq!(update["actor"], "token");
    assert_eq!(update["tenant"], "acme");
    assert_eq!(update["request_id"], "req-tenant-update");
    assert_eq!(update["client_address"], "127.0.0.1");
    assert_eq!(update["before"]["tenant"]["name"], "ACME");
    assert_eq!(update["after"]["tenant"]["name"], "ACME Ltd");
    assert_eq!(
        update["after"]["rules"]["queue_limits"],
        json!({"invoices": 2})
    );
    assert_eq!(find("api_key.revoke")["request_id"], "req-revoke-1");
    let retry = find("job.retry");
    assert_eq!(retry["target"], job.as_str());
    assert_eq!(retry["before"]["status"], status_before.as_str());
    assert_eq!(retry["tenant"], "acme");
    let rules = find("tenant.queue_rules");
    assert_eq!(rules["actor"], "user:olga@example.com");
    assert_eq!(rules["after"]["paused_queues"], json!(["emails"]));
    assert_eq!(rules["after"]["queue_limits"]["emails"], 3);
    assert_eq!(find("queue.resume")["actor"], "user:olga@example.com");
    assert_eq!(find("user.create")["target"], "olga@example.com");

    // Filters and stable pages.
    let filtered: Value = app
        .get(
            "/admin/v1/audit?actor=user:olga@example.com",
            Some(ADMIN_TOKEN),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(filtered["items"].as_array().unwrap().len(), 2);
    let filtered: Value = app
        .get(
            "/admin/v1/audit?action=job.retry&tenant=acme",
            Some(ADMIN_TOKEN),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(filtered["items"].as_array().unwrap().len(), 1);
    let mut seen = vec![];
    let mut cursor = String::new();
    loop {
        let page: Value = app
            .get(
                &format!("/admin/v1/audit?limit=3&cursor={cursor}"),
                Some(ADMIN_TOKEN),
            )
            .await
            .json()
            .await
            .unwrap();
        seen.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["id"].clone()),
        );
        match page["next_cursor"].as_str() {
            Some(next) => cursor = next.to_string(),
            None => break,
        }
    }
    let all_ids: Vec<Value> = rows.iter().map(|r| r["id"].clone()).collect();
    assert_eq!(seen, all_ids, "pages walk every row once, newest first");
    let bad = app
        .get("/admin/v1/audit?since=yesterday", Some(ADMIN_TOKEN))
        .await;
    let body = assert_problem(bad, 422, "a malformed time").await;
    assert_eq!(problem_fields(&body), ["since"]);

    // The dashboard page shows the same rows.
    let page = raw_client()
        .get(format!(
            "{}/admin/audit?action=tenant.queue_rules",
            app.address
        ))
        .header("cookie", &olga.cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("user:olga@example.com"), "{page}");
    assert_eq!(page.matches("data-action=").count(), 1);

    // Append-only: the database refuses to change or remove a row.
    for statement in [
        "UPDATE admin_audit SET actor = 'nobody'",
        "DELETE FROM admin_audit",
        "TRUNCATE admin_audit",
    ] {
        let e = sqlx::query(statement).execute(&app.db).await.unwrap_err();
        assert!(e.to_string().contains("append-only"), "{statement}: {e}");
    }
}

#[tokio::test]
async fn sign_in_is_throttled_per_account_and_a_session_ends_with_its_credential() {
    let app = spawn_app().await;
    let ann = app.create_admin_user("ann@example.com", "operator").await;
    let bob = app.create_admin_user("bob@example.com", "viewer").await;
    let session = sign_in(&app, "ann@example.com", &ann).await;

    // A wrong password and an unknown email read the same.
    for (email, password) in [
        ("ann@example.com", "wrong password!"),
        ("nobody@example.com", "wrong password!"),
    ] {
        let r = post_login(&app, &[("email", email), ("password", password)]).await;
        assert_eq!(r.status(), 401);
        assert!(r.text().await.unwrap().contains("do not match"));
    }
    for _ in 0..4 {
        let r = post_login(
            &app,
            &[
                ("email", "ann@example.com"),
                ("password", "wrong password!"),
            ],
        )
        .await;
        assert_eq!(r.status(), 401);
    }
    // Five failures: even the right password waits now, and says how long.
    let r = post_login(&app, &[("email", "ann@example.com"), ("password", &ann)]).await;
    assert_eq!(r.status(), 429);
    let wait: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=900).contains(&wait), "{wait}");
    // Another account is not held up by it, and ann's open session still works.
    sign_in(&app, "bob@example.com", &bob).await;
    assert!(session.is_live(&app).await);

    // A reset password ends the sessions made with the old one.
    let r = app
        .post_json(
            "/admin/v1/users/bob@example.com/reset-password",
            Some(ADMIN_TOKEN),
            &json!({}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let new_password = r.json::<Value>().await.unwrap()["password"]
        .as_str()
        .unwrap()
        .to_string();
    let bobs = sign_in(&app, "bob@example.com", &new_password).await;
    assert!(bobs.is_live(&app).await);
    let r = post_login(&app, &[("email", "bob@example.com"), ("password", &bob)]).await;
    assert_eq!(r.status(), 401, "the old password is gone");

    // Disabling a user ends their sessions at once and refuses their sign-in.
    let r = app
        .post_json(
            "/admin/v1/users/bob@example.com/disable",
            Some(ADMIN_TOKEN),
            &json!({}),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert!(!bobs.is_live(&app).await);
    let r = post_login(
        &app,
        &[("email", "bob@example.com"), ("password", &new_password)],
    )
    .await;
    assert_eq!(r.status(), 401);
    let users: Value = app
        .get("/admin/v1/users", Some(ADMIN_TOKEN))
        .await
        .json()
        .await
        .unwrap();
    let bob = users
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["email"] == "bob@example.com")
        .unwrap();
    assert!(bob["disabled_at"].is_string());

    // Bad input names the field; a taken email is 409.
    let r = app
        .post_json(
            "/admin/v1/users",
            Some(ADMIN_TOKEN),
            &json!({"email": "not-an-email", "role": "king", "password": "short"}),
        )
        .await;
    let body = assert_problem(r, 422, "bad user").await;
    assert_eq!(problem_fields(&body), ["email", "role", "password"]);
    let r = app
        .post_json(
            "/admin/v1/users",
            Some(ADMIN_TOKEN),
            &json!({"email": "ANN@example.com", "role": "viewer"}),
        )
        .await;
    assert_problem(r, 409, "a taken email").await;
}

#[tokio::test]
async fn a_token_session_ends_when_the_token_changes_or_is_turned_off() {
    let app = spawn_app().await;
    let r = post_login(&app, &[("token", ADMIN_TOKEN)]).await;
    assert_eq!(r.status(), 303);
    let cookie = session_cookie(&r);
    let opens = |base: String| {
        let cookie = cookie.clone();
        async move {
            raw_client()
                .get(format!("{base}/admin"))
                .header("cookie", cookie)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(opens(app.address.clone()).await, 200);

    // A second server on the same database and Redis, with a rotated token: the old session is
    // over there (and, having been ended, here too).
    let mut rotated = app.settings.clone();
    rotated.admin_token = Some("rotated-admin-token-9876543210-zyxwvuts".into());
    let other = InProcessApp::start(&rotated).await.unwrap();
    assert_eq!(opens(other.base.clone()).await, 303);
    assert_eq!(opens(app.address.clone()).await, 303);

    // With the token turned off, it opens nothing.
    let mut off = app.settings.clone();
    off.admin_token = None;
    let off = InProcessApp::start(&off).await.unwrap();
    let r = raw_client()
        .get(format!("{}/admin/v1/tenants", off.base))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = raw_client()
        .post(format!("{}/admin/login", off.base))
        .form(&[("token", ADMIN_TOKEN)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn dashboard_pages_carry_security_headers_and_cookies_follow_the_secure_setting() {
    let app = spawn_app().await;
    let r = raw_client()
        .get(format!("{}/admin/login", app.address))
        .send()
        .await
        .unwrap();
    let h = r.headers();
    assert_eq!(h["x-frame-options"], "DENY");
    assert_eq!(h["x-content-type-options"], "nosniff");
    let csp = h["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(h.get("strict-transport-security").is_none(), "plain HTTP");
    let cookie = post_login(&app, &[("token", ADMIN_TOKEN)]).await.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(!cookie.contains("Secure"), "{cookie}");

    let secure = spawn_app_with(|s| s.cookie_secure = backroom::config::CookieSecure::Always).await;
    let r = post_login(&secure, &[("token", ADMIN_TOKEN)]).await;
    assert!(
        r.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("; Secure")
    );
    assert!(
        r.headers()["strict-transport-security"]
            .to_str()
            .unwrap()
            .starts_with("max-age=")
    );
}

#[tokio::test]
async fn the_cli_creates_lists_and_disables_users_and_is_audited() {
    let app = spawn_app().await;
    let cli = |args: &[&str], stdin: Option<&str>| {
        use std::io::Write;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_backroom"))
            .args(args)
            .env("DATABASE_URL", &app.settings.database_url)
            .env("USER", "deploy")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
        }
        let out = child.wait_with_output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, out, err) = cli(
        &[
            "admin",
            "create",
            "Pat@Example.com",
            "--role",
            "operator",
            "--password-stdin",
        ],
        Some("a long enough password\n"),
    );
    assert!(ok, "{out}{err}");
    assert!(!out.contains("password (shown once)"), "{out}");
    let (ok, out, _) = cli(
        &["admin", "create", "sam@example.com", "--role", "viewer"],
        None,
    );
    assert!(ok);
    let generated = out
        .lines()
        .find_map(|l| l.strip_prefix("password (shown once): "))
        .expect("a generated password is printed")
        .to_string();
    let (ok, _, err) = cli(
        &["admin", "create", "x@example.com", "--role", "king"],
        None,
    );
    assert!(!ok && err.contains("--role must be one of"), "{err}");
    let (ok, _, err) = cli(
        &["admin", "create", "pat@example.com", "--role", "viewer"],
        None,
    );
    assert!(!ok && err.contains("exists"), "{err}");

    sign_in(&app, "pat@example.com", "a long enough password").await;
    sign_in(&app, "sam@example.com", &generated).await;
    let (ok, _, _) = cli(&["admin", "disable", "sam@example.com"], None);
    assert!(ok);
    let (_, list, _) = cli(&["admin", "list"], None);
    assert!(
        list.contains("pat@example.com") && list.contains("operator"),
        "{list}"
    );
    assert!(
        list.lines()
            .any(|l| l.contains("sam@example.com") && l.contains("disabled")),
        "{list}"
    );
    let audit: Value = app
        .get("/admin/v1/audit?actor=cli:deploy", Some(ADMIN_TOKEN))
        .await
        .json()
        .await
        .unwrap();
    let actions: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["user.disable", "user.create", "user.create"]);
}
