//! Admin actions: retry, discard and cancel jobs; pause and resume queues and tenants; per-tenant limits.

use super::*;

impl Queues {
    /// Re-queues a dead or failed job with a fresh attempt budget.
    pub async fn retry(&self, id: &str) -> RedisResult<ActionOutcome> {
        let Some((queue, id)) = JobId::parse(id) else {
            return Ok(ActionOutcome::Missing);
        };
        let keys = self.keys(&queue);
        let mut conn = self.redis.conn().await?;
        let reply: Vec<String> = scripts::RETRY
            .key(keys.stream())
            .arg(keys.prefix())
            .arg(self.settings.clock.now_ms())
            .arg(id.as_str())
            .invoke_async(&mut conn)
            .await?;
        Ok(action_outcome(reply.first().map(String::as_str), "retried"))
    }

    /// Re-queues every dead job of a queue, in bounded batches; returns how many.
    pub async fn retry_all_dead(&self, queue: &QueueName) -> RedisResult<u64> {
        let keys = self.keys(queue);
        let mut conn = self.redis.conn().await?;
        let mut total = 0;
        loop {
            let ids: Vec<String> = redis::cmd("ZRANGE")
                .arg(keys.set(JobSet::Dead))
                .arg(0)
                .arg(ADMIN_CHUNK - 1)
                .query_async(&mut conn)
                .await?;
            if ids.is_empty() {
                return Ok(total);
            }
            let mut call = scripts::RETRY.prepare_invoke();
            call.key(keys.stream())
                .arg(keys.prefix())
                .arg(self.settings.clock.now_ms());
            for id in &ids {
                call.arg(id);
            }
            let reply: Vec<String> = call.invoke_async(&mut conn).await?;
            total += reply.iter().filter(|s| *s == "retried").count() as u64;
            // Ids that were not dead any more (retried meanwhile) leave the set anyway.
            let _: () = redis::cmd("ZREM")
                .arg(keys.set(JobSet::Dead))
                .arg(&ids)
                .query_async(&mut conn)
                .await?;
        }
    }

    /// Deletes a job that is not running.
    pub async fn discard(&self, id: &str) -> RedisResult<ActionOutcome> {
        let Some((queue, id)) = JobId::parse(id) else {
            return Ok(ActionOutcome::Missing);
        };
        let keys = self.keys(&queue);
        let mut conn = self.redis.conn().await?;
        // A group counts its discarded members (the field is set at push and never changes).
        let group: Option<String> = redis::cmd("HGET")
            .arg(keys.job(id.as_str()))
            .arg("group")
            .query_async(&mut conn)
            .await?;
        let reply: String = scripts::DISCARD
            .key(keys.stream())
            .arg(keys.prefix())
            .arg(id.as_str())
            .arg(self.settings.clock.now_ms())
            .invoke_async(&mut conn)
            .await?;
        let outcome = action_outcome(Some(&reply), "deleted");
        if outcome == ActionOutcome::Done {
            // Jobs waiting for it are told it is gone.
            self.settle(vec![(queue, id.as_str().to_string())]).await?;
            if let Some(group) = group.and_then(|g| Uuid::parse_str(&g).ok()) {
                self.note_in_group(&group, id.as_str(), deps::GONE_EPOCH, "discarded")
                    .await?;
            }
        }
        Ok(outcome)
    }

    /// Cancels a job that has not started; it ends `failed` with `reason`.
    pub async fn cancel(&self, id: &str, reason: &str) -> RedisResult<ActionOutcome> {
        let Some((queue, id)) = JobId::parse(id) else {
            return Ok(ActionOutcome::Missing);
        };
        let keys = self.keys(&queue);
        let mut conn = self.redis.conn().await?;
        let reply: String = scripts::CANCEL
            .key(keys.stream())
            .arg(keys.prefix())
            .arg(id.as_str())
            .arg(self.settings.clock.now_ms())
            .arg(reason)
            .arg(self.settings.dead_retention.as_millis() as u64)
            .invoke_async(&mut conn)
            .await?;
        let outcome = action_outcome(Some(&reply), "cancelled");
        if outcome == ActionOutcome::Done {
            self.settle(vec![(queue, id.as_str().to_string())]).await?;
        }
        Ok(outcome)
    }

