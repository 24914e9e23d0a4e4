//! Demand forecasting: sales history in ([`history`], the imports worker), features in polars
//! ([`features`]), per-series models ([`models`], seasonal exponential smoothing in [`ets`]) and a global model across SKUs ([`global`]),
//! choice by rolling-origin backtest ([`backtest`], [`metrics`]) or, in big runs, by a decision
//! tree trained on backtests ([`chooser`]), all tied together by [`pipeline`]; reorder advice
//! from the forecasts ([`reorder`]) and the analysts' backtest CLI ([`evaluate`]). The queue
//! jobs that run it per tenant live in `jobs::forecasts`.

pub mod backtest;
pub mod calibration;
pub mod chooser;
pub mod csv_file;
pub mod demo;
pub mod ets;
pub mod evaluate;
pub mod features;
pub mod global;
pub mod history;
pub mod metrics;
pub mod models;
pub mod pipeline;
pub mod reorder;
