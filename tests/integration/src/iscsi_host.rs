//! Helpers for the iSCSI target's tests: a daemon exporting a malloc LUN
//! on a free port, libiscsi URLs, and a small raw iSCSI initiator that can
//! also send what a real one never would (malformed and out-of-order PDUs).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::{Value, json};

use crate::{Daemon, DaemonOpts};

/// A free TCP port on 127.0.0.1 (bound and released).
pub fn free_port() -> u16 {
    crate::free_port()
}

/// The target name of [`config`].
pub fn target_iqn(name: &str) -> String {
    format!("iqn.2016-06.io.spdk:{name}")
}

/// A config: a thin (malloc) LUN of `mib` MiB behind target `name` on
/// 127.0.0.1:`port`, open to any initiator; `extra` calls appended to the
/// iscsi subsystem (auth groups and the like come before the target).
pub fn config(port: u16, name: &str, mib: u64, chap: Option<Value>) -> Value {
    let mut iscsi = vec![
        json!({"method": "iscsi_create_portal_group", "params": {"tag": 1, "portals": [{"host": "127.0.0.1", "port": port.to_string()}]}}),
        json!({"method": "iscsi_create_initiator_group", "params": {"tag": 1, "initiators": ["ANY"], "netmasks": ["127.0.0.1/8"]}}),
    ];
    let mut target = json!({"name": name, "alias_name": "Pollux test", "pg_ig_maps": [{"pg_tag": 1, "ig_tag": 1}],
        "luns": [{"bdev_name": "Malloc0", "lun_id": 0}], "queue_depth": 64});
    if let Some(c) = chap {
        iscsi.push(json!({"method": "iscsi_create_auth_group", "params": {"tag": 1, "secrets": [c]}}));
        target["chap_group"] = json!(1);
        target["require_chap"] = json!(true);
    }
    iscsi.push(json!({"method": "iscsi_create_target_node", "params": target}));
    json!({"subsystems": [
        {"subsystem": "bdev", "config": [
            {"method": "bdev_malloc_create", "params": {"name": "Malloc0", "num_blocks": mib * 2048, "block_size": 512}}
        ]},
        {"subsystem": "iscsi", "config": iscsi}
    ]})
}

/// [`config`] with `iscsi_set_options` called first with `options`.
pub fn config_with_options(port: u16, name: &str, mib: u64, options: Value) -> Value {
    let mut cfg = config(port, name, mib, None);
    cfg["subsystems"][1]["config"]
        .as_array_mut()
        .expect("the iscsi calls")
        .insert(0, json!({"method": "iscsi_set_options", "params": options}));
    cfg
}

/// Start pollux-tgt on `cpumask` with [`config`].
pub fn start(cpumask: &str, cfg: Value) -> Daemon {
    Daemon::start(DaemonOpts { cpumask: cpumask.into(), config: Some(cfg), ..Default::default() })
}

/// A libiscsi URL for LUN 0 of `name`.
pub fn url(port: u16, name: &str, auth: Option<(&str, &str)>) -> String {
    match auth {
        Some((u, p)) => format!("iscsi://{u}%{p}@127.0.0.1:{port}/{}/0", target_iqn(name)),
        None => format!("iscsi://127.0.0.1:{port}/{}/0", target_iqn(name)),
    }
}

/// Result of a libiscsi compliance run, split the way CUnit does not.
#[derive(Debug, Default, Clone)]
pub struct Compliance {
    pub passed: Vec<String>,
    pub failed: Vec<String>,
    pub skipped: Vec<String>,
}

/// Parse `iscsi-test-cu` verbose output. A test failed if CUnit printed
/// FAILED as its verdict (lines like `[FAILED] ...` are a helper's own
/// report, not the verdict); it was skipped if it printed `[SKIPPED]`.
pub fn parse_cunit(out: &str) -> Compliance {
    let mut r = Compliance::default();
    let mut suite = String::new();
    let mut cur: Option<(String, Vec<String>)> = None;
    let finish = |c: Option<(String, Vec<String>)>, r: &mut Compliance| {
        let Some((name, lines)) = c else { return };
        let failed = lines.iter().any(|l| {
            let t = l.trim_end();
            !t.contains("[FAILED]") && (t == "FAILED" || t.ends_with("...FAILED") || t.ends_with(" FAILED") && !t.contains('['))
        });
        if failed {
            r.failed.push(name);
        } else if lines.iter().any(|l| l.contains("[SKIPPED]")) {
            r.skipped.push(name);
        } else if lines.iter().any(|l| l.contains("passed")) {
            r.passed.push(name);
        } else {
            r.failed.push(format!("{name} (no verdict)"));
        }
    };
    for line in out.lines() {
        if let Some(s) = line.strip_prefix("Suite: ") {
            finish(cur.take(), &mut r);
            suite = s.trim().to_string();
            continue;
        }
        if line.starts_with("Run Summary") {
            finish(cur.take(), &mut r);
            continue;
        }
        let t = line.trim_start();
        if let Some(rest) = t.strip_prefix("Test: ") {
            finish(cur.take(), &mut r);
            let (name, tail) = rest.split_once(" ...").unwrap_or((rest, ""));
            cur = Some((format!("{suite}.{name}"), vec![tail.to_string()]));
            continue;
        }
        if let Some((_, lines)) = cur.as_mut() {
            lines.push(line.to_string());
        }
    }
    finish(cur.take(), &mut r);
    r
}

