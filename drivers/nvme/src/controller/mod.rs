//! An NVMe controller: bring-up per the base specification, identify data,
//! namespaces, admin commands, I/O queue ids, reset and shutdown.
//!
//! Bring-up ([`Controller::start`]): disable and wait for CSTS.RDY = 0, set
//! up the admin queue (AQA/ASQ/ACQ), enable with 4 KiB pages and 64/16-byte
//! entries and wait for CSTS.RDY = 1 (both bounded by CAP.TO), Identify
//! Controller, Set Features Number of Queues, then the active namespace list
//! and Identify Namespace for each.
//!
//! One controller is shared by all reactors (`Arc<Controller>`); each reactor
//! reaches it through its own I/O queue pair ([`crate::qpair::QueuePair`], the
//! controller's I/O channel). Admin commands are serialised by a mutex (the
//! control path only). A reset bumps the controller's *generation*: every
//! queue pair notices on its next poll, re-creates its queues and resubmits
//! what was in flight.

mod admin_ops;

pub use admin_ops::DataDirection;
pub(crate) use admin_ops::QueueSpec;

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use pollux_core::io_channel::{IoDevice, try_get_io_channel};
use pollux_core::reactor;
use pollux_nvme_spec::identify::{IdentifyController, IdentifyNamespace, oncs, sgls};
use pollux_nvme_spec::registers::{Cap, Cc, Version, aqa, offset};

use crate::admin::{self, AdminQueue};
use crate::error::NvmeError;
use crate::pci::PciAddress;
use crate::qpair::QueuePair;
use crate::regs::{ControllerRegisters, Registers};
use crate::sys::VfioPci;

/// The memory page size the driver uses (CC.MPS = 0).
pub const PAGE_SIZE: usize = 4096;
/// The largest transfer one command carries, whatever MDTS allows (one
/// 4 KiB PRP list per command).
pub const MAX_TRANSFER_CAP: usize = 2 << 20;

/// What to do when an I/O command times out (SPDK's `action_on_timeout`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TimeoutAction {
    /// Log only.
    None,
    /// Abort the command; reset the controller if the abort fails or the
    /// command still does not finish.
    Abort,
    /// Reset the controller.
    Reset,
}

/// Tunables of a controller.
#[derive(Clone, Debug)]
pub struct ControllerOptions {
    /// Entries of each I/O submission and completion queue.
    pub io_queue_entries: u16,
    /// I/O queues to ask for (Set Features Number of Queues).
    pub num_io_queues: u32,
    /// Time allowed to each I/O command; `None` disables timeouts.
    pub io_timeout: Option<Duration>,
    pub timeout_action: TimeoutAction,
    /// Time allowed to each admin command.
    pub admin_timeout: Duration,
    /// Use MSI-X interrupts for I/O completion queues (interrupt mode: a
    /// reactor sleeps until its queue's vector fires).
    pub interrupts: bool,
    /// Reactors that will have a queue pair (one vector each, plus the
    /// admin queue's): counted on a reactor, as the bring-up may run off
    /// one.
    pub reactors: usize,
    /// Poll each I/O queue pair on this period instead of every reactor
    /// iteration (SPDK's `nvme_ioq_poll_period_us`).
    pub io_poll_period: Option<Duration>,
}

impl Default for ControllerOptions {
    fn default() -> Self {
        ControllerOptions {
            io_queue_entries: 256,
            num_io_queues: 1024,
            io_timeout: Some(Duration::from_secs(30)),
            timeout_action: TimeoutAction::Abort,
            admin_timeout: Duration::from_secs(10),
            interrupts: false,
            reactors: 1,
            io_poll_period: None,
        }
    }
}

/// A controller's life-cycle state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    Enabled = 0,
    Resetting = 1,
    /// Bring-up or a reset failed; I/O fails.
    Failed = 2,
    /// The device is gone (hot removed); I/O fails with "no device".
    Removed = 3,
    /// Shut down (CC.SHN) by a detach or the daemon stopping.
    ShutDown = 4,
}

