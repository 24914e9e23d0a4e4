//! Pushing jobs (with idempotency keys and start times).

use super::*;

impl Queues {
    /// Enqueues jobs in batches; returns one [`Pushed`] per job, in order.
    pub async fn push(&self, queue: &QueueName, jobs: Vec<NewJob>) -> RedisResult<Vec<Pushed>> {
        self.ensure_group(queue).await?;
        let keys = self.keys(queue);
        let mut conn = self.redis.conn().await?;
        let mut pushed = Vec::with_capacity(jobs.len());
        for chunk in jobs.chunks(PUSH_CHUNK) {
            let mut call = scripts::PUSH.prepare_invoke();
            call.key(keys.stream())
                .arg(keys.prefix())
                .arg(self.settings.clock.now_ms())
                .arg(self.settings.idempotency_retention.as_millis() as u64)
                .arg(chunk.len());
            for job in chunk {
                let idem = job
                    .idempotency_key
                    .as_deref()
                    .map(|k| format!("{}:{k}", job.kind))
                    .unwrap_or_default();
                call.arg(JobId::new(queue).as_str())
                    .arg(&job.kind)
                    .arg(job.tenant.map(|t| t.to_string()).unwrap_or_default())
                    .arg(&job.payload)
                    .arg(job.max_attempts)
                    .arg(job.run_at.map(|t| t.timestamp_millis()).unwrap_or(0))
                    .arg(idem);
            }
            let reply: Vec<Value> = call.invoke_async(&mut conn).await?;
            for pair in reply.chunks(2) {
                pushed.push(Pushed {
                    id: string(&pair[0]).ok_or_else(|| parse_error("push reply"))?,
                    created: int(&pair[1]) == Some(1),
                });
            }
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
