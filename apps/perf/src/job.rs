//! Jobs: one per bdev per reactor, each keeping `qd` requests in flight over
//! its share of the bdev until told to stop.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use hdrhistogram::Histogram;
use pollux_core::bdev::{self, Bdev, BdevIo, Descriptor, IoType};
use pollux_core::dma::{self, DmaBuf};
use pollux_core::io_channel::IoChannel;
use pollux_core::reactor::{self, PollStatus, Poller, ReactorId};

use crate::pattern::{self, Mismatch};
use crate::report::{self, JobResult};
use crate::{Args, Workload};

/// What every job runs.
#[derive(Clone, Debug)]
pub struct Params {
    pub qd: u32,
    pub io_size: u64,
    pub workload: Workload,
    pub time: Duration,
    pub rwmixread: u8,
    pub bdevs: Option<Vec<String>>,
    pub seed: u64,
    /// Write every block once before measuring.
    pub precondition: bool,
}

impl Params {
    pub fn from_args(a: &Args) -> Params {
        Params {
            qd: a.qd,
            io_size: a.io_size,
            workload: a.workload,
            time: Duration::from_secs(a.time),
            rwmixread: a.rwmixread,
            bdevs: a.bdevs.clone(),
            seed: a.seed,
            precondition: a.precondition,
        }
    }

    fn verifies(&self) -> bool {
        matches!(self.workload, Workload::Verify | Workload::Reset)
    }
}

/// Where a verify slot is: writing its pattern, or reading it back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Write,
    Read,
}

struct SlotState {
    /// I/O unit index (within the job's region) of the slot's current I/O.
    unit: u64,
    generation: u64,
    phase: Phase,
}

pub(crate) struct Job {
    pub(crate) bdev: String,
    desc: Descriptor,
    ch: IoChannel<Bdev>,
    p: Params,
    block_size: u64,
    io_blocks: u64,
    first_block: u64,
    units: u64,
    rng: Cell<u64>,
    next_unit: Cell<u64>,
    running: Cell<bool>,
    /// Requests still to submit (the precondition pass writes each unit once).
    remaining: Cell<u64>,
    pub(crate) in_flight: Cell<u32>,
    pub(crate) ios: Cell<u64>,
    pub(crate) bytes: Cell<u64>,
    pub(crate) errors: Cell<u64>,
    pub(crate) resets: Cell<u64>,
    pub(crate) mismatch: RefCell<Option<Mismatch>>,
    pub(crate) first_error: RefCell<Option<String>>,
    pub(crate) hist: RefCell<Histogram<u64>>,
    slots: RefCell<Vec<SlotState>>,
    reset_poller: RefCell<Option<Poller>>,
}

/// The jobs of one reactor, and the reactor's heap allocations counted
/// (`pollux_core::alloc`) when its queues were full and when the jobs were
/// told to stop: the run's allocations, which should not grow with I/O.
#[derive(Default)]
pub(crate) struct Jobs {
    pub(crate) list: RefCell<Vec<Rc<Job>>>,
    allocs_filled: Cell<Option<u64>>,
    allocs_stopped: Cell<Option<u64>>,
}

impl Jobs {
    pub(crate) fn stop(&self) {
        self.allocs_stopped.set(pollux_core::alloc::count());
        self.list.borrow().iter().for_each(|j| j.stop());
    }

    /// Allocations between the queues being filled and the stop.
    pub(crate) fn allocations(&self) -> Option<u64> {
        Some(self.allocs_stopped.get()?.saturating_sub(self.allocs_filled.get()?))
    }
}

