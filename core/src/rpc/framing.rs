//! Splitting a byte stream into JSON-RPC messages, and the request/response
//! objects of JSON-RPC 2.0.
//!
//! JSON-RPC over a stream socket has no length prefix: a message ends where
//! its top-level JSON value ends. Requests may arrive in pieces or several
//! in one read. The decoder scans new bytes once (tracking nesting, strings
//! and escapes) and only parses a value when its last byte has arrived, so a
//! large request sent slowly costs linear, not quadratic, time.

use serde_json::{Map, Value};

use super::{RpcError, RpcResult};

/// The largest request accepted; a connection that sends more is closed.
pub const MAX_REQUEST_BYTES: usize = 16 << 20;

/// A stream that cannot be resynchronised: answer with a parse error and close.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    #[error("invalid JSON: {0}")]
    Syntax(String),
    #[error("request larger than {MAX_REQUEST_BYTES} bytes")]
    TooLarge,
}

/// Incremental splitter of a byte stream into JSON values.
///
/// Consumed bytes are not removed one value at a time (that made a stream
/// of many small values quadratic): `head` moves past them, and the buffer
/// is compacted when the consumed part is at least half of it.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
    /// Start of the bytes not yet returned as values.
    head: usize,
    /// Next byte to scan (absolute index into `buf`).
    pos: usize,
    depth: usize,
    in_string: bool,
    escape: bool,
    /// Scanning a top-level string (its end is its closing quote).
    top_string: bool,
}

/// A buffer larger than this is shrunk once what it holds is consumed.
const SHRINK_ABOVE: usize = 256 << 10;

