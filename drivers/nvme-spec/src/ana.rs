//! Asymmetric Namespace Access (NVMe Base 2.0, 8.1.1): the states a
//! namespace has through one controller, the ANA log page (0Ch) that
//! reports them per ANA group, and the identify and event values that go
//! with it. The target builds the page ([`build_log`]); hosts parse it
//! ([`parse_log`]).

/// ANA states, as in the group descriptor's state field.
pub const OPTIMIZED: u8 = 0x1;
pub const NON_OPTIMIZED: u8 = 0x2;
pub const INACCESSIBLE: u8 = 0x3;
pub const PERSISTENT_LOSS: u8 = 0x4;
pub const CHANGE: u8 = 0xf;

/// SPDK's names for the states (RPC parameters and output).
pub fn name(state: u8) -> &'static str {
    match state {
        OPTIMIZED => "optimized",
        NON_OPTIMIZED => "non_optimized",
        INACCESSIBLE => "inaccessible",
        PERSISTENT_LOSS => "persistent_loss",
        CHANGE => "change",
        _ => "unknown",
    }
}

/// The state with SPDK's name `s`.
pub fn from_name(s: &str) -> Option<u8> {
    [OPTIMIZED, NON_OPTIMIZED, INACCESSIBLE, PERSISTENT_LOSS, CHANGE].into_iter().find(|&st| name(st) == s)
}

/// Whether I/O may run through a path in this state (optimized and
/// non-optimized paths take commands; the others answer with a path status).
pub fn accessible(state: u8) -> bool {
    matches!(state, OPTIMIZED | NON_OPTIMIZED)
}

/// The path related status code (SCT 3h) a command gets through a path in
/// this state, `None` where commands run.
pub fn path_status(state: u8) -> Option<u8> {
    match state {
        PERSISTENT_LOSS => Some(0x01),
        INACCESSIBLE => Some(0x02),
        CHANGE => Some(0x03),
        _ => None,
    }
}

/// Identify Controller CMIC bit 3: ANA reporting supported.
pub const CMIC_ANA_REPORTING: u8 = 1 << 3;
/// Identify Controller OAES bit 11: ANA change notices.
pub const OAES_ANA_CHANGE: u32 = 1 << 11;
/// Identify Controller ANACAP bits: the states reported, and bit 6,
/// "the ANA group of a namespace does not change while it is attached".
pub mod anacap {
    pub const OPTIMIZED: u8 = 1 << 0;
    pub const NON_OPTIMIZED: u8 = 1 << 1;
    pub const INACCESSIBLE: u8 = 1 << 2;
    pub const PERSISTENT_LOSS: u8 = 1 << 3;
    pub const CHANGE: u8 = 1 << 4;
    pub const GRPID_NO_CHANGE: u8 = 1 << 6;
}
/// Asynchronous event information (type notice): ANA change.
pub const AEN_INFO_ANA_CHANGE: u32 = 0x03;
/// Get Log Page CDW10 LSP bit 0 for this page: Return Groups Only (no
/// namespace lists in the descriptors).
pub const LSP_RGO: u32 = 1 << 8;

/// Bytes of the page header (change count, descriptor count).
pub const HEADER_LEN: usize = 16;
/// Bytes of a group descriptor before its namespace list.
pub const GROUP_DESC_LEN: usize = 32;

/// One ANA group as the page reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    pub id: u32,
    pub state: u8,
    /// The group's change count (0: not reported).
    pub change_count: u64,
    pub nsids: Vec<u32>,
}

/// The ANA log page: header with `change_count`, one descriptor per group
/// (in the order given), each followed by its namespace ids unless
/// `groups_only` (RGO).
pub fn build_log(change_count: u64, groups: &[Group], groups_only: bool) -> Vec<u8> {
    let nsids: usize = if groups_only { 0 } else { groups.iter().map(|g| g.nsids.len()).sum() };
    let mut p = Vec::with_capacity(HEADER_LEN + groups.len() * GROUP_DESC_LEN + 4 * nsids);
    p.extend_from_slice(&change_count.to_le_bytes());
    p.extend_from_slice(&(groups.len() as u16).to_le_bytes());
    p.resize(HEADER_LEN, 0);
    for g in groups {
        let n = if groups_only { 0 } else { g.nsids.len() };
        let at = p.len();
        p.extend_from_slice(&g.id.to_le_bytes());
        p.extend_from_slice(&(n as u32).to_le_bytes());
        p.extend_from_slice(&g.change_count.to_le_bytes());
        p.push(g.state & 0xf);
        p.resize(at + GROUP_DESC_LEN, 0);
        for id in &g.nsids[..n] {
            p.extend_from_slice(&id.to_le_bytes());
        }
    }
    p
}

