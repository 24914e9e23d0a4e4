//! Upkeep the workers run: consumer groups, promoting due jobs, trimming retention.

use super::*;

impl Queues {
    /// Creates the queue's stream and consumer group if needed (from the start of the stream, so
    /// jobs pushed before any worker ran are not skipped).
    pub async fn ensure_group(&self, queue: &QueueName) -> RedisResult<()> {
        if self.groups_ready.lock().unwrap().contains(queue.as_str()) {
            return Ok(());
        }
        let mut conn = self.redis.conn().await?;
        let created: RedisResult<Value> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(self.keys(queue).stream())
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut conn)
            .await;
        match created {
            Ok(_) => {}
            Err(e) if e.code() == Some("BUSYGROUP") => {}
            Err(e) => return Err(e),
        }
        self.groups_ready
            .lock()
            .unwrap()
            .insert(queue.as_str().to_string());
        Ok(())
    }

    /// Moves due scheduled and retrying jobs into the stream; returns how many moved.
    pub async fn promote_due(&self, queue: &QueueName) -> RedisResult<u64> {
        let keys = self.keys(queue);
        let mut conn = self.redis.conn().await?;
        let mut total = 0;
        loop {
            let moved: u64 = scripts::PROMOTE
                .key(keys.stream())
                .arg(keys.prefix())
                .arg(self.settings.clock.now_ms())
                .arg(ADMIN_CHUNK)
                .invoke_async(&mut conn)
                .await?;
            total += moved;
            if moved < ADMIN_CHUNK as u64 {
                return Ok(total);
            }
        }
    }

    /// Drops finished jobs older than their retention from the finished sets and deletes their
    /// hashes, in bounded batches. O(log n + removed).
    pub async fn trim(&self, queue: &QueueName) -> RedisResult<u64> {
        const BATCH: u64 = 500;
        let keys = self.keys(queue);
        let now = self.settings.clock.now_ms();
        let mut conn = self.redis.conn().await?;
        let mut total = 0;
        for (set, keep) in [
            (JobSet::Succeeded, self.settings.succeeded_retention),
            (JobSet::Failed, self.settings.dead_retention),
            (JobSet::Dead, self.settings.dead_retention),
            (JobSet::Cancelled, self.settings.dead_retention),
        ] {
            loop {
                let removed: u64 = scripts::TRIM
                    .key(keys.stream())
                    .arg(keys.prefix())
                    .arg(set.suffix())
                    .arg(now - keep.as_millis() as i64)
                    .arg(BATCH)
                    .invoke_async(&mut conn)
                    .await?;
                total += removed;
                if removed < BATCH {
                    break;
                }
            }
        }
        Ok(total)
    }
}
