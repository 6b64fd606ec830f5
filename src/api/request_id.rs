//! `X-Request-Id`: a client may name its request, and the id is then echoed
//! and logged with every line of the request. An id is kept only when it is
//! short, plain text that cannot pass for anything else in a log line; any
//! other is dropped, so that a fresh one is made (and echoed) instead.

use axum::extract::Request;
use axum::http::HeaderName;

/// The header that carries a request's id.
pub const HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// The longest id kept from a client.
pub const MAX_LEN: usize = 64;

/// Whether a client's id is kept: 1 to [`MAX_LEN`] characters of
/// `A-Z a-z 0-9 . _ : -` (a UUID is one).
pub fn is_acceptable(id: &[u8]) -> bool {
    (1..=MAX_LEN).contains(&id.len())
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// Keeps the request's first id if it is acceptable, and drops every other,
/// so that at most one id, a safe one, goes on.
pub fn keep_only_acceptable(mut request: Request) -> Request {
    let headers = request.headers_mut();
    let kept = headers
        .get(&HEADER)
        .filter(|id| is_acceptable(id.as_bytes()))
        .cloned();
    headers.remove(&HEADER);
    if let Some(id) = kept {
        headers.insert(HEADER, id);
    }
    request
}

#[cfg(test)]
mod tests {
    use super::is_acceptable;

    #[test]
    fn only_short_plain_ids_are_acceptable() {
        assert!(is_acceptable(b"0193a5c2-7f3e-7c1a-9a4e-3f1d2b8c9e01"));
        assert!(is_acceptable(b"client.42:retry_1"));
        assert!(is_acceptable(&[b'x'; 64]));
        assert!(!is_acceptable(&[b'x'; 65]));
        assert!(!is_acceptable(b""));
        for bad in [
            &b"a b"[..],
            b"a\nb",
            b"a\rb",
            b"a\tb",
            b"a\"b",
            b"a=b",
            b"a}b",
            b"caf\xc3\xa9",
        ] {
            assert!(!is_acceptable(bad), "{bad:?}");
        }
    }
}
