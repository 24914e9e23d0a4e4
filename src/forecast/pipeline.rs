//! The forecasting pipeline that nightly runs, API runs and the analysts' CLI share, so that
//! `backroom forecast backtest` chooses models exactly as a nightly run would.
//!
//! 1. **Describe** a panel (polars): each series with its descriptors.
//! 2. **Train** what the whole run shares, on a sample of series: the global Tweedie model (one
//!    fit per backtest origin, so its backtest never sees the data it is scored on, plus one on
//!    all the data), and, for runs too big to backtest every SKU, a decision tree that learns
//!    from the sample's backtests which model wins given the descriptors; and, from where the
//!    sample's held-out points fell, how much to widen each model's 95 % interval
//!    ([`calibration`](super::calibration)).
//! 3. **Forecast** each series: a rolling-origin backtest over the last `folds` horizons picks
//!    the model by MASE (RMSSE for intermittent series) among every model — or, in big runs,
//!    between the tree's pick and the seasonal-naive baseline — shrunk towards the model that
//!    does best across the run's sample (`backtest::choose_pooled`), and the chosen model
//!    forecasts the horizon with its calibrated interval. A model that fails or panics falls
//!    back to the baseline for that series. A series with two seasons whose backtests cannot
//!    hold two ([`is_season_blind`]) gets the run's pooled model of its longer series instead:
//!    its backtests could only pit unseasonal fits against seasonal naive.

use super::backtest::{self, ModelScore};
use super::calibration::{Calibration, Misses};
use super::chooser::{self, Chooser};
use super::features::{self, Series};
use super::global::{self, GlobalModel};
use super::metrics;
use super::models::{self, Forecast, ModelKind};
use polars::prelude::*;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::panic::{AssertUnwindSafe, catch_unwind};

/// Level of the prediction intervals stored with every forecast.
pub const INTERVAL_LEVEL: f64 = 0.95;
/// Backtest origins per series: the last two horizons.
pub const FOLDS: usize = 2;
/// Series backtested in full to train the shared models.
pub const TRAINING_SAMPLE: usize = 400;
/// By default, runs with at most this many series backtest every model on every series;
/// bigger runs let the decision tree shortlist each series' model
/// (`BACKROOM_FORECAST_FULL_BACKTEST_MAX_SKUS`).
pub const FULL_BACKTEST_MAX_SKUS: usize = 20_000;

/// The parameters of one run.
#[derive(Debug, Clone)]
pub struct RunSettings {
    pub season: usize,
    pub horizon: usize,
    pub folds: usize,
    /// Whether the global model takes part (its weekday features need a 7-period season).
    pub global: bool,
}

impl RunSettings {
    pub fn new(season: usize, horizon: usize) -> Self {
        RunSettings {
            season: season.max(1),
            horizon: horizon.max(1),
            folds: FOLDS,
            global: season == 7,
        }
    }
}

/// A series and its descriptors (in [`chooser::DESCRIPTORS`] order).
#[derive(Debug, Clone)]
pub struct Described {
    pub series: Series,
    pub descriptors: [f64; 6],
}

/// Collects a panel into described series (series without values are skipped).
pub fn describe(panel: LazyFrame, season: usize) -> PolarsResult<Vec<Described>> {
    let panel = panel.cache();
    let table = features::descriptors(panel.clone(), season)?.collect()?;
    let ids = table.column(features::SERIES)?.str()?;
    let mut by_id = std::collections::HashMap::new();
    let columns: Vec<&Float64Chunked> = chooser::DESCRIPTORS
        .iter()
        .map(|name| table.column(name).and_then(|c| c.f64()))
        .collect::<PolarsResult<_>>()?;
    for (row, id) in ids.iter().enumerate() {
        let mut d = [0.0; 6];
        for (slot, column) in d.iter_mut().zip(&columns) {
            *slot = column.get(row).unwrap_or(0.0);
        }
        if let Some(id) = id {
            by_id.insert(id.to_string(), d);
        }
    }
    Ok(features::collect_series(panel)?
        .into_iter()
        .filter(|s| !s.values.is_empty())
        .map(|series| Described {
            descriptors: by_id.get(&series.id).copied().unwrap_or([0.0; 6]),
            series,
        })
        .collect())
}

