//! One-time set-up of the cache: Debian packages, the guest kernel (vmlinux and
//! its module tree) and the initramfs. [`Cache::open`] checks the result.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::error::{Error, Result};
use crate::{initramfs, kernel};

/// Debian packages the harness needs on the host.
pub const PACKAGES: &[&str] = &["qemu-system-x86", "busybox-static", "kmod", "xz-utils"];
/// The meta package whose dependency names the generic guest kernel.
pub const KERNEL_META: &str = "linux-image-amd64";

pub(crate) const QEMU: &str = "qemu-system-x86_64";
pub(crate) const QBOOT: &str = "/usr/share/qemu/qboot.rom";
const BUSYBOX: &str = "/bin/busybox";
/// Bumped whenever the cache layout or the initramfs contents change.
const FORMAT: &str = "1";
const MANIFEST: &str = "manifest";

/// A set-up cache folder.
#[derive(Clone, Debug)]
pub struct Cache {
    pub dir: PathBuf,
    pub kernel_version: String,
    pub vmlinux: PathBuf,
    pub initrd: PathBuf,
    /// `.../lib/modules` of the guest kernel, bind-mounted over the guest's `/lib/modules`.
    pub modules: PathBuf,
}

/// The cache folder: `$POLLUX_TESTVM_CACHE`, else `<repository>/.testvm-cache`.
pub fn default_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("POLLUX_TESTVM_CACHE") {
        return PathBuf::from(dir);
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    std::fs::canonicalize(&repo).unwrap_or(repo).join(".testvm-cache")
}

impl Cache {
    /// Opens a cache that `setup` completed, or says how to create it.
    pub fn open(dir: &Path) -> Result<Self> {
        let not_set_up = |reason: String| Error::NotSetUp { cache: dir.to_path_buf(), reason };
        let manifest = dir.join(MANIFEST);
        let text = std::fs::read_to_string(&manifest).map_err(|e| not_set_up(format!("{}: {e}", manifest.display())))?;
        let field = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
                .map(str::to_string)
                .ok_or_else(|| not_set_up(format!("manifest has no `{key}`")))
        };
        if field("format")? != FORMAT {
            return Err(not_set_up("the cache was built by another version".into()));
        }
        let kernel_version = field("kernel")?;
        let dir = std::fs::canonicalize(dir).map_err(|e| not_set_up(e.to_string()))?;
        let cache = Cache {
            vmlinux: dir.join("vmlinux"),
            initrd: dir.join("initrd.img"),
            modules: dir.join("kernel/lib/modules"),
            dir,
            kernel_version,
        };
        let needed = [
            cache.vmlinux.clone(),
            cache.initrd.clone(),
            cache.modules.join(&cache.kernel_version).join("modules.dep"),
            PathBuf::from(QBOOT),
        ];
        for path in needed {
            if !path.exists() {
                return Err(not_set_up(format!("{} is missing", path.display())));
            }
        }
        if find_in_path(QEMU).is_none() {
            return Err(not_set_up(format!("{QEMU} is not installed")));
        }
        Ok(cache)
    }
}

/// What `setup` should do.
#[derive(Clone, Debug)]
pub struct SetupOptions {
    pub cache_dir: PathBuf,
    /// Install missing Debian packages with apt-get (needs root).
    pub install_packages: bool,
    /// Rebuild even when the cache is complete.
    pub force: bool,
}

