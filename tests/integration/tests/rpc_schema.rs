//! Every parameter SPDK's schema defines for a method Pollux implements is
//! understood: sending it never gets "unknown field" or "invalid type" back
//! (the value may still be refused: unsupported, out of range, no such
//! object). SPDK's client sends the newest optional parameters, and SPDK's
//! configs carry all of them, so a gap here breaks real clients.
//!
//! `spdk-rpc-params.json` is SPDK's `schema/schema.yaml` (BSD-3-Clause, its
//! header kept under `_license`) reduced to each method's parameters:
//!
//! ```text
//! python3 - <<'PY'
//! import yaml, json
//! src = '../shared/reference/spdk-rpc-schema.yaml'
//! d = yaml.safe_load(open(src))
//! enums = {e['name']: [f['name'] for f in e['fields']] for e in d['enums']}
//! bitmasks = {b['name']: b['enum'] for b in d['bitmasks']}
//! def param(p):
//!     q = {'name': p['name'], 'type': p['type']}
//!     if p.get('required'): q['required'] = True
//!     if p['type'] == 'enum': q['values'] = enums.get(p.get('class'), [])
//!     if p['type'] == 'bitmask': q['values'] = enums.get(bitmasks.get(p.get('class'), ''), [])
//!     return q
//! methods = {m['name']: [param(p) for p in m.get('params', [])] for m in d['methods']}
//! head = ''.join(l for l in open(src) if l.startswith('#')).strip()
//! json.dump({'_source': '...', '_license': head, 'methods': methods},
//!           open('tests/integration/tests/spdk-rpc-params.json', 'w'), indent=0, sort_keys=True)
//! PY
//! ```

use pollux_core::rpc::ClientError;
use pollux_tests::{Daemon, DaemonOpts};
use serde_json::{Map, Value, json};

/// Methods whose side effects end the test's daemon.
const SKIP: &[&str] = &["spdk_kill_instance", "framework_start_init"];

fn sample(p: &Value) -> Value {
    let first = || p["values"].as_array().and_then(|v| v.first()).cloned().unwrap_or_else(|| json!("x"));
    match p["type"].as_str().unwrap() {
        "boolean" => json!(false),
        "string" => json!("x"),
        "uuid" => json!("00000000-0000-4000-8000-000000000001"),
        "enum" => first(),
        "bitmask" => json!([first()]),
        "array" => json!([]),
        "object" => json!({}),
        _ => json!(1), // the integer types
    }
}

/// Send `method` once per schema parameter (with the required ones) and
/// collect the parameters Pollux did not understand.
fn check(d: &Daemon, schema: &Map<String, Value>, methods: &[String], bad: &mut Vec<String>) -> usize {
    let mut calls = 0;
    for m in methods {
        let Some(params) = schema.get(m).and_then(Value::as_array) else { continue };
        if SKIP.contains(&m.as_str()) {
            continue;
        }
        let required: Map<String, Value> =
            params.iter().filter(|p| p["required"] == true).map(|p| (p["name"].as_str().unwrap().to_string(), sample(p))).collect();
        for p in params {
            let name = p["name"].as_str().unwrap();
            let mut args = required.clone();
            args.insert(name.to_string(), sample(p));
            calls += 1;
            match d.call(m, Some(Value::Object(args.clone()))) {
                Err(ClientError::Rpc(e)) if e.code == -32602 => {
                    let msg = &e.message;
                    let about_it =
                        msg.contains(&format!("`{name}`")) || msg.contains(&format!("{name}:")) || msg.contains(&format!("'{name}'"));
                    let unknown = msg.contains(&format!("unknown parameter '{name}'")) || msg.contains(&format!("unknown field `{name}`"));
                    if unknown || (msg.contains("invalid type") && about_it) {
                        bad.push(format!("{m} {name} ({}): {msg}", p["type"]));
                    }
                }
                Err(ClientError::Rpc(_)) | Ok(_) => {}
                Err(e) => panic!("{m} {args:?}: the daemon stopped answering: {e:?}"),
            }
        }
    }
    calls
}

fn current_methods(d: &Daemon) -> Vec<String> {
    let v = d.call("rpc_get_methods", Some(json!({"current": true}))).unwrap();
    v.as_array().unwrap().iter().map(|m| m.as_str().unwrap().to_string()).collect()
}

#[test]
fn every_parameter_of_spdks_schema_is_understood() {
    let doc: Value = serde_json::from_str(include_str!("spdk-rpc-params.json")).unwrap();
    let schema = doc["methods"].as_object().unwrap();
    let mut bad = Vec::new();
    // Start-up methods, on a daemon waiting for framework_start_init, then
    // run-time ones on a running daemon.
    let waiting = Daemon::start(DaemonOpts { wait_for_rpc: true, ..Default::default() });
    let startup = current_methods(&waiting);
    let n1 = check(&waiting, schema, &startup, &mut bad);
    waiting.stop();
    let running = Daemon::start(DaemonOpts::default());
    let runtime: Vec<String> = current_methods(&running).into_iter().filter(|m| !startup.contains(m)).collect();
    let both: Vec<String> = current_methods(&running).into_iter().filter(|m| startup.contains(m)).collect();
    let n2 = check(&running, schema, &runtime, &mut bad) + check(&running, schema, &both, &mut bad);
    let implemented = current_methods(&running).iter().chain(&startup).filter(|m| schema.contains_key(*m)).count();
    assert!(n1 + n2 > 300, "{} calls over {implemented} methods: the schema was not exercised", n1 + n2);
    running.stop();
    bad.sort();
    bad.dedup();
    assert!(bad.is_empty(), "parameters of SPDK's schema Pollux does not understand:\n{}", bad.join("\n"));
}
