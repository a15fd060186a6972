//! Seed inputs: valid exchanges for every target, written into the corpus
//! by `cargo run -p pollux-fuzz --example seeds` (files named `seed-*`;
//! inputs fuzzing found are kept beside them under their hash).

mod iscsi;
mod iscsi_host;
mod lvol;
mod nvmf;
mod nvmf_host;
mod rpc;
mod scsi;

use pollux_iscsi::text;

/// One seed: its target, a name, the input.
pub struct Seed {
    pub target: &'static str,
    pub name: String,
    pub data: Vec<u8>,
}

/// Every seed of every target.
pub fn all() -> Vec<Seed> {
    let mut out = Vec::new();
    let mut add = |target: &'static str, list: Vec<(String, Vec<u8>)>| {
        out.extend(list.into_iter().map(|(name, data)| Seed { target, name, data }));
    };
    add("iscsi_text", iscsi::iscsi_text());
    add("iscsi_pdu", iscsi::iscsi_pdu());
    add("scsi_cdb", scsi::scsi_cdb());
    add("nvmf_tcp_pdu", nvmf::nvmf_tcp_pdu());
    add("nvmf_capsule", nvmf::nvmf_capsule());
    add("nvmf_host_pdu", nvmf_host::nvmf_host_pdu());
    add("nvmf_host_logs", nvmf_host::nvmf_host_logs());
    add("nvmf_rdma_capsule", nvmf::nvmf_rdma_capsule());
    add("resv_ptpl", nvmf::resv_ptpl());
    add("lvol_md", lvol::lvol_md());
    add("raid_sb", raid_sb());
    add("nbd_wire", nbd_wire());
    add("metrics_http", metrics_http());
    add("setup_text", setup_text());
    add("iscsi_host_pdu", iscsi_host::iscsi_host_pdu());
    add("iscsi_host_scsi", iscsi_host::iscsi_host_scsi());
    add("jsonrpc_framing", rpc::jsonrpc_framing());
    add("rpc_params", rpc::rpc_params());
    out
}

/// Seeds of `nbd_wire`: what the kernel sends (writes with their data,
/// reads, FUA, flush, trim, a disconnect), requests refused (beyond the
/// end, misaligned, unknown), a bad magic, and a stream cut mid-write.
fn nbd_wire() -> Vec<(String, Vec<u8>)> {
    use pollux_nbd::proto::{CMD_FLAG_FUA, Request, cmd};
    let r = |c: u16, flags: u16, from: u64, len: u32| Request { cmd: c, flags, handle: [0; 8], from, len }.encode().to_vec();
    let write = |from: u64, len: u32| [r(cmd::WRITE, 0, from, len), vec![0xa5; len as usize]].concat();
    let mut io = write(0, 4096);
    io.extend(r(cmd::READ, 0, 0, 4096));
    io.extend([r(cmd::WRITE, CMD_FLAG_FUA, 4096, 512), vec![1; 512]].concat());
    io.extend(r(cmd::FLUSH, 0, 0, 0));
    io.extend(r(cmd::TRIM, 0, 8192, 8192));
    io.extend(r(cmd::READ, 0, 0, 16384));
    let mut disc = io.clone();
    disc.extend(r(cmd::DISC, 0, 0, 0));
    disc.extend(r(cmd::READ, 0, 0, 512));
    let mut refused = write(1 << 40, 512);
    refused.extend(r(cmd::READ, 0, 3, 512));
    refused.extend(r(cmd::WRITE_ZEROES, 0, 0, 512));
    refused.extend(r(99, 0, 0, 512));
    refused.extend(r(cmd::READ, 0, 0, 0));
    refused.extend(write(0, 1024));
    refused.extend(r(cmd::DISC, 0, 0, 0));
    let mut bad = write(0, 512);
    let mut b = r(cmd::READ, 0, 0, 512);
    b[0] ^= 0xff;
    bad.extend(b);
    bad.extend(r(cmd::READ, 0, 0, 512));
    let mut cut = r(cmd::READ, 0, 0, 512);
    cut.extend(&write(0, 4096)[..1000]);
    let s = |n: &str, mode: u8, d: &[u8]| (n.to_string(), [&[mode][..], d].concat());
    vec![
        s("io-512", 0xfe, &io),
        s("io-4k-bytewise", 1, &io),
        s("disconnect", 0x40, &disc),
        s("refused", 0x81, &refused),
        s("bad-magic", 0x20, &bad),
        s("cut", 0x10, &cut),
    ]
}

