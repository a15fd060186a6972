//! Helpers for Pollux's cross-crate tests: start the real daemon, drive it
//! with our client and with real third-party clients, and clean up.
//!
//! Binaries are taken from the cargo target directory of the test itself
//! (`target/<profile>/`), so `cargo build --workspace --bins` must run first;
//! the README's test command does. A missing binary or client tool fails the
//! test with a message saying how to provide it: nothing is skipped.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

pub mod ceph;
pub mod iscsi_host;
pub mod iscsi_proxy;
pub mod nvmf_client;
pub mod nvmf_proxy;
pub mod relay;
pub mod tgtd;

use pollux_core::rpc::{Client, ClientError};
use serde_json::Value;

/// Directory holding the workspace's binaries for the current profile.
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("POLLUX_BIN_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test> -> target/<profile>
    exe.parent().and_then(Path::parent).expect("target dir layout").to_path_buf()
}

/// Path of a workspace binary; panics with instructions if it was not built.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} is missing: build the binaries first (`cargo build --workspace --bins` with the same profile), \
         or set POLLUX_BIN_DIR",
        p.display()
    );
    p
}

/// Path of an external tool; panics with the package that provides it.
pub fn tool(name: &str, how: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let p = dir.join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!("`{name}` is not installed; it is required by this test ({how}). The README's test command installs it.");
}

