//! `pollux-perf`: SPDK's bdevperf for Pollux. Loads bdevs from a config file,
//! runs one job per bdev per reactor at a fixed queue depth, prints a line a
//! second and a final table (IOPS, MiB/s, latency percentiles), and fails on
//! any I/O error or verify mismatch.
//!
//! `pollux-perf -c CONFIG -q 32 -o 4096 -w randread -t 10 [-m MASK] [-M 70] [--json]`

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use pollux_core::app::{App, AppArgs, DEFAULT_RPC_SOCKET};

mod job;
mod pattern;
mod report;

/// Counts each thread's heap allocations (`allocations` in
/// `thread_get_stats`): the I/O path is to make none.
#[global_allocator]
static ALLOC: pollux_core::alloc::Counting = pollux_core::alloc::Counting;

/// What each job does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    Read,
    Write,
    Randread,
    Randwrite,
    /// Sequential, mixed reads and writes (-M sets the read share).
    Rw,
    /// Random, mixed reads and writes (-M sets the read share).
    Randrw,
    /// Write a pattern, read it back and compare, on every I/O.
    Verify,
    /// Verify, with a bdev reset every second.
    Reset,
    Unmap,
    Flush,
}

#[derive(Parser, Debug)]
#[command(name = "pollux-perf", version, about = "Measure Pollux bdevs: one job per bdev per reactor")]
pub struct Args {
    #[command(flatten)]
    app: AppArgs,
    /// Queue depth of each job
    #[arg(short = 'q', long = "queue-depth", default_value_t = 32)]
    qd: u32,
    /// I/O size in bytes (a multiple of the block size)
    #[arg(short = 'o', long = "io-size", default_value_t = 4096)]
    io_size: u64,
    /// Workload
    #[arg(short = 'w', long = "workload", value_enum)]
    workload: Workload,
    /// Run time in seconds
    #[arg(short = 't', long = "time", default_value_t = 10)]
    time: u64,
    /// Read share in percent for rw and randrw
    #[arg(short = 'M', long = "rwmixread", default_value_t = 50)]
    rwmixread: u8,
    /// Only these bdevs (comma-separated); default: every bdev of the config
    #[arg(short = 'b', long = "bdevs", value_delimiter = ',')]
    bdevs: Option<Vec<String>>,
    /// Print the final report as JSON (no progress lines)
    #[arg(long)]
    json: bool,
    /// After the report, the latency histogram of all jobs as text bars
    #[arg(long)]
    histogram: bool,
    /// Write every block once (untimed) before the measured run, so reads
    /// hit written data (a thin malloc bdev reads unwritten blocks from the
    /// shared zero page otherwise)
    #[arg(long)]
    precondition: bool,
    /// Seed of the random offsets (and verify patterns)
    #[arg(long, default_value_t = 0x5eed)]
    seed: u64,
}

fn main() -> ExitCode {
    let mut args = Args::parse();
    pollux_core::log::init(args.app.log_level);
    if args.app.rpc_socket.as_os_str() == DEFAULT_RPC_SOCKET {
        // Do not collide with a target running beside us.
        args.app.rpc_socket = format!("/var/tmp/pollux-perf.{}.sock", std::process::id()).into();
    }
    if args.app.config.is_none() {
        eprintln!("pollux-perf: -c CONFIG is required (the bdevs to test, in SPDK's JSON config format)");
        return ExitCode::from(2);
    }
    if args.rwmixread > 100 {
        eprintln!("pollux-perf: -M must be between 0 and 100");
        return ExitCode::from(2);
    }
    if args.qd == 0 || args.io_size == 0 || args.time == 0 {
        eprintln!("pollux-perf: -q, -o and -t must be above 0");
        return ExitCode::from(2);
    }
    let mut app = App::new("pollux-perf");
    // framework_set_scheduler in a config: idle_poll_us in interrupt mode.
    pollux_core::scheduler::register(&mut app);
    pollux_core::bdev::rpc::register(&mut app);
    pollux_bdev::register_all(&mut app);
    pollux_rbd::register(&mut app);
    pollux_lvol::register(&mut app);
    pollux_raid::register(&mut app);
    pollux_crypto::register(&mut app);
    pollux_nvme_driver::register(&mut app);
    pollux_iscsi_host::register(&mut app);
    let params = job::Params::from_args(&args);
    let json = args.json;
    let show = report::Show {
        json,
        // A line a second only for someone watching.
        live: !json && std::io::IsTerminal::is_terminal(&std::io::stdout()),
        histogram: args.histogram,
    };
    report::set_show(show);
    // Volumes on the bdevs of the config appear once examined.
    app.on_started(move || pollux_core::bdev::wait_for_examine(move || job::start(params, json)));
    let res = app.run(args.app);
    pollux_rbd::wait_closes();
    match res {
        Ok(0) => ExitCode::SUCCESS,
        Ok(code) => ExitCode::from(code.clamp(1, 255) as u8),
        Err(e) => {
            eprintln!("pollux-perf: {e}");
            ExitCode::FAILURE
        }
    }
}