/// An evenly spread sample of at most [`TRAINING_SAMPLE`] ids, deterministic for a given list.
pub fn training_sample(ids: &[String]) -> Vec<String> {
    if ids.len() <= TRAINING_SAMPLE {
        return ids.to_vec();
    }
    (0..TRAINING_SAMPLE)
        .map(|i| ids[i * ids.len() / TRAINING_SAMPLE].clone())
        .collect()
}

/// What every chunk of a run shares.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Artifacts {
    /// `global_backtest[i]` was fitted with the last `folds − i` horizons of every series cut
    /// off: the model that backtest origin `i` may use.
    pub global_backtest: Vec<Option<GlobalModel>>,
    /// Fitted on all the history: the one that forecasts.
    pub global_final: Option<GlobalModel>,
    pub chooser: Option<Chooser>,
    /// The model that does best across the sample's backtests, for smooth (`[0]`) and for
    /// intermittent (`[1]`) series: a series keeps its own winner only when that is clearly
    /// better (`backtest::choose_pooled`).
    pub pooled: [Option<ModelKind>; 2],
    /// The pooled model of the sample's smooth series whose backtests hold two seasons: what a
    /// series gets whose backtests cannot see its season (see [`is_season_blind`]).
    #[serde(default)]
    pub pooled_seasonal: Option<ModelKind>,
    /// The sample's backtest scores by series id, so a run does not backtest its sample's series
    /// twice. Not stored: a run's chunks, which load the artifacts, backtest their own series.
    #[serde(skip)]
    pub sample_scores: std::collections::HashMap<String, Vec<ModelScore>>,
    /// Share of the sample whose winner the tree predicts (on the sample it learnt from).
    pub chooser_accuracy: Option<f64>,
    /// How much to widen or narrow each model's intervals, learnt from the sample's backtests.
    #[serde(default)]
    pub calibration: Calibration,
    pub sample_size: usize,
}

/// Fits the global model on `sample` with the last `cut` periods of each series removed.
fn fit_global(sample: &[Described], settings: &RunSettings, cut: usize) -> Option<GlobalModel> {
    let mut ids = vec![];
    let mut ts = vec![];
    let mut ys = vec![];
    for d in sample {
        let n = d.series.values.len().saturating_sub(cut);
        for (i, v) in d.series.values[..n].iter().enumerate() {
            ids.push(d.series.id.clone());
            ts.push(d.series.start + i as i32);
            ys.push(*v);
        }
    }
    let panel = features::panel_from_rows(ids, ts, ys).ok()?;
    let (x, y) = features::global_training_rows(panel, settings.horizon).ok()?;
    match catch_unwind(AssertUnwindSafe(|| {
        global::fit(&x, &y, settings.horizon, 1.5)
    })) {
        Ok(Ok(model)) => Some(model),
        Ok(Err(e)) => {
            tracing::info!(error = %e, cut, "no global model for this cut");
            None
        }
        Err(_) => {
            tracing::warn!(cut, "the global model's fit panicked; running without it");
            None
        }
    }
}

