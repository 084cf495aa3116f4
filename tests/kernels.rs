//! The row and elementwise kernels and conv2d against their CPU twins on seeded random data, on
//! shapes below one tile, non-multiples of the tiles, and realistic BERT / CSWin sizes. Every
//! output starts as NaN, on the GPU and in the twin, so an element a kernel fails to write
//! fails the comparison. The matmul, the attention kernels and the 2-D dispatch grid have
//! their own files (kernels_matmul.rs, kernels_attention.rs, kernels_grid.rs).

mod common;

use backbone::kernels::{self, Epilogue};
use backbone::reference::{self, HostTensor};
use backbone::{Recorder, Tensor};
use common::*;

/// Awkward sizes: 1, below a tile, around tile multiples, and past several tiles.
const SIZES: [usize; 6] = [1, 7, 63, 65, 127, 300];

/// (rows, C) pairs for the row kernels: awkward sizes plus a BERT-base activation.
fn row_shapes() -> Vec<(usize, usize)> {
    let mut shapes: Vec<_> = SIZES
        .iter()
        .zip(SIZES.iter().rev())
        .map(|(&r, &c)| (r, c))
        .collect();
    shapes.push((128, 768));
    shapes
}

/// The LayerNorm kernels this adapter runs: the workgroup one, and the subgroup one where the
/// adapter has subgroups (it must then be the default).
fn layer_norm_variants(ctx: &backbone::Context) -> Vec<kernels::LayerNormVariant> {
    let subgroups = kernels::MatmulTile::Subgroup.fits(ctx);
    let default = kernels::LayerNormVariant::choose(ctx);
    assert_eq!(
        default == kernels::LayerNormVariant::Subgroup,
        subgroups,
        "the subgroup LayerNorm is the default exactly where the adapter has subgroups"
    );
    let mut out = vec![kernels::LayerNormVariant::Workgroup];
    if subgroups {
        out.push(kernels::LayerNormVariant::Subgroup);
    }
    out
}

#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn layer_norm_matches_twin() {
    let ctx = ctx();
    let mut shapes = row_shapes();
    // Odd widths (scalar loads), a width below a vec4 and rows off the 4-row workgroup.
    shapes.extend([(5, 3), (6, 1000), (3, 1), (9, 67)]);
    for (i, (rows, c)) in shapes.into_iter().enumerate() {
        for with_residual in [false, true] {
            for variant in layer_norm_variants(ctx) {
                let mut r = rng(500 + i as u64);
                // An offset mean, so a variance computed without a shift would cancel.
                let mut x = random_host(&mut r, &[rows, c], 3.0);
                x.data.iter_mut().for_each(|v| *v += 40.0);
                let res = random_host(&mut r, &[rows, c], 1.0);
                let gamma = random_host(&mut r, &[c], 1.5);
                let beta = random_host(&mut r, &[c], 0.2);
                let residual = with_residual.then_some(&res);
                let mut cpu = nan_host(&[rows, c]);
                match variant {
                    kernels::LayerNormVariant::Workgroup => {
                        reference::layer_norm(&x, residual, &gamma, &beta, 1e-12, &mut cpu)
                    }
                    kernels::LayerNormVariant::Subgroup => {
                        reference::layer_norm_subgroup(&x, residual, &gamma, &beta, 1e-12, &mut cpu)
                    }
                }
                .expect("cpu");
                let gres = upload(ctx, &res, "residual");
                let gy = nan_filled(ctx, &[rows, c], "y");
                let mut rec = Recorder::new(ctx);
                kernels::layer_norm_variant(
                    &mut rec,
                    &upload(ctx, &x, "x"),
                    with_residual.then_some(&gres),
                    &upload(ctx, &gamma, "gamma"),
                    &upload(ctx, &beta, "beta"),
                    1e-12,
                    &gy,
                    variant,
                )
                .expect("record");
                rec.submit_blocking().expect("submit");
                let what =
                    format!("layer_norm {variant:?} rows={rows} c={c} residual={with_residual}");
                // f32 sums of values near 40: a few ulps of 40 over the row's spread.
                assert_close(&what, &read_f32(ctx, &gy), &cpu.data, 5e-5, 1e-5);
            }
        }
    }
}

