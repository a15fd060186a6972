//! libiscsi's compliance suite (`iscsi-test-cu`, Debian libiscsi-bin)
//! against a thin-provisioned Pollux LUN: no failures and at least 200
//! passes, skips counted apart (CUnit counts them as passes).

use std::process::Command;

use pollux_tests::iscsi_host::{self, Compliance};
use pollux_tests::tool;

fn run(args: &[&str]) -> String {
    let t = tool("iscsi-test-cu", "libiscsi's compliance suite: apt-get install libiscsi-bin");
    let out = Command::new(t)
        .args(["-d", "-i", "iqn.2025-01.io.pollux:test-init1", "-I", "iqn.2025-01.io.pollux:test-init2"])
        .args(args)
        .output()
        .expect("run iscsi-test-cu");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

#[test]
fn libiscsi_compliance_suite_passes_with_no_failures() {
    let port = iscsi_host::free_port();
    let d = iscsi_host::start("0x3", iscsi_host::config(port, "compliance", 64, None));
    let url = iscsi_host::url(port, "compliance", None);

    // Every family once; MultipathIO needs two paths, so it runs alone with
    // the URL twice and its results replace the single-path skips.
    let all = iscsi_host::parse_cunit(&run(&["-t", "ALL", &url]));
    let mp = iscsi_host::parse_cunit(&run(&["-t", "ALL.MultipathIO", &url, &url]));
    let is_mp = |n: &String| n.starts_with("MultipathIO.");
    let total = Compliance {
        passed: all.passed.iter().filter(|n| !is_mp(n)).chain(&mp.passed).cloned().collect(),
        failed: all.failed.iter().filter(|n| !is_mp(n)).chain(&mp.failed).cloned().collect(),
        skipped: all.skipped.iter().filter(|n| !is_mp(n)).chain(&mp.skipped).cloned().collect(),
    };
    eprintln!(
        "iscsi-test-cu against Pollux: {} passed, {} failed, {} skipped of {}\nskipped: {:?}",
        total.passed.len(),
        total.failed.len(),
        total.skipped.len(),
        total.passed.len() + total.failed.len() + total.skipped.len(),
        total.skipped
    );
    assert_eq!(mp.passed.len(), 4, "MultipathIO with two paths: {mp:?}");
    assert!(total.failed.is_empty(), "failed: {:?}\ndaemon log tail:\n{}", total.failed, tail(&d.log()));
    assert!(total.passed.len() >= 200, "only {} passed: {total:?}", total.passed.len());
    assert!(total.passed.len() + total.skipped.len() >= 230, "tests went missing: {total:?}");
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

#[test]
fn parser_splits_verdicts_from_helper_reports() {
    let out = "Suite: A\n  Test: One ...passed\n  Test: Two ...    [SKIPPED] not here\npassed\n  Test: Three ...    [FAILED] WRITE10 failed\n    [FAILED] again\npassed\n  Test: Four ...FAILED\n    1. x.c:1 - CU_ASSERT\nSuite: B\n  Test: Five ...    [FAILED] x\nFAILED\nRun Summary: ...\n";
    let r = iscsi_host::parse_cunit(out);
    assert_eq!(r.passed, vec!["A.One", "A.Three"]);
    assert_eq!(r.skipped, vec!["A.Two"]);
    assert_eq!(r.failed, vec!["A.Four", "B.Five"]);
}
