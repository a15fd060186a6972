//! The SCSI layer on a malloc bdev, on the step harness: commands in,
//! status, sense and data out.

use std::cell::RefCell;
use std::rc::Rc;

use pollux_core::dma;
use pollux_core::reactor::{self, Harness};

use crate::cdb::op;
use crate::sense::status;
use crate::{DataDir, Device, LunPort, Nexus, ScsiCommand, Task};

type Done = Rc<RefCell<Vec<(u8, Vec<u8>, Vec<u8>, u64)>>>;

struct Cmd {
    task: Task,
    done: Done,
}

impl ScsiCommand for Cmd {
    fn task(&mut self) -> &mut Task {
        &mut self.task
    }
    fn complete(self: Box<Self>) {
        let t = &self.task;
        self.done.borrow_mut().push((t.status, t.sense().to_vec(), t.data_vec(), t.xfer_len));
    }
}

struct Rig {
    h: Harness,
    done: Done,
}

const BLOCKS: u64 = 256;

fn rig(reactors: usize) -> Rig {
    let h = Harness::new(reactors);
    h.on(0, || {
        pollux_bdev::malloc::create("m0", 512, BLOCKS, None, 0).unwrap();
        let dev = Device::new("iqn.2025-01.io.pollux:t");
        dev.add_lun(0, "m0").unwrap();
        dev.set_ports([1]);
        reactor::set_local(Rc::new(dev));
    });
    Rig { h, done: Rc::default() }
}

fn port(r: &Rig, reactor_id: usize, initiator: &str) -> Rc<LunPort> {
    let dev = r.h.on(0, || reactor::local::<std::sync::Arc<Device>>().unwrap().as_ref().clone());
    r.h.on(reactor_id, || LunPort::new(dev.lun(0).unwrap(), Nexus::new(initiator, &format!("{initiator},i,0x1"), "t,t,0x1", 1)))
}

impl Rig {
    /// Run a command on `p` (on reactor 0) and return (status, sense, data, xfer_len).
    fn run(&self, p: &Rc<LunPort>, cdb: &[u8], data_out: &[u8], expected: u32) -> (u8, Vec<u8>, Vec<u8>, u64) {
        let done = self.done.clone();
        let p = p.clone();
        let cdb = cdb.to_vec();
        let data = data_out.to_vec();
        self.h.on(0, move || {
            let mut task = Task::new();
            task.reset(&cdb, expected, if data.is_empty() { DataDir::Read } else { DataDir::Write });
            if !data.is_empty() {
                let mut b = dma::pool().unwrap().get(data.len()).unwrap();
                b.copy_from_slice(&data);
                task.bufs.push(b);
                task.data_len = data.len();
            }
            p.execute(Box::new(Cmd { task, done }));
        });
        self.h.run_until_idle(100);
        self.done.borrow_mut().pop().expect("command completed")
    }
}

fn rw10(opcode: u8, lba: u32, blocks: u16) -> Vec<u8> {
    let mut c = vec![opcode, 0];
    c.extend_from_slice(&lba.to_be_bytes());
    c.push(0);
    c.extend_from_slice(&blocks.to_be_bytes());
    c.push(0);
    c
}

#[test]
fn write_then_read_back() {
    let r = rig(1);
    let p = port(&r, 0, "iqn.a");
    let (st, ..) = r.run(&p, &rw10(op::WRITE_10, 3, 2), &[0x5a; 1024], 1024);
    assert_eq!(st, status::GOOD);
    let (st, _, data, xfer) = r.run(&p, &rw10(op::READ_10, 3, 2), &[], 1024);
    assert_eq!((st, xfer), (status::GOOD, 1024));
    assert_eq!(data, vec![0x5a; 1024]);
}

/// A RAM disk lends its memory to a read, unless the transport marked the
/// task `no_lend` (it would copy lent memory anyway, for a data digest):
/// then the data comes in pool buffers.
#[test]
fn a_read_marked_no_lend_comes_in_buffers() {
    type Seen = Rc<RefCell<Vec<(bool, bool, Vec<u8>)>>>;
    struct Probe(Task, Seen);
    impl ScsiCommand for Probe {
        fn task(&mut self) -> &mut Task {
            &mut self.0
        }
        fn complete(self: Box<Self>) {
            let t = &self.0;
            self.1.borrow_mut().push((t.lent.is_some(), !t.bufs.is_empty(), t.data_vec()));
        }
    }
    let r = rig(1);
    let p = port(&r, 0, "iqn.a");
    assert_eq!(r.run(&p, &rw10(op::WRITE_10, 5, 1), &[0x33; 512], 512).0, status::GOOD);
    let seen: Seen = Rc::default();
    for no_lend in [false, true] {
        let (p, seen, cdb) = (p.clone(), seen.clone(), rw10(op::READ_10, 5, 1));
        r.h.on(0, move || {
            let mut t = Task::new();
            t.reset(&cdb, 512, DataDir::Read);
            t.no_lend = no_lend;
            p.execute(Box::new(Probe(t, seen)));
        });
        r.h.run_until_idle(100);
    }
    let seen = seen.borrow();
    assert_eq!((seen[0].0, seen[0].1), (true, false), "a RAM disk lends its memory");
    assert_eq!((seen[1].0, seen[1].1), (false, true), "not to a task marked no_lend");
    assert!(seen.iter().all(|s| s.2 == vec![0x33; 512]), "the same data either way");
}

