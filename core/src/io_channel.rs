//! I/O devices and their per-reactor channels (SPDK's io_device/io_channel).
//!
//! An I/O device is shared by all reactors (`Arc<D>`, `D: Send + Sync`). Each
//! reactor that uses it gets its own channel: per-reactor state such as a
//! hardware queue pair or a socket group, used without locks. The first
//! [`get_io_channel`] on a reactor creates the channel; later calls on that
//! reactor return the same one. Handles are reference counted and `!Send`;
//! when the last handle on a reactor is dropped, the channel is destroyed on
//! that reactor.

use std::any::Any;
use std::fmt;
use std::ops::Deref;
use std::rc::{Rc, Weak};
use std::sync::Arc;

use crate::reactor::{self, with_current};

/// Something reactors reach through per-reactor channels.
pub trait IoDevice: Send + Sync + 'static {
    /// Per-reactor state.
    type Channel: 'static;

    /// Build this reactor's channel. Runs on the reactor that will own it.
    fn create_channel(self: &Arc<Self>) -> Self::Channel;
}

struct ChannelInner<D: IoDevice> {
    // Field order matters: the channel is destroyed before the device
    // reference it may depend on is released.
    chan: D::Channel,
    device: Arc<D>,
    key: usize,
    reactor: Weak<reactor::Inner>,
}

impl<D: IoDevice> Drop for ChannelInner<D> {
    fn drop(&mut self) {
        if let Some(r) = self.reactor.upgrade() {
            if let Ok(mut map) = r.channels.try_borrow_mut() {
                if map.get(&self.key).is_some_and(|w| w.strong_count() == 0) {
                    map.remove(&self.key);
                }
            }
        }
    }
}

/// A reactor's handle on its channel to device `D`.
pub struct IoChannel<D: IoDevice> {
    inner: Rc<ChannelInner<D>>,
}

impl<D: IoDevice> Clone for IoChannel<D> {
    fn clone(&self) -> Self {
        IoChannel { inner: self.inner.clone() }
    }
}

impl<D: IoDevice> fmt::Debug for IoChannel<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IoChannel").field("device", &self.inner.key).finish()
    }
}

impl<D: IoDevice> IoChannel<D> {
    /// The device this channel belongs to.
    pub fn device(&self) -> &Arc<D> {
        &self.inner.device
    }
}

impl<D: IoDevice> Deref for IoChannel<D> {
    type Target = D::Channel;
    fn deref(&self) -> &D::Channel {
        &self.inner.chan
    }
}

fn key_of<D>(dev: &Arc<D>) -> usize {
    Arc::as_ptr(dev) as *const () as usize
}

/// The current reactor's channel to `dev`, if it has one (never creates it).
pub fn try_get_io_channel<D: IoDevice>(dev: &Arc<D>) -> Option<IoChannel<D>> {
    let key = key_of(dev);
    let any = with_current(|r| r.channels.borrow().get(&key).and_then(Weak::upgrade))?;
    any.downcast::<ChannelInner<D>>().ok().map(|inner| IoChannel { inner })
}

/// Get (creating on first use) the current reactor's channel to `dev`.
pub fn get_io_channel<D: IoDevice>(dev: &Arc<D>) -> IoChannel<D> {
    if let Some(ch) = try_get_io_channel(dev) {
        return ch;
    }
    let key = key_of(dev);
    // Create outside any borrow: a channel may itself take channels to other devices.
    let chan = D::create_channel(dev);
    let inner = Rc::new(ChannelInner { chan, device: dev.clone(), key, reactor: with_current(|r| r.me.clone()) });
    let any: Rc<dyn Any> = inner.clone();
    with_current(|r| r.channels.borrow_mut().insert(key, Rc::downgrade(&any)));
    IoChannel { inner }
}

