//! The app (`backroom serve`'s server) and its workers (`backroom work`'s), started in this
//! process on the given settings, exactly as the binary starts them.

use backroom::config::Settings;
use backroom::process::serve::Application;
use backroom::process::work::{self, WorkPlan};
use backroom::queue::Queues;
use sqlx::PgPool;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The HTTP server, serving until stopped (or dropped).
pub struct InProcessApp {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    /// The server's own Postgres pool.
    pub db: PgPool,
    /// The server's own queues (its Redis namespace).
    pub queues: Queues,
    stop: Option<oneshot::Sender<()>>,
    join: Option<JoinHandle<anyhow::Result<()>>>,
}

impl InProcessApp {
    pub async fn start(settings: &Settings) -> anyhow::Result<Self> {
        let app = Application::build(settings.clone()).await?;
        let base = format!("http://127.0.0.1:{}", app.port());
        let db = app.state().db.clone();
        let queues = app.state().queues.clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let join = tokio::spawn(app.run_until(async move {
            let _ = stopped.await;
        }));
        Ok(InProcessApp {
            base,
            db,
            queues,
            stop: Some(stop),
            join: Some(join),
        })
    }

    /// Stops the server and waits (at most 30 s) until it has.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let join = self.join.take().expect("joined once");
        tokio::time::timeout(Duration::from_secs(30), join)
            .await
            .map_err(|_| anyhow::anyhow!("the server did not stop within 30 s"))??
    }
}

impl Drop for InProcessApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The workers of some queues (and the outbox relay), running until stopped (or dropped).
pub struct InProcessWorkers {
    stop: Option<oneshot::Sender<()>>,
    join: Option<JoinHandle<anyhow::Result<()>>>,
}

impl InProcessWorkers {
    /// Works `queues` (comma-separated); `concurrency` jobs at once per queue (`None`: each
    /// queue's default).
    pub fn start(
        settings: &Settings,
        queues: &str,
        concurrency: Option<usize>,
    ) -> anyhow::Result<Self> {
        let plan = WorkPlan::parse(Some(queues), concurrency)?;
        let settings = settings.clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let join = tokio::spawn(async move {
            work::run(&settings, plan, async move {
                let _ = stopped.await;
            })
            .await
        });
        Ok(InProcessWorkers {
            stop: Some(stop),
            join: Some(join),
        })
    }

    /// Stops the workers gracefully and waits (at most 40 s) until they have.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let limit = Duration::from_secs(40);
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let join = self.join.take().expect("joined once");
        tokio::time::timeout(limit, join)
            .await
            .map_err(|_| anyhow::anyhow!("the workers did not stop within {limit:?}"))??
    }
}

impl Drop for InProcessWorkers {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