/// The longest top-level number or literal: such a value is parsed again
/// as each piece of it arrives, so it is kept short.
const MAX_SCALAR_BYTES: usize = 4096;

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Append bytes read from the socket.
    pub fn push(&mut self, data: &[u8]) {
        if self.head > 0 && self.head >= self.buf.len() / 2 {
            self.buf.drain(..self.head);
            self.pos -= self.head;
            self.head = 0;
            // Memory a large request took goes back once it is consumed: an
            // idle client keeps no more than a small buffer.
            if self.buf.capacity() > SHRINK_ABOVE && self.buf.len() + data.len() < SHRINK_ABOVE / 4 {
                self.buf.shrink_to(SHRINK_ABOVE / 4);
            }
        }
        self.buf.extend_from_slice(data);
    }

    /// Bytes of memory the buffer holds.
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Bytes buffered but not yet returned as values.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.head
    }

    /// Whether only whitespace is buffered.
    pub fn is_idle(&self) -> bool {
        self.buf[self.head..].iter().all(u8::is_ascii_whitespace)
    }

    /// Mark `n` more bytes as returned.
    fn consume(&mut self, n: usize) {
        self.head += n;
        self.pos = self.head;
        if self.head == self.buf.len() {
            self.buf.clear();
            self.head = 0;
            self.pos = 0;
            if self.buf.capacity() > SHRINK_ABOVE {
                self.buf.shrink_to(SHRINK_ABOVE / 4);
            }
        }
    }

    /// The next complete value, `Ok(None)` if more bytes are needed.
    pub fn next_value(&mut self) -> Result<Option<Value>, FramingError> {
        if self.depth == 0 && !self.top_string {
            // Skip whitespace between values.
            let skip = self.buf[self.head..].iter().take_while(|b| b.is_ascii_whitespace()).count();
            if skip > 0 {
                self.consume(skip);
            }
            match self.buf.get(self.head) {
                None => return Ok(None),
                Some(b'{' | b'[') => {}
                Some(b'"') => {
                    // Scanned like a container, once, to its closing quote.
                    self.top_string = true;
                    self.in_string = true;
                    self.pos = self.head + 1;
                }
                Some(_) => return self.next_scalar(),
            }
        }
        while self.pos < self.buf.len() {
            let b = self.buf[self.pos];
            self.pos += 1;
            if self.in_string {
                if self.escape {
                    self.escape = false;
                } else if b == b'\\' {
                    self.escape = true;
                } else if b == b'"' {
                    self.in_string = false;
                    if self.top_string {
                        self.top_string = false;
                        let end = self.pos;
                        let parsed = serde_json::from_slice::<Value>(&self.buf[self.head..end]);
                        self.consume(end - self.head);
                        return parsed.map(Some).map_err(|e| FramingError::Syntax(e.to_string()));
                    }
                }
                continue;
            }
            match b {
                b'"' => self.in_string = true,
                b'{' | b'[' => self.depth += 1,
                b'}' | b']' => {
                    self.depth = self.depth.saturating_sub(1);
                    if self.depth == 0 {
                        let end = self.pos;
                        let parsed = serde_json::from_slice::<Value>(&self.buf[self.head..end]);
                        self.consume(end - self.head);
                        return parsed.map(Some).map_err(|e| FramingError::Syntax(e.to_string()));
                    }
                }
                _ => {}
            }
        }
        if self.pending() > MAX_REQUEST_BYTES {
            return Err(FramingError::TooLarge);
        }
        Ok(None)
    }

    /// A top-level value that is not an object or array: a number, string,
    /// literal, or garbage. Never a valid request, but answered correctly.
    /// A number or literal ends only where a byte that cannot continue it
    /// arrives, so one that reaches the end of the buffer waits for more:
    /// `12` sent as `1` then `2` is one value, as when sent at once.
    fn next_scalar(&mut self) -> Result<Option<Value>, FramingError> {
        let rest = &self.buf[self.head..];
        let mut it = serde_json::Deserializer::from_slice(rest).into_iter::<Value>();
        match it.next() {
            Some(Ok(v)) => {
                let end = it.byte_offset();
                // The same answer however the bytes came: too long is an
                // error whether or not its end has arrived.
                if end > MAX_SCALAR_BYTES {
                    return Err(FramingError::Syntax(format!("a top-level number or literal of more than {MAX_SCALAR_BYTES} bytes")));
                }
                if end == rest.len() {
                    return Ok(None);
                }
                self.consume(end);
                Ok(Some(v))
            }
            Some(Err(e)) if e.is_eof() => {
                if rest.len() > MAX_SCALAR_BYTES {
                    Err(FramingError::Syntax(format!("a top-level number or literal of more than {MAX_SCALAR_BYTES} bytes")))
                } else {
                    Ok(None)
                }
            }
            Some(Err(e)) => {
                // A number or literal that reaches the end of what came may
                // still change: 400 digits are out of range, but not when
                // `e-300` follows. Judge it once a byte ends it.
                let token = rest.iter().take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.')).count();
                let may_continue = matches!(rest[0], b'-' | b'0'..=b'9' | b't' | b'f' | b'n');
                if may_continue && token == rest.len() && rest.len() <= MAX_SCALAR_BYTES {
                    Ok(None)
                } else {
                    Err(FramingError::Syntax(e.to_string()))
                }
            }
            None => Ok(None),
        }
    }
}

/// A validated request.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// `None` for a notification (no `id` member): it gets no response.
    pub id: Option<Value>,
    pub method: String,
    pub params: Option<Value>,
}

/// Validate one request object. On error returns the id to answer with
/// (`null` when it could not be read) and the error.
pub fn parse_request(v: Value) -> Result<Request, (Value, RpcError)> {
    let Value::Object(mut obj) = v else {
        return Err((Value::Null, RpcError::invalid_request("a request must be a JSON object")));
    };
    let id = obj.remove("id");
    let reply_id = match &id {
        None => Value::Null,
        Some(i @ (Value::Null | Value::Number(_) | Value::String(_))) => i.clone(),
        Some(_) => return Err((Value::Null, RpcError::invalid_request("'id' must be a number, a string or null"))),
    };
    let fail = |msg: &str| Err((reply_id.clone(), RpcError::invalid_request(msg)));
    match obj.remove("jsonrpc") {
        Some(Value::String(s)) if s == "2.0" => {}
        Some(_) => return fail("'jsonrpc' must be \"2.0\""),
        None => return fail("missing 'jsonrpc' member"),
    }
    let method = match obj.remove("method") {
        Some(Value::String(s)) => s,
        Some(_) => return fail("'method' must be a string"),
        None => return fail("missing 'method' member"),
    };
    let params = match obj.remove("params") {
        None => None,
        Some(p @ (Value::Object(_) | Value::Array(_))) => Some(p),
        Some(Value::Null) => None,
        Some(_) => return fail("'params' must be an object or an array"),
    };
    if let Some(k) = obj.keys().next() {
        return Err((reply_id, RpcError::invalid_request(format!("unknown member '{k}'"))));
    }
    Ok(Request { id, method, params })
}