/// Trains the run's shared models on `sample`; `use_chooser` when the run is too big to
/// backtest every model on every series.
pub fn train(sample: &[Described], settings: &RunSettings, use_chooser: bool) -> Artifacts {
    let mut artifacts = Artifacts {
        sample_size: sample.len(),
        ..Default::default()
    };
    if settings.global {
        artifacts.global_backtest = (1..=settings.folds)
            .rev()
            .map(|k| fit_global(sample, settings, k * settings.horizon))
            .collect();
        artifacts.global_final = fit_global(sample, settings, 0);
    }
    let sample_backtests: Vec<(bool, Vec<(ModelScore, Misses)>)> = sample
        .par_iter()
        .map(|d| {
            let backtests = backtests_of(d, &ModelKind::ALL, &artifacts, settings);
            (is_intermittent(d), backtests)
        })
        .collect();
    artifacts.calibration = Calibration::fit(sample_backtests.iter().flat_map(|(i, backtests)| {
        backtests
            .iter()
            .map(move |(score, misses)| (*i, score.model, misses))
    }));
    let sample_scores: Vec<(bool, Vec<ModelScore>)> = sample_backtests
        .into_iter()
        .map(|(i, backtests)| (i, backtests.into_iter().map(|(s, _)| s).collect()))
        .collect();
    for (slot, intermittent) in [(0, false), (1, true)] {
        let of_class = sample_scores
            .iter()
            .filter(|(i, _)| *i == intermittent)
            .map(|(_, scores)| scores.as_slice());
        artifacts.pooled[slot] = backtest::pooled(of_class, intermittent);
    }
    // Local models only: the global model needs more history than a season-blind series has.
    let seasonal: Vec<Vec<ModelScore>> = sample
        .iter()
        .zip(&sample_scores)
        .filter(|(d, (i, _))| {
            !i && !backtest::is_short(
                d.series.values.len(),
                settings.season,
                settings.horizon,
                settings.folds,
            )
        })
        .map(|(_, (_, scores))| {
            scores
                .iter()
                .filter(|s| s.model.is_local())
                .copied()
                .collect()
        })
        .collect();
    artifacts.pooled_seasonal = backtest::pooled(seasonal.iter().map(Vec::as_slice), false);
    artifacts.sample_scores = sample
        .iter()
        .zip(&sample_scores)
        .map(|(d, (_, scores))| (d.series.id.clone(), scores.clone()))
        .collect();
    if use_chooser {
        let labelled: Vec<([f64; 6], usize)> = sample
            .iter()
            .zip(&sample_scores)
            .filter(|(_, (_, scores))| !scores.is_empty())
            .map(|(d, (intermittent, scores))| {
                let pooled = artifacts.pooled[usize::from(*intermittent)];
                let winner = backtest::choose_pooled(scores, *intermittent, pooled);
                (d.descriptors, winner.index())
            })
            .collect();
        let (x, winners): (Vec<[f64; 6]>, Vec<usize>) = labelled.into_iter().unzip();
        match chooser::train(&x, &winners, ModelKind::ALL.len()) {
            Ok(tree) => {
                artifacts.chooser_accuracy = tree.accuracy(&x, &winners).ok();
                artifacts.chooser = Some(tree);
            }
            Err(e) => tracing::info!(error = %e, "no model chooser; every series is backtested"),
        }
    }
    artifacts
}

fn is_intermittent(d: &Described) -> bool {
    backtest::is_intermittent(&d.series.values)
}

fn first_weekday(series: &Series) -> u32 {
    (series.start + 3).rem_euclid(7) as u32
}

/// The global model's forecast of `steps` periods after `y` (a prefix of `series`).
fn global_forecast(
    model: &GlobalModel,
    series: &Series,
    y: &[f64],
    steps: usize,
) -> Result<Forecast, String> {
    let run = catch_unwind(AssertUnwindSafe(|| {
        global::forecast_series(model, y, steps, first_weekday(series), INTERVAL_LEVEL)
    }));
    match run {
        Ok(Ok(f)) => Ok(Forecast {
            point: f.point,
            lower: f.lower,
            upper: f.upper,
        }),
        Ok(Err(e)) => Err(format!("global_tweedie: {e}")),
        Err(_) => Err("global_tweedie panicked".into()),
    }
}

