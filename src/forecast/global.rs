//! Global (cross-SKU) demand model: one Tweedie GLM with log link fitted on the rows of
//! every series at once (the M5-winning recipe, minus the boosting).
//!
//! Why: per-series models starve on short or intermittent histories; pooling lets a new
//! or sparse SKU borrow the weekly shape and the "how fast does demand decay" behaviour
//! of all the others, and one fit replaces thousands of per-series fits.
//!
//! Design, which is the contract with the polars code that builds the training rows:
//!
//! * **Direct multi-step.** A model is fitted for one `horizon` H. Every feature of target
//!   day `t` uses only observations at or before `t − H`, so every day up to H days past
//!   the end of the history can be forecast without feeding forecasts back in.
//! * **Scale-free.** Targets and level features are divided by the series scale
//!   ([`series_scale`]: mean of the positive observations, or 1), so SKUs selling 0.1 and
//!   10 000 units a day share one model; predictions are multiplied back.
//! * **Features** are listed in [`FEATURES`] and built by [`feature_row`]; the caller's
//!   polars pipeline must reproduce them exactly (same order, same definitions).
//! * **Intervals**: Pearson residuals `(y − μ)/μ^{p/2}` (Tweedie variance function
//!   `φ·μ^p`) of the training rows are pooled in [`INTERVAL_BINS`] equal-count bins of μ,
//!   and their empirical quantiles give the interval `μ + q·μ^{p/2}`, clipped at zero.
//!   The variance function handles the scale, the empirical quantiles handle skew and the
//!   point mass at zero that a normal approximation would miss, and binning by μ lets the
//!   shape differ between slow and fast movers. Because every forecast step uses features
//!   of the same staleness H as in training, one residual distribution serves all steps.
//! * **Fitting** is our own IRLS (Fisher scoring with step halving and a small ridge
//!   penalty): 14 parameters, ~10 passes over the rows, always terminates. We do not use
//!   `linfa_linear::TweedieRegressor` (0.8.1): it minimises the deviance *summed* over
//!   rows with L-BFGS and a tolerance on that sum's gradient, and in our runs it did not
//!   return on ≥ 5 000 rows. The first step is O(rows) long, `exp` overflows, NaN
//!   reaches argmin's More–Thuente line search, which has no iteration cap. Rescaling
//!   the targets fixes that (see the cross-check test) but it still took 11 s on
//!   500 000 rows against 0.5 s here, and a hang cannot be ruled out.
//!   At most [`FitOptions::max_rows`] rows go into the solver: the rows whose index
//!   hashes lowest (deterministic, and unlike a stride it cannot alias with the weekly
//!   cycle). Residual quantiles are still computed on every row.

use std::borrow::Cow;

/// Feature names, in column order. `s` is the series scale, `H` the model horizon,
/// `L = 7·ceil(H/7)` the smallest lag ≥ H that falls on the target's weekday.
/// Level features are `ln(LEVEL_EPS + value / s)`: with the log link this makes the
/// forecast proportional to a power of recent demand, so a series that stopped selling
/// is forecast near zero (a `ln(1 + ·)` transform would floor it at `exp(intercept)`).
/// When H is a multiple of 7, `lag_h` and `lag_week_1` coincide; the ridge splits them.
pub const FEATURES: &[&str] = &[
    "lag_h",             // ln(ε + y[t−H] / s)
    "lag_week_1",        // ln(ε + y[t−L] / s)
    "lag_week_2",        // ln(ε + y[t−L−7] / s)
    "mean_same_weekday", // ln(ε + mean(y[t−L−7k], k = 0..4) / s)
    "mean_7",            // ln(ε + mean(y[t−H−6 ..= t−H]) / s)
    "mean_28",           // ln(ε + mean(y[t−H−27 ..= t−H]) / s)
    "zero_share_28",     // share of zero days in y[t−H−27 ..= t−H]
    "dow_mon",           // weekday one-hot of day t (0 = Monday); Sunday is the baseline
    "dow_tue",
    "dow_wed",
    "dow_thu",
    "dow_fri",
    "dow_sat",
];

/// Number of feature columns, `FEATURES.len()`.
pub const N_FEATURES: usize = 13;
const _: () = assert!(FEATURES.len() == N_FEATURES);

/// ε of the level features: 1 % of the series scale.
pub const LEVEL_EPS: f64 = 0.01;
/// Days of history a row needs before `t − H` (the 28-day window ends at `t − H`).
const WINDOW: usize = 28;

/// Number of equal-count μ bins used for the residual quantiles.
pub const INTERVAL_BINS: usize = 8;
/// Minimum training rows per μ bin; fewer rows means fewer bins.
const MIN_ROWS_PER_BIN: usize = 200;
/// Quantile grid resolution per bin (probabilities `i / (QGRID − 1)`).
const QGRID: usize = 401;
/// The linear predictor is clamped to this range before `exp`, so a wild row cannot
/// produce `inf`; `exp(30)` is 10¹³ series scales, far beyond any real demand.
const ETA_MIN: f64 = -50.0;
const ETA_MAX: f64 = 30.0;
/// Longest horizon accepted (ten years of days).
pub const MAX_HORIZON: usize = 3650;
/// Fewest rows `fit` accepts.
pub const MIN_ROWS: usize = 2 * (N_FEATURES + 1);
/// Parameters: intercept, then one per feature.
const K: usize = N_FEATURES + 1;

