//! CHAP (RFC 1994, iSCSI use in RFC 7143 12.1.3): the digest algorithms
//! (MD5, and SHA-256 as RFC 7143's update allows), challenges and
//! response checks, one-way and mutual.

use md5::{Digest as _, Md5};
use sha2::Sha256;

/// A CHAP digest algorithm, by its CHAP_A number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    Md5 = 5,
    Sha256 = 7,
}

impl Algorithm {
    pub fn from_code(c: u64) -> Option<Algorithm> {
        match c {
            5 => Some(Algorithm::Md5),
            7 => Some(Algorithm::Sha256),
            _ => None,
        }
    }

    pub fn code(self) -> u8 {
        self as u8
    }

    pub fn digest_len(self) -> usize {
        match self {
            Algorithm::Md5 => 16,
            Algorithm::Sha256 => 32,
        }
    }

    /// The response to challenge `c` with identifier `id` and `secret`.
    pub fn response(self, id: u8, secret: &[u8], c: &[u8]) -> Vec<u8> {
        match self {
            Algorithm::Md5 => {
                let mut h = Md5::new();
                h.update([id]);
                h.update(secret);
                h.update(c);
                h.finalize().to_vec()
            }
            Algorithm::Sha256 => {
                let mut h = Sha256::new();
                h.update([id]);
                h.update(secret);
                h.update(c);
                h.finalize().to_vec()
            }
        }
    }
}

/// Random bytes for identifiers and challenges, from the operating
/// system's generator. There is no fallback: a login that cannot get
/// unpredictable challenges fails.
pub fn random(n: usize) -> Result<Vec<u8>, getrandom::Error> {
    let mut b = vec![0u8; n];
    getrandom::fill(&mut b)?;
    Ok(b)
}

/// Compare digests in constant time (the length is not secret).
pub fn same(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq as _;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_response_matches_a_known_value() {
        // MD5(0x01 || "secret" || 0x00*4) and SHA-256(0x01 || "s" || "c"),
        // computed with Python's hashlib.
        let r = Algorithm::Md5.response(1, b"secret", &[0, 0, 0, 0]);
        assert_eq!(crate::text::hex(&r), "0x935bf00c3a5e8c45889c8a2dc04af2a4");
        assert_ne!(r, Algorithm::Md5.response(2, b"secret", &[0, 0, 0, 0]));
        assert_eq!(
            crate::text::hex(&Algorithm::Sha256.response(1, b"s", b"c")),
            "0xae01685b8e3b2d411bfe5a0f9ea1f37437233190c34b69a5873752b072f4cb8d"
        );
        assert!(same(&r, &r.clone()) && !same(&r, &r[..15]));
    }
}