/// The global model's backtest score on one series (None when it cannot take part).
fn global_score(
    d: &Described,
    artifacts: &Artifacts,
    settings: &RunSettings,
) -> Option<(ModelScore, Misses)> {
    let y = &d.series.values;
    let floor = backtest::train_floor(y.len(), settings.season, settings.horizon, settings.folds);
    let cuts = backtest::origins(y.len(), settings.horizon, settings.folds, floor);
    if cuts.is_empty() || artifacts.global_backtest.is_empty() {
        return None;
    }
    let (mut mase, mut rmsse, mut smape) = (vec![], vec![], vec![]);
    let mut failures = 0;
    let mut misses = Misses::default();
    for &t in &cuts {
        // Origin t cut k = (n − t) / horizon horizons off; its model is global_backtest[folds − k].
        let k = (y.len() - t) / settings.horizon;
        let model = artifacts
            .global_backtest
            .get(settings.folds.checked_sub(k)?)?
            .as_ref()?;
        let (train, actual) = (&y[..t], &y[t..t + settings.horizon]);
        let fc = match global_forecast(model, &d.series, train, settings.horizon) {
            Ok(f) => {
                misses.add(&f, actual);
                f
            }
            Err(_) => {
                failures += 1;
                models::forecast_or_baseline(
                    ModelKind::SeasonalNaive,
                    train,
                    settings.season,
                    settings.horizon,
                    INTERVAL_LEVEL,
                )
                .0
            }
        };
        let s = metrics::score(train, actual, &fc.point, settings.season);
        mase.extend(s.mase);
        rmsse.extend(s.rmsse);
        smape.push(s.smape);
    }
    let mean = |v: &[f64]| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
    let score = ModelScore {
        model: ModelKind::GlobalTweedie,
        mase: mean(&mase),
        rmsse: mean(&rmsse),
        smape: mean(&smape).unwrap_or(200.0),
        failures,
    };
    Some((score, misses))
}

/// Backtests of `kinds` on one series (the global model scored from the artifacts), each with
/// where its held-out points fell against its intervals.
fn backtests_of(
    d: &Described,
    kinds: &[ModelKind],
    artifacts: &Artifacts,
    settings: &RunSettings,
) -> Vec<(ModelScore, Misses)> {
    let local: Vec<ModelKind> = kinds.iter().copied().filter(|k| k.is_local()).collect();
    let mut backtests = backtest::backtest_local_with_misses(
        &d.series.values,
        settings.season,
        settings.horizon,
        settings.folds,
        &local,
    );
    if kinds.contains(&ModelKind::GlobalTweedie)
        && let Some(global) = global_score(d, artifacts, settings)
    {
        backtests.push(global);
    }
    backtests
}

/// Backtest scores of `kinds` on one series.
fn scores_of(
    d: &Described,
    kinds: &[ModelKind],
    artifacts: &Artifacts,
    settings: &RunSettings,
) -> Vec<ModelScore> {
    backtests_of(d, kinds, artifacts, settings)
        .into_iter()
        .map(|(score, _)| score)
        .collect()
}

fn all_scores(d: &Described, artifacts: &Artifacts, settings: &RunSettings) -> Vec<ModelScore> {
    scores_of(d, &ModelKind::ALL, artifacts, settings)
}

/// One series' outcome.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub id: String,
    pub model: ModelKind,
    /// `backtest`, `classifier`, `pooled` or `fallback`.
    pub chosen_by: &'static str,
    pub fallback_reason: Option<String>,
    pub scores: Vec<ModelScore>,
    /// The backtest score of the model that forecast.
    pub chosen: ModelScore,
    pub forecast: Forecast,
    pub history_len: usize,
}

impl Outcome {
    /// Every model's backtest scores, by model name.
    pub fn scores_json(&self) -> serde_json::Value {
        let mut map = serde_json::Map::new();
        for s in &self.scores {
            map.insert(
                s.model.name().to_string(),
                serde_json::json!({"mase": s.mase, "rmsse": s.rmsse, "smape": s.smape, "failures": s.failures}),
            );
        }
        serde_json::Value::Object(map)
    }
}

/// The forecast of `kind` for the whole series, or the baseline and the reason it was needed,
/// with its interval calibrated by the run's backtests.
pub fn forecast_with(
    kind: ModelKind,
    d: &Described,
    artifacts: &Artifacts,
    settings: &RunSettings,
) -> (Forecast, Option<String>) {
    forecasts_with(&[kind], d, artifacts, settings)
        .pop()
        .expect("one forecast per kind")
}