// ---- a raw initiator ----

/// A raw iSCSI connection (no digests, default segment sizes).
pub struct RawConn {
    pub s: TcpStream,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    pub itt: u32,
    /// Data digests (CRC32C) negotiated: `recv` reads and checks them.
    pub data_digest: bool,
}

/// A received PDU: header and data.
#[derive(Debug, Clone)]
pub struct RawPdu {
    pub bhs: [u8; 48],
    pub data: Vec<u8>,
}

impl RawPdu {
    pub fn opcode(&self) -> u8 {
        self.bhs[0] & 0x3f
    }
    pub fn u32_at(&self, at: usize) -> u32 {
        u32::from_be_bytes(self.bhs[at..at + 4].try_into().unwrap())
    }
}

/// Sense key, ASC and ASCQ of a SCSI Response carrying fixed or
/// descriptor format sense data.
pub fn sense_of(p: &RawPdu) -> Option<(u8, u8, u8)> {
    if p.opcode() != 0x21 || p.data.len() < 2 {
        return None;
    }
    let len = u16::from_be_bytes([p.data[0], p.data[1]]) as usize;
    let s = p.data.get(2..2 + len)?;
    match s.first()? & 0x7f {
        0x70 | 0x71 if s.len() >= 14 => Some((s[2] & 0x0f, s[12], s[13])),
        0x72 | 0x73 if s.len() >= 4 => Some((s[1] & 0x0f, s[2], s[3])),
        _ => None,
    }
}

pub fn keys(pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut v = Vec::new();
    for (k, val) in pairs {
        v.extend_from_slice(k.as_bytes());
        v.push(b'=');
        v.extend_from_slice(val.as_bytes());
        v.push(0);
    }
    v
}

/// The bytes of a PDU without digests: the header with its data segment
/// length set, the data, and padding.
pub fn pdu_bytes(mut bhs: [u8; 48], data: &[u8]) -> Vec<u8> {
    let n = (data.len() as u32).to_be_bytes();
    bhs[5..8].copy_from_slice(&n[1..]);
    let mut buf = bhs.to_vec();
    buf.extend_from_slice(data);
    buf.resize(buf.len() + (4 - data.len() % 4) % 4, 0);
    buf
}

impl RawConn {
    pub fn connect(port: u16) -> RawConn {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the target");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_nodelay(true).unwrap();
        RawConn { s, cmd_sn: 1, exp_stat_sn: 0, itt: 1, data_digest: false }
    }

    /// Send a header (48 bytes) and data, padded.
    pub fn send(&mut self, bhs: [u8; 48], data: &[u8]) -> std::io::Result<()> {
        self.s.write_all(&pdu_bytes(bhs, data))
    }

    /// Receive one PDU (`None` when the target closed the connection).
    pub fn recv(&mut self) -> Option<RawPdu> {
        let mut bhs = [0u8; 48];
        self.s.read_exact(&mut bhs).ok()?;
        let ahs = bhs[4] as usize * 4;
        let dlen = u32::from_be_bytes([0, bhs[5], bhs[6], bhs[7]]) as usize;
        let dd = if self.data_digest && dlen > 0 { 4 } else { 0 };
        let mut rest = vec![0u8; ahs + dlen + (4 - dlen % 4) % 4 + dd];
        self.s.read_exact(&mut rest).ok()?;
        let data = rest[ahs..ahs + dlen].to_vec();
        if dd > 0 {
            let end = rest.len() - 4;
            let want = u32::from_le_bytes(rest[end..].try_into().unwrap());
            assert_eq!(crate::nvmf_client::crc32c(&rest[ahs..end]), want, "data digest of a PDU with opcode {:#x}", bhs[0] & 0x3f);
        }
        if bhs[0] & 0x3f != 0x25 || bhs[1] & 0x01 != 0 {
            // Everything but Data-In without status carries a StatSN.
            self.exp_stat_sn = u32::from_be_bytes(bhs[24..28].try_into().unwrap()).wrapping_add(1);
        }
        Some(RawPdu { bhs, data })
    }

