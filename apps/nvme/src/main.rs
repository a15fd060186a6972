//! `pollux-nvme`: identify and manage NVMe controllers bound to vfio-pci
//! through Pollux's own driver (nvme-cli's commands, for devices the kernel
//! does not drive). Each command opens the controller, brings it up, runs
//! its admin commands and shuts it down again (CC.SHN), so it must not run
//! while a Pollux target has the controller attached (VFIO refuses then).
//!
//! ```text
//! pollux-nvme list
//! pollux-nvme identify [--ns N] 0000:00:04.0
//! pollux-nvme smart-log 0000:00:04.0
//! pollux-nvme error-log [--entries N] 0000:00:04.0
//! pollux-nvme get-feature -f 6 [--sel 0] [--ns N] 0000:00:04.0
//! pollux-nvme set-feature -f 6 -v 0 [--ns N] [--save] 0000:00:04.0
//! pollux-nvme format [--ns N] [--lbaf L] [--ses S] 0000:00:04.0
//! ```
//! Every command takes `--json` for machine-readable output.

#![forbid(unsafe_code)]

mod show;

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use pollux_core::log::Level;
use pollux_nvme_driver::pci::{self, PciAddress};
use pollux_nvme_driver::{Controller, ControllerOptions};
use pollux_nvme_spec::log::{ErrorLogEntry, SmartLog, lid};
use zerocopy::FromBytes;

#[derive(Parser, Debug)]
#[command(name = "pollux-nvme", version, about = "Identify and manage NVMe controllers through Pollux's VFIO driver (nvme-cli style)")]
struct Args {
    /// Print JSON instead of text
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
#[command(rename_all = "kebab-case")]
enum Cmd {
    /// List NVMe controllers: those bound to vfio-pci are identified
    List,
    /// Identify Controller, or Identify Namespace with --ns
    Identify {
        /// PCI address (0000:00:04.0)
        bdf: PciAddress,
        /// Namespace id
        #[arg(short = 'n', long = "ns")]
        nsid: Option<u32>,
    },
    /// SMART / Health Information log
    SmartLog { bdf: PciAddress },
    /// Error Information log
    ErrorLog {
        bdf: PciAddress,
        /// Entries to read (default: all the controller keeps, ELPE + 1)
        #[arg(short = 'e', long)]
        entries: Option<u32>,
    },
    /// Get Features
    GetFeature {
        bdf: PciAddress,
        /// Feature identifier (decimal or 0x hex)
        #[arg(short = 'f', long = "feature-id", value_parser = parse_u8)]
        fid: u8,
        /// 0 current, 1 default, 2 saved, 3 supported capabilities
        #[arg(short = 's', long = "sel", default_value_t = 0)]
        sel: u32,
        #[arg(short = 'n', long = "ns", default_value_t = 0)]
        nsid: u32,
        /// Command dword 11 (some features take an argument)
        #[arg(long, default_value_t = 0)]
        cdw11: u32,
    },
    /// Set Features
    SetFeature {
        bdf: PciAddress,
        #[arg(short = 'f', long = "feature-id", value_parser = parse_u8)]
        fid: u8,
        /// The value (command dword 11)
        #[arg(short = 'v', long = "value")]
        value: u32,
        #[arg(short = 'n', long = "ns", default_value_t = 0)]
        nsid: u32,
        /// Keep the value across power cycles
        #[arg(short = 's', long)]
        save: bool,
    },
    /// Format NVM (erases the namespace)
    Format {
        bdf: PciAddress,
        /// Namespace id (0xffffffff: all)
        #[arg(short = 'n', long = "ns", default_value_t = 1)]
        nsid: u32,
        /// LBA format index
        #[arg(short = 'l', long = "lbaf", default_value_t = 0)]
        lbaf: u8,
        /// Secure erase: 0 none, 1 user data, 2 cryptographic
        #[arg(short = 's', long = "ses", default_value_t = 0)]
        ses: u8,
    },
}

fn parse_u8(s: &str) -> Result<u8, String> {
    let v = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u8::from_str_radix(h, 16),
        None => s.parse(),
    };
    v.map_err(|e| format!("{s}: {e}"))
}