/// Seeds of `setup_text`: each parser's text as the kernel writes it (a
/// mountinfo with escapes and hugetlbfs, /proc/swaps, /proc/PID/maps with
/// a hugepage file and a path with spaces), sizes, hugetlbfs names, PCI
/// addresses; the first byte picks the parser (7: all).
fn setup_text() -> Vec<(String, Vec<u8>)> {
    let s = |n: &str, which: u8, t: &str| (n.to_string(), [&[which][..], t.as_bytes()].concat());
    vec![
        s(
            "mountinfo",
            0,
            "22 1 0:21 / / rw,relatime - overlay overlay rw,lowerdir=/l\n30 22 259:1 / /mnt/my\\040data rw shared:1 - ext4 /dev/nvme0n1p1 rw\n31 22 0:40 / /dev/hugepages rw,relatime - hugetlbfs nodev rw,pagesize=2M\n",
        ),
        s(
            "swaps",
            1,
            "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n/dev/nvme0n1p2                          partition\t8388604\t\t0\t\t-2\n/swap\\040file file 1024 0 -3\n",
        ),
        s(
            "maps",
            2,
            "7f0000000000-7f0000200000 rw-s 00000000 00:28 1234                       /dev/hugepages/spdk_pid42map_0\n7f1000000000-7f1000001000 r--p 00000000 103:02 98765 /usr/lib/my lib.so (deleted)\n7ffc0000-7ffd0000 rw-p 00000000 00:00 0                          [stack]\n",
        ),
        s("sizes", 3, "2M,1G,2048kB,1024M,4096K,0M,18446744073709551615K"),
        s("pagesize", 4, "rw,relatime,pagesize=1024M"),
        s("names", 5, "pollux_pid1234_7"),
        s("bdfs", 6, "0000:00:04.0,00:05.1,0000:AB:1f.7"),
        s("all", 7, "rw,pagesize=2M"),
    ]
}

/// Seeds of `metrics_http`: what Prometheus and curl send, a request in
/// pieces, another method and path, and a head that never ends.
fn metrics_http() -> Vec<(String, Vec<u8>)> {
    let s = |n: &str, b: &[u8]| (n.to_string(), b.to_vec());
    vec![
        s("prometheus", b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:9464\r\nUser-Agent: Prometheus/2.42.0\r\nAccept: application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.4,*/*;q=0.1\r\nAccept-Encoding: gzip\r\nX-Prometheus-Scrape-Timeout-Seconds: 10\r\n\r\n"),
        s("curl", b"GET /metrics?x=1 HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n"),
        s("partial", b"GET /metr"),
        s("post", b"POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"),
        s("other-path", b"GET / HTTP/1.0\r\n\r\n"),
        s("no-end", &[b'x'; 300]),
    ]
}

/// Seeds of `raid_sb`: superblocks as SPDK writes them (raid1 of two, one
/// failed; raid0 of four), each with its CRC and once with mode bit set.
fn raid_sb() -> Vec<(String, Vec<u8>)> {
    use pollux_raid::sb::{Entry, SB_CONFIGURED, SB_FAILED, Superblock};
    let mk = |level: u32, n: u8, strip: u32| Superblock {
        uuid: uuid::Uuid::from_u128(0x1234_5678_9abc_def0_1234_5678_9abc_def0),
        name: format!("Raid{level}"),
        raid_size: 65536,
        block_size: 512,
        level,
        strip_size: strip,
        seq_number: 3,
        num_base_bdevs: n,
        entries: (0..n)
            .map(|i| Entry {
                uuid: uuid::Uuid::from_u128(0xabcd_0000 + i as u128),
                data_offset: 2048,
                data_size: 65536,
                state: if i == 1 && level == 1 { SB_FAILED } else { SB_CONFIGURED },
                slot: i,
            })
            .collect(),
    };
    let mut out = Vec::new();
    for (name, sb) in [("raid1-degraded", mk(1, 2, 0)), ("raid0-four", mk(0, 4, 128))] {
        let img = sb.render();
        out.push((format!("{name}-as-written"), [&[0u8][..], &img].concat()));
        out.push((format!("{name}-crc-fixed"), [&[1u8][..], &img].concat()));
    }
    out
}

pub(super) fn pairs(list: &[(&str, &str)]) -> Vec<u8> {
    let mut t = Vec::new();
    for (k, v) in list {
        text::push(&mut t, k, v);
    }
    t
}
