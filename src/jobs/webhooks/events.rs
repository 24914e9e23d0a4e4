//! Events: what happened to a tenant's work, recorded in the transaction of the change itself.
//!
//! [`record`] writes each event once (`webhook_events`, its body as it will be sent), a delivery
//! per enabled endpoint that wants its type, and each delivery's job into the outbox, all in the
//! caller's transaction: the change commits with its events or rolls back without them. A
//! tenant without endpoints costs one indexed query per call and writes nothing.

use super::DeliverWebhook;
use crate::jobs;
use crate::outbox;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};
use sqlx::{PgConnection, PgPool};
use std::time::Duration;
use uuid::Uuid;

/// The version of every event body's shape (`{"type", "id", "created_at", "version", "data"}`).
pub const VERSION: u32 = 1;

/// The event types, one list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// A stock adjustment applied: `sku`, `delta`, `reason`, `on_hand_after`, `idempotency_key`,
    /// `reference`, `movement_id`.
    StockAdjusted,
    /// A product went below its reorder point: `sku`, `on_hand`, `reorder_point`.
    StockLow,
    /// An invoice's PDF is ready: `invoice_id`, `order_id`, `number`, `pdf_url`.
    InvoiceReady,
    /// An invoice could not be made, for good: `invoice_id`, `order_id`, `reason`.
    InvoiceFailed,
    /// An email was accepted by the SMTP server: `email_id`, `kind`, `to`, `message_id`.
    EmailSent,
    /// An email failed for good: `email_id`, `kind`, `to`, `error`.
    EmailFailed,
    /// A job of any kind (but webhook deliveries) succeeded: `job_id`, `queue`, `kind`,
    /// `status`, `attempts`, `result`.
    JobSucceeded,
    /// A job failed for good (its handler said it never will work): as above, with `error`.
    JobFailed,
    /// A job ran out of attempts, panicked or could not be read: as above, with `error`.
    JobDead,
    /// A sales import ended: `import_id`, `status` (`loaded` or `failed`), the counts (`rows`,
    /// `rows_loaded`, `rows_rejected`, `days_written`, `skus`), `first_day`, `last_day`, and
    /// `error` when the file could not be read.
    ImportFinished,
    /// A forecast run ended: `run_id`, `status` (`succeeded` or `failed`), `trigger`,
    /// `skus_total`, `models` (SKUs per chosen model), `reorder` (the SKUs at or below their
    /// reorder point, most urgent first, at most 100), `reorder_count`, `error`.
    ForecastRunFinished,
    /// Every job of a group finished: `group_id`, `state` (`succeeded` or
    /// `completed_with_failures`), `total`, `succeeded`, `failed`, `dead`, `cancelled`,
    /// `discarded`, `follow_up_job_id`.
    GroupCompleted,
}

impl EventType {
    pub const ALL: [EventType; 12] = [
        EventType::StockAdjusted,
        EventType::StockLow,
        EventType::InvoiceReady,
        EventType::InvoiceFailed,
        EventType::EmailSent,
        EventType::EmailFailed,
        EventType::JobSucceeded,
        EventType::JobFailed,
        EventType::JobDead,
        EventType::ImportFinished,
        EventType::ForecastRunFinished,
        EventType::GroupCompleted,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            EventType::StockAdjusted => "stock.adjusted",
            EventType::StockLow => "stock.low",
            EventType::InvoiceReady => "invoice.ready",
            EventType::InvoiceFailed => "invoice.failed",
            EventType::EmailSent => "email.sent",
            EventType::EmailFailed => "email.failed",
            EventType::JobSucceeded => "job.succeeded",
            EventType::JobFailed => "job.failed",
            EventType::JobDead => "job.dead",
            EventType::ImportFinished => "import.finished",
            EventType::ForecastRunFinished => "forecast.run.finished",
            EventType::GroupCompleted => "group.completed",
        }
    }

    pub fn parse(raw: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.name() == raw)
    }

    /// Every type's name, comma-separated (for messages that list them).
    pub fn names() -> String {
        EventType::ALL.map(EventType::name).join(", ")
    }
}

/// One event of one tenant.
#[derive(Debug, Clone)]
pub struct Event {
    pub tenant_id: Uuid,
    pub event_type: EventType,
    pub data: Value,
    /// Set when the event may be recorded twice (a job's outcome, told again after a crash):
    /// the second recording is then ignored. Otherwise a new `msg_<uuid>`.
    pub id: Option<String>,
    /// The trace its deliveries continue (the job run that caused it); `None`: the current span.
    pub trace: Option<String>,
}

impl Event {
    pub fn new(tenant_id: Uuid, event_type: EventType, data: Value) -> Self {
        Event {
            tenant_id,
            event_type,
            data,
            id: None,
            trace: None,
        }
    }
}

/// The body every delivery of an event carries.
pub fn body(id: &str, event_type: EventType, created_at: DateTime<Utc>, data: &Value) -> Value {
    json!({
        "type": event_type.name(),
        "id": id,
        "created_at": created_at.to_rfc3339_opts(SecondsFormat::Millis, true),
        "version": VERSION,
        "data": data,
    })
}

