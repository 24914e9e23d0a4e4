//! Per-tenant concurrency limits and pause, enforced by the queue engine across every worker
//! process: a tenant at its limit or paused waits in its own list while the others flow.

use crate::queue_support::*;
use backroom::queue::{JobStatus, LimitChange, NewJob};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use uuid::Uuid;

const LIMIT: Duration = Duration::from_secs(30);

fn sleepy(tenant: Uuid, ns: std::ops::Range<u64>, sleep_ms: u64) -> Vec<NewJob> {
    ns.map(|n| {
        let probe = Probe {
            n,
            sleep_ms,
            ..Default::default()
        };
        NewJob::new("probe", &probe).tenant(tenant).max_attempts(3)
    })
    .collect()
}

/// The most jobs of each tenant that ran at one moment, as the jobs counted themselves.
async fn most_at_once(tq: &TestQueue) -> HashMap<String, u64> {
    let mut conn = tq.redis().await;
    redis::cmd("HGETALL")
        .arg(format!("{}:most", tq.namespace))
        .query_async(&mut conn)
        .await
        .unwrap()
}

async fn last_finish(tq: &TestQueue, ids: &[String]) -> i64 {
    let mut last = 0;
    for id in ids {
        last = last.max(tq.job(id).await.finished_at.unwrap().timestamp_millis());
    }
    last
}

#[tokio::test]
async fn a_tenants_limit_holds_across_two_worker_processes_while_others_flow() {
    let tq = TestQueue::new();
    let (limited, free) = (Uuid::new_v4(), Uuid::new_v4());
    tq.queues
        .control_tenant(&tq.queue, &limited.to_string(), None, LimitChange::Set(2))
        .await
        .unwrap();
    let limited_ids = tq.push(sleepy(limited, 0..24, 100)).await;
    let free_ids = tq.push(sleepy(free, 100..124, 100)).await;
    let mut a = ChildWorker::spawn(&tq, 8, 16);
    let mut b = ChildWorker::spawn(&tq, 8, 16);
    tq.wait_all(&free_ids, JobStatus::Succeeded, LIMIT).await;
    tq.wait_all(&limited_ids, JobStatus::Succeeded, LIMIT).await;
    a.terminate();
    b.terminate();

    let most = most_at_once(&tq).await;
    let (limited_most, free_most) = (most[&limited.to_string()], most[&free.to_string()]);
    assert_eq!(
        limited_most, 2,
        "the limited tenant ran {limited_most} at once"
    );
    assert!(
        free_most > 2,
        "the other tenant was held to {free_most} at once"
    );
    // 24 jobs of 100 ms two at a time take 1.2 s at least; the other tenant's 24 had 16 slots
    // and were done well before.
    assert!(last_finish(&tq, &free_ids).await < last_finish(&tq, &limited_ids).await);
    let state = tq.queues.tenant_state(&tq.queue, limited).await.unwrap();
    assert_eq!((state.limit, state.running, state.waiting), (Some(2), 0, 0));
}

/// A worker killed while holding a tenant's only slot leaks nothing: once the lease runs out
/// another worker takes the job over (in the same slot), and the tenant's other jobs follow.
#[tokio::test]
async fn a_killed_workers_slot_comes_back_within_a_lease() {
    let tq = TestQueue::new();
    let tenant = Uuid::new_v4();
    tq.queues
        .control_tenant(&tq.queue, &tenant.to_string(), None, LimitChange::Set(1))
        .await
        .unwrap();
    let first = tq.push(sleepy(tenant, 0..1, 2000)).await;
    let mut holder = ChildWorker::spawn(&tq, 4, 8);
    crate::helpers::wait_for("the holder to start the first job", LIMIT, || async {
        (tq.job(&first[0]).await.status == JobStatus::Running).then_some(())
    })
    .await;
    let rest = tq.push(sleepy(tenant, 1..4, 50)).await;
    holder.kill9();
    let killed = Instant::now();
    let mut options = tq.options();
    options.concurrency = 4;
    let worker = spawn_worker(&tq, options).await;
    crate::helpers::wait_for("the dead worker's job to be taken over", LIMIT, || async {
        (tq.job(&first[0]).await.attempts == 2).then_some(())
    })
    .await;
    let lease = tq.queues.settings().lease;
    assert!(
        killed.elapsed() < lease + Duration::from_secs(5),
        "taken over after {:?}",
        killed.elapsed()
    );
    let state = tq.queues.tenant_state(&tq.queue, tenant).await.unwrap();
    assert_eq!(state.running, 1, "the taken-over job holds the one slot");
    assert_eq!(state.waiting, 3, "the others wait for it");
    tq.wait_all(&rest, JobStatus::Succeeded, LIMIT).await;
    assert!(
        killed.elapsed() < lease + Duration::from_secs(8),
        "done after {:?}",
        killed.elapsed()
    );
    worker.stop().await;
    let state = tq.queues.tenant_state(&tq.queue, tenant).await.unwrap();
    assert_eq!((state.running, state.waiting), (0, 0), "no slot leaked");
}

