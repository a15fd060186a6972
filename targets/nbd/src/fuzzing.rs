//! Playing the kernel's part on the socket, for tests and the fuzz
//! target: a [`Conn`] on a step harness's reactor 0, serving a bdev the
//! caller made there, and the other end of its socket pair.

use std::cell::Cell;
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::rc::Rc;

use pollux_core::bdev;
use pollux_core::reactor::Harness;

use crate::conn::Conn;
use crate::proto::{self, REPLY_LEN, REQUEST_LEN, Request, cmd};

/// One reply as the kernel reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub handle: [u8; 8],
    pub error: u32,
    pub data: Vec<u8>,
}

pub struct Rig {
    pub h: Harness,
    pub conn: Rc<Conn>,
    kernel: UnixStream,
    closed: Rc<Cell<bool>>,
    out: Vec<u8>,
    inbuf: Vec<u8>,
    /// Where each pump reads (kept: a pass must not allocate 256 KiB).
    rbuf: Box<[u8]>,
    /// Reads sent and not answered: handle -> bytes.
    reads: HashMap<[u8; 8], u32>,
    eof: bool,
    bad_reply: Option<String>,
}

impl Rig {
    /// Serve `bdev_name` (made by the caller on reactor 0 of `h`).
    pub fn new(h: Harness, bdev_name: &str) -> Rig {
        let (ours, kernel) = UnixStream::pair().expect("socketpair");
        kernel.set_nonblocking(true).expect("nonblocking");
        let closed = Rc::new(Cell::new(false));
        let c2 = closed.clone();
        let conn = h.on(0, || {
            let desc = bdev::open(bdev_name, true, |_| {}).expect("open the bdev");
            Conn::start("test", ours, desc, move || c2.set(true)).expect("serve")
        });
        Rig {
            h,
            conn,
            kernel,
            closed,
            out: Vec::new(),
            inbuf: Vec::new(),
            rbuf: vec![0u8; 256 << 10].into_boxed_slice(),
            reads: HashMap::new(),
            eof: false,
            bad_reply: None,
        }
    }

    /// Queue a request (and a write's data) to send.
    pub fn request(&mut self, r: &Request, data: &[u8]) {
        if r.cmd == cmd::READ {
            self.reads.insert(r.handle, r.len);
        }
        self.out.extend_from_slice(&r.encode());
        self.out.extend_from_slice(data);
    }

    /// Queue raw bytes; `reads` are the read requests among them.
    pub fn raw(&mut self, bytes: &[u8], reads: impl IntoIterator<Item = ([u8; 8], u32)>) {
        self.reads.extend(reads);
        self.out.extend_from_slice(bytes);
    }

    /// Close the kernel's sending side.
    pub fn shutdown_write(&self) {
        let _ = self.kernel.shutdown(std::net::Shutdown::Write);
    }

    pub fn is_closed(&self) -> bool {
        self.closed.get()
    }

    /// The kernel read end of file.
    pub fn saw_eof(&self) -> bool {
        self.eof
    }

    /// A reply that was not well formed, if any.
    pub fn bad_reply(&self) -> Option<&str> {
        self.bad_reply.as_deref()
    }

    /// Bytes queued here not yet taken by the socket.
    pub fn unsent(&self) -> usize {
        self.out.len()
    }

    /// Write what the socket takes. Returns whether anything went.
    fn send(&mut self) -> bool {
        let mut moved = false;
        while !self.out.is_empty() {
            match (&self.kernel).write(&self.out) {
                Ok(n) => {
                    self.out.drain(..n);
                    moved = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    self.out.clear();
                    break;
                }
            }
        }
        moved
    }

    /// Write what the socket takes, run the reactor once, read what came.
    /// Returns whether anything moved.
    pub fn pump(&mut self) -> bool {
        let mut moved = self.send();
        moved |= self.h.step(0);
        loop {
            match (&self.kernel).read(&mut self.rbuf) {
                Ok(0) => {
                    self.eof = true;
                    break;
                }
                Ok(n) => {
                    self.inbuf.extend_from_slice(&self.rbuf[..n]);
                    moved = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    self.eof = true;
                    break;
                }
            }
        }
        moved
    }

    /// Write what the socket takes and run the reactor once, reading
    /// nothing (a kernel that stopped reading replies).
    pub fn pump_without_reading(&mut self) {
        self.send();
        self.h.step(0);
    }

