//! Running one command in one fresh guest.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::config::VmConfig;
use crate::error::{Error, InfraFailure, Infrastructure, Result};
use crate::setup::{Cache, QBOOT, QEMU, default_cache_dir};

/// Set in the guest's environment for every command (value `1`).
pub const GUEST_ENV: &str = "POLLUX_TESTVM_GUEST";
/// QEMU's exit code when the guest wrote 0x10 to the isa-debug-exit port.
const REPORTED: i32 = 33;
const GUEST_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const GUEST_SCRIPT: &str = include_str!("guest.sh");
const CONSOLE_TAIL_LINES: usize = 80;
/// How long a guest whose kernel crashed may go on (for the console to
/// carry the whole report) before the VM is stopped.
const CRASH_GRACE: Duration = Duration::from_secs(5);
/// Lines of the console shown from a kernel crash's first line.
const CRASH_LINES: usize = 40;

/// A command to run in the guest, as root, in a clean environment (PATH, HOME,
/// TERM, `POLLUX_TESTVM_GUEST=1` and what [`GuestCommand::env`] adds).
#[derive(Clone, Debug)]
pub struct GuestCommand {
    label: Option<String>,
    program: OsString,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    cwd: Option<PathBuf>,
}

impl GuestCommand {
    /// `program` is looked up in the guest's PATH; the guest's root is the host's.
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        Self { label: None, program: program.as_ref().into(), args: Vec::new(), env: Vec::new(), cwd: None }
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().into());
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(mut self, args: I) -> Self {
        self.args.extend(args.into_iter().map(|a| a.as_ref().into()));
        self
    }

    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env.push((key.as_ref().into(), value.as_ref().into()));
        self
    }

    /// Name of this run in the timing line (default: the program's file name).
    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.label = Some(label.into());
        self
    }

    fn display_label(&self) -> String {
        self.label.clone().unwrap_or_else(|| Path::new(&self.program).file_name().unwrap_or_default().to_string_lossy().into_owned())
    }

    /// Working folder in the guest (default `/`).
    pub fn current_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cwd = Some(dir.into());
        self
    }

    /// The `cmd.sh` stage 2 runs.
    fn script(&self) -> Result<Vec<u8>> {
        let mut s = b"# written by pollux-testvm\n".to_vec();
        let cwd = self.cwd.as_deref().unwrap_or(Path::new("/"));
        s.extend_from_slice(b"cd ");
        push_quoted(&mut s, cwd.as_os_str());
        s.extend_from_slice(b" || exit 125\nexec env -i --");
        let mut env: Vec<(OsString, OsString)> = vec![
            ("PATH".into(), GUEST_PATH.into()),
            ("HOME".into(), "/root".into()),
            ("TERM".into(), "dumb".into()),
            (GUEST_ENV.into(), "1".into()),
        ];
        env.extend(self.env.iter().cloned());
        for (k, v) in &env {
            let key = k.as_bytes();
            if key.is_empty() || key.contains(&b'=') || key.contains(&0) {
                return Err(Error::Config(format!("invalid environment variable name {k:?}")));
            }
            let mut pair = k.clone();
            pair.push("=");
            pair.push(v);
            s.push(b' ');
            push_quoted(&mut s, &pair);
        }
        for word in std::iter::once(&self.program).chain(&self.args) {
            s.push(b' ');
            push_quoted(&mut s, word);
        }
        s.push(b'\n');
        Ok(s)
    }
}

/// POSIX single-quoting: every byte is literal except `'`, written as `'\''`.
fn push_quoted(out: &mut Vec<u8>, word: &OsStr) {
    out.push(b'\'');
    for &b in word.as_bytes() {
        if b == b'\'' {
            out.extend_from_slice(b"'\\''");
        } else {
            out.push(b);
        }
    }
    out.push(b'\'');
}

