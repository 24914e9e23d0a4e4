//! Jobs that wait for other jobs, against real Redis: chains across queues, fan-out, fan-in,
//! exactly-once release under concurrent completion and under a killed worker, and what a
//! parent's failure, an admin's retry and a discard do to the jobs waiting on it.

use crate::queue_support::*;
use backroom::queue::{
    ActionOutcome, GroupSpec, GroupState, GroupView, JobRecord, JobStatus, NewJob,
};
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(30);

fn probe(n: u64) -> NewJob {
    NewJob::new("probe", &Probe::new(n)).max_attempts(3)
}

fn failing(n: u64, how: &str, attempts: u32) -> NewJob {
    NewJob::new(
        "probe",
        &Probe {
            fail: how.into(),
            ..Probe::new(n)
        },
    )
    .max_attempts(attempts)
}

async fn push_one(tq: &TestQueue, job: NewJob) -> String {
    tq.push(vec![job]).await.remove(0)
}

async fn wait_status(tq: &TestQueue, id: &str, status: JobStatus) -> JobRecord {
    tq.wait_all(&[id.to_string()], status, LIMIT).await;
    tq.job(id).await
}

#[tokio::test]
async fn a_chain_across_queues_runs_in_order_and_each_child_reads_its_parents() {
    let a = TestQueue::new();
    let b = a.sibling("probe-b");
    let first = push_one(&a, probe(1)).await;
    let second = push_one(&b, probe(2).depends_on([&first])).await;
    let third = push_one(&a, probe(3).depends_on([&second])).await;

    // Held, visibly, until their parents succeed.
    for id in [&second, &third] {
        assert_eq!(a.job(id).await.status, JobStatus::Waiting);
    }
    assert_eq!(b.queues.counts(&b.queue).await.unwrap().waiting, 1);
    let listed = b
        .queues
        .list(&b.queue, JobStatus::Waiting, 10, None)
        .await
        .unwrap();
    assert_eq!(listed.items[0].id, second);

    let workers = [
        spawn_worker(&a, a.options()).await,
        spawn_worker(&b, b.options()).await,
    ];
    let last = wait_status(&a, &third, JobStatus::Succeeded).await;
    let one = a.job(&first).await;
    let two = a.job(&second).await;
    assert!(two.started_at.unwrap() >= one.finished_at.unwrap());
    assert!(last.started_at.unwrap() >= two.finished_at.unwrap());
    assert_eq!(
        a.queues.parents_of(&second).await.unwrap(),
        vec![first.clone()]
    );
    let parent = a.job(&a.queues.parents_of(&third).await.unwrap()[0]).await;
    assert_eq!(
        parent.result,
        Some(serde_json::json!(4)),
        "the parent's result is readable"
    );
    assert_eq!(b.queues.counts(&b.queue).await.unwrap().waiting, 0);
    for w in workers {
        w.stop().await;
    }
}

#[tokio::test]
async fn a_fan_out_and_a_fan_in_of_two_thousand_release_every_child_once() {
    let a = TestQueue::new();
    let b = a.sibling("probe-b");
    let root = push_one(&a, probe(0)).await;
    let fanned: Vec<String> = b
        .push((1..=2000).map(|n| probe(n).depends_on([&root])).collect())
        .await;
    let parents: Vec<String> = a.push((2001..=4000).map(probe).collect()).await;
    let sink = push_one(&b, probe(5000).depends_on(&parents)).await;
    assert_eq!(a.job(&sink).await.status, JobStatus::Waiting);

    let workers = [
        spawn_worker(&a, a.options()).await,
        spawn_worker(&b, b.options()).await,
    ];
    b.wait_all(&fanned, JobStatus::Succeeded, LIMIT).await;
    let sink = wait_status(&b, &sink, JobStatus::Succeeded).await;
    let runs = a.counts("runs").await;
    assert!(
        (0..=4000).chain([5000]).all(|n| runs.get(&n) == Some(&1)),
        "every job ran exactly once"
    );
    let latest_parent = futures::future::join_all(parents.iter().map(|p| a.job(p)))
        .await
        .into_iter()
        .filter_map(|j| j.finished_at)
        .max()
        .unwrap();
    assert!(
        sink.started_at.unwrap() >= latest_parent,
        "the fan-in child started after its last parent"
    );
    for w in workers {
        w.stop().await;
    }
}

