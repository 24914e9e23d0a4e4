use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};

const PREFIX: &str = "bk_";
/// Base64url characters for 32 bytes, unpadded.
const SECRET_CHARS: usize = 43;

/// A tenant API key in clear text. It exists only between generation and the one response that
/// shows it; the database keeps its [`ApiKeyHash`].
pub struct ApiKey(String);

/// SHA-256 of a key. Keys carry 256 random bits, so a fast hash is enough: there is nothing to
/// brute-force that a slow hash would protect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyHash(Vec<u8>);

impl ApiKey {
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        Self(format!(
            "{PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
        ))
    }

    /// Whether `token` has the shape of a key this code generates: anything else is refused
    /// without looking it up.
    pub fn is_well_formed(token: &str) -> bool {
        token.strip_prefix(PREFIX).is_some_and(|secret| {
            secret.len() == SECRET_CHARS
                && secret
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn hash(&self) -> ApiKeyHash {
        ApiKeyHash::of(&self.0)
    }

    /// The first characters, safe to show in lists so an admin can tell keys apart.
    pub fn display_prefix(&self) -> String {
        self.0.chars().take(PREFIX.len() + 6).collect()
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKey({}…)", self.display_prefix())
    }
}

impl ApiKeyHash {
    /// Hashes a presented bearer token for lookup.
    pub fn of(token: &str) -> Self {
        Self(Sha256::digest(token.as_bytes()).to_vec())
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_unique_and_hash_stably() {
        let a = ApiKey::generate();
        let b = ApiKey::generate();
        assert_ne!(a.expose(), b.expose());
        assert!(a.expose().starts_with("bk_") && a.expose().len() == 3 + 43);
        assert!(ApiKey::is_well_formed(a.expose()));
        for garbage in [
            "",
            "bk_",
            "bk_short",
            &format!("{}x", a.expose()),
            &a.expose().replacen("bk_", "xx_", 1),
            &format!("bk_{}", "+".repeat(43)),
            &format!("bk_{}", "é".repeat(21)),
        ] {
            assert!(!ApiKey::is_well_formed(garbage), "{garbage}");
        }
        assert_eq!(a.hash(), ApiKeyHash::of(a.expose()));
        assert_ne!(a.hash(), b.hash());
        assert!(
            !format!("{a:?}").contains(&a.expose()[10..]),
            "Debug leaks the key"
        );
    }
}