/// Build a response object.
pub fn response(id: Value, result: RpcResult) -> Value {
    let mut obj = Map::new();
    obj.insert("jsonrpc".into(), Value::from("2.0"));
    obj.insert("id".into(), id);
    match result {
        Ok(v) => obj.insert("result".into(), v),
        Err(e) => obj.insert("error".into(), serde_json::to_value(e).expect("error serialises")),
    };
    Value::Object(obj)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn all(d: &mut Decoder) -> Vec<Value> {
        let mut out = Vec::new();
        while let Some(v) = d.next_value().unwrap() {
            out.push(v);
        }
        out
    }

    #[test]
    fn splits_values_sent_back_to_back_and_in_pieces() {
        let text = br#"{"a":1}{"b":"}{\"["} [1,2] {"c":{"d":[]}}"#;
        // Every split point gives the same values.
        for cut in 0..text.len() {
            let mut d = Decoder::new();
            d.push(&text[..cut]);
            let mut got = all(&mut d);
            d.push(&text[cut..]);
            got.extend(all(&mut d));
            assert_eq!(got, vec![json!({"a":1}), json!({"b":"}{\"["}), json!([1, 2]), json!({"c":{"d":[]}})], "cut at {cut}");
        }
    }

    #[test]
    fn byte_at_a_time() {
        let text = "{\"jsonrpc\": \"2.0\",\n \"method\": \"x\\\"y\", \"id\": 1}\n";
        let mut d = Decoder::new();
        let mut got = Vec::new();
        for b in text.as_bytes() {
            d.push(&[*b]);
            got.extend(all(&mut d));
        }
        assert_eq!(got, vec![json!({"jsonrpc":"2.0","method":"x\"y","id":1})]);
        assert!(d.is_idle());
    }

    #[test]
    fn malformed_json_is_a_syntax_error() {
        let mut d = Decoder::new();
        d.push(b"{\"a\":}");
        assert!(matches!(d.next_value(), Err(FramingError::Syntax(_))));
        let mut d = Decoder::new();
        d.push(b"hello");
        assert!(matches!(d.next_value(), Err(FramingError::Syntax(_))));
        let mut d = Decoder::new();
        d.push(b"{\"a\":1]");
        assert!(matches!(d.next_value(), Err(FramingError::Syntax(_))));
    }

    #[test]
    fn scalars_are_returned_for_the_caller_to_reject() {
        let mut d = Decoder::new();
        d.push(b" 42 \"s\" ");
        assert_eq!(all(&mut d), vec![json!(42), json!("s")]);
        // A number or literal at the end of what came so far may go on.
        for (first, rest, want) in [("1", "2 ", json!(12)), ("tr", "ue\n", json!(true)), ("-", "0.5{", json!(-0.5))] {
            let mut d = Decoder::new();
            d.push(first.as_bytes());
            assert_eq!(d.next_value(), Ok(None), "{first:?} waits");
            d.push(rest.as_bytes());
            assert_eq!(d.next_value(), Ok(Some(want)));
        }
    }

    #[test]
    fn many_small_values_and_long_strings_in_pieces() {
        // A megabyte of tiny values, in 64 KiB reads: every one comes out
        // (each is consumed by moving a mark, not by shifting the buffer).
        let text = "1 ".repeat(512 * 1024);
        let mut d = Decoder::new();
        let mut n = 0;
        for piece in text.as_bytes().chunks(64 * 1024) {
            d.push(piece);
            n += all(&mut d).len();
        }
        d.push(b"\n");
        n += all(&mut d).len();
        assert_eq!(n, 512 * 1024);
        assert!(d.is_idle() && d.pending() <= 1);
        // A top-level string in pieces is scanned once, to its quote.
        let mut d = Decoder::new();
        d.push(b"\"ab");
        assert_eq!(d.next_value(), Ok(None));
        d.push(b"c\\\"d\" {}");
        assert_eq!(all(&mut d), vec![json!("abc\"d"), json!({})]);
        // A number out of range while its digits come, in range once its
        // exponent has: one value (found by the jsonrpc_framing target).
        let long = format!("{}e-300 ", "2".repeat(400));
        let mut d = Decoder::new();
        let mut got = Vec::new();
        for b in long.as_bytes() {
            d.push(std::slice::from_ref(b));
            got.extend(all(&mut d));
        }
        assert_eq!(got.len(), 1, "{got:?}");
        // A number too long to be one, whether its end came with it or not.
        for tail in ["", " "] {
            let mut d = Decoder::new();
            d.push(format!("{}{tail}", "9".repeat(MAX_SCALAR_BYTES + 1)).as_bytes());
            assert!(matches!(d.next_value(), Err(FramingError::Syntax(_))), "tail {tail:?}");
        }
    }

    #[test]
    fn the_memory_of_a_large_request_goes_back_once_it_is_consumed() {
        let mut d = Decoder::new();
        let big = format!("{{\"a\":\"{}\"}}\n", "x".repeat(8 << 20));
        for piece in big.as_bytes().chunks(64 * 1024) {
            d.push(piece);
        }
        assert!(d.capacity() >= 8 << 20);
        assert_eq!(all(&mut d).len(), 1);
        assert!(d.capacity() <= SHRINK_ABOVE, "an idle decoder holds {} bytes", d.capacity());
        d.push(b"{}");
        assert_eq!(all(&mut d), vec![json!({})]);
    }

    #[test]
    fn oversized_requests_are_refused() {
        let mut d = Decoder::new();
        d.push(b"[\"");
        d.push(&vec![b'a'; MAX_REQUEST_BYTES]);
        assert_eq!(d.next_value(), Err(FramingError::TooLarge));
    }

    #[test]
    fn request_validation() {
        let ok = parse_request(json!({"jsonrpc":"2.0","method":"m","id":"x","params":{"a":1}})).unwrap();
        assert_eq!(ok, Request { id: Some(json!("x")), method: "m".into(), params: Some(json!({"a":1})) });
        let note = parse_request(json!({"jsonrpc":"2.0","method":"m"})).unwrap();
        assert_eq!(note.id, None);
        let cases = [
            (json!([1]), Value::Null),
            (json!({"method":"m","id":3}), json!(3)),
            (json!({"jsonrpc":"1.0","method":"m","id":3}), json!(3)),
            (json!({"jsonrpc":"2.0","id":3}), json!(3)),
            (json!({"jsonrpc":"2.0","method":5,"id":3}), json!(3)),
            (json!({"jsonrpc":"2.0","method":"m","params":7,"id":3}), json!(3)),
            (json!({"jsonrpc":"2.0","method":"m","id":{}}), Value::Null),
            (json!({"jsonrpc":"2.0","method":"m","id":1,"extra":1}), json!(1)),
        ];
        for (req, id) in cases {
            let (got_id, err) = parse_request(req.clone()).unwrap_err();
            assert_eq!(got_id, id, "{req}");
            assert_eq!(err.code, RpcError::INVALID_REQUEST, "{req}");
        }
    }

    #[test]
    fn responses_have_the_spec_shape() {
        assert_eq!(response(json!(1), Ok(json!(true))), json!({"jsonrpc":"2.0","id":1,"result":true}));
        assert_eq!(
            response(Value::Null, Err(RpcError::method_not_found("x"))),
            json!({"jsonrpc":"2.0","id":null,"error":{"code":-32601,"message":"Method not found: x"}})
        );
    }
}
