//! `pollux-rpc`: the command-line client of the JSON-RPC socket. Its commands
//! and arguments follow SPDK's `rpc.py`, so scripts written for SPDK work
//! with either client; `call METHOD [JSON]` sends any method with raw params.

#![forbid(unsafe_code)]

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use pollux_core::rpc::{Client, ClientError};
use serde_json::Value;

mod bdev;
mod config;
mod framework;
mod iscsi;
mod lvol;
mod nbd;
mod nvme;
mod nvmf;
mod params;

#[derive(Parser, Debug)]
#[command(name = "pollux-rpc", version, about = "Talk to a Pollux (or SPDK) target over its JSON-RPC socket")]
struct Args {
    /// RPC Unix socket path
    #[arg(short = 's', default_value = pollux_core::app::DEFAULT_RPC_SOCKET, value_name = "SOCKET")]
    server: PathBuf,
    /// Seconds to wait for each response
    #[arg(short = 't', default_value_t = 60.0, value_name = "SECONDS")]
    timeout: f64,
    /// Retry connecting N times, 200 ms apart
    #[arg(short = 'r', default_value_t = 0, value_name = "N")]
    conn_retries: u32,
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Subcommand, Debug)]
#[command(rename_all = "snake_case")]
enum Command {
    /// Send any method with raw JSON params: call METHOD ['{"name": ...}']
    #[command(name = "call", rename_all = "kebab-case")]
    Call {
        method: String,
        /// Params as a JSON object
        params: Option<String>,
    },
    /// Write the live configuration of every subsystem (SPDK's format)
    SaveConfig(config::SaveArgs),
    /// Configure the target from a saved configuration
    LoadConfig(config::LoadArgs),
    #[command(flatten)]
    Framework(framework::Cmd),
    #[command(flatten)]
    Bdev(bdev::Cmd),
    #[command(flatten)]
    Lvol(lvol::Cmd),
    #[command(flatten)]
    Nvme(nvme::Cmd),
    #[command(flatten)]
    Iscsi(iscsi::Cmd),
    #[command(flatten)]
    Nvmf(nvmf::Cmd),
    #[command(flatten)]
    Nbd(nbd::Cmd),
}

/// What a command asks of the server and how to show the answer.
pub struct Request {
    pub method: &'static str,
    pub params: Option<Value>,
    pub show: Show,
}

/// How a result is printed (as rpc.py does for each method).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Show {
    /// Pretty JSON.
    Json,
    /// A bare string without quotes.
    Text,
    /// Nothing: the call is an action.
    Nothing,
}

fn connect(args: &Args) -> Result<Client, ClientError> {
    let mut tries = args.conn_retries;
    loop {
        match Client::connect(&args.server) {
            Ok(c) => {
                let t = Duration::from_secs_f64(args.timeout.max(0.001));
                c.set_timeout(Some(t))?;
                return Ok(c);
            }
            Err(e) if tries == 0 => return Err(e),
            Err(_) => {
                tries -= 1;
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

/// Print an error the way rpc.py does, so scripts can match it.
pub fn report(method: &str, params: &Option<Value>, e: &ClientError) {
    match e {
        ClientError::Rpc(err) => {
            let mut shown = params.clone().unwrap_or_else(|| Value::Object(Default::default()));
            if let Value::Object(o) = &mut shown {
                o.insert("method".into(), method.into());
            }
            eprintln!("request:");
            eprintln!("{}", serde_json::to_string_pretty(&shown).unwrap_or_default());
            eprintln!("Got JSON-RPC error response");
            eprintln!("response:");
            eprintln!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({"code": err.code, "message": err.message})).unwrap_or_default()
            );
        }
        other => eprintln!("pollux-rpc: {other}"),
    }
}

pub fn print(v: &Value, show: Show) {
    let mut out = std::io::stdout().lock();
    let _ = match (show, v) {
        (Show::Nothing, _) => Ok(()),
        (Show::Text, Value::String(s)) => writeln!(out, "{s}"),
        // A list of names, one line, as rpc.py's print_array.
        (Show::Text, Value::Array(a)) if a.iter().all(Value::is_string) => {
            writeln!(out, "{}", a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(" "))
        }
        _ => writeln!(out, "{}", serde_json::to_string_pretty(v).unwrap_or_default()),
    };
}

fn run(args: &Args) -> Result<(), ()> {
    let mut client = connect(args).map_err(|e| eprintln!("pollux-rpc: {e}"))?;
    let req = match &args.cmd {
        Command::SaveConfig(a) => return config::save(&mut client, a),
        Command::LoadConfig(a) => return config::load(&mut client, a),
        Command::Call { method, params } => {
            let params = match params.as_deref().map(serde_json::from_str::<Value>) {
                None => None,
                Some(Ok(v @ Value::Object(_))) => Some(v),
                Some(Ok(_)) => {
                    eprintln!("pollux-rpc: params must be a JSON object");
                    return Err(());
                }
                Some(Err(e)) => {
                    eprintln!("pollux-rpc: params are not valid JSON: {e}");
                    return Err(());
                }
            };
            return match client.call(method, params.clone()) {
                Ok(v) => {
                    print(&v, Show::Json);
                    Ok(())
                }
                Err(e) => {
                    report(method, &params, &e);
                    Err(())
                }
            };
        }
        Command::Framework(c) => c.request(),
        Command::Bdev(c) => c.request(),
        Command::Lvol(c) => c.request(),
        Command::Nvme(c) => c.request(),
        Command::Iscsi(c) => c.request(),
        Command::Nvmf(c) => c.request(),
        Command::Nbd(c) => c.request(),
    };
    match client.call(req.method, req.params.clone()) {
        Ok(v) => print(&v, req.show),
        // The target may close the socket before answering a kill.
        Err(ClientError::Closed) if req.method == "spdk_kill_instance" => {}
        Err(e) => {
            report(req.method, &req.params, &e);
            return Err(());
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(()) => ExitCode::FAILURE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// rpc.py spells multi-word options with dashes; so does pollux-rpc, for
    /// every command.
    #[test]
    fn long_options_are_spelled_like_rpc_py() {
        use clap::CommandFactory;
        let cmd = Args::command();
        for sub in cmd.get_subcommands() {
            for arg in sub.get_arguments() {
                if let Some(long) = arg.get_long() {
                    assert!(!long.contains('_'), "{} --{long}: rpc.py writes it with dashes", sub.get_name());
                }
            }
            assert!(!sub.get_name().contains('-'), "{}: method names keep their underscores", sub.get_name());
        }
        let parsed = Args::try_parse_from([
            "pollux-rpc",
            "bdev_nvme_attach_controller",
            "-b",
            "Nvme0",
            "-t",
            "PCIe",
            "-a",
            "0000:00:04.0",
            "--num-io-queues",
            "4",
        ])
        .expect("rpc.py's form parses");
        let Command::Nvme(c) = parsed.cmd else { panic!("{parsed:?}") };
        assert_eq!(c.request().params.unwrap()["num_io_queues"], 4);
        let parsed = Args::try_parse_from(["pollux-rpc", "bdev_nvme_set_hotplug", "--hotplug", "--period-us", "5000"]).unwrap();
        let Command::Nvme(c) = parsed.cmd else { panic!("{parsed:?}") };
        assert_eq!(c.request().params.unwrap(), serde_json::json!({"enable": true, "period_us": 5000}));
    }
}
