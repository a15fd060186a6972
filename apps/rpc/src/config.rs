//! `save_config` and `load_config`, composed on the client side from
//! `framework_get_subsystems`, `framework_get_config`, `rpc_get_methods` and
//! `framework_start_init`, exactly as SPDK's client does.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::PathBuf;

use clap::Args;
use pollux_core::rpc::Client;
use serde_json::{Value, json};

use crate::report;

#[derive(Args, Debug)]
pub struct SaveArgs {
    /// Indent level; below 0 writes compact JSON
    #[arg(short = 'i', long, default_value_t = 2, allow_negative_numbers = true)]
    indent: i32,
    /// Comma-separated subsystems (and their dependencies) to save
    #[arg(short = 's', long)]
    subsystems: Option<String>,
    /// Keep batch arrays
    #[arg(long)]
    with_batches: bool,
}

#[derive(Args, Debug)]
pub struct LoadArgs {
    /// Config file (default: standard input)
    #[arg(short = 'j', long = "json-conf")]
    json_conf: Option<PathBuf>,
    /// Also accept deprecated method aliases
    #[arg(short = 'i', long)]
    include_aliases: bool,
}

fn call(c: &mut Client, method: &str, params: Option<Value>) -> Result<Value, ()> {
    c.call(method, params.clone()).map_err(|e| report(method, &params, &e))
}

pub fn save(c: &mut Client, a: &SaveArgs) -> Result<(), ()> {
    let subsystems = call(c, "framework_get_subsystems", None)?;
    let list = subsystems.as_array().cloned().unwrap_or_default();
    // Each subsystem with the full set of its dependencies.
    let mut deps: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for s in &list {
        let name = s["subsystem"].as_str().unwrap_or_default().to_string();
        let mut all = BTreeSet::from([name.clone()]);
        for d in s["depends_on"].as_array().into_iter().flatten().filter_map(Value::as_str) {
            all.extend(deps.get(d).cloned().unwrap_or_default());
        }
        deps.insert(name, all);
    }
    let wanted: BTreeSet<String> = match &a.subsystems {
        None => deps.keys().cloned().collect(),
        Some(names) => {
            let mut w = BTreeSet::new();
            for n in names.split(',').map(str::trim) {
                match deps.get(n) {
                    Some(d) => w.extend(d.iter().cloned()),
                    None => {
                        eprintln!("pollux-rpc: no subsystem named {n}");
                        return Err(());
                    }
                }
            }
            w
        }
    };
    let mut out = Vec::new();
    for s in &list {
        let name = s["subsystem"].as_str().unwrap_or_default();
        if !wanted.contains(name) {
            continue;
        }
        let cfg = call(c, "framework_get_config", Some(json!({"name": name, "with_batches": a.with_batches})))?;
        out.push(json!({"subsystem": name, "config": cfg}));
    }
    let doc = json!({ "subsystems": out });
    let text = if a.indent < 0 {
        serde_json::to_string(&doc).expect("serialise")
    } else {
        let indent = " ".repeat(a.indent as usize);
        let mut buf = Vec::new();
        let fmt = serde_json::ser::PrettyFormatter::with_indent(indent.as_bytes());
        let mut ser = serde_json::Serializer::with_formatter(&mut buf, fmt);
        serde::Serialize::serialize(&doc, &mut ser).expect("serialise");
        String::from_utf8(buf).expect("utf-8")
    };
    println!("{text}");
    Ok(())
}

fn names_of(v: &Value) -> BTreeSet<String> {
    v.as_array().into_iter().flatten().filter_map(Value::as_str).map(str::to_string).collect()
}

fn method_of(e: &Value) -> Option<&str> {
    e.get("method").and_then(Value::as_str)
}

pub fn load(c: &mut Client, a: &LoadArgs) -> Result<(), ()> {
    let text = match &a.json_conf {
        Some(p) => std::fs::read_to_string(p).map_err(|e| eprintln!("pollux-rpc: cannot read {}: {e}", p.display()))?,
        None => {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s).map_err(|e| eprintln!("pollux-rpc: cannot read stdin: {e}"))?;
            s
        }
    };
    let doc: Value = serde_json::from_str(&text).map_err(|e| eprintln!("pollux-rpc: config is not valid JSON: {e}"))?;
    let Some(subs) = doc.get("subsystems").and_then(Value::as_array) else {
        eprintln!("pollux-rpc: config has no \"subsystems\" array");
        return Err(());
    };
    // (subsystem, remaining entries), skipping subsystems without config.
    let mut pending: Vec<Vec<Value>> =
        subs.iter().filter_map(|s| s.get("config").and_then(Value::as_array).filter(|c| !c.is_empty()).cloned()).collect();
    let ia = a.include_aliases;
    let all = names_of(&call(c, "rpc_get_methods", Some(json!({"include_aliases": ia})))?);
    if pending.is_empty() {
        if all.contains("framework_start_init") {
            call(c, "framework_start_init", None)?;
        }
        return Ok(());
    }
    for entries in &pending {
        for e in entries {
            let items: Vec<&Value> = match e {
                Value::Array(b) => b.iter().collect(),
                e => vec![e],
            };
            for i in items {
                if !method_of(i).is_some_and(|m| all.contains(m)) {
                    eprintln!("pollux-rpc: unknown method in the config file: {}", method_of(i).unwrap_or("(none)"));
                    return Err(());
                }
            }
        }
    }
    while !pending.is_empty() {
        let allowed = names_of(&call(c, "rpc_get_methods", Some(json!({"current": true, "include_aliases": ia})))?);
        let mut progressed = false;
        for entries in pending.iter_mut() {
            let mut keep = Vec::new();
            for e in entries.drain(..) {
                let calls: Vec<Value> = match &e {
                    Value::Array(b) => b.clone(),
                    e => vec![e.clone()],
                };
                if !calls.iter().all(|i| method_of(i).is_some_and(|m| allowed.contains(m))) {
                    keep.push(e);
                    continue;
                }
                for i in calls {
                    let m = method_of(&i).unwrap_or_default().to_string();
                    call(c, &m, i.get("params").cloned().filter(|p| !p.is_null()))?;
                }
                progressed = true;
            }
            *entries = keep;
        }
        pending.retain(|e| !e.is_empty());
        if allowed.contains("framework_start_init") {
            call(c, "framework_start_init", None)?;
            progressed = true;
        }
        if !progressed {
            break;
        }
    }
    if !pending.is_empty() {
        println!("Some configs were skipped because the RPC state that can call them passed over.");
    }
    Ok(())
}
