//! The queue engine under process death and contention: real worker processes, SIGKILL and
//! SIGTERM, leases shorter than the jobs.

use crate::helpers::wait_for;
use crate::queue_support::*;
use backroom::queue::{JobStatus, QueueSettings};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_worker_killed_mid_batch_loses_nothing_its_jobs_finish_after_the_lease() {
    let tq = TestQueue::new();
    let lease = tq.queues.settings().lease;
    let ids = tq
        .push_probes((0..400).map(|n| Probe {
            sleep_ms: 40,
            ..Probe::new(n)
        }))
        .await;
    let concurrency = 16;
    let mut victim = ChildWorker::spawn(&tq, concurrency, 100);
    // Kill it in the middle: some jobs done, some running, a prefetched batch waiting.
    wait_for("the child worker to finish some jobs", LIMIT, || async {
        (tq.counts("done").await.len() >= 60).then_some(())
    })
    .await;
    // Unreaped, it looks like a worker of another machine: its leases are all that tell it died
    // (a same-machine restart takes the jobs at once, see the test after this one).
    victim.kill9_unreaped();
    let killed_at = chrono::Utc::now();
    // Its leases run from its last heartbeat (which renewed them), not from the kill: on a busy
    // machine that beat may be a few intervals old.
    let last_beat = tq
        .queues
        .workers(&tq.queue)
        .await
        .unwrap()
        .iter()
        .map(|w| w.last_heartbeat)
        .max()
        .expect("the victim's heartbeat");
    let orphans = tq
        .queues
        .list(&tq.queue, JobStatus::Running, 500, None)
        .await
        .unwrap()
        .items;
    assert!(
        !orphans.is_empty(),
        "the victim held leased jobs when it died"
    );

    // Another worker process (a new identity) takes the orphans over once their leases expire.
    let _restarted = ChildWorker::spawn(&tq, concurrency, 100);
    tq.wait_all(&ids, JobStatus::Succeeded, LIMIT).await;

    let done = tq.counts("done").await;
    assert_eq!(done.len(), 400, "every job finished");
    // Outcomes are recorded in batches after the handler returns, so a job the victim finished
    // whose outcome was still on its way to Redis is rerun (at least once, by design); a job whose
    // outcome Redis had taken must never run again. Those not yet recorded are the orphans.
    let orphan_ns: std::collections::HashSet<u64> = orphans
        .iter()
        .map(|o| {
            ids.iter()
                .position(|id| *id == o.id)
                .expect("an orphan is ours") as u64
        })
        .collect();
    let runs = tq.counts("runs").await;
    let rerun: Vec<u64> = runs
        .iter()
        .filter(|(_, r)| **r > 1)
        .map(|(n, _)| *n)
        .collect();
    let recorded_then_rerun: Vec<_> = rerun.iter().filter(|n| !orphan_ns.contains(n)).collect();
    assert!(
        recorded_then_rerun.is_empty(),
        "a job whose outcome Redis had recorded was run again: {recorded_then_rerun:?}"
    );
    let cut_short = rerun.iter().filter(|n| done[n] == 1).count();
    assert!(
        cut_short <= concurrency,
        "only jobs running at the kill may be cut short and rerun; {cut_short} were"
    );
    let lease = chrono::Duration::from_std(lease).unwrap();
    for orphan in &orphans {
        let restarted = tq.job(&orphan.id).await.started_at.unwrap();
        assert!(
            restarted >= last_beat + lease - chrono::Duration::milliseconds(20),
            "{} restarted {restarted} before its lease ran out (last heartbeat {last_beat}, killed {killed_at})",
            orphan.id
        );
    }
    let counts = tq.queues.counts(&tq.queue).await.unwrap();
    assert_eq!(
        (counts.succeeded, counts.running, counts.pending),
        (400, 0, 0)
    );
}

#[tokio::test]
async fn live_workers_never_run_the_same_job_even_when_jobs_outlast_the_lease() {
    let settings = QueueSettings {
        lease: Duration::from_millis(600),
        ..test_settings()
    };
    let tq = TestQueue::with(settings, &crate::helpers::redis_url());
    // Each job takes 2.5 leases, and a deep prefetch makes later jobs wait several leases more
    // before they start: only heartbeats keep them from being reclaimed by the other worker.
    let ids = tq
        .push_probes((0..24).map(|n| Probe {
            sleep_ms: 1500,
            ..Probe::new(n)
        }))
        .await;
    let mut options = tq.options();
    options.concurrency = 4;
    options.prefetch = 12;
    options.batch = 12;
    let a = spawn_worker(&tq, options.clone()).await;
    let b = spawn_worker(&tq, options).await;
    tq.wait_all(&ids, JobStatus::Succeeded, LIMIT).await;
    let runs = tq.counts("runs").await;
    assert_eq!(runs.len(), 24);
    assert!(
        runs.values().all(|&r| r == 1),
        "a job ran on two live workers: {runs:?}"
    );
    a.stop().await;
    b.stop().await;
}