#[test]
fn out_of_range_and_bad_fields_name_the_error() {
    let r = rig(1);
    let p = port(&r, 0, "iqn.a");
    let (st, sense, ..) = r.run(&p, &rw10(op::READ_10, BLOCKS as u32, 1), &[], 512);
    assert_eq!(st, status::CHECK_CONDITION);
    assert_eq!((sense[2], sense[12], sense[13]), (0x05, 0x21, 0x00));
    let mut c = rw10(op::READ_10, 0, 1);
    c[1] = 0x20; // RDPROTECT
    let (st, sense, ..) = r.run(&p, &c, &[], 512);
    assert_eq!(st, status::CHECK_CONDITION);
    assert_eq!((sense[12], sense[15] & 0xc0, sense[17]), (0x24, 0xc0, 1));
    let (st, sense, ..) = r.run(&p, &[0xff, 0, 0, 0, 0, 0], &[], 0);
    assert_eq!((st, sense[12]), (status::CHECK_CONDITION, 0x20));
}

#[test]
fn compare_and_write_is_checked_and_reports_the_miscompare_offset() {
    let r = rig(2);
    let p = port(&r, 0, "iqn.a");
    r.run(&p, &rw10(op::WRITE_10, 10, 1), &[1; 512], 512);
    let mut caw = vec![op::COMPARE_AND_WRITE, 0];
    caw.extend_from_slice(&10u64.to_be_bytes());
    caw.extend_from_slice(&[0, 0, 0, 1, 0, 0]);
    let mut data = vec![1u8; 512];
    data.extend_from_slice(&[2u8; 512]);
    let (st, ..) = r.run(&p, &caw, &data, 1024);
    assert_eq!(st, status::GOOD);
    // The medium now holds 2s: comparing against 1s fails at byte 0...
    let (st, sense, ..) = r.run(&p, &caw, &data, 1024);
    assert_eq!((st, sense[2]), (status::CHECK_CONDITION, 0x0e));
    // ...and at byte 7 when only that byte differs.
    let mut data2 = vec![2u8; 512];
    data2[7] = 9;
    data2.extend_from_slice(&[3u8; 512]);
    let (_, sense, ..) = r.run(&p, &caw, &data2, 1024);
    assert_eq!(u32::from_be_bytes(sense[3..7].try_into().unwrap()), 7);
}

#[test]
fn persistent_reservation_blocks_other_writers_and_tells_them_when_released() {
    let r = rig(1);
    let a = port(&r, 0, "iqn.a");
    let b = port(&r, 0, "iqn.b");
    let prout = |sa: u8, ty: u8| vec![op::PERSISTENT_RESERVE_OUT, sa, ty, 0, 0, 0, 0, 0, 24, 0];
    let param = |key: u64, sark: u64| {
        let mut p = vec![0u8; 24];
        p[0..8].copy_from_slice(&key.to_be_bytes());
        p[8..16].copy_from_slice(&sark.to_be_bytes());
        p
    };
    assert_eq!(r.run(&a, &prout(0, 0), &param(0, 0xa), 24).0, status::GOOD);
    assert_eq!(r.run(&b, &prout(0, 0), &param(0, 0xb), 24).0, status::GOOD);
    // A reserves Write Exclusive Registrants Only: B (registered) may write.
    assert_eq!(r.run(&a, &prout(1, 5), &param(0xa, 0), 24).0, status::GOOD);
    assert_eq!(r.run(&b, &rw10(op::WRITE_10, 0, 1), &[0; 512], 512).0, status::GOOD);
    // B unregisters: now it conflicts on writes but may read.
    assert_eq!(r.run(&b, &prout(0, 0), &param(0xb, 0), 24).0, status::GOOD);
    assert_eq!(r.run(&b, &rw10(op::WRITE_10, 0, 1), &[0; 512], 512).0, status::RESERVATION_CONFLICT);
    assert_eq!(r.run(&b, &rw10(op::READ_10, 0, 1), &[], 512).0, status::GOOD);
    // READ KEYS shows A's key only; A unregistering releases the RO reservation.
    let (_, _, keys, _) = r.run(&a, &[op::PERSISTENT_RESERVE_IN, 0, 0, 0, 0, 0, 0, 0, 64, 0], &[], 64);
    assert_eq!(&keys[4..8], &8u32.to_be_bytes());
    assert_eq!(r.run(&a, &prout(0, 0), &param(0xa, 0), 24).0, status::GOOD);
    assert_eq!(r.run(&b, &rw10(op::WRITE_10, 0, 1), &[0; 512], 512).0, status::GOOD);
}

