//! Logging: `tracing` events printed to stderr, with SPDK's level names.
//!
//! SPDK has five levels; `tracing` has five too but names them differently.
//! The mapping is ERROR->error, WARNING->warn, NOTICE->info, INFO->debug,
//! DEBUG->trace: Pollux code logs operator-facing notices with `info!`, the
//! detail SPDK logs at INFO with `debug!`, and developer tracing with `trace!`.

use std::fmt;
use std::str::FromStr;
use std::sync::{Mutex, OnceLock};

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::prelude::*;
use tracing_subscriber::reload;

/// A log level, by SPDK's names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Level {
    Error,
    #[serde(alias = "WARN")]
    Warning,
    Notice,
    Info,
    Debug,
}

impl Level {
    pub const ALL: [Level; 5] = [Level::Error, Level::Warning, Level::Notice, Level::Info, Level::Debug];

    pub fn name(self) -> &'static str {
        match self {
            Level::Error => "ERROR",
            Level::Warning => "WARNING",
            Level::Notice => "NOTICE",
            Level::Info => "INFO",
            Level::Debug => "DEBUG",
        }
    }

    fn filter(self) -> LevelFilter {
        match self {
            Level::Error => LevelFilter::ERROR,
            Level::Warning => LevelFilter::WARN,
            Level::Notice => LevelFilter::INFO,
            Level::Info => LevelFilter::DEBUG,
            Level::Debug => LevelFilter::TRACE,
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An unknown level name.
#[derive(Debug, Clone, thiserror::Error)]
#[error("unknown log level `{0}` (expected one of ERROR, WARNING, NOTICE, INFO, DEBUG)")]
pub struct UnknownLevel(String);

impl FromStr for Level {
    type Err = UnknownLevel;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_uppercase().as_str() {
            "ERROR" => Ok(Level::Error),
            "WARNING" | "WARN" => Ok(Level::Warning),
            "NOTICE" => Ok(Level::Notice),
            "INFO" => Ok(Level::Info),
            "DEBUG" | "TRACE" => Ok(Level::Debug),
            _ => Err(UnknownLevel(s.to_string())),
        }
    }
}

/// SPDK's log flags (`log_set_flag`) that mean something here, and the
/// code each turns on: the `tracing` targets (module paths) whose events
/// it lets through at every level. A target ends in `::` where a bare
/// crate name would also match another crate's (`pollux_nvmf` and
/// `pollux_nvmf_host`).
pub const FLAGS: &[(&str, &[&str])] = &[
    ("accel", &["pollux_core::accel"]),
    ("aio", &["pollux_bdev::uring"]),
    ("bdev", &["pollux_core::bdev"]),
    ("bdev_malloc", &["pollux_bdev::malloc"]),
    ("bdev_null", &["pollux_bdev::null"]),
    ("bdev_nvme", &["pollux_nvme_driver::bdev", "pollux_nvmf_host::bdev"]),
    ("bdev_raid", &["pollux_raid"]),
    ("bdev_raid0", &["pollux_raid"]),
    ("bdev_raid1", &["pollux_raid"]),
    ("bdev_rbd", &["pollux_rbd"]),
    ("blob", &["pollux_lvol"]),
    ("gpt_parse", &["pollux_bdev::part"]),
    ("iscsi", &["pollux_iscsi::"]),
    ("iscsi_init", &["pollux_iscsi_host"]),
    ("lvol", &["pollux_lvol"]),
    ("lvol_rpc", &["pollux_lvol"]),
    ("nvme", &["pollux_nvme_driver", "pollux_nvmf_host"]),
    ("nvmf", &["pollux_nvmf::"]),
    ("nvmf_tcp", &["pollux_nvmf::transport::tcp"]),
    ("rdma", &["pollux_nvmf::transport::rdma", "pollux_rdma"]),
    ("reactor", &["pollux_core::reactor"]),
    ("rpc", &["pollux_core::rpc"]),
    ("scsi", &["pollux_scsi"]),
    ("sock", &["pollux_core::sock"]),
    ("thread", &["pollux_core::reactor", "pollux_core::io_channel"]),
    ("uring", &["pollux_bdev::uring"]),
    ("vbdev_crypto", &["pollux_crypto"]),
    ("vbdev_delay", &["pollux_bdev::delay"]),
    ("vbdev_gpt", &["pollux_bdev::part"]),
    ("vbdev_lvol", &["pollux_lvol"]),
    ("vbdev_passthru", &["pollux_bdev::passthru"]),
    ("vbdev_split", &["pollux_bdev::split"]),
];

/// A log flag that is not in [`FLAGS`].
#[derive(Debug, Clone, thiserror::Error)]
#[error("unknown log flag `{0}` (log_get_flags lists them)")]
pub struct UnknownFlag(String);

struct Logger {
    handle: Option<reload::Handle<Targets, tracing_subscriber::Registry>>,
    level: Level,
    print_level: Level,
    /// Indices into [`FLAGS`] of the flags set.
    flags: Vec<usize>,
}

fn logger() -> &'static Mutex<Logger> {
    static LOGGER: OnceLock<Mutex<Logger>> = OnceLock::new();
    LOGGER.get_or_init(|| Mutex::new(Logger { handle: None, level: Level::Notice, print_level: Level::Notice, flags: Vec::new() }))
}

