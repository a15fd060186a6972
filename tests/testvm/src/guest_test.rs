//! Ordinary `#[test]`s whose body runs inside a guest.
//!
//! On the host, [`in_guest`] boots a guest that re-executes the current test
//! binary with `--exact <this test> --nocapture` (the host root is the guest's
//! root, so the binary is at the same path), and panics unless that run passed.
//! In the guest, the same call sees [`TEST_ENV`] naming this test and runs the body.

use crate::config::VmConfig;
use crate::error::Error;
use crate::vm::{GUEST_ENV, GuestCommand, TestVm};

/// Names the test the guest should run the body of.
pub const TEST_ENV: &str = "POLLUX_TESTVM_TEST";
/// Printed by the guest after the body returned, so a run that filtered the test
/// out ("0 passed") is not mistaken for a pass.
const DONE_MARKER: &str = "pollux-testvm: guest body completed:";
/// Host environment variables passed on to the guest run, by prefix.
const PASSED_ENV_PREFIXES: &[&str] = &["RUST_", "CARGO_", "POLLUX_"];

/// Runs `body` inside a fresh guest shaped by `config`. Call it as the whole of a
/// `#[test]` function:
///
/// ```no_run
/// use pollux_testvm::{in_guest, NvmeDriver, VmConfig};
///
/// #[test]
/// fn vfio_group_appears() {
///     in_guest(&VmConfig::new().nvme_driver(NvmeDriver::Vfio), || {
///         // Runs as root in the guest.
///         assert!(std::fs::read_dir("/dev/vfio").unwrap().count() >= 2);
///     });
/// }
/// ```
///
/// On the host it panics with the guest's output when the body failed, with
/// "INFRASTRUCTURE FAILURE" and the guest console when the VM itself failed, and
/// with the set-up command when the VM is not set up. It never skips. The time
/// the VM took is written straight to stderr, past libtest's capture
/// (see [`TestVm::run`]).
pub fn in_guest<F: FnOnce()>(config: &VmConfig, body: F) {
    let name = current_test_name();
    if std::env::var_os(GUEST_ENV).is_some() {
        match std::env::var(TEST_ENV) {
            Ok(wanted) if wanted == name => {
                body();
                // A line of its own: libtest has written "test NAME ... " without a newline.
                println!("\n{DONE_MARKER} {name}");
                return;
            }
            _ => panic!("{}", Error::Nested(format!("test {name}: the guest was started for another test"))),
        }
    }
    if let Err(msg) = run_on_host(config, &name) {
        panic!("{msg}");
    }
}

fn current_test_name() -> String {
    match std::thread::current().name() {
        Some(name) if name != "main" => name.to_string(),
        _ => panic!(
            "pollux_testvm::in_guest must be called from a libtest #[test] (its thread \
             name is the test name)"
        ),
    }
}

fn run_on_host(config: &VmConfig, name: &str) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let cwd = std::env::current_dir().map_err(|e| format!("current_dir: {e}"))?;
    let vm = TestVm::new(config.clone()).map_err(|e| e.to_string())?;
    let mut cmd =
        GuestCommand::new(&exe).args(["--exact", name, "--nocapture", "--test-threads=1"]).current_dir(cwd).label(name).env(TEST_ENV, name);
    for (key, value) in std::env::vars_os() {
        let passed = key.to_str().is_some_and(|k| PASSED_ENV_PREFIXES.iter().any(|p| k.starts_with(p)));
        if passed && key != TEST_ENV {
            cmd = cmd.env(key, value);
        }
    }
    let out = vm.run(&cmd).map_err(|e| e.to_string())?;
    let stdout = out.stdout_lossy();
    let stderr = out.stderr_lossy();
    // Captured by libtest: shown when the test fails or with --nocapture.
    println!("--- guest stdout ---\n{stdout}--- guest stderr ---\n{stderr}");
    if !out.success() {
        return Err(format!("test {name} FAILED in the guest (exit status {}); its output is above", out.status));
    }
    if !stdout.lines().any(|l| l == format!("{DONE_MARKER} {name}")) {
        return Err(format!(
            "test {name}: the guest run exited 0 but never ran the body (was the test \
             filtered out?); output is above"
        ));
    }
    Ok(())
}

/// In the guest: Soft-RoCE (`rdma_rxe`) device `rxe0` on a dummy interface
/// `d0` holding `addr`/24, loopback up, after loading `modules` beside the
/// ones RDMA needs (the set-up `../shared/notes/rdma.md` found to work:
/// Soft-RoCE cannot sit on `lo`). Panics with the shell's output if a
/// step fails.
pub fn soft_roce(addr: &str, modules: &[&str]) {
    let script = format!(
        "set -e
for m in crc32_generic crc32c_generic rdma_rxe ib_uverbs rdma_ucm dummy {}; do modprobe $m; done
ip link set lo up
ip link add d0 type dummy
ip addr add {addr}/24 dev d0
ip link set d0 up
rdma link add rxe0 type rxe netdev d0",
        modules.join(" ")
    );
    let out = std::process::Command::new("sh").arg("-c").arg(&script).output().expect("sh");
    assert!(
        out.status.success(),
        "Soft-RoCE set-up failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
