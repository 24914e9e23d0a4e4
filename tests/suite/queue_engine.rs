//! The queue engine against real Redis: delivery, failure handling, scheduling, admin actions,
//! retention.

use crate::helpers::wait_for;
use crate::queue_support::*;
use backroom::queue::{ActionOutcome, JobSet, JobStatus, NewJob};
use chrono::Utc;
use std::collections::HashSet;
use std::time::{Duration, Instant};
use uuid::Uuid;

const LIMIT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn every_job_runs_once_and_reports_its_result() {
    let tq = TestQueue::new();
    let ids = tq.push_probes((0..300).map(Probe::new)).await;
    let worker = spawn_worker(&tq, tq.options()).await;
    tq.wait_all(&ids, JobStatus::Succeeded, LIMIT).await;

    let runs = tq.counts("runs").await;
    assert_eq!(runs.len(), 300);
    assert!(runs.values().all(|&r| r == 1), "a job ran twice: {runs:?}");
    let job = tq.job(&ids[7]).await;
    assert_eq!(job.result, Some(serde_json::json!(14)));
    assert_eq!(job.attempts, 1);
    assert!(job.finished_at.unwrap() >= job.started_at.unwrap());
    let counts = tq.queues.counts(&tq.queue).await.unwrap();
    assert_eq!(
        (counts.pending, counts.running, counts.succeeded),
        (0, 0, 300)
    );
    let per_minute = tq.queues.processed_per_minute(&tq.queue, 60).await.unwrap();
    assert_eq!(per_minute.len(), 60);
    assert_eq!(
        per_minute.iter().sum::<u64>(),
        300,
        "the chart counts every finished job"
    );
    worker.stop().await;
}

#[tokio::test]
async fn transient_failures_back_off_and_retry_until_they_succeed_or_die() {
    let tq = TestQueue::new();
    let flaky = Probe {
        fail: "retry".into(),
        fail_times: 2,
        ..Probe::new(1)
    };
    let hopeless = Probe {
        fail: "retry".into(),
        ..Probe::new(2)
    };
    let ids = tq.push_probes([flaky, hopeless]).await;
    let worker = spawn_worker(&tq, tq.options()).await;
    tq.wait_all(&ids[..1], JobStatus::Succeeded, LIMIT).await;
    tq.wait_all(&ids[1..], JobStatus::Dead, LIMIT).await;

    let flaky = tq.job(&ids[0]).await;
    assert_eq!(flaky.attempts, 3);
    let history = flaky.errors.as_array().unwrap();
    assert_eq!(
        history.len(),
        2,
        "one entry per failed attempt: {history:?}"
    );
    // Backoff: each retry waited at least half the base delay (50 ms · 2^(attempt-1), jittered).
    let at = |i: usize| history[i]["at"].as_i64().unwrap();
    let second_start = flaky.started_at.unwrap().timestamp_millis();
    assert!(at(1) - at(0) >= 25, "retry 1 came too soon: {history:?}");
    assert!(second_start - at(1) >= 50, "retry 2 came too soon");

    let dead = tq.job(&ids[1]).await;
    assert_eq!(dead.attempts, 3);
    assert_eq!(dead.errors.as_array().unwrap().len(), 3);
    assert!(
        dead.last_error
            .as_deref()
            .unwrap()
            .contains("(attempt 3 of 3)"),
        "{:?}",
        dead.last_error
    );
    assert_eq!(
        tq.counts("runs").await[&2],
        3,
        "never retried past max_attempts"
    );
    worker.stop().await;
}

#[tokio::test]
async fn permanent_failures_stop_at_once() {
    let tq = TestQueue::new();
    let ids = tq
        .push_probes([Probe {
            fail: "permanent".into(),
            ..Probe::new(1)
        }])
        .await;
    let worker = spawn_worker(&tq, tq.options()).await;
    tq.wait_all(&ids, JobStatus::Failed, LIMIT).await;
    let job = tq.job(&ids[0]).await;
    assert_eq!(job.attempts, 1);
    assert_eq!(job.last_error.as_deref(), Some("probe refused for good"));
    worker.stop().await;
}

