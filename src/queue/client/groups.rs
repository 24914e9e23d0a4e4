//! Groups: many jobs (on any queues) with one id, one status and an optional follow-up job that
//! is pushed once when every member has finished (Sidekiq's batch `on(:complete)`).
//!
//! A group's members may be on several queues, so the group has a hash tag of its own
//! ([`GroupKeys`]) and learns of its members the way children learn of their parents (see
//! [`super::deps`]): a member carries the field `group`; when it finishes, its outcome's epoch
//! goes up and its id into its queue's `:settle` set in the same script; [`Queues::settle`] then
//! notes the outcome in the group (`GROUP_NOTE`, applied only when the epoch is newer, so a
//! repeat counts once), and a crash before that is repaired from `:settle`. The group completes
//! in the script that notes its last outcome; the follow-up is pushed with the idempotency key
//! `group:<id>` and then marked pushed, so two processes noting at once, or a repair after a
//! crash between the two steps, push it once.
//!
//! Cost: O(1) per member (one counter change and one hash field); reading a group is one small
//! hash. Members are counted by outcome only, so opening a group needs its size up front
//! ([`GroupSpec::total`]); members that finish before it opens are counted when it does.
//!
//! Retention: a running group never expires; a completed one is kept as long as a job that
//! ended the same way (the succeeded retention when all succeeded, the failed one otherwise).

use super::*;
use crate::queue::keys::GroupKeys;
use futures::future::BoxFuture;

/// Told once of each group that completes (the webhooks' `group.completed`), by whichever
/// process notes its last member: called before the completion is marked announced, so a
/// crash in between calls it again (the hook must accept a repeat).
pub trait GroupHook: Send + Sync + 'static {
    fn completed<'a>(&'a self, group: &'a GroupView) -> BoxFuture<'a, ()>;
}

/// A group to open. Open it before pushing its members (`NewJob::in_group`), or after: the
/// count is the same.
#[derive(Debug, Clone)]
pub struct GroupSpec {
    pub id: Uuid,
    pub tenant: Option<Uuid>,
    /// How many members it has; it completes when that many have finished.
    pub total: u64,
    /// Pushed once when the group completes, whatever its members' outcomes.
    pub follow_up: Option<(QueueName, NewJob)>,
}

/// Where a group stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum GroupState {
    /// Some members have not finished.
    Running,
    /// Every member succeeded.
    Succeeded,
    /// Every member finished; at least one did not succeed.
    CompletedWithFailures,
}

/// A group's status, read in one call (as `GET /v1/groups/{id}` answers it, less the tenant).
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct GroupView {
    pub id: Uuid,
    /// Whose group it is (the API scopes by it and does not show it).
    #[serde(skip)]
    pub tenant: Option<Uuid>,
    pub state: GroupState,
    pub total: u64,
    /// Members not finished yet (queued, waiting, running, retrying).
    pub pending: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub dead: u64,
    pub cancelled: u64,
    pub discarded: u64,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The job pushed when the group completed, if it has a follow-up.
    #[serde(rename = "follow_up_job_id")]
    pub follow_up_job: Option<String>,
}

/// A follow-up as stored in the group.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct StoredFollowUp {
    queue: String,
    kind: String,
    tenant: Option<Uuid>,
    payload: String,
    max_attempts: u32,
    /// The trace it continues (of the span that opened the group).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    trace: Option<String>,
}

impl Queues {
    fn group_keys(&self, id: &Uuid) -> GroupKeys {
        GroupKeys::new(&self.namespace, &id.to_string())
    }

    /// Opens a group (repeating it changes nothing).
    pub async fn open_group(&self, spec: GroupSpec) -> RedisResult<()> {
        let keys = self.group_keys(&spec.id);
        let follow_up = match &spec.follow_up {
            Some((queue, job)) => serde_json::to_string(&StoredFollowUp {
                queue: queue.to_string(),
                kind: job.kind.clone(),
                tenant: job.tenant,
                payload: String::from_utf8_lossy(&job.payload).into_owned(),
                max_attempts: job.max_attempts,
                trace: job.trace.clone(),
            })
            .expect("a follow-up serializes"),
            None => String::new(),
        };
        let mut conn = self.redis.conn().await?;
        let reply: Vec<Value> = scripts::GROUP_OPEN
            .key(keys.meta())
            .arg(keys.prefix())
            .arg(spec.tenant.map(|t| t.to_string()).unwrap_or_default())
            .arg(spec.total)
            .arg(self.settings.clock.now_ms())
            .arg(self.settings.succeeded_retention.as_millis() as u64)
            .arg(self.settings.dead_retention.as_millis() as u64)
            .arg(follow_up)
            .invoke_async(&mut conn)
            .await?;
        self.after_group_change(&spec.id, &reply).await
    }

