//! The keeper: refreshes the leases of every held job (`HEARTBEAT`), takes over expired leases
//! of dead workers (`RECLAIM`), promotes due scheduled and retrying jobs, trims retention and
//! repairs dependency work a stopped process left half done.

use super::*;

pub(super) async fn keep_loop<Args: DeserializeOwned + Send + 'static>(
    shared: Arc<Shared>,
    jobs: mpsc::Sender<Task<Args>>,
    acks: mpsc::UnboundedSender<AckMsg>,
    mut stop: watch::Receiver<bool>,
) {
    let lease = shared.queues.settings().lease;
    let mut heartbeat = tokio::time::interval(lease / 3);
    let mut reclaim = tokio::time::interval((lease / 4).max(Duration::from_millis(50)));
    let mut promote = tokio::time::interval(shared.options.promote_every);
    let mut trim = tokio::time::interval(Duration::from_secs(60));
    let mut repair = tokio::time::interval(crate::queue::client::deps::REPAIR_AFTER / 2);
    for t in [
        &mut heartbeat,
        &mut reclaim,
        &mut promote,
        &mut trim,
        &mut repair,
    ] {
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    }
    let mut cursor = "0-0".to_string();
    let mut backoff = Backoff::new();
    // Reclaiming and heartbeats need the consumer group; on a fresh queue the fetcher may not
    // have created it yet, so make sure of it first (without this the first upkeep warned
    // `NOGROUP`).
    while let Err(e) = shared.queues.ensure_group(&shared.queue).await {
        let wait = backoff.delay("creating the consumer group", &e);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
    }
    backoff.ok();
    loop {
        let result = tokio::select! {
            _ = stop.changed() => return,
            _ = heartbeat.tick() => beat(&shared).await,
            _ = reclaim.tick() => {
                let taken = take_over_dead_neighbours(&shared, &jobs, &acks).await;
                match reclaim_expired(&shared, &jobs, &acks, &mut cursor).await {
                    // A full batch: there may be more waiting; go again as soon as there is room
                    // rather than a tick later, so a dead worker's whole prefetch comes back at once.
                    Ok(full) if full || taken.as_ref().is_ok_and(|&n| n > 0) => {
                        reclaim.reset_after(Duration::from_millis(100));
                        Ok(())
                    }
                    other => other.map(|_| ()),
                }
            }
            _ = promote.tick() => shared.queues.promote_due(&shared.queue).await.map(|_| ()),
            _ = repair.tick() => shared.queues.repair_dependencies(&shared.queue).await.map(|_| ()),
            _ = trim.tick() => shared.queues.trim(&shared.queue).await.map(|_| ()),
        };
        match result {
            Ok(()) => backoff.ok(),
            Err(e) => {
                let _ = backoff.delay("queue upkeep", &e);
            }
        }
    }
}

/// Refreshes the leases of every held job and records the worker's heartbeat.
pub(super) async fn beat(shared: &Shared) -> redis::RedisResult<()> {
    let began = shared.queues.settings().clock.now_ms();
    let held: Vec<(String, String)> = shared
        .held
        .lock()
        .unwrap()
        .iter()
        .map(|(id, entry)| (id.clone(), entry.clone()))
        .collect();
    let lease = shared.queues.settings().lease;
    let info = serde_json::json!({
        "queue": shared.queue.as_str(),
        "pid": std::process::id(),
        "started_at": crate::queue::client::ms_to_time(shared.started_at_ms),
        "concurrency": shared.options.concurrency,
        "held": held.len(),
        "boot_id": boot_id(),
    })
    .to_string();
    let mut call = scripts::HEARTBEAT.prepare_invoke();
    call.key(shared.keys.stream())
        .arg(shared.keys.prefix())
        .arg(GROUP)
        .arg(&shared.consumer)
        .arg(shared.queues.settings().clock.now_ms())
        .arg((lease * 3).as_millis() as u64)
        .arg(info);
    for (id, entry) in &held {
        call.arg(id).arg(entry);
    }
    let mut conn = shared.conn().await?;
    let lost: Vec<(String, String)> = call.invoke_async(&mut conn).await?;
    let (reclaimed, gone) = lost_jobs(&shared.consumer, &lost);
    if reclaimed > 0 {
        tracing::warn!(
            count = reclaimed,
            "jobs were reclaimed by another worker after this one stalled past its lease"
        );
    }
    if gone > 0 {
        // Mostly jobs whose outcome this worker's acker recorded while the heartbeat was on its
        // way; they are not lost, so this is no warning.
        tracing::debug!(
            count = gone,
            "held jobs that no worker holds any more (finished, or unknown to Redis)"
        );
    }
    shared.release_ids(lost.into_iter().map(|(id, _)| id));
    shared
        .renewed_ms
        .fetch_max(began, std::sync::atomic::Ordering::Relaxed);
    Ok(())
}

