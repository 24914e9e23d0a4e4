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

/// Every stored amount is `numeric(20,4)`: below 10^16 in magnitude.
const MONEY_LIMIT: Decimal = Decimal::from_parts(1874919424, 2328306, 0, false, 0);

/// Line totals are exact (quantity × unit price); tax is rounded half away from zero to the
/// currency's minor unit, once, on the subtotal. An order whose figures would not fit the
/// ledger's amounts is refused with the reason, never wrapped, rounded away or stored half.
pub fn totals(
    lines: &[(i64, Decimal)],
    tax_rate: Decimal,
    currency: Currency,
) -> Result<Totals, String> {
    let too_large = || {
        format!(
            "the order's amounts would exceed the largest an order can hold (below {MONEY_LIMIT})"
        )
    };
    let fits = |d: Decimal| (d.abs() < MONEY_LIMIT).then_some(d);
    let mut line_totals = Vec::with_capacity(lines.len());
    let mut subtotal = Decimal::ZERO;
    for (quantity, price) in lines {
        let line = Decimal::from(*quantity)
            .checked_mul(*price)
            .and_then(fits)
            .ok_or_else(too_large)?;
        subtotal = subtotal
            .checked_add(line)
            .and_then(fits)
            .ok_or_else(too_large)?;
        line_totals.push(line);
    }
    let tax = subtotal
        .checked_mul(tax_rate)
        .ok_or_else(too_large)?
        .round_dp_with_strategy(
            currency.minor_units(),
            RoundingStrategy::MidpointAwayFromZero,
        );
    let total = subtotal
        .checked_add(tax)
        .and_then(fits)
        .ok_or_else(too_large)?;
    Ok(Totals {
        line_totals,
        subtotal,
        tax,
        total,
    })
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
        let t = totals(&[(3, d("19.95")), (1, d("0.10"))], d("0.081"), chf).unwrap();
        assert_eq!(t.line_totals, vec![d("59.85"), d("0.10")]);
        assert_eq!(t.subtotal, d("59.95"));
        // 59.95 × 0.081 = 4.85595 → 4.86
        assert_eq!(t.tax, d("4.86"));
        assert_eq!(t.total, d("64.81"));
        // Exactly half a cent rounds up: 0.50 × 0.01 = 0.005 → 0.01.
        assert_eq!(
            totals(&[(1, d("0.50"))], d("0.01"), chf).unwrap().tax,
            d("0.01")
        );
        let jpy = Currency::parse("JPY").unwrap();
        assert_eq!(
            totals(&[(1, d("1005"))], d("0.1"), jpy).unwrap().tax,
            d("101")
        );
    }

    #[test]
    fn amounts_past_what_an_order_can_hold_are_refused() {
        let chf = Currency::parse("CHF").unwrap();
        assert_eq!(MONEY_LIMIT, d("10000000000000000"));
        // The largest price times the largest quantity: 10^18, past numeric(20,4).
        let err = totals(&[(1_000_000, d("1000000000000"))], d("0"), chf).unwrap_err();
        assert!(err.contains("largest an order can hold"), "{err}");
        // Each line fits, their sum does not.
        let line = (1_000_000, d("6000000000"));
        assert!(totals(&[line], d("0"), chf).is_ok());
        assert!(totals(&[line, line], d("0"), chf).is_err());
        // The subtotal fits, the total with tax does not.
        assert!(totals(&[(1_000_000, d("9000000000"))], d("0.5"), chf).is_err());
        assert!(totals(&[(1_000_000, d("9000000000"))], d("0.1"), chf).is_ok());
    }

    #[test]
    fn tax_rates() {
        assert_eq!(parse_tax_rate("0.081").unwrap(), d("0.081"));
        for bad in ["", "1.5", "-0.1", "8%", "0.0000001", "abc"] {
            assert!(parse_tax_rate(bad).is_err(), "{bad:?}");
        }
    }
}
