//! Prometheus metrics (issue 20): the endpoint's text passes `promtool
//! check metrics`, and a real Prometheus server (Debian's) scraping the
//! daemon every second while an NVMe/TCP host reads and writes sees the
//! series, with counters that rise.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pollux_tests::nvmf_client::Client;
use pollux_tests::{Daemon, DaemonOpts, TempDir, free_port, tool, wait_until};
use serde_json::{Value, json};

const NQN: &str = "nqn.2016-06.io.pollux:metrics";

/// A GET over HTTP/1.1: (status, body).
fn get(port: u16, path: &str) -> (u16, String) {
    request(port, &format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"))
}

/// Send `head` as it is; the status and body of the answer.
fn request(port: u16, head: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// promtool's lint passes on the endpoint's `text`.
fn promtool_accepts(promtool: &std::path::Path, text: &str) {
    let mut p = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    p.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = p.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The value of a query's first series, from Prometheus' HTTP API.
fn query(prom: u16, q: &str) -> Option<f64> {
    let enc: String =
        q.bytes().map(|b| if b.is_ascii_alphanumeric() || b == b'_' { (b as char).to_string() } else { format!("%{b:02X}") }).collect();
    let (status, body) = get(prom, &format!("/api/v1/query?query={enc}"));
    if status != 200 {
        return None;
    }
    let v: Value = serde_json::from_str(&body).ok()?;
    v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

#[test]
fn prometheus_scrapes_rising_counters_and_promtool_accepts_the_text() {
    let prometheus = tool("prometheus", "Debian's prometheus (scripts/install-deps installs it)");
    let promtool = tool("promtool", "Debian's prometheus");
    let (port, mport, pport) = (free_port(), free_port(), free_port());
    let d = Daemon::start(DaemonOpts {
        config: Some(json!({"subsystems": [
            {"subsystem": "bdev", "config": [{"method": "bdev_malloc_create", "params": {"name": "M0", "num_blocks": 65536, "block_size": 512}}]},
            {"subsystem": "nvmf", "config": [
                {"method": "nvmf_create_transport", "params": {"trtype": "TCP"}},
                {"method": "nvmf_create_subsystem", "params": {"nqn": NQN, "allow_any_host": true}},
                {"method": "nvmf_subsystem_add_listener", "params": {"nqn": NQN, "listen_address": {"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": port.to_string()}}},
                {"method": "nvmf_subsystem_add_ns", "params": {"nqn": NQN, "namespace": {"bdev_name": "M0", "nsid": 1}}},
            ]},
        ]})),
        extra: vec!["--metrics".into(), format!("127.0.0.1:{mport}")],
        ..Default::default()
    });
    // A host that reads and writes until told to stop.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let host = std::thread::spawn(move || {
        let (_admin, cntlid) = Client::admin(port, NQN, 0, false, false);
        let mut io = Client::io(port, NQN, cntlid, 1, false, false);
        let data = vec![0x5au8; 4096];
        let mut lba = 0u64;
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            assert!(io.write(1, lba % 60000, &data, 512, false).ok());
            assert!(io.read(1, lba % 60000, 8, 512).0.ok());
            lba += 8;
        }
    });
    // M0 keeps a latency histogram: a Prometheus histogram once requests complete.
    d.call("bdev_enable_histogram", Some(json!({"name": "M0", "enable": true}))).unwrap();
    wait_until("a histogram with requests", Duration::from_secs(30), || {
        get(mport, "/metrics").1.lines().any(|l| l.starts_with("pollux_bdev_io_latency_seconds_count{bdev=\"M0\"}") && !l.ends_with(" 0"))
    });
    let (status, text) = get(mport, "/metrics");
    assert_eq!(status, 200, "{text}");
    assert!(
        text.contains("# TYPE pollux_bdev_io_latency_seconds histogram")
            && text.contains("pollux_bdev_io_latency_seconds_bucket{bdev=\"M0\",le=\"+Inf\"}"),
        "{text}"
    );
    for family in [
        "pollux_build_info",
        "pollux_bdev_reads_total",
        "pollux_reactor_busy_seconds_total",
        "pollux_reactor_messages_total",
        "pollux_nvmf_subsystem_controllers",
        "pollux_nvmf_commands_total",
        "pollux_iobuf_free_buffers",
        "pollux_dma_memory_bytes",
        "pollux_bdev_queue_depth",
    ] {
        assert!(text.contains(&format!("# TYPE {family} ")), "{family} missing:\n{text}");
    }
    assert!(text.contains("pollux_bdev_size_bytes{bdev=\"M0\"} 33554432"), "{text}");
    promtool_accepts(&promtool, &text);
    assert_eq!(get(mport, "/nothing").0, 404);
    assert_eq!(request(mport, "POST /metrics HTTP/1.1\r\n\r\n").0, 405);
    assert_eq!(request(mport, "GET\t/metrics HTTP/1.1\r\n\r\n").0, 400);
    assert_eq!(request(mport, "GET /metrics\r\n\r\n").0, 400);
    // The same text over RPC.
    assert!(d.call("framework_get_metrics", None).unwrap().as_str().unwrap().contains("pollux_bdev_reads_total"));

    // Prometheus, scraping every second.
    let dir = TempDir::new("prometheus");
    let cfg = dir.join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: pollux\n    static_configs:\n      - targets: ['127.0.0.1:{mport}']\n"),
    )
    .unwrap();
    let mut prom = Command::new(&prometheus)
        .arg(format!("--config.file={}", cfg.display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{pport}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let reads = "pollux_bdev_reads_total{bdev=\"M0\"}";
    let first = {
        let t0 = Instant::now();
        loop {
            if let Some(v) = std::panic::catch_unwind(|| query(pport, reads)).ok().flatten() {
                break v;
            }
            assert!(t0.elapsed() < Duration::from_secs(60), "Prometheus never had {reads}");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    wait_until("the counter to rise in Prometheus", Duration::from_secs(60), || query(pport, reads).is_some_and(|v| v > first));
    for q in [
        "pollux_bdev_written_bytes_total{bdev=\"M0\"}",
        "pollux_reactor_busy_seconds_total{reactor=\"0\"}",
        "pollux_nvmf_subsystem_controllers",
        "pollux_nvmf_commands_total",
        "histogram_quantile(0.99, pollux_bdev_io_latency_seconds_bucket{bdev=\"M0\"})",
    ] {
        assert!(query(pport, q).is_some(), "{q} not in Prometheus");
    }
    let up = query(pport, "up{job=\"pollux\"}");
    assert_eq!(up, Some(1.0), "the target is up");
    // The dashboard's queries answer (docs/grafana/pollux.json).
    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/grafana/pollux.json")).unwrap(),
    )
    .unwrap();
    let exprs: Vec<String> = dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter().map(|t| t["expr"].as_str().unwrap().to_string()))
        .collect();
    assert!(exprs.len() >= 8);
    for e in exprs.iter().filter(|e| e.contains("pollux_bdev_read") || e.contains("reactor")) {
        wait_until(&format!("the dashboard's {e}"), Duration::from_secs(30), || query(pport, e).is_some());
    }
    let _ = prom.kill();
    let _ = prom.wait();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    host.join().unwrap();
}

/// The value of the sample `series` (name and labels as printed) in the
/// endpoint's text.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')).and_then(|v| v.parse().ok()))
}

/// The families fed by the targets' and drivers' own counters: per
/// NVMe-oF subsystem and listener (queue pairs, commands, failures,
/// bytes), per iSCSI target node and portal (connections, sessions,
/// commands, bytes, digest errors, login failures by reason), and the
/// RPCs behind them (`nvmf_get_listener_stats`, `nvmf_subsystem_get_qpairs`,
/// `iscsi_get_target_stats`), each figure checked against what the test
/// made happen.
#[test]
fn target_families_count_commands_failures_digest_errors_and_refused_logins() {
    use pollux_tests::iscsi_host::{self, RawConn};
    let (nport, iport, mport) = (free_port(), free_port(), free_port());
    let mut cfg = iscsi_host::config(iport, "m", 32, None);
    cfg["subsystems"].as_array_mut().unwrap().push(json!({"subsystem": "nvmf", "config": [
        {"method": "nvmf_create_transport", "params": {"trtype": "TCP"}},
        {"method": "nvmf_create_subsystem", "params": {"nqn": NQN, "allow_any_host": true}},
        {"method": "nvmf_subsystem_add_listener", "params": {"nqn": NQN, "listen_address": {"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": nport.to_string()}}},
        {"method": "nvmf_subsystem_add_ns", "params": {"nqn": NQN, "namespace": {"bdev_name": "Malloc0", "nsid": 1}}},
    ]}));
    let d = Daemon::start(DaemonOpts {
        config: Some(cfg),
        extra: vec!["--metrics".into(), format!("127.0.0.1:{mport}")],
        ..Default::default()
    });

    // NVMe/TCP: 10 writes and 10 reads of 4 KiB, then one read past the end.
    let (_admin, cntlid) = Client::admin(nport, NQN, 0, false, false);
    let mut io = Client::io(nport, NQN, cntlid, 1, false, false);
    let data = vec![0x11u8; 4096];
    for i in 0..10 {
        assert!(io.write(1, i * 8, &data, 512, false).ok());
        assert!(io.read(1, i * 8, 8, 512).0.ok());
    }
    assert!(!io.read(1, 32 * 2048, 8, 512).0.ok(), "a read past the end fails");
    let rows = d.call("nvmf_get_listener_stats", None).unwrap();
    let row = rows.as_array().unwrap().iter().find(|r| r["nqn"] == NQN).unwrap_or_else(|| panic!("{rows}"));
    assert_eq!(row["address"]["trsvcid"], nport.to_string(), "{row}");
    assert_eq!(row["current_qpairs"], 2, "the admin and the I/O queue: {row}");
    assert_eq!(row["failed_commands"], 1, "{row}");
    assert!(row["completed_commands"].as_u64().unwrap() >= 21, "{row}");
    assert!(row["bytes_read"].as_u64().unwrap() >= 40960 && row["bytes_written"].as_u64().unwrap() >= 40960, "{row}");
    // SPDK's own client asks for the queue pairs as it would of nvmf_tgt.
    let out = pollux_tests::spdk_rpc(&d.socket, &["nvmf_subsystem_get_qpairs", NQN]);
    let qpairs: Value = serde_json::from_str(&pollux_tests::ok_stdout("nvmf_subsystem_get_qpairs", &out)).unwrap();
    let ioq = qpairs.as_array().unwrap().iter().find(|q| q["qid"] == 1).unwrap_or_else(|| panic!("{qpairs}"));
    // The Connect is a command of the queue too, with its 1024 bytes of data.
    assert_eq!(
        (ioq["cntlid"].as_u64(), ioq["completed_commands"].as_u64(), ioq["failed_commands"].as_u64()),
        (Some(cntlid as u64), Some(22), Some(1)),
        "{ioq}"
    );
    assert_eq!((ioq["bytes_read"].as_u64(), ioq["bytes_written"].as_u64()), (Some(40960), Some(40960 + 1024)), "{ioq}");
    assert_eq!(ioq["listen_address"]["trtype"], "TCP");
    assert!(ioq["hostnqn"].as_str().unwrap().starts_with("nqn.2014-08.org.nvmexpress"), "{ioq}");

    // iSCSI: a login to a target that is not there (counted under no
    // target: a made-up name never becomes a label, so initiators cannot
    // grow the tables), one that reads and writes, one whose header digest
    // is wrong.
    let target = iscsi_host::target_iqn("m");
    let mut wrong = RawConn::connect(iport);
    let r = wrong.login("iqn.2026-12.test:metrics", Some("iqn.2016-06.io.spdk:nope"), 1);
    assert_eq!((r.bhs[36], r.bhs[37]), (2, 3), "target not found");
    let mut good = RawConn::connect(iport);
    good.login("iqn.2026-12.test:metrics", Some(&target), 2);
    for i in 0..5 {
        assert_eq!(good.write10(i * 8, &data), Some(0));
        assert_eq!(good.read10(i * 8, 8).map(|r| r.0), Some(0));
    }
    let mut bad = RawConn::connect(iport);
    let r = bad.login_with("iqn.2026-12.test:metrics", Some(&target), 3, 0, 0, &[("HeaderDigest", "CRC32C")]);
    assert_eq!(r.bhs[36], 0, "login with header digests");
    let mut nop = [0u8; 48];
    nop[0] = 0x40;
    nop[1] = 0x80;
    nop[16..20].copy_from_slice(&0x77u32.to_be_bytes());
    nop[20..24].copy_from_slice(&u32::MAX.to_be_bytes());
    nop[24..28].copy_from_slice(&bad.cmd_sn.to_be_bytes());
    let crc = pollux_tests::nvmf_client::crc32c(&nop);
    bad.s.write_all(&nop).unwrap();
    bad.s.write_all(&(!crc).to_le_bytes()).unwrap();
    assert!(bad.recv().is_none(), "a header digest error ends the connection");

    let st = wait_until_value(&d, "the closed connection's counts", |st| {
        st["portals"].as_array().unwrap().iter().any(|p| p["target_node_name"] == target && p["digest_errors"] == 1)
    });
    let p = st["portals"].as_array().unwrap().iter().find(|p| p["target_node_name"] == target).unwrap();
    assert_eq!(p["connections"], 1, "the good connection is still there: {st}");
    assert_eq!((p["completed_commands"].as_u64(), p["failed_commands"].as_u64()), (Some(10), Some(0)), "{st}");
    assert_eq!((p["bytes_read"].as_u64(), p["bytes_written"].as_u64()), (Some(20480), Some(20480)), "{st}");
    assert_eq!(p["portal"], format!("127.0.0.1:{iport}"));
    let f = st["login_failures"].as_array().unwrap();
    assert!(f.iter().any(|x| x["reason"] == "target_not_found" && x["target_node_name"] == "" && x["count"] == 1), "{st}");
    assert!(st["sessions"].as_array().unwrap().iter().any(|s| s["target_node_name"] == target && s["sessions"] == 1), "{st}");
    let conns = d.call("iscsi_get_connections", None).unwrap();
    assert_eq!(conns[0]["completed_commands"], 10, "{conns}");

    // The same in the endpoint's text, which promtool accepts.
    let text = get(mport, "/metrics").1;
    let listener = format!("{{nqn=\"{NQN}\",trtype=\"TCP\",traddr=\"127.0.0.1\",trsvcid=\"{nport}\"}}");
    assert_eq!(sample(&text, &format!("pollux_nvmf_listener_failed_commands_total{listener}")), Some(1.0), "{text}");
    assert_eq!(sample(&text, &format!("pollux_nvmf_listener_qpairs{listener}")), Some(2.0), "{text}");
    let place = format!("{{target=\"{target}\",portal_group=\"1\",portal=\"127.0.0.1:{iport}\"}}");
    assert_eq!(sample(&text, &format!("pollux_iscsi_digest_errors_total{place}")), Some(1.0), "{text}");
    assert_eq!(sample(&text, &format!("pollux_iscsi_commands_total{place}")), Some(10.0), "{text}");
    assert_eq!(sample(&text, &format!("pollux_iscsi_portal_connections{place}")), Some(1.0), "{text}");
    assert_eq!(sample(&text, &format!("pollux_iscsi_sessions{{target=\"{target}\"}}")), Some(1.0), "{text}");
    let refused = format!(
        "pollux_iscsi_login_failures_total{{target=\"\",portal_group=\"1\",portal=\"127.0.0.1:{iport}\",reason=\"target_not_found\"}}"
    );
    assert_eq!(sample(&text, &refused), Some(1.0), "{text}");
    // Every RPC above reached the reactors by message.
    assert!(sample(&text, "pollux_reactor_messages_total{reactor=\"0\"}").is_some_and(|v| v > 0.0), "{text}");
    promtool_accepts(&tool("promtool", "Debian's prometheus"), &text);
}

/// `iscsi_get_target_stats` once `pred` holds on it.
fn wait_until_value(d: &Daemon, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    wait_until(what, Duration::from_secs(30), || {
        last = d.call("iscsi_get_target_stats", None).unwrap();
        pred(&last)
    });
    last
}
