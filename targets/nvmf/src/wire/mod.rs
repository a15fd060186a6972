//! NVMe over Fabrics wire structures the target needs beyond the common
//! NVMe ones of `pollux-nvme-spec`: the Fabrics command set (Connect,
//! Property Get/Set, Disconnect), the discovery log page, and the identify
//! and log page data the target builds.
//!
//! Every structure is `#[repr(C)]` with zerocopy derives, explicit
//! little-endian fields and a compile-time size check.

pub use pollux_nvme_spec::{discovery, fabrics};
pub mod identify;

pub use pollux_nvme_spec::set_nul_field;

/// Write `text` into a fixed field, space padded (serial and model numbers,
/// transport service ids).
pub fn set_space_field(field: &mut [u8], text: &str) {
    field.fill(b' ');
    let n = text.len().min(field.len());
    field[..n].copy_from_slice(&text.as_bytes()[..n]);
}

/// Read a NUL (or space) padded text field; `None` if it is not UTF-8.
pub fn text_field(raw: &[u8]) -> Option<&str> {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    std::str::from_utf8(&raw[..end]).ok().map(str::trim_end)
}