/// SPC-2 RESERVE and RELEASE while registrations exist (SPC-4 5.7.3,
/// with CRH): they change nothing, GOOD from the holder, RESERVATION
/// CONFLICT from anyone else, with or without a reservation (a RESERVE
/// with registrations but no reservation took an SPC-2 reservation that
/// then blocked every PERSISTENT RESERVE OUT). REGISTER AND MOVE keeps the
/// source registered without UNREG; registrations are bounded.
#[test]
fn spc2_reservations_yield_to_registrations_and_registrations_are_bounded() {
    let r = rig(1);
    let a = port(&r, 0, "iqn.a");
    let b = port(&r, 0, "iqn.b");
    let prout = |sa: u8, ty: u8, len: u8| vec![op::PERSISTENT_RESERVE_OUT, sa, ty, 0, 0, 0, 0, 0, len, 0];
    let param = |key: u64, sark: u64| {
        let mut p = vec![0u8; 24];
        p[0..8].copy_from_slice(&key.to_be_bytes());
        p[8..16].copy_from_slice(&sark.to_be_bytes());
        p
    };
    let reserve6 = [0x16u8, 0, 0, 0, 0, 0];
    let release6 = [0x17u8, 0, 0, 0, 0, 0];
    assert_eq!(r.run(&a, &prout(0, 0, 24), &param(0, 0xa), 24).0, status::GOOD);
    // Registered, no reservation: RESERVE conflicts for everyone.
    assert_eq!(r.run(&b, &reserve6, &[], 0).0, status::RESERVATION_CONFLICT, "B is not registered");
    assert_eq!(r.run(&a, &reserve6, &[], 0).0, status::RESERVATION_CONFLICT, "A holds no reservation");
    assert_eq!(r.run(&a, &prout(0, 0, 24), &param(0xa, 0xaa), 24).0, status::GOOD, "PR OUT still works");
    // A holds Write Exclusive: its RESERVE and RELEASE are GOOD and change nothing.
    assert_eq!(r.run(&a, &prout(1, 1, 24), &param(0xaa, 0), 24).0, status::GOOD);
    assert_eq!(r.run(&a, &reserve6, &[], 0).0, status::GOOD);
    assert_eq!(r.run(&a, &release6, &[], 0).0, status::GOOD);
    assert_eq!(r.run(&b, &rw10(op::WRITE_10, 0, 1), &[0; 512], 512).0, status::RESERVATION_CONFLICT, "still reserved");
    assert_eq!(r.run(&b, &release6, &[], 0).0, status::RESERVATION_CONFLICT);

    // REGISTER AND MOVE to B's port without UNREG: A stays registered.
    let tid = {
        let name = b"iqn.b,i,0x1";
        let mut t = vec![0x45, 0, 0, 20];
        t.extend_from_slice(name);
        t.resize(24, 0);
        t
    };
    let mut mv = param(0xaa, 0xbb);
    mv[18..20].copy_from_slice(&1u16.to_be_bytes());
    mv[20..24].copy_from_slice(&(tid.len() as u32).to_be_bytes());
    mv.extend_from_slice(&tid);
    let len = mv.len() as u8;
    assert_eq!(r.run(&a, &prout(7, 1, len), &mv, u32::from(len)).0, status::GOOD);
    assert_eq!(r.run(&b, &rw10(op::WRITE_10, 0, 1), &[0; 512], 512).0, status::GOOD, "B holds it now");
    let (_, _, keys, _) = r.run(&a, &[op::PERSISTENT_RESERVE_IN, 0, 0, 0, 0, 0, 0, 0, 64, 0], &[], 64);
    assert_eq!(&keys[4..8], &16u32.to_be_bytes(), "two keys: A kept its registration");
    // A TransportID of format 00b (no port) is refused.
    let mut mv0 = mv.clone();
    mv0[8..16].copy_from_slice(&0xcc_u64.to_be_bytes());
    mv0[24] = 0x05;
    mv0[0..8].copy_from_slice(&0xbb_u64.to_be_bytes());
    assert_eq!(r.run(&b, &prout(7, 1, len), &mv0, u32::from(len)).0, status::CHECK_CONDITION);
    // A relative port the LU is not reached through is refused (the
    // reservation went to a nexus no session could have).
    let mut mv2 = mv.clone();
    mv2[0..8].copy_from_slice(&0xbb_u64.to_be_bytes());
    mv2[8..16].copy_from_slice(&0xcc_u64.to_be_bytes());
    mv2[18..20].copy_from_slice(&2u16.to_be_bytes());
    let (st, sense, _, _) = r.run(&b, &prout(7, 1, len), &mv2, u32::from(len));
    assert_eq!(st, status::CHECK_CONDITION);
    assert_eq!((sense[12], sense[13]), (0x26, 0x00), "INVALID FIELD IN PARAMETER LIST");
    assert_eq!(r.run(&b, &rw10(op::WRITE_10, 0, 1), &[0; 512], 512).0, status::GOOD, "B still holds it");

    // Registrations are bounded.
    let mut refused = None;
    for i in 0..crate::lun::pr::MAX_REGISTRANTS + 1 {
        let p = port(&r, 0, &format!("iqn.many{i}"));
        let st = r.run(&p, &prout(0, 0, 24), &param(0, 1 + i as u64), 24);
        if st.0 != status::GOOD {
            refused = Some((i, st.1));
            break;
        }
    }
    let (i, sense) = refused.expect("a registration beyond the bound was refused");
    assert_eq!(i, crate::lun::pr::MAX_REGISTRANTS - 2, "A and B hold two");
    assert_eq!((sense[12], sense[13]), (0x55, 0x04), "INSUFFICIENT REGISTRATION RESOURCES");
}

