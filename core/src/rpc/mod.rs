//! JSON-RPC 2.0 control: the method table, typed parameters, errors, and the
//! Unix-socket server.
//!
//! Method names, parameters and results follow SPDK's so that SPDK's own
//! client (`spdk-rpc`) and scripts drive Pollux unchanged. Handlers run on
//! the RPC reactor (reactor 0) and answer through a [`Responder`], which is
//! `Send`: a handler may pass it to other reactors and answer later.

mod client;
mod framing;
mod server;

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::fmt;
use std::rc::Rc;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

pub use client::{Client, ClientError};
pub use framing::{Decoder, FramingError, MAX_REQUEST_BYTES, Request, parse_request, response};
pub use server::{RpcServer, ServerError};

/// A JSON-RPC error object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{message} (code {code})")]
pub struct RpcError {
    pub code: i32,
    pub message: String,
}

impl RpcError {
    pub const PARSE_ERROR: i32 = -32700;
    pub const INVALID_REQUEST: i32 = -32600;
    pub const METHOD_NOT_FOUND: i32 = -32601;
    pub const INVALID_PARAMS: i32 = -32602;
    pub const INTERNAL_ERROR: i32 = -32603;
    /// SPDK's code for a method called in the wrong start-up state.
    pub const INVALID_STATE: i32 = -1;

    pub fn new(code: i32, message: impl Into<String>) -> Self {
        RpcError { code, message: message.into() }
    }
    pub fn parse_error(msg: impl fmt::Display) -> Self {
        Self::new(Self::PARSE_ERROR, format!("Parse error: {msg}"))
    }
    pub fn invalid_request(msg: impl fmt::Display) -> Self {
        Self::new(Self::INVALID_REQUEST, format!("Invalid request: {msg}"))
    }
    pub fn method_not_found(name: &str) -> Self {
        Self::new(Self::METHOD_NOT_FOUND, format!("Method not found: {name}"))
    }
    pub fn invalid_params(msg: impl fmt::Display) -> Self {
        Self::new(Self::INVALID_PARAMS, format!("Invalid parameters: {msg}"))
    }
    pub fn internal(msg: impl fmt::Display) -> Self {
        Self::new(Self::INTERNAL_ERROR, format!("Internal error: {msg}"))
    }
    /// An error carrying a negative errno as its code, as SPDK reports
    /// failures of the operation itself (e.g. -17 for a name in use).
    pub fn errno(errno: i32, msg: impl fmt::Display) -> Self {
        Self::new(-errno.abs(), msg.to_string())
    }
}

/// The outcome of a call.
pub type RpcResult = Result<Value, RpcError>;

type Sink = Box<dyn FnOnce(RpcResult) + Send>;

/// Answers one request, once. `Send`: handlers may answer from any reactor.
/// A responder dropped without answering answers with an internal error, so a
/// client is never left waiting.
pub struct Responder {
    sink: Option<Sink>,
}

impl fmt::Debug for Responder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Responder").field("answered", &self.sink.is_none()).finish()
    }
}

impl Responder {
    pub fn new(sink: impl FnOnce(RpcResult) + Send + 'static) -> Self {
        Responder { sink: Some(Box::new(sink)) }
    }

    pub fn send(mut self, result: RpcResult) {
        if let Some(s) = self.sink.take() {
            s(result)
        }
    }

    pub fn ok<T: Serialize>(self, value: T) {
        match serde_json::to_value(value) {
            Ok(v) => self.send(Ok(v)),
            Err(e) => self.send(Err(RpcError::internal(e))),
        }
    }

    pub fn err(self, e: RpcError) {
        self.send(Err(e))
    }

    /// Answer with a `Result` whose error converts into an [`RpcError`].
    pub fn result<T: Serialize, E: Into<RpcError>>(self, r: Result<T, E>) {
        match r {
            Ok(v) => self.ok(v),
            Err(e) => self.err(e.into()),
        }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        if let Some(s) = self.sink.take() {
            s(Err(RpcError::internal("the request was dropped without an answer")))
        }
    }
}

/// The start-up state of the RPC layer, as in SPDK: before
/// `framework_start_init` only start-up methods may be called.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RpcState {
    Startup,
    Runtime,
}

/// In which states a method may be called.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct States(u8);

impl States {
    pub const STARTUP: States = States(1);
    pub const RUNTIME: States = States(2);
    pub const ANY: States = States(3);

    pub fn allows(self, s: RpcState) -> bool {
        let bit = match s {
            RpcState::Startup => 1,
            RpcState::Runtime => 2,
        };
        self.0 & bit != 0
    }
}

type Handler = Rc<dyn Fn(Option<Value>, Responder)>;

struct Method {
    states: States,
    handler: Handler,
    /// For a deprecated alias: the method it stands for.
    alias_of: Option<String>,
}

/// The table of RPC methods and the current RPC state.
pub struct Methods {
    table: RefCell<BTreeMap<String, Method>>,
    state: Cell<RpcState>,
}

