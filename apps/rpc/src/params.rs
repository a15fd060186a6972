//! Building params objects from command-line options: only the options that
//! were given become members, as rpc.py does (`remove_null`).

use serde::Serialize;
use serde_json::{Map, Value, json};

/// A value that is always sent.
pub fn v<T: Serialize + ?Sized>(x: &T) -> Option<Value> {
    Some(json!(x))
}

/// An option that is sent only when given.
pub fn o<T: Serialize>(x: &Option<T>) -> Option<Value> {
    x.as_ref().map(|x| json!(x))
}

/// The object of the members that are set.
pub fn obj(pairs: &[(&str, Option<Value>)]) -> Value {
    let m: Map<String, Value> = pairs.iter().filter_map(|(k, v)| v.clone().map(|v| (k.to_string(), v))).collect();
    Value::Object(m)
}
