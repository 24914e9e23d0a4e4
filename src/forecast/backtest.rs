//! Rolling-origin evaluation and per-series model choice.
//!
//! No single model wins on every SKU, so each series is backtested: the
//! history is cut at several origins, every candidate forecasts the next
//! `horizon` points from each cut, and the model with the lowest scaled error
//! is chosen (RMSSE for intermittent demand, where MASE's absolute errors
//! reward always forecasting zero; MASE otherwise). Models that fail fall back
//! to seasonal naive and are scored on that fallback, so an unreliable model
//! cannot win by skipping its hard cases.
//!
//! Two rules keep the choice from chasing a noisy window: Croston's family competes only
//! on intermittent demand (the Syntetos–Boylan ADI cut-off), and a series too short for a
//! backtest that keeps two seasons of training is still backtested, from 8 points up, so a
//! new product gets the model that fits it rather than seasonal naive untested.

use super::calibration::Misses;
use super::metrics;
use super::models::{self, ModelKind};

/// Average-demand-interval cut-off of the Syntetos-Boylan-Croston scheme.
pub const ADI_CUTOFF: f64 = 1.32;

/// Interval level requested from models during backtests (the intervals are not scored; the
/// run calibrates its forecasts' intervals by where the held-out points fell against them).
const BACKTEST_LEVEL: f64 = super::pipeline::INTERVAL_LEVEL;

/// Backtest accuracy of one model on one series, averaged over origins.
///
/// `mase`/`rmsse` average only the origins where the metric is defined and are
/// `None` if it was defined at none of them.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ModelScore {
    pub model: ModelKind,
    pub mase: Option<f64>,
    pub smape: f64,
    pub rmsse: Option<f64>,
    /// Origins where the model errored or panicked and the baseline was scored.
    pub failures: usize,
}

/// Whether `y` is intermittent demand: ADI = n / #non-zero periods ≥ 1.32.
/// An all-zero series is intermittent; an empty one is not.
pub fn is_intermittent(y: &[f64]) -> bool {
    if y.is_empty() {
        return false;
    }
    let nonzero = y.iter().filter(|&&v| v != 0.0).count();
    nonzero == 0 || y.len() as f64 / nonzero as f64 >= ADI_CUTOFF
}

/// Training-set ends `n − horizon·k` for k = folds..=1 (oldest first), keeping
/// those with at least `min_train` training points. Empty when `horizon` is 0.
pub fn origins(n: usize, horizon: usize, folds: usize, min_train: usize) -> Vec<usize> {
    if horizon == 0 {
        return Vec::new();
    }
    (1..=folds)
        .rev()
        .filter_map(|k| n.checked_sub(horizon.checked_mul(k)?))
        .filter(|&t| t >= min_train && t > 0)
        .collect()
}

/// Minimum training length used by [`backtest_local`]: two seasons (so MSTL
/// and the seasonality test have something to work with), and never fewer
/// than 8 points.
pub fn min_train(m: usize) -> usize {
    (2 * m.max(1)).max(8)
}

/// The training floor of a backtest of a series of `n` points: [`min_train`]`(m)` when an
/// origin keeps that much, else [`min_train`]`(1)` (a series shorter than two seasons plus a
/// horizon: the models fit it without a season, as they will for its forecast).
pub fn train_floor(n: usize, m: usize, horizon: usize, folds: usize) -> usize {
    let seasonal = min_train(m);
    if origins(n, horizon, folds, seasonal).is_empty() {
        min_train(1)
    } else {
        seasonal
    }
}

/// Whether a series of `n` points is backtested without two seasons of training.
pub fn is_short(n: usize, m: usize, horizon: usize, folds: usize) -> bool {
    train_floor(n, m, horizon, folds) < min_train(m)
}

