//! `metrics_http`: the metrics endpoint's request reader
//! (`pollux_core::metrics::parse_request`), fed whatever a client sends on
//! the metrics port.
//!
//! Input: the bytes received so far.
//!
//! Invariants: no panic; "incomplete" only while within the request size
//! limit and without the head's end; a verdict, once given, does not change
//! with more bytes (what follows the head is ignored), and the same bytes
//! always give the same verdict; metrics only for a request line that
//! starts `GET /metrics`.

use pollux_core::metrics::{Request, parse_request};

pub fn metrics_http(data: &[u8]) {
    let v = parse_request(data);
    assert_eq!(v, parse_request(data));
    let ended = data.windows(4).any(|w| w == b"\r\n\r\n");
    if v == Request::Incomplete {
        assert!(!ended && data.len() <= 8192, "incomplete with {} bytes", data.len());
    } else {
        let mut more = data.to_vec();
        more.extend_from_slice(b"GET /metrics HTTP/1.1\r\n\r\n");
        assert_eq!(parse_request(&more), v, "more bytes changed the verdict");
    }
    if v == Request::Metrics {
        let line = data.split(|&b| b == b'\n').next().unwrap_or_default();
        assert!(line.starts_with(b"GET /metrics"), "metrics for {line:?}");
    }
}
