//! NVMe wire structures and constants (NVMe Base Specification 2.0, NVM
//! Command Set 1.0): submission and completion queue entries, opcodes, status
//! codes, identify data, log pages and controller registers.
//!
//! Shared by the PCIe driver (`pollux-nvme-driver`), the NVMe-oF host
//! (`pollux-nvmf-host`) and the NVMe-oF target (`pollux-nvmf`). Every structure is `#[repr(C)]` with zerocopy derives, a
//! compile-time size assertion and little-endian fields (`U16`/`U32`/`U64`
//! from `zerocopy::little_endian`), so it can be read from or written to a
//! byte buffer without copies or `unsafe`, on any host byte order.
//!
//! - [`ana`]: Asymmetric Namespace Access states and the ANA log page.
//! - [`cmd`]: the 64-byte submission queue entry ([`cmd::Command`]), the
//!   16-byte completion queue entry ([`cmd::Completion`]), admin and I/O
//!   opcodes, feature identifiers, data pointers (PRP and SGL).
//! - [`status`]: status code types and values with their names.
//! - [`identify`]: Identify Controller / Namespace data (4096 bytes each), CNS
//!   values, LBA formats.
//! - [`log`]: log page identifiers, SMART / Health Information, Error
//!   Information entries.
//! - [`registers`]: controller register offsets and fields (CAP, VS, CC,
//!   CSTS, AQA), the same layout as Fabrics properties.
//! - [`fabrics`]: the Fabrics command set (Connect and its data, Property
//!   Get/Set); [`discovery`]: the discovery log page.
//! - [`tcp`]: the NVMe/TCP PDUs; [`rdma`]: the NVMe/RDMA connection
//!   private data.

#![forbid(unsafe_code)]

pub mod ana;
pub mod cmd;
pub mod discovery;
pub mod fabrics;
pub mod identify;
pub mod log;
pub mod rdma;
pub mod registers;
pub mod status;
pub mod tcp;

/// Trims the space (and NUL) padding of an ASCII identify field (SN, MN, FR,
/// SUBNQN) and returns it as text, replacing invalid UTF-8.
pub fn ascii_field(raw: &[u8]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).trim_end().to_string()
}

/// Writes `text` into a fixed field padded with NULs (NQNs, addresses);
/// longer text is truncated.
pub fn set_nul_field(field: &mut [u8], text: &str) {
    field.fill(0);
    let n = text.len().min(field.len());
    field[..n].copy_from_slice(&text.as_bytes()[..n]);
}

/// Writes `text` into a fixed-size ASCII field padded with spaces (as SN, MN
/// and FR are); longer text is truncated.
pub fn set_ascii_field(field: &mut [u8], text: &str) {
    field.fill(b' ');
    let n = text.len().min(field.len());
    field[..n].copy_from_slice(&text.as_bytes()[..n]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ascii_fields_round_trip_and_trim() {
        let mut sn = [0u8; 20];
        set_ascii_field(&mut sn, "deadbeef");
        assert_eq!(&sn[..10], b"deadbeef  ");
        assert_eq!(ascii_field(&sn), "deadbeef");
        let mut nqn = [0u8; 16];
        nqn[..4].copy_from_slice(b"nqn.");
        assert_eq!(ascii_field(&nqn), "nqn.");
        set_ascii_field(&mut nqn, "a-string-longer-than-sixteen");
        assert_eq!(ascii_field(&nqn), "a-string-longer-");
        assert_eq!(ascii_field(&[0xff, b'a']), "\u{fffd}a");
    }
}