impl Default for Methods {
    fn default() -> Self {
        Methods { table: RefCell::new(BTreeMap::new()), state: Cell::new(RpcState::Startup) }
    }
}

/// Parameters of a method that takes none.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoParams {}

/// Decode named parameters into `P`, with errors that name the parameter.
pub fn decode_params<P: DeserializeOwned>(params: Option<Value>) -> Result<P, RpcError> {
    let v = match params {
        None | Some(Value::Null) => Value::Object(Default::default()),
        Some(v @ Value::Object(_)) => v,
        Some(_) => return Err(RpcError::invalid_params("params must be an object of named parameters")),
    };
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        let msg = describe_serde_error(&e.inner().to_string());
        if path == "." || msg.starts_with("unknown parameter") || msg.starts_with("missing required") {
            RpcError::invalid_params(msg)
        } else {
            RpcError::invalid_params(format!("parameter '{path}': {msg}"))
        }
    })
}

/// Reword serde's field messages in terms of parameters.
fn describe_serde_error(msg: &str) -> String {
    let ticked = |s: &str| s.split('`').nth(1).map(str::to_string);
    if msg.starts_with("unknown field") {
        let name = ticked(msg).unwrap_or_default();
        let expected: Vec<&str> = msg.split('`').skip(3).step_by(2).collect();
        if expected.is_empty() {
            format!("unknown parameter '{name}' (this method takes no parameters)")
        } else {
            format!("unknown parameter '{name}' (expected one of: {})", expected.join(", "))
        }
    } else if msg.starts_with("missing field") {
        format!("missing required parameter '{}'", ticked(msg).unwrap_or_default())
    } else {
        msg.to_string()
    }
}

impl Methods {
    pub fn new() -> Self {
        Self::default()
    }

    /// Register a handler that receives the raw params.
    pub fn register_raw(&self, name: &str, states: States, f: impl Fn(Option<Value>, Responder) + 'static) {
        let prev = self.table.borrow_mut().insert(name.to_string(), Method { states, handler: Rc::new(f), alias_of: None });
        assert!(prev.is_none(), "RPC method {name} registered twice");
    }

    /// Register a handler with typed parameters. Unknown parameters, missing
    /// ones and wrong types are refused with -32602 naming the parameter.
    pub fn register<P, F>(&self, name: &str, states: States, f: F)
    where
        P: DeserializeOwned + 'static,
        F: Fn(P, Responder) + 'static,
    {
        self.register_raw(name, states, move |params, resp| match decode_params::<P>(params) {
            Ok(p) => f(p, resp),
            Err(e) => resp.err(e),
        });
    }

    /// Register a deprecated alias for an existing method.
    pub fn alias(&self, alias: &str, target: &str) {
        let mut t = self.table.borrow_mut();
        let m = t.get(target).unwrap_or_else(|| panic!("alias {alias} of unknown method {target}"));
        let m = Method { states: m.states, handler: m.handler.clone(), alias_of: Some(target.to_string()) };
        t.insert(alias.to_string(), m);
    }

    pub fn state(&self) -> RpcState {
        self.state.get()
    }

    pub fn set_state(&self, s: RpcState) {
        self.state.set(s)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.table.borrow().contains_key(name)
    }

    /// Whether `name` may be called in `state` (`None`: no such method).
    pub fn allowed_in(&self, name: &str, state: RpcState) -> Option<bool> {
        self.table.borrow().get(name).map(|m| m.states.allows(state))
    }

    /// Method names, sorted: all, or only those callable now.
    pub fn names(&self, current_only: bool, include_aliases: bool) -> Vec<String> {
        let state = self.state.get();
        self.table
            .borrow()
            .iter()
            .filter(|(_, m)| include_aliases || m.alias_of.is_none())
            .filter(|(_, m)| !current_only || m.states.allows(state))
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Call a method. The responder is always answered, possibly later.
    pub fn call(&self, method: &str, params: Option<Value>, resp: Responder) {
        let (handler, states, alias_of) = match self.table.borrow().get(method) {
            Some(m) => (m.handler.clone(), m.states, m.alias_of.clone()),
            None => return resp.err(RpcError::method_not_found(method)),
        };
        let state = self.state.get();
        if !states.allows(state) {
            let msg = match state {
                RpcState::Startup => "Method may only be called after framework is initialized using framework_start_init RPC.",
                RpcState::Runtime => {
                    "Method may only be called before framework is initialized. Use --wait-for-rpc command line parameter and then issue this RPC before the framework_start_init RPC."
                }
            };
            return resp.err(RpcError::new(RpcError::INVALID_STATE, msg));
        }
        if let Some(target) = alias_of {
            tracing::warn!("RPC method {method} is deprecated, use {target} instead");
        }
        // The table is not borrowed while the handler runs: handlers may
        // register methods or call others.
        handler(params, resp);
    }
}

#[cfg(test)]
mod tests;
