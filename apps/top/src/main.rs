//! `pollux-top`: what a running Pollux is doing, refreshed every second, in
//! a terminal (the role of SPDK's `spdk_top`), from its RPC socket.
//!
//! Tabs: reactors (busy share, pollers, loop rate), bdevs (IOPS, MiB/s and
//! mean latency, read and write), NVMe-oF (each subsystem's queue pairs:
//! controller, host, peer, and each queue pair's commands and MiB/s) and
//! iSCSI (each connection: target, initiator, address, and its commands
//! and MiB/s). Keys: Tab / arrows / 1-4 change tab, `s` sorts by the next
//! column, `r` reverses, `q` quits. `--once` prints one frame as text (two
//! samples a delay apart, for the rates) for scripts.

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use crossterm::event::{self, Event, KeyCode, KeyEventKind};
use pollux_core::app::DEFAULT_RPC_SOCKET;
use pollux_core::rpc::Client;
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Borders, Row, Table, Tabs};
use serde_json::{Value, json};

#[derive(Parser)]
#[command(name = "pollux-top", version, about = "A live view of a running Pollux over its RPC socket")]
struct Args {
    /// RPC socket of the target
    #[arg(short = 's', long = "server", default_value = DEFAULT_RPC_SOCKET)]
    server: PathBuf,
    /// Seconds between refreshes
    #[arg(short = 'd', long = "delay", default_value_t = 1.0)]
    delay: f64,
    /// Print one frame as text and exit
    #[arg(long)]
    once: bool,
    /// The tab to show first (or to print with --once; default: all)
    #[arg(short = 't', long = "tab", value_parser = ["reactors", "bdevs", "nvmf", "iscsi"])]
    tab: Option<String>,
}

const TABS: [&str; 4] = ["reactors", "bdevs", "nvmf", "iscsi"];

/// One look at the target.
struct Sample {
    at: Instant,
    threads: Value,
    iostat: Value,
    /// NVM subsystems and their queue pairs (`nvmf_subsystem_get_qpairs`).
    subsystems: Vec<(Value, Value)>,
    iscsi: Value,
    targets: Value,
}

fn call(c: &mut Client, m: &str, p: Option<Value>) -> Value {
    c.call(m, p).unwrap_or(Value::Null)
}

fn sample(c: &mut Client) -> Sample {
    let subs = call(c, "nvmf_get_subsystems", None);
    let subsystems = subs
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["subtype"] != "Discovery")
        .map(|s| (s.clone(), call(c, "nvmf_subsystem_get_qpairs", Some(json!({"nqn": s["nqn"]})))))
        .collect();
    Sample {
        at: Instant::now(),
        threads: call(c, "thread_get_stats", None),
        iostat: call(c, "bdev_get_iostat", None),
        subsystems,
        iscsi: call(c, "iscsi_get_connections", None),
        targets: call(c, "iscsi_get_target_nodes", None),
    }
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or(0.0)
}

/// Per-bdev rates between two samples: (read IOPS, write IOPS, read MiB/s,
/// write MiB/s, read mean us, write mean us).
fn bdev_rates(prev: &Sample, cur: &Sample) -> HashMap<String, [f64; 6]> {
    let dt = cur.at.duration_since(prev.at).as_secs_f64().max(1e-3);
    let hz = num(&cur.iostat["tick_rate"]).max(1.0);
    let old: HashMap<&str, &Value> =
        prev.iostat["bdevs"].as_array().into_iter().flatten().map(|b| (b["name"].as_str().unwrap_or(""), b)).collect();
    let mut out = HashMap::new();
    for b in cur.iostat["bdevs"].as_array().into_iter().flatten() {
        let name = b["name"].as_str().unwrap_or("");
        let o = old.get(name).copied().unwrap_or(&Value::Null);
        let d = |k: &str| (num(&b[k]) - num(&o[k])).max(0.0);
        let (r, w) = (d("num_read_ops"), d("num_write_ops"));
        let lat = |ticks: f64, ops: f64| if ops > 0.0 { ticks / ops / hz * 1e6 } else { 0.0 };
        out.insert(
            name.to_string(),
            [
                r / dt,
                w / dt,
                d("bytes_read") / dt / 1048576.0,
                d("bytes_written") / dt / 1048576.0,
                lat(d("read_latency_ticks"), r),
                lat(d("write_latency_ticks"), w),
            ],
        );
    }
    out
}

