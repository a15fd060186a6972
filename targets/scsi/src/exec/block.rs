//! Block commands (SBC-4): reads, writes, verifies, ORWRITE, COMPARE AND
//! WRITE, WRITE SAME, UNMAP, SYNCHRONIZE CACHE, PRE-FETCH, GET LBA STATUS.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use pollux_core::bdev::{BdevIo, IoType};
use pollux_core::dma::DmaBuf;
use pollux_core::reactor::{self, ReactorId};

use super::data::{self, alloc, copy_from, trim_to};
use super::{LunPort, ScsiCommand, apply_io_status, fail, finish_status, good, io_outcome};
use crate::cdb::{self, Rw, be16, be32, be64, op};
use crate::limits;
use crate::lun::Lun;
use crate::sense::{Asc, Sense, SenseKey, status};

thread_local! {
    /// Buffers on their way into a bdev request (so the request's vector is
    /// filled from a reused one: no allocation per I/O).
    static SCRATCH: RefCell<Vec<DmaBuf>> = RefCell::new(Vec::with_capacity(64));
}

fn check_range(lun: &Lun, lba: u64, blocks: u64) -> Result<(), Sense> {
    if lba as u128 + blocks as u128 > lun.num_blocks() as u128 { Err(Sense::lba_out_of_range()) } else { Ok(()) }
}

fn write_protected(lun: &Lun) -> bool {
    // The mode page's SWP is mirrored in an atomic: no lock per write.
    !lun.writable() || lun.software_write_protect.load(std::sync::atomic::Ordering::Relaxed)
}

fn data_protect() -> Sense {
    Sense::new(SenseKey::DataProtect, Asc::WRITE_PROTECTED)
}

/// Byte of the transfer length field, for field pointers.
fn len_byte(opcode: u8) -> u16 {
    match cdb::cdb_len(opcode) {
        6 => 4,
        10 => 7,
        12 => 6,
        _ => 10,
    }
}

/// Common checks of READ/WRITE/VERIFY forms; `Ok(false)` means "nothing to
/// transfer" (GOOD).
fn check_rw(lun: &Lun, opcode: u8, r: &Rw, max_blocks: u32) -> Result<bool, Sense> {
    if r.protect != 0 {
        return Err(Sense::invalid_cdb_field(1, Some(7)));
    }
    check_range(lun, r.lba, r.blocks as u64)?;
    if r.blocks == 0 {
        return Ok(false);
    }
    if r.blocks > max_blocks {
        return Err(Sense::invalid_cdb_field(len_byte(opcode), None));
    }
    Ok(true)
}

pub(super) fn read<C: ScsiCommand>(port: &Rc<LunPort>, mut cmd: Box<C>) {
    let lun = port.lun();
    let t = cmd.task();
    let r = cdb::rw(&t.cdb);
    let bs = lun.block_size() as u64;
    t.xfer_len = r.blocks as u64 * bs;
    match check_rw(lun, t.cdb[0], &r, limits::max_transfer_blocks(lun)) {
        Err(s) => return fail(cmd, s),
        Ok(false) => return good(cmd),
        Ok(true) => {}
    }
    // Read only what the initiator will take.
    let blocks = (r.blocks as u64).min((t.expected_len as u64).div_ceil(bs));
    if blocks == 0 {
        return good(cmd);
    }
    let len = (blocks * bs) as usize;
    if lun.bdev().lends_reads() && !t.no_lend {
        // A RAM disk lends its memory: no buffers, no copy.
        return lun.descriptor().read_lend(port.channel(), r.lba, blocks, move |mut io: BdevIo| {
            let t = cmd.task();
            if apply_io_status(t, &io, false) {
                t.lent = io.take_lent();
                if t.lent.is_some() {
                    t.data_len = len;
                } else {
                    // A backend that said it lends came back without
                    // memory: never GOOD without the data.
                    debug_assert!(false, "a lending bdev's read came back without memory");
                    t.fail(Sense::new(SenseKey::HardwareError, Asc::INTERNAL_TARGET_FAILURE));
                }
            }
            cmd.complete();
        });
    }
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        s.clear();
        if !alloc(len, &mut s) {
            drop(s);
            return finish_status(cmd, status::BUSY);
        }
        lun.descriptor().read(port.channel(), s.drain(..), r.lba, blocks, move |mut io: BdevIo| {
            let t = cmd.task();
            if apply_io_status(t, &io, false) {
                io.take_buffers_into(&mut t.bufs);
                t.data_len = len;
            }
            cmd.complete();
        });
    })
}

