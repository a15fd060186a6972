//! The application framework (SPDK's `spdk_app`): parse the common options,
//! start reactors, serve RPC, replay a config file, initialise subsystems in
//! dependency order, and shut down cleanly on a signal or RPC.
//!
//! Start-up runs on the main reactor:
//! 1. the RPC server starts (state *startup*) and signals are watched;
//! 2. calls of the config file that are allowed at start-up run;
//! 3. unless `--wait-for-rpc`, `framework_start_init` happens by itself:
//!    subsystems initialise, the state becomes *runtime*, and the rest of the
//!    config file runs;
//! 4. `framework_wait_init` callers are answered.
//!
//! Shutdown stops the RPC server, finishes subsystems in reverse order, then
//! stops every reactor; reactors release their pollers and channels.

mod background;
pub mod config;
mod methods;
mod subsystem;

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use crate::cpuset::{CoreMask, CoreMaskError};
use crate::log::Level;
use crate::reactor::{self, PollStatus, Poller, ReactorId};
use crate::rpc::{Methods, Responder, RpcError, RpcServer, RpcState};
use crate::sys::{self, Interest, SignalFd};

pub use background::{Background, Reply};
pub use config::{ConfigCall, ConfigError};
pub use subsystem::{ConfigWriter, Done, Subsystem, omit_own_defaults};

/// The default RPC socket.
pub const DEFAULT_RPC_SOCKET: &str = "/var/tmp/pollux.sock";

/// Command-line options every Pollux application shares (SPDK's names).
#[derive(clap::Args, Debug, Clone)]
pub struct AppArgs {
    /// Reactor cores: a hex mask (0x3) or a list ([0,2] or [0-3])
    #[arg(short = 'm', long = "cpumask", default_value = "0x1", value_name = "MASK")]
    pub cpumask: CoreMask,
    /// JSON config file to load at start-up (SPDK's format)
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Unix socket of the JSON-RPC server
    #[arg(short = 'r', long = "rpc-socket", default_value = DEFAULT_RPC_SOCKET, value_name = "PATH")]
    pub rpc_socket: PathBuf,
    /// Hold start-up until the framework_start_init RPC
    #[arg(long)]
    pub wait_for_rpc: bool,
    /// Sleep in epoll when idle instead of busy polling
    #[arg(long)]
    pub interrupt_mode: bool,
    /// Log level: ERROR, WARNING, NOTICE, INFO or DEBUG
    #[arg(long, default_value = "NOTICE", value_name = "LEVEL")]
    pub log_level: Level,
    /// Log every event of a component, whatever the level (SPDK's log
    /// flags: nvmf, bdev_nvme, iscsi...; repeat for more; see log_get_flags)
    #[arg(short = 'L', long = "logflag", value_name = "FLAG")]
    pub log_flags: Vec<String>,
    /// Limit DMA memory (buffer pools, device queues) to this many MiB
    #[arg(short = 's', long = "mem-size", value_name = "MB")]
    pub mem_size: Option<u64>,
    /// Do not pin reactor threads to their cores (for shared test machines)
    #[arg(long, hide = true)]
    pub no_pin: bool,
    /// Serve Prometheus metrics on this address (IP:port) at /metrics
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,
    /// A config given in memory instead of `-c` (name for messages, JSON text).
    #[arg(skip)]
    pub embedded_config: Option<(String, String)>,
}