/// Rates of the entries of `cur` against the same entries (by `key`) in
/// `prev`: commands/s, read MiB/s, write MiB/s, from the counters
/// `completed_commands`, `bytes_read` and `bytes_written`.
fn conn_rates<'a>(prev: impl Iterator<Item = &'a Value>, cur: &Value, key: impl Fn(&Value) -> String, dt: f64) -> [f64; 3] {
    let k = key(cur);
    let old = prev.into_iter().find(|p| key(p) == k).unwrap_or(&Value::Null);
    let d = |f: &str| (num(&cur[f]) - num(&old[f])).max(0.0) / dt;
    [d("completed_commands"), d("bytes_read") / 1048576.0, d("bytes_written") / 1048576.0]
}

/// A tab's table: headers and rows (text cells, and the numbers to sort by).
struct View {
    headers: Vec<&'static str>,
    rows: Vec<Vec<(String, f64)>>,
}

fn f1(v: f64) -> (String, f64) {
    (format!("{v:.1}"), v)
}

fn text(s: &str) -> (String, f64) {
    (s.to_string(), 0.0)
}

fn view(tab: &str, prev: &Sample, cur: &Sample) -> View {
    let dt = cur.at.duration_since(prev.at).as_secs_f64().max(1e-3);
    let rates = bdev_rates(prev, cur);
    match tab {
        "reactors" => {
            let old: HashMap<i64, &Value> =
                prev.threads["threads"].as_array().into_iter().flatten().map(|t| (t["id"].as_i64().unwrap_or(0), t)).collect();
            let rows = cur.threads["threads"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|t| {
                    let o = old.get(&t["id"].as_i64().unwrap_or(0)).copied().unwrap_or(&Value::Null);
                    let busy = num(&t["busy"]) - num(&o["busy"]);
                    let idle = num(&t["idle"]) - num(&o["idle"]);
                    let share = if busy + idle > 0.0 { busy * 100.0 / (busy + idle) } else { 0.0 };
                    let iters = (num(&t["iterations"]) - num(&o["iterations"])) / dt;
                    vec![
                        text(t["name"].as_str().unwrap_or("")),
                        f1(share),
                        (format!("{}", num(&t["active_pollers_count"])), num(&t["active_pollers_count"])),
                        (format!("{}", num(&t["timed_pollers_count"])), num(&t["timed_pollers_count"])),
                        (format!("{}", num(&t["paused_pollers_count"])), num(&t["paused_pollers_count"])),
                        (format!("{iters:.0}"), iters),
                        text(if t["in_interrupt"].as_bool() == Some(true) { "interrupt" } else { "poll" }),
                    ]
                })
                .collect();
            View { headers: vec!["Reactor", "Busy %", "Active pollers", "Timed pollers", "Paused pollers", "Loops/s", "Mode"], rows }
        }
        "bdevs" => {
            let mut rows: Vec<Vec<(String, f64)>> = rates
                .iter()
                .map(|(name, r)| {
                    let mut row = vec![text(name), f1(r[0] + r[1]), f1(r[0]), f1(r[1]), f1(r[2]), f1(r[3]), f1(r[4]), f1(r[5])];
                    row[1].0 = format!("{:.0}", r[0] + r[1]);
                    row
                })
                .collect();
            rows.sort_by(|a, b| a[0].0.cmp(&b[0].0));
            View { headers: vec!["Bdev", "IOPS", "Read IOPS", "Write IOPS", "Read MiB/s", "Write MiB/s", "Read us", "Write us"], rows }
        }
        "nvmf" => {
            let mut rows = Vec::new();
            let key = |q: &Value| format!("{}/{}/{}", q["cntlid"], q["qid"], q["peer_address"]);
            for (s, qpairs) in &cur.subsystems {
                let nqn = s["nqn"].as_str().unwrap_or("");
                let old = prev.subsystems.iter().find(|(p, _)| p["nqn"] == s["nqn"]).map(|(_, q)| q);
                let list = qpairs.as_array().cloned().unwrap_or_default();
                if list.is_empty() {
                    rows.push(vec![text(nqn), text("-"), text("-"), text("-"), text("-"), f1(0.0), f1(0.0), f1(0.0)]);
                }
                for q in list {
                    let r = conn_rates(old.and_then(Value::as_array).into_iter().flatten(), &q, key, dt);
                    let peer = &q["peer_address"];
                    let mut cmds = f1(r[0]);
                    cmds.0 = format!("{:.0}", r[0]);
                    rows.push(vec![
                        text(nqn),
                        (format!("{}", num(&q["cntlid"])), num(&q["cntlid"])),
                        (format!("{}", num(&q["qid"])), num(&q["qid"])),
                        text(q["hostnqn"].as_str().unwrap_or("")),
                        text(&format!("{}:{}", peer["traddr"].as_str().unwrap_or(""), peer["trsvcid"].as_str().unwrap_or(""))),
                        cmds,
                        f1(r[1]),
                        f1(r[2]),
                    ]);
                }
            }
            View { headers: vec!["Subsystem", "Controller", "Queue", "Host", "Peer", "Cmds/s", "Read MiB/s", "Write MiB/s"], rows }
        }
        _ => {
            let luns: HashMap<String, Vec<String>> = cur
                .targets
                .as_array()
                .into_iter()
                .flatten()
                .map(|t| {
                    let bdevs =
                        t["luns"].as_array().into_iter().flatten().filter_map(|l| l["bdev_name"].as_str().map(str::to_string)).collect();
                    (t["name"].as_str().unwrap_or("").to_string(), bdevs)
                })
                .collect();
            let key = |c: &Value| c["id"].to_string();
            let rows = cur
                .iscsi
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| {
                    let target = c["target_node_name"].as_str().unwrap_or("").to_string();
                    let iops: f64 = luns.get(&target).into_iter().flatten().filter_map(|b| rates.get(b)).map(|r| r[0] + r[1]).sum();
                    let r = conn_rates(prev.iscsi.as_array().into_iter().flatten(), c, key, dt);
                    let mut cmds = f1(r[0]);
                    cmds.0 = format!("{:.0}", r[0]);
                    vec![
                        (format!("{}", num(&c["id"])), num(&c["id"])),
                        text(&target),
                        text(c["initiator_name"].as_str().unwrap_or("")),
                        text(c["initiator_addr"].as_str().unwrap_or("")),
                        cmds,
                        f1(r[1]),
                        f1(r[2]),
                        f1(iops),
                    ]
                })
                .collect();
            View {
                headers: vec!["Connection", "Target", "Initiator", "Address", "Cmds/s", "Read MiB/s", "Write MiB/s", "Target IOPS"],
                rows,
            }
        }
    }
}