/// Open and bring up the controller at `bdf`, with the fewest resources.
fn open(bdf: PciAddress) -> Result<Arc<Controller>> {
    let opts = ControllerOptions { num_io_queues: 1, io_queue_entries: 2, ..Default::default() };
    Controller::attach_pci("pollux-nvme", bdf, opts).with_context(|| format!("cannot open {bdf}"))
}

fn run(args: Args) -> Result<()> {
    let json = args.json;
    match args.cmd {
        Cmd::List => {
            let mut rows = Vec::new();
            for (addr, f) in pci::nvme_functions() {
                let ctrl = if f.driver.as_deref() == Some("vfio-pci") { Some(open(addr).map_err(|e| format!("{e:#}"))) } else { None };
                rows.push(show::ListRow { addr, function: f, ctrl });
            }
            show::list(&rows, json);
        }
        Cmd::Identify { bdf, nsid: None } => {
            let c = open(bdf)?;
            show::id_ctrl(&c, json);
        }
        Cmd::Identify { bdf, nsid: Some(nsid) } => {
            let c = open(bdf)?;
            let ns = c.identify_namespace(nsid).with_context(|| format!("identify namespace {nsid}"))?;
            if ns.nsze.get() == 0 && ns.ncap.get() == 0 && !c.active_namespace_ids()?.contains(&nsid) {
                bail!("namespace {nsid} of {bdf} is not active");
            }
            show::id_ns(nsid, &ns, json);
        }
        Cmd::SmartLog { bdf } => {
            let c = open(bdf)?;
            let raw = c.get_log_page(lid::SMART_HEALTH, u32::MAX, size_of::<SmartLog>()).context("get log page (SMART / Health)")?;
            let log = SmartLog::read_from_bytes(&raw[..]).map_err(|_| anyhow::anyhow!("short SMART log"))?;
            show::smart_log(bdf, &log, json);
        }
        Cmd::ErrorLog { bdf, entries } => {
            let c = open(bdf)?;
            let max = u32::from(c.identify_data().elpe) + 1;
            let n = entries.unwrap_or(max).clamp(1, max.min(1024));
            let raw = c
                .get_log_page(lid::ERROR_INFORMATION, u32::MAX, n as usize * size_of::<ErrorLogEntry>())
                .context("get log page (error information)")?;
            let list: Vec<ErrorLogEntry> =
                raw.chunks_exact(size_of::<ErrorLogEntry>()).filter_map(|c| ErrorLogEntry::read_from_bytes(c).ok()).collect();
            show::error_log(bdf, &list, json);
        }
        Cmd::GetFeature { bdf, fid, sel, nsid, cdw11 } => {
            if sel > 3 {
                bail!("--sel must be 0 (current), 1 (default), 2 (saved) or 3 (supported capabilities)");
            }
            let c = open(bdf)?;
            let v = c.get_features(fid, sel, nsid, cdw11).with_context(|| format!("get feature {fid:#04x}"))?;
            show::feature(fid, sel, v, json);
        }
        Cmd::SetFeature { bdf, fid, value, nsid, save } => {
            let c = open(bdf)?;
            let result = c.set_features(fid, value, nsid, save).with_context(|| format!("set feature {fid:#04x}"))?;
            show::feature_set(fid, value, result, json);
        }
        Cmd::Format { bdf, nsid, lbaf, ses } => {
            if ses > 2 {
                bail!("--ses must be 0, 1 or 2");
            }
            let c = open(bdf)?;
            c.format(nsid, lbaf, ses).with_context(|| format!("format namespace {nsid}"))?;
            show::formatted(nsid, json);
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    pollux_core::log::init(Level::Warning);
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pollux-nvme: {e:#}");
            ExitCode::FAILURE
        }
    }
}
