//! The nvme bdev module's global options: SPDK's `bdev_nvme_set_options`
//! and `bdev_nvme_set_hotplug`, kept on the main reactor's side of the
//! module and written into save_config before any controller is attached.
//!
//! Every parameter of SPDK's schema is accepted by name, so a config saved
//! by SPDK (which always writes both calls) loads. What a PCIe controller
//! uses is applied to controllers attached afterwards (timeouts and the
//! action taken, the I/O queue poll period, the health poll period,
//! generated UUIDs); what only NVMe-oF paths, multipath or the initiator's
//! retry policy use is kept and reported back, as SPDK does for a PCIe-only
//! set-up (`enable_flush` and `delay_cmd_submit` included: Pollux always
//! sends Flush to the controller and always rings one doorbell per batch).
//! Features Pollux lacks are refused when turned on.

use std::sync::Mutex;
use std::time::Duration;

use pollux_core::app::ConfigWriter;
use pollux_core::rpc::RpcError;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::controller::{ControllerOptions, TimeoutAction};

/// `bdev_nvme_set_options`, with Pollux's defaults (SPDK's where Pollux
/// behaves the same; Pollux times I/O out after 30 s and aborts by default,
/// SPDK does not time out unless asked).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NvmeOptions {
    pub action_on_timeout: String,
    pub timeout_us: u64,
    pub timeout_admin_us: u64,
    pub keep_alive_timeout_ms: u32,
    pub arbitration_burst: u32,
    pub low_priority_weight: u32,
    pub medium_priority_weight: u32,
    pub high_priority_weight: u32,
    pub nvme_adminq_poll_period_us: u64,
    pub nvme_ioq_poll_period_us: u64,
    pub io_queue_requests: u32,
    pub delay_cmd_submit: bool,
    pub transport_retry_count: u32,
    pub bdev_retry_count: i32,
    pub transport_ack_timeout: u8,
    pub ctrlr_loss_timeout_sec: i32,
    pub reconnect_delay_sec: u32,
    pub fast_io_fail_timeout_sec: u32,
    pub disable_auto_failback: bool,
    pub generate_uuids: bool,
    pub transport_tos: u8,
    pub nvme_error_stat: bool,
    pub rdma_srq_size: u32,
    pub io_path_stat: bool,
    pub allow_accel_sequence: bool,
    pub rdma_max_cq_size: u32,
    pub rdma_cm_event_timeout_ms: u16,
    pub dhchap_digests: Vec<String>,
    pub dhchap_dhgroups: Vec<String>,
    pub rdma_umr_per_io: bool,
    pub tcp_connect_timeout_ms: u32,
    pub enable_flush: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub multipath_opts: Option<Value>,
}

impl Default for NvmeOptions {
    fn default() -> Self {
        let c = ControllerOptions::default();
        NvmeOptions {
            action_on_timeout: action_name(c.timeout_action).into(),
            timeout_us: c.io_timeout.map_or(0, |d| d.as_micros() as u64),
            timeout_admin_us: c.admin_timeout.as_micros() as u64,
            keep_alive_timeout_ms: 10_000,
            arbitration_burst: 0,
            low_priority_weight: 0,
            medium_priority_weight: 0,
            high_priority_weight: 0,
            nvme_adminq_poll_period_us: DEFAULT_HEALTH_PERIOD.as_micros() as u64,
            nvme_ioq_poll_period_us: 0,
            io_queue_requests: 0,
            delay_cmd_submit: true,
            transport_retry_count: 4,
            bdev_retry_count: 3,
            transport_ack_timeout: 0,
            ctrlr_loss_timeout_sec: 0,
            reconnect_delay_sec: 0,
            fast_io_fail_timeout_sec: 0,
            disable_auto_failback: false,
            generate_uuids: false,
            transport_tos: 0,
            nvme_error_stat: false,
            rdma_srq_size: 0,
            io_path_stat: false,
            allow_accel_sequence: false,
            rdma_max_cq_size: 0,
            rdma_cm_event_timeout_ms: 0,
            dhchap_digests: ["sha256", "sha384", "sha512"].map(String::from).to_vec(),
            dhchap_dhgroups: ["null", "ffdhe2048", "ffdhe3072", "ffdhe4096", "ffdhe6144", "ffdhe8192"].map(String::from).to_vec(),
            rdma_umr_per_io: false,
            tcp_connect_timeout_ms: 0,
            enable_flush: false,
            multipath_opts: None,
        }
    }
}

