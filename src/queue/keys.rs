//! Redis key names of one queue.
//!
//! Every key of a queue starts with the hash tag `{<namespace>:<queue>}`, so all of a queue's keys
//! live in one Redis Cluster slot and each Lua script touches a single slot. The scripts receive
//! the stream key in `KEYS[1]` (which routes them) and derive the other keys from the prefix.

#[derive(Debug, Clone)]
pub struct QueueKeys {
    prefix: String,
}

impl QueueKeys {
    pub fn new(namespace: &str, queue: &str) -> Self {
        Self {
            prefix: format!("{{{namespace}:{queue}}}"),
        }
    }

    /// The hash-tagged prefix, passed to scripts as `ARGV[1]`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The stream of ready jobs (entries carry only the job id).
    pub fn stream(&self) -> String {
        format!("{}:stream", self.prefix)
    }

    /// The jobs of one tenant that are ready to run, oldest first (`''` for jobs without one).
    pub fn ready(&self, tenant: &str) -> String {
        format!("{}:ready:{tenant}", self.prefix)
    }

    /// The tenants with jobs waiting in their ready list, in round-robin order.
    pub fn ring(&self) -> String {
        format!("{}:ring", self.prefix)
    }

    /// How many jobs wait in the ready lists (kept by the scripts; O(1) to read).
    pub fn waiting(&self) -> String {
        format!("{}:waiting", self.prefix)
    }

    /// A one-entry stream that every script making jobs ready appends to, so an idle fetcher
    /// blocked on it wakes at once.
    pub fn wake(&self) -> String {
        format!("{}:wake", self.prefix)
    }

    pub fn job(&self, id: &str) -> String {
        format!("{}:job:{id}", self.prefix)
    }

    /// Finished jobs waiting to be copied into the job history (`client::history`).
    pub fn history(&self) -> String {
        format!("{}:history", self.prefix)
    }

    pub fn paused(&self) -> String {
        format!("{}:paused", self.prefix)
    }

    /// Per-tenant concurrency: each tenant's limit (field `*`: the queue's default), its jobs in
    /// the stream, the paused tenants, and the tenants with jobs waiting that may not run now.
    pub fn limits(&self) -> String {
        format!("{}:limits", self.prefix)
    }

    pub fn active(&self) -> String {
        format!("{}:active", self.prefix)
    }

    pub fn paused_tenants(&self) -> String {
        format!("{}:tpaused", self.prefix)
    }

    pub fn parked(&self) -> String {
        format!("{}:parked", self.prefix)
    }

    /// Per-tenant rates: each tenant's jobs per second (field `*`: the queue's default), each
    /// rated tenant's theoretical arrival time, and the tenants waiting for their allowance.
    pub fn rates(&self) -> String {
        format!("{}:rates", self.prefix)
    }

    pub fn rate_clock(&self) -> String {
        format!("{}:tat", self.prefix)
    }

    pub fn slowed(&self) -> String {
        format!("{}:slowed", self.prefix)
    }

    /// Sorted sets by job id: scheduled and retrying (score = due time), and the finished
    /// ones (score = finish time, trimmed by retention).
    pub fn set(&self, which: JobSet) -> String {
        format!("{}:{}", self.prefix, which.suffix())
    }

    /// The jobs waiting for job `id` (in `id`'s queue: edges live with the parent).
    pub fn children(&self, id: &str) -> String {
        format!("{}:children:{id}", self.prefix)
    }

    /// The parents of waiting job `id` and how each ended (in the child's queue).
    pub fn parents(&self, id: &str) -> String {
        format!("{}:parents:{id}", self.prefix)
    }

    /// Finished parents whose children are still to be told (score: when it finished).
    pub fn settle(&self) -> String {
        format!("{}:settle", self.prefix)
    }

    /// Waiting jobs whose edges are still to be recorded in their parents' queues.
    pub fn linking(&self) -> String {
        format!("{}:linking", self.prefix)
    }

    pub fn workers(&self) -> String {
        format!("{}:workers", self.prefix)
    }

    pub fn worker(&self, consumer: &str) -> String {
        format!("{}:worker:{consumer}", self.prefix)
    }

    pub fn stats_minute(&self, minute: i64) -> String {
        format!("{}:stats:{minute}", self.prefix)
    }
}

/// Redis key names of one group of jobs (see `client::groups`). A group's members may be on any
/// queue, so it has a hash tag of its own: `{<namespace>:group:<id>}`.
#[derive(Debug, Clone)]
pub struct GroupKeys {
    prefix: String,
}

impl GroupKeys {
    pub fn new(namespace: &str, group: &str) -> Self {
        Self {
            prefix: format!("{{{namespace}:group:{group}}}"),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Tenant, total, counts by outcome, state, follow-up. (Beside it, `:members`: member job
    /// id → `"<epoch>:<outcome>"`, written and read by the scripts only.)
    pub fn meta(&self) -> String {
        format!("{}:meta", self.prefix)
    }
}

/// The sorted sets a job can sit in outside the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobSet {
    Scheduled,
    Retrying,
    Succeeded,
    Failed,
    Dead,
    /// Jobs held for their parents (score: when pushed).
    Waiting,
    Cancelled,
}

impl JobSet {
    pub fn suffix(self) -> &'static str {
        match self {
            JobSet::Scheduled => "scheduled",
            JobSet::Retrying => "retry",
            JobSet::Succeeded => "succeeded",
            JobSet::Failed => "failed",
            JobSet::Dead => "dead",
            JobSet::Waiting => "held",
            JobSet::Cancelled => "cancelled",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Redis Cluster's key slot: CRC16 of the hash tag.
    fn slot(key: &str) -> u16 {
        let bytes = key.as_bytes();
        let tag = match key.find('{') {
            Some(open) => match key[open + 1..].find('}') {
                Some(len) if len > 0 => &bytes[open + 1..open + 1 + len],
                _ => bytes,
            },
            None => bytes,
        };
        let mut crc: u16 = 0;
        for &b in tag {
            crc ^= (b as u16) << 8;
            for _ in 0..8 {
                crc = if crc & 0x8000 != 0 {
                    (crc << 1) ^ 0x1021
                } else {
                    crc << 1
                };
            }
        }
        crc % 16384
    }

    #[test]
    fn every_key_of_a_queue_is_in_one_cluster_slot() {
        let k = QueueKeys::new("backroom", "stock");
        let keys = [
            k.stream(),
            k.job("stock_0193"),
            k.ready("0193a2b4-0000-7000-8000-000000000000"),
            k.ready(""),
            k.ring(),
            k.waiting(),
            k.wake(),
            k.paused(),
            k.limits(),
            k.active(),
            k.paused_tenants(),
            k.parked(),
            k.rates(),
            k.rate_clock(),
            k.slowed(),
            k.set(JobSet::Scheduled),
            k.set(JobSet::Retrying),
            k.set(JobSet::Succeeded),
            k.set(JobSet::Failed),
            k.set(JobSet::Dead),
            k.set(JobSet::Waiting),
            k.set(JobSet::Cancelled),
            k.children("stock_0193"),
            k.parents("stock_0193"),
            k.settle(),
            k.linking(),
            k.workers(),
            k.worker("host-1-abc"),
            k.stats_minute(29_000_000),
            format!("{}:idem:tenant:key", k.prefix()),
        ];
        let first = slot(&keys[0]);
        for key in &keys {
            assert_eq!(slot(key), first, "{key} is in another slot");
        }
    }
}
