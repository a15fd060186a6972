//! The TCP plumbing both protocol proxies share ([`crate::iscsi_proxy`],
//! [`crate::nvmf_proxy`]): listen on a free port of 127.0.0.1, connect
//! each accepted client to the target, run the proxy's two directions on
//! their own threads, and on drop shut every socket down and join them.
//! What each direction does with the bytes is the proxy's.

use std::collections::HashMap;
use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

/// One accepted connection, as given to the proxy: its index (from 0, in
/// accept order), then each direction's reading and writing ends.
pub struct Connection {
    pub index: usize,
    /// Read the client, write the target.
    pub up: (TcpStream, TcpStream),
    /// Read the target, write the client.
    pub down: (TcpStream, TcpStream),
}

/// Work for one direction of a connection.
pub type Direction = Box<dyn FnOnce() + Send>;

/// What to run for each connection: its upward and downward directions.
type OnConnection = Box<dyn Fn(Connection) -> (Direction, Direction) + Send>;

struct Shared {
    stop: AtomicBool,
    accepted: AtomicUsize,
    /// Both sockets of each live connection, to shut down on drop.
    sockets: Mutex<HashMap<usize, [TcpStream; 2]>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// A running relay; stopped, with every connection closed, on drop.
pub struct Relay {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

/// A poisoned lock (a test's assertion failed in a proxy thread) must not
/// wedge the other threads.
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Relay {
    /// Listen on a free port of 127.0.0.1 and relay each connection to
    /// `target` with the directions `on_connection` gives; `name` names
    /// the threads.
    pub fn start(
        name: &'static str,
        target: SocketAddr,
        on_connection: impl Fn(Connection) -> (Direction, Direction) + Send + 'static,
    ) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            accepted: AtomicUsize::new(0),
            sockets: Mutex::new(HashMap::new()),
            threads: Mutex::new(Vec::new()),
        });
        let s = shared.clone();
        let on_connection: OnConnection = Box::new(on_connection);
        let acceptor = std::thread::Builder::new()
            .name(format!("{name}-accept"))
            .spawn(move || accept_loop(name, &listener, target, &s, &on_connection))
            .expect("spawn the proxy's acceptor");
        Relay { addr, shared, acceptor: Some(acceptor) }
    }

    /// Where clients should connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many connections were accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the acceptor; it sees `stop` and returns.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
        for [a, b] in lock(&self.shared.sockets).values() {
            let _ = a.shutdown(Shutdown::Both);
            let _ = b.shutdown(Shutdown::Both);
        }
        let threads = std::mem::take(&mut *lock(&self.shared.threads));
        for t in threads {
            let _ = t.join();
        }
    }
}

fn accept_loop(name: &str, listener: &TcpListener, target: SocketAddr, shared: &Arc<Shared>, on_connection: &OnConnection) {
    loop {
        let accepted = listener.accept();
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok((client, _)) = accepted else {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        let index = shared.accepted.fetch_add(1, Ordering::SeqCst);
        // The target may be down (restarting): the client then sees its
        // connection closed, as it would without the proxy.
        let Ok(tgt) = TcpStream::connect_timeout(&target, Duration::from_secs(5)) else { continue };
        let clones = || -> io::Result<_> { Ok([client.try_clone()?, tgt.try_clone()?]) };
        let (Ok(registered), Ok([client_r, tgt_w]), Ok([client_w, tgt_r])) = (clones(), clones(), clones()) else { continue };
        let _ = client.set_nodelay(true);
        let _ = tgt.set_nodelay(true);
        lock(&shared.sockets).insert(index, registered);
        let (up, down) = on_connection(Connection { index, up: (client_r, tgt_w), down: (tgt_r, client_w) });
        let live = Arc::new(AtomicUsize::new(2));
        let mut threads = lock(&shared.threads);
        for (dir, work) in [("up", up), ("down", down)] {
            let (shared, live) = (shared.clone(), live.clone());
            let t = std::thread::Builder::new()
                .name(format!("{name}-{index}-{dir}"))
                .spawn(move || {
                    work();
                    // The last direction of a connection closes its sockets.
                    if live.fetch_sub(1, Ordering::SeqCst) == 1 {
                        lock(&shared.sockets).remove(&index);
                    }
                })
                .expect("spawn a proxy thread");
            threads.push(t);
        }
    }
}