/// Errors of this module. Bad input always ends here, never in a panic.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GlobalError {
    #[error("no training rows")]
    Empty,
    #[error("feature matrix has {len} values, expected {rows} rows x {cols} features")]
    Shape {
        len: usize,
        rows: usize,
        cols: usize,
    },
    #[error("feature row has {got} values, expected {expected}")]
    RowLength { got: usize, expected: usize },
    #[error("non-finite value in {what} at index {index}")]
    NonFinite { what: &'static str, index: usize },
    #[error("negative target {value} at row {row}")]
    NegativeTarget { row: usize, value: f64 },
    #[error("all targets are zero; nothing to fit (forecast zeros instead)")]
    AllZero,
    #[error("need at least {need} rows, got {got}")]
    TooFewRows { need: usize, got: usize },
    #[error("Tweedie power must be in [1, 2), got {0}")]
    InvalidPower(f64),
    #[error("horizon must be in 1..=MAX_HORIZON")]
    InvalidHorizon,
    #[error("cannot forecast {steps} steps with a model fitted for horizon {horizon}")]
    TooManySteps { steps: usize, horizon: usize },
    #[error("weekday must be 0 (Monday) ..= 6 (Sunday), got {0}")]
    InvalidWeekday(u32),
    #[error("interval level must be in (0, 1), got {0}")]
    InvalidLevel(f64),
    #[error("need at least {need} observations, have {have}")]
    NotEnoughHistory { need: usize, have: usize },
    #[error("invalid option: {0}")]
    InvalidOption(&'static str),
    #[error("GLM solver failed: {0}")]
    Solver(String),
}

/// Scale of a series: mean of its positive finite observations, or 1 if there are none.
/// Compute it on the history available at fit (or forecast) time.
pub fn series_scale(history: &[f64]) -> f64 {
    let (sum, n) = history
        .iter()
        .filter(|v| v.is_finite() && **v > 0.0)
        .fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    if n == 0 { 1.0 } else { sum / n as f64 }
}

/// Smallest target index `t` for which [`feature_row`] has enough history.
pub fn first_target_index(horizon: usize) -> usize {
    horizon.saturating_add(WINDOW - 1)
}

/// Feature row (layout [`FEATURES`]) for target day `t` of series `y`, using only
/// `y[..=t − horizon]`; `y` may end anywhere at or after `t − horizon`, so `t` may lie in
/// the future. `weekday` is the weekday of day `t` (0 = Monday).
///
/// Returns `None` if `horizon` is not in `1..=MAX_HORIZON`, `weekday > 6`, `scale` is not finite and positive,
/// `t < first_target_index(horizon)`, `y` ends before `t − horizon`, or a value the row
/// uses is not finite. Negative values (returns) are treated as zero demand.
pub fn feature_row(
    y: &[f64],
    t: usize,
    horizon: usize,
    scale: f64,
    weekday: u32,
) -> Option<Vec<f64>> {
    if horizon == 0 || horizon > MAX_HORIZON || weekday > 6 || !scale.is_finite() || scale <= 0.0 {
        return None;
    }
    if t < first_target_index(horizon) {
        return None;
    }
    let anchor = t - horizon;
    if anchor >= y.len() {
        return None;
    }
    let at = |i: usize| -> Option<f64> {
        let v = y[i];
        v.is_finite().then_some(v.max(0.0))
    };
    let f = |v: f64| (LEVEL_EPS + v / scale).ln();
    let week_lag = horizon.div_ceil(7) * 7; // ≤ horizon + 6, so t − week_lag − 21 ≥ 0

    let window = &y[anchor + 1 - WINDOW..=anchor];
    let mut sum28 = 0.0;
    let mut zeros = 0usize;
    for v in window {
        if !v.is_finite() {
            return None;
        }
        let v = v.max(0.0);
        sum28 += v;
        if v == 0.0 {
            zeros += 1;
        }
    }
    let sum7: f64 = window[WINDOW - 7..].iter().map(|v| v.max(0.0)).sum();
    let mut same_wd = 0.0;
    for k in 0..4 {
        same_wd += at(t - week_lag - 7 * k)?;
    }

    let mut row = Vec::with_capacity(N_FEATURES);
    row.push(f(at(anchor)?));
    row.push(f(at(t - week_lag)?));
    row.push(f(at(t - week_lag - 7)?));
    row.push(f(same_wd / 4.0));
    row.push(f(sum7 / 7.0));
    row.push(f(sum28 / WINDOW as f64));
    row.push(zeros as f64 / WINDOW as f64);
    for d in 0..6 {
        row.push(if weekday == d { 1.0 } else { 0.0 });
    }
    Some(row)
}

/// Appends every available training row of one series to `x` (row-major) and `y_scaled`,
/// exactly as the polars pipeline is expected to: targets `y[t] / scale` for
/// `t ≥ first_target_index(horizon)`, skipping rows whose target or features are not
/// finite. Returns the number of rows added. Negative targets are clamped to zero.
pub fn push_training_rows(
    y: &[f64],
    horizon: usize,
    scale: f64,
    first_weekday: u32,
    x: &mut Vec<f64>,
    y_scaled: &mut Vec<f64>,
) -> usize {
    let mut added = 0;
    for (t, &target) in y.iter().enumerate().skip(first_target_index(horizon)) {
        if !target.is_finite() {
            continue;
        }
        if let Some(row) = feature_row(y, t, horizon, scale, weekday_of(first_weekday, t)) {
            x.extend_from_slice(&row);
            y_scaled.push(target.max(0.0) / scale);
            added += 1;
        }
    }
    added
}

fn weekday_of(first_weekday: u32, t: usize) -> u32 {
    ((first_weekday as usize % 7 + t % 7) % 7) as u32
}

/// Fit settings. `Default`: horizon 28, power 1.5, `max_rows` 1 000 000, `alpha` 1e-4,
/// 50 IRLS iterations (it usually converges in under 15).
#[derive(Debug, Clone, PartialEq)]
pub struct FitOptions {
    /// Horizon H the rows were built with (recorded so forecasts use the same H).
    pub horizon: usize,
    /// Tweedie power in [1, 2): 1 = Poisson, 1.5 = compound Poisson–Gamma (default).
    pub power: f64,
    /// Most rows handed to the solver; more are sampled down (see module docs).
    pub max_rows: usize,
    /// Ridge penalty (objective = mean half deviance + α/2·|β|², intercept free).
    pub alpha: f64,
    /// IRLS iteration cap.
    pub max_iter: usize,
}

impl Default for FitOptions {
    fn default() -> Self {
        Self {
            horizon: 28,
            power: 1.5,
            max_rows: 1_000_000,
            alpha: 1e-4,
            max_iter: 50,
        }
    }
}

/// Fitted global model.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GlobalModel {
    coef: Vec<f64>,
    intercept: f64,
    power: f64,
    horizon: usize,
    dispersion: f64,
    /// Upper μ edge of every bin but the last (ascending).
    bin_edges: Vec<f64>,
    /// `QGRID` quantiles of the Pearson residuals per bin.
    bin_quantiles: Vec<Vec<f64>>,
    rows_total: usize,
    rows_fitted: usize,
    iterations: usize,
    converged: bool,
}

