//! Subsystems: the units the application initialises in dependency order,
//! finishes in reverse order, and whose live configuration `save_config`
//! writes out (SPDK's `spdk_subsystem`).

use std::rc::Rc;

use serde::Serialize;
use serde_json::{Value, json};

/// Signals the end of an asynchronous init or fini. `Send`, so a subsystem
/// may finish on another reactor; the application continues on its own.
pub type Done = Box<dyn FnOnce(Result<(), String>) + Send>;

/// Drop from `params` the keys of Pollux's own options (`keys`: options SPDK
/// does not have) whose values are those of `defaults`: SPDK refuses keys
/// it does not know, so a configuration saved with the defaults still loads
/// there, and one that changed them says so.
pub fn omit_own_defaults(params: &mut Value, defaults: &Value, keys: &[&str]) {
    let Some(map) = params.as_object_mut() else { return };
    for k in keys {
        if map.get(*k).is_some_and(|v| Some(v) == defaults.get(*k)) {
            map.remove(*k);
        }
    }
}

/// Collects the method calls that rebuild a subsystem's live state.
#[derive(Debug, Default)]
pub struct ConfigWriter {
    entries: Vec<Value>,
}

impl ConfigWriter {
    /// Append a call `{"method": method, "params": params}`.
    pub fn call(&mut self, method: &str, params: impl Serialize) {
        let params = serde_json::to_value(params).expect("config params serialise");
        self.entries.push(json!({ "method": method, "params": params }));
    }

    /// Append a call that takes no parameters.
    pub fn call_no_params(&mut self, method: &str) {
        self.entries.push(json!({ "method": method }));
    }

    /// Append a group of calls that SPDK's `with_batches` keeps together.
    pub fn batch(&mut self, calls: impl FnOnce(&mut ConfigWriter)) {
        let mut inner = ConfigWriter::default();
        calls(&mut inner);
        if !inner.entries.is_empty() {
            self.entries.push(Value::Array(inner.entries));
        }
    }

    /// The entries; batches are flattened unless `with_batches`.
    pub fn finish(self, with_batches: bool) -> Vec<Value> {
        if with_batches {
            return self.entries;
        }
        let mut flat = Vec::with_capacity(self.entries.len());
        for e in self.entries {
            match e {
                Value::Array(items) => flat.extend(items),
                e => flat.push(e),
            }
        }
        flat
    }
}

/// A unit of the application with a life cycle and a configuration.
pub trait Subsystem: 'static {
    /// The name `framework_get_subsystems` lists (SPDK's names where they exist).
    fn name(&self) -> &'static str;

    /// Subsystems that must be initialised first.
    fn depends_on(&self) -> &'static [&'static str] {
        &[]
    }

    /// Initialise (on the main reactor, after start-up RPCs ran).
    fn init(&self, done: Done) {
        done(Ok(()))
    }

    /// Release everything (on the main reactor, in reverse init order).
    fn fini(&self, done: Box<dyn FnOnce() + Send>) {
        done()
    }

    /// The calls that rebuild the live state, in the order to replay them.
    fn write_config(&self, _out: &mut ConfigWriter) {}
}

/// Order subsystems so each comes after its dependencies, otherwise keeping
/// registration order.
pub(crate) fn sort(subsystems: Vec<Rc<dyn Subsystem>>) -> Result<Vec<Rc<dyn Subsystem>>, String> {
    for s in &subsystems {
        for d in s.depends_on() {
            if !subsystems.iter().any(|o| o.name() == *d) {
                return Err(format!("subsystem {} depends on {d}, which is not registered", s.name()));
            }
        }
    }
    let mut out: Vec<Rc<dyn Subsystem>> = Vec::with_capacity(subsystems.len());
    let mut left = subsystems;
    while !left.is_empty() {
        let pos = left
            .iter()
            .position(|s| s.depends_on().iter().all(|d| out.iter().any(|o| o.name() == *d)))
            .ok_or_else(|| format!("subsystem dependencies form a cycle among: {}", names(&left)))?;
        out.push(left.remove(pos));
    }
    Ok(out)
}

fn names(list: &[Rc<dyn Subsystem>]) -> String {
    list.iter().map(|s| s.name()).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    struct S(&'static str, &'static [&'static str]);
    impl Subsystem for S {
        fn name(&self) -> &'static str {
            self.0
        }
        fn depends_on(&self) -> &'static [&'static str] {
            self.1
        }
    }

    fn order(v: Vec<Rc<dyn Subsystem>>) -> Result<Vec<&'static str>, String> {
        sort(v).map(|v| v.iter().map(|s| s.name()).collect())
    }

    #[test]
    fn dependencies_come_first() {
        let v: Vec<Rc<dyn Subsystem>> = vec![
            Rc::new(S("iscsi", &["scsi", "bdev"])),
            Rc::new(S("bdev", &["iobuf"])),
            Rc::new(S("scsi", &["bdev"])),
            Rc::new(S("iobuf", &[])),
        ];
        assert_eq!(order(v).unwrap(), vec!["iobuf", "bdev", "scsi", "iscsi"]);
    }

    #[test]
    fn missing_and_cyclic_dependencies_are_errors() {
        let v: Vec<Rc<dyn Subsystem>> = vec![Rc::new(S("a", &["b"]))];
        assert!(order(v).unwrap_err().contains("not registered"));
        let v: Vec<Rc<dyn Subsystem>> = vec![Rc::new(S("a", &["b"])), Rc::new(S("b", &["a"]))];
        assert!(order(v).unwrap_err().contains("cycle"));
    }

    #[test]
    fn config_writer_flattens_batches_unless_asked() {
        let mut w = ConfigWriter::default();
        w.call("a", json!({"x": 1}));
        w.batch(|b| {
            b.call("b", json!({}));
            b.call_no_params("c");
        });
        let mut w2 = ConfigWriter::default();
        w2.call("a", json!({"x": 1}));
        w2.batch(|b| {
            b.call("b", json!({}));
            b.call_no_params("c");
        });
        assert_eq!(w.finish(false).len(), 3);
        let batched = w2.finish(true);
        assert_eq!(batched.len(), 2);
        assert!(batched[1].is_array());
    }
}