#[tokio::test]
async fn a_paused_tenant_waits_through_restarts_while_others_flow_then_drains() {
    let tq = TestQueue::new();
    let (paused, other) = (Uuid::new_v4(), Uuid::new_v4());
    tq.queues
        .control_tenant(
            &tq.queue,
            &paused.to_string(),
            Some(true),
            LimitChange::Keep,
        )
        .await
        .unwrap();
    let held = tq.push(sleepy(paused, 0..10, 1)).await;
    let flowing = tq.push(sleepy(other, 100..110, 1)).await;
    let worker = spawn_worker(&tq, tq.options()).await;
    tq.wait_all(&flowing, JobStatus::Succeeded, LIMIT).await;
    worker.stop().await;
    // A new worker process finds the pause where it was.
    let worker = spawn_worker(&tq, tq.options()).await;
    let more = tq.push(sleepy(other, 200..205, 1)).await;
    tq.wait_all(&more, JobStatus::Succeeded, LIMIT).await;
    for id in &held {
        assert_eq!(tq.job(id).await.status, JobStatus::Queued, "{id}");
    }
    let state = tq.queues.tenant_state(&tq.queue, paused).await.unwrap();
    assert!(state.paused);
    assert_eq!((state.running, state.waiting), (0, 10));
    assert_eq!(tq.queues.counts(&tq.queue).await.unwrap().pending, 10);

    tq.queues
        .control_tenant(
            &tq.queue,
            &paused.to_string(),
            Some(false),
            LimitChange::Keep,
        )
        .await
        .unwrap();
    tq.wait_all(&held, JobStatus::Succeeded, LIMIT).await;
    worker.stop().await;
    assert_eq!(tq.counts("done").await.len(), 25, "every job ran once");
}

/// Lowering a limit while a tenant's jobs wait, and the queue's default limit, both apply at
/// the next fetch; raising it lets the waiting jobs go at once.
#[tokio::test]
async fn the_queue_default_limit_applies_to_tenants_without_their_own() {
    let tq = TestQueue::new();
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    tq.queues
        .control_tenant(&tq.queue, "*", None, LimitChange::Set(1))
        .await
        .unwrap();
    tq.queues
        .control_tenant(&tq.queue, &b.to_string(), None, LimitChange::Set(3))
        .await
        .unwrap();
    let a_ids = tq.push(sleepy(a, 0..6, 60)).await;
    let b_ids = tq.push(sleepy(b, 100..112, 60)).await;
    let mut options = tq.options();
    options.concurrency = 8;
    options.prefetch = 16;
    let worker = spawn_worker(&tq, options).await;
    tq.wait_all(&a_ids, JobStatus::Succeeded, LIMIT).await;
    tq.wait_all(&b_ids, JobStatus::Succeeded, LIMIT).await;
    worker.stop().await;
    let most = most_at_once(&tq).await;
    assert_eq!(most[&a.to_string()], 1);
    assert_eq!(most[&b.to_string()], 3);
}

/// When each of `ids` started, in milliseconds, earliest first.
async fn starts(tq: &TestQueue, ids: &[String]) -> Vec<i64> {
    let mut at = vec![];
    for id in ids {
        at.push(tq.job(id).await.started_at.unwrap().timestamp_millis());
    }
    at.sort_unstable();
    at
}

#[tokio::test]
async fn a_tenants_rate_holds_across_two_worker_processes_while_others_flow() {
    let tq = TestQueue::new();
    let (rated, free) = (Uuid::new_v4(), Uuid::new_v4());
    let rate = 20.0;
    tq.queues
        .set_tenant_rate(&tq.queue, &rated.to_string(), Some(rate))
        .await
        .unwrap();
    let rated_ids = tq.push(sleepy(rated, 0..60, 0)).await;
    let free_ids = tq.push(sleepy(free, 100..160, 0)).await;
    let mut a = ChildWorker::spawn(&tq, 8, 16);
    let mut b = ChildWorker::spawn(&tq, 8, 16);
    tq.wait_all(&free_ids, JobStatus::Succeeded, LIMIT).await;
    tq.wait_all(&rated_ids, JobStatus::Succeeded, LIMIT).await;
    a.terminate();
    b.terminate();

    // A rate of 20 a second with a burst of one second's worth: in any stretch of time, at most
    // 20 starts plus one per 50 ms of it (a whole millisecond of rounding allowed).
    let at = starts(&tq, &rated_ids).await;
    for i in 0..at.len() {
        for j in i..at.len() {
            let allowed = (at[j] - at[i] + 1) as f64 * rate / 1000.0 + rate;
            assert!(
                (j - i + 1) as f64 <= allowed.floor() + 1.0,
                "{} starts within {} ms",
                j - i + 1,
                at[j] - at[i]
            );
        }
    }
    // 60 jobs at 20 a second after a burst of 20: two seconds at least.
    let spread = at[59] - at[0];
    assert!(
        spread >= 1900,
        "the rated tenant's 60 jobs started within {spread} ms"
    );
    // The other tenant's 60 went through the same fetches at full speed.
    assert!(last_finish(&tq, &free_ids).await < at[59]);
}

#[tokio::test]
async fn a_slowed_tenants_new_rate_applies_at_once() {
    let tq = TestQueue::new();
    let tenant = Uuid::new_v4();
    tq.queues
        .set_tenant_rate(&tq.queue, &tenant.to_string(), Some(1.0))
        .await
        .unwrap();
    let ids = tq.push(sleepy(tenant, 0..30, 0)).await;
    let worker = spawn_worker(&tq, tq.options()).await;
    crate::helpers::wait_for("the first job", LIMIT, || async {
        (tq.job(&ids[0]).await.status == JobStatus::Succeeded).then_some(())
    })
    .await;
    // One a second, the other 29 would take 29 s; no rate lets them all go now.
    tq.queues
        .set_tenant_rate(&tq.queue, &tenant.to_string(), Some(0.0))
        .await
        .unwrap();
    tq.wait_all(&ids, JobStatus::Succeeded, Duration::from_secs(10))
        .await;
    worker.stop().await;
    let at = starts(&tq, &ids).await;
    assert!(at[29] - at[1] < 5_000);
}
