//! Exponential smoothing state-space models (ETS) with a season, chosen by AICc.
//!
//! augurs' seasonal AutoETS panics in its interval code for several model classes, so the pool
//! had only MSTL with a non-seasonal ETS on the adjusted series. That misses what retail series
//! mostly are: a season whose amplitude grows with the level (multiplicative) and a trend that
//! flattens (damped). This is the Hyndman–Koehler–Ord–Snyder state-space family in
//! error-correction form ("Forecasting with Exponential Smoothing", 2008, table 2.3), written
//! here so that every class works:
//! - error additive or multiplicative (multiplicative only on positive data);
//! - trend none, additive or additive damped;
//! - season none, additive or multiplicative (multiplicative only with multiplicative errors,
//!   the usual restriction that keeps the models stable), for `2 ≤ m ≤ 24` and at least two
//!   seasons of history; a longer season (weekly data's 52) is MSTL's job.
//!
//! Initial states follow the `forecast` package's heuristic (classical decomposition of the
//! first three seasons, then a line through the first seasonally adjusted points); the smoothing
//! parameters are fitted by Nelder–Mead on the likelihood, in a space that keeps them inside the
//! usual region (0 < β < α < 1, 0 < γ < 1 − α, 0.8 ≤ φ ≤ 0.98). Fitting only the parameters
//! (not the m + 2 initial states as `ets` and statsforecast's AutoETS do) is what keeps one fit
//! in the sub-millisecond range that a nightly run of 10,000 SKUs needs.
//!
//! Which seasons are tried is decided by the same 90 % seasonality test Theta uses, so a series
//! with no season is not fitted six seasonal models it cannot use.
//!
//! Intervals: the additive-error variance formula (class 1) for every model, in relative terms
//! for multiplicative errors; runs recalibrate every model's intervals from their backtests
//! (see `calibration`), so an approximate width costs no coverage.

use super::models::{self, Forecast, ModelError, Seasonality};

/// How much history a fit reads (this model's and MSTL-ETS's): the last `FIT_SEASONS` seasons,
/// and never fewer than `FIT_MIN_POINTS` points. The smoothing forgets older data anyway, and
/// its few parameters are well estimated from a year of days, while a daily SKU's two years cost
/// twice as much to fit: with both models reading all 730 days, the nightly run of 10,000 SKUs
/// took 83 s against its 60 s target. Monthly series are cut only past 52 years.
const FIT_SEASONS: usize = 52;
const FIT_MIN_POINTS: usize = 200;

/// The number of most recent points a fit of season `m` reads.
pub fn fit_window(m: usize) -> usize {
    (FIT_SEASONS * m.clamp(1, MAX_SEASON)).max(FIT_MIN_POINTS)
}

/// Longest season fitted with seasonal states (as `ets` and statsforecast's AutoETS).
pub const MAX_SEASON: usize = 24;
/// Shortest series fitted at all: a level and a few one-step errors.
const MIN_LEN: usize = 6;
/// Bounds of the smoothing parameters and of the damping factor.
const PARAM_LO: f64 = 1e-4;
const PHI_LO: f64 = 0.8;
const PHI_HI: f64 = 0.98;
/// Nelder–Mead stops after this many likelihood evaluations per free parameter …
const EVALS_PER_PARAM: usize = 40;
/// … or when the simplex's −2 log L values agree within this: a tenth of a unit, where the
/// AICc tells classes apart in units of two. (A relative 1e-6 took 2.3 times as long for the
/// same forecasts: fpp3 retail MASE 0.968 either way.)
const TOLERANCE: f64 = 0.1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    Additive,
    Multiplicative,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrendKind {
    None,
    Additive,
    Damped,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeasonKind {
    None,
    Additive,
    Multiplicative,
}

/// One ETS model class, e.g. (M, Ad, M).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Spec {
    pub error: ErrorKind,
    pub trend: TrendKind,
    pub season: SeasonKind,
}

