use crate::helpers::*;
use serde_json::json;

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
