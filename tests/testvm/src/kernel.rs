//! Extracting the uncompressed ELF `vmlinux` from a bzImage `vmlinuz`: QEMU boots
//! it directly through PVH, which is several seconds faster under TCG.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::error::{Error, Result};

const XZ_MAGIC: &[u8] = b"\xfd7zXZ\x00";

/// The compressed payload inside a bzImage, located through the setup header
/// (`setup_sects` at 0x1f1, `payload_offset`/`payload_length` at 0x248/0x24c,
/// both relative to the protected-mode code after the setup sectors).
pub fn bzimage_payload(image: &[u8]) -> Result<&[u8], String> {
    let u32_at = |off: usize| -> Result<u32, String> {
        image
            .get(off..off + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or_else(|| "file too short for a bzImage header".to_string())
    };
    if image.get(0x202..0x206) != Some(b"HdrS") {
        return Err("no bzImage setup header (HdrS)".into());
    }
    let setup_sects = match image.get(0x1f1) {
        Some(0) => 4,
        Some(&n) => usize::from(n),
        None => return Err("file too short".into()),
    };
    let pm_start = (setup_sects + 1) * 512;
    let offset = pm_start + u32_at(0x248)? as usize;
    let length = u32_at(0x24c)? as usize;
    image
        .get(offset..offset.saturating_add(length))
        .ok_or_else(|| format!("payload {offset}+{length} lies outside the {}-byte image", image.len()))
}

/// Writes the ELF kernel inside `vmlinuz` to `out`. Only xz payloads (Debian's)
/// are supported; decompression uses the `xz` tool.
pub fn extract_vmlinux(vmlinuz: &Path, out: &Path) -> Result<()> {
    let fail = |reason: String| Error::Vmlinux { path: vmlinuz.to_path_buf(), reason };
    let image = std::fs::read(vmlinuz).map_err(|e| Error::io("reading", vmlinuz, e))?;
    let payload = bzimage_payload(&image).map_err(fail)?;
    if !payload.starts_with(XZ_MAGIC) {
        return Err(fail("payload is not xz-compressed".into()));
    }
    let compressed = out.with_extension("xz");
    std::fs::write(&compressed, payload).map_err(|e| Error::io("writing", &compressed, e))?;
    let input = std::fs::File::open(&compressed).map_err(|e| Error::io("opening", &compressed, e))?;
    let output = std::fs::File::create(out).map_err(|e| Error::io("creating", out, e))?;
    // The kernel appends its uncompressed size after the xz stream: --single-stream
    // ignores it.
    let status = Command::new("xz")
        .args(["-dc", "--single-stream"])
        .stdin(input)
        .stdout(output)
        .stderr(Stdio::inherit())
        .status()
        .map_err(|source| Error::Spawn { program: "xz".into(), source })?;
    std::fs::remove_file(&compressed).map_err(|e| Error::io("removing", &compressed, e))?;
    if !status.success() {
        return Err(fail(format!("xz -d failed: {status}")));
    }
    let mut head = [0u8; 4];
    let mut f = std::fs::File::open(out).map_err(|e| Error::io("opening", out, e))?;
    std::io::Read::read_exact(&mut f, &mut head).map_err(|e| Error::io("reading", out, e))?;
    if &head != b"\x7fELF" {
        return Err(fail("decompressed payload is not an ELF file".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_bzimage(setup_sects: u8, payload: &[u8]) -> Vec<u8> {
        let sects = if setup_sects == 0 { 4 } else { usize::from(setup_sects) };
        let pm = (sects + 1) * 512;
        let mut img = vec![0u8; pm + 100 + payload.len() + 4];
        img[0x1f1] = setup_sects;
        img[0x202..0x206].copy_from_slice(b"HdrS");
        img[0x248..0x24c].copy_from_slice(&100u32.to_le_bytes());
        img[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        img[pm + 100..pm + 100 + payload.len()].copy_from_slice(payload);
        img
    }

    #[test]
    fn finds_payload_through_the_setup_header() {
        let img = fake_bzimage(5, b"\xfd7zXZ\x00payload");
        assert_eq!(bzimage_payload(&img).unwrap(), b"\xfd7zXZ\x00payload");
    }

    #[test]
    fn rejects_non_bzimage_and_truncated_images() {
        assert!(bzimage_payload(b"not a kernel").is_err());
        let mut img = fake_bzimage(5, b"abc");
        img[0x24c..0x250].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(bzimage_payload(&img).unwrap_err().contains("outside"));
    }
}
