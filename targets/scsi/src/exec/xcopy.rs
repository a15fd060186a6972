//! EXTENDED COPY (LID1) and RECEIVE COPY RESULTS (SPC-4 6.4, 6.18): block
//! to block copies within a LU, described by an identification (0xE4)
//! CSCD descriptor naming the LU by its NAA designator and block-to-block
//! (0x02) segment descriptors. The copy runs on the session's reactor.

use std::rc::Rc;

use pollux_core::bdev::BdevIo;

use super::data::{alloc, copy_from};
use super::{LunPort, ScsiCommand, apply_io_status, fail, finish_status, good};
use crate::cdb::{be16, be32, be64};
use crate::sense::{Asc, Sense, status};

pub(crate) const MAX_CSCD_DESCRIPTORS: u16 = 2;
pub(crate) const MAX_SEGMENT_DESCRIPTORS: u16 = 64;
pub(crate) const MAX_DESCRIPTOR_LIST: u32 = 32 * 2 + 28 * 64;
pub(crate) const MAX_SEGMENT_BLOCKS: u32 = 4096;
const HEADER: usize = 16;

/// A copy that cannot be carried out ends with COPY ABORTED.
fn aborted(asc: Asc) -> Sense {
    Sense::new(crate::sense::SenseKey::CopyAborted, asc)
}

/// One block-to-block segment: source LBA, destination LBA, blocks.
#[derive(Clone, Copy, Debug)]
struct Segment {
    src: u64,
    dst: u64,
    blocks: u64,
}

/// Parse and check a LID1 parameter list against this LU.
fn parse(port: &LunPort, p: &[u8]) -> Result<Vec<Segment>, Sense> {
    let lun = port.lun();
    if p.len() < HEADER {
        return Err(Sense::illegal(Asc::PARAMETER_LIST_LENGTH_ERROR));
    }
    let usage = (p[1] >> 3) & 0x03;
    if usage == 0x01 {
        return Err(Sense::invalid_param_field(1, Some(4)));
    }
    if usage == 0x03 && p[0] != 0 {
        return Err(Sense::invalid_param_field(0, None));
    }
    let tlen = be16(p, 2) as usize;
    let slen = be32(p, 8) as usize;
    let inline = be32(p, 12);
    if inline != 0 {
        return Err(Sense::invalid_param_field(12, None));
    }
    if tlen % 32 != 0 || HEADER + tlen + slen > p.len() || tlen + slen > MAX_DESCRIPTOR_LIST as usize {
        return Err(Sense::illegal(Asc::PARAMETER_LIST_LENGTH_ERROR));
    }
    if tlen / 32 > MAX_CSCD_DESCRIPTORS as usize {
        return Err(Sense::illegal(Asc::TOO_MANY_TARGET_DESCRIPTORS));
    }
    // CSCD descriptors: each must name this LU.
    let mut cscd = 0;
    for i in 0..tlen / 32 {
        let at = HEADER + 32 * i;
        let d = &p[at..at + 32];
        if d[0] != 0xe4 {
            return Err(Sense {
                field: Some(crate::sense::FieldPointer { in_cdb: false, byte: at as u16, bit: None }),
                ..Sense::illegal(Asc::UNSUPPORTED_TARGET_DESCRIPTOR_TYPE)
            });
        }
        if d[1] & 0x20 != 0 {
            // NUL: a null device cannot be copied to or from.
            return Err(aborted(Asc::COPY_TARGET_DEVICE_NOT_REACHABLE));
        }
        if d[1] & 0x1f != 0 {
            // Only direct-access block devices.
            return Err(Sense::invalid_param_field((at + 1) as u16, Some(4)));
        }
        let code_set = d[4] & 0x0f;
        let assoc = (d[5] >> 4) & 0x03;
        let dtype = d[5] & 0x0f;
        let dlen = d[7] as usize;
        if code_set != 1 || assoc != 0 || dtype != 3 || dlen != 16 || d[8..24] != lun.identity().naa {
            return Err(aborted(Asc::COPY_TARGET_DEVICE_NOT_REACHABLE));
        }
        let block = be32(d, 28) & 0x00ff_ffff;
        if block != lun.block_size() {
            return Err(Sense::invalid_param_field((at + 29) as u16, None));
        }
        cscd += 1;
    }
    // Segment descriptors.
    let mut segs = Vec::new();
    let mut off = HEADER + tlen;
    let end = off + slen;
    while off < end {
        if end - off < 4 {
            return Err(Sense::illegal(Asc::PARAMETER_LIST_LENGTH_ERROR));
        }
        let d = &p[off..end];
        if d[0] != 0x02 {
            return Err(Sense {
                field: Some(crate::sense::FieldPointer { in_cdb: false, byte: off as u16, bit: None }),
                ..Sense::illegal(Asc::UNSUPPORTED_SEGMENT_DESCRIPTOR_TYPE)
            });
        }
        let dl = be16(d, 2) as usize + 4;
        if dl != 28 || d.len() < 28 {
            return Err(Sense::invalid_param_field((off + 2) as u16, None));
        }
        if segs.len() == MAX_SEGMENT_DESCRIPTORS as usize {
            return Err(Sense::illegal(Asc::TOO_MANY_SEGMENT_DESCRIPTORS));
        }
        let (si, di) = (be16(d, 4) as usize, be16(d, 6) as usize);
        if si >= cscd || di >= cscd {
            return Err(aborted(Asc::COPY_TARGET_DEVICE_NOT_REACHABLE));
        }
        let blocks = be16(d, 10) as u64;
        let (src, dst) = (be64(d, 12), be64(d, 20));
        if d[1] & 0x02 != 0 {
            // DC: the count is in destination blocks; same size here.
        }
        for lba in [src, dst] {
            if lba as u128 + blocks as u128 > lun.num_blocks() as u128 {
                return Err(aborted(Asc::NO_ADDITIONAL));
            }
        }
        segs.push(Segment { src, dst, blocks });
        off += dl;
    }
    Ok(segs)
}

