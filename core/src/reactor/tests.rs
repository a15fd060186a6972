use super::*;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::time::Instant;

static_assertions::assert_not_impl_any!(Reactor: Send, Sync);
static_assertions::assert_not_impl_any!(Poller: Send, Sync);
static_assertions::assert_impl_all!(Handle: Send, Sync);
static_assertions::assert_impl_all!(Msg: Send);

#[test]
fn messages_between_two_reactors_keep_their_order() {
    let h = Harness::new(2);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    h.on(0, move || {
        for i in 0..1000 {
            let s = s.clone();
            send_msg(ReactorId(1), move || s.lock().unwrap().push(i));
        }
    });
    assert!(seen.lock().unwrap().is_empty(), "nothing runs before the target steps");
    h.run_until_idle(100);
    assert_eq!(*seen.lock().unwrap(), (0..1000).collect::<Vec<_>>());
}

#[test]
fn a_message_to_self_runs_later_not_inline() {
    let h = Harness::new(1);
    let ran = Rc::new(Cell::new(false));
    let flag = Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    h.on(0, || {
        send_msg(ReactorId(0), move || f.store(true, Ordering::SeqCst));
        ran.set(flag.load(Ordering::SeqCst));
    });
    assert!(!ran.get());
    h.step(0);
    assert!(flag.load(Ordering::SeqCst));
}

#[test]
fn for_each_reactor_visits_in_order_then_returns_home() {
    let h = Harness::new(3);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let s2 = seen.clone();
    h.on(2, move || for_each_reactor(move || s.lock().unwrap().push(current().0), move || s2.lock().unwrap().push(100 + current().0)));
    h.run_until_idle(100);
    assert_eq!(*seen.lock().unwrap(), vec![0, 1, 2, 102]);
}

#[test]
fn for_each_reactor_in_turn_waits_for_each_continuation() {
    let h = Harness::new(3);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (s, s2) = (seen.clone(), seen.clone());
    h.on(2, move || {
        for_each_reactor_in_turn(
            move |next| {
                s.lock().unwrap().push(current().0);
                // Reactor 1 hands on only from a later message.
                if current().0 == 1 {
                    thread_local!(static HELD: std::cell::RefCell<Option<Box<dyn FnOnce()>>> = const { std::cell::RefCell::new(None) });
                    HELD.with(|h| *h.borrow_mut() = Some(next));
                    let s = s.clone();
                    send_msg(current(), move || {
                        s.lock().unwrap().push(50);
                        HELD.with(|h| h.borrow_mut().take()).expect("held")()
                    });
                } else {
                    next()
                }
            },
            move || s2.lock().unwrap().push(100 + current().0),
        )
    });
    h.run_until_idle(100);
    assert_eq!(*seen.lock().unwrap(), vec![0, 1, 50, 2, 102], "reactor 2 waited for reactor 1's continuation");
}

#[test]
fn map_reactors_collects_one_result_per_reactor() {
    let h = Harness::new(4);
    let out = Arc::new(Mutex::new(None));
    let o = out.clone();
    h.on(1, move || map_reactors(|| current().0 * 10, move |v| *o.lock().unwrap() = Some((current(), v))));
    h.run_until_idle(100);
    assert_eq!(out.lock().unwrap().clone(), Some((ReactorId(1), vec![0, 10, 20, 30])));
}

#[test]
fn pollers_register_and_unregister_from_inside_pollers() {
    let h = Harness::new(1);
    let runs = Rc::new(Cell::new(0));
    let child_runs = Rc::new(Cell::new(0));
    let slot: Rc<RefCell<Option<Poller>>> = Rc::default();
    let child: Rc<RefCell<Option<Poller>>> = Rc::default();
    let (r, cr, s, c) = (runs.clone(), child_runs.clone(), slot.clone(), child.clone());
    let p = h.on(0, move || {
        register_poller("parent", move || {
            r.set(r.get() + 1);
            if r.get() == 2 {
                // Register a child from inside a poller.
                let cr = cr.clone();
                *c.borrow_mut() = Some(register_poller("child", move || {
                    cr.set(cr.get() + 1);
                    PollStatus::Busy
                }));
            }
            if r.get() == 4 {
                // Unregister the child, then ourselves.
                c.borrow_mut().take();
                s.borrow_mut().take();
            }
            PollStatus::Busy
        })
    });
    *slot.borrow_mut() = Some(p);
    for _ in 0..10 {
        h.step(0);
    }
    assert_eq!(runs.get(), 4, "parent stopped after unregistering itself");
    // Registrations take effect at the end of an iteration: the parent first ran
    // in step 2, registered the child in step 3 (its 2nd run); the child ran in
    // step 4 and was unregistered by the parent before its turn in step 5.
    assert_eq!(child_runs.get(), 1);
    assert_eq!(h.on(0, || stats().active_pollers), 0);
}

