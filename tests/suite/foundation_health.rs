use crate::helpers::*;
use serde_json::Value;

#[tokio::test]
async fn healthz_and_readyz_answer_when_everything_is_up() {
    let app = spawn_app().await;
    assert_eq!(app.get("/healthz", None).await.status(), 200);
    let response = app.get("/readyz", None).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["checks"]["postgres"], "ok");
    assert_eq!(body["checks"]["redis"], "ok");
}

#[tokio::test]
async fn readyz_names_redis_when_its_server_is_stopped() {
    let mut redis = RedisServer::start().await;
    let url = redis.url();
    let app = spawn_app_with(|s| s.redis_url = url).await;
    assert_eq!(
        app.get("/readyz", None).await.status(),
        200,
        "ready while Redis runs"
    );

    redis.kill();
    let response = app.get("/readyz", None).await;
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["checks"]["postgres"], "ok");
    assert!(
        body["checks"]["redis"]
            .as_str()
            .unwrap()
            .starts_with("unavailable"),
        "{body}"
    );
    assert_eq!(app.get("/healthz", None).await.status(), 200, "still alive");
}

#[tokio::test]
async fn readyz_names_postgres_when_it_cannot_be_reached() {
    let port = free_port();
    let app = spawn_app_with(|s| {
        s.database_url = format!("postgres://postgres@127.0.0.1:{port}/nothing")
    })
    .await;
    let response = app.get("/readyz", None).await;
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["checks"]["postgres"]
            .as_str()
            .unwrap()
            .starts_with("unavailable")
    );
    assert_eq!(body["checks"]["redis"], "ok");

    // A request that needs Postgres is a 503 with Retry-After, not a 500.
    let response = app.get("/admin/v1/tenants", Some(ADMIN_TOKEN)).await;
    assert!(response.headers().contains_key("retry-after"));
    let problem = assert_problem(response, 503, "tenant list with Postgres down").await;
    assert!(problem["detail"].as_str().unwrap().contains("postgres"));
}

#[tokio::test]
async fn openapi_document_describes_every_route() {
    let app = spawn_app().await;
    let response = app.get("/openapi.json", None).await;
    assert_eq!(response.status(), 200);
    let spec: Value = response.json().await.unwrap();
    assert!(spec["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/healthz",
        "/readyz",
        "/v1/me",
        "/admin/v1/tenants",
        "/admin/v1/tenants/{slug}",
        "/admin/v1/tenants/{slug}/api-keys",
        "/admin/v1/api-keys/{id}",
        "/v1/jobs/{id}",
        "/admin/v1/queues",
        "/admin/v1/queues/{queue}/jobs",
        "/admin/v1/jobs/{id}/retry",
        "/admin/v1/jobs/{id}",
        "/admin/v1/queues/{queue}/pause",
        "/admin/v1/queues/{queue}/resume",
        "/admin/v1/queues/{queue}/retry-dead",
        "/metrics",
    ] {
        assert!(spec["paths"].get(path).is_some(), "spec lacks {path}");
    }
    assert!(spec["components"]["securitySchemes"]["admin_token"].is_object());
    assert!(spec["components"]["securitySchemes"]["tenant_key"].is_object());
}
