//! `pollux-nvme`: identify and manage NVMe controllers bound to vfio-pci
//! through Pollux's own driver (nvme-cli's commands, for devices the kernel
//! does not drive), and remote ones over NVMe-oF TCP through Pollux's host
//! library. Each command opens the controller, brings it up, runs its
//! admin commands and shuts it down again (CC.SHN), so a local controller
//! must not be attached to a running Pollux target (VFIO refuses then).
//!
//! ```text
//! pollux-nvme list
//! pollux-nvme identify [--ns N] 0000:00:04.0
//! pollux-nvme smart-log 0000:00:04.0
//! pollux-nvme error-log [--entries N] 0000:00:04.0
//! pollux-nvme get-feature -f 6 [--sel 0] [--ns N] 0000:00:04.0
//! pollux-nvme set-feature -f 6 -v 0 [--ns N] [--save] 0000:00:04.0
//! pollux-nvme format [--ns N] [--lbaf L] [--ses S] 0000:00:04.0
//!
//! pollux-nvme discover -t tcp -a 10.0.0.1 [-s 8009] [-q HOSTNQN]
//! pollux-nvme identify [--ns N] -t tcp -a 10.0.0.1 [-s 4420] --nqn NQN [-q HOSTNQN]
//! pollux-nvme smart-log -t tcp -a 10.0.0.1 [-s 4420] --nqn NQN
//! pollux-nvme error-log [--entries N] -t tcp -a 10.0.0.1 [-s 4420] --nqn NQN
//! pollux-nvme get-feature -f 7 -t tcp -a 10.0.0.1 [--trsvcid 4420] --nqn NQN
//! ```
//! Every command takes `--json` for machine-readable output. In
//! get-feature `-s` is `--sel`, so the port there is `--trsvcid`.

#![forbid(unsafe_code)]

mod fabrics;
mod show;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Parser, Subcommand, ValueEnum};
use pollux_core::log::Level;
use pollux_nvme_driver::pci::{self, PciAddress};
use pollux_nvme_driver::{Controller, ControllerOptions, admin};
use pollux_nvme_spec::identify::{IdentifyNamespace, cns};
use pollux_nvme_spec::log::{ErrorLogEntry, SmartLog, lid};
use zerocopy::FromBytes;

use crate::fabrics::Remote;
use pollux_nvmf_host::qpair::Fabric;

#[derive(Parser, Debug)]
#[command(
    name = "pollux-nvme",
    version,
    about = "Identify and manage NVMe controllers: local ones through Pollux's VFIO driver, remote ones over NVMe/TCP (nvme-cli style)"
)]
struct Args {
    /// Print JSON instead of text
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

/// NVMe-oF transports the tool speaks.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum Transport {
    Tcp,
    Rdma,
}

impl Transport {
    fn fabric(self) -> Fabric {
        match self {
            Transport::Tcp => Fabric::Tcp,
            Transport::Rdma => Fabric::Rdma,
        }
    }
}

/// The controller a command is for: a local one by PCI address, or a
/// remote one over NVMe/TCP. Which one is checked by [`ControllerArgs::resolve`],
/// so that a wrong mix gets an error saying what to give.
#[derive(clap::Args, Debug)]
struct ControllerArgs {
    /// PCI address of a local controller bound to vfio-pci (0000:00:04.0)
    bdf: Option<PciAddress>,
    /// Transport of a remote controller, instead of a PCI address
    #[arg(short = 't', long = "transport", value_enum, ignore_case = true)]
    transport: Option<Transport>,
    /// Address of the remote controller
    #[arg(short = 'a', long = "traddr", value_name = "ADDR")]
    traddr: Option<IpAddr>,
    /// Port of the remote controller [default: 4420]
    #[arg(short = 's', long = "trsvcid", value_name = "PORT")]
    trsvcid: Option<u16>,
    /// NQN of the remote subsystem
    #[arg(long = "nqn")]
    nqn: Option<String>,
    /// Host NQN to connect as [default: a random one]
    #[arg(short = 'q', long = "hostnqn")]
    hostnqn: Option<String>,
}