/// The groups of an ANA log page: (group id, state, namespace ids).
/// `None` when the page is shorter than its header or than what it says
/// it holds.
pub fn parse_log(log: &[u8]) -> Option<Vec<(u32, u8, Vec<u32>)>> {
    if log.len() < HEADER_LEN {
        return None;
    }
    let u32_at = |o: usize| log.get(o..o + 4).map(|b| u32::from_le_bytes(b.try_into().expect("4")));
    let ngrps = u16::from_le_bytes(log[8..10].try_into().expect("2 bytes"));
    let mut at = HEADER_LEN;
    let mut out = Vec::with_capacity(usize::from(ngrps));
    for _ in 0..ngrps {
        let grp = u32_at(at)?;
        let n = u32_at(at + 4)? as usize;
        let state = *log.get(at + 16)? & 0xf;
        at += GROUP_DESC_LEN;
        let end = at.checked_add(n.checked_mul(4)?)?;
        if end > log.len() {
            return None;
        }
        let nsids = (0..n).map(|k| u32_at(at + 4 * k).expect("checked")).collect();
        at = end;
        out.push((grp, state, nsids));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_built_log_parses_back_with_and_without_namespace_lists() {
        let groups = [
            Group { id: 1, state: OPTIMIZED, change_count: 3, nsids: vec![1, 2] },
            Group { id: 4, state: INACCESSIBLE, change_count: 0, nsids: vec![3] },
        ];
        let l = build_log(7, &groups, false);
        assert_eq!(l.len(), 16 + 2 * 32 + 3 * 4);
        assert_eq!(u64::from_le_bytes(l[0..8].try_into().unwrap()), 7);
        assert_eq!(u64::from_le_bytes(l[24..32].try_into().unwrap()), 3, "group change count at 8 of the descriptor");
        assert_eq!(parse_log(&l), Some(vec![(1, OPTIMIZED, vec![1, 2]), (4, INACCESSIBLE, vec![3])]));
        let rgo = build_log(7, &groups, true);
        assert_eq!(rgo.len(), 16 + 2 * 32);
        assert_eq!(parse_log(&rgo), Some(vec![(1, OPTIMIZED, vec![]), (4, INACCESSIBLE, vec![])]));
        assert_eq!(parse_log(&l[..l.len() - 1]), None);
        assert_eq!(parse_log(&build_log(0, &[], false)), Some(vec![]));
        // A page cut inside its header is malformed even when the group
        // count it shows is zero (found by the nvmf_host_logs fuzz target:
        // 10 bytes, no groups, taken as a valid empty log).
        assert_eq!(parse_log(&build_log(0, &[], false)[..10]), None);
        assert_eq!(parse_log(&build_log(0, &[], false)[..15]), None);
        let mut huge = build_log(0, &[Group { id: 1, state: 1, change_count: 0, nsids: vec![] }], false);
        huge[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(parse_log(&huge), None, "a count past the page is refused");
        assert_eq!(parse_log(&[0; 4]), None);
    }

    #[test]
    fn states_have_spdk_names_and_path_statuses() {
        for st in [OPTIMIZED, NON_OPTIMIZED, INACCESSIBLE, PERSISTENT_LOSS, CHANGE] {
            assert_eq!(from_name(name(st)), Some(st));
        }
        assert_eq!(from_name("active"), None);
        assert_eq!(path_status(INACCESSIBLE), Some(0x02));
        assert_eq!(path_status(NON_OPTIMIZED), None);
        assert!(accessible(NON_OPTIMIZED) && !accessible(CHANGE));
    }
}