#[test]
fn paused_pollers_do_not_run() {
    let h = Harness::new(1);
    let runs = Rc::new(Cell::new(0));
    let r = runs.clone();
    let p = h.on(0, move || {
        register_poller("p", move || {
            r.set(r.get() + 1);
            PollStatus::Idle
        })
    });
    h.step(0); // registration takes effect
    h.step(0);
    h.step(0);
    p.pause();
    h.step(0);
    assert_eq!(runs.get(), 2);
    assert_eq!(h.on(0, || (stats().paused_pollers, poller_infos().2.len())), (1, 1));
    p.resume();
    h.step(0);
    assert_eq!(runs.get(), 3);
}

#[test]
fn poller_statistics_count_runs_and_busy_runs() {
    let h = Harness::new(1);
    let n = Rc::new(Cell::new(0u32));
    let c = n.clone();
    let _p = h.on(0, move || {
        register_poller("alternating", move || {
            c.set(c.get() + 1);
            (c.get() % 2 == 0).into()
        })
    });
    for _ in 0..11 {
        h.step(0);
    }
    let (active, _, _) = h.on(0, poller_infos);
    assert_eq!(active.len(), 1);
    assert_eq!(active[0].name, "alternating");
    assert_eq!(active[0].run_count, 10, "registered during the first step, runs from the second");
    assert_eq!(active[0].busy_count, 5);
}

#[test]
fn timed_poller_runs_on_a_real_reactor() {
    let h = Harness::new(1);
    let runs = Rc::new(Cell::new(0u32));
    let r = runs.clone();
    let _p = h.on(0, move || {
        register_timed_poller("5ms", Duration::from_millis(5), move || {
            r.set(r.get() + 1);
            PollStatus::Busy
        })
    });
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_millis(100) {
        h.step(0);
    }
    // Loose bounds: the machine may be loaded; the exact grid is tested with
    // a synthetic clock in poller.rs.
    assert!((5..=21).contains(&runs.get()), "ran {} times in 100 ms", runs.get());
}

#[test]
fn a_full_inbox_parks_messages_without_losing_or_reordering_them() {
    let h = Harness::new(2);
    let n = INBOX_CAPACITY * 2 + 17;
    let seen = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let s = seen.clone();
    h.on(0, move || {
        for i in 0..n {
            let s = s.clone();
            send_msg(ReactorId(1), move || s.lock().unwrap().push(i));
        }
    });
    h.run_until_idle(100_000);
    let v = seen.lock().unwrap();
    assert_eq!(v.len(), n);
    assert!(v.windows(2).all(|w| w[0] + 1 == w[1]));
}

#[test]
fn reactor_local_values_are_per_reactor() {
    let h = Harness::new(2);
    h.on(0, || set_local(Rc::new(7u32)));
    assert_eq!(h.on(0, || local::<u32>().map(|v| *v)), Some(7));
    assert_eq!(h.on(1, || local::<u32>().map(|v| *v)), None);
    assert_eq!(h.on(0, || take_local::<u32>().map(|v| *v)), Some(7));
    assert_eq!(h.on(0, || local::<u32>().map(|v| *v)), None);
}

#[test]
fn handle_sends_from_a_foreign_thread() {
    let h = Harness::new(2);
    let handle = h.handle();
    let hit = Arc::new(AtomicUsize::new(0));
    let hh = hit.clone();
    std::thread::spawn(move || handle.send(ReactorId(1), move || assert_eq!(hh.fetch_add(1, Ordering::SeqCst), 0))).join().unwrap();
    h.run_until_idle(10);
    assert_eq!(hit.load(Ordering::SeqCst), 1);
}

fn cores_for_test(n: usize) -> Vec<usize> {
    // Reactors need not have distinct cores when not pinned.
    vec![0; n]
}

