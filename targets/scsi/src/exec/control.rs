//! Commands that do not move blocks: INQUIRY, READ CAPACITY, MODE SENSE and
//! SELECT, REQUEST SENSE, TEST UNIT READY, START STOP UNIT, reservations,
//! REPORT SUPPORTED OPERATION CODES, READ DEFECT DATA.

use std::rc::Rc;
use std::sync::atomic::Ordering;

use super::data::{copy_from, put_data};
use super::{LunPort, ScsiCommand, fail, finish_status, good, inquiry, opcodes};
use crate::cdb::{be16, be32, op};
use crate::lun::mode::PageControl;
use crate::sense::{Asc, SENSE_MAX, Sense, status};
use crate::task::Task;

/// Return `data` cut to `alloc_len` and finish GOOD (BUSY without buffers).
fn reply<C: ScsiCommand>(mut cmd: Box<C>, data: &[u8], alloc_len: usize) {
    let t = cmd.task();
    if put_data(t, data, alloc_len) { good(cmd) } else { finish_status(cmd, status::BUSY) }
}

pub(super) fn execute<C: ScsiCommand>(port: &Rc<LunPort>, mut cmd: Box<C>) {
    use op::*;
    let t = cmd.task();
    let cdb = t.cdb;
    match cdb[0] {
        TEST_UNIT_READY => good(cmd),
        REQUEST_SENSE => request_sense(port, cmd),
        INQUIRY => {
            let alloc = be16(&cdb, 3) as usize;
            if cdb[1] & 0x01 == 0 {
                if cdb[2] != 0 {
                    return fail(cmd, Sense::invalid_cdb_field(2, None));
                }
                reply(cmd, &inquiry::standard(port.lun()), alloc)
            } else {
                match inquiry::vpd(port.lun(), port.nexus(), cdb[2]) {
                    Some(d) => reply(cmd, &d, alloc),
                    None => fail(cmd, Sense::invalid_cdb_field(2, None)),
                }
            }
        }
        READ_CAPACITY_10 => {
            if cdb[8] & 0x01 == 0 && be32(&cdb, 2) != 0 {
                return fail(cmd, Sense::invalid_cdb_field(2, None));
            }
            let lun = port.lun();
            let last = (lun.num_blocks() - 1).min(0xffff_ffff) as u32;
            let mut d = [0u8; 8];
            d[0..4].copy_from_slice(&last.to_be_bytes());
            d[4..8].copy_from_slice(&lun.block_size().to_be_bytes());
            reply(cmd, &d, 8)
        }
        MODE_SENSE_6 | MODE_SENSE_10 => mode_sense(port, cmd),
        MODE_SELECT_6 | MODE_SELECT_10 => mode_select(port, cmd),
        START_STOP_UNIT => {
            // Power conditions 0 (START valid), 1 (active), 2 (idle), 3
            // (standby), 0xa/0xb (force idle/standby 0) are accepted; the
            // medium is never removable.
            let pc = cdb[4] >> 4;
            if !matches!(pc, 0 | 1 | 2 | 3 | 7 | 0xa | 0xb) {
                return fail(cmd, Sense::invalid_cdb_field(4, Some(7)));
            }
            if pc == 0 && cdb[4] & 0x02 != 0 && cdb[4] & 0x01 == 0 {
                // LOEJ with START=0: eject a medium that cannot be removed.
                return fail(cmd, Sense::illegal(Asc(0x53, 0x02)));
            }
            good(cmd)
        }
        PREVENT_ALLOW => good(cmd),
        SEND_DIAGNOSTIC => {
            if cdb[1] & 0x04 == 0 && cdb[1] >> 5 != 0 {
                // A self-test code other than the default self-test.
                return fail(cmd, Sense::invalid_cdb_field(1, Some(7)));
            }
            good(cmd)
        }
        RESERVE_6 | RESERVE_10 => {
            if cdb[0] == RESERVE_10 && cdb[1] & 0x02 != 0 {
                // Third-party reservations are not offered.
                return fail(cmd, Sense::invalid_cdb_field(1, Some(1)));
            }
            if port.lun().reserve6(port.nexus()) { good(cmd) } else { finish_status(cmd, status::RESERVATION_CONFLICT) }
        }
        RELEASE_6 | RELEASE_10 => {
            if port.lun().release6(port.nexus()) {
                good(cmd)
            } else {
                finish_status(cmd, status::RESERVATION_CONFLICT)
            }
        }
        PERSISTENT_RESERVE_IN => {
            let alloc = be16(&cdb, 7) as usize;
            match port.lun().pr_in(port.nexus(), &cdb) {
                Ok(d) => reply(cmd, &d, alloc),
                Err(s) => fail(cmd, s),
            }
        }
        PERSISTENT_RESERVE_OUT => {
            let plen = be32(&cdb, 5) as usize;
            t.xfer_len = plen as u64;
            let mut p = vec![0u8; plen.min(t.data_len).min(1 << 16)];
            copy_from(&t.bufs, 0, &mut p);
            t.drop_data();
            match port.lun().pr_out(port.nexus(), &cdb, &p) {
                Ok(Some(abort)) if abort.is_empty() => good(cmd),
                Ok(Some(abort)) => {
                    // PREEMPT AND ABORT: GOOD once the preempted nexuses'
                    // tasks on the LU are aborted (SPC-4 5.13.11.2.5).
                    cmd.task().set_status(status::GOOD);
                    cmd.complete_after_aborting(port.lun().id(), abort);
                }
                Ok(None) => finish_status(cmd, status::RESERVATION_CONFLICT),
                Err(s) => fail(cmd, s),
            }
        }
        MAINTENANCE_IN if cdb[1] & 0x1f == MI_REPORT_SUPPORTED_OPCODES => {
            let alloc = be32(&cdb, 6) as usize;
            let option = cdb[2] & 0x07;
            let rctd = cdb[2] & 0x80 != 0;
            let data = if option == 0 { Some(opcodes::all(rctd)) } else { opcodes::one(cdb[3], be16(&cdb, 4), option, rctd) };
            match data {
                Some(d) => reply(cmd, &d, alloc),
                None => fail(cmd, Sense::invalid_cdb_field(2, Some(2))),
            }
        }
        MAINTENANCE_IN => fail(cmd, Sense::invalid_cdb_field(1, Some(4))),
        READ_DEFECT_DATA_10 => {
            let alloc = be16(&cdb, 7) as usize;
            // No defects; echo the requested list types and format.
            reply(cmd, &[0, cdb[2] & 0x1f, 0, 0], alloc)
        }
        READ_DEFECT_DATA_12 => {
            let alloc = be32(&cdb, 6) as usize;
            reply(cmd, &[0, cdb[1] & 0x1f, 0, 0, 0, 0, 0, 0], alloc)
        }
        _ => fail(cmd, Sense::invalid_opcode()),
    }
}