/// Runs a kernel of shape x -> y (same shape) on both sides.
fn check_unary(
    name: &str,
    scale: f32,
    gpu_op: fn(&mut Recorder<'_>, &Tensor, &Tensor) -> backbone::Result<()>,
    cpu_op: fn(&HostTensor, &mut HostTensor) -> backbone::Result<()>,
    atol: f32,
    rtol: f32,
) {
    let ctx = ctx();
    for (i, (rows, c)) in row_shapes().into_iter().enumerate() {
        let mut r = rng(600 + i as u64);
        let x = random_host(&mut r, &[rows, c], scale);
        let mut cpu = nan_host(&[rows, c]);
        cpu_op(&x, &mut cpu).expect("cpu");
        let gy = nan_filled(ctx, &[rows, c], "y");
        let mut rec = Recorder::new(ctx);
        gpu_op(&mut rec, &upload(ctx, &x, "x"), &gy).expect("record");
        rec.submit_blocking().expect("submit");
        assert_close(
            &format!("{name} rows={rows} c={c}"),
            &read_f32(ctx, &gy),
            &cpu.data,
            atol,
            rtol,
        );
    }
}

#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn softmax_matches_twin() {
    // Scale 30 makes exp overflow without the max subtraction.
    check_unary(
        "softmax",
        30.0,
        kernels::softmax,
        reference::softmax,
        1e-6,
        1e-5,
    );
}

#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn gelu_matches_twin() {
    // Covers the far tails, where 1 + erf(x) cancels without care.
    check_unary("gelu", 8.0, kernels::gelu, reference::gelu, 1e-6, 1e-6);
}

#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn l2_normalize_matches_twin() {
    check_unary(
        "l2_normalize",
        2.0,
        kernels::l2_normalize,
        reference::l2_normalize,
        1e-6,
        1e-5,
    );
}

#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn l2_normalize_zero_row_stays_zero() {
    let ctx = ctx();
    let x = host(&[2, 3], vec![0.0, 0.0, 0.0, 3.0, 0.0, 4.0]);
    let gy = nan_filled(ctx, &[2, 3], "y");
    let mut rec = Recorder::new(ctx);
    kernels::l2_normalize(&mut rec, &upload(ctx, &x, "x"), &gy).expect("record");
    rec.submit_blocking().expect("submit");
    assert_close(
        "l2_normalize zero row",
        &read_f32(ctx, &gy),
        &[0.0, 0.0, 0.0, 0.6, 0.0, 0.8],
        1e-7,
        0.0,
    );
}

#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn add_matches_twin() {
    let ctx = ctx();
    for (i, (rows, c)) in row_shapes().into_iter().enumerate() {
        let mut r = rng(700 + i as u64);
        let a = random_host(&mut r, &[rows, c], 1.0);
        let b = random_host(&mut r, &[rows, c], 1.0);
        let mut cpu = nan_host(&[rows, c]);
        reference::add(&a, &b, &mut cpu).expect("cpu");
        let gy = nan_filled(ctx, &[rows, c], "y");
        let mut rec = Recorder::new(ctx);
        kernels::add(&mut rec, &upload(ctx, &a, "a"), &upload(ctx, &b, "b"), &gy).expect("record");
        rec.submit_blocking().expect("submit");
        assert_close(
            &format!("add rows={rows} c={c}"),
            &read_f32(ctx, &gy),
            &cpu.data,
            0.0,
            0.0,
        );
    }
}

