//! The `nvmf` subsystem and its RPC methods, with SPDK's names and
//! parameters: transports, subsystems, listeners, hosts, namespaces,
//! discovery referrals and statistics; and `save_config` output that
//! rebuilds all of it.

mod params;
mod subsystem;

use std::rc::Rc;

use pollux_core::app::{App, ConfigWriter, Subsystem as AppSubsystem};
use pollux_core::clock;
use pollux_core::rpc::{Responder, States};
use serde_json::{Value, json};

use crate::NvmfError;
use crate::target::{Referral, check_target_name, target};
use crate::transport::rdma::RdmaTransport;
use crate::transport::tcp::{self, TcpTransport};
use crate::transport::{Endpoint, Transport, TransportKind};

use params::*;

/// Add the `nvmf` subsystem and its methods.
pub fn register(app: &mut App) {
    app.add_subsystem(Rc::new(NvmfSubsystem));
    let m = app.methods();
    m.register("nvmf_create_transport", States::RUNTIME, |p: CreateTransport, r: Responder| r.result(create_transport(p)));
    m.register("nvmf_get_transports", States::RUNTIME, |p: GetTransports, r: Responder| r.result(get_transports(p)));
    m.register("nvmf_get_stats", States::RUNTIME, get_stats);
    m.register("nvmf_get_listener_stats", States::RUNTIME, get_listener_stats);
    m.register("nvmf_set_max_subsystems", States::STARTUP, |p: SetMaxSubsystems, r: Responder| {
        r.result(target().map(|t| {
            t.max_subsystems.set(p.max_subsystems);
            true
        }))
    });
    m.register("nvmf_set_config", States::STARTUP, |p: SetConfig, r: Responder| r.result(set_config(p)));
    m.register("nvmf_set_crdt", States::STARTUP, |p: SetCrdt, r: Responder| {
        crate::target::set_crdt([p.crdt1, p.crdt2, p.crdt3]);
        r.ok(true)
    });
    m.register("nvmf_discovery_add_referral", States::RUNTIME, |p: ReferralParams, r: Responder| r.result(add_referral(p)));
    m.register("nvmf_discovery_remove_referral", States::RUNTIME, |p: RemoveReferral, r: Responder| r.result(remove_referral(p)));
    m.register("nvmf_discovery_get_referrals", States::RUNTIME, |p: TgtOnly, r: Responder| r.result(get_referrals(p)));
    subsystem::register(m);
}

fn set_config(p: SetConfig) -> Result<bool, NvmfError> {
    let t = target()?;
    if let Some((cmd, _)) = p.admin_cmd_passthru.iter().flatten().find(|(_, on)| on.as_bool() != Some(false)) {
        return Err(NvmfError::Unsupported(format!(
            "admin_cmd_passthru.{cmd}: Pollux's namespaces are bdevs and answer admin commands themselves"
        )));
    }
    if p.poll_groups_mask.is_some() {
        return Err(NvmfError::Unsupported("poll_groups_mask: queue pairs are spread over every reactor".into()));
    }
    if p.dup_host_policy.as_deref().is_some_and(|d| d != "allow") {
        return Err(NvmfError::Unsupported(format!("dup_host_policy {}: only allow", p.dup_host_policy.unwrap_or_default())));
    }
    let names: Vec<String> = match (p.discovery_filter, p.discovery_filters) {
        (Some(_), Some(_)) => return Err(NvmfError::InvalidParam("discovery_filter and discovery_filters are exclusive".into())),
        (Some(f), None) => f.split(',').map(|s| s.trim().to_string()).collect(),
        (None, Some(list)) => list,
        (None, None) => Vec::new(),
    };
    let mut c = t.config.borrow().clone();
    if !names.is_empty() {
        c.filter_transport = false;
        c.filter_address = false;
        c.filter_svcid = false;
    }
    for n in names {
        match n.as_str() {
            "match_any" => {}
            "transport" => c.filter_transport = true,
            "address" => c.filter_address = true,
            "svcid" => c.filter_svcid = true,
            other => {
                return Err(NvmfError::InvalidParam(format!("discovery filter {other}: use match_any or transport, address, svcid")));
            }
        }
    }
    if let Some(d) = p.dhchap_digests {
        c.dhchap_digests = Some(d);
    }
    if let Some(g) = p.dhchap_dhgroups {
        c.dhchap_dhgroups = Some(g);
    }
    *t.config.borrow_mut() = c;
    Ok(true)
}

fn create_transport(p: CreateTransport) -> Result<bool, NvmfError> {
    check_target_name(p.tgt_name.as_deref())?;
    let kind = TransportKind::parse(&p.trtype)?;
    let t = target()?;
    if t.transport(kind).is_ok() {
        return Err(NvmfError::Exists(format!("transport {}", kind.name())));
    }
    let opts = p.into_opts()?;
    opts.validate()?;
    let tr: Rc<dyn Transport> = match kind {
        TransportKind::Tcp => Rc::new(TcpTransport::new(opts)),
        TransportKind::Rdma => Rc::new(RdmaTransport::new(opts)?),
    };
    t.transports.borrow_mut().push(tr);
    tracing::info!("nvmf: {} transport created", kind.name());
    Ok(true)
}

