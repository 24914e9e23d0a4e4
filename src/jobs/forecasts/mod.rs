//! The forecast kind: a `plan` job per run and a `chunk` job per few hundred SKUs on the
//! `forecasts` queue, so every worker process shares a tenant's nightly run.
//!
//! - **Start** ([`runs`]): a `forecast_runs` row, then its plan job. A nightly run carries
//!   its night and `(tenant_id, night)` is unique, so several schedulers firing at once start
//!   one run per tenant per night. Producers: `POST /v1/forecasts/runs`, the scheduler, the CLI.
//! - **Plan** and **Chunk**: see [`worker`].

pub mod runs;
pub mod worker;

pub use runs::{StartError, Trigger, create_run, prune_runs, start_nightly, start_run};
pub use worker::run_in_process;

use crate::forecast::pipeline;
use crate::jobs::{JobKind, Queue};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// SKUs per chunk job: big enough to amortise loading, small enough to spread over workers.
pub const CHUNK_SKUS: usize = 250;
/// Season length of daily sales: weekly.
pub const DAILY_SEASON: i32 = 7;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum ForecastJob {
    Plan {
        tenant_id: Uuid,
        run_id: Uuid,
    },
    Chunk {
        tenant_id: Uuid,
        run_id: Uuid,
        chunk_no: i32,
        skus: Vec<String>,
    },
    /// Ends a run once every chunk has finished: the follow-up of the group of its chunks
    /// (the group's id is the run's).
    Finish {
        tenant_id: Uuid,
        run_id: Uuid,
    },
}

impl JobKind for ForecastJob {
    const QUEUE: Queue = Queue::Forecasts;
    const MAX_ATTEMPTS: u32 = 4;
    /// A chunk of 250 SKUs with full backtests takes minutes; a plan trains the shared models.
    const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30 * 60);

    fn kind(&self) -> &'static str {
        match self {
            ForecastJob::Plan { .. } => "forecast_plan",
            ForecastJob::Chunk { .. } => "forecast_chunk",
            ForecastJob::Finish { .. } => "forecast_finish",
        }
    }

    fn tenant(&self) -> Option<Uuid> {
        Some(self.tenant_id())
    }
}

impl ForecastJob {
    fn tenant_id(&self) -> Uuid {
        match self {
            ForecastJob::Plan { tenant_id, .. }
            | ForecastJob::Chunk { tenant_id, .. }
            | ForecastJob::Finish { tenant_id, .. } => *tenant_id,
        }
    }
}

/// How runs are made (from the forecast settings).
#[derive(Debug, Clone, Copy)]
pub struct RunOptions {
    /// Service level of reorder advice (e.g. 0.95).
    pub service_level: f64,
    /// Runs over more SKUs let the model chooser shortlist each SKU's model instead of
    /// backtesting every model.
    pub full_backtest_max_skus: usize,
    /// The most days of history read per SKU (`BACKROOM_FORECAST_HISTORY_DAYS`).
    pub history_days: i32,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            service_level: 0.95,
            full_backtest_max_skus: pipeline::FULL_BACKTEST_MAX_SKUS,
            history_days: 1096,
        }
    }
}