/// Records `events` in the caller's transaction (see the module docs); returns how many
/// deliveries it queued.
pub async fn record(tx: &mut PgConnection, events: &[Event]) -> sqlx::Result<usize> {
    if events.is_empty() {
        return Ok(0);
    }
    let mut tenants: Vec<Uuid> = events.iter().map(|e| e.tenant_id).collect();
    tenants.sort();
    tenants.dedup();
    let endpoints = sqlx::query!(
        "SELECT id, tenant_id, event_types FROM webhook_endpoints
         WHERE tenant_id = ANY($1) AND enabled",
        &tenants
    )
    .fetch_all(&mut *tx)
    .await?;
    if endpoints.is_empty() {
        return Ok(0);
    }
    let now = Utc::now();
    let mut rows = Rows::default();
    for event in events {
        let name = event.event_type.name();
        let mut wanted = endpoints.iter().filter(|p| {
            p.tenant_id == event.tenant_id
                && (p.event_types.is_empty() || p.event_types.iter().any(|t| t == name))
        });
        let Some(first) = wanted.next() else {
            continue;
        };
        let id = event
            .id
            .clone()
            .unwrap_or_else(|| format!("msg_{}", Uuid::now_v7().simple()));
        for endpoint in std::iter::once(first).chain(wanted) {
            let delivery_id = Uuid::now_v7();
            rows.deliveries
                .push((delivery_id, endpoint.id, id.clone(), event));
        }
        rows.events.push((
            id.clone(),
            event,
            body(&id, event.event_type, now, &event.data),
        ));
    }
    if rows.events.is_empty() {
        return Ok(0);
    }
    rows.insert(tx).await
}

/// Records one event in a transaction of its own, for outcomes told from outside Postgres (a
/// job's, a group's: their id is fixed, so a repeat records nothing). While Postgres is
/// unreachable it tries for a few seconds, then gives up with an error in the log.
pub async fn record_alone(db: &PgPool, event: &Event) {
    let mut wait = Duration::from_millis(100);
    for _ in 0..5 {
        let recorded = async {
            let mut tx = db.begin().await?;
            record(&mut tx, std::slice::from_ref(event)).await?;
            tx.commit().await
        }
        .await;
        match recorded {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, event = event.event_type.name(), "could not record an event yet");
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
        }
    }
    tracing::error!(event = event.event_type.name(), id = ?event.id,
        "gave up recording an event: Postgres stayed unreachable");
}

#[derive(Default)]
struct Rows<'a> {
    events: Vec<(String, &'a Event, Value)>,
    deliveries: Vec<(Uuid, Uuid, String, &'a Event)>,
}

impl Rows<'_> {
    /// Inserts the events (an id recorded before is skipped, with its deliveries) and their
    /// deliveries and jobs; returns how many deliveries were queued.
    async fn insert(mut self, tx: &mut PgConnection) -> sqlx::Result<usize> {
        let ids: Vec<String> = self.events.iter().map(|e| e.0.clone()).collect();
        let tenants: Vec<Uuid> = self.events.iter().map(|e| e.1.tenant_id).collect();
        let types: Vec<String> = self
            .events
            .iter()
            .map(|e| e.1.event_type.name().to_string())
            .collect();
        let bodies: Vec<Value> = self.events.into_iter().map(|e| e.2).collect();
        let inserted: std::collections::HashSet<String> = sqlx::query_scalar!(
            "INSERT INTO webhook_events (id, tenant_id, type, body)
             SELECT * FROM UNNEST($1::text[], $2::uuid[], $3::text[], $4::jsonb[])
             ON CONFLICT (id) DO NOTHING
             RETURNING id",
            &ids,
            &tenants,
            &types,
            &bodies
        )
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .collect();
        self.deliveries.retain(|d| inserted.contains(&d.2));
        if self.deliveries.is_empty() {
            return Ok(0);
        }

        let ids: Vec<Uuid> = self.deliveries.iter().map(|d| d.0).collect();
        let tenants: Vec<Uuid> = self.deliveries.iter().map(|d| d.3.tenant_id).collect();
        let endpoints: Vec<Uuid> = self.deliveries.iter().map(|d| d.1).collect();
        let events: Vec<String> = self.deliveries.iter().map(|d| d.2.clone()).collect();
        let types: Vec<String> = self
            .deliveries
            .iter()
            .map(|d| d.3.event_type.name().to_string())
            .collect();
        sqlx::query!(
            "INSERT INTO webhook_deliveries (id, tenant_id, endpoint_id, event_id, event_type)
             SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::text[])",
            &ids,
            &tenants,
            &endpoints,
            &events,
            &types
        )
        .execute(&mut *tx)
        .await?;
        let jobs: Vec<outbox::OutboxJob> = self
            .deliveries
            .iter()
            .map(|(delivery_id, _, _, event)| {
                let mut job = jobs::outbox_job(
                    &DeliverWebhook {
                        tenant_id: event.tenant_id,
                        delivery_id: *delivery_id,
                    },
                    format!("webhook:{delivery_id}"),
                );
                if event.trace.is_some() {
                    job.trace = event.trace.clone();
                }
                job
            })
            .collect();
        outbox::add(tx, &jobs).await?;
        Ok(jobs.len())
    }
}

/// Most events one [`prune`] statement deletes, so that no prune holds its locks for long.
const PRUNE_SLICE: i64 = 10_000;

/// Deletes events older than `keep` none of whose deliveries is still pending (their deliveries
/// go with them), a slice at a time; returns how many (called by the scheduler). Until then a
/// tenant can list and replay them.
pub async fn prune(db: &PgPool, keep: Duration) -> sqlx::Result<u64> {
    let cutoff = Utc::now() - chrono::Duration::from_std(keep).unwrap_or_default();
    let mut pruned = 0;
    loop {
        let done = sqlx::query!(
            "DELETE FROM webhook_events WHERE id IN (
                 SELECT e.id FROM webhook_events e
                 WHERE e.created_at < $1
                   AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d
                                   WHERE d.event_id = e.id AND d.status = 'pending')
                 LIMIT $2)",
            cutoff,
            PRUNE_SLICE
        )
        .execute(db)
        .await?
        .rows_affected();
        pruned += done;
        if done < PRUNE_SLICE as u64 {
            return Ok(pruned);
        }
    }
}