/// Where the time of one run went.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Wall clock from starting QEMU to its exit.
    pub total: Duration,
    /// Guest uptime when the command started (kernel boot + guest set-up).
    pub boot: Duration,
    /// Guest time the command itself took.
    pub command: Duration,
}

/// The command ran (whatever its status); this is what it left.
#[derive(Clone, Debug)]
pub struct GuestOutput {
    /// The command's exit status (128+N when killed by signal N).
    pub status: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// The guest's serial console (kernel messages, stage 1/2 messages).
    pub console: String,
    pub timing: Timing,
}

impl GuestOutput {
    pub fn success(&self) -> bool {
        self.status == 0
    }

    pub fn stdout_lossy(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn stderr_lossy(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// A guest description bound to a set-up cache. Each [`TestVm::run`] boots a fresh
/// guest in its own temporary folder (NVMe images, transfer share, console log).
#[derive(Clone, Debug)]
pub struct TestVm {
    cache: Cache,
    config: VmConfig,
    report: bool,
}

impl TestVm {
    /// Uses the default cache ([`default_cache_dir`]); fails with
    /// [`Error::NotSetUp`] naming the set-up command when it is incomplete.
    pub fn new(config: VmConfig) -> Result<Self> {
        Self::with_cache(config, &default_cache_dir())
    }

    pub fn with_cache(config: VmConfig, cache_dir: &Path) -> Result<Self> {
        config.validate().map_err(Error::Config)?;
        Ok(Self { cache: Cache::open(cache_dir)?, config, report: true })
    }

    /// Do not write the timing line of each run to stderr.
    pub fn quiet(mut self) -> Self {
        self.report = false;
        self
    }

    pub fn config(&self) -> &VmConfig {
        &self.config
    }

    /// Boots a guest, runs `cmd` in it and powers it off. `Ok` whenever the
    /// command ran, even if it failed; `Err(Error::Infrastructure)` when the VM
    /// itself failed, with the console attached.
    pub fn run(&self, cmd: &GuestCommand) -> Result<GuestOutput> {
        if std::env::var_os(GUEST_ENV).is_some() {
            return Err(Error::Nested(format!("{:?}", cmd.program)));
        }
        let _slot = crate::slot::Slot::acquire(&self.cache.dir)?;
        let work = tempfile::Builder::new()
            .prefix("pollux-testvm-")
            .tempdir()
            .map_err(|e| Error::io("creating a temporary folder in", std::env::temp_dir(), e))?;
        let xfer = work.path().join("xfer");
        let result = self.prepare(work.path(), &xfer, cmd).and_then(|args| self.boot(work.path(), &xfer, &args));
        if self.report {
            report_time(&cmd.display_label(), &result);
        }
        if matches!(&result, Err(e) if e.is_infrastructure()) {
            // Keep the console and the images for a post-mortem; the error names the folder.
            let _ = work.keep();
        }
        result
    }

    fn prepare(&self, work: &Path, xfer: &Path, cmd: &GuestCommand) -> Result<Vec<OsString>> {
        let write = |name: &str, data: &[u8]| {
            let path = xfer.join(name);
            std::fs::write(&path, data).map_err(|e| Error::io("writing", path, e))
        };
        std::fs::create_dir(xfer).map_err(|e| Error::io("creating", xfer, e))?;
        let cfg = &self.config;
        let mut config = String::new();
        config.push_str(&format!("TESTVM_NVME_DRIVER={}\n", cfg.nvme_driver.as_str()));
        config.push_str(&format!("TESTVM_NAMESPACES={}\n", cfg.controllers * cfg.namespaces));
        let modules = self.cache.modules.as_os_str().as_bytes();
        write("config.sh", &[b"TESTVM_MODULES=", modules, b"\n", config.as_bytes()].concat())?;
        write("guest.sh", GUEST_SCRIPT.as_bytes())?;
        write("cmd.sh", &cmd.script()?)?;
        if cfg.network {
            write("network", b"")?;
        }
        for c in 0..cfg.controllers {
            for n in 0..cfg.namespaces {
                let path = work.join(format!("nvme{c}n{}.img", n + 1));
                let f = File::create(&path).map_err(|e| Error::io("creating", &path, e))?;
                f.set_len(cfg.namespace_bytes).map_err(|e| Error::io("sizing", &path, e))?;
            }
        }
        Ok(qemu_args(&self.cache, cfg, work, xfer))
    }

    fn boot(&self, work: &Path, xfer: &Path, args: &[OsString]) -> Result<GuestOutput> {
        let stderr_path = work.join("qemu-stderr.log");
        let stderr = File::create(&stderr_path).map_err(|e| Error::io("creating", &stderr_path, e))?;
        let start = Instant::now();
        let mut child = Command::new(QEMU)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|source| Error::Spawn { program: QEMU.into(), source })?;
        let limit = self.config.timeout;
        let mut watch = CrashWatch::new(work.join("console.log"));
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if start.elapsed() >= limit || watch.crashed_for() >= CRASH_GRACE => {
                    // Only the QEMU we started, by its pid (Child::kill sends SIGKILL to it).
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
                Ok(None) => {
                    watch.poll();
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(Error::io("waiting for QEMU", work, e));
                }
            }
        };
        let elapsed = start.elapsed();
        let console = std::fs::read(work.join("console.log")).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
        let crash = crash_start(&console);
        let infra = |kind: InfraFailure| {
            Error::Infrastructure(Box::new(Infrastructure {
                kind,
                elapsed,
                work_dir: work.to_path_buf(),
                qemu_stderr: std::fs::read_to_string(&stderr_path).unwrap_or_default(),
                command_output: ["stdout", "stderr"]
                    .iter()
                    .map(|f| {
                        let text = std::fs::read(xfer.join(f)).unwrap_or_default();
                        format!("[{f}]\n{}", tail(&String::from_utf8_lossy(&text), CONSOLE_TAIL_LINES / 2))
                    })
                    .collect::<Vec<_>>()
                    .join("\n"),
                console: match crash {
                    Some(at) => crash_report(&console, at),
                    None => tail(&console, CONSOLE_TAIL_LINES),
                },
            }))
        };
        // A kernel crash is the cause whatever came after it (a timeout, a
        // guest that powered off, or even a command that finished: a run
        // with a crashed kernel is not one to trust).
        if let Some(at) = crash {
            let line = console.lines().nth(at).unwrap_or_default().trim().to_string();
            return Err(infra(InfraFailure::GuestKernelCrash(line)));
        }
        let Some(status) = status else {
            return Err(infra(InfraFailure::Timeout(limit)));
        };
        if status.code() != Some(REPORTED) {
            return Err(infra(InfraFailure::NoReport(status.to_string())));
        }
        if let Ok(msg) = std::fs::read_to_string(xfer.join("setup-error")) {
            return Err(infra(InfraFailure::GuestSetup(msg.trim().to_string())));
        }
        let code = std::fs::read_to_string(xfer.join("status"))
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
            .ok_or_else(|| infra(InfraFailure::StatusLost))?;
        let read = |name: &str| std::fs::read(xfer.join(name)).unwrap_or_default();
        let uptime = String::from_utf8_lossy(&read("uptime")).into_owned();
        let (boot, end) = parse_uptime(&uptime).unwrap_or((0.0, 0.0));
        Ok(GuestOutput {
            status: code,
            stdout: read("stdout"),
            stderr: read("stderr"),
            console,
            timing: Timing { total: elapsed, boot: Duration::from_secs_f64(boot), command: Duration::from_secs_f64((end - boot).max(0.0)) },
        })
    }
}

/// One line per guest run on the real stderr (not libtest's captured output), so
/// CI logs show what the VM costs even for passing tests.
fn report_time(label: &str, result: &Result<GuestOutput>) {
    let line = match result {
        Ok(out) => format!(
            "[pollux-testvm] {label}: VM {:.1} s (guest boot {:.1} s, command {:.1} s), exit {}\n",
            out.timing.total.as_secs_f64(),
            out.timing.boot.as_secs_f64(),
            out.timing.command.as_secs_f64(),
            out.status
        ),
        Err(Error::Infrastructure(infra)) => {
            format!("[pollux-testvm] {label}: VM {:.1} s, infrastructure failure: {}\n", infra.elapsed.as_secs_f64(), infra.kind)
        }
        Err(e) => format!("[pollux-testvm] {label}: not run: {e}\n"),
    };
    let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
}

fn parse_uptime(text: &str) -> Option<(f64, f64)> {
    let mut it = text.split_whitespace().map(|w| w.parse::<f64>().ok());
    let (a, b) = (it.next()??, it.next()??);
    (a.is_finite() && b.is_finite() && a >= 0.0).then_some((a, b))
}

/// Watches the guest's console for a kernel crash while the VM runs: a
/// crash leaves the guest up with whatever hit it stuck (a target's thread
/// killed in a system call, its peer retrying for ever), so the run would
/// otherwise last until its timeout and show only the retries.
struct CrashWatch {
    path: PathBuf,
    read: u64,
    line: Vec<u8>,
    since: Option<Instant>,
    last_look: Option<Instant>,
}

impl CrashWatch {
    fn new(path: PathBuf) -> CrashWatch {
        CrashWatch { path, read: 0, line: Vec::new(), since: None, last_look: None }
    }

