//! The fused "linear, add & norm" kernel against its twin (the matmul and LayerNorm twins
//! composed): below one workgroup's 16 rows, off every tile multiple (rows, 256-column chunks,
//! 4-column blocks, 8-deep K steps), and one BERT-base layer's shape, f32 and f16 storage, outputs prefilled
//! with NaN, each bound derived from the float error of the sums the norm divides.

mod common;

use backbone::kernels;
use backbone::reference::{self, HostTensor};
use backbone::{DType, Recorder};
use common::*;

/// Per-element bound: the rounding of a K-term sum (unit roundoff `u` per term, in the
/// worst case of the terms' magnitudes), plus the rounding of the stored sum (`store`, the
/// storage type's unit roundoff), carried through the normalisation (|gamma| / std of the
/// row), plus the output's own rounding.
fn bounds(
    x: &HostTensor,
    w: &HostTensor,
    residual: &HostTensor,
    gamma: &HostTensor,
    want: &HostTensor,
    sums: &HostTensor,
    store: f32,
) -> Vec<f32> {
    let (k, n) = (w.shape[1], w.shape[0]);
    let m = residual.data.len() / n;
    let u = f32::EPSILON / 2.0;
    let mut out = Vec::with_capacity(m * n);
    for r in 0..m {
        let row = &sums.data[r * n..(r + 1) * n];
        let mean = row.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
        let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n as f64;
        let inv_std = (1.0 / (var + 1e-12).sqrt()) as f32;
        for (c, s) in row.iter().enumerate() {
            let magnitude: f32 = (0..k)
                .map(|i| (x.data[r * k + i] * w.data[c * k + i]).abs())
                .sum::<f32>()
                + residual.data[r * n + c].abs();
            let sum_err =
                4.0 * u * (k as f32).sqrt() * magnitude + store * (s.abs() + mean.abs() as f32);
            let y = want.data[r * n + c].abs();
            out.push(4.0 * sum_err * inv_std * gamma.data[c].abs() + 2.0 * store * y + 1e-6);
        }
    }
    out
}

fn check(m: usize, n: usize, k: usize, bias: bool, dtype: DType) {
    let ctx = ctx();
    let mut r = rng((m * 131 + n * 7 + k) as u64 + bias as u64);
    let x = random_host(&mut r, &[m, k], 1.0).round_to(dtype);
    let w = random_host(&mut r, &[n, k], 0.5).round_to(dtype);
    let b = random_host(&mut r, &[n], 0.5);
    let residual = random_host(&mut r, &[m, n], 2.0).round_to(dtype);
    let gamma = random_host(&mut r, &[n], 1.5);
    let beta = random_host(&mut r, &[n], 0.2);
    let bias_host = bias.then_some(&b);
    let mut want = nan_host(&[m, n]);
    reference::matmul_layer_norm(
        &x, &w, bias_host, &residual, &gamma, &beta, 1e-12, &mut want,
    )
    .expect("twin");
    let mut sums = nan_host(&[m, n]);
    let mut ep = kernels::Epilogue::none().residual(&residual);
    if let Some(b) = bias_host {
        ep = ep.bias(b);
    }
    reference::matmul(&x, &w, &mut sums, ep).expect("sums");

    let store = if dtype == DType::F16 {
        2f32.powi(-11)
    } else {
        0.0
    };
    let up = |t: &HostTensor, label| {
        backbone::models::weights::upload_as(ctx, label, t, dtype).expect("upload")
    };
    let (gx, gw, gres) = (up(&x, "x"), up(&w, "w"), up(&residual, "residual"));
    let (gb, gg, gbeta) = (
        upload(ctx, &b, "bias"),
        upload(ctx, &gamma, "gamma"),
        upload(ctx, &beta, "beta"),
    );
    let nan = HostTensor::new(&[m, n], vec![f32::NAN; m * n]).expect("nan");
    let gy = up(&nan, "y");
    let mut rec = Recorder::new(ctx);
    let gbias = bias.then_some(&gb);
    kernels::matmul_layer_norm(&mut rec, &gx, &gw, gbias, &gres, &gg, &gbeta, 1e-12, &gy)
        .expect("record");
    rec.submit_blocking().expect("submit");
    let got = pollster::block_on(gy.read_host(ctx)).expect("read").data;
    let bound = bounds(&x, &w, &residual, &gamma, &want, &sums, store);
    let what = format!("matmul_layer_norm m={m} n={n} k={k} bias={bias} {dtype:?}");
    // NaN (an element never written) is out of bounds too.
    let out = |i: &usize| {
        let err = (got[*i] - want.data[*i]).abs();
        err.is_nan() || err > bound[*i]
    };
    if let Some(i) = (0..got.len()).find(out) {
        let bad = (0..got.len()).filter(out).count();
        panic!(
            "{what}: {bad} of {} values out of bounds; first at index {i} (row {}, col {}): \
             gpu {} vs cpu {} (bound {})",
            got.len(),
            i / n,
            i % n,
            got[i],
            want.data[i],
            bound[i]
        );
    }
}

#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn matmul_layer_norm_matches_twin() {
    for (m, n, k) in [
        (3, 5, 7),
        (1, 1, 1),
        (17, 300, 19),
        (33, 513, 8),
        (128, 768, 768),
    ] {
        for bias in [true, false] {
            check(m, n, k, bias, DType::F32);
        }
    }
}

#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn matmul_layer_norm_f16_matches_twin() {
    if !ctx().capabilities().shader_f16() {
        eprintln!("no SHADER_F16 here: the f16 storage is refused (tested in kernels_f16)");
        return;
    }
    for (m, n, k) in [(3, 5, 7), (17, 258, 19), (64, 384, 1536)] {
        check(m, n, k, true, DType::F16);
    }
}

#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn matmul_layer_norm_refuses_bad_shapes() {
    let ctx = ctx();
    let t = |shape: &[usize]| empty(ctx, shape, "t");
    let (x, w, v, y) = (t(&[4, 8]), t(&[6, 8]), t(&[6]), t(&[4, 6]));
    let mut rec = Recorder::new(ctx);
    let bad_w = t(&[6, 9]);
    let err = kernels::matmul_layer_norm(&mut rec, &x, &bad_w, None, &y, &v, &v, 1e-5, &t(&[4, 6]))
        .expect_err("K differs");
    assert!(err.to_string().contains("w"), "{err}");
    let err = kernels::matmul_layer_norm(&mut rec, &x, &w, None, &t(&[4, 5]), &v, &v, 1e-5, &y)
        .expect_err("residual shape");
    assert!(err.to_string().contains("residual"), "{err}");
    let err = kernels::matmul_layer_norm(&mut rec, &x, &w, None, &y, &v, &v, 0.0, &t(&[4, 6]))
        .expect_err("eps");
    assert!(err.to_string().contains("eps"), "{err}");
    let err = kernels::matmul_layer_norm(&mut rec, &x, &w, None, &y, &v, &v, 1e-5, &y)
        .expect_err("in place");
    assert!(err.to_string().contains("in-place"), "{err}");
}