#[test]
fn launch_runs_threads_and_stop_all_returns() {
    let total = Arc::new(AtomicUsize::new(0));
    let t = total.clone();
    let opts =
        Options { cores: cores_for_test(3), interrupt_mode: false, pin: false, msg_batch: DEFAULT_MSG_BATCH, idle_poll: DEFAULT_IDLE_POLL };
    launch(&opts, move || {
        assert_eq!(current(), ReactorId(0));
        for_each_reactor(
            move || {
                t.fetch_add(1 << (current().0 * 4), Ordering::SeqCst);
            },
            stop_all,
        );
    })
    .unwrap();
    assert_eq!(total.load(Ordering::SeqCst), 0x111);
}

#[test]
fn ping_pong_between_threads() {
    // Counts round trips between two real reactor threads.
    fn ping(left: Arc<AtomicU64>) {
        if left.fetch_sub(1, Ordering::SeqCst) == 1 {
            stop_all();
            return;
        }
        let other = ReactorId(1 - current().0);
        send_msg(other, move || ping(left));
    }
    let left = Arc::new(AtomicU64::new(10_000));
    let l = left.clone();
    let opts =
        Options { cores: cores_for_test(2), interrupt_mode: false, pin: false, msg_batch: DEFAULT_MSG_BATCH, idle_poll: DEFAULT_IDLE_POLL };
    launch(&opts, move || ping(l)).unwrap();
    assert_eq!(left.load(Ordering::SeqCst), 0);
}

#[test]
fn interrupt_mode_wakes_on_messages_timers_and_fds() {
    use std::io::Write;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    let (mut tx, rx) = UnixStream::pair().unwrap();
    rx.set_nonblocking(true).unwrap();
    let got = Arc::new(AtomicUsize::new(0));
    let g = got.clone();
    let opts =
        Options { cores: cores_for_test(2), interrupt_mode: true, pin: false, msg_batch: DEFAULT_MSG_BATCH, idle_poll: DEFAULT_IDLE_POLL };
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        tx.write_all(b"x").unwrap();
        std::thread::sleep(Duration::from_millis(300));
    });
    let start = Instant::now();
    launch(&opts, move || {
        // A timed poller with a long period: only runs early if its fd wakes it.
        let hits = Rc::new(Cell::new(0));
        let h2 = hits.clone();
        let rx = Rc::new(rx);
        let rx2 = rx.clone();
        let g2 = g.clone();
        let p = register_timed_poller("fd", Duration::from_secs(3600), move || {
            use std::io::Read;
            let mut b = [0u8; 8];
            match (&*rx2).read(&mut b) {
                Ok(n) if n > 0 => {
                    h2.set(h2.get() + 1);
                    g2.fetch_add(1, Ordering::SeqCst);
                    // Then bounce a message through reactor 1 and back, and stop
                    // when a 50 ms timer fires.
                    send_msg(ReactorId(1), move || {
                        send_msg(ReactorId(0), move || {
                            let slot: Rc<RefCell<Option<Poller>>> = Rc::default();
                            let s = slot.clone();
                            *slot.borrow_mut() = Some(register_timed_poller("stop", Duration::from_millis(50), move || {
                                s.borrow_mut().take();
                                stop_all();
                                PollStatus::Busy
                            }));
                            std::mem::forget(slot);
                        })
                    });
                    PollStatus::Busy
                }
                _ => PollStatus::Idle,
            }
        });
        p.add_wake_fd(rx.as_raw_fd(), Interest::READABLE).unwrap();
        set_local(Rc::new(p));
        let _ = hits;
    })
    .unwrap();
    writer.join().unwrap();
    let took = start.elapsed();
    assert_eq!(got.load(Ordering::SeqCst), 1);
    assert!(took >= Duration::from_millis(340) && took < Duration::from_secs(3), "took {took:?}");
}

