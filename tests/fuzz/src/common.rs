//! What the targets share: a reader of fuzz input, the step harness and an
//! application's RPC method table, and socket pairs standing in for
//! accepted connections.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::rc::Rc;

use pollux_core::app::App;
use pollux_core::reactor::Harness;
use pollux_core::rpc::{Methods, Responder, RpcResult, RpcState};
use serde_json::Value;

/// Reads fuzz input front to back; past the end it yields zeroes and empty
/// slices, so a target never has to check lengths.
pub struct Input<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Input<'a> {
        Input { data, pos: 0 }
    }

    pub fn is_empty(&self) -> bool {
        self.pos >= self.data.len()
    }

    pub fn u8(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    /// Up to `n` bytes (fewer at the end).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let start = self.pos.min(self.data.len());
        let end = start.saturating_add(n).min(self.data.len());
        self.pos = end;
        &self.data[start..end]
    }

    /// Exactly `N` bytes, zero padded at the end.
    pub fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut a = [0u8; N];
        let b = self.bytes(N);
        a[..b.len()].copy_from_slice(b);
        a
    }

    /// The bytes up to the next `sep` (not included; `sep` is consumed).
    pub fn until(&mut self, sep: u8) -> &'a [u8] {
        let start = self.pos.min(self.data.len());
        let rest = &self.data[start..];
        match rest.iter().position(|&b| b == sep) {
            Some(i) => {
                self.pos = start + i + 1;
                &rest[..i]
            }
            None => {
                self.pos = self.data.len();
                rest
            }
        }
    }

    pub fn rest(&mut self) -> &'a [u8] {
        let start = self.pos.min(self.data.len());
        self.pos = self.data.len();
        &self.data[start..]
    }
}

/// Whether to print what the targets send back (`POLLUX_FUZZ_TRACE=1`,
/// with the `run` example: what an input does).
pub fn trace() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("POLLUX_FUZZ_TRACE").is_some())
}

/// Once per process: ignore SIGPIPE. Rust programs do so before `main`;
/// a libFuzzer binary's `main` is libFuzzer's, and a write to a socket whose
/// peer is gone would kill it.
pub fn init_process() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: setting a signal's disposition to SIG_IGN has no
        // preconditions.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    });
}

/// Step every reactor until a full round does no work. Pollux code that
/// stays busy this long without input is livelocked: a fault.
pub fn settle(h: &Harness) {
    const MAX_ROUNDS: usize = 1_000_000;
    for _ in 0..MAX_ROUNDS {
        if !h.step_all() {
            return;
        }
    }
    panic!("reactors still busy after {MAX_ROUNDS} rounds: a livelock");
}

/// An application with the method table of `pollux-tgt` (the same
/// registration calls, in the same order), not started: its methods are
/// called directly, on the harness's main reactor.
pub fn tgt_app() -> App {
    let mut app = App::new("pollux-fuzz");
    pollux_tgt::register(&mut app);
    app
}

/// Call an RPC method on reactor 0 and run the reactors until it is
/// answered (or nothing more happens: `None`).
pub fn call(h: &Harness, m: &Rc<Methods>, state: RpcState, method: &str, params: Option<Value>) -> Option<RpcResult> {
    // The responder is `Send` and may answer from any reactor (all of
    // them run on this thread here).
    let (tx, rx) = std::sync::mpsc::channel();
    let m2 = m.clone();
    let method = method.to_string();
    h.on(0, move || {
        m2.set_state(state);
        m2.call(&method, params, Responder::new(move |r| drop(tx.send(r))));
    });
    settle(h);
    rx.try_recv().ok()
}

/// Call a set-up method that must succeed.
pub fn setup_call(h: &Harness, m: &Rc<Methods>, method: &str, params: Value) -> Value {
    match call(h, m, RpcState::Runtime, method, Some(params.clone())) {
        Some(Ok(v)) => v,
        other => panic!("fuzz set-up: {method} {params} failed: {other:?}"),
    }
}

/// A connected pair of stream sockets: the target's end as the
/// `TcpStream` the Pollux code takes (reads and writes work on any stream
/// socket; TCP options fail and are skipped), ours nonblocking.
pub fn socket_pair() -> (TcpStream, UnixStream) {
    let (a, b) = UnixStream::pair().expect("socketpair");
    // Room for everything a target writes between two drains, so its
    // writes never block (see `Peer::pump`).
    for s in [&a, &b] {
        set_buffer(s.as_raw_fd(), libc::SO_SNDBUFFORCE, libc::SO_SNDBUF, 32 << 20);
        set_buffer(s.as_raw_fd(), libc::SO_RCVBUFFORCE, libc::SO_RCVBUF, 32 << 20);
    }
    b.set_nonblocking(true).expect("nonblocking");
    (TcpStream::from(OwnedFd::from(a)), b)
}

