//! The context: capabilities, the pipeline cache, timed recording.

mod common;

use backbone::kernels::{self, Epilogue};
use backbone::{Context, Recorder};
use common::*;

#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn pipelines_are_compiled_once_per_specialisation() {
    // A context of its own, so other tests' pipelines do not count.
    let ctx = Context::from_env_blocking().expect("context");
    let mut r = rng(1);
    let x = upload(&ctx, &random_host(&mut r, &[5, 8], 1.0), "x");
    let w = upload(&ctx, &random_host(&mut r, &[3, 8], 1.0), "w");
    let y = empty(&ctx, &[5, 3], "y");
    let run = |ep: Epilogue<'_>| {
        let mut rec = Recorder::new(&ctx);
        kernels::matmul(&mut rec, &x, &w, &y, ep).expect("record");
        kernels::gelu(&mut rec, &y, &y.clone()).expect_err("y cannot be read and written at once");
        rec.submit_blocking().expect("submit");
    };
    // The known-answer checks at context creation compiled their own kernels already.
    let base = ctx.pipelines_compiled();
    run(Epilogue::none());
    run(Epilogue::none());
    assert_eq!(
        ctx.pipelines_compiled(),
        base + 1,
        "same kernel and specialisation: one pipeline"
    );
    run(Epilogue::none().gelu());
    assert_eq!(
        ctx.pipelines_compiled(),
        base + 2,
        "a new epilogue is a new specialisation"
    );
}

#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn capabilities_name_the_adapter() {
    let ctx = ctx();
    let caps = ctx.capabilities();
    let shown = caps.to_string();
    assert!(shown.contains(&caps.adapter.name), "{shown}");
    assert!(caps.limits.max_storage_buffer_binding_size > 0);
}

#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn timed_recorder_reports_each_pass() {
    let ctx = ctx();
    let mut r = rng(2);
    let x = upload(ctx, &random_host(&mut r, &[64, 64], 1.0), "x");
    let y = empty(ctx, &[64, 64], "y");
    let z = empty(ctx, &[64, 64], "z");
    let mut rec = Recorder::with_timing(ctx, 8);
    kernels::matmul(&mut rec, &x, &x, &y, Epilogue::none()).expect("matmul");
    kernels::softmax(&mut rec, &y, &z).expect("softmax");
    let times = rec.submit_blocking().expect("submit");
    if ctx.capabilities().timestamps() {
        let labels: Vec<_> = times.iter().map(|t| t.label).collect();
        assert_eq!(labels, ["matmul", "softmax"]);
        assert!(
            times.iter().all(|t| t.ms.is_finite() && t.ms >= 0.0),
            "{times:?}"
        );
        assert!(
            times[0].ms > 0.0,
            "a 64^3 matmul takes measurable time: {times:?}"
        );
    } else {
        assert!(times.is_empty());
    }
}

/// An application's own device handed to the library (`Context::from_device`): a model opened
/// on it through `Device::Context` gives the CPU path's embeddings, and the application's
/// device and queue go on working (the library set none of its callbacks).
#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn a_context_on_the_applications_own_device() {
    use backbone::encoder::{Device, EncoderOptions, TextEncoder};
    use backbone::{Context, ContextOptions};
    use std::sync::Arc;
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
        power_preference: wgpu::PowerPreference::HighPerformance,
        ..Default::default()
    }))
    .expect("an adapter");
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("the app's device"),
        required_limits: adapter.limits(),
        ..Default::default()
    }))
    .expect("the app's device");
    let ctx = Context::from_device_blocking(
        &adapter,
        device.clone(),
        queue.clone(),
        &ContextOptions::default(),
    )
    .expect("from_device");
    assert_eq!(ctx.capabilities().adapter.name, adapter.get_info().name);
    assert!(
        !ctx.capabilities().shader_f16(),
        "the app did not enable f16"
    );
    let dir = fixture("text/st-mean-dense");
    let texts = sentence_list(&dir, "texts");
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let gpu = TextEncoder::open(
        &dir,
        &EncoderOptions::default().device(Device::Context(Arc::new(ctx))),
    )
    .expect("open on the app's device")
    .encode_blocking(&texts, None, None)
    .expect("encode");
    let cpu = TextEncoder::open(&dir, &EncoderOptions::default().device(Device::Cpu))
        .expect("open on the CPU path")
        .encode_blocking(&texts, None, None)
        .expect("encode");
    assert_close(
        "embeddings on the app's device",
        &gpu.data,
        &cpu.data,
        1e-5,
        0.0,
    );
    let buffer = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("the app's buffer"),
        size: 64,
        usage: wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    queue.write_buffer(&buffer, 0, &[1u8; 64]);
    queue.submit([]);
    device
        .poll(wgpu::PollType::wait_indefinitely())
        .expect("the app's device still works");
}