#[test]
fn interrupt_mode_idle_reactors_sleep() {
    let busy = Arc::new(Mutex::new(Vec::new()));
    let b = busy.clone();
    // No idle-poll window: a reactor sleeps as soon as a pass finds nothing.
    let opts =
        Options { cores: cores_for_test(2), interrupt_mode: true, pin: false, msg_batch: DEFAULT_MSG_BATCH, idle_poll: Duration::ZERO };
    launch(&opts, move || {
        let b = b.clone();
        let slot: Rc<RefCell<Option<Poller>>> = Rc::default();
        let s = slot.clone();
        *slot.borrow_mut() = Some(register_timed_poller("done", Duration::from_millis(300), move || {
            s.borrow_mut().take();
            let b = b.clone();
            map_reactors(stats, move |v| {
                *b.lock().unwrap() = v;
                stop_all();
            });
            PollStatus::Busy
        }));
        std::mem::forget(slot);
    })
    .unwrap();
    let v = busy.lock().unwrap();
    assert_eq!(v.len(), 2);
    for s in v.iter() {
        assert!(s.in_interrupt);
        // Sleeping reactors iterate a handful of times, not millions.
        assert!(s.iterations < 100, "{} iterated {} times while idle", s.id, s.iterations);
    }
}

/// A timed poller paused after it ran (NVMe/TCP pauses its timeout poller
/// when a reactor's last connection closes) must not keep an idle reactor
/// awake: its stale deadline used to make every sleep return at once (100%
/// of the core, epoll_wait(0) in a loop). Resumed, it runs again.
#[test]
fn a_paused_timed_poller_lets_an_idle_reactor_sleep() {
    let result = Arc::new(Mutex::new((0u64, 0u64, 0u64)));
    let out = result.clone();
    let opts =
        Options { cores: cores_for_test(1), interrupt_mode: true, pin: false, msg_batch: DEFAULT_MSG_BATCH, idle_poll: Duration::ZERO };
    launch(&opts, move || {
        let runs = Rc::new(Cell::new(0u64));
        let r = runs.clone();
        let p = Rc::new(register_timed_poller("timeouts", Duration::from_millis(2), move || {
            r.set(r.get() + 1);
            PollStatus::Idle
        }));
        // Once it ran, pause it; 300 ms later count the iterations made
        // meanwhile, resume it, and 100 ms later see it ran again.
        let slot: Rc<RefCell<Vec<Poller>>> = Rc::default();
        let s = slot.clone();
        let p2 = p.clone();
        let runs2 = runs.clone();
        let out = out.clone();
        slot.borrow_mut().push(register_timed_poller("pause", Duration::from_millis(20), move || {
            if runs2.get() == 0 {
                return PollStatus::Idle;
            }
            p2.pause();
            s.borrow_mut().clear();
            let before = stats().iterations;
            let at_pause = runs2.get();
            let s2 = Rc::new(RefCell::new(Vec::new()));
            let s3 = s2.clone();
            let (p3, runs3, out) = (p2.clone(), runs2.clone(), out.clone());
            s2.borrow_mut().push(register_timed_poller("check", Duration::from_millis(300), move || {
                let idle_iterations = stats().iterations - before;
                let runs_paused = runs3.get() - at_pause;
                s3.borrow_mut().clear();
                p3.resume();
                let (runs4, out) = (runs3.clone(), out.clone());
                let s4 = Rc::new(RefCell::new(Vec::new()));
                let s5 = s4.clone();
                s4.borrow_mut().push(register_timed_poller("end", Duration::from_millis(100), move || {
                    *out.lock().unwrap() = (idle_iterations, runs_paused, runs4.get() - at_pause);
                    s5.borrow_mut().clear();
                    stop_all();
                    PollStatus::Busy
                }));
                std::mem::forget(s4);
                PollStatus::Busy
            }));
            std::mem::forget(s2);
            PollStatus::Busy
        }));
        std::mem::forget(slot);
        std::mem::forget(p);
    })
    .unwrap();
    let (idle_iterations, runs_paused, runs_after) = *result.lock().unwrap();
    assert_eq!(runs_paused, 0, "a paused poller ran");
    assert!(idle_iterations < 100, "the reactor iterated {idle_iterations} times in 300 ms with only a paused poller");
    assert!(runs_after > 0, "the resumed poller did not run again");
}

/// One unpinned reactor in interrupt mode with this idle-poll window.
fn one_irq_reactor(idle_poll: Duration) -> Options {
    Options { cores: cores_for_test(1), interrupt_mode: true, pin: false, msg_batch: DEFAULT_MSG_BATCH, idle_poll }
}

