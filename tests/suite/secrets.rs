//! Secrets stay secret: API keys (valid, wrong or revoked), the admin token and dashboard session
//! cookies never reach the logs (at debug level, as an operator chasing a problem would set),
//! error bodies or dashboard pages, and API keys are stored only as hashes.

use crate::helpers::*;
use reqwest::Method;
use reqwest::redirect::Policy;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

#[tokio::test]
async fn keys_tokens_and_session_cookies_never_appear_in_logs_errors_or_pages() {
    let app = spawn_app().await;
    let tenant = app.create_tenant("acme").await;

    // A real `backroom serve` process, logging JSON at debug level into a file.
    let log_path =
        std::env::temp_dir().join(format!("backroom-secrets-{}.log", uuid::Uuid::new_v4()));
    let mut server = ServeProcess::spawn(
        &app,
        &[("BACKROOM_LOG", "debug"), ("BACKROOM_LOG_FORMAT", "json")],
        Some(&log_path),
    )
    .await;
    let base = server.base.clone();
    let client = reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .unwrap();

    let send = |method: Method, path: &str, token: &str, body: Option<Value>| {
        let mut request = client
            .request(method, format!("{base}{path}"))
            .bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.text().await.unwrap())
        }
    };
    let wrong_key = format!("{}x", tenant.key);
    let wrong_admin = "wrong-admin-token-0123456789";
    let mut bodies = vec![];

    let (status, body) = send(Method::GET, "/v1/me", &tenant.key, None).await;
    assert_eq!(status, 200);
    bodies.push(body);
    for (method, path, token, payload, expected) in [
        (Method::GET, "/v1/me", wrong_key.as_str(), None, 401),
        (
            Method::POST,
            "/v1/stock-adjustments",
            tenant.key.as_str(),
            Some(json!({"sku": "", "delta": 0})),
            422,
        ),
        (Method::GET, "/admin/v1/tenants", wrong_admin, None, 401),
        (
            Method::GET,
            "/admin/v1/tenants",
            tenant.key.as_str(),
            None,
            401,
        ),
        (Method::GET, "/admin/v1/tenants", ADMIN_TOKEN, None, 200),
    ] {
        let (status, body) = send(method, path, token, payload).await;
        assert_eq!(status, expected, "{path}: {body}");
        bodies.push(body);
    }
    // Rotate a key, then revoke it and present it.
    let (status, body) = send(
        Method::POST,
        "/admin/v1/tenants/acme/api-keys",
        ADMIN_TOKEN,
        None,
    )
    .await;
    assert_eq!(status, 201);
    let rotated: Value = serde_json::from_str(&body).unwrap();
    let new_key = rotated["api_key"].as_str().unwrap().to_string();
    let new_id = rotated["id"].as_str().unwrap().to_string();
    let (status, _) = send(
        Method::DELETE,
        &format!("/admin/v1/api-keys/{new_id}"),
        ADMIN_TOKEN,
        None,
    )
    .await;
    assert_eq!(status, 204);
    let (status, body) = send(Method::GET, "/v1/me", &new_key, None).await;
    assert_eq!(status, 401);
    bodies.push(body);

    // The dashboard: a failed and a successful sign-in, then the pages an admin browses.
    let failed = client
        .post(format!("{base}/admin/login"))
        .form(&[("token", wrong_admin)])
        .send()
        .await
        .unwrap();
    assert_eq!(failed.status(), 401);
    bodies.push(failed.text().await.unwrap());
    let signed_in = client
        .post(format!("{base}/admin/login"))
        .form(&[("token", ADMIN_TOKEN)])
        .send()
        .await
        .unwrap();
    assert_eq!(signed_in.status(), 303);
    let cookie = signed_in.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let session_value = cookie.split_once('=').unwrap().1.to_string();
    for page in [
        "/admin",
        "/admin/tenants",
        "/admin/queues/stock",
        "/admin/emails",
    ] {
        let response = client
            .get(format!("{base}{page}"))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{page}");
        bodies.push(response.text().await.unwrap());
    }

    let exited = server.terminate();
    assert!(exited.success(), "the server shut down cleanly: {exited}");
    let logs = std::fs::read_to_string(&log_path).unwrap();
    let _ = std::fs::remove_file(&log_path);
    assert!(
        logs.contains("/v1/me") && logs.contains("/admin/login"),
        "the requests were logged (else this test proves nothing):\n{logs}"
    );

    let secrets = [
        ("the tenant's key", tenant.key.as_str()),
        ("a wrong key", wrong_key.as_str()),
        ("a rotated, revoked key", new_key.as_str()),
        ("the admin token", ADMIN_TOKEN),
        ("a wrong admin token", wrong_admin),
        ("the dashboard session cookie", session_value.as_str()),
    ];
    for (what, secret) in secrets {
        assert!(!logs.contains(secret), "{what} appears in the logs");
        for body in &bodies {
            assert!(
                !body.contains(secret),
                "{what} appears in a response:\n{body}"
            );
        }
    }

    // Stored as SHA-256 hashes only: no column of any key row holds a key.
    let rows: Vec<String> = sqlx::query_scalar("SELECT row_to_json(k)::text FROM api_keys k")
        .fetch_all(&app.db)
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    for row in &rows {
        assert!(
            !row.contains(&tenant.key) && !row.contains(&new_key),
            "{row}"
        );
    }
    let hashed: i64 = sqlx::query_scalar("SELECT count(*) FROM api_keys WHERE key_hash = $1")
        .bind(Sha256::digest(tenant.key.as_bytes()).to_vec())
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(hashed, 1, "the key is found by its hash");
}