/// [`forecast_with`] for each of `kinds`, fitting each model once however many of the means
/// use it.
pub fn forecasts_with(
    kinds: &[ModelKind],
    d: &Described,
    artifacts: &Artifacts,
    settings: &RunSettings,
) -> Vec<(Forecast, Option<String>)> {
    let mut fitted = Vec::new();
    kinds
        .iter()
        .map(|&kind| {
            let (mut fc, failure) = models::fit_once(&mut fitted, kind, &mut |k| {
                model_forecast(k, d, artifacts, settings)
            });
            // A model that failed was replaced by the baseline: the baseline's factors apply.
            let model = if failure.is_some() {
                ModelKind::SeasonalNaive
            } else {
                kind
            };
            artifacts
                .calibration
                .apply(&mut fc, is_intermittent(d), model);
            (fc, failure)
        })
        .collect()
}

/// The forecast of `kind` with the model's own interval.
fn model_forecast(
    kind: ModelKind,
    d: &Described,
    artifacts: &Artifacts,
    settings: &RunSettings,
) -> (Forecast, Option<String>) {
    let y = &d.series.values;
    if kind == ModelKind::GlobalTweedie {
        let attempt = match &artifacts.global_final {
            Some(model) => global_forecast(model, &d.series, y, settings.horizon),
            None => Err("global_tweedie: no global model in this run".into()),
        };
        return match attempt {
            Ok(f) => (f, None),
            Err(reason) => {
                let (f, _) = models::forecast_or_baseline(
                    ModelKind::SeasonalNaive,
                    y,
                    settings.season,
                    settings.horizon,
                    INTERVAL_LEVEL,
                );
                (f, Some(reason))
            }
        };
    }
    models::forecast_or_baseline(kind, y, settings.season, settings.horizon, INTERVAL_LEVEL)
}

/// What a season-blind series gets when the run has no longer smooth series to learn from: the
/// mean of ETS and MSTL-ETS, both seasonal from two seasons up (on the fpp3 series cut to 30 and
/// 36 months it was the best model of the pool; seasonal naive, which short backtests favour
/// because it is the one model they can see a season in, was 16 % and 9 % worse).
const SEASON_BLIND_DEFAULT: ModelKind = ModelKind::EtsMstlMean;

/// Whether a series of `n` points has the two seasons a seasonal fit needs while its backtests,
/// each cutting off a horizon or more, do not: those backtests compare models fitted without a
/// season against seasonal naive, so they cannot judge the model that will forecast it.
pub fn is_season_blind(n: usize, settings: &RunSettings) -> bool {
    let m = settings.season;
    m > 1 && n >= 2 * m && backtest::is_short(n, m, settings.horizon, settings.folds)
}

/// Widens `fc`'s interval, step by step, to at least `other`'s half-widths around `fc`'s point.
fn widen_to(fc: &mut Forecast, other: &Forecast) {
    for (i, p) in fc.point.iter().enumerate() {
        let (Some(lo), Some(hi)) = (other.lower.get(i), other.upper.get(i)) else {
            break;
        };
        let half = (hi - lo) / 2.0;
        fc.lower[i] = fc.lower[i].min(p - half);
        fc.upper[i] = fc.upper[i].max(p + half);
    }
}

