//! A blocking JSON-RPC client for tools and tests (`pollux-rpc` uses it).

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use super::{Decoder, RpcError};

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {path}: {source} (is the target running?)")]
    Connect { path: String, source: io::Error },
    #[error("RPC socket I/O failed: {0}")]
    Io(#[from] io::Error),
    #[error("the server closed the connection before answering")]
    Closed,
    #[error("the server sent invalid JSON: {0}")]
    BadResponse(String),
    #[error("{}", .0.message)]
    Rpc(RpcError),
}

/// One connection to a JSON-RPC server.
pub struct Client {
    stream: UnixStream,
    decoder: Decoder,
    next_id: u64,
}

impl Client {
    pub fn connect(path: &Path) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(path).map_err(|source| ClientError::Connect { path: path.display().to_string(), source })?;
        Ok(Client { stream, decoder: Decoder::new(), next_id: 1 })
    }

    /// Give up on a response after this long (default: wait forever).
    pub fn set_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.stream.set_read_timeout(t)
    }

    /// Call `method`; `params` of `None` sends no params member.
    pub fn call(&mut self, method: &str, params: Option<Value>) -> Result<Value, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut req = json!({"jsonrpc": "2.0", "method": method, "id": id});
        if let Some(p) = params {
            req["params"] = p;
        }
        self.send_raw(&serde_json::to_vec(&req).expect("serialise"))?;
        loop {
            let resp = self.read_value()?;
            if resp.get("id") != Some(&json!(id)) {
                continue; // not ours (e.g. a stale answer); keep reading
            }
            if let Some(e) = resp.get("error") {
                let err: RpcError = RpcError {
                    code: e.get("code").and_then(Value::as_i64).unwrap_or(0) as i32,
                    message: e.get("message").and_then(Value::as_str).unwrap_or("").to_string(),
                };
                return Err(ClientError::Rpc(err));
            }
            return Ok(resp.get("result").cloned().unwrap_or(Value::Null));
        }
    }

    /// Send bytes as they are (for tests of malformed input).
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.stream.write_all(bytes)?;
        Ok(())
    }

    /// Read the next complete JSON value from the server.
    pub fn read_value(&mut self) -> Result<Value, ClientError> {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match self.decoder.next_value() {
                Ok(Some(v)) => return Ok(v),
                Ok(None) => {}
                Err(e) => return Err(ClientError::BadResponse(e.to_string())),
            }
            let n = self.stream.read(&mut buf)?;
            if n == 0 {
                return Err(ClientError::Closed);
            }
            self.decoder.push(&buf[..n]);
        }
    }
}
