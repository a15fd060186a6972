//! Core masks: which CPUs run reactors.
//!
//! Accepted forms are SPDK's: a hexadecimal mask (`0x3`, or `3`, which SPDK
//! also reads as hex) or a bracketed list with ranges (`[0,2]`, `[0-3,8]`).

use std::fmt;
use std::str::FromStr;

/// A set of CPU cores, kept sorted and without duplicates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoreMask(Vec<usize>);

/// Why a core mask was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CoreMaskError {
    #[error("core mask `{0}` is empty: it must select at least one core")]
    Empty(String),
    #[error("core mask `{0}` is not a hex mask (0x3) or a core list ([0,2] or [0-3])")]
    Syntax(String),
    #[error("core {core} is not available to this process (allowed cores: {allowed})")]
    NotAllowed { core: usize, allowed: String },
}

const MAX_CORES: usize = 1024;

impl CoreMask {
    pub fn from_cores(mut cores: Vec<usize>) -> Self {
        cores.sort_unstable();
        cores.dedup();
        CoreMask(cores)
    }

    pub fn cores(&self) -> &[usize] {
        &self.0
    }

    /// Check every core against the CPUs this process may use.
    pub fn check_allowed(&self, allowed: &[usize]) -> Result<(), CoreMaskError> {
        match self.0.iter().find(|c| !allowed.contains(c)) {
            None => Ok(()),
            Some(&core) => Err(CoreMaskError::NotAllowed { core, allowed: CoreMask::from_cores(allowed.to_vec()).to_list() }),
        }
    }

    /// The mask as hex, the way SPDK prints `cpumask` (no 0x prefix).
    pub fn to_hex(&self) -> String {
        let mut words = vec![0u64; self.0.last().map_or(1, |m| m / 64 + 1)];
        for &c in &self.0 {
            words[c / 64] |= 1 << (c % 64);
        }
        let mut s = String::new();
        for (i, w) in words.iter().rev().enumerate() {
            if i == 0 { s.push_str(&format!("{w:x}")) } else { s.push_str(&format!("{w:016x}")) }
        }
        s
    }

    /// The mask as a compact list such as `0-3,8`.
    pub fn to_list(&self) -> String {
        let mut parts = Vec::new();
        let mut i = 0;
        while i < self.0.len() {
            let start = self.0[i];
            let mut end = start;
            while i + 1 < self.0.len() && self.0[i + 1] == end + 1 {
                i += 1;
                end += 1;
            }
            parts.push(if start == end { start.to_string() } else { format!("{start}-{end}") });
            i += 1;
        }
        parts.join(",")
    }
}

impl fmt::Display for CoreMask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0x{}", self.to_hex())
    }
}

fn parse_list(inner: &str, whole: &str) -> Result<Vec<usize>, CoreMaskError> {
    let syntax = || CoreMaskError::Syntax(whole.to_string());
    let mut cores = Vec::new();
    for part in inner.split(',').map(str::trim) {
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (part, part),
        };
        let a: usize = a.parse().map_err(|_| syntax())?;
        let b: usize = b.parse().map_err(|_| syntax())?;
        if a > b || b >= MAX_CORES {
            return Err(syntax());
        }
        cores.extend(a..=b);
    }
    Ok(cores)
}

fn parse_hex(digits: &str, whole: &str) -> Result<Vec<usize>, CoreMaskError> {
    if digits.is_empty() || digits.len() > MAX_CORES / 4 {
        return Err(CoreMaskError::Syntax(whole.to_string()));
    }
    let mut cores = Vec::new();
    for (pos, ch) in digits.chars().rev().enumerate() {
        let nibble = ch.to_digit(16).ok_or_else(|| CoreMaskError::Syntax(whole.to_string()))? as usize;
        cores.extend((0..4).filter(|bit| nibble & (1 << bit) != 0).map(|bit| pos * 4 + bit));
    }
    Ok(cores)
}

impl FromStr for CoreMask {
    type Err = CoreMaskError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let cores = if let Some(inner) = t.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            parse_list(inner, s)?
        } else {
            let digits = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")).unwrap_or(t);
            parse_hex(digits, s)?
        };
        if cores.is_empty() {
            return Err(CoreMaskError::Empty(s.to_string()));
        }
        Ok(CoreMask::from_cores(cores))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hex_and_lists() {
        assert_eq!("0x3".parse::<CoreMask>().unwrap().cores(), &[0, 1]);
        assert_eq!("3".parse::<CoreMask>().unwrap().cores(), &[0, 1]);
        assert_eq!("0x10".parse::<CoreMask>().unwrap().cores(), &[4]);
        assert_eq!("[0,2]".parse::<CoreMask>().unwrap().cores(), &[0, 2]);
        assert_eq!("[0-3, 8]".parse::<CoreMask>().unwrap().cores(), &[0, 1, 2, 3, 8]);
        assert_eq!("[2,2,1]".parse::<CoreMask>().unwrap().cores(), &[1, 2]);
    }

    #[test]
    fn rejects_bad_masks() {
        assert!(matches!("0x0".parse::<CoreMask>(), Err(CoreMaskError::Empty(_))));
        assert!(matches!("0xg".parse::<CoreMask>(), Err(CoreMaskError::Syntax(_))));
        assert!(matches!("[3-1]".parse::<CoreMask>(), Err(CoreMaskError::Syntax(_))));
        assert!(matches!("[a]".parse::<CoreMask>(), Err(CoreMaskError::Syntax(_))));
        assert!(matches!("".parse::<CoreMask>(), Err(CoreMaskError::Syntax(_))));
        assert!(matches!("[]".parse::<CoreMask>(), Err(CoreMaskError::Syntax(_))));
    }

    #[test]
    fn prints_hex_and_list() {
        let m: CoreMask = "[0-3,8,70]".parse().unwrap();
        assert_eq!(m.to_list(), "0-3,8,70");
        assert_eq!(m.to_hex(), "40000000000000010f");
        assert_eq!(CoreMask::from_cores(vec![0]).to_hex(), "1");
    }

    #[test]
    fn refuses_cores_outside_the_affinity() {
        let m: CoreMask = "[0,5]".parse().unwrap();
        let err = m.check_allowed(&[0, 1]).unwrap_err();
        assert_eq!(err.to_string(), "core 5 is not available to this process (allowed cores: 0-1)");
        assert!(m.check_allowed(&[0, 1, 5]).is_ok());
    }
}