/// Two workers finish a child's two parents at the same moment, many times over: the child is
/// released (and runs) exactly once every time.
#[tokio::test]
async fn parents_finishing_at_the_same_moment_release_their_child_once() {
    const TRIALS: u64 = 300;
    let a = TestQueue::new();
    let b = a.sibling("probe-b");
    let mut children = vec![];
    for t in 0..TRIALS {
        let slow = |n| {
            NewJob::new(
                "probe",
                &Probe {
                    sleep_ms: 20,
                    ..Probe::new(n)
                },
            )
        };
        let parents = a.push(vec![slow(t * 3), slow(t * 3 + 1)]).await;
        children.push(push_one(&b, probe(t * 3 + 2).depends_on(&parents)).await);
    }
    let mut options = a.options();
    options.concurrency = 1;
    options.prefetch = 1;
    options.batch = 1;
    // Two one-at-a-time workers take the two parents of each pair side by side.
    let workers = [
        spawn_worker(&a, options.clone()).await,
        spawn_worker(&a, options).await,
        spawn_worker(&b, b.options()).await,
    ];
    b.wait_all(&children, JobStatus::Succeeded, Duration::from_secs(60))
        .await;
    let runs = a.counts("runs").await;
    let twice: Vec<_> = (0..TRIALS)
        .map(|t| t * 3 + 2)
        .filter(|n| runs.get(n) != Some(&1))
        .collect();
    assert!(twice.is_empty(), "children not run exactly once: {twice:?}");
    for w in workers {
        w.stop().await;
    }
}

#[tokio::test]
async fn a_failed_parent_cancels_its_children_down_the_chain_unless_they_run_anyway() {
    let a = TestQueue::new();
    let parent = push_one(&a, failing(1, "permanent", 3)).await;
    let child = push_one(&a, probe(2).depends_on([&parent])).await;
    let grandchild = push_one(&a, probe(3).depends_on([&child])).await;
    let regardless = push_one(&a, probe(4).depends_on([&parent]).run_if_parents_fail()).await;
    let gone = "probe_0193a2b4c0007000800000000000dead";
    let orphan = push_one(&a, probe(5).depends_on([gone])).await;

    let worker = spawn_worker(&a, a.options()).await;
    let cancelled = wait_status(&a, &child, JobStatus::Cancelled).await;
    assert!(
        cancelled.last_error.as_deref().unwrap().contains(&parent),
        "the reason names the parent: {:?}",
        cancelled.last_error
    );
    let below = wait_status(&a, &grandchild, JobStatus::Cancelled).await;
    assert!(below.last_error.unwrap().contains(&child));
    wait_status(&a, &regardless, JobStatus::Succeeded).await;
    let orphan = wait_status(&a, &orphan, JobStatus::Cancelled).await;
    assert!(
        orphan.last_error.unwrap().contains(gone),
        "a parent that does not exist fails its child"
    );
    let runs = a.counts("runs").await;
    assert_eq!(
        (runs.get(&2), runs.get(&3), runs.get(&5)),
        (None, None, None),
        "cancelled jobs never ran"
    );
    assert_eq!(a.queues.counts(&a.queue).await.unwrap().cancelled, 3);
    worker.stop().await;
}

