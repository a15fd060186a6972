//! Framework, thread, log and notify methods, with rpc.py's argument forms.

use clap::Subcommand;
use serde_json::{Value, json};

use crate::{Request, Show};

#[derive(Subcommand, Debug)]
#[command(rename_all = "snake_case")]
pub enum Cmd {
    /// List the RPC methods the target supports
    #[command(name = "rpc_get_methods", rename_all = "kebab-case")]
    RpcGetMethods {
        /// Only methods callable in the current state
        #[arg(short = 'c', long)]
        current: bool,
        /// Include deprecated aliases
        #[arg(short = 'i', long)]
        include_aliases: bool,
    },
    /// Show the target's version
    SpdkGetVersion,
    /// List subsystems in initialisation order, with their dependencies
    FrameworkGetSubsystems,
    /// Show the configuration of one subsystem
    #[command(name = "framework_get_config", rename_all = "kebab-case")]
    FrameworkGetConfig {
        name: String,
        #[arg(long)]
        with_batches: bool,
    },
    /// List reactors with their load
    FrameworkGetReactors,
    /// Start subsystem initialisation (after --wait-for-rpc)
    FrameworkStartInit,
    /// Wait until initialisation has finished
    FrameworkWaitInit,
    /// Statistics of every reactor thread
    ThreadGetStats,
    /// Pollers of every reactor thread
    ThreadGetPollers,
    /// I/O channels of every reactor thread
    ThreadGetIoChannels,
    /// Send a signal to the target (SIGINT and SIGTERM shut it down cleanly)
    #[command(name = "spdk_kill_instance", rename_all = "kebab-case")]
    SpdkKillInstance {
        #[arg(value_parser = ["SIGINT", "SIGTERM", "SIGQUIT", "SIGHUP", "SIGKILL", "SIGUSR1"])]
        sig_name: String,
    },
    /// Set the log level
    #[command(name = "log_set_level", rename_all = "kebab-case")]
    LogSetLevel {
        #[arg(value_parser = ["ERROR", "WARNING", "NOTICE", "INFO", "DEBUG"])]
        level: String,
    },
    /// Show the log level
    LogGetLevel,
    /// Set the log print level
    #[command(name = "log_set_print_level", rename_all = "kebab-case")]
    LogSetPrintLevel {
        #[arg(value_parser = ["ERROR", "WARNING", "NOTICE", "INFO", "DEBUG"])]
        level: String,
    },
    /// Show the log print level
    LogGetPrintLevel,
    /// Log every event of a component (a log flag, or all)
    #[command(name = "log_set_flag", rename_all = "kebab-case")]
    LogSetFlag { flag: String },
    /// Stop logging a component's every event (a log flag, or all)
    #[command(name = "log_clear_flag", rename_all = "kebab-case")]
    LogClearFlag { flag: String },
    /// Show the log flags and which are set
    LogGetFlags,
    /// List the notification types
    NotifyGetTypes,
    /// Show notifications (bdevs registered, deleted, resized)
    #[command(name = "notify_get_notifications", rename_all = "kebab-case")]
    NotifyGetNotifications {
        /// Id of the first event to return (default: the oldest kept)
        #[arg(short = 'i', long)]
        id: Option<u64>,
        /// Most events to return (default: no limit)
        #[arg(short = 'n', long)]
        max: Option<u64>,
    },
}

fn req(method: &'static str, params: Option<Value>, show: Show) -> Request {
    Request { method, params, show }
}

impl Cmd {
    pub fn request(&self) -> Request {
        use Cmd::*;
        match self {
            RpcGetMethods { current, include_aliases } => {
                req("rpc_get_methods", Some(json!({"current": current, "include_aliases": include_aliases})), Show::Json)
            }
            SpdkGetVersion => req("spdk_get_version", None, Show::Json),
            FrameworkGetSubsystems => req("framework_get_subsystems", None, Show::Json),
            FrameworkGetConfig { name, with_batches } => {
                req("framework_get_config", Some(json!({"name": name, "with_batches": with_batches})), Show::Json)
            }
            FrameworkGetReactors => req("framework_get_reactors", None, Show::Json),
            FrameworkStartInit => req("framework_start_init", None, Show::Nothing),
            FrameworkWaitInit => req("framework_wait_init", None, Show::Nothing),
            ThreadGetStats => req("thread_get_stats", None, Show::Json),
            ThreadGetPollers => req("thread_get_pollers", None, Show::Json),
            ThreadGetIoChannels => req("thread_get_io_channels", None, Show::Json),
            SpdkKillInstance { sig_name } => req("spdk_kill_instance", Some(json!({"sig_name": sig_name})), Show::Nothing),
            LogSetLevel { level } => req("log_set_level", Some(json!({"level": level})), Show::Nothing),
            LogGetLevel => req("log_get_level", None, Show::Text),
            LogSetPrintLevel { level } => req("log_set_print_level", Some(json!({"level": level})), Show::Nothing),
            LogGetPrintLevel => req("log_get_print_level", None, Show::Text),
            LogSetFlag { flag } => req("log_set_flag", Some(json!({"flag": flag})), Show::Nothing),
            LogClearFlag { flag } => req("log_clear_flag", Some(json!({"flag": flag})), Show::Nothing),
            LogGetFlags => req("log_get_flags", None, Show::Json),
            NotifyGetTypes => req("notify_get_types", None, Show::Json),
            NotifyGetNotifications { id, max } => {
                let mut p = serde_json::Map::new();
                if let Some(i) = id {
                    p.insert("id".into(), json!(i));
                }
                if let Some(m) = max {
                    p.insert("max".into(), json!(m));
                }
                req("notify_get_notifications", (!p.is_empty()).then_some(Value::Object(p)), Show::Json)
            }
        }
    }
}
