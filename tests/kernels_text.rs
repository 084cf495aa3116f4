//! ModernBERT's elementwise kernels against their CPU twins: `rotary` (RoPE on the query and
//! key heads of a fused QKV, values copied) and `geglu`, in f32 and f16 storage, below one
//! workgroup, off the multiple and at a realistic size, outputs prefilled with NaN.

mod common;

use backbone::kernels;
use backbone::reference::{self, HostTensor};
use backbone::{DType, Recorder, Tensor};
use common::*;

fn dtypes() -> Vec<DType> {
    let mut out = vec![DType::F32];
    if ctx().capabilities().has(wgpu::Features::SHADER_F16) {
        out.push(DType::F16);
    }
    out
}

fn upload_as(t: &HostTensor, dtype: DType) -> Tensor {
    backbone::models::weights::upload_as(ctx(), "x", t, dtype).expect("upload")
}

fn nan_output(shape: &[usize], dtype: DType) -> Tensor {
    match dtype {
        DType::F16 => {
            let n = shape.iter().product();
            Tensor::from_f16(ctx(), shape, &vec![half::f16::NAN; n], "y").expect("nan f16")
        }
        _ => nan_filled(ctx(), shape, "y"),
    }
}

#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn rotary_matches_twin() {
    let ctx = ctx();
    for (i, &(b, t, heads, d)) in [(2, 5, 2, 8), (3, 37, 4, 16), (1, 128, 12, 64)]
        .iter()
        .enumerate()
    {
        let c = heads * d;
        let table = reference::rotary_table(160_000.0, t, d);
        for dtype in dtypes() {
            let mut r = rng(600 + i as u64);
            let qkv = random_host(&mut r, &[b, t, 3 * c], 1.0).round_to(dtype);
            let mut cpu = nan_host(&[b, t, 3 * c]);
            reference::rotary(&qkv, &table, d, &mut cpu).expect("twin");
            let gy = nan_output(&[b, t, 3 * c], dtype);
            let mut rec = Recorder::new(ctx);
            let gt = upload(ctx, &table, "table");
            kernels::rotary(&mut rec, &upload_as(&qkv, dtype), &gt, d, &gy).expect("record");
            rec.submit_blocking().expect("submit");
            let rtol = if dtype == DType::F16 { 1e-3 } else { 1e-6 };
            let what = format!("rotary {dtype:?} b={b} t={t} heads={heads} d={d}");
            assert_close(&what, &read_f32(ctx, &gy), &cpu.data, 1e-6, rtol);
        }
    }
    // Position 0 is the identity; the table is [2, T, D/2].
    let table = reference::rotary_table(10_000.0, 3, 4);
    assert_eq!(&table.data[..2], &[1.0, 1.0]);
    assert_eq!(&table.data[6..8], &[0.0, 0.0]);
}

#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn geglu_matches_twin() {
    let ctx = ctx();
    for (s, shape) in [vec![1, 7], vec![37, 64], vec![2, 128, 1152]]
        .into_iter()
        .enumerate()
    {
        let mut x_shape = shape.clone();
        *x_shape.last_mut().expect("rank") *= 2;
        for dtype in dtypes() {
            let mut r = rng(650 + s as u64);
            let x = random_host(&mut r, &x_shape, 3.0).round_to(dtype);
            let mut cpu = nan_host(&shape);
            reference::geglu(&x, &mut cpu).expect("twin");
            let gy = nan_output(&shape, dtype);
            let mut rec = Recorder::new(ctx);
            kernels::geglu(&mut rec, &upload_as(&x, dtype), &gy).expect("record");
            rec.submit_blocking().expect("submit");
            let rtol = if dtype == DType::F16 { 1e-3 } else { 1e-5 };
            let what = format!("geglu {dtype:?} {shape:?}");
            assert_close(&what, &read_f32(ctx, &gy), &cpu.data, 1e-6, rtol);
        }
    }
    let err = reference::geglu(&HostTensor::zeros(&[2, 6]), &mut HostTensor::zeros(&[2, 4]))
        .expect_err("shape");
    assert!(err.to_string().contains("geglu"), "{err}");
}
