//! Reorder advice from a forecast: reorder point, projected stock-out date and suggested order
//! quantity, for a service level (the probability of not running out during a lead time).
//!
//! Demand over the lead time is the sum of the daily point forecasts; its uncertainty comes from
//! the forecast's own prediction intervals (each day's σ read off its interval at the forecast's
//! level, days taken as independent), so a model that is unsure of itself asks for more safety
//! stock. Days past the forecast horizon repeat the horizon's average day.

use super::models::normal_quantile;
use chrono::NaiveDate;
use serde::Serialize;

/// Days between two nightly reviews of a SKU's stock: an order must cover the lead time plus
/// this review period.
pub const REVIEW_DAYS: usize = 7;

/// One SKU's situation.
#[derive(Debug, Clone)]
pub struct Situation<'a> {
    pub on_hand: i64,
    pub lead_time_days: usize,
    /// The product's minimum order quantity (`reorder_quantity`): a suggested order is never
    /// smaller.
    pub minimum_order: i64,
    /// First forecast day (the day after the history ends).
    pub first_day: NaiveDate,
    pub point: &'a [f64],
    pub lower: &'a [f64],
    pub upper: &'a [f64],
    /// The level the forecast's intervals were computed at (e.g. 0.95).
    pub interval_level: f64,
    /// The service level to plan for (e.g. 0.95).
    pub service_level: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Advice {
    pub reorder_point: i64,
    /// The first day on which forecast demand exceeds the stock on hand, if within the horizon.
    pub stockout_date: Option<NaiveDate>,
    /// Units to order now; 0 when stock is above the reorder point.
    pub suggested_order_quantity: i64,
    /// Whether stock on hand is at or below the reorder point.
    pub due: bool,
}

/// Mean and variance of demand over the first `days` days.
fn demand_over(s: &Situation<'_>, days: usize) -> (f64, f64) {
    let z = normal_quantile(0.5 + s.interval_level / 2.0).max(1e-9);
    let n = s.point.len();
    if n == 0 || days == 0 {
        return (0.0, 0.0);
    }
    let day = |i: usize| {
        let mean = s.point[i].max(0.0);
        let sd = ((s.upper[i] - s.lower[i]) / (2.0 * z)).max(0.0);
        (mean, sd * sd)
    };
    let (mut mean, mut var) = (0.0, 0.0);
    for i in 0..days.min(n) {
        let (m, v) = day(i);
        mean += m;
        var += v;
    }
    if days > n {
        let (all_mean, all_var) = (0..n)
            .map(day)
            .fold((0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1));
        let extra = (days - n) as f64;
        mean += all_mean / n as f64 * extra;
        var += all_var / n as f64 * extra;
    }
    (mean, var)
}

pub fn advise(s: &Situation<'_>) -> Advice {
    let z = normal_quantile(s.service_level.clamp(0.5, 0.9999));
    let (lead_mean, lead_var) = demand_over(s, s.lead_time_days);
    let safety = z * lead_var.sqrt();
    let reorder_point = (lead_mean + safety).ceil() as i64;
    let due = s.on_hand <= reorder_point;
    let suggested_order_quantity = if due {
        let (cover_mean, cover_var) = demand_over(s, s.lead_time_days + REVIEW_DAYS);
        let order_up_to = cover_mean + z * cover_var.sqrt();
        ((order_up_to - s.on_hand as f64).ceil() as i64)
            .max(s.minimum_order)
            .max(1)
    } else {
        0
    };
    let mut stockout_date = None;
    if s.on_hand <= 0 {
        stockout_date = Some(s.first_day);
    } else {
        let mut cumulative = 0.0;
        for (i, p) in s.point.iter().enumerate() {
            cumulative += p.max(0.0);
            if cumulative > s.on_hand as f64 {
                stockout_date = Some(s.first_day + chrono::Duration::days(i as i64));
                break;
            }
        }
    }
    Advice {
        reorder_point,
        stockout_date,
        suggested_order_quantity,
        due,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 11, d).unwrap()
    }

    #[test]
    fn certain_demand_gives_exact_advice() {
        // 10 a day for 28 days, no uncertainty; lead time 3 days → reorder point 30.
        let point = vec![10.0; 28];
        let s = Situation {
            on_hand: 25,
            lead_time_days: 3,
            minimum_order: 0,
            first_day: day(1),
            point: &point,
            lower: &point,
            upper: &point,
            interval_level: 0.95,
            service_level: 0.95,
        };
        let advice = advise(&s);
        assert_eq!(advice.reorder_point, 30);
        assert!(advice.due);
        // Cover lead time + review: 10 × (3 + 7) = 100, minus 25 on hand.
        assert_eq!(advice.suggested_order_quantity, 75);
        // 25 units last two days and a half: the third day (Nov 3) runs out.
        assert_eq!(advice.stockout_date, Some(day(3)));
    }

    #[test]
    fn uncertainty_and_service_level_raise_the_reorder_point() {
        let point = vec![10.0; 28];
        let lower: Vec<f64> = point.iter().map(|p| p - 1.959_964 * 2.0).collect();
        let upper: Vec<f64> = point.iter().map(|p| p + 1.959_964 * 2.0).collect();
        let at = |service_level: f64| {
            advise(&Situation {
                on_hand: 1000,
                lead_time_days: 4,
                minimum_order: 0,
                first_day: day(1),
                point: &point,
                lower: &lower,
                upper: &upper,
                interval_level: 0.95,
                service_level,
            })
        };
        // σ per day 2, over 4 days 4; z(0.95) = 1.645 → 40 + 6.58 → 47.
        assert_eq!(at(0.95).reorder_point, 47);
        assert!(at(0.99).reorder_point > at(0.95).reorder_point);
        assert!(!at(0.95).due);
        assert_eq!(at(0.95).suggested_order_quantity, 0);
        assert_eq!(at(0.95).stockout_date, None);
    }

    #[test]
    fn the_minimum_order_and_long_lead_times_are_honoured() {
        let point = vec![2.0; 7];
        let s = Situation {
            on_hand: 0,
            lead_time_days: 14,
            minimum_order: 100,
            first_day: day(1),
            point: &point,
            lower: &point,
            upper: &point,
            interval_level: 0.95,
            service_level: 0.95,
        };
        let advice = advise(&s);
        // Past the horizon the average day (2) repeats: 14 days → 28.
        assert_eq!(advice.reorder_point, 28);
        assert_eq!(advice.suggested_order_quantity, 100);
        assert_eq!(advice.stockout_date, Some(day(1)));
    }
}
