//! Run every file of `corpus/<target>/` and `regressions/<target>/`.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut v: Vec<PathBuf> = rd.map(|e| e.expect("directory entry").path()).filter(|p| p.is_file()).collect();
    v.sort();
    v
}

pub fn replay(name: &str) {
    let target = pollux_fuzz::target(name).expect("a target of that name");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let corpus = files(&root.join("corpus").join(name));
    assert!(!corpus.is_empty(), "the corpus of {name} is empty");
    let all: Vec<PathBuf> = corpus.into_iter().chain(files(&root.join("regressions").join(name))).collect();
    let mut failed = Vec::new();
    for f in &all {
        let data = std::fs::read(f).expect("read input");
        if catch_unwind(AssertUnwindSafe(|| target(&data))).is_err() {
            failed.push(f.display().to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "{name}: {} of {} inputs failed (reproduce: cargo run --release -p pollux-fuzz --example run -- {name} FILE):\n{}",
        failed.len(),
        all.len(),
        failed.join("\n")
    );
    eprintln!("{name}: {} inputs replayed", all.len());
}
