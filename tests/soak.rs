//! Long runs and sharing: a memory soak (short here; `backbone-bench soak` runs 10,000
//! forwards per device), models shared by threads giving the serial results, the library
//! types `Send + Sync`, and a lost device reported as an error rather than a panic.

mod common;

use backbone::bench::soak::{self, SoakDevice, SoakReport};
use backbone::models::cswin::{self, Cswin};
use backbone::models::text::{self, Encoder, TextInput};
use backbone::reference::HostTensor;
use backbone::{Context, Tensor};
use common::{ctx, fixture};

/// Forwards per device here (`BACKBONE_SOAK_FORWARDS` overrides; the bench runs 10,000).
fn forwards(default: usize) -> usize {
    std::env::var("BACKBONE_SOAK_FORWARDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn check(report: &SoakReport) {
    eprintln!("{}", report.summary());
    assert!(report.is_flat(), "memory or GPU objects grew: {report:?}");
    assert!(report.cached_plans <= backbone::models::MAX_IDLE_PLANS);
}

#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn gpu_soak_keeps_memory_and_buffers_flat() {
    let n = forwards(1000);
    let report = soak::soak(Some(ctx()), SoakDevice::Gpu, n, n / 5).expect("gpu soak");
    check(&report);
    assert!(
        report.buffers_max_after > 0,
        "the buffer counter is not live"
    );
}

#[test]
fn cpu_soak_keeps_memory_flat() {
    let n = forwards(2000);
    check(&soak::soak(None, SoakDevice::Cpu, n, n / 5).expect("cpu soak"));
}

#[test]
fn library_types_are_send_and_sync() {
    fn shared<T: Send + Sync>() {}
    shared::<Context>();
    shared::<Tensor>();
    shared::<Encoder>();
    shared::<Cswin>();
    shared::<HostTensor>();
    shared::<backbone::models::tokenizer::TextTokenizer>();
    shared::<backbone::Error>();
}

fn micro_inputs() -> Vec<TextInput> {
    [(1, 7), (2, 7), (3, 20), (2, 7)]
        .iter()
        .enumerate()
        .map(|(k, &(batch, seq))| {
            let n = batch * seq;
            let ids = (0..n)
                .map(|i| ((i * 31 + k * 7 + 101) % 1000) as u32)
                .collect();
            let mask = (0..n).map(|i| u32::from(i % seq <= seq - 1 - k)).collect();
            TextInput::new(batch, seq, ids, Some(mask), None).expect("input")
        })
        .collect()
}

#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn concurrent_bert_forwards_match_serial_ones() {
    let ctx = ctx();
    let (config, weights) = text::load_dir(&fixture("bert-micro-12l-random")).expect("load");
    let model = Encoder::new(ctx, config, &weights).expect("upload");
    let inputs = micro_inputs();
    let serial: Vec<HostTensor> = inputs
        .iter()
        .map(|x| {
            model
                .forward_blocking(ctx, x, false)
                .expect("serial")
                .last_hidden_state
        })
        .collect();
    // Four threads, each cycling over every input (two share a shape) with its own offset, so
    // forwards of the same shape run at the same time.
    std::thread::scope(|s| {
        for t in 0..4 {
            let (model, inputs, serial) = (&model, &inputs, &serial);
            s.spawn(move || {
                for r in 0..12 {
                    let k = (t + r) % inputs.len();
                    let out = model
                        .forward_blocking(ctx, &inputs[k], false)
                        .expect("forward");
                    assert!(
                        out.last_hidden_state == serial[k],
                        "thread {t}, run {r}: input {k} differs from the serial forward"
                    );
                }
            });
        }
    });
    assert!(model.cached_plans() <= backbone::models::MAX_IDLE_PLANS);
}

#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn concurrent_cswin_forwards_match_serial_ones() {
    let ctx = ctx();
    let (config, weights) = cswin::load_dir(&fixture("cswin-micro-s3full")).expect("load");
    let model = Cswin::new(ctx, config, &weights).expect("upload");
    let images: Vec<HostTensor> = [37usize, 64]
        .iter()
        .map(|&side| {
            let n = 3 * side * side;
            let data = (0..n)
                .map(|i| ((i * 13 % 101) as f32 - 50.0) / 40.0)
                .collect();
            HostTensor::new(&[1, 3, side, side], data).expect("pixels")
        })
        .collect();
    let serial: Vec<HostTensor> = images
        .iter()
        .map(|x| {
            model
                .forward_blocking(ctx, x, false)
                .expect("serial")
                .logits
                .expect("classifier logits")
        })
        .collect();
    std::thread::scope(|s| {
        for t in 0..3 {
            let (model, images, serial) = (&model, &images, &serial);
            s.spawn(move || {
                for r in 0..3 {
                    let k = (t + r) % images.len();
                    let out = model
                        .forward_blocking(ctx, &images[k], false)
                        .expect("forward");
                    assert!(
                        out.logits.as_ref() == Some(&serial[k]),
                        "thread {t}, run {r}: image {k} differs"
                    );
                }
            });
        }
    });
}

#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn a_lost_device_is_an_error_not_a_panic() {
    // A context of its own: destroying the device loses it for good.
    let ctx = Context::from_env_blocking().expect("context");
    let (config, weights) = text::load_dir(&fixture("bert-micro-12l-random")).expect("load");
    let model = Encoder::new(&ctx, config, &weights).expect("upload");
    let input = &micro_inputs()[0];
    model
        .forward_blocking(&ctx, input, false)
        .expect("forward before the loss");
    ctx.device().destroy();
    let err = model
        .forward_blocking(&ctx, input, false)
        .expect_err("a forward on a destroyed device must fail");
    eprintln!("forward after device loss: {err}");
    let err = Tensor::from_f32(&ctx, &[4], &[1.0; 4], "after-loss")
        .and_then(|t| t.read_f32_blocking(&ctx))
        .expect_err("a read-back on a destroyed device must fail");
    eprintln!("read-back after device loss: {err}");
}
