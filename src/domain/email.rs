/// An email address fit for an SMTP envelope and a header: `local@domain`, at most 254
/// characters, no whitespace, control characters, angle brackets, commas or quotes (so it cannot
/// smuggle a second recipient or a header line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailAddress(String);

impl EmailAddress {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let raw = raw.trim();
        let invalid = || Err("must be an email address such as name@example.com".to_string());
        if raw.is_empty() || raw.len() > 254 {
            return invalid();
        }
        if raw
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || "<>,;\"'()[]\\".contains(c))
        {
            return invalid();
        }
        let Some((local, domain)) = raw.rsplit_once('@') else {
            return invalid();
        };
        let domain_ok = domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
            && !domain.contains("..")
            && domain
                .split('.')
                .all(|label| !label.is_empty() && !label.starts_with('-') && !label.ends_with('-'));
        if local.is_empty() || local.len() > 64 || local.contains('@') || !domain_ok {
            return invalid();
        }
        Ok(Self(raw.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        for good in ["a@b.co", "first.last+tag@sub.example.org", "zoë@zürich.ch"] {
            assert!(
                EmailAddress::parse(good).is_ok(),
                "{good} should be accepted"
            );
        }
        for bad in [
            "",
            "plain",
            "a@b",
            "a@@b.co",
            "a b@c.de",
            "a@b.co\r\nBcc: victim@x.org",
            "a@b.co, c@d.org",
            "<a@b.co>",
            "a@-b.co",
            "a@b..co",
        ] {
            assert!(
                EmailAddress::parse(bad).is_err(),
                "{bad:?} should be refused"
            );
        }
    }
}