/// Interrupt mode's idle-poll window: after its last work a reactor keeps
/// polling for the window (many iterations), then sleeps (a handful).
#[test]
fn an_idle_reactor_polls_for_its_window_then_sleeps() {
    let result = Arc::new(Mutex::new(Vec::new()));
    let out = result.clone();
    let opts = one_irq_reactor(Duration::from_millis(100));
    launch(&opts, move || {
        assert_eq!(idle_poll(), Duration::from_millis(100));
        // Probes that do no work (Idle), so they do not restart the window:
        // iterations at 40 ms (inside the window that follows start-up),
        // then at 250 and 350 ms (long after it).
        let t0 = stats().iterations;
        let samples: Rc<RefCell<Vec<u64>>> = Rc::default();
        let pollers: Rc<RefCell<Vec<Poller>>> = Rc::default();
        for at in [40u64, 250, 350] {
            let (samples, pollers2, out) = (samples.clone(), pollers.clone(), out.clone());
            let fired = Cell::new(false);
            let p = register_timed_poller("probe", Duration::from_millis(at), move || {
                if fired.replace(true) {
                    return PollStatus::Idle;
                }
                samples.borrow_mut().push(stats().iterations - t0);
                samples.borrow_mut().sort_unstable();
                if samples.borrow().len() == 3 {
                    *out.lock().unwrap() = samples.borrow().clone();
                    pollers2.borrow_mut().clear();
                    stop_all();
                }
                PollStatus::Idle
            });
            pollers.borrow_mut().push(p);
        }
        std::mem::forget(pollers);
    })
    .unwrap();
    let v = result.lock().unwrap().clone();
    assert_eq!(v.len(), 3, "{v:?}");
    assert!(v[0] > 1000, "only {} iterations in the first 40 ms: the reactor slept inside its idle-poll window", v[0]);
    assert!(v[2] - v[1] < 100, "{} iterations between 250 and 350 ms: the reactor did not sleep after its window", v[2] - v[1]);
}

/// Interrupt mode's loaded window: a reactor fed work in pieces with gaps
/// longer than its idle-poll window (a large transfer arriving segment by
/// segment), busy most of the time, stops sleeping in the gaps; one fed a
/// little work now and then sleeps between the pieces.
#[test]
fn a_loaded_reactor_polls_through_the_gaps_a_light_one_sleeps() {
    fn sleeps_while(period_us: u64, work_us: u64) -> (u64, u64) {
        let result = Arc::new(Mutex::new((0, 0)));
        let out = result.clone();
        let opts = one_irq_reactor(DEFAULT_IDLE_POLL);
        launch(&opts, move || {
            let start = Instant::now();
            let mut at_20ms = None;
            let keep: Rc<RefCell<Option<Poller>>> = Rc::default();
            let keep2 = keep.clone();
            let p = register_timed_poller("work", Duration::from_micros(period_us), move || {
                let t = Instant::now();
                while t.elapsed() < Duration::from_micros(work_us) {
                    std::hint::spin_loop();
                }
                // Count from 20 ms in (past start-up), for 60 ms.
                let el = start.elapsed();
                if el >= Duration::from_millis(20) && at_20ms.is_none() {
                    at_20ms = Some((stats().sleeps, el));
                }
                if let Some((s0, t0)) = at_20ms {
                    if el >= t0 + Duration::from_millis(60) {
                        *out.lock().unwrap() = (stats().sleeps - s0, (el - t0).as_millis() as u64);
                        keep2.borrow_mut().take();
                        stop_all();
                    }
                }
                PollStatus::Busy
            });
            *keep.borrow_mut() = Some(p);
            std::mem::forget(keep);
        })
        .unwrap();
        *result.lock().unwrap()
    }
    // 150 us of work every 250 us: gaps of 100 us, twice the 50 us window.
    let (loaded, ms) = sleeps_while(250, 150);
    assert!(loaded < 20, "{loaded} sleeps in {ms} ms of a loaded stream (about 240 without the loaded window)");
    // 10 us of work every 2 ms: it sleeps in (nearly) every gap.
    let (light, ms) = sleeps_while(2000, 10);
    assert!(light >= 10, "only {light} sleeps in {ms} ms of light load: the loaded window kept an idle reactor awake");
}

