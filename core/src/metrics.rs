//! Prometheus metrics over HTTP (off by default): `framework_start_metrics`
//! (`listen_address`, e.g. `127.0.0.1:9464`) or the apps' `--metrics ADDR`
//! serve `GET /metrics` in Prometheus' text format; `framework_stop_metrics`
//! stops it; `framework_get_metrics` gives the same text over RPC.
//!
//! Nothing runs on the I/O path: a scrape calls the same methods an RPC
//! client would (`bdev_get_iostat`, `thread_get_stats`, `nvmf_get_stats`,
//! ...), which gather their numbers from the reactors by message, and the
//! text is rendered on the main reactor by a poller that wakes every 5 ms.
//! Each client is bounded: 16 connections at once, 8 KiB of request, 10 s.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::rc::Rc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{Value, json};

use crate::app::App;
use crate::reactor::{self, PollStatus, Poller, task};
use crate::rpc::{Methods, NoParams, Responder, RpcError, States};

const MAX_CONNS: usize = 16;
const MAX_REQUEST: usize = 8192;
const TIMEOUT: Duration = Duration::from_secs(10);

struct Conn {
    stream: TcpStream,
    inbuf: Vec<u8>,
    /// The response, once there is one, and how much of it went.
    out: Rc<RefCell<Option<Vec<u8>>>>,
    sent: usize,
    rendering: bool,
    since: Instant,
}

struct Server {
    listener: TcpListener,
    addr: SocketAddr,
    conns: Vec<Conn>,
    _poller: Poller,
}

thread_local! {
    static SERVER: RefCell<Option<Server>> = const { RefCell::new(None) };
    static METHODS: RefCell<Option<Rc<Methods>>> = const { RefCell::new(None) };
}

/// Serve metrics on `addr` (main reactor). Returns the address bound.
pub fn start(addr: SocketAddr) -> io::Result<SocketAddr> {
    if SERVER.with(|s| s.borrow().is_some()) {
        return Err(io::Error::new(io::ErrorKind::AlreadyExists, "the metrics endpoint is running already"));
    }
    let listener = TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let poller = reactor::register_timed_poller("metrics", Duration::from_millis(5), poll);
    SERVER.with(|s| *s.borrow_mut() = Some(Server { listener, addr, conns: Vec::new(), _poller: poller }));
    tracing::info!("metrics on http://{addr}/metrics");
    Ok(addr)
}

pub fn stop() -> bool {
    SERVER.with(|s| s.borrow_mut().take()).is_some()
}

fn poll() -> PollStatus {
    SERVER.with(|s| {
        let mut s = s.borrow_mut();
        let Some(srv) = s.as_mut() else { return PollStatus::Idle };
        let mut busy = false;
        while let Ok((stream, _)) = srv.listener.accept() {
            busy = true;
            if srv.conns.len() >= MAX_CONNS || stream.set_nonblocking(true).is_err() {
                continue; // dropped: closed
            }
            srv.conns.push(Conn {
                stream,
                inbuf: Vec::new(),
                out: Rc::new(RefCell::new(None)),
                sent: 0,
                rendering: false,
                since: Instant::now(),
            });
        }
        srv.conns.retain_mut(|c| serve(c, &mut busy));
        if busy { PollStatus::Busy } else { PollStatus::Idle }
    })
}

