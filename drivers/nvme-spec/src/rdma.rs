//! The NVMe/RDMA connection private data (NVMe over Fabrics RDMA
//! Transport Specification 1.0, 3.3): what a host sends in its RDMA CM
//! connect request, what a controller answers in its accept, and the
//! status it gives in a reject. Shared by the target and the host.

/// Record format 0 (the only one).
pub const RECFMT: u16 = 0;

/// Reject status codes (the `sts` of a reject's private data).
pub mod reject {
    pub const INVALID_PRIVATE_DATA_LENGTH: u16 = 1;
    pub const INVALID_RECFMT: u16 = 2;
    pub const INVALID_QID: u16 = 3;
    pub const INVALID_HSQSIZE: u16 = 4;
    pub const INVALID_HRQSIZE: u16 = 5;
    pub const NO_RESOURCES: u16 = 6;
    pub const INVALID_IRD: u16 = 7;
    pub const INVALID_ORD: u16 = 8;

    /// A name for a reject status, for errors.
    pub fn name(sts: u16) -> &'static str {
        match sts {
            INVALID_PRIVATE_DATA_LENGTH => "invalid private data length",
            INVALID_RECFMT => "invalid record format",
            INVALID_QID => "invalid queue id",
            INVALID_HSQSIZE => "invalid host send queue size",
            INVALID_HRQSIZE => "invalid host receive queue size",
            NO_RESOURCES => "no resources",
            INVALID_IRD => "invalid IRD",
            INVALID_ORD => "invalid ORD",
            _ => "unknown status",
        }
    }
}

/// The bytes of a request that carry fields: recfmt, qid, hrqsize,
/// hsqsize (little-endian u16 each); the rest of its 32 is reserved.
pub const REQUEST_LEN: usize = 8;
/// The private data a host sends (reserved bytes included).
pub const REQUEST_SIZE: usize = 32;
/// The accept's private data: recfmt, crqsize (the rest reserved).
pub const ACCEPT_SIZE: usize = 32;
/// The reject's private data: recfmt, sts.
pub const REJECT_SIZE: usize = 4;

/// A host's connect request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    pub recfmt: u16,
    pub qid: u16,
    /// Host receive queue size: completions the host can take at once.
    pub hrqsize: u16,
    /// Host send queue size (0's based: entries minus one).
    pub hsqsize: u16,
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

impl Request {
    /// Read a request; `None` when shorter than its fields.
    pub fn parse(d: &[u8]) -> Option<Request> {
        (d.len() >= REQUEST_LEN).then(|| Request { recfmt: le16(d, 0), qid: le16(d, 2), hrqsize: le16(d, 4), hsqsize: le16(d, 6) })
    }

    pub fn to_bytes(&self) -> [u8; REQUEST_SIZE] {
        let mut d = [0u8; REQUEST_SIZE];
        for (i, v) in [self.recfmt, self.qid, self.hrqsize, self.hsqsize].into_iter().enumerate() {
            d[i * 2..i * 2 + 2].copy_from_slice(&v.to_le_bytes());
        }
        d
    }
}

/// A controller's accept: its receive queue size (commands the host may
/// have outstanding).
pub fn accept(crqsize: u16) -> [u8; ACCEPT_SIZE] {
    let mut d = [0u8; ACCEPT_SIZE];
    d[..2].copy_from_slice(&RECFMT.to_le_bytes());
    d[2..4].copy_from_slice(&crqsize.to_le_bytes());
    d
}

/// The crqsize of an accept's private data, `None` if malformed.
pub fn parse_accept(d: &[u8]) -> Option<u16> {
    (d.len() >= 4 && le16(d, 0) == RECFMT).then(|| le16(d, 2))
}

/// A reject's private data with status `sts`.
pub fn reject_data(sts: u16) -> [u8; REJECT_SIZE] {
    let mut d = [0u8; REJECT_SIZE];
    d[..2].copy_from_slice(&RECFMT.to_le_bytes());
    d[2..].copy_from_slice(&sts.to_le_bytes());
    d
}

/// The status of a reject's private data, `None` if it has none.
pub fn parse_reject(d: &[u8]) -> Option<u16> {
    (d.len() >= REJECT_SIZE && le16(d, 0) == RECFMT).then(|| le16(d, 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_accept_reject_round_trip() {
        let r = Request { recfmt: 0, qid: 3, hrqsize: 128, hsqsize: 127 };
        let b = r.to_bytes();
        assert_eq!(&b[..8], &[0, 0, 3, 0, 128, 0, 127, 0]);
        assert_eq!(Request::parse(&b), Some(r));
        assert_eq!(Request::parse(&b[..7]), None);
        assert_eq!(parse_accept(&accept(64)), Some(64));
        assert_eq!(parse_accept(&[1, 0, 64, 0]), None);
        assert_eq!(parse_reject(&reject_data(reject::INVALID_HSQSIZE)), Some(4));
        assert_eq!(parse_reject(&[0, 0]), None);
    }
}
