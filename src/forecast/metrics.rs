//! Forecast accuracy metrics used to compare models across series.
//!
//! Scale-free metrics are needed because SKUs sell anywhere from a few units a
//! month to thousands a day: MASE (M4), sMAPE (M3) and RMSSE (M5). The scaled
//! metrics return `None` when the in-sample scale is zero (e.g. a constant
//! history), so callers can skip them instead of averaging infinities.
//!
//! Forecast and actual slices are compared pairwise up to the shorter length.

/// Accuracy of one forecast against its actuals.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Scores {
    pub mase: Option<f64>,
    pub smape: f64,
    pub rmsse: Option<f64>,
}

/// All three metrics at once.
pub fn score(insample: &[f64], actual: &[f64], forecast: &[f64], m: usize) -> Scores {
    Scores {
        mase: mase(insample, actual, forecast, m),
        smape: smape(actual, forecast),
        rmsse: rmsse(insample, actual, forecast),
    }
}

/// Mean absolute scaled error (M4): MAE of the forecast divided by the mean
/// absolute in-sample seasonal difference at lag `m` (lag 1 when the
/// in-sample length is ≤ m, or m = 0). `None` if the scale is 0 or undefined
/// or there is nothing to compare.
pub fn mase(insample: &[f64], actual: &[f64], forecast: &[f64], m: usize) -> Option<f64> {
    let lag = if insample.len() > m { m.max(1) } else { 1 };
    if insample.len() <= lag {
        return None;
    }
    let scale = insample[lag..]
        .iter()
        .zip(insample)
        .map(|(a, b)| (a - b).abs())
        .sum::<f64>()
        / (insample.len() - lag) as f64;
    let mae = mean(actual.iter().zip(forecast).map(|(a, f)| (a - f).abs()))?;
    positive(scale).map(|s| mae / s)
}

/// Symmetric MAPE (M3), in percent: 200/h · Σ |y − ŷ| / (|y| + |ŷ|), where a
/// term with y = ŷ = 0 counts as 0. Ranges over [0, 200]; 0 for empty input.
pub fn smape(actual: &[f64], forecast: &[f64]) -> f64 {
    mean(actual.iter().zip(forecast).map(|(a, f)| {
        let denom = a.abs() + f.abs();
        if denom == 0.0 {
            0.0
        } else {
            200.0 * (a - f).abs() / denom
        }
    }))
    .unwrap_or(0.0)
}

/// Root mean squared scaled error (M5): √(MSE / mean squared one-step
/// in-sample difference). As in M5, the scale is computed from the first
/// non-zero in-sample value onwards (leading zeros are periods before the item
/// was sold). `None` if the scale is 0 or undefined or there is nothing to
/// compare.
pub fn rmsse(insample: &[f64], actual: &[f64], forecast: &[f64]) -> Option<f64> {
    let start = insample.iter().position(|&v| v != 0.0)?;
    let active = &insample[start..];
    let scale = mean(active[1..].iter().zip(active).map(|(a, b)| (a - b).powi(2)))?;
    let mse = mean(actual.iter().zip(forecast).map(|(a, f)| (a - f).powi(2)))?;
    positive(scale).map(|s| (mse / s).sqrt())
}

fn mean(values: impl Iterator<Item = f64>) -> Option<f64> {
    let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    (n > 0).then(|| sum / n as f64)
}

fn positive(scale: f64) -> Option<f64> {
    (scale > 0.0 && scale.is_finite()).then_some(scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-12, "{a} vs {b}");
    }

    #[test]
    fn mase_by_hand() {
        let insample = [1.0, 3.0, 2.0, 5.0, 4.0];
        // Lag-2 differences: |2−1|, |5−3|, |4−2| = 1, 2, 2 → scale 5/3.
        // Errors |6−5|, |2−4| = 1, 2 → MAE 1.5. MASE = 1.5 / (5/3) = 0.9.
        close(mase(&insample, &[6.0, 2.0], &[5.0, 4.0], 2).unwrap(), 0.9);
        // Lag 1: |2|, |1|, |3|, |1| → scale 7/4; MASE = 1.5 / 1.75 = 6/7.
        close(
            mase(&insample, &[6.0, 2.0], &[5.0, 4.0], 1).unwrap(),
            6.0 / 7.0,
        );
        // n ≤ m falls back to lag 1.
        close(
            mase(&insample, &[6.0, 2.0], &[5.0, 4.0], 5).unwrap(),
            6.0 / 7.0,
        );
    }

    #[test]
    fn mase_none_on_zero_scale() {
        assert_eq!(mase(&[2.0; 6], &[1.0], &[3.0], 1), None);
        assert_eq!(mase(&[1.0, 2.0, 1.0, 2.0], &[1.0], &[3.0], 2), None);
        assert_eq!(mase(&[1.0], &[1.0], &[3.0], 1), None);
    }

    #[test]
    fn smape_by_hand() {
        // Terms: 200·|10−8|/18 = 22.2222…, 200·|0−0|/0 → 0, 200·|0−5|/5 = 200.
        // Mean over h = 3: (400/18 + 0 + 200)/3 = 74.0740740…
        close(
            smape(&[10.0, 0.0, 0.0], &[8.0, 0.0, 5.0]),
            (400.0 / 18.0 + 200.0) / 3.0,
        );
        close(smape(&[], &[]), 0.0);
    }

    #[test]
    fn rmsse_by_hand() {
        let insample = [0.0, 0.0, 2.0, 4.0, 1.0];
        // Active from the first non-zero: [2, 4, 1]; squared diffs 4, 9 → 6.5.
        // Errors 1, −3 → MSE 5. RMSSE = √(5/6.5).
        close(
            rmsse(&insample, &[3.0, 0.0], &[2.0, 3.0]).unwrap(),
            (5.0f64 / 6.5).sqrt(),
        );
        assert_eq!(rmsse(&[0.0, 0.0, 3.0], &[1.0], &[0.0]), None);
        assert_eq!(rmsse(&[0.0; 4], &[1.0], &[0.0]), None);
        assert_eq!(rmsse(&[5.0; 4], &[1.0], &[0.0]), None);
    }

    #[test]
    fn score_bundles_all_three() {
        let s = score(&[1.0, 3.0, 2.0, 5.0, 4.0], &[6.0, 2.0], &[5.0, 4.0], 2);
        close(s.mase.unwrap(), 0.9);
        // Terms: 200·1/11 and 200·2/6 → mean (200/11 + 200/3)/2.
        close(s.smape, (200.0 / 11.0 + 200.0 / 3.0) / 2.0);
        // Squared one-step diffs 4, 1, 9, 1 → 3.75; MSE (1 + 4)/2 = 2.5.
        close(s.rmsse.unwrap(), (2.5f64 / 3.75).sqrt());
    }
}
