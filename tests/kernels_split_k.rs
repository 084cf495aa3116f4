//! Split-K (`matmul_split_k`, `matmul_split_reduce`) against its CPU twins and the plain
//! product's twin, forced on this adapter (the heuristic never splits on a software one): odd
//! K, K shorter than the splits, M below and at 256 rows, a batch, every tile, every epilogue,
//! f16 storage. Outputs start as NaN; bounds grow with sqrt(K) as the f32 sums' error does.

mod common;

use backbone::kernels::{self, Activation, Epilogue, MatmulTile, MatrixView, StridedMatmul};
use backbone::reference::{self, HostTensor};
use backbone::{Context, DType, Recorder, Tensor};
use common::*;

fn tiles(ctx: &Context) -> Vec<MatmulTile> {
    [MatmulTile::Skinny, MatmulTile::Small, MatmulTile::Large]
        .into_iter()
        .filter(|t| t.fits(ctx))
        .collect()
}

/// An epilogue by number: none; bias + GELU + residual; alpha 0.5 + tanh; bias + ReLU.
fn epilogue<'a>(
    which: usize,
    bias: &'a HostTensor,
    residual: &'a HostTensor,
) -> Epilogue<'a, HostTensor> {
    match which % 4 {
        0 => Epilogue::none(),
        1 => Epilogue::none().bias(bias).gelu().residual(residual),
        2 => Epilogue::none().alpha(0.5).tanh(),
        _ => Epilogue::none().bias(bias).act(Activation::Relu),
    }
}

/// The GPU's split product, its twin's and the plain product's twin; the GPU result must
/// match both.
#[allow(clippy::too_many_arguments)]
fn check(
    ctx: &Context,
    (batch, m, n, k): (usize, usize, usize, usize),
    splits: usize,
    tile: MatmulTile,
    which: usize,
    f16: bool,
    seed: u64,
) {
    let mut r = rng(seed);
    let dtype = if f16 { DType::F16 } else { DType::F32 };
    let x = random_host(&mut r, &[batch, m, k], 1.0).round_to(dtype);
    let w = random_host(&mut r, &[n, k], 1.0).round_to(dtype);
    let bias = random_host(&mut r, &[n], 1.0);
    let residual = random_host(&mut r, &[batch, m, n], 1.0).round_to(dtype);
    let ep = epilogue(which, &bias, &residual);
    let p = StridedMatmul::contiguous(batch, m, n, k, true);

    let mut twin = nan_host(&[batch, m, n]);
    reference::matmul_split_k(&x, &w, &mut twin, ep, &p, tile, splits).expect("split twin");
    let mut plain = nan_host(&[batch, m, n]);
    reference::matmul_strided(&x, &w, &mut plain, ep, &p).expect("plain twin");

    let up = |t: &HostTensor, label| -> Tensor {
        backbone::models::weights::upload_as(ctx, label, t, dtype).expect("upload")
    };
    let (gx, gw, gr) = (up(&x, "x"), up(&w, "w"), up(&residual, "residual"));
    let gb = upload(ctx, &bias, "bias");
    let n_out = batch * m * n;
    let gy = if f16 {
        Tensor::from_f16(ctx, &[batch, m, n], &vec![half::f16::NAN; n_out], "y").expect("y")
    } else {
        nan_filled(ctx, &[batch, m, n], "y")
    };
    let gep = Epilogue {
        alpha: ep.alpha,
        bias: ep.bias.map(|_| &gb),
        act: ep.act,
        residual: ep.residual.map(|_| &gr),
    };
    let mut rec = Recorder::new(ctx);
    kernels::matmul_split_k(&mut rec, &gx, &gw, &gy, gep, &p, tile, splits).expect("record");
    rec.submit_blocking().expect("submit");
    let got = read_f32(ctx, &gy);
    let what = format!(
        "split-K seed {seed} {tile:?} batch={batch} m={m} n={n} k={k} splits={splits} \
         epilogue {which} f16={f16}"
    );
    let atol = (2e-6 * (k as f32).sqrt()).max(1e-5);
    let rtol = if f16 { 1e-3 } else { 1e-5 };
    assert_close(&format!("{what} vs its twin"), &got, &twin.data, atol, rtol);
    assert_close(
        &format!("{what} vs the unsplit product"),
        &got,
        &plain.data,
        2.0 * atol,
        rtol,
    );
}

