//! End-to-end traces (#20): a real `backroom serve` and `backroom work` export OTLP/HTTP to a
//! receiver started here, which decodes each export with the `opentelemetry-proto` types.
//! One order carrying a `traceparent` must come back as one trace: the request, the outbox
//! relay, every stock sale, the invoice render and the email send, each linked to its parent;
//! a retried job shows both runs; and a collector that hangs holds up nothing. An unsampled
//! order exports nothing, yet every job it caused carries its trace id.

use crate::helpers::*;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use prost::Message as _;
use reqwest::Method;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(60);

/// A span as the receiver got it.
#[derive(Debug, Clone)]
struct Got {
    trace_id: String,
    span_id: String,
    parent: String,
    name: String,
    service: String,
    attrs: HashMap<String, String>,
    /// The span's status code (OTLP: 0 unset, 1 ok, 2 error).
    status: i32,
}

impl Got {
    fn attr(&self, key: &str) -> &str {
        self.attrs.get(key).map(String::as_str).unwrap_or("")
    }
}

/// An OTLP/HTTP receiver on a port of its own: keeps every span; while `hang` is set it takes
/// requests and never answers (a collector that stopped responding).
#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Got>>>,
    hang: Arc<AtomicBool>,
}

impl Receiver {
    async fn start() -> (Self, u16) {
        let receiver = Receiver::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let app = axum::Router::new()
            .route("/v1/traces", axum::routing::post(receive))
            .with_state(receiver.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (receiver, port)
    }

    fn spans(&self) -> Vec<Got> {
        self.spans.lock().unwrap().clone()
    }

    fn of_trace(&self, trace_id: &str) -> Vec<Got> {
        self.spans()
            .into_iter()
            .filter(|s| s.trace_id == trace_id)
            .collect()
    }
}

async fn receive(State(r): State<Receiver>, body: Bytes) -> StatusCode {
    if r.hang.load(Ordering::SeqCst) {
        std::future::pending::<()>().await;
    }
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return StatusCode::BAD_REQUEST;
    };
    let mut got = r.spans.lock().unwrap();
    for resource in request.resource_spans {
        let service = resource
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .map(|kv| text(kv.value.as_ref().and_then(|v| v.value.as_ref())))
            .unwrap_or_default();
        for scope in resource.scope_spans {
            for span in scope.spans {
                got.push(Got {
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent: hex(&span.parent_span_id),
                    name: span.name,
                    service: service.clone(),
                    status: span.status.as_ref().map_or(0, |s| s.code),
                    attrs: span
                        .attributes
                        .iter()
                        .map(|kv| {
                            (
                                kv.key.clone(),
                                text(kv.value.as_ref().and_then(|v| v.value.as_ref())),
                            )
                        })
                        .collect(),
                });
            }
        }
    }
    StatusCode::OK
}

fn text(v: Option<&Any>) -> String {
    match v {
        Some(Any::StringValue(s)) => s.clone(),
        Some(Any::IntValue(i)) => i.to_string(),
        Some(Any::BoolValue(b)) => b.to_string(),
        Some(Any::DoubleValue(d)) => d.to_string(),
        _ => String::new(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn new_traceparent() -> (String, String, String) {
    let trace_id = uuid::Uuid::new_v4().simple().to_string();
    let span_id = uuid::Uuid::new_v4().simple().to_string()[..16].to_string();
    (format!("00-{trace_id}-{span_id}-01"), trace_id, span_id)
}

/// The processes' tracing environment: export to `port`, quickly, through a small queue.
fn otel_env(port: u16, service: &str) -> Vec<(&'static str, String)> {
    vec![
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{port}"),
        ),
        ("OTEL_SERVICE_NAME", service.to_string()),
        ("OTEL_BSP_SCHEDULE_DELAY", "50".into()),
        ("OTEL_BSP_MAX_QUEUE_SIZE", QUEUE_BOUND.to_string()),
        ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "64".into()),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "300".into()),
    ]
}

