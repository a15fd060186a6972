//! `resv_ptpl`: the reservation state files (`ptpl_file`, SPDK's JSON
//! format) the NVMe-oF target loads when a namespace is added
//! (`pollux_nvmf::resv::parse`).
//!
//! Input: the file's text (input that is not UTF-8 is skipped), read for
//! one fixed bdev UUID.
//!
//! Invariants: a state taken has PTPL on, at most `MAX_REGISTRANTS`
//! registrants, each host once; a reservation has a type 1 to 6 and a
//! holder among the registrants; written back (`render`) and read again,
//! it is the same state.

use pollux_nvmf::resv::{self, MAX_REGISTRANTS};

const BDEV: uuid::Uuid = uuid::Uuid::from_u128(0x5d8a6a54_0c1b_4e2f_9a3b_4c5d6e7f8091);

pub fn resv_ptpl(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(Some(s)) = resv::parse(text, &BDEV) else { return };
    assert!(s.ptpl);
    assert!(s.regs.len() <= MAX_REGISTRANTS);
    for (i, r) in s.regs.iter().enumerate() {
        assert!(s.regs[..i].iter().all(|x| x.hostid != r.hostid), "a host registered twice");
    }
    if s.rtype != 0 {
        assert!((1..=6).contains(&s.rtype));
        assert!(s.holder.is_some_and(|h| s.is_registrant(&h)), "a holder that is not registered");
    } else {
        assert!(s.holder.is_none());
    }
    let again = resv::parse(&resv::render(&s, &BDEV), &BDEV).expect("its own output parses").expect("PTPL on");
    assert_eq!(again, s);
}