impl Spec {
    /// The usual short name: `ANN`, `MAdM`, …
    pub fn name(self) -> String {
        let e = match self.error {
            ErrorKind::Additive => "A",
            ErrorKind::Multiplicative => "M",
        };
        let t = match self.trend {
            TrendKind::None => "N",
            TrendKind::Additive => "A",
            TrendKind::Damped => "Ad",
        };
        let s = match self.season {
            SeasonKind::None => "N",
            SeasonKind::Additive => "A",
            SeasonKind::Multiplicative => "M",
        };
        format!("{e}{t}{s}")
    }

    fn free_params(self) -> usize {
        1 + usize::from(self.trend != TrendKind::None)
            + usize::from(self.season != SeasonKind::None)
            + usize::from(self.trend == TrendKind::Damped)
    }

    /// Parameters counted by the information criterion: the smoothing parameters, the initial
    /// level and trend, and the variance. The m − 1 initial seasonal states are not counted:
    /// they are fixed by the decomposition, not fitted to the likelihood. Counting them as `ets`
    /// does (it fits them) made every seasonal class lose on two or three seasons of history,
    /// where the season is most of what there is to forecast (fpp3 retail cut to 30 months:
    /// MASE 1.50 counted, 1.08 not; the full series move by 0.0003).
    fn counted_params(self) -> usize {
        let states = 1 + usize::from(self.trend != TrendKind::None);
        self.free_params() + states + 1
    }
}

/// Smoothing parameters of one fit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Params {
    pub alpha: f64,
    pub beta: f64,
    pub gamma: f64,
    pub phi: f64,
}

/// Level, trend and one seasonal state per position in the season (`season[t % m]` is the state
/// the observation at time `t` uses and then replaces).
#[derive(Clone, Debug, PartialEq)]
struct States {
    level: f64,
    trend: f64,
    season: Vec<f64>,
}

/// A fitted model: what forecasting needs.
#[derive(Clone, Debug)]
pub struct Fit {
    pub spec: Spec,
    pub params: Params,
    pub aicc: f64,
    /// One-step error variance (relative for multiplicative errors).
    pub sigma2: f64,
    /// States after the last observation.
    last: States,
    /// Length of the series fitted (the time index the first forecast has).
    n: usize,
}

/// The model classes tried on `y`: with a usable season (2 ≤ m ≤ 24, two seasons of data), the
/// seasonal classes when the seasonality test finds a season and the others when it does not;
/// both below three seasons, where the test has too few points to be trusted and the
/// information criterion decides. Multiplicative errors and seasons only on positive data.
pub fn candidates(y: &[f64], m: usize) -> Vec<Spec> {
    let positive = y.iter().all(|&v| v > 0.0);
    let usable = (2..=MAX_SEASON).contains(&m) && y.len() >= 2 * m;
    let test = usable && models::is_seasonal(y, m);
    let both = usable && y.len() < 3 * m;
    let mut seasons = Vec::new();
    if test || both {
        seasons.push((SeasonKind::Additive, SeasonKind::Multiplicative));
    }
    if !test || both {
        seasons.push((SeasonKind::None, SeasonKind::None));
    }
    let mut specs = Vec::new();
    for (additive_season, multiplicative_season) in seasons {
        for trend in [TrendKind::None, TrendKind::Additive, TrendKind::Damped] {
            specs.push(Spec {
                error: ErrorKind::Additive,
                trend,
                season: additive_season,
            });
            if positive {
                specs.push(Spec {
                    error: ErrorKind::Multiplicative,
                    trend,
                    season: multiplicative_season,
                });
            }
        }
    }
    specs
}

/// Fits every candidate class and keeps the one with the lowest AICc, on the last
/// [`fit_window`] points.
pub fn auto_fit(y: &[f64], m: usize) -> Result<Fit, ModelError> {
    let y = &y[y.len().saturating_sub(fit_window(m))..];
    if y.len() < MIN_LEN {
        return Err(ModelError::TooShort {
            model: "ets",
            need: MIN_LEN,
            got: y.len(),
        });
    }
    best_of(y, m, candidates(y, m))
}

