//! Features, in polars' lazy API: the daily series per SKU with missing days as zero, calendar
//! features, lags and rolling statistics, and the per-series descriptors that drive model choice.
//!
//! Every frame here is a *panel*: columns `series` (string), `t` (i32; a day number since
//! 1970-01-01 for daily sales, or any integer period index) and `y` (f64), sorted by series then
//! `t`. Building features as lazy expressions lets polars run them over every series at once,
//! in parallel, without a Rust loop per SKU.

use polars::prelude::*;

/// Column names of a panel.
pub const SERIES: &str = "series";
pub const T: &str = "t";
pub const Y: &str = "y";

/// Daily sales (`series`, `t` = day number, `y`) to a gap-free panel: several rows of one day
/// are summed, every day from a series' first sale to `end_day` is present, missing days are 0.
pub fn daily_panel(sales: LazyFrame, end_day: i32) -> LazyFrame {
    let observed = sales
        .filter(col(T).lt_eq(lit(end_day)))
        .group_by([col(SERIES), col(T)])
        .agg([col(Y).sum()]);
    let grid = observed
        .clone()
        .group_by([col(SERIES)])
        .agg([int_range(col(T).min(), lit(end_day + 1), 1, DataType::Int32).alias(T)])
        .explode(
            cols([T]),
            ExplodeOptions {
                empty_as_null: false,
                keep_nulls: false,
            },
        );
    grid.join(
        observed,
        [col(SERIES), col(T)],
        [col(SERIES), col(T)],
        JoinArgs::new(JoinType::Left),
    )
    .with_column(col(Y).fill_null(lit(0.0)))
    .sort([SERIES, T], SortMultipleOptions::default())
}

/// Calendar features of a daily panel: weekday (0 = Monday), day of month, month.
pub fn calendar(panel: LazyFrame) -> LazyFrame {
    let date = col(T).cast(DataType::Date);
    panel.with_columns([
        (date.clone().dt().weekday() - lit(1))
            .cast(DataType::Int32)
            .alias("weekday"),
        date.clone()
            .dt()
            .day()
            .cast(DataType::Int32)
            .alias("day_of_month"),
        date.dt().month().cast(DataType::Int32).alias("month"),
    ])
}

/// Lags and rolling statistics of `y`, each known `lead` periods ahead: the lag by `lead` and
/// by `lead + season`, the mean of the `season` and `4 × season` periods ending `lead` periods
/// ago, and their standard deviation. With `lead` ≥ the horizon a model on these features
/// forecasts every step of the horizon directly, without feeding forecasts back.
pub fn lags(panel: LazyFrame, lead: usize, season: usize) -> PolarsResult<LazyFrame> {
    let lead = lead as i64;
    let season = season.max(1);
    let lagged = col(Y).shift(lit(lead));
    let rolling = |window: usize| RollingOptionsFixedWindow {
        window_size: window,
        min_periods: window,
        ..Default::default()
    };
    Ok(panel.with_columns([
        lagged.clone().over([col(SERIES)])?.alias("lag"),
        col(Y)
            .shift(lit(lead + season as i64))
            .over([col(SERIES)])?
            .alias("lag_season"),
        lagged
            .clone()
            .rolling_mean(rolling(season))
            .over([col(SERIES)])?
            .alias("mean_season"),
        lagged
            .clone()
            .rolling_mean(rolling(4 * season))
            .over([col(SERIES)])?
            .alias("mean_4_seasons"),
        lagged
            .rolling_std(rolling(4 * season))
            .over([col(SERIES)])?
            .alias("std_4_seasons"),
    ]))
}