#[tokio::test]
async fn poison_panicking_and_hanging_jobs_go_dead_and_the_worker_keeps_working() {
    let tq = TestQueue::new();
    let mut options = tq.options();
    options.job_timeout = Duration::from_millis(300);
    let worker = spawn_worker(&tq, options).await;

    let poison = tq
        .push(vec![NewJob::raw("probe", b"\xff not json".to_vec())])
        .await;
    let panicky = tq
        .push_probes([Probe {
            fail: "panic".into(),
            ..Probe::new(1)
        }])
        .await;
    let hang = tq
        .push_probes([Probe {
            fail: "hang".into(),
            ..Probe::new(2)
        }])
        .await;
    tq.wait_all(&poison, JobStatus::Dead, LIMIT).await;
    tq.wait_all(&panicky, JobStatus::Dead, LIMIT).await;
    tq.wait_all(&hang, JobStatus::Dead, LIMIT).await;

    let reason = |id: &String| {
        let tq = tq.clone();
        let id = id.clone();
        async move { tq.job(&id).await.last_error.unwrap() }
    };
    assert!(reason(&poison[0]).await.contains("does not decode"));
    assert!(
        reason(&panicky[0])
            .await
            .contains("panicked: probe 1 panicked on purpose")
    );
    assert_eq!(
        tq.job(&panicky[0]).await.attempts,
        1,
        "a panic is not retried"
    );
    assert!(reason(&hang[0]).await.contains("timed out"));
    assert_eq!(tq.job(&hang[0]).await.attempts, 3, "a timeout is retried");

    let healthy = tq.push_probes([Probe::new(3)]).await;
    tq.wait_all(&healthy, JobStatus::Succeeded, LIMIT).await;
    worker.stop().await;
}

#[tokio::test]
async fn a_timed_out_jobs_blocking_work_stops_before_the_job_is_retried() {
    let tq = TestQueue::new();
    let mut options = tq.options();
    options.job_timeout = Duration::from_millis(300);
    let worker = spawn_worker(&tq, options).await;
    let n = rand::random::<u64>() >> 1;
    let spin = tq
        .push_probes([Probe {
            fail: "spin".into(),
            ..Probe::new(n)
        }])
        .await;
    tq.wait_all(&spin, JobStatus::Dead, LIMIT).await;
    let job = tq.job(&spin[0]).await;
    assert_eq!(job.attempts, 3);
    assert!(job.last_error.unwrap().contains("timed out"));
    // Each attempt's blocking loop stopped before the next attempt started, and the last one
    // before the job was recorded dead: never two copies at once, none left running.
    assert_eq!(
        spinning(n),
        Spinning {
            started: 3,
            now: 0,
            most: 1
        }
    );
    worker.stop().await;
}

#[tokio::test]
async fn delayed_jobs_wait_until_they_are_due() {
    let tq = TestQueue::new();
    let worker = spawn_worker(&tq, tq.options()).await;
    let due = Utc::now() + chrono::Duration::milliseconds(600);
    let ids = tq
        .push(vec![NewJob::new("probe", &Probe::new(1)).run_at(due)])
        .await;
    assert_eq!(tq.job(&ids[0]).await.status, JobStatus::Scheduled);
    assert_eq!(tq.queues.counts(&tq.queue).await.unwrap().scheduled, 1);
    tq.wait_all(&ids, JobStatus::Succeeded, LIMIT).await;
    let started = tq.job(&ids[0]).await.started_at.unwrap();
    // Times are kept in whole milliseconds: a start in the due millisecond is on time.
    assert!(
        started.timestamp_millis() >= due.timestamp_millis(),
        "started {started} before it was due {due}"
    );
    worker.stop().await;
}