/// Move one connection on; false when it is done.
fn serve(c: &mut Conn, busy: &mut bool) -> bool {
    if c.since.elapsed() > TIMEOUT {
        return false;
    }
    if !c.rendering && c.out.borrow().is_none() {
        let mut buf = [0u8; 2048];
        match c.stream.read(&mut buf) {
            Ok(0) => return false,
            Ok(n) => {
                *busy = true;
                c.inbuf.extend_from_slice(&buf[..n]);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return false,
        }
        match parse_request(&c.inbuf) {
            Request::Incomplete => {}
            Request::Metrics => {
                c.rendering = true;
                let out = c.out.clone();
                task::spawn_local(async move {
                    let text = render().await;
                    *out.borrow_mut() = Some(response(200, "text/plain; version=0.0.4; charset=utf-8", text.as_bytes()));
                });
            }
            Request::TooLarge => *c.out.borrow_mut() = Some(response(431, "text/plain", b"request too large\n")),
            Request::NotFound => *c.out.borrow_mut() = Some(response(404, "text/plain", b"not found: try /metrics\n")),
            Request::NotAllowed => *c.out.borrow_mut() = Some(response(405, "text/plain", b"GET only\n")),
            Request::BadRequest => *c.out.borrow_mut() = Some(response(400, "text/plain", b"bad request line\n")),
        }
    }
    let out = c.out.borrow();
    let Some(bytes) = out.as_ref() else { return true };
    while c.sent < bytes.len() {
        match c.stream.write(&bytes[c.sent..]) {
            Ok(0) => return false,
            Ok(n) => {
                *busy = true;
                c.sent += n;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(_) => return false,
        }
    }
    false // all sent: close
}

/// What the bytes of a request received so far ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// The head has not ended yet (and is within [`MAX_REQUEST`]).
    Incomplete,
    /// Over [`MAX_REQUEST`] bytes without the head's end.
    TooLarge,
    /// `GET /metrics` (any query string).
    Metrics,
    /// A GET of anything else.
    NotFound,
    /// Another method.
    NotAllowed,
    /// Not a request line: `METHOD SP target SP HTTP/1.x`, one space
    /// between the three (RFC 9112 lets a server refuse other spacing).
    BadRequest,
}

/// Read a request's head: only its request line matters, the rest
/// (headers, a body) is ignored. Fuzzed (`metrics_http`).
pub fn parse_request(buf: &[u8]) -> Request {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if buf.len() > MAX_REQUEST { Request::TooLarge } else { Request::Incomplete };
    };
    if end > MAX_REQUEST {
        return Request::TooLarge;
    }
    let line = buf[..end].split(|&b| b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Request::BadRequest;
    };
    if method.is_empty() || target.is_empty() || !version.starts_with(b"HTTP/1.") {
        return Request::BadRequest;
    }
    let path = target.split(|&b| b == b'?').next().unwrap_or_default();
    match (method, path) {
        (b"GET", b"/metrics") => Request::Metrics,
        (b"GET", _) => Request::NotFound,
        _ => Request::NotAllowed,
    }
}

fn response(code: u16, ctype: &str, body: &[u8]) -> Vec<u8> {
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        400 => "Bad Request",
        405 => "Method Not Allowed",
        _ => "Request Header Fields Too Large",
    };
    let mut r = format!("HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len())
        .into_bytes();
    r.extend_from_slice(body);
    r
}

/// Call a method of the app in-process; `None` if it failed or is absent.
async fn call(method: &str, params: Option<Value>) -> Option<Value> {
    let methods = METHODS.with(|m| m.borrow().clone())?;
    let slot = task::SendSlot::new();
    let s = slot.clone();
    methods.call(method, params, Responder::new(move |r| s.set(r)));
    slot.await.ok()
}

/// Prometheus' text format, one family at a time.
#[derive(Default)]
struct Text {
    out: String,
}

impl Text {
    fn family(&mut self, name: &str, kind: &str, help: &str, samples: &[(Vec<(&str, String)>, f64)]) {
        if samples.is_empty() {
            return;
        }
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
        for (labels, v) in samples {
            self.out.push_str(name);
            if !labels.is_empty() {
                self.out.push('{');
                for (i, (k, val)) in labels.iter().enumerate() {
                    if i > 0 {
                        self.out.push(',');
                    }
                    let _ = write!(self.out, "{k}=\"{}\"", escape(val));
                }
                self.out.push('}');
            }
            let _ = writeln!(self.out, " {}", fmt_value(*v));
        }
    }
}

/// A row of an RPC's answer with its labels, made once.
type Row<'a> = (Vec<(&'static str, String)>, &'a Value);

