//! W3C trace context (`traceparent`), so that one trace can follow a job across machines
//! and processes. The engine only carries it; an exporter turns it into spans.

use std::fmt;

/// A parsed `traceparent`: `00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceContext {
    /// The trace id (never all zero).
    pub trace_id: [u8; 16],
    /// The parent span id (never all zero).
    pub span_id: [u8; 8],
    /// Trace flags; bit 0 is "sampled".
    pub flags: u8,
}

/// Why a `traceparent` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid traceparent `{value}`: {reason}")]
pub struct TraceParseError {
    /// The value as given (cut to 80 characters).
    pub value: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

fn hex_into(src: &str, out: &mut [u8]) -> bool {
    if src.len() != out.len() * 2 {
        return false;
    }
    let b = src.as_bytes();
    for (i, o) in out.iter_mut().enumerate() {
        let hi = hex_val(b[2 * i]);
        let lo = hex_val(b[2 * i + 1]);
        match (hi, lo) {
            (Some(h), Some(l)) => *o = (h << 4) | l,
            _ => return false,
        }
    }
    true
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

impl TraceContext {
    /// Parses a W3C `traceparent` header value (version 00; later versions are read as 00
    /// as the spec asks, ignoring extra fields).
    pub fn parse(value: &str) -> Result<Self, TraceParseError> {
        let err = |reason| TraceParseError {
            value: value.chars().take(80).collect(),
            reason,
        };
        let v = value.trim();
        let mut parts = v.split('-');
        let (Some(ver), Some(tid), Some(sid), Some(fl)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(err("expected `00-<trace id>-<span id>-<flags>`"));
        };
        let mut version = [0u8; 1];
        if !hex_into(ver, &mut version) || version[0] == 0xff {
            return Err(err("bad version"));
        }
        if version[0] == 0 && parts.next().is_some() {
            return Err(err("version 00 has exactly four fields"));
        }
        let mut ctx = TraceContext {
            trace_id: [0; 16],
            span_id: [0; 8],
            flags: 0,
        };
        if !hex_into(tid, &mut ctx.trace_id) {
            return Err(err("the trace id must be 32 lowercase hex digits"));
        }
        if !hex_into(sid, &mut ctx.span_id) {
            return Err(err("the span id must be 16 lowercase hex digits"));
        }
        let mut flags = [0u8; 1];
        if !hex_into(fl, &mut flags) {
            return Err(err("the flags must be 2 lowercase hex digits"));
        }
        ctx.flags = flags[0];
        if ctx.trace_id == [0; 16] {
            return Err(err("the trace id is all zeros"));
        }
        if ctx.span_id == [0; 8] {
            return Err(err("the span id is all zeros"));
        }
        Ok(ctx)
    }

    /// True when the sender sampled this trace.
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }

    /// The trace id as 32 hex digits.
    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }

    /// The span id as 16 hex digits.
    pub fn span_id_hex(&self) -> String {
        hex(&self.span_id)
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

impl fmt::Display for TraceContext {
    /// The `traceparent` header value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{}-{}-{:02x}",
            hex(&self.trace_id),
            hex(&self.span_id),
            self.flags
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let s = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let t = TraceContext::parse(s).unwrap();
        assert!(t.sampled());
        assert_eq!(t.to_string(), s);
        assert_eq!(t.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.span_id_hex(), "00f067aa0ba902b7");
    }

    #[test]
    fn bad_values_are_refused() {
        for bad in [
            "",
            "00",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-zz",
        ] {
            assert!(TraceContext::parse(bad).is_err(), "{bad}");
        }
        // A future version may carry more fields.
        assert!(
            TraceContext::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x")
                .is_ok()
        );
    }
}