/// Point forecast with a central prediction interval, in the series' own units.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesForecast {
    pub point: Vec<f64>,
    pub lower: Vec<f64>,
    pub upper: Vec<f64>,
    pub level: f64,
}

/// Fits the model with default options for `horizon` and Tweedie `power`.
/// `x` is row-major `n × N_FEATURES`, `y_scaled` the `n` scaled targets (≥ 0).
pub fn fit(
    x: &[f64],
    y_scaled: &[f64],
    horizon: usize,
    power: f64,
) -> Result<GlobalModel, GlobalError> {
    fit_with(
        x,
        y_scaled,
        &FitOptions {
            horizon,
            power,
            ..FitOptions::default()
        },
    )
}

/// Fits the model with explicit options.
pub fn fit_with(
    x: &[f64],
    y_scaled: &[f64],
    opts: &FitOptions,
) -> Result<GlobalModel, GlobalError> {
    validate_options(opts)?;
    let n = y_scaled.len();
    if n == 0 {
        return Err(GlobalError::Empty);
    }
    if x.len() != n.saturating_mul(N_FEATURES) {
        return Err(GlobalError::Shape {
            len: x.len(),
            rows: n,
            cols: N_FEATURES,
        });
    }
    if n < MIN_ROWS {
        return Err(GlobalError::TooFewRows {
            need: MIN_ROWS,
            got: n,
        });
    }
    if let Some(index) = x.iter().position(|v| !v.is_finite()) {
        return Err(GlobalError::NonFinite {
            what: "features",
            index,
        });
    }
    if let Some(index) = y_scaled.iter().position(|v| !v.is_finite()) {
        return Err(GlobalError::NonFinite {
            what: "targets",
            index,
        });
    }
    if let Some(row) = y_scaled.iter().position(|v| *v < 0.0) {
        return Err(GlobalError::NegativeTarget {
            row,
            value: y_scaled[row],
        });
    }

    if !y_scaled.iter().any(|v| *v > 0.0) {
        return Err(GlobalError::AllZero);
    }
    let (xs, ys): (Cow<[f64]>, Cow<[f64]>) = match sample_rows(n, opts.max_rows) {
        None => (Cow::Borrowed(x), Cow::Borrowed(y_scaled)),
        Some(idx) => {
            let mut xs = Vec::with_capacity(idx.len() * N_FEATURES);
            let mut ys = Vec::with_capacity(idx.len());
            for &i in &idx {
                xs.extend_from_slice(&x[i * N_FEATURES..(i + 1) * N_FEATURES]);
                ys.push(y_scaled[i]);
            }
            (Cow::Owned(xs), Cow::Owned(ys))
        }
    };
    let problem = Tweedie {
        x: &xs,
        y: &ys,
        power: opts.power,
        alpha: opts.alpha,
    };
    let (beta, iterations, converged) = problem.irls(opts.max_iter)?;

    let mut model = GlobalModel {
        coef: beta[1..].to_vec(),
        intercept: beta[0],
        power: opts.power,
        horizon: opts.horizon,
        dispersion: f64::NAN,
        bin_edges: Vec::new(),
        bin_quantiles: Vec::new(),
        rows_total: n,
        rows_fitted: ys.len(),
        iterations,
        converged,
    };
    model.calibrate(x, y_scaled);
    Ok(model)
}

/// Penalised Tweedie GLM with log link on validated rows.
struct Tweedie<'a> {
    x: &'a [f64],
    y: &'a [f64],
    power: f64,
    alpha: f64,
}

fn linear_predictor(beta: &[f64; K], row: &[f64]) -> f64 {
    beta[0] + row.iter().zip(&beta[1..]).map(|(a, b)| a * b).sum::<f64>()
}

