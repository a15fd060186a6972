//! The blocking API (`pollux_nvmf_host::client`) against Pollux's own
//! target on loopback, as a program without the daemon uses it: the module
//! documentation's example, run. It is alone in its test binary: a session
//! runs the process's reactor runtime.

use pollux_nvmf_host::client::Session;
use pollux_tests::iscsi_host::free_port;
use pollux_tests::{Daemon, DaemonOpts};
use serde_json::json;

const NQN: &str = "nqn.2016-06.io.spdk:client-api";

#[test]
fn a_program_opens_a_subsystem_identifies_it_writes_reads_back_and_closes() {
    let port = free_port();
    let _tgt = Daemon::start(DaemonOpts {
        config: Some(json!({"subsystems": [
            {"subsystem": "bdev", "config": [{"method": "bdev_malloc_create", "params": {"name": "Malloc0", "num_blocks": 32768, "block_size": 512}}]},
            {"subsystem": "nvmf", "config": [
                {"method": "nvmf_create_transport", "params": {"trtype": "TCP"}},
                {"method": "nvmf_create_subsystem", "params": {"nqn": NQN, "allow_any_host": false, "serial_number": "CLIENT0001"}},
                {"method": "nvmf_subsystem_add_host", "params": {"nqn": NQN, "host": "nqn.2014-08.org.nvmexpress:uuid:c11e0000-0000-4000-8000-000000000001"}},
                {"method": "nvmf_subsystem_add_ns", "params": {"nqn": NQN, "namespace": {"bdev_name": "Malloc0"}}},
                {"method": "nvmf_subsystem_add_listener", "params": {"nqn": NQN, "listen_address": {"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": port.to_string()}}}]},
        ]})),
        ..DaemonOpts::default()
    });
    let addr = format!("127.0.0.1:{port}").parse().unwrap();

    // A host the subsystem does not allow: a clear error, and the process
    // can open another session after it.
    let e = Session::open(addr, NQN, None).err().expect("refused").to_string();
    assert!(e.contains("refused") && e.contains("host"), "{e}");

    let s = Session::open(addr, NQN, Some("nqn.2014-08.org.nvmexpress:uuid:c11e0000-0000-4000-8000-000000000001")).expect("open");
    assert!(s.serial().starts_with("CLIENT0001"), "{}", s.serial());
    assert_eq!(s.subsystem_nqn(), NQN);
    let ns = s.namespaces()[0].clone();
    assert_eq!((ns.nsid, ns.block_size, ns.num_blocks), (1, 512, 32768));
    let data: Vec<u8> = (0..8 * 512).map(|i| (i * 7 % 251) as u8).collect();
    s.write(1, 100, &data).expect("write");
    assert_eq!(s.read(1, 100, 8).expect("read"), data);
    assert_eq!(s.read(1, 0, 1).expect("read").len(), 512);
    // Compare, done by the controller: the same data, then one byte off.
    assert!(s.compare(1, 100, &data).expect("compare"));
    let mut other = data.clone();
    other[3000] ^= 1;
    assert!(!s.compare(1, 100, &other).expect("compare"));
    // Bad requests are refused with the reason, and the session goes on.
    assert!(s.write(1, 0, &[0; 100]).unwrap_err().to_string().contains("whole"));
    assert!(s.read(2, 0, 1).unwrap_err().to_string().contains("not an active namespace"));
    assert!(s.read(1, 32768, 1).is_err(), "beyond the end");
    assert_eq!(s.read(1, 100, 8).expect("read"), data);
    s.close().expect("close");
}
