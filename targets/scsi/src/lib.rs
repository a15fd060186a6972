//! SCSI block commands (SBC-4, SPC-5) on bdevs, for any transport.
//!
//! A [`Device`] is what one target exports: logical units ([`Lun`]) by LUN,
//! each on an open bdev. A transport session gets a [`LunPort`] per LU on
//! its own reactor (its I_T nexus plus that reactor's bdev channel) and
//! executes commands through it: the transport wraps a [`Task`] (the CDB,
//! data-out, and afterwards status, sense and data-in) in its own command
//! type implementing [`ScsiCommand`].
//!
//! What a LU implements: INQUIRY with VPD pages 00, 80, 83, B0, B1, B2;
//! READ CAPACITY 10/16; READ and WRITE 6/10/12/16 with DPO and FUA; WRITE
//! ATOMIC 16; WRITE SAME 10/16 with UNMAP; UNMAP; COMPARE AND WRITE (atomic
//! on the LU); SYNCHRONIZE CACHE; VERIFY and WRITE AND VERIFY 10/12/16;
//! ORWRITE; PRE-FETCH; GET LBA STATUS; MODE SENSE/SELECT 6/10 (caching,
//! control, informational exceptions); REPORT LUNS; REQUEST SENSE; TEST
//! UNIT READY; START STOP UNIT; REPORT SUPPORTED OPERATION CODES;
//! PERSISTENT RESERVE IN/OUT; RESERVE/RELEASE 6/10; EXTENDED COPY (LID1)
//! and RECEIVE COPY RESULTS; READ DEFECT DATA; unit attentions.

#![forbid(unsafe_code)]

pub mod cdb;
mod device;
mod exec;
pub mod limits;
pub mod lun;
pub mod sense;
mod task;

use std::rc::Rc;

use pollux_core::app::{App, Subsystem};

pub use device::{Device, MAX_LUN, decode_lun, encode_lun};
pub use exec::{LunPort, ScsiCommand};
pub use lun::{Lun, Nexus};
pub use task::{DataDir, Task};

/// The `scsi` subsystem: nothing to configure (as SPDK's), present so that
/// targets depend on it and `framework_get_subsystems` lists it.
struct ScsiSubsystem;

impl Subsystem for ScsiSubsystem {
    fn name(&self) -> &'static str {
        "scsi"
    }
    fn depends_on(&self) -> &'static [&'static str] {
        &["bdev"]
    }
}

/// Register the `scsi` subsystem.
pub fn register(app: &mut App) {
    app.add_subsystem(Rc::new(ScsiSubsystem));
}

#[cfg(test)]
mod tests;