pub(super) fn write<C: ScsiCommand>(port: &Rc<LunPort>, mut cmd: Box<C>) {
    let lun = port.lun().clone();
    let t = cmd.task();
    let opcode = t.cdb[0];
    let r = cdb::rw(&t.cdb);
    let bs = lun.block_size() as u64;
    t.xfer_len = r.blocks as u64 * bs;
    let max = if opcode == op::WRITE_ATOMIC_16 { limits::max_atomic_blocks(&lun) } else { limits::max_transfer_blocks(&lun) };
    if matches!(opcode, op::WRITE_AND_VERIFY_10 | op::WRITE_AND_VERIFY_12 | op::WRITE_AND_VERIFY_16) && r.bytchk == 2 {
        return fail(cmd, Sense::invalid_cdb_field(1, Some(2)));
    }
    match check_rw(&lun, opcode, &r, max) {
        Err(s) => return fail(cmd, s),
        Ok(false) => return good(cmd),
        Ok(true) => {}
    }
    if write_protected(&lun) {
        return fail(cmd, data_protect());
    }
    // Write the whole blocks the initiator actually sent, up to the CDB's length.
    let blocks = (t.data_len as u64).min(t.xfer_len) / bs;
    if blocks == 0 {
        return good(cmd);
    }
    trim_to(&mut t.bufs, (blocks * bs) as usize);
    let flush = (r.fua || matches!(opcode, op::WRITE_AND_VERIFY_10 | op::WRITE_AND_VERIFY_12 | op::WRITE_AND_VERIFY_16))
        && lun.write_cache.load(std::sync::atomic::Ordering::Relaxed)
        && lun.bdev().supports(IoType::Flush);
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        s.clear();
        s.append(&mut cmd.task().bufs);
        cmd.task().data_len = 0;
        let port2 = port.clone();
        lun.descriptor().write(port.channel(), s.drain(..), r.lba, blocks, move |io: BdevIo| {
            let ok = apply_io_status(cmd.task(), &io, true);
            drop(io);
            if ok && flush {
                let lun = port2.lun().clone();
                lun.descriptor().flush(port2.channel(), r.lba, blocks, move |io: BdevIo| {
                    apply_io_status(cmd.task(), &io, true);
                    cmd.complete();
                });
            } else {
                cmd.complete();
            }
        });
    })
}

/// Read `blocks` at `lba` into fresh buffers, then run `then` with them
/// (or finish the command on error).
fn read_then<C: ScsiCommand>(port: &Rc<LunPort>, cmd: Box<C>, lba: u64, blocks: u64, then: impl FnOnce(Box<C>, Vec<DmaBuf>) + 'static) {
    let lun = port.lun();
    let len = (blocks * lun.block_size() as u64) as usize;
    let mut bufs = Vec::new();
    if !alloc(len, &mut bufs) {
        return finish_status(cmd, status::BUSY);
    }
    lun.descriptor().read(port.channel(), bufs, lba, blocks, move |mut io: BdevIo| {
        let mut cmd = cmd;
        if apply_io_status(cmd.task(), &io, false) {
            let b = io.take_buffers();
            drop(io);
            then(cmd, b);
        } else {
            cmd.complete();
        }
    });
}

/// Offset of the first byte that differs, comparing `medium` with the
/// task's data-out from `data_off`.
fn first_difference(medium: &[DmaBuf], data: &[DmaBuf], data_off: usize, len: usize) -> Option<usize> {
    let mut a = vec![0u8; len];
    let mut b = vec![0u8; len];
    copy_from(medium, 0, &mut a);
    copy_from(data, data_off, &mut b);
    a.iter().zip(&b).position(|(x, y)| x != y)
}