impl Job {
    #[inline]
    fn rand(&self) -> u64 {
        // xorshift64*: cheap and good enough for offsets.
        let mut x = self.rng.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn seq_unit(&self) -> u64 {
        let u = self.next_unit.get();
        self.next_unit.set((u + 1) % self.units);
        u
    }

    /// Pick the next request of `slot` and submit it with `buf`.
    fn submit(self: &Rc<Self>, slot: u32, mut buf: Option<DmaBuf>) {
        let p = &self.p;
        let (kind, unit) = match p.workload {
            Workload::Read => (IoType::Read, self.seq_unit()),
            Workload::Write => (IoType::Write, self.seq_unit()),
            Workload::Randread => (IoType::Read, self.rand() % self.units),
            Workload::Randwrite => (IoType::Write, self.rand() % self.units),
            Workload::Rw => (self.mixed(), self.seq_unit()),
            Workload::Randrw => (self.mixed(), self.rand() % self.units),
            Workload::Unmap => (IoType::Unmap, self.seq_unit()),
            Workload::Flush => (IoType::Flush, self.seq_unit()),
            Workload::Verify | Workload::Reset => {
                let mut slots = self.slots.borrow_mut();
                let s = &mut slots[slot as usize];
                match s.phase {
                    Phase::Write => {
                        let b = buf.as_mut().expect("verify buffer");
                        let lba = self.first_block + s.unit * self.io_blocks;
                        pattern::fill(b, self.block_size as usize, p.seed, lba, s.generation);
                        (IoType::Write, s.unit)
                    }
                    Phase::Read => (IoType::Read, s.unit),
                }
            }
        };
        let offset = self.first_block + unit * self.io_blocks;
        let bufs = if kind.has_data() { buf } else { None };
        self.in_flight.set(self.in_flight.get() + 1);
        let job = self.clone();
        self.desc.submit(&self.ch, kind, bufs, offset, self.io_blocks, move |io| job.done(slot, io));
    }

    fn mixed(&self) -> IoType {
        if (self.rand() % 100) < self.p.rwmixread as u64 { IoType::Read } else { IoType::Write }
    }

    fn done(self: &Rc<Self>, slot: u32, mut io: BdevIo) {
        self.in_flight.set(self.in_flight.get() - 1);
        // Latency in ticks as the bdev layer measured it (converted at the end).
        let _ = self.hist.borrow_mut().record(io.latency_ticks().max(1));
        if !io.is_ok() {
            self.errors.set(self.errors.get() + 1);
            if self.first_error.borrow().is_none() {
                *self.first_error.borrow_mut() = Some(format!(
                    "{:?} of {} blocks at LBA {} on {} failed: {:?}",
                    io.kind(),
                    io.num_blocks(),
                    io.offset_blocks(),
                    self.bdev,
                    io.status()
                ));
            }
            return self.halt();
        }
        self.ios.set(self.ios.get() + 1);
        self.bytes.set(self.bytes.get() + io.len_bytes());
        let buf = io.take_buffer();
        drop(io);
        if self.p.verifies() {
            let mut slots = self.slots.borrow_mut();
            let s = &mut slots[slot as usize];
            match s.phase {
                Phase::Write => s.phase = Phase::Read,
                Phase::Read => {
                    let lba = self.first_block + s.unit * self.io_blocks;
                    let b = buf.as_ref().expect("read buffer");
                    if let Some(m) = pattern::check(b, self.block_size as usize, self.p.seed, lba, s.generation) {
                        self.mismatch.borrow_mut().get_or_insert(m);
                        drop(slots);
                        return self.halt();
                    }
                    // Next unit of this slot's stripe, next generation.
                    s.phase = Phase::Write;
                    s.unit += self.p.qd as u64;
                    if s.unit >= self.units {
                        s.unit = slot as u64;
                        s.generation += 1;
                    }
                }
            }
        }
        if self.running.get() && self.remaining.get() > 0 {
            self.remaining.set(self.remaining.get() - 1);
            self.submit(slot, buf);
        }
    }

    /// Stop submitting (after an error) and stop every other job too.
    fn halt(&self) {
        self.running.set(false);
        reactor::send_msg(ReactorId(0), report::stop_early);
    }

    pub(crate) fn stop(&self) {
        self.running.set(false);
        self.reset_poller.borrow_mut().take();
    }

    pub(crate) fn result(&self) -> JobResult {
        JobResult {
            bdev: self.bdev.clone(),
            core: reactor::core_of(reactor::current()),
            ios: self.ios.get(),
            bytes: self.bytes.get(),
            errors: self.errors.get(),
            resets: self.resets.get(),
            hist: self.hist.borrow().clone(),
            mismatch: self.mismatch.borrow().clone(),
            first_error: self.first_error.borrow().clone(),
        }
    }
}

/// Main reactor: open the bdevs, start one job per bdev on every reactor, and
/// arrange the progress lines and the end of the run.
pub fn start(p: Params, json: bool) {
    let bdevs: Vec<_> = match &p.bdevs {
        // A bdev a module claimed (an lvol store's base) is not a target.
        None => bdev::list().into_iter().filter(|b| b.claimed_by().is_none()).collect(),
        Some(names) => names
            .iter()
            .filter_map(|n| {
                bdev::get(n).or_else(|| {
                    eprintln!("pollux-perf: no bdev named {n}");
                    None
                })
            })
            .collect(),
    };
    if bdevs.is_empty() || p.bdevs.as_ref().is_some_and(|n| n.len() != bdevs.len()) {
        eprintln!("pollux-perf: no bdevs to test (create some in the config file)");
        return pollux_core::app::shutdown(1);
    }
    let n = reactor::count() as u64;
    let writes = p.precondition || !matches!(p.workload, Workload::Read | Workload::Randread);
    let mut descs = Vec::new();
    for b in &bdevs {
        if p.io_size % b.block_size() as u64 != 0 {
            eprintln!("pollux-perf: -o {} is not a multiple of {}'s block size {}", p.io_size, b.name(), b.block_size());
            return pollux_core::app::shutdown(1);
        }
        let io_blocks = p.io_size / b.block_size() as u64;
        let units = b.num_blocks() / n / io_blocks;
        if units == 0 || (p.verifies() && units < p.qd as u64) {
            eprintln!("pollux-perf: {} is too small for -o {} -q {} on {n} reactor(s)", b.name(), p.io_size, p.qd);
            return pollux_core::app::shutdown(1);
        }
        match bdev::open(b.name(), writes, |_| report::stop_early()) {
            Ok(d) => descs.push(d),
            Err(e) => {
                eprintln!("pollux-perf: cannot open {}: {e}", b.name());
                return pollux_core::app::shutdown(1);
            }
        }
    }
    if !json {
        println!(
            "Running {:?} for {} s: queue depth {}, I/O size {} bytes, {} job(s) on {} reactor(s)",
            p.workload,
            p.time.as_secs(),
            p.qd,
            p.io_size,
            descs.len() * n as usize,
            n
        );
    }
    if p.precondition {
        if !json {
            println!("Preconditioning: writing every block once");
        }
        let fill = Params { workload: Workload::Write, ..p.clone() };
        let descs2 = descs.clone();
        reactor::for_each_reactor(move || spawn_jobs(&descs2, &fill, true), move || report::after_fill(move || measure(descs, p)));
    } else {
        measure(descs, p);
    }
}

fn measure(descs: Vec<Descriptor>, p: Params) {
    let params = p.clone();
    reactor::for_each_reactor(move || spawn_jobs(&descs, &params, false), move || report::begin(p.time));
}

/// On each reactor: create this reactor's jobs and fill their queues.
fn spawn_jobs(descs: &[Descriptor], p: &Params, once: bool) {
    let n = reactor::count() as u64;
    let me = reactor::current().0 as u64;
    let pool = match dma::pool() {
        Ok(pool) => pool,
        Err(e) => {
            eprintln!("pollux-perf: no buffer pool: {e}");
            return;
        }
    };
    let jobs = Rc::new(Jobs::default());
    // Every slot's buffer, from the pool if it has them all, else carved
    // from one region of their own (large I/O sizes, deep queues).
    let need = if needs_buffer(p.workload) { p.qd as usize * descs.len() } else { 0 };
    let mut bufs: Vec<DmaBuf> = (0..need).map_while(|_| pool.get(p.io_size as usize)).collect();
    if bufs.len() < need {
        bufs = match DmaBuf::alloc_many(p.io_size as usize, need) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("pollux-perf: no DMA memory for {need} buffers of {} bytes: {e}", p.io_size);
                return;
            }
        };
    }
    for d in descs {
        let b = d.bdev().clone();
        let io_blocks = p.io_size / b.block_size() as u64;
        let share = b.num_blocks() / n;
        let units = share / io_blocks;
        let job = Rc::new(Job {
            bdev: b.name().to_string(),
            desc: d.clone(),
            ch: d.channel(),
            p: p.clone(),
            block_size: b.block_size() as u64,
            io_blocks,
            first_block: me * share,
            units,
            rng: Cell::new(p.seed ^ (me + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1),
            next_unit: Cell::new(0),
            running: Cell::new(true),
            remaining: Cell::new(if once { units.saturating_sub(p.qd as u64) } else { u64::MAX }),
            in_flight: Cell::new(0),
            ios: Cell::new(0),
            bytes: Cell::new(0),
            errors: Cell::new(0),
            resets: Cell::new(0),
            mismatch: RefCell::new(None),
            first_error: RefCell::new(None),
            hist: RefCell::new(report::new_histogram()),
            slots: RefCell::new((0..p.qd as u64).map(|s| SlotState { unit: s, generation: 1, phase: Phase::Write }).collect()),
            reset_poller: RefCell::new(None),
        });
        for slot in 0..(if once { p.qd.min(units as u32) } else { p.qd }) {
            let buf = bufs.pop();
            job.submit(slot, buf);
        }
        if p.workload == Workload::Reset {
            let j = Rc::downgrade(&job);
            let poller = reactor::register_timed_poller("perf_reset", Duration::from_secs(1), move || {
                let Some(job) = j.upgrade() else { return PollStatus::Idle };
                let j2 = job.clone();
                job.desc.reset(&job.ch, move |io| {
                    if io.is_ok() {
                        j2.resets.set(j2.resets.get() + 1);
                    } else {
                        j2.errors.set(j2.errors.get() + 1);
                        j2.halt();
                    }
                });
                PollStatus::Busy
            });
            *job.reset_poller.borrow_mut() = Some(poller);
        }
        jobs.list.borrow_mut().push(job);
    }
    reactor::set_local(jobs.clone());
    jobs.allocs_filled.set(pollux_core::alloc::count());
}

fn needs_buffer(w: Workload) -> bool {
    !matches!(w, Workload::Unmap | Workload::Flush)
}