/// Takes over jobs whose lease expired, as many as the worker has room for ([`Shared::room`]); says
/// whether it filled that room (more may be waiting).
pub(super) async fn reclaim_expired<Args: DeserializeOwned + Send + 'static>(
    shared: &Shared,
    jobs: &mpsc::Sender<Task<Args>>,
    acks: &mpsc::UnboundedSender<AckMsg>,
    cursor: &mut String,
) -> redis::RedisResult<bool> {
    let room = shared.room(jobs.capacity());
    if room == 0 {
        return Ok(true);
    }
    let settings = shared.queues.settings();
    let mut conn = shared.conn().await?;
    let reply: Vec<Value> = scripts::RECLAIM
        .key(shared.keys.stream())
        .arg(shared.keys.prefix())
        .arg(GROUP)
        .arg(&shared.consumer)
        .arg(shared.queues.settings().clock.now_ms())
        .arg(settings.lease.as_millis() as u64)
        .arg(room)
        .arg(settings.dead_retention.as_millis() as u64)
        .arg(cursor.as_str())
        .arg((settings.lease * 10).as_millis() as u64)
        .invoke_async(&mut conn)
        .await?;
    *cursor = reply
        .first()
        .and_then(string)
        .unwrap_or_else(|| "0-0".into());
    let raws = raw_jobs(&reply[1.min(reply.len())..]);
    let full = raws.len() >= room;
    if !raws.is_empty() {
        tracing::info!(
            count = raws.len(),
            "reclaimed jobs whose worker stopped heartbeating"
        );
    }
    hand_over(shared, jobs, acks, raws).await;
    Ok(full)
}

/// Queues taken-over jobs for this worker to run.
async fn hand_over<Args: DeserializeOwned + Send + 'static>(
    shared: &Shared,
    jobs: &mpsc::Sender<Task<Args>>,
    acks: &mpsc::UnboundedSender<AckMsg>,
    raws: Vec<RawJob>,
) {
    for raw in raws {
        if let Some(task) = into_task(shared, acks, raw) {
            // Room was checked by the caller and only the fetcher competes for it; if it filled
            // the buffer meanwhile, the job stays held (and leased) until there is room.
            if jobs.send(task).await.is_err() {
                break;
            }
        }
    }
}

/// The host part of a consumer name (`host-pid-random`).
fn host_of(consumer: &str) -> Option<&str> {
    let mut parts = consumer.rsplitn(3, '-');
    let (_random, _pid) = (parts.next()?, parts.next()?);
    parts.next()
}

/// This boot of this machine (Linux's `boot_id`): with a pid, it names a process uniquely, so a
/// worker can tell that another worker's process is gone. Empty where it cannot be read.
fn boot_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    })
}

