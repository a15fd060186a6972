use super::*;
use serde_json::json;
use std::sync::{Arc, Mutex};

fn call(m: &Methods, method: &str, params: Option<Value>) -> RpcResult {
    let out = Arc::new(Mutex::new(None));
    let o = out.clone();
    m.call(method, params, Responder::new(move |r| *o.lock().unwrap() = Some(r)));
    let r = out.lock().unwrap().take();
    r.expect("synchronous handler answered")
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Create {
    name: String,
    #[serde(default)]
    block_size: Option<u32>,
}

fn table() -> Methods {
    let m = Methods::new();
    m.register("create", States::RUNTIME, |p: Create, r: Responder| r.ok(json!([p.name, p.block_size])));
    m.register("early", States::STARTUP, |_: NoParams, r: Responder| r.ok(true));
    m.register("none", States::ANY, |_: NoParams, r: Responder| r.ok(true));
    m.register_raw("silent", States::ANY, |_, _r| {});
    m
}

#[test]
fn typed_params_decode_and_errors_name_the_parameter() {
    let m = table();
    m.set_state(RpcState::Runtime);
    assert_eq!(call(&m, "create", Some(json!({"name": "a", "block_size": 512}))), Ok(json!(["a", 512])));
    let e = call(&m, "create", Some(json!({"name": "a", "colour": 1}))).unwrap_err();
    assert_eq!(e.code, RpcError::INVALID_PARAMS);
    assert!(e.message.contains("unknown parameter 'colour'"), "{}", e.message);
    assert!(e.message.contains("name, block_size"), "{}", e.message);
    let e = call(&m, "create", Some(json!({}))).unwrap_err();
    assert!(e.message.contains("missing required parameter 'name'"), "{}", e.message);
    let e = call(&m, "create", Some(json!({"name": "a", "block_size": "big"}))).unwrap_err();
    assert!(e.message.contains("parameter 'block_size'"), "{}", e.message);
    assert!(e.message.contains("invalid type"), "{}", e.message);
    let e = call(&m, "create", Some(json!(["a"]))).unwrap_err();
    assert_eq!(e.code, RpcError::INVALID_PARAMS);
    let e = call(&m, "none", Some(json!({"x": 1}))).unwrap_err();
    assert!(e.message.contains("takes no parameters"), "{}", e.message);
}

#[test]
fn unknown_methods_and_wrong_states() {
    let m = table();
    assert_eq!(call(&m, "nope", None).unwrap_err().code, RpcError::METHOD_NOT_FOUND);
    // Start-up: runtime methods refused, start-up methods allowed.
    assert_eq!(call(&m, "create", Some(json!({"name": "a"}))).unwrap_err().code, RpcError::INVALID_STATE);
    assert_eq!(call(&m, "early", None), Ok(json!(true)));
    m.set_state(RpcState::Runtime);
    assert_eq!(call(&m, "early", None).unwrap_err().code, RpcError::INVALID_STATE);
}

#[test]
fn method_lists_and_aliases() {
    let m = table();
    m.alias("old_none", "none");
    assert_eq!(m.names(false, false), vec!["create", "early", "none", "silent"]);
    assert_eq!(m.names(true, false), vec!["early", "none", "silent"]);
    assert!(m.names(false, true).contains(&"old_none".to_string()));
    assert_eq!(call(&m, "old_none", None), Ok(json!(true)));
}

#[test]
fn a_dropped_responder_still_answers() {
    let m = table();
    let e = call(&m, "silent", None).unwrap_err();
    assert_eq!(e.code, RpcError::INTERNAL_ERROR);
}
