//! Calibrated prediction intervals (split conformal across series).
//!
//! The models' own intervals assume the model is the process that made the data: on real
//! series they come out too narrow (81–89 % of held-out points inside the "95 %" interval on
//! six of seven public sets and cuts, `scripts/forecast-peers`). A run already backtests every model on a sample of its series, so
//! it learns from those backtests, per demand class (smooth / intermittent), model and step
//! ahead, how far the held-out points fell from the point forecast in units of the model's own
//! half-width on that side, and widens or narrows every forecast's interval by the 95th
//! percentile of that ratio. The backtest origins lie before the end of the history, so nothing
//! held out is seen.

use super::models::{Forecast, ModelKind};
use serde::{Deserialize, Serialize};

/// Share of backtest points each calibrated interval is fitted to cover.
pub const LEVEL: f64 = 0.95;
/// Fewest backtest points a factor is computed from: a step with fewer shares its model's
/// factor over all steps; a model with fewer keeps its own interval.
pub const MIN_POINTS: usize = 40;
/// Bounds of a factor, so that one odd sample cannot collapse or explode the intervals.
pub const FACTOR_RANGE: (f64, f64) = (0.25, 5.0);

/// Where the held-out points of backtests fell, for one model: `by_step[h]` holds, for each
/// point `h + 1` steps ahead, its distance from the point forecast divided by the interval's
/// half-width on that side.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Misses {
    pub by_step: Vec<Vec<f64>>,
}

impl Misses {
    /// Adds one origin's forecast and what happened. Points where the interval has no width on
    /// the side the actual fell are skipped (no factor can widen nothing).
    pub fn add(&mut self, fc: &Forecast, actual: &[f64]) {
        if self.by_step.len() < actual.len() {
            self.by_step.resize(actual.len(), Vec::new());
        }
        for (h, &a) in actual.iter().enumerate() {
            let (Some(&p), Some(&lo), Some(&hi)) =
                (fc.point.get(h), fc.lower.get(h), fc.upper.get(h))
            else {
                continue;
            };
            let (miss, half) = if a >= p {
                (a - p, hi - p)
            } else {
                (p - a, p - lo)
            };
            let ratio = if miss == 0.0 { 0.0 } else { miss / half };
            if ratio.is_finite() && ratio >= 0.0 {
                self.by_step[h].push(ratio);
            }
        }
    }

    pub fn extend(&mut self, other: &Misses) {
        if self.by_step.len() < other.by_step.len() {
            self.by_step.resize(other.by_step.len(), Vec::new());
        }
        for (mine, theirs) in self.by_step.iter_mut().zip(&other.by_step) {
            mine.extend_from_slice(theirs);
        }
    }
}

/// A run's interval factors: `by_class[intermittent][model index][step]`; an empty list means
/// the model keeps its own interval.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    pub by_class: [Vec<Vec<f64>>; 2],
}

/// The conformal quantile of `ratios`: the smallest value at least `LEVEL` of them (with one
/// more, unseen, point counted) do not exceed.
fn quantile(ratios: &mut [f64]) -> Option<f64> {
    if ratios.len() < MIN_POINTS {
        return None;
    }
    ratios.sort_by(f64::total_cmp);
    let rank = ((ratios.len() + 1) as f64 * LEVEL).ceil() as usize;
    let q = ratios[rank.clamp(1, ratios.len()) - 1];
    Some(q.clamp(FACTOR_RANGE.0, FACTOR_RANGE.1))
}

/// Factors per step for one model's misses (empty when there are too few of them).
fn factors(misses: &Misses) -> Vec<f64> {
    let mut all: Vec<f64> = misses.by_step.iter().flatten().copied().collect();
    let Some(overall) = quantile(&mut all) else {
        return Vec::new();
    };
    misses
        .by_step
        .iter()
        .map(|step| quantile(&mut step.clone()).unwrap_or(overall))
        .collect()
}

