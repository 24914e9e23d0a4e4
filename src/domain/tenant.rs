use super::clean_text;

/// A tenant's URL-safe handle: 2..=63 characters of `a-z`, `0-9` and `-`, starting with a letter
/// or digit. The database enforces the same rule with a CHECK constraint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantSlug(String);

impl TenantSlug {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let ok_len = (2..=63).contains(&raw.len());
        let ok_first = raw
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        let ok_chars = raw
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if ok_len && ok_first && ok_chars {
            Ok(Self(raw.to_string()))
        } else {
            Err(
                "must be 2 to 63 characters of a-z, 0-9 and '-', starting with a letter or digit"
                    .into(),
            )
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A tenant's display name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantName(String);

impl TenantName {
    pub fn parse(raw: &str) -> Result<Self, String> {
        clean_text(raw, 200).map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An IANA time zone name such as `Europe/Zurich`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeZoneName(String);

impl TimeZoneName {
    pub fn parse(raw: &str) -> Result<Self, String> {
        raw.parse::<chrono_tz::Tz>()
            .map(|tz| Self(tz.name().to_string()))
            .map_err(|_| "must be an IANA time zone name such as Europe/Zurich or UTC".into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs() {
        for good in ["ab", "acme", "shop-42", "9lives"] {
            assert!(TenantSlug::parse(good).is_ok(), "{good} should be accepted");
        }
        let long = "a".repeat(64);
        for bad in [
            "",
            "a",
            "-ab",
            "Acme",
            "a_b",
            "a b",
            "é-shop",
            long.as_str(),
        ] {
            assert!(TenantSlug::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn names_are_trimmed_and_free_of_control_characters() {
        assert_eq!(
            TenantName::parse("  Kinésithérapie Lefèvre ")
                .unwrap()
                .as_str(),
            "Kinésithérapie Lefèvre"
        );
        assert!(TenantName::parse("   ").is_err());
        assert!(TenantName::parse("Evil\r\nBcc: x").is_err());
        assert!(TenantName::parse(&"x".repeat(201)).is_err());
    }

    #[test]
    fn time_zones() {
        assert_eq!(
            TimeZoneName::parse("Europe/Zurich").unwrap().as_str(),
            "Europe/Zurich"
        );
        assert!(TimeZoneName::parse("Mars/Olympus").is_err());
    }
}
