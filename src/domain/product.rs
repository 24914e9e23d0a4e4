use super::clean_text;
use rust_decimal::Decimal;
use std::str::FromStr;

/// A stock-keeping unit: 1..=64 characters of letters, digits, `.`, `_` and `-` (it appears in
/// URL paths, so nothing that needs escaping).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sku(String);

impl Sku {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let ok = (1..=64).contains(&raw.len())
            && raw
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if ok {
            Ok(Sku(raw.to_string()))
        } else {
            Err("must be 1 to 64 characters of letters, digits, '.', '_' and '-'".into())
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A product's display name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductName(String);

impl ProductName {
    pub fn parse(raw: &str) -> Result<Self, String> {
        clean_text(raw, 200).map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An ISO 4217 currency code, with the number of minor units it allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Currency([u8; 3]);

/// Currencies whose minor unit is not 1/100 (ISO 4217).
const ZERO_DECIMALS: &[&str] = &[
    "BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "UYI", "VND",
    "VUV", "XAF", "XOF", "XPF",
];
const THREE_DECIMALS: &[&str] = &["BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"];

impl Currency {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let bytes = raw.as_bytes();
        if bytes.len() == 3 && bytes.iter().all(u8::is_ascii_uppercase) {
            Ok(Currency([bytes[0], bytes[1], bytes[2]]))
        } else {
            Err("must be a three-letter ISO 4217 code such as EUR".into())
        }
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("ASCII")
    }

    pub fn minor_units(&self) -> u32 {
        if ZERO_DECIMALS.contains(&self.as_str()) {
            0
        } else if THREE_DECIMALS.contains(&self.as_str()) {
            3
        } else {
            2
        }
    }
}

/// An amount of money as a decimal string (`"12.50"`), never a float; at most as many
/// decimals as the currency allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Amount(Decimal);

impl Amount {
    pub fn parse(raw: &str, currency: Option<Currency>) -> Result<Self, String> {
        let bad = || "must be a decimal string such as \"12.50\"".to_string();
        if raw.is_empty() || raw.len() > 24 || !raw.chars().all(|c| c.is_ascii_digit() || c == '.')
        {
            return Err(bad());
        }
        let value = Decimal::from_str(raw).map_err(|_| bad())?;
        if let Some(c) = currency
            && value.scale() > c.minor_units()
        {
            return Err(format!(
                "has more decimals than {} allows ({})",
                c.as_str(),
                c.minor_units()
            ));
        }
        if value > Decimal::from(1_000_000_000_000i64) {
            return Err("is too large".into());
        }
        Ok(Amount(value))
    }

    pub fn value(&self) -> Decimal {
        self.0
    }
}

/// A non-negative whole quantity with a sane bound (stock levels, reorder figures).
pub fn parse_count(raw: i64, what: &str) -> Result<i64, String> {
    if (0..=1_000_000_000).contains(&raw) {
        Ok(raw)
    } else {
        Err(format!("{what} must be between 0 and 1000000000"))
    }
}

/// Formats a stored amount with the currency's decimals (`12.5` EUR → `"12.50"`).
pub fn format_amount(value: Decimal, currency: &str) -> String {
    let units = Currency::parse(currency)
        .map(|c| c.minor_units())
        .unwrap_or(2);
    format!("{:.*}", units as usize, value.round_dp(units))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skus() {
        for good in ["A", "TENT-2P", "sku_1.2", &"x".repeat(64)] {
            assert!(Sku::parse(good).is_ok(), "{good}");
        }
        for bad in ["", "a b", "a/b", "é", &"x".repeat(65), "../etc"] {
            assert!(Sku::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn amounts_respect_the_currency() {
        let eur = Currency::parse("EUR").unwrap();
        let jpy = Currency::parse("JPY").unwrap();
        let kwd = Currency::parse("KWD").unwrap();
        assert_eq!(
            Amount::parse("12.50", Some(eur))
                .unwrap()
                .value()
                .to_string(),
            "12.50"
        );
        assert!(Amount::parse("12.505", Some(eur)).is_err());
        assert!(Amount::parse("12.5", Some(jpy)).is_err());
        assert!(Amount::parse("1.125", Some(kwd)).is_ok());
        for bad in ["", "-1", "1e3", "1,5", "abc", " 1", "NaN"] {
            assert!(Amount::parse(bad, Some(eur)).is_err(), "{bad:?}");
        }
        assert!(Currency::parse("eur").is_err());
        assert_eq!(
            format_amount(Decimal::from_str("12.5").unwrap(), "EUR"),
            "12.50"
        );
        assert_eq!(
            format_amount(Decimal::from_str("1200").unwrap(), "JPY"),
            "1200"
        );
    }
}
