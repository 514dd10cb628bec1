//! The header rules of the request path, written once: what every hop drops, refuses and
//! writes itself, on the HTTP/1.1 relay (`relay.rs`, raw heads) and on the hyper path
//! (`body::strip_hop_by_hop`, header maps) alike. Both call the functions below.
//!
//! | Header | Rule |
//! |---|---|
//! | `Content-Length`, `Transfer-Encoding`, `Host`, pseudo-headers (`:name`) | framing and routing: never hop-by-hop. A request whose `Connection` names one is answered 400; a response, 502 and its upstream connection closed. |
//! | `Connection` | dropped; the names it lists are dropped with it, except those above (refused) and `TE`/`Upgrade` (their own rules). `close` is honoured. |
//! | `TE` | passed only as `te: trailers` (gRPC needs it; the one value HTTP/2 allows), whether `Connection` names it or not. |
//! | `Upgrade` | WebSocket and other upgrades pass end to end (the hyper path; only the protocol the request asked for may be switched to). `h2c` never: the token is dropped with `HTTP2-Settings` and the request served as HTTP/1.1, so no app can be talked into HTTP/2 behind the identity check. |
//! | `Keep-Alive`, `Proxy-Connection`, `Proxy-Authenticate`, `Proxy-Authorization`, `Trailer`, `HTTP2-Settings` | hop-by-hop (RFC 9110 §7.6.1, RFC 7540 §3.2.1): dropped. |
//! | `x-forwarded-client-cert`, in any spelling of `-` and `_` | dropped from every request; the inbound writes its own from the verified peer. In request trailers: 400. |
//! | `Transfer-Encoding` (not refused) | the relay passes it (bodies pass unchanged, their chunks followed to find the end); the hyper path drops it (hyper frames the body again). |
//!
//! Chunked bodies are read by RFC 9112 §7.1's grammar and nothing looser: a chunk size is hex
//! digits (at most 16), then optional whitespace before `;` extensions, then CRLF; extensions
//! are bounded and hold no control character but tab. Anything else is 400 (request) or 502
//! (response) and the connection closed.

/// Whether a header name is `x-forwarded-client-cert`, spelled with `-` or `_` in any place
/// (some servers, gunicorn's WSGI environ among them, read both spellings as one header).
pub(crate) fn is_xfcc(name: &[u8]) -> bool {
    let want = crate::xfcc::HEADER.as_bytes();
    name.len() == want.len()
        && name
            .iter()
            .zip(want)
            .all(|(&a, &b)| a.eq_ignore_ascii_case(&b) || (b == b'-' && a == b'_'))
}

/// The comma-separated tokens of a header value, trimmed.
pub(crate) fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(|t| t.trim_ascii())
        .filter(|t| !t.is_empty())
}

/// Whether a name is one a `Connection` header may never make hop-by-hop: the message's
/// framing and routing.
fn never_hop_by_hop(name: &[u8]) -> bool {
    name.first() == Some(&b':')
        || ["content-length", "transfer-encoding", "host"]
            .iter()
            .any(|n| n.as_bytes().eq_ignore_ascii_case(name))
}

/// The first header a message's `Connection` values name that may never be hop-by-hop (see
/// the module), for a refusal that says which.
pub(crate) fn framing_named_by_connection<'a>(connection: impl IntoIterator<Item = &'a [u8]>) -> Option<String> {
    connection
        .into_iter()
        .flat_map(tokens)
        .find(|t| never_hop_by_hop(t))
        .map(|t| String::from_utf8_lossy(t).to_ascii_lowercase())
}

/// The text of a request refused for [`framing_named_by_connection`].
pub(crate) fn framing_refusal(name: &str) -> String {
    format!(
        "signet: the Connection header names {name}, which frames or routes the request and cannot be removed on the way; send the request without it"
    )
}

/// Hop-by-hop headers (RFC 9110 §7.6.1; `HTTP2-Settings`, RFC 7540 §3.2.1) that no hop passes
/// on. `TE` and `Upgrade` have rules of their own (the module).
pub(crate) const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "trailer",
    "http2-settings",
];

/// Whether every protocol an `Upgrade` value offers is `h2c` (which no hop passes on).
pub(crate) fn only_h2c(upgrade: &[u8]) -> bool {
    tokens(upgrade).all(|t| t.eq_ignore_ascii_case(b"h2c"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xfcc_is_recognised_in_every_spelling() {
        for name in [
            "x-forwarded-client-cert",
            "X-Forwarded-Client-Cert",
            "x_forwarded_client_cert",
            "X-Forwarded_Client-Cert",
        ] {
            assert!(is_xfcc(name.as_bytes()), "{name}");
        }
        for name in ["x-forwarded-client-certs", "x-forwarded-client", "x-forwarded-for"] {
            assert!(!is_xfcc(name.as_bytes()), "{name}");
        }
    }

    #[test]
    fn framing_headers_cannot_be_made_hop_by_hop() {
        let named = |v: &str| framing_named_by_connection([v.as_bytes()]);
        assert_eq!(named("keep-alive, Content-Length"), Some("content-length".into()));
        assert_eq!(named("transfer-encoding"), Some("transfer-encoding".into()));
        assert_eq!(named("close, HOST"), Some("host".into()));
        assert_eq!(named(":authority"), Some(":authority".into()));
        assert_eq!(named("close, te, upgrade, x-secret"), None);
        assert!(only_h2c(b"h2c") && only_h2c(b"H2C, h2c"));
        assert!(!only_h2c(b"websocket") && !only_h2c(b"h2c, websocket"));
    }
}