/// Sort rows by column `col` (numbers where the column has them).
fn sort(v: &mut View, col: usize, reverse: bool) {
    v.rows.sort_by(|a, b| {
        let (x, y) = (&a[col.min(a.len() - 1)], &b[col.min(b.len() - 1)]);
        let o = if x.1 != 0.0 || y.1 != 0.0 { x.1.partial_cmp(&y.1).unwrap_or(std::cmp::Ordering::Equal) } else { x.0.cmp(&y.0) };
        if reverse { o.reverse() } else { o }
    });
}

fn as_text(title: &str, v: &View) -> String {
    let cols = v.headers.len();
    let mut w: Vec<usize> = v.headers.iter().map(|h| h.len()).collect();
    for r in &v.rows {
        for (i, c) in r.iter().enumerate().take(cols) {
            w[i] = w[i].max(c.0.len());
        }
    }
    let mut out = format!("== {title}\n");
    let line =
        |cells: Vec<&str>| cells.iter().enumerate().map(|(i, c)| format!("{c:<width$}", width = w[i])).collect::<Vec<_>>().join("  ");
    out.push_str(line(v.headers.clone()).trim_end());
    out.push('\n');
    for r in &v.rows {
        out.push_str(line(r.iter().map(|c| c.0.as_str()).collect()).trim_end());
        out.push('\n');
    }
    out
}

