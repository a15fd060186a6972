//! What the `pollux-tgt` daemon contains, as a library so that the fuzz
//! targets and tests build the same method table as the daemon.

#![forbid(unsafe_code)]

use pollux_core::app::App;

/// Register everything `pollux-tgt` serves: SPDK's framework-level
/// subsystems (so its saved configs load), the bdev layer and its modules,
/// then the targets that export bdevs.
pub fn register(app: &mut App) {
    pollux_core::sock::register(app);
    pollux_core::scheduler::register(app);
    pollux_core::bdev::rpc::register(app);
    pollux_bdev::register_all(app);
    pollux_rbd::register(app);
    pollux_lvol::register(app);
    pollux_raid::register(app);
    pollux_crypto::register(app);
    pollux_nvme_driver::register(app);
    pollux_iscsi_host::register(app);
    pollux_iscsi::register(app);
    pollux_nvmf::register(app);
    pollux_nbd::register(app);
}

#[cfg(test)]
mod tests {
    use std::rc::Rc;

    use pollux_core::app::App;

    /// No method handler holds the method table strongly: the table holds
    /// the handlers, so that would be a cycle and neither would be freed
    /// (the metrics methods did; every execution of the `rpc_params` fuzz
    /// target, which builds an app each time, leaked about 30 KB and
    /// libFuzzer stopped at its 2 GB limit after 48,000 of them).
    #[test]
    fn the_method_table_goes_with_its_app() {
        let mut app = App::new("pollux-tgt-test");
        super::register(&mut app);
        let table = Rc::downgrade(app.methods());
        drop(app);
        assert!(table.upgrade().is_none(), "a method handler holds the method table: a reference cycle");
    }
}