/// What passes: every event at the level (the higher of the two levels:
/// there is a single sink), and every event of a flagged component.
fn targets(l: &Logger) -> Targets {
    let flagged = l.flags.iter().flat_map(|&i| FLAGS[i].1.iter()).map(|t| (*t, LevelFilter::TRACE));
    Targets::new().with_default(l.level.max(l.print_level).filter()).with_targets(flagged)
}

/// Install the stderr logger. Later calls only change the level.
pub fn init(level: Level) {
    let mut l = logger().lock().unwrap_or_else(|e| e.into_inner());
    l.level = level;
    l.print_level = level;
    if l.handle.is_some() {
        return apply(&l);
    }
    let (filter, handle) = reload::Layer::new(targets(&l));
    use std::io::IsTerminal;
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_thread_names(true)
        .with_target(true);
    if tracing_subscriber::registry().with(filter).with(fmt).try_init().is_ok() {
        l.handle = Some(handle);
    }
}

fn apply(l: &Logger) {
    if let Some(h) = &l.handle {
        let t = targets(l);
        let _ = h.modify(|f| *f = t);
    }
}

/// `log_set_flag` (`on`), `log_clear_flag` and `-L`: every event of the
/// flagged component is logged, whatever the level (SPDK also needs the
/// print level at DEBUG for its debug messages to show). As SPDK's,
/// `name` is a flag, `all`, or a pattern (`*`, `?`), in any case; one
/// that matches no flag is refused.
pub fn set_flag(name: &str, on: bool) -> Result<(), UnknownFlag> {
    let pattern = if name.eq_ignore_ascii_case("all") { "*".to_string() } else { name.to_ascii_lowercase() };
    let which: Vec<usize> = (0..FLAGS.len()).filter(|&i| matches_pattern(&pattern, FLAGS[i].0)).collect();
    if which.is_empty() {
        return Err(UnknownFlag(name.to_string()));
    }
    let mut l = logger().lock().unwrap_or_else(|e| e.into_inner());
    l.flags.retain(|x| !which.contains(x));
    if on {
        l.flags.extend(which);
    }
    apply(&l);
    Ok(())
}

/// Whether `name` matches `pattern`, where `*` stands for any run of
/// characters and `?` for one (fnmatch's, without classes).
fn matches_pattern(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    let (mut i, mut j) = (0, 0);
    // Where the last `*` was, and where in `name` it now stops.
    let mut star: Option<(usize, usize)> = None;
    while j < n.len() {
        match p.get(i) {
            Some(b'*') => {
                star = Some((i, j));
                i += 1;
            }
            Some(&c) if c == b'?' || c == n[j] => {
                i += 1;
                j += 1;
            }
            _ => match star {
                Some((si, sj)) => {
                    i = si + 1;
                    j = sj + 1;
                    star = Some((si, sj + 1));
                }
                None => return false,
            },
        }
    }
    p[i..].iter().all(|&c| c == b'*')
}

/// Every flag and whether it is set (`log_get_flags`).
pub fn flags() -> Vec<(&'static str, bool)> {
    let l = logger().lock().unwrap_or_else(|e| e.into_inner());
    FLAGS.iter().enumerate().map(|(i, (f, _))| (*f, l.flags.contains(&i))).collect()
}

pub fn set_level(level: Level) {
    let mut l = logger().lock().unwrap_or_else(|e| e.into_inner());
    l.level = level;
    apply(&l);
}

pub fn level() -> Level {
    logger().lock().unwrap_or_else(|e| e.into_inner()).level
}

pub fn set_print_level(level: Level) {
    let mut l = logger().lock().unwrap_or_else(|e| e.into_inner());
    l.print_level = level;
    apply(&l);
}