impl State {
    fn from_u8(v: u8) -> State {
        match v {
            0 => State::Enabled,
            1 => State::Resetting,
            2 => State::Failed,
            3 => State::Removed,
            _ => State::ShutDown,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            State::Enabled => "enabled",
            State::Resetting => "resetting",
            State::Failed => "failed",
            State::Removed => "removed",
            State::ShutDown => "shut down",
        }
    }
}

/// A namespace as the driver uses it.
#[derive(Clone, Debug)]
pub struct Namespace {
    pub nsid: u32,
    pub block_size: u32,
    pub num_blocks: u64,
    /// Metadata bytes per block of the current format (0: none).
    pub metadata_size: u16,
    pub data: Box<IdentifyNamespace>,
}

type ResetDone = Box<dyn FnOnce(Result<(), String>) + Send>;

#[derive(Default)]
struct ResetState {
    running: bool,
    /// Who waits for the reset under way, and on which reactor.
    waiters: Vec<(Option<(reactor::ReactorId, reactor::Handle)>, ResetDone)>,
}

/// One NVMe controller.
pub struct Controller {
    name: String,
    address: Option<PciAddress>,
    regs: Arc<dyn Registers>,
    cap: Cap,
    version: Version,
    opts: ControllerOptions,
    admin: Mutex<AdminQueue>,
    cdata: Box<IdentifyController>,
    namespaces: Mutex<Vec<Namespace>>,
    max_transfer: usize,
    io_queues: u16,
    qids: Mutex<Vec<bool>>,
    state: AtomicU8,
    generation: AtomicU64,
    resets: Mutex<ResetState>,
    resets_done: AtomicU64,
    /// I/O commands that timed out, and Aborts sent for them.
    timeouts: AtomicU64,
    aborts: AtomicU64,
    // Last: the device is closed after everything above is released.
    pci: Option<VfioPci>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Controller {
    /// Open the controller at `addr` through VFIO and bring it up.
    pub fn attach_pci(name: &str, addr: PciAddress, opts: ControllerOptions) -> Result<Arc<Controller>, NvmeError> {
        let mut pci = VfioPci::open(addr)?;
        if opts.interrupts {
            // Before CC.EN = 1: one vector per I/O queue (vector = queue id).
            let wanted = (opts.reactors.max(1) + 1).min(65) as u32;
            match pci.enable_msix(wanted) {
                Ok(n) if n >= 2 => tracing::info!("{addr}: {n} MSI-X vectors for interrupt mode"),
                Ok(_) => tracing::warn!("{addr}: no MSI-X; I/O queues are polled"),
                Err(e) => tracing::warn!("{addr}: {e}; I/O queues are polled"),
            }
        }
        let regs: Arc<dyn Registers> = pci.bar0();
        Controller::start(name, regs, Some(pci), opts)
    }

    /// Bring up the controller behind `regs` (a BAR, or a fake in tests).
    pub fn start(
        name: &str,
        regs: Arc<dyn Registers>,
        pci: Option<VfioPci>,
        opts: ControllerOptions,
    ) -> Result<Arc<Controller>, NvmeError> {
        let cap = regs.cap()?;
        if cap.0 == u64::MAX {
            return Err(NvmeError::Gone);
        }
        if cap.css() & 1 == 0 {
            return Err(NvmeError::Unsupported("the NVM command set (CAP.CSS)".into()));
        }
        if cap.max_queue_entries() < 2 {
            // MQES 0, which the spec calls invalid: no queue can hold a
            // command (the clamp below panicked on it).
            return Err(NvmeError::Unsupported(format!("queues of {} entries (CAP.MQES 0)", cap.max_queue_entries())));
        }
        if cap.min_page_size() > PAGE_SIZE || cap.max_page_size() < PAGE_SIZE {
            return Err(NvmeError::Unsupported(format!("4 KiB pages (CAP.MPSMIN {} MPSMAX {})", cap.min_page_size(), cap.max_page_size())));
        }
        let version = regs.vs()?;
        // Queues whose doorbells fit in the register window (a large
        // CAP.DSTRD or a small BAR put them past its end: every doorbell
        // write failed and the queue's commands never went).
        let window = regs.window_len();
        let doorbell_queues = match window {
            None => u32::MAX,
            Some(len) => {
                let pair = 2 * (4usize << cap.doorbell_stride());
                (len.saturating_sub(pollux_nvme_spec::registers::offset::DOORBELLS as usize) / pair).min(u32::MAX as usize) as u32
            }
        };
        if doorbell_queues < 2 {
            return Err(NvmeError::Unsupported(format!(
                "doorbells of stride {} bytes that leave no room for an I/O queue in the {}-byte register window",
                4usize << cap.doorbell_stride(),
                window.unwrap_or(0)
            )));
        }
        let mut admin = AdminQueue::new(regs.clone(), cap.doorbell_stride(), PAGE_SIZE)?;
        enable(&*regs, cap, &mut admin)?;
        let timeout = opts.admin_timeout;
        admin.run(admin::identify_controller(), 4096, timeout)?;
        let mut cdata = IdentifyController::zeroed_box();
        admin.read_data(zerocopy::IntoBytes::as_mut_bytes(&mut *cdata));
        let max_transfer = cdata.max_transfer_bytes(cap.min_page_size()).unwrap_or(MAX_TRANSFER_CAP).min(MAX_TRANSFER_CAP);
        let want = opts.num_io_queues.clamp(1, 65535).min(doorbell_queues - 1) as u16;
        let granted = admin.run(admin::set_number_of_queues(want, want), 0, timeout)?.result.get();
        let io_queues = ((granted & 0xffff) + 1).min((granted >> 16) + 1).min(u32::from(want)) as u16;
        let entries = opts.io_queue_entries.clamp(2, cap.max_queue_entries().min(4096) as u16);
        let opts = ControllerOptions { io_queue_entries: entries, ..opts };
        let ctrl = Controller {
            name: name.to_string(),
            address: pci.as_ref().map(VfioPci::address),
            regs,
            cap,
            version,
            opts,
            admin: Mutex::new(admin),
            cdata,
            namespaces: Mutex::new(Vec::new()),
            max_transfer,
            io_queues,
            qids: Mutex::new(vec![false; usize::from(io_queues)]),
            state: AtomicU8::new(State::Enabled as u8),
            generation: AtomicU64::new(1),
            resets: Mutex::new(ResetState::default()),
            resets_done: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            aborts: AtomicU64::new(0),
            pci,
        };
        ctrl.scan_namespaces()?;
        tracing::info!(
            "NVMe controller {} ({}): {} {} fw {}, NVMe {}, {} I/O queues of {} entries, max transfer {} KiB",
            ctrl.name,
            ctrl.address.map(|a| a.to_string()).unwrap_or_else(|| "no PCI".into()),
            ctrl.cdata.model(),
            ctrl.cdata.serial(),
            ctrl.cdata.firmware(),
            version,
            io_queues,
            entries,
            max_transfer >> 10
        );
        Ok(Arc::new(ctrl))
    }

    /// Read the active namespace list and identify every namespace in it.
    pub fn scan_namespaces(&self) -> Result<(), NvmeError> {
        let ids = self.active_namespace_ids()?;
        let mut found = Vec::with_capacity(ids.len());
        for nsid in ids {
            let data = self.identify_namespace(nsid)?;
            let Some(block_size) = data.block_size() else {
                tracing::warn!("{}: namespace {nsid} has an unusable LBA format; skipped", self.name);
                continue;
            };
            let num_blocks = data.nsze.get();
            if num_blocks == 0 {
                continue;
            }
            found.push(Namespace { nsid, block_size, num_blocks, metadata_size: data.current_format().ms.get(), data });
        }
        *lock(&self.namespaces) = found;
        Ok(())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn address(&self) -> Option<PciAddress> {
        self.address
    }

    pub fn cap(&self) -> Cap {
        self.cap
    }

    pub fn version(&self) -> Version {
        self.version
    }

    pub fn identify_data(&self) -> &IdentifyController {
        &self.cdata
    }

    pub fn namespaces(&self) -> Vec<Namespace> {
        lock(&self.namespaces).clone()
    }

    pub fn namespace(&self, nsid: u32) -> Option<Namespace> {
        lock(&self.namespaces).iter().find(|n| n.nsid == nsid).cloned()
    }

    /// The PCI function, when the controller is reached through VFIO.
    pub fn pci(&self) -> Option<&VfioPci> {
        self.pci.as_ref()
    }

    pub fn options(&self) -> &ControllerOptions {
        &self.opts
    }

    /// The largest transfer of one command, in bytes.
    pub fn max_transfer(&self) -> usize {
        self.max_transfer
    }

    /// I/O queues the controller granted.
    pub fn io_queue_count(&self) -> u16 {
        self.io_queues
    }

    pub fn supports_sgl(&self) -> bool {
        self.cdata.sgls.get() & sgls::SUPPORT_MASK != 0
    }

    pub fn oncs(&self) -> u16 {
        self.cdata.oncs.get()
    }

    pub fn supports_write_zeroes(&self) -> bool {
        self.oncs() & oncs::WRITE_ZEROES != 0
    }

    pub fn supports_deallocate(&self) -> bool {
        self.oncs() & oncs::DATASET_MANAGEMENT != 0
    }

    pub fn supports_compare(&self) -> bool {
        self.oncs() & oncs::COMPARE != 0
    }

    pub fn state(&self) -> State {
        State::from_u8(self.state.load(Ordering::Acquire))
    }

    pub(crate) fn set_state(&self, s: State) {
        self.state.store(s as u8, Ordering::Release);
    }

    /// Move from `from` to `to` unless the state changed meanwhile (a
    /// shutdown or removal, which stand).
    fn transition(&self, from: State, to: State) -> bool {
        self.state.compare_exchange(from as u8, to as u8, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }

    /// Bumped by every successful reset: queue pairs connected at an older
    /// generation must re-create their queues.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Resets completed so far.
    pub fn reset_count(&self) -> u64 {
        self.resets_done.load(Ordering::Relaxed)
    }

    /// I/O commands that timed out so far.
    pub fn timeout_count(&self) -> u64 {
        self.timeouts.load(Ordering::Relaxed)
    }

    /// Aborts sent for timed-out commands so far.
    pub fn abort_count(&self) -> u64 {
        self.aborts.load(Ordering::Relaxed)
    }

    pub(crate) fn count_timeout(&self) {
        self.timeouts.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn registers(&self) -> &dyn Registers {
        &*self.regs
    }

    /// The interrupt vector of I/O queue `qid` and its eventfd, if the
    /// queue signals one.
    pub(crate) fn queue_interrupt(&self, qid: u16) -> Option<(u16, std::os::fd::RawFd)> {
        self.pci.as_ref()?.msix_fd(qid).map(|fd| (qid, fd))
    }

    pub(crate) fn doorbell_stride(&self) -> u8 {
        self.cap.doorbell_stride()
    }

    /// Take a free I/O queue id.
    pub(crate) fn alloc_qid(&self) -> Option<u16> {
        let mut q = lock(&self.qids);
        let i = q.iter().position(|used| !used)?;
        q[i] = true;
        Some(i as u16 + 1)
    }

    pub(crate) fn free_qid(&self, qid: u16) {
        if let Some(slot) = lock(&self.qids).get_mut(usize::from(qid) - 1) {
            *slot = false;
        }
    }

    /// Lock the admin queue, refusing when the controller cannot take admin
    /// commands.
    fn admin(&self) -> Result<MutexGuard<'_, AdminQueue>, NvmeError> {
        // A reset holds the lock through its waits: refuse rather than wait
        // for it.
        let mut tries = 0u32;
        let guard = loop {
            match self.admin.try_lock() {
                Ok(g) => break g,
                Err(std::sync::TryLockError::Poisoned(p)) => break p.into_inner(),
                // Resetting or shutting down: refused anyway once it got it.
                Err(std::sync::TryLockError::WouldBlock) if self.state() != State::Enabled => {
                    return Err(NvmeError::State(self.state().name()));
                }
                // Another command (an Abort may wait up to the admin
                // timeout): yield a few times, then wait without taking a
                // core (these callers are threads of their own, or a tool).
                Err(std::sync::TryLockError::WouldBlock) => {
                    tries += 1;
                    if tries < 64 {
                        std::thread::yield_now();
                    } else {
                        std::thread::sleep(std::time::Duration::from_micros(50));
                    }
                }
            }
        };
        // Checked under the lock: a shutdown or reset holds it while it
        // changes the state.
        match self.state() {
            State::Enabled => Ok(guard),
            s => Err(NvmeError::State(s.name())),
        }
    }

    /// Hold the admin queue, as a command waiting for the device would.
    #[cfg(test)]
    pub(crate) fn hold_admin_queue(&self) -> MutexGuard<'_, AdminQueue> {
        lock(&self.admin)
    }

    /// Whether an admin command (or a reset, or a shutdown) holds the admin
    /// queue now: a reactor with something else to do comes back later
    /// rather than wait (an Abort waits up to the admin timeout).
    pub(crate) fn admin_busy(&self) -> bool {
        matches!(self.admin.try_lock(), Err(std::sync::TryLockError::WouldBlock))
    }

    /// Check the controller's health (main reactor, periodically): a device
    /// that reads all ones is gone; CSTS.CFS asks for a reset.
    pub fn check_health(&self) -> Result<(), NvmeError> {
        if self.pci.as_ref().is_some_and(VfioPci::release_requested) {
            tracing::warn!("NVMe controller {}: the kernel asks for the device back (unbind or removal)", self.name);
            return Err(NvmeError::Gone);
        }
        let csts = self.regs.csts()?;
        if csts.device_gone() {
            return Err(NvmeError::Gone);
        }
        if csts.fatal() {
            return Err(NvmeError::Fatal);
        }
        Ok(())
    }

    /// Reset the controller: disable, re-create the admin queue, enable and
    /// restore the number of queues; then every queue pair re-creates its
    /// queues and resubmits what was in flight. The waits (up to CAP.TO for
    /// each of disable and enable, then an admin timeout) run on a thread
    /// of their own, so the calling reactor goes on serving its other
    /// devices and connections meanwhile; I/O to this controller waits. A
    /// reset asked for while one runs finishes with it. `done` runs on the
    /// calling reactor when this reset (or the one in progress) ends.
    pub fn reset(self: &Arc<Self>, done: impl FnOnce(Result<(), String>) + Send + 'static) {
        {
            let mut r = lock(&self.resets);
            let running = r.running;
            if !running && !self.transition(State::Enabled, State::Resetting) && !self.transition(State::Failed, State::Resetting) {
                drop(r);
                return done(Err(format!("controller {} is {}", self.name, self.state().name())));
            }
            r.waiters.push((reactor::try_current().map(|r| (r, reactor::handle())), Box::new(done)));
            if running {
                return;
            }
            r.running = true;
        }
        tracing::warn!("NVMe controller {}: resetting", self.name);
        let me = self.clone();
        self.off_reactor("nvme-reset", false, Controller::reinitialize, move |res| me.reset_done(res));
    }

    /// Run `work` (a wait on the device) on a thread of its own named
    /// `what`, or here if no thread can be started; then `then` with its
    /// result on this reactor. `before_exit`: the process waits for it at
    /// exit.
    pub(crate) fn off_reactor<T: Send + 'static, W>(
        self: &Arc<Self>,
        what: &'static str,
        before_exit: bool,
        work: W,
        then: impl FnOnce(Result<T, NvmeError>) + Send + 'static,
    ) where
        W: Fn(&Controller) -> Result<T, NvmeError> + Clone + Send + 'static,
    {
        let (me, me2, here) = (self.clone(), self.clone(), work.clone());
        let then = move |r: Result<Result<T, NvmeError>, reactor::NotRun>| {
            then(match r {
                Ok(r) => r,
                Err(reactor::NotRun::NoThread) => here(&me2),
                Err(reactor::NotRun::Panicked) => Err(NvmeError::Invalid(format!("{what} panicked"))),
            })
        };
        if before_exit {
            reactor::off_reactor_before_exit(what, move || work(&me), then);
        } else {
            reactor::off_reactor(what, move || work(&me), then);
        }
    }

    /// The end of a reset, on the reactor that asked for it.
    fn reset_done(self: &Arc<Self>, mut res: Result<(), NvmeError>) {
        let waiters = {
            let mut r = lock(&self.resets);
            r.running = false;
            if res.is_ok() {
                // Bumped first: a queue pair that sees Enabled sees the new
                // generation too.
                self.generation.fetch_add(1, Ordering::AcqRel);
                // A shutdown (detach) or removal that came meanwhile stands.
                if !self.transition(State::Resetting, State::Enabled) {
                    res = Err(NvmeError::State(self.state().name()));
                }
            }
            match &res {
                Ok(()) => {
                    self.resets_done.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!("NVMe controller {}: reset done", self.name);
                }
                Err(e) => {
                    tracing::error!("NVMe controller {}: reset failed: {e}", self.name);
                    self.transition(State::Resetting, State::Failed);
                }
            }
            std::mem::take(&mut r.waiters)
        };
        self.kick_queue_pairs();
        let res = res.map_err(|e| e.to_string());
        let here = reactor::try_current();
        for (at, w) in waiters {
            let res = res.clone();
            match at {
                // The waiter's own reactor (from any thread).
                Some((r, h)) if here != Some(r) => h.send(r, move || w(res)),
                _ => w(res),
            }
        }
    }

    fn reinitialize(&self) -> Result<(), NvmeError> {
        let mut admin = lock(&self.admin);
        // A shutdown that took the lock first stands.
        if self.state() != State::Resetting {
            return Err(NvmeError::State(self.state().name()));
        }
        enable(&*self.regs, self.cap, &mut admin)?;
        let want = self.io_queues;
        admin.run(admin::set_number_of_queues(want, want), 0, self.opts.admin_timeout)?;
        Ok(())
    }

    /// Make every reactor's queue pair look at the controller now (after a
    /// reset or a removal), even a reactor asleep in interrupt mode.
    pub(crate) fn kick_queue_pairs(self: &Arc<Self>) {
        if reactor::try_current().is_none() {
            return;
        }
        let me = self.clone();
        reactor::for_each_reactor(
            move || {
                if let Some(qp) = try_get_io_channel(&me) {
                    qp.kick();
                }
            },
            || {},
        );
    }

    /// The device went away: fail all I/O from now on.
    pub fn mark_removed(self: &Arc<Self>) {
        if self.state() != State::Removed {
            tracing::warn!("NVMe controller {}: device removed", self.name);
            self.set_state(State::Removed);
            self.kick_queue_pairs();
        }
    }

    /// [`Controller::shutdown`] where no one is left to tell of a failure
    /// but the log.
    pub(crate) fn shutdown_or_warn(&self) {
        if let Err(e) = self.shutdown() {
            tracing::warn!("NVMe controller {}: shutdown failed: {e}", self.name);
        }
    }

    /// Normal shutdown (CC.SHN = 01b), waiting for CSTS.SHST = complete.
    /// I/O fails afterwards. Idempotent.
    pub fn shutdown(&self) -> Result<(), NvmeError> {
        match self.state() {
            State::ShutDown | State::Removed => return Ok(()),
            _ => {}
        }
        let _admin = lock(&self.admin);
        // A removal that came while it waited for the lock stands.
        if matches!(self.state(), State::ShutDown | State::Removed) {
            return Ok(());
        }
        self.set_state(State::ShutDown);
        let cc = self.regs.cc()?;
        if !cc.enabled() {
            return Ok(());
        }
        self.regs.set_cc(Cc((cc.0 & !Cc::SHN_MASK) | Cc::SHN_NORMAL))?;
        let rtd3e_ms = u64::from(self.cdata.rtd3e.get()) / 1000;
        let limit = Duration::from_millis(rtd3e_ms.clamp(5_000, 60_000));
        let start = Instant::now();
        loop {
            let csts = self.regs.csts()?;
            if csts.device_gone() {
                return Err(NvmeError::Gone);
            }
            if csts.shutdown_status() == 2 {
                tracing::info!("NVMe controller {}: shutdown complete (CC.SHN, CSTS.SHST)", self.name);
                return Ok(());
            }
            if start.elapsed() > limit {
                return Err(NvmeError::NotReady { what: "shut down", ms: limit.as_millis() as u64, csts: csts.0 });
            }
            std::thread::sleep(Duration::from_micros(100));
        }
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        if matches!(self.state(), State::Enabled | State::Resetting | State::Failed) {
            self.shutdown_or_warn();
        }
    }
}

impl IoDevice for Controller {
    type Channel = QueuePair;

