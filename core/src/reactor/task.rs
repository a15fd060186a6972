//! Futures on a reactor: [`spawn_local`] runs a `!Send` future on the
//! current reactor, polled from its message loop. It serves control paths
//! made of several dependent I/Os (a logical-volume store's metadata), which
//! read as straight-line `async` code instead of chains of callbacks. The
//! fast path never goes through here.
//!
//! A task's waker may be called from any thread: it sends the reactor a
//! message naming the task, which polls it on the next iteration. Waking a
//! finished task does nothing.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use super::{ReactorId, current};

type Task = Pin<Box<dyn Future<Output = ()>>>;

#[derive(Default)]
struct Tasks {
    next: Cell<u64>,
    live: RefCell<HashMap<u64, Task>>,
}

fn tasks() -> Rc<Tasks> {
    match super::local::<Tasks>() {
        Some(t) => t,
        None => {
            let t = Rc::new(Tasks::default());
            super::set_local(t.clone());
            t
        }
    }
}

struct TaskWaker {
    handle: super::Handle,
    reactor: ReactorId,
    id: u64,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        let id = self.id;
        self.handle.send(self.reactor, move || poll(id));
    }
}

fn poll(id: u64) {
    let t = tasks();
    // Take the task out while it runs: it may spawn others.
    let Some(mut fut) = t.live.borrow_mut().remove(&id) else { return };
    let waker = Waker::from(Arc::new(TaskWaker { handle: super::handle(), reactor: current(), id }));
    let mut cx = Context::from_waker(&waker);
    if fut.as_mut().poll(&mut cx).is_pending() {
        t.live.borrow_mut().insert(id, fut);
    }
}

/// Run `fut` on the current reactor; it is first polled before this
/// returns, then each time its waker is called.
pub fn spawn_local(fut: impl Future<Output = ()> + 'static) {
    let t = tasks();
    let id = t.next.get();
    t.next.set(id + 1);
    t.live.borrow_mut().insert(id, Box::pin(fut));
    poll(id);
}

/// The number of tasks not finished on this reactor (tests).
pub fn live_tasks() -> usize {
    tasks().live.borrow().len()
}

/// A value one side sets once and the other awaits, on one reactor: the
/// bridge from a completion callback to a task.
pub struct Slot<T>(Rc<RefCell<(Option<T>, Option<Waker>)>>);

impl<T> Clone for Slot<T> {
    fn clone(&self) -> Self {
        Slot(self.0.clone())
    }
}

impl<T> Default for Slot<T> {
    fn default() -> Self {
        Slot(Rc::new(RefCell::new((None, None))))
    }
}

impl<T> Slot<T> {
    pub fn new() -> Slot<T> {
        Slot::default()
    }

    /// Give the value and wake the waiter.
    pub fn set(&self, v: T) {
        let w = {
            let mut s = self.0.borrow_mut();
            s.0 = Some(v);
            s.1.take()
        };
        if let Some(w) = w {
            w.wake();
        }
    }
}