/// Fits each of `specs` on `y` and keeps the one with the lowest AICc.
pub fn best_of(
    y: &[f64],
    m: usize,
    specs: impl IntoIterator<Item = Spec>,
) -> Result<Fit, ModelError> {
    specs
        .into_iter()
        .filter_map(|spec| fit(y, m, spec))
        .min_by(|a, b| a.aicc.total_cmp(&b.aicc))
        .ok_or_else(|| ModelError::Failed("no ETS model could be fitted".to_owned()))
}

/// The chosen model's forecast with intervals at `level`.
pub fn auto_ets(y: &[f64], m: usize, horizon: usize, level: f64) -> Result<Forecast, ModelError> {
    let fit = auto_fit(y, m)?;
    Ok(fit.forecast(horizon, models::normal_quantile(0.5 + level / 2.0)))
}

/// Fits one class; `None` when it cannot be fitted (an additive error with a multiplicative
/// season, the unstable class left out; too few points for its parameters; or no parameters
/// keep its one-step forecasts finite and, for multiplicative errors, positive).
pub fn fit(y: &[f64], m: usize, spec: Spec) -> Option<Fit> {
    if spec.error == ErrorKind::Additive && spec.season == SeasonKind::Multiplicative {
        return None;
    }
    let n = y.len();
    let m = if spec.season == SeasonKind::None {
        1
    } else {
        m
    };
    let k = spec.counted_params();
    if n <= k + 1 {
        return None;
    }
    let init = initial_states(y, m, spec)?;
    let mut scratch = init.season.clone();
    let mut objective = |u: &[f64]| {
        let p = params_from(spec, u);
        likelihood(y, m, spec, p, &init, &mut scratch)
            .map(|(lik, _)| lik)
            .unwrap_or(f64::INFINITY)
    };
    let start = start_point(spec, m);
    let best = nelder_mead(&mut objective, &start, EVALS_PER_PARAM * spec.free_params());
    let params = params_from(spec, &best);
    let mut last = init.clone();
    let (lik, sum_e2) = run(y, m, spec, params, &mut last)?;
    let dof = n.saturating_sub(k - 1).max(1);
    let aicc = lik + 2.0 * k as f64 + 2.0 * (k * (k + 1)) as f64 / (n - k - 1) as f64;
    aicc.is_finite().then(|| Fit {
        spec,
        params,
        aicc,
        sigma2: sum_e2 / dof as f64,
        last,
        n,
    })
}

impl Fit {
    /// How many points were fitted.
    pub fn points(&self) -> usize {
        self.n
    }

    /// Point forecasts and intervals of half-width `z` standard deviations.
    pub fn forecast(&self, horizon: usize, z: f64) -> Forecast {
        let Params {
            alpha,
            beta,
            gamma,
            phi,
        } = self.params;
        let m = self.last.season.len();
        let mut fc = Forecast::default();
        // Σ_{i=1..h} φ^i (damped), h (additive), 0 (none): the trend's weight h steps on.
        let mut trend_weight = 0.0;
        let mut damp = 1.0;
        // Σ_{j<h} c_j², c_j = α + β·(trend weight at j) + γ·[j a multiple of m].
        let mut var_sum = 0.0;
        for h in 1..=horizon {
            if h > 1 {
                let j = h - 1;
                let c = alpha
                    + match self.spec.trend {
                        TrendKind::None => 0.0,
                        _ => beta * trend_weight,
                    }
                    + if self.spec.season != SeasonKind::None && j % m == 0 {
                        gamma
                    } else {
                        0.0
                    };
                var_sum += c * c;
            }
            match self.spec.trend {
                TrendKind::None => {}
                TrendKind::Additive => trend_weight += 1.0,
                TrendKind::Damped => {
                    damp *= phi;
                    trend_weight += damp;
                }
            }
            let base = self.last.level + trend_weight * self.last.trend;
            let s = self.last.season[(self.n + h - 1) % m];
            let point = match self.spec.season {
                SeasonKind::None => base,
                SeasonKind::Additive => base + s,
                SeasonKind::Multiplicative => base * s,
            };
            let sd = (self.sigma2 * (1.0 + var_sum)).sqrt();
            let half = match self.spec.error {
                ErrorKind::Additive => z * sd,
                ErrorKind::Multiplicative => z * sd * point.abs(),
            };
            fc.point.push(point);
            fc.lower.push(point - half);
            fc.upper.push(point + half);
        }
        fc
    }
}