fn get_transports(p: GetTransports) -> Result<Value, NvmfError> {
    check_target_name(p.tgt_name.as_deref())?;
    let t = target()?;
    if let Some(kind) = p.trtype {
        let k = TransportKind::parse(&kind)?;
        return Ok(Value::Array(vec![t.transport(k)?.describe()]));
    }
    Ok(Value::Array(t.transports.borrow().iter().map(|tr| tr.describe()).collect()))
}

fn get_stats(p: TgtOnly, r: Responder) {
    if let Err(e) = check_target_name(p.tgt_name.as_deref()) {
        return r.err(e.into());
    }
    tcp::group_stats(move |all| {
        crate::transport::rdma::group_stats(move |rdma| {
            let groups: Vec<Value> = all
                .into_iter()
                .enumerate()
                .map(|(i, s)| {
                    let mut g = json!({
                        "name": format!("nvmf_tgt_poll_group_{i:03}"),
                        "admin_qpairs": s.admin_qpairs,
                        "io_qpairs": s.io_qpairs,
                        "current_admin_qpairs": s.current_admin_qpairs,
                        "current_io_qpairs": s.current_io_qpairs,
                        "pending_bdev_io": s.pending_bdev_io,
                        "completed_nvme_io": s.completed_nvme_io,
                        "transports": [{"trtype": "TCP"}],
                    });
                    if let Some(r) = rdma.get(i).and_then(Option::as_ref) {
                        {
                            // RDMA queue pairs of this reactor, beside its TCP ones.
                            for (k, v) in [
                                ("admin_qpairs", r.admin_qpairs),
                                ("io_qpairs", r.io_qpairs),
                                ("current_admin_qpairs", r.current_admin_qpairs),
                                ("current_io_qpairs", r.current_io_qpairs),
                                ("pending_bdev_io", r.pending_bdev_io),
                                ("completed_nvme_io", r.completed_nvme_io),
                            ] {
                                g[k] = json!(g[k].as_u64().unwrap_or(0) + v);
                            }
                        }
                        let devices: Vec<Value> = r
                            .devices
                            .iter()
                            .map(|d| {
                                json!({
                                    "name": d.name,
                                    "polls": d.polls,
                                    "idle_polls": d.idle_polls,
                                    "completions": d.completions,
                                    "requests": d.requests,
                                    "request_latency": 0,
                                    "pending_free_request": 0,
                                    "pending_rdma_read": d.pending_rdma_read,
                                    "pending_rdma_write": 0,
                                    "pending_rdma_send": 0,
                                    "total_send_wrs": d.total_send_wrs,
                                    "send_doorbell_updates": d.send_doorbells,
                                    "total_recv_wrs": d.total_recv_wrs,
                                    "recv_doorbell_updates": d.recv_doorbells,
                                })
                            })
                            .collect();
                        g["transports"]
                            .as_array_mut()
                            .expect("array")
                            .push(json!({"trtype": "RDMA", "pending_data_buffer": 0, "devices": devices}));
                    }
                    g
                })
                .collect();
            r.ok(json!({ "tick_rate": clock::tick_rate(), "poll_groups": groups }))
        })
    });
}

/// Pollux's own: commands, errors and queue pairs per subsystem and
/// listener, summed over the reactors (`crate::counters`). Rows of a
/// deleted subsystem are left out.
fn get_listener_stats(p: TgtOnly, r: Responder) {
    if let Err(e) = check_target_name(p.tgt_name.as_deref()) {
        return r.err(e.into());
    }
    pollux_core::reactor::task::spawn_local(async move {
        let all = crate::counters::sum(pollux_core::reactor::task::each_reactor(crate::counters::snapshot).await);
        let t = match target() {
            Ok(t) => t,
            Err(e) => return r.err(e.into()),
        };
        let mut rows: Vec<(String, Endpoint, crate::counters::Counts)> = t
            .subsystems
            .borrow()
            .iter()
            .flat_map(|s| all.iter().filter(|((id, _), _)| *id == s.id).map(|((_, ep), c)| (s.config.nqn.clone(), *ep, *c)))
            .collect();
        rows.sort_by(|a, b| (&a.0, a.1.to_string()).cmp(&(&b.0, b.1.to_string())));
        let out: Vec<Value> = rows
            .into_iter()
            .map(|(nqn, ep, c)| {
                json!({
                    "nqn": nqn,
                    "address": ep.to_listen_address(),
                    "current_qpairs": c.qpairs,
                    "completed_commands": c.commands,
                    "failed_commands": c.errors,
                    "bytes_read": c.read_bytes,
                    "bytes_written": c.written_bytes,
                })
            })
            .collect();
        r.ok(Value::Array(out))
    });
}

fn add_referral(p: ReferralParams) -> Result<bool, NvmfError> {
    check_target_name(p.tgt_name.as_deref())?;
    if p.secure_channel {
        return Err(NvmfError::Unsupported("secure channels (TLS) are not supported".into()));
    }
    let ep = Endpoint::parse(&p.address)?;
    if let Some(n) = &p.subnqn {
        crate::subsystem::validate_nqn(n)?;
    }
    let t = target()?;
    let r = Referral { ep, subnqn: p.subnqn };
    if !t.referrals.borrow().contains(&r) {
        t.referrals.borrow_mut().push(r);
        t.discovery_changed();
    }
    Ok(true)
}

