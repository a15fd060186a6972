//! Write the seed inputs of every target into the corpus:
//! `cargo run --release -p pollux-fuzz --example seeds` (from anywhere in
//! the repository). Files are named `seed-<name>`; existing ones are
//! replaced, other corpus files are left alone.

use std::path::Path;

fn main() -> std::io::Result<()> {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let mut n = 0;
    for s in pollux_fuzz::seeds::all() {
        let dir = corpus.join(s.target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(format!("seed-{}", s.name)), &s.data)?;
        n += 1;
    }
    println!("{n} seeds written under {}", corpus.display());
    Ok(())
}