#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn embedding_matches_twin() {
    let ctx = ctx();
    for (i, (n, vocab, c)) in [(1, 1, 1), (7, 63, 65), (65, 300, 7), (128, 1000, 384)]
        .into_iter()
        .enumerate()
    {
        let mut r = rng(800 + i as u64);
        let table = random_host(&mut r, &[vocab, c], 1.0);
        let ids_data: Vec<u32> = (0..n)
            .map(|_| rand::Rng::random_range(&mut r, 0..vocab as u32))
            .collect();
        let ids = HostTensor::new(&[n], ids_data).expect("ids");
        let mut cpu = nan_host(&[n, c]);
        reference::embedding(&ids, &table, &mut cpu).expect("cpu");
        let gy = nan_filled(ctx, &[n, c], "y");
        let mut rec = Recorder::new(ctx);
        kernels::embedding(
            &mut rec,
            &upload_u32(ctx, &ids, "ids"),
            &upload(ctx, &table, "table"),
            &gy,
        )
        .expect("record");
        rec.submit_blocking().expect("submit");
        assert_close(
            &format!("embedding n={n} vocab={vocab} c={c}"),
            &read_f32(ctx, &gy),
            &cpu.data,
            0.0,
            0.0,
        );
    }
}

#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn mean_pool_matches_twin() {
    let ctx = ctx();
    for (i, (b, t, c)) in [(1, 1, 1), (2, 7, 65), (3, 127, 300), (4, 128, 384)]
        .into_iter()
        .enumerate()
    {
        let mut r = rng(900 + i as u64);
        let x = random_host(&mut r, &[b, t, c], 2.0);
        // Row 0 keeps a random-length prefix; the last row of a batch > 2 is fully masked.
        let mask_data: Vec<u32> = (0..b * t)
            .map(|j| {
                let (row, pos) = (j / t, j % t);
                u32::from(!(b > 2 && row == b - 1) && pos < 1 + (row * 31 + t / 2) % t)
            })
            .collect();
        let mask = HostTensor::new(&[b, t], mask_data).expect("mask");
        let mut cpu = nan_host(&[b, c]);
        reference::mean_pool(&x, &mask, &mut cpu).expect("cpu");
        let gy = nan_filled(ctx, &[b, c], "y");
        let mut rec = Recorder::new(ctx);
        kernels::mean_pool(
            &mut rec,
            &upload(ctx, &x, "x"),
            &upload_u32(ctx, &mask, "mask"),
            &gy,
        )
        .expect("record");
        rec.submit_blocking().expect("submit");
        assert_close(
            &format!("mean_pool b={b} t={t} c={c}"),
            &read_f32(ctx, &gy),
            &cpu.data,
            1e-6,
            1e-5,
        );
    }
}

/// A small chain recorded into one submission: what a model forward does.
#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn kernels_chain_in_one_submission() {
    let ctx = ctx();
    let mut r = rng(1000);
    let (m, k, n) = (9, 32, 48);
    let x = random_host(&mut r, &[m, k], 1.0);
    let w = random_host(&mut r, &[n, k], 0.3);
    let bias = random_host(&mut r, &[n], 0.1);
    let gamma = random_host(&mut r, &[n], 1.0);
    let beta = random_host(&mut r, &[n], 0.1);
    let mut h = nan_host(&[m, n]);
    reference::matmul(&x, &w, &mut h, Epilogue::none().bias(&bias).gelu()).expect("cpu");
    let mut ln = nan_host(&[m, n]);
    reference::layer_norm(&h, None, &gamma, &beta, 1e-5, &mut ln).expect("cpu");
    let mut out = nan_host(&[m, n]);
    reference::softmax(&ln, &mut out).expect("cpu");

    let (gh, gln, gout) = (
        nan_filled(ctx, &[m, n], "h"),
        nan_filled(ctx, &[m, n], "ln"),
        nan_filled(ctx, &[m, n], "out"),
    );
    let gbias = upload(ctx, &bias, "bias");
    let mut rec = Recorder::new(ctx);
    kernels::matmul(
        &mut rec,
        &upload(ctx, &x, "x"),
        &upload(ctx, &w, "w"),
        &gh,
        Epilogue::none().bias(&gbias).gelu(),
    )
    .expect("matmul");
    kernels::layer_norm(
        &mut rec,
        &gh,
        None,
        &upload(ctx, &gamma, "gamma"),
        &upload(ctx, &beta, "beta"),
        1e-5,
        &gln,
    )
    .expect("ln");
    kernels::softmax(&mut rec, &gln, &gout).expect("softmax");
    rec.submit_blocking().expect("submit");
    assert_close(
        "matmul -> layer_norm -> softmax",
        &read_f32(ctx, &gout),
        &out.data,
        1e-6,
        1e-5,
    );
}