/// Chooses one series' model and forecasts with it.
pub fn forecast_one(d: &Described, artifacts: &Artifacts, settings: &RunSettings) -> Outcome {
    let intermittent = is_intermittent(d);
    let (scores, chosen_by) = match &artifacts.chooser {
        Some(tree) => {
            let pick = ModelKind::from_index(tree.predict(&d.descriptors))
                .unwrap_or(ModelKind::SeasonalNaive);
            let mut kinds = vec![ModelKind::SeasonalNaive];
            if pick != ModelKind::SeasonalNaive {
                kinds.push(pick);
            }
            (scores_of(d, &kinds, artifacts, settings), "classifier")
        }
        None => (
            match artifacts.sample_scores.get(&d.series.id) {
                Some(scores) => scores.clone(),
                None => all_scores(d, artifacts, settings),
            },
            "backtest",
        ),
    };
    // One decision: too short to backtest, season-blind (the run's choice for its longer
    // series), or the backtest's choice, each with the reason a person reads.
    let n = d.series.values.len();
    let (chosen, chosen_by, reason) = if scores.is_empty() {
        let reason = format!(
            "{n} periods of history are too few to backtest a {}-period horizon",
            settings.horizon
        );
        (ModelKind::SeasonalNaive, "fallback", Some(reason))
    } else if !intermittent && is_season_blind(n, settings) {
        let model = artifacts.pooled_seasonal.unwrap_or(SEASON_BLIND_DEFAULT);
        let reason = format!(
            "{n} periods hold two seasons ({}) but its backtests cannot: the model is the run's \
             choice for its longer series ({})",
            2 * settings.season,
            model.name()
        );
        (model, "pooled", Some(reason))
    } else {
        let pooled = artifacts.pooled[usize::from(intermittent)];
        let model = backtest::choose_pooled(&scores, intermittent, pooled);
        // A short series is chosen for by the usual backtest, on shorter windows: say so.
        let short = backtest::is_short(n, settings.season, settings.horizon, settings.folds);
        let reason = short.then(|| {
            format!(
                "{n} periods are fewer than two seasons ({}) plus the backtest: models were \
                 backtested from {} periods and fit without a season",
                2 * settings.season,
                backtest::min_train(1)
            )
        });
        (model, chosen_by, reason)
    };
    let (mut forecast, failure) = forecast_with(chosen, d, artifacts, settings);
    if chosen_by == "pooled" && failure.is_none() {
        // Two seasons fit a season closely, so the model's own spread is too small, and no
        // backtest of a seasonal fit calibrated it: the interval is at least seasonal naive's.
        let (naive, _) = forecast_with(ModelKind::SeasonalNaive, d, artifacts, settings);
        widen_to(&mut forecast, &naive);
    }
    let (model, chosen_by, fallback_reason) = match failure {
        Some(failure) => (ModelKind::SeasonalNaive, "fallback", Some(failure)),
        None => (chosen, chosen_by, reason),
    };
    let chosen_score = scores
        .iter()
        .find(|s| s.model == model)
        .copied()
        .unwrap_or(ModelScore {
            model,
            mase: None,
            smape: 200.0,
            rmsse: None,
            failures: 0,
        });
    Outcome {
        id: d.series.id.clone(),
        model,
        chosen_by,
        fallback_reason,
        scores,
        chosen: chosen_score,
        forecast,
        history_len: d.series.values.len(),
    }
}

