//! Bad RPC input gets the right JSON-RPC error or is dropped, and the daemon
//! keeps serving everyone else.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use pollux_core::rpc::{Client, ClientError, RpcError};
use pollux_tests::{Daemon, DaemonOpts, rss_bytes};
use serde_json::{Value, json};

fn raw(d: &Daemon) -> Client {
    let c = d.client();
    c.set_timeout(Some(Duration::from_secs(10))).unwrap();
    c
}

fn error_code(v: &Value) -> i64 {
    v["error"]["code"].as_i64().unwrap_or_else(|| panic!("not an error response: {v}"))
}

fn still_serving(d: &Daemon) {
    assert_eq!(d.call("spdk_get_version", None).unwrap()["fields"]["major"], json!(0));
}

#[test]
fn malformed_json_gets_a_parse_error_and_only_that_connection_closes() {
    let d = Daemon::start(DaemonOpts::default());
    let mut bystander = raw(&d);
    let mut c = raw(&d);
    c.send_raw(b"{\"jsonrpc\": \"2.0\", \"method\": ").unwrap();
    c.send_raw(b"}").unwrap();
    let resp = c.read_value().unwrap();
    assert_eq!(error_code(&resp), RpcError::PARSE_ERROR as i64);
    assert_eq!(resp["id"], Value::Null);
    assert!(matches!(c.read_value(), Err(ClientError::Closed)), "connection closed after a parse error");
    // Another client's connection is untouched.
    assert!(bystander.call("rpc_get_methods", None).is_ok());
    still_serving(&d);
}

#[test]
fn invalid_requests_unknown_methods_and_bad_params() {
    let d = Daemon::start(DaemonOpts::default());
    let mut c = raw(&d);
    let cases: Vec<(Value, i32, Value)> = vec![
        (json!({"method": "rpc_get_methods", "id": 1}), RpcError::INVALID_REQUEST, json!(1)),
        (json!({"jsonrpc": "2.0", "id": 2}), RpcError::INVALID_REQUEST, json!(2)),
        (json!({"jsonrpc": "2.0", "method": 7, "id": 3}), RpcError::INVALID_REQUEST, json!(3)),
        (json!("just a string"), RpcError::INVALID_REQUEST, Value::Null),
        (json!({"jsonrpc": "2.0", "method": "no_such_method", "id": 4}), RpcError::METHOD_NOT_FOUND, json!(4)),
        (json!({"jsonrpc": "2.0", "method": "framework_get_config", "params": {"name": 5}, "id": 5}), RpcError::INVALID_PARAMS, json!(5)),
        (json!({"jsonrpc": "2.0", "method": "framework_get_config", "params": {}, "id": 6}), RpcError::INVALID_PARAMS, json!(6)),
        (
            json!({"jsonrpc": "2.0", "method": "rpc_get_methods", "params": {"currant": true}, "id": "x"}),
            RpcError::INVALID_PARAMS,
            json!("x"),
        ),
        (json!({"jsonrpc": "2.0", "method": "log_set_level", "params": {"level": "LOUD"}, "id": 8}), RpcError::INVALID_PARAMS, json!(8)),
        (json!({"jsonrpc": "2.0", "method": "spdk_get_version", "params": [1], "id": 9}), RpcError::INVALID_PARAMS, json!(9)),
    ];
    for (req, code, id) in cases {
        c.send_raw(serde_json::to_string(&req).unwrap().as_bytes()).unwrap();
        let resp = c.read_value().unwrap();
        assert_eq!(error_code(&resp), code as i64, "{req} -> {resp}");
        assert_eq!(resp["id"], id, "{req} -> {resp}");
    }
    // Invalid params name the parameter.
    let e = d.call("rpc_get_methods", Some(json!({"currant": true}))).unwrap_err();
    assert!(e.to_string().contains("'currant'"), "{e}");
    let e = d.call("framework_get_config", Some(json!({"name": 5}))).unwrap_err();
    assert!(e.to_string().contains("'name'"), "{e}");
    still_serving(&d);
}

