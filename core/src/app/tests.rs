//! The application run in-process on its own thread, driven over its socket.

use super::*;
use crate::rpc::{Client, ClientError, NoParams, States};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

type Log = Arc<Mutex<Vec<String>>>;

/// A subsystem that records its life cycle and owns a list of "things"
/// created by its `thing_create` RPC.
struct Things {
    name: &'static str,
    deps: &'static [&'static str],
    log: Log,
    things: RefCell<Vec<String>>,
}

impl Subsystem for Things {
    fn name(&self) -> &'static str {
        self.name
    }
    fn depends_on(&self) -> &'static [&'static str] {
        self.deps
    }
    fn init(&self, done: Done) {
        self.log.lock().unwrap().push(format!("init {}", self.name));
        // Finish on another reactor, to exercise the Send path.
        let n = reactor::count();
        reactor::send_msg(ReactorId(n - 1), move || done(Ok(())));
    }
    fn fini(&self, done: Box<dyn FnOnce() + Send>) {
        self.log.lock().unwrap().push(format!("fini {}", self.name));
        done()
    }
    fn write_config(&self, out: &mut ConfigWriter) {
        out.call("thing_set_options", json!({"verbose": true}));
        for t in self.things.borrow().iter() {
            out.call("thing_create", json!({ "name": t }));
        }
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateThing {
    name: String,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ThingOptions {
    #[allow(dead_code)]
    verbose: bool,
}

struct Running {
    socket: PathBuf,
    thread: JoinHandle<Result<i32, String>>,
    log: Log,
    _dir: TempDir,
}

struct TempDir(PathBuf);
impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("pollux-app-{tag}-{}-{:?}", std::process::id(), std::thread::current().id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn launch(tag: &str, config: Option<Value>, wait_for_rpc: bool, reactors: usize) -> Running {
    let dir = TempDir::new(tag);
    let socket = dir.0.join("rpc.sock");
    let config_path = config.map(|c| {
        let p = dir.0.join("config.json");
        std::fs::write(&p, serde_json::to_vec_pretty(&c).unwrap()).unwrap();
        p
    });
    let log: Log = Arc::default();
    let (l, s) = (log.clone(), socket.clone());
    let thread = std::thread::spawn(move || {
        let mut app = App::new("test-app");
        let things = Rc::new(Things { name: "things", deps: &["base"], log: l.clone(), things: RefCell::default() });
        app.add_subsystem(things.clone());
        app.add_subsystem(Rc::new(Things { name: "base", deps: &[], log: l.clone(), things: RefCell::default() }));
        let t = Rc::downgrade(&things);
        app.methods().register("thing_create", States::RUNTIME, move |p: CreateThing, r: Responder| {
            let t = t.upgrade().unwrap();
            if t.things.borrow().contains(&p.name) {
                return r.err(RpcError::errno(libc::EEXIST, format!("thing {} already exists", p.name)));
            }
            t.things.borrow_mut().push(p.name);
            r.ok(true)
        });
        app.methods().register("thing_set_options", States::STARTUP, |_: ThingOptions, r: Responder| r.ok(true));
        app.methods().register("test_shutdown", States::ANY, |_: NoParams, r: Responder| {
            r.ok(true);
            reactor::send_msg(reactor::current(), || shutdown(0));
        });
        let cores = vec![0; 1].into_iter().chain(1..reactors).collect();
        let args = AppArgs { config: config_path, wait_for_rpc, ..test_args(cores, s) };
        app.run(args).map_err(|e| e.to_string())
    });
    Running { socket, thread, log, _dir: dir }
}

/// Options for an in-process test app: interrupt mode, unpinned.
fn test_args(cores: Vec<usize>, rpc_socket: PathBuf) -> AppArgs {
    AppArgs {
        cpumask: CoreMask::from_cores(cores),
        config: None,
        rpc_socket,
        wait_for_rpc: false,
        interrupt_mode: true,
        log_level: Level::Notice,
        log_flags: Vec::new(),
        mem_size: None,
        no_pin: true,
        metrics: None,
        embedded_config: None,
    }
}

fn connect(r: &Running) -> Client {
    for _ in 0..500 {
        if let Ok(c) = Client::connect(&r.socket) {
            return c;
        }
        if r.thread.is_finished() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("app did not start listening on {}", r.socket.display());
}

fn stop(r: Running) -> (i32, Vec<String>) {
    let mut c = connect(&r);
    c.call("test_shutdown", None).unwrap();
    let code = r.thread.join().unwrap().unwrap();
    (code, r.log.lock().unwrap().clone())
}

#[test]
fn starts_inits_in_order_and_finishes_in_reverse() {
    let r = launch("order", None, false, 2);
    let mut c = connect(&r);
    assert_eq!(c.call("framework_wait_init", None).unwrap(), json!(true));
    let subs = c.call("framework_get_subsystems", None).unwrap();
    assert_eq!(subs, json!([{"subsystem": "base", "depends_on": []}, {"subsystem": "things", "depends_on": ["base"]}]));
    let (code, log) = stop(r);
    assert_eq!(code, 0);
    assert_eq!(log, ["init base", "init things", "fini things", "fini base"]);
}

#[test]
fn config_file_replays_startup_then_runtime_calls() {
    let cfg = json!({"subsystems": [
        {"subsystem": "things", "config": [
            {"method": "thing_create", "params": {"name": "a"}},
            {"method": "thing_set_options", "params": {"verbose": true}},
            [{"method": "thing_create", "params": {"name": "b"}}]
        ]}
    ]});
    let r = launch("config", Some(cfg), false, 1);
    let mut c = connect(&r);
    c.call("framework_wait_init", None).unwrap();
    let conf = c.call("framework_get_config", Some(json!({"name": "things"}))).unwrap();
    assert_eq!(
        conf,
        json!([
            {"method": "thing_set_options", "params": {"verbose": true}},
            {"method": "thing_create", "params": {"name": "a"}},
            {"method": "thing_create", "params": {"name": "b"}}
        ])
    );
    let e = c.call("framework_get_config", Some(json!({"name": "nope"}))).unwrap_err();
    assert!(matches!(e, ClientError::Rpc(ref e) if e.code == RpcError::INVALID_PARAMS), "{e}");
    assert_eq!(stop(r).0, 0);
}

#[test]
fn wait_for_rpc_holds_init_until_framework_start_init() {
    let r = launch("wait", None, true, 1);
    let mut c = connect(&r);
    // Start-up state: runtime methods are refused, start-up ones allowed.
    let e = c.call("thing_create", Some(json!({"name": "x"}))).unwrap_err();
    assert!(matches!(e, ClientError::Rpc(ref e) if e.code == RpcError::INVALID_STATE), "{e}");
    let current = c.call("rpc_get_methods", Some(json!({"current": true}))).unwrap();
    assert!(current.as_array().unwrap().contains(&json!("framework_start_init")));
    assert!(!current.as_array().unwrap().contains(&json!("thing_create")));
    assert_eq!(c.call("thing_set_options", Some(json!({"verbose": false}))).unwrap(), json!(true));
    assert!(r.log.lock().unwrap().is_empty(), "nothing initialised yet");
    assert_eq!(c.call("framework_start_init", None).unwrap(), json!(true));
    assert_eq!(r.log.lock().unwrap().len(), 2);
    assert_eq!(c.call("thing_create", Some(json!({"name": "x"}))).unwrap(), json!(true));
    let e = c.call("framework_start_init", None).unwrap_err();
    assert!(matches!(e, ClientError::Rpc(ref e) if e.code == RpcError::INVALID_STATE), "{e}");
    assert_eq!(stop(r).0, 0);
}

#[test]
fn a_failing_config_entry_stops_start_up_with_code_1() {
    let cfg = json!({"subsystems": [{"subsystem": "things", "config": [
        {"method": "thing_create", "params": {"name": "a"}},
        {"method": "thing_create", "params": {"name": "a"}}
    ]}]});
    let r = launch("badcfg", Some(cfg), false, 1);
    let code = r.thread.join().unwrap().unwrap();
    assert_eq!(code, 1);
    let cfg = json!({"subsystems": [{"subsystem": "things", "config": [{"method": "no_such_method"}]}]});
    let r = launch("unknown", Some(cfg), false, 1);
    assert_eq!(r.thread.join().unwrap().unwrap(), 1);
    let cfg = json!({"subsystems": [{"subsystem": "things", "config": [{"method": "thing_create", "params": {"nom": "a"}}]}]});
    let r = launch("badparam", Some(cfg), false, 1);
    assert_eq!(r.thread.join().unwrap().unwrap(), 1);
}

#[test]
fn unreadable_config_fails_before_start() {
    let dir = TempDir::new("nofile");
    let args = AppArgs { config: Some(dir.0.join("missing.json")), ..test_args(vec![0], dir.0.join("s")) };
    let err = App::new("x").run(args).unwrap_err();
    assert!(err.to_string().contains("missing.json"), "{err}");
}

#[test]
fn core_masks_outside_the_affinity_are_refused() {
    let dir = TempDir::new("mask");
    let args = test_args(vec![1000], dir.0.join("s"));
    let err = App::new("x").run(args).unwrap_err();
    assert!(err.to_string().contains("core 1000 is not available"), "{err}");
}

#[test]
fn reactor_and_thread_statistics_have_spdk_shapes() {
    let r = launch("stats", None, false, 2);
    let mut c = connect(&r);
    c.call("framework_wait_init", None).unwrap();
    let re = c.call("framework_get_reactors", None).unwrap();
    assert!(re["tick_rate"].as_u64().unwrap() > 0);
    let list = re["reactors"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["lw_threads"][0]["name"], "app_thread");
    assert!(list[1]["in_interrupt"].as_bool().unwrap());
    let ts = c.call("thread_get_stats", None).unwrap();
    assert_eq!(ts["threads"].as_array().unwrap().len(), 2);
    let tp = c.call("thread_get_pollers", None).unwrap();
    let names: Vec<&str> = tp["threads"][0]["timed_pollers"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert!(names.contains(&"rpc_server") && names.contains(&"app_signals"), "{names:?}");
    assert!(tp["threads"][0]["timed_pollers"][0]["period_ticks"].as_u64().unwrap() > 0);
    assert_eq!(stop(r).0, 0);
}
