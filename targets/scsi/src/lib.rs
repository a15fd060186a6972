//! SCSI block commands on bdevs (being written).
