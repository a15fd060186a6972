//! Controller registers (NVMe Base 2.0, 3.1.4): offsets and the fields of
//! CAP, VS, CC, CSTS and AQA. Fabrics controllers expose the same layout as
//! properties (Property Get/Set).

/// Register offsets in BAR0 (and property offsets on fabrics).
pub mod offset {
    /// Controller Capabilities (64-bit).
    pub const CAP: u32 = 0x00;
    /// Version.
    pub const VS: u32 = 0x08;
    /// Interrupt mask set / clear.
    pub const INTMS: u32 = 0x0c;
    pub const INTMC: u32 = 0x10;
    /// Controller Configuration.
    pub const CC: u32 = 0x14;
    /// Controller Status.
    pub const CSTS: u32 = 0x1c;
    /// NVM Subsystem Reset.
    pub const NSSR: u32 = 0x20;
    /// Admin Queue Attributes.
    pub const AQA: u32 = 0x24;
    /// Admin Submission Queue base address (64-bit).
    pub const ASQ: u32 = 0x28;
    /// Admin Completion Queue base address (64-bit).
    pub const ACQ: u32 = 0x30;
    /// The first doorbell (admin SQ tail).
    pub const DOORBELLS: u32 = 0x1000;
}

/// The offset of submission queue `qid`'s tail doorbell.
pub fn sq_tail_doorbell(qid: u16, dstrd: u8) -> usize {
    offset::DOORBELLS as usize + (2 * usize::from(qid)) * (4usize << dstrd)
}

/// The offset of completion queue `qid`'s head doorbell.
pub fn cq_head_doorbell(qid: u16, dstrd: u8) -> usize {
    offset::DOORBELLS as usize + (2 * usize::from(qid) + 1) * (4usize << dstrd)
}

/// Controller Capabilities.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cap(pub u64);

impl Cap {
    /// Maximum queue entries supported (1-based: MQES + 1).
    pub fn max_queue_entries(self) -> u32 {
        (self.0 & 0xffff) as u32 + 1
    }

    /// Contiguous queues required.
    pub fn contiguous_queues_required(self) -> bool {
        self.0 & (1 << 16) != 0
    }

    /// Worst-case time for CSTS.RDY to change, in milliseconds (TO is in
    /// 500 ms units).
    pub fn timeout_ms(self) -> u64 {
        ((self.0 >> 24) & 0xff) * 500
    }

    /// Doorbell stride: doorbells are `4 << dstrd` bytes apart.
    pub fn doorbell_stride(self) -> u8 {
        ((self.0 >> 32) & 0xf) as u8
    }

    /// NVM subsystem reset supported.
    pub fn nssr_supported(self) -> bool {
        self.0 & (1 << 36) != 0
    }

    /// Command sets supported (bit 0 NVM, bit 6 I/O command sets, bit 7 admin only).
    pub fn css(self) -> u8 {
        ((self.0 >> 37) & 0xff) as u8
    }

    /// Minimum memory page size in bytes (2 ^ (12 + MPSMIN)).
    pub fn min_page_size(self) -> usize {
        1usize << (12 + ((self.0 >> 48) & 0xf))
    }

    /// Maximum memory page size in bytes.
    pub fn max_page_size(self) -> usize {
        1usize << (12 + ((self.0 >> 52) & 0xf))
    }
}

/// Version (VS register and Identify Controller VER).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Version(pub u32);

impl Version {
    pub fn major(self) -> u16 {
        (self.0 >> 16) as u16
    }
    pub fn minor(self) -> u8 {
        (self.0 >> 8) as u8
    }
    pub fn tertiary(self) -> u8 {
        self.0 as u8
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major(), self.minor(), self.tertiary())
    }
}

/// Controller Configuration.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cc(pub u32);

impl Cc {
    pub const EN: u32 = 1 << 0;
    /// SHN = 01b: normal shutdown notification.
    pub const SHN_NORMAL: u32 = 1 << 14;
    /// SHN = 10b: abrupt shutdown notification.
    pub const SHN_ABRUPT: u32 = 2 << 14;
    pub const SHN_MASK: u32 = 3 << 14;

    pub fn enabled(self) -> bool {
        self.0 & Self::EN != 0
    }