/// The exporters' span queue (`OTEL_BSP_MAX_QUEUE_SIZE`) in these processes.
const QUEUE_BOUND: usize = 256;

async fn product(app: &TestApp, key: &str, sku: &str) {
    let r = app
        .send_json(
            Method::PUT,
            &format!("/v1/products/{sku}"),
            Some(key),
            &json!({"name": sku, "unit_price": "10.00", "currency": "EUR", "reorder_point": 0,
                    "reorder_quantity": 10, "lead_time_days": 3, "allow_negative": true}),
        )
        .await;
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
}

async fn order(base: &str, key: &str, traceparent: &str, lines: &[(&str, i64)]) -> Value {
    let lines: Vec<Value> = lines
        .iter()
        .map(|(sku, q)| json!({"sku": sku, "quantity": q}))
        .collect();
    let r = reqwest::Client::new()
        .post(format!("{base}/v1/orders"))
        .bearer_auth(key)
        .header("traceparent", traceparent)
        .json(&json!({
            "customer": {"name": "Ada", "email": "ada@example.com"},
            "currency": "EUR", "tax_rate": "0.1", "lines": lines
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "order accepted");
    r.json().await.unwrap()
}

/// Walks up from `span` to the root of its trace; the names on the way, nearest first.
fn ancestry(spans: &[Got], span: &Got) -> Vec<String> {
    let by_id: HashMap<&str, &Got> = spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let mut names = vec![];
    let mut at = span;
    while let Some(parent) = by_id.get(at.parent.as_str()) {
        names.push(parent.name.clone());
        at = parent;
        if names.len() > 20 {
            break;
        }
    }
    names
}

fn parent_of<'a>(spans: &'a [Got], span: &Got) -> &'a Got {
    spans
        .iter()
        .find(|s| s.span_id == span.parent)
        .unwrap_or_else(|| panic!("the parent of {span:?} was exported"))
}

