//! JSON configuration files in SPDK's format:
//! `{"subsystems": [{"subsystem": NAME, "config": [{"method": M, "params": P}, ...]}]}`.
//! A config entry may also be an array of calls (a batch). Loading a file
//! replays its calls through the RPC method table.

use std::path::Path;

use serde_json::Value;

/// One call from a config file, with where it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct ConfigCall {
    /// For messages: `subsystems[0] (bdev) config[2]`.
    pub origin: String,
    pub method: String,
    pub params: Option<Value>,
}

/// Why a config file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("config file {path} is not valid JSON: {source}")]
    Json { path: String, source: serde_json::Error },
    #[error("config file {path}: {what}")]
    Shape { path: String, what: String },
}

/// Read and flatten a config file into calls, in file order.
pub fn load_file(path: &Path) -> Result<Vec<ConfigCall>, ConfigError> {
    let p = path.display().to_string();
    let text = std::fs::read(path).map_err(|source| ConfigError::Read { path: p.clone(), source })?;
    let v: Value = serde_json::from_slice(&text).map_err(|source| ConfigError::Json { path: p.clone(), source })?;
    parse(&v).map_err(|what| ConfigError::Shape { path: p, what })
}

/// Parse config text held in memory; `name` identifies it in messages.
pub fn load_str(name: &str, text: &str) -> Result<Vec<ConfigCall>, ConfigError> {
    let v: Value = serde_json::from_str(text).map_err(|source| ConfigError::Json { path: name.to_string(), source })?;
    parse(&v).map_err(|what| ConfigError::Shape { path: name.to_string(), what })
}

/// Flatten a parsed config into calls.
pub fn parse(v: &Value) -> Result<Vec<ConfigCall>, String> {
    let obj = v.as_object().ok_or("the top level must be an object with a \"subsystems\" array")?;
    let subsystems = match obj.get("subsystems") {
        Some(Value::Array(a)) => a,
        Some(_) => return Err("\"subsystems\" must be an array".into()),
        None => return Err("missing \"subsystems\" array".into()),
    };
    let mut calls = Vec::new();
    for (i, s) in subsystems.iter().enumerate() {
        let so = s.as_object().ok_or_else(|| format!("subsystems[{i}] must be an object"))?;
        let name = match so.get("subsystem") {
            Some(Value::String(n)) => n.as_str(),
            _ => return Err(format!("subsystems[{i}] needs a \"subsystem\" name")),
        };
        let entries = match so.get("config") {
            None | Some(Value::Null) => continue,
            Some(Value::Array(a)) => a,
            Some(_) => return Err(format!("subsystems[{i}] ({name}): \"config\" must be an array or null")),
        };
        for (j, e) in entries.iter().enumerate() {
            let origin = format!("subsystems[{i}] ({name}) config[{j}]");
            match e {
                Value::Array(batch) => {
                    for (k, call) in batch.iter().enumerate() {
                        calls.push(parse_call(call, format!("{origin}[{k}]"))?);
                    }
                }
                call => calls.push(parse_call(call, origin)?),
            }
        }
    }
    Ok(calls)
}

fn parse_call(v: &Value, origin: String) -> Result<ConfigCall, String> {
    let o = v.as_object().ok_or_else(|| format!("{origin} must be an object with \"method\" and \"params\""))?;
    let method = match o.get("method") {
        Some(Value::String(m)) => m.clone(),
        _ => return Err(format!("{origin} needs a \"method\" string")),
    };
    let params = match o.get("params") {
        None | Some(Value::Null) => None,
        Some(p @ Value::Object(_)) => Some(p.clone()),
        Some(_) => return Err(format!("{origin} ({method}): \"params\" must be an object")),
    };
    Ok(ConfigCall { origin, method, params })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn flattens_subsystems_and_batches_in_order() {
        let v = json!({"subsystems": [
            {"subsystem": "bdev", "config": [
                {"method": "a", "params": {"x": 1}},
                [{"method": "b"}, {"method": "c", "params": {}}]
            ]},
            {"subsystem": "empty", "config": null},
            {"subsystem": "iscsi", "config": [{"method": "d", "params": null}]}
        ]});
        let calls = parse(&v).unwrap();
        let names: Vec<_> = calls.iter().map(|c| c.method.as_str()).collect();
        assert_eq!(names, ["a", "b", "c", "d"]);
        assert_eq!(calls[2].origin, "subsystems[0] (bdev) config[1][1]");
        assert_eq!(calls[0].params, Some(json!({"x": 1})));
        assert_eq!(calls[3].params, None);
    }

    #[test]
    fn refuses_malformed_configs_naming_the_entry() {
        for (v, needle) in [
            (json!([]), "top level"),
            (json!({}), "missing"),
            (json!({"subsystems": {}}), "must be an array"),
            (json!({"subsystems": [{"config": []}]}), "subsystems[0] needs"),
            (json!({"subsystems": [{"subsystem": "x", "config": 5}]}), "(x)"),
            (json!({"subsystems": [{"subsystem": "x", "config": [{"params": {}}]}]}), "config[0] needs a \"method\""),
            (json!({"subsystems": [{"subsystem": "x", "config": [{"method": "m", "params": [1]}]}]}), "(m)"),
        ] {
            let err = parse(&v).unwrap_err();
            assert!(err.contains(needle), "{v}: {err}");
        }
    }
}
