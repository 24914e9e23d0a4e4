//! Stopping a job's blocking work when the job times out.
//!
//! A job past its timeout is aborted: its async part stops at its next `.await`. Work on the
//! blocking pool (a forecast chunk, a CSV validation, a PDF render) cannot be aborted; before
//! this module it ran on while the job was retried elsewhere, and a tenant whose work always
//! times out piled copies of it onto the shared workers. Such work now runs through
//! [`spawn_blocking`], which hands it the job's [`Cancel`] token to check in its loops. On a
//! timeout the engine raises the token and waits for the job's blocking work to return (up to
//! [`SETTLE`]) before it records the retry, so at most one copy of a job computes at a time.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::watch;

/// How long the engine waits for a timed-out job's blocking work to notice its token.
pub const SETTLE: Duration = Duration::from_secs(30);

tokio::task_local! {
    static CURRENT: Cancel;
}

/// A job's cancellation token: raised when the job times out.
#[derive(Clone)]
pub struct Cancel(Arc<Inner>);

struct Inner {
    cancelled: AtomicBool,
    /// Blocking sections of the job still running.
    running: watch::Sender<usize>,
}

impl Default for Cancel {
    fn default() -> Self {
        Cancel(Arc::new(Inner {
            cancelled: AtomicBool::new(false),
            running: watch::Sender::new(0),
        }))
    }
}

/// The error blocking work returns when it stopped because its job was cancelled.
#[derive(Debug, thiserror::Error)]
#[error("stopped: the job timed out")]
pub struct Cancelled;

impl Cancel {
    pub fn is_cancelled(&self) -> bool {
        self.0.cancelled.load(Ordering::Relaxed)
    }

    /// `Err(Cancelled)` once the job has been cancelled: `cancel.check()?` in a loop.
    pub fn check(&self) -> Result<(), Cancelled> {
        if self.is_cancelled() {
            Err(Cancelled)
        } else {
            Ok(())
        }
    }

    /// Runs `job` with this token as the current job's (what [`spawn_blocking`] picks up).
    pub async fn scope<F: Future>(self, job: F) -> F::Output {
        CURRENT.scope(self, job).await
    }

    pub(crate) fn cancel(&self) {
        self.0.cancelled.store(true, Ordering::Relaxed);
    }

    /// Waits until none of the job's blocking work runs, at most `within`; false on time-out.
    pub(crate) async fn settled(&self, within: Duration) -> bool {
        let mut running = self.0.running.subscribe();
        tokio::time::timeout(within, running.wait_for(|n| *n == 0))
            .await
            .is_ok()
    }
}

/// Counts one blocking section while it lives.
struct Running(Cancel);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.0.running.send_modify(|n| *n -= 1);
    }
}

/// `tokio::task::spawn_blocking` for a job's work: `work` gets the job's token (a token never
/// raised outside a job) and should return early once [`Cancel::check`] fails.
pub async fn spawn_blocking<R, W>(work: W) -> Result<R, tokio::task::JoinError>
where
    R: Send + 'static,
    W: FnOnce(&Cancel) -> R + Send + 'static,
{
    let cancel = CURRENT.try_with(Cancel::clone).unwrap_or_default();
    cancel.0.running.send_modify(|n| *n += 1);
    let running = Running(cancel.clone());
    // The work stays inside the job's span (its logs and child spans belong to the job) and its
    // trace (unsampled, it makes no OpenTelemetry spans there either).
    let span = tracing::Span::current();
    let unsampled = crate::telemetry::traces::current_unsampled();
    tokio::task::spawn_blocking(move || {
        let _running = running;
        let _entered = span.enter();
        crate::telemetry::traces::in_trace_sync(unsampled, || work(&cancel))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[tokio::test]
    async fn a_cancelled_jobs_blocking_loop_stops_and_is_waited_for() {
        let cancel = Cancel::default();
        let spins = Arc::new(AtomicU64::new(0));
        let job = {
            let spins = spins.clone();
            cancel.clone().scope(async move {
                spawn_blocking(move |cancel| {
                    while cancel.check().is_ok() {
                        spins.fetch_add(1, Ordering::Relaxed);
                        std::thread::sleep(Duration::from_millis(1));
                    }
                })
                .await
            })
        };
        let job = tokio::spawn(job);
        while spins.load(Ordering::Relaxed) == 0 {
            tokio::task::yield_now().await;
        }
        // As the engine does on a time-out: abort the async part, raise the token, wait.
        job.abort();
        assert!(
            !cancel.settled(Duration::from_millis(50)).await,
            "still running"
        );
        cancel.cancel();
        assert!(cancel.settled(Duration::from_secs(10)).await);
        let after = spins.load(Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(spins.load(Ordering::Relaxed), after, "the loop went on");
    }

    #[tokio::test]
    async fn outside_a_job_the_token_is_never_raised() {
        let cancelled = spawn_blocking(|cancel| cancel.is_cancelled())
            .await
            .unwrap();
        assert!(!cancelled);
    }
}
