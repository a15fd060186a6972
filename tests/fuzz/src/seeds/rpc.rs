//! Seeds of `jsonrpc_framing` and `rpc_params`.

use serde_json::{Value, json};

pub(super) fn jsonrpc_framing() -> Vec<(String, Vec<u8>)> {
    let texts: &[(&str, &str)] = &[
        ("request", r#"{"jsonrpc":"2.0","method":"bdev_get_bdevs","id":1}"#),
        (
            "params",
            r#"{"jsonrpc":"2.0","method":"m","params":{"name":"x","size":4096,"flag":true,"ratio":0.5,"list":["a","b"],"nested":{"id":-3,"tag":"t"}},"id":"s"}"#,
        ),
        ("bad-params", r#"{"jsonrpc":"2.0","method":"m","params":{"name":7,"extra":1},"id":null}"#),
        ("batch", r#"[{"jsonrpc":"2.0","method":"a","id":1},{"jsonrpc":"2.0","method":"b"},{"foo":"bar"},[],3]"#),
        ("empty-batch", "[]"),
        (
            "pipelined",
            "{\"jsonrpc\":\"2.0\",\"method\":\"a\",\"id\":1}\n  {\"jsonrpc\":\"2.0\",\"method\":\"b\",\"params\":[1,2],\"id\":2}\r\n\"str\" true null",
        ),
        ("escapes", r#"{"jsonrpc":"2.0","method":"x\"}{[","params":{"name":"\\\"\u00e9\ud83d\ude00"},"id":1.5}"#),
        ("invalid", r#"{"jsonrpc":"1.0","method":5,"id":{},"params":7}"#),
        ("truncated", r#"{"jsonrpc":"2.0","method":"a","params":{"x":[1,2"#),
        ("garbage", "}{]["),
    ];
    texts.iter().map(|(n, t)| (n.to_string(), t.as_bytes().to_vec())).collect()
}

fn rpc_record(out: &mut Vec<u8>, method: &str, flags: u8, params: &Value) {
    let names = crate::rpc_method_names();
    let Some(i) = names.iter().position(|n| n == method) else { return };
    assert!(i < 256, "more than 256 RPC methods: the method byte cannot reach {method}");
    out.push(i as u8);
    out.push(flags);
    out.extend_from_slice(serde_json::to_string(params).expect("JSON").as_bytes());
    out.push(0);
}

/// A value of a schema parameter.
fn sample(p: &Value) -> Value {
    let first = || p["values"].as_array().and_then(|v| v.first()).cloned().unwrap_or_else(|| json!("x"));
    match p["type"].as_str().unwrap_or("") {
        "boolean" => json!(true),
        "string" => json!("x"),
        "uuid" => json!("00000000-0000-4000-8000-000000000001"),
        "enum" => first(),
        "bitmask" => json!([first()]),
        "array" => json!([]),
        "object" => json!({}),
        _ => json!(1),
    }
}

pub(super) fn rpc_params() -> Vec<(String, Vec<u8>)> {
    let mut seeds = Vec::new();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    // One call per method with every parameter SPDK's schema gives it.
    let schema: Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("tests/integration/tests/spdk-rpc-params.json")).expect("schema"))
            .expect("schema JSON");
    let methods = schema["methods"].as_object().expect("methods");
    for name in crate::rpc_method_names() {
        let Some(params) = methods.get(name).and_then(Value::as_array) else { continue };
        let obj: serde_json::Map<String, Value> =
            params.iter().map(|p| (p["name"].as_str().unwrap_or("").to_string(), sample(p))).collect();
        let mut d = Vec::new();
        rpc_record(&mut d, name, 0, &Value::Object(obj));
        if !d.is_empty() {
            seeds.push((format!("schema-{name}"), d));
        }
    }
    // Whole configurations, call after call: the daemon's default one and
    // an SPDK-saved one.
    for (name, path) in
        [("default-config", "apps/tgt/src/default-config.json"), ("spdk-saved-config", "tests/integration/tests/spdk-saved-config.json")]
    {
        let cfg: Value = serde_json::from_str(&std::fs::read_to_string(root.join(path)).expect("config")).expect("config JSON");
        let mut startup = Vec::new();
        let mut runtime = Vec::new();
        for s in cfg["subsystems"].as_array().into_iter().flatten() {
            for c in s["config"].as_array().into_iter().flatten() {
                let m = c["method"].as_str().unwrap_or("");
                let params = c.get("params").cloned().unwrap_or(json!({}));
                let early =
                    m.ends_with("_set_options") || m.starts_with("framework_") || m.starts_with("nvmf_set_") || m.starts_with("sock_");
                if early {
                    rpc_record(&mut startup, m, 1, &params);
                } else {
                    rpc_record(&mut runtime, m, 0, &params);
                }
            }
        }
        startup.extend(runtime);
        seeds.extend(in_pieces(name, &startup));
    }
    // Create, look, delete.
    let mut d = Vec::new();
    for (m, f, p) in [
        ("bdev_malloc_create", 0, json!({"name": "M0", "num_blocks": 256, "block_size": 512})),
        ("bdev_null_create", 0, json!({"name": "N0", "num_blocks": 256, "block_size": 4096})),
        (
            "bdev_delay_create",
            0,
            json!({"base_bdev_name": "N0", "name": "D0", "avg_read_latency": 10, "p99_read_latency": 20, "avg_write_latency": 10, "p99_write_latency": 20}),
        ),
        ("bdev_get_bdevs", 0, json!({"name": "D0"})),
        ("bdev_get_iostat", 0, json!({})),
        ("bdev_enable_histogram", 0, json!({"name": "M0", "enable": true})),
        ("bdev_get_histogram", 0, json!({"name": "M0"})),
        (
            "iscsi_create_auth_group",
            0,
            json!({"tag": 1, "secrets": [{"user": "u", "secret": "s-12-chars-x", "muser": "m", "msecret": "ms-12-chars-x"}]}),
        ),
        ("iscsi_create_portal_group", 0, json!({"tag": 1, "portals": [{"host": "127.0.0.1", "port": "3260"}], "wait": true})),
        ("iscsi_create_initiator_group", 0, json!({"tag": 1, "initiators": ["ANY", "!iqn.x"], "netmasks": ["127.0.0.1/32", "[::1]/128"]})),
        (
            "iscsi_create_target_node",
            0,
            json!({"name": "t1", "alias_name": "a", "pg_ig_maps": [{"pg_tag": 1, "ig_tag": 1}], "luns": [{"bdev_name": "M0", "lun_id": 0}], "queue_depth": 16, "require_chap": true, "chap_group": 1}),
        ),
        ("iscsi_target_node_add_lun", 0, json!({"name": "iqn.2016-06.io.spdk:t1", "bdev_name": "D0", "lun_id": 3})),
        ("iscsi_get_target_nodes", 0, json!({})),
        ("iscsi_delete_target_node", 0, json!({"name": "iqn.2016-06.io.spdk:t1"})),
        ("nvmf_create_transport", 0, json!({"trtype": "TCP", "max_queue_depth": 32, "in_capsule_data_size": 8192})),
        ("nvmf_create_subsystem", 0, json!({"nqn": "nqn.2016-06.io.spdk:c1", "allow_any_host": false, "min_cntlid": 5, "max_cntlid": 9})),
        (
            "nvmf_subsystem_add_ns",
            0,
            json!({"nqn": "nqn.2016-06.io.spdk:c1", "namespace": {"bdev_name": "M0", "nsid": 3, "uuid": "00000000-0000-4000-8000-000000000003"}}),
        ),
        (
            "nvmf_subsystem_add_host",
            0,
            json!({"nqn": "nqn.2016-06.io.spdk:c1", "host": "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-4000-8000-000000000009"}),
        ),
        (
            "nvmf_subsystem_add_listener",
            0,
            json!({"nqn": "nqn.2016-06.io.spdk:c1", "listen_address": {"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": "4420"}}),
        ),
        ("nvmf_get_subsystems", 0, json!({})),
        ("nvmf_subsystem_remove_ns", 0, json!({"nqn": "nqn.2016-06.io.spdk:c1", "nsid": 3})),
        ("nvmf_delete_subsystem", 0, json!({"nqn": "nqn.2016-06.io.spdk:c1"})),
        ("bdev_delay_delete", 0, json!({"name": "D0"})),
        ("bdev_malloc_delete", 0, json!({"name": "M0"})),
        ("framework_get_reactors", 0, json!({})),
        ("thread_get_pollers", 0, json!({})),
        ("rpc_get_methods", 0, json!({"current": true})),
    ] {
        rpc_record(&mut d, m, f, &p);
    }
    seeds.extend(in_pieces("create-look-delete", &d));
    seeds
}

/// Calls cut into seeds of whole calls that fit `rpc_params`'s largest
/// input (512 bytes, scripts/fuzz), in order.
fn in_pieces(name: &str, calls: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut piece = Vec::new();
    for call in calls.split_inclusive(|&b| b == 0) {
        if !piece.is_empty() && piece.len() + call.len() > 512 {
            out.push((format!("{name}-{}", out.len()), std::mem::take(&mut piece)));
        }
        piece.extend_from_slice(call);
    }
    out.push((format!("{name}-{}", out.len()), piece));
    out
}
