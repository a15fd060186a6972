//! pollux-perf against real bdevs: every workload runs, verify is clean on
//! malloc and uring, and a verify mismatch is found and reported.

use std::process::{Command, Output};

use pollux_tests::{TempDir, bin, perf_command};
use serde_json::{Value, json};

fn perf(dir: &TempDir, config: &Value, args: &[&str]) -> Output {
    perf_command(dir, config, args).output().expect("run pollux-perf")
}

fn report(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON report ({e}):\nstdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn bdevs(dir: &TempDir) -> Value {
    let file = dir.join("uring.img");
    std::fs::write(&file, vec![0u8; 32 << 20]).unwrap();
    json!({"subsystems": [{"subsystem": "bdev", "config": [
        {"method": "bdev_malloc_create", "params": {"name": "Malloc0", "num_blocks": 65536, "block_size": 512}},
        {"method": "bdev_uring_create", "params": {"name": "Uring0", "filename": file.to_str().unwrap(), "block_size": 512}},
        {"method": "bdev_null_create", "params": {"name": "Null0", "num_blocks": 65536, "block_size": 512}}
    ]}]})
}

#[test]
fn verify_is_clean_on_malloc_and_uring_at_several_sizes_and_depths() {
    let dir = TempDir::new("perf-verify");
    let cfg = bdevs(&dir);
    for (bdev, qd, size) in
        [("Malloc0", "1", "512"), ("Malloc0", "32", "4096"), ("Malloc0", "8", "131072"), ("Uring0", "32", "4096"), ("Uring0", "4", "65536")]
    {
        let out = perf(&dir, &cfg, &["-b", bdev, "-q", qd, "-o", size, "-w", "verify", "-t", "1", "-m", "0x3", "--json"]);
        let r = report(&out);
        assert!(out.status.success(), "{bdev} qd {qd} size {size}: {r}");
        assert!(r["total"]["ios"].as_u64().unwrap() > 0, "{r}");
        assert_eq!(r["verify_mismatches"], json!([]));
        assert_eq!(r["total"]["errors"], 0);
    }
}

#[test]
fn a_verify_mismatch_fails_the_run_and_names_the_block() {
    // The null bdev reads zeroes: the first read-back differs from the pattern.
    let dir = TempDir::new("perf-mismatch");
    let out = perf(&dir, &bdevs(&dir), &["-b", "Null0", "-q", "4", "-o", "4096", "-w", "verify", "-t", "2", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let r = report(&out);
    let m = &r["verify_mismatches"][0];
    assert_eq!(m["bdev"], "Null0");
    assert_eq!(m["found"], "0x0000000000000000");
    assert!(m["lba"].is_u64() && m["expected"].is_string(), "{r}");
}

#[test]
fn every_workload_runs() {
    let dir = TempDir::new("perf-all");
    let cfg = bdevs(&dir);
    for w in ["read", "write", "randread", "randwrite", "rw", "randrw", "verify", "reset", "unmap", "flush"] {
        let out = perf(&dir, &cfg, &["-b", "Malloc0", "-q", "16", "-o", "4096", "-w", w, "-t", "1", "-M", "70", "--json"]);
        let r = report(&out);
        assert!(out.status.success(), "{w}: {r}");
        assert!(r["total"]["ios"].as_u64().unwrap() > 0, "{w}: {r}");
        if w == "reset" {
            assert!(r["resets"].as_u64().unwrap() >= 1, "a reset happened during the run: {r}");
        }
    }
    // The human-readable report has a line per job and a total.
    let out = perf(&dir, &cfg, &["-b", "Malloc0,Null0", "-q", "8", "-o", "4096", "-w", "randread", "-t", "1", "-m", "0x3"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert_eq!(text.lines().filter(|l| l.contains(" on core ")).count(), 4, "{text}");
    assert!(text.lines().any(|l| l.starts_with("Total")), "{text}");
}

#[test]
fn bad_arguments_are_refused_with_a_message() {
    let dir = TempDir::new("perf-bad");
    let cfg = bdevs(&dir);
    let out = perf(&dir, &cfg, &["-b", "Malloc0", "-o", "1000", "-w", "read", "-t", "1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a multiple"), "{}", String::from_utf8_lossy(&out.stderr));
    let out = perf(&dir, &cfg, &["-b", "Nope", "-w", "read", "-t", "1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no bdev named Nope"));
    let out = Command::new(bin("pollux-perf")).args(["-w", "read"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn deleting_a_bdev_under_load_stops_its_users_and_then_completes() {
    use std::time::{Duration, Instant};
    let dir = TempDir::new("perf-delete");
    let cfg_path = dir.join("perf.json");
    std::fs::write(&cfg_path, serde_json::to_vec(&bdevs(&dir)).unwrap()).unwrap();
    let sock = dir.join("perf.sock");
    let mut child = Command::new(bin("pollux-perf"))
        .arg("-c")
        .arg(&cfg_path)
        .args(["--interrupt-mode", "--no-pin", "-m", "0x3", "-b", "Malloc0", "-q", "32", "-w", "randwrite", "-t", "60", "--json", "-r"])
        .arg(&sock)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    let mut client = pollux_tests::app_client(&sock, Duration::from_secs(20), Duration::from_secs(20));
    // Under load: writes are completing.
    let t2 = Instant::now();
    while client.call("bdev_get_iostat", Some(json!({"name": "Malloc0"}))).unwrap()["bdevs"][0]["num_write_ops"].as_u64().unwrap_or(0) == 0
    {
        assert!(t2.elapsed() < Duration::from_secs(20), "no writes reached Malloc0");
        std::thread::yield_now();
    }
    // The delete answers only after every job closed the bdev.
    assert_eq!(client.call("bdev_malloc_delete", Some(json!({"name": "Malloc0"}))).unwrap(), json!(true));
    let t1 = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(t1.elapsed() < Duration::from_secs(10), "perf did not stop after its bdev was deleted");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut out = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut out).unwrap();
    let r: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert!(r["total"]["ios"].as_u64().unwrap() > 0, "it was under load: {r}");
    assert!(t0.elapsed() < Duration::from_secs(30), "stopped long before -t 60");
    let _ = status;
}

/// On a terminal (a pseudo-terminal from `script`), a line a second per job
/// with IOPS, MiB/s, mean and p99 latency; piped, none; the report has p50
/// to p99.99, and `--histogram` adds the bars.
#[test]
fn progress_lines_only_on_a_terminal_and_percentiles_and_histogram_in_the_report() {
    let dir = TempDir::new("perf-tty");
    let cfg = json!({"subsystems": [{"subsystem": "bdev", "config": [
        {"method": "bdev_malloc_create", "params": {"name": "M0", "num_blocks": 65536, "block_size": 512}}]}]});
    let cfg_path = dir.join("tty.json");
    std::fs::write(&cfg_path, serde_json::to_vec(&cfg).unwrap()).unwrap();
    let args = format!(
        "{} -c {} -r {} --interrupt-mode --no-pin -b M0 -q 4 -o 4096 -w randread -t 3 --histogram",
        bin("pollux-perf").display(),
        cfg_path.display(),
        dir.join("tty.sock").display()
    );
    let script = pollux_tests::tool("script", "util-linux's script (a pseudo-terminal)");
    let out = Command::new(script).args(["-q", "-e", "-c", &args, "/dev/null"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let live: Vec<&str> = text.lines().filter(|l| l.contains(" s  M0 on core 0") && l.contains("IOPS") && l.contains("p99")).collect();
    assert!(live.len() >= 2, "a line a second on a terminal:\n{text}");
    assert!(text.contains("p99.99 us") && text.contains("Latency histogram (all jobs):") && text.contains('#'), "{text}");
    // Piped: the report only.
    let out = perf(&dir, &cfg, &["-b", "M0", "-q", "4", "-o", "4096", "-w", "randread", "-t", "2"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(!text.contains(" s  M0 on core 0"), "progress lines when not on a terminal:\n{text}");
    assert!(text.contains("p99.99 us") && !text.contains("Latency histogram"), "{text}");
    let r = report(&perf(&dir, &cfg, &["-b", "M0", "-q", "4", "-o", "4096", "-w", "randread", "-t", "1", "--json"]));
    for k in ["p50_latency_us", "p90_latency_us", "p99_latency_us", "p999_latency_us", "p9999_latency_us"] {
        assert!(r["total"][k].as_f64().is_some_and(|v| v > 0.0), "{k}: {r}");
    }
}
