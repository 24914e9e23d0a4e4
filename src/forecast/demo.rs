//! Generated sales history for demos and benchmarks: daily demand with weekly and yearly
//! seasonality, trends, promotions and intermittent SKUs, deterministic for a seed, so the demo
//! tenant's dashboard shows real forecasts and the forecast benchmark has a realistic load.

use super::history::day_number;
use chrono::NaiveDate;
use sqlx::PgPool;
use uuid::Uuid;

/// A small deterministic generator (64-bit LCG, Knuth's constants).
struct Lcg(u64);

impl Lcg {
    fn new(seed: u64) -> Self {
        Lcg(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(1))
    }

    fn uniform(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// A Poisson draw (Knuth for small means, normal approximation above 30).
    fn poisson(&mut self, mean: f64) -> f64 {
        if mean <= 0.0 {
            return 0.0;
        }
        if mean > 30.0 {
            let (u, v) = (self.uniform(), self.uniform());
            let z = (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos();
            return (mean + z * mean.sqrt()).round().max(0.0);
        }
        let limit = (-mean).exp();
        let mut k = 0.0;
        let mut p = 1.0;
        loop {
            p *= self.uniform();
            if p <= limit {
                return k;
            }
            k += 1.0;
        }
    }
}

/// One SKU's generated daily history.
#[derive(Debug, Clone)]
pub struct DemoSku {
    pub sku: String,
    pub name: String,
    pub lead_time_days: i32,
    pub on_hand: i64,
    pub first_day: NaiveDate,
    pub daily: Vec<i64>,
}

const KINDS: [&str; 6] = ["Tent", "Lantern", "Stove", "Jacket", "Boots", "Filter"];

/// `n` SKUs with `days` of history ending on `last_day`. Every tenth SKU is intermittent (a sale
/// every week or two), every fifth trends up or down, all have a weekly pattern, most a yearly
/// one, and about one week in ten is a promotion with extra demand.
pub fn generate(n: usize, days: usize, last_day: NaiveDate, seed: u64) -> Vec<DemoSku> {
    let first_day = last_day - chrono::Duration::days(days as i64 - 1);
    (0..n)
        .map(|i| {
            let mut rng = Lcg::new(seed ^ (i as u64 + 1));
            let intermittent = i % 10 == 9;
            let level = if intermittent {
                0.05 + 0.15 * rng.uniform()
            } else {
                2.0 + 40.0 * rng.uniform().powi(2)
            };
            let trend = if i % 5 == 2 {
                (rng.uniform() - 0.3) * 1.5 / days as f64
            } else {
                0.0
            };
            let weekly: Vec<f64> = (0..7)
                .map(|d| match d {
                    5 => 1.6,
                    6 => 1.3,
                    _ => 0.8 + 0.2 * rng.uniform(),
                })
                .collect();
            let yearly_amplitude = if i % 3 == 0 { 0.0 } else { 0.4 * rng.uniform() };
            let phase = rng.uniform() * std::f64::consts::TAU;
            let mut daily = Vec::with_capacity(days);
            let mut promotion_left = 0;
            for t in 0..days {
                let day = first_day + chrono::Duration::days(t as i64);
                if promotion_left == 0 && rng.uniform() < 1.0 / 70.0 {
                    promotion_left = 7;
                }
                let promo = if promotion_left > 0 {
                    promotion_left -= 1;
                    1.8
                } else {
                    1.0
                };
                let weekday = ((day_number(day) + 3).rem_euclid(7)) as usize;
                let season = 1.0
                    + yearly_amplitude * (std::f64::consts::TAU * t as f64 / 365.25 + phase).sin();
                let mean =
                    level * (1.0 + trend * t as f64).max(0.1) * weekly[weekday] * season * promo;
                daily.push(rng.poisson(mean) as i64);
            }
            let recent: i64 = daily.iter().rev().take(14).sum();
            DemoSku {
                sku: format!("SKU-{:05}", i + 1),
                name: format!("{} model {}", KINDS[i % KINDS.len()], i + 1),
                lead_time_days: 3 + (i % 12) as i32,
                on_hand: (recent as f64 * (0.3 + 1.5 * rng.uniform())).round() as i64,
                first_day,
                daily,
            }
        })
        .collect()
}

/// Writes the SKUs as products with imported sales history (products first, then the history
/// with `COPY`); products that exist keep their settings.
pub async fn load(db: &PgPool, tenant: Uuid, skus: &[DemoSku]) -> anyhow::Result<()> {
    let mut tx = db.begin().await?;
    for batch in skus.chunks(5000) {
        let ids: Vec<String> = batch.iter().map(|s| s.sku.clone()).collect();
        let names: Vec<String> = batch.iter().map(|s| s.name.clone()).collect();
        let leads: Vec<i32> = batch.iter().map(|s| s.lead_time_days).collect();
        let on_hand: Vec<i64> = batch.iter().map(|s| s.on_hand).collect();
        sqlx::query!(
            r#"INSERT INTO products (tenant_id, sku, name, unit_price, currency, reorder_point,
                                     reorder_quantity, lead_time_days, on_hand)
               SELECT $1, sku, name, 19.90, 'EUR', 10, 20, lead, on_hand
               FROM UNNEST($2::text[], $3::text[], $4::int[], $5::bigint[]) AS u(sku, name, lead, on_hand)
               ON CONFLICT (tenant_id, sku) DO NOTHING"#,
            tenant,
            &ids,
            &names,
            &leads,
            &on_hand
        )
        .execute(&mut *tx)
        .await?;
    }
    let mut copy = tx
        .copy_in_raw(
            "COPY daily_sales (tenant_id, sku, day, source, quantity) FROM STDIN WITH (FORMAT csv)",
        )
        .await?;
    let mut buffer = String::with_capacity(1 << 22);
    for s in skus {
        for (t, q) in s.daily.iter().enumerate() {
            let day = s.first_day + chrono::Duration::days(t as i64);
            buffer.push_str(&format!("{tenant},{},{day},import,{q}\n", s.sku));
        }
        if buffer.len() > (1 << 22) {
            copy.send(buffer.as_bytes()).await?;
            buffer.clear();
        }
    }
    copy.send(buffer.as_bytes()).await?;
    copy.finish().await?;
    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_is_deterministic_and_has_the_promised_shapes() {
        let last = NaiveDate::from_ymd_opt(2026, 11, 20).unwrap();
        let a = generate(20, 730, last, 7);
        let b = generate(20, 730, last, 7);
        assert_eq!(a[3].daily, b[3].daily);
        assert_eq!(a[0].daily.len(), 730);
        assert_eq!(a[0].first_day + chrono::Duration::days(729), last);
        // SKU 10 is intermittent: mostly zero days.
        let zeros = a[9].daily.iter().filter(|&&q| q == 0).count();
        assert!(zeros > 730 / 2, "{zeros} zero days");
        // Smooth SKUs sell most days, more on Saturdays than on Wednesdays.
        let smooth = &a[1];
        assert!(smooth.daily.iter().filter(|&&q| q == 0).count() < 730 / 4);
        let on = |weekday: i32| -> i64 {
            smooth
                .daily
                .iter()
                .enumerate()
                .filter(|(t, _)| {
                    (day_number(smooth.first_day) + *t as i32 + 3).rem_euclid(7) == weekday
                })
                .map(|(_, q)| q)
                .sum()
        };
        assert!(on(5) > on(2));
    }
}
