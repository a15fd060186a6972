//! The reactor's clock: cheap monotonic ticks.
//!
//! On x86-64 a tick is a TSC cycle (the machines Pollux targets have an
//! invariant TSC), calibrated once against the monotonic clock; elsewhere a
//! tick is a nanosecond. Statistics are reported in ticks together with
//! [`tick_rate`], as SPDK does.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

#[cfg(target_arch = "x86_64")]
#[inline]
fn raw_ticks() -> u64 {
    // SAFETY: RDTSC is available on every x86-64 CPU and has no side effects.
    unsafe { core::arch::x86_64::_rdtsc() }
}

#[cfg(not(target_arch = "x86_64"))]
#[inline]
fn raw_ticks() -> u64 {
    origin().elapsed().as_nanos() as u64
}

/// Current tick count.
#[inline]
pub fn ticks() -> u64 {
    raw_ticks()
}

/// Ticks per second.
pub fn tick_rate() -> u64 {
    static RATE: OnceLock<u64> = OnceLock::new();
    *RATE.get_or_init(calibrate)
}

#[cfg(target_arch = "x86_64")]
fn calibrate() -> u64 {
    let _ = origin();
    let t0 = Instant::now();
    let c0 = raw_ticks();
    // 20 ms gives an error well under 0.1 %, plenty for statistics and timers.
    while t0.elapsed() < Duration::from_millis(20) {
        std::hint::spin_loop();
    }
    let c1 = raw_ticks();
    let ns = t0.elapsed().as_nanos() as u64;
    ((c1 - c0) as u128 * 1_000_000_000 / ns.max(1) as u128) as u64
}

#[cfg(not(target_arch = "x86_64"))]
fn calibrate() -> u64 {
    1_000_000_000
}

/// Convert a duration into ticks (saturating).
pub fn duration_to_ticks(d: Duration) -> u64 {
    (d.as_nanos() * tick_rate() as u128 / 1_000_000_000).min(u64::MAX as u128) as u64
}

/// Convert ticks into a duration.
pub fn ticks_to_duration(t: u64) -> Duration {
    Duration::from_nanos((t as u128 * 1_000_000_000 / tick_rate() as u128).min(u64::MAX as u128) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_advance_at_the_calibrated_rate() {
        let rate = tick_rate();
        assert!(rate > 1_000_000, "implausible tick rate {rate}");
        let t0 = ticks();
        let i0 = Instant::now();
        std::thread::sleep(Duration::from_millis(50));
        let dt = ticks_to_duration(ticks() - t0).as_secs_f64();
        let real = i0.elapsed().as_secs_f64();
        assert!((dt - real).abs() / real < 0.05, "ticks say {dt}s, clock says {real}s");
    }

    #[test]
    fn conversions_round_trip() {
        let d = Duration::from_micros(1234);
        let back = ticks_to_duration(duration_to_ticks(d));
        assert!(back.as_nanos().abs_diff(d.as_nanos()) < 1000);
    }
}
