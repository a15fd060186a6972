//! Thin, safe wrappers over the Linux calls the reactor needs: epoll, eventfd,
//! timerfd, signalfd and CPU affinity. Every `unsafe` block of the crate that
//! talks to the kernel lives here.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// Call a libc function that returns -1 on error and turn that into `io::Error`.
macro_rules! syscall {
    ($fn:ident ( $($arg:expr),* $(,)? )) => {{
        // SAFETY: the caller passes arguments that are valid for this call
        // (checked at each use site).
        let res = unsafe { libc::$fn($($arg),*) };
        if res == -1 { Err(std::io::Error::last_os_error()) } else { Ok(res) }
    }};
}
pub(crate) use syscall;

/// An epoll instance.
#[derive(Debug)]
pub struct Epoll {
    fd: OwnedFd,
}

/// What a registered descriptor should wake the reactor for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interest(u32);

impl Interest {
    pub const READABLE: Interest = Interest(libc::EPOLLIN as u32);
    pub const WRITABLE: Interest = Interest(libc::EPOLLOUT as u32);
    pub const BOTH: Interest = Interest((libc::EPOLLIN | libc::EPOLLOUT) as u32);
    /// Registered, but waking for nothing (hang-ups and errors still do).
    pub const NONE: Interest = Interest(0);

    /// Edge-triggered: the descriptor wakes its waiter once for each new
    /// event (for an eventfd, each write), and not again for what is left
    /// unread. For a doorbell whose poller looks at its own queue every
    /// pass: nothing needs to read the descriptor, so a pass that finds
    /// the queue empty costs no system call (level-triggered, a bell must
    /// be drained on every pass or it wakes the reactor for ever). A ring
    /// that comes while the reactor is awake costs one spare wake-up at
    /// its next sleep; one that comes while the poller is paused runs it
    /// when it is resumed.
    pub const fn edge(self) -> Interest {
        Interest(self.0 | libc::EPOLLET as u32)
    }

    /// The peer's half-close is a reading matter: asked for with reading
    /// only, or a descriptor watched for writing alone would wake on it
    /// again and again.
    fn bits(self) -> u32 {
        if self.0 & libc::EPOLLIN as u32 != 0 { self.0 | libc::EPOLLRDHUP as u32 } else { self.0 }
    }
}

impl Epoll {
    pub fn new() -> io::Result<Self> {
        let fd = syscall!(epoll_create1(libc::EPOLL_CLOEXEC))?;
        // SAFETY: epoll_create1 returned a fresh descriptor we now own.
        Ok(Epoll { fd: unsafe { OwnedFd::from_raw_fd(fd) } })
    }

    pub fn add(&self, fd: RawFd, interest: Interest, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event { events: interest.bits(), u64: token };
        syscall!(epoll_ctl(self.fd.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev)).map(drop)
    }

    pub fn modify(&self, fd: RawFd, interest: Interest, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event { events: interest.bits(), u64: token };
        syscall!(epoll_ctl(self.fd.as_raw_fd(), libc::EPOLL_CTL_MOD, fd, &mut ev)).map(drop)
    }

    pub fn delete(&self, fd: RawFd) -> io::Result<()> {
        let mut ev = libc::epoll_event { events: 0, u64: 0 };
        syscall!(epoll_ctl(self.fd.as_raw_fd(), libc::EPOLL_CTL_DEL, fd, &mut ev)).map(drop)
    }

