//! Reading the queues: one job, counts, lists, per-minute outcomes, workers, tenants' state.

use super::*;

impl Queues {
    /// One job, from its id alone (the id names its queue).
    pub async fn get(&self, id: &str) -> RedisResult<Option<JobRecord>> {
        let Some((queue, id)) = JobId::parse(id) else {
            return Ok(None);
        };
        let mut conn = self.redis.conn().await?;
        let fields: HashMap<String, Vec<u8>> = redis::cmd("HGETALL")
            .arg(self.keys(&queue).job(id.as_str()))
            .query_async(&mut conn)
            .await?;
        parse_record(&queue, id.as_str(), fields)
    }

    async fn get_many(&self, queue: &QueueName, ids: &[String]) -> RedisResult<Vec<JobRecord>> {
        if ids.is_empty() {
            return Ok(vec![]);
        }
        let keys = self.keys(queue);
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.cmd("HGETALL").arg(keys.job(id));
        }
        let mut conn = self.redis.conn().await?;
        let replies: Vec<HashMap<String, Vec<u8>>> = pipe.query_async(&mut conn).await?;
        let mut records = Vec::with_capacity(ids.len());
        for (id, fields) in ids.iter().zip(replies) {
            if let Some(record) = parse_record(queue, id, fields)? {
                records.push(record);
            }
        }
        Ok(records)
    }

    pub async fn counts(&self, queue: &QueueName) -> RedisResult<QueueCounts> {
        self.ensure_group(queue).await?;
        let keys = self.keys(queue);
        let mut pipe = redis::pipe();
        pipe.cmd("XLEN").arg(keys.stream());
        pipe.cmd("XPENDING").arg(keys.stream()).arg(GROUP);
        for set in [
            JobSet::Scheduled,
            JobSet::Retrying,
            JobSet::Succeeded,
            JobSet::Failed,
            JobSet::Dead,
            JobSet::Waiting,
            JobSet::Cancelled,
        ] {
            pipe.cmd("ZCARD").arg(keys.set(set));
        }
        pipe.cmd("EXISTS").arg(keys.paused());
        pipe.cmd("GET").arg(keys.waiting());
        let mut conn = self.redis.conn().await?;
        let replies: Vec<Value> = pipe.query_async(&mut conn).await?;
        let n = |i: usize| int(&replies[i]).unwrap_or(0).max(0) as u64;
        let stream_len = n(0);
        let running = array(&replies[1]).first().and_then(int).unwrap_or(0).max(0) as u64;
        let waiting = string(&replies[10])
            .and_then(|w| w.parse::<u64>().ok())
            .unwrap_or(0);
        Ok(QueueCounts {
            // Waiting in the tenants' ready lists, plus any delivered-to-nobody stream entries.
            pending: waiting + stream_len.saturating_sub(running),
            running,
            scheduled: n(2),
            retrying: n(3),
            succeeded: n(4),
            failed: n(5),
            dead: n(6),
            waiting: n(7),
            cancelled: n(8),
            paused: n(9) == 1,
        })
    }

    /// Jobs finished per minute (succeeded + failed) for the last `minutes` minutes, oldest first.
    pub async fn processed_per_minute(
        &self,
        queue: &QueueName,
        minutes: usize,
    ) -> RedisResult<Vec<u64>> {
        Ok(self
            .outcomes_per_minute(queue, minutes)
            .await?
            .into_iter()
            .map(|(succeeded, failed)| succeeded + failed)
            .collect())
    }

    /// (succeeded, failed) per minute for the last `minutes` minutes, oldest first.
    pub async fn outcomes_per_minute(
        &self,
        queue: &QueueName,
        minutes: usize,
    ) -> RedisResult<Vec<(u64, u64)>> {
        let keys = self.keys(queue);
        let this_minute = self.settings.clock.now_ms() / 60_000;
        let mut pipe = redis::pipe();
        for m in (0..minutes as i64).rev() {
            pipe.cmd("HMGET")
                .arg(keys.stats_minute(this_minute - m))
                .arg("succeeded")
                .arg("failed");
        }
        let mut conn = self.redis.conn().await?;
        let replies: Vec<(Option<u64>, Option<u64>)> = pipe.query_async(&mut conn).await?;
        Ok(replies
            .into_iter()
            .map(|(s, f)| (s.unwrap_or(0), f.unwrap_or(0)))
            .collect())
    }

    /// A page of jobs with `status`. Finished jobs come newest first, scheduled and retrying
    /// soonest first, queued and running in stream order.
    pub async fn list(
        &self,
        queue: &QueueName,
        status: JobStatus,
        limit: usize,
        cursor: Option<&str>,
    ) -> RedisResult<ListedJobs> {
        self.ensure_group(queue).await?;
        let keys = self.keys(queue);
        let mut conn = self.redis.conn().await?;
        let (ids, next_cursor) = match status.set() {
            Some(set) => {
                let offset: isize = cursor.and_then(|c| c.parse().ok()).unwrap_or(0).max(0);
                let newest_first = matches!(
                    status,
                    JobStatus::Succeeded
                        | JobStatus::Failed
                        | JobStatus::Dead
                        | JobStatus::Cancelled
                );
                let ids: Vec<String> =
                    redis::cmd(if newest_first { "ZREVRANGE" } else { "ZRANGE" })
                        .arg(keys.set(set))
                        .arg(offset)
                        .arg(offset + limit as isize)
                        .query_async(&mut conn)
                        .await?;
                page(ids, limit, |_, n| (offset + n as isize).to_string())
            }
            None if status == JobStatus::Queued => {
                // Tenant by tenant in ring order (the order the next fetches take them in,
                // roughly), each tenant's jobs oldest first. Cursor: "<ring index>.<offset>".
                let (mut tenant_at, mut offset) = cursor
                    .and_then(|c| c.split_once('.'))
                    .and_then(|(t, o)| Some((t.parse::<usize>().ok()?, o.parse::<usize>().ok()?)))
                    .unwrap_or((0, 0));
                let ring: Vec<String> = redis::cmd("LRANGE")
                    .arg(keys.ring())
                    .arg(0)
                    .arg(MAX_LISTED_TENANTS - 1)
                    .query_async(&mut conn)
                    .await?;
                let mut ids = vec![];
                let mut positions = vec![];
                while ids.len() <= limit && tenant_at < ring.len() {
                    let want = limit + 1 - ids.len();
                    let got: Vec<String> = redis::cmd("LRANGE")
                        .arg(keys.ready(&ring[tenant_at]))
                        .arg(offset)
                        .arg(offset + want - 1)
                        .query_async(&mut conn)
                        .await?;
                    for (k, id) in got.iter().enumerate() {
                        positions.push(format!("{tenant_at}.{}", offset + k + 1));
                        ids.push(id.clone());
                    }
                    if got.len() < want {
                        tenant_at += 1;
                        offset = 0;
                    } else {
                        offset += got.len();
                    }
                }
                page(ids, limit, |i, _| positions[i].clone())
            }
            None => {
                let start = cursor
                    .map(|c| format!("({c}"))
                    .unwrap_or_else(|| "-".into());
                let pending: Vec<Value> = redis::cmd("XPENDING")
                    .arg(keys.stream())
                    .arg(GROUP)
                    .arg(start)
                    .arg("+")
                    .arg(limit + 1)
                    .query_async(&mut conn)
                    .await?;
                let entries: Vec<String> = pending
                    .iter()
                    .filter_map(|p| array(p).first().and_then(string))
                    .collect();
                let mut pipe = redis::pipe();
                for e in &entries {
                    pipe.cmd("XRANGE").arg(keys.stream()).arg(e).arg(e);
                }
                let ranges: Vec<Vec<Value>> = if entries.is_empty() {
                    vec![]
                } else {
                    pipe.query_async(&mut conn).await?
                };
                let pairs: Vec<(String, String)> = ranges
                    .iter()
                    .filter_map(|r| r.first().and_then(entry_pair))
                    .collect();
                let ids = pairs.iter().map(|(_, id)| id.clone()).collect();
                page(ids, limit, |i, _| pairs[i].0.clone())
            }
        };
        let mut items = self.get_many(queue, &ids).await?;
        items.retain(|r| r.status == status);
        Ok(ListedJobs { items, next_cursor })
    }

    /// Up to `limit` of one tenant's queued jobs on a queue, oldest first (its own ready list),
    /// and a cursor when there are more.
    pub async fn queued_of(
        &self,
        queue: &QueueName,
        tenant: Uuid,
        limit: usize,
    ) -> RedisResult<ListedJobs> {
        let keys = self.keys(queue);
        let mut conn = self.redis.conn().await?;
        let ids: Vec<String> = redis::cmd("LRANGE")
            .arg(keys.ready(&tenant.to_string()))
            .arg(0)
            .arg(limit)
            .query_async(&mut conn)
            .await?;
        let (ids, next_cursor) = page(ids, limit, |_, n| n.to_string());
        let mut items = self.get_many(queue, &ids).await?;
        items.retain(|r| r.status == JobStatus::Queued);
        Ok(ListedJobs { items, next_cursor })
    }

    /// A tenant's rule and load on a queue.
    pub async fn tenant_state(
        &self,
        queue: &QueueName,
        tenant: Uuid,
    ) -> RedisResult<TenantQueueState> {
        let keys = self.keys(queue);
        let t = tenant.to_string();
        let mut pipe = redis::pipe();
        pipe.cmd("HGET").arg(keys.limits()).arg(&t);
        pipe.cmd("HGET").arg(keys.limits()).arg("*");
        pipe.cmd("HGET").arg(keys.rates()).arg(&t);
        pipe.cmd("HGET").arg(keys.rates()).arg("*");
        pipe.cmd("SISMEMBER").arg(keys.paused_tenants()).arg(&t);
        pipe.cmd("HGET").arg(keys.active()).arg(&t);
        pipe.cmd("LLEN").arg(keys.ready(&t));
        let mut conn = self.redis.conn().await?;
        // Own and default limit, own and default rate, paused, held, waiting.
        type Row = (
            Option<u32>,
            Option<u32>,
            Option<f64>,
            Option<f64>,
            bool,
            Option<u64>,
            u64,
        );
        let (own, default, own_rate, default_rate, paused, active, waiting): Row =
            pipe.query_async(&mut conn).await?;
        let limit = own.or(default).filter(|&n| n > 0);
        Ok(TenantQueueState {
            queue: queue.to_string(),
            limit,
            limit_is_default: own.is_none(),
            rate: own_rate.or(default_rate).filter(|&r| r > 0.0),
            rate_is_default: own_rate.is_none(),
            paused,
            running: active.unwrap_or(0),
            waiting,
        })
    }

    /// The tenants paused on a queue.
    pub async fn paused_tenants(&self, queue: &QueueName) -> RedisResult<HashSet<String>> {
        let mut conn = self.redis.conn().await?;
        redis::cmd("SMEMBERS")
            .arg(self.keys(queue).paused_tenants())
            .query_async(&mut conn)
            .await
    }

    /// The tenants with a limit of their own on a queue.
    pub async fn limited_tenants(&self, queue: &QueueName) -> RedisResult<HashMap<String, u32>> {
        let mut conn = self.redis.conn().await?;
        let mut all: HashMap<String, u32> = redis::cmd("HGETALL")
            .arg(self.keys(queue).limits())
            .query_async(&mut conn)
            .await?;
        all.remove("*");
        Ok(all)
    }

    /// The tenants with a rate of their own on a queue.
    pub async fn rated_tenants(&self, queue: &QueueName) -> RedisResult<HashSet<String>> {
        let mut conn = self.redis.conn().await?;
        let mut all: HashSet<String> = redis::cmd("HKEYS")
            .arg(self.keys(queue).rates())
            .query_async(&mut conn)
            .await?;
        all.remove("*");
        Ok(all)
    }

    /// Jobs finished today (UTC) per tenant id: (succeeded, failed/retried/dead outcomes).
    pub async fn tenant_volume_today(
        &self,
        queue: &QueueName,
    ) -> RedisResult<HashMap<String, (u64, u64)>> {
        let day = self.settings.clock.now_ms() / 86_400_000;
        let mut conn = self.redis.conn().await?;
        let fields: HashMap<String, u64> = redis::cmd("HGETALL")
            .arg(format!("{}:tenantstats:{day}", self.keys(queue).prefix()))
            .query_async(&mut conn)
            .await?;
        let mut volume: HashMap<String, (u64, u64)> = HashMap::new();
        for (field, count) in fields {
            if let Some((tenant, outcome)) = field.rsplit_once(':') {
                let entry = volume.entry(tenant.to_string()).or_default();
                if outcome == "succeeded" {
                    entry.0 += count;
                } else {
                    entry.1 += count;
                }
            }
        }
        Ok(volume)
    }

    /// How many workers of this queue have sent a heartbeat since `since_ms` (one `ZCOUNT`; for
    /// metrics scraped often, where [`Queues::workers`]' details are not needed).
    pub async fn live_workers(&self, queue: &QueueName, since_ms: i64) -> RedisResult<u64> {
        let mut conn = self.redis.conn().await?;
        redis::cmd("ZCOUNT")
            .arg(self.keys(queue).workers())
            .arg(since_ms)
            .arg("+inf")
            .query_async(&mut conn)
            .await
    }

    /// Workers that heartbeat on this queue, most recent first.
    pub async fn workers(&self, queue: &QueueName) -> RedisResult<Vec<WorkerInfo>> {
        self.ensure_group(queue).await?;
        let keys = self.keys(queue);
        let mut conn = self.redis.conn().await?;
        let beats: Vec<(String, f64)> = redis::cmd("ZREVRANGE")
            .arg(keys.workers())
            .arg(0)
            .arg(199)
            .arg("WITHSCORES")
            .query_async(&mut conn)
            .await?;
        let summary: Value = redis::cmd("XPENDING")
            .arg(keys.stream())
            .arg(GROUP)
            .query_async(&mut conn)
            .await?;
        let in_flight: HashMap<String, u64> = array(&summary)
            .get(3)
            .map(array)
            .unwrap_or(&[])
            .iter()
            .filter_map(|pair| {
                let pair = array(pair);
                Some((string(pair.first()?)?, int(pair.get(1)?)? as u64))
            })
            .collect();
        let mut workers = Vec::with_capacity(beats.len());
        for (id, at) in beats {
            let info: Option<String> = redis::cmd("GET")
                .arg(keys.worker(&id))
                .query_async(&mut conn)
                .await?;
            workers.push(WorkerInfo {
                last_heartbeat: ms_to_time(at as i64).unwrap_or_default(),
                in_flight: in_flight.get(&id).copied().unwrap_or(0),
                info: info
                    .and_then(|i| serde_json::from_str(&i).ok())
                    .unwrap_or(serde_json::Value::Null),
                id,
            });
        }
        Ok(workers)
    }
}
