//! Output of pollux-nvme: nvme-cli's text layout, or JSON with nvme-cli's
//! field names.

use std::sync::Arc;

use pollux_nvme_driver::Controller;
use pollux_nvme_driver::pci::{PciAddress, PciFunction};
use pollux_nvme_spec::cmd::feature;
use pollux_nvme_spec::identify::{IdentifyController, IdentifyNamespace};
use pollux_nvme_spec::log::{ErrorLogEntry, SmartLog, counter128};
use pollux_nvmf_host::discovery::Log;
use serde_json::{Value, json};

pub struct ListRow {
    pub addr: PciAddress,
    pub function: PciFunction,
    pub ctrl: Option<Result<Arc<Controller>, String>>,
}

fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// "1.07 GB / 268.44 GB" as nvme-cli prints usage.
fn human(bytes: u128) -> String {
    const UNITS: [&str; 6] = ["B", "kB", "MB", "GB", "TB", "PB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    format!("{v:.2} {}", UNITS[u])
}

pub fn list(rows: &[ListRow], json: bool) {
    let mut devices = Vec::new();
    for r in rows {
        let mut entry = json!({
            "PciAddress": r.addr.to_string(),
            "Driver": r.function.driver.clone().unwrap_or_default(),
            "VendorId": format!("{:#06x}", r.function.vendor_id),
            "DeviceId": format!("{:#06x}", r.function.device_id),
        });
        match &r.ctrl {
            Some(Ok(c)) => {
                let id = c.identify_data();
                entry["SerialNumber"] = id.serial().into();
                entry["ModelNumber"] = id.model().into();
                entry["Firmware"] = id.firmware().into();
                entry["Namespaces"] = c
                    .namespaces()
                    .iter()
                    .map(|n| {
                        json!({
                            "NameSpace": n.nsid,
                            "UsedBytes": n.data.nuse.get() * u64::from(n.block_size),
                            "PhysicalSize": n.num_blocks * u64::from(n.block_size),
                            "SectorSize": n.block_size,
                        })
                    })
                    .collect::<Vec<_>>()
                    .into();
            }
            Some(Err(e)) => entry["Error"] = e.clone().into(),
            None => {}
        }
        devices.push(entry);
    }
    if json {
        return print_json(&json!({ "Devices": devices }));
    }
    println!(
        "{:<13} {:<9} {:<20} {:<40} {:<9} {:<26} {:<16} {:<8}",
        "PCI Address", "Driver", "SN", "Model", "Namespace", "Usage", "Format", "FW Rev"
    );
    println!("{:-<13} {:-<9} {:-<20} {:-<40} {:-<9} {:-<26} {:-<16} {:-<8}", "", "", "", "", "", "", "", "");
    for r in rows {
        let driver = r.function.driver.as_deref().unwrap_or("-");
        match &r.ctrl {
            Some(Ok(c)) => {
                let id = c.identify_data();
                let nss = c.namespaces();
                if nss.is_empty() {
                    println!(
                        "{:<13} {:<9} {:<20} {:<40} {:<9} {:<26} {:<16} {:<8}",
                        r.addr,
                        driver,
                        id.serial(),
                        id.model(),
                        "-",
                        "-",
                        "-",
                        id.firmware()
                    );
                }
                for n in nss {
                    let bs = u128::from(n.block_size);
                    let usage = format!("{} / {}", human(u128::from(n.data.nuse.get()) * bs), human(u128::from(n.num_blocks) * bs));
                    let format = format!("{:<3} B + {} B", n.block_size, n.metadata_size);
                    println!(
                        "{:<13} {:<9} {:<20} {:<40} {:<9} {:<26} {:<16} {:<8}",
                        r.addr,
                        driver,
                        id.serial(),
                        id.model(),
                        n.nsid,
                        usage,
                        format,
                        id.firmware()
                    );
                }
            }
            Some(Err(e)) => println!("{:<13} {:<9} ({e})", r.addr, driver),
            None => println!("{:<13} {:<9} (not bound to vfio-pci: use the kernel's nvme-cli)", r.addr, driver),
        }
    }
}

pub fn id_ctrl(id: &IdentifyController, json: bool) {
    let v = json!({
        "vid": id.vid.get(),
        "ssvid": id.ssvid.get(),
        "sn": id.serial(),
        "mn": id.model(),
        "fr": id.firmware(),
        "rab": id.rab,
        "ieee": u32::from_le_bytes([id.ieee[0], id.ieee[1], id.ieee[2], 0]),
        "cmic": id.cmic,
        "mdts": id.mdts,
        "cntlid": id.cntlid.get(),
        "ver": id.ver.get(),
        "oaes": id.oaes.get(),
        "ctratt": id.ctratt.get(),
        "cntrltype": id.cntrltype,
        "oacs": id.oacs.get(),
        "acl": id.acl,
        "aerl": id.aerl,
        "frmw": id.frmw,
        "lpa": id.lpa,
        "elpe": id.elpe,
        "npss": id.npss,
        "wctemp": id.wctemp.get(),
        "cctemp": id.cctemp.get(),
        "tnvmcap": id.total_capacity().to_string(),
        "kas": id.kas.get(),
        "sqes": id.sqes,
        "cqes": id.cqes,
        "maxcmd": id.maxcmd.get(),
        "nn": id.nn.get(),
        "oncs": id.oncs.get(),
        "fuses": id.fuses.get(),
        "fna": id.fna,
        "vwc": id.vwc,
        "awun": id.awun.get(),
        "awupf": id.awupf.get(),
        "sgls": id.sgls.get(),
        "subnqn": id.subsystem_nqn(),
    });
    if json {
        return print_json(&v);
    }
    println!("NVME Identify Controller:");
    for (k, val) in v.as_object().expect("object") {
        match val {
            Value::String(s) => println!("{k:<10}: {s}"),
            Value::Number(n)
                if matches!(
                    k.as_str(),
                    "vid" | "ssvid" | "ver" | "oacs" | "oncs" | "sgls" | "ctratt" | "oaes" | "cmic" | "sqes" | "cqes" | "ieee"
                ) =>
            {
                println!("{k:<10}: {:#x}", n.as_u64().unwrap_or(0))
            }
            other => println!("{k:<10}: {other}"),
        }
    }
}

pub fn id_ns(nsid: u32, ns: &IdentifyNamespace, json: bool) {
    let in_use = ns.format_index();
    let lbafs: Vec<Value> =
        ns.lbaf[..=usize::from(ns.nlbaf).min(63)].iter().map(|f| json!({"ms": f.ms.get(), "ds": f.lbads, "rp": f.rp})).collect();
    let v = json!({
        "nsid": nsid,
        "nsze": ns.nsze.get(),
        "ncap": ns.ncap.get(),
        "nuse": ns.nuse.get(),
        "nsfeat": ns.nsfeat,
        "nlbaf": ns.nlbaf,
        "flbas": ns.flbas,
        "mc": ns.mc,
        "dpc": ns.dpc,
        "dps": ns.dps,
        "nmic": ns.nmic,
        "dlfeat": ns.dlfeat,
        "noiob": ns.noiob.get(),
        "nguid": ns.nguid.iter().map(|b| format!("{b:02x}")).collect::<String>(),
        "eui64": ns.eui64.iter().map(|b| format!("{b:02x}")).collect::<String>(),
        "lbafs": lbafs,
    });
    if json {
        return print_json(&v);
    }
    println!("NVME Identify Namespace {nsid}:");
    for k in ["nsze", "ncap", "nuse"] {
        println!("{k:<8}: {:#x}", v[k].as_u64().unwrap_or(0));
    }
    for k in ["nsfeat", "nlbaf", "flbas", "mc", "dpc", "dps", "nmic", "dlfeat", "noiob"] {
        println!("{k:<8}: {}", v[k]);
    }
    println!("{:<8}: {}", "nguid", v["nguid"].as_str().unwrap_or(""));
    println!("{:<8}: {}", "eui64", v["eui64"].as_str().unwrap_or(""));
    for (i, f) in ns.lbaf[..=usize::from(ns.nlbaf).min(63)].iter().enumerate() {
        let mark = if i == in_use { " (in use)" } else { "" };
        println!("lbaf {i:>2} : ms:{:<3} lbads:{:<2} rp:{:#x}{mark}", f.ms.get(), f.lbads, f.rp);
    }
}

/// `device`: the PCI address, or the remote subsystem and its address.
pub fn smart_log(device: &str, s: &SmartLog, json: bool) {
    let kelvin = s.temperature.get();
    let v = json!({
        "critical_warning": s.critical_warning,
        "temperature": kelvin,
        "avail_spare": s.avail_spare,
        "spare_thresh": s.spare_thresh,
        "percent_used": s.percent_used,
        "endurance_grp_critical_warning_summary": s.endurance_group_critical_warning,
        "data_units_read": counter128(&s.data_units_read).to_string(),
        "data_units_written": counter128(&s.data_units_written).to_string(),
        "host_read_commands": counter128(&s.host_read_commands).to_string(),
        "host_write_commands": counter128(&s.host_write_commands).to_string(),
        "controller_busy_time": counter128(&s.controller_busy_time).to_string(),
        "power_cycles": counter128(&s.power_cycles).to_string(),
        "power_on_hours": counter128(&s.power_on_hours).to_string(),
        "unsafe_shutdowns": counter128(&s.unsafe_shutdowns).to_string(),
        "media_errors": counter128(&s.media_errors).to_string(),
        "num_err_log_entries": counter128(&s.num_err_log_entries).to_string(),
        "warning_temp_time": s.warning_temp_time.get(),
        "critical_comp_time": s.critical_comp_time.get(),
    });
    if json {
        return print_json(&v);
    }
    println!("Smart Log for NVME device:{device} namespace-id:ffffffff");
    for (k, val) in v.as_object().expect("object") {
        let shown = match (k.as_str(), val) {
            ("temperature", _) => format!("{} C ({kelvin} Kelvin)", i32::from(kelvin) - 273),
            ("avail_spare" | "spare_thresh" | "percent_used", Value::Number(n)) => format!("{n}%"),
            ("critical_warning", Value::Number(n)) => format!("{:#x}", n.as_u64().unwrap_or(0)),
            (_, Value::String(s)) => s.clone(),
            (_, other) => other.to_string(),
        };
        println!("{k:<40}: {shown}");
    }
}

/// `device`: the PCI address, or the remote subsystem and its address.
pub fn error_log(device: &str, entries: &[ErrorLogEntry], json: bool) {
    let list: Vec<Value> = entries
        .iter()
        .map(|e| {
            json!({
                "error_count": e.error_count.get(),
                "sqid": e.sqid.get(),
                "cmdid": e.cid.get(),
                "status_field": e.status_field.get() >> 1,
                "status": e.status().to_string(),
                "parm_error_location": e.parm_error_location.get(),
                "lba": e.lba.get(),
                "nsid": e.nsid.get(),
                "vs": e.vs,
                "trtype": e.trtype,
                "cs": e.cs.get(),
                "trtype_spec_info": e.trtype_spec_info.get(),
            })
        })
        .collect();
    if json {
        return print_json(&json!({ "errors": list }));
    }
    println!("Error Log Entries for device:{device} entries:{}", entries.len());
    println!(".................");
    for (i, e) in list.iter().enumerate() {
        println!(" Entry[{i:>2}]");
        println!(".................");
        for (k, val) in e.as_object().expect("object") {
            match val {
                Value::String(s) => println!("{k:<20}: {s}"),
                other => println!("{k:<20}: {other}"),
            }
        }
        println!(".................");
    }
}

/// The entries of a discovery log, as nvme-cli's `nvme discover` prints them.
pub fn discovery_log(log: &Log, json: bool) {
    let records: Vec<Value> = log.entries.iter().map(|e| e.to_json()).collect();
    if json {
        return print_json(&json!({"genctr": log.genctr, "records": records}));
    }
    println!("Discovery Log Number of Records {}, Generation counter {}", records.len(), log.genctr);
    for (i, r) in records.iter().enumerate() {
        println!("=====Discovery Log Entry {i}======");
        for k in ["trtype", "adrfam", "subtype", "treq", "portid", "trsvcid", "subnqn", "traddr"] {
            let label = format!("{k}:");
            match &r[k] {
                Value::String(s) => println!("{label:<8} {s}"),
                other => println!("{label:<8} {other}"),
            }
        }
    }
}

pub fn feature(fid: u8, sel: u32, value: u32, json: bool) {
    if json {
        return print_json(&json!({"feature_id": fid, "name": feature::name(fid), "sel": sel, "value": value}));
    }
    let which = ["Current", "Default", "Saved", "Supported capabilities"][sel as usize & 3];
    println!("get-feature:{fid:#04x} ({}), {which} value:{value:#010x}", feature::name(fid));
}

pub fn feature_set(fid: u8, value: u32, result: u32, json: bool) {
    if json {
        return print_json(&json!({"feature_id": fid, "name": feature::name(fid), "value": value, "result": result}));
    }
    println!("set-feature:{fid:#04x} ({}), value:{value:#010x}, cdw0:{result:#010x}", feature::name(fid));
}

pub fn formatted(nsid: u32, json: bool) {
    if json {
        return print_json(&json!({"nsid": nsid, "result": "success"}));
    }
    println!("Success formatting namespace:{nsid:x}");
}