/// How often a controller's health (release request, CSTS) is checked by
/// default: SPDK's `nvme_adminq_poll_period_us` stands for it.
pub const DEFAULT_HEALTH_PERIOD: Duration = Duration::from_millis(100);

fn action_name(a: TimeoutAction) -> &'static str {
    match a {
        TimeoutAction::None => "none",
        TimeoutAction::Abort => "abort",
        TimeoutAction::Reset => "reset",
    }
}

fn unsupported(name: &str, why: &str) -> RpcError {
    RpcError::errno(libc::EOPNOTSUPP, format!("parameter '{name}' is not supported by Pollux's NVMe driver ({why})"))
}

impl NvmeOptions {
    /// Refuse values Pollux cannot honour.
    pub fn check(&self) -> Result<(), RpcError> {
        if !matches!(self.action_on_timeout.as_str(), "none" | "abort" | "reset") {
            return Err(RpcError::invalid_params(format!(
                "action_on_timeout must be none, abort or reset, not {}",
                self.action_on_timeout
            )));
        }
        let arbitration = [self.arbitration_burst, self.low_priority_weight, self.medium_priority_weight, self.high_priority_weight];
        if arbitration.iter().any(|&v| v != 0) {
            return Err(unsupported("arbitration_burst", "weighted round robin arbitration is not used"));
        }
        let off: [(&str, bool, &str); 3] = [
            ("nvme_error_stat", self.nvme_error_stat, "no NVMe error statistics"),
            ("io_path_stat", self.io_path_stat, "no multipath I/O path statistics"),
            ("allow_accel_sequence", self.allow_accel_sequence, "no accel framework"),
        ];
        if let Some((name, _, why)) = off.iter().find(|(_, on, _)| *on) {
            return Err(unsupported(name, why));
        }
        if self.nvme_adminq_poll_period_us == 0 {
            return Err(RpcError::invalid_params("nvme_adminq_poll_period_us must be above 0"));
        }
        if self.bdev_retry_count < -1 {
            return Err(RpcError::invalid_params("bdev_retry_count must be -1 (retry forever) or more"));
        }
        Ok(())
    }

    /// The options of a controller attached now.
    pub fn controller_options(&self) -> ControllerOptions {
        let d = ControllerOptions::default();
        let io_timeout = (self.timeout_us != 0).then(|| Duration::from_micros(self.timeout_us));
        // Admin commands run to completion on the thread that sends them,
        // so their wait stays bounded even when SPDK's values would
        // disable it.
        let admin_us = if self.timeout_admin_us != 0 { self.timeout_admin_us } else { self.timeout_us };
        let admin_timeout = if admin_us != 0 { Duration::from_micros(admin_us) } else { d.admin_timeout };
        let timeout_action = match self.action_on_timeout.as_str() {
            "none" => TimeoutAction::None,
            "reset" => TimeoutAction::Reset,
            _ => TimeoutAction::Abort,
        };
        let io_poll_period = (self.nvme_ioq_poll_period_us != 0).then(|| Duration::from_micros(self.nvme_ioq_poll_period_us));
        ControllerOptions { io_timeout, admin_timeout, timeout_action, io_poll_period, ..d }
    }

    pub fn health_period(&self) -> Duration {
        Duration::from_micros(self.nvme_adminq_poll_period_us)
    }
}

/// `bdev_nvme_set_hotplug`.
#[derive(Clone, Copy, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Hotplug {
    pub enable: bool,
    #[serde(default = "default_hotplug_period")]
    pub period_us: u64,
}

/// SPDK's default hot insertion period, 100 ms.
const DEFAULT_HOTPLUG_PERIOD_US: u64 = 100_000;

fn default_hotplug_period() -> u64 {
    DEFAULT_HOTPLUG_PERIOD_US
}

