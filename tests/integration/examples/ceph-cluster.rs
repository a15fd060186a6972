//! Start the tests' throw-away single-node Ceph cluster (see
//! `pollux_tests::ceph`) for benchmarks by hand, with an image:
//!
//! ```text
//! ceph-cluster IMAGE SIZE_MIB
//! ```
//!
//! Prints `CEPH_CONF=... CEPH_KEYRING=...` (shell assignments) once the
//! cluster and the image are ready, then runs until its standard input
//! closes or it gets SIGTERM / SIGINT, and stops the cluster.

use std::io::Read;

use pollux_tests::ceph::Ceph;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (image, mib) = match args.as_slice() {
        [_, image, mib] => (image.clone(), mib.parse::<u64>().expect("SIZE_MIB is a number")),
        _ => {
            eprintln!("usage: ceph-cluster IMAGE SIZE_MIB");
            std::process::exit(2);
        }
    };
    let ceph = Ceph::start();
    ceph.create_image(&image, mib);
    println!("CEPH_CONF={} CEPH_KEYRING={}", ceph.conf.display(), ceph.keyring.display());
    for sig in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: the handler only stores to an atomic (async-signal-safe).
        unsafe { libc::signal(sig, handler as *const () as libc::sighandler_t) };
    }
    std::thread::spawn(|| {
        let mut b = [0u8; 64];
        while std::io::stdin().read(&mut b).is_ok_and(|n| n > 0) {}
        STOP.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    while !STOP.load(std::sync::atomic::Ordering::SeqCst) {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    drop(ceph);
}

static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn handler(_: libc::c_int) {
    STOP.store(true, std::sync::atomic::Ordering::SeqCst);
}