impl Tweedie<'_> {
    fn is_poisson(&self) -> bool {
        (self.power - 1.0).abs() < 1e-12
    }

    /// Mean half deviance (terms that depend only on y dropped) plus α/2·|β|², intercept
    /// not penalised.
    fn objective(&self, beta: &[f64; K]) -> f64 {
        let p = self.power;
        let mut sum = 0.0;
        for (row, &y) in self.x.chunks_exact(N_FEATURES).zip(self.y) {
            let eta = linear_predictor(beta, row).clamp(ETA_MIN, ETA_MAX);
            let mu = eta.exp();
            sum += if self.is_poisson() {
                mu - y * eta
            } else {
                mu.powf(2.0 - p) / (2.0 - p) - y * mu.powf(1.0 - p) / (1.0 - p)
            };
        }
        sum / self.y.len() as f64 + 0.5 * self.alpha * beta[1..].iter().map(|b| b * b).sum::<f64>()
    }

    /// Iteratively reweighted least squares (Fisher scoring): weights μ^(2−p), working
    /// response η + (y − μ)/μ, step halving whenever the objective would rise.
    /// Returns (β, iterations, converged).
    fn irls(&self, max_iter: usize) -> Result<([f64; K], usize, bool), GlobalError> {
        let n = self.y.len() as f64;
        let mean_y = self.y.iter().sum::<f64>() / n;
        if mean_y.is_nan() || mean_y <= 0.0 {
            return Err(GlobalError::Solver(
                "sampled rows have no demand; raise max_rows".into(),
            ));
        }
        let mut beta = [0.0; K];
        beta[0] = mean_y.ln();
        let mut obj = self.objective(&beta);
        for iter in 1..=max_iter {
            let mut a = [[0.0; K]; K];
            let mut b = [0.0; K];
            let mut xa = [1.0; K];
            for (row, &y) in self.x.chunks_exact(N_FEATURES).zip(self.y) {
                xa[1..].copy_from_slice(row);
                let eta = linear_predictor(&beta, row).clamp(ETA_MIN, ETA_MAX);
                let mu = eta.exp();
                let w = mu.powf(2.0 - self.power);
                // w·z = w·η + (y − μ)·μ^(1−p), written so a tiny μ cannot overflow.
                let wz = w * eta + (y - mu) * mu.powf(1.0 - self.power);
                for i in 0..K {
                    let wi = w * xa[i];
                    b[i] += xa[i] * wz;
                    for (aij, xj) in a[i][..=i].iter_mut().zip(&xa[..=i]) {
                        *aij += wi * xj;
                    }
                }
            }
            finish_normal_equations(&mut a, &mut b, n, self.alpha);
            let target = solve_spd(&a, &b)
                .ok_or_else(|| GlobalError::Solver("singular normal equations".into()))?;
            let mut step = 1.0;
            let (mut next, mut next_obj);
            loop {
                next = std::array::from_fn(|i| beta[i] + step * (target[i] - beta[i]));
                next_obj = self.objective(&next);
                if next_obj <= obj || step < 1e-6 {
                    break;
                }
                step *= 0.5;
            }
            if !next_obj.is_finite() || next_obj > obj {
                return Ok((beta, iter, true)); // no descent left: at the optimum up to rounding
            }
            let change = obj - next_obj;
            beta = next;
            obj = next_obj;
            if change <= 1e-10 * (1.0 + obj.abs()) {
                return Ok((beta, iter, true));
            }
        }
        Ok((beta, max_iter, false))
    }
}

/// Turns the accumulated sums into means, mirrors the lower triangle of `a` and adds the
/// ridge to every diagonal entry but the intercept's.
#[allow(clippy::needless_range_loop)]
fn finish_normal_equations(a: &mut [[f64; K]; K], b: &mut [f64; K], n: f64, alpha: f64) {
    b.iter_mut().for_each(|v| *v /= n);
    for i in 0..K {
        for j in 0..i {
            a[i][j] /= n;
            a[j][i] = a[i][j];
        }
        a[i][i] = a[i][i] / n + if i > 0 { alpha } else { 0.0 };
    }
}

/// Solves `a·x = b` for symmetric positive definite `a` by Cholesky; on failure retries
/// once with a tiny diagonal jitter (exactly collinear columns with `alpha = 0`).
#[allow(clippy::needless_range_loop)] // index form mirrors the textbook algorithm
fn solve_spd(a: &[[f64; K]; K], b: &[f64; K]) -> Option<[f64; K]> {
    let trace = (0..K).map(|i| a[i][i]).sum::<f64>();
    for jitter in [0.0, 1e-10 * trace / K as f64] {
        let mut l = [[0.0; K]; K];
        let mut ok = true;
        'outer: for i in 0..K {
            for j in 0..=i {
                let mut s = a[i][j] + if i == j { jitter } else { 0.0 };
                for k in 0..j {
                    s -= l[i][k] * l[j][k];
                }
                if i == j {
                    if !(s > 0.0 && s.is_finite()) {
                        ok = false;
                        break 'outer;
                    }
                    l[i][i] = s.sqrt();
                } else {
                    l[i][j] = s / l[j][j];
                }
            }
        }
        if !ok {
            continue;
        }
        let mut z = [0.0; K];
        for i in 0..K {
            z[i] = (b[i] - (0..i).map(|k| l[i][k] * z[k]).sum::<f64>()) / l[i][i];
        }
        let mut x = [0.0; K];
        for i in (0..K).rev() {
            x[i] = (z[i] - (i + 1..K).map(|k| l[k][i] * x[k]).sum::<f64>()) / l[i][i];
        }
        if x.iter().all(|v| v.is_finite()) {
            return Some(x);
        }
    }
    None
}

