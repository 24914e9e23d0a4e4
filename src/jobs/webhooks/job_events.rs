//! `job.succeeded`, `job.failed` and `job.dead`: the queue engine tells [`JobEvents`] each job's
//! final outcome (an [`OutcomeHook`]) before it records it, and this records the event.
//!
//! A job's outcome lives in Redis, so there is no Postgres transaction to share; instead the
//! event's id is fixed by the job and its attempt (`msg_job_<job id>_<attempt>`), and a worker
//! that dies after recording the event but before the outcome runs the job again and records
//! the same id, which is then ignored: delivered once in effect. A tenant with no endpoint for
//! these types costs nothing per job: who wants them is read from Postgres at most every
//! [`REFRESH`] (an endpoint created or changed is served within that time). Webhook deliveries'
//! own outcomes are not events (that would deliver forever). While Postgres is unreachable the
//! event is retried for a few seconds and then given up with an error in the log.

use super::events::{self, Event, EventType};
use crate::queue::{JobMeta, OutcomeHook};
use futures::future::BoxFuture;
use serde_json::{Value, json};
use sqlx::PgPool;
use std::collections::HashSet;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;
use uuid::Uuid;

/// How stale the list of tenants that want job events may be.
pub const REFRESH: Duration = Duration::from_secs(2);

/// Records job outcome events for the tenants that want them.
pub struct JobEvents {
    db: PgPool,
    /// When the list was read, and the tenants with an enabled endpoint for a `job.*` type.
    wanted: Mutex<Option<(Instant, HashSet<Uuid>)>>,
}

impl JobEvents {
    pub fn new(db: PgPool) -> Self {
        JobEvents {
            db,
            wanted: Mutex::new(None),
        }
    }

    async fn wants(&self, tenant: Uuid) -> sqlx::Result<bool> {
        let mut wanted = self.wanted.lock().await;
        if let Some((read, tenants)) = wanted.as_ref()
            && read.elapsed() < REFRESH
        {
            return Ok(tenants.contains(&tenant));
        }
        let types: Vec<String> = [
            EventType::JobSucceeded,
            EventType::JobFailed,
            EventType::JobDead,
        ]
        .map(|t| t.name().to_string())
        .into();
        let tenants: HashSet<Uuid> = sqlx::query_scalar!(
            "SELECT DISTINCT tenant_id FROM webhook_endpoints
             WHERE enabled AND (cardinality(event_types) = 0 OR event_types && $1)",
            &types
        )
        .fetch_all(&self.db)
        .await?
        .into_iter()
        .collect();
        let answer = tenants.contains(&tenant);
        *wanted = Some((Instant::now(), tenants));
        Ok(answer)
    }

    async fn tell(&self, meta: &JobMeta, status: &'static str, detail: &str) {
        let Some(tenant) = meta.tenant else {
            return;
        };
        let event_type = match status {
            "succeeded" => EventType::JobSucceeded,
            "failed" => EventType::JobFailed,
            "dead" => EventType::JobDead,
            _ => return,
        };
        if meta.queue == crate::jobs::Queue::Webhooks.name() {
            return;
        }
        let mut data = json!({
            "job_id": meta.id, "queue": meta.queue, "kind": meta.kind, "status": status,
            "attempts": meta.attempt, "max_attempts": meta.max_attempts,
        });
        if status == "succeeded" {
            data["result"] = serde_json::from_str(detail).unwrap_or(Value::Null);
        } else {
            data["error"] = Value::from(detail);
        }
        let event = Event {
            id: Some(format!("msg_job_{}_{}", meta.id, meta.attempt)),
            ..Event::new(tenant, event_type, data)
        };
        // When the list cannot be read, the event is recorded anyway (recording checks who
        // wants it again).
        if matches!(self.wants(tenant).await, Ok(false)) {
            return;
        }
        events::record_alone(&self.db, &event).await;
    }
}

impl OutcomeHook for JobEvents {
    fn finished<'a>(
        &'a self,
        meta: &'a JobMeta,
        status: &'static str,
        detail: &'a str,
    ) -> BoxFuture<'a, ()> {
        Box::pin(self.tell(meta, status, detail))
    }
}