pub fn print_level() -> Level {
    logger().lock().unwrap_or_else(|e| e.into_inner()).print_level
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_take_spdk_names_patterns_and_all() {
        for (pat, name, want) in [
            ("nvmf", "nvmf", true),
            ("nvmf*", "nvmf_tcp", true),
            ("nvmf*", "nvme", false),
            ("*", "rpc", true),
            ("bdev_raid?", "bdev_raid1", true),
            ("bdev_raid?", "bdev_raid", false),
            ("*_tcp", "nvmf_tcp", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
        ] {
            assert_eq!(matches_pattern(pat, name), want, "{pat} {name}");
        }
        set_flag("NVMF*", true).unwrap();
        let on: Vec<&str> = flags().into_iter().filter(|f| f.1).map(|f| f.0).collect();
        assert_eq!(on, vec!["nvmf", "nvmf_tcp"]);
        set_flag("all", false).unwrap();
        assert!(flags().iter().all(|f| !f.1));
        assert!(set_flag("no_such*", true).is_err());
    }

    #[test]
    fn level_names_round_trip() {
        for l in Level::ALL {
            assert_eq!(l.name().parse::<Level>().unwrap(), l);
            assert_eq!(serde_json::to_value(l).unwrap(), serde_json::Value::from(l.name()));
        }
        assert_eq!("warn".parse::<Level>().unwrap(), Level::Warning);
        assert!("LOUD".parse::<Level>().is_err());
    }
}

/// A budget of log lines: the first few faults a client causes (or a
/// device's channel meets) are logged at the default level, the rest at
/// debug level, so one client repeating a bad request, or a device failing
/// every request, cannot flood the log (or slow its reactor with writes to
/// stderr). Reactor-owned, one per connection or channel.
#[derive(Debug, Default)]
pub struct FaultLog {
    logged: std::cell::Cell<u32>,
}

/// Faults of one client logged at the default level.
pub const FAULTS_LOGGED: u32 = 8;

/// What [`FaultLog::next`] allows.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultLevel {
    Notice,
    /// The last notice: say that the rest go to debug level.
    LastNotice,
    Debug,
}

impl FaultLog {
    pub const fn new() -> FaultLog {
        FaultLog { logged: std::cell::Cell::new(0) }
    }

    #[doc(hidden)]
    pub fn next(&self) -> FaultLevel {
        let n = self.logged.get();
        self.logged.set(n.saturating_add(1));
        match n + 1 {
            k if k < FAULTS_LOGGED => FaultLevel::Notice,
            FAULTS_LOGGED => FaultLevel::LastNotice,
            _ => FaultLevel::Debug,
        }
    }
}

#[doc(hidden)]
pub use tracing as __tracing;

/// Log through a [`FaultLog`] budget at level `$lvl` (`info`, `warn`...):
/// the first [`FAULTS_LOGGED`] lines at that level, the last of them
/// followed by `$rest` (saying where the others go), the others at debug.
/// `log_budgeted!(budget, warn, "rest", "fmt", args...)`.
#[macro_export]
macro_rules! log_budgeted {
    ($budget:expr, $lvl:ident, $rest:literal, $($arg:tt)+) => {
        match $budget.next() {
            $crate::log::FaultLevel::Notice => $crate::log::__tracing::$lvl!($($arg)+),
            $crate::log::FaultLevel::LastNotice => {
                $crate::log::__tracing::$lvl!($($arg)+);
                $crate::log::__tracing::$lvl!($rest);
            }
            $crate::log::FaultLevel::Debug => $crate::log::__tracing::debug!($($arg)+),
        }
    };
}

/// Log a client's fault through its [`FaultLog`]: `log_fault!(budget, "fmt", args...)`.
#[macro_export]
macro_rules! log_fault {
    ($budget:expr, $($arg:tt)+) => {
        $crate::log_budgeted!($budget, info, "(further faults of this client are logged at debug level)", $($arg)+)
    };
}

#[cfg(test)]
mod fault_log_tests {
    use super::*;

    #[test]
    fn a_client_gets_a_few_notices_then_debug() {
        let f = FaultLog::new();
        let levels: Vec<FaultLevel> = (0..FAULTS_LOGGED + 3).map(|_| f.next()).collect();
        assert!(levels[..FAULTS_LOGGED as usize - 1].iter().all(|l| *l == FaultLevel::Notice));
        assert_eq!(levels[FAULTS_LOGGED as usize - 1], FaultLevel::LastNotice);
        assert!(levels[FAULTS_LOGGED as usize..].iter().all(|l| *l == FaultLevel::Debug));
    }
}
