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

/// A call still being worked on when the server stops (a bdev delete whose
/// users are stopping at shutdown) gets its answer; a connection with
/// nothing pending closes at once; the socket file goes.
#[test]
fn a_stopping_server_still_delivers_answers_in_progress() {
    use std::cell::RefCell;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    use std::rc::Rc;

    let dir = std::env::temp_dir().join(format!("pollux-rpc-stop-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("rpc.sock");
    let h = crate::reactor::Harness::new(1);
    let held: Rc<RefCell<Option<Responder>>> = Rc::new(RefCell::new(None));
    let m = Rc::new(Methods::new());
    let keep = held.clone();
    m.register_raw("later", States::ANY, move |_, r| *keep.borrow_mut() = Some(r));
    m.set_state(RpcState::Runtime);
    let server = h.on(0, || RpcServer::start(&path, m.clone(), true).expect("server"));
    let mut busy = UnixStream::connect(&path).unwrap();
    let mut idle = UnixStream::connect(&path).unwrap();
    busy.write_all(br#"{"jsonrpc":"2.0","method":"later","id":7}"#).unwrap();
    // The server runs on a timed poller: step until the call arrived.
    let t0 = std::time::Instant::now();
    while held.borrow().is_none() {
        assert!(t0.elapsed() < std::time::Duration::from_secs(10), "the call never arrived");
        h.step(0);
    }
    h.on(0, || server.stop());
    assert!(!path.exists(), "the socket file is removed at stop");
    let mut b = [0u8; 16];
    idle.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
    assert_eq!(idle.read(&mut b).unwrap(), 0, "a connection with nothing pending is closed");
    // The answer comes after the stop, larger than the socket's buffers,
    // and is delivered whole while the client reads it.
    let big = "x".repeat(4 << 20);
    h.on(0, || held.borrow_mut().take().unwrap().ok(json!(big)));
    let reader = std::thread::spawn(move || {
        busy.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
        let mut got = String::new();
        busy.read_to_string(&mut got).map(|_| got)
    });
    let t0 = std::time::Instant::now();
    while !reader.is_finished() {
        assert!(t0.elapsed() < std::time::Duration::from_secs(30), "the answer was never finished");
        h.step(0);
    }
    let got = reader.join().unwrap().expect("read the answer");
    let v: Value = serde_json::from_str(got.trim()).unwrap_or_else(|e| panic!("{e}: {} bytes", got.len()));
    assert_eq!((v["id"].clone(), v["result"].as_str().map(str::len)), (json!(7), Some(4 << 20)));
    assert_eq!(h.on(0, || server.connections()), 0, "the connection is gone once answered");
    let _ = std::fs::remove_dir_all(&dir);
}
