use crate::helpers::*;
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn tenant_routes_refuse_missing_malformed_unknown_and_revoked_keys() {
    let app = spawn_app().await;
    let tenant = app.create_tenant("acme").await;
    let me: serde_json::Value = app.me(&tenant.key).await.json().await.unwrap();
    assert_eq!(
        (me["id"].as_str(), me["slug"].as_str()),
        (Some(&*tenant.id), Some(&*tenant.slug))
    );

    let cases: Vec<(Option<String>, &str)> = vec![
        (None, "no Authorization header"),
        (
            Some("Basic YWxhZGRpbjpvcGVuc2VzYW1l".into()),
            "not a bearer token",
        ),
        (Some("Bearer".into()), "bearer without a token"),
        (Some("Bearer bk_not-a-real-key".into()), "unknown key"),
        (
            Some(format!("Bearer {ADMIN_TOKEN}")),
            "the admin token is not a tenant key",
        ),
    ];
    for (header, why) in cases {
        let mut request = app.request(reqwest::Method::GET, "/v1/me", None);
        if let Some(h) = header {
            request = request.header("authorization", h);
        }
        let response = request.send().await.unwrap();
        assert_problem(response, 401, why).await;
    }

    let (new_id, new_key) = app.rotate_key("acme").await;
    assert_eq!(
        app.me(&tenant.key).await.status(),
        200,
        "old key valid after rotation"
    );
    assert_eq!(app.me(&new_key).await.status(), 200, "new key valid");

    // Revoke the first key (look its id up through the admin list).
    let keys: serde_json::Value = app
        .get("/admin/v1/tenants/acme/api-keys", Some(ADMIN_TOKEN))
        .await
        .json()
        .await
        .unwrap();
    let old_id = keys
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap().to_string())
        .find(|id| *id != new_id)
        .unwrap();
    assert_eq!(app.revoke_key(&old_id).await.status(), 204);
    assert_eq!(
        app.revoke_key(&old_id).await.status(),
        204,
        "revoking twice is a no-op"
    );
    assert_problem(app.me(&tenant.key).await, 401, "revoked key").await;
    assert_eq!(app.me(&new_key).await.status(), 200, "other key unaffected");
    assert_problem(
        app.revoke_key(&uuid::Uuid::new_v4().to_string()).await,
        404,
        "unknown key id",
    )
    .await;
}

#[tokio::test]
async fn admin_routes_refuse_tenant_keys_and_wrong_tokens() {
    let app = spawn_app().await;
    let tenant = app.create_tenant("acme").await;
    let tokens = [
        (None, "no token"),
        (Some(tenant.key.as_str()), "a tenant's key on /admin"),
        (
            Some("test-admin-token-012345678X"),
            "a near-miss admin token",
        ),
        (Some("short"), "a short token"),
    ];
    for (token, why) in tokens {
        assert_problem(app.get("/admin/v1/tenants", token).await, 401, why).await;
        let response = app
            .post_json(
                "/admin/v1/tenants",
                token,
                &json!({"name": "X", "slug": "xx"}),
            )
            .await;
        assert_problem(response, 401, why).await;
    }
    let listed: serde_json::Value = app
        .get("/admin/v1/tenants", Some(ADMIN_TOKEN))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        listed["items"].as_array().unwrap().len(),
        1,
        "no tenant slipped in"
    );
}

#[tokio::test]
async fn a_deactivated_tenant_is_refused_until_reactivated() {
    let app = spawn_app().await;
    let tenant = app.create_tenant("acme").await;
    let patch = |active: bool| {
        app.send_json(
            reqwest::Method::PATCH,
            "/admin/v1/tenants/acme",
            Some(ADMIN_TOKEN),
            &json!({ "active": active }),
        )
    };
    assert_eq!(patch(false).await.status(), 200);
    assert_problem(app.me(&tenant.key).await, 403, "deactivated tenant").await;
    assert_eq!(patch(true).await.status(), 200);
    assert_eq!(app.me(&tenant.key).await.status(), 200);
}

/// Each API process caches key and SKU lookups; a change made elsewhere (another process, or
/// plain SQL as here) reaches it through the triggers' NOTIFY.
#[tokio::test]
async fn changes_made_by_another_process_reach_the_cached_lookups() {
    let app = spawn_app().await;
    let tenant = app.create_tenant("acme").await;
    let other = app.create_tenant("other").await;
    let product = json!({"name": "Tent", "unit_price": "10.00", "currency": "EUR",
        "reorder_point": 0, "reorder_quantity": 1, "lead_time_days": 1, "allow_negative": true});
    let put = app
        .send_json(
            reqwest::Method::PUT,
            "/v1/products/TENT",
            Some(&tenant.key),
            &product,
        )
        .await;
    assert_eq!(put.status(), 201);
    let adjust = |key: String| {
        let app = &app;
        async move {
            app.post_json(
                "/v1/stock-adjustments",
                Some(&key),
                &json!({"sku": "TENT", "delta": 1, "reason": "receipt",
                        "idempotency_key": uuid::Uuid::new_v4().to_string()}),
            )
            .await
            .status()
            .as_u16()
        }
    };
    // Warm the caches (a few requests, so the listener is certainly up for some of them).
    for _ in 0..5 {
        assert_eq!(adjust(tenant.key.clone()).await, 202);
        assert_eq!(app.me(&other.key).await.status(), 200);
    }

    sqlx::query("DELETE FROM products WHERE sku = 'TENT'")
        .execute(&app.db)
        .await
        .unwrap();
    wait_for(
        "the deleted SKU to be refused",
        Duration::from_secs(2),
        || {
            let adjust = adjust(tenant.key.clone());
            async move { (adjust.await == 422).then_some(()) }
        },
    )
    .await;

    sqlx::query("UPDATE tenants SET active = false WHERE slug = 'other'")
        .execute(&app.db)
        .await
        .unwrap();
    wait_for(
        "the deactivated tenant to be refused",
        Duration::from_secs(2),
        || async { (app.me(&other.key).await.status() == 403).then_some(()) },
    )
    .await;

    sqlx::query("UPDATE api_keys SET revoked_at = now()")
        .execute(&app.db)
        .await
        .unwrap();
    wait_for(
        "the revoked key to be refused",
        Duration::from_secs(2),
        || async { (app.me(&tenant.key).await.status() == 401).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn a_tenant_over_its_request_rate_gets_429_with_retry_after_and_others_do_not() {
    let app = spawn_app_with(|s| {
        s.tenant_rate = backroom::config::RateLimit {
            per_second: 1,
            burst: 3,
        }
    })
    .await;
    let busy = app.create_tenant("busy").await;
    let quiet = app.create_tenant("quiet").await;
    for i in 0..3 {
        assert_eq!(
            app.me(&busy.key).await.status(),
            200,
            "request {i} is within the burst"
        );
    }
    let refused = app.me(&busy.key).await;
    assert_eq!(refused.status(), 429);
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry_after), "Retry-After: {retry_after}");
    assert_problem(refused, 429, "over the rate").await;
    assert_eq!(
        app.me(&quiet.key).await.status(),
        200,
        "another tenant is not limited"
    );
    // Once the advertised wait has passed, the tenant is served again.
    wait_for(
        "the limit to let the tenant through again",
        Duration::from_secs(retry_after + 2),
        || async { (app.me(&busy.key).await.status() == 200).then_some(()) },
    )
    .await;
}