/// Whether worker `consumer` (named `host-pid-random`, started in kernel boot `boot`) ran on
/// this machine, in this boot, in a process that is gone. The same boot and the same host name
/// (containers share a kernel, not a host name or, mostly, a pid namespace): then `/proc` answers
/// for its pid. `me` is a consumer of this process. False whenever it cannot be known.
pub(crate) fn gone_from_this_machine(boot: &str, consumer: &str, me: &str) -> bool {
    let this_boot = boot_id();
    let pid = consumer
        .rsplit('-')
        .nth(1)
        .and_then(|pid| pid.parse::<u32>().ok())
        .unwrap_or(0);
    !this_boot.is_empty()
        && boot == this_boot
        && host_of(consumer).is_some()
        && host_of(consumer) == host_of(me)
        && pid != 0
        && pid != std::process::id()
        && !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// A worker process's name for records that must later tell whether it is gone:
/// `<boot id>/<consumer>` (see [`process_is_gone`]).
pub(crate) fn process_name(consumer: &str) -> String {
    format!("{}/{consumer}", boot_id())
}

/// Whether the process a [`process_name`] names is known to be gone: it ran on this machine,
/// in this boot, and its pid is no more. `me` is a consumer of this process.
pub(crate) fn process_is_gone(name: &str, me: &str) -> bool {
    name.split_once('/')
        .is_some_and(|(boot, consumer)| gone_from_this_machine(boot, consumer, me))
}

/// Takes over the jobs of workers that ran on this machine, in this boot, in processes that are
/// gone (a worker killed and started again, as `super_fetch` does), at once rather than after
/// their leases. Returns how many jobs it took.
pub(super) async fn take_over_dead_neighbours<Args: DeserializeOwned + Send + 'static>(
    shared: &Shared,
    jobs: &mpsc::Sender<Task<Args>>,
    acks: &mpsc::UnboundedSender<AckMsg>,
) -> redis::RedisResult<usize> {
    let me = boot_id();
    if me.is_empty() {
        return Ok(0);
    }
    let mut taken = 0;
    for worker in shared.queues.workers(&shared.queue).await? {
        let room = shared.room(jobs.capacity());
        if room == 0 {
            break;
        }
        let boot = worker.info["boot_id"].as_str().unwrap_or_default();
        if worker.id == shared.consumer
            || worker.in_flight == 0
            || !gone_from_this_machine(boot, &worker.id, &shared.consumer)
        {
            continue;
        }
        let settings = shared.queues.settings();
        let mut conn = shared.conn().await?;
        let reply: Vec<Value> = scripts::TAKE_OVER
            .key(shared.keys.stream())
            .arg(shared.keys.prefix())
            .arg(GROUP)
            .arg(&shared.consumer)
            .arg(settings.clock.now_ms())
            .arg(settings.dead_retention.as_millis() as u64)
            .arg(&worker.id)
            .arg(room)
            .invoke_async(&mut conn)
            .await?;
        let raws = raw_jobs(&reply);
        if !raws.is_empty() {
            tracing::info!(
                count = raws.len(),
                dead = %worker.id,
                "took over the jobs of a worker of this machine whose process is gone"
            );
        }
        taken += raws.len();
        hand_over(shared, jobs, acks, raws).await;
    }
    Ok(taken)
}

/// Of the jobs a heartbeat found this worker no longer owns, as (id, holder): how many another
/// worker holds (reclaimed), and how many no worker holds.
fn lost_jobs(consumer: &str, lost: &[(String, String)]) -> (usize, usize) {
    let reclaimed = lost
        .iter()
        .filter(|(_, holder)| !holder.is_empty() && holder != consumer)
        .count();
    (reclaimed, lost.len() - reclaimed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_consumer_names_its_host_before_its_pid() {
        assert_eq!(host_of("db-1.example-4242-a1b2c3d4"), Some("db-1.example"));
        assert_eq!(host_of("solo"), None);
    }

    #[test]
    fn only_jobs_another_worker_holds_count_as_reclaimed() {
        let lost = [
            ("a".to_string(), "other-worker".to_string()),
            ("b".to_string(), String::new()),
            ("c".to_string(), String::new()),
        ];
        assert_eq!(lost_jobs("me", &lost), (1, 2));
        assert_eq!(lost_jobs("me", &[]), (0, 0));
    }
}