#[tokio::test]
async fn an_admin_retry_of_a_dead_parent_that_then_succeeds_releases_its_children() {
    let a = TestQueue::new();
    let b = a.sibling("probe-b");
    a.set_probes_broken(true).await;
    let parent = push_one(&a, failing(1, "while-broken", 2)).await;
    let child = push_one(&b, probe(2).depends_on([&parent])).await;
    let grandchild = push_one(&b, probe(3).depends_on([&child])).await;
    let workers = [
        spawn_worker(&a, a.options()).await,
        spawn_worker(&b, b.options()).await,
    ];
    wait_status(&a, &parent, JobStatus::Dead).await;
    wait_status(&b, &grandchild, JobStatus::Cancelled).await;

    a.set_probes_broken(false).await;
    assert_eq!(a.queues.retry(&parent).await.unwrap(), ActionOutcome::Done);
    wait_status(&b, &grandchild, JobStatus::Succeeded).await;
    let child = b.job(&child).await;
    assert_eq!(child.status, JobStatus::Succeeded);
    assert_eq!(child.attempts, 1);
    for w in workers {
        w.stop().await;
    }
}

#[tokio::test]
async fn a_discarded_parent_cancels_the_job_waiting_for_it() {
    let a = TestQueue::new();
    let parent = push_one(
        &a,
        probe(1).run_at(chrono::Utc::now() + chrono::Duration::hours(1)),
    )
    .await;
    let child = push_one(&a, probe(2).depends_on([&parent])).await;
    assert_eq!(
        a.queues.discard(&parent).await.unwrap(),
        ActionOutcome::Done
    );
    let child = a.job(&child).await;
    assert_eq!(child.status, JobStatus::Cancelled);
    assert!(child.last_error.unwrap().contains(&parent));
}

/// A worker process SIGKILLed after recording a parent's outcome and before telling the child
/// (it is made to stop there): another worker's upkeep releases the child within seconds, once.
#[tokio::test]
async fn a_worker_killed_between_a_parents_outcome_and_the_release_still_releases_the_child() {
    let a = TestQueue::new();
    let b = a.sibling("probe-b");
    let parent = push_one(&a, probe(1)).await;
    let child = push_one(&b, probe(2).depends_on([&parent])).await;
    let mut victim = ChildWorker::spawn_not_releasing_children(&a, 4);
    wait_status(&a, &parent, JobStatus::Succeeded).await;
    victim.kill9();
    let killed = Instant::now();
    assert_eq!(
        a.job(&child).await.status,
        JobStatus::Waiting,
        "the release was left undone"
    );

    let workers = [
        spawn_worker(&a, a.options()).await,
        spawn_worker(&b, b.options()).await,
    ];
    wait_status(&b, &child, JobStatus::Succeeded).await;
    assert!(
        killed.elapsed() < Duration::from_secs(10),
        "released {:?} after the kill",
        killed.elapsed()
    );
    assert_eq!(a.counts("runs").await.get(&2), Some(&1));
    for w in workers {
        w.stop().await;
    }
}

/// Milliseconds left before a group's record expires (-1: never).
async fn group_ttl(tq: &TestQueue, group: &uuid::Uuid) -> i64 {
    let mut conn = tq.redis().await;
    redis::cmd("PTTL")
        .arg(format!("{{{}:group:{group}}}:meta", tq.namespace))
        .query_async(&mut conn)
        .await
        .unwrap()
}

/// Polls a group until it has completed (or the limit passes).
async fn wait_group_done(tq: &TestQueue, group: &uuid::Uuid) -> GroupView {
    wait_group(tq, group, "complete", |v| v.state != GroupState::Running).await
}

/// Waits until a completed group's follow-up has been pushed and its id noted: the group's state
/// is recorded first, the follow-up pushed and noted in a step after it.
async fn wait_followed(tq: &TestQueue, group: &uuid::Uuid) -> String {
    let view = wait_group(tq, group, "push its follow-up", |v| {
        v.follow_up_job.is_some()
    })
    .await;
    view.follow_up_job.expect("waited for")
}