    /// Read what the console gained (at most every 200 ms).
    fn poll(&mut self) {
        use std::io::{Read, Seek, SeekFrom};
        if self.since.is_some() || self.last_look.is_some_and(|t| t.elapsed() < Duration::from_millis(200)) {
            return;
        }
        self.last_look = Some(Instant::now());
        let Ok(mut f) = File::open(&self.path) else { return };
        if f.seek(SeekFrom::Start(self.read)).is_err() {
            return;
        }
        let mut new = Vec::new();
        let Ok(n) = f.read_to_end(&mut new) else { return };
        self.read += n as u64;
        for &b in &new {
            if b == b'\n' {
                if is_kernel_crash(&String::from_utf8_lossy(&self.line)) {
                    self.since = Some(Instant::now());
                    return;
                }
                self.line.clear();
            } else if self.line.len() < 4096 {
                self.line.push(b);
            }
        }
    }

    /// How long since a crash was seen (zero if none was).
    fn crashed_for(&self) -> Duration {
        self.since.map_or(Duration::ZERO, |t| t.elapsed())
    }
}

/// A console line that starts a kernel crash report: a BUG() or an oops
/// (the kernel's die() header, "invalid opcode: 0000 [#1] ..."). Warnings
/// and soft lockups (which a guest under TCG on a loaded host may report
/// and survive) are not.
fn is_kernel_crash(line: &str) -> bool {
    if line.contains("kernel BUG at ") || line.contains("Oops: ") {
        return true;
    }
    line.match_indices(" [#").any(|(i, m)| {
        let rest = &line[i + m.len()..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        digits > 0 && rest[digits..].starts_with(']')
    })
}

/// Index of the console's first line that marks a kernel crash
/// ([`is_kernel_crash`]; the report shows the line before it too, which
/// often names what was detected).
fn crash_start(console: &str) -> Option<usize> {
    console.lines().position(is_kernel_crash)
}

/// The crash's first lines, then the console's last ones.
fn crash_report(console: &str, at: usize) -> String {
    let lines: Vec<&str> = console.lines().collect();
    let from = at.saturating_sub(1);
    let to = (from + CRASH_LINES).min(lines.len());
    let mut out = format!("(from the kernel crash, line {})\n{}", from + 1, lines[from..to].join("\n"));
    if to < lines.len() {
        out.push_str(&format!("\n[...]\n(last lines)\n{}", tail(console, CONSOLE_TAIL_LINES / 2)));
    }
    out
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// QEMU's option syntax doubles commas inside values.
fn opt_path(p: &Path) -> OsString {
    let escaped = p.as_os_str().as_bytes().iter().fold(Vec::new(), |mut v, &b| {
        v.push(b);
        if b == b',' {
            v.push(b',');
        }
        v
    });
    OsStr::from_bytes(&escaped).to_os_string()
}

fn joined(parts: &[&OsStr]) -> OsString {
    parts.iter().fold(OsString::new(), |mut s, p| {
        s.push(p);
        s
    })
}

/// The QEMU command line (see docs/testvm.md for why each part is there).
fn qemu_args(cache: &Cache, cfg: &VmConfig, work: &Path, xfer: &Path) -> Vec<OsString> {
    let mut a: Vec<OsString> = Vec::new();
    let mut push = |items: &[&str]| a.extend(items.iter().map(OsString::from));
    push(&["-machine", "q35", "-accel", "tcg,thread=multi", "-cpu", "max"]);
    push(&["-m", &cfg.memory_mib.to_string(), "-smp", &cfg.cpus.to_string()]);
    push(&["-nodefaults", "-display", "none", "-vga", "none", "-no-reboot", "-bios", QBOOT]);
    push(&["-device", "intel-iommu,intremap=on,caching-mode=on,aw-bits=48"]);
    push(&["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]);
    let mut append = String::from(
        "console=ttyS0 quiet loglevel=3 panic=-1 intel_iommu=on iommu=pt \
         cryptomgr.notests mitigations=off no_timer_check",
    );
    if cfg.hugepages > 0 {
        append.push_str(&format!(" hugepages={}", cfg.hugepages));
    }
    push(&["-append", &append]);
    a.push("-serial".into());
    a.push(joined(&["file:".as_ref(), work.join("console.log").as_os_str()]));
    a.push("-kernel".into());
    a.push(cache.vmlinux.clone().into());
    a.push("-initrd".into());
    a.push(cache.initrd.clone().into());
    a.push("-virtfs".into());
    a.push("local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap".into());
    a.push("-virtfs".into());
    a.push(joined(&["local,path=".as_ref(), &opt_path(xfer), ",mount_tag=xfer,security_model=none".as_ref()]));
    for c in 0..cfg.controllers {
        a.push("-device".into());
        a.push(format!("nvme,id=nvme{c},serial=pollux{c}").into());
        for n in 1..=cfg.namespaces {
            let image = work.join(format!("nvme{c}n{n}.img"));
            a.push("-drive".into());
            a.push(joined(&["file=".as_ref(), &opt_path(&image), format!(",if=none,id=nvme{c}n{n},format=raw").as_ref()]));
            a.push("-device".into());
            a.push(format!("nvme-ns,drive=nvme{c}n{n},bus=nvme{c},nsid={n}").into());
        }
    }
    if cfg.network {
        a.extend(["-netdev", "user,id=net0", "-device", "virtio-net-pci,netdev=net0,romfile="].map(OsString::from));
    } else {
        a.extend(["-nic", "none"].map(OsString::from));
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script(cmd: &GuestCommand) -> String {
        String::from_utf8(cmd.script().unwrap()).unwrap()
    }

    #[test]
    fn command_script_quotes_everything() {
        let cmd = GuestCommand::new("/bin/echo").arg("it's").arg("$HOME `x`").env("A", "b c").current_dir("/work/my dir");
        let s = script(&cmd);
        assert!(s.contains("cd '/work/my dir' || exit 125"), "{s}");
        assert!(s.contains("'A=b c'"), "{s}");
        assert!(s.contains("'POLLUX_TESTVM_GUEST=1'"), "{s}");
        assert!(s.contains("exec env -i -- 'PATH="), "{s}");
        assert!(s.ends_with("' '/bin/echo' 'it'\\''s' '$HOME `x`'\n"), "{s}");
    }

    #[test]
    fn command_script_rejects_bad_env_names() {
        assert!(GuestCommand::new("x").env("A=B", "c").script().is_err());
        assert!(GuestCommand::new("x").env("", "c").script().is_err());
    }

    #[test]
    fn qemu_line_has_controllers_namespaces_and_network() {
        let cache = Cache {
            dir: "/c".into(),
            kernel_version: "v".into(),
            vmlinux: "/c/vmlinux".into(),
            initrd: "/c/initrd.img".into(),
            modules: "/c/kernel/lib/modules".into(),
        };
        let cfg = VmConfig::new().controllers(2).namespaces(2).network(true).hugepages(8);
        let args = qemu_args(&cache, &cfg, Path::new("/w,x"), Path::new("/w,x/xfer"));
        let line: Vec<String> = args.iter().map(|a| a.to_string_lossy().into_owned()).collect();
        let line = line.join(" ");
        assert_eq!(line.matches("-device nvme,").count(), 2);
        assert_eq!(line.matches("-device nvme-ns,").count(), 4);
        assert!(line.contains("nvme-ns,drive=nvme1n2,bus=nvme1,nsid=2"));
        assert!(line.contains("file=/w,,x/nvme1n2.img,if=none"));
        assert!(line.contains("path=/w,,x/xfer,mount_tag=xfer"));
        assert!(line.contains("hugepages=8"));
        assert!(line.contains("virtio-net-pci"));
        assert!(!line.contains("-nic none"));
        let plain = qemu_args(&cache, &VmConfig::new().controllers(0), Path::new("/w"), Path::new("/x"));
        assert!(plain.iter().any(|a| a == "none"));
        assert!(!plain.iter().any(|a| a.to_string_lossy().contains("nvme")));
    }

    #[test]
    fn kernel_crashes_are_told_from_warnings() {
        // The report that stopped a guest (Debian 6.1.192, the kernel's
        // nvme-tcp host sending a user buffer's huge page).
        let console = "[    6.29] nvme nvme1: new ctrl\n\
            [    6.298639] usercopy: Kernel memory exposure attempt detected from page alloc (offset 2093056, size 16360)!\n\
            [    6.300324] kernel BUG at mm/usercopy.c:101!\n\
            [    6.301463] invalid opcode: 0000 [#1] PREEMPT SMP NOPTI\n\
            [    6.301770] CPU: 1 PID: 148 Comm: reactor_1 Not tainted 6.1.0-57-amd64 #1  Debian 6.1.192-3\n";
        assert_eq!(crash_start(console), Some(2));
        let report = crash_report(console, 2);
        assert!(report.starts_with("(from the kernel crash, line 2)\n[    6.298639] usercopy"), "{report}");
        assert!(is_kernel_crash("[ 1.0] general protection fault, probably for non-canonical address 0xdead: 0000 [#2] SMP"));
        assert!(is_kernel_crash("[ 1.0] Oops: 0002 [#1] PREEMPT SMP"));
        for benign in [
            "[ 1.0] WARNING: CPU: 0 PID: 1 at fs/x.c:1 f+0x1/0x2",
            "[ 1.0] watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [kworker/0:1:12]",
            "[ 1.0] CPU: 1 PID: 148 Comm: reactor_1 Not tainted 6.1.0-57-amd64 #1  Debian",
            "[ 1.0] nvme nvme1: queue 1: timeout request 0x1 type 6",
            "[#]",
        ] {
            assert!(!is_kernel_crash(benign), "{benign}");
        }
    }

    #[test]
    fn uptime_and_tail_parsing() {
        assert_eq!(parse_uptime("2.50 3.75\n"), Some((2.5, 3.75)));
        assert_eq!(parse_uptime("garbage"), None);
        assert_eq!(tail("a\nb\nc", 2), "b\nc");
    }
}