impl Text {
    /// One family per (name, type, help, field) of `table`, with a sample
    /// per row: its labels and its number at `field`.
    fn fields(&mut self, rows: &[Row<'_>], table: &[(&str, &str, &str, &str)]) {
        for (name, kind, help, field) in table {
            let samples: Vec<_> = rows.iter().map(|(l, r)| (l.clone(), num(&r[*field]))).collect();
            self.family(name, kind, help, &samples);
        }
    }
}

/// The string at `v` ("" if it is not one).
fn text(v: &Value) -> String {
    v.as_str().unwrap_or("").to_string()
}

fn fmt_value(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 { format!("{}", v as i64) } else { format!("{v}") }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or(0.0)
}

/// Every metric family, from the app's own methods.
pub async fn render() -> String {
    let mut t = Text::default();
    t.family("pollux_build_info", "gauge", "Pollux's version.", &[(vec![("version", crate::VERSION.to_string())], 1.0)]);

    if let Some(list) = call("bdev_get_bdevs", None).await {
        let s: Vec<_> = list
            .as_array()
            .into_iter()
            .flatten()
            .map(|b| (vec![("bdev", b["name"].as_str().unwrap_or("").to_string())], num(&b["num_blocks"]) * num(&b["block_size"])))
            .collect();
        t.family("pollux_bdev_size_bytes", "gauge", "Size of each bdev.", &s);
    }
    if let Some(st) = call("bdev_get_iostat", None).await {
        let hz = num(&st["tick_rate"]).max(1.0);
        let bdevs: Vec<&Value> = st["bdevs"].as_array().into_iter().flatten().collect();
        let per = |f: &dyn Fn(&Value) -> f64| -> Vec<(Vec<(&str, String)>, f64)> {
            bdevs.iter().map(|b| (vec![("bdev", b["name"].as_str().unwrap_or("").to_string())], f(b))).collect()
        };
        for (name, help, field) in [
            ("pollux_bdev_reads_total", "Reads completed.", "num_read_ops"),
            ("pollux_bdev_writes_total", "Writes completed.", "num_write_ops"),
            ("pollux_bdev_unmaps_total", "Unmaps completed.", "num_unmap_ops"),
            ("pollux_bdev_flushes_total", "Flushes completed.", "num_flush_ops"),
            ("pollux_bdev_read_bytes_total", "Bytes read.", "bytes_read"),
            ("pollux_bdev_written_bytes_total", "Bytes written.", "bytes_written"),
            ("pollux_bdev_unmapped_bytes_total", "Bytes unmapped.", "bytes_unmapped"),
        ] {
            t.family(name, "counter", help, &per(&|b| num(&b[field])));
        }
        t.family("pollux_bdev_errors_total", "counter", "Requests that failed.", &per(&|b| num(&b["io_error"]["total"])));
        t.family("pollux_bdev_queue_depth", "gauge", "Requests in flight at each bdev.", &per(&|b| num(&b["queue_depth"])));
        // Latency histograms of the bdevs that keep one (bdev_enable_histogram).
        for b in &bdevs {
            let name = b["name"].as_str().unwrap_or("").to_string();
            let Some(h) = call("bdev_get_histogram", Some(json!({"name": name}))).await else { continue };
            let hz = num(&h["tick_rate"]).max(1.0);
            let buckets: Vec<(f64, f64)> =
                h["buckets"].as_array().into_iter().flatten().map(|x| (num(&x["max_ticks"]) / hz, num(&x["count"]))).collect();
            let mut cum = 0.0;
            let mut samples: Vec<(Vec<(&str, String)>, f64)> = Vec::new();
            for (le, c) in &buckets {
                cum += c;
                samples.push((vec![("bdev", name.clone()), ("le", format!("{le:e}"))], cum));
            }
            samples.push((vec![("bdev", name.clone()), ("le", "+Inf".into())], cum));
            let sum = (num(&b["read_latency_ticks"]) + num(&b["write_latency_ticks"]) + num(&b["unmap_latency_ticks"])) / hz;
            let _ = writeln!(t.out, "# HELP pollux_bdev_io_latency_seconds Latency of the bdev's requests (with bdev_enable_histogram).");
            let _ = writeln!(t.out, "# TYPE pollux_bdev_io_latency_seconds histogram");
            for (labels, v) in &samples {
                let l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", escape(v))).collect();
                let _ = writeln!(t.out, "pollux_bdev_io_latency_seconds_bucket{{{}}} {}", l.join(","), fmt_value(*v));
            }
            let _ = writeln!(t.out, "pollux_bdev_io_latency_seconds_sum{{bdev=\"{}\"}} {}", escape(&name), fmt_value(sum));
            let _ = writeln!(t.out, "pollux_bdev_io_latency_seconds_count{{bdev=\"{}\"}} {}", escape(&name), fmt_value(cum));
        }
        for (name, help, field) in [
            ("pollux_bdev_read_latency_seconds_total", "Time reads took, summed (divide by reads for the mean).", "read_latency_ticks"),
            ("pollux_bdev_write_latency_seconds_total", "Time writes took, summed.", "write_latency_ticks"),
            ("pollux_bdev_unmap_latency_seconds_total", "Time unmaps took, summed.", "unmap_latency_ticks"),
        ] {
            t.family(name, "counter", help, &per(&|b| num(&b[field]) / hz));
        }
    }
    if let Some(st) = call("thread_get_stats", None).await {
        let hz = num(&st["tick_rate"]).max(1.0);
        let threads: Vec<&Value> = st["threads"].as_array().into_iter().flatten().collect();
        let per = |f: &dyn Fn(&Value) -> f64| -> Vec<(Vec<(&str, String)>, f64)> {
            threads.iter().map(|r| (vec![("reactor", (num(&r["id"]) as i64 - 1).to_string())], f(r))).collect()
        };
        t.family("pollux_reactor_busy_seconds_total", "counter", "Time each reactor spent doing work.", &per(&|r| num(&r["busy"]) / hz));
        t.family("pollux_reactor_idle_seconds_total", "counter", "Time each reactor found nothing to do.", &per(&|r| num(&r["idle"]) / hz));
        t.family("pollux_reactor_iterations_total", "counter", "Loop iterations of each reactor.", &per(&|r| num(&r["iterations"])));
        t.family("pollux_reactor_messages_total", "counter", "Messages each reactor ran.", &per(&|r| num(&r["messages"])));
        t.family("pollux_reactor_sleeps_total", "counter", "Times each reactor slept (interrupt mode).", &per(&|r| num(&r["sleeps"])));
        if threads.iter().all(|r| r.get("allocations").is_some()) {
            t.family(
                "pollux_reactor_allocations_total",
                "counter",
                "Heap allocations each reactor's thread made (none per I/O is the aim).",
                &per(&|r| num(&r["allocations"])),
            );
        }
        t.family(
            "pollux_reactor_pollers",
            "gauge",
            "Pollers of each reactor.",
            &per(&|r| num(&r["active_pollers_count"]) + num(&r["timed_pollers_count"]) + num(&r["paused_pollers_count"])),
        );
    }
    if let Some(st) = call("iobuf_get_stats", None).await {
        let mut free = Vec::new();
        let mut total = Vec::new();
        let mut retry = Vec::new();
        for r in st.as_array().into_iter().flatten() {
            let reactor = num(&r["reactor"]).to_string();
            for pool in ["small_pool", "large_pool"] {
                let l = vec![("reactor", reactor.clone()), ("pool", pool.trim_end_matches("_pool").to_string())];
                free.push((l.clone(), num(&r[pool]["free"])));
                total.push((l.clone(), num(&r[pool]["total"])));
                retry.push((l, num(&r[pool]["retry"])));
            }
        }
        t.family("pollux_iobuf_free_buffers", "gauge", "Free buffers of each reactor's pools.", &free);
        t.family("pollux_iobuf_buffers", "gauge", "Buffers of each reactor's pools.", &total);
        t.family("pollux_iobuf_misses_total", "counter", "Requests a pool could not serve at once.", &retry);
    }
    if let Some(subs) = call("nvmf_get_subsystems", None).await {
        let mut ns = Vec::new();
        let mut ctrls = Vec::new();
        let mut listeners = Vec::new();
        for s in subs.as_array().into_iter().flatten() {
            let nqn = s["nqn"].as_str().unwrap_or("").to_string();
            ns.push((vec![("nqn", nqn.clone())], s["namespaces"].as_array().map_or(0, Vec::len) as f64));
            listeners.push((vec![("nqn", nqn.clone())], s["listen_addresses"].as_array().map_or(0, Vec::len) as f64));
            if let Some(c) = call("nvmf_subsystem_get_controllers", Some(json!({"nqn": nqn}))).await {
                ctrls.push((vec![("nqn", nqn.clone())], c.as_array().map_or(0, Vec::len) as f64));
            }
        }
        t.family("pollux_nvmf_subsystem_namespaces", "gauge", "Namespaces of each NVMe-oF subsystem.", &ns);
        t.family("pollux_nvmf_subsystem_listeners", "gauge", "Listeners of each NVMe-oF subsystem.", &listeners);
        t.family("pollux_nvmf_subsystem_controllers", "gauge", "Controllers (host connections) of each NVMe-oF subsystem.", &ctrls);
    }
    if let Some(st) = call("nvmf_get_stats", None).await {
        let rows: Vec<Row> =
            st["poll_groups"].as_array().into_iter().flatten().map(|g| (vec![("poll_group", text(&g["name"]))], g)).collect();
        t.fields(
            &rows,
            &[
                ("pollux_nvmf_admin_qpairs", "gauge", "Admin queue pairs of each poll group.", "current_admin_qpairs"),
                ("pollux_nvmf_io_qpairs", "gauge", "I/O queue pairs of each poll group.", "current_io_qpairs"),
                ("pollux_nvmf_admin_qpairs_created_total", "counter", "Admin queue pairs each poll group took.", "admin_qpairs"),
                ("pollux_nvmf_io_qpairs_created_total", "counter", "I/O queue pairs each poll group took.", "io_qpairs"),
                ("pollux_nvmf_commands_total", "counter", "NVMe I/O commands each poll group completed.", "completed_nvme_io"),
                ("pollux_nvmf_pending_bdev_io", "gauge", "Requests each poll group has at its bdevs.", "pending_bdev_io"),
            ],
        );
    }
    if let Some(list) = call("nvmf_get_listener_stats", None).await {
        let rows: Vec<Row> = list
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                let a = &r["address"];
                (
                    vec![
                        ("nqn", text(&r["nqn"])),
                        ("trtype", text(&a["trtype"])),
                        ("traddr", text(&a["traddr"])),
                        ("trsvcid", text(&a["trsvcid"])),
                    ],
                    r,
                )
            })
            .collect();
        t.fields(
            &rows,
            &[
                ("pollux_nvmf_listener_qpairs", "gauge", "Queue pairs of each subsystem through each listener.", "current_qpairs"),
                (
                    "pollux_nvmf_listener_commands_total",
                    "counter",
                    "Commands (admin and I/O) completed per subsystem and listener.",
                    "completed_commands",
                ),
                (
                    "pollux_nvmf_listener_failed_commands_total",
                    "counter",
                    "Commands completed with an error status per subsystem and listener.",
                    "failed_commands",
                ),
                ("pollux_nvmf_listener_read_bytes_total", "counter", "Bytes read by hosts per subsystem and listener.", "bytes_read"),
                (
                    "pollux_nvmf_listener_written_bytes_total",
                    "counter",
                    "Bytes written by hosts per subsystem and listener.",
                    "bytes_written",
                ),
            ],
        );
    }
    if let Some(list) = call("bdev_nvme_get_controllers", None).await {
        let mut rows: Vec<Row> = Vec::new();
        for c in list.as_array().into_iter().flatten() {
            for (i, path) in c["ctrlrs"].as_array().into_iter().flatten().enumerate() {
                let trid = &path["trid"];
                let l = vec![
                    ("controller", text(&c["name"])),
                    ("path", i.to_string()),
                    ("trtype", text(&trid["trtype"])),
                    ("traddr", text(&trid["traddr"])),
                ];
                rows.push((l, path));
            }
        }
        t.fields(
            &rows,
            &[
                ("pollux_nvme_controller_resets_total", "counter", "Resets (or reconnects) of each NVMe controller path.", "resets"),
                ("pollux_nvme_controller_timeouts_total", "counter", "Commands of each NVMe controller that timed out.", "timeouts"),
                ("pollux_nvme_controller_aborts_total", "counter", "Aborts sent to each NVMe controller for timed-out commands.", "aborts"),
            ],
        );
    }
    if let Some(st) = call("iscsi_get_target_stats", None).await {
        let s = |v: &Value| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string());
        let place =
            |r: &Value| vec![("target", s(&r["target_node_name"])), ("portal_group", s(&r["portal_group"])), ("portal", s(&r["portal"]))];
        let rows: Vec<Row> = st["portals"].as_array().into_iter().flatten().map(|r| (place(r), r)).collect();
        t.fields(
            &rows,
            &[
                ("pollux_iscsi_portal_connections", "gauge", "iSCSI connections per target node and portal.", "connections"),
                ("pollux_iscsi_commands_total", "counter", "SCSI commands answered per target node and portal.", "completed_commands"),
                (
                    "pollux_iscsi_failed_commands_total",
                    "counter",
                    "SCSI commands answered with a status other than GOOD, per target node and portal.",
                    "failed_commands",
                ),
                ("pollux_iscsi_read_bytes_total", "counter", "Bytes of Data-In sent per target node and portal.", "bytes_read"),
                (
                    "pollux_iscsi_written_bytes_total",
                    "counter",
                    "Bytes of write data received per target node and portal.",
                    "bytes_written",
                ),
                (
                    "pollux_iscsi_digest_errors_total",
                    "counter",
                    "Header and data digest errors per target node and portal.",
                    "digest_errors",
                ),
            ],
        );
        let sessions: Vec<Row> =
            st["sessions"].as_array().into_iter().flatten().map(|r| (vec![("target", s(&r["target_node_name"]))], r)).collect();
        t.fields(&sessions, &[("pollux_iscsi_sessions", "gauge", "iSCSI sessions of each target node.", "sessions")]);
        let failures: Vec<Row> = st["login_failures"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                let mut l = place(r);
                l.push(("reason", s(&r["reason"])));
                (l, r)
            })
            .collect();
        t.fields(
            &failures,
            &[(
                "pollux_iscsi_login_failures_total",
                "counter",
                "Logins refused (or timed out), by reason, target node and portal.",
                "count",
            )],
        );
    }
    if let Some(conns) = call("iscsi_get_connections", None).await {
        let mut by: BTreeMap<String, f64> = BTreeMap::new();
        for c in conns.as_array().into_iter().flatten() {
            *by.entry(c["target_node_name"].as_str().unwrap_or("").to_string()).or_default() += 1.0;
        }
        let s: Vec<_> = by.into_iter().map(|(k, v)| (vec![("target", k)], v)).collect();
        t.family("pollux_iscsi_connections", "gauge", "iSCSI connections of each target node.", &s);
    }
    if let Some(st) = call("iscsi_get_stats", None).await {
        let s: Vec<_> =
            ["running", "exiting", "exited", "invalid"].iter().map(|k| (vec![("state", k.to_string())], num(&st[*k]))).collect();
        t.family("pollux_iscsi_connections_by_state", "gauge", "iSCSI connections by state.", &s);
    }
    let m = crate::dma::stats();
    t.family(
        "pollux_dma_memory_bytes",
        "gauge",
        "DMA memory mapped (all of it, and the part on hugepages).",
        &[(vec![("kind", "total".into())], m.total_bytes as f64), (vec![("kind", "hugepage".into())], m.hugepage_bytes as f64)],
    );
    t.family("pollux_dma_regions", "gauge", "DMA memory regions.", &[(vec![], m.regions as f64)]);
    t.out
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Start {
    listen_address: String,
}