/// Forecasts many series in parallel (rayon), calling `progress(done)` as they finish. Asks
/// `stop()` before each series and gives up (`None`) once it says so: a job that timed out must
/// not keep the cores busy.
pub fn forecast_all(
    described: &[Described],
    artifacts: &Artifacts,
    settings: &RunSettings,
    progress: &(dyn Fn(usize) + Sync),
    stop: &(dyn Fn() -> bool + Sync),
) -> Option<Vec<Outcome>> {
    let done = std::sync::atomic::AtomicUsize::new(0);
    described
        .par_iter()
        .map(|d| {
            if stop() {
                return None;
            }
            let outcome = forecast_one(d, artifacts, settings);
            progress(done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1);
            Some(outcome)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Daily series with a weekly shape, a trend and noise (a seeded LCG).
    fn seasonal_set(n_series: usize, len: usize) -> Vec<Described> {
        let mut state: u64 = 42;
        let mut noise = move || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 11) as f64 / (1u64 << 53) as f64) - 0.5
        };
        let shape = [1.0, 0.8, 0.9, 1.1, 1.5, 2.2, 0.5];
        let mut ids = vec![];
        let mut ts = vec![];
        let mut ys = vec![];
        for s in 0..n_series {
            let level = 5.0 + s as f64;
            for i in 0..len {
                let trend = 1.0 + 0.002 * i as f64;
                let v = level * trend * shape[i % 7] + noise() * level * 0.3;
                ids.push(format!("sku-{s:03}"));
                ts.push(20_000 + i as i32);
                ys.push(v.max(0.0).round());
            }
        }
        let panel = features::panel_from_rows(ids, ts, ys).unwrap();
        describe(panel, 7).unwrap()
    }

    #[test]
    fn the_chosen_model_beats_the_baseline_on_a_seasonal_set() {
        let settings = RunSettings::new(7, 14);
        let full = seasonal_set(24, 200);
        // Hold out the last horizon; choose on the rest exactly as a run would.
        let cut: Vec<Described> = full
            .iter()
            .map(|d| {
                let mut d = d.clone();
                d.series
                    .values
                    .truncate(d.series.values.len() - settings.horizon);
                d
            })
            .collect();
        let artifacts = train(&cut, &settings, false);
        let outcomes = forecast_all(&cut, &artifacts, &settings, &|_| {}, &|| false).unwrap();
        let (mut chosen, mut baseline) = (0.0, 0.0);
        for ((o, train), whole) in outcomes.iter().zip(&cut).zip(&full) {
            let actual = &whole.series.values[train.series.values.len()..];
            let naive = models::forecast_or_baseline(
                ModelKind::SeasonalNaive,
                &train.series.values,
                7,
                settings.horizon,
                INTERVAL_LEVEL,
            )
            .0;
            chosen += metrics::mase(&train.series.values, actual, &o.forecast.point, 7).unwrap();
            baseline += metrics::mase(&train.series.values, actual, &naive.point, 7).unwrap();
            assert_eq!(o.forecast.point.len(), settings.horizon);
            assert!(o.scores.len() >= 5, "every model was backtested");
        }
        assert!(
            chosen < baseline,
            "chosen mix MASE {chosen} vs seasonal naive {baseline}"
        );
    }

    #[test]
    fn a_season_blind_series_gets_the_seasonal_choice_of_the_longer_series() {
        let settings = RunSettings::new(7, 14);
        // 24 days: over two weeks, but the one backtest origin (24 − 14 = 10 days) is not.
        assert!(is_season_blind(24, &settings));
        assert!(
            !is_season_blind(13, &settings),
            "under two seasons: not seasonal at all"
        );
        assert!(!is_season_blind(200, &settings));
        let mut set = seasonal_set(12, 200);
        let mut young = set[0].clone();
        young.series.id = "new".into();
        young.series.values.truncate(24);
        set.push(young);
        let artifacts = train(&set, &settings, false);
        let learnt = artifacts
            .pooled_seasonal
            .expect("the long series' pooled model");
        let o = forecast_one(set.last().unwrap(), &artifacts, &settings);
        assert_eq!((o.model, o.chosen_by), (learnt, "pooled"));
        assert!(o.fallback_reason.unwrap().contains("hold two seasons"));
        // Its interval is at least as wide as seasonal naive's, step by step.
        let (naive, _) = forecast_with(
            ModelKind::SeasonalNaive,
            set.last().unwrap(),
            &artifacts,
            &settings,
        );
        for i in 0..settings.horizon {
            let width = o.forecast.upper[i] - o.forecast.lower[i];
            assert!(width >= naive.upper[i] - naive.lower[i] - 1e-9, "step {i}");
            assert!(o.forecast.lower[i] <= o.forecast.point[i]);
        }
        // A run of season-blind series only: the seasonal mean of ETS and MSTL-ETS.
        let only_young = vec![set.last().unwrap().clone()];
        let artifacts = train(&only_young, &settings, false);
        assert_eq!(artifacts.pooled_seasonal, None);
        let o = forecast_one(&only_young[0], &artifacts, &settings);
        assert_eq!((o.model, o.chosen_by), (ModelKind::EtsMstlMean, "pooled"));
        // The long series keep their own backtests.
        let o = forecast_one(&set[1], &train(&set, &settings, false), &settings);
        assert_eq!(o.chosen_by, "backtest");
    }

    #[test]
    fn a_series_too_short_to_backtest_falls_back_with_a_reason() {
        let settings = RunSettings::new(7, 28);
        let d = Described {
            series: Series {
                id: "new".into(),
                start: 20_000,
                values: vec![1.0, 0.0, 2.0],
            },
            descriptors: [3.0, 1.5, 0.0, 0.33, 0.0, 0.0],
        };
        let o = forecast_one(&d, &Artifacts::default(), &settings);
        assert_eq!(o.model, ModelKind::SeasonalNaive);
        assert_eq!(o.chosen_by, "fallback");
        assert!(o.fallback_reason.unwrap().contains("too few"));
        assert_eq!(o.forecast.point.len(), 28);
    }
}