    /// The reactor's I/O queue pair, created on its first use.
    fn create_channel(self: &Arc<Self>) -> QueuePair {
        QueuePair::new(self.clone())
    }
}

/// Wait until `ready(csts)` or `ms` pass.
fn wait_csts(regs: &dyn Registers, ms: u64, what: &'static str, ready: impl Fn(u32) -> bool) -> Result<(), NvmeError> {
    let start = Instant::now();
    loop {
        let csts = regs.csts()?;
        if csts.device_gone() {
            return Err(NvmeError::Gone);
        }
        if ready(csts.0) {
            return Ok(());
        }
        if start.elapsed() > Duration::from_millis(ms) {
            return Err(NvmeError::NotReady { what, ms, csts: csts.0 });
        }
        std::thread::sleep(Duration::from_micros(50));
    }
}

/// Disable the controller (waiting for CSTS.RDY = 0), program the admin
/// queue and enable it again (waiting for CSTS.RDY = 1).
fn enable(regs: &dyn Registers, cap: Cap, admin: &mut AdminQueue) -> Result<(), NvmeError> {
    let to = cap.timeout_ms().max(500);
    let cc = regs.cc()?;
    if cc.enabled() {
        // An enable in progress must finish before EN may be cleared.
        wait_csts(regs, to, "ready before disabling", |c| c & 1 == 1 || c & 2 == 2)?;
        regs.set_cc(Cc(cc.0 & !Cc::EN))?;
    }
    // With EN = 0, RDY may still be 1 while the controller resets.
    wait_csts(regs, to, "disabled", |c| c & 1 == 0)?;
    admin.disabled();
    admin.rings.reset();
    let entries = admin.rings.entries();
    regs.write32(offset::AQA as usize, aqa(entries, entries))?;
    regs.write64(offset::ASQ as usize, admin.rings.sq_iova().0)?;
    regs.write64(offset::ACQ as usize, admin.rings.cq_iova().0)?;
    regs.set_cc(Cc(Cc::nvm(PAGE_SIZE).0 | Cc::EN))?;
    wait_csts(regs, to, "ready", |c| c & 1 == 1).map_err(|e| match (e, regs.csts()) {
        (_, Ok(c)) if c.fatal() => NvmeError::Fatal,
        (e, _) => e,
    })
}