/// A controller as resolved from [`ControllerArgs`].
enum Device {
    Pci(PciAddress),
    Remote(Remote),
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Pci(bdf) => bdf.fmt(f),
            Device::Remote(r) => r.fmt(f),
        }
    }
}

impl ControllerArgs {
    /// Exactly one of a PCI address or `-t tcp` (with what it needs).
    fn resolve(self) -> Result<Device> {
        let remote_options = self.traddr.is_some() || self.trsvcid.is_some() || self.nqn.is_some() || self.hostnqn.is_some();
        match (self.bdf, self.transport) {
            (Some(bdf), Some(_)) => bail!("give either a PCI address ({bdf}) or -t tcp, not both"),
            (Some(bdf), None) if remote_options => {
                bail!("--traddr, --trsvcid, --nqn and --hostnqn are for a remote controller (-t tcp), not for {bdf}")
            }
            (Some(bdf), None) => Ok(Device::Pci(bdf)),
            (None, Some(t)) => {
                let ip = self.traddr.context("-t tcp (or rdma) needs the controller's address: -a ADDR")?;
                let subnqn = self.nqn.context("-t tcp (or rdma) needs the subsystem's NQN: --nqn NQN")?;
                let addr = SocketAddr::new(ip, self.trsvcid.unwrap_or(fabrics::SUBSYSTEM_PORT));
                Ok(Device::Remote(Remote { fabric: t.fabric(), addr, subnqn, hostnqn: self.hostnqn }))
            }
            (None, None) => bail!("no controller given: a PCI address (0000:00:04.0), or -t tcp -a ADDR --nqn NQN for a remote one"),
        }
    }
}

