//! `cargo bench`: the same suites as `backbone-bench`, through the library, on the adapter
//! `BACKBONE_BACKEND` / `BACKBONE_ADAPTER` pick. Sizes follow the adapter (small on
//! software adapters).

use backbone::bench::{self, BenchOptions, MatmulSize};
use backbone::{Context, ContextOptions};

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing to run.
    if !std::env::args().any(|a| a == "--bench") {
        return Ok(());
    }
    let ctx = pollster::block_on(Context::new(ContextOptions::from_env()?))?;
    println!("adapter: {}", ctx.capabilities());
    let options = BenchOptions::default();
    let records = bench::matmul_suite(&ctx, &MatmulSize::defaults(&ctx), &options, |msg| {
        eprintln!("running {msg}")
    })?;
    print!("{}", bench::table(&records));
    anyhow::ensure!(
        records.iter().all(|r| r.check.passed),
        "a result FAILED its check"
    );
    Ok(())
}
