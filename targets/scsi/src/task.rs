//! A SCSI command on its way through a logical unit: the CDB and the data
//! the transport received, and, once executed, the status, sense data and
//! data to return.
//!
//! Transports keep tasks in a free list and reuse them (and their buffer
//! vector), so the I/O path does not allocate. A transport wraps a [`Task`]
//! in its own command type and hands the box to [`crate::LunPort::execute`].

use pollux_core::dma::{DmaBuf, Lent};

use crate::sense::{SENSE_MAX, Sense, status};

/// Which way data moves, as the transport was told.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DataDir {
    #[default]
    None,
    /// Data-in: from the target to the initiator.
    Read,
    /// Data-out: from the initiator to the target.
    Write,
    Both,
}

/// One SCSI command.
pub struct Task {
    pub cdb: [u8; 16],
    /// The transport's expected data transfer length (iSCSI EDTL), bytes.
    pub expected_len: u32,
    pub dir: DataDir,
    /// Data-out received (write commands), or data-in produced (reads).
    pub bufs: Vec<DmaBuf>,
    /// Data-in a bdev lent instead of filling `bufs` (a plain read from a
    /// RAM disk, see `dma::Lent`): when set, it is the data and `bufs` is
    /// empty.
    pub lent: Option<Lent>,
    /// Valid bytes in `bufs` (or `lent`).
    pub data_len: usize,
    /// Set by the transport: read into `bufs` even from a bdev that lends
    /// (the transport would copy lent memory anyway, for a data digest
    /// over the very bytes sent).
    pub no_lend: bool,
    /// Set by the logical unit: the length the command itself asks to
    /// transfer (from its CDB), for the transport's residual count.
    pub xfer_len: u64,
    pub status: u8,
    sense: [u8; SENSE_MAX],
    sense_len: u8,
    /// The logical unit wants descriptor-format sense (D_SENSE).
    pub(crate) descriptor_sense: bool,
}

impl Default for Task {
    fn default() -> Self {
        Task::new()
    }
}

impl std::fmt::Debug for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Task")
            .field("opcode", &format_args!("{:#04x}", self.cdb[0]))
            .field("expected_len", &self.expected_len)
            .field("data_len", &self.data_len)
            .field("status", &self.status)
            .finish()
    }
}

impl Task {
    pub fn new() -> Task {
        Task {
            cdb: [0; 16],
            expected_len: 0,
            dir: DataDir::None,
            bufs: Vec::with_capacity(8),
            lent: None,
            data_len: 0,
            no_lend: false,
            xfer_len: 0,
            status: status::GOOD,
            sense: [0; SENSE_MAX],
            sense_len: 0,
            descriptor_sense: false,
        }
    }

    /// Make the task ready for a new command (keeps its allocations).
    pub fn reset(&mut self, cdb: &[u8], expected_len: u32, dir: DataDir) {
        let n = cdb.len().min(16);
        self.cdb = [0; 16];
        self.cdb[..n].copy_from_slice(&cdb[..n]);
        self.expected_len = expected_len;
        self.dir = dir;
        self.bufs.clear();
        self.lent = None;
        self.data_len = 0;
        self.no_lend = false;
        self.xfer_len = 0;
        self.status = status::GOOD;
        self.sense_len = 0;
        self.descriptor_sense = false;
    }

    pub fn opcode(&self) -> u8 {
        self.cdb[0]
    }

    /// Let go of the data buffers (consumed, or handed to a bdev): no valid
    /// bytes remain, so a transport never answers with data from them.
    pub fn drop_data(&mut self) {
        self.bufs.clear();
        self.lent = None;
        self.data_len = 0;
    }

    /// The sense data to return (empty unless CHECK CONDITION).
    pub fn sense(&self) -> &[u8] {
        &self.sense[..self.sense_len as usize]
    }

    /// End with CHECK CONDITION and this sense.
    pub fn fail(&mut self, s: Sense) {
        self.status = status::CHECK_CONDITION;
        self.sense_len = s.encode(self.descriptor_sense, &mut self.sense) as u8;
    }

    /// End with a status that carries no sense data.
    pub fn set_status(&mut self, st: u8) {
        self.status = st;
        self.sense_len = 0;
    }

    pub fn is_good(&self) -> bool {
        self.status == status::GOOD
    }

    /// The data-in as one contiguous copy (tests, small control data).
    pub fn data_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.data_len);
        if let Some(l) = &self.lent {
            l.append_to(0, self.data_len.min(l.len()), &mut v);
            return v;
        }
        let mut left = self.data_len;
        for b in &self.bufs {
            let n = b.len().min(left);
            v.extend_from_slice(&b[..n]);
            left -= n;
        }
        v
    }

    /// Copy the first `out.len()` bytes of data-out into `out`; returns how
    /// many were there.
    pub fn copy_data_out(&self, out: &mut [u8]) -> usize {
        let mut done = 0;
        let want = out.len().min(self.data_len);
        for b in &self.bufs {
            if done == want {
                break;
            }
            let n = b.len().min(want - done);
            out[done..done + n].copy_from_slice(&b[..n]);
            done += n;
        }
        done
    }
}