    /// Sets one tenant's pause and limit on a queue (`tenant` `*` with a limit: the queue's
    /// default). Paused jobs stay queued; a resumed or un-limited tenant's jobs flow at once.
    pub async fn control_tenant(
        &self,
        queue: &QueueName,
        tenant: &str,
        paused: Option<bool>,
        limit: LimitChange,
    ) -> RedisResult<()> {
        self.tenant_control(queue, tenant, paused, limit, None)
            .await
    }

    /// Sets one tenant's rate on a queue (`tenant` `*`: the queue's default): at most `rate` of
    /// its jobs start per second across every worker, with a burst of one second's worth (at
    /// least one job). `None` returns to the queue's default; `Some(0.0)` is no rate.
    pub async fn set_tenant_rate(
        &self,
        queue: &QueueName,
        tenant: &str,
        rate: Option<f64>,
    ) -> RedisResult<()> {
        self.tenant_control(queue, tenant, None, LimitChange::Keep, Some(rate))
            .await
    }

    /// One `TENANT_CONTROL` call: pause (`None` keeps it), limit, and rate (`None` keeps it;
    /// `Some(None)` the default; 0, negative or not finite: none).
    async fn tenant_control(
        &self,
        queue: &QueueName,
        tenant: &str,
        paused: Option<bool>,
        limit: LimitChange,
        rate: Option<Option<f64>>,
    ) -> RedisResult<()> {
        let keys = self.keys(queue);
        let limit = match limit {
            LimitChange::Keep => String::new(),
            LimitChange::Default => "-".into(),
            LimitChange::Set(n) => n.to_string(),
        };
        let paused = match paused {
            None => "",
            Some(true) => "1",
            Some(false) => "0",
        };
        let rate = match rate {
            None => String::new(),
            Some(None) => "-".into(),
            Some(Some(r)) if r.is_finite() && r > 0.0 => r.to_string(),
            Some(Some(_)) => "0".into(),
        };
        let mut conn = self.redis.conn().await?;
        let _: i64 = scripts::TENANT_CONTROL
            .key(keys.stream())
            .arg(keys.prefix())
            .arg(tenant)
            .arg(paused)
            .arg(limit)
            .arg(rate)
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Applies a tenant's whole rule set on `queues`: its own limits and rates (queues not named
    /// get the defaults) and the queues it is paused on (every other queue resumes).
    pub async fn apply_tenant_rules(
        &self,
        queues: &[QueueName],
        tenant: Uuid,
        rules: &TenantRules,
    ) -> RedisResult<()> {
        let id = tenant.to_string();
        for queue in queues {
            let name = queue.as_str();
            let limit = rules
                .limits
                .get(name)
                .map_or(LimitChange::Default, |&n| LimitChange::Set(n));
            let is_paused = rules.paused.iter().any(|p| p == name);
            let rate = rules.rates.get(name).copied();
            self.tenant_control(queue, &id, Some(is_paused), limit, Some(rate))
                .await?;
        }
        Ok(())
    }

    pub async fn pause(&self, queue: &QueueName) -> RedisResult<()> {
        let mut conn = self.redis.conn().await?;
        redis::cmd("SET")
            .arg(self.keys(queue).paused())
            .arg(self.settings.clock.now_ms())
            .query_async(&mut conn)
            .await
    }

    pub async fn resume(&self, queue: &QueueName) -> RedisResult<()> {
        let mut conn = self.redis.conn().await?;
        redis::cmd("DEL")
            .arg(self.keys(queue).paused())
            .query_async(&mut conn)
            .await
    }

    /// Deletes every dead job of a queue, in bounded batches; returns how many.
    pub async fn discard_all_dead(&self, queue: &QueueName) -> RedisResult<u64> {
        let keys = self.keys(queue);
        let mut conn = self.redis.conn().await?;
        let mut total = 0;
        loop {
            let ids: Vec<String> = redis::cmd("ZRANGE")
                .arg(keys.set(JobSet::Dead))
                .arg(0)
                .arg(ADMIN_CHUNK - 1)
                .query_async(&mut conn)
                .await?;
            if ids.is_empty() {
                return Ok(total);
            }
            for id in &ids {
                let reply: String = scripts::DISCARD
                    .key(keys.stream())
                    .arg(keys.prefix())
                    .arg(id)
                    .arg(self.settings.clock.now_ms())
                    .invoke_async(&mut conn)
                    .await?;
                total += u64::from(reply == "deleted");
            }
            let _: () = redis::cmd("ZREM")
                .arg(keys.set(JobSet::Dead))
                .arg(&ids)
                .query_async(&mut conn)
                .await?;
        }
    }
}
