//! Jobs over days: counts by outcome and latency percentiles per minute (last day) or per hour
//! (30 days) from `history::stats`, as SVG charts, with the noisiest tenants to filter by.

use super::{Signed, page};
use crate::api::AppState;
use crate::api::charts;
use crate::api::error::Result;
use crate::api::history::{StatsParams, StatsRequest};
use crate::history::stats::{self, Range};
use crate::jobs::Queue;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

fn filter_query(r: &StatsRequest, tenant: Option<&str>) -> String {
    let range = match r.range {
        Range::Day => "day",
        Range::Month => "month",
    };
    url::form_urlencoded::Serializer::new(String::new())
        .append_pair("range", range)
        .append_pair("queue", r.queue.as_deref().unwrap_or(""))
        .append_pair("tenant", tenant.unwrap_or(""))
        .finish()
}

pub(super) async fn history_page(
    State(state): State<AppState>,
    Signed(s, actor): Signed,
    Query(params): Query<StatsParams>,
) -> Result<Response> {
    let r = params.check(&state, &actor).await?;
    let now = chrono::Utc::now();
    let within = actor.tenant_scope();
    let noisiest: Vec<_> = stats::noisiest(&state.db, r.range, now, r.queue.as_deref(), within, 5)
        .await?
        .into_iter()
        .map(|t| {
            minijinja::context! {
                href => format!("/admin/history?{}", filter_query(&r, Some(&t.tenant))),
                tenant => t.tenant, jobs => t.jobs, failures => t.failures,
            }
        })
        .collect();
    let tenant = r.tenant.as_ref().map(|t| t.0.clone());
    page(
        "history.html",
        minijinja::context! {
            title => "Jobs over days", nav => "history", limited => actor.tenants.is_some(), csrf => s.csrf.clone(),
            range => if r.range == Range::Month { "month" } else { "day" },
            queue => r.queue.clone().unwrap_or_default(), tenant => tenant.clone().unwrap_or_default(),
            queues => Queue::ALL.map(|q| q.name()).to_vec(),
            filter => filter_query(&r, tenant.as_deref()), noisiest,
        },
    )
}

#[derive(Deserialize)]
pub(super) struct ChartParams {
    metric: Option<String>,
    #[serde(flatten)]
    stats: StatsParams,
}

pub(super) async fn jobs_svg(
    State(state): State<AppState>,
    Signed(_, actor): Signed,
    Query(params): Query<ChartParams>,
) -> Result<Response> {
    let r = params.stats.check(&state, &actor).await?;
    let now = chrono::Utc::now();
    let s = stats::series(
        &state.db,
        r.range,
        now,
        r.queue.as_deref(),
        r.tenants.as_deref(),
    )
    .await?;
    let format = match r.range {
        Range::Day => "%H:%M",
        Range::Month => "%m-%d",
    };
    let label = |i: usize| {
        s.at.get(i)
            .map(|t| t.format(format).to_string())
            .unwrap_or_default()
    };
    let n = s.at.len();
    let labels = [label(0), label(n / 2), label(n.saturating_sub(1))];
    let labels = [labels[0].as_str(), labels[1].as_str(), labels[2].as_str()];
    let svg = match params.metric.as_deref().unwrap_or("outcomes") {
        "wait" => charts::lines(
            &[
                ("p50", "#2458a6", &s.wait_p50_ms),
                ("p95", "#d08a1c", &s.wait_p95_ms),
                ("p99", "#c0392b", &s.wait_p99_ms),
            ],
            labels,
            "Enqueue to start (ms)",
            " ms",
        ),
        "run" => charts::lines(
            &[
                ("p50", "#2458a6", &s.run_p50_ms),
                ("p95", "#d08a1c", &s.run_p95_ms),
                ("p99", "#c0392b", &s.run_p99_ms),
            ],
            labels,
            "Run time (ms)",
            " ms",
        ),
        _ => charts::stacked_bars(
            &[
                ("succeeded", "#2e8540", &s.succeeded),
                ("failed", "#d08a1c", &s.failed),
                ("dead", "#c0392b", &s.dead),
                ("cancelled", "#8a8f98", &s.cancelled),
            ],
            labels,
            "Finished jobs",
        ),
    };
    Ok((
        [
            (header::CONTENT_TYPE, "image/svg+xml"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        svg,
    )
        .into_response())
}