/// A worker killed and started again on the same machine runs its predecessor's jobs at once:
/// the new process sees the old one's pid gone (same boot, same host) and takes its jobs over,
/// as Sidekiq Enterprise's super_fetch does, instead of waiting out a 30 s lease.
#[tokio::test]
async fn a_worker_restarted_on_the_same_machine_runs_its_predecessors_jobs_at_once() {
    let lease = Duration::from_secs(30);
    let tq = TestQueue::with(
        QueueSettings {
            lease,
            ..test_settings()
        },
        &crate::helpers::redis_url(),
    );
    let ids = tq
        .push_probes((0..60).map(|n| Probe {
            sleep_ms: 20,
            ..Probe::new(n)
        }))
        .await;
    let mut first = ChildWorker::spawn(&tq, 1, 40);
    wait_for("the first worker to run jobs", LIMIT, || async {
        (tq.counts("runs").await.len() >= 2).then_some(())
    })
    .await;
    first.kill9();
    let restarted = std::time::Instant::now();
    let _second = ChildWorker::spawn(&tq, 4, 40);
    tq.wait_all(&ids, JobStatus::Succeeded, Duration::from_secs(5))
        .await;
    assert!(
        restarted.elapsed() < lease / 4,
        "done {:?} after the restart, not after the lease",
        restarted.elapsed()
    );
}

/// A dead worker elsewhere (its process is not visible here) gives its jobs back when its leases
/// expire, and all of them at once: 1,500 prefetched jobs run within one lease plus 5 s (they
/// came back 100 per half lease before).
#[tokio::test]
async fn fifteen_hundred_jobs_of_a_dead_worker_all_run_within_a_lease_and_five_seconds() {
    let lease = Duration::from_secs(3);
    let tq = TestQueue::with(
        QueueSettings {
            lease,
            ..test_settings()
        },
        &crate::helpers::redis_url(),
    );
    let ids = tq
        .push_probes((0..1500).map(|n| Probe {
            sleep_ms: 50,
            ..Probe::new(n)
        }))
        .await;
    let mut dead = ChildWorker::spawn(&tq, 1, 1500);
    wait_for("the worker to hold every job", LIMIT, || async {
        let c = tq.queues.counts(&tq.queue).await.ok()?;
        (c.pending == 0).then_some(())
    })
    .await;
    dead.kill9_unreaped();
    let killed = std::time::Instant::now();
    let mut options = tq.options();
    options.concurrency = 64;
    options.prefetch = 256;
    let live = spawn_worker(&tq, options).await;
    tq.wait_all(&ids, JobStatus::Succeeded, lease + Duration::from_secs(5))
        .await;
    assert!(killed.elapsed() < lease + Duration::from_secs(5));
    live.stop().await;
}

