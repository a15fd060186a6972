//! Debian's tgtd (STGT) as a peer iSCSI target for initiator tests: one
//! target (tid 1) with a disk LUN 1 backed by a sparse file in /dev/shm,
//! on a free port of 127.0.0.1, optionally behind CHAP (one way or
//! mutual). It can be restarted on the same port with the same data, so
//! that an initiator's reconnects can be tested.
//!
//! Each instance has its own management channel (`tgtd -C N`, a unix
//! socket `/var/run/tgtd/socket.N` guarded by a lock file). N is the
//! iSCSI port modulo 32768 (tgtd accepts 0..=32767): ports are handed out
//! from the ephemeral range, which is narrower than 32768, so two live
//! instances never share N. tgtd refuses to start on a taken N, and keeps
//! running without a portal when its port is taken; both are detected and
//! retried with another port.
//!
//! tgtd ignores SIGTERM: it is stopped by deleting its target and then the
//! "system" through tgtadm, and killed if it does not exit.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::TempDir;
use crate::iscsi_host::free_port;

const TGTD: &str = "/usr/sbin/tgtd";
const TGTADM: &str = "/usr/sbin/tgtadm";

/// How long tgtd may take to answer on its management channel.
const START_LIMIT: Duration = Duration::from_secs(15);
/// How long tgtd may take to exit once asked to.
const STOP_LIMIT: Duration = Duration::from_secs(5);
/// How long one tgtadm call may take.
const ADM_LIMIT: Duration = Duration::from_secs(10);

/// Options for [`Tgtd::start`].
#[derive(Clone, Debug)]
pub struct TgtdOpts {
    /// Size of LUN 1 in MiB.
    pub mib: u64,
    /// Name of the target.
    pub iqn: String,
    /// Incoming account (user, password): the initiator must authenticate.
    pub chap: Option<(String, String)>,
    /// Outgoing account (user, password): the target authenticates itself.
    pub mutual: Option<(String, String)>,
    /// Logical block size of LUN 1.
    pub block_size: u32,
}

impl Default for TgtdOpts {
    fn default() -> Self {
        TgtdOpts { mib: 64, iqn: "iqn.2016-06.io.tgt:pollux-test".into(), chap: None, mutual: None, block_size: 512 }
    }
}

/// A running tgtd, stopped on drop; its backing file is removed on drop.
pub struct Tgtd {
    opts: TgtdOpts,
    port: u16,
    control: u16,
    child: Option<Child>,
    backing: PathBuf,
    log: PathBuf,
    /// Where the current run's output starts in the log.
    run_start: usize,
    _dir: TempDir,
}

/// Why a freshly spawned tgtd is not usable on its port.
enum Collision {
    /// Another tgtd holds the management channel.
    Control,
    /// Something else listens on the iSCSI port.
    Portal,
}

impl Tgtd {
    /// Start tgtd on a free port and configure the target; panics (with
    /// tgtd's log) if that fails.
    pub fn start(opts: TgtdOpts) -> Tgtd {
        assert!(opts.block_size >= 512 && opts.block_size.is_power_of_two(), "block size {} is not one tgtd takes", opts.block_size);
        assert!((opts.mib << 20) % u64::from(opts.block_size) == 0, "{} MiB is not a whole number of blocks", opts.mib);
        for tool in [TGTD, TGTADM] {
            assert!(Path::new(tool).is_file(), "{tool} is missing: install Debian's `tgt` package");
        }
        let dir = TempDir::new("tgtd");
        let log = dir.join("tgtd.log");
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let backing = PathBuf::from(format!("/dev/shm/pollux-tgtd-{}-{n}.img", std::process::id()));
        let file = File::create(&backing).unwrap_or_else(|e| panic!("create {}: {e}", backing.display()));
        file.set_len(opts.mib << 20).unwrap_or_else(|e| panic!("size {}: {e}", backing.display()));
        drop(file);
        let mut t = Tgtd { opts, port: 0, control: 0, child: None, backing, log, run_start: 0, _dir: dir };
        let mut tries = 0;
        loop {
            tries += 1;
            let port = free_port();
            let control = port & 0x7fff;
            if control == 0 {
                continue; // the system tgtd's channel
            }
            (t.port, t.control) = (port, control);
            t.spawn();
            match t.wait_up() {
                Ok(()) => break,
                Err(c) if tries < 20 => {
                    let why = match c {
                        Collision::Control => "its management channel is taken",
                        Collision::Portal => "its port is taken",
                    };
                    t.note(&format!("{why}: trying another port"));
                    t.kill();
                }
                Err(_) => panic!("tgtd found no free port in {tries} tries; its log:\n{}", t.log()),
            }
        }
        t.configure();
        t
    }

