//! `cargo bench`: the same suites as `backbone-bench` (every suite, default shapes for the
//! adapter), through the library, on the adapter `BACKBONE_BACKEND` / `BACKBONE_ADAPTER` pick.

use backbone::bench::{self, BenchOptions};
use backbone::{Context, ContextOptions};

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing: then do nothing.
    if !std::env::args().any(|a| a == "--bench") {
        return Ok(());
    }
    let ctx = pollster::block_on(Context::new(ContextOptions::from_env()?))?;
    println!("adapter: {}", ctx.capabilities());
    let options = if ctx.capabilities().is_software() {
        BenchOptions {
            warmup: 1,
            iters: 3,
            ..BenchOptions::default()
        }
    } else {
        BenchOptions::default()
    };
    let mut records = Vec::new();
    bench::default_suites(&ctx, &options, &mut records)?;
    print!("{}", bench::table(&records));
    anyhow::ensure!(
        records.iter().all(|r| r.passed()),
        "a result FAILED (an error, or its check)"
    );
    Ok(())
}
