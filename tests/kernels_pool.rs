//! The `pool` kernel (sentence-transformers' poolings) against its CPU twin: every mode, f32
//! and f16 storage, masks with right and left padding, a prompt excluded from `keep`, a row
//! with nothing kept, outputs written into a column range of a wider NaN-prefilled output.

mod common;

use backbone::kernels::{self, PoolMode};
use backbone::reference::{self, HostTensor};
use backbone::{DType, Recorder};
use common::*;

/// (B, T, C) shapes: below one workgroup of outputs, off the multiple, a realistic one.
const SHAPES: [(usize, usize, usize); 3] = [(2, 3, 5), (4, 19, 70), (3, 128, 384)];

/// Attention mask and pooled tokens of row `r`: right padding, left padding, the first 3
/// tokens excluded as a prompt, and (last row of a batch of 4) no token kept at all.
fn masks(b: usize, t: usize) -> (HostTensor<u32>, HostTensor<u32>) {
    let mut mask = Vec::new();
    let mut keep = Vec::new();
    for r in 0..b {
        for i in 0..t {
            let (m, k) = match r {
                0 => (i < t - t / 3, i < t - t / 3),
                1 => (i >= t / 4, i >= t / 4),
                2 => (true, i >= 3.min(t - 1)),
                _ => (true, false),
            };
            mask.push(u32::from(m));
            keep.push(u32::from(k));
        }
    }
    (
        HostTensor::new(&[b, t], mask).expect("mask"),
        HostTensor::new(&[b, t], keep).expect("keep"),
    )
}

#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn pool_every_mode_matches_twin() {
    let ctx = ctx();
    let f16_ok = ctx.capabilities().has(wgpu::Features::SHADER_F16);
    for (s, &(b, t, c)) in SHAPES.iter().enumerate() {
        let mut r = rng(700 + s as u64);
        let (mask, keep) = masks(b, t);
        for dtype in [DType::F32, DType::F16] {
            if dtype == DType::F16 && !f16_ok {
                continue;
            }
            let x = random_host(&mut r, &[b, t, c], 2.0).round_to(dtype);
            let gx = backbone::models::weights::upload_as(ctx, "x", &x, dtype).expect("x");
            let (gm, gk) = (
                upload_u32(ctx, &mask, "mask"),
                upload_u32(ctx, &keep, "keep"),
            );
            for mode in PoolMode::ALL {
                // Columns [1, 1 + C) of a [B, C + 3] output: the rest stays NaN on both sides.
                let ldy = c + 3;
                let mut cpu = nan_host(&[b, ldy]);
                reference::pool(&x, &mask, &keep, mode, &mut cpu, 1).expect("twin");
                let gy = nan_filled(ctx, &[b, ldy], "y");
                let mut rec = Recorder::new(ctx);
                kernels::pool(&mut rec, &gx, &gm, &gk, mode, &gy, 1).expect("record");
                rec.submit_blocking().expect("submit");
                let got = read_f32(ctx, &gy);
                let what = format!("pool {} {dtype:?} b={b} t={t} c={c}", mode.name());
                for (i, (g, w)) in got.iter().zip(&cpu.data).enumerate() {
                    let col = i % ldy;
                    if col == 0 || col > c {
                        assert!(g.is_nan() && w.is_nan(), "{what}: column {col} written");
                    } else if w.is_infinite() {
                        assert_eq!(g, w, "{what}: index {i}");
                    }
                }
                let finite = |v: &[f32]| {
                    v.iter()
                        .map(|x| if x.is_finite() { *x } else { 0.0 })
                        .collect::<Vec<_>>()
                };
                assert_close(&what, &finite(&got), &finite(&cpu.data), 1e-5, 1e-5);
                if b == 4 {
                    // Nothing kept in the last row: max is -inf, lasttoken zeros, cls token 0.
                    let last = &cpu.data[3 * ldy + 1..3 * ldy + 1 + c];
                    match mode {
                        PoolMode::Max => assert!(last.iter().all(|v| *v == f32::NEG_INFINITY)),
                        PoolMode::LastToken => assert!(last.iter().all(|v| *v == 0.0)),
                        PoolMode::Cls => assert_eq!(last, &x.data[3 * t * c..3 * t * c + c]),
                        _ => {}
                    }
                }
            }
        }
    }
}

/// The twin follows sentence-transformers on a hand-worked case: weightedmean weights count
/// from the first real token (left padding), cls takes the first kept token.
#[test]
fn pool_twin_hand_worked() {
    let x = HostTensor::new(&[1, 4, 1], vec![10.0, 1.0, 2.0, 4.0]).expect("x");
    let mask = HostTensor::new(&[1, 4], vec![0, 1, 1, 1]).expect("mask");
    let keep = HostTensor::new(&[1, 4], vec![0, 0, 1, 1]).expect("keep");
    let run = |mode| {
        let mut y = HostTensor::zeros(&[1, 1]);
        reference::pool(&x, &mask, &keep, mode, &mut y, 0).expect("pool");
        y.data[0]
    };
    // weights (t + 1 - start) with start 1: tokens 2, 3 -> 2, 3.
    assert_eq!(run(PoolMode::WeightedMean), (2.0 * 2.0 + 3.0 * 4.0) / 5.0);
    assert_eq!(run(PoolMode::Cls), 2.0);
    assert_eq!(run(PoolMode::LastToken), 4.0);
    assert_eq!(run(PoolMode::Max), 4.0);
    assert_eq!(run(PoolMode::Mean), 3.0);
    assert!((run(PoolMode::MeanSqrtLen) - 6.0 / 2f32.sqrt()).abs() < 1e-6);
}