fn remove_referral(p: RemoveReferral) -> Result<bool, NvmfError> {
    check_target_name(p.tgt_name.as_deref())?;
    let ep = Endpoint::parse(&p.address)?;
    let t = target()?;
    let r = Referral { ep, subnqn: p.subnqn };
    let before = t.referrals.borrow().len();
    t.referrals.borrow_mut().retain(|x| *x != r);
    if t.referrals.borrow().len() == before {
        return Err(NvmfError::NotFound(format!("referral to {ep}")));
    }
    t.discovery_changed();
    Ok(true)
}

fn get_referrals(p: TgtOnly) -> Result<Value, NvmfError> {
    check_target_name(p.tgt_name.as_deref())?;
    let t = target()?;
    Ok(t.referrals.borrow().iter().map(referral_json).collect())
}

fn referral_json(r: &Referral) -> Value {
    let mut v = json!({ "address": r.ep.to_listen_address(), "secure_channel": false });
    if let Some(n) = &r.subnqn {
        v["subnqn"] = n.clone().into();
    }
    v
}

/// The `nvmf` subsystem of the application.
struct NvmfSubsystem;

impl AppSubsystem for NvmfSubsystem {
    fn name(&self) -> &'static str {
        "nvmf"
    }

    fn depends_on(&self) -> &'static [&'static str] {
        &["bdev"]
    }

    fn fini(&self, done: Box<dyn FnOnce() + Send>) {
        // Close every queue pair, then drop subsystems (closing their bdevs)
        // and listeners, so the bdev layer can delete its devices.
        tcp::close_all(move || {
            crate::transport::rdma::close_all(move || {
                if let Ok(t) = target() {
                    let subs: Vec<_> = t.subsystems.borrow().iter().filter(|s| !s.is_discovery()).cloned().collect();
                    for s in subs {
                        subsystem::teardown(&t, &s);
                    }
                    t.referrals.borrow_mut().clear();
                    t.transports.borrow_mut().clear();
                }
                // Views on other reactors hold descriptors too: drop them all.
                pollux_core::reactor::for_each_reactor(crate::group::clear, done);
            })
        });
    }

    fn write_config(&self, out: &mut ConfigWriter) {
        let Ok(t) = target() else { return };
        let c = t.config.borrow().clone();
        let mut set = json!({"discovery_filter": c.filter_name(), "admin_cmd_passthru": {"identify_ctrlr": false}});
        if let Some(d) = c.dhchap_digests {
            set["dhchap_digests"] = d.into();
        }
        if let Some(g) = c.dhchap_dhgroups {
            set["dhchap_dhgroups"] = g.into();
        }
        out.call("nvmf_set_config", set);
        out.call("nvmf_set_max_subsystems", json!({"max_subsystems": t.max_subsystems.get()}));
        let [crdt1, crdt2, crdt3] = crate::target::crdt();
        out.call("nvmf_set_crdt", json!({"crdt1": crdt1, "crdt2": crdt2, "crdt3": crdt3}));
        for tr in t.transports.borrow().iter() {
            let o = tr.opts();
            let mut params = json!({
                    "trtype": tr.kind().name(),
                    "max_queue_depth": o.max_queue_depth,
                    "max_io_qpairs_per_ctrlr": o.max_io_qpairs_per_ctrlr,
                    "in_capsule_data_size": o.in_capsule_data_size,
                    "max_io_size": o.max_io_size,
                    "io_unit_size": o.io_unit_size,
                    "max_aq_depth": o.max_aq_depth,
                    "c2h_success": o.c2h_success,
                    "sock_priority": o.sock_priority,
                    "abort_timeout_sec": o.abort_timeout_sec,
                    "acceptor_poll_rate": o.acceptor_poll_rate,
                    "kas": o.kas,
                    "min_kato": o.min_kato,
                    "connect_timeout_sec": o.connect_timeout_sec,
                    "max_connections_per_listener": o.max_connections_per_listener,
            });
            if o.masked_oncs != 0 {
                params["masked_oncs"] = o.masked_oncs.into();
            }
            if tr.kind() == TransportKind::Rdma {
                params["max_srq_depth"] = o.max_srq_depth.into();
                params["no_srq"] = o.no_srq.into();
                params["acceptor_backlog"] = o.acceptor_backlog.into();
            }
            let d = serde_json::to_value(crate::transport::TransportOpts::default()).expect("options serialise");
            pollux_core::app::omit_own_defaults(&mut params, &d, &["connect_timeout_sec", "max_connections_per_listener"]);
            out.call("nvmf_create_transport", params);
        }
        for s in t.subsystems.borrow().iter() {
            subsystem::write_config(s, out);
        }
        for r in t.referrals.borrow().iter() {
            out.call("nvmf_discovery_add_referral", referral_json(r));
        }
    }
}