/// A poller's before-sleep hook runs when its reactor is about to sleep;
/// while it reports work the reactor stays up (another iteration, the hook
/// again), and once it reports none the reactor sleeps.
#[test]
fn before_sleep_hooks_run_before_sleeping_and_keep_the_reactor_up_while_they_find_work() {
    let result = Arc::new(Mutex::new((0u64, 0u64, 0u64)));
    let out = result.clone();
    let opts =
        Options { cores: cores_for_test(1), interrupt_mode: true, pin: false, msg_batch: DEFAULT_MSG_BATCH, idle_poll: Duration::ZERO };
    launch(&opts, move || {
        let hooks = Rc::new(Cell::new(0u64));
        let h = hooks.clone();
        let p = register_poller("armed_source", || PollStatus::Idle);
        // Work found the first five times (as a completion that came just
        // before arming would be), then none.
        p.set_before_sleep(move || {
            h.set(h.get() + 1);
            h.get() <= 5
        });
        std::mem::forget(p);
        let out = out.clone();
        let hooks = hooks.clone();
        let slot: Rc<RefCell<Option<Poller>>> = Rc::default();
        let s = slot.clone();
        *slot.borrow_mut() = Some(register_timed_poller("done", Duration::from_millis(300), move || {
            s.borrow_mut().take();
            let st = stats();
            *out.lock().unwrap() = (hooks.get(), st.sleeps, st.iterations);
            stop_all();
            PollStatus::Busy
        }));
        std::mem::forget(slot);
    })
    .unwrap();
    let (hooks, sleeps, iterations) = *result.lock().unwrap();
    assert!(hooks >= 6, "the hook ran {hooks} times: five with work, then one letting the reactor sleep");
    assert!(sleeps >= 1, "the reactor never slept");
    assert!(iterations < 100, "{iterations} iterations: the reactor did not sleep once the hook found nothing");
}

/// A doorbell watched edge-triggered and never read wakes the reactor once
/// per ring: the poller runs after each of a writer's rings, and in
/// between the reactor sleeps instead of spinning on a descriptor that
/// stays readable (level-triggered, an unread bell wakes it for ever).
#[test]
fn an_unread_edge_triggered_bell_wakes_the_reactor_once_per_ring() {
    const RINGS: u64 = 3;
    let result = Arc::new(Mutex::new(None));
    let out = result.clone();
    launch(&one_irq_reactor(Duration::ZERO), move || {
        let bell = Arc::new(crate::sys::EventFd::new().unwrap());
        let runs = Arc::new(AtomicU64::new(0));
        let (r, kept) = (runs.clone(), bell.clone());
        let p = register_poller("bell", move || {
            // The bell stays open (a closed descriptor leaves the epoll set).
            let _ = &kept;
            r.fetch_add(1, Ordering::SeqCst);
            PollStatus::Idle
        });
        p.add_wake_fd(std::os::fd::AsRawFd::as_raw_fd(&*bell), Interest::READABLE.edge()).unwrap();
        set_local(Rc::new(p));
        let (h, me) = (handle(), current());
        let writer = std::thread::spawn(move || {
            // Wait (at most 10 s) until `done`; false if it never was.
            let wait = |done: &dyn Fn() -> bool| {
                let t = Instant::now();
                while !done() {
                    if t.elapsed() > Duration::from_secs(10) {
                        return false;
                    }
                    std::thread::yield_now();
                }
                true
            };
            for _ in 0..RINGS {
                // Ring once the reactor is asleep, then wait for the poller
                // to have run for it.
                if !wait(&|| h.shared.mailboxes[me.0].sleeping.load(Ordering::SeqCst)) {
                    h.send(me, stop_all);
                    return;
                }
                let before = runs.load(Ordering::SeqCst);
                bell.notify();
                if !wait(&|| runs.load(Ordering::SeqCst) != before) {
                    // The ring was lost: stop, with no result.
                    h.send(me, stop_all);
                    return;
                }
            }
            let (s, out) = (out.clone(), runs.clone());
            h.send(me, move || {
                let t0 = stats().iterations;
                // 200 ms with the bell unread: a handful of iterations.
                let slot: Rc<RefCell<Option<Poller>>> = Rc::default();
                let sl = slot.clone();
                *slot.borrow_mut() = Some(register_timed_poller("done", Duration::from_millis(200), move || {
                    sl.borrow_mut().take();
                    *s.lock().unwrap() = Some((stats().iterations - t0, out.load(Ordering::SeqCst)));
                    stop_all();
                    PollStatus::Busy
                }));
                std::mem::forget(slot);
            });
        });
        std::mem::forget(writer);
    })
    .unwrap();
    let (iterations, runs) = result.lock().unwrap().expect("the reactor never slept, or a ring did not wake it");
    assert!(runs >= RINGS, "the poller ran {runs} times for {RINGS} rings");
    assert!(iterations < 100, "the reactor iterated {iterations} times in 200 ms over an unread edge-triggered bell");
}

