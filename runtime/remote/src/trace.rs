//! W3C Trace Context (`traceparent`): each request has a trace id, kept
//! from the client's header when it is valid or made here, and each hop a
//! span id of its own. The server answers with its span's `traceparent`,
//! sends it on to a node as the parent, and the module's log lines carry
//! the trace id.

use rand::Rng;

/// One hop of a trace.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    /// 32 lowercase hex digits, not all zero.
    pub trace_id: String,
    /// This hop's id: 16 lowercase hex digits, not all zero.
    pub span_id: String,
    /// The caller's span, when the trace came with the request.
    pub parent_id: Option<String>,
    /// `01` sampled, `00` not: the caller's choice, kept, unless this hop's
    /// trace settings decide (wasmscore_server's traces.rs).
    pub flags: String,
    /// Whether this hop exports its span (otlp.rs): when sampled, unless
    /// this hop's trace settings say otherwise.
    pub record: bool,
}

/// The sampled bit of a `traceparent`'s flags.
fn sampled(flags: &str) -> bool {
    u8::from_str_radix(flags, 16).unwrap_or(0) & 1 == 1
}

fn hex_id(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) && s.bytes().any(|b| b != b'0')
}

/// `bytes` random bytes as lowercase hex, not all zero: one allocation
/// (it runs for every request).
fn random_hex(bytes: usize) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut rng = rand::rng();
    let mut s = String::with_capacity(bytes * 2);
    loop {
        for _ in 0..bytes {
            let b: u8 = rng.random();
            s.push(DIGITS[usize::from(b >> 4)] as char);
            s.push(DIGITS[usize::from(b & 15)] as char);
        }
        if s.bytes().any(|b| b != b'0') {
            return s;
        }
        s.clear();
    }
}

impl Span {
    /// The span of a request with this `traceparent` header: a child of it
    /// when it is valid (version 00, or a later version read as 00 as the
    /// spec asks), else the root of a new trace (sampled).
    pub fn child_of(traceparent: Option<&str>) -> Span {
        if let Some((trace_id, parent_id, flags)) = traceparent.and_then(parse) {
            let record = sampled(&flags);
            return Span {
                trace_id,
                span_id: random_hex(8),
                parent_id: Some(parent_id),
                flags,
                record,
            };
        }
        Span {
            trace_id: random_hex(16),
            span_id: random_hex(8),
            parent_id: None,
            flags: "01".into(),
            record: true,
        }
    }

    /// Whether the trace is sampled (the flags' low bit).
    pub fn sampled(&self) -> bool {
        sampled(&self.flags)
    }

    /// Marks the trace sampled or not, for this hop and the ones after it
    /// (the flags' other bits stay).
    pub fn set_sampled(&mut self, on: bool) {
        let f = u8::from_str_radix(&self.flags, 16).unwrap_or(0);
        self.flags = format!("{:02x}", if on { f | 1 } else { f & !1 });
    }

    /// This span as a `traceparent` header value.
    pub fn traceparent(&self) -> String {
        format!("00-{}-{}-{}", self.trace_id, self.span_id, self.flags)
    }
}

/// (trace id, parent span id, flags) of a valid header.
pub fn parse(header: &str) -> Option<(String, String, String)> {
    let parts: Vec<&str> = header.trim().split('-').collect();
    let [version, trace, parent, flags, rest @ ..] = parts.as_slice() else {
        return None;
    };
    let version_ok = hex_id(version, 2) || *version == "00";
    // Version ff is invalid; 00 has exactly four fields.
    if !version_ok || *version == "ff" || (*version == "00" && !rest.is_empty()) {
        return None;
    }
    let flags_ok = flags.len() == 2 && flags.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
    (hex_id(trace, 32) && hex_id(parent, 16) && flags_ok).then(|| (trace.to_string(), parent.to_string(), flags.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIVEN: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_header_is_continued_and_anything_else_starts_a_trace() {
        let s = Span::child_of(Some(GIVEN));
        assert_eq!(s.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(s.parent_id.as_deref(), Some("00f067aa0ba902b7"));
        assert_ne!(s.span_id, "00f067aa0ba902b7");
        assert!(s.traceparent().starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && s.traceparent().ends_with("-01"));
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f-00f067aa0ba902b7-01",
            "garbage",
        ] {
            let s = Span::child_of(Some(bad));
            assert!(s.parent_id.is_none() && s.trace_id != "4bf92f3577b34da6a3ce929d0e0e4736", "{bad}");
            assert!(parse(&s.traceparent()).is_some(), "a made span is valid: {}", s.traceparent());
        }
        // The sampled bit set and cleared, the other flags kept.
        let mut s = Span::child_of(Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-02"));
        assert!(!s.sampled() && !s.record);
        s.set_sampled(true);
        assert!(s.traceparent().ends_with("-03"));
        s.set_sampled(false);
        assert!(s.traceparent().ends_with("-02"));
        // A later version with more fields is read as 00.
        assert!(parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what").is_some());
    }
}