fn set_buffer(fd: i32, force: i32, plain: i32, bytes: i32) {
    for opt in [force, plain] {
        // SAFETY: a live socket descriptor; a pointer to a c_int and its size.
        let rc = unsafe { libc::setsockopt(fd, libc::SOL_SOCKET, opt, (&bytes as *const i32).cast(), size_of::<i32>() as libc::socklen_t) };
        if rc == 0 {
            return;
        }
    }
}

/// Our end of a connection: what we send and what the target sent back.
pub struct Peer {
    pub sock: Option<UnixStream>,
    /// Bytes received and not yet consumed by the caller.
    pub rx: Vec<u8>,
    /// The target closed its end.
    pub eof: bool,
}

impl Peer {
    pub fn new(sock: UnixStream) -> Peer {
        Peer { sock: Some(sock), rx: Vec::new(), eof: false }
    }

    /// Read whatever the target wrote.
    pub fn drain(&mut self) {
        let Some(s) = &mut self.sock else { return };
        let mut buf = [0u8; 64 * 1024];
        loop {
            match s.read(&mut buf) {
                Ok(0) => {
                    self.eof = true;
                    return;
                }
                Ok(n) => self.rx.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }

    /// Write `bytes`, stepping the reactors and reading answers whenever
    /// the socket is full. Returns false if the target closed it.
    pub fn send(&mut self, h: &Harness, bytes: &[u8]) -> bool {
        let mut off = 0;
        let mut stalled = 0;
        while off < bytes.len() {
            let Some(s) = &mut self.sock else { return false };
            match s.write(&bytes[off..]) {
                Ok(n) => {
                    off += n;
                    stalled = 0;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.pump(h);
                    stalled += 1;
                    if stalled > 64 {
                        // The target stopped reading (it waits for buffers
                        // or slots that our own input holds): give up on
                        // the rest, as an initiator would time out.
                        return false;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        true
    }

    /// Run the reactors until idle and collect what the target wrote.
    pub fn pump(&mut self, h: &Harness) {
        loop {
            settle(h);
            let before = self.rx.len();
            self.drain();
            // Reading made room in the target's socket: it may write more.
            if self.rx.len() == before {
                return;
            }
        }
    }

    /// Close our end (the target sees end of file).
    pub fn close(&mut self) {
        self.sock = None;
    }
}

/// An open bdev and this reactor's channel to it, to zero it between
/// executions (malloc bdevs are thin: unmapped blocks read as zeroes and
/// take no memory). Drop on the reactor that opened it.
pub struct Blank {
    desc: pollux_core::bdev::Descriptor,
    ch: pollux_core::io_channel::IoChannel<pollux_core::bdev::Bdev>,
}

impl Blank {
    /// Open `name` (on reactor 0).
    pub fn open(name: &str) -> Blank {
        let desc = pollux_core::bdev::open(name, true, |_| {}).expect("open bdev");
        let ch = desc.channel();
        Blank { desc, ch }
    }

    /// Unmap every block (on the reactor that opened it).
    pub fn zero(&self) {
        let n = self.desc.bdev().num_blocks();
        self.desc.unmap(&self.ch, 0, n, drop);
    }
}

/// Create malloc bdevs `(name, block size, blocks)` on reactor 0 of `h`
/// and open each (to zero it between executions).
pub fn malloc_blanks(h: &Harness, lus: &[(&str, u32, u64)]) -> Vec<Blank> {
    h.on(0, || {
        lus.iter()
            .map(|(name, bs, n)| {
                pollux_bdev::malloc::create(name, *bs, *n, None, 0).expect("malloc bdev");
                Blank::open(name)
            })
            .collect()
    })
}

/// Close `bdevs` on reactor 0 (after `then`, run there too) and let the
/// reactors finish what that starts: a rig's teardown.
pub fn close_blanks(h: &Harness, bdevs: Vec<Blank>, then: impl FnOnce()) {
    h.on(0, move || {
        then();
        drop(bdevs);
    });
    settle(h);
}

/// Run `f` with this thread's rig (set-up reused across executions), made
/// on first use. A rig a panic went through is abandoned, leaked rather
/// than dropped (its reactors are in whatever state the panic left), so
/// the next input (in the replay tests, the next file) gets a new one.
pub fn with_rig<R: 'static>(key: &'static std::thread::LocalKey<std::cell::RefCell<Option<R>>>, make: fn() -> R, f: impl FnOnce(&R)) {
    struct Abandon<'a, R>(&'a std::cell::RefCell<Option<R>>);
    impl<R> Drop for Abandon<'_, R> {
        fn drop(&mut self) {
            if std::thread::panicking() {
                if let Ok(mut g) = self.0.try_borrow_mut() {
                    std::mem::forget(g.take());
                }
            }
        }
    }
    key.with(|cell| {
        let _abandon = Abandon(cell);
        let mut g = cell.borrow_mut();
        f(g.get_or_insert_with(make));
    });
}