#[test]
fn requests_in_pieces_back_to_back_and_batched() {
    let d = Daemon::start(DaemonOpts::default());
    let mut s = UnixStream::connect(&d.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let one = r#"{"jsonrpc":"2.0","method":"spdk_get_version","id":1}"#;
    let two = r#"{"jsonrpc":"2.0","method":"log_get_level","id":2}"#;
    // Byte by byte with pauses, then two glued together, then a batch with a
    // notification (no id) that must get no answer.
    for b in one.as_bytes() {
        s.write_all(&[*b]).unwrap();
        std::thread::sleep(Duration::from_micros(300));
    }
    s.write_all(format!("{two}{one}").as_bytes()).unwrap();
    s.write_all(br#"[{"jsonrpc":"2.0","method":"log_get_level","id":10},{"jsonrpc":"2.0","method":"log_get_level"},{"jsonrpc":"2.0","method":"nope","id":11}]"#).unwrap();
    s.write_all(b"[]").unwrap();
    let mut dec = pollux_core::rpc::Decoder::new();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while got.len() < 5 {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed early; got {got:?}");
        dec.push(&buf[..n]);
        while let Some(v) = dec.next_value().unwrap() {
            got.push(v);
        }
    }
    let ids: Vec<Value> = got[..3].iter().map(|v| v["id"].clone()).collect();
    assert_eq!(ids, vec![json!(1), json!(2), json!(1)]);
    let batch = got[3].as_array().expect("batch answer is an array");
    assert_eq!(batch.len(), 2, "notification in a batch gets no answer: {batch:?}");
    assert_eq!(batch[0]["id"], 10);
    assert_eq!(batch[1]["error"]["code"], RpcError::METHOD_NOT_FOUND);
    assert_eq!(got[4]["error"]["code"], RpcError::INVALID_REQUEST, "empty batch");
}

#[test]
fn half_sent_request_then_disconnect_is_dropped() {
    let d = Daemon::start(DaemonOpts::default());
    for _ in 0..20 {
        let mut s = UnixStream::connect(&d.socket).unwrap();
        s.write_all(br#"{"jsonrpc":"2.0","method":"spdk_get_ver"#).unwrap();
        drop(s);
    }
    // A client that stays connected with half a request does not block others.
    let mut slow = UnixStream::connect(&d.socket).unwrap();
    slow.write_all(br#"{"jsonrpc":"2.0","method":"#).unwrap();
    still_serving(&d);
    // ...and gets its answer when it finishes.
    slow.write_all(br#""spdk_get_version","id":42}"#).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 4096];
    let n = slow.read(&mut buf).unwrap();
    let v: Value = serde_json::from_slice(&buf[..n]).unwrap();
    assert_eq!(v["id"], 42);
    // Half a request, then a half-close: answered only if complete, so closed.
    let mut half = UnixStream::connect(&d.socket).unwrap();
    half.write_all(br#"{"jsonrpc":"2.0","method":"spdk_get_version","id":1}"#).unwrap();
    half.shutdown(std::net::Shutdown::Write).unwrap();
    half.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut out = String::new();
    half.read_to_string(&mut out).unwrap();
    assert!(out.contains("\"id\":1"), "a complete request before EOF is still answered: {out:?}");
    still_serving(&d);
}

#[test]
fn a_thousand_rapid_connects() {
    let d = Daemon::start(DaemonOpts::default());
    let mut answered = 0;
    for i in 0..1000 {
        let mut s = UnixStream::connect(&d.socket).unwrap();
        if i % 10 == 0 {
            // Some of them ask something and wait for the answer.
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.write_all(br#"{"jsonrpc":"2.0","method":"spdk_get_version","id":1}"#).unwrap();
            let mut buf = [0u8; 1024];
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0);
            answered += 1;
        }
    }
    assert_eq!(answered, 100);
    // Many held open at once.
    let held: Vec<UnixStream> = (0..300).map(|_| UnixStream::connect(&d.socket).unwrap()).collect();
    still_serving(&d);
    drop(held);
    still_serving(&d);
    assert!(d.log().lines().all(|l| !l.contains("panicked")), "{}", d.log());
}

#[test]
fn oversized_request_is_refused_and_connection_closed() {
    let d = Daemon::start(DaemonOpts::default());
    let mut s = UnixStream::connect(&d.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let writer = {
        let mut s = s.try_clone().unwrap();
        std::thread::spawn(move || {
            let _ = s.write_all(b"{\"jsonrpc\":\"2.0\",\"method\":\"x\",\"params\":{\"a\":\"");
            let chunk = vec![b'a'; 1 << 20];
            for _ in 0..20 {
                if s.write_all(&chunk).is_err() {
                    break;
                }
            }
        })
    };
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    writer.join().unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("-32700"), "{text}");
    still_serving(&d);
}

/// A client that sends requests and never reads the answers: its requests
/// wait unread once 8 MiB of answers (or 256 requests) are queued, so the
/// daemon does not grow (unbounded, this flood queued gigabytes), and other
/// clients are served meanwhile.
#[test]
fn a_client_that_never_reads_its_answers_is_held_back() {
    let bdevs: Vec<Value> = (0..64)
        .map(|i| json!({"method": "bdev_malloc_create", "params": {"name": format!("Big{i}"), "num_blocks": 2048, "block_size": 512}}))
        .collect();
    let d =
        Daemon::start(DaemonOpts { config: Some(json!({"subsystems": [{"subsystem": "bdev", "config": bdevs}]})), ..Default::default() });
    let before = rss_bytes(d.pid());
    let mut s = UnixStream::connect(&d.socket).unwrap();
    s.set_nonblocking(true).unwrap();
    // Each answer is a list of 64 bdevs (some 60 KiB): 50,000 of them would
    // be some 3 GB.
    let req = br#"{"jsonrpc":"2.0","method":"bdev_get_bdevs","id":1}"#;
    let mut sent = 0;
    let mut pending: &[u8] = &[];
    let t0 = std::time::Instant::now();
    while sent < 50_000 && t0.elapsed() < Duration::from_secs(10) {
        if pending.is_empty() {
            pending = req;
            sent += 1;
        }
        match s.write(pending) {
            Ok(n) => pending = &pending[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::yield_now(),
            Err(e) => panic!("the daemon closed the flooding client: {e}"),
        }
    }
    // Whatever the daemon took in is handled by now: another client's call
    // is answered after it.
    still_serving(&d);
    let grown = rss_bytes(d.pid()).saturating_sub(before);
    assert!(grown < 256 << 20, "the daemon grew by {} MiB for one client that does not read ({sent} requests sent)", grown >> 20);
    // The flooder still gets its answers when it reads.
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    assert!(s.read(&mut buf).unwrap() > 0);
    drop(s);
    still_serving(&d);
}

/// With every client slot taken by idle clients, a new client takes the
/// place of the one idle the longest (it was locked out before).
#[test]
fn a_new_client_takes_the_place_of_the_longest_idle_one() {
    let d = Daemon::start(DaemonOpts::default());
    // 1,024 clients, each known to the server (it answered each once).
    let mut idle = Vec::new();
    for _ in 0..1024 {
        let mut c = raw(&d);
        c.call("spdk_get_version", None).unwrap();
        idle.push(c);
    }
    still_serving(&d);
    // The oldest was closed for the newest.
    let e = idle[0].call("spdk_get_version", None).unwrap_err();
    assert!(matches!(e, ClientError::Io(_) | ClientError::Closed), "the longest idle client is closed: {e}");
    assert!(idle[1023].call("spdk_get_version", None).is_ok(), "a recent client is still served");
}

/// A client that stops in the middle of a request, or sends the rest a
/// byte at a time, is answered with an error and closed once the request
/// has been unfinished for 30 s (it was kept, with its buffer, for ever).
#[test]
fn a_request_left_unfinished_is_answered_and_closed_after_the_timeout() {
    let d = Daemon::start(DaemonOpts::default());
    let mut stopped = UnixStream::connect(&d.socket).unwrap();
    stopped.write_all(br#"{"jsonrpc":"2.0","method":"spdk_get_version","#).unwrap();
    let mut trickle = UnixStream::connect(&d.socket).unwrap();
    trickle.write_all(br#"{"jsonrpc":"2.0","method":"spdk_get_version","params":{"a":""#).unwrap();
    trickle.set_nonblocking(true).unwrap();
    let t0 = std::time::Instant::now();
    // The trickling client sends a byte of its string every 500 ms until it
    // is answered: new bytes do not put its deadline off.
    let mut answer = Vec::new();
    while t0.elapsed() < Duration::from_secs(90) {
        let mut buf = [0u8; 4096];
        match trickle.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if trickle.write(b"x").is_err() {
                    // Closed: what was written before the close is still read.
                    continue;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(_) => break,
        }
    }
    let elapsed = t0.elapsed();
    let text = String::from_utf8_lossy(&answer);
    assert!(text.contains("unfinished after 30 s"), "the trickling client was answered {text:?} after {elapsed:?}");
    assert!(elapsed >= Duration::from_secs(29), "closed after {elapsed:?}, before its time");
    let v: Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(error_code(&v), -32600);
    // The client that stopped is closed too.
    stopped.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut out = String::new();
    stopped.read_to_string(&mut out).unwrap();
    assert!(out.contains("unfinished after 30 s"), "{out:?}");
    still_serving(&d);
    assert!(d.log().contains("request unfinished after 30 s"), "{}", d.log());
}

/// Many clients each sending a large request and not finishing it cannot
/// together make the daemon buffer more than the budget of unfinished
/// requests: past it, the client whose request would go over is refused.
/// (300 unfinished 1 MiB requests were 300 MiB held.)
#[test]
fn clients_together_cannot_buffer_more_than_the_unfinished_budget() {
    let d = Daemon::start(DaemonOpts::default());
    let before = rss_bytes(d.pid());
    let mut body = br#"{"jsonrpc":"2.0","method":"spdk_get_version","params":{"a":""#.to_vec();
    body.resize(1 << 20, b'x');
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..300 {
        let mut s = UnixStream::connect(&d.socket).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
        if s.write_all(&body).is_err() {
            refused += 1;
            continue;
        }
        held.push(s);
    }
    // Every request is taken in (or refused) before the daemon answers this.
    still_serving(&d);
    let grown = rss_bytes(d.pid()).saturating_sub(before);
    // The others were answered (or reset) and closed.
    let mut closed = 0;
    for s in &mut held {
        s.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 4096];
        match s.read(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            _ => closed += 1,
        }
    }
    eprintln!("the daemon grew by {} MiB for 300 unfinished requests of 1 MiB", grown >> 20);
    assert!(grown < 192 << 20, "the daemon grew by {} MiB for 300 unfinished requests of 1 MiB", grown >> 20);
    assert!(refused + closed >= 200, "refused {refused} while writing, {closed} closed after");
    assert!(d.log().contains("of unfinished requests are buffered"), "{}", d.log());
    drop(held);
    still_serving(&d);
}

/// SIGTERM ends the daemon within its shutdown deadline whatever its RPC
/// clients do: one not reading its answers, one half-way through a large
/// request, one that sent a megabyte of tiny values (after such clients
/// SIGTERM once took 53 s).
#[test]
fn sigterm_exits_within_the_deadline_whatever_rpc_clients_do() {
    let mut d = Daemon::start(DaemonOpts { cpumask: "0x3".into(), ..Default::default() });
    let mut flood = UnixStream::connect(&d.socket).unwrap();
    flood.set_nonblocking(true).unwrap();
    let req = br#"{"jsonrpc":"2.0","method":"bdev_get_bdevs","id":1}"#;
    let t0 = std::time::Instant::now();
    let mut pending: &[u8] = &[];
    while t0.elapsed() < Duration::from_secs(2) {
        if pending.is_empty() {
            pending = req;
        }
        match flood.write(pending) {
            Ok(n) => pending = &pending[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("{e}"),
        }
    }
    let mut half = UnixStream::connect(&d.socket).unwrap();
    let mut body = br#"{"jsonrpc":"2.0","method":"spdk_get_version","params":{"a":""#.to_vec();
    body.resize(4 << 20, b'x');
    half.write_all(&body).unwrap();
    // Each value is answered with an error this client does not read: it
    // is held back once 8 MiB of answers wait, so not all of it is taken.
    let mut tiny = UnixStream::connect(&d.socket).unwrap();
    tiny.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    let _ = tiny.write_all("1 ".repeat(512 * 1024).as_bytes());
    still_serving(&d);
    d.signal(libc::SIGTERM);
    let st = d.wait_exit(Duration::from_secs(15)).unwrap_or_else(|| panic!("no exit within 15 s of SIGTERM; log:\n{}", d.log()));
    assert_eq!(st.code(), Some(0), "log:\n{}", d.log());
}