static OPTIONS: Mutex<Option<NvmeOptions>> = Mutex::new(None);
static HOTPLUG: Mutex<Hotplug> = Mutex::new(Hotplug { enable: false, period_us: DEFAULT_HOTPLUG_PERIOD_US });

/// The options for a controller attached now on this reactor.
pub fn attach_options() -> ControllerOptions {
    ControllerOptions {
        interrupts: pollux_core::reactor::interrupt_mode(),
        reactors: pollux_core::reactor::count(),
        ..options().controller_options()
    }
}

/// The options in force.
pub fn options() -> NvmeOptions {
    OPTIONS.lock().unwrap_or_else(|e| e.into_inner()).clone().unwrap_or_default()
}

pub fn set_options(o: NvmeOptions) {
    *OPTIONS.lock().unwrap_or_else(|e| e.into_inner()) = Some(o);
}

pub fn hotplug() -> Hotplug {
    *HOTPLUG.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn set_hotplug(h: Hotplug) {
    *HOTPLUG.lock().unwrap_or_else(|e| e.into_inner()) = h;
}

/// save_config: the module's two calls, as SPDK writes them.
pub fn write_config(out: &mut ConfigWriter) {
    out.call("bdev_nvme_set_options", options());
    // As SPDK: the fabrics controllers between the options and hotplug.
    pollux_nvmf_host::bdev::write_config(out);
    out.call("bdev_nvme_set_hotplug", hotplug());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_driver_and_map_back() {
        let o = NvmeOptions::default();
        o.check().unwrap();
        let c = o.controller_options();
        let d = ControllerOptions::default();
        assert_eq!(c.io_timeout, d.io_timeout);
        assert_eq!(c.admin_timeout, d.admin_timeout);
        assert_eq!(c.timeout_action, d.timeout_action);
        assert_eq!(c.io_poll_period, None);
        assert_eq!(o.health_period(), DEFAULT_HEALTH_PERIOD);
    }

    #[test]
    fn spdk_values_apply() {
        // What SPDK 24.x writes by default: no timeouts.
        let o: NvmeOptions =
            serde_json::from_value(serde_json::json!({"action_on_timeout": "none", "timeout_us": 0, "timeout_admin_us": 0, "nvme_adminq_poll_period_us": 10000, "bdev_retry_count": 3, "transport_retry_count": 4, "dhchap_digests": ["sha256"]}))
                .unwrap();
        o.check().unwrap();
        let c = o.controller_options();
        assert_eq!(c.io_timeout, None);
        assert_eq!(c.timeout_action, TimeoutAction::None);
        assert_eq!(c.admin_timeout, ControllerOptions::default().admin_timeout, "admin waits stay bounded");
        assert_eq!(o.health_period(), Duration::from_millis(10));
        let o: NvmeOptions = serde_json::from_value(
            serde_json::json!({"action_on_timeout": "reset", "timeout_us": 2_000_000, "timeout_admin_us": 0, "nvme_ioq_poll_period_us": 50}),
        )
        .unwrap();
        let c = o.controller_options();
        assert_eq!(c.io_timeout, Some(Duration::from_secs(2)));
        assert_eq!(c.admin_timeout, Duration::from_secs(2), "admin falls back to the I/O timeout, as in SPDK");
        assert_eq!(c.timeout_action, TimeoutAction::Reset);
        assert_eq!(c.io_poll_period, Some(Duration::from_micros(50)));
    }

    #[test]
    fn refusals_name_the_parameter() {
        for (k, v) in [
            ("action_on_timeout", serde_json::json!("explode")),
            ("arbitration_burst", serde_json::json!(7)),
            ("io_path_stat", serde_json::json!(true)),
            ("nvme_adminq_poll_period_us", serde_json::json!(0)),
        ] {
            let o: NvmeOptions = serde_json::from_value(serde_json::json!({ k: v })).unwrap();
            let e = o.check().unwrap_err();
            assert!(e.message.contains(k), "{k}: {}", e.message);
        }
        assert!(serde_json::from_value::<NvmeOptions>(serde_json::json!({"bogus": 1})).is_err());
    }
}
