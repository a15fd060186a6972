//! SPDK's notifications (`notify_get_types`, `notify_get_notifications`):
//! what happened to the daemon's objects, for a client that polls instead
//! of listing everything again. Each event has a type (`bdev_register`,
//! `bdev_unregister`, `bdev_resize`, as SPDK names them), a context (the
//! bdev's name) and an id that counts from 0 for the life of the process.
//! The last [`MAX_EVENTS`] are kept (SPDK's ring size); older ones are
//! gone, and a client asking from an older id gets the oldest kept.
//!
//! Events are few and come from the main reactor's control path (a bdev
//! registered, deleted or resized), so one lock guards the ring; no I/O
//! path takes it.

use std::collections::VecDeque;
use std::sync::Mutex;

/// Events kept (SPDK's `SPDK_NOTIFY_MAX_EVENTS`).
pub const MAX_EVENTS: usize = 1024;

/// Bytes of context kept per event (SPDK's `SPDK_NOTIFY_MAX_CTX_SIZE`
/// less its terminating zero): what the ring holds stays bounded whatever
/// names clients choose.
pub const MAX_CTX: usize = 127;

/// The types, in SPDK's order of registration.
pub const BDEV_REGISTER: &str = "bdev_register";
pub const BDEV_UNREGISTER: &str = "bdev_unregister";
pub const BDEV_RESIZE: &str = "bdev_resize";

const TYPES: [&str; 3] = [BDEV_REGISTER, BDEV_UNREGISTER, BDEV_RESIZE];

/// One notification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub id: u64,
    pub kind: &'static str,
    pub ctx: String,
}

struct Ring {
    events: VecDeque<Event>,
    /// The id the next event takes.
    next: u64,
}

static RING: Mutex<Ring> = Mutex::new(Ring { events: VecDeque::new(), next: 0 });

fn ring() -> std::sync::MutexGuard<'static, Ring> {
    RING.lock().unwrap_or_else(|e| e.into_inner())
}

/// The notification types there are.
pub fn types() -> &'static [&'static str] {
    &TYPES
}

/// Record an event; returns its id.
pub fn send(kind: &'static str, ctx: &str) -> u64 {
    let mut r = ring();
    let id = r.next;
    r.next += 1;
    if r.events.len() == MAX_EVENTS {
        r.events.pop_front();
    }
    let mut end = ctx.len().min(MAX_CTX);
    while !ctx.is_char_boundary(end) {
        end -= 1;
    }
    r.events.push_back(Event { id, kind, ctx: ctx[..end].to_string() });
    id
}

/// Up to `max` events from id `from` on (from the oldest kept when `from`
/// is older), in order.
pub fn events(from: u64, max: u64) -> Vec<Event> {
    let r = ring();
    let first = r.events.front().map_or(r.next, |e| e.id);
    let skip = from.saturating_sub(first);
    r.events.iter().skip(usize::try_from(skip).unwrap_or(usize::MAX)).take(usize::try_from(max).unwrap_or(usize::MAX)).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_keeps_the_last_events_and_reads_from_an_id() {
        // The ring is process-wide (other tests may add events meanwhile):
        // look at the ids this test got.
        let ids: Vec<u64> = (0..MAX_EVENTS + 10).map(|i| send(BDEV_RESIZE, &format!("ring-test-{i}"))).collect();
        assert!(ids.windows(2).all(|w| w[1] > w[0]));
        let last = *ids.last().unwrap();
        assert_eq!(events(last, 1), [Event { id: last, kind: BDEV_RESIZE, ctx: format!("ring-test-{}", MAX_EVENTS + 9) }]);
        // The first ones are gone: from the first id means from the oldest
        // kept, and no more than the ring holds.
        let all = events(ids[0], u64::MAX);
        assert!(all.len() <= MAX_EVENTS && all.len() >= 10, "{}", all.len());
        assert!(all[0].id > ids[0]);
        assert!(all.windows(2).all(|w| w[1].id == w[0].id + 1));
        assert!(events(u64::MAX, 10).is_empty());
        assert!(events(last, 0).is_empty());
    }

    #[test]
    fn a_long_context_is_cut_at_a_character_within_spdks_size() {
        let long = "é".repeat(100);
        let id = send(BDEV_REGISTER, &long);
        let e = &events(id, 1)[0];
        assert_eq!(e.ctx, "é".repeat(63), "126 bytes: the 127th would split a character");
    }
}