#[tokio::test]
async fn an_order_is_one_trace_from_request_to_email_and_a_hung_collector_holds_nothing_up() {
    let (receiver, port) = Receiver::start().await;
    let mut smtp = SmtpServer::start().await;
    let smtp_port = smtp.port;
    let app = spawn_app().await;
    let shop = app.create_tenant("traced").await;
    for sku in ["A", "B"] {
        product(&app, &shop.key, sku).await;
    }
    let serve_env = otel_env(port, "serve");
    let serve_env: Vec<(&str, &str)> = serve_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let serve = ServeProcess::spawn(&app, &serve_env, None).await;
    let mut work_env = otel_env(port, "work");
    work_env.push(("SMTP_URL", smtp.url()));
    // Logs at the production default, where a job's span (info) is on each of its lines.
    work_env.push(("BACKROOM_LOG", "info".into()));
    let work_log =
        std::env::temp_dir().join(format!("backroom-traces-{}.log", uuid::Uuid::new_v4()));
    let _work = WorkerProcess::spawn_logged(&app, "stock,invoices,emails", &work_env, &work_log);

    // Another tenant sends a traceparent that is no W3C value (and 8 KB long): its order is
    // taken as any other, its request starts a trace of its own, and the shop's trace below is
    // whole.
    let noisy = app.create_tenant("noisy").await;
    product(&app, &noisy.key, "A").await;
    let garbage = format!("00-{}-01", "f".repeat(8 * 1024));
    order(&serve.base, &noisy.key, &garbage, &[("A", 1)]).await;
    let noisy_request = wait_for("the other tenant's request span", LIMIT, || async {
        receiver
            .spans()
            .into_iter()
            .find(|s| s.name == "request" && s.attr("tenant_id") == noisy.id)
    })
    .await;
    assert_eq!(
        noisy_request.parent, "",
        "a malformed traceparent is not continued"
    );
    // Its sale is in the ledger before the shop's order (so that no batch holds both).
    wait_for("the other tenant's sale", LIMIT, || async {
        receiver
            .spans()
            .into_iter()
            .find(|s| s.attr("tenant") == noisy.id && s.attr("queue") == "stock")
    })
    .await;

    // SMTP is down when the order's email first runs: it is retried, then sent.
    smtp.stop();
    let (traceparent, trace_id, caller_span) = new_traceparent();
    let placed = order(&serve.base, &shop.key, &traceparent, &[("A", 2), ("B", 1)]).await;
    let first_email = wait_for("the email's first run to fail", LIMIT, || async {
        receiver
            .of_trace(&trace_id)
            .into_iter()
            .find(|s| s.name == "job invoice_email" && s.attr("outcome") == "retry")
    })
    .await;
    let _smtp = SmtpServer::start_on(smtp_port).await;
    // The failed run's log line carries the trace id (the job's span is on every line in it).
    let logged = wait_for(
        "the failed run's warning in the worker's log",
        LIMIT,
        || async {
            std::fs::read_to_string(&work_log)
                .ok()?
                .lines()
                .find(|l| {
                    l.contains("job did not succeed")
                        && l.contains("invoice_email")
                        && l.contains(&format!("\"tenant\":\"{}\"", shop.id))
                })
                .map(str::to_string)
        },
    )
    .await;
    assert!(
        logged.contains(&format!("\"trace_id\":\"{trace_id}\"")),
        "{logged}"
    );
    let _ = std::fs::remove_file(&work_log);
    let spans = wait_for("the whole trace", LIMIT, || async {
        let spans = receiver.of_trace(&trace_id);
        let sent = spans
            .iter()
            .any(|s| s.name == "job invoice_email" && s.attr("outcome") == "succeeded");
        let smtp_sent = spans.iter().any(|s| s.name == "smtp send");
        let sales = spans
            .iter()
            .filter(|s| s.attr("queue") == "stock" && s.attr("outcome") == "succeeded")
            .count();
        (sent && smtp_sent && sales == 2).then_some(spans)
    })
    .await;

    // The request continues the caller's span; everything else descends from the request.
    let request = spans
        .iter()
        .find(|s| s.name == "request" && s.attr("path") == "/v1/orders")
        .expect("the request's span");
    assert_eq!(request.parent, caller_span);
    assert_eq!(request.service, "serve");
    for span in spans.iter().filter(|s| s.span_id != request.span_id) {
        assert!(
            ancestry(&spans, span).contains(&"request".to_string()),
            "{} descends from the request: {:?}",
            span.name,
            ancestry(&spans, span)
        );
    }
    // Each job run is a child of the outbox relay's span for its row, with its facts.
    let jobs: Vec<&Got> = spans
        .iter()
        .filter(|s| s.name.starts_with("job "))
        .collect();
    for job in &jobs {
        let parent = parent_of(&spans, job);
        assert_eq!(parent.name, "outbox relay", "{job:?}");
        assert_eq!(parent.service, "work");
        assert_eq!(job.attr("tenant"), shop.id, "{job:?}");
        for key in ["queue", "kind", "job_id", "attempt", "outcome"] {
            assert!(!job.attr(key).is_empty(), "{key} on {job:?}");
        }
    }
    let kinds: Vec<&str> = jobs.iter().map(|j| j.attr("queue")).collect();
    assert_eq!(
        kinds.iter().filter(|q| **q == "stock").count(),
        2,
        "{kinds:?}"
    );
    assert_eq!(
        kinds.iter().filter(|q| **q == "invoices").count(),
        1,
        "{kinds:?}"
    );
    // The email: two runs of one job, both children of the same relay span.
    let emails: Vec<&&Got> = jobs
        .iter()
        .filter(|j| j.attr("kind") == "invoice_email")
        .collect();
    assert_eq!(emails.len(), 2, "{emails:?}");
    assert_eq!(emails[0].attr("job_id"), emails[1].attr("job_id"));
    assert_eq!(emails[0].parent, emails[1].parent);
    let mut attempts: Vec<&str> = emails.iter().map(|e| e.attr("attempt")).collect();
    attempts.sort();
    assert_eq!(attempts, ["1", "2"]);
    assert_eq!(first_email.attr("attempt"), "1");
    // A run that did not succeed has an error status; one that did, none.
    assert_eq!(first_email.status, 2, "{first_email:?}");
    for job in jobs.iter().filter(|j| j.attr("outcome") == "succeeded") {
        assert_eq!(job.status, 0, "{job:?}");
    }
    // The work inside the jobs: the render, the SMTP send, the ledger's transaction.
    let invoice_job = jobs.iter().find(|j| j.attr("queue") == "invoices").unwrap();
    assert_eq!(invoice_job.attr("outcome"), "succeeded");
    let render = spans
        .iter()
        .find(|s| s.name == "pdf render")
        .expect("a render span");
    assert_eq!(render.parent, invoice_job.span_id);
    let mut sends: Vec<&str> = spans
        .iter()
        .filter(|s| s.name == "smtp send")
        .map(|s| parent_of(&spans, s).attr("attempt"))
        .collect();
    sends.sort();
    assert_eq!(sends, ["1", "2"], "each run of the email tried SMTP once");
    let ledger = spans
        .iter()
        .find(|s| s.name == "db transaction" && s.attr("what") == "stock batch")
        .expect("the ledger's transaction");
    assert_eq!(parent_of(&spans, ledger).attr("queue"), "stock");

    // The trace id is the job's, for its tenant to quote.
    let job_id = invoice_job.attr("job_id");
    let view: Value = app
        .get(&format!("/v1/jobs/{job_id}"), Some(&shop.key))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(view["trace_id"], trace_id.as_str(), "{view}");
    assert!(placed["order_id"].is_string());
    let (cookie, _) = dashboard_session(&app, &[("token", ADMIN_TOKEN)]).await;
    let page = raw_client()
        .get(format!("{}/admin/jobs/{job_id}", app.address))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains(&format!("<dd id=\"job-trace\"><code>{trace_id}</code>")),
        "the job's page shows its trace id"
    );

    // A collector that stops answering holds up no request and no job, and what waits for it is
    // bounded: once it answers again, it gets new spans, not a backlog.
    receiver.hang.store(true, Ordering::SeqCst);
    let mut invoices = vec![];
    for _ in 0..15 {
        let (tp, _, _) = new_traceparent();
        let placed = tokio::time::timeout(
            Duration::from_secs(5),
            order(&serve.base, &shop.key, &tp, &[("A", 1)]),
        )
        .await
        .expect("an order is answered while the collector hangs");
        invoices.push(placed["invoice_id"].as_str().unwrap().to_string());
    }
    for id in &invoices {
        wait_for(
            "invoices rendered while the collector hangs",
            LIMIT,
            || async {
                let i: Value = app
                    .get(&format!("/v1/invoices/{id}"), Some(&shop.key))
                    .await
                    .json()
                    .await
                    .ok()?;
                (i["status"] == "ready").then_some(())
            },
        )
        .await;
    }
    let before = receiver.spans().len();
    receiver.hang.store(false, Ordering::SeqCst);
    let (tp, after_trace, _) = new_traceparent();
    order(&serve.base, &shop.key, &tp, &[("B", 1)]).await;
    wait_for(
        "the next order's trace once the collector answers",
        LIMIT,
        || async {
            receiver
                .of_trace(&after_trace)
                .iter()
                .any(|s| s.name == "smtp send")
                .then_some(())
        },
    )
    .await;
    let received = receiver.spans().len() - before;
    // Each process holds at most its queue's bound, plus what the exports in flight carried.
    assert!(
        received <= 2 * (QUEUE_BOUND + 64) + receiver.of_trace(&after_trace).len(),
        "{received} spans arrived after the collector came back"
    );
}

