//! `scsi_cdb`: SCSI command execution (`pollux_scsi::LunPort::execute`):
//! CDBs, parameter-list data and allocation lengths, against two malloc LUs
//! seen by two initiators (I_T nexuses), so reservations, unit attentions
//! and copies between LUs are reachable.
//!
//! Input: records `[flags][cdb: 16][expected length: u24 LE][data length:
//! u16 LE][data-out]`. Flags: bit 0 the second initiator, bit 1 LU 1
//! (4 KiB blocks) instead of LU 0 (512-byte blocks), bits 2-3 the data
//! direction the transport states (none, in, out, both); the data-out goes
//! with out and both only.
//!
//! Invariants: every command completes exactly once; CHECK CONDITION comes
//! with well-formed sense data and no other status carries sense; the
//! data-in of a read or bidirectional command is in its buffers.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use pollux_core::dma::{self, DmaBuf};
use pollux_core::reactor::Harness;
use pollux_scsi::sense::status;
use pollux_scsi::{DataDir, Device, LunPort, Nexus, ScsiCommand, Task};

use crate::common::{self, Blank, Input};

const LUS: [(&str, u32, u64); 2] = [("CdbMalloc0", 512, 2048), ("CdbMalloc1", 4096, 256)];
const RECORDS_MAX: usize = 64;

type Done = Rc<RefCell<Vec<Finished>>>;

struct Finished {
    status: u8,
    sense: Vec<u8>,
    data_len: usize,
    buf_len: usize,
}

struct Cmd {
    task: Task,
    done: Done,
}

impl ScsiCommand for Cmd {
    fn task(&mut self) -> &mut Task {
        &mut self.task
    }

    fn complete(self: Box<Self>) {
        let t = &self.task;
        let buf_len = t.bufs.iter().map(|b| b.len()).sum::<usize>() + t.lent.as_ref().map_or(0, |l| l.len());
        self.done.borrow_mut().push(Finished { status: t.status, sense: t.sense().to_vec(), data_len: t.data_len, buf_len });
    }
}

struct Rig {
    h: Harness,
    bdevs: Vec<Blank>,
    nexus: [Arc<Nexus>; 2],
}

impl Rig {
    fn new() -> Rig {
        common::init_process();
        let h = Harness::new(1);
        let bdevs = common::malloc_blanks(&h, &LUS);
        let nexus = [
            Nexus::new("iqn.2025-01.io.pollux:a", "iqn.2025-01.io.pollux:a,i,0x000000000001", "iqn.2025-01.io.pollux:t,t,0x0001", 1),
            Nexus::new("iqn.2025-01.io.pollux:b", "iqn.2025-01.io.pollux:b,i,0x000000000002", "iqn.2025-01.io.pollux:t,t,0x0002", 2),
        ];
        Rig { h, bdevs, nexus }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let bdevs = std::mem::take(&mut self.bdevs);
        common::close_blanks(&self.h, bdevs, || {});
    }
}

thread_local! {
    static RIG: RefCell<Option<Rig>> = const { RefCell::new(None) };
}

pub fn scsi_cdb(data: &[u8]) {
    common::with_rig(&RIG, Rig::new, |rig| run(rig, data));
}

fn run(rig: &Rig, data: &[u8]) {
    let h = &rig.h;
    // Fresh LUs (no reservation, mode page or unit attention of an earlier
    // input) on zeroed bdevs.
    let ports: Vec<Rc<LunPort>> = h.on(0, || {
        for b in &rig.bdevs {
            b.zero();
        }
        let dev = Device::new("iqn.2025-01.io.pollux:t");
        // The nexuses' relative ports (REGISTER AND MOVE takes only these).
        dev.set_ports([1, 2]);
        let luns: Vec<_> = LUS.iter().enumerate().map(|(i, (name, ..))| dev.add_lun(i as u64, name).expect("LU")).collect();
        let mut ports = Vec::new();
        for n in &rig.nexus {
            for l in &luns {
                ports.push(LunPort::new(l.clone(), n.clone()));
            }
        }
        ports
    });
    common::settle(h);
    let done: Done = Rc::default();
    let mut inp = Input::new(data);
    let mut n = 0;
    while !inp.is_empty() && n < RECORDS_MAX {
        n += 1;
        let flags = inp.u8();
        let cdb = inp.array::<16>();
        let expected = u32::from_le_bytes([inp.u8(), inp.u8(), inp.u8(), 0]);
        let len = inp.u16() as usize;
        let out = inp.bytes(len).to_vec();
        let port = ports[((flags & 1) * 2 + ((flags >> 1) & 1)) as usize].clone();
        let dir = [DataDir::None, DataDir::Read, DataDir::Write, DataDir::Both][((flags >> 2) & 3) as usize];
        let d = done.clone();
        h.on(0, move || {
            let mut task = Task::new();
            task.reset(&cdb, expected, dir);
            // Data-out comes with commands the transport says write (an
            // iSCSI command without the W bit carries none).
            if !out.is_empty() && matches!(dir, DataDir::Write | DataDir::Both) {
                task.bufs = data_out(&out);
                task.data_len = out.len();
            }
            port.execute(Box::new(Cmd { task, done: d }));
        });
        common::settle(h);
        let f = done.borrow_mut().drain(..).collect::<Vec<_>>();
        assert_eq!(f.len(), 1, "CDB {cdb:02x?}: {} completions", f.len());
        check(&cdb, dir, &f[0]);
    }
    h.on(0, move || drop(ports));
    common::settle(h);
}

/// Data-out in pool buffers, as a transport receives it.
fn data_out(data: &[u8]) -> Vec<DmaBuf> {
    let pool = dma::pool().expect("buffer pool");
    let piece = pool.large_size().max(4096);
    data.chunks(piece)
        .map(|c| {
            let mut b = match pool.get(c.len()) {
                Some(mut b) => {
                    b.set_len(c.len());
                    b
                }
                None => DmaBuf::alloc(c.len()).expect("DMA buffer"),
            };
            b.copy_from_slice(c);
            b
        })
        .collect()
}

fn check(cdb: &[u8; 16], dir: DataDir, f: &Finished) {
    if f.status == status::CHECK_CONDITION {
        let s = &f.sense;
        assert!(s.len() >= 8, "CDB {cdb:02x?}: CHECK CONDITION with {} bytes of sense", s.len());
        assert!(matches!(s[0] & 0x7f, 0x70 | 0x72), "CDB {cdb:02x?}: sense response code {:#04x}", s[0]);
        assert_eq!(s.len(), 8 + s[7] as usize, "CDB {cdb:02x?}: additional sense length {} in {} bytes", s[7], s.len());
    } else {
        assert!(f.sense.is_empty(), "CDB {cdb:02x?}: status {:#04x} with sense data", f.status);
    }
    // What a transport sends as data-in (for a read, or a bidirectional
    // command) is in the buffers, or in memory the bdev lent.
    if matches!(dir, DataDir::Read | DataDir::Both) {
        assert!(f.data_len <= f.buf_len, "CDB {cdb:02x?}: {} bytes of data-in in {} bytes of buffers", f.data_len, f.buf_len);
    }
}
