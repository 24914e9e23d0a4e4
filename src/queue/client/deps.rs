//! Jobs that wait for other jobs (`depends_on`), on any queue, exactly once, on one Redis or a
//! Redis Cluster.
//!
//! # Why no script ever spans two queues
//! A queue's keys share one hash tag (one Cluster slot), and a parent and its child may be on
//! different queues, so no Lua script can see both. Each side keeps its own half, and every
//! step is a single-slot script that can be repeated without effect:
//! - **Child side** (the child's queue): the child is pushed `waiting` with a hash
//!   `:parents:<child>` of parent id → `"<epoch>:<state>"` (`-1:pending` at first), and counters
//!   `deps_left` (parents not succeeded) and `deps_failed` in its job hash.
//! - **Parent side** (each parent's queue): a list `:children:<parent>` and the field `children`
//!   on the parent's hash. Recording an edge (`LINK`) is atomic with the parent's own outcome, so
//!   an edge recorded before the parent finishes is seen by its finish, and one recorded after
//!   reads the outcome directly.
//! - **Telling the children** (`DEP_SETTLE`, in the child's slot): an edge's news carries the
//!   parent's epoch (its `settles` count, raised each time it finishes with children) and is
//!   applied only if newer than what the child recorded. So the same news twice (two workers,
//!   a repair after a crash) counts once, and an old "dead" arriving after a newer "succeeded"
//!   (an admin retried the parent) changes nothing. The child becomes ready in the same script
//!   that brings `deps_left` to zero: exactly once, however many parents finish at once.
//!
//! # Crashes
//! A parent that finishes with children goes into its queue's `:settle` set in the same script
//! as its outcome; it leaves only once every child was told (and only if it did not finish again
//! meanwhile). A child goes into `:linking` when pushed and leaves once its edges are recorded.
//! Queue upkeep repeats whatever sits in either set for longer than [`REPAIR_AFTER`], so a
//! process killed between a parent's outcome and its children's release (or between a push and
//! its edges) delays the release by seconds and never loses it.
//!
//! # Cost
//! O(1) per edge: a fan-out of 100,000 children is read in slices of [`SLICE`] and told in one
//! script per slice and child queue; a fan-in of 10,000 parents is one counter in the child. No
//! call unpacks an unbounded list.

use super::*;
use std::collections::VecDeque;
use std::time::Duration;

/// Edges per script call and children read per slice.
const SLICE: usize = 1000;
/// Work left in `:settle` or `:linking` this long is taken to be a crashed process's and redone.
pub const REPAIR_AFTER: Duration = Duration::from_secs(2);
/// The epoch of news about a parent that no longer exists (discarded): newer than any outcome.
pub(super) const GONE_EPOCH: i64 = 1 << 40;

/// A job just pushed with its parents.
pub(super) struct Edge {
    pub child: String,
    pub parents: Vec<String>,
    /// A parent that does not exist yet will be pushed (see [`NewJob::parents_may_follow`]).
    pub lenient: bool,
}

/// A finished job's `status`, `settles`, `children` and `group`.
type JobFields = (Option<String>, Option<i64>, Option<String>, Option<String>);

/// What one parent's outcome means for one child.
struct News {
    child: String,
    parent: String,
    epoch: i64,
    state: String,
}