/// A worker holds no more jobs than it finishes in a quarter of a lease (never fewer than it
/// runs at once): a slow worker with a large prefetch leaves the backlog in the queue, for other
/// workers and so that its death or a freeze strands little. (It held its concurrency plus its
/// whole prefetch, whatever its pace: here 202 jobs, ten seconds of its work.)
#[tokio::test]
async fn a_slow_worker_holds_what_it_finishes_in_a_quarter_lease_not_its_whole_prefetch() {
    let tq = TestQueue::new();
    let lease = tq.queues.settings().lease;
    let probe = |n| Probe {
        sleep_ms: 100,
        ..Probe::new(n)
    };
    let mut options = tq.options();
    options.concurrency = 2;
    options.prefetch = 200;
    // A first second of work measures its pace: 2 at a time, 100 ms each, at most 20 a second.
    let first = tq.push_probes((0..20).map(probe)).await;
    let worker = spawn_worker(&tq, options).await;
    tq.wait_all(&first, JobStatus::Succeeded, LIMIT).await;

    let backlog = 400;
    tq.push_probes((20..20 + backlog).map(probe)).await;
    let bound = (20.0 * lease.as_secs_f64() / 4.0).ceil() as u64;
    let (mut most, mut samples) = (0, 0);
    let until = std::time::Instant::now() + Duration::from_secs(3);
    while std::time::Instant::now() < until {
        let workers = tq.queues.workers(&tq.queue).await.unwrap();
        if let Some(held) = workers.first().and_then(|w| w.info["held"].as_u64()) {
            most = most.max(held);
            samples += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(samples > 10, "the worker heartbeats");
    // The bound, plus a few whose outcome is on its way to Redis.
    assert!(
        (2..=bound + 4).contains(&most),
        "held at most {most} jobs (bound {bound})"
    );
    let counts = tq.queues.counts(&tq.queue).await.unwrap();
    assert!(
        counts.pending >= backlog - 80 - bound,
        "the backlog stays in the queue: {counts:?}"
    );
    worker.stop().await;
}

/// A worker frozen (SIGSTOP) past its lease while holding a prefetched batch loses the batch to
/// a live worker, which runs it; once thawed (SIGCONT) it starts none of the jobs it lost. (It
/// used to run them all again: nothing checked ownership before a prefetched job started.) Only
/// the job it was running when frozen can have run twice.
#[tokio::test]
async fn a_worker_thawed_after_its_lease_starts_none_of_the_jobs_it_lost() {
    let tq = TestQueue::new();
    let ids = tq
        .push_probes((0..60).map(|n| Probe {
            sleep_ms: 100,
            ..Probe::new(n)
        }))
        .await;
    let mut frozen = ChildWorker::spawn(&tq, 1, 40);
    wait_for("the child to start jobs", LIMIT, || async {
        (tq.counts("runs").await.len() >= 2).then_some(())
    })
    .await;
    assert!(crate::helpers::send_signal("STOP", frozen.pid()));
    let live = spawn_worker(&tq, tq.options()).await;
    tq.wait_all(&ids, JobStatus::Succeeded, LIMIT).await;

    let thawed_at = chrono::Utc::now();
    assert!(crate::helpers::send_signal("CONT", frozen.pid()));
    // Two heartbeats after the thaw: the first let the lost jobs go, the second reports none
    // held. A thawed worker without the check would have started several of them meanwhile.
    let pid = serde_json::json!(frozen.pid());
    wait_for(
        "the thawed worker to report holding nothing",
        LIMIT,
        || async {
            let workers = tq.queues.workers(&tq.queue).await.ok()?;
            let me = workers.iter().find(|w| w.info["pid"] == pid)?;
            let held = me.info["held"].as_u64()?;
            (me.last_heartbeat > thawed_at + chrono::Duration::milliseconds(400) && held == 0)
                .then_some(())
        },
    )
    .await;
    let runs = tq.counts("runs").await;
    assert_eq!(runs.len(), 60, "every job ran");
    let twice: Vec<_> = runs.iter().filter(|(_, r)| **r > 1).collect();
    assert!(
        twice.len() <= 1,
        "only the job running at the freeze may run twice: {twice:?}"
    );
    frozen.kill9();
    live.stop().await;
}

#[tokio::test]
async fn sigterm_finishes_running_jobs_and_hands_back_the_rest_at_once() {
    let tq = TestQueue::new();
    let ids = tq
        .push_probes((0..60).map(|n| Probe {
            sleep_ms: 150,
            ..Probe::new(n)
        }))
        .await;
    let mut child = ChildWorker::spawn(&tq, 2, 40);
    wait_for("the child to start jobs", LIMIT, || async {
        (tq.counts("runs").await.len() >= 4).then_some(())
    })
    .await;
    let status = child.terminate();
    assert!(status.success(), "graceful exit, got {status:?}");

    // Straight after the exit nothing is left leased: finished jobs are recorded, the
    // prefetched ones are back in the queue without waiting for a lease to expire.
    let counts = tq.queues.counts(&tq.queue).await.unwrap();
    assert_eq!(counts.running, 0, "{counts:?}");
    assert_eq!(counts.pending + counts.succeeded, 60, "{counts:?}");
    assert!(counts.pending > 0, "some jobs were handed back: {counts:?}");
    let runs = tq.counts("runs").await;
    let done = tq.counts("done").await;
    assert_eq!(
        runs, done,
        "every job that started also finished before the exit"
    );

    let worker = spawn_worker(&tq, tq.options()).await;
    tq.wait_all(&ids, JobStatus::Succeeded, LIMIT).await;
    assert!(tq.counts("runs").await.values().all(|&r| r == 1));
    worker.stop().await;
}