pub(super) fn extended_copy<C: ScsiCommand>(port: &Rc<LunPort>, mut cmd: Box<C>) {
    let t = cmd.task();
    let cdb = t.cdb;
    if cdb[1] & 0x1f != 0 {
        // Only LID1 (service action 0).
        return fail(cmd, Sense::invalid_cdb_field(1, Some(4)));
    }
    let plen = be32(&cdb, 10) as usize;
    t.xfer_len = plen as u64;
    if plen == 0 {
        return good(cmd);
    }
    if t.data_len < plen {
        return fail(cmd, Sense::illegal(Asc::PARAMETER_LIST_LENGTH_ERROR));
    }
    if !port.lun().writable() {
        return fail(cmd, Sense::new(crate::sense::SenseKey::DataProtect, Asc::WRITE_PROTECTED));
    }
    let mut p = vec![0u8; plen.min(1 << 20)];
    copy_from(&t.bufs, 0, &mut p);
    t.drop_data();
    let list_id = p.first().copied().unwrap_or(0);
    match parse(port, &p) {
        Err(s) => fail(cmd, s),
        Ok(segs) => {
            port.lun().record_copy(port.nexus(), list_id, None);
            run(port.clone(), cmd, segs, 0, 0, list_id);
        }
    }
}

/// Copy segment `i` from block `done` on, piece by piece.
fn run<C: ScsiCommand>(port: Rc<LunPort>, cmd: Box<C>, segs: Vec<Segment>, i: usize, done: u64, list_id: u8) {
    let Some(seg) = segs.get(i).copied() else {
        port.lun().record_copy(port.nexus(), list_id, Some(segs.len() as u16));
        return good(cmd);
    };
    if done >= seg.blocks {
        return run(port, cmd, segs, i + 1, 0, list_id);
    }
    let lun = port.lun().clone();
    let bs = lun.block_size() as u64;
    let n = (seg.blocks - done).min((crate::limits::PATTERN_CHUNK as u64 / bs).max(1));
    let mut bufs = Vec::new();
    if !alloc((n * bs) as usize, &mut bufs) {
        return finish_status(cmd, status::BUSY);
    }
    let ch = port.channel().clone();
    lun.descriptor().read(&ch, bufs, seg.src + done, n, move |mut io: BdevIo| {
        let mut cmd = cmd;
        if !apply_io_status(cmd.task(), &io, false) {
            return cmd.complete();
        }
        let data = io.take_buffers();
        drop(io);
        let lun = port.lun().clone();
        let ch = port.channel().clone();
        lun.descriptor().write(&ch, data, seg.dst + done, n, move |io: BdevIo| {
            let mut cmd = cmd;
            if !apply_io_status(cmd.task(), &io, true) {
                return cmd.complete();
            }
            drop(io);
            run(port, cmd, segs, i, done + n, list_id);
        });
    });
}

pub(super) fn receive_copy_results<C: ScsiCommand>(port: &Rc<LunPort>, mut cmd: Box<C>) {
    let t = cmd.task();
    let cdb = t.cdb;
    let alloc_len = be32(&cdb, 10) as usize;
    let data = match cdb[1] & 0x1f {
        crate::cdb::op::RCR_COPY_STATUS => match port.lun().copy_status(port.nexus(), cdb[2]) {
            None => return fail(cmd, Sense::invalid_cdb_field(2, None)),
            Some(segments) => {
                let mut d = vec![0u8; 12];
                d[0..4].copy_from_slice(&8u32.to_be_bytes());
                d[4] = if segments.is_some() { 0x01 } else { 0x00 };
                d[5..7].copy_from_slice(&segments.unwrap_or(0).to_be_bytes());
                d
            }
        },
        crate::cdb::op::RCR_OPERATING_PARAMETERS => {
            let mut d = vec![0u8; 44 + 2];
            let len = (d.len() - 4) as u32;
            d[0..4].copy_from_slice(&len.to_be_bytes());
            d[4] = 0x01; // SNLID
            d[8..10].copy_from_slice(&MAX_CSCD_DESCRIPTORS.to_be_bytes());
            d[10..12].copy_from_slice(&MAX_SEGMENT_DESCRIPTORS.to_be_bytes());
            d[12..16].copy_from_slice(&MAX_DESCRIPTOR_LIST.to_be_bytes());
            d[16..20].copy_from_slice(&(MAX_SEGMENT_BLOCKS * port.lun().block_size()).to_be_bytes());
            d[34..36].copy_from_slice(&1u16.to_be_bytes());
            d[36] = 1;
            d[37] = port.lun().block_size().trailing_zeros() as u8;
            d[43] = 2;
            d[44] = 0x02;
            d[45] = 0xe4;
            d
        }
        _ => return fail(cmd, Sense::invalid_cdb_field(1, Some(4))),
    };
    let t = cmd.task();
    if super::data::put_data(t, &data, alloc_len) { good(cmd) } else { finish_status(cmd, status::BUSY) }
}