/// The queue's clock is injectable: a job due tomorrow, and a retry an hour away, run as soon as
/// the clock is moved forward, with no waiting in the test.
#[tokio::test]
async fn moving_the_clock_forward_brings_scheduled_jobs_and_retries_due_at_once() {
    let hour = Duration::from_secs(3600);
    let tq = TestQueue::with(
        backroom::queue::QueueSettings {
            retry_base: hour,
            retry_cap: hour,
            ..test_settings()
        },
        &crate::helpers::redis_url(),
    );
    let clock = tq.queues.settings().clock.clone();
    let worker = spawn_worker(&tq, tq.options()).await;
    let tomorrow = clock.now() + chrono::Duration::days(1);
    let scheduled = tq
        .push(vec![NewJob::new("probe", &Probe::new(1)).run_at(tomorrow)])
        .await;
    let flaky = Probe {
        fail: "retry".into(),
        fail_times: 1,
        ..Probe::new(2)
    };
    let retried = tq.push_probes([flaky]).await;
    // The flaky job's first attempt failed and waits an hour; the worker has promoted and
    // fetched since the scheduled job was pushed, and left it waiting.
    tq.wait_all(&retried, JobStatus::Retrying, LIMIT).await;
    assert_eq!(tq.job(&scheduled[0]).await.status, JobStatus::Scheduled);

    clock.advance(hour + Duration::from_secs(1));
    tq.wait_all(&retried, JobStatus::Succeeded, LIMIT).await;
    assert_eq!(
        tq.job(&scheduled[0]).await.status,
        JobStatus::Scheduled,
        "still a day away"
    );

    clock.advance(24 * hour);
    tq.wait_all(&scheduled, JobStatus::Succeeded, LIMIT).await;
    assert_eq!(tq.job(&retried[0]).await.attempts, 2);
    worker.stop().await;
}

#[tokio::test]
async fn an_idempotency_key_maps_repeats_to_the_first_job() {
    let tq = TestQueue::new();
    let job = || NewJob::new("probe", &Probe::new(1)).idempotency_key("tenant-a:key-1");
    let first = tq.queues.push(&tq.queue, vec![job()]).await.unwrap();
    let again = tq.queues.push(&tq.queue, vec![job(), job()]).await.unwrap();
    assert!(first[0].created);
    assert!(again.iter().all(|p| !p.created && p.id == first[0].id));
    let other = tq
        .queues
        .push(
            &tq.queue,
            vec![NewJob::new("probe", &Probe::new(2)).idempotency_key("tenant-b:key-1")],
        )
        .await
        .unwrap();
    assert!(other[0].created && other[0].id != first[0].id);

    // The key outlives the job's run: a repeat after completion still maps to the first job.
    let worker = spawn_worker(&tq, tq.options()).await;
    tq.wait_all(&[first[0].id.clone()], JobStatus::Succeeded, LIMIT)
        .await;
    let late = tq.queues.push(&tq.queue, vec![job()]).await.unwrap();
    assert_eq!(
        (late[0].id.as_str(), late[0].created),
        (first[0].id.as_str(), false)
    );
    let mut conn = tq.redis().await;
    let ttl: i64 = redis::cmd("PTTL")
        .arg(format!(
            "{}:idem:probe:tenant-a:key-1",
            tq.queues.keys(&tq.queue).prefix()
        ))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        ttl > 0,
        "idempotency keys always carry a retention window, got PTTL {ttl}"
    );
    worker.stop().await;
    assert_eq!(tq.counts("runs").await[&1], 1);
}

/// A push goes to Redis in scripts of a few dozen jobs (so that one big push does not hold up
/// every other client): a push many times that size still answers in order, and a key repeated
/// in a later chunk of the same push maps to the job an earlier chunk created.
#[tokio::test]
async fn a_push_of_many_chunks_answers_in_order_and_maps_repeats_across_chunks() {
    let tq = TestQueue::new();
    let keyed = |i: u64, key: u64| {
        NewJob::new("probe", &Probe::new(i)).idempotency_key(format!("tenant-a:key-{key}"))
    };
    let mut jobs: Vec<NewJob> = (0..200).map(|i| keyed(i, i)).collect();
    jobs.extend((200..300).map(|i| keyed(i, i - 200)));
    let pushed = tq.queues.push(&tq.queue, jobs).await.unwrap();
    assert_eq!(pushed.len(), 300);
    assert!(pushed[..200].iter().all(|p| p.created));
    let first: HashSet<&str> = pushed[..200].iter().map(|p| p.id.as_str()).collect();
    assert_eq!(first.len(), 200, "200 distinct jobs");
    for (i, repeat) in pushed[200..].iter().enumerate() {
        assert!(!repeat.created, "job {} repeats key {i}", 200 + i);
        assert_eq!(repeat.id, pushed[i].id, "job {} maps to job {i}", 200 + i);
    }
    let worker = spawn_worker(&tq, tq.options()).await;
    let ids: Vec<String> = pushed[..200].iter().map(|p| p.id.clone()).collect();
    tq.wait_all(&ids, JobStatus::Succeeded, LIMIT).await;
    worker.stop().await;
    let runs = tq.counts("runs").await;
    assert!(
        (0..200).all(|n| runs.get(&n) == Some(&1)) && runs.len() == 200,
        "each of the 200 jobs ran once, no repeat ran: {runs:?}"
    );
}

