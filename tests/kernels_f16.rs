//! f16 storage variants against the CPU twins. The twin of an f16 run is the same twin on
//! inputs rounded to f16 (what the GPU reads), so the comparison checks the kernel's f32
//! accumulation over exactly the same values. Outputs start as NaN.

mod common;

use backbone::kernels::{self, Activation, Epilogue, MatmulTile, StridedMatmul, WLayout};
use backbone::reference::{self, HostTensor};
use backbone::{Context, DType, Recorder, Tensor};
use common::*;

/// `t` with every value rounded to the nearest f16 (round to nearest even, as the GPU's
/// conversion of the uploaded halves).
fn round_f16(t: &HostTensor) -> HostTensor {
    let data = t
        .data
        .iter()
        .map(|&v| half::f16::from_f32(v).to_f32())
        .collect();
    HostTensor::new(&t.shape, data).expect("rounded")
}

fn upload_as(ctx: &Context, t: &HostTensor, f16: bool, label: &str) -> Tensor {
    if f16 {
        let halves: Vec<half::f16> = t.data.iter().map(|&v| half::f16::from_f32(v)).collect();
        Tensor::from_f16(ctx, &t.shape, &halves, label).expect("upload f16")
    } else {
        upload(ctx, t, label)
    }
}

fn f16_ctx() -> Option<&'static Context> {
    let ctx = ctx();
    if ctx.capabilities().has(wgpu::Features::SHADER_F16) {
        Some(ctx)
    } else {
        eprintln!(
            "SKIPPED: {} has no SHADER_F16",
            ctx.capabilities().adapter.name
        );
        None
    }
}

/// One f16-storage matmul (X, W or both f16) against the twin on the rounded inputs.
#[allow(clippy::too_many_arguments)]
fn check(
    ctx: &Context,
    (m, n, k): (usize, usize, usize),
    layout: WLayout,
    f16: (bool, bool),
    epilogue: bool,
    tile: MatmulTile,
    seed: u64,
) {
    let mut r = rng(seed);
    let x = random_host(&mut r, &[m, k], 1.0);
    let w_shape = match layout {
        WLayout::NK => [n, k],
        WLayout::KN => [k, n],
    };
    let w = random_host(&mut r, &w_shape, 0.5);
    let bias = random_host(&mut r, &[n], 1.0);
    let residual = random_host(&mut r, &[m, n], 1.0);
    let (xr, wr) = (
        if f16.0 { round_f16(&x) } else { x.clone() },
        if f16.1 { round_f16(&w) } else { w.clone() },
    );
    let mut p = StridedMatmul::contiguous(1, m, n, k, true);
    p.w_layout = layout;
    if layout == WLayout::KN {
        p.w.ld = n;
    }
    let host_ep = if epilogue {
        Epilogue {
            act: Activation::Gelu,
            ..Epilogue::none().bias(&bias).residual(&residual)
        }
    } else {
        Epilogue::none()
    };
    let mut cpu = nan_host(&[m, n]);
    reference::matmul_strided(&xr, &wr, &mut cpu, host_ep, &p).expect("twin");

    let (gx, gw) = (
        upload_as(ctx, &x, f16.0, "x"),
        upload_as(ctx, &w, f16.1, "w"),
    );
    let (gb, gres) = (
        upload(ctx, &bias, "bias"),
        upload(ctx, &residual, "residual"),
    );
    let gy = nan_filled(ctx, &[m, n], "y");
    let gep = if epilogue {
        Epilogue {
            act: Activation::Gelu,
            ..Epilogue::none().bias(&gb).residual(&gres)
        }
    } else {
        Epilogue::none()
    };
    let mut rec = Recorder::new(ctx);
    kernels::matmul::matmul_with_tile(&mut rec, &gx, &gw, &gy, gep, &p, tile).expect("record");
    rec.submit_blocking().expect("submit");
    let what = format!(
        "f16 matmul x16={} w16={} {tile:?} m={m} n={n} k={k} {layout:?} epilogue={epilogue}",
        f16.0, f16.1
    );
    // Same inputs on both sides: only the f32 accumulation order differs, as in the f32 tests.
    let tol = (2e-6 * (k as f32).sqrt()).max(1e-5);
    assert_close(&what, &read_f32(ctx, &gy), &cpu.data, tol, 1e-5);
}

#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn matmul_f16_storage_matches_twin() {
    let Some(ctx) = f16_ctx() else { return };
    // Below one tile, off the multiples (scalar loads: K % 4 != 0), vector loads (K % 4 == 0),
    // and a BERT-base projection.
    let shapes = [(1, 7, 5), (65, 127, 63), (33, 68, 132), (128, 768, 768)];
    let mut seed = 900;
    for (i, &shape) in shapes.iter().enumerate() {
        for f16 in [(true, false), (false, true), (true, true)] {
            for tile in MatmulTile::ALL {
                let layout = if i % 2 == 0 { WLayout::NK } else { WLayout::KN };
                seed += 1;
                check(ctx, shape, layout, f16, i != 0, tile, seed);
            }
        }
    }
}

#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn matmul_f16_storage_dtype_rules() {
    let ctx = ctx();
    let x = Tensor::from_f16(ctx, &[2, 4], &[half::f16::ONE; 8], "x16").expect("x");
    let w = upload(
        ctx,
        &HostTensor::new(&[3, 4], vec![0.5; 12]).expect("w"),
        "w",
    );
    let y16 = Tensor::empty(ctx, &[2, 3], DType::F16, "y16").expect("y16");
    let mut rec = Recorder::new(ctx);
    // The output stays f32.
    let err = kernels::matmul(&mut rec, &x, &w, &y16, Epilogue::none()).expect_err("f16 y");
    assert!(err.to_string().contains("`y`"), "{err}");
    // u32 is no storage type for a product.
    let wu = Tensor::from_u32(ctx, &[3, 4], &[1; 12], "wu").expect("wu");
    let y = nan_filled(ctx, &[2, 3], "y");
    let err = kernels::matmul(&mut rec, &x, &wu, &y, Epilogue::none()).expect_err("u32 w");
    assert!(err.to_string().contains("`w`"), "{err}");
    if ctx.capabilities().has(wgpu::Features::SHADER_F16) {
        kernels::matmul(&mut rec, &x, &w, &y, Epilogue::none()).expect("f16 x, f32 w");
        rec.submit_blocking().expect("submit");
        assert_close("ones x halves", &read_f32(ctx, &y), &[2.0; 6], 0.0, 0.0);
    }
}
