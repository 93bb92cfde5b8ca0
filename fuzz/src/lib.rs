//! Support shared by the fuzz targets (the targets' bodies are in `harness/`).

use std::path::PathBuf;

/// Seeds the corpus: with `STORE_FUZZ_WRITE_SEEDS=<dir>` in the environment, a target writes
/// its harness's seed inputs to `<dir>/seed-NN` and exits instead of fuzzing.
pub fn write_seeds_if_asked(seeds: impl FnOnce() -> Vec<Vec<u8>>) {
    let Some(dir) = std::env::var_os("STORE_FUZZ_WRITE_SEEDS") else { return };
    let dir = PathBuf::from(dir);
    std::fs::create_dir_all(&dir).expect("create the seed directory");
    let seeds = seeds();
    for (i, seed) in seeds.iter().enumerate() {
        std::fs::write(dir.join(format!("seed-{i:02}")), seed).expect("write a seed");
    }
    eprintln!("wrote {} seeds to {}", seeds.len(), dir.display());
    std::process::exit(0);
}