/// Whether the current reactor holds a live channel to `dev`.
pub fn has_io_channel<D: IoDevice>(dev: &Arc<D>) -> bool {
    let key = key_of(dev);
    with_current(|r| r.channels.borrow().get(&key).is_some_and(|w| w.strong_count() > 0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reactor::{Harness, ReactorId, send_msg};
    use std::cell::Cell;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Default)]
    struct Counter {
        created: AtomicUsize,
        destroyed: Arc<AtomicUsize>,
    }

    struct Chan {
        reactor: ReactorId,
        uses: Cell<u32>,
        destroyed: Arc<AtomicUsize>,
    }

    impl Drop for Chan {
        fn drop(&mut self) {
            // Destroyed on the reactor that created it.
            assert_eq!(reactor::current(), self.reactor);
            self.destroyed.fetch_add(1, Ordering::SeqCst);
        }
    }

    impl IoDevice for Counter {
        type Channel = Chan;
        fn create_channel(self: &Arc<Self>) -> Chan {
            self.created.fetch_add(1, Ordering::SeqCst);
            Chan { reactor: reactor::current(), uses: Cell::new(0), destroyed: self.destroyed.clone() }
        }
    }

    static_assertions::assert_not_impl_any!(IoChannel<Counter>: Send, Sync);

    #[test]
    fn one_channel_per_reactor_created_on_first_use() {
        let h = Harness::new(3);
        let dev = Arc::new(Counter::default());
        let a = h.on(0, || get_io_channel(&dev));
        let b = h.on(0, || get_io_channel(&dev));
        a.uses.set(5);
        assert_eq!(b.uses.get(), 5, "same reactor shares one channel");
        assert_eq!(dev.created.load(Ordering::SeqCst), 1);
        let c = h.on(1, || get_io_channel(&dev));
        assert_eq!(c.reactor, ReactorId(1));
        assert_eq!(dev.created.load(Ordering::SeqCst), 2);
        assert!(h.on(2, || !has_io_channel(&dev)));
        h.on(0, || drop((a, b)));
        h.on(1, || drop(c));
    }

    #[test]
    fn channel_is_destroyed_on_its_reactor_when_the_last_handle_goes() {
        let h = Harness::new(2);
        let dev = Arc::new(Counter::default());
        let destroyed = dev.destroyed.clone();
        let a = h.on(1, || get_io_channel(&dev));
        let b = a.clone();
        h.on(1, || drop(a));
        assert_eq!(destroyed.load(Ordering::SeqCst), 0, "still referenced");
        h.on(1, || drop(b));
        assert_eq!(destroyed.load(Ordering::SeqCst), 1);
        assert!(h.on(1, || !has_io_channel(&dev)));
        // A later get creates a fresh channel.
        let c = h.on(1, || get_io_channel(&dev));
        assert_eq!(dev.created.load(Ordering::SeqCst), 2);
        h.on(1, || drop(c));
    }

    #[test]
    fn each_reactor_gets_and_puts_its_channel_through_messages() {
        let h = Harness::new(4);
        let dev = Arc::new(Counter::default());
        let d = dev.clone();
        h.on(0, move || {
            for r in reactor::all() {
                let d = d.clone();
                send_msg(r, move || {
                    let ch = get_io_channel(&d);
                    ch.uses.set(ch.uses.get() + 1);
                });
            }
        });
        h.run_until_idle(100);
        assert_eq!(dev.created.load(Ordering::SeqCst), 4);
        // Each message dropped its handle, so each channel is gone again.
        assert_eq!(dev.destroyed.load(Ordering::SeqCst), 4);
    }

    #[test]
    fn channels_left_at_teardown_are_released() {
        let dev = Arc::new(Counter::default());
        let destroyed = dev.destroyed.clone();
        {
            let h = Harness::new(2);
            let ch = h.on(1, || get_io_channel(&dev));
            // Park the handle in reactor-local storage, as a long-lived user would.
            h.on(1, move || reactor::set_local(Rc::new(ch)));
        }
        assert_eq!(destroyed.load(Ordering::SeqCst), 1);
    }
}