pub(super) fn verify<C: ScsiCommand>(port: &Rc<LunPort>, mut cmd: Box<C>) {
    let lun = port.lun();
    let t = cmd.task();
    let r = cdb::rw(&t.cdb);
    let bs = lun.block_size() as u64;
    let bytchk = r.bytchk;
    t.xfer_len = match bytchk {
        1 => r.blocks as u64 * bs,
        3 => bs,
        _ => 0,
    };
    if bytchk == 2 {
        return fail(cmd, Sense::invalid_cdb_field(1, Some(2)));
    }
    match check_rw(lun, t.cdb[0], &r, limits::max_transfer_blocks(lun)) {
        Err(s) => return fail(cmd, s),
        Ok(false) => return good(cmd),
        Ok(true) => {}
    }
    let blocks = r.blocks as u64;
    read_then(port, cmd, r.lba, blocks, move |mut cmd, medium| {
        let t = cmd.task();
        let total = (blocks * bs) as usize;
        match bytchk {
            0 => {}
            1 => {
                let len = total.min(t.data_len);
                if let Some(off) = first_difference(&medium, &t.bufs, 0, len) {
                    t.fail(Sense::miscompare(off as u64));
                }
            }
            _ => {
                let one = bs as usize;
                if t.data_len >= one {
                    for i in 0..blocks as usize {
                        let mut m = vec![0u8; one];
                        copy_from(&medium, i * one, &mut m);
                        let mut d = vec![0u8; one];
                        copy_from(&t.bufs, 0, &mut d);
                        if let Some(p) = m.iter().zip(&d).position(|(x, y)| x != y) {
                            t.fail(Sense::miscompare((i * one + p) as u64));
                            break;
                        }
                    }
                }
            }
        }
        cmd.complete();
    });
}

pub(super) fn orwrite<C: ScsiCommand>(port: &Rc<LunPort>, mut cmd: Box<C>) {
    let lun = port.lun().clone();
    let t = cmd.task();
    let r = cdb::rw(&t.cdb);
    let bs = lun.block_size() as u64;
    t.xfer_len = r.blocks as u64 * bs;
    match check_rw(&lun, t.cdb[0], &r, limits::max_transfer_blocks(&lun)) {
        Err(s) => return fail(cmd, s),
        Ok(false) => return good(cmd),
        Ok(true) => {}
    }
    if write_protected(&lun) {
        return fail(cmd, data_protect());
    }
    let blocks = (t.data_len as u64).min(t.xfer_len) / bs;
    if blocks == 0 {
        return good(cmd);
    }
    let port2 = port.clone();
    read_then(port, cmd, r.lba, blocks, move |mut cmd, mut medium| {
        let t = cmd.task();
        let mut off = 0;
        for m in medium.iter_mut() {
            let mut d = vec![0u8; m.len()];
            copy_from(&t.bufs, off, &mut d);
            for (x, y) in m.iter_mut().zip(&d) {
                *x |= *y;
            }
            off += m.len();
        }
        let lun = port2.lun().clone();
        lun.descriptor().write(port2.channel(), medium, r.lba, blocks, move |io: BdevIo| {
            apply_io_status(cmd.task(), &io, true);
            cmd.complete();
        });
    });
}

/// A COMPARE AND WRITE on its LU's home reactor: the outcome to report.
type CawResult = Result<(), Result<Sense, u8>>;

/// COMPARE AND WRITE queues per LU on the main reactor so that two of them
/// on the same LU never interleave, whichever sessions send them.
#[derive(Default)]
struct CawQueues {
    busy: RefCell<std::collections::HashMap<usize, std::collections::VecDeque<CawJob>>>,
}

struct CawJob {
    lun: Arc<Lun>,
    lba: u64,
    blocks: u64,
    data: Vec<u8>,
    reply: Box<dyn FnOnce(CawResult) + Send>,
}