#[test]
fn mode_select_raises_a_unit_attention_on_other_nexuses() {
    let r = rig(1);
    let a = port(&r, 0, "iqn.a");
    let b = port(&r, 0, "iqn.b");
    let (_, _, ms, _) = r.run(&a, &[op::MODE_SENSE_6, 0x08, 0x08, 0, 255, 0], &[], 255);
    let mut page = ms[4..].to_vec();
    page[2] &= !0x04; // WCE off
    let mut param = vec![0u8, 0, 0, 0];
    param.extend_from_slice(&page);
    let sel = [op::MODE_SELECT_6, 0x10, 0, 0, param.len() as u8, 0];
    assert_eq!(r.run(&a, &sel, &param, param.len() as u32).0, status::GOOD);
    let (st, sense, ..) = r.run(&b, &[op::TEST_UNIT_READY, 0, 0, 0, 0, 0], &[], 0);
    assert_eq!((st, sense[2], sense[12], sense[13]), (status::CHECK_CONDITION, 0x06, 0x2a, 0x01));
    assert_eq!(r.run(&b, &[op::TEST_UNIT_READY, 0, 0, 0, 0, 0], &[], 0).0, status::GOOD);
    assert_eq!(r.run(&a, &[op::TEST_UNIT_READY, 0, 0, 0, 0, 0], &[], 0).0, status::GOOD);
}

#[test]
fn writes_take_only_whole_blocks_the_initiator_sent() {
    let r = rig(1);
    let p = port(&r, 0, "iqn.a");
    r.run(&p, &rw10(op::WRITE_10, 0, 2), &[b'a'; 1024], 1024);
    // Two blocks asked, one sent: one written, xfer_len says two.
    let (st, _, _, xfer) = r.run(&p, &rw10(op::WRITE_10, 0, 2), &[b'b'; 512], 512);
    assert_eq!((st, xfer), (status::GOOD, 1024));
    let (_, _, d, _) = r.run(&p, &rw10(op::READ_10, 0, 2), &[], 1024);
    assert!(d[..512].iter().all(|&x| x == b'b') && d[512..].iter().all(|&x| x == b'a'));
}