#[tokio::test]
async fn a_paused_queue_holds_its_jobs_until_resumed_and_queued_jobs_can_be_cancelled() {
    let tq = TestQueue::new();
    tq.queues.pause(&tq.queue).await.unwrap();
    let worker = spawn_worker(&tq, tq.options()).await;
    let ids = tq.push_probes((0..10).map(Probe::new)).await;
    assert_eq!(
        tq.queues
            .cancel(&ids[0], "cancelled by the test")
            .await
            .unwrap(),
        ActionOutcome::Done
    );

    // While paused, nothing is taken: watch for a while (several fetch cycles).
    let watch_until = Instant::now() + Duration::from_millis(800);
    while Instant::now() < watch_until {
        let counts = tq.queues.counts(&tq.queue).await.unwrap();
        assert!(counts.paused);
        assert_eq!((counts.pending, counts.running), (9, 0));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(tq.counts("runs").await.is_empty());

    tq.queues.resume(&tq.queue).await.unwrap();
    tq.wait_all(&ids[1..], JobStatus::Succeeded, LIMIT).await;
    let cancelled = tq.job(&ids[0]).await;
    assert_eq!(cancelled.status, JobStatus::Failed);
    assert_eq!(
        cancelled.last_error.as_deref(),
        Some("cancelled by the test")
    );
    assert!(
        !tq.counts("runs").await.contains_key(&0),
        "a cancelled job never runs"
    );
    assert_eq!(
        tq.queues.cancel(&ids[1], "too late").await.unwrap(),
        ActionOutcome::Refused(JobStatus::Succeeded)
    );
    worker.stop().await;
}

/// Jobs that fail (retryably) while the namespace's `broken` flag is set; one attempt each.
fn fragile(n: u64) -> NewJob {
    NewJob::new(
        "probe",
        &Probe {
            fail: "while-broken".into(),
            ..Probe::new(n)
        },
    )
    .max_attempts(1)
}

#[tokio::test]
async fn admins_retry_and_discard_finished_jobs() {
    let tq = TestQueue::new();
    tq.set_probes_broken(true).await;
    let ids = tq.push(vec![fragile(1), fragile(2), fragile(3)]).await;
    let worker = spawn_worker(&tq, tq.options()).await;
    tq.wait_all(&ids, JobStatus::Dead, LIMIT).await;

    tq.set_probes_broken(false).await;
    assert_eq!(tq.queues.retry(&ids[0]).await.unwrap(), ActionOutcome::Done);
    tq.wait_all(&ids[..1], JobStatus::Succeeded, LIMIT).await;
    let retried = tq.job(&ids[0]).await;
    assert_eq!(
        retried.errors.as_array().unwrap().len(),
        1,
        "history is kept"
    );
    assert_eq!(
        tq.queues.retry(&ids[0]).await.unwrap(),
        ActionOutcome::Refused(JobStatus::Succeeded)
    );

    assert_eq!(
        tq.queues.discard(&ids[1]).await.unwrap(),
        ActionOutcome::Done
    );
    assert!(tq.queues.get(&ids[1]).await.unwrap().is_none());
    assert_eq!(
        tq.queues.discard(&ids[1]).await.unwrap(),
        ActionOutcome::Missing
    );
    let counts = tq.queues.counts(&tq.queue).await.unwrap();
    assert_eq!((counts.dead, counts.succeeded), (1, 1));
    let listed = tq
        .queues
        .list(&tq.queue, JobStatus::Dead, 10, None)
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 1);
    assert_eq!(listed.items[0].id, ids[2]);
    worker.stop().await;
}