    /// Wait for events; `None` waits forever. Returns the tokens that fired.
    pub fn wait(&self, events: &mut Vec<libc::epoll_event>, timeout: Option<Duration>) -> io::Result<usize> {
        let cap = events.capacity().max(1);
        events.clear();
        events.reserve(cap);
        let ms = match timeout {
            None => -1,
            // Round up so a 100 us timeout does not become a busy spin.
            Some(d) => d.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32,
        };
        loop {
            // SAFETY: the buffer has room for `cap` events; the kernel writes at
            // most that many and we set the length to what it reports.
            let n = unsafe { libc::epoll_wait(self.fd.as_raw_fd(), events.as_mut_ptr(), cap as i32, ms) };
            if n >= 0 {
                // SAFETY: the kernel initialised the first n entries.
                unsafe { events.set_len(n as usize) };
                return Ok(n as usize);
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }
}

impl AsRawFd for Epoll {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// An eventfd used as a doorbell between threads.
#[derive(Debug)]
pub struct EventFd {
    fd: OwnedFd,
}

impl EventFd {
    pub fn new() -> io::Result<Self> {
        let fd = syscall!(eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK))?;
        // SAFETY: eventfd returned a fresh descriptor we now own.
        Ok(EventFd { fd: unsafe { OwnedFd::from_raw_fd(fd) } })
    }

    /// Ring the doorbell. Never blocks (the counter cannot realistically overflow).
    pub fn notify(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to our own descriptor.
        unsafe { libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    /// Reset the counter after a wake-up.
    pub fn drain(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads at most 8 bytes into a live u64; nonblocking descriptor.
        unsafe { libc::read(self.fd.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
    }
}

impl AsRawFd for EventFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// A monotonic one-shot timer descriptor.
#[derive(Debug)]
pub struct TimerFd {
    fd: OwnedFd,
}

impl TimerFd {
    pub fn new() -> io::Result<Self> {
        let fd = syscall!(timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_CLOEXEC | libc::TFD_NONBLOCK))?;
        // SAFETY: timerfd_create returned a fresh descriptor we now own.
        Ok(TimerFd { fd: unsafe { OwnedFd::from_raw_fd(fd) } })
    }

    /// Arm the timer to fire once after `after` (zero disarms it).
    pub fn arm(&self, after: Duration) -> io::Result<()> {
        // A zero it_value disarms; make very short timeouts at least 1 ns.
        let after = if after.is_zero() { Duration::from_nanos(1) } else { after };
        let spec = libc::itimerspec {
            it_interval: libc::timespec { tv_sec: 0, tv_nsec: 0 },
            it_value: libc::timespec { tv_sec: after.as_secs() as libc::time_t, tv_nsec: after.subsec_nanos() as libc::c_long },
        };
        syscall!(timerfd_settime(self.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut())).map(drop)
    }

    pub fn disarm(&self) -> io::Result<()> {
        // SAFETY: an all-zero itimerspec is valid and disarms the timer.
        let spec: libc::itimerspec = unsafe { std::mem::zeroed() };
        syscall!(timerfd_settime(self.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut())).map(drop)
    }

    pub fn drain(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads at most 8 bytes into a live u64; nonblocking descriptor.
        unsafe { libc::read(self.fd.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
    }
}

impl AsRawFd for TimerFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// A signalfd for SIGINT and SIGTERM. Those signals must be blocked in every
/// thread (see [`block_shutdown_signals`]) so they are only ever read here.
#[derive(Debug)]
pub struct SignalFd {
    fd: OwnedFd,
}

fn shutdown_sigset() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise a local sigset_t.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        set
    }
}

/// Block SIGINT and SIGTERM in the calling thread; threads spawned later
/// inherit the mask, so call this before starting reactors.
pub fn block_shutdown_signals() -> io::Result<()> {
    let set = shutdown_sigset();
    // SAFETY: valid sigset, null old-set pointer is allowed.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 { Err(io::Error::from_raw_os_error(rc)) } else { Ok(()) }
}

impl SignalFd {
    pub fn new() -> io::Result<Self> {
        let set = shutdown_sigset();
        let fd = syscall!(signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK))?;
        // SAFETY: signalfd returned a fresh descriptor we now own.
        Ok(SignalFd { fd: unsafe { OwnedFd::from_raw_fd(fd) } })
    }

    /// The next pending signal number, if any.
    pub fn read(&self) -> Option<i32> {
        // SAFETY: signalfd_siginfo is plain data; we read at most its size.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let sz = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: the buffer is a live, correctly sized signalfd_siginfo.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), (&mut info as *mut libc::signalfd_siginfo).cast(), sz) };
        (n as usize == sz).then_some(info.ssi_signo as i32)
    }
}

impl AsRawFd for SignalFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// The CPUs this process may run on (its affinity mask).
pub fn allowed_cpus() -> io::Result<Vec<usize>> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    syscall!(sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set))?;
    Ok((0..libc::CPU_SETSIZE as usize)
        // SAFETY: i < CPU_SETSIZE, and set is initialised.
        .filter(|&i| unsafe { libc::CPU_ISSET(i, &set) })
        .collect())
}

/// Let the calling thread run on `cpus` (the kernel keeps it within the
/// process's cpuset).
pub fn set_affinity(cpus: &[usize]) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain data.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in cpus.iter().filter(|&&c| c < libc::CPU_SETSIZE as usize) {
        // SAFETY: c < CPU_SETSIZE.
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    syscall!(sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set))?;
    Ok(())
}

/// The kernel thread id of the caller.
pub fn gettid() -> i32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() }
}

/// User and system CPU time of a thread of this process, in clock ticks
/// (`_SC_CLK_TCK`), read from /proc.
pub fn thread_cpu_ticks(tid: i32) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the full line: 11 and 12 here.
    Some((fields.get(11)?.parse().ok()?, fields.get(12)?.parse().ok()?))
}

/// Send a signal to this process.
pub fn raise_signal(sig: i32) -> io::Result<()> {
    // SAFETY: getpid has no preconditions; kill with our own pid is valid.
    syscall!(kill(libc::getpid(), sig)).map(drop)
}
