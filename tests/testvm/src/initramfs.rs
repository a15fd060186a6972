//! The guest's initramfs: static busybox, the few kernel modules needed to mount
//! the host's root over 9p, and the stage-1 `/init` (see `init.sh`). Written as
//! an uncompressed `newc` cpio archive, which the kernel unpacks as is.

use std::collections::{HashMap, HashSet};
use std::io::{self, Write};
use std::path::Path;

use crate::error::{Error, Result};

/// Modules stage 1 loads (with their dependencies) before it can reach the host.
/// `virtio_net` is loaded even without networking; it is small and harmless.
pub const STAGE1_MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p", "overlay", "virtio_net"];

const INIT_SCRIPT: &str = include_str!("init.sh");

/// A `newc` cpio writer.
pub struct Cpio<W: Write> {
    out: W,
    ino: u32,
    written: u64,
}

impl<W: Write> Cpio<W> {
    pub fn new(out: W) -> Self {
        Self { out, ino: 1, written: 0 }
    }

    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) -> io::Result<()> {
        let len = u32::try_from(data.len()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "cpio entry over 4 GiB"))?;
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino,
            mode,
            0,
            0,
            if mode & 0o040000 != 0 { 2 } else { 1 },
            0,
            len,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() + 1,
            0
        );
        self.ino += 1;
        self.write(header.as_bytes())?;
        self.write(name.as_bytes())?;
        self.write(&[0])?;
        self.pad()?;
        self.write(data)?;
        self.pad()
    }

    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let rem = (4 - (self.written % 4) as usize) % 4;
        self.write(&[0u8; 3][..rem])
    }

    pub fn dir(&mut self, name: &str) -> io::Result<()> {
        self.entry(name, 0o040755, (0, 0), &[])
    }

    pub fn file(&mut self, name: &str, mode: u32, data: &[u8]) -> io::Result<()> {
        self.entry(name, 0o100000 | (mode & 0o7777), (0, 0), data)
    }

    pub fn char_dev(&mut self, name: &str, mode: u32, major: u32, minor: u32) -> io::Result<()> {
        self.entry(name, 0o020000 | (mode & 0o7777), (major, minor), &[])
    }

    /// Writes the trailer and returns the sink.
    pub fn finish(mut self) -> io::Result<W> {
        self.entry("TRAILER!!!", 0, (0, 0), &[])?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// Parsed `modules.dep`: module name -> (path relative to the tree, dependency paths).
pub struct ModuleDeps {
    by_name: HashMap<String, String>,
    deps: HashMap<String, Vec<String>>,
}

/// `kernel/fs/9p/9p.ko` -> `9p`; the kernel treats `-` and `_` alike.
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

impl ModuleDeps {
    pub fn parse(text: &str) -> Self {
        let mut by_name = HashMap::new();
        let mut deps = HashMap::new();
        for line in text.lines() {
            let Some((module, rest)) = line.split_once(':') else {
                continue;
            };
            let module = module.trim().to_string();
            by_name.insert(module_name(&module), module.clone());
            deps.insert(module, rest.split_whitespace().map(str::to_string).collect());
        }
        Self { by_name, deps }
    }

    /// Paths of `roots` and everything they need, each after its dependencies.
    pub fn load_order(&self, roots: &[&str], tree: &Path) -> Result<Vec<String>> {
        let mut order = Vec::new();
        let mut seen = HashSet::new();
        for root in roots {
            let path = self
                .by_name
                .get(&root.replace('-', "_"))
                .ok_or_else(|| Error::ModuleMissing { name: root.to_string(), tree: tree.to_path_buf() })?;
            self.visit(path, &mut seen, &mut order);
        }
        Ok(order)
    }

    fn visit(&self, path: &str, seen: &mut HashSet<String>, order: &mut Vec<String>) {
        if !seen.insert(path.to_string()) {
            return;
        }
        for dep in self.deps.get(path).into_iter().flatten() {
            self.visit(dep, seen, order);
        }
        order.push(path.to_string());
    }
}

/// Builds the initramfs for the module tree `modules_dir` (`.../lib/modules/VERSION`).
pub fn build(busybox: &Path, modules_dir: &Path, out: &Path) -> Result<()> {
    let dep_path = modules_dir.join("modules.dep");
    let dep_text = std::fs::read_to_string(&dep_path).map_err(|e| Error::io("reading", &dep_path, e))?;
    let order = ModuleDeps::parse(&dep_text).load_order(STAGE1_MODULES, modules_dir)?;
    let busybox_bin = std::fs::read(busybox).map_err(|e| Error::io("reading", busybox, e))?;

    let file = std::fs::File::create(out).map_err(|e| Error::io("creating", out, e))?;
    let wrap = |e| Error::io("writing", out, e);
    let mut cpio = Cpio::new(io::BufWriter::new(file));
    for dir in ["bin", "sbin", "dev", "proc", "sys", "hostroot", "xfer", "rw", "newroot", "modules"] {
        cpio.dir(dir).map_err(wrap)?;
    }
    cpio.char_dev("dev/console", 0o600, 5, 1).map_err(wrap)?;
    cpio.char_dev("dev/null", 0o666, 1, 3).map_err(wrap)?;
    cpio.file("bin/busybox", 0o755, &busybox_bin).map_err(wrap)?;
    cpio.file("init", 0o755, INIT_SCRIPT.as_bytes()).map_err(wrap)?;
    let mut list = String::new();
    for rel in &order {
        let src = modules_dir.join(rel);
        let data = std::fs::read(&src).map_err(|e| Error::io("reading", &src, e))?;
        let name = rel.rsplit('/').next().unwrap_or(rel);
        cpio.file(&format!("modules/{name}"), 0o644, &data).map_err(wrap)?;
        list.push_str(name);
        list.push('\n');
    }
    cpio.file("modules/order", 0o644, list.as_bytes()).map_err(wrap)?;
    cpio.finish().map_err(wrap)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpio_entries_are_aligned_and_terminated() {
        let mut cpio = Cpio::new(Vec::new());
        cpio.dir("bin").unwrap();
        cpio.file("init", 0o755, b"#!/bin/sh\n").unwrap();
        cpio.char_dev("dev/console", 0o600, 5, 1).unwrap();
        let bytes = cpio.finish().unwrap();
        assert_eq!(bytes.len() % 4, 0);
        assert!(bytes.starts_with(b"070701"));
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("init\0"));
        assert!(text.contains("#!/bin/sh\n"));
        assert!(text.contains("TRAILER!!!\0"));
        // The second header starts on a 4-byte boundary right after "bin\0" + padding.
        let second = text.match_indices("070701").nth(1).unwrap().0;
        assert_eq!(second % 4, 0);
        // File mode of `init` is a regular file 0755 (0x81ed).
        assert!(text.contains("07070100000002000081ed"));
    }

    #[test]
    fn load_order_puts_dependencies_first() {
        let deps = ModuleDeps::parse(
            "kernel/fs/9p/9p.ko: kernel/net/9p/9pnet.ko kernel/fs/netfs/netfs.ko\n\
             kernel/net/9p/9pnet.ko:\n\
             kernel/fs/netfs/netfs.ko:\n\
             kernel/net/9p/9pnet_virtio.ko: kernel/net/9p/9pnet.ko kernel/drivers/virtio/virtio.ko\n\
             kernel/drivers/virtio/virtio.ko:\n\
             kernel/drivers/vfio/pci/vfio-pci.ko: kernel/drivers/vfio/vfio.ko\n\
             kernel/drivers/vfio/vfio.ko:\n",
        );
        let order = deps.load_order(&["9pnet_virtio", "9p", "vfio_pci"], Path::new("/m")).unwrap();
        let pos = |m: &str| order.iter().position(|p| p.ends_with(m)).unwrap();
        assert!(pos("/9pnet.ko") < pos("/9pnet_virtio.ko"));
        assert!(pos("/virtio.ko") < pos("/9pnet_virtio.ko"));
        assert!(pos("/netfs.ko") < pos("/9p.ko"));
        assert!(pos("/vfio.ko") < pos("/vfio-pci.ko"));
        assert_eq!(order.iter().filter(|p| p.ends_with("/9pnet.ko")).count(), 1);
        assert!(matches!(deps.load_order(&["nope"], Path::new("/m")), Err(Error::ModuleMissing { .. })));
    }
}
