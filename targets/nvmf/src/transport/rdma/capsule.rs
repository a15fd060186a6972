//! What an NVMe/RDMA command capsule asks for: its command, the direction
//! of its data, and where that data is (the host's memory, named by a
//! keyed SGL, or the capsule itself). Pure, so that it can be fuzzed
//! (`tests/fuzz`, target `nvmf_rdma_capsule`) without RDMA.

use pollux_nvme_spec::cmd::{Command, SglSubtype, SglType};
use zerocopy::FromBytes;

use crate::io::{self as nvm, DataDir};
use crate::status::{self, Status};
use crate::wire::fabrics;

/// The command part of a capsule.
pub const COMMAND_LEN: usize = 64;

/// Where a command's data is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Data {
    None,
    /// In the host's memory: RDMA READ (to the controller) or WRITE (to the
    /// host) at `addr` with `key`.
    Keyed {
        addr: u64,
        key: u32,
        len: u32,
    },
    /// In the capsule, `off` bytes after the command.
    InCapsule {
        off: usize,
        len: u32,
    },
}

/// A capsule's command and data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    pub dir: DataDir,
    pub data: Data,
}

impl Plan {
    pub fn len(&self) -> u32 {
        match self.data {
            Data::None => 0,
            Data::Keyed { len, .. } | Data::InCapsule { len, .. } => len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Read a received capsule. None: not a capsule (shorter than a command;
/// the queue pair ends). Otherwise the command, and its plan or
/// the status to answer it with (data longer than `max_len`, an SGL type
/// this transport does not take, in-capsule data outside the capsule).
pub fn read(capsule: &[u8], max_len: usize) -> Option<(Command, Result<Plan, Status>)> {
    let cmd = Command::read_from_bytes(capsule.get(..COMMAND_LEN)?).ok()?;
    let icd_len = capsule.len() - COMMAND_LEN;
    // Fabrics commands: the direction is in the fctype (byte 4).
    let dir = if cmd.opcode == fabrics::OPCODE { nvm::data_dir(capsule[4]) } else { nvm::data_dir(cmd.opcode) };
    let sgl = cmd.dptr.sgl();
    let keyed = sgl.kind() == Ok(SglType::KeyedDataBlock);
    let len = if keyed { sgl.keyed_length() } else { sgl.length.get() };
    if len == 0 || dir == DataDir::None {
        return Some((cmd, Ok(Plan { dir: DataDir::None, data: Data::None })));
    }
    // The descriptor first: a keyed data block (subtype 0h, or Fh:
    // invalidate the key after) or in-capsule data at an offset.
    let in_capsule = sgl.kind() == Ok(SglType::DataBlock) && sgl.subtype() == Ok(SglSubtype::Offset);
    let valid_keyed = keyed && matches!(sgl.id & 0xf, 0x0 | 0xf);
    let plan = if !(in_capsule || valid_keyed) {
        Err(status::SGL_DESCRIPTOR_TYPE_INVALID)
    } else if len as usize > max_len {
        Err(status::DATA_SGL_LENGTH_INVALID)
    } else if keyed {
        Ok(Plan { dir, data: Data::Keyed { addr: sgl.address.get(), key: sgl.key(), len } })
    } else {
        let off = sgl.address.get();
        if dir != DataDir::HostToController || off > icd_len as u64 {
            Err(status::SGL_OFFSET_INVALID)
        } else if off + u64::from(len) > icd_len as u64 {
            Err(status::DATA_SGL_LENGTH_INVALID)
        } else {
            Ok(Plan { dir, data: Data::InCapsule { off: off as usize, len } })
        }
    };
    Some((cmd, plan))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capsule(opcode: u8, sgl_id: u8, addr: u64, len_key: [u8; 7], icd: usize) -> Vec<u8> {
        let mut c = vec![0u8; COMMAND_LEN + icd];
        c[0] = opcode;
        c[24..32].copy_from_slice(&addr.to_le_bytes());
        c[32..39].copy_from_slice(&len_key);
        c[39] = sgl_id;
        c
    }

    fn keyed(len: u32, key: u32) -> [u8; 7] {
        let mut b = [0u8; 7];
        b[..3].copy_from_slice(&len.to_le_bytes()[..3]);
        b[3..].copy_from_slice(&key.to_le_bytes());
        b
    }

    fn plain(len: u32) -> [u8; 7] {
        let mut b = [0u8; 7];
        b[..4].copy_from_slice(&len.to_le_bytes());
        b
    }

    #[test]
    fn keyed_in_capsule_and_refused_descriptors() {
        // A write (opcode 1) with a keyed SGL, and with invalidation (Fh).
        let (_, p) = read(&capsule(0x01, 0x40, 0x1000, keyed(4096, 0xabcd), 0), 131072).unwrap();
        assert_eq!(p, Ok(Plan { dir: DataDir::HostToController, data: Data::Keyed { addr: 0x1000, key: 0xabcd, len: 4096 } }));
        let (_, p) = read(&capsule(0x02, 0x4f, 0x2000, keyed(512, 7), 0), 131072).unwrap();
        assert_eq!(p.unwrap().data, Data::Keyed { addr: 0x2000, key: 7, len: 512 });
        // In-capsule data at offset 0 of 4096 bytes.
        let (_, p) = read(&capsule(0x01, 0x01, 0, plain(4096), 4096), 131072).unwrap();
        assert_eq!(p.unwrap().data, Data::InCapsule { off: 0, len: 4096 });
        // In-capsule data beyond the capsule, at an offset past it, or for a read.
        assert_eq!(read(&capsule(0x01, 0x01, 0, plain(4097), 4096), 131072).unwrap().1, Err(status::DATA_SGL_LENGTH_INVALID));
        assert_eq!(read(&capsule(0x01, 0x01, 5000, plain(16), 4096), 131072).unwrap().1, Err(status::SGL_OFFSET_INVALID));
        assert_eq!(read(&capsule(0x02, 0x01, 0, plain(16), 4096), 131072).unwrap().1, Err(status::SGL_OFFSET_INVALID));
        // Longer than the largest transfer; a type this transport does not take.
        assert_eq!(read(&capsule(0x01, 0x40, 0, keyed(0xff_ffff, 1), 0), 131072).unwrap().1, Err(status::DATA_SGL_LENGTH_INVALID));
        assert_eq!(read(&capsule(0x01, 0x10, 0, plain(16), 0), 131072).unwrap().1, Err(status::SGL_DESCRIPTOR_TYPE_INVALID));
        assert_eq!(read(&capsule(0x01, 0x5a, 0, plain(16), 0), 131072).unwrap().1, Err(status::SGL_DESCRIPTOR_TYPE_INVALID));
        // No data: a flush (opcode 0), or a zero length.
        assert_eq!(read(&capsule(0x00, 0x40, 0, keyed(0, 0), 0), 131072).unwrap().1.unwrap().data, Data::None);
        // Not a capsule.
        assert!(read(&[0u8; 63], 131072).is_none());
    }
}