/// The global model's training rows, in the column order of [`super::global::FEATURES`]: for
/// every day `t` of every series, features from data at or before `t − horizon` only (so the
/// model forecasts `horizon` days directly), levels scaled by the series' mean positive value
/// and taken as `ln(ε + level / scale)`, and the target `y / scale`. Rows without enough history
/// are dropped. `t` must be a day number (weekdays come from it). Returns `(x, y)`, `x`
/// row-major.
pub fn global_training_rows(
    panel: LazyFrame,
    horizon: usize,
) -> PolarsResult<(Vec<f64>, Vec<f64>)> {
    let h = horizon as i64;
    let week_lag = (horizon.div_ceil(7) * 7) as i64;
    let by = || [col(SERIES)];
    let demand = col(Y).clip_min(lit(0.0));
    let scale = demand
        .clone()
        .filter(demand.clone().gt(lit(0.0)))
        .mean()
        .over(by())?
        .fill_null(lit(1.0));
    let level =
        |e: Expr| (lit(super::global::LEVEL_EPS) + e / col("scale")).log(lit(std::f64::consts::E));
    let lag = |n: i64| -> PolarsResult<Expr> { demand.clone().shift(lit(n)).over(by()) };
    let window = |n: usize| RollingOptionsFixedWindow {
        window_size: n,
        min_periods: n,
        ..Default::default()
    };
    let same_weekday =
        (lag(week_lag)? + lag(week_lag + 7)? + lag(week_lag + 14)? + lag(week_lag + 21)?)
            / lit(4.0);
    let weekday = (col(T) + lit(3)) % lit(7);
    let mut features = vec![
        level(lag(h)?).alias("lag_h"),
        level(lag(week_lag)?).alias("lag_week_1"),
        level(lag(week_lag + 7)?).alias("lag_week_2"),
        level(same_weekday).alias("mean_same_weekday"),
        level(
            demand
                .clone()
                .shift(lit(h))
                .rolling_mean(window(7))
                .over(by())?,
        )
        .alias("mean_7"),
        level(
            demand
                .clone()
                .shift(lit(h))
                .rolling_mean(window(28))
                .over(by())?,
        )
        .alias("mean_28"),
        demand
            .clone()
            .shift(lit(h))
            .eq(lit(0.0))
            .cast(DataType::Float64)
            .rolling_mean(window(28))
            .over(by())?
            .alias("zero_share_28"),
    ];
    for (d, name) in [
        "dow_mon", "dow_tue", "dow_wed", "dow_thu", "dow_fri", "dow_sat",
    ]
    .iter()
    .enumerate()
    {
        features.push(
            weekday
                .clone()
                .eq(lit(d as i32))
                .cast(DataType::Float64)
                .alias(*name),
        );
    }
    let names: Vec<&str> = super::global::FEATURES.to_vec();
    let frame = panel
        .with_column(scale.alias("scale"))
        .with_columns(features)
        .with_column((demand / col("scale")).alias("target"))
        .drop_nulls(None)
        .select(
            names
                .iter()
                .map(|n| col(*n))
                .chain([col("target")])
                .collect::<Vec<_>>(),
        )
        .collect()?;
    let n = frame.height();
    let mut x = vec![0.0; n * names.len()];
    for (j, name) in names.iter().enumerate() {
        let column = frame.column(name)?.f64()?;
        for (i, v) in column.iter().enumerate() {
            x[i * names.len() + j] = v.unwrap_or(0.0);
        }
    }
    let y = frame
        .column("target")?
        .f64()?
        .iter()
        .map(|v| v.unwrap_or(0.0))
        .collect();
    Ok((x, y))
}

/// The descriptors of each series, one row per series:
/// - `length`: periods of history;
/// - `adi`: average demand interval, periods per non-zero period (Syntetos–Boylan; ≥ 1.32 is
///   intermittent); the length itself when the series never sold;
/// - `cv2`: squared coefficient of variation of the non-zero values;
/// - `zero_share`: share of zero periods;
/// - `trend_strength`, `seasonal_strength`: from a classical decomposition (centred moving
///   average, mean detrended value per phase of the season), as
///   `max(0, 1 − var(remainder) / var(component + remainder))` (Wang, Smith & Hyndman 2006).
pub fn descriptors(panel: LazyFrame, season: usize) -> PolarsResult<LazyFrame> {
    let m = season.max(2);
    // A centred moving average over one full season: `m` equal weights when m is odd, the
    // 2×m average (half weights at both ends) when it is even.
    let (window, weights) = if m % 2 == 1 {
        (m, vec![1.0 / m as f64; m])
    } else {
        let mut w = vec![1.0 / m as f64; m + 1];
        w[0] /= 2.0;
        w[m] /= 2.0;
        (m + 1, w)
    };
    let trend = col(Y)
        .rolling_mean(RollingOptionsFixedWindow {
            window_size: window,
            min_periods: window,
            weights: Some(weights),
            center: true,
            fn_params: None,
        })
        .over([col(SERIES)])?;
    let decomposed = panel
        .with_columns([
            trend.alias("trend"),
            (col(T) - col(T).min().over([col(SERIES)])?)
                .cast(DataType::Int64)
                .alias("phase"),
        ])
        .with_columns([
            (col(Y) - col("trend")).alias("detrended"),
            (col("phase") % lit(m as i64)).alias("phase"),
        ])
        .with_column(
            col("detrended")
                .mean()
                .over([col(SERIES), col("phase")])?
                .alias("seasonal"),
        )
        .with_column((col("detrended") - col("seasonal")).alias("remainder"));
    let strength = |component: &str| {
        let known = col("remainder").is_not_null();
        let remainder_var = col("remainder").filter(known.clone()).var(1);
        let with_component = (col(component) + col("remainder")).filter(known).var(1);
        when(with_component.clone().gt(lit(1e-12)))
            .then(lit(1.0) - remainder_var / with_component)
            .otherwise(lit(0.0))
            .clip(lit(0.0), lit(1.0))
            .fill_null(lit(0.0))
    };
    let nonzero = col(Y).neq(lit(0.0));
    let nonzero_values = col(Y).filter(nonzero.clone());
    Ok(decomposed
        .group_by([col(SERIES)])
        .agg([
            col(Y).count().cast(DataType::Float64).alias("length"),
            nonzero
                .clone()
                .sum()
                .cast(DataType::Float64)
                .alias("nonzero"),
            (nonzero_values.clone().std(1) / nonzero_values.mean())
                .pow(2)
                .fill_nan(lit(0.0))
                .fill_null(lit(0.0))
                .alias("cv2"),
            strength("trend").alias("trend_strength"),
            strength("seasonal").alias("seasonal_strength"),
        ])
        .with_columns([
            when(col("nonzero").gt(lit(0.0)))
                .then(col("length") / col("nonzero"))
                .otherwise(col("length"))
                .alias("adi"),
            (lit(1.0) - col("nonzero") / col("length")).alias("zero_share"),
        ])
        .select([
            col(SERIES),
            col("length"),
            col("adi"),
            col("cv2"),
            col("zero_share"),
            col("trend_strength"),
            col("seasonal_strength"),
        ])
        .sort([SERIES], SortMultipleOptions::default()))
}

