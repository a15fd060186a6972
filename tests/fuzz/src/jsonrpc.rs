//! `jsonrpc_framing`: the JSON-RPC stream decoder (`rpc::Decoder`), request
//! validation (`rpc::parse_request`) of single requests and batches,
//! decoding of named parameters (`rpc::decode_params`), and responses
//! (`rpc::response`).
//!
//! Input: the bytes a client sends on the RPC socket.
//!
//! Invariants: the decoder cuts the same values, and fails at the same
//! one, whatever pieces the bytes arrive in (all at once, byte by byte, and
//! pieces whose sizes come from the input); a value it returns is what
//! `serde_json` makes of its bytes; an invalid request is answered with
//! -32600 and the id it had, when readable; every response is a JSON-RPC
//! 2.0 response object.
//! A top-level number or literal ends only with a byte that cannot continue
//! it, so the decoder waits for that byte (`12` sent as `1` then `2` is one
//! value; this fuzz target found it cut as two).

use pollux_core::rpc::{Decoder, FramingError, NoParams, RpcError, decode_params, parse_request, response};
use serde::Deserialize;
use serde_json::Value;

/// Parameters of a method with every kind of field, to exercise the
/// parameter decoder's errors.
#[allow(dead_code)]
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    name: String,
    size: u64,
    #[serde(default)]
    flag: bool,
    ratio: Option<f64>,
    list: Option<Vec<String>>,
    nested: Option<Nested>,
}

#[allow(dead_code)]
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Nested {
    id: i32,
    tag: Option<String>,
}

pub fn jsonrpc_framing(data: &[u8]) {
    let whole = decode(data, &[data.len().max(1)]);
    let bytewise = decode(data, &[1]);
    // Piece sizes 1..=16 from the input itself.
    let sizes: Vec<usize> = data.iter().map(|b| usize::from(b % 16) + 1).collect();
    let pieces = decode(data, &sizes);
    assert_eq!(whole, bytewise, "the decoder cut the stream differently when it came byte by byte");
    assert_eq!(whole, pieces, "the decoder cut the stream differently when it came in pieces");
    for v in whole.0 {
        dispatch(v);
    }
}

/// Feed `data` in pieces of the given sizes (cycled) and collect values up
/// to the first error.
fn decode(data: &[u8], sizes: &[usize]) -> (Vec<Value>, bool) {
    let mut d = Decoder::new();
    let mut out = Vec::new();
    let mut at = 0;
    let mut i = 0;
    while at < data.len() {
        let n = sizes[i % sizes.len()].min(data.len() - at);
        i += 1;
        d.push(&data[at..at + n]);
        at += n;
        loop {
            match d.next_value() {
                Ok(Some(v)) => out.push(v),
                Ok(None) => break,
                Err(FramingError::Syntax(_)) => return (out, true),
                Err(FramingError::TooLarge) => panic!("{} bytes are not too large", data.len()),
            }
        }
    }
    (out, false)
}

/// What the server does with one value.
fn dispatch(v: Value) {
    match v {
        Value::Array(items) if !items.is_empty() => {
            for item in items {
                one(item);
            }
        }
        v => one(v),
    }
}

fn one(v: Value) {
    let readable_id = match &v {
        Value::Object(o) => match o.get("id") {
            None => Some(Value::Null),
            Some(i @ (Value::Null | Value::Number(_) | Value::String(_))) => Some(i.clone()),
            Some(_) => None,
        },
        _ => None,
    };
    match parse_request(v) {
        Ok(req) => {
            let _ = decode_params::<NoParams>(req.params.clone());
            let p = decode_params::<Params>(req.params.clone());
            if let Err(e) = &p {
                assert_eq!(e.code, RpcError::INVALID_PARAMS, "{e:?}");
            }
            let result = p.map(|p| Value::String(format!("{p:?}")));
            check_response(response(req.id.clone().unwrap_or(Value::Null), result), req.id.as_ref().unwrap_or(&Value::Null));
        }
        Err((id, e)) => {
            assert_eq!(e.code, RpcError::INVALID_REQUEST, "{e:?}");
            assert_eq!(id, readable_id.unwrap_or(Value::Null), "the error response lost the request's id");
            check_response(response(id.clone(), Err(e)), &id);
        }
    }
}

fn check_response(r: Value, id: &Value) {
    let text = serde_json::to_string(&r).expect("a response serialises");
    let back: Value = serde_json::from_str(&text).expect("a response parses back");
    let o = back.as_object().expect("a response is an object");
    assert_eq!(o.get("jsonrpc"), Some(&Value::from("2.0")));
    // A float id may come back a unit in the last place off: serde_json
    // parses floats fast, not exactly (its `float_roundtrip` feature is off).
    if !id.is_f64() {
        assert_eq!(o.get("id"), Some(id), "the response's id is not the request's");
    }
    assert!(o.contains_key("result") != o.contains_key("error"), "a response has a result or an error: {text}");
}