/// REQUEST SENSE: a pending unit attention, else NO SENSE.
fn request_sense<C: ScsiCommand>(port: &Rc<LunPort>, mut cmd: Box<C>) {
    let t = cmd.task();
    let desc = t.cdb[1] & 0x01 != 0;
    let alloc = t.cdb[4] as usize;
    let sense = port.lun().take_ua(port.nexus()).unwrap_or(Sense::new(crate::sense::SenseKey::NoSense, Asc::NO_ADDITIONAL));
    let mut b = [0u8; SENSE_MAX];
    let n = sense.encode(desc, &mut b);
    reply(cmd, &b[..n], alloc)
}

pub(super) fn read_capacity_16<C: ScsiCommand>(port: &Rc<LunPort>, mut cmd: Box<C>) {
    let lun = port.lun();
    let alloc = be32(&cmd.task().cdb, 10) as usize;
    let mut d = [0u8; 32];
    d[0..8].copy_from_slice(&(lun.num_blocks() - 1).to_be_bytes());
    d[8..12].copy_from_slice(&lun.block_size().to_be_bytes());
    d[13] = crate::limits::physical_exponent(lun);
    if lun.thin() {
        d[14] = 0x80 | 0x40; // LBPME, LBPRZ
    }
    reply(cmd, &d, alloc)
}