/// Polls a group's view until `done` holds.
async fn wait_group(
    tq: &TestQueue,
    group: &uuid::Uuid,
    what: &str,
    done: impl Fn(&GroupView) -> bool,
) -> GroupView {
    let started = Instant::now();
    loop {
        let view = tq
            .queues
            .group(group)
            .await
            .unwrap()
            .expect("the group exists");
        if done(&view) {
            return view;
        }
        assert!(
            started.elapsed() < LIMIT,
            "the group did not {what}: {view:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn group_spec(id: uuid::Uuid, total: u64, follow_up: Option<(&TestQueue, NewJob)>) -> GroupSpec {
    GroupSpec {
        id,
        tenant: Some(uuid::Uuid::from_u128(7)),
        total,
        follow_up: follow_up.map(|(tq, job)| (tq.queue.clone(), job)),
    }
}

/// A group of 60 jobs on two queues (40 succeed, 10 fail for good, 10 wait on a failed job and
/// are cancelled) reports each count, ends `completed_with_failures`, and pushes its follow-up
/// once, however often its members' outcomes are told again.
#[tokio::test]
async fn a_group_across_queues_counts_its_members_and_runs_its_follow_up_once() {
    let a = TestQueue::new();
    let b = a.sibling("probe-b");
    let group = uuid::Uuid::now_v7();
    a.queues
        .open_group(group_spec(group, 60, Some((&b, probe(999)))))
        .await
        .unwrap();
    let ok = a
        .push((1..=40).map(|n| probe(n).in_group(group)).collect())
        .await;
    let bad = b
        .push(
            (41..=50)
                .map(|n| failing(n, "permanent", 3).in_group(group))
                .collect(),
        )
        .await;
    b.push(
        (51..=60)
            .map(|n| probe(n).depends_on([&bad[0]]).in_group(group))
            .collect(),
    )
    .await;
    let view = a.queues.group(&group).await.unwrap().unwrap();
    assert_eq!(
        (view.state, view.total, view.pending),
        (GroupState::Running, 60, 60)
    );
    assert_eq!(
        group_ttl(&a, &group).await,
        -1,
        "a running group never expires"
    );

    let workers = [
        spawn_worker(&a, a.options()).await,
        spawn_worker(&b, b.options()).await,
    ];
    let done = wait_group_done(&a, &group).await;
    assert_eq!(done.state, GroupState::CompletedWithFailures);
    assert_eq!(
        (
            done.pending,
            done.succeeded,
            done.failed,
            done.dead,
            done.cancelled
        ),
        (0, 40, 10, 0, 10)
    );
    let ttl = group_ttl(&a, &group).await;
    let day = a.queues.settings().succeeded_retention.as_millis() as i64;
    assert!(
        ttl > day,
        "with failures it keeps as long as a failed job (PTTL {ttl})"
    );
    let follow_up = wait_followed(&a, &group).await;
    wait_status(&b, &follow_up, JobStatus::Succeeded).await;

    // Telling the members' outcomes again changes no count and pushes nothing more.
    a.queues
        .settle(ok.iter().map(|id| (a.queue.clone(), id.clone())).collect())
        .await
        .unwrap();
    let again = a.queues.group(&group).await.unwrap().unwrap();
    assert_eq!(
        (again.succeeded, again.follow_up_job),
        (40, Some(follow_up))
    );
    assert_eq!(a.counts("runs").await.get(&999), Some(&1));
    for w in workers {
        w.stop().await;
    }
}

/// Members that finish before their group is opened are counted when it opens; a group whose
/// members all succeed ends `succeeded`; an admin's retry of a dead member that then succeeds
/// moves the group from `completed_with_failures` to `succeeded`.
#[tokio::test]
async fn a_group_counts_members_that_finished_before_it_opened_and_follows_an_admin_retry() {
    let a = TestQueue::new();
    let group = uuid::Uuid::now_v7();
    let ids = a
        .push((1..=5).map(|n| probe(n).in_group(group)).collect())
        .await;
    let broken = push_one(&a, failing(6, "permanent", 1).in_group(group)).await;
    let worker = spawn_worker(&a, a.options()).await;
    a.wait_all(&ids, JobStatus::Succeeded, LIMIT).await;
    wait_status(&a, &broken, JobStatus::Failed).await;
    a.queues
        .open_group(group_spec(group, 6, None))
        .await
        .unwrap();
    let done = wait_group_done(&a, &group).await;
    assert_eq!(
        (done.state, done.succeeded, done.failed),
        (GroupState::CompletedWithFailures, 5, 1)
    );

    // The failed member, fixed and retried by an admin, succeeds: the group follows.
    let mut conn = a.redis().await;
    let fixed = serde_json::to_string(&Probe::new(6)).unwrap();
    let _: () = redis::cmd("HSET")
        .arg(a.queues.keys(&a.queue).job(&broken))
        .arg("payload")
        .arg(fixed)
        .query_async(&mut conn)
        .await
        .unwrap();
    a.queues.retry(&broken).await.unwrap();
    wait_status(&a, &broken, JobStatus::Succeeded).await;
    let started = Instant::now();
    loop {
        let view = a.queues.group(&group).await.unwrap().unwrap();
        if view.state == GroupState::Succeeded {
            assert_eq!((view.succeeded, view.failed, view.pending), (6, 0, 0));
            break;
        }
        assert!(
            started.elapsed() < LIMIT,
            "the group did not follow the retry: {view:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    worker.stop().await;
}

/// A worker killed after recording a member's outcome and before noting it in the group:
/// another worker's upkeep notes it, the group completes and its follow-up runs once.
#[tokio::test]
async fn a_worker_killed_before_noting_a_member_in_its_group_still_completes_the_group() {
    let a = TestQueue::new();
    let group = uuid::Uuid::now_v7();
    a.queues
        .open_group(group_spec(group, 3, Some((&a, probe(99)))))
        .await
        .unwrap();
    let ids = a
        .push((1..=3).map(|n| probe(n).in_group(group)).collect())
        .await;
    let mut victim = ChildWorker::spawn_not_releasing_children(&a, 4);
    a.wait_all(&ids, JobStatus::Succeeded, LIMIT).await;
    victim.kill9();
    let view = a.queues.group(&group).await.unwrap().unwrap();
    assert_eq!(
        (view.state, view.pending),
        (GroupState::Running, 3),
        "nothing was noted yet"
    );

    let worker = spawn_worker(&a, a.options()).await;
    let done = wait_group_done(&a, &group).await;
    assert_eq!((done.state, done.succeeded), (GroupState::Succeeded, 3));
    let (ttl, day) = (
        group_ttl(&a, &group).await,
        a.queues.settings().succeeded_retention.as_millis() as i64,
    );
    assert!(
        0 < ttl && ttl <= day,
        "all succeeded: a succeeded job's retention (PTTL {ttl})"
    );
    wait_status(&a, &wait_followed(&a, &group).await, JobStatus::Succeeded).await;
    assert_eq!(a.counts("runs").await.get(&99), Some(&1));
    worker.stop().await;
}

/// A member an admin discards counts as `discarded`: the group still completes.
#[tokio::test]
async fn a_discarded_member_counts_and_its_group_completes() {
    let a = TestQueue::new();
    let group = uuid::Uuid::now_v7();
    a.queues
        .open_group(group_spec(group, 2, None))
        .await
        .unwrap();
    let later = chrono::Utc::now() + chrono::Duration::hours(1);
    let parked = push_one(&a, probe(1).run_at(later).in_group(group)).await;
    let runs = push_one(&a, probe(2).in_group(group)).await;
    assert_eq!(
        a.queues.discard(&parked).await.unwrap(),
        ActionOutcome::Done
    );
    let worker = spawn_worker(&a, a.options()).await;
    wait_status(&a, &runs, JobStatus::Succeeded).await;
    let done = wait_group_done(&a, &group).await;
    assert_eq!(
        (done.state, done.succeeded, done.discarded, done.pending),
        (GroupState::CompletedWithFailures, 1, 1, 0)
    );
    worker.stop().await;
}
