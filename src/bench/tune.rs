//! `backbone-bench tune`: every matmul tile timed on the products a model's forward runs,
//! the fastest written to a [`TuneTable`] for this adapter and driver.

use rand::{SeedableRng, rngs::StdRng};

use super::{BenchOptions, BertShape, CswinShape, kernel_run, random, time_kernel};
use crate::context::Context;
use crate::error::Result;
use crate::host::HostTensor;
use crate::kernels::{Epilogue, MatmulTile, StridedMatmul, matmul::matmul_with_tile};
use crate::models::cswin::{CswinConfig, Geometry};
use crate::models::weights::upload_as;
use crate::tensor::{DType, Tensor};
use crate::tune::{MatmulChoice, TuneTable, adapter_key};

/// A matmul problem as `kernels::matmul` sees a projection: (batch, M, N, K), W shared over
/// the batch (a [B, T, K] input is batch B of M = T rows).
pub type Problem = (usize, usize, usize, usize);

/// The projections of BERT forwards at these shapes: QKV, attention output, MLP up and down,
/// each batch B of M = seq rows.
pub fn bert_problems(shapes: &[BertShape]) -> Vec<Problem> {
    let mut out = Vec::new();
    for s in shapes {
        let config = s.model.config();
        let (b, m) = (s.batch, s.seq);
        let (c, i) = (config.hidden_size, config.intermediate_size);
        out.extend([(b, m, 3 * c, c), (b, m, c, c), (b, m, i, c), (b, m, c, i)]);
    }
    dedup(out)
}

/// The projections of CSWin forwards at these shapes, per stage: QKV, proj, MLP up and down;
/// and the head.
pub fn cswin_problems(shapes: &[CswinShape]) -> Result<Vec<Problem>> {
    let mut out = Vec::new();
    for s in shapes {
        let config = CswinConfig::preset(&s.variant)?;
        let g = Geometry::new(&config, &[s.batch, config.in_chans, s.size, s.size])?;
        let b = s.batch;
        for st in 0..4 {
            let m = g.stages[st].0 * g.stages[st].1;
            let (c, h) = (config.dim(st), config.hidden(st));
            out.extend([(b, m, 3 * c, c), (b, m, c, c), (b, m, h, c), (b, m, c, h)]);
        }
        // The head: the pooled [B, 8C] rows.
        out.push((1, b, config.num_classes, config.dim(3)));
    }
    Ok(dedup(out))
}

fn dedup(mut v: Vec<Problem>) -> Vec<Problem> {
    let mut seen = std::collections::HashSet::new();
    v.retain(|p| seen.insert(*p));
    v
}

/// Times every tile that fits the adapter on every problem, in every dtype of `options`
/// (X and W stored as that dtype), and returns the fastest per problem.
pub fn tune(
    ctx: &Context,
    problems: &[Problem],
    options: &BenchOptions,
    mut progress: impl FnMut(&str),
) -> Result<TuneTable> {
    let (adapter, backend, driver) = adapter_key(ctx.capabilities());
    let mut matmul = Vec::new();
    for (i, &(batch, m, n, k)) in problems.iter().enumerate() {
        for &dtype in &options.dtypes {
            progress(&format!(
                "tune matmul {batch}x{m}x{n}x{k} {} ({}/{})",
                dtype.name(),
                i + 1,
                problems.len()
            ));
            let mut rng = StdRng::seed_from_u64((m * 7 + n * 3 + k) as u64);
            let x_host = HostTensor::new(&[batch, m, k], random(&mut rng, batch * m * k))?;
            let x = upload_as(ctx, "x", &x_host, dtype)?;
            let w = upload_as(
                ctx,
                "w",
                &HostTensor::new(&[n, k], random(&mut rng, n * k))?,
                dtype,
            )?;
            let y = Tensor::empty(ctx, &[batch, m, n], DType::F32, "y")?;
            let p = StridedMatmul::contiguous(batch, m, n, k, true);
            let mut measured = Vec::new();
            for tile in MatmulTile::ALL.into_iter().filter(|t| t.fits(ctx)) {
                let run = |timed| {
                    kernel_run(ctx, timed, |rec| {
                        matmul_with_tile(rec, &x, &w, &y, Epilogue::none(), &p, tile)
                    })
                };
                let (timings, _) = time_kernel(ctx, options, run)?;
                measured.push((tile, timings.gpu_ms.median));
            }
            measured.sort_by(|a, b| a.1.total_cmp(&b.1));
            if let Some(&(tile, _)) = measured.first() {
                matmul.push(MatmulChoice {
                    m,
                    n,
                    k,
                    batch,
                    dtype: dtype.name().0.into(),
                    tile,
                    measured,
                });
            }
        }
    }
    Ok(TuneTable {
        adapter,
        backend,
        driver,
        commit: super::COMMIT.into(),
        matmul,
    })
}

/// The table as text: each problem's choice, the heuristic's, and every candidate's time.
pub fn tune_report(ctx: &Context, table: &TuneTable) -> String {
    let mut out = format!(
        "{:<22} {:>5} {:>8} {:>10}  measured (GPU ms, median)\n",
        "matmul BxMxNxK", "dtype", "chosen", "heuristic"
    );
    for c in &table.matmul {
        let heuristic = MatmulTile::heuristic(ctx, c.m, c.n, c.batch);
        let times: Vec<String> = (c.measured.iter())
            .map(|(t, ms)| format!("{t:?} {ms:.4}"))
            .collect();
        out += &format!(
            "{:<22} {:>5} {:>8} {:>10}  {}\n",
            format!("{}x{}x{}x{}", c.batch, c.m, c.n, c.k),
            c.dtype,
            format!("{:?}", c.tile),
            format!("{heuristic:?}"),
            times.join(", ")
        );
    }
    out
}
