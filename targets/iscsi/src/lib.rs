//! The iSCSI target (RFC 7143) on the reactors.
//!
//! Portal groups listen on the main reactor ([`portal`]); each accepted
//! connection is handed to a reactor in turn and lives there, in that
//! reactor's connection group ([`conn`]): its socket is polled with the
//! group's other sockets, its PDUs are parsed ([`pdu`], [`text`]), its
//! login negotiated ([`login`], [`chap`]), and its SCSI commands run on
//! the session's LUN ports ([`pollux_scsi`]) with that reactor's bdev
//! channels. Sessions ([`session`]) keep all their connections on one
//! reactor. Configuration ([`config`]) is SPDK's: portal groups, initiator
//! groups, target nodes, CHAP auth groups, set through the `iscsi_*` RPCs
//! ([`rpc`]) and written back by `save_config`.

#![forbid(unsafe_code)]

pub mod config;
pub mod conn;
pub mod counters;
#[doc(hidden)]
pub mod fuzzing;
pub mod login;
pub mod portal;
pub mod rpc;
pub mod session;

pub use pollux_iscsi_spec::{chap, pdu, text};

use std::rc::Rc;

use pollux_core::app::{App, ConfigWriter, Done, Subsystem};
use pollux_core::reactor;

struct IscsiSubsystem;

impl Subsystem for IscsiSubsystem {
    fn name(&self) -> &'static str {
        "iscsi"
    }

    fn depends_on(&self) -> &'static [&'static str] {
        &["scsi", "bdev"]
    }

    fn init(&self, done: Done) {
        // Portal groups created by a config file before init start now.
        let groups: Vec<(i32, Vec<config::Portal>)> =
            config::lock().portal_groups.values().filter(|g| !g.wait).map(|g| (g.tag, g.portals.clone())).collect();
        for (tag, portals) in groups {
            if !portal::is_listening(tag) {
                if let Err(e) = portal::start(tag, &portals) {
                    return done(Err(format!("iscsi: portal group {tag}: {e}")));
                }
            }
        }
        done(Ok(()))
    }

    fn fini(&self, done: Box<dyn FnOnce() + Send>) {
        let tags: Vec<i32> = config::lock().portal_groups.keys().copied().collect();
        for t in tags {
            portal::stop(t);
        }
        reactor::for_each_reactor(
            || conn::close_all(None),
            move || {
                rpc::clear_targets();
                done()
            },
        );
    }

    fn write_config(&self, out: &mut ConfigWriter) {
        rpc::write_config(out);
    }
}

/// Register the `scsi` and `iscsi` subsystems and the `iscsi_*` methods.
pub fn register(app: &mut App) {
    pollux_scsi::register(app);
    app.add_subsystem(Rc::new(IscsiSubsystem));
    rpc::register(app.methods());
}
