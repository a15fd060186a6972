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
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
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
        "pollux_nvmf_subsystem_controllers",
        "pollux_nvmf_commands_total",
        "pollux_iobuf_free_buffers",
        "pollux_dma_memory_bytes",
        "pollux_bdev_queue_depth",
    ] {
        assert!(text.contains(&format!("# TYPE {family} ")), "{family} missing:\n{text}");
    }
    assert!(text.contains("pollux_bdev_size_bytes{bdev=\"M0\"} 33554432"), "{text}");
    // promtool's lint.
    let mut p = Command::new(&promtool)
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
    assert_eq!(get(mport, "/nothing").0, 404);
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