impl Queues {
    /// Records the edges of freshly pushed children (all of `queue`) in their parents' queues,
    /// then tells each child about parents that had already finished.
    pub(super) async fn link(&self, queue: &QueueName, edges: Vec<Edge>) -> RedisResult<()> {
        if edges.is_empty() {
            return Ok(());
        }
        let mut conn = self.redis.conn().await?;
        // Per parent queue and mode: (parent, child) pairs.
        let mut by_queue: HashMap<(QueueName, bool), Vec<(String, String)>> = HashMap::new();
        let mut news = vec![];
        for edge in &edges {
            for parent in &edge.parents {
                match JobId::parse(parent) {
                    Some((parent_queue, _)) => by_queue
                        .entry((parent_queue, edge.lenient))
                        .or_default()
                        .push((parent.clone(), edge.child.clone())),
                    None => news.push(News {
                        child: edge.child.clone(),
                        parent: parent.clone(),
                        epoch: 0,
                        state: "failed".into(),
                    }),
                }
            }
        }
        for ((parent_queue, lenient), pairs) in by_queue {
            let keys = self.keys(&parent_queue);
            for slice in pairs.chunks(SLICE) {
                let mut call = scripts::LINK.prepare_invoke();
                call.key(keys.stream()).arg(keys.prefix()).arg(if lenient {
                    "lenient"
                } else {
                    "strict"
                });
                for (parent, child) in slice {
                    call.arg(parent).arg(child);
                }
                let reply: Vec<Value> = call.invoke_async(&mut conn).await?;
                for ((parent, child), answer) in slice.iter().zip(reply.chunks(2)) {
                    let state = string(&answer[0]).unwrap_or_default();
                    if state == "pending" {
                        continue;
                    }
                    news.push(News {
                        child: child.clone(),
                        parent: parent.clone(),
                        epoch: int(&answer[1]).unwrap_or(0),
                        // A parent that does not exist cannot succeed.
                        state: if state == "ok" { "ok" } else { "failed" }.into(),
                    });
                }
            }
        }
        let cascade = self.tell(queue, news).await?;
        let keys = self.keys(queue);
        let children: Vec<&str> = edges.iter().map(|e| e.child.as_str()).collect();
        for slice in children.chunks(SLICE) {
            let _: () = redis::cmd("ZREM")
                .arg(keys.linking())
                .arg(slice)
                .query_async(&mut conn)
                .await?;
        }
        // Boxed: settling may push a group's follow-up, which may link again.
        Box::pin(self.settle(cascade)).await
    }

    /// Applies news to children of `queue`; returns the children it cancelled that have
    /// children of their own.
    async fn tell(
        &self,
        queue: &QueueName,
        news: Vec<News>,
    ) -> RedisResult<Vec<(QueueName, String)>> {
        let keys = self.keys(queue);
        let mut conn = self.redis.conn().await?;
        let mut cascade = vec![];
        for slice in news.chunks(SLICE) {
            let mut call = scripts::DEP_SETTLE.prepare_invoke();
            call.key(keys.stream())
                .arg(keys.prefix())
                .arg(self.settings.clock.now_ms())
                .arg(self.settings.dead_retention.as_millis() as u64);
            for n in slice {
                call.arg(&n.child).arg(&n.parent).arg(n.epoch).arg(&n.state);
            }
            let reply: Vec<Value> = call.invoke_async(&mut conn).await?;
            cascade.extend(
                reply
                    .iter()
                    .skip(1)
                    .filter_map(string)
                    .map(|id| (queue.clone(), id)),
            );
        }
        Ok(cascade)
    }

    /// Tells the children of finished parents how they ended, following cancellations down
    /// the chain. Safe to repeat and to run in several processes at once.
    pub async fn settle(&self, parents: Vec<(QueueName, String)>) -> RedisResult<()> {
        let mut todo: VecDeque<(QueueName, String)> = parents.into();
        let mut conn = self.redis.conn().await?;
        while let Some((queue, parent)) = todo.pop_front() {
            let keys = self.keys(&queue);
            let (fields, marker): (JobFields, Option<f64>) = redis::pipe()
                .cmd("HMGET")
                .arg(keys.job(&parent))
                .arg(&["status", "settles", "children", "group"])
                .cmd("ZSCORE")
                .arg(keys.settle())
                .arg(&parent)
                .query_async(&mut conn)
                .await?;
            let (status, settles, children, group) = fields;
            let (state, epoch) = match status.as_deref() {
                Some("succeeded") => ("ok", settles.unwrap_or(0)),
                Some("failed" | "dead" | "cancelled") => ("failed", settles.unwrap_or(0)),
                None => ("failed", GONE_EPOCH),
                // Not finished (retried since): its next outcome will be told.
                Some(_) => ("", 0),
            };
            if let (Some(group), Some(outcome)) = (
                group.and_then(|g| Uuid::parse_str(&g).ok()),
                status.as_deref().filter(|_| !state.is_empty()),
            ) {
                self.note_in_group(&group, &parent, epoch, outcome).await?;
            }
            // A discarded parent (no hash left) may have had children.
            if !state.is_empty() && (children.is_some() || status.is_none()) {
                let mut start = 0;
                loop {
                    let children: Vec<String> = redis::cmd("LRANGE")
                        .arg(keys.children(&parent))
                        .arg(start)
                        .arg(start + SLICE - 1)
                        .query_async(&mut conn)
                        .await?;
                    let mut by_queue: HashMap<QueueName, Vec<News>> = HashMap::new();
                    for child in &children {
                        if let Some((child_queue, _)) = JobId::parse(child) {
                            by_queue.entry(child_queue).or_default().push(News {
                                child: child.clone(),
                                parent: parent.clone(),
                                epoch,
                                state: state.into(),
                            });
                        }
                    }
                    for (child_queue, news) in by_queue {
                        todo.extend(self.tell(&child_queue, news).await?);
                    }
                    if children.len() < SLICE {
                        break;
                    }
                    start += SLICE;
                }
                if status.is_none() {
                    let _: () = redis::cmd("DEL")
                        .arg(keys.children(&parent))
                        .query_async(&mut conn)
                        .await?;
                }
            }
            if let Some(score) = marker {
                let _: i64 = scripts::SETTLED
                    .key(keys.stream())
                    .arg(keys.prefix())
                    .arg(&parent)
                    .arg(score)
                    .invoke_async(&mut conn)
                    .await?;
            }
        }
        Ok(())
    }