impl Calibration {
    /// Learns the factors from backtests: one `(intermittent, model, misses)` per series and model.
    pub fn fit<'a>(samples: impl IntoIterator<Item = (bool, ModelKind, &'a Misses)>) -> Self {
        let mut pooled: [Vec<Misses>; 2] =
            std::array::from_fn(|_| vec![Misses::default(); ModelKind::ALL.len()]);
        for (intermittent, model, misses) in samples {
            if let Some(slot) = pooled[usize::from(intermittent)].get_mut(model.index()) {
                slot.extend(misses);
            }
        }
        Calibration {
            by_class: pooled.map(|models| models.iter().map(factors).collect()),
        }
    }

    /// The factor for `model`'s forecast `step` periods ahead (0-based), if one was learnt.
    pub fn factor(&self, intermittent: bool, model: ModelKind, step: usize) -> Option<f64> {
        let steps = self.by_class[usize::from(intermittent)].get(model.index())?;
        steps.get(step).or(steps.last()).copied()
    }

    /// Scales `fc`'s interval around its point forecast by the learnt factors. A lower bound
    /// that was not negative stays not negative (demand is not).
    pub fn apply(&self, fc: &mut Forecast, intermittent: bool, model: ModelKind) {
        for (h, ((p, lo), hi)) in fc
            .point
            .iter()
            .zip(fc.lower.iter_mut())
            .zip(fc.upper.iter_mut())
            .enumerate()
        {
            let Some(c) = self.factor(intermittent, model, h) else {
                return;
            };
            let floor = if *lo >= 0.0 { 0.0 } else { f64::NEG_INFINITY };
            *lo = (p - c * (p - *lo)).max(floor).min(*p);
            *hi = (p + c * (*hi - p)).max(*p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forecast(point: f64, half: f64, steps: usize) -> Forecast {
        Forecast {
            point: vec![point; steps],
            lower: vec![point - half; steps],
            upper: vec![point + half; steps],
        }
    }

    #[test]
    fn misses_are_measured_in_half_widths_on_the_side_they_fell() {
        let mut m = Misses::default();
        let fc = Forecast {
            point: vec![10.0, 10.0, 10.0],
            lower: vec![8.0, 9.0, 10.0],
            upper: vec![14.0, 11.0, 10.0],
        };
        m.add(&fc, &[18.0, 8.0, 12.0]);
        // 8 above a half-width of 4; 2 below a half-width of 1; no width above: skipped.
        assert_eq!(m.by_step, vec![vec![2.0], vec![2.0], vec![]]);
    }

    #[test]
    fn intervals_that_were_too_narrow_are_widened_to_cover_the_level() {
        // Errors spread as ±0..2 half-widths: the model's own interval covers about half.
        let mut misses = Misses::default();
        for i in 0..200 {
            let e = 2.0 * (i as f64 / 199.0) * if i % 2 == 0 { 1.0 } else { -1.0 };
            misses.add(
                &forecast(100.0, 10.0, 2),
                &[100.0 + 10.0 * e, 100.0 + 10.0 * e],
            );
        }
        let cal = Calibration::fit([(false, ModelKind::Theta, &misses)]);
        let c = cal.factor(false, ModelKind::Theta, 0).unwrap();
        assert!((1.85..=2.0).contains(&c), "factor {c}");
        // Another model, or the other class, learnt nothing: its interval stays as it is.
        assert_eq!(cal.factor(false, ModelKind::MstlEts, 0), None);
        assert_eq!(cal.factor(true, ModelKind::Theta, 0), None);
        let mut fc = forecast(100.0, 10.0, 3);
        cal.apply(&mut fc, false, ModelKind::Theta);
        assert!((fc.upper[0] - (100.0 + 10.0 * c)).abs() < 1e-9);
        // A step beyond those backtested uses the last learnt factor.
        assert!((fc.lower[2] - (100.0 - 10.0 * c)).abs() < 1e-9);
        let mut untouched = forecast(100.0, 10.0, 3);
        cal.apply(&mut untouched, true, ModelKind::Theta);
        assert_eq!(untouched, forecast(100.0, 10.0, 3));
    }

    #[test]
    fn too_few_points_keep_the_models_interval_and_factors_are_bounded() {
        let mut few = Misses::default();
        for _ in 0..(MIN_POINTS - 1) {
            few.add(&forecast(5.0, 1.0, 1), &[50.0]);
        }
        let cal = Calibration::fit([(false, ModelKind::SeasonalNaive, &few)]);
        assert_eq!(cal.factor(false, ModelKind::SeasonalNaive, 0), None);
        few.add(&forecast(5.0, 1.0, 1), &[50.0]);
        let cal = Calibration::fit([(false, ModelKind::SeasonalNaive, &few)]);
        assert_eq!(
            cal.factor(false, ModelKind::SeasonalNaive, 0),
            Some(FACTOR_RANGE.1)
        );
    }

    #[test]
    fn a_lower_bound_at_zero_or_above_stays_there() {
        let mut misses = Misses::default();
        for _ in 0..MIN_POINTS {
            misses.add(&forecast(10.0, 2.0, 1), &[16.0]);
        }
        let cal = Calibration::fit([(true, ModelKind::Tsb, &misses)]);
        let mut fc = forecast(1.0, 1.0, 1);
        cal.apply(&mut fc, true, ModelKind::Tsb);
        assert_eq!(fc.lower, vec![0.0]);
        assert!((fc.upper[0] - 4.0).abs() < 1e-9);
    }
}
