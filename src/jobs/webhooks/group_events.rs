//! `group.completed`: the queue engine tells [`GroupEvents`] (a [`GroupHook`]) once a group's
//! last member has finished, and this records the event for the group's tenant.
//!
//! As with job events there is no transaction to share with Redis; the event's id is fixed by
//! the group (`msg_group_<id>`), so the engine telling again after a crash records nothing new
//! (see [`events::record_alone`]).

use super::events::{self, Event, EventType};
use crate::queue::{GroupHook, GroupView};
use futures::future::BoxFuture;
use serde_json::json;
use sqlx::PgPool;
use std::sync::Arc;

/// Records `group.completed` events.
pub struct GroupEvents {
    db: PgPool,
}

impl GroupEvents {
    /// The hook to install on a process's queue client.
    pub fn hook(db: PgPool) -> Arc<dyn GroupHook> {
        Arc::new(GroupEvents { db })
    }

    async fn tell(&self, group: &GroupView) {
        let Some(tenant) = group.tenant else {
            return;
        };
        let data = json!({
            "group_id": group.id, "state": group.state, "total": group.total,
            "succeeded": group.succeeded, "failed": group.failed, "dead": group.dead,
            "cancelled": group.cancelled, "discarded": group.discarded,
            "follow_up_job_id": group.follow_up_job,
        });
        let event = Event {
            id: Some(format!("msg_group_{}", group.id.simple())),
            ..Event::new(tenant, EventType::GroupCompleted, data)
        };
        events::record_alone(&self.db, &event).await;
    }
}

impl GroupHook for GroupEvents {
    fn completed<'a>(&'a self, group: &'a GroupView) -> BoxFuture<'a, ()> {
        Box::pin(self.tell(group))
    }
}