fn connect(path: &std::path::Path) -> Result<Client, String> {
    let c = Client::connect(path).map_err(|e| e.to_string())?;
    c.set_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    Ok(c)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut c = match connect(&args.server) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pollux-top: {e}");
            return ExitCode::FAILURE;
        }
    };
    let delay = Duration::from_secs_f64(args.delay.max(0.1));
    if args.once {
        let prev = sample(&mut c);
        std::thread::sleep(delay);
        let cur = sample(&mut c);
        for tab in TABS.iter().filter(|t| args.tab.as_deref().is_none_or(|w| w == **t)) {
            print!("{}", as_text(tab, &view(tab, &prev, &cur)));
        }
        return ExitCode::SUCCESS;
    }
    match run(&mut c, &args, delay) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pollux-top: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(c: &mut Client, args: &Args, delay: Duration) -> std::io::Result<()> {
    let mut terminal = ratatui::init();
    let mut tab = args.tab.as_deref().and_then(|t| TABS.iter().position(|x| *x == t)).unwrap_or(0);
    let (mut sort_col, mut reverse) = (0usize, false);
    let mut prev = sample(c);
    let mut cur = sample(c);
    let mut next = Instant::now() + delay;
    let result = loop {
        let mut v = view(TABS[tab], &prev, &cur);
        sort(&mut v, sort_col, reverse);
        let title = format!(
            " pollux-top: {} | sort: {}{} | Tab/1-4 tabs, s sort, r reverse, q quit ",
            args.server.display(),
            v.headers.get(sort_col).copied().unwrap_or(""),
            if reverse { " (reversed)" } else { "" }
        );
        let draw = terminal.draw(|f| {
            let [top, body] = Layout::vertical([Constraint::Length(3), Constraint::Min(1)]).areas(f.area());
            let tabs = Tabs::new(TABS.iter().enumerate().map(|(i, t)| Line::from(format!("{} {}", i + 1, t))))
                .select(tab)
                .block(Block::default().borders(Borders::ALL).title(title.clone()))
                .highlight_style(Style::default().add_modifier(Modifier::REVERSED));
            f.render_widget(tabs, top);
            // Each column as wide as its widest cell.
            let widths: Vec<Constraint> = (0..v.headers.len())
                .map(|i| {
                    let w = v.rows.iter().map(|r| r.get(i).map_or(0, |c| c.0.len())).max().unwrap_or(0).max(v.headers[i].len());
                    Constraint::Length(w as u16 + 1)
                })
                .collect();
            let rows = v.rows.iter().map(|r| Row::new(r.iter().map(|c| c.0.clone()).collect::<Vec<_>>()));
            let table = Table::new(rows, widths)
                .header(Row::new(v.headers.clone()).style(Style::default().add_modifier(Modifier::BOLD)))
                .block(Block::default().borders(Borders::ALL).title(format!(" {} ", TABS[tab])));
            f.render_widget(table, body);
        });
        if let Err(e) = draw {
            break Err(e);
        }
        let wait = next.saturating_duration_since(Instant::now());
        if event::poll(wait)? {
            if let Event::Key(k) = event::read()? {
                if k.kind != KeyEventKind::Press {
                    continue;
                }
                match k.code {
                    KeyCode::Char('q') | KeyCode::Esc => break Ok(()),
                    KeyCode::Tab | KeyCode::Right => tab = (tab + 1) % TABS.len(),
                    KeyCode::BackTab | KeyCode::Left => tab = (tab + TABS.len() - 1) % TABS.len(),
                    KeyCode::Char(d @ '1'..='4') => tab = d as usize - '1' as usize,
                    KeyCode::Char('s') => sort_col = (sort_col + 1) % v.headers.len().max(1),
                    KeyCode::Char('r') => reverse = !reverse,
                    _ => {}
                }
                if matches!(k.code, KeyCode::Tab | KeyCode::Right | KeyCode::BackTab | KeyCode::Left | KeyCode::Char('1'..='4')) {
                    sort_col = 0;
                }
                continue;
            }
        }
        if Instant::now() >= next {
            prev = cur;
            cur = sample(c);
            next = Instant::now() + delay;
        }
    };
    ratatui::restore();
    result
}
