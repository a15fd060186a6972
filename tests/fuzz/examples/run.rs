//! Run one target on input files, on stable Rust, with a full backtrace on
//! a panic: how to reproduce and debug a crash libFuzzer found.
//!
//! ```text
//! cargo run --release -p pollux-fuzz --example run -- TARGET FILE_OR_DIR... [--repeat N]
//! ```
//!
//! With `--repeat N` each input runs N times and the executions per second
//! are printed (the speed of a target without libFuzzer's own cost);
//! `--slowest` also lists the slowest inputs.

use std::path::PathBuf;
use std::time::Instant;

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(name) = args.next() else {
        eprintln!("usage: run TARGET FILE_OR_DIR... [--repeat N]");
        std::process::exit(2);
    };
    let Some(target) = pollux_fuzz::target(&name) else {
        eprintln!("no target {name}; targets: {:?}", pollux_fuzz::TARGETS.iter().map(|t| t.0).collect::<Vec<_>>());
        std::process::exit(2);
    };
    let mut files = Vec::new();
    let mut repeat = 1;
    let mut slowest = false;
    while let Some(a) = args.next() {
        if a == "--slowest" {
            slowest = true;
            continue;
        }
        if a == "--repeat" {
            repeat = args.next().and_then(|n| n.parse().ok()).unwrap_or(1);
            continue;
        }
        let p = PathBuf::from(a);
        if p.is_dir() {
            let mut list: Vec<PathBuf> = std::fs::read_dir(&p).expect("directory").map(|e| e.expect("entry").path()).collect();
            list.sort();
            files.extend(list);
        } else {
            files.push(p);
        }
    }
    let start = Instant::now();
    let mut runs = 0u64;
    let mut times = vec![0f64; files.len()];
    for _ in 0..repeat {
        for (i, f) in files.iter().enumerate() {
            let data = std::fs::read(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            if repeat == 1 && !slowest {
                eprintln!("{}", f.display());
            }
            let t = Instant::now();
            target(&data);
            times[i] += t.elapsed().as_secs_f64();
            runs += 1;
        }
    }
    if slowest {
        let mut order: Vec<usize> = (0..files.len()).collect();
        order.sort_by(|a, b| times[*b].total_cmp(&times[*a]));
        for i in order.into_iter().take(10) {
            println!("{:10.1} us  {}", times[i] * 1e6 / repeat as f64, files[i].display());
        }
    }
    let s = start.elapsed().as_secs_f64();
    println!("{name}: {runs} executions in {s:.2} s: {:.0} exec/s", runs as f64 / s.max(1e-9));
}
