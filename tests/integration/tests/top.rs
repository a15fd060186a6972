//! pollux-top driven in tmux (send-keys, capture-pane) against a daemon
//! under load (an NVMe/TCP host and an iSCSI initiator, each reading and
//! writing): each tab shows the workload's figures, down to each
//! connection's command rate, `q` exits cleanly; `--once` prints a frame
//! as text.

use std::process::Command;
use std::time::{Duration, Instant};

use pollux_tests::iscsi_host::{self, RawConn};
use pollux_tests::nvmf_client::Client;
use pollux_tests::{Daemon, DaemonOpts, bin, free_port, tool};
use serde_json::json;

const NQN: &str = "nqn.2016-06.io.pollux:top";

fn tmux(args: &[&str]) -> String {
    let out = Command::new(tool("tmux", "tmux")).args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The pane's text once `pred` holds on it.
fn screen_until(session: &str, what: &str, pred: impl Fn(&str) -> bool) -> String {
    let t0 = Instant::now();
    loop {
        let s = tmux(&["capture-pane", "-p", "-t", session]);
        if pred(&s) {
            return s;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "pollux-top never showed {what}:\n{s}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The `n`th word after `name` on any line that has it, as a number
/// (table borders trimmed): whether one such line's is above zero.
fn nth_after_is_positive(screen: &str, name: &str, n: usize) -> bool {
    screen.lines().filter(|l| l.contains(name)).any(|l| {
        l.split_whitespace()
            .skip_while(|w| !w.contains(name))
            .nth(n)
            .and_then(|w| w.trim_matches('│').parse::<f64>().ok())
            .is_some_and(|v| v > 0.0)
    })
}

/// The figure in the first numeric column after `name` on its line.
fn figure_after(screen: &str, name: &str) -> Option<f64> {
    screen
        .lines()
        .find(|l| l.contains(name))
        .and_then(|l| l.split_whitespace().skip_while(|w| !w.contains(name)).skip(1).find_map(|w| w.trim_matches('│').parse().ok()))
}

#[test]
fn pollux_top_shows_each_tab_under_load_and_quits_with_q() {
    let (nport, iport) = (free_port(), free_port());
    let mut cfg = iscsi_host::config(iport, "top", 32, None);
    cfg["subsystems"].as_array_mut().unwrap().push(json!({"subsystem": "nvmf", "config": [
        {"method": "nvmf_create_transport", "params": {"trtype": "TCP"}},
        {"method": "nvmf_create_subsystem", "params": {"nqn": NQN, "allow_any_host": true}},
        {"method": "nvmf_subsystem_add_listener", "params": {"nqn": NQN, "listen_address": {"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": nport.to_string()}}},
        {"method": "nvmf_subsystem_add_ns", "params": {"nqn": NQN, "namespace": {"bdev_name": "Malloc0", "nsid": 1}}},
    ]}));
    let d = Daemon::start(DaemonOpts { config: Some(cfg), ..Default::default() });
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let stop3 = stop.clone();
    let initiator = std::thread::spawn(move || {
        let mut iscsi = RawConn::connect(iport);
        iscsi.login("iqn.2026-12.test:top-initiator", Some(&iscsi_host::target_iqn("top")), 1);
        let data = vec![5u8; 4096];
        let mut lba = 0u32;
        while !stop3.load(std::sync::atomic::Ordering::Relaxed) {
            assert_eq!(iscsi.write10(lba % 60000, &data), Some(0));
            assert_eq!(iscsi.read10(lba % 60000, 8).map(|r| r.0), Some(0));
            lba += 8;
        }
    });
    let host = std::thread::spawn(move || {
        let (_a, cntlid) = Client::admin(nport, NQN, 0, false, false);
        let mut io = Client::io(nport, NQN, cntlid, 1, false, false);
        let data = vec![7u8; 4096];
        let mut lba = 0;
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            assert!(io.write(1, lba % 60000, &data, 512, false).ok());
            assert!(io.read(1, lba % 60000, 8, 512).0.ok());
            lba += 8;
        }
    });

    // --once: text for scripts.
    let out = Command::new(bin("pollux-top")).arg("-s").arg(&d.socket).args(["--once", "-d", "0.5"]).output().unwrap();
    let once = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{once}");
    for t in ["== reactors", "== bdevs", "== nvmf", "== iscsi"] {
        assert!(once.contains(t), "{t} missing:\n{once}");
    }
    assert!(figure_after(&once, "Malloc0").is_some_and(|v| v > 0.0), "no IOPS for Malloc0:\n{once}");

    // The TUI in tmux.
    let session = format!("pollux-top-{}", std::process::id());
    let cmd = format!("{} -s {}; echo pollux-top exited $?; sleep 30", bin("pollux-top").display(), d.socket.display());
    tmux(&["new-session", "-d", "-s", &session, "-x", "160", "-y", "40", &cmd]);
    let reactors = screen_until(&session, "the reactors", |s| s.contains("Busy %") && s.contains("app_thread"));
    assert!(reactors.contains("1 reactors"), "{reactors}");
    tmux(&["send-keys", "-t", &session, "2"]);
    let bdevs =
        screen_until(&session, "Malloc0's IOPS", |s| s.contains("Read IOPS") && figure_after(s, "Malloc0").is_some_and(|v| v > 0.0));
    tmux(&["send-keys", "-t", &session, "3"]);
    // Subsystem, controller, queue, host, peer, then the queue pair's
    // commands per second.
    let nvmf = screen_until(&session, "the NVMe/TCP host's queue pair and its rate", |s| {
        s.contains("Cmds/s") && s.contains("nqn.2014-08.org.nvmexpress") && nth_after_is_positive(s, NQN, 5)
    });
    tmux(&["send-keys", "-t", &session, "4"]);
    // Connection, target, initiator, address, then the connection's
    // commands per second.
    let iscsi_tab =
        screen_until(&session, "the iSCSI connection and its rate", |s| nth_after_is_positive(s, "iqn.2026-12.test:top-initiator", 2));
    // Sort and reverse keep the rows.
    tmux(&["send-keys", "-t", &session, "2", "s", "r"]);
    screen_until(&session, "a sorted bdev table", |s| s.contains("sort: IOPS (reversed)") && s.contains("Malloc0"));
    tmux(&["send-keys", "-t", &session, "q"]);
    let after = screen_until(&session, "a clean exit", |s| s.contains("pollux-top exited"));
    assert!(after.contains("pollux-top exited 0"), "{after}");
    tmux(&["kill-session", "-t", &session]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    host.join().unwrap();
    initiator.join().unwrap();
    // Frames for docs/observability.md.
    if let Some(dir) = std::env::var_os("POLLUX_TOP_CAPTURES") {
        for (n, s) in [("reactors", &reactors), ("bdevs", &bdevs), ("nvmf", &nvmf), ("iscsi", &iscsi_tab)] {
            std::fs::write(std::path::Path::new(&dir).join(format!("{n}.txt")), s).unwrap();
        }
    }
}