/// Rolling-origin backtest of `kinds` on `y` (season length `m`).
///
/// Uses [`origins`] with [`train_floor`]; returns one entry per kind in the
/// order given, or an empty vector when no origin fits. Non-local kinds (the
/// global model) always fail and are scored as the baseline, so pass only
/// local kinds and append externally computed scores before [`choose`].
/// Non-finite values in `y` are carried forward before evaluation.
pub fn backtest_local(
    y: &[f64],
    m: usize,
    horizon: usize,
    folds: usize,
    kinds: &[ModelKind],
) -> Vec<ModelScore> {
    backtest_local_with_misses(y, m, horizon, folds, kinds)
        .into_iter()
        .map(|(score, _)| score)
        .collect()
}

/// [`backtest_local`], with where each model's held-out points fell against its intervals
/// (what [`calibration`](super::calibration) learns from).
pub fn backtest_local_with_misses(
    y: &[f64],
    m: usize,
    horizon: usize,
    folds: usize,
    kinds: &[ModelKind],
) -> Vec<(ModelScore, Misses)> {
    let y = models::sanitize_series(y);
    let cuts = origins(
        y.len(),
        horizon,
        folds,
        train_floor(y.len(), m, horizon, folds),
    );
    if cuts.is_empty() {
        return Vec::new();
    }
    let mut accs: Vec<(Accumulator, Misses)> = kinds.iter().map(|_| Default::default()).collect();
    for &t in &cuts {
        let (train, actual) = (&y[..t], &y[t..t + horizon]);
        // Each origin's fits, kept so that a mean of two of them costs no second fit.
        let mut fitted = Vec::new();
        let mut fit = |k| models::forecast_or_baseline(k, train, m, horizon, BACKTEST_LEVEL);
        for ((acc, misses), &kind) in accs.iter_mut().zip(kinds) {
            let (fc, reason) = models::fit_once(&mut fitted, kind, &mut fit);
            let failed = reason.is_some();
            acc.add(metrics::score(train, actual, &fc.point, m), failed);
            // A failed fit was replaced by the baseline: its misses say nothing of this model.
            if !failed {
                misses.add(&fc, actual);
            }
        }
    }
    accs.into_iter()
        .zip(kinds)
        .map(|((acc, misses), &kind)| (acc.finish(kind), misses))
        .collect()
}

#[derive(Default)]
struct Accumulator {
    mase: (f64, usize),
    rmsse: (f64, usize),
    smape: (f64, usize),
    failures: usize,
}

impl Accumulator {
    fn add(&mut self, s: metrics::Scores, failed: bool) {
        fn push(slot: &mut (f64, usize), v: Option<f64>) {
            if let Some(v) = v.filter(|v| v.is_finite()) {
                slot.0 += v;
                slot.1 += 1;
            }
        }
        push(&mut self.mase, s.mase);
        push(&mut self.rmsse, s.rmsse);
        push(&mut self.smape, Some(s.smape));
        self.failures += usize::from(failed);
    }

    fn finish(self, model: ModelKind) -> ModelScore {
        let avg = |(sum, n): (f64, usize)| (n > 0).then(|| sum / n as f64);
        ModelScore {
            model,
            mase: avg(self.mase),
            // sMAPE is bounded in [0, 200]; with finite inputs it is always
            // defined, so the fallback only guards against an empty set.
            smape: avg(self.smape).unwrap_or(200.0),
            rmsse: avg(self.rmsse),
            failures: self.failures,
        }
    }
}

/// Picks the model with the lowest RMSSE (intermittent series) or MASE; Croston's
/// family only for intermittent series.
///
/// Entries whose metric is `None` or non-finite are ignored. On a tie, a model that fitted every
/// origin wins over one that fell back to the baseline there (and so scored as the baseline), and
/// the first listed wins among those that fitted (two models can both forecast a straight line
/// exactly). Returns [`ModelKind::SeasonalNaive`] when no entry has the metric or when the best
/// value is shared only by models that fell back. Works with externally scored entries such as
/// `GlobalTweedie`.
pub fn choose(scores: &[ModelScore], intermittent: bool) -> ModelKind {
    let mut best: Option<(f64, &ModelScore)> = None;
    let mut tied = false;
    for s in scores {
        if !intermittent && s.model.is_intermittent_only() {
            continue;
        }
        let metric = if intermittent { s.rmsse } else { s.mase };
        let Some(v) = metric.filter(|v| v.is_finite()) else {
            continue;
        };
        match best {
            Some((b, _)) if v > b => {}
            Some((b, k)) if v == b => match (k.failures > 0, s.failures > 0) {
                (true, false) => {
                    best = Some((v, s));
                    tied = false;
                }
                (true, true) => tied |= k.model != s.model,
                _ => {}
            },
            _ => {
                best = Some((v, s));
                tied = false;
            }
        }
    }
    match best {
        Some((_, k)) if !tied => k.model,
        _ => ModelKind::SeasonalNaive,
    }
}