#[tokio::test]
async fn bulk_retry_requeues_the_whole_dead_set() {
    let tq = TestQueue::new();
    tq.set_probes_broken(true).await;
    let ids = tq.push((0..25).map(fragile).collect()).await;
    let worker = spawn_worker(&tq, tq.options()).await;
    tq.wait_all(&ids, JobStatus::Dead, LIMIT).await;

    let page = tq
        .queues
        .list(&tq.queue, JobStatus::Dead, 10, None)
        .await
        .unwrap();
    assert_eq!(page.items.len(), 10);
    let cursor = page.next_cursor.clone().expect("more dead jobs");
    let next = tq
        .queues
        .list(&tq.queue, JobStatus::Dead, 10, Some(&cursor))
        .await
        .unwrap();
    assert_eq!(next.items.len(), 10);
    assert!(
        next.items
            .iter()
            .all(|j| !page.items.iter().any(|p| p.id == j.id))
    );

    tq.set_probes_broken(false).await;
    assert_eq!(tq.queues.retry_all_dead(&tq.queue).await.unwrap(), 25);
    tq.wait_all(&ids, JobStatus::Succeeded, LIMIT).await;
    let runs = tq.counts("runs").await;
    assert!(
        runs.values().all(|&r| r == 2),
        "each dead job ran once more: {runs:?}"
    );
    assert_eq!(tq.queues.counts(&tq.queue).await.unwrap().dead, 0);
    worker.stop().await;
}

