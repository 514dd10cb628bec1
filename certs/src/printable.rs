//! Text from an untrusted source (a peer's certificate, a caller's CSR or request) made safe to
//! print in a log line or a response body: nobody can start a new line, rewind one, or hide text.

use std::borrow::Cow;
use std::fmt::Write;

/// `text` with every control character (line breaks and escape sequences included), Unicode's
/// line and paragraph separators and its bidirectional controls written as `\u{..}` escapes.
pub fn printable(text: &str) -> Cow<'_, str> {
    let unsafe_char = |c: char| {
        c.is_control()
            || matches!(c, '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !text.chars().any(unsafe_char) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if unsafe_char(c) {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_breaks_escapes_and_bidi_controls_are_escaped() {
        assert!(matches!(
            printable("spiffe://cluster.local/ns/a/sa/b"),
            Cow::Borrowed(_)
        ));
        assert_eq!(
            printable("evil\n2026-11-30T00:00:00Z  INFO forged\r\x1b[2K\u{202e}"),
            "evil\\u{a}2026-11-30T00:00:00Z  INFO forged\\u{d}\\u{1b}[2K\\u{202e}"
        );
    }
}