/// The likelihood criterion (−2 log L up to a constant) and the sum of squared (relative)
/// one-step errors, leaving the final states in `states`. `None` when a forecast is not finite,
/// or not positive under multiplicative errors.
///
/// The loop is compiled once per (error, season) class it runs; the trend enters as φ·b with φ = 0 (no
/// trend: β is 0 too, so b stays 0), 1 (additive) or φ (damped), and no season as an additive
/// one of zeros that γ = 0 never moves. So the loop has no branch on the class.
fn run(y: &[f64], m: usize, spec: Spec, p: Params, states: &mut States) -> Option<(f64, f64)> {
    let phi = match spec.trend {
        TrendKind::None => 0.0,
        TrendKind::Additive => 1.0,
        TrendKind::Damped => p.phi,
    };
    let p = Params { phi, ..p };
    match (spec.error, spec.season) {
        // Refused by `fit` (unstable), so never run.
        (ErrorKind::Additive, SeasonKind::Multiplicative) => None,
        (ErrorKind::Additive, _) => run_loop::<false, false>(y, m, p, states),
        (ErrorKind::Multiplicative, SeasonKind::Multiplicative) => {
            run_loop::<true, true>(y, m, p, states)
        }
        (ErrorKind::Multiplicative, _) => run_loop::<true, false>(y, m, p, states),
    }
}

fn run_loop<const MULT_ERROR: bool, const MULT_SEASON: bool>(
    y: &[f64],
    m: usize,
    p: Params,
    states: &mut States,
) -> Option<(f64, f64)> {
    let Params {
        alpha,
        beta,
        gamma,
        phi,
    } = p;
    let (mut l, mut b) = (states.level, states.trend);
    let season = &mut states.season;
    let m = m.min(season.len()).max(1);
    let (mut sum_e2, mut sum_log) = (0.0, 0.0);
    // Σ ln ŷ is kept as a running product, its logarithm taken only when it nears the limits
    // of f64 (a logarithm per point was most of a fit's time); `si` is t mod m, counted.
    let mut product = 1.0;
    let mut si = 0;
    for &obs in y {
        let damped_b = phi * b;
        let base = l + damped_b;
        let s = season[si];
        let yhat = if MULT_SEASON { base * s } else { base + s };
        if MULT_ERROR {
            if yhat.is_nan() || yhat <= 0.0 {
                return None;
            }
            let e = (obs - yhat) / yhat;
            sum_e2 += e * e;
            product *= yhat;
            if !(1e-100..=1e100).contains(&product) {
                sum_log += product.ln();
                product = 1.0;
            }
            // Table 2.3's updates, rearranged so that the level's next value needs no division
            // of this step's forecast: ŷ·e = y − ŷ, and with a multiplicative season
            // base·e = y/s − base and s·e = y/base − s.
            if MULT_SEASON {
                let d = obs / s - base;
                l = base + alpha * d;
                b = damped_b + beta * d;
                season[si] = s + gamma * (obs / base - s);
            } else {
                let d = obs - yhat;
                l = base + alpha * d;
                b = damped_b + beta * d;
                season[si] = s + gamma * d;
            }
        } else {
            let e = obs - yhat;
            sum_e2 += e * e;
            l = base + alpha * e;
            b = damped_b + beta * e;
            season[si] = s + gamma * e;
        }
        si += 1;
        if si == m {
            si = 0;
        }
    }
    sum_log += product.ln();
    states.level = l;
    states.trend = b;
    let n = y.len() as f64;
    let lik = n * (sum_e2 / n).max(1e-300).ln() + 2.0 * sum_log;
    (lik.is_finite() && l.is_finite() && b.is_finite()).then_some((lik, sum_e2))
}