/// How much better (relative) a series' own backtest winner must score than the run's pooled
/// choice to be kept: a backtest of two horizons is a noisy judge, so a series that does about
/// as well with the model that wins across the run gets that one.
pub const POOLED_MARGIN: f64 = 0.20;

fn metric_of(s: &ModelScore, intermittent: bool) -> Option<f64> {
    let v = if intermittent { s.rmsse } else { s.mase };
    v.filter(|v| v.is_finite())
}

/// The model that does best across many series' backtests of one demand class: the lowest
/// geometric mean of each series' score relative to that series' best (so no series counts
/// more for having bigger errors), among models scored on at least half the series.
pub fn pooled<'a>(
    series: impl IntoIterator<Item = &'a [ModelScore]>,
    intermittent: bool,
) -> Option<ModelKind> {
    use std::collections::BTreeMap;
    let mut logs: BTreeMap<ModelKind, (f64, usize)> = BTreeMap::new();
    let mut counted = 0;
    for scores in series {
        let eligible = |s: &&ModelScore| intermittent || !s.model.is_intermittent_only();
        let best = scores
            .iter()
            .filter(eligible)
            .filter_map(|s| metric_of(s, intermittent))
            .fold(f64::INFINITY, f64::min);
        if !(best.is_finite() && best > 0.0) {
            continue;
        }
        counted += 1;
        for s in scores.iter().filter(eligible) {
            if let Some(v) = metric_of(s, intermittent) {
                let slot = logs.entry(s.model).or_default();
                slot.0 += (v / best).ln();
                slot.1 += 1;
            }
        }
    }
    logs.into_iter()
        .filter(|(_, (_, n))| *n * 2 >= counted && *n > 0)
        .map(|(model, (sum, n))| (sum / n as f64, model))
        .min_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, model)| model)
}