const CAW_HOME: ReactorId = ReactorId(0);

fn caw_submit(job: CawJob) {
    let q = reactor::local::<CawQueues>().unwrap_or_else(|| {
        let q = Rc::new(CawQueues::default());
        reactor::set_local(q.clone());
        q
    });
    let key = Arc::as_ptr(&job.lun) as usize;
    let mut busy = q.busy.borrow_mut();
    match busy.get_mut(&key) {
        Some(waiting) => waiting.push_back(job),
        None => {
            busy.insert(key, Default::default());
            drop(busy);
            caw_run(job);
        }
    }
}

fn caw_next(key: usize) {
    let Some(q) = reactor::local::<CawQueues>() else { return };
    let next = {
        let mut busy = q.busy.borrow_mut();
        match busy.get_mut(&key).and_then(|w| w.pop_front()) {
            Some(j) => Some(j),
            None => {
                busy.remove(&key);
                None
            }
        }
    };
    if let Some(j) = next {
        caw_run(j);
    }
}

fn caw_run(job: CawJob) {
    let CawJob { lun, lba, blocks, data, reply } = job;
    let key = Arc::as_ptr(&lun) as usize;
    let ch = lun.descriptor().channel();
    let half = data.len() / 2;
    let mut bufs = Vec::new();
    if !alloc(half, &mut bufs) {
        reply(Err(Err(status::BUSY)));
        return caw_next(key);
    }
    let lun2 = lun.clone();
    // The channel is held until the write is done: let go with the read in
    // flight, it went (its requests drained by the backend) and the write
    // made another, for every command.
    let ch2 = ch.clone();
    lun.descriptor().read(&ch, bufs, lba, blocks, move |mut io: BdevIo| {
        let ch = ch2;
        if let Some(o) = io_outcome(io.status(), false) {
            reply(Err(o));
            return caw_next(key);
        }
        let medium = io.take_buffers();
        drop(io);
        let mut m = vec![0u8; half];
        copy_from(&medium, 0, &mut m);
        if let Some(off) = m.iter().zip(&data[..half]).position(|(x, y)| x != y) {
            reply(Err(Ok(Sense::miscompare(off as u64))));
            return caw_next(key);
        }
        let mut out = medium;
        let mut pos = half;
        for b in out.iter_mut() {
            let n = b.len();
            b.copy_from_slice(&data[pos..pos + n]);
            pos += n;
        }
        let held = ch.clone();
        lun2.descriptor().write(&ch, out, lba, blocks, move |io: BdevIo| {
            reply(match io_outcome(io.status(), true) {
                None => Ok(()),
                Some(o) => Err(o),
            });
            // (The next command on the LU, if any, takes the same channel.)
            caw_next(key);
            drop(held);
        });
    });
}

type CawWaiter = Box<dyn FnOnce(CawResult)>;

/// Commands waiting for their COMPARE AND WRITE outcome, on this reactor.
#[derive(Default)]
struct CawWaiting {
    next: std::cell::Cell<u64>,
    map: RefCell<std::collections::HashMap<u64, CawWaiter>>,
}

