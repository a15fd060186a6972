//! Mode parameters (SPC-5 7.5, SBC-4 6.5): the caching, control and
//! informational exceptions pages, what MODE SENSE reports and what MODE
//! SELECT may change.

use crate::sense::{Asc, Sense};

pub const PAGE_CACHING: u8 = 0x08;
pub const PAGE_CONTROL: u8 = 0x0a;
pub const PAGE_INFO_EXCEPTIONS: u8 = 0x1c;
pub const PAGE_ALL: u8 = 0x3f;

/// The changeable mode parameters of a LU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModeParams {
    /// Caching page: write cache enable.
    pub wce: bool,
    /// Caching page: read cache disable.
    pub rcd: bool,
    /// Control page: descriptor-format sense data.
    pub d_sense: bool,
    /// Control page: software write protect.
    pub swp: bool,
    /// Informational exceptions page: disable exception control.
    pub dexcpt: bool,
    /// Informational exceptions page: method of reporting.
    pub mrie: u8,
}

impl Default for ModeParams {
    fn default() -> Self {
        ModeParams { wce: true, rcd: false, d_sense: false, swp: false, dexcpt: true, mrie: 0 }
    }
}

/// Which values MODE SENSE reports (page control field).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageControl {
    Current,
    Changeable,
    Default,
}

impl ModeParams {
    fn caching(&self, pc: PageControl) -> [u8; 20] {
        let mut p = [0u8; 20];
        p[0] = PAGE_CACHING;
        p[1] = 18;
        p[2] = match pc {
            PageControl::Changeable => 0x04,
            _ => (self.wce as u8) << 2 | self.rcd as u8,
        };
        if pc != PageControl::Changeable {
            // Disable pre-fetch transfer length, maximum pre-fetch: none.
            p[4..6].copy_from_slice(&0xffffu16.to_be_bytes());
            p[8..10].copy_from_slice(&0xffffu16.to_be_bytes());
            p[10..12].copy_from_slice(&0xffffu16.to_be_bytes());
        }
        p
    }

    fn control(&self, pc: PageControl) -> [u8; 12] {
        let mut p = [0u8; 12];
        p[0] = PAGE_CONTROL;
        p[1] = 10;
        match pc {
            PageControl::Changeable => {
                p[2] = 0x04;
                p[4] = 0x08;
            }
            _ => {
                p[2] = (self.d_sense as u8) << 2;
                // Queue algorithm modifier 1 (unrestricted reordering), QErr 0.
                p[3] = 0x10;
                p[4] = (self.swp as u8) << 3;
                // TAS: aborted tasks of other nexuses get TASK ABORTED.
                p[5] = 0x40;
                // Busy timeout period: unlimited.
                p[8..10].copy_from_slice(&0xffffu16.to_be_bytes());
            }
        }
        p
    }

    fn info_exceptions(&self, pc: PageControl) -> [u8; 12] {
        let mut p = [0u8; 12];
        p[0] = PAGE_INFO_EXCEPTIONS;
        p[1] = 10;
        match pc {
            PageControl::Changeable => {
                p[2] = 0x08;
                p[3] = 0x0f;
            }
            _ => {
                p[2] = (self.dexcpt as u8) << 3;
                p[3] = self.mrie;
            }
        }
        p
    }

    /// The bytes of `page` (or all pages), or `None` for an unsupported page.
    pub fn pages(&self, page: u8, subpage: u8, pc: PageControl) -> Option<Vec<u8>> {
        let v = if pc == PageControl::Default { ModeParams::default() } else { *self };
        let mut out = Vec::new();
        match (page, subpage) {
            (PAGE_CACHING, 0) => out.extend_from_slice(&v.caching(pc)),
            (PAGE_CONTROL, 0) => out.extend_from_slice(&v.control(pc)),
            (PAGE_INFO_EXCEPTIONS, 0) => out.extend_from_slice(&v.info_exceptions(pc)),
            (PAGE_ALL, 0) | (PAGE_ALL, 0xff) => {
                out.extend_from_slice(&v.caching(pc));
                out.extend_from_slice(&v.control(pc));
                out.extend_from_slice(&v.info_exceptions(pc));
            }
            _ => return None,
        }
        Some(out)
    }

    /// Apply the pages of a MODE SELECT parameter list (after the header
    /// and block descriptors). `base` is the offset of `pages` in the list,
    /// for field pointers. Only changeable bits may differ from the current
    /// values.
    pub fn select(&self, pages: &[u8], base: usize) -> Result<ModeParams, Sense> {
        let mut next = *self;
        let mut off = 0;
        while off < pages.len() {
            if pages.len() - off < 2 {
                return Err(Sense::illegal(Asc::PARAMETER_LIST_LENGTH_ERROR));
            }
            let code = pages[off] & 0x3f;
            if pages[off] & 0x40 != 0 {
                // Sub-page format: none of ours.
                return Err(Sense::invalid_param_field((base + off) as u16, Some(6)));
            }
            let len = pages[off + 1] as usize + 2;
            if off + len > pages.len() {
                return Err(Sense::illegal(Asc::PARAMETER_LIST_LENGTH_ERROR));
            }
            let p = &pages[off..off + len];
            let (cur, mask): (Vec<u8>, Vec<u8>) = match self.pages(code, 0, PageControl::Current) {
                Some(c) if code != PAGE_ALL => (c, self.pages(code, 0, PageControl::Changeable).unwrap_or_default()),
                _ => return Err(Sense::invalid_param_field((base + off) as u16, None)),
            };
            if len != cur.len() {
                return Err(Sense::invalid_param_field((base + off + 1) as u16, None));
            }
            for i in 2..len {
                if (p[i] ^ cur[i]) & !mask[i] != 0 {
                    return Err(Sense::invalid_param_field((base + off + i) as u16, None));
                }
            }
            match code {
                PAGE_CACHING => {
                    next.wce = p[2] & 0x04 != 0;
                }
                PAGE_CONTROL => {
                    next.d_sense = p[2] & 0x04 != 0;
                    next.swp = p[4] & 0x08 != 0;
                }
                PAGE_INFO_EXCEPTIONS => {
                    next.dexcpt = p[2] & 0x08 != 0;
                    next.mrie = p[3] & 0x0f;
                }
                _ => {}
            }
            off += len;
        }
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn select_changes_only_changeable_bits() {
        let m = ModeParams::default();
        let mut page = m.pages(PAGE_CACHING, 0, PageControl::Current).unwrap();
        page[2] &= !0x04;
        let n = m.select(&page, 0).unwrap();
        assert!(!n.wce);
        page[2] |= 0x01; // RCD is not changeable
        let e = m.select(&page, 8).unwrap_err();
        assert_eq!(e.field.unwrap().byte, 10);
    }

    #[test]
    fn truncated_or_unknown_pages_are_rejected() {
        let m = ModeParams::default();
        assert!(m.select(&[PAGE_CONTROL], 0).is_err());
        assert!(m.select(&[PAGE_CONTROL, 10, 0], 0).is_err());
        assert!(m.select(&[0x19, 2, 0, 0], 0).is_err());
        assert!(m.pages(0x19, 0, PageControl::Current).is_none());
    }
}
