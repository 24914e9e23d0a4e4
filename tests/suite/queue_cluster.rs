//! The queue engine on a real three-node Redis Cluster started for the test: every script
//! touches one slot (hash-tagged keys), so pushes, fetches, acks, retries and admin reads work
//! without CROSSSLOT errors.

use crate::helpers::{free_port, wait_for};
use crate::queue_support::*;
use backroom::queue::{ActionOutcome, JobStatus, NewJob};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

struct Cluster {
    nodes: Vec<Child>,
    ports: Vec<u16>,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.kill();
            let _ = node.wait();
        }
    }
}

impl Cluster {
    async fn start() -> Cluster {
        let dir = std::env::temp_dir().join(format!(
            "backroom-cluster-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let nodes = ports
            .iter()
            .map(|port| {
                let node_dir = dir.join(port.to_string());
                std::fs::create_dir_all(&node_dir).unwrap();
                Command::new("redis-server")
                    .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                    .args([
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                    ])
                    .args(["--save", "", "--appendonly", "no"])
                    .arg("--dir")
                    .arg(&node_dir)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("redis-server runs")
            })
            .collect();
        let cluster = Cluster {
            nodes,
            ports,
            _dir: TempDir(dir),
        };
        for port in &cluster.ports {
            wait_for(
                "a cluster node to answer",
                Duration::from_secs(10),
                || async {
                    let ok = Command::new("redis-cli")
                        .args(["-p", &port.to_string(), "PING"])
                        .output()
                        .ok()?;
                    String::from_utf8_lossy(&ok.stdout)
                        .contains("PONG")
                        .then_some(())
                },
            )
            .await;
        }
        let addresses: Vec<String> = cluster
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let created = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create runs");
        assert!(
            created.status.success(),
            "{}",
            String::from_utf8_lossy(&created.stdout)
        );
        for port in &cluster.ports {
            wait_for(
                "the cluster to cover every slot",
                Duration::from_secs(20),
                || async {
                    let info = Command::new("redis-cli")
                        .args(["-p", &port.to_string(), "CLUSTER", "INFO"])
                        .output()
                        .ok()?;
                    String::from_utf8_lossy(&info.stdout)
                        .contains("cluster_state:ok")
                        .then_some(())
                },
            )
            .await;
        }
        cluster
    }

    fn url(&self) -> String {
        format!("redis+cluster://127.0.0.1:{}", self.ports[0])
    }
}

#[tokio::test]
async fn the_queue_engine_runs_on_a_redis_cluster() {
    let cluster = Cluster::start().await;
    let tq = TestQueue::with(test_settings(), &cluster.url());
    assert!(tq.queues.redis().is_cluster());

    let mut ids = tq.push_probes((0..200).map(Probe::new)).await;
    ids.extend(
        tq.push(vec![
            NewJob::new("probe", &Probe::new(200)).idempotency_key("k"),
            NewJob::new("probe", &Probe::new(201))
                .run_at(chrono::Utc::now() + chrono::Duration::milliseconds(300)),
        ])
        .await,
    );
    let failing = tq
        .push_probes([Probe {
            fail: "permanent".into(),
            ..Probe::new(300)
        }])
        .await;
    let worker = spawn_worker(&tq, tq.options()).await;
    tq.wait_all(&ids, JobStatus::Succeeded, Duration::from_secs(30))
        .await;
    tq.wait_all(&failing, JobStatus::Failed, Duration::from_secs(30))
        .await;

    let runs = tq.counts("runs").await;
    assert_eq!(runs.len(), 203);
    let counts = tq.queues.counts(&tq.queue).await.unwrap();
    assert_eq!(
        (counts.succeeded, counts.failed, counts.running),
        (202, 1, 0)
    );
    assert_eq!(
        tq.queues.retry(&failing[0]).await.unwrap(),
        ActionOutcome::Done
    );
    assert_eq!(tq.queues.workers(&tq.queue).await.unwrap().len(), 1);
    let listed = tq
        .queues
        .list(&tq.queue, JobStatus::Succeeded, 5, None)
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 5);
    worker.stop().await;

    // The stock queue's keys may live on another node than the probe queue's: both work.
    let other = backroom::queue::QueueName::parse("stock").unwrap();
    tq.queues
        .push(&other, vec![NewJob::new("probe", &Probe::new(1))])
        .await
        .unwrap();
    assert_eq!(tq.queues.counts(&other).await.unwrap().pending, 1);
}

/// The slot of a key, asked of the cluster.
fn key_slot(cluster: &Cluster, key: &str) -> u16 {
    let out = Command::new("redis-cli")
        .args([
            "-p",
            &cluster.ports[0].to_string(),
            "CLUSTER",
            "KEYSLOT",
            key,
        ])
        .output()
        .expect("redis-cli runs");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// Dependencies across queues whose keys live on different nodes: each step is a single-slot
/// script, so chains, a fan-in and a failed parent's cancellation work without CROSSSLOT errors.
#[tokio::test]
async fn jobs_wait_for_jobs_of_queues_on_other_cluster_nodes() {
    let cluster = Cluster::start().await;
    let a = TestQueue::with(test_settings(), &cluster.url());
    // Three masters split the slots in thirds: find a sibling queue in another third.
    let third = |q: &TestQueue| key_slot(&cluster, &q.queues.keys(&q.queue).stream()) / 5462;
    let b = [
        "probe-b", "probe-c", "probe-d", "probe-e", "probe-f", "probe-g", "probe-h",
    ]
    .into_iter()
    .map(|name| a.sibling(name))
    .find(|b| third(b) != third(&a))
    .expect("a queue on another node");

    // Every job below is one group too: its keys have a hash tag (and slot) of their own.
    let group = uuid::Uuid::now_v7();
    a.queues
        .open_group(backroom::queue::GroupSpec {
            id: group,
            tenant: None,
            total: 54,
            follow_up: Some((b.queue.clone(), NewJob::new("probe", &Probe::new(104)))),
        })
        .await
        .unwrap();
    let parents = a
        .push(
            (0..50)
                .map(|n| NewJob::new("probe", &Probe::new(n)).in_group(group))
                .collect(),
        )
        .await;
    let fan_in = b
        .push(vec![
            NewJob::new("probe", &Probe::new(100))
                .depends_on(&parents)
                .in_group(group),
        ])
        .await;
    let chained = a
        .push(vec![
            NewJob::new("probe", &Probe::new(101))
                .depends_on(&fan_in)
                .in_group(group),
        ])
        .await;
    let broken = a
        .push(vec![
            NewJob::new(
                "probe",
                &Probe {
                    fail: "permanent".into(),
                    ..Probe::new(102)
                },
            )
            .in_group(group),
        ])
        .await;
    let cancelled = b
        .push(vec![
            NewJob::new("probe", &Probe::new(103))
                .depends_on(&broken)
                .in_group(group),
        ])
        .await;
    let workers = [
        spawn_worker(&a, a.options()).await,
        spawn_worker(&b, b.options()).await,
    ];
    a.wait_all(&chained, JobStatus::Succeeded, Duration::from_secs(30))
        .await;
    b.wait_all(&cancelled, JobStatus::Cancelled, Duration::from_secs(30))
        .await;
    let waited = std::time::Instant::now();
    let done = loop {
        let view = a.queues.group(&group).await.unwrap().unwrap();
        if view.follow_up_job.is_some() {
            break view;
        }
        assert!(waited.elapsed() < Duration::from_secs(30), "{view:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        (done.succeeded, done.failed, done.cancelled, done.pending),
        (52, 1, 1, 0)
    );
    b.wait_all(
        &[done.follow_up_job.unwrap()],
        JobStatus::Succeeded,
        Duration::from_secs(30),
    )
    .await;
    let runs = a.counts("runs").await;
    assert_eq!(
        (
            runs.get(&100),
            runs.get(&101),
            runs.get(&103),
            runs.get(&104)
        ),
        (Some(&1), Some(&1), None, Some(&1))
    );
    for w in workers {
        w.stop().await;
    }
}