pub(super) fn compare_and_write<C: ScsiCommand>(port: &Rc<LunPort>, mut cmd: Box<C>) {
    let lun = port.lun().clone();
    let t = cmd.task();
    let lba = be64(&t.cdb, 2);
    let blocks = t.cdb[13] as u64;
    let bs = lun.block_size() as u64;
    t.xfer_len = 2 * blocks * bs;
    if t.cdb[1] >> 5 != 0 {
        return fail(cmd, Sense::invalid_cdb_field(1, Some(7)));
    }
    if let Err(s) = check_range(&lun, lba, blocks) {
        return fail(cmd, s);
    }
    if blocks == 0 && t.data_len == 0 {
        return good(cmd);
    }
    if blocks > limits::MAX_COMPARE_AND_WRITE as u64 {
        return fail(cmd, Sense::invalid_cdb_field(13, None));
    }
    if write_protected(&lun) {
        return fail(cmd, data_protect());
    }
    if t.data_len as u64 != t.xfer_len {
        // The data-out must hold exactly the verify and write blocks.
        return fail(cmd, Sense::invalid_cdb_field(13, None));
    }
    let mut data = vec![0u8; t.xfer_len as usize];
    copy_from(&t.bufs, 0, &mut data);
    t.drop_data();
    // Park the command here; the outcome comes back by message.
    let waiting = reactor::local::<CawWaiting>().unwrap_or_else(|| {
        let w = Rc::new(CawWaiting::default());
        reactor::set_local(w.clone());
        w
    });
    let id = waiting.next.get();
    waiting.next.set(id + 1);
    waiting.map.borrow_mut().insert(
        id,
        Box::new(move |res: CawResult| {
            let t = cmd.task();
            match res {
                Ok(()) => t.set_status(status::GOOD),
                Err(Ok(s)) => t.fail(s),
                Err(Err(st)) => t.set_status(st),
            }
            cmd.complete();
        }),
    );
    let me = reactor::current();
    let reply = Box::new(move |res: CawResult| {
        reactor::send_msg(me, move || {
            let f = reactor::local::<CawWaiting>().and_then(|w| w.map.borrow_mut().remove(&id));
            if let Some(f) = f {
                f(res);
            }
        });
    });
    reactor::send_msg(CAW_HOME, move || caw_submit(CawJob { lun, lba, blocks, data, reply }));
}

pub(super) fn write_same<C: ScsiCommand>(port: &Rc<LunPort>, mut cmd: Box<C>) {
    let lun = port.lun().clone();
    let t = cmd.task();
    let sixteen = t.cdb[0] == op::WRITE_SAME_16;
    let (lba, mut blocks) =
        if sixteen { (be64(&t.cdb, 2), be32(&t.cdb, 10) as u64) } else { (be32(&t.cdb, 2) as u64, be16(&t.cdb, 7) as u64) };
    let flags = t.cdb[1];
    let unmap = flags & 0x08 != 0;
    let ndob = sixteen && flags & 0x01 != 0;
    let bs = lun.block_size() as u64;
    t.xfer_len = if ndob { 0 } else { bs };
    if flags >> 5 != 0 {
        return fail(cmd, Sense::invalid_cdb_field(1, Some(7)));
    }
    if flags & 0x10 != 0 {
        // ANCHOR: anchored blocks are not offered.
        return fail(cmd, Sense::invalid_cdb_field(1, Some(4)));
    }
    if lba > lun.num_blocks() {
        return fail(cmd, Sense::lba_out_of_range());
    }
    if blocks == 0 {
        // WSNZ is 0: zero blocks means up to the end of the medium.
        blocks = lun.num_blocks() - lba;
    }
    if let Err(s) = check_range(&lun, lba, blocks) {
        return fail(cmd, s);
    }
    if blocks > limits::max_write_same_blocks(&lun) {
        return fail(cmd, Sense::invalid_cdb_field(if sixteen { 10 } else { 7 }, None));
    }
    if write_protected(&lun) {
        return fail(cmd, data_protect());
    }
    if !ndob && t.data_len as u64 != bs {
        // Exactly one block of data-out.
        return fail(cmd, Sense::illegal(Asc::INVALID_FIELD_IN_INFORMATION_UNIT));
    }
    let mut pattern = vec![0u8; bs as usize];
    if !ndob {
        copy_from(&t.bufs, 0, &mut pattern);
    }
    t.drop_data();
    if blocks == 0 {
        return good(cmd);
    }
    let zero = pattern.iter().all(|&b| b == 0);
    let bdev = lun.bdev().clone();
    // UNMAP set: deallocate (the blocks then read as zeroes, LBPRZ).
    if unmap && bdev.supports(IoType::Unmap) {
        return lun.descriptor().unmap(port.channel(), lba, blocks, move |io: BdevIo| {
            apply_io_status(cmd.task(), &io, true);
            cmd.complete();
        });
    }
    if zero && bdev.supports(IoType::WriteZeroes) {
        return lun.descriptor().write_zeroes(port.channel(), lba, blocks, move |io: BdevIo| {
            apply_io_status(cmd.task(), &io, true);
            cmd.complete();
        });
    }
    // Write the pattern in pieces, reusing one buffer.
    let chunk_blocks = (limits::PATTERN_CHUNK as u64 / bs).max(1);
    let mut bufs = Vec::new();
    let first = chunk_blocks.min(blocks);
    if !alloc((first * bs) as usize, &mut bufs) {
        return finish_status(cmd, status::BUSY);
    }
    for b in bufs.iter_mut() {
        for c in b.chunks_mut(bs as usize) {
            c.copy_from_slice(&pattern[..c.len()]);
        }
    }
    pattern_loop(port.clone(), cmd, bufs, lba, blocks, chunk_blocks);
}

