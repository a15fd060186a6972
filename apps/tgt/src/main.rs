//! `pollux-tgt`: the Pollux target daemon. Reactors on the cores of `-m`, a
//! JSON-RPC socket on `-r`, and the state of the `-c` config file.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use pollux_core::app::{App, AppArgs};

mod defaults;

/// Counts each thread's heap allocations (`allocations` in
/// `thread_get_stats`): the I/O path is to make none.
#[global_allocator]
static ALLOC: pollux_core::alloc::Counting = pollux_core::alloc::Counting;

#[derive(Parser, Debug)]
#[command(name = "pollux-tgt", version, about = "Pollux storage target: poll-mode block devices, iSCSI and NVMe-oF")]
struct Args {
    #[command(flatten)]
    app: AppArgs,
    /// Start from the embedded default configuration (see --print-default-config)
    #[arg(long, conflicts_with = "config")]
    default_config: bool,
    /// Print the embedded default configuration and exit
    #[arg(long)]
    print_default_config: bool,
}

fn main() -> ExitCode {
    let mut args = Args::parse();
    if args.print_default_config {
        println!("{}", defaults::CONFIG);
        return ExitCode::SUCCESS;
    }
    pollux_core::log::init(args.app.log_level);
    if args.default_config {
        args.app.embedded_config = Some((defaults::NAME.to_string(), defaults::CONFIG.to_string()));
    }
    let mut app = App::new("pollux-tgt");
    pollux_tgt::register(&mut app);
    let res = app.run(args.app);
    pollux_rbd::wait_closes();
    match res {
        Ok(0) => ExitCode::SUCCESS,
        Ok(code) => ExitCode::from(code.clamp(1, 255) as u8),
        Err(e) => {
            eprintln!("pollux-tgt: {e}");
            ExitCode::FAILURE
        }
    }
}