impl<T> Future for Slot<T> {
    type Output = T;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let mut s = self.0.borrow_mut();
        match s.0.take() {
            Some(v) => Poll::Ready(v),
            None => {
                s.1 = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// A [`Slot`] that may be set from any thread (a callback that must be
/// `Send`, such as an RPC responder's sink); awaited on one reactor.
pub struct SendSlot<T>(Arc<std::sync::Mutex<(Option<T>, Option<Waker>)>>);

impl<T> Clone for SendSlot<T> {
    fn clone(&self) -> Self {
        SendSlot(self.0.clone())
    }
}

impl<T> Default for SendSlot<T> {
    fn default() -> Self {
        SendSlot(Arc::new(std::sync::Mutex::new((None, None))))
    }
}

impl<T> SendSlot<T> {
    pub fn new() -> SendSlot<T> {
        SendSlot::default()
    }

    /// Give the value and wake the waiter.
    pub fn set(&self, v: T) {
        let w = {
            let mut s = self.0.lock().unwrap_or_else(|e| e.into_inner());
            s.0 = Some(v);
            s.1.take()
        };
        if let Some(w) = w {
            w.wake();
        }
    }
}

impl<T> Future for SendSlot<T> {
    type Output = T;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let mut s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match s.0.take() {
            Some(v) => Poll::Ready(v),
            None => {
                s.1 = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

thread_local! {
    /// Slots of tasks waiting for work on other reactors, by ticket.
    static PARKED: RefCell<HashMap<u64, Box<dyn std::any::Any>>> = RefCell::new(HashMap::new());
    static NEXT_TICKET: Cell<u64> = const { Cell::new(0) };
}

/// A ticket for a slot of this reactor: the `Send` way back to it.
fn park<T: 'static>(slot: Slot<T>) -> u64 {
    let t = NEXT_TICKET.with(|n| {
        n.set(n.get() + 1);
        n.get()
    });
    PARKED.with(|p| p.borrow_mut().insert(t, Box::new(slot)));
    t
}

/// Set the slot behind ticket `t` (on the reactor that parked it).
fn unpark<T: 'static>(t: u64, v: T) {
    if let Some(s) = PARKED.with(|p| p.borrow_mut().remove(&t)) {
        if let Ok(s) = s.downcast::<Slot<T>>() {
            s.set(v)
        }
    }
}

/// Run `f` on every reactor in turn and await the results (a task's
/// [`super::map_reactors`]).
pub async fn each_reactor<T: Send + 'static>(f: impl Fn() -> T + Send + Sync + 'static) -> Vec<T> {
    let slot = Slot::new();
    let t = park(slot.clone());
    super::map_reactors(f, move |v| unpark(t, v));
    slot.await
}

/// Await, on every reactor at once, `ready` becoming true there (checked
/// again each time that reactor's messages have run): in-flight work of
/// every reactor drained.
pub async fn until_each_reactor(ready: impl Fn() -> bool + Send + Sync + 'static) {
    let slot = Slot::new();
    let t = park(slot.clone());
    let origin = current();
    let ready = Arc::new(ready);
    let left = Arc::new(std::sync::atomic::AtomicUsize::new(super::count()));
    fn check(ready: Arc<dyn Fn() -> bool + Send + Sync>, left: Arc<std::sync::atomic::AtomicUsize>, origin: ReactorId, t: u64) {
        if !ready() {
            return super::send_msg(current(), move || check(ready, left, origin, t));
        }
        if left.fetch_sub(1, std::sync::atomic::Ordering::AcqRel) == 1 {
            super::send_msg(origin, move || unpark(t, ()));
        }
    }
    for r in super::all() {
        let (ready, left): (Arc<dyn Fn() -> bool + Send + Sync>, _) = (ready.clone(), left.clone());
        super::send_msg(r, move || check(ready, left, origin, t));
    }
    slot.await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reactor::Harness;

    #[test]
    fn a_task_waits_for_a_slot_set_later_on_its_reactor() {
        let h = Harness::new(2);
        let got = Rc::new(Cell::new(0));
        let slot: Slot<u32> = Slot::new();
        let (g, s) = (got.clone(), slot.clone());
        h.on(0, || {
            spawn_local(async move {
                let a = s.clone().await;
                g.set(a);
            })
        });
        assert_eq!(got.get(), 0);
        assert_eq!(h.on(0, live_tasks), 1);
        // A message from reactor 1 comes back to reactor 0, which sets the slot.
        h.on(1, || crate::reactor::send_msg(ReactorId(0), move || {}));
        h.on(0, || slot.set(7));
        for _ in 0..4 {
            h.step(0);
            h.step(1);
        }
        assert_eq!(got.get(), 7);
        assert_eq!(h.on(0, live_tasks), 0);
    }
}
