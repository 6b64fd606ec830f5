//! API tokens: random, shown once, stored only as a SHA-256 hash.

use sha2::{Digest, Sha256};

/// What every token starts with, so a leaked one is easy to recognise.
pub const TOKEN_PREFIX: &str = "exd_";

/// A new random token: the token itself (to show once), its hash and its prefix.
pub fn new_token() -> (String, String, String) {
    let bytes: [u8; 32] = rand::random();
    let token = format!("{TOKEN_PREFIX}{}", hex(&bytes));
    let prefix = token[..TOKEN_PREFIX.len() + 8].to_owned();
    let hash = hash(&token);
    (token, hash, prefix)
}

/// The stored form of a token.
pub fn hash(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::{TOKEN_PREFIX, hash, new_token};

    #[test]
    fn tokens_are_random_and_only_their_hash_is_kept() {
        let (a, hash_a, prefix_a) = new_token();
        let (b, _, _) = new_token();
        assert_ne!(a, b);
        assert!(a.starts_with(TOKEN_PREFIX) && a.len() == TOKEN_PREFIX.len() + 64);
        assert_eq!(hash_a, hash(&a));
        assert!(!hash_a.contains(&a[TOKEN_PREFIX.len()..]));
        assert!(a.starts_with(&prefix_a));
    }
}
