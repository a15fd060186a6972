//! A plain, blocking API for programs that want a remote NVMe/TCP
//! subsystem without Pollux's daemon: open a subsystem, look at what it
//! is, read and write blocks, close it (the shape of GoNVMe's client).
//!
//! ```no_run
//! use pollux_nvmf_host::client::Session;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let s = Session::open("192.0.2.10:4420".parse()?, "nqn.2016-06.io.spdk:cnode1", None)?;
//! println!("{} {} ({})", s.model(), s.serial(), s.subsystem_nqn());
//! let ns = s.namespaces()[0].clone();
//! println!("namespace {}: {} blocks of {} bytes", ns.nsid, ns.num_blocks, ns.block_size);
//! let data = vec![0x5a; 8 * ns.block_size as usize];
//! s.write(ns.nsid, 0, &data)?;
//! assert_eq!(s.read(ns.nsid, 0, 8)?, data);
//! assert!(s.compare(ns.nsid, 0, &data)?);
//! s.close()?;
//! # Ok(())
//! # }
//! ```
//!
//! Underneath it is the same host the daemon uses: a one-reactor Pollux
//! application runs on a thread of its own (interrupt mode, so it sleeps
//! while idle), the controller is attached there as bdev controller
//! `pollux_client` with a bdev per namespace, and each call is a message
//! to that reactor answered through a channel. The application's RPC
//! socket lives in a private temporary directory. One session per process
//! at a time: the reactor runtime is the process's.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;

use pollux_core::app::Background;
use pollux_core::bdev::{self, BdevIo, Descriptor, IoType};
use pollux_core::dma::DmaBuf;
use pollux_core::io_channel::IoChannel;
use pollux_core::reactor;

use crate::HostError;
use crate::ctrlr::{ConnectOptions, Namespace};

/// The bdev controller name the session attaches under.
const NAME: &str = "pollux_client";

/// What the session learnt at open.
#[derive(Clone, Debug)]
struct Info {
    model: String,
    serial: String,
    firmware: String,
    subnqn: String,
    cntlid: u16,
    namespaces: Vec<Namespace>,
}

/// The reactor's side: the open namespaces.
#[derive(Default)]
struct Local {
    open: RefCell<Vec<(u32, Descriptor, IoChannel<bdev::Bdev>)>>,
}

/// An open remote subsystem.
pub struct Session {
    rt: Background,
    info: Info,
}

fn err(e: impl std::fmt::Display) -> HostError {
    HostError::Transport(e.to_string())
}

impl Session {
    /// Connect to subsystem `subnqn` at `addr` (as `hostnqn`, or a random
    /// host NQN), bring the controller up and identify its namespaces.
    pub fn open(addr: SocketAddr, subnqn: &str, hostnqn: Option<&str>) -> Result<Session, HostError> {
        let rt = Background::start("pollux-client", |app| {
            bdev::rpc::register(app);
            app.on_started(|| {
                reactor::set_local(Rc::new(Local::default()));
            });
        })
        .map_err(err)?;
        let mut s = Session { rt, info: Info::default_for(subnqn) };
        let mut opts = ConnectOptions::new(addr, subnqn);
        if let Some(h) = hostnqn {
            opts.hostnqn = h.to_string();
        }
        let attached = s.call(move |reply| {
            crate::bdev::attach(NAME, opts, serde_json::Value::Null, false, move |r| {
                reply(r.map(|_| {
                    let c = crate::bdev::controllers().into_iter().find(|c| c.name() == NAME).expect("attached");
                    Info {
                        model: c.id.model(),
                        serial: c.id.serial(),
                        firmware: c.id.firmware(),
                        subnqn: c.id.subsystem_nqn(),
                        cntlid: c.cntlid(),
                        namespaces: c.namespaces(),
                    }
                }))
            })
        });
        match attached {
            Ok(info) => {
                s.info = info;
                Ok(s)
            }
            Err(e) => {
                s.stop();
                Err(e)
            }
        }
    }