fn pattern_loop<C: ScsiCommand>(port: Rc<LunPort>, cmd: Box<C>, mut bufs: Vec<DmaBuf>, lba: u64, left: u64, chunk: u64) {
    let n = chunk.min(left);
    let bs = port.lun().block_size() as usize;
    trim_to(&mut bufs, n as usize * bs);
    let lun = port.lun().clone();
    let ch = port.channel().clone();
    lun.descriptor().write(&ch, bufs, lba, n, move |mut io: BdevIo| {
        let mut cmd = cmd;
        if !apply_io_status(cmd.task(), &io, true) {
            return cmd.complete();
        }
        if left == n {
            return cmd.complete();
        }
        let bufs = io.take_buffers();
        drop(io);
        pattern_loop(port, cmd, bufs, lba + n, left - n, chunk);
    });
}

pub(super) fn unmap<C: ScsiCommand>(port: &Rc<LunPort>, mut cmd: Box<C>) {
    let lun = port.lun().clone();
    let t = cmd.task();
    let plen = be16(&t.cdb, 7) as usize;
    t.xfer_len = plen as u64;
    if t.cdb[1] & 0x01 != 0 {
        return fail(cmd, Sense::invalid_cdb_field(1, Some(0)));
    }
    if plen == 0 {
        return good(cmd);
    }
    if plen < 8 || t.data_len < plen.min(8) {
        return fail(cmd, Sense::illegal(Asc::PARAMETER_LIST_LENGTH_ERROR));
    }
    if write_protected(&lun) {
        return fail(cmd, data_protect());
    }
    let mut p = vec![0u8; plen.min(t.data_len)];
    copy_from(&t.bufs, 0, &mut p);
    let dlen = be16(&p, 2) as usize;
    if dlen % 16 != 0 || 8 + dlen > p.len() {
        return fail(cmd, Sense::illegal(Asc::PARAMETER_LIST_LENGTH_ERROR));
    }
    let count = dlen / 16;
    if count > limits::MAX_UNMAP_DESCRIPTORS as usize {
        return fail(cmd, Sense::invalid_param_field(2, None));
    }
    let mut ranges = Vec::with_capacity(count);
    for i in 0..count {
        let d = &p[8 + 16 * i..8 + 16 * (i + 1)];
        let (lba, n) = (be64(d, 0), be32(d, 8) as u64);
        if let Err(s) = check_range(&lun, lba, n) {
            return fail(cmd, s);
        }
        if n > limits::MAX_UNMAP_BLOCKS as u64 {
            return fail(cmd, Sense::invalid_param_field((8 + 16 * i + 8) as u16, None));
        }
        if n > 0 {
            ranges.push((lba, n));
        }
    }
    if !lun.bdev().supports(IoType::Unmap) {
        // Unmapping is advisory: nothing to release on a thick device.
        return good(cmd);
    }
    unmap_loop(port.clone(), cmd, ranges, 0);
}