#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn conv2d_matches_twin() {
    use backbone::kernels::{ConvGeometry, ConvInput};
    let ctx = ctx();
    // (batch, cin, h, w, cout, (kh, kw), stride, pad, token-major): the CSWin stem and merge
    // geometries on awkward sizes, realistic ones, then stride 1 without padding, non-square
    // kernels (the API takes [Cout, Cin, KH, KW]; stride and padding are the same along both
    // axes), a 1x1 kernel, a stride past the kernel, and a reduction of several K steps.
    let cases = [
        (1, 3, 7, 7, 1, (7, 7), 4, 2, false),
        (2, 3, 17, 23, 7, (7, 7), 4, 2, false),
        (1, 5, 7, 9, 65, (3, 3), 2, 1, true),
        (2, 63, 5, 4, 127, (3, 3), 2, 1, true),
        (1, 3, 64, 64, 64, (7, 7), 4, 2, false),
        (1, 64, 28, 28, 128, (3, 3), 2, 1, true),
        (1, 4, 9, 11, 5, (3, 5), 1, 0, false),
        (2, 3, 8, 8, 66, (1, 7), 1, 0, true),
        (1, 7, 10, 6, 9, (5, 2), 1, 1, false),
        (2, 16, 5, 5, 70, (1, 1), 1, 0, true),
        (1, 3, 13, 17, 8, (2, 3), 3, 2, false),
        (1, 65, 7, 7, 3, (3, 3), 1, 0, true),
        (1, 2, 4, 9, 4, (4, 1), 1, 0, false),
    ];
    for (i, (b, cin, h, w, cout, (kh, kw), stride, pad, tokens)) in cases.into_iter().enumerate() {
        let mut r = rng(1300 + i as u64);
        let (layout, x_shape) = if tokens {
            (ConvInput::Tokens { h, w }, vec![b, h * w, cin])
        } else {
            (ConvInput::Nchw, vec![b, cin, h, w])
        };
        let x = random_host(&mut r, &x_shape, 1.0);
        let weight = random_host(&mut r, &[cout, cin, kh, kw], 0.3);
        let bias = random_host(&mut r, &[cout], 0.5);
        let g = ConvGeometry::new(&x_shape, layout, &weight.shape, stride, pad).expect("geometry");
        let mut cpu = nan_host(&g.output_shape());
        reference::conv2d(&x, layout, &weight, &bias, stride, pad, &mut cpu).expect("cpu");
        let y = nan_filled(ctx, &g.output_shape(), "y");
        let mut rec = Recorder::new(ctx);
        let (gx, gw, gb) = (
            upload(ctx, &x, "x"),
            upload(ctx, &weight, "w"),
            upload(ctx, &bias, "b"),
        );
        kernels::conv2d(&mut rec, &gx, layout, &gw, &gb, stride, pad, &y).expect("record");
        rec.submit_blocking().expect("submit");
        let what = format!(
            "conv2d {x_shape:?} {layout:?} -> {:?} k{kh}x{kw} s{stride} p{pad}",
            g.output_shape()
        );
        assert_close(&what, &read_f32(ctx, &y), &cpu.data, 2e-5, 1e-5);
    }
}
