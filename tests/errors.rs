//! Bad input comes back as a typed error naming the argument, never a panic or a GPU fault.

mod common;

use backbone::kernels::{self, Epilogue};
use backbone::{Context, ContextOptions, DType, Error, Recorder, Tensor};
use common::*;

fn tensor(ctx: &Context, shape: &[usize], label: &str) -> Tensor {
    Tensor::empty(ctx, shape, DType::F32, label).expect("allocate")
}

#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn matmul_shape_mismatch_names_the_argument() {
    let ctx = ctx();
    let (x, w, y) = (
        tensor(ctx, &[4, 8], "x"),
        tensor(ctx, &[5, 9], "w"),
        tensor(ctx, &[4, 5], "y"),
    );
    let mut rec = Recorder::new(ctx);
    let err = kernels::matmul(&mut rec, &x, &w, &y, Epilogue::none()).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Shape {
                op: "matmul",
                arg: "w",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("[5, 9]"), "{err}");

    let w = tensor(ctx, &[5, 8], "w");
    let bad_y = tensor(ctx, &[4, 6], "y");
    let err = kernels::matmul(&mut rec, &x, &w, &bad_y, Epilogue::none()).unwrap_err();
    assert!(matches!(err, Error::Shape { arg: "y", .. }), "{err}");

    let bias = tensor(ctx, &[4], "bias");
    let err = kernels::matmul(&mut rec, &x, &w, &y, Epilogue::none().bias(&bias)).unwrap_err();
    assert!(matches!(err, Error::Shape { arg: "bias", .. }), "{err}");
}

#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn strided_matmul_view_past_the_end_is_rejected() {
    let ctx = ctx();
    let (x, w, y) = (
        tensor(ctx, &[4, 8], "x"),
        tensor(ctx, &[5, 8], "w"),
        tensor(ctx, &[4, 5], "y"),
    );
    let mut p = kernels::StridedMatmul::contiguous(1, 4, 5, 8, true);
    p.x.offset = 1; // the last row would end one element past x
    let mut rec = Recorder::new(ctx);
    let err = kernels::matmul_strided(&mut rec, &x, &w, &y, Epilogue::none(), &p).unwrap_err();
    assert!(matches!(err, Error::Shape { arg: "x", .. }), "{err}");
}

#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn wrong_dtype_is_rejected() {
    let ctx = ctx();
    let ids = Tensor::from_u32(ctx, &[2, 3], &[0; 6], "ids").expect("upload");
    let y = tensor(ctx, &[2, 3], "y");
    let mut rec = Recorder::new(ctx);
    let err = kernels::gelu(&mut rec, &ids, &y).unwrap_err();
    assert!(
        matches!(
            err,
            Error::DType {
                op: "gelu",
                arg: "x",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn layer_norm_bad_gamma_and_eps() {
    let ctx = ctx();
    let x = tensor(ctx, &[3, 16], "x");
    let (good, bad) = (tensor(ctx, &[16], "gamma"), tensor(ctx, &[15], "gamma"));
    let mut rec = Recorder::new(ctx);
    let err = kernels::layer_norm(&mut rec, &x, None, &bad, &good, 1e-5, &x.clone()).unwrap_err();
    assert!(matches!(err, Error::Shape { arg: "gamma", .. }), "{err}");
    let err = kernels::layer_norm(&mut rec, &x, None, &good, &good, -1.0, &x.clone()).unwrap_err();
    assert!(matches!(err, Error::Argument { arg: "eps", .. }), "{err}");
}

#[test]
fn token_id_past_the_vocabulary_is_an_error() {
    let err = kernels::check_ids("input_ids", &[1, 2, 30522], 30522).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("input_ids") && msg.contains("30522") && msg.contains("position 2"),
        "{msg}"
    );
}

#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn upload_with_wrong_length_is_an_error() {
    let ctx = ctx();
    let err = Tensor::from_f32(ctx, &[2, 3], &[0.0; 5], "weights").unwrap_err();
    assert!(
        matches!(
            err,
            Error::DataLength {
                expected: 6,
                found: 5,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("weights"), "{err}");
}

/// A tensor bigger than the adapter's storage-binding limit is refused up front. The limit
/// is capped to 1 MiB here so the test needs no huge allocation.
#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn tensor_over_the_binding_limit_is_an_error() {
    let mut options = ContextOptions::from_env().expect("options");
    options.limit_cap = Some(wgpu::Limits {
        max_storage_buffer_binding_size: 1 << 20,
        ..Default::default()
    });
    let ctx = pollster::block_on(Context::new(options)).expect("capped context");
    assert_eq!(ctx.limits().max_storage_buffer_binding_size, 1 << 20);
    let err = Tensor::empty(&ctx, &[1024, 257], DType::F32, "big").unwrap_err();
    match &err {
        Error::Limit {
            limit_name,
            requested,
            limit,
            ..
        } => {
            assert_eq!(*limit_name, "max_storage_buffer_binding_size");
            assert_eq!((*requested, *limit), (1024 * 257 * 4, 1 << 20));
        }
        other => panic!("expected a limit error, got {other}"),
    }
    assert!(err.to_string().contains("big"), "{err}");
    Tensor::empty(&ctx, &[1024, 256], DType::F32, "fits").expect("exactly at the limit");
}

#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn dispatch_over_the_workgroup_grid_limit_is_an_error() {
    let ctx = ctx();
    let batch = ctx.limits().max_compute_workgroups_per_dimension as usize + 1;
    let (x, w, y) = (
        tensor(ctx, &[batch, 1, 1], "x"),
        tensor(ctx, &[1, 1], "w"),
        tensor(ctx, &[batch, 1, 1], "y"),
    );
    let mut rec = Recorder::new(ctx);
    let err = kernels::matmul(&mut rec, &x, &w, &y, Epilogue::none()).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Limit {
                limit_name: "max_compute_workgroups_per_dimension",
                ..
            }
        ),
        "{err}"
    );
}

/// wgpu validation errors raised while recording come back from `submit` as `Error::Gpu`.
#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn wgpu_validation_error_is_returned_not_panicked() {
    let ctx = ctx();
    let mut rec = Recorder::new(ctx);
    // MAP_READ may only be combined with COPY_DST: wgpu reports a validation error.
    rec.encode_raw(|device, _| {
        let _invalid = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("invalid"),
            size: 16,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
    });
    let err = rec.submit_blocking().unwrap_err();
    assert!(matches!(err, Error::Gpu { .. }), "{err}");
    assert!(err.to_string().contains("invalid"), "{err}");
}

#[test]
fn bad_backend_and_missing_adapter() {
    let err = ContextOptions::from_values(Some("cuda"), None).unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidOption {
                name: "BACKBONE_BACKEND",
                ..
            }
        ),
        "{err}"
    );
    let options = ContextOptions::from_values(None, Some("no-such-gpu-anywhere")).expect("options");
    let err = match pollster::block_on(Context::new(options)) {
        Ok(_) => panic!("an adapter named no-such-gpu-anywhere exists?"),
        Err(e) => e,
    };
    let msg = err.to_string();
    assert!(
        msg.contains("no-such-gpu-anywhere") && msg.contains("mesa-vulkan-drivers"),
        "{msg}"
    );
}