    /// Redoes what crashed processes left undone on `queue`: parents whose children were not
    /// all told, children whose edges were not all recorded. Returns how many it redid.
    pub async fn repair_dependencies(&self, queue: &QueueName) -> RedisResult<u64> {
        let keys = self.keys(queue);
        let before = self.settings.clock.now_ms() - REPAIR_AFTER.as_millis() as i64;
        let mut conn = self.redis.conn().await?;
        let (parents, children): (Vec<String>, Vec<String>) = redis::pipe()
            .cmd("ZRANGEBYSCORE")
            .arg(keys.settle())
            .arg("-inf")
            .arg(before)
            .arg("LIMIT")
            .arg(0)
            .arg(100)
            .cmd("ZRANGEBYSCORE")
            .arg(keys.linking())
            .arg("-inf")
            .arg(before)
            .arg("LIMIT")
            .arg(0)
            .arg(100)
            .query_async(&mut conn)
            .await?;
        let redone = (parents.len() + children.len()) as u64;
        if !parents.is_empty() {
            tracing::info!(queue = %queue, parents = parents.len(),
                "telling waiting jobs about parents a stopped process finished");
            self.settle(parents.into_iter().map(|p| (queue.clone(), p)).collect())
                .await?;
        }
        let mut edges = vec![];
        for child in children {
            // Every parent still pending (the edges may be recorded twice: harmless).
            let mut parents = vec![];
            let mut cursor = 0u64;
            loop {
                let (next, fields): (u64, Vec<String>) = redis::cmd("HSCAN")
                    .arg(keys.parents(&child))
                    .arg(cursor)
                    .arg("COUNT")
                    .arg(SLICE)
                    .query_async(&mut conn)
                    .await?;
                for pair in fields.chunks(2) {
                    if pair.len() == 2 && pair[1].ends_with(":pending") {
                        parents.push(pair[0].clone());
                    }
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
            edges.push(Edge {
                child,
                parents,
                lenient: true,
            });
        }
        self.link(queue, edges).await?;
        Ok(redone)
    }

    /// The ids of the jobs `child` waited for (for a handler that reads its parents' results).
    pub async fn parents_of(&self, child: &str) -> RedisResult<Vec<String>> {
        let Some((queue, id)) = JobId::parse(child) else {
            return Ok(vec![]);
        };
        let mut conn = self.redis.conn().await?;
        let mut parents = vec![];
        let mut cursor = 0u64;
        loop {
            let (next, fields): (u64, Vec<String>) = redis::cmd("HSCAN")
                .arg(self.keys(&queue).parents(id.as_str()))
                .arg(cursor)
                .arg("COUNT")
                .arg(SLICE)
                .query_async(&mut conn)
                .await?;
            parents.extend(fields.chunks(2).map(|pair| pair[0].clone()));
            if next == 0 {
                return Ok(parents);
            }
            cursor = next;
        }
    }
}
