//! Queue repairs as admins make them, from the JSON admin API and the dashboard alike: the queue
//! engine applies each one in Redis, then its audit row is written (Redis has no transaction to
//! share with Postgres; a repair that Redis refused or that found nothing writes no row).

use super::Actor;
use super::audit::{self, Change};
use crate::api::AppState;
use crate::api::error::Result;
use crate::queue::{ActionOutcome, QueueName};
use serde_json::json;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobAction {
    Retry,
    Discard,
}

/// Retries or discards one job; audited when done. A job of a tenant the actor does not see is
/// missing to them.
pub async fn on_job(
    state: &AppState,
    actor: &Actor,
    id: &str,
    action: JobAction,
) -> Result<ActionOutcome> {
    let before = state.queues.get(id).await?;
    if before.as_ref().is_some_and(|job| !actor.sees(job.tenant)) {
        return Ok(ActionOutcome::Missing);
    }
    let outcome = match action {
        JobAction::Retry => state.queues.retry(id).await?,
        JobAction::Discard => state.queues.discard(id).await?,
    };
    if let (ActionOutcome::Done, Some(job)) = (&outcome, before) {
        let (name, after) = match action {
            JobAction::Retry => ("job.retry", json!({ "status": "queued" })),
            JobAction::Discard => ("job.discard", json!({ "deleted": true })),
        };
        let change = Change::new(name, id)
            .tenant(job.tenant)
            .before(json!({ "status": job.status.as_str(), "attempts": job.attempts }))
            .after(after);
        audit::record_alone(state, actor, change).await?;
    }
    Ok(outcome)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueAction {
    Pause,
    Resume,
    RetryDead,
    DiscardDead,
}

impl QueueAction {
    pub fn parse(raw: &str) -> Option<QueueAction> {
        match raw {
            "pause" => Some(QueueAction::Pause),
            "resume" => Some(QueueAction::Resume),
            "retry-dead" => Some(QueueAction::RetryDead),
            "discard-dead" => Some(QueueAction::DiscardDead),
            _ => None,
        }
    }
}

/// Applies a queue-wide action; returns how many jobs a bulk action moved. Audited.
pub async fn on_queue(
    state: &AppState,
    actor: &Actor,
    queue: &QueueName,
    action: QueueAction,
) -> Result<u64> {
    let (name, moved, after) = match action {
        QueueAction::Pause => {
            state.queues.pause(queue).await?;
            ("queue.pause", 0, json!({ "paused": true }))
        }
        QueueAction::Resume => {
            state.queues.resume(queue).await?;
            ("queue.resume", 0, json!({ "paused": false }))
        }
        QueueAction::RetryDead => {
            let n = state.queues.retry_all_dead(queue).await?;
            ("queue.retry_dead", n, json!({ "retried": n }))
        }
        QueueAction::DiscardDead => {
            let n = state.queues.discard_all_dead(queue).await?;
            ("queue.discard_dead", n, json!({ "deleted": n }))
        }
    };
    let change = Change::new(name, queue.to_string()).after(after);
    audit::record_alone(state, actor, change).await?;
    Ok(moved)
}