    /// I/O command set selected (CSS, bits 6:4).
    pub fn css(self) -> u8 {
        ((self.0 >> 4) & 0x7) as u8
    }

    /// Memory page size in bytes (2 ^ (12 + MPS)).
    pub fn page_size(self) -> usize {
        1usize << (12 + ((self.0 >> 7) & 0xf))
    }

    pub fn shutdown_notification(self) -> u8 {
        ((self.0 >> 14) & 0x3) as u8
    }

    /// I/O submission queue entry size, log2 (6 = 64 bytes).
    pub fn iosqes(self) -> u8 {
        ((self.0 >> 16) & 0xf) as u8
    }

    /// I/O completion queue entry size, log2 (4 = 16 bytes).
    pub fn iocqes(self) -> u8 {
        ((self.0 >> 20) & 0xf) as u8
    }

    /// A configuration for the NVM command set with 64-byte SQEs, 16-byte
    /// CQEs, round-robin arbitration and `page_size` memory pages (EN clear).
    pub fn nvm(page_size: usize) -> Self {
        let mps = page_size.trailing_zeros().saturating_sub(12) & 0xf;
        Cc((mps << 7) | (6 << 16) | (4 << 20))
    }
}

/// Controller Status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Csts(pub u32);

impl Csts {
    pub const RDY: u32 = 1 << 0;
    pub const CFS: u32 = 1 << 1;
    pub const SHST_MASK: u32 = 3 << 2;
    pub const SHST_OCCURRING: u32 = 1 << 2;
    pub const SHST_COMPLETE: u32 = 2 << 2;

    pub fn ready(self) -> bool {
        self.0 & Self::RDY != 0
    }

    /// Controller fatal status.
    pub fn fatal(self) -> bool {
        self.0 & Self::CFS != 0
    }

    /// Shutdown status: 0 normal operation, 1 occurring, 2 complete.
    pub fn shutdown_status(self) -> u8 {
        ((self.0 >> 2) & 0x3) as u8
    }

    /// All ones: the device is gone (surprise removal reads ~0).
    pub fn device_gone(self) -> bool {
        self.0 == u32::MAX
    }
}

/// Admin Queue Attributes for `sq` and `cq` entries (1-based counts).
pub fn aqa(sq_entries: u16, cq_entries: u16) -> u32 {
    (u32::from(sq_entries.saturating_sub(1)) & 0xfff) | ((u32::from(cq_entries.saturating_sub(1)) & 0xfff) << 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_cap_decodes() {
        // CAP of QEMU 7.2's emulated controller.
        let cap = Cap(0x0040_1820_0f01_07ff);
        assert_eq!(cap.max_queue_entries(), 2048);
        assert!(cap.contiguous_queues_required());
        assert_eq!(cap.timeout_ms(), 7500);
        assert_eq!(cap.doorbell_stride(), 0);
        assert_eq!(cap.css() & 1, 1);
        assert_eq!(cap.min_page_size(), 4096);
        assert_eq!(cap.max_page_size(), 65536);
    }

    #[test]
    fn cc_and_csts() {
        let cc = Cc(Cc::nvm(4096).0 | Cc::EN);
        assert!(cc.enabled());
        assert_eq!(cc.page_size(), 4096);
        assert_eq!(cc.iosqes(), 6);
        assert_eq!(cc.iocqes(), 4);
        assert_eq!(cc.css(), 0);
        assert_eq!(Cc::nvm(65536).page_size(), 65536);
        assert_eq!(Cc(Cc::SHN_NORMAL).shutdown_notification(), 1);
        assert!(Csts(1).ready());
        assert_eq!(Csts(Csts::SHST_COMPLETE).shutdown_status(), 2);
        assert!(Csts(u32::MAX).device_gone());
        assert_eq!(Version(0x0001_0400).to_string(), "1.4.0");
    }

    #[test]
    fn doorbells_and_aqa() {
        assert_eq!(sq_tail_doorbell(0, 0), 0x1000);
        assert_eq!(cq_head_doorbell(0, 0), 0x1004);
        assert_eq!(sq_tail_doorbell(3, 0), 0x1018);
        assert_eq!(cq_head_doorbell(3, 1), 0x1000 + 7 * 8);
        assert_eq!(aqa(32, 32), 0x001f_001f);
        assert_eq!(aqa(4096, 1), 0x0000_0fff);
    }
}