/// Prepares the cache; prints progress on stderr. Returns the opened cache.
pub fn setup(opts: &SetupOptions) -> Result<Cache> {
    ensure_packages(opts.install_packages)?;
    if !opts.force {
        if let Ok(cache) = Cache::open(&opts.cache_dir) {
            eprintln!("pollux-testvm: cache {} is complete", cache.dir.display());
            return Ok(cache);
        }
    }
    let dir = &opts.cache_dir;
    std::fs::create_dir_all(dir).map_err(|e| Error::io("creating", dir, e))?;
    // Invalidate first so an interrupted set-up is never mistaken for a complete one.
    let manifest = dir.join(MANIFEST);
    match std::fs::remove_file(&manifest) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(Error::io("removing", &manifest, e));
        }
        _ => {}
    }

    let package = kernel_package()?;
    let version =
        package.strip_prefix("linux-image-").ok_or_else(|| Error::KernelPackage(format!("unexpected package name {package}")))?.to_string();
    eprintln!("pollux-testvm: fetching {package}");
    let download = dir.join("download");
    recreate_dir(&download)?;
    run(Command::new("apt-get").arg("download").arg(&package).current_dir(&download))?;
    let deb = std::fs::read_dir(&download)
        .map_err(|e| Error::io("listing", &download, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension() == Some(OsStr::new("deb")))
        .ok_or_else(|| Error::KernelPackage(format!("apt-get download left no .deb for {package}")))?;

    let tree = dir.join("kernel");
    recreate_dir(&tree)?;
    eprintln!("pollux-testvm: unpacking {}", deb.display());
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree))?;
    run(Command::new("depmod").arg("-b").arg(&tree).arg(&version))?;
    std::fs::remove_dir_all(&download).map_err(|e| Error::io("removing", &download, e))?;

    eprintln!("pollux-testvm: extracting vmlinux");
    let vmlinuz = tree.join("boot").join(format!("vmlinuz-{version}"));
    kernel::extract_vmlinux(&vmlinuz, &dir.join("vmlinux"))?;

    eprintln!("pollux-testvm: building the initramfs");
    let modules_dir = tree.join("lib/modules").join(&version);
    initramfs::build(Path::new(BUSYBOX), &modules_dir, &dir.join("initrd.img"))?;

    let text = format!("format={FORMAT}\nkernel={version}\npackage={package}\n");
    std::fs::write(&manifest, text).map_err(|e| Error::io("writing", &manifest, e))?;
    Cache::open(dir)
}

fn recreate_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| Error::io("removing", dir, e))?;
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io("creating", dir, e))
}

fn is_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .stderr(Stdio::null())
        .output()
        .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).ends_with(" installed"))
        .unwrap_or(false)
}

fn ensure_packages(install: bool) -> Result<()> {
    let missing: Vec<String> = PACKAGES.iter().filter(|p| !is_installed(p)).map(|p| p.to_string()).collect();
    if missing.is_empty() {
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if !install || !root {
        return Err(Error::PackagesMissing { packages: missing });
    }
    eprintln!("pollux-testvm: installing {}", missing.join(" "));
    run(Command::new("apt-get").arg("update").arg("-q"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    Ok(())
}

/// The versioned kernel package `linux-image-amd64` depends on right now.
fn kernel_package() -> Result<String> {
    let query = || -> Result<Option<String>> {
        let out = output(Command::new("apt-cache").arg("depends").arg(KERNEL_META))?;
        Ok(out
            .lines()
            .find_map(|l| l.trim().strip_prefix("Depends:").map(str::trim).filter(|p| p.starts_with("linux-image-")))
            .map(str::to_string))
    };
    if let Ok(Some(p)) = query() {
        return Ok(p);
    }
    run(Command::new("apt-get").arg("update").arg("-q"))?;
    query()?.ok_or_else(|| Error::KernelPackage(format!("{KERNEL_META} names no linux-image dependency")))
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs a command, turning a failure into an error that carries its stderr.
pub(crate) fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|source| Error::Spawn { program: cmd.get_program().to_string_lossy().into_owned(), source })?;
    if !out.status.success() {
        return Err(Error::CommandFailed {
            command: describe(cmd),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn run(cmd: &mut Command) -> Result<()> {
    output(cmd).map(drop)
}

pub(crate) fn find_in_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(program)).find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_cache_says_how_to_set_up() {
        let dir = tempfile::tempdir().unwrap();
        let err = Cache::open(dir.path()).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::NotSetUp { .. }));
        assert!(msg.contains(crate::error::SETUP_COMMAND), "{msg}");
    }

    #[test]
    fn stale_format_is_not_set_up() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(MANIFEST), "format=0\nkernel=x\n").unwrap();
        let msg = Cache::open(dir.path()).unwrap_err().to_string();
        assert!(msg.contains("another version"), "{msg}");
    }
}