#[test]
fn unmap_then_get_lba_status_reports_deallocated_blocks() {
    let r = rig(1);
    let p = port(&r, 0, "iqn.a");
    r.run(&p, &rw10(op::WRITE_10, 0, 8), &[7; 4096], 4096);
    let mut param = vec![0u8, 22, 0, 16, 0, 0, 0, 0];
    param.extend_from_slice(&2u64.to_be_bytes());
    param.extend_from_slice(&1u32.to_be_bytes());
    param.extend_from_slice(&[0; 4]);
    assert_eq!(r.run(&p, &[op::UNMAP, 0, 0, 0, 0, 0, 0, 0, 24, 0], &param, 24).0, status::GOOD);
    let mut gls = vec![op::SERVICE_ACTION_IN_16, op::SAI_GET_LBA_STATUS];
    gls.extend_from_slice(&0u64.to_be_bytes());
    gls.extend_from_slice(&64u32.to_be_bytes());
    gls.extend_from_slice(&[0, 0]);
    let (st, _, d, _) = r.run(&p, &gls, &[], 64);
    assert_eq!(st, status::GOOD);
    // Runs: [0,2) mapped, [2,3) deallocated, [3,8) mapped, then the zero rest.
    assert_eq!(&d[8..16], &0u64.to_be_bytes());
    assert_eq!(&d[16..20], &2u32.to_be_bytes());
    assert_eq!(&d[24..32], &2u64.to_be_bytes());
    assert_eq!(d[36] & 0x0f, 1);
}

/// A COMPARE AND WRITE keeps its channel from the read to the write's end.
/// Against a backend whose requests end with their channel (the iSCSI
/// initiator's bdev: its channel is a session), a CAW on a reactor where
/// nothing else held the bdev let go of the channel with its read in
/// flight, which failed the read (and the command), then made another
/// channel for the write.
#[test]
fn compare_and_write_keeps_its_channel_until_done() {
    use pollux_core::bdev::{self, Backend, BackendChannel, BdevIo, BdevSpec, IoStatus, IoType};
    use pollux_core::reactor::{PollStatus, Poller};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Requests end on the channel's next poller pass, or fail when the
    /// channel goes.
    struct Session(Arc<AtomicUsize>);
    struct SessionChannel {
        held: Rc<RefCell<Vec<BdevIo>>>,
        _poller: Poller,
    }
    impl Backend for Session {
        fn module_name(&self) -> &'static str {
            "test_session"
        }
        fn product_name(&self) -> &'static str {
            "test"
        }
        fn supports(&self, kind: IoType) -> bool {
            matches!(kind, IoType::Read | IoType::Write)
        }
        fn create_channel(&self) -> Box<dyn BackendChannel> {
            self.0.fetch_add(1, Ordering::SeqCst);
            let held: Rc<RefCell<Vec<BdevIo>>> = Rc::default();
            let h = held.clone();
            let poller = reactor::register_poller("test_session", move || {
                let done = std::mem::take(&mut *h.borrow_mut());
                let n = done.len();
                for mut io in done {
                    if io.kind() == IoType::Read {
                        io.copy_in(0, &vec![0u8; io.len_bytes() as usize]);
                    }
                    io.complete(IoStatus::Success);
                }
                if n > 0 { PollStatus::Busy } else { PollStatus::Idle }
            });
            Box::new(SessionChannel { held, _poller: poller })
        }
    }
    impl BackendChannel for SessionChannel {
        fn submit(&self, io: BdevIo) {
            self.held.borrow_mut().push(io);
        }
    }
    impl Drop for SessionChannel {
        fn drop(&mut self) {
            for io in std::mem::take(&mut *self.held.borrow_mut()) {
                io.complete(IoStatus::Failed);
            }
        }
    }

    let channels = Arc::new(AtomicUsize::new(0));
    let h = Harness::new(2);
    let backend: Arc<dyn Backend> = Arc::new(Session(channels.clone()));
    h.on(0, || {
        bdev::register(BdevSpec { name: "sess0".into(), block_size: 512, num_blocks: 64, uuid: None, backend }).unwrap();
        let dev = Device::new("iqn.2025-01.io.pollux:caw");
        dev.add_lun(0, "sess0").unwrap();
        dev.set_ports([1]);
        reactor::set_local(Rc::new(dev));
    });
    let r = Rig { h, done: Rc::default() };
    // The session's port (and its channel) on reactor 1: on reactor 0,
    // where COMPARE AND WRITE runs, nothing holds the bdev.
    let p = port(&r, 1, "iqn.a");
    let before = channels.load(Ordering::SeqCst);
    let mut caw = vec![op::COMPARE_AND_WRITE, 0];
    caw.extend_from_slice(&10u64.to_be_bytes());
    caw.extend_from_slice(&[0, 0, 0, 1, 0, 0]);
    let mut data = vec![0u8; 512];
    data.extend_from_slice(&[7u8; 512]);
    for _ in 0..3 {
        let (st, sense, ..) = r.run(&p, &caw, &data, 1024);
        assert_eq!(st, status::GOOD, "sense {sense:02x?}");
    }
    assert_eq!(channels.load(Ordering::SeqCst) - before, 3, "one channel per command, held to its end");
}
