/// A stock change: a non-zero whole number of units, at most a billion either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delta(i64);

impl Delta {
    pub fn parse(raw: i64) -> Result<Self, String> {
        if raw == 0 {
            Err("must not be zero".into())
        } else if raw.unsigned_abs() > 1_000_000_000 {
            Err("must be between -1000000000 and 1000000000".into())
        } else {
            Ok(Delta(raw))
        }
    }

    pub fn get(&self) -> i64 {
        self.0
    }
}

/// Why stock moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    Sale,
    Receipt,
    Return,
    Correction,
    Damage,
    Transfer,
}

impl Reason {
    pub const ALL: [&'static str; 6] = [
        "sale",
        "receipt",
        "return",
        "correction",
        "damage",
        "transfer",
    ];

    pub fn parse(raw: &str) -> Result<Self, String> {
        Ok(match raw {
            "sale" => Reason::Sale,
            "receipt" => Reason::Receipt,
            "return" => Reason::Return,
            "correction" => Reason::Correction,
            "damage" => Reason::Damage,
            "transfer" => Reason::Transfer,
            _ => return Err(format!("must be one of {}", Self::ALL.join(", "))),
        })
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Reason::Sale => "sale",
            Reason::Receipt => "receipt",
            Reason::Return => "return",
            Reason::Correction => "correction",
            Reason::Damage => "damage",
            Reason::Transfer => "transfer",
        }
    }

    /// The sign rule every producer's adjustment obeys (the API's, an order's, a job's): sales
    /// and damage take stock away, receipts and returns add it, corrections and transfers go
    /// either way. The error names the sign the delta must have.
    pub fn check_sign(self, delta: Delta) -> Result<(), String> {
        let sign_ok = match self {
            Reason::Sale | Reason::Damage => delta.get() < 0,
            Reason::Receipt | Reason::Return => delta.get() > 0,
            Reason::Correction | Reason::Transfer => true,
        };
        if sign_ok {
            return Ok(());
        }
        let direction = if delta.get() < 0 {
            "positive"
        } else {
            "negative"
        };
        Err(format!("must be {direction} for a {}", self.as_str()))
    }
}

/// A client's idempotency key: 1..=128 printable characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let len = raw.chars().count();
        if (1..=128).contains(&len) && !raw.chars().any(char::is_control) {
            Ok(IdempotencyKey(raw.to_string()))
        } else {
            Err("must be 1 to 128 characters without control characters".into())
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_reasons_and_keys() {
        assert!(Delta::parse(0).is_err());
        assert!(Delta::parse(-5).is_ok());
        assert!(Delta::parse(2_000_000_000).is_err());
        assert_eq!(Reason::parse("sale").unwrap(), Reason::Sale);
        assert!(Reason::parse("theft").is_err());
        let (minus, plus) = (Delta::parse(-2).unwrap(), Delta::parse(3).unwrap());
        assert!(Reason::Sale.check_sign(minus).is_ok());
        assert_eq!(
            Reason::Sale.check_sign(plus).unwrap_err(),
            "must be negative for a sale"
        );
        assert_eq!(
            Reason::Receipt.check_sign(minus).unwrap_err(),
            "must be positive for a receipt"
        );
        assert!(Reason::Return.check_sign(plus).is_ok());
        assert!(Reason::Damage.check_sign(plus).is_err());
        assert!(Reason::Correction.check_sign(plus).is_ok());
        assert!(Reason::Transfer.check_sign(minus).is_ok());
        assert!(IdempotencyKey::parse("").is_err());
        assert!(IdempotencyKey::parse(&"k".repeat(128)).is_ok());
        assert!(IdempotencyKey::parse(&"k".repeat(129)).is_err());
        assert!(IdempotencyKey::parse("a\nb").is_err());
    }
}