/// A timed poller paused while its edge-triggered descriptor rang (the
/// reactor took the one event meanwhile) runs as soon as it is resumed,
/// not a period later.
#[test]
fn a_resumed_poller_runs_for_an_edge_that_came_while_paused() {
    let result = Arc::new(Mutex::new(None));
    let out = result.clone();
    let stop_pinging = Arc::new(AtomicBool::new(false));
    let pinging = stop_pinging.clone();
    launch(&one_irq_reactor(Duration::ZERO), move || {
        let bell = Rc::new(crate::sys::EventFd::new().unwrap());
        let resumed = Rc::new(Cell::new(false));
        let (r, o, kept) = (resumed.clone(), out.clone(), bell.clone());
        let p = Rc::new(register_timed_poller("bell", Duration::from_secs(3600), move || {
            let _ = &kept;
            if r.get() {
                *o.lock().unwrap() = Some(true);
                stop_all();
            }
            PollStatus::Idle
        }));
        p.add_wake_fd(std::os::fd::AsRawFd::as_raw_fd(&*bell), Interest::READABLE.edge()).unwrap();
        p.pause();
        bell.notify();
        // Resume once the reactor has slept since the ring (the edge was
        // taken while the poller was paused).
        let at = sleeps();
        let (p2, o2) = (p.clone(), out.clone());
        let started = Instant::now();
        let waiter = register_poller("resume", move || {
            if !resumed.get() && sleeps() > at + 1 {
                resumed.set(true);
                p2.resume();
            }
            if started.elapsed() > Duration::from_secs(10) {
                *o2.lock().unwrap() = Some(false);
                stop_all();
            }
            PollStatus::Idle
        });
        // Messages keep the reactor waking so the waiter looks again (not a
        // timed poller: a due one would make the reactor look at every
        // timed poller, the paused one included).
        let (h, me, done) = (handle(), current(), pinging.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                h.send(me, || {});
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        set_local(Rc::new((p, waiter)));
    })
    .unwrap();
    stop_pinging.store(true, Ordering::SeqCst);
    assert_eq!(*result.lock().unwrap(), Some(true), "the resumed poller did not run for the edge it missed");
}

/// A drain ends once its step reports nothing left: its pollers go, then
/// `finish` runs; one still draining at its warning time goes on (after one
/// more look, which may find it done).
#[test]
fn a_drain_ends_when_nothing_is_left_and_goes_on_past_its_warning() {
    fn names() -> usize {
        let (a, t, p) = poller_infos();
        a.into_iter().chain(t).chain(p).filter(|i| i.name.starts_with("t_drain")).count()
    }
    let h = Harness::new(1);
    // (Two steps run at once: before the pollers, and after.)
    let left = Rc::new(Cell::new(5));
    let ended = Rc::new(Cell::new(None));
    let (l, e) = (left.clone(), ended.clone());
    h.on(0, move || {
        drain_in_background(
            "t_drain",
            "test".into(),
            Duration::from_secs(3600),
            None,
            move || {
                l.set(l.get() - 1);
                (1, l.get())
            },
            // The pollers are gone by then.
            move || e.set(Some(names())),
        )
    });
    h.step(0);
    assert_eq!(h.on(0, names), 2, "the step's poller and the warning's");
    h.run_until_idle(10);
    assert_eq!((left.get(), ended.get()), (0, Some(0)));
    assert_eq!(h.on(0, names), 0);

    // Past its warning time: the drain goes on until its requests end.
    let left = Rc::new(Cell::new(usize::MAX));
    let ended = Rc::new(Cell::new(false));
    let (l, e) = (left.clone(), ended.clone());
    h.on(0, move || {
        drain_in_background("t_drain_slow", "test".into(), Duration::from_millis(5), None, move || (0, l.get()), move || e.set(true))
    });
    let t0 = Instant::now();
    while h.on(0, names) != 1 && t0.elapsed() < Duration::from_secs(30) {
        h.step(0);
    }
    assert_eq!(h.on(0, names), 1, "the warning went, the drain stayed");
    assert!(!ended.get());
    left.set(0);
    h.run_until_idle(10);
    assert!(ended.get());
    assert_eq!(h.on(0, names), 0);
}
