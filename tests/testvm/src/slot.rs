//! At most `POLLUX_TESTVM_JOBS` (default 1) guests run at once on this machine,
//! across processes: each running guest holds an exclusive `flock` on one
//! `vm-slot-N.lock` file in the cache folder. TCG guests are CPU-bound, so
//! queueing keeps each run's time (and its timeout) meaningful.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Duration;

use crate::error::{Error, Result};

pub(crate) struct Slot {
    /// The lock is released when the file is closed.
    _file: File,
}

fn jobs() -> usize {
    std::env::var("POLLUX_TESTVM_JOBS").ok().and_then(|v| v.parse::<usize>().ok()).filter(|&n| n > 0).unwrap_or(1)
}

/// One `flock` call; `Ok(false)` when another holder has it and `block` is false.
fn lock(file: &File, block: bool) -> std::io::Result<bool> {
    let op = libc::LOCK_EX | if block { 0 } else { libc::LOCK_NB };
    loop {
        // SAFETY: flock only takes a file descriptor, which `file` keeps open for
        // the duration of the call.
        let rc = unsafe { libc::flock(file.as_raw_fd(), op) };
        if rc == 0 {
            return Ok(true);
        }
        let err = std::io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) if !block => return Ok(false),
            _ => return Err(err),
        }
    }
}

impl Slot {
    pub(crate) fn acquire(cache_dir: &Path) -> Result<Self> {
        let n = jobs();
        let mut files = Vec::with_capacity(n);
        for i in 0..n {
            let path = cache_dir.join(format!("vm-slot-{i}.lock"));
            let file = File::options().create(true).truncate(false).write(true).open(&path).map_err(|e| Error::io("opening", &path, e))?;
            files.push((path, file));
        }
        if n == 1 {
            let (path, file) = files.remove(0);
            lock(&file, true).map_err(|e| Error::io("locking", &path, e))?;
            return Ok(Slot { _file: file });
        }
        loop {
            for (path, file) in &files {
                if lock(file, false).map_err(|e| Error::io("locking", path, e))? {
                    let file = file.try_clone().map_err(|e| Error::io("duplicating", path, e))?;
                    return Ok(Slot { _file: file });
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