/// A private temporary directory, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let p = std::env::temp_dir().join(format!("pollux-test-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, p: &str) -> PathBuf {
        self.0.join(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running `pollux-tgt`, stopped (and reaped) on drop.
pub struct Daemon {
    child: Option<Child>,
    pub socket: PathBuf,
    pub dir: TempDir,
    log: PathBuf,
}

/// Options for [`Daemon::start`].
#[derive(Clone, Debug)]
pub struct DaemonOpts {
    pub cpumask: String,
    pub interrupt_mode: bool,
    pub wait_for_rpc: bool,
    pub config: Option<Value>,
    pub extra: Vec<String>,
}

impl Default for DaemonOpts {
    fn default() -> Self {
        // Interrupt mode by default so that parallel tests do not each burn
        // a core busy-polling on this small machine; tests of busy polling
        // ask for it.
        DaemonOpts { cpumask: "0x1".into(), interrupt_mode: true, wait_for_rpc: false, config: None, extra: Vec::new() }
    }
}

impl Daemon {
    /// Start the daemon and wait until its RPC socket answers.
    pub fn start(opts: DaemonOpts) -> Daemon {
        let d = Daemon::spawn(&opts);
        d.wait_ready(opts.wait_for_rpc);
        d
    }

    /// Start the daemon without waiting (for tests of failing start-ups).
    pub fn spawn(opts: &DaemonOpts) -> Daemon {
        let dir = TempDir::new("tgt");
        let socket = dir.join("rpc.sock");
        let log = dir.join("tgt.log");
        let mut cmd = Command::new(bin("pollux-tgt"));
        cmd.arg("-m").arg(&opts.cpumask).arg("-r").arg(&socket).arg("--no-pin");
        if opts.interrupt_mode {
            cmd.arg("--interrupt-mode");
        }
        if opts.wait_for_rpc {
            cmd.arg("--wait-for-rpc");
        }
        if let Some(c) = &opts.config {
            let p = dir.join("config.json");
            std::fs::write(&p, serde_json::to_vec_pretty(c).unwrap()).unwrap();
            cmd.arg("-c").arg(p);
        }
        cmd.args(&opts.extra);
        let logf = std::fs::File::create(&log).unwrap();
        cmd.stdout(logf.try_clone().unwrap()).stderr(logf).stdin(Stdio::null());
        let child = cmd.spawn().expect("spawn pollux-tgt");
        Daemon { child: Some(child), socket, dir, log }
    }

    /// Wait until the socket answers and, unless start-up is held for RPC,
    /// until initialisation has finished.
    fn wait_ready(&self, wait_for_rpc: bool) {
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(20) {
            if let Ok(mut c) = Client::connect(&self.socket) {
                c.set_timeout(Some(Duration::from_secs(20))).unwrap();
                let method = if wait_for_rpc { "rpc_get_methods" } else { "framework_wait_init" };
                if c.call(method, None).is_ok() {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("pollux-tgt did not come up; its log:\n{}", self.log());
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// A new RPC connection.
    pub fn client(&self) -> Client {
        let mut c = Client::connect(&self.socket).unwrap_or_else(|e| panic!("{e}; log:\n{}", self.log()));
        c.set_timeout(Some(Duration::from_secs(30))).unwrap();
        let _ = &mut c;
        c
    }

    /// Call a method on a new connection.
    pub fn call(&self, method: &str, params: Option<Value>) -> Result<Value, ClientError> {
        self.client().call(method, params)
    }

    /// Free and total buffers of the first reactor's large iobuf pool
    /// (`iobuf_get_stats`): whether data buffers are out.
    pub fn large_buffers(&self) -> (u64, u64) {
        let v = self.call("iobuf_get_stats", None).expect("iobuf_get_stats");
        let p = &v.as_array().expect("pools")[0]["large_pool"];
        (p["free"].as_u64().expect("free"), p["total"].as_u64().expect("total"))
    }

    /// Everything the daemon printed so far.
    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// Send a signal to the daemon.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill with a pid we spawned and have not reaped.
        unsafe { libc::kill(self.pid() as i32, sig) };
    }

    /// Wait for the daemon to exit, up to `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let t0 = Instant::now();
        let child = self.child.as_mut()?;
        while t0.elapsed() < limit {
            if let Some(st) = child.try_wait().expect("wait") {
                self.child = None;
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        None
    }

    /// Stop with SIGTERM and return the exit status.
    pub fn stop(self) -> ExitStatus {
        self.stop_with_log().0
    }

    /// [`Daemon::stop`], and everything the daemon printed, to its end.
    pub fn stop_with_log(mut self) -> (ExitStatus, String) {
        self.signal(libc::SIGTERM);
        let log = self.log();
        let st = self.wait_exit(Duration::from_secs(10)).unwrap_or_else(|| panic!("pollux-tgt did not exit on SIGTERM; log:\n{log}"));
        let all = self.log();
        if !st.success() {
            // Shown with the failing test's output: how it ended, and its
            // last words (the log as it was at SIGTERM, then the rest).
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            let after = all.get(log.len()..).unwrap_or("");
            eprintln!(
                "pollux-tgt ended with {st} after SIGTERM; log before (last lines):\n{}\n--- after SIGTERM:\n{after}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        (st, all)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `pollux-perf` on the bdevs of `config` (written to `dir`/perf.json), in
/// interrupt mode and unpinned (tests share the machine), its RPC socket
/// in `dir`; `args` add the workload. Run it with `.output()` or `.spawn()`.
pub fn perf_command(dir: &TempDir, config: &Value, args: &[&str]) -> Command {
    let cfg = dir.join("perf.json");
    std::fs::write(&cfg, serde_json::to_vec(config).unwrap()).unwrap();
    let mut c = Command::new(bin("pollux-perf"));
    c.arg("-c").arg(&cfg).args(["--interrupt-mode", "--no-pin", "-r"]).arg(dir.join("perf.sock")).args(args);
    c
}

/// A client of a pollux-perf (or any app) started with `-r sock`, once its
/// socket answers (within `limit`) and it has started; calls time out
/// after `timeout`.
pub fn app_client(sock: &Path, limit: Duration, timeout: Duration) -> pollux_core::rpc::Client {
    let t0 = Instant::now();
    let mut c = loop {
        if let Ok(c) = pollux_core::rpc::Client::connect(sock) {
            break c;
        }
        assert!(t0.elapsed() < limit, "{} did not start", sock.display());
        std::thread::sleep(Duration::from_millis(20));
    };
    c.set_timeout(Some(timeout)).unwrap();
    c.call("framework_wait_init", None).unwrap();
    c
}

/// Wait for a `pollux-perf --json` run and check it ended clean: exit 0,
/// some I/O, no error, no verify mismatch. Returns its report and stderr.
pub fn clean_perf_run(perf: Child) -> (Value, String) {
    let out = perf.wait_with_output().expect("wait for pollux-perf");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let r: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("no report ({e}): {err}"));
    assert!(out.status.success(), "{r}\n{err}");
    assert_eq!(r["total"]["errors"], 0, "{r}\n{err}");
    assert!(r["total"]["ios"].as_u64().unwrap_or(0) > 0, "{r}");
    assert!(r["verify_mismatches"].as_array().is_none_or(|m| m.is_empty()), "{r}");
    (r, err)
}

/// Run `pollux-perf -w verify` on bdev `bdev` for `secs` seconds at depth
/// `qd` and `size` bytes (config `cfg`) and check it ended clean: some
/// I/O, no error, no mismatch. `what` names the run in failures.
pub fn verify_run(dir: &TempDir, cfg: &Value, bdev: &str, qd: u32, size: u32, secs: u32, what: &str) -> Value {
    let child = perf_command(
        dir,
        cfg,
        &["-b", bdev, "-q", &qd.to_string(), "-o", &size.to_string(), "-w", "verify", "-t", &secs.to_string(), "-m", "0x1", "--json"],
    )
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .expect("run pollux-perf");
    let out = child.wait_with_output().expect("wait for pollux-perf");
    let err = String::from_utf8_lossy(&out.stderr);
    let r: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{what}: no report ({e}):\n{err}"));
    assert!(out.status.success(), "{what}: {r}\n{err}");
    assert!(r["total"]["ios"].as_u64().unwrap_or(0) > 0, "{what}: {r}");
    assert_eq!(r["total"]["errors"], 0, "{what}: {r}");
    assert!(r["verify_mismatches"].as_array().is_none_or(|m| m.is_empty()), "{what}: {r}");
    assert_few_allocations(&r, what);
    r
}

/// Heap allocations a daemon's reactors have made (summed over them), as
/// `thread_get_stats` counts them.
pub fn reactor_allocations(c: &mut Client) -> u64 {
    let st = c.call("thread_get_stats", None).expect("thread_get_stats");
    st["threads"]
        .as_array()
        .expect("threads")
        .iter()
        .map(|t| t["allocations"].as_u64().unwrap_or_else(|| panic!("the daemon does not count allocations: {st}")))
        .sum()
}

/// What a window's two snapshots cost the daemon in allocations (their
/// RPCs' own parsing and answers), measured with no I/O running: an
/// allocations snapshot, `ops` twice (the count the window divides by),
/// and the closing allocations snapshot.
pub fn snapshot_cost(c: &mut Client, ops: impl Fn(&mut Client) -> u64) -> u64 {
    let a = reactor_allocations(c);
    ops(c);
    ops(c);
    reactor_allocations(c) - a
}

/// A `pollux-perf --json` report's reactors allocated nothing per I/O
/// (docs/memory.md): at most one per 100 I/Os, beyond 256 for lists
/// growing as the first requests go out (a 1 MiB iSCSI write's 128
/// Data-Out PDUs grow each session's queue some ten times) and the few a
/// second some hosts' timers make.
pub fn assert_few_allocations(r: &Value, what: &str) {
    let n = r["allocations"]["count"].as_u64().unwrap_or_else(|| panic!("{what}: pollux-perf counted no allocations: {r}"));
    let ios = r["total"]["ios"].as_u64().unwrap_or(0);
    assert!(n <= 256 + ios / 100, "{what}: pollux-perf's reactors allocated {n} times over {ios} I/Os (see docs/memory.md): {r}");
}

/// Run a shell script (`sh -e`); panic with its output if it fails.
/// A TCP port for a listener of a test, free now on 127.0.0.1, from below
/// Linux's ephemeral range (32768-60999): a port the kernel handed out
/// for bind(0) can be given next to another test's outgoing connection
/// before the daemon binds it ("Address already in use"), one from
/// 20000-32767 cannot. Ports are handed out in turn from a base the
/// process id picks, each checked free.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const LOW: u32 = 20000;
    const SPAN: u32 = 12000;
    let base = std::process::id().wrapping_mul(2654435761) % SPAN;
    for _ in 0..SPAN {
        let port = (LOW + (base + NEXT.fetch_add(1, Ordering::Relaxed)) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in 20000-31999 on 127.0.0.1");
}

pub fn sh(script: &str) {
    let out = Command::new("sh").args(["-ec", script]).output().expect("run sh");
    assert!(out.status.success(), "{script}\n{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

/// Run SPDK's own client (`spdk-rpc`, from PyPI `spdk`) against a socket.
pub fn spdk_rpc(socket: &Path, args: &[&str]) -> Output {
    let tool = tool("spdk-rpc", "SPDK's JSON-RPC client: pip install spdk");
    Command::new(tool).arg("-s").arg(socket).args(args).output().expect("run spdk-rpc")
}

/// Run `pollux-rpc` against a socket.
pub fn pollux_rpc(socket: &Path, args: &[&str]) -> Output {
    Command::new(bin("pollux-rpc")).arg("-s").arg(socket).args(args).output().expect("run pollux-rpc")
}

/// Run a data-verifying fio job on `dev` (libaio, O_DIRECT, crc32c
/// verify, JSON output) with `args` for the workload, fail on any error
/// it reports, and check that it read back at least `verified` bytes.
pub fn fio_verify(what: &str, dev: &str, args: &[&str], verified: u64) {
    let out = Command::new(tool("fio", "fio, a data-verifying workload"))
        .args([&format!("--name={what}"), &format!("--filename={dev}"), "--direct=1", "--ioengine=libaio"])
        .args(args)
        .args(["--verify=crc32c", "--do_verify=1", "--verify_fatal=1", "--output-format=json"])
        .output()
        .expect("run fio");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "fio {what} failed: {text}\n{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_str(&text[text.find('{').expect("fio JSON")..]).expect("fio JSON");
    assert_eq!(v["jobs"][0]["error"], 0, "fio {what}: {text}");
    assert!(v["jobs"][0]["read"]["io_bytes"].as_u64().unwrap_or(0) >= verified, "fio {what}: verify reads: {text}");
}

/// Assert success and return stdout as text.
pub fn ok_stdout(what: &str, out: &Output) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A memory figure of `/proc/<pid>/status` (`VmRSS`, `VmHWM`...), in bytes.
fn status_bytes(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    let kb: u64 = s
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"));
    kb * 1024
}

/// Resident memory of a process, in bytes (VmRSS).
pub fn rss_bytes(pid: u32) -> u64 {
    status_bytes(pid, "VmRSS")
}

/// The most resident memory a process has had, in bytes (VmHWM).
pub fn peak_rss_bytes(pid: u32) -> u64 {
    status_bytes(pid, "VmHWM")
}

/// CPU time (user + system) a process has used, in seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read stat");
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks as f64 / hz
}

/// In a guest with Linux's NVMe host: the path through TCP port `port` to
/// subsystem `subnqn`, as sysfs shows it: (controller state, ANA state of
/// its namespace 1 path, `""` before the host has read it). Native
/// multipath puts the path device (`nvme<subsys>c<ctrl>n1`) under the
/// controller.
pub fn kernel_nvme_path(subnqn: &str, port: u16) -> Option<(String, String)> {
    let read = |p: PathBuf| std::fs::read_to_string(p).map(|s| s.trim().to_string()).unwrap_or_default();
    for e in std::fs::read_dir("/sys/class/nvme").ok()? {
        let c = e.ok()?.path();
        if read(c.join("subsysnqn")) != subnqn || !read(c.join("address")).contains(&format!("trsvcid={port}")) {
            continue;
        }
        let name = c.file_name()?.to_string_lossy().to_string();
        let path = std::fs::read_dir(&c).ok()?.flatten().map(|e| e.path()).find(|p| {
            p.file_name().is_some_and(|n| {
                let n = n.to_string_lossy();
                n.starts_with("nvme") && n.contains('c') && n.ends_with("n1") && n != name
            })
        });
        return Some((read(c.join("state")), path.map(|p| read(p.join("ana_state"))).unwrap_or_default()));
    }
    None
}

/// Until `f` holds, polled every 100 ms; panics naming `what` after
/// `limit`. Returns how long it took.
pub fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
    t0.elapsed()
}

/// `nvmf_subsystem_listener_set_ana_state` for subsystem `nqn`'s TCP
/// listener on 127.0.0.1:`port`: every ANA group, or `anagrpid`.
pub fn set_listener_ana(d: &Daemon, nqn: &str, port: u16, state: &str, anagrpid: Option<u32>) -> Result<Value, ClientError> {
    let mut p = serde_json::json!({"nqn": nqn, "ana_state": state,
        "listen_address": {"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": port.to_string()}});
    if let Some(g) = anagrpid {
        p["anagrpid"] = g.into();
    }
    d.call("nvmf_subsystem_listener_set_ana_state", Some(p))
}

/// Reads and writes bdev `name` of daemon `d` has done.
pub fn bdev_ops(d: &Daemon, name: &str) -> u64 {
    let s = d.call("bdev_get_iostat", Some(serde_json::json!({"name": name}))).expect("bdev_get_iostat");
    let n = |k: &str| s["bdevs"][0][k].as_u64().unwrap_or_else(|| panic!("no {k} for bdev {name}: {s}"));
    n("num_read_ops") + n("num_write_ops")
}