    /// Log in (normal session to `target`, or discovery if `None`) with
    /// the given extra keys, straight through operational negotiation.
    pub fn login(&mut self, initiator: &str, target: Option<&str>, isid_tail: u8) -> RawPdu {
        self.login_with(initiator, target, isid_tail, 0, 0, &[])
    }

    /// Log in a connection with CID `cid` to session `tsih` (0: a new
    /// session), adding `extra` keys (such as `MaxConnections`); a key of
    /// `extra` replaces the default of the same name.
    pub fn login_with(
        &mut self,
        initiator: &str,
        target: Option<&str>,
        isid_tail: u8,
        tsih: u16,
        cid: u16,
        extra: &[(&str, &str)],
    ) -> RawPdu {
        let mut h = [0u8; 48];
        h[0] = 0x40 | 0x03;
        h[1] = 0x80 | (1 << 2) | 3;
        h[8..14].copy_from_slice(&[0x80, 0, 0, 0, 0, isid_tail]);
        h[14..16].copy_from_slice(&tsih.to_be_bytes());
        h[16..20].copy_from_slice(&self.itt.to_be_bytes());
        h[20..22].copy_from_slice(&cid.to_be_bytes());
        h[24..28].copy_from_slice(&self.cmd_sn.to_be_bytes());
        let mut k: Vec<(&str, &str)> = vec![("InitiatorName", initiator)];
        match target {
            Some(t) => k.extend([("SessionType", "Normal"), ("TargetName", t)]),
            None => k.push(("SessionType", "Discovery")),
        }
        k.extend([
            ("HeaderDigest", "None"),
            ("DataDigest", "None"),
            ("ImmediateData", "Yes"),
            ("InitialR2T", "Yes"),
            ("MaxRecvDataSegmentLength", "65536"),
        ]);
        for &(key, val) in extra {
            match k.iter_mut().find(|(x, _)| *x == key) {
                Some(kv) => kv.1 = val,
                None => k.push((key, val)),
            }
        }
        self.send(h, &keys(&k)).expect("send login");
        self.itt += 1;
        self.recv().expect("login response")
    }

    /// The TSIH a login response gave.
    pub fn tsih_of(login_response: &RawPdu) -> u16 {
        u16::from_be_bytes([login_response.bhs[14], login_response.bhs[15]])
    }

    /// Send a SCSI command (with `data` as immediate data); returns its ITT.
    pub fn command(&mut self, cdb: &[u8], edtl: u32, read: bool, write: bool, data: &[u8]) -> u32 {
        let itt = self.itt;
        let h = self.scsi_header(cdb, edtl, read, write);
        self.send(h, data).expect("send command");
        itt
    }

    /// Receive until the PDU that ends command (or function) `itt`: a SCSI
    /// Response, Data-In with status (its data is the gathered data-in), or
    /// a Task Management Response; other PDUs for `itt` are skipped, and a
    /// PDU for another task is a test failure.
    pub fn wait_for(&mut self, itt: u32) -> Option<RawPdu> {
        let mut data = Vec::new();
        loop {
            let mut p = self.recv()?;
            if p.opcode() == 0x20 {
                continue; // NOP-In
            }
            assert_eq!(p.u32_at(16), itt, "expected a PDU for task {itt:#x}, got opcode {:#x} for {:#x}", p.opcode(), p.u32_at(16));
            match p.opcode() {
                0x25 => {
                    data.extend_from_slice(&p.data);
                    if p.bhs[1] & 0x01 != 0 {
                        p.data = data;
                        return Some(p);
                    }
                }
                0x21 | 0x22 => return Some(p),
                _ => {}
            }
        }
    }

    /// Send a Task Management Function Request (immediate); returns its ITT.
    pub fn task_mgmt(&mut self, function: u8, lun: u8, referenced_itt: u32) -> u32 {
        let itt = self.itt;
        self.itt += 1;
        let mut h = [0u8; 48];
        h[0] = 0x40 | 0x02;
        h[1] = 0x80 | function;
        h[9] = lun;
        h[16..20].copy_from_slice(&itt.to_be_bytes());
        h[20..24].copy_from_slice(&referenced_itt.to_be_bytes());
        h[24..28].copy_from_slice(&self.cmd_sn.to_be_bytes());
        h[28..32].copy_from_slice(&self.exp_stat_sn.to_be_bytes());
        self.send(h, &[]).expect("send TMF");
        itt
    }

    /// Send a Text Request (F and C bits as given) and return the answer.
    pub fn text(&mut self, itt: u32, ttt: u32, fin: bool, cont: bool, data: &[u8]) -> Option<RawPdu> {
        let mut h = [0u8; 48];
        h[0] = 0x04;
        h[1] = if fin { 0x80 } else { 0 } | if cont { 0x40 } else { 0 };
        h[16..20].copy_from_slice(&itt.to_be_bytes());
        h[20..24].copy_from_slice(&ttt.to_be_bytes());
        h[24..28].copy_from_slice(&self.cmd_sn.to_be_bytes());
        h[28..32].copy_from_slice(&self.exp_stat_sn.to_be_bytes());
        self.cmd_sn += 1;
        self.send(h, data).ok()?;
        self.recv()
    }

