//! Values the target puts in identify data, log pages and asynchronous
//! event completions that `pollux-nvme-spec` does not name (fabrics
//! controller types, event codes), and a small writer for pages built
//! entry by entry (namespace lists, descriptor lists).

/// A little-endian field writer over a data page.
pub struct Page<'a>(pub &'a mut [u8]);

impl Page<'_> {
    pub fn u8(&mut self, off: usize, v: u8) {
        self.0[off] = v;
    }
    pub fn u16(&mut self, off: usize, v: u16) {
        self.0[off..off + 2].copy_from_slice(&v.to_le_bytes());
    }
    pub fn u32(&mut self, off: usize, v: u32) {
        self.0[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }
    pub fn u64(&mut self, off: usize, v: u64) {
        self.0[off..off + 8].copy_from_slice(&v.to_le_bytes());
    }
    pub fn u128(&mut self, off: usize, v: u128) {
        self.0[off..off + 16].copy_from_slice(&v.to_le_bytes());
    }
    pub fn bytes(&mut self, off: usize, v: &[u8]) {
        self.0[off..off + v.len()].copy_from_slice(v);
    }
    pub fn space_text(&mut self, off: usize, len: usize, text: &str) {
        super::set_space_field(&mut self.0[off..off + len], text);
    }
    pub fn nul_text(&mut self, off: usize, len: usize, text: &str) {
        super::set_nul_field(&mut self.0[off..off + len], text);
    }
}

/// Identify Controller values for fabrics controllers.
pub mod ctrlr {
    /// OAES bit 8: namespace attribute notices; bit 31: discovery log changes.
    pub const OAES_NS_ATTRIBUTE: u32 = 1 << 8;
    pub const OAES_DISCOVERY_LOG_CHANGE: u32 = 1 << 31;
    /// LPA bit 2: extended data (offsets, 32-bit NUMD) for Get Log Page.
    pub const LPA_EXTENDED_DATA: u8 = 1 << 2;
    /// CNTRLTYPE values.
    pub const TYPE_IO: u8 = 1;
    pub const TYPE_DISCOVERY: u8 = 2;
}

/// Asynchronous event completion values (dword 0 of an AER completion).
pub mod aen {
    /// Event type notice.
    pub const TYPE_NOTICE: u32 = 2;
    /// Event type I/O command specific status (info 0: reservation log
    /// page available).
    pub const TYPE_IO_COMMAND_SPECIFIC: u32 = 6;
    pub const INFO_NS_ATTRIBUTE_CHANGED: u32 = 0x00;
    pub const INFO_DISCOVERY_LOG_CHANGE: u32 = 0xf0;

    pub fn dw0(kind: u32, info: u32, log_page: u8) -> u32 {
        kind | (info << 8) | (u32::from(log_page) << 16)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_writes_little_endian_fields_at_offsets() {
        let mut b = vec![0u8; 64];
        let mut p = Page(&mut b);
        p.u16(0, 0x1234);
        p.u32(4, 260);
        p.space_text(8, 4, "SN");
        assert_eq!(&b[0..2], &[0x34, 0x12]);
        assert_eq!(&b[4..8], &260u32.to_le_bytes());
        assert_eq!(&b[8..12], b"SN  ");
        assert_eq!(aen::dw0(aen::TYPE_NOTICE, 0, 0x04), 0x0004_0002);
    }
}
