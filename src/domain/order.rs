use super::product::Currency;
use rust_decimal::{Decimal, RoundingStrategy};

/// The money figures of an order, computed once in decimal arithmetic and stored; the invoice
/// PDF, the API and the email all show these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Totals {
    pub line_totals: Vec<Decimal>,
    pub subtotal: Decimal,
    pub tax: Decimal,
    pub total: Decimal,
}

/// Line totals are exact (quantity × unit price); tax is rounded half away from zero to the
/// currency's minor unit, once, on the subtotal.
pub fn totals(lines: &[(i64, Decimal)], tax_rate: Decimal, currency: Currency) -> Totals {
    let line_totals: Vec<Decimal> = lines
        .iter()
        .map(|(quantity, price)| Decimal::from(*quantity) * price)
        .collect();
    let subtotal: Decimal = line_totals.iter().sum();
    let tax = (subtotal * tax_rate).round_dp_with_strategy(
        currency.minor_units(),
        RoundingStrategy::MidpointAwayFromZero,
    );
    Totals {
        line_totals,
        subtotal,
        tax,
        total: subtotal + tax,
    }
}

/// A tax rate as a decimal fraction string, e.g. `"0.081"` for 8.1 %: 0..=1, at most 6 decimals.
pub fn parse_tax_rate(raw: &str) -> Result<Decimal, String> {
    let bad = || "must be a decimal fraction between 0 and 1, such as \"0.081\"".to_string();
    if raw.is_empty() || raw.len() > 10 || !raw.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err(bad());
    }
    let rate: Decimal = raw.parse().map_err(|_| bad())?;
    if rate > Decimal::ONE || rate.scale() > 6 {
        return Err(bad());
    }
    Ok(rate)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    #[test]
    fn totals_are_exact_and_tax_rounds_half_away_from_zero() {
        let chf = Currency::parse("CHF").unwrap();
        let t = totals(&[(3, d("19.95")), (1, d("0.10"))], d("0.081"), chf);
        assert_eq!(t.line_totals, vec![d("59.85"), d("0.10")]);
        assert_eq!(t.subtotal, d("59.95"));
        // 59.95 × 0.081 = 4.85595 → 4.86
        assert_eq!(t.tax, d("4.86"));
        assert_eq!(t.total, d("64.81"));
        // Exactly half a cent rounds up: 0.50 × 0.01 = 0.005 → 0.01.
        assert_eq!(totals(&[(1, d("0.50"))], d("0.01"), chf).tax, d("0.01"));
        let jpy = Currency::parse("JPY").unwrap();
        assert_eq!(totals(&[(1, d("1005"))], d("0.1"), jpy).tax, d("101"));
    }

    #[test]
    fn tax_rates() {
        assert_eq!(parse_tax_rate("0.081").unwrap(), d("0.081"));
        for bad in ["", "1.5", "-0.1", "8%", "0.0000001", "abc"] {
            assert!(parse_tax_rate(bad).is_err(), "{bad:?}");
        }
    }
}
