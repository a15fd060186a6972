//! The kernel NBD driver's ioctls (`linux/nbd.h`) and what sysfs says of
//! its devices.

use std::io;
use std::os::fd::RawFd;

const fn io(nr: u64) -> u64 {
    // _IO(0xab, nr): no direction, no size.
    (0xab << 8) | nr
}

pub const SET_SOCK: u64 = io(0);
pub const SET_BLKSIZE: u64 = io(1);
pub const DO_IT: u64 = io(3);
pub const CLEAR_SOCK: u64 = io(4);
pub const CLEAR_QUE: u64 = io(5);
pub const SET_SIZE_BLOCKS: u64 = io(7);
pub const DISCONNECT: u64 = io(8);
pub const SET_TIMEOUT: u64 = io(9);
pub const SET_FLAGS: u64 = io(10);

/// Names for messages.
pub fn name(req: u64) -> &'static str {
    match req {
        SET_SOCK => "NBD_SET_SOCK",
        SET_BLKSIZE => "NBD_SET_BLKSIZE",
        DO_IT => "NBD_DO_IT",
        CLEAR_SOCK => "NBD_CLEAR_SOCK",
        CLEAR_QUE => "NBD_CLEAR_QUE",
        SET_SIZE_BLOCKS => "NBD_SET_SIZE_BLOCKS",
        DISCONNECT => "NBD_DISCONNECT",
        SET_TIMEOUT => "NBD_SET_TIMEOUT",
        SET_FLAGS => "NBD_SET_FLAGS",
        _ => "NBD ioctl",
    }
}

/// `ioctl(fd, req, arg)` on an NBD device.
pub fn ioctl(fd: RawFd, req: u64, arg: u64) -> io::Result<()> {
    // SAFETY: the NBD ioctls take their argument by value (a descriptor,
    // a size, flags) and write no user memory; `fd` is the caller's open
    // descriptor.
    let r = unsafe { libc::ioctl(fd, req as libc::Ioctl, arg as libc::c_ulong) };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// The index of an NBD device path: exactly `/dev/nbd<N>`.
pub fn index_of(path: &str) -> Option<u32> {
    let digits = path.strip_prefix("/dev/nbd")?;
    let n: u32 = digits.parse().ok()?;
    (format!("/dev/nbd{n}") == path).then_some(n)
}

/// Whether the kernel has the device running for someone (its `pid`
/// attribute exists while a server is attached).
pub fn attached(index: u32) -> io::Result<bool> {
    match std::fs::metadata(format!("/sys/block/nbd{index}/pid")) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// The device's size in 512-byte sectors as the block layer has it (0
/// until `NBD_DO_IT` has started it).
pub fn sectors(index: u32) -> u64 {
    std::fs::read_to_string(format!("/sys/block/nbd{index}/size")).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0)
}

/// Whether `/dev/nbd<index>` exists.
pub fn exists(index: u32) -> bool {
    std::path::Path::new(&format!("/dev/nbd{index}")).exists()
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_canonical_device_paths_have_an_index() {
        use super::index_of;
        assert_eq!(index_of("/dev/nbd0"), Some(0));
        assert_eq!(index_of("/dev/nbd15"), Some(15));
        for bad in ["/dev/nbd", "/dev/nbd01", "/dev/nbd1p1", "/dev/nbd+1", "/dev/nbd-1", "dev/nbd1", "/dev/nbd1 ", "/dev/sda"] {
            assert_eq!(index_of(bad), None, "{bad}");
        }
    }
}
