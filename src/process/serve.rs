//! Wiring: settings in, a bound listener and a running server out.
//!
//! `Application::build` binds its own listener (port 0 in tests) and exposes the port, so tests
//! and `backroom dev` start the same server that production runs.

use crate::api::{self, AppState};
use crate::config::Settings;
use crate::db;
use crate::redis_conn::RedisHandle;
use anyhow::Context;
use std::future::Future;
use tokio::net::TcpListener;

pub struct Application {
    port: u16,
    listener: TcpListener,
    state: AppState,
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let db = db::pool(
            &settings.database_url,
            settings.database_max_connections,
            crate::db::Role::Api,
        )?;
        let redis = RedisHandle::open(&settings.redis_url)?;
        let listener = TcpListener::bind(settings.bind)
            .await
            .with_context(|| format!("while binding {} (BACKROOM_BIND)", settings.bind))?;
        let port = listener.local_addr()?.port();
        crate::queue::metrics::handle();
        Ok(Self {
            port,
            listener,
            state: AppState::new(db, redis, settings),
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` resolves, then finishes in-flight requests. Also serves the
    /// credential-free metrics listener when `BACKROOM_METRICS_BIND` is set.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        tracing::info!(port = self.port, "HTTP API listening");
        tokio::spawn(self.state.lookups.clone().listen(self.state.db.clone()));
        if let Some(bind) = self.state.settings.metrics_bind {
            spawn_metrics_listener(bind, self.state.queues.clone(), self.state.db.clone()).await?;
        }
        let (limits, drain) = (
            self.state.settings.connections,
            self.state.settings.shutdown_grace,
        );
        super::http::serve(
            self.listener,
            api::router(self.state),
            limits,
            drain,
            shutdown,
        )
        .await;
        Ok(())
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown signal received");
}

/// Serves `/metrics` without credentials on `bind` (worker processes call this too).
pub async fn spawn_metrics_listener(
    bind: std::net::SocketAddr,
    queues: crate::queue::Queues,
    db: sqlx::PgPool,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind(bind)
        .await
        .with_context(|| format!("while binding {bind} (BACKROOM_METRICS_BIND)"))?;
    tracing::info!(%bind, "metrics listening");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, api::metrics::public_router(queues, db)).await {
            tracing::error!(error = %e, "metrics listener stopped");
        }
    });
    Ok(())
}
