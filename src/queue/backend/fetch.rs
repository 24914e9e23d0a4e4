//! The fetcher: takes batches (`FETCH`) as room frees up in the prefetch buffer, and when nothing
//! is waiting blocks in `XREAD` on the wake-up stream, on a connection of its own.

use super::*;

pub(super) enum Fetched {
    Jobs(Vec<RawJob>),
    /// Nothing waiting: the last id of the wake-up stream, to block on.
    Empty {
        wake: String,
    },
    Paused,
}

pub(super) async fn fetch_once(shared: &Shared, count: usize) -> redis::RedisResult<Fetched> {
    let mut conn = shared.conn().await?;
    let reply: Vec<Value> = scripts::FETCH
        .key(shared.keys.stream())
        .arg(shared.keys.prefix())
        .arg(GROUP)
        .arg(&shared.consumer)
        .arg(count)
        .arg(shared.queues.settings().clock.now_ms())
        .arg(shared.queues.settings().dead_retention.as_millis() as u64)
        .invoke_async(&mut conn)
        .await?;
    Ok(match reply.first().and_then(string).as_deref() {
        Some("paused") => Fetched::Paused,
        Some("empty") => Fetched::Empty {
            wake: reply
                .get(1)
                .and_then(string)
                .unwrap_or_else(|| "0-0".into()),
        },
        _ => Fetched::Jobs(raw_jobs(&reply[1..])),
    })
}

pub(super) async fn fetch_loop<Args: DeserializeOwned + Send + 'static>(
    shared: Arc<Shared>,
    jobs: mpsc::Sender<Task<Args>>,
    acks: mpsc::UnboundedSender<AckMsg>,
    mut stop: watch::Receiver<bool>,
) {
    if let Err(e) = shared.queues.ensure_group(&shared.queue).await {
        tracing::warn!(error = %e, "could not create the consumer group yet");
    }
    let mut backoff = Backoff::new();
    let mut blocking: Option<RedisConn> = None;
    loop {
        // Wait for room in the prefetch buffer, then ask for as many jobs as fit, within what
        // this worker's pace lets it hold (waiting for jobs to finish when it holds that much).
        let room = tokio::select! {
            permit = jobs.reserve() => match permit {
                Ok(permit) => { drop(permit); shared.room(jobs.capacity()) }
                Err(_) => return,
            },
            _ = stop.changed() => return,
        };
        if room == 0 {
            tokio::select! {
                _ = shared.pace.released.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop.changed() => return,
            }
            continue;
        }
        let count = room.min(shared.options.batch);
        // Not cancelled by `stop`: a fetch that ran in Redis must reach `held`, or its jobs
        // would sit leased to a stopped worker until the lease expires.
        match fetch_once(&shared, count).await {
            Ok(Fetched::Jobs(raws)) => {
                backoff.ok();
                for raw in raws {
                    if let Some(task) = into_task(&shared, &acks, raw)
                        && jobs.send(task).await.is_err()
                    {
                        return;
                    }
                }
            }
            Ok(Fetched::Paused) => {
                backoff.ok();
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    _ = stop.changed() => return,
                }
            }
            Ok(Fetched::Empty { wake }) => {
                backoff.ok();
                // Block until a job is made ready: every push, promotion, retry or hand-back
                // adds to the wake-up stream.
                if blocking.is_none() {
                    match shared.queues.redis().dedicated(shared.options.block).await {
                        Ok(c) => blocking = Some(c),
                        Err(e) => {
                            let wait = backoff.delay("opening a blocking connection", &e);
                            tokio::time::sleep(wait).await;
                            continue;
                        }
                    }
                }
                let conn = blocking.as_mut().expect("opened above");
                let mut xread = redis::cmd("XREAD");
                xread
                    .arg("BLOCK")
                    .arg(shared.options.block.as_millis() as u64)
                    .arg("COUNT")
                    .arg(1)
                    .arg("STREAMS")
                    .arg(shared.keys.wake())
                    .arg(&wake);
                let wait = xread.query_async::<Value>(conn);
                tokio::select! {
                    r = wait => if let Err(e) = r {
                        blocking = None;
                        let wait = backoff.delay("waiting for jobs", &e);
                        tokio::time::sleep(wait).await;
                    },
                    _ = stop.changed() => return,
                }
            }
            Err(e) => {
                let wait = backoff.delay("fetching jobs", &e);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.changed() => return,
                }
            }
        }
    }
}
