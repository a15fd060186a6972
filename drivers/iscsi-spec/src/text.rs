//! Text key=value pairs (RFC 7143 6.1): the data of Login and Text PDUs,
//! NUL-terminated UTF-8 `key=value` strings. Parsing never trusts the input:
//! names and values have length limits, and every pair must have a `=`.

use thiserror::Error;

/// Longest key name (RFC 7143 6.1: 63 bytes).
pub const MAX_KEY: usize = 63;
/// Longest value we accept (8192 bytes, enough for CHAP challenges).
pub const MAX_VALUE: usize = 8192;
/// Most pairs in one negotiation.
pub const MAX_PAIRS: usize = 256;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum TextError {
    #[error("text pair without '=': {0:?}")]
    NoEquals(String),
    #[error("key name too long or empty: {0:?}")]
    BadKey(String),
    #[error("value of {0} is longer than {MAX_VALUE} bytes")]
    ValueTooLong(String),
    #[error("more than {MAX_PAIRS} key=value pairs")]
    TooManyPairs,
    #[error("text is not UTF-8")]
    NotUtf8,
    #[error("key {0} appears twice")]
    Duplicate(String),
}

/// Parse a text segment into pairs, in order.
pub fn parse(data: &[u8]) -> Result<Vec<(String, String)>, TextError> {
    let mut out: Vec<(String, String)> = Vec::new();
    for raw in data.split(|&b| b == 0) {
        if raw.is_empty() {
            continue;
        }
        let s = std::str::from_utf8(raw).map_err(|_| TextError::NotUtf8)?;
        let (k, v) = s.split_once('=').ok_or_else(|| TextError::NoEquals(s.chars().take(64).collect()))?;
        if k.is_empty() || k.len() > MAX_KEY || !k.bytes().all(|c| c.is_ascii_alphanumeric() || b".-+@_".contains(&c)) {
            return Err(TextError::BadKey(k.chars().take(64).collect()));
        }
        if v.len() > MAX_VALUE {
            return Err(TextError::ValueTooLong(k.to_string()));
        }
        if out.len() == MAX_PAIRS {
            return Err(TextError::TooManyPairs);
        }
        if out.iter().any(|(x, _)| x == k) {
            return Err(TextError::Duplicate(k.to_string()));
        }
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

/// Append `key=value\0` to a text segment.
pub fn push(out: &mut Vec<u8>, key: &str, value: &str) {
    out.extend_from_slice(key.as_bytes());
    out.push(b'=');
    out.extend_from_slice(value.as_bytes());
    out.push(0);
}

/// A numeric value (decimal, or hex with 0x) within `[min, max]`.
pub fn number(v: &str, min: u64, max: u64) -> Option<u64> {
    let n = if let Some(h) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        u64::from_str_radix(h, 16).ok()?
    } else {
        v.parse().ok()?
    };
    (min..=max).contains(&n).then_some(n)
}

/// A Yes/No value.
pub fn boolean(v: &str) -> Option<bool> {
    match v {
        "Yes" => Some(true),
        "No" => Some(false),
        _ => None,
    }
}

/// Decode a binary value: `0x` hex or `0b` base64 (RFC 7143 6.1.4).
/// Decoded as bytes, strictly: any character outside the encoding's
/// alphabet (a multi-byte UTF-8 character included), non-canonical base64
/// padding, or an empty value is refused. A hex value with an odd number of
/// digits has an implied leading zero.
pub fn binary(v: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    let (prefix, body) = (v.as_bytes().get(..2)?, &v.as_bytes()[2..]);
    if body.is_empty() {
        return None;
    }
    match prefix {
        b"0x" | b"0X" if body.len() % 2 == 1 => {
            let mut padded = Vec::with_capacity(body.len() + 1);
            padded.push(b'0');
            padded.extend_from_slice(body);
            hex::decode(padded).ok()
        }
        b"0x" | b"0X" => hex::decode(body).ok(),
        b"0b" | b"0B" => base64::engine::general_purpose::STANDARD.decode(body).ok(),
        _ => None,
    }
}

/// Encode binary as `0x` hex.
pub fn hex(b: &[u8]) -> String {
    format!("0x{}", hex::encode(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pairs_and_refuses_malformed_text() {
        let p = parse(b"InitiatorName=iqn.x\0SessionType=Normal\0\0").unwrap();
        assert_eq!(p, vec![("InitiatorName".into(), "iqn.x".into()), ("SessionType".into(), "Normal".into())]);
        assert!(matches!(parse(b"NoEquals\0"), Err(TextError::NoEquals(_))));
        assert!(matches!(parse(b"=v\0"), Err(TextError::BadKey(_))));
        assert!(matches!(parse(b"A=1\0A=2\0"), Err(TextError::Duplicate(_))));
        assert!(matches!(parse(&[b'K', b'=', 0xff, 0]), Err(TextError::NotUtf8)));
        let long = format!("K={}\0", "x".repeat(MAX_VALUE + 1));
        assert!(matches!(parse(long.as_bytes()), Err(TextError::ValueTooLong(_))));
    }

    #[test]
    fn decodes_numbers_and_binary() {
        assert_eq!(number("8192", 512, 1 << 24), Some(8192));
        assert_eq!(number("0x10", 0, 100), Some(16));
        assert_eq!(number("100", 512, 1000), None);
        assert_eq!(number("x", 0, 10), None);
        assert_eq!(binary("0x0a0B"), Some(vec![10, 11]));
        assert_eq!(binary("0bAQID"), Some(vec![1, 2, 3]));
        assert_eq!(binary("0xzz"), None);
        assert_eq!(hex(&[1, 0xab]), "0x01ab");
        assert_eq!(binary("0xabc"), Some(vec![0x0a, 0xbc]));
    }

    #[test]
    fn binary_values_are_decoded_as_bytes_and_strictly() {
        // Multi-byte UTF-8 after the prefix, or where a prefix would be.
        for v in ["0x\u{e9}0", "0x\u{20ac}", "0xa\u{e9}", "0b\u{20ac}AA", "\u{e9}x00", "0\u{e9}00", "0", "0x", "0b", ""] {
            assert_eq!(binary(v), None, "{v:?}");
        }
        // Base64 must be canonical: padding present and right.
        assert_eq!(binary("0bAQI="), Some(vec![1, 2]));
        assert_eq!(binary("0bAQI"), None);
        assert_eq!(binary("0bAQ=I"), None);
        assert_eq!(binary("0b!!!!"), None);
        assert_eq!(binary("0x0g"), None);
    }
}
