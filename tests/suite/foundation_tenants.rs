use crate::helpers::*;
use reqwest::Method;
use serde_json::{Value, json};

#[tokio::test]
async fn creating_a_tenant_returns_a_working_key_stored_only_as_a_hash() {
    let app = spawn_app().await;
    let response = app
        .create_tenant_raw(&json!({"name": "Kinésithérapie Lefèvre", "slug": "kine-lefevre"}))
        .await;
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["slug"], "kine-lefevre");
    assert_eq!(body["name"], "Kinésithérapie Lefèvre");
    let key = body["api_key"].as_str().unwrap();

    let me: Value = app.me(key).await.json().await.unwrap();
    assert_eq!(me["slug"], "kine-lefevre");
    assert_eq!(me["id"], body["id"]);

    // The clear key is nowhere in the database.
    let stored: Vec<Vec<u8>> = sqlx::query_scalar("SELECT key_hash FROM api_keys")
        .fetch_all(&app.db)
        .await
        .unwrap();
    assert_eq!(stored.len(), 1);
    assert_ne!(stored[0], key.as_bytes());
    let dump: String = sqlx::query_scalar("SELECT string_agg(t::text, ' ') FROM api_keys t")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert!(!dump.contains(&key[3..]), "clear key stored");
}

#[tokio::test]
async fn invalid_tenants_are_refused_field_by_field() {
    let app = spawn_app().await;
    app.create_tenant("taken").await;
    let cases = [
        (
            json!({"name": "", "slug": "ok-slug"}),
            422,
            vec!["name"],
            "empty name",
        ),
        (
            json!({"name": "A", "slug": "Bad Slug"}),
            422,
            vec!["slug"],
            "bad slug",
        ),
        (
            json!({"name": " ", "slug": "-x"}),
            422,
            vec!["name", "slug"],
            "both bad",
        ),
        (
            json!({"slug": "ok-slug"}),
            422,
            vec!["name"],
            "missing name",
        ),
        (
            json!({"name": "A", "slug": "ok", "plan": "gold"}),
            422,
            vec!["plan"],
            "unknown field",
        ),
        (
            json!({"name": "A", "slug": 7}),
            422,
            vec!["slug"],
            "slug of the wrong type",
        ),
        (
            json!({"name": "Again", "slug": "taken"}),
            409,
            vec!["slug"],
            "duplicate slug",
        ),
        (
            json!({"name": "Line\nBreak", "slug": "ok2"}),
            422,
            vec!["name"],
            "control characters",
        ),
    ];
    for (body, status, fields, why) in cases {
        let problem = assert_problem(app.create_tenant_raw(&body).await, status, why).await;
        assert_eq!(problem_fields(&problem), fields, "{why}");
    }
}

#[tokio::test]
async fn tenants_are_listed_in_pages_with_a_cursor() {
    let app = spawn_app().await;
    for i in 0..5 {
        app.create_tenant(&format!("shop-{i}")).await;
    }
    let mut seen = vec![];
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/admin/v1/tenants?limit=2&cursor={c}"),
            None => "/admin/v1/tenants?limit=2".to_string(),
        };
        let page: Value = app
            .get(&path, Some(ADMIN_TOKEN))
            .await
            .json()
            .await
            .unwrap();
        pages += 1;
        for item in page["items"].as_array().unwrap() {
            seen.push(item["slug"].as_str().unwrap().to_string());
            assert!(item.get("api_key").is_none(), "lists never show keys");
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(
        seen,
        (0..5).map(|i| format!("shop-{i}")).collect::<Vec<_>>()
    );

    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("cursor=zzz", "cursor"),
    ] {
        let response = app
            .get(&format!("/admin/v1/tenants?{query}"), Some(ADMIN_TOKEN))
            .await;
        let problem = assert_problem(response, 422, query).await;
        assert_eq!(problem_fields(&problem), vec![field]);
    }
}

#[tokio::test]
async fn tenant_settings_are_patched_and_validated() {
    let app = spawn_app().await;
    app.create_tenant("acme").await;
    let patch = |body: Value| {
        app.send_json(
            Method::PATCH,
            "/admin/v1/tenants/acme",
            Some(ADMIN_TOKEN),
            &body,
        )
    };
    let response =
        patch(json!({"alert_email": "ops@acme.example", "timezone": "Europe/Zurich"})).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["alert_email"], "ops@acme.example");
    assert_eq!(body["timezone"], "Europe/Zurich");
    assert_eq!(body["name"], "Tenant acme", "untouched fields stay");

    let body: Value = patch(json!({"alert_email": null}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["alert_email"], Value::Null, "null clears the address");
    assert_eq!(body["timezone"], "Europe/Zurich");

    let problem = assert_problem(
        patch(json!({"alert_email": "ops@acme.example\r\nBcc: x@y.z", "timezone": "Mars/Base"}))
            .await,
        422,
        "bad email and zone",
    )
    .await;
    assert_eq!(problem_fields(&problem), vec!["alert_email", "timezone"]);

    let response = app
        .send_json(
            Method::PATCH,
            "/admin/v1/tenants/nobody",
            Some(ADMIN_TOKEN),
            &json!({"active": false}),
        )
        .await;
    assert_problem(response, 404, "unknown slug").await;
}