/// The work of an unsampled trace makes no spans at all (none leaks out as a trace of its own),
/// yet the trace id goes from the request into every job it caused: through the outbox, the
/// ledger's batch, and the alert that batch wrote. In the same worker, a sampled job is traced.
#[tokio::test]
async fn an_unsampled_order_exports_nothing_yet_every_job_it_caused_carries_its_trace_id() {
    let (receiver, port) = Receiver::start().await;
    let smtp = SmtpServer::start().await;
    let app = spawn_app().await;
    let shop = app.create_tenant("unsampled").await;
    // Each sale takes its product below its reorder point: the ledger's batch writes an alert.
    for sku in ["A", "B", "C"] {
        product(&app, &shop.key, sku).await;
    }
    // The server samples no caller's trace; the worker samples every trace it starts.
    let mut serve_env = otel_env(port, "serve");
    serve_env.push(("OTEL_TRACES_SAMPLER", "parentbased_traceidratio".into()));
    serve_env.push(("OTEL_TRACES_SAMPLER_ARG", "0".into()));
    let serve_env: Vec<(&str, &str)> = serve_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut serve = ServeProcess::spawn(&app, &serve_env, None).await;
    let mut work_env = otel_env(port, "work");
    work_env.push(("SMTP_URL", smtp.url()));
    let mut work = WorkerProcess::spawn(&app, "stock,invoices,emails", &work_env);

    let (traceparent, trace_id, _) = new_traceparent();
    order(&serve.base, &shop.key, &traceparent, &[("A", 1), ("B", 1)]).await;
    // A sampled receipt (of a product of its own, so that it decides no alert) pushed straight
    // to the queue: the worker traces it.
    let (sampled, sampled_trace, sampled_parent) = new_traceparent();
    let tenant = uuid::Uuid::parse_str(&shop.id).unwrap();
    let payload = json!({
        "tenant_id": shop.id, "sku": "C", "delta": 3, "reason": "receipt",
        "idempotency_key": "po-1", "reference": null, "occurred_at": chrono::Utc::now()
    });
    let mut job = backroom::queue::NewJob::new("stock_adjustment", &payload).tenant(tenant);
    job.trace = Some(sampled);
    let control = app
        .queues
        .push(
            &backroom::queue::QueueName::parse("stock").unwrap(),
            vec![job],
        )
        .await
        .unwrap()
        .remove(0)
        .id;

    // Three stock jobs, the invoice, its email and the alerts, all finished.
    let kinds = [
        "invoice_email",
        "low_stock_alert",
        "low_stock_alert",
        "render_invoice",
        "stock_adjustment",
        "stock_adjustment",
        "stock_adjustment",
    ];
    let finished = wait_for("every job to succeed", LIMIT, || async {
        let page: Value = app
            .get("/v1/jobs?status=succeeded&limit=500", Some(&shop.key))
            .await
            .json()
            .await
            .ok()?;
        let items = page["items"].as_array()?.clone();
        let mut got: Vec<&str> = items.iter().filter_map(|j| j["kind"].as_str()).collect();
        got.sort();
        (got == kinds).then_some(items)
    })
    .await;
    for item in &finished {
        let id = item["id"].as_str().unwrap();
        let view: Value = app
            .get(&format!("/v1/jobs/{id}"), Some(&shop.key))
            .await
            .json()
            .await
            .unwrap();
        let expected = if id == control {
            &sampled_trace
        } else {
            &trace_id
        };
        assert_eq!(view["trace_id"], expected.as_str(), "{view}");
    }
    let run = wait_for("the sampled sale's run", LIMIT, || async {
        receiver
            .of_trace(&sampled_trace)
            .into_iter()
            .find(|s| s.name == "job stock_adjustment")
    })
    .await;
    assert_eq!(run.parent, sampled_parent);

    // Stopped, each process exports what it still held; nothing came of the unsampled work.
    assert!(work.terminate().success());
    assert!(serve.terminate().success());
    let strays: Vec<Got> = receiver
        .spans()
        .into_iter()
        .filter(|s| s.trace_id != sampled_trace)
        .collect();
    assert!(
        strays.is_empty(),
        "spans outside the sampled trace: {strays:?}"
    );
}