fn validate_options(opts: &FitOptions) -> Result<(), GlobalError> {
    if !(opts.power >= 1.0 && opts.power < 2.0) {
        return Err(GlobalError::InvalidPower(opts.power));
    }
    if opts.horizon == 0 || opts.horizon > MAX_HORIZON {
        return Err(GlobalError::InvalidHorizon);
    }
    if opts.max_rows < MIN_ROWS {
        return Err(GlobalError::InvalidOption("max_rows below MIN_ROWS"));
    }
    if !(opts.alpha.is_finite() && opts.alpha >= 0.0) {
        return Err(GlobalError::InvalidOption("alpha must be finite and >= 0"));
    }
    if opts.max_iter == 0 {
        return Err(GlobalError::InvalidOption("max_iter must be >= 1"));
    }
    Ok(())
}

/// Deterministic sample of exactly `max_rows` of `n` row indices, in row order (`None` =
/// keep all): the rows whose index hashes lowest. Reproducible, and unlike a stride it has
/// no period that could line up with weekdays or series boundaries.
fn sample_rows(n: usize, max_rows: usize) -> Option<Vec<usize>> {
    if n <= max_rows {
        return None;
    }
    let mut hashes: Vec<u64> = (0..n as u64).map(splitmix64).collect();
    let (_, &mut cutoff, _) = hashes.select_nth_unstable(max_rows - 1);
    Some((0..n).filter(|&i| splitmix64(i as u64) <= cutoff).collect())
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Linear interpolation in an ascending sample at probability `p` ∈ [0, 1].
fn quantile_sorted(sorted: &[f64], p: f64) -> f64 {
    match sorted.len() {
        0 => 0.0,
        1 => sorted[0],
        len => {
            let pos = p.clamp(0.0, 1.0) * (len - 1) as f64;
            let lo = pos.floor() as usize;
            let hi = (lo + 1).min(len - 1);
            sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
        }
    }
}

impl GlobalModel {
    /// Pearson dispersion and binned residual quantiles over all (validated) rows.
    fn calibrate(&mut self, x: &[f64], y: &[f64]) {
        let half_p = self.power / 2.0;
        let mut pairs: Vec<(f64, f64)> = x
            .chunks_exact(N_FEATURES)
            .zip(y)
            .map(|(row, &yi)| {
                let mu = self.mean(row);
                let sd = mu.powf(half_p);
                let r = if sd > 0.0 { (yi - mu) / sd } else { 0.0 };
                (mu, r)
            })
            .collect();
        let n = pairs.len();
        let dof = n.saturating_sub(N_FEATURES + 1).max(1);
        self.dispersion = pairs.iter().map(|(_, r)| r * r).sum::<f64>() / dof as f64;

        pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
        let bins = (n / MIN_ROWS_PER_BIN).clamp(1, INTERVAL_BINS);
        self.bin_edges.clear();
        self.bin_quantiles.clear();
        for b in 0..bins {
            let (start, end) = (b * n / bins, (b + 1) * n / bins);
            if b + 1 < bins {
                self.bin_edges.push(pairs[end].0);
            }
            let mut r: Vec<f64> = pairs[start..end].iter().map(|p| p.1).collect();
            r.sort_by(f64::total_cmp);
            let grid = (0..QGRID)
                .map(|i| quantile_sorted(&r, i as f64 / (QGRID - 1) as f64))
                .collect();
            self.bin_quantiles.push(grid);
        }
    }

    fn mean(&self, row: &[f64]) -> f64 {
        let eta = self.intercept + row.iter().zip(&self.coef).map(|(a, b)| a * b).sum::<f64>();
        if eta.is_nan() {
            return 0.0;
        }
        eta.clamp(ETA_MIN, ETA_MAX).exp()
    }

    /// Predicted mean of the scaled target for one feature row.
    pub fn predict_row(&self, row: &[f64]) -> Result<f64, GlobalError> {
        if row.len() != N_FEATURES {
            return Err(GlobalError::RowLength {
                got: row.len(),
                expected: N_FEATURES,
            });
        }
        if let Some(index) = row.iter().position(|v| !v.is_finite()) {
            return Err(GlobalError::NonFinite {
                what: "feature row",
                index,
            });
        }
        Ok(self.mean(row))
    }

    /// Central `level` interval for a scaled mean `mu` (see module docs), scaled units.
    pub fn interval(&self, mu: f64, level: f64) -> Result<(f64, f64), GlobalError> {
        if !(level > 0.0 && level < 1.0) {
            return Err(GlobalError::InvalidLevel(level));
        }
        if !(mu.is_finite() && mu >= 0.0) {
            return Err(GlobalError::NonFinite {
                what: "mean",
                index: 0,
            });
        }
        let bin = self.bin_edges.partition_point(|&edge| edge <= mu);
        let Some(grid) = self.bin_quantiles.get(bin) else {
            return Ok((mu, mu));
        };
        let sd = mu.powf(self.power / 2.0);
        let lo = (mu + quantile_sorted(grid, (1.0 - level) / 2.0) * sd).max(0.0);
        let hi = (mu + quantile_sorted(grid, (1.0 + level) / 2.0) * sd).max(lo);
        Ok((lo, hi))
    }

    /// Model-implied standard deviation of a scaled observation with mean `mu`:
    /// `sqrt(φ·μ^p)`, φ the Pearson dispersion.
    pub fn residual_sd(&self, mu: f64) -> f64 {
        (self.dispersion * mu.max(0.0).powf(self.power)).sqrt()
    }

    /// Pearson dispersion φ = Σ((y − μ)²/μ^p) / (n − k − 1) over the training rows.
    pub fn dispersion(&self) -> f64 {
        self.dispersion
    }
    /// Horizon H the model was fitted for.
    pub fn horizon(&self) -> usize {
        self.horizon
    }
    /// Tweedie power.
    pub fn power(&self) -> f64 {
        self.power
    }
    /// Coefficients in [`FEATURES`] order.
    pub fn coefficients(&self) -> &[f64] {
        &self.coef
    }
    /// Intercept of the linear predictor (log scale).
    pub fn intercept(&self) -> f64 {
        self.intercept
    }
    /// IRLS iterations used and whether the objective converged within `max_iter`.
    pub fn iterations(&self) -> (usize, bool) {
        (self.iterations, self.converged)
    }
    /// Rows given to `fit` and rows actually used by the solver after sampling.
    pub fn rows(&self) -> (usize, usize) {
        (self.rows_total, self.rows_fitted)
    }
}

/// Forecasts the next `steps` (1 ..= `model.horizon()`) days after the end of `y`.
/// `first_weekday` is the weekday of `y[0]` (0 = Monday). A series that never sold gets
/// an all-zero forecast (its scale would be arbitrary). `y` must be finite; negative
/// values count as zero demand.
pub fn forecast_series(
    model: &GlobalModel,
    y: &[f64],
    steps: usize,
    first_weekday: u32,
    level: f64,
) -> Result<SeriesForecast, GlobalError> {
    if steps == 0 {
        return Err(GlobalError::InvalidHorizon);
    }
    if steps > model.horizon {
        return Err(GlobalError::TooManySteps {
            steps,
            horizon: model.horizon,
        });
    }
    if first_weekday > 6 {
        return Err(GlobalError::InvalidWeekday(first_weekday));
    }
    if !(level > 0.0 && level < 1.0) {
        return Err(GlobalError::InvalidLevel(level));
    }
    if let Some(index) = y.iter().position(|v| !v.is_finite()) {
        return Err(GlobalError::NonFinite {
            what: "history",
            index,
        });
    }
    let need = first_target_index(model.horizon);
    if y.len() < need {
        return Err(GlobalError::NotEnoughHistory {
            need,
            have: y.len(),
        });
    }
    if !y.iter().any(|v| *v > 0.0) {
        let zeros = vec![0.0; steps];
        return Ok(SeriesForecast {
            point: zeros.clone(),
            lower: zeros.clone(),
            upper: zeros,
            level,
        });
    }
    let scale = series_scale(y);
    let mut out = SeriesForecast {
        point: Vec::with_capacity(steps),
        lower: Vec::with_capacity(steps),
        upper: Vec::with_capacity(steps),
        level,
    };
    for t in y.len()..y.len() + steps {
        let row = feature_row(y, t, model.horizon, scale, weekday_of(first_weekday, t)).ok_or(
            GlobalError::NotEnoughHistory {
                need,
                have: y.len(),
            },
        )?;
        let mu = model.predict_row(&row)?;
        let (lo, hi) = model.interval(mu, level)?;
        out.point.push(mu * scale);
        out.lower.push(lo * scale);
        out.upper.push(hi * scale);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Small deterministic generator (64-bit LCG, Knuth's constants).
    struct Lcg(u64);
    impl Lcg {
        fn next_f64(&mut self) -> f64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((self.0 >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        }
        fn normal(&mut self) -> f64 {
            let (u, v) = (self.next_f64(), self.next_f64());
            (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
        }
        fn poisson(&mut self, lambda: f64) -> f64 {
            if lambda > 30.0 {
                return (lambda + lambda.sqrt() * self.normal()).round().max(0.0);
            }
            let limit = (-lambda).exp();
            let (mut k, mut p) = (0.0, self.next_f64());
            while p > limit {
                k += 1.0;
                p *= self.next_f64();
            }
            k
        }
    }

    const WEEK: [f64; 7] = [0.7, 0.8, 0.9, 1.0, 1.2, 1.6, 0.8]; // Mon..Sun

    /// Panel of `n` series, `len` days, weekday of day 0 = Monday. Levels span 0.05..200
    /// units a day; every 10th series is intermittent (demand on ~1 day in 5).
    fn panel(n: usize, len: usize, seed: u64) -> Vec<Vec<f64>> {
        let mut g = Lcg(seed);
        (0..n)
            .map(|i| {
                let level = (g.next_f64() * 4000f64.ln() - 20f64.ln()).exp();
                let pattern: Vec<f64> = WEEK.iter().map(|w| w * (1.0 + 0.1 * g.normal())).collect();
                let intermittent = i % 10 == 9;
                let mut drift = 0.0;
                (0..len)
                    .map(|t| {
                        drift = 0.98 * drift + 0.03 * g.normal();
                        let mu = level * pattern[t % 7] * drift.exp();
                        if intermittent && g.next_f64() > 0.2 {
                            0.0
                        } else {
                            g.poisson(mu)
                        }
                    })
                    .collect()
            })
            .collect()
    }

    fn rows(series: &[Vec<f64>], horizon: usize) -> (Vec<f64>, Vec<f64>) {
        let (mut x, mut y) = (Vec::new(), Vec::new());
        for s in series {
            push_training_rows(s, horizon, series_scale(s), 0, &mut x, &mut y);
        }
        (x, y)
    }

    #[test]
    fn feature_row_layout_and_history() {
        let y: Vec<f64> = (0..60).map(|t| (t % 7) as f64).collect();
        let h = 7;
        assert!(feature_row(&y, first_target_index(h) - 1, h, 1.0, 0).is_none());
        let t = first_target_index(h);
        let row = feature_row(&y, t, h, 2.0, 3).unwrap();
        assert_eq!(row.len(), N_FEATURES);
        assert!((row[0] - (LEVEL_EPS + y[t - h] / 2.0).ln()).abs() < 1e-12);
        assert!((row[1] - (LEVEL_EPS + y[t - 7] / 2.0).ln()).abs() < 1e-12);
        assert!((row[6] - 4.0 / 28.0).abs() < 1e-12); // one zero per week
        assert_eq!(&row[7..], &[0.0, 0.0, 0.0, 1.0, 0.0, 0.0]);
        // Target day in the future: only y[..=t-h] is needed.
        assert!(feature_row(&y, y.len() - 1 + h, h, 1.0, 0).is_some());
        assert!(feature_row(&y, y.len() + h, h, 1.0, 0).is_none());
        // Bad inputs.
        assert!(feature_row(&y, t, 0, 1.0, 0).is_none());
        assert!(feature_row(&y, t, h, 0.0, 0).is_none());
        assert!(feature_row(&y, t, h, 1.0, 7).is_none());
        let mut bad = y.clone();
        bad[t - h] = f64::NAN;
        assert!(feature_row(&bad, t, h, 1.0, 0).is_none());
    }

    #[test]
    fn rows_do_not_look_ahead() {
        let y: Vec<f64> = (0..80).map(|t| (t * 7 % 11) as f64).collect();
        let (h, t) = (5, 60);
        let full = feature_row(&y, t, h, 3.0, 2).unwrap();
        let truncated = feature_row(&y[..=t - h], t, h, 3.0, 2).unwrap();
        assert_eq!(full, truncated);
    }

    #[test]
    fn beats_flat_mean_out_of_sample() {
        let h = 14;
        let series = panel(200, 200, 7);
        let train: Vec<Vec<f64>> = series.iter().map(|s| s[..200 - h].to_vec()).collect();
        let (x, y) = rows(&train, h);
        let model = fit(&x, &y, h, 1.5).unwrap();
        let (mut mae_model, mut mae_flat, mut covered, mut total) = (0.0, 0.0, 0usize, 0usize);
        for (s, tr) in series.iter().zip(&train) {
            let f = forecast_series(&model, tr, h, 0, 0.9).unwrap();
            let flat = tr[tr.len() - 28..].iter().sum::<f64>() / 28.0;
            let scale = series_scale(tr);
            for k in 0..h {
                let actual = s[tr.len() + k];
                mae_model += (f.point[k] - actual).abs() / scale;
                mae_flat += (flat - actual).abs() / scale;
                covered += usize::from(f.lower[k] <= actual && actual <= f.upper[k]);
                total += 1;
            }
        }
        let coverage = covered as f64 / total as f64;
        eprintln!(
            "MAE model/flat {:.3}, 90% coverage {coverage:.3}",
            mae_model / mae_flat
        );
        assert!(
            mae_model < 0.9 * mae_flat,
            "model {mae_model} vs flat {mae_flat}"
        );
        assert!((0.8..=0.98).contains(&coverage), "coverage {coverage}");
        assert!(model.dispersion() > 0.0 && model.residual_sd(1.0) > 0.0);
    }

    #[test]
    fn zero_series_forecast_zero() {
        let h = 7;
        let mut series = panel(60, 120, 3);
        // A few discontinued SKUs teach the model what a dead window means.
        for s in series.iter_mut().take(10) {
            for v in s.iter_mut().skip(60) {
                *v = 0.0;
            }
        }
        let (x, y) = rows(&series, h);
        let model = fit(&x, &y, h, 1.5).unwrap();
        let f = forecast_series(&model, &[0.0; 60], h, 2, 0.95).unwrap();
        assert!(f.point.iter().chain(&f.upper).all(|v| *v == 0.0));
        // Dead for 60 days after selling: forecast a small fraction of the old level.
        let dead = series[..10]
            .iter()
            .max_by(|a, b| series_scale(a).total_cmp(&series_scale(b)))
            .unwrap();
        let scale = series_scale(dead);
        assert!(scale > 5.0);
        let f = forecast_series(&model, dead, h, 0, 0.95).unwrap();
        assert!(
            f.point.iter().all(|v| *v < 0.05 * scale),
            "{:?} vs {scale}",
            f.point
        );
    }

    #[test]
    fn bad_input_is_an_error() {
        let h = 7;
        let (x, y) = rows(&panel(5, 80, 1), h);
        assert_eq!(fit(&[], &[], h, 1.5), Err(GlobalError::Empty));
        assert!(matches!(
            fit(&x[1..], &y, h, 1.5),
            Err(GlobalError::Shape { .. })
        ));
        let mut xn = x.clone();
        xn[17] = f64::NAN;
        assert!(matches!(
            fit(&xn, &y, h, 1.5),
            Err(GlobalError::NonFinite { index: 17, .. })
        ));
        let mut yn = y.clone();
        yn[3] = f64::INFINITY;
        assert!(matches!(
            fit(&x, &yn, h, 1.5),
            Err(GlobalError::NonFinite { .. })
        ));
        yn[3] = -1.0;
        assert!(matches!(
            fit(&x, &yn, h, 1.5),
            Err(GlobalError::NegativeTarget { row: 3, .. })
        ));
        assert_eq!(
            fit(&x, &vec![0.0; y.len()], h, 1.5),
            Err(GlobalError::AllZero)
        );
        assert_eq!(fit(&x, &y, h, 0.5), Err(GlobalError::InvalidPower(0.5)));
        assert!(matches!(
            fit(&x, &y, h, f64::NAN),
            Err(GlobalError::InvalidPower(_))
        ));
        assert_eq!(fit(&x, &y, 0, 1.5), Err(GlobalError::InvalidHorizon));
        assert_eq!(
            fit(&x, &y, usize::MAX, 1.5),
            Err(GlobalError::InvalidHorizon)
        );
        assert!(feature_row(&[1.0; 60], usize::MAX, usize::MAX, 1.0, 0).is_none());
        assert!(feature_row(&[1.0; 60], usize::MAX, 7, 1.0, 0).is_none());
        assert!(matches!(
            fit(&x[..N_FEATURES * 3], &y[..3], h, 1.5),
            Err(GlobalError::TooFewRows { .. })
        ));

        let model = fit(&x, &y, h, 1.5).unwrap();
        assert!(matches!(
            model.predict_row(&[1.0; 3]),
            Err(GlobalError::RowLength { .. })
        ));
        assert!(matches!(
            model.predict_row(&[f64::NAN; N_FEATURES]),
            Err(GlobalError::NonFinite { .. })
        ));
        let hist = vec![1.0; 60];
        assert!(matches!(
            forecast_series(&model, &hist, h + 1, 0, 0.9),
            Err(GlobalError::TooManySteps { .. })
        ));
        assert_eq!(
            forecast_series(&model, &hist, 0, 0, 0.9),
            Err(GlobalError::InvalidHorizon)
        );
        assert_eq!(
            forecast_series(&model, &hist, h, 9, 0.9),
            Err(GlobalError::InvalidWeekday(9))
        );
        assert_eq!(
            forecast_series(&model, &hist, h, 0, 1.0),
            Err(GlobalError::InvalidLevel(1.0))
        );
        assert!(matches!(
            forecast_series(&model, &hist[..10], h, 0, 0.9),
            Err(GlobalError::NotEnoughHistory { .. })
        ));
        assert!(matches!(
            forecast_series(&model, &[], h, 0, 0.9),
            Err(GlobalError::NotEnoughHistory { .. })
        ));
        let mut nan_hist = hist.clone();
        nan_hist[5] = f64::NAN;
        assert!(matches!(
            forecast_series(&model, &nan_hist, h, 0, 0.9),
            Err(GlobalError::NonFinite { .. })
        ));
        assert!(model.interval(f64::NAN, 0.9).is_err());
        assert!(model.interval(1.0, f64::NAN).is_err());
    }

    #[test]
    fn sampling_caps_rows_deterministically() {
        let h = 7;
        let (x, y) = rows(&panel(40, 150, 11), h);
        let opts = FitOptions {
            horizon: h,
            max_rows: 1000,
            ..FitOptions::default()
        };
        let a = fit_with(&x, &y, &opts).unwrap();
        let b = fit_with(&x, &y, &opts).unwrap();
        assert_eq!(a, b);
        let (total, used) = a.rows();
        assert_eq!(total, y.len());
        assert_eq!(used, 1000);
        assert_eq!(sample_rows(10, 20), None);
        let idx = sample_rows(5000, 300).unwrap();
        assert_eq!(idx.len(), 300);
        assert!(idx.windows(2).all(|w| w[0] < w[1]));
    }

    /// linfa's TweedieRegressor minimises 0.5·(Σ deviance + α|β|²). Multiplying the
    /// targets by c = m^(−1/(2−p)) turns the sum into a mean (Tweedie deviance is
    /// homogeneous of degree 2 − p) and shifts only the intercept, by ln c. Without that
    /// rescaling it hangs on a few thousand rows (NaN in an uncapped line search).
    fn linfa_reference(x: &[f64], y: &[f64], power: f64, alpha: f64) -> (f64, Vec<f64>) {
        use linfa::traits::Fit;
        let m = y.len();
        let c = (m as f64).powf(-1.0 / (2.0 - power));
        let records = ndarray::Array2::from_shape_vec((m, N_FEATURES), x.to_vec()).unwrap();
        let targets = ndarray::Array1::from_iter(y.iter().map(|v| v * c));
        let fitted = linfa_linear::TweedieRegressor::params()
            .power(power)
            .link(linfa_linear::Link::Log)
            .alpha(alpha)
            .tol(1e-7)
            .max_iter(1000)
            .fit(&linfa::Dataset::new(records, targets))
            .unwrap();
        (fitted.intercept - c.ln(), fitted.coef.to_vec())
    }

    #[test]
    fn irls_matches_linfa_reference() {
        let h = 3; // not a multiple of 7: no duplicated column
        let (x, y) = rows(&panel(30, 100, 21), h);
        let model = fit(&x, &y, h, 1.5).unwrap();
        assert!(model.iterations().1);
        let (intercept, coef) = linfa_reference(&x, &y, 1.5, FitOptions::default().alpha);
        assert!(
            (model.intercept() - intercept).abs() < 1e-2,
            "{} vs {intercept}",
            model.intercept()
        );
        for (a, b) in model.coefficients().iter().zip(&coef) {
            assert!(
                (a - b).abs() < 1e-2,
                "{:?} vs {coef:?}",
                model.coefficients()
            );
        }
    }
}