    /// The iSCSI port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The target's name.
    pub fn iqn(&self) -> &str {
        &self.opts.iqn
    }

    /// A libiscsi URL for `lun` (without credentials).
    pub fn url(&self, lun: u16) -> String {
        format!("iscsi://127.0.0.1:{}/{}/{lun}", self.port, self.opts.iqn)
    }

    /// The file backing LUN 1.
    pub fn backing_file(&self) -> &Path {
        &self.backing
    }

    /// Everything tgtd printed so far, over all its runs.
    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// Stop tgtd (closing its connections) and wait for it to exit; kill
    /// it if it does not. Does nothing if it is not running.
    pub fn stop(&mut self) {
        let Some(child) = self.child.as_mut() else { return };
        if child.try_wait().ok().flatten().is_none() {
            // Without the target gone, tgtd refuses to delete the system.
            let _ = self.adm(&["--lld", "iscsi", "--op", "delete", "--mode", "target", "--tid", "1", "--force"]);
            let _ = self.adm(&["--op", "delete", "--mode", "system"]);
        }
        let child = self.child.as_mut().expect("running");
        let t0 = Instant::now();
        while t0.elapsed() < STOP_LIMIT {
            if child.try_wait().ok().flatten().is_some() {
                self.child = None;
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.note("did not exit when asked to: killed");
        self.kill();
    }

    /// Stop tgtd and start it again on the same port, with the same
    /// configuration and backing file (so the same data).
    pub fn restart(&mut self) {
        self.stop();
        let t0 = Instant::now();
        loop {
            self.note("restart");
            self.spawn();
            match self.wait_up() {
                Ok(()) => break,
                // Someone took the port (or the channel) while tgtd was
                // down: wait for it to go away.
                Err(_) if t0.elapsed() < START_LIMIT => {
                    self.kill();
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(_) => panic!("tgtd could not get its port {} back; its log:\n{}", self.port, self.log()),
            }
        }
        self.configure();
    }

    fn spawn(&mut self) {
        self.note(&format!("{TGTD} -f -C {} --iscsi portal=127.0.0.1:{}", self.control, self.port));
        let log = OpenOptions::new().create(true).append(true).open(&self.log).expect("open tgtd log");
        self.run_start = self.log().len();
        let child = Command::new(TGTD)
            .arg("-f")
            .arg("-C")
            .arg(self.control.to_string())
            .arg("--iscsi")
            .arg(format!("portal=127.0.0.1:{}", self.port))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup tgtd log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {TGTD}: {e}"));
        self.child = Some(child);
    }

    /// Wait until our tgtd answers on its channel and listens on our port.
    fn wait_up(&mut self) -> Result<(), Collision> {
        let portal = format!("Portal: 127.0.0.1:{},", self.port);
        let t0 = Instant::now();
        while t0.elapsed() < START_LIMIT {
            let child = self.child.as_mut().expect("spawned");
            if let Some(st) = child.try_wait().expect("wait for tgtd") {
                self.child = None;
                if self.run_log().contains(&format!("another tgtd is using /var/run/tgtd/socket.{}.lock", self.control)) {
                    return Err(Collision::Control);
                }
                panic!("tgtd exited ({st}) while starting; its log:\n{}", self.log());
            }
            let out = self.adm(&["--lld", "iscsi", "--op", "show", "--mode", "portal"]);
            if out.is_some_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains(&portal)) {
                return Ok(());
            }
            // The channel may be another tgtd's (then ours exits, above);
            // if it is ours, its portal is set up before the channel.
            if self.run_log().contains(&format!("failed to create/bind to portal 127.0.0.1:{}\n", self.port)) {
                return Err(Collision::Portal);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("tgtd did not answer on management channel {} within {START_LIMIT:?}; its log:\n{}", self.control, self.log());
    }

    /// Create the target, its LUN, its ACL and accounts; check that the
    /// tgtd answering is ours.
    fn configure(&self) {
        let tid = ["--lld", "iscsi", "--tid", "1"];
        let shown = self.adm_ok("list targets", &["--lld", "iscsi", "--op", "show", "--mode", "target"]);
        assert!(
            shown.trim().is_empty(),
            "tgtd on channel {} is not a fresh one of ours: it has\n{shown}\nlog:\n{}",
            self.control,
            self.log()
        );
        self.adm_ok("create the target", &[&tid[..], &["--op", "new", "--mode", "target", "-T", &self.opts.iqn]].concat());
        let backing = self.backing.to_str().expect("UTF-8 path");
        let mut lun = [&tid[..], &["--op", "new", "--mode", "logicalunit", "--lun", "1", "-b", backing]].concat();
        let bs = self.opts.block_size.to_string();
        if self.opts.block_size != 512 {
            lun.extend(["--blocksize", &bs]);
        }
        self.adm_ok("create LUN 1", &lun);
        self.adm_ok("open the target to all initiators", &[&tid[..], &["--op", "bind", "--mode", "target", "-I", "ALL"]].concat());
        for (account, outgoing) in [(&self.opts.chap, false), (&self.opts.mutual, true)] {
            let Some((user, password)) = account else { continue };
            self.adm_ok(
                "create a CHAP account",
                &["--lld", "iscsi", "--op", "new", "--mode", "account", "--user", user, "--password", password],
            );
            let mut bind = [&tid[..], &["--op", "bind", "--mode", "account", "--user", user]].concat();
            if outgoing {
                bind.push("--outgoing");
            }
            self.adm_ok("bind a CHAP account", &bind);
        }
        let shown = self.adm_ok("list targets", &["--lld", "iscsi", "--op", "show", "--mode", "target"]);
        assert!(
            shown.contains(&format!("Target 1: {}\n", self.opts.iqn)) && shown.contains(&format!("Backing store path: {backing}\n")),
            "tgtd on channel {} does not show our target:\n{shown}\nlog:\n{}",
            self.control,
            self.log()
        );
    }

    /// Run tgtadm on our channel; `None` if it did not finish in time.
    /// Set an iSCSI parameter of the target (`tgtadm --op update`), e.g.
    /// `HeaderDigest` to `CRC32C,None` (tgtd offers None alone by default).
    /// Not kept across [`Tgtd::restart`].
    pub fn set_param(&self, name: &str, value: &str) {
        self.adm_ok(
            "set a target parameter",
            &["--lld", "iscsi", "--tid", "1", "--op", "update", "--mode", "target", "--name", name, "--value", value],
        );
    }

    fn adm(&self, args: &[&str]) -> Option<Output> {
        let child = Command::new(TGTADM)
            .arg("-C")
            .arg(self.control.to_string())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {TGTADM}: {e}"));
        let pid = child.id();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(child.wait_with_output()));
        match rx.recv_timeout(ADM_LIMIT) {
            Ok(out) => Some(out.expect("wait for tgtadm")),
            Err(_) => {
                // SAFETY: kill with the pid of our tgtadm, which has not
                // exited (so is not reaped, its pid not reused) unless it
                // did so in the instant since the deadline.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                None
            }
        }
    }

    /// Run tgtadm and return its output; panic with tgtd's log if it fails.
    fn adm_ok(&self, what: &str, args: &[&str]) -> String {
        let out = self
            .adm(args)
            .unwrap_or_else(|| panic!("tgtadm -C {} {} ({what}) hung; tgtd's log:\n{}", self.control, args.join(" "), self.log()));
        assert!(
            out.status.success(),
            "tgtadm -C {} {} ({what}) failed ({}): {}{}\ntgtd's log:\n{}",
            self.control,
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// What the current run of tgtd printed.
    fn run_log(&self) -> String {
        self.log().get(self.run_start..).unwrap_or_default().to_string()
    }

    /// Add a line of ours to the log.
    fn note(&self, what: &str) {
        if let Ok(mut f) = OpenOptions::new().create(true).append(true).open(&self.log) {
            let _ = writeln!(f, "==== pollux-tests: {what}");
        }
    }
}

impl Drop for Tgtd {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_file(&self.backing);
        if self.control != 0 {
            // tgtd leaves its channel's socket and lock file behind.
            for tail in ["", ".lock"] {
                let _ = std::fs::remove_file(format!("/var/run/tgtd/socket.{}{tail}", self.control));
            }
        }
    }
}