    /// Send one Data-Out PDU.
    pub fn data_out(&mut self, itt: u32, ttt: u32, data_sn: u32, offset: u32, data: &[u8], last: bool) -> std::io::Result<()> {
        let mut d = [0u8; 48];
        d[0] = 0x05;
        d[1] = if last { 0x80 } else { 0 };
        d[16..20].copy_from_slice(&itt.to_be_bytes());
        d[20..24].copy_from_slice(&ttt.to_be_bytes());
        d[28..32].copy_from_slice(&self.exp_stat_sn.to_be_bytes());
        d[36..40].copy_from_slice(&data_sn.to_be_bytes());
        d[40..44].copy_from_slice(&offset.to_be_bytes());
        self.send(d, data)
    }

    /// TEST UNIT READY: (status, sense key, ASC, ASCQ).
    pub fn test_unit_ready(&mut self) -> Option<(u8, u8, u8, u8)> {
        let itt = self.command(&[0u8; 6], 0, false, false, &[]);
        let p = self.wait_for(itt)?;
        let (k, asc, ascq) = sense_of(&p).unwrap_or((0, 0, 0));
        Some((p.bhs[3], k, asc, ascq))
    }

    /// A SCSI Command PDU header.
    pub fn scsi_header(&mut self, cdb: &[u8], edtl: u32, read: bool, write: bool) -> [u8; 48] {
        let mut h = [0u8; 48];
        h[0] = 0x01;
        h[1] = 0x80 | if read { 0x40 } else { 0 } | if write { 0x20 } else { 0 } | 0x01;
        h[16..20].copy_from_slice(&self.itt.to_be_bytes());
        h[20..24].copy_from_slice(&edtl.to_be_bytes());
        h[24..28].copy_from_slice(&self.cmd_sn.to_be_bytes());
        h[28..32].copy_from_slice(&self.exp_stat_sn.to_be_bytes());
        h[32..32 + cdb.len()].copy_from_slice(cdb);
        self.itt += 1;
        self.cmd_sn += 1;
        h
    }

    /// WRITE(10) of `data` (whole blocks) at `lba`, answering R2Ts.
    /// Returns the SCSI status.
    pub fn write10(&mut self, lba: u32, data: &[u8]) -> Option<u8> {
        let blocks = (data.len() / 512) as u16;
        let mut cdb = [0u8; 10];
        cdb[0] = 0x2a;
        cdb[2..6].copy_from_slice(&lba.to_be_bytes());
        cdb[7..9].copy_from_slice(&blocks.to_be_bytes());
        let h = self.scsi_header(&cdb, data.len() as u32, false, true);
        let imm = data.len().min(8192);
        self.send(h, &data[..imm]).ok()?;
        loop {
            let p = self.recv()?;
            match p.opcode() {
                0x31 => {
                    // R2T: send the asked-for range in Data-Out PDUs of at
                    // most 64 KiB (below any MaxRecvDataSegmentLength the
                    // target declares), F on the last.
                    let off = p.u32_at(40) as usize;
                    let len = p.u32_at(44) as usize;
                    let (itt, ttt) = (p.u32_at(16), p.u32_at(20));
                    let mut at = off;
                    let mut data_sn = 0;
                    while at < off + len {
                        let n = (off + len - at).min(64 * 1024);
                        self.data_out(itt, ttt, data_sn, at as u32, &data[at..at + n], at + n == off + len).ok()?;
                        at += n;
                        data_sn += 1;
                    }
                }
                0x21 => return Some(p.bhs[3]),
                _ => {}
            }
        }
    }

    /// READ(10) of `blocks` at `lba`: (status, data).
    pub fn read10(&mut self, lba: u32, blocks: u16) -> Option<(u8, Vec<u8>)> {
        let mut cdb = [0u8; 10];
        cdb[0] = 0x28;
        cdb[2..6].copy_from_slice(&lba.to_be_bytes());
        cdb[7..9].copy_from_slice(&blocks.to_be_bytes());
        let h = self.scsi_header(&cdb, blocks as u32 * 512, true, false);
        self.send(h, &[]).ok()?;
        let mut data = Vec::new();
        loop {
            let p = self.recv()?;
            match p.opcode() {
                0x25 => {
                    data.extend_from_slice(&p.data);
                    if p.bhs[1] & 0x01 != 0 {
                        return Some((p.bhs[3], data));
                    }
                }
                0x21 => return Some((p.bhs[3], data)),
                _ => {}
            }
        }
    }
}
