//! `nvmf_rdma_capsule`: how the NVMe/RDMA target reads a received command
//! capsule (`pollux_nvmf::transport::rdma::capsule::read`): the command,
//! its data direction, and where its data is (a keyed SGL or in-capsule
//! data at an offset), or the NVMe status a bad descriptor gets.
//!
//! Input: the capsule as received (64 bytes of command, then in-capsule
//! data); the largest transfer is 128 KiB.
//!
//! The same bytes also go through the NVMe/RDMA connection private data
//! readers (`pollux_nvme_spec::rdma`: a host's request, a controller's
//! accept and reject), which read what a peer sent in its CM message.
//!
//! Invariants: no panic; a request read writes back to the same fields; an
//! accept or reject reads only with record format 0; a capsule shorter than
//! a command is refused and a longer one read; in-capsule data lies inside the capsule; no transfer
//! is longer than the largest; data has a direction and a direction has
//! data; only writes carry in-capsule data.

use pollux_nvmf::io::DataDir;
use pollux_nvmf::transport::rdma::capsule::{self, Data};

const MAX: usize = 128 * 1024;

pub fn nvmf_rdma_capsule(data: &[u8]) {
    private_data(data);
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

fn private_data(data: &[u8]) {
    use pollux_nvme_spec::rdma;
    if let Some(r) = rdma::Request::parse(data) {
        assert!(data.len() >= rdma::REQUEST_LEN);
        assert_eq!(rdma::Request::parse(&r.to_bytes()), Some(r));
        assert_eq!(&r.to_bytes()[..rdma::REQUEST_LEN], &data[..rdma::REQUEST_LEN]);
    } else {
        assert!(data.len() < rdma::REQUEST_LEN);
    }
    if let Some(c) = rdma::parse_accept(data) {
        assert_eq!(rdma::parse_accept(&rdma::accept(c)), Some(c));
        assert_eq!(&data[..2], &[0, 0]);
    }
    if let Some(sts) = rdma::parse_reject(data) {
        assert_eq!(rdma::parse_reject(&rdma::reject_data(sts)), Some(sts));
        let _ = rdma::reject::name(sts);
    }
}
