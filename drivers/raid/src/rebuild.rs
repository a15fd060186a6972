//! Rebuilding a member added to a degraded raid1, while I/O runs: window
//! by window (`process_window_size_kb`, 1 MiB by default), writes to the
//! window are held on every reactor and those in flight drained; the window
//! is read from an online member and written to the new one; then the
//! window moves and the held writes go. Writes elsewhere reach the new
//! member all along (it is `REBUILDING`: written, never read), so once the
//! last window is copied it holds what the others hold and goes online.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use pollux_core::bdev::{IoStatus, IoType};
use pollux_core::dma::DmaBuf;
use pollux_core::reactor::task;

use crate::array::{self, ONLINE, REBUILDING, Shared};
use crate::rpc::{MAX_MB_SEC, WINDOW_KB, fail_member};

/// Rebuild slot `slot` of `sh` (main reactor).
pub async fn run(sh: Arc<Shared>, slot: usize) {
    let t0 = Instant::now();
    tracing::info!("raid {}: rebuilding member {slot} ({})", sh.name, sh.members[slot].name().unwrap_or_default());
    let r = copy_all(&sh, slot).await;
    // Whatever happened, writes go again.
    sh.window_start.store(0, Ordering::Release);
    sh.window_end.store(0, Ordering::Release);
    release_all(&sh).await;
    // Online only if it did not fail meanwhile (fail_member's CAS and this
    // one decide between them).
    let done = r.is_ok() && sh.members[slot].state.compare_exchange(REBUILDING, ONLINE, Ordering::AcqRel, Ordering::Acquire).is_ok();
    sh.rebuild_running.store(false, Ordering::Release);
    match r {
        Ok(()) if done => {
            sh.rebuild_slot.store(u64::MAX, Ordering::Release);
            sh.bump();
            tracing::info!("raid {}: member {slot} rebuilt in {:.1} s", sh.name, t0.elapsed().as_secs_f64());
            if let Some(raid) = crate::rpc::all().into_iter().find(|r| Arc::ptr_eq(&r.sh, &sh)) {
                if raid.superblock {
                    if let Err(e) = crate::sb::write_all(&sh).await {
                        tracing::error!("raid {}: writing the superblock after the rebuild: {e}", sh.name);
                    }
                }
            }
        }
        Ok(()) => {
            tracing::warn!("raid {}: rebuild of member {slot} stopped (the member left)", sh.name);
        }
        Err(st) => {
            tracing::error!("raid {}: rebuild of member {slot} failed: {st:?}", sh.name);
            sh.rebuild_slot.store(u64::MAX, Ordering::Release);
            fail_member(&sh, slot, IoStatus::Failed);
        }
    }
}

async fn copy_all(sh: &Arc<Shared>, slot: usize) -> Result<(), IoStatus> {
    let bs = sh.block_size as u64;
    let total = sh.num_blocks.load(Ordering::Acquire);
    let window = (WINDOW_KB.load(Ordering::Relaxed) * 1024 / bs).max(1);
    let mut buf = DmaBuf::alloc((window * bs) as usize).map_err(|_| IoStatus::NoMemory)?;
    let mut at = 0;
    let started = Instant::now();
    while at < total {
        if sh.members[slot].state() != REBUILDING {
            return Ok(());
        }
        let n = window.min(total - at);
        // Hold new writes to the window, then wait for those sent before.
        sh.window_start.store(at, Ordering::Release);
        sh.window_end.store(at + n, Ordering::Release);
        let old = sh.epoch.fetch_add(1, Ordering::AcqRel) & 1;
        let sh2 = sh.clone();
        task::until_each_reactor(move || array::chan_of(&sh2).is_none_or(|c| c.writes[old as usize].get() == 0)).await;
        buf.set_len((n * bs) as usize);
        buf = copy_window(sh, slot, at, n, buf).await?;
        at += n;
        sh.rebuild_done.store(at, Ordering::Release);
        // Let the held writes go before the next window.
        sh.window_end.store(0, Ordering::Release);
        release_all(sh).await;
        throttle(started, at * bs).await;
    }
    Ok(())
}

/// Read `n` blocks at `at` from an online member and write them to `slot`.
async fn copy_window(sh: &Arc<Shared>, slot: usize, at: u64, n: u64, buf: DmaBuf) -> Result<DmaBuf, IoStatus> {
    let mut buf = Some(buf);
    let mut last = IoStatus::NoDevice;
    for src in (0..sh.members.len()).filter(|s| *s != slot && sh.members[*s].state() == ONLINE) {
        let Some(d) = sh.members[src].desc() else { continue };
        let off = sh.members[src].data_offset.load(Ordering::Acquire) + at;
        // No resources, or the like: try again a few times before giving up
        // (only a device error fails the member read from).
        for _ in 0..100 {
            let (st, b) = io(&d, IoType::Read, buf.take().expect("buffer"), off, n).await;
            buf = Some(b);
            if st.is_ok() {
                let Some(t) = sh.members[slot].desc() else { return Err(IoStatus::NoDevice) };
                let toff = sh.members[slot].data_offset.load(Ordering::Acquire) + at;
                for _ in 0..100 {
                    let (st, b) = io(&t, IoType::Write, buf.take().expect("buffer"), toff, n).await;
                    buf = Some(b);
                    if st.is_ok() {
                        return Ok(buf.take().expect("buffer"));
                    }
                    if array::device_error(st) {
                        return Err(st);
                    }
                    task::until_each_reactor(|| true).await;
                }
                return Err(IoStatus::NoMemory);
            }
            last = st;
            if array::device_error(st) {
                fail_member(sh, src, st);
                break;
            }
            task::until_each_reactor(|| true).await;
        }
    }
    Err(last)
}

async fn io(d: &pollux_core::bdev::Descriptor, kind: IoType, buf: DmaBuf, off: u64, n: u64) -> (IoStatus, DmaBuf) {
    let (st, b) = crate::sb::one(d, kind, buf, off, n).await;
    (st, b.unwrap_or_else(|| DmaBuf::alloc(0).expect("an empty buffer")))
}

/// Send on every reactor the writes held for the window.
async fn release_all(sh: &Arc<Shared>) {
    let sh2 = sh.clone();
    task::each_reactor(move || {
        if let Some(c) = array::chan_of(&sh2) {
            c.release_held();
        }
    })
    .await;
}

/// Keep to `process_max_bandwidth_mb_sec` (0: no limit).
async fn throttle(started: Instant, bytes: u64) {
    let mb = MAX_MB_SEC.load(Ordering::Relaxed);
    if mb == 0 {
        return;
    }
    let due = Duration::from_secs_f64(bytes as f64 / (mb as f64 * 1e6));
    while started.elapsed() < due {
        task::until_each_reactor(|| true).await;
    }
}