fn mode_sense<C: ScsiCommand>(port: &Rc<LunPort>, mut cmd: Box<C>) {
    let lun = port.lun();
    let t = cmd.task();
    let cdb = t.cdb;
    let ten = cdb[0] == op::MODE_SENSE_10;
    let dbd = cdb[1] & 0x08 != 0;
    let llbaa = ten && cdb[1] & 0x10 != 0;
    let pc = match cdb[2] >> 6 {
        0 => PageControl::Current,
        1 => PageControl::Changeable,
        2 => PageControl::Default,
        _ => return fail(cmd, Sense::illegal(Asc::SAVING_PARAMETERS_NOT_SUPPORTED)),
    };
    let alloc = if ten { be16(&cdb, 7) as usize } else { cdb[4] as usize };
    let mode = lun.lock().mode;
    let Some(pages) = mode.pages(cdb[2] & 0x3f, cdb[3], pc) else { return fail(cmd, Sense::invalid_cdb_field(2, Some(5))) };
    let wp = !lun.writable() || mode.swp;
    let dsp = (wp as u8) << 7 | 0x10; // WP, DPOFUA
    let mut bd = Vec::new();
    if !dbd {
        if llbaa {
            bd.extend_from_slice(&lun.num_blocks().to_be_bytes());
            bd.extend_from_slice(&[0; 4]);
            bd.extend_from_slice(&lun.block_size().to_be_bytes());
        } else {
            let n = lun.num_blocks().min(0xffff_ffff) as u32;
            bd.extend_from_slice(&n.to_be_bytes());
            bd.push(0);
            bd.extend_from_slice(&lun.block_size().to_be_bytes()[1..]);
        }
    }
    let mut out = Vec::with_capacity(8 + bd.len() + pages.len());
    if ten {
        let len = (6 + bd.len() + pages.len()) as u16;
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&[0, dsp, llbaa as u8, 0]);
        out.extend_from_slice(&(bd.len() as u16).to_be_bytes());
    } else {
        out.extend_from_slice(&[(3 + bd.len() + pages.len()) as u8, 0, dsp, bd.len() as u8]);
    }
    out.extend_from_slice(&bd);
    out.extend_from_slice(&pages);
    reply(cmd, &out, alloc)
}

fn mode_select<C: ScsiCommand>(port: &Rc<LunPort>, mut cmd: Box<C>) {
    let lun = port.lun();
    let t: &mut Task = cmd.task();
    let cdb = t.cdb;
    let ten = cdb[0] == op::MODE_SELECT_10;
    let plen = if ten { be16(&cdb, 7) as usize } else { cdb[4] as usize };
    t.xfer_len = plen as u64;
    if cdb[1] & 0x01 != 0 {
        // SP: parameters cannot be saved.
        return fail(cmd, Sense::invalid_cdb_field(1, Some(0)));
    }
    if cdb[1] & 0x10 == 0 && plen > 0 {
        // Only the page format is understood.
        return fail(cmd, Sense::invalid_cdb_field(1, Some(4)));
    }
    if plen == 0 {
        return good(cmd);
    }
    let hdr = if ten { 8 } else { 4 };
    if plen < hdr || t.data_len < plen {
        return fail(cmd, Sense::illegal(Asc::PARAMETER_LIST_LENGTH_ERROR));
    }
    let mut p = vec![0u8; plen];
    copy_from(&t.bufs, 0, &mut p);
    t.drop_data();
    let bdl = if ten { be16(&p, 6) as usize } else { p[3] as usize };
    if hdr + bdl > plen {
        return fail(cmd, Sense::illegal(Asc::PARAMETER_LIST_LENGTH_ERROR));
    }
    let mut s = lun.lock();
    match s.mode.select(&p[hdr + bdl..], hdr + bdl) {
        Err(e) => {
            drop(s);
            fail(cmd, e)
        }
        Ok(next) => {
            if next != s.mode {
                s.mode = next;
                lun.descriptor_sense.store(next.d_sense, Ordering::Relaxed);
                lun.write_cache.store(next.wce, Ordering::Relaxed);
                lun.software_write_protect.store(next.swp, Ordering::Relaxed);
                lun.raise_ua(&mut s, Asc::MODE_PARAMETERS_CHANGED, Some(port.nexus()));
            }
            drop(s);
            good(cmd)
        }
    }
}
