//! `nvmf_host_logs`: the log pages the NVMe-oF host parses from what a
//! controller sends: the ANA log (`pollux_nvmf_host::ctrlr::parse_ana_log`),
//! the discovery log (`pollux_nvmf_host::discovery::parse_log`) and the
//! namespace identification descriptor list
//! (`pollux_nvme_spec::identify::parse_namespace_ids`).
//!
//! Input: byte 0 picks the page (3 mod 4: descriptors; else even: ANA,
//! odd: discovery), the rest is the page as the controller sent it.
//!
//! Invariants: ANA: the groups taken fit the page (16 bytes of header, 32
//! per group descriptor, 4 per namespace id) and there are as many as the
//! header counts, each state four bits; discovery: the entries taken are
//! the header's count, at most `MAX_RECORDS`, and fit the page;
//! descriptors: every identifier taken is in the page, after a header of
//! its type and length.

use pollux_nvme_spec::identify::{nidt, parse_namespace_ids};
use pollux_nvmf_host::ctrlr::parse_ana_log;
use pollux_nvmf_host::discovery::{MAX_RECORDS, parse_log};

pub fn nvmf_host_logs(data: &[u8]) {
    let Some((&pick, page)) = data.split_first() else { return };
    if pick % 4 == 3 {
        let ids = parse_namespace_ids(page);
        let found = |t: u8, v: &[u8]| {
            v.iter().all(|b| *b == 0) || page.windows(4 + v.len()).any(|w| w[0] == t && usize::from(w[1]) == v.len() && &w[4..] == v)
        };
        assert!(found(nidt::EUI64, &ids.eui64) && found(nidt::NGUID, &ids.nguid) && found(nidt::UUID, &ids.uuid), "{ids:?}");
    } else if pick % 2 == 0 {
        if let Some(groups) = parse_ana_log(page) {
            let ngrps = u16::from_le_bytes([page[8], page[9]]) as usize;
            assert_eq!(groups.len(), ngrps);
            let used = 16 + groups.iter().map(|(_, _, nsids)| 32 + 4 * nsids.len()).sum::<usize>();
            assert!(used <= page.len(), "{used} bytes of groups in a {}-byte page", page.len());
            assert!(groups.iter().all(|(_, st, _)| *st <= 0xf));
        }
    } else if let Some(log) = parse_log(page) {
        let numrec = u64::from_le_bytes(page[8..16].try_into().expect("8 bytes"));
        assert_eq!(log.entries.len() as u64, numrec);
        assert!(numrec <= MAX_RECORDS);
        assert!(1024 * (1 + log.entries.len()) <= page.len());
    }
}