/// One series out of a panel, in period order.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub id: String,
    /// `t` of the first value.
    pub start: i32,
    pub values: Vec<f64>,
}

/// Collects a sorted panel into one [`Series`] per series id.
pub fn collect_series(panel: LazyFrame) -> PolarsResult<Vec<Series>> {
    let frame = panel.select([col(SERIES), col(T), col(Y)]).collect()?;
    let ids = frame.column(SERIES)?.str()?;
    let ts = frame.column(T)?.i32()?;
    let ys = frame.column(Y)?.f64()?;
    let mut out: Vec<Series> = vec![];
    for ((id, t), y) in ids.iter().zip(ts.iter()).zip(ys.iter()) {
        let (Some(id), Some(t)) = (id, t) else {
            continue;
        };
        let y = y.unwrap_or(0.0);
        match out.last_mut() {
            Some(last) if last.id == id => last.values.push(y),
            _ => out.push(Series {
                id: id.to_string(),
                start: t,
                values: vec![y],
            }),
        }
    }
    Ok(out)
}

/// A frame from plain vectors (series ids, `t`, `y`), for callers that hold rows in memory.
pub fn panel_from_rows(series: Vec<String>, t: Vec<i32>, y: Vec<f64>) -> PolarsResult<LazyFrame> {
    let frame = DataFrame::new_infer_height(vec![
        Column::new(SERIES.into(), series),
        Column::new(T.into(), t),
        Column::new(Y.into(), y),
    ])?;
    Ok(frame.lazy())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(s: &str) -> i32 {
        super::super::history::day_number(chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap())
    }

    #[test]
    fn daily_panel_fills_missing_days_with_zero_and_sums_duplicates() {
        let sales = panel_from_rows(
            vec!["a".into(), "a".into(), "a".into(), "b".into()],
            vec![
                day("2026-01-01"),
                day("2026-01-03"),
                day("2026-01-03"),
                day("2026-01-04"),
            ],
            vec![2.0, 1.0, 4.0, 7.0],
        )
        .unwrap();
        let series = collect_series(daily_panel(sales, day("2026-01-05"))).unwrap();
        assert_eq!(
            series,
            vec![
                Series {
                    id: "a".into(),
                    start: day("2026-01-01"),
                    values: vec![2.0, 0.0, 5.0, 0.0, 0.0]
                },
                Series {
                    id: "b".into(),
                    start: day("2026-01-04"),
                    values: vec![7.0, 0.0]
                },
            ]
        );
    }

    #[test]
    fn calendar_features_match_the_calendar() {
        // 2026-11-21 is a Saturday.
        let sales = panel_from_rows(vec!["a".into()], vec![day("2026-11-21")], vec![1.0]).unwrap();
        let frame = calendar(sales).collect().unwrap();
        assert_eq!(
            frame.column("weekday").unwrap().i32().unwrap().get(0),
            Some(5)
        );
        assert_eq!(
            frame.column("day_of_month").unwrap().i32().unwrap().get(0),
            Some(21)
        );
        assert_eq!(
            frame.column("month").unwrap().i32().unwrap().get(0),
            Some(11)
        );
    }

    #[test]
    fn lags_and_rolling_means_on_a_hand_checked_series() {
        // y = 1..=10, lead 2, season 2: lag[t] = y[t-2], lag_season[t] = y[t-4],
        // mean_season[t] = mean(y[t-3], y[t-2]), mean_4_seasons[t] = mean(y[t-9..=t-2]).
        let n = 10;
        let panel = panel_from_rows(
            vec!["a".to_string(); n],
            (0..n as i32).collect(),
            (1..=n).map(|v| v as f64).collect(),
        )
        .unwrap();
        let frame = lags(panel, 2, 2).unwrap().collect().unwrap();
        let get = |name: &str| -> Vec<Option<f64>> {
            frame.column(name).unwrap().f64().unwrap().iter().collect()
        };
        assert_eq!(
            get("lag")[2..],
            [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0].map(Some)
        );
        assert_eq!(get("lag")[..2], [None, None]);
        assert_eq!(get("lag_season")[4], Some(1.0));
        assert_eq!(get("mean_season")[2], None);
        assert_eq!(get("mean_season")[3], Some(1.5));
        assert_eq!(get("mean_season")[4], Some(2.5));
        assert_eq!(get("mean_4_seasons")[9], Some(4.5));
        assert_eq!(get("mean_4_seasons")[8], None);
    }

    #[test]
    fn global_training_rows_match_the_global_models_own_feature_rows() {
        // Two series starting on different weekdays, with zeros, trends and a weekly shape.
        let mut ids = vec![];
        let mut t = vec![];
        let mut y = vec![];
        let mut expected_x = vec![];
        let mut expected_y = vec![];
        for (k, (start, len)) in [(20_000, 90usize), (20_003, 75)].into_iter().enumerate() {
            let values: Vec<f64> = (0..len)
                .map(|i| {
                    let v = ((i * 7 + k * 3) % 11) as f64 + (i % 7) as f64 * 0.5 - 2.0;
                    v.max(0.0)
                })
                .collect();
            let scale = super::super::global::series_scale(&values);
            let first_weekday = ((start + 3) % 7) as u32;
            super::super::global::push_training_rows(
                &values,
                10,
                scale,
                first_weekday,
                &mut expected_x,
                &mut expected_y,
            );
            for (i, v) in values.iter().enumerate() {
                ids.push(format!("s{k}"));
                t.push(start + i as i32);
                y.push(*v);
            }
        }
        let (x, target) = global_training_rows(panel_from_rows(ids, t, y).unwrap(), 10).unwrap();
        assert_eq!(target.len(), expected_y.len());
        assert_eq!(x.len(), expected_x.len());
        for (a, b) in x
            .iter()
            .zip(&expected_x)
            .chain(target.iter().zip(&expected_y))
        {
            assert!((a - b).abs() < 1e-9, "{a} != {b}");
        }
    }

    #[test]
    fn descriptors_of_hand_checked_series() {
        // "steady": 1,2,1,2,... — no zeros, a perfect season of 2, no trend.
        // "lumpy": 0,0,0,4,0,0,0,4 — ADI 4, CV² 0 (every sale is 4), 75 % zeros.
        let steady: Vec<f64> = (0..8).map(|i| if i % 2 == 0 { 1.0 } else { 2.0 }).collect();
        let lumpy = vec![0.0, 0.0, 0.0, 4.0, 0.0, 0.0, 0.0, 4.0];
        let mut ids = vec!["steady".to_string(); 8];
        ids.extend(vec!["lumpy".to_string(); 8]);
        let t: Vec<i32> = (0..8).chain(0..8).collect();
        let y: Vec<f64> = steady.into_iter().chain(lumpy).collect();
        let frame = descriptors(panel_from_rows(ids, t, y).unwrap(), 2)
            .unwrap()
            .collect()
            .unwrap();
        let value = |name: &str, row: usize| frame.column(name).unwrap().f64().unwrap().get(row);
        // Sorted by series: lumpy first.
        assert_eq!(
            frame.column(SERIES).unwrap().str().unwrap().get(0),
            Some("lumpy")
        );
        assert_eq!(value("length", 0), Some(8.0));
        assert_eq!(value("adi", 0), Some(4.0));
        assert_eq!(value("cv2", 0), Some(0.0));
        assert_eq!(value("zero_share", 0), Some(0.75));
        assert_eq!(value("adi", 1), Some(1.0));
        assert_eq!(value("zero_share", 1), Some(0.0));
        // CV² of 1,2,1,2,...: sd 0.5345 (n − 1), mean 1.5 → 0.127.
        assert!((value("cv2", 1).unwrap() - 0.12698).abs() < 1e-4);
        // The season explains everything: remainder 0, seasonal strength 1, trend strength 0.
        assert!((value("seasonal_strength", 1).unwrap() - 1.0).abs() < 1e-9);
        assert!(value("trend_strength", 1).unwrap() < 1e-9);
    }
}