#[tokio::test]
async fn twenty_thousand_jobs_due_at_once_all_run() {
    let tq = TestQueue::new();
    let due = Utc::now() + chrono::Duration::milliseconds(2000);
    let jobs: Vec<NewJob> = (0..20_000)
        .map(|n| NewJob::new("probe", &Probe::new(n)).run_at(due))
        .collect();
    let pushing = Instant::now();
    tq.push(jobs).await;
    let counts = tq.queues.counts(&tq.queue).await.unwrap();
    assert_eq!(
        counts.scheduled,
        20_000,
        "all 20,000 wait for the same due time (pushing took {:?})",
        pushing.elapsed()
    );
    let mut options = tq.options();
    options.concurrency = 128;
    let a = spawn_worker(&tq, options.clone()).await;
    let b = spawn_worker(&tq, options).await;
    wait_for(
        "20,000 due jobs to finish",
        Duration::from_secs(120),
        || async {
            let c = tq.queues.counts(&tq.queue).await.ok()?;
            (c.succeeded == 20_000).then_some(())
        },
    )
    .await;
    let runs = tq.counts("runs").await;
    assert_eq!(runs.len(), 20_000);
    assert!(runs.values().all(|&r| r == 1));
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn finished_jobs_leave_redis_after_their_retention() {
    let mut settings = test_settings();
    settings.succeeded_retention = Duration::from_millis(300);
    let tq = TestQueue::with(settings, &crate::helpers::redis_url());
    let ids = tq.push_probes([Probe::new(1)]).await;
    let worker = spawn_worker(&tq, tq.options()).await;
    tq.wait_all(&ids, JobStatus::Succeeded, LIMIT).await;
    wait_for("the finished job's hash to expire", LIMIT, || async {
        tq.queues
            .get(&ids[0])
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    assert_eq!(tq.queues.trim(&tq.queue).await.unwrap(), 1);
    assert_eq!(tq.queues.counts(&tq.queue).await.unwrap().succeeded, 0);
    worker.stop().await;
}

#[tokio::test]
async fn an_idle_worker_picks_up_a_new_job_without_waiting_for_a_poll() {
    let tq = TestQueue::new();
    let mut options = tq.options();
    options.block = Duration::from_secs(10);
    let worker = spawn_worker(&tq, options).await;
    // Let the worker reach its blocking wait on the empty stream.
    wait_for("the worker to register", LIMIT, || async {
        let w = tq.queues.workers(&tq.queue).await.ok()?;
        (!w.is_empty()).then_some(())
    })
    .await;
    for n in 0..5 {
        let pushed_at = Instant::now();
        let ids = tq.push_probes([Probe::new(n)]).await;
        tq.wait_all(&ids, JobStatus::Succeeded, LIMIT).await;
        assert!(
            pushed_at.elapsed() < Duration::from_secs(2),
            "pickup took {:?}: the worker waited for a poll instead of waking",
            pushed_at.elapsed()
        );
    }
    worker.stop().await;
}

fn tenant_probes(tenant: Uuid, ns: std::ops::Range<u64>) -> Vec<NewJob> {
    ns.map(|n| {
        NewJob::new("probe", &Probe::new(n))
            .tenant(tenant)
            .max_attempts(3)
    })
    .collect()
}

/// Fair scheduling: 20 jobs of a quiet tenant pushed behind 3,000 of a busy tenant's run within
/// the worker's first fetches, not after the flood. Also: queued jobs are counted, listed and
/// cancelled across the tenants' ready lists.
#[tokio::test]
async fn a_tenants_flood_does_not_starve_another_tenants_jobs() {
    let tq = TestQueue::new();
    let (busy, quiet) = (Uuid::new_v4(), Uuid::new_v4());
    let flood = tq.push(tenant_probes(busy, 0..3000)).await;
    let quiet_ids = tq.push(tenant_probes(quiet, 10_000..10_020)).await;

    // Every queued job is counted and listed once, page by page.
    assert_eq!(tq.queues.counts(&tq.queue).await.unwrap().pending, 3020);
    let mut listed = HashSet::new();
    let mut cursor = None;
    loop {
        let page = tq
            .queues
            .list(&tq.queue, JobStatus::Queued, 500, cursor.as_deref())
            .await
            .unwrap();
        for job in &page.items {
            assert!(listed.insert(job.id.clone()), "{} listed twice", job.id);
        }
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(listed.len(), 3020);
    // A queued job of either tenant can be cancelled or discarded while it waits.
    assert_eq!(
        tq.queues.cancel(&flood[5], "not wanted").await.unwrap(),
        ActionOutcome::Done
    );
    assert_eq!(
        tq.queues.discard(&quiet_ids[19]).await.unwrap(),
        ActionOutcome::Done
    );
    assert_eq!(tq.queues.counts(&tq.queue).await.unwrap().pending, 3018);
    let quiet_ids = &quiet_ids[..19];

    let mut options = tq.options();
    options.concurrency = 4;
    options.prefetch = 32;
    options.batch = 32;
    let worker = spawn_worker(&tq, options).await;
    tq.wait_all(quiet_ids, JobStatus::Succeeded, LIMIT).await;
    let mut last_quiet = 0;
    for id in quiet_ids {
        let finished = tq.job(id).await.finished_at.unwrap().timestamp_millis();
        last_quiet = last_quiet.max(finished);
    }
    // Every job that finished by then, from the succeeded set (scored by finish time).
    let finished_by_then: u64 = redis::cmd("ZCOUNT")
        .arg(tq.queues.keys(&tq.queue).set(JobSet::Succeeded))
        .arg("-inf")
        .arg(last_quiet)
        .query_async(&mut tq.redis().await)
        .await
        .unwrap();
    let busy_before = finished_by_then - quiet_ids.len() as u64;
    // First-in-first-out would have run all 2,999 of the busy tenant's jobs first; a fair share
    // of each 32-job fetch gives the quiet tenant its 19 within the first two or three fetches.
    assert!(
        busy_before < 300,
        "{busy_before} of the busy tenant's jobs ran before the quiet tenant's 19"
    );
    tq.wait_all(&flood[6..], JobStatus::Succeeded, LIMIT).await;
    let runs = tq.counts("runs").await;
    assert!(!runs.contains_key(&5), "the cancelled job never ran");
    assert!(!runs.contains_key(&10_019), "the discarded job never ran");
    assert_eq!(runs.len(), 2999 + 19);
    let counts = tq.queues.counts(&tq.queue).await.unwrap();
    assert_eq!((counts.pending, counts.running), (0, 0));
    worker.stop().await;
}

/// A Redis that lost its data (restarted without persistence) lost the consumer group too: the
/// running worker creates it again and takes the jobs pushed afterwards.
#[tokio::test]
async fn a_worker_recovers_when_redis_loses_the_queue() {
    let tq = TestQueue::new();
    let worker = spawn_worker(&tq, tq.options()).await;
    let first = tq.push_probes([Probe::new(1)]).await;
    tq.wait_all(&first, JobStatus::Succeeded, LIMIT).await;

    let mut conn = tq.redis().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{{{}:*", tq.namespace))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(!keys.is_empty());
    let _: () = redis::cmd("DEL")
        .arg(&keys)
        .query_async(&mut conn)
        .await
        .unwrap();

    let second = tq.push_probes([Probe::new(2), Probe::new(3)]).await;
    tq.wait_all(&second, JobStatus::Succeeded, LIMIT).await;
    worker.stop().await;
}
