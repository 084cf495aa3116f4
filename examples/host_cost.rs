//! What one forward costs the host: write the inputs, encode the recorded program and submit
//! it, without waiting for the GPU (the GPU is drained between runs, outside the timing).
//! Random weights of the real sizes, f16 storage.
//!
//! ```text
//! cargo run --release --example host_cost -- base:1x128 [RUNS]   # BERT-base, batch 1, seq 128
//! cargo run --release --example host_cost -- cswin-t:1 [RUNS]     # CSWin-T, one 224x224 image
//! # without any driver's share: wgpu's do-nothing backend (kernels do not run)
//! BACKBONE_BACKEND=noop WGPU_NOOP_BACKEND=1 cargo run --release --example host_cost -- base:1x128
//! ```

use std::time::Instant;

use backbone::bench::{BertShape, CswinShape, random_bert_weights, random_cswin_weights};
use backbone::models::cswin::{Cswin, CswinConfig};
use backbone::models::text::{Encoder, TextInput};
use backbone::reference::HostTensor;
use backbone::{Context, DType};

fn main() -> anyhow::Result<()> {
    let ctx = Context::from_env_blocking()?;
    println!("adapter: {}", ctx.capabilities());
    let shape = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "base:1x128".into());
    let runs: usize = std::env::args().nth(2).map_or(Ok(100), |s| s.parse())?;
    let wait = || {
        ctx.device()
            .poll(wgpu::PollType::wait_indefinitely())
            .map(|_| ())
    };
    let mut times = Vec::with_capacity(runs);
    let dispatches;
    if let Some(cswin) = shape.strip_prefix("cswin-") {
        let shape = CswinShape::parse(cswin)?;
        let config = CswinConfig::preset(&shape.variant)?;
        let model = Cswin::with_dtype(
            &ctx,
            config.clone(),
            &random_cswin_weights(&config, 11)?,
            DType::F16,
        )?;
        let n = shape.batch * config.in_chans * shape.size * shape.size;
        let pixels = HostTensor::new(
            &[shape.batch, config.in_chans, shape.size, shape.size],
            vec![0.5; n],
        )?;
        dispatches = model.forward_passes(&ctx, &pixels)?.len();
        model.forward_enqueue(&ctx, &pixels)?; // records the program once
        wait()?;
        for _ in 0..runs {
            let start = Instant::now();
            model.forward_enqueue(&ctx, &pixels)?;
            times.push(start.elapsed().as_secs_f64() * 1e3);
            wait()?;
        }
    } else {
        let shape = BertShape::parse(&shape)?;
        let config = shape.model.config();
        let model = Encoder::with_dtype(
            &ctx,
            config.clone(),
            &random_bert_weights(&config, 7)?,
            DType::F16,
        )?;
        let ids = (0..shape.batch * shape.seq)
            .map(|i| 1000 + i as u32)
            .collect();
        let input = TextInput::new(shape.batch, shape.seq, ids, None, None)?;
        dispatches = model.forward_passes(&ctx, &input)?.len();
        model.forward_enqueue(&ctx, &input)?;
        wait()?;
        for _ in 0..runs {
            let start = Instant::now();
            model.forward_enqueue(&ctx, &input)?;
            times.push(start.elapsed().as_secs_f64() * 1e3);
            wait()?;
        }
    }
    times.sort_by(f64::total_cmp);
    println!(
        "{shape}: {dispatches} dispatches, host ms per forward: median {:.4}, min {:.4} ({runs} runs)",
        times[times.len() / 2],
        times[0]
    );
    Ok(())
}