/// Why an application could not start.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    CoreMask(#[from] CoreMaskError),
    #[error("cannot read this process's CPU affinity: {0}")]
    Affinity(#[source] std::io::Error),
    #[error("cannot block shutdown signals: {0}")]
    Signals(#[source] std::io::Error),
    #[error("cannot start reactors: {0}")]
    Reactors(#[source] std::io::Error),
    #[error("{0}")]
    Subsystems(String),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    LogFlag(#[from] crate::log::UnknownFlag),
}

/// An application under construction: its subsystems and RPC methods.
pub struct App {
    name: String,
    methods: Rc<Methods>,
    subsystems: Vec<Rc<dyn Subsystem>>,
    on_started: Vec<Box<dyn FnOnce()>>,
}

/// Reactor-local state of the running application (on the main reactor).
struct AppState {
    name: String,
    args: AppArgs,
    methods: Rc<Methods>,
    subsystems: Vec<Rc<dyn Subsystem>>,
    /// How many subsystems finished init (these get a fini).
    inited: Cell<usize>,
    init_started: Cell<bool>,
    initialized: Cell<bool>,
    waiters: RefCell<Vec<Responder>>,
    on_started: RefCell<Vec<Box<dyn FnOnce()>>>,
    deferred: RefCell<Vec<ConfigCall>>,
    stopping: Cell<bool>,
    exit_code: Rc<Cell<i32>>,
    server: RefCell<Option<Rc<RpcServer>>>,
    pollers: RefCell<Vec<Poller>>,
}

fn state() -> Option<Rc<AppState>> {
    reactor::local::<AppState>()
}

impl App {
    pub fn new(name: &str) -> App {
        let mut app = App { name: name.to_string(), methods: Rc::new(Methods::new()), subsystems: Vec::new(), on_started: Vec::new() };
        methods::register(&app.methods);
        crate::metrics::register(&mut app);
        app
    }

    /// The RPC method table, for modules to register their methods.
    pub fn methods(&self) -> &Rc<Methods> {
        &self.methods
    }

    /// Add a subsystem (initialised after the ones it depends on).
    pub fn add_subsystem(&mut self, s: Rc<dyn Subsystem>) {
        assert!(self.subsystems.iter().all(|o| o.name() != s.name()), "subsystem {} added twice", s.name());
        self.subsystems.push(s);
    }

    /// Run `f` on the main reactor once start-up has finished (subsystems
    /// initialised, config loaded): how tools such as pollux-perf begin work.
    pub fn on_started(&mut self, f: impl FnOnce() + 'static) {
        self.on_started.push(Box::new(f));
    }

    /// Run until shutdown. Returns the process exit code.
    pub fn run(self, args: AppArgs) -> Result<i32, AppError> {
        let allowed = sys::allowed_cpus().map_err(AppError::Affinity)?;
        args.cpumask.check_allowed(&allowed)?;
        let subsystems = subsystem::sort(self.subsystems).map_err(AppError::Subsystems)?;
        for f in &args.log_flags {
            crate::log::set_flag(f, true)?;
        }
        // Read the config before starting anything, so a missing or
        // malformed file fails fast.
        let calls = match (&args.config, &args.embedded_config) {
            (Some(p), _) => config::load_file(p)?,
            (None, Some((name, text))) => config::load_str(name, text)?,
            (None, None) => Vec::new(),
        };
        crate::dma::set_limit(args.mem_size.map(|mb| (mb as usize) << 20));
        sys::block_shutdown_signals().map_err(AppError::Signals)?;
        let exit_code = Rc::new(Cell::new(0));
        let opts = reactor::Options {
            interrupt_mode: args.interrupt_mode,
            pin: !args.no_pin,
            ..reactor::Options::new(args.cpumask.cores().to_vec())
        };
        let st = Rc::new(AppState {
            name: self.name,
            args,
            methods: self.methods,
            subsystems,
            inited: Cell::new(0),
            init_started: Cell::new(false),
            initialized: Cell::new(false),
            waiters: RefCell::new(Vec::new()),
            on_started: RefCell::new(self.on_started),
            deferred: RefCell::new(Vec::new()),
            stopping: Cell::new(false),
            exit_code: exit_code.clone(),
            server: RefCell::new(None),
            pollers: RefCell::new(Vec::new()),
        });
        if let Some(addr) = st.args.metrics {
            let methods = st.methods.clone();
            st.on_started.borrow_mut().insert(0, Box::new(move || crate::metrics::start_with(methods, addr)));
        }
        reactor::launch(&opts, move || start(st, calls)).map_err(AppError::Reactors)?;
        // Device shutdowns started by the subsystems' ends run on threads.
        let under_way = reactor::wait_before_exit(Duration::ZERO);
        if under_way > 0 {
            tracing::info!("waiting for {under_way} device shutdown(s) or bring-up(s) to end (at most {EXIT_WAIT:?})");
        }
        let left = reactor::wait_before_exit(EXIT_WAIT);
        if left > 0 {
            tracing::warn!("{left} shutdown(s) still under way after {EXIT_WAIT:?}; exiting without them");
        }
        run_exit_hooks();
        Ok(exit_code.get())
    }
}

/// What runs once the reactors have stopped and the work that must end
/// before the process has ended ([`at_exit`]).
static AT_EXIT: std::sync::Mutex<Vec<Box<dyn FnOnce() + Send>>> = std::sync::Mutex::new(Vec::new());

/// Run `f` at exit from [`App::run`], on the thread that called it, after
/// the reactors have stopped and the `off_reactor_before_exit` work has
/// ended (or the wait for it has): for what such work left that no
/// reactor was there any more to take (a device brought up while the
/// application stopped).
pub fn at_exit(f: impl FnOnce() + Send + 'static) {
    AT_EXIT.lock().unwrap_or_else(|e| e.into_inner()).push(Box::new(f));
}

/// Run the [`at_exit`] hooks, in the order they were added.
pub fn run_exit_hooks() {
    let hooks = std::mem::take(&mut *AT_EXIT.lock().unwrap_or_else(|e| e.into_inner()));
    for f in hooks {
        f();
    }
}

/// How long the process waits at exit for device shutdowns still under
/// way on their threads (an NVMe controller's is bounded by RTD3E, at most
/// 60 s).
const EXIT_WAIT: Duration = Duration::from_secs(60);

fn start(st: Rc<AppState>, calls: Vec<ConfigCall>) {
    reactor::set_local(st.clone());
    tracing::info!(
        "{} {} starting on {} reactor(s), cores {}{}",
        st.name,
        crate::VERSION,
        st.args.cpumask.cores().len(),
        st.args.cpumask.to_list(),
        if st.args.interrupt_mode { " (interrupt mode)" } else { "" }
    );
    st.methods.set_state(RpcState::Startup);
    // With --wait-for-rpc, calls are served from the start (they drive the
    // start-up); otherwise clients wait until start-up has finished.
    match RpcServer::start(&st.args.rpc_socket, st.methods.clone(), st.args.wait_for_rpc) {
        Ok(s) => *st.server.borrow_mut() = Some(s),
        Err(e) => {
            tracing::error!("{e}");
            return shutdown(1);
        }
    }
    if let Err(e) = watch_signals(&st) {
        tracing::error!("cannot watch for shutdown signals: {e}");
        return shutdown(1);
    }
    if let Some(c) = calls.iter().find(|c| !st.methods.contains(&c.method)) {
        tracing::error!("config {}: {}: unknown method '{}'", config_name(&st), c.origin, c.method);
        return shutdown(1);
    }
    replay(calls.into(), RpcState::Startup);
}

fn config_name(st: &AppState) -> String {
    match (&st.args.config, &st.args.embedded_config) {
        (Some(p), _) => p.display().to_string(),
        (None, Some((name, _))) => name.clone(),
        (None, None) => String::new(),
    }
}

fn watch_signals(st: &AppState) -> std::io::Result<()> {
    let sfd = SignalFd::new()?;
    use std::os::fd::AsRawFd;
    let fd = sfd.as_raw_fd();
    let poller = reactor::register_timed_poller("app_signals", Duration::from_millis(10), move || match sfd.read() {
        Some(sig) => {
            tracing::info!("received signal {sig}, shutting down");
            shutdown(0);
            PollStatus::Busy
        }
        None => PollStatus::Idle,
    });
    poller.add_wake_fd(fd, Interest::READABLE)?;
    st.pollers.borrow_mut().push(poller);
    Ok(())
}

/// Replay config calls one after another. In the start-up phase, calls not
/// allowed yet are kept for after init.
fn replay(mut calls: VecDeque<ConfigCall>, phase: RpcState) {
    let Some(st) = state() else { return };
    if st.stopping.get() {
        return;
    }
    let Some(call) = calls.pop_front() else {
        return match phase {
            RpcState::Startup if st.args.wait_for_rpc => {
                tracing::info!("waiting for the framework_start_init RPC");
            }
            RpcState::Startup => start_init(),
            RpcState::Runtime => finish_start(),
        };
    };
    if phase == RpcState::Startup && st.methods.allowed_in(&call.method, RpcState::Startup) != Some(true) {
        st.deferred.borrow_mut().push(call);
        return replay(calls, phase);
    }
    let me = reactor::current();
    let (origin, method) = (call.origin.clone(), call.method.clone());
    st.methods.call(
        &call.method,
        call.params,
        Responder::new(move |r| {
            reactor::send_msg(me, move || match r {
                Ok(_) => replay(calls, phase),
                Err(e) => {
                    if let Some(st) = state() {
                        tracing::error!("config {}: {origin} ({method}) failed: {}", config_name(&st), e.message);
                    }
                    shutdown(1);
                }
            })
        }),
    );
}

/// Start subsystem initialisation (`framework_start_init`).
fn start_init() {
    let Some(st) = state() else { return };
    if st.init_started.replace(true) {
        return;
    }
    init_next(0);
}

fn init_next(i: usize) {
    let Some(st) = state() else { return };
    if st.stopping.get() {
        return;
    }
    let Some(s) = st.subsystems.get(i).cloned() else {
        st.methods.set_state(RpcState::Runtime);
        let deferred = std::mem::take(&mut *st.deferred.borrow_mut());
        return replay(deferred.into(), RpcState::Runtime);
    };
    let me = reactor::current();
    tracing::debug!("initialising subsystem {}", s.name());
    s.init(Box::new(move |r| {
        reactor::send_msg(me, move || match r {
            Ok(()) => {
                if let Some(st) = state() {
                    st.inited.set(i + 1);
                }
                init_next(i + 1)
            }
            Err(e) => {
                if let Some(st) = state() {
                    tracing::error!("subsystem {} failed to initialise: {e}", st.subsystems[i].name());
                }
                shutdown(1)
            }
        })
    }));
}

fn finish_start() {
    let Some(st) = state() else { return };
    st.initialized.set(true);
    for w in st.waiters.borrow_mut().drain(..) {
        w.ok(true);
    }
    if let Some(s) = st.server.borrow().as_ref() {
        if let Err(e) = s.accept_clients() {
            tracing::error!("{e}");
            return shutdown(1);
        }
    }
    tracing::info!("{} started; RPC on {}", st.name, st.args.rpc_socket.display());
    let hooks = std::mem::take(&mut *st.on_started.borrow_mut());
    for f in hooks {
        f();
    }
}

/// Whether a shutdown has begun (main reactor).
pub fn is_stopping() -> bool {
    state().is_some_and(|s| s.stopping.get())
}

/// Whether subsystems are initialised and the config is loaded.
pub fn is_initialized() -> bool {
    state().is_some_and(|s| s.initialized.get())
}

/// Answer `resp` once start-up has finished (at once if it has).
fn wait_init(resp: Responder) {
    match state() {
        Some(st) if !st.initialized.get() => st.waiters.borrow_mut().push(resp),
        _ => resp.ok(true),
    }
}

/// Begin a clean shutdown with this exit code. Call on the main reactor; from
/// elsewhere use [`request_shutdown`]. Repeated calls keep the first code
/// unless a later one reports a failure.
pub fn shutdown(code: i32) {
    let Some(st) = state() else {
        reactor::stop_all();
        return;
    };
    if code != 0 {
        st.exit_code.set(code);
    }
    if st.stopping.replace(true) {
        return;
    }
    tracing::info!("{} shutting down", st.name);
    // Stop the RPC server one message later, so answers already on their
    // way (queued before this point) are still written to their clients.
    reactor::send_msg(reactor::current(), || {
        if let Some(st) = state() {
            if let Some(s) = st.server.borrow_mut().take() {
                s.stop();
            }
        }
    });
    st.waiters.borrow_mut().clear();
    // A subsystem that never finishes must not keep the process alive.
    let watchdog = reactor::register_timed_poller("app_shutdown_watchdog", Duration::from_secs(5), || {
        tracing::error!("subsystems did not finish within 5 s; stopping anyway");
        reactor::stop_all();
        PollStatus::Busy
    });
    st.pollers.borrow_mut().push(watchdog);
    fini_next(st.inited.get());
}

/// Ask the main reactor to shut down, from any reactor.
pub fn request_shutdown(code: i32) {
    reactor::send_msg(ReactorId(0), move || shutdown(code));
}

fn fini_next(n: usize) {
    let Some(st) = state() else { return };
    if n == 0 {
        st.pollers.borrow_mut().clear();
        reactor::stop_all();
        return;
    }
    let s = st.subsystems[n - 1].clone();
    tracing::debug!("finishing subsystem {}", s.name());
    let me = reactor::current();
    s.fini(Box::new(move || reactor::send_msg(me, move || fini_next(n - 1))));
}

/// Names and dependencies of subsystems, in init order.
pub(crate) fn subsystem_list() -> Vec<(&'static str, Vec<&'static str>)> {
    state().map(|s| s.subsystems.iter().map(|s| (s.name(), s.depends_on().to_vec())).collect()).unwrap_or_default()
}

/// The config of one subsystem, or `None` if there is no such subsystem.
pub(crate) fn subsystem_config(name: &str, with_batches: bool) -> Option<Vec<serde_json::Value>> {
    let st = state()?;
    let s = st.subsystems.iter().find(|s| s.name() == name)?;
    let mut w = ConfigWriter::default();
    s.write_config(&mut w);
    Some(w.finish(with_batches))
}

/// `framework_start_init` from RPC.
fn rpc_start_init(resp: Responder) {
    let Some(st) = state() else { return resp.err(RpcError::internal("no application")) };
    if st.init_started.get() {
        return resp.err(RpcError::new(RpcError::INVALID_STATE, "framework initialization already started"));
    }
    st.waiters.borrow_mut().push(resp);
    start_init();
}

#[cfg(test)]
mod tests;
