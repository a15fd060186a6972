//! Seeds of `scsi_cdb`.

use super::iscsi::{rw10, rw16};

fn cdb_rec(out: &mut Vec<u8>, flags: u8, cdb: &[u8], expected: u32, data: &[u8]) {
    out.push(flags);
    let mut c = [0u8; 16];
    c[..cdb.len()].copy_from_slice(cdb);
    out.extend_from_slice(&c);
    out.extend_from_slice(&expected.to_le_bytes()[..3]);
    out.extend_from_slice(&(data.len() as u16).to_le_bytes());
    out.extend_from_slice(data);
}

/// Data direction bits of a `scsi_cdb` record.
const IN: u8 = 1 << 2;
const OUT: u8 = 2 << 2;

pub(super) fn scsi_cdb() -> Vec<(String, Vec<u8>)> {
    let mut seeds = Vec::new();
    let mut s = |name: &str, recs: Vec<(u8, Vec<u8>, u32, Vec<u8>)>| {
        let mut d = Vec::new();
        for (f, c, e, data) in recs {
            cdb_rec(&mut d, f, &c, e, &data);
        }
        seeds.push((name.to_string(), d));
    };
    let tur = (0u8, vec![0x00; 6], 0u32, vec![]);
    s(
        "inquiry-vpd",
        [0x00u8, 0x80, 0x83, 0xb0, 0xb1, 0xb2, 0x86]
            .iter()
            .map(|p| (IN, vec![0x12, 1, *p, 1, 0, 0], 256, vec![]))
            .chain([(IN, vec![0x12, 0, 0, 0, 96, 0], 96, vec![]), (IN | 2, vec![0x12, 0, 0, 0, 255, 0], 255, vec![])])
            .collect(),
    );
    s(
        "capacity-luns-sense",
        vec![
            tur.clone(),
            (IN, vec![0x25; 10], 8, vec![]),
            (IN | 2, vec![0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0], 32, vec![]),
            (IN, vec![0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], 256, vec![]),
            (IN, vec![0x03, 0, 0, 0, 252, 0], 252, vec![]),
            (IN, vec![0x03, 1, 0, 0, 252, 0], 252, vec![]),
            (0, vec![0x1b, 0, 0, 0, 1, 0], 0, vec![]),
        ],
    );
    // LU 0 (512-byte blocks): every read and write form; LU 1 (4 KiB
    // blocks): one block written, then read and verified.
    let b = |n: usize| vec![7u8; 512 * n];
    s(
        "read-write-lu0",
        vec![
            tur.clone(),
            (OUT, vec![0x0a, 0, 0, 1, 1, 0], 512, b(1)),
            (IN, vec![0x08, 0, 0, 1, 1, 0], 512, vec![]),
            (OUT, rw10(0x2a, 2, 2), 1024, b(2)),
            (IN, rw10(0x28, 2, 2), 1024, vec![]),
            (OUT, vec![0xaa, 0x08, 0, 0, 0, 5, 0, 0, 0, 1, 0, 0], 512, b(1)),
            (IN, vec![0xa8, 0, 0, 0, 0, 5, 0, 0, 0, 1, 0, 0], 512, vec![]),
            (OUT, rw16(0x8a, 6, 1), 512, b(1)),
            (IN, rw16(0x88, 6, 1), 512, vec![]),
            (OUT, rw10(0x2e, 9, 1), 512, b(1)),
            (0, rw10(0x2f, 9, 1), 0, vec![]),
            (
                OUT,
                {
                    let mut c = rw10(0x2f, 9, 1);
                    c[1] = 0x02;
                    c
                },
                512,
                b(1),
            ),
            (OUT, rw16(0x9c, 12, 1), 512, b(1)),
            (OUT, rw16(0x8b, 12, 1), 1024, b(2)),
            (0, rw10(0x35, 0, 0), 0, vec![]),
            (0, rw16(0x91, 0, 0), 0, vec![]),
            (0, rw10(0x34, 0, 8), 0, vec![]),
            (0, rw16(0x90, 0, 8), 0, vec![]),
        ],
    );
    s(
        "read-write-lu1",
        vec![
            (2, vec![0x00; 6], 0, vec![]),
            (2 | OUT, rw10(0x2a, 3, 1), 4096, vec![5; 4096]),
            (2 | IN, rw10(0x28, 3, 1), 4096, vec![]),
            (2, rw10(0x2f, 3, 1), 0, vec![]),
            (
                2,
                {
                    let mut c = rw10(0x41, 4, 2);
                    c[1] = 0x01;
                    c
                },
                0,
                vec![],
            ),
            (2 | IN, rw16(0x88, 250, 10), 40960, vec![]),
        ],
    );
    let mut unmap = vec![0u8, 22, 0, 16, 0, 0, 0, 0];
    unmap.extend_from_slice(&2u64.to_be_bytes());
    unmap.extend_from_slice(&4u32.to_be_bytes());
    unmap.extend_from_slice(&[0; 4]);
    let mut gls = vec![0x9e, 0x12];
    gls.extend_from_slice(&0u64.to_be_bytes());
    gls.extend_from_slice(&64u32.to_be_bytes());
    gls.extend_from_slice(&[0, 0]);
    let mut caw = vec![0x89, 0];
    caw.extend_from_slice(&20u64.to_be_bytes());
    caw.extend_from_slice(&[0, 0, 0, 1, 0, 0]);
    s(
        "unmap-write-same-caw",
        vec![
            tur.clone(),
            (OUT, rw10(0x2a, 0, 8), 4096, vec![1; 4096]),
            (OUT, vec![0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0], 24, unmap),
            (IN, gls, 64, vec![]),
            (
                OUT,
                {
                    let mut c = rw10(0x41, 30, 4);
                    c[1] = 0x08;
                    c
                },
                512,
                vec![0; 512],
            ),
            (OUT, rw16(0x93, 40, 4), 512, vec![3; 512]),
            (OUT, caw.clone(), 1024, vec![0; 1024]),
            (OUT, caw, 1024, [vec![9; 512], vec![4; 512]].concat()),
        ],
    );
    let prout = |sa: u8, ty: u8, key: u64, sark: u64| {
        let mut p = vec![0u8; 24];
        p[0..8].copy_from_slice(&key.to_be_bytes());
        p[8..16].copy_from_slice(&sark.to_be_bytes());
        (OUT, vec![0x5f, sa, ty, 0, 0, 0, 0, 0, 24, 0], 24u32, p)
    };
    let prout_b = |sa: u8, ty: u8, key: u64, sark: u64| {
        let (f, c, e, p) = prout(sa, ty, key, sark);
        (f | 1, c, e, p)
    };
    s(
        "persistent-reservations",
        vec![
            tur.clone(),
            (1, vec![0x00; 6], 0, vec![]),
            prout(0, 0, 0, 0xa),
            prout_b(0, 0, 0, 0xb),
            prout(1, 5, 0xa, 0),
            (1 | OUT, rw10(0x2a, 0, 1), 512, vec![0; 512]),
            (IN, vec![0x5e, 0, 0, 0, 0, 0, 0, 0, 255, 0], 255, vec![]),
            (IN, vec![0x5e, 1, 0, 0, 0, 0, 0, 0, 255, 0], 255, vec![]),
            (IN, vec![0x5e, 2, 0, 0, 0, 0, 0, 0, 255, 0], 255, vec![]),
            (IN, vec![0x5e, 3, 0, 0, 0, 0, 0, 0, 255, 0], 255, vec![]),
            prout_b(4, 5, 0xb, 0xa),
            prout(2, 5, 0xa, 0),
            prout(3, 0, 0xa, 0),
            (0, vec![0x16, 0, 0, 0, 0, 0], 0, vec![]),
            (1, vec![0x56, 0, 0, 0, 0, 0, 0, 0, 0, 0], 0, vec![]),
            (0, vec![0x17, 0, 0, 0, 0, 0], 0, vec![]),
            (1, vec![0x57, 0, 0, 0, 0, 0, 0, 0, 0, 0], 0, vec![]),
        ],
    );
    s(
        "mode-pages",
        vec![
            tur.clone(),
            (IN, vec![0x1a, 0x08, 0x3f, 0, 255, 0], 255, vec![]),
            (IN, vec![0x5a, 0x08, 0x3f, 0, 0, 0, 0, 1, 0, 0], 256, vec![]),
            (IN, vec![0x1a, 0, 0x08, 0, 255, 0], 255, vec![]),
            (
                OUT,
                vec![0x15, 0x10, 0, 0, 24, 0],
                24,
                vec![0, 0, 0, 0, 0x08, 0x12, 0x04, 0, 0xff, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x80, 0x14, 0, 0, 0, 0, 0, 0],
            ),
            (
                OUT,
                vec![0x55, 0x10, 0, 0, 0, 0, 0, 0, 20, 0],
                20,
                vec![0, 0, 0, 0, 0, 0, 0, 0, 0x0a, 0x0a, 0x06, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0],
            ),
            (1, vec![0x00; 6], 0, vec![]),
            (IN, vec![0x1c, 1, 0, 255, 255, 0], 65535, vec![]),
        ],
    );
    s(
        "supported-opcodes",
        vec![
            (IN, vec![0xa3, 0x0c, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0], 4096, vec![]),
            (IN, vec![0xa3, 0x0c, 0x01, 0x28, 0, 0, 0, 0, 0x01, 0, 0, 0], 256, vec![]),
            (IN, vec![0xa3, 0x0c, 0x82, 0x9e, 0, 0x10, 0, 0, 0x01, 0, 0, 0], 256, vec![]),
            (IN, vec![0x37, 0x18, 0, 0, 0, 0, 0, 0, 255, 0], 255, vec![]),
            (IN, vec![0xb7, 0x18, 0, 0, 0, 0, 0, 0, 0, 255, 0, 0], 255, vec![]),
        ],
    );
    // EXTENDED COPY (LID1): two identification target descriptors (NAA
    // designators the LUs may or may not have) and a block-to-block segment.
    let mut x = vec![0u8; 16];
    x[0] = 0x01; // list id
    x[2..4].copy_from_slice(&64u16.to_be_bytes());
    x[12..16].copy_from_slice(&28u32.to_be_bytes());
    for n in 0..2u8 {
        let mut t = vec![0u8; 32];
        t[0] = 0xe4;
        t[4] = 0x01 | 0x02 << 4;
        t[5] = 0x03;
        t[7] = 16;
        t[8] = 0x60;
        t[9] = n;
        t[28..32].copy_from_slice(&512u32.to_be_bytes()[..]);
        x.extend_from_slice(&t);
    }
    let mut seg = vec![0x02, 0, 0, 0x18, 0, 0, 0, 1, 0, 0, 0, 1];
    seg.extend_from_slice(&0u64.to_be_bytes());
    seg.extend_from_slice(&8u64.to_be_bytes());
    seg.truncate(28);
    seg.resize(28, 0);
    x.extend_from_slice(&seg);
    let len = x.len() as u32;
    let mut xc = vec![0x83, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    xc.extend_from_slice(&len.to_be_bytes());
    s(
        "extended-copy",
        vec![
            tur,
            (IN, vec![0x12, 1, 0x83, 1, 0, 0], 256, vec![]),
            (OUT, xc, len, x),
            (IN, vec![0x84, 0, 0x01, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], 256, vec![]),
            (IN, vec![0x84, 0x03, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], 256, vec![]),
        ],
    );
    seeds
}