/// Register the methods (and keep the method table for scrapes). The
/// handlers hold the table weakly: it holds them (a strong reference
/// would be a cycle, and the table would never be freed).
pub fn register(app: &mut App) {
    let methods = Rc::downgrade(app.methods());
    let m = app.methods();
    m.register("framework_start_metrics", States::RUNTIME, move |p: Start, r: Responder| {
        METHODS.with(|x| *x.borrow_mut() = methods.upgrade());
        let addr: SocketAddr = match p.listen_address.parse() {
            Ok(a) => a,
            Err(_) => return r.err(RpcError::invalid_params(format!("listen_address {}: an IP:port", p.listen_address))),
        };
        r.result(start(addr).map(|a| a.to_string()).map_err(|e| RpcError::errno(e.raw_os_error().unwrap_or(libc::EEXIST), e.to_string())))
    });
    m.register("framework_stop_metrics", States::RUNTIME, |_: NoParams, r: Responder| r.ok(stop()));
    let methods = Rc::downgrade(app.methods());
    m.register("framework_get_metrics", States::RUNTIME, move |_: NoParams, r: Responder| {
        METHODS.with(|x| *x.borrow_mut() = methods.upgrade());
        task::spawn_local(async move { r.ok(render().await) });
    });
}

/// Serve metrics on `addr` with the app's `methods` (`--metrics ADDR`,
/// once the app has started).
pub fn start_with(methods: Rc<Methods>, addr: SocketAddr) {
    METHODS.with(|x| *x.borrow_mut() = Some(methods));
    if let Err(e) = start(addr) {
        tracing::error!("metrics on {addr}: {e}");
    }
}

