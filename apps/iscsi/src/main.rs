//! `pollux-iscsi`: discovery and a login test through Pollux's iSCSI
//! initiator, in the style of libiscsi's `iscsi-ls`.
//!
//! ```text
//! pollux-iscsi discover iscsi://[user[%password]@]host[:port]
//! pollux-iscsi ls [-s] iscsi://[user[%password]@]host[:port]
//! pollux-iscsi login iscsi://[user[%password]@]host[:port]/IQN/LUN
//! ```
//! `discover` lists the targets behind a portal and their addresses; `ls`
//! logs in to each target and lists its LUNs (with `-s`, their sizes);
//! `login` logs in to one LUN, prints what it is and logs out. Every
//! command takes `--initiator IQN`, `--timeout SECONDS` and `--json`.

#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use pollux_iscsi_host::bdev::LunInfo;
use pollux_iscsi_host::client::Initiator;
use pollux_iscsi_host::url::IscsiUrl;
use serde_json::{Value, json};

#[derive(Parser, Debug)]
#[command(name = "pollux-iscsi", version, about = "Discover iSCSI targets and look at their LUNs (iscsi-ls style)")]
struct Args {
    /// The initiator's name
    #[arg(long, global = true, default_value = "iqn.2016-06.io.pollux:initiator")]
    initiator: String,
    /// Seconds a login or a command may take
    #[arg(long, global = true, default_value_t = 10)]
    timeout: u64,
    /// Print JSON instead of text
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// List the targets behind a portal (SendTargets)
    Discover { portal: String },
    /// List the targets behind a portal and their LUNs
    Ls {
        /// Show each LUN's size
        #[arg(short = 's', long)]
        show_size: bool,
        portal: String,
    },
    /// Log in to a LUN, show what it is, log out
    Login { url: String },
}

fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["", "k", "M", "G", "T"];
    let mut v = bytes;
    let mut u = 0;
    while v >= 1024 && v % 1024 == 0 && u < UNITS.len() - 1 {
        v /= 1024;
        u += 1;
    }
    format!("{v}{}", UNITS[u])
}

fn lun_json(lun: u16, i: &LunInfo) -> Value {
    json!({"lun": lun, "vendor": i.vendor, "product": i.product, "revision": i.revision, "serial": i.serial,
        "block_size": i.block_size(), "num_blocks": i.num_blocks(), "size_bytes": u64::from(i.block_size()) * i.num_blocks(),
        "thin_provisioning": i.unmap(), "designators": i.designators})
}

fn run(a: Args) -> Result<()> {
    let mut init = Initiator::start(&a.initiator).context("starting the initiator")?;
    init.set_timeout(Duration::from_secs(a.timeout.max(1)));
    match a.cmd {
        Cmd::Discover { portal } => {
            let targets = init.discover(&portal).with_context(|| format!("discovery at {portal}"))?;
            if a.json {
                let v: Vec<Value> = targets.iter().map(|t| json!({"name": t.name, "addresses": t.addresses})).collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                for t in &targets {
                    println!("{} {}", t.name, t.addresses.join(" "));
                }
            }
        }
        Cmd::Ls { show_size, portal } => {
            let targets = init.discover(&portal).with_context(|| format!("discovery at {portal}"))?;
            let mut out = Vec::new();
            for t in &targets {
                let url = format!("{}/{}/0", portal.trim_end_matches('/'), t.name);
                let (luns, err) = match init.login(&url) {
                    Ok(l) => {
                        let ids = l.report_luns().unwrap_or_else(|_| vec![0]);
                        let luns: Vec<(u16, Option<LunInfo>)> = ids.iter().map(|&n| (n, l.probe_lun(n).ok())).collect();
                        let _ = l.close();
                        (luns, None)
                    }
                    Err(e) => (Vec::new(), Some(e.to_string())),
                };
                if a.json {
                    let l: Vec<Value> = luns.iter().map(|(n, i)| i.as_ref().map_or(json!({"lun": n}), |i| lun_json(*n, i))).collect();
                    out.push(json!({"name": t.name, "addresses": t.addresses, "luns": l, "error": err}));
                    continue;
                }
                println!("Target:{} Portal:{}", t.name, t.addresses.first().map_or("-", String::as_str));
                if let Some(e) = err {
                    println!("  login failed: {e}");
                }
                for (n, i) in &luns {
                    match i {
                        Some(i) if show_size => {
                            println!("Lun:{n:<4} Type:DIRECT_ACCESS (Size:{})", size(u64::from(i.block_size()) * i.num_blocks()))
                        }
                        Some(_) => println!("Lun:{n:<4} Type:DIRECT_ACCESS"),
                        None => println!("Lun:{n:<4} Type:unknown"),
                    }
                }
            }
            if a.json {
                println!("{}", serde_json::to_string_pretty(&out)?);
            }
        }
        Cmd::Login { url } => {
            let lun_no = IscsiUrl::parse(&url)?.lun.unwrap_or(0);
            let l = init.login(&url).with_context(|| format!("login to {}", pollux_iscsi_host::url::redact(&url)))?;
            let i = l.info().clone();
            l.close()?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&lun_json(lun_no, &i))?);
            } else {
                println!("{} {} {} serial {}", i.vendor, i.product, i.revision, i.serial.as_deref().unwrap_or("-"));
                println!(
                    "{} blocks of {} bytes ({}){}",
                    i.num_blocks(),
                    i.block_size(),
                    size(u64::from(i.block_size()) * i.num_blocks()),
                    if i.unmap() { ", thin provisioned" } else { "" }
                );
                for d in &i.designators {
                    println!("designator {d}");
                }
            }
        }
    }
    init.stop();
    Ok(())
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pollux-iscsi: {e:#}");
            ExitCode::FAILURE
        }
    }
}