    /// Notes how a member ended (from [`Queues::settle`] and an admin's discard).
    pub(super) async fn note_in_group(
        &self,
        group: &Uuid,
        member: &str,
        epoch: i64,
        outcome: &str,
    ) -> RedisResult<()> {
        let keys = self.group_keys(group);
        let mut conn = self.redis.conn().await?;
        let reply: Vec<Value> = scripts::GROUP_NOTE
            .key(keys.meta())
            .arg(keys.prefix())
            .arg(member)
            .arg(epoch)
            .arg(outcome)
            .arg(self.settings.clock.now_ms())
            .arg(self.settings.succeeded_retention.as_millis() as u64)
            .arg(self.settings.dead_retention.as_millis() as u64)
            .invoke_async(&mut conn)
            .await?;
        self.after_group_change(group, &reply).await
    }

    /// Pushes the follow-up and tells the hook when the group's script says they are due.
    async fn after_group_change(&self, group: &Uuid, reply: &[Value]) -> RedisResult<()> {
        if let Some(follow_up) = reply.get(1).and_then(string).filter(|f| !f.is_empty()) {
            self.push_follow_up(group, &follow_up).await?;
        }
        if reply.get(2).and_then(int) == Some(1)
            && let Some(hook) = &self.group_hook
            && let Some(view) = self.group(group).await?
        {
            hook.completed(&view).await;
            let mut conn = self.redis.conn().await?;
            let _: i64 = scripts::GROUP_MARK
                .key(self.group_keys(group).meta())
                .arg("announced")
                .arg(1)
                .invoke_async(&mut conn)
                .await?;
        }
        Ok(())
    }

    /// Pushes the follow-up `raw` (as stored in the group) and marks it pushed.
    async fn push_follow_up(&self, group: &Uuid, raw: &str) -> RedisResult<()> {
        let Ok(stored) = serde_json::from_str::<StoredFollowUp>(raw) else {
            return Ok(());
        };
        let Some(queue) = QueueName::parse(&stored.queue) else {
            return Ok(());
        };
        let mut job = NewJob::raw(&stored.kind, stored.payload.into_bytes())
            .max_attempts(stored.max_attempts)
            .idempotency_key(format!("group:{group}"))
            .trace(stored.trace);
        if let Some(tenant) = stored.tenant {
            job = job.tenant(tenant);
        }
        let pushed = self.push(&queue, vec![job]).await?;
        let mut conn = self.redis.conn().await?;
        let _: i64 = scripts::GROUP_MARK
            .key(self.group_keys(group).meta())
            .arg("followed")
            .arg(&pushed[0].id)
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }

    /// A group's status; `None` when there is no such group (or it has passed its retention).
    pub async fn group(&self, id: &Uuid) -> RedisResult<Option<GroupView>> {
        let keys = self.group_keys(id);
        let mut conn = self.redis.conn().await?;
        let fields: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(keys.meta())
            .query_async(&mut conn)
            .await?;
        let Some(total) = fields.get("total").and_then(|t| t.parse::<u64>().ok()) else {
            return Ok(None);
        };
        let count = |name: &str| {
            fields
                .get(name)
                .and_then(|v| v.parse::<i64>().ok())
                .unwrap_or(0)
                .max(0) as u64
        };
        let time = |name: &str| {
            fields
                .get(name)
                .and_then(|v| v.parse::<i64>().ok())
                .and_then(ms_to_time)
        };
        let (succeeded, failed, dead) = (count("succeeded"), count("failed"), count("dead"));
        let (cancelled, discarded) = (count("cancelled"), count("discarded"));
        let finished = succeeded + failed + dead + cancelled + discarded;
        let state = match fields.get("state").map(String::as_str) {
            Some("succeeded") => GroupState::Succeeded,
            Some("completed_with_failures") => GroupState::CompletedWithFailures,
            _ => GroupState::Running,
        };
        Ok(Some(GroupView {
            id: *id,
            tenant: fields.get("tenant").and_then(|t| Uuid::parse_str(t).ok()),
            state,
            total,
            pending: total.saturating_sub(finished),
            succeeded,
            failed,
            dead,
            cancelled,
            discarded,
            created_at: time("created_at").unwrap_or_default(),
            finished_at: time("finished_at"),
            follow_up_job: fields.get("followed").cloned(),
        }))
    }
}