/// [`run`] from `init` without changing it; `scratch` holds the seasonal states meanwhile.
fn likelihood(
    y: &[f64],
    m: usize,
    spec: Spec,
    p: Params,
    init: &States,
    scratch: &mut Vec<f64>,
) -> Option<(f64, f64)> {
    scratch.clear();
    scratch.extend_from_slice(&init.season);
    let mut states = States {
        level: init.level,
        trend: init.trend,
        season: std::mem::take(scratch),
    };
    let out = run(y, m, spec, p, &mut states);
    *scratch = states.season;
    out
}

/// Initial states: seasonal indices by classical decomposition of the first three seasons (two
/// when that is all there is), then the level (and trend) of a line through the first
/// max(10, 2m) seasonally adjusted points.
fn initial_states(y: &[f64], m: usize, spec: Spec) -> Option<States> {
    let n = y.len();
    let season = match spec.season {
        SeasonKind::None => vec![0.0],
        kind => {
            let span = (3 * m).min(n);
            if span < 2 * m {
                return None;
            }
            let k = if kind == SeasonKind::Multiplicative {
                Seasonality::Multiplicative
            } else {
                Seasonality::Additive
            };
            let mut s = models::classical_indices(&y[..span], m, k).s;
            if s.iter().any(|v| !v.is_finite()) {
                return None;
            }
            if kind == SeasonKind::Multiplicative {
                s.iter_mut().for_each(|v| *v = v.max(1e-2));
            }
            s
        }
    };
    let adjusted = |t: usize| match spec.season {
        SeasonKind::None => y[t],
        SeasonKind::Additive => y[t] - season[t % m],
        SeasonKind::Multiplicative => y[t] / season[t % m],
    };
    let span = (2 * m).max(10).min(n);
    let xs: Vec<f64> = (0..span).map(adjusted).collect();
    let (level, trend) = match spec.trend {
        TrendKind::None => (xs.iter().sum::<f64>() / span as f64, 0.0),
        _ => {
            // Least squares on t = 1..span: the intercept is the state before the first point.
            let t_mean = (span as f64 + 1.0) / 2.0;
            let x_mean = xs.iter().sum::<f64>() / span as f64;
            let (mut sxy, mut sxx) = (0.0, 0.0);
            for (i, &x) in xs.iter().enumerate() {
                let dt = (i + 1) as f64 - t_mean;
                sxy += dt * (x - x_mean);
                sxx += dt * dt;
            }
            let slope = if sxx > 0.0 { sxy / sxx } else { 0.0 };
            (x_mean - slope * t_mean, slope)
        }
    };
    (level.is_finite() && trend.is_finite()).then_some(States {
        level,
        trend,
        season,
    })
}

fn logistic(u: f64) -> f64 {
    1.0 / (1.0 + (-u).exp())
}

fn logit(p: f64) -> f64 {
    (p / (1.0 - p)).ln()
}

/// Maps unconstrained coordinates to parameters inside the region: α ∈ (lo, 1 − lo),
/// β ∈ (lo, α), γ ∈ (lo, 1 − α), φ ∈ [0.8, 0.98]. Coordinates are in the order α, β, γ, φ,
/// skipping those the class does not have.
fn params_from(spec: Spec, u: &[f64]) -> Params {
    let mut it = u.iter().copied();
    let alpha = PARAM_LO + (1.0 - 2.0 * PARAM_LO) * logistic(it.next().unwrap_or(0.0));
    let beta = if spec.trend != TrendKind::None {
        PARAM_LO + (alpha - PARAM_LO) * logistic(it.next().unwrap_or(0.0))
    } else {
        0.0
    };
    let gamma = if spec.season != SeasonKind::None {
        PARAM_LO + (1.0 - alpha - PARAM_LO).max(0.0) * logistic(it.next().unwrap_or(0.0))
    } else {
        0.0
    };
    let phi = if spec.trend == TrendKind::Damped {
        PHI_LO + (PHI_HI - PHI_LO) * logistic(it.next().unwrap_or(0.0))
    } else {
        1.0
    };
    Params {
        alpha,
        beta,
        gamma,
        phi,
    }
}