/// The address metrics are served on, if they are.
pub fn address() -> Option<SocketAddr> {
    SERVER.with(|s| s.borrow().as_ref().map(|s| s.addr))
}

#[cfg(test)]
mod tests {
    use super::{MAX_REQUEST, Request, parse_request};

    #[test]
    fn requests_are_read_from_their_request_line() {
        assert_eq!(parse_request(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"), Request::Metrics);
        assert_eq!(parse_request(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"), Request::Metrics);
        assert_eq!(parse_request(b"GET / HTTP/1.1\r\n\r\n"), Request::NotFound);
        assert_eq!(parse_request(b"POST /metrics HTTP/1.1\r\n\r\n"), Request::NotAllowed);
        assert_eq!(parse_request(b"\r\n\r\n"), Request::BadRequest);
        // One space between the three parts, and an HTTP/1 version (the
        // fuzz target found tabs and a missing version served as metrics).
        assert_eq!(parse_request(b"  GET\t\t /metrics?x=1HTT   \r\n\r\n"), Request::BadRequest);
        assert_eq!(parse_request(b"GET /metrics\r\n\r\n"), Request::BadRequest);
        assert_eq!(parse_request(b"GET  /metrics HTTP/1.1\r\n\r\n"), Request::BadRequest);
        assert_eq!(parse_request(b"GET /metrics HTTP/1.1 x\r\n\r\n"), Request::BadRequest);
        assert_eq!(parse_request(b"GET /metrics FTP/1.1\r\n\r\n"), Request::BadRequest);
        assert_eq!(parse_request(b"GET /metrics HTTP/1.1\n\r\n\r\n"), Request::Metrics);
        assert_eq!(parse_request(b"GET /metrics HTTP/1.1\r\nHost: x\r\n"), Request::Incomplete);
        assert_eq!(parse_request(&vec![b'a'; MAX_REQUEST + 1]), Request::TooLarge);
        let mut long = vec![b'a'; MAX_REQUEST + 1];
        long.extend_from_slice(b"\r\n\r\n");
        assert_eq!(parse_request(&long), Request::TooLarge);
        // A head that ends in time is read, whatever follows it.
        let mut req = b"GET /metrics HTTP/1.1\r\n\r\n".to_vec();
        req.extend(vec![0xff; MAX_REQUEST * 2]);
        assert_eq!(parse_request(&req), Request::Metrics);
    }
}
