//! A throw-away single-node Ceph cluster for tests (one monitor, one OSD on
//! memstore, cephx on), in a private directory on private ports, started
//! in about a second and stopped on drop. The recipe and the settings that
//! matter are in `../shared/notes/ceph.md`; Debian's `ceph-mon`, `ceph-osd`
//! and `ceph-common` provide the daemons and tools (the README's test
//! command installs them).

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::{TempDir, free_port, ok_stdout, tool};

pub struct Ceph {
    pub dir: TempDir,
    /// The cluster's config file and the admin keyring, as a client needs.
    pub conf: PathBuf,
    pub keyring: PathBuf,
    mon: Option<Child>,
    osd: Option<Child>,
}

fn uuid() -> String {
    ok_stdout("uuidgen", &Command::new(tool("uuidgen", "uuid-runtime")).output().expect("uuidgen")).trim().to_string()
}

impl Ceph {
    /// Create and start the cluster, with a replicated pool `rbd` (size 1)
    /// ready for images.
    pub fn start() -> Ceph {
        for t in ["ceph-mon", "ceph-osd", "ceph", "rbd", "ceph-authtool", "monmaptool"] {
            tool(t, "Ceph (ceph-mon, ceph-osd, ceph-common)");
        }
        let dir = TempDir::new("ceph");
        let d = dir.path().to_path_buf();
        let (v1, v2, base) = (free_port(), free_port(), free_port());
        let fsid = uuid();
        let addr = format!("[v2:127.0.0.1:{v2},v1:127.0.0.1:{v1}]");
        let ds = d.display();
        let conf = format!(
            "[global]
fsid = {fsid}
mon_host = {addr}
public_addr = 127.0.0.1
cluster_addr = 127.0.0.1
ms_bind_port_min = {base}
ms_bind_port_max = {}
run_dir = {ds}/run
admin_socket = {ds}/run/$name.asok
log_file = {ds}/$name.log
pid_file = {ds}/run/$name.pid
keyring = {ds}/keyring
osd_pool_default_size = 1
osd_pool_default_min_size = 1
mon_allow_pool_size_one = true
osd_crush_chooseleaf_type = 0
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
osd_pool_default_pg_autoscale_mode = off
paxos_propose_interval = 0.1
mon_mgr_mkfs_grace = 100000000
mon_warn_on_pool_no_redundancy = false
[mon]
mon_data = {ds}/mon
[osd]
osd_data = {ds}/osd
keyring = {ds}/osd/keyring
osd_objectstore = memstore
memstore_page_set = true
memstore_page_size = 4096
memstore_device_bytes = 2147483648
osd_min_pg_log_entries = 100
osd_max_pg_log_entries = 500
osd_pg_log_dups_tracked = 500
",
            base + 63
        );
        for sub in ["run", "mon", "osd"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        let conf_path = d.join("ceph.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let c = conf_path.to_str().unwrap().to_string();
        let p = |s: &str| d.join(s).to_str().unwrap().to_string();
        let run = |what: &str, cmd: &str, args: &[&str]| {
            let out = Command::new("timeout").arg("60").arg(cmd).args(args).output().unwrap_or_else(|e| panic!("{cmd}: {e}"));
            ok_stdout(what, &out)
        };
        run("mon key", "ceph-authtool", &["--create-keyring", &p("mon.keyring"), "--gen-key", "-n", "mon.", "--cap", "mon", "allow *"]);
        run(
            "admin key",
            "ceph-authtool",
            &[
                "--create-keyring",
                &p("keyring"),
                "--gen-key",
                "-n",
                "client.admin",
                "--cap",
                "mon",
                "allow *",
                "--cap",
                "osd",
                "allow *",
                "--cap",
                "mgr",
                "allow *",
            ],
        );
        run(
            "osd key",
            "ceph-authtool",
            &[
                "--create-keyring",
                &p("osd/keyring"),
                "--gen-key",
                "-n",
                "osd.0",
                "--cap",
                "mon",
                "allow profile osd",
                "--cap",
                "osd",
                "allow *",
            ],
        );
        run("import", "ceph-authtool", &[&p("mon.keyring"), "--import-keyring", &p("keyring")]);
        run("import", "ceph-authtool", &[&p("mon.keyring"), "--import-keyring", &p("osd/keyring")]);
        run("monmap", "monmaptool", &["--create", "--fsid", &fsid, "--addv", "a", &addr, &p("monmap")]);
        run("mon mkfs", "ceph-mon", &["-c", &c, "--mkfs", "-i", "a", "--monmap", &p("monmap"), "--keyring", &p("mon.keyring")]);
        let daemon = |cmd: &str, args: &[&str], log: &str| {
            Command::new(cmd)
                .args(args)
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(d.join(log)).unwrap())
                .stderr(Stdio::from(std::fs::File::create(d.join(format!("{log}.err"))).unwrap()))
                .spawn()
                .unwrap_or_else(|e| panic!("{cmd}: {e}"))
        };
        let mut me = Ceph { conf: conf_path.clone(), keyring: d.join("keyring"), mon: None, osd: None, dir };
        me.mon = Some(daemon("ceph-mon", &["-c", &c, "-i", "a", "-f"], "mon.out"));
        let osd_uuid = uuid();
        me.ceph(&["osd", "new", &osd_uuid, "0"]);
        run("osd mkfs", "ceph-osd", &["-c", &c, "-i", "0", "--mkfs", "--osd-uuid", &osd_uuid]);
        me.osd = Some(daemon("ceph-osd", &["-c", &c, "-i", "0", "-f"], "osd.out"));
        me.ceph(&["osd", "pool", "create", "rbd", "8", "8", "replicated"]);
        // Returns once the pool's placement groups are active.
        me.rbd(&["pool", "init", "rbd"]);
        me
    }

    fn tool_output(&self, cmd: &str, args: &[&str]) -> Output {
        Command::new("timeout").arg("60").arg(cmd).arg("-c").arg(&self.conf).args(args).output().unwrap_or_else(|e| panic!("{cmd}: {e}"))
    }

    /// Run `ceph` against the cluster; its stdout.
    pub fn ceph(&self, args: &[&str]) -> String {
        ok_stdout(&format!("ceph {}", args.join(" ")), &self.tool_output("ceph", args))
    }

    /// Run `rbd` against the cluster; its stdout.
    pub fn rbd(&self, args: &[&str]) -> String {
        ok_stdout(&format!("rbd {}", args.join(" ")), &self.tool_output("rbd", args))
    }

    /// Run `rbd`, success or not.
    pub fn rbd_output(&self, args: &[&str]) -> Output {
        self.tool_output("rbd", args)
    }

    /// Create image `rbd/NAME` of `mib` MiB (Ceph's default features).
    pub fn create_image(&self, name: &str, mib: u64) {
        self.rbd(&["create", "--size", &format!("{mib}M"), &format!("rbd/{name}")]);
    }

    /// Create image `rbd/NAME` with only the `layering` feature: no
    /// exclusive lock, so several gateways write it without handing a lock
    /// around, and one that dies holds nothing the others wait for.
    pub fn create_shared_image(&self, name: &str, mib: u64) {
        self.rbd(&["create", "--size", &format!("{mib}M"), "--image-feature", "layering", &format!("rbd/{name}")]);
    }

    /// `bdev_rbd_register_cluster` parameters for this cluster.
    pub fn cluster_params(&self, name: &str) -> serde_json::Value {
        serde_json::json!({"name": name, "config_file": self.conf.to_str().unwrap(), "key_file": self.keyring.to_str().unwrap()})
    }

    /// Stop the OSD (the data it held is gone: memstore).
    pub fn stop_osd(&mut self) {
        if let Some(c) = self.osd.take() {
            stop(c, "ceph-osd");
        }
    }

    /// The daemons' logs, for failure messages.
    pub fn logs(&self) -> String {
        ["mon.a.log", "osd.0.log"]
            .iter()
            .map(|f| {
                let t = std::fs::read_to_string(self.dir.join(f)).unwrap_or_default();
                let tail: Vec<&str> = t.lines().rev().take(20).collect();
                format!("--- {f} (last lines)\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"))
            })
            .collect()
    }
}

/// SIGTERM a daemon we started and reap it; SIGKILL if it does not exit.
fn stop(mut c: Child, what: &str) {
    // SAFETY: kill with the pid of our own child, not yet reaped.
    unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(10) {
        if c.try_wait().ok().flatten().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    eprintln!("{what} did not exit on SIGTERM; killing it");
    let _ = c.kill();
    let _ = c.wait();
}

impl Drop for Ceph {
    fn drop(&mut self) {
        if let Some(c) = self.osd.take() {
            stop(c, "ceph-osd");
        }
        if let Some(c) = self.mon.take() {
            stop(c, "ceph-mon");
        }
    }
}
