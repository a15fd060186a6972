//! `nvmf_rdma_capsule`: how the NVMe/RDMA target reads a received command
//! capsule (`pollux_nvmf::transport::rdma::capsule::read`): the command,
//! its data direction, and where its data is (a keyed SGL or in-capsule
//! data at an offset), or the NVMe status a bad descriptor gets.
//!
//! Input: the capsule as received (64 bytes of command, then in-capsule
//! data); the largest transfer is 128 KiB.
//!
//! Invariants: no panic; a capsule shorter than a command is refused and a
//! longer one read; in-capsule data lies inside the capsule; no transfer
//! is longer than the largest; data has a direction and a direction has
//! data; only writes carry in-capsule data.

use pollux_nvmf::io::DataDir;
use pollux_nvmf::transport::rdma::capsule::{self, Data};

const MAX: usize = 128 * 1024;

pub fn nvmf_rdma_capsule(data: &[u8]) {
    let Some((_, plan)) = capsule::read(data, MAX) else {
        assert!(data.len() < capsule::COMMAND_LEN, "a {}-byte capsule refused", data.len());
        return;
    };
    assert!(data.len() >= capsule::COMMAND_LEN);
    let Ok(p) = plan else { return };
    assert!(p.len() as usize <= MAX, "{p:?}");
    assert_eq!(p.dir == DataDir::None, p.data == Data::None, "{p:?}");
    match p.data {
        Data::InCapsule { off, len } => {
            assert!(off + len as usize <= data.len() - capsule::COMMAND_LEN, "{p:?} in {} bytes", data.len());
            assert_eq!(p.dir, DataDir::HostToController, "{p:?}");
            assert!(len > 0);
        }
        Data::Keyed { len, .. } => assert!(len > 0),
        Data::None => {}
    }
}