/// [`choose`], shrunk towards the run's `pooled` model: the series' own winner is kept only
/// when it scores more than [`POOLED_MARGIN`] better than the pooled model did on this series.
pub fn choose_pooled(
    scores: &[ModelScore],
    intermittent: bool,
    pooled: Option<ModelKind>,
) -> ModelKind {
    let own = choose(scores, intermittent);
    let score_of = |kind: ModelKind| {
        scores
            .iter()
            .find(|s| s.model == kind)
            .and_then(|s| metric_of(s, intermittent))
    };
    match pooled {
        Some(p) if p != own => match (score_of(p), score_of(own)) {
            (Some(sp), Some(so)) if sp <= so * (1.0 + POOLED_MARGIN) => p,
            _ => own,
        },
        _ => own,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(model: ModelKind, mase: Option<f64>, rmsse: Option<f64>) -> ModelScore {
        ModelScore {
            model,
            mase,
            smape: 10.0,
            rmsse,
            failures: 0,
        }
    }

    /// 64-bit LCG (Knuth's MMIX constants) with Box-Muller normals.
    struct Lcg(u64);

    impl Lcg {
        fn uniform(&mut self) -> f64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            // Top 53 bits → [0, 1); shift away from 0 for the logarithm.
            ((self.0 >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        }

        fn normal(&mut self) -> f64 {
            let (u1, u2) = (self.uniform(), self.uniform());
            (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
        }
    }

    #[test]
    fn intermittency_by_adi() {
        // 4 non-zero of 5 → ADI 1.25 < 1.32.
        assert!(!is_intermittent(&[1.0, 2.0, 0.0, 3.0, 4.0]));
        // 3 non-zero of 4 → ADI 1.33 ≥ 1.32.
        assert!(is_intermittent(&[1.0, 0.0, 3.0, 4.0]));
        assert!(is_intermittent(&[0.0; 5]));
        assert!(!is_intermittent(&[]));
    }

    #[test]
    fn origins_by_hand() {
        assert_eq!(origins(100, 10, 3, 20), vec![70, 80, 90]);
        // 100 − 14·5 = 30 < 40 is skipped; 100 − 14·6 = 16 too.
        assert_eq!(origins(100, 14, 6, 40), vec![44, 58, 72, 86]);
        assert_eq!(origins(10, 14, 2, 1), Vec::<usize>::new());
        assert_eq!(origins(10, 0, 2, 1), Vec::<usize>::new());
        assert_eq!(origins(10, 5, 2, 0), vec![5]);
    }

    #[test]
    fn choose_rules() {
        use ModelKind::*;
        let scores = [
            entry(SeasonalNaive, Some(1.0), Some(1.2)),
            entry(Theta, Some(0.7), Some(1.1)),
            entry(Tsb, Some(0.9), Some(0.8)),
        ];
        assert_eq!(choose(&scores, false), Theta);
        assert_eq!(choose(&scores, true), Tsb);
        // Croston's family never wins smooth demand, however its window went.
        let smooth = [
            entry(Theta, Some(0.9), None),
            entry(CrostonSba, Some(0.5), None),
        ];
        assert_eq!(choose(&smooth, false), Theta);

        let mut with_global = scores.to_vec();
        with_global.push(entry(GlobalTweedie, Some(0.5), Some(0.6)));
        assert_eq!(choose(&with_global, false), GlobalTweedie);
        assert_eq!(choose(&with_global, true), GlobalTweedie);

        // Two models that both fitted tie (a straight line, forecast exactly by both): the first.
        let tie = [
            entry(Theta, Some(0.7), None),
            entry(MstlEts, Some(0.7), None),
        ];
        assert_eq!(choose(&tie, false), Theta);
        assert_eq!(choose(&tie, true), SeasonalNaive);
        // Models that fell back score as the baseline: a tie between them means nothing …
        let fell_back = |model| ModelScore {
            failures: 2,
            ..entry(model, Some(0.7), None)
        };
        assert_eq!(
            choose(&[fell_back(Theta), fell_back(MstlEts)], false),
            SeasonalNaive
        );
        // … and one that fitted wins a tie with one that fell back, in either order.
        assert_eq!(choose(&[fell_back(Theta), tie[1]], false), MstlEts);
        assert_eq!(choose(&[tie[1], fell_back(Theta)], false), MstlEts);
        assert_eq!(choose(&[], false), SeasonalNaive);
        assert_eq!(
            choose(&[entry(Theta, Some(f64::NAN), None)], false),
            SeasonalNaive
        );
    }

    #[test]
    fn backtest_counts_failures_and_scores_baseline() {
        let y: Vec<f64> = (0..40).map(|t| (t % 7) as f64 + 1.0).collect();
        let kinds = [ModelKind::SeasonalNaive, ModelKind::GlobalTweedie];
        let scores = backtest_local(&y, 7, 7, 3, &kinds);
        assert_eq!(scores.len(), 2);
        assert_eq!(scores[0].failures, 0);
        assert_eq!(scores[1].failures, 3);
        // A perfect weekly cycle: seasonal naive (and the fallback) is exact.
        assert_eq!(scores[0].smape, 0.0);
        assert_eq!(scores[1].mase, scores[0].mase);
        assert!(backtest_local(&y[..10], 7, 7, 3, &kinds).is_empty());
    }

    #[test]
    fn the_pooled_model_wins_unless_a_series_own_winner_is_clearly_better() {
        use ModelKind::*;
        let a = [
            entry(Theta, Some(1.0), None),
            entry(MstlEts, Some(0.8), None),
        ];
        let b = [
            entry(Theta, Some(0.9), None),
            entry(MstlEts, Some(1.0), None),
        ];
        let c = [
            entry(Theta, Some(2.0), None),
            entry(MstlEts, Some(1.0), None),
        ];
        // MSTL-ETS: ratios 1.0, 1.11, 1.0; Theta: 1.25, 1.0, 2.0.
        let pooled_kind = pooled([&a[..], &b[..], &c[..]], false);
        assert_eq!(pooled_kind, Some(MstlEts));
        // b's own winner (Theta, 0.9) is within 20 % of the pooled model (1.0 ≤ 0.9 × 1.2): pooled.
        assert_eq!(choose_pooled(&b, false, pooled_kind), MstlEts);
        // Clearly better on its own: kept.
        let d = [
            entry(Theta, Some(0.5), None),
            entry(MstlEts, Some(1.0), None),
        ];
        assert_eq!(choose_pooled(&d, false, pooled_kind), Theta);
        // Croston's family is never the pooled model of smooth demand.
        let e = [
            entry(CrostonSba, Some(0.1), None),
            entry(Theta, Some(1.0), None),
        ];
        assert_eq!(pooled([&e[..]], false), Some(Theta));
        assert_eq!(pooled(std::iter::empty::<&[ModelScore]>(), false), None);
    }

    #[test]
    fn a_series_shorter_than_two_seasons_is_still_backtested() {
        // 96 weeks, season 52, horizon 8: no origin keeps 104 weeks of training.
        assert!(origins(96, 8, 3, min_train(52)).is_empty());
        assert_eq!(train_floor(96, 52, 8, 3), 8);
        assert!(is_short(96, 52, 8, 3));
        assert!(!is_short(200, 52, 8, 3));
        let y: Vec<f64> = (0..96).map(|t| 10.0 + 0.5 * t as f64).collect();
        let scores = backtest_local(&y, 52, 8, 3, &ModelKind::LOCAL);
        assert_eq!(scores.len(), ModelKind::LOCAL.len());
        // A trend with no season: a trend model wins, not seasonal naive.
        assert_ne!(choose(&scores, false), ModelKind::SeasonalNaive);
    }

    #[test]
    fn chosen_models_beat_seasonal_naive() {
        const SERIES: usize = 50;
        const N: usize = 140;
        const H: usize = 14;
        const M: usize = 7;
        let mut rng = Lcg(20_240_601);
        let (mut chosen_sum, mut naive_sum, mut counted) = (0.0, 0.0, 0);
        for _ in 0..SERIES {
            let level = 20.0 + 180.0 * rng.uniform();
            let slope = level * (0.004 * rng.uniform() - 0.001);
            let amp = 0.1 + 0.3 * rng.uniform();
            let noise = 0.03 + 0.07 * rng.uniform();
            let weekly: Vec<f64> = (0..M).map(|_| amp * (2.0 * rng.uniform() - 1.0)).collect();
            let y: Vec<f64> = (0..N)
                .map(|t| {
                    let base = level + slope * t as f64;
                    (base * (1.0 + weekly[t % M]) + level * noise * rng.normal()).max(0.0)
                })
                .collect();
            let (train, test) = y.split_at(N - H);

            let scores = backtest_local(train, M, H, 3, &ModelKind::LOCAL);
            let kind = choose(&scores, is_intermittent(train));
            let (fc, _) = models::forecast_or_baseline(kind, train, M, H, 0.95);
            let (naive, _) =
                models::forecast_or_baseline(ModelKind::SeasonalNaive, train, M, H, 0.95);
            if let (Some(c), Some(n)) = (
                metrics::mase(train, test, &fc.point, M),
                metrics::mase(train, test, &naive.point, M),
            ) {
                chosen_sum += c;
                naive_sum += n;
                counted += 1;
            }
        }
        assert_eq!(counted, SERIES);
        let (chosen, naive) = (chosen_sum / SERIES as f64, naive_sum / SERIES as f64);
        assert!(
            chosen < naive,
            "chosen mean MASE {chosen} vs seasonal naive {naive}"
        );
    }
}