    /// Run `f` on the session's reactor; wait for what it replies.
    fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(Box<dyn FnOnce(Result<T, HostError>) + Send>) + Send + 'static,
    ) -> Result<T, HostError> {
        self.rt.call(f).unwrap_or_else(|| Err(err("the client's reactor has ended")))
    }

    pub fn model(&self) -> &str {
        &self.info.model
    }

    pub fn serial(&self) -> &str {
        &self.info.serial
    }

    pub fn firmware(&self) -> &str {
        &self.info.firmware
    }

    pub fn subsystem_nqn(&self) -> &str {
        &self.info.subnqn
    }

    /// The controller id of the association.
    pub fn controller_id(&self) -> u16 {
        self.info.cntlid
    }

    /// The active namespaces.
    pub fn namespaces(&self) -> &[Namespace] {
        &self.info.namespaces
    }

    fn block_size(&self, nsid: u32) -> Result<usize, HostError> {
        match self.info.namespaces.iter().find(|n| n.nsid == nsid) {
            Some(n) if n.block_size > 0 => Ok(n.block_size as usize),
            _ => Err(HostError::Invalid(format!("namespace {nsid} is not an active namespace of {}", self.info.subnqn))),
        }
    }

    /// How many blocks of namespace `nsid` `data` is, if whole ones.
    fn whole_blocks(&self, nsid: u32, data: &[u8]) -> Result<u64, HostError> {
        let bs = self.block_size(nsid)?;
        if data.is_empty() || data.len() % bs != 0 {
            return Err(HostError::Invalid(format!("{} bytes are not whole {bs}-byte blocks", data.len())));
        }
        Ok((data.len() / bs) as u64)
    }

    /// Read `blocks` blocks of namespace `nsid` from block `lba`.
    pub fn read(&self, nsid: u32, lba: u64, blocks: u64) -> Result<Vec<u8>, HostError> {
        let bs = self.block_size(nsid)?;
        let len = usize::try_from(blocks)
            .ok()
            .and_then(|b| b.checked_mul(bs))
            .filter(|&l| l > 0 && l <= 1 << 30)
            .ok_or_else(|| HostError::Invalid(format!("{blocks} blocks: read 1 block to 1 GiB at a time")))?;
        self.call(move |reply| {
            let (d, ch) = match namespace(nsid) {
                Ok(x) => x,
                Err(e) => return reply(Err(e)),
            };
            let buf = match DmaBuf::alloc(len) {
                Ok(b) => b,
                Err(e) => return reply(Err(err(e))),
            };
            d.read(&ch, [buf], lba, blocks, move |io| {
                if !io.is_ok() {
                    return reply(Err(HostError::Transport(format!("read of {blocks} blocks at {lba}: {:?}", io.status()))));
                }
                let mut out = vec![0; len];
                io.copy_out(0, &mut out);
                reply(Ok(out))
            });
        })
    }

    /// Write `data` (whole blocks) to namespace `nsid` from block `lba`.
    pub fn write(&self, nsid: u32, lba: u64, data: &[u8]) -> Result<(), HostError> {
        self.with_data(nsid, lba, data, IoType::Write, |io, what| match io.status() {
            bdev::IoStatus::Success => Ok(()),
            st => Err(HostError::Transport(format!("{what}: {st:?}"))),
        })
    }

    /// Compare `data` (whole blocks) with namespace `nsid` from block `lba`
    /// (NVMe Compare, done by the controller): whether they are the same.
    pub fn compare(&self, nsid: u32, lba: u64, data: &[u8]) -> Result<bool, HostError> {
        self.with_data(nsid, lba, data, IoType::Compare, |io, what| match io.status() {
            bdev::IoStatus::Success => Ok(true),
            bdev::IoStatus::Miscompare { .. } => Ok(false),
            st => Err(HostError::Transport(format!("{what}: {st:?}"))),
        })
    }

    /// Send `data` (whole blocks) to namespace `nsid` at block `lba` as a
    /// `kind` request; `answer` reads the finished request.
    fn with_data<T: Send + 'static>(
        &self,
        nsid: u32,
        lba: u64,
        data: &[u8],
        kind: IoType,
        answer: impl FnOnce(BdevIo, String) -> Result<T, HostError> + Send + 'static,
    ) -> Result<T, HostError> {
        let blocks = self.whole_blocks(nsid, data)?;
        let data = data.to_vec();
        self.call(move |reply| {
            let (d, ch, buf) = match namespace(nsid).and_then(|(d, ch)| dma_copy(&data).map(|b| (d, ch, b))) {
                Ok(x) => x,
                Err(e) => return reply(Err(e)),
            };
            let what = format!("{} of {blocks} blocks at {lba}", kind.name());
            let done = move |io: BdevIo| reply(answer(io, what));
            match kind {
                IoType::Compare => d.compare(&ch, [buf], lba, blocks, done),
                _ => d.write(&ch, [buf], lba, blocks, done),
            }
        })
    }

    /// Detach the controller (CC.SHN) and end the session's reactor.
    pub fn close(mut self) -> Result<(), HostError> {
        let r = self.detach();
        self.stop();
        r
    }

    fn detach(&self) -> Result<(), HostError> {
        self.call(|reply| {
            if let Some(l) = reactor::local::<Local>() {
                l.open.borrow_mut().clear();
            }
            if !crate::bdev::attached(NAME) {
                // Gone already (lost for good): nothing to detach.
                return reply(Ok(()));
            }
            let _ = crate::bdev::detach(NAME, move || reply(Ok(())));
        })
    }

    fn stop(&mut self) {
        self.rt.stop();
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if self.rt.is_running() {
            let _ = self.detach();
            self.stop();
        }
    }
}

impl Info {
    fn default_for(subnqn: &str) -> Info {
        Info {
            model: String::new(),
            serial: String::new(),
            firmware: String::new(),
            subnqn: subnqn.to_string(),
            cntlid: 0,
            namespaces: Vec::new(),
        }
    }
}

/// `data` in DMA memory.
fn dma_copy(data: &[u8]) -> Result<DmaBuf, HostError> {
    let mut buf = DmaBuf::alloc(data.len()).map_err(err)?;
    buf.copy_from_slice(data);
    Ok(buf)
}

/// The descriptor and channel of namespace `nsid` (opened on first use).
fn namespace(nsid: u32) -> Result<(Descriptor, IoChannel<bdev::Bdev>), HostError> {
    let local = reactor::local::<Local>().ok_or_else(|| err("no session on this reactor"))?;
    if let Some((_, d, ch)) = local.open.borrow().iter().find(|(n, _, _)| *n == nsid) {
        return Ok((d.clone(), ch.clone()));
    }
    let name = format!("{NAME}n{nsid}");
    let d = bdev::open(&name, true, |_| {}).map_err(|e| HostError::Invalid(format!("namespace {nsid}: {e}")))?;
    let ch = d.channel();
    local.open.borrow_mut().push((nsid, d.clone(), ch.clone()));
    Ok((d, ch))
}
