//! Rate limits on a bdev (SPDK's `bdev_set_qos_limit`): I/Os per second
//! and bytes per second (read and write together, reads, writes), for
//! every user of the bdev on every reactor together.
//!
//! As SPDK's: time is cut into 1 ms slices; each limit has a budget per
//! slice (its rate / 1000, at least one I/O or 512 bytes); a request goes
//! if every budget it counts against is above zero, and takes its cost
//! from them (a large request may overdraw: the debt is carried into the
//! next slice); slices in which no request was checked are given late, up
//! to 10 (a reactor busy elsewhere must not cost the bdev its rate; SPDK's
//! one QoS thread loses them). Unlike SPDK, which sends every request of a limited bdev
//! through one thread, the budgets here are atomics shared by all
//! reactors: no request changes reactor. A request that may not go waits
//! in its channel's queue, in order, sent by a poller every 100 us.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

use super::io::IoType;
use crate::clock;

/// The limits' names, as `bdev_set_qos_limit` and `assigned_rate_limits`
/// have them.
pub const NAMES: [&str; 4] = ["rw_ios_per_sec", "rw_mbytes_per_sec", "r_mbytes_per_sec", "w_mbytes_per_sec"];

const MIB: u64 = 1 << 20;
/// Slices missed whole that are still given (see [`Qos::refill`]).
const MAX_CATCH_UP: u64 = 10;

#[derive(Default)]
pub struct Qos {
    /// Per second: I/Os, then bytes (rw, read, write); 0: no limit.
    limits: [AtomicU64; 4],
    /// What is left of each budget in this slice.
    tokens: [AtomicI64; 4],
    /// The tick at which the current slice ends.
    slice_end: AtomicU64,
    active: AtomicBool,
}

impl Qos {
    #[inline]
    pub fn active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    /// The limits as `assigned_rate_limits` shows them (I/Os, MiB).
    pub fn assigned(&self) -> [u64; 4] {
        let l = |i: usize| self.limits[i].load(Ordering::Acquire);
        [l(0), l(1) / MIB, l(2) / MIB, l(3) / MIB]
    }

    /// Set limits (`None`: unchanged; 0: none), in `bdev_set_qos_limit`'s
    /// units; I/O rates round up to a multiple of 1000 and byte rates are
    /// MiB, as SPDK's.
    pub fn set(&self, given: [Option<u64>; 4]) {
        for (i, v) in given.into_iter().enumerate() {
            let Some(v) = v else { continue };
            let per_sec = if i == 0 { v.div_ceil(1000).saturating_mul(1000) } else { v.min(u64::MAX / MIB) * MIB };
            self.limits[i].store(per_sec, Ordering::Release);
            self.tokens[i].store(0, Ordering::Release);
        }
        self.slice_end.store(0, Ordering::Release);
        let on = self.limits.iter().any(|l| l.load(Ordering::Acquire) > 0);
        self.active.store(on, Ordering::Release);
    }

    /// Start a new slice if the current one is over.
    fn refill(&self, now: u64) {
        let end = self.slice_end.load(Ordering::Acquire);
        if now < end {
            return;
        }
        let slice = (clock::tick_rate() / 1000).max(1);
        // On the grid of slices: a check that comes late in a slice does
        // not make the slices longer, and slices no request checked (a
        // reactor busy elsewhere) are given late, up to 10 of them, so the
        // rate holds over time with bursts of at most 10 ms of budget.
        let (next, slices) = if end == 0 {
            (now + slice, 1)
        } else {
            let behind = (now - end) / slice + 1;
            (end + behind * slice, behind.min(MAX_CATCH_UP))
        };
        if self.slice_end.compare_exchange(end, next, Ordering::AcqRel, Ordering::Acquire).is_err() {
            return; // another reactor refilled
        }
        for i in 0..4 {
            let per_sec = self.limits[i].load(Ordering::Acquire);
            if per_sec == 0 {
                continue;
            }
            let quota = (per_sec / 1000).max(if i == 0 { 1 } else { 512 }) as i64 * slices as i64;
            let _ = self.tokens[i].fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| Some(t.min(0) + quota));
        }
    }

    /// Whether a request of `kind` and `bytes` may go now; if so it has
    /// taken its cost from the budgets.
    pub fn admit(&self, kind: IoType, bytes: u64, now: u64) -> bool {
        if !self.active() {
            return true;
        }
        let counted = matches!(kind, IoType::Read | IoType::Write | IoType::Unmap | IoType::WriteZeroes);
        if !counted {
            return true;
        }
        let data = matches!(kind, IoType::Read | IoType::Write);
        let cost =
            [1, if data { bytes } else { 0 }, if kind == IoType::Read { bytes } else { 0 }, if kind == IoType::Write { bytes } else { 0 }];
        self.refill(now);
        let applies = |i: usize| cost[i] > 0 && self.limits[i].load(Ordering::Relaxed) > 0;
        if (0..4).any(|i| applies(i) && self.tokens[i].load(Ordering::Acquire) <= 0) {
            return false;
        }
        for i in (0..4).filter(|i| applies(*i)) {
            self.tokens[i].fetch_sub(cost[i] as i64, Ordering::AcqRel);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Over simulated seconds, as many requests as the budgets let through.
    fn run(q: &Qos, kind: IoType, bytes: u64, seconds: u64) -> u64 {
        let slice = (clock::tick_rate() / 1000).max(1);
        let mut done = 0;
        let t0 = 1_000_000;
        for s in 0..seconds * 1000 {
            // Several tries per slice, as pollers would.
            for k in 0..4 {
                let now = t0 + s * slice + k * slice / 4;
                while q.admit(kind, bytes, now) {
                    done += 1;
                }
            }
        }
        done
    }

    #[test]
    fn limits_hold_over_time_and_round_as_spdks() {
        let q = Qos::default();
        q.set([Some(4500), None, None, None]);
        assert_eq!(q.assigned(), [5000, 0, 0, 0], "I/O rates round up to a multiple of 1000");
        let n = run(&q, IoType::Read, 4096, 3);
        assert!((14_900..=15_100).contains(&n), "{n} reads in 3 s at 5000/s");
        // Bytes: 20 MiB/s of 128 KiB writes; reads do not count against it.
        q.set([Some(0), None, None, Some(20)]);
        let n = run(&q, IoType::Write, 128 << 10, 2);
        let want = 2 * 20 * MIB / (128 << 10);
        assert!(n.abs_diff(want) <= want / 50, "{n} writes of 128 KiB in 2 s at 20 MiB/s, want {want}");
        assert!(q.admit(IoType::Read, 1 << 20, 10));
        // Removed: no limit.
        q.set([None, None, None, Some(0)]);
        assert!(!q.active());
        assert!((0..10_000).all(|_| q.admit(IoType::Write, 4096, 5)));
    }
}