#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn split_k_matches_its_twin_at_odd_k() {
    let ctx = ctx();
    // (batch, M, N, K): odd K, K shorter than splits x BK (empty ranges), 256 rows, a batch.
    let shapes = [
        (1, 1, 33, 1001),
        (2, 7, 64, 129),
        (1, 37, 100, 517),
        (1, 256, 65, 300),
        (1, 3, 17, 5),
    ];
    let mut seed = 100;
    for (i, &shape) in shapes.iter().enumerate() {
        for (j, splits) in [2, 3, 7, 16].into_iter().enumerate() {
            for tile in tiles(ctx) {
                seed += 1;
                check(ctx, shape, splits, tile, i + j, false, seed);
            }
        }
    }
}

#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn split_k_with_f16_storage() {
    let ctx = ctx();
    if !ctx.capabilities().has(wgpu::Features::SHADER_F16) {
        eprintln!("no SHADER_F16 on this adapter: f16 split-K not run (f32 covered above)");
        return;
    }
    let mut seed = 500;
    for shape in [(1, 5, 72, 777), (1, 64, 48, 1536)] {
        for which in 0..4 {
            seed += 1;
            check(ctx, shape, 4, MatmulTile::Small, which, true, seed);
        }
    }
}

#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn split_reduce_matches_its_twin() {
    let ctx = ctx();
    let mut r = rng(7);
    for (splits, rows, n) in [(1, 1, 1), (3, 5, 7), (16, 33, 300)] {
        let partial = random_host(&mut r, &[splits, rows, n], 10.0);
        let bias = random_host(&mut r, &[n], 1.0);
        let residual = random_host(&mut r, &[rows, n], 1.0);
        for which in 0..4 {
            let ep = epilogue(which, &bias, &residual);
            let mut twin = nan_host(&[rows, n]);
            reference::matmul_split_reduce(&partial, splits, ep, &mut twin).expect("twin");
            let (gp, gb, gr) = (
                upload(ctx, &partial, "partial"),
                upload(ctx, &bias, "bias"),
                upload(ctx, &residual, "residual"),
            );
            let gy = nan_filled(ctx, &[rows, n], "y");
            let gep = Epilogue {
                alpha: ep.alpha,
                bias: ep.bias.map(|_| &gb),
                act: ep.act,
                residual: ep.residual.map(|_| &gr),
            };
            let mut rec = Recorder::new(ctx);
            kernels::matmul_split_reduce(&mut rec, &gp, splits, gep, &gy).expect("record");
            rec.submit_blocking().expect("submit");
            let what = format!("split reduce {splits}x{rows}x{n} epilogue {which}");
            assert_close(&what, &read_f32(ctx, &gy), &twin.data, 1e-5, 1e-5);
        }
    }
}

#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn split_k_refuses_what_it_cannot_run_and_never_splits_on_software() {
    let ctx = ctx();
    let x = upload(ctx, &host(&[2, 4, 8], vec![1.0; 64]), "x");
    let w = upload(ctx, &host(&[4, 8], vec![1.0; 32]), "w");
    let y = nan_filled(ctx, &[2, 4, 4], "y");
    let p = StridedMatmul::contiguous(2, 4, 4, 8, true);
    let mut rec = Recorder::new(ctx);
    for (splits, tile) in [
        (1, MatmulTile::Small),
        (17, MatmulTile::Small),
        (2, MatmulTile::Subgroup),
    ] {
        let err = kernels::matmul_split_k(&mut rec, &x, &w, &y, Epilogue::none(), &p, tile, splits)
            .expect_err("refused");
        assert!(err.to_string().contains("splits"), "{err}");
    }
    let mut strided = p;
    strided.y = MatrixView {
        ld: 8,
        ..MatrixView::contiguous(4, 4)
    };
    let err = kernels::matmul_split_k(
        &mut rec,
        &x,
        &w,
        &nan_filled(ctx, &[2, 4, 8], "wide"),
        Epilogue::none(),
        &strided,
        MatmulTile::Small,
        2,
    )
    .expect_err("strided Y refused");
    assert!(err.to_string().contains("contiguous"), "{err}");
    // The BERT-base batch-1 FFN-down product: split on a hardware GPU, never on software.
    let ffn = StridedMatmul::contiguous(1, 128, 768, 3072, true);
    let splits = kernels::split_k(ctx, &ffn, MatmulTile::Small);
    if ctx.capabilities().is_software() {
        assert_eq!(splits, 1, "a software adapter never splits");
    } else {
        assert!(splits > 1, "the batch-1 FFN-down product is split on a GPU");
    }
}
