//! `pollux-setup`: reserve hugepages and hand NVMe controllers to vfio-pci before
//! running Pollux (and give them back afterwards).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use pollux_setup::{Amount, Bdf, ConfigRequest, RealOs, Report, Selection, System, parse_size_kb};

#[derive(Parser)]
#[command(name = "pollux-setup", version, about = "Prepare hugepages and NVMe devices for Pollux")]
struct Cli {
    /// Read sysfs/procfs/dev under this folder instead of / (for testing).
    #[arg(long, global = true, hide = true, default_value = "/")]
    root: PathBuf,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Show hugepages, hugetlbfs mounts and NVMe controllers.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Reserve hugepages, mount hugetlbfs, bind NVMe controllers to vfio-pci.
    Config(ConfigArgs),
    /// Give NVMe controllers back to the kernel's nvme driver.
    Reset {
        #[command(flatten)]
        devices: DeviceArgs,
        /// Print what would be done without doing it.
        #[arg(long)]
        dry_run: bool,
    },
    /// Remove hugepage files left behind by processes that are gone.
    Cleanup {
        /// Print what would be removed without removing it.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Args)]
struct DeviceArgs {
    /// Only these NVMe controllers (PCI addresses, comma-separated).
    #[arg(long, value_name = "BDF,...")]
    allow: Option<String>,
    /// Never these NVMe controllers.
    #[arg(long, value_name = "BDF,...")]
    block: Option<String>,
}

impl DeviceArgs {
    fn selection(&self) -> anyhow::Result<Selection> {
        let list = |s: &Option<String>| s.as_deref().map(Bdf::parse_list).transpose().map(Option::unwrap_or_default);
        Ok(Selection { allow: list(&self.allow)?, block: list(&self.block)? })
    }
}

#[derive(Args)]
struct ConfigArgs {
    /// Hugepage memory to reserve, in MiB [default: 2048].
    #[arg(long, value_name = "MB", conflicts_with = "nr_hugepages")]
    hugemem: Option<u64>,
    /// Number of hugepages to reserve.
    #[arg(long, value_name = "N")]
    nr_hugepages: Option<u64>,
    /// Hugepage size: 2M or 1G.
    #[arg(long, default_value = "2M")]
    hugepage_size: String,
    /// Reserve on this NUMA node only.
    #[arg(long, value_name = "N")]
    node: Option<u32>,
    #[command(flatten)]
    devices: DeviceArgs,
    /// Give this user the VFIO group devices and the hugetlbfs mount.
    #[arg(long, value_name = "NAME")]
    user: Option<String>,
    /// Print what would be done without doing it.
    #[arg(long)]
    dry_run: bool,
    /// Bind controllers that hold data (partitions, file systems) but are not in
    /// use. Never binds a mounted, swapped-on or held device.
    #[arg(long)]
    force: bool,
    /// Let the pool shrink to the amount asked for (without it, a pool
    /// already larger is kept, as SPDK's setup.sh keeps it unless
    /// SHRINK_HUGE=yes).
    #[arg(long)]
    shrink: bool,
}

fn print_report(report: &Report, refusing: &str) -> ExitCode {
    let prefix = if report.dry_run { "would: " } else { "" };
    for action in &report.actions {
        println!("{prefix}{action}");
    }
    for warning in &report.warnings {
        eprintln!("warning: {warning}");
    }
    for (bdf, uses) in &report.refused {
        eprintln!("refused: {bdf} is in use, not {refusing} it:");
        for u in uses {
            eprintln!("  - {u}");
        }
    }
    if report.refused.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let sys = System::new(cli.root, RealOs);
    match cli.command {
        Cmd::Status { json } => {
            let status = pollux_setup::status(&sys)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", status.render());
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Config(args) => {
            let page_size_kb =
                parse_size_kb(&args.hugepage_size).with_context(|| format!("--hugepage-size {}: expected 2M or 1G", args.hugepage_size))?;
            if page_size_kb != 2048 && page_size_kb != 1024 * 1024 {
                bail!("--hugepage-size {}: only 2M and 1G are supported", args.hugepage_size);
            }
            let hugepages = match (args.hugemem, args.nr_hugepages) {
                (_, Some(n)) => Amount::Pages(n),
                (Some(mb), None) => Amount::MiB(mb),
                (None, None) => Amount::MiB(2048),
            };
            let req = ConfigRequest {
                hugepages: Some(hugepages),
                page_size_kb,
                node: args.node,
                devices: args.devices.selection()?,
                user: args.user,
                dry_run: args.dry_run,
                force: args.force,
                shrink: args.shrink,
            };
            Ok(print_report(&pollux_setup::config(&sys, &req)?, "binding"))
        }
        Cmd::Reset { devices, dry_run } => Ok(print_report(&pollux_setup::reset(&sys, &devices.selection()?, dry_run)?, "returning")),
        Cmd::Cleanup { dry_run } => Ok(print_report(&pollux_setup::cleanup(&sys, dry_run)?, "cleaning")),
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("pollux-setup: {e:#}");
            ExitCode::FAILURE
        }
    }
}