/// Where the search starts, as `ets` starts it: a small α (smaller for longer seasons), β a
/// tenth of the way to α, γ a twentieth of the way to 1 − α, φ near its top.
fn start_point(spec: Spec, m: usize) -> Vec<f64> {
    let alpha = 0.2 / m.max(1) as f64 + PARAM_LO;
    let mut u = vec![logit((alpha - PARAM_LO) / (1.0 - 2.0 * PARAM_LO))];
    if spec.trend != TrendKind::None {
        u.push(logit(0.1));
    }
    if spec.season != SeasonKind::None {
        u.push(logit(0.05));
    }
    if spec.trend == TrendKind::Damped {
        u.push(logit(0.9));
    }
    u
}

/// Nelder–Mead minimisation from `start` (simplex steps of 1 in each coordinate), at most
/// `max_evals` evaluations; returns the best point seen.
fn nelder_mead(f: &mut impl FnMut(&[f64]) -> f64, start: &[f64], max_evals: usize) -> Vec<f64> {
    let d = start.len();
    let mut simplex: Vec<(Vec<f64>, f64)> = Vec::with_capacity(d + 1);
    simplex.push((start.to_vec(), f(start)));
    for i in 0..d {
        let mut x = start.to_vec();
        x[i] += 1.0;
        let v = f(&x);
        simplex.push((x, v));
    }
    let mut evals = d + 1;
    let mut centroid = vec![0.0; d];
    let point = |c: &[f64], w: &[f64], t: f64| -> Vec<f64> {
        c.iter().zip(w).map(|(a, b)| a + t * (b - a)).collect()
    };
    while evals < max_evals {
        simplex.sort_by(|a, b| a.1.total_cmp(&b.1));
        let (best, worst) = (simplex[0].1, simplex[d].1);
        if best.is_finite() && worst.is_finite() && (worst - best).abs() <= TOLERANCE {
            break;
        }
        centroid.iter_mut().for_each(|c| *c = 0.0);
        for (x, _) in &simplex[..d] {
            for (c, v) in centroid.iter_mut().zip(x) {
                *c += v / d as f64;
            }
        }
        let reflected = point(&centroid, &simplex[d].0, -1.0);
        let fr = f(&reflected);
        evals += 1;
        if fr < simplex[0].1 {
            let expanded = point(&centroid, &simplex[d].0, -2.0);
            let fe = f(&expanded);
            evals += 1;
            simplex[d] = if fe < fr {
                (expanded, fe)
            } else {
                (reflected, fr)
            };
        } else if fr < simplex[d - 1].1 {
            simplex[d] = (reflected, fr);
        } else {
            let toward = if fr < simplex[d].1 { -0.5 } else { 0.5 };
            let contracted = point(&centroid, &simplex[d].0, toward);
            let fc = f(&contracted);
            evals += 1;
            if fc < simplex[d].1.min(fr) {
                simplex[d] = (contracted, fc);
            } else {
                let best = simplex[0].0.clone();
                for (x, v) in simplex.iter_mut().skip(1) {
                    *x = point(&best, x, 0.5);
                    *v = f(x);
                }
                evals += d;
            }
        }
    }
    simplex
        .into_iter()
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(x, _)| x)
        .unwrap_or_else(|| start.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use augurs_testing::data::AIR_PASSENGERS;

    fn spec(error: ErrorKind, trend: TrendKind, season: SeasonKind) -> Spec {
        Spec {
            error,
            trend,
            season,
        }
    }

    /// Deterministic pseudo-noise in [−1, 1].
    fn noise(t: usize) -> f64 {
        ((t as f64 * 12.9898).sin() * 43_758.545_3).rem_euclid(1.0) * 2.0 - 1.0
    }

    #[test]
    fn additive_error_no_trend_is_simple_exponential_smoothing() {
        let y = [10.0, 12.0, 11.0, 13.0, 12.0, 14.0, 13.0];
        let p = Params {
            alpha: 0.3,
            beta: 0.0,
            gamma: 0.0,
            phi: 1.0,
        };
        let mut states = States {
            level: 10.0,
            trend: 0.0,
            season: vec![0.0],
        };
        let (_, sse) = run(
            &y,
            1,
            spec(ErrorKind::Additive, TrendKind::None, SeasonKind::None),
            p,
            &mut states,
        )
        .unwrap();
        let (mut level, mut want_sse) = (10.0, 0.0);
        for v in y {
            let e = v - level;
            want_sse += e * e;
            level += 0.3 * e;
        }
        assert!((states.level - level).abs() < 1e-12);
        assert!((sse - want_sse).abs() < 1e-9);
    }

    #[test]
    fn multiplicative_updates_match_the_textbook_form() {
        // One step of (M, Ad, M) by table 2.3 of Hyndman et al., against `run`'s rearranged form.
        let (l, b, s, obs) = (100.0, 2.0, 1.2, 130.0);
        let p = Params {
            alpha: 0.3,
            beta: 0.1,
            gamma: 0.2,
            phi: 0.9,
        };
        let mut states = States {
            level: l,
            trend: b,
            season: vec![s, 1.0],
        };
        run(
            &[obs],
            2,
            spec(
                ErrorKind::Multiplicative,
                TrendKind::Damped,
                SeasonKind::Multiplicative,
            ),
            p,
            &mut states,
        )
        .unwrap();
        let base = l + p.phi * b;
        let e = (obs - base * s) / (base * s);
        assert!((states.level - base * (1.0 + p.alpha * e)).abs() < 1e-9);
        assert!((states.trend - (p.phi * b + p.beta * base * e)).abs() < 1e-9);
        assert!((states.season[0] - s * (1.0 + p.gamma * e)).abs() < 1e-9);
    }

    #[test]
    fn air_passengers_gets_a_multiplicative_season_and_a_close_forecast() {
        // Hold out 1960. statsforecast 2.1.1's AutoETS picks ETS(M,N,M) on the same 132 months
        // and misses 1960 by 7.2 % MAPE; MSTL-ETS by 5.1 %.
        let (train, test) = AIR_PASSENGERS.split_at(AIR_PASSENGERS.len() - 12);
        let fit = auto_fit(train, 12).unwrap();
        assert_eq!(
            fit.spec.season,
            SeasonKind::Multiplicative,
            "{}",
            fit.spec.name()
        );
        let fc = fit.forecast(12, 1.96);
        let mape = test
            .iter()
            .zip(&fc.point)
            .map(|(a, p)| ((a - p) / a).abs())
            .sum::<f64>()
            / 12.0
            * 100.0;
        assert!(mape < 4.0, "MAPE {mape} with {}", fit.spec.name());
        for ((lo, p), hi) in fc.lower.iter().zip(&fc.point).zip(&fc.upper) {
            assert!(lo < p && p < hi);
        }
        // The interval widens with the horizon.
        assert!(fc.upper[11] - fc.lower[11] > fc.upper[0] - fc.lower[0]);
    }

    #[test]
    fn a_damped_trend_flattens_and_an_additive_one_does_not() {
        let y: Vec<f64> = (0..60).map(|t| 50.0 + 2.0 * t as f64 + noise(t)).collect();
        let additive = fit(
            &y,
            1,
            spec(ErrorKind::Additive, TrendKind::Additive, SeasonKind::None),
        )
        .unwrap();
        let fc = additive.forecast(24, 1.96);
        // The line continues: 50 + 2·(59 + h).
        assert!(
            (fc.point[23] - (50.0 + 2.0 * 83.0)).abs() < 3.0,
            "{:?}",
            fc.point
        );
        let damped = fit(
            &y,
            1,
            spec(ErrorKind::Additive, TrendKind::Damped, SeasonKind::None),
        )
        .unwrap();
        let d = damped.forecast(24, 1.96);
        let (early, late) = (d.point[1] - d.point[0], d.point[23] - d.point[22]);
        assert!(late < early, "steps {early} then {late}");
    }

    #[test]
    fn a_fit_reads_only_the_recent_window() {
        assert_eq!(fit_window(7), 364);
        assert_eq!(fit_window(12), 624);
        assert_eq!(fit_window(1), FIT_MIN_POINTS);
        let daily: Vec<f64> = (0..1364).map(|t| 10.0 + noise(t)).collect();
        assert_eq!(auto_fit(&daily, 7).unwrap().points(), 364);
        assert_eq!(auto_fit(&daily[..300], 7).unwrap().points(), 300);
        // The season's phase stays right: the window's first point is not the series' first.
        let weekly: Vec<f64> = (0..1000)
            .map(|t| 10.0 + [0.0, 1.0, 2.0, 3.0, 4.0, 8.0, 6.0][t % 7] + noise(t) * 0.1)
            .collect();
        let fc = auto_ets(&weekly, 7, 7, 0.95).unwrap();
        for (h, p) in fc.point.iter().enumerate() {
            let want = 10.0 + [0.0, 1.0, 2.0, 3.0, 4.0, 8.0, 6.0][(1000 + h) % 7];
            assert!((p - want).abs() < 0.5, "step {h}: {p} vs {want}");
        }
    }

    #[test]
    fn candidates_follow_the_data() {
        let seasonal: Vec<f64> = (0..120)
            .map(|t| {
                100.0 + 30.0 * ((t % 12) as f64 / 12.0 * std::f64::consts::TAU).sin() + noise(t)
            })
            .collect();
        let specs = candidates(&seasonal, 12);
        assert_eq!(specs.len(), 6);
        assert!(specs.iter().all(|s| s.season != SeasonKind::None));
        // A season longer than 24, or no season: non-seasonal classes only.
        assert!(
            candidates(&seasonal, 52)
                .iter()
                .all(|s| s.season == SeasonKind::None)
        );
        // Zeros: additive errors only.
        let mut with_zero = seasonal.clone();
        with_zero[5] = 0.0;
        assert!(
            candidates(&with_zero, 12)
                .iter()
                .all(|s| s.error == ErrorKind::Additive)
        );
        // Two and a half seasons: the test is not trusted, both families are tried.
        let short = candidates(&seasonal[..30], 12);
        assert_eq!(short.len(), 12);
        assert_eq!(
            short
                .iter()
                .filter(|s| s.season == SeasonKind::None)
                .count(),
            6
        );
    }

    #[test]
    fn degenerate_series_still_forecast() {
        // Constant: every class fits it exactly; the forecast is the constant.
        let flat = vec![7.0; 30];
        let fc = auto_ets(&flat, 12, 6, 0.95).unwrap();
        assert!(
            fc.point.iter().all(|p| (p - 7.0).abs() < 1e-6),
            "{:?}",
            fc.point
        );
        // Too short.
        assert!(matches!(
            auto_ets(&[1.0, 2.0, 3.0], 12, 6, 0.95),
            Err(ModelError::TooShort { .. })
        ));
        // The unstable class (additive error, multiplicative season) is refused, not fitted.
        assert!(
            fit(
                &flat,
                12,
                spec(
                    ErrorKind::Additive,
                    TrendKind::None,
                    SeasonKind::Multiplicative
                )
            )
            .is_none()
        );
        // Negative and zero values with a season.
        let mixed: Vec<f64> = (0..48)
            .map(|t| ((t % 12) as f64 - 5.0) * 3.0 + noise(t))
            .collect();
        let fc = auto_ets(&mixed, 12, 12, 0.95).unwrap();
        assert!(
            fc.point
                .iter()
                .chain(&fc.lower)
                .chain(&fc.upper)
                .all(|v| v.is_finite())
        );
        // Huge values do not overflow the likelihood.
        let huge: Vec<f64> = (0..200).map(|t| 1e150 * (1.5 + noise(t) * 0.1)).collect();
        let fc = auto_ets(&huge, 1, 4, 0.95).unwrap();
        assert!(fc.point.iter().all(|p| p.is_finite() && *p > 1e149));
    }
}
