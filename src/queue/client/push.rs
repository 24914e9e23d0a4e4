//! Pushing jobs (with idempotency keys, start times and dependencies).

use super::deps::Edge;
use super::*;

impl Queues {
    /// Enqueues jobs in batches; returns one [`Pushed`] per job, in order. A job with parents is
    /// created `waiting` and its edges are recorded in the parents' queues before this returns.
    pub async fn push(&self, queue: &QueueName, jobs: Vec<NewJob>) -> RedisResult<Vec<Pushed>> {
        self.ensure_group(queue).await?;
        let keys = self.keys(queue);
        let mut conn = self.redis.conn().await?;
        let mut pushed = Vec::with_capacity(jobs.len());
        // Jobs without a trace of their own continue the span they are pushed in (read once).
        let current = if jobs.iter().any(|j| j.trace.is_none()) {
            crate::telemetry::traces::current_traceparent()
        } else {
            None
        };
        for chunk in jobs.chunks(PUSH_CHUNK) {
            let mut call = scripts::PUSH.prepare_invoke();
            call.key(keys.stream())
                .arg(keys.prefix())
                .arg(self.settings.clock.now_ms())
                .arg(self.settings.idempotency_retention.as_millis() as u64)
                .arg(chunk.len());
            let ids: Vec<JobId> = chunk
                .iter()
                .map(|job| job.id.clone().unwrap_or_else(|| JobId::new(queue)))
                .collect();
            for (job, id) in chunk.iter().zip(&ids) {
                let idem = job
                    .idempotency_key
                    .as_deref()
                    .map(|k| format!("{}:{k}", job.kind))
                    .unwrap_or_default();
                call.arg(id.as_str())
                    .arg(&job.kind)
                    .arg(job.tenant.map(|t| t.to_string()).unwrap_or_default())
                    .arg(&job.payload)
                    .arg(job.max_attempts)
                    .arg(job.run_at.map(|t| t.timestamp_millis()).unwrap_or(0))
                    .arg(idem)
                    .arg(if job.id.is_some() { "1" } else { "" })
                    .arg(match job.on_parent_failure {
                        ParentFailure::Cancel => "cancel",
                        ParentFailure::RunAnyway => "run",
                    })
                    .arg(job.group.map(|g| g.to_string()).unwrap_or_default())
                    .arg(
                        job.trace
                            .as_deref()
                            .or(current.as_deref())
                            .unwrap_or_default(),
                    )
                    .arg(job.depends_on.len());
                for parent in &job.depends_on {
                    call.arg(parent);
                }
            }
            let reply: Vec<Value> = call.invoke_async(&mut conn).await?;
            let mut edges = vec![];
            for (pair, job) in reply.chunks(2).zip(chunk) {
                let p = Pushed {
                    id: string(&pair[0]).ok_or_else(|| parse_error("push reply"))?,
                    created: int(&pair[1]) == Some(1),
                };
                if p.created && !job.depends_on.is_empty() {
                    edges.push(Edge {
                        child: p.id.clone(),
                        parents: job.depends_on.clone(),
                        lenient: job.parents_may_follow,
                    });
                }
                pushed.push(p);
            }
            self.link(queue, edges).await?;
        }
        for p in &pushed {
            if p.created {
                crate::queue::metrics::pushed(queue.as_str(), 1);
            }
        }
        Ok(pushed)
    }

    /// The job an idempotency key maps to (`kind`-scoped, as pushed).
    pub async fn find_by_idempotency_key(
        &self,
        queue: &QueueName,
        kind: &str,
        key: &str,
    ) -> RedisResult<Option<String>> {
        let mut conn = self.redis.conn().await?;
        redis::cmd("GET")
            .arg(format!("{}:idem:{kind}:{key}", self.keys(queue).prefix()))
            .query_async(&mut conn)
            .await
    }
}