    /// Take the whole replies read so far.
    pub fn take_replies(&mut self) -> Vec<Reply> {
        let mut out = Vec::new();
        loop {
            if self.inbuf.len() < REPLY_LEN {
                break;
            }
            let hdr: [u8; REPLY_LEN] = self.inbuf[..REPLY_LEN].try_into().expect("16");
            let Some((error, handle)) = proto::decode_reply(&hdr) else {
                self.bad_reply = Some(format!("reply magic wrong: {:02x?}", &hdr[..4]));
                self.inbuf.clear();
                break;
            };
            let data_len = match self.reads.get(&handle) {
                Some(&n) if error == 0 => n as usize,
                _ => 0,
            };
            if self.inbuf.len() < REPLY_LEN + data_len {
                break;
            }
            self.reads.remove(&handle);
            let data = self.inbuf[REPLY_LEN..REPLY_LEN + data_len].to_vec();
            self.inbuf.drain(..REPLY_LEN + data_len);
            out.push(Reply { handle, error, data });
        }
        out
    }

    /// Pump until `n` replies came (or `rounds` passes without them).
    pub fn replies(&mut self, n: usize, rounds: usize) -> Vec<Reply> {
        let mut got = Vec::new();
        for _ in 0..rounds {
            self.pump();
            got.extend(self.take_replies());
            if got.len() >= n {
                break;
            }
        }
        got
    }

    /// Pump until nothing moves for a few rounds.
    pub fn settle(&mut self, max_rounds: usize) -> Vec<Reply> {
        let mut got = Vec::new();
        let mut quiet = 0;
        for _ in 0..max_rounds {
            if self.pump() {
                quiet = 0;
            } else {
                quiet += 1;
                if quiet > 3 {
                    break;
                }
            }
            got.extend(self.take_replies());
        }
        got.extend(self.take_replies());
        got
    }
}

/// The requests in a byte stream as the connection frames it: `(offset
/// of the header, request)`, for the fuzz target to make handles unique.
pub fn headers(stream: &[u8]) -> Vec<(usize, Request)> {
    let mut f = proto::Framer::default();
    let mut pos = 0;
    let mut out = Vec::new();
    while pos < stream.len() {
        let (n, fr) = f.step(&stream[pos..]);
        if let Some(proto::Frame::Request(r)) = fr {
            out.push((pos + n - REQUEST_LEN, r));
        }
        if let Some(proto::Frame::BadMagic(_)) = fr {
            break;
        }
        pos += n;
    }
    out
}

/// A bdev that keeps every request until the test lets it go, with the
/// status the test chooses (a slow or stuck device, "no memory").
pub mod hold {
    use std::cell::{Cell, RefCell};
    use std::sync::Arc;

    use pollux_core::bdev::{self, Backend, BackendChannel, BdevIo, BdevSpec, IoStatus, IoType};

    thread_local! {
        static HELD: RefCell<Vec<BdevIo>> = const { RefCell::new(Vec::new()) };
        /// When set, every request is finished at once with this status.
        static AUTO: Cell<Option<IoStatus>> = const { Cell::new(None) };
        static SUBMITTED: Cell<u64> = const { Cell::new(0) };
    }

    struct Hold;
    struct HoldCh;

    impl Backend for Hold {
        fn module_name(&self) -> &'static str {
            "hold"
        }
        fn product_name(&self) -> &'static str {
            "hold"
        }
        fn supports(&self, _k: IoType) -> bool {
            true
        }
        fn create_channel(&self) -> Box<dyn BackendChannel> {
            Box::new(HoldCh)
        }
    }

    impl BackendChannel for HoldCh {
        fn submit(&self, io: BdevIo) {
            SUBMITTED.with(|c| c.set(c.get() + 1));
            if let Some(st) = AUTO.with(Cell::get) {
                return io.complete(st);
            }
            HELD.with(|h| h.borrow_mut().push(io));
        }
    }

    /// Register a hold bdev (512-byte blocks, 4 MiB) on this reactor.
    pub fn create(name: &str) {
        bdev::register(BdevSpec { name: name.into(), block_size: 512, num_blocks: 8192, uuid: None, backend: Arc::new(Hold) })
            .expect("register the hold bdev");
    }

    /// Requests held on this thread, and their kinds.
    pub fn held() -> Vec<IoType> {
        HELD.with(|h| h.borrow().iter().map(|io| io.kind()).collect())
    }

    /// Finish every request at once with `status` from now on (`None`:
    /// hold them again).
    pub fn set_auto(status: Option<IoStatus>) {
        AUTO.with(|a| a.set(status));
    }

    /// Requests submitted to hold bdevs on this thread so far.
    pub fn submitted() -> u64 {
        SUBMITTED.with(Cell::get)
    }

    /// Finish the oldest held request with `status`; false if none.
    pub fn release_first(status: IoStatus) -> bool {
        let io = HELD.with(|h| {
            let mut h = h.borrow_mut();
            (!h.is_empty()).then(|| h.remove(0))
        });
        io.map(|io| io.complete(status)).is_some()
    }

    /// Finish every held request with `status`.
    pub fn release(status: IoStatus) {
        let v = HELD.with(|h| std::mem::take(&mut *h.borrow_mut()));
        for io in v {
            io.complete(status);
        }
    }
}
