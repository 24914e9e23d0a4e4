use crate::helpers::*;

#[tokio::test]
async fn bad_requests_get_problem_documents_with_the_right_status() {
    let app = spawn_app().await;
    let post_raw = |body: Vec<u8>, content_type: &'static str| {
        app.request(
            reqwest::Method::POST,
            "/admin/v1/tenants",
            Some(ADMIN_TOKEN),
        )
        .header("content-type", content_type)
        .body(body)
        .send()
    };
    let huge = format!(r#"{{"name": "{}", "slug": "big"}}"#, "x".repeat(1_100_000));
    let cases: Vec<(Vec<u8>, &str, u16, &str)> = vec![
        (
            b"{\"name\": \"a\",".to_vec(),
            "application/json",
            400,
            "truncated JSON",
        ),
        (b"not json".to_vec(), "application/json", 400, "not JSON"),
        (
            vec![0xff, 0xfe, 0x00],
            "application/json",
            400,
            "invalid UTF-8",
        ),
        (
            b"[]".to_vec(),
            "application/json",
            422,
            "JSON of the wrong shape",
        ),
        (huge.into_bytes(), "application/json", 413, "oversized body"),
        (
            b"name=a".to_vec(),
            "application/x-www-form-urlencoded",
            415,
            "not JSON content type",
        ),
        (
            format!("{}1{}", "[".repeat(5000), "]".repeat(5000)).into_bytes(),
            "application/json",
            400,
            "absurdly deep nesting",
        ),
    ];
    for (body, content_type, status, why) in cases {
        let response = post_raw(body, content_type).await.unwrap();
        assert_problem(response, status, why).await;
    }
}

#[tokio::test]
async fn unknown_routes_and_methods_are_problems_too() {
    let app = spawn_app().await;
    assert_problem(
        app.get("/v1/nothing-here", None).await,
        404,
        "unknown route",
    )
    .await;
    let response = app
        .request(reqwest::Method::PUT, "/healthz", None)
        .send()
        .await
        .unwrap();
    assert_problem(response, 405, "wrong method").await;
}

#[tokio::test]
async fn request_ids_are_echoed_in_header_and_problem() {
    let app = spawn_app().await;
    let response = app
        .request(reqwest::Method::GET, "/v1/me", None)
        .header("x-request-id", "trace-abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "trace-abc-123");
    let problem = assert_problem(response, 401, "no key").await;
    assert_eq!(problem["request_id"], "trace-abc-123");

    // A hostile request id is replaced, not echoed.
    let response = app
        .request(reqwest::Method::GET, "/healthz", None)
        .header("x-request-id", "evil id with spaces")
        .send()
        .await
        .unwrap();
    let echoed = response.headers()["x-request-id"].to_str().unwrap();
    assert!(uuid::Uuid::parse_str(echoed).is_ok(), "got {echoed}");
}