fn unmap_loop<C: ScsiCommand>(port: Rc<LunPort>, cmd: Box<C>, ranges: Vec<(u64, u64)>, i: usize) {
    let Some(&(lba, n)) = ranges.get(i) else { return good(cmd) };
    let lun = port.lun().clone();
    let ch = port.channel().clone();
    lun.descriptor().unmap(&ch, lba, n, move |io: BdevIo| {
        let mut cmd = cmd;
        if !apply_io_status(cmd.task(), &io, true) {
            return cmd.complete();
        }
        drop(io);
        unmap_loop(port, cmd, ranges, i + 1);
    });
}

pub(super) fn sync_cache<C: ScsiCommand>(port: &Rc<LunPort>, mut cmd: Box<C>) {
    let lun = port.lun().clone();
    let t = cmd.task();
    let (lba, blocks) = if t.cdb[0] == op::SYNCHRONIZE_CACHE_16 {
        (be64(&t.cdb, 2), be32(&t.cdb, 10) as u64)
    } else {
        (be32(&t.cdb, 2) as u64, be16(&t.cdb, 7) as u64)
    };
    if let Err(s) = check_range(&lun, lba, blocks) {
        return fail(cmd, s);
    }
    if !lun.bdev().supports(IoType::Flush) {
        return good(cmd);
    }
    lun.descriptor().flush(port.channel(), lba, blocks, move |io: BdevIo| {
        apply_io_status(cmd.task(), &io, true);
        cmd.complete();
    });
}

pub(super) fn prefetch<C: ScsiCommand>(port: &Rc<LunPort>, mut cmd: Box<C>) {
    let lun = port.lun();
    let t = cmd.task();
    let (lba, blocks) = if t.cdb[0] == op::PRE_FETCH_16 {
        (be64(&t.cdb, 2), be32(&t.cdb, 10) as u64)
    } else {
        (be32(&t.cdb, 2) as u64, be16(&t.cdb, 7) as u64)
    };
    match check_range(lun, lba, blocks) {
        Err(s) => fail(cmd, s),
        // Nothing to stage: every block is as close as it gets.
        Ok(()) => good(cmd),
    }
}

/// GET LBA STATUS: blocks that read as zeroes on a LU with LBPRZ are
/// reported deallocated, others mapped.
pub(super) fn get_lba_status<C: ScsiCommand>(port: &Rc<LunPort>, mut cmd: Box<C>) {
    let lun = port.lun().clone();
    let t = cmd.task();
    let lba = be64(&t.cdb, 2);
    let alloc_len = be32(&t.cdb, 10) as usize;
    if lba >= lun.num_blocks() {
        return fail(cmd, Sense::lba_out_of_range());
    }
    if alloc_len == 0 {
        return good(cmd);
    }
    let bs = lun.block_size() as u64;
    let blocks = (lun.num_blocks() - lba).min((limits::PATTERN_CHUNK as u64 / bs).max(1));
    let thin = lun.thin();
    read_then(port, cmd, lba, blocks, move |mut cmd, medium| {
        let mut runs: Vec<(u64, u64, u8)> = Vec::new();
        let mut blk = vec![0u8; bs as usize];
        for i in 0..blocks {
            copy_from(&medium, (i * bs) as usize, &mut blk);
            let st = if thin && blk.iter().all(|&b| b == 0) { 1 } else { 0 };
            match runs.last_mut() {
                Some(r) if r.2 == st => r.1 += 1,
                _ => runs.push((lba + i, 1, st)),
            }
        }
        let mut out = Vec::with_capacity(8 + 16 * runs.len());
        out.extend_from_slice(&((4 + 16 * runs.len()) as u32).to_be_bytes());
        out.extend_from_slice(&[0; 4]);
        for (l, n, st) in runs {
            out.extend_from_slice(&l.to_be_bytes());
            out.extend_from_slice(&(n as u32).to_be_bytes());
            out.extend_from_slice(&[st, 0, 0, 0]);
        }
        let t = cmd.task();
        if !data::put_data(t, &out, alloc_len) {
            t.set_status(status::BUSY);
        }
        cmd.complete();
    });
}