#[derive(Subcommand, Debug)]
#[command(rename_all = "kebab-case")]
enum Cmd {
    /// List NVMe controllers: those bound to vfio-pci are identified
    List,
    /// Read the discovery log of an NVMe-oF discovery controller
    Discover {
        /// Transport of the discovery controller
        #[arg(short = 't', long = "transport", value_enum, ignore_case = true)]
        transport: Transport,
        /// Address of the discovery controller
        #[arg(short = 'a', long = "traddr", value_name = "ADDR")]
        traddr: IpAddr,
        /// Port of the discovery controller
        #[arg(short = 's', long = "trsvcid", value_name = "PORT", default_value_t = fabrics::DISCOVERY_PORT)]
        trsvcid: u16,
        /// Host NQN to connect as [default: a random one]
        #[arg(short = 'q', long = "hostnqn")]
        hostnqn: Option<String>,
    },
    /// Identify Controller, or Identify Namespace with --ns
    Identify {
        #[command(flatten)]
        ctrl: ControllerArgs,
        /// Namespace id
        #[arg(short = 'n', long = "ns")]
        nsid: Option<u32>,
    },
    /// SMART / Health Information log
    SmartLog {
        #[command(flatten)]
        ctrl: ControllerArgs,
    },
    /// Error Information log
    ErrorLog {
        #[command(flatten)]
        ctrl: ControllerArgs,
        /// Entries to read (default: all the controller keeps, ELPE + 1)
        #[arg(short = 'e', long)]
        entries: Option<u32>,
    },
    /// Get Features (the port of a remote controller is --trsvcid: -s is --sel)
    #[command(mut_arg("trsvcid", |a| a.short(None)))]
    GetFeature {
        #[command(flatten)]
        ctrl: ControllerArgs,
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

/// Error log entries to read: `wanted`, or all the controller keeps
/// (ELPE + 1), at most 1024.
fn error_log_entries(elpe: u8, wanted: Option<u32>) -> usize {
    let max = u32::from(elpe) + 1;
    wanted.unwrap_or(max).clamp(1, max.min(1024)) as usize
}

/// An identified namespace that is all zeroes may just be inactive.
fn unallocated(ns: &IdentifyNamespace) -> bool {
    ns.nsze.get() == 0 && ns.ncap.get() == 0
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
        Cmd::Discover { transport, traddr, trsvcid, hostnqn } => {
            let log = fabrics::discover(transport.fabric(), SocketAddr::new(traddr, trsvcid), hostnqn)?;
            show::discovery_log(&log, json);
        }
        Cmd::Identify { ctrl, nsid: None } => match ctrl.resolve()? {
            Device::Pci(bdf) => show::id_ctrl(open(bdf)?.identify_data(), json),
            Device::Remote(r) => show::id_ctrl(&fabrics::open(&r)?.id, json),
        },
        Cmd::Identify { ctrl, nsid: Some(nsid) } => {
            let dev = ctrl.resolve()?;
            let what = || format!("identify namespace {nsid}");
            let (ns, active) = match &dev {
                Device::Pci(bdf) => {
                    let c = open(*bdf)?;
                    let ns = c.identify_namespace(nsid).with_context(what)?;
                    let active = !unallocated(&ns) || c.active_namespace_ids()?.contains(&nsid);
                    (ns, active)
                }
                Device::Remote(r) => {
                    let (c, a) = fabrics::admin(r, move |_| (admin::identify(cns::NAMESPACE, nsid), size_of::<IdentifyNamespace>()))
                        .with_context(what)?;
                    let ns =
                        IdentifyNamespace::read_from_bytes(&a.data).map_err(|_| anyhow!("{}: short Identify Namespace data", what()))?;
                    let active = !unallocated(&ns) || c.namespace(nsid).is_some();
                    (Box::new(ns), active)
                }
            };
            if !active {
                bail!("namespace {nsid} of {dev} is not active");
            }
            show::id_ns(nsid, &ns, json);
        }
        Cmd::SmartLog { ctrl } => {
            let dev = ctrl.resolve()?;
            let what = "get log page (SMART / Health)";
            let len = size_of::<SmartLog>();
            let raw = match &dev {
                Device::Pci(bdf) => open(*bdf)?.get_log_page(lid::SMART_HEALTH, u32::MAX, len).context(what)?,
                Device::Remote(r) => {
                    fabrics::admin(r, move |_| (admin::get_log_page(lid::SMART_HEALTH, u32::MAX, len), len)).context(what)?.1.data
                }
            };
            let log = SmartLog::read_from_bytes(&raw[..]).map_err(|_| anyhow!("short SMART log"))?;
            show::smart_log(&dev.to_string(), &log, json);
        }
        Cmd::ErrorLog { ctrl, entries } => {
            let dev = ctrl.resolve()?;
            let what = "get log page (error information)";
            let len = move |elpe| error_log_entries(elpe, entries) * size_of::<ErrorLogEntry>();
            let raw = match &dev {
                Device::Pci(bdf) => {
                    let c = open(*bdf)?;
                    c.get_log_page(lid::ERROR_INFORMATION, u32::MAX, len(c.identify_data().elpe)).context(what)?
                }
                Device::Remote(r) => {
                    let (_, a) = fabrics::admin(r, move |c| {
                        let len = len(c.id.elpe);
                        (admin::get_log_page(lid::ERROR_INFORMATION, u32::MAX, len), len)
                    })
                    .context(what)?;
                    a.data
                }
            };
            let list: Vec<ErrorLogEntry> =
                raw.chunks_exact(size_of::<ErrorLogEntry>()).filter_map(|c| ErrorLogEntry::read_from_bytes(c).ok()).collect();
            show::error_log(&dev.to_string(), &list, json);
        }
        Cmd::GetFeature { ctrl, fid, sel, nsid, cdw11 } => {
            if sel > 3 {
                bail!("--sel must be 0 (current), 1 (default), 2 (saved) or 3 (supported capabilities)");
            }
            let what = || format!("get feature {fid:#04x}");
            let v = match ctrl.resolve()? {
                Device::Pci(bdf) => open(bdf)?.get_features(fid, sel, nsid, cdw11).with_context(what)?,
                Device::Remote(r) => {
                    fabrics::admin(&r, move |_| (admin::get_features(fid, sel, nsid, cdw11), 0)).with_context(what)?.1.cqe.result.get()
                }
            };
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
