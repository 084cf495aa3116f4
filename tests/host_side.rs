//! The host side of a forward: recorded once per plan and replayed with no new buffer or bind
//! group, giving the same answers as the CPU twin on new inputs of the same shape; one pass
//! per stretch of dispatches; and the known-answer checks that turn a broken kernel family off.

mod common;

use backbone::kernels::{self, Epilogue};
use backbone::models::cswin::{self, Cswin};
use backbone::models::text::{self, Encoder, TextInput};
use backbone::reference::HostTensor;
use backbone::{Context, ContextOptions, Family, Recorder, Timing};
use common::*;

fn ids(batch: usize, seq: usize, seed: u64, vocab: usize) -> TextInput {
    use rand::Rng;
    let mut r = rng(seed);
    let ids = (0..batch * seq)
        .map(|_| r.random_range(3..vocab as u32))
        .collect();
    TextInput::new(batch, seq, ids, None, None).expect("input")
}

/// A steady-state BERT forward creates no buffer and no bind group (its program, parameters,
/// bind groups and readback buffer were made by the first forward of that shape), leaves the
/// live GPU objects where they were, and still answers each new input as the CPU twin does.
#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn steady_state_bert_forward_creates_nothing() {
    // A context of its own: the counts are per context, and other tests run beside this one.
    let ctx = &Context::from_env_blocking().expect("context");
    let dir = fixture("bert-micro-12l-random");
    let (config, weights) = text::load_dir(&dir).expect("load");
    let model = Encoder::new(ctx, config.clone(), &weights).expect("upload");
    let vocab = config.vocab_size;
    model
        .forward_blocking(ctx, &ids(2, 9, 1, vocab), false)
        .expect("first forward");
    let before = ctx.resource_counts();
    for seed in 2..6 {
        let input = ids(2, 9, seed, vocab);
        let gpu = model.forward_blocking(ctx, &input, false).expect("forward");
        let cpu = text::forward_cpu(&config, &weights, &input, false).expect("cpu");
        assert_close(
            &format!("last_hidden_state (input {seed})"),
            &gpu.last_hidden_state.data,
            &cpu.last_hidden_state.data,
            1e-4,
            1e-4,
        );
        assert_close(
            &format!("sentence_embedding (input {seed})"),
            &gpu.sentence_embedding.data,
            &cpu.sentence_embedding.data,
            1e-5,
            1e-4,
        );
    }
    let after = ctx.resource_counts();
    eprintln!("before {before:?}\nafter  {after:?}");
    assert_eq!(
        after.buffers_created, before.buffers_created,
        "a steady-state forward created buffers"
    );
    assert_eq!(
        after.bind_groups_created, before.bind_groups_created,
        "a steady-state forward created bind groups"
    );
    assert_eq!(
        after.bind_groups, before.bind_groups,
        "live bind groups grew"
    );
    assert_eq!(after.buffers, before.buffers, "live buffers grew");
}

/// The same for CSWin, whose forward is 2-3 times as many dispatches.
#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn steady_state_cswin_forward_creates_nothing() {
    let ctx = &Context::from_env_blocking().expect("context");
    let (config, weights) = cswin::load_dir(&fixture("cswin-micro-224")).expect("load");
    let model = Cswin::new(ctx, config.clone(), &weights).expect("upload");
    let pixels = |seed| {
        let n = 3 * 64 * 64;
        HostTensor::new(&[1, 3, 64, 64], random(&mut rng(seed), n, 2.0)).expect("pixels")
    };
    model
        .forward_blocking(ctx, &pixels(1), false)
        .expect("first forward");
    let before = ctx.resource_counts();
    for seed in 2..4 {
        let input = pixels(seed);
        let gpu = model.forward_blocking(ctx, &input, false).expect("forward");
        let cpu = cswin::forward_cpu(&config, &weights, &input, false).expect("cpu");
        for (s, (g, c)) in gpu.stages.iter().zip(&cpu.stages).enumerate() {
            assert_close(
                &format!("stage {s} (input {seed})"),
                &g.data,
                &c.data,
                1e-4,
                1e-4,
            );
        }
    }
    let after = ctx.resource_counts();
    assert_eq!(after.buffers_created, before.buffers_created);
    assert_eq!(after.bind_groups_created, before.bind_groups_created);
    assert_eq!(after.bind_groups, before.bind_groups);
}

/// A recording made into a program replays: twice the same answer, and a timed run reports one
/// span per pass (one pass here) or one time per dispatch.
#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn a_program_replays_in_one_pass() {
    let ctx = ctx();
    let mut r = rng(3);
    let x = upload(ctx, &random_host(&mut r, &[9, 20], 1.0), "x");
    let w = upload(ctx, &random_host(&mut r, &[11, 20], 1.0), "w");
    let y = nan_filled(ctx, &[9, 11], "y");
    let z = nan_filled(ctx, &[9, 11], "z");
    let mut rec = Recorder::new(ctx);
    kernels::matmul(&mut rec, &x, &w, &y, Epilogue::none()).expect("matmul");
    kernels::softmax(&mut rec, &y, &z).expect("softmax");
    let program = pollster::block_on(rec.finish()).expect("finish");
    assert_eq!(program.passes().len(), 2);
    let first = pollster::block_on(program.run_and_read(ctx, &[&y, &z])).expect("run");
    let second = pollster::block_on(program.run_and_read(ctx, &[&z])).expect("run");
    assert_eq!(
        first[1].data, second[0].data,
        "a replay gives the same answer"
    );
    assert!(first[0].data.iter().all(|v| v.is_finite()));
    if ctx.capabilities().timestamps() {
        let span = program.run_timed(ctx, Timing::Span).expect("span");
        assert_eq!(span.len(), 1, "one pass for both dispatches: {span:?}");
        let each = program.run_timed(ctx, Timing::PerDispatch).expect("each");
        let labels: Vec<_> = each.iter().map(|t| t.label).collect();
        assert_eq!(labels, ["matmul", "softmax"]);
    }
}

/// A family whose known answer is wrong (here deliberately, through the test fault) is turned
/// off when the context opens, with a reason naming the adapter and driver, and products it
/// would have run take the portable kernels and stay correct.
#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn a_failed_known_answer_turns_its_family_off() {
    let mut options = ContextOptions::from_env().expect("options");
    options.self_test_fault = Some(Family::SubgroupMatmul);
    let ctx = pollster::block_on(Context::new(options)).expect("context");
    let subgroups = ctx.capabilities().has(wgpu::Features::SUBGROUP);
    let disabled = ctx.disabled_families();
    eprintln!("disabled: {disabled:?}");
    if subgroups {
        assert_eq!(disabled.len(), 1, "{disabled:?}");
        let (family, why) = &disabled[0];
        assert_eq!(*family, Family::SubgroupMatmul);
        let adapter = &ctx.capabilities().adapter;
        assert!(
            why.contains(&adapter.name) && why.contains(&adapter.driver),
            "{why}"
        );
        assert!(!ctx.family_enabled(Family::SubgroupMatmul));
    } else {
        assert!(disabled.is_empty(), "{disabled:?}");
    }
    // A 2-row product (the subgroup kernel's case) runs on a portable tile and is right.
    let mut r = rng(4);
    let (xh, wh) = (
        random_host(&mut r, &[2, 40], 1.0),
        random_host(&mut r, &[24, 40], 1.0),
    );
    let (x, w) = (upload(&ctx, &xh, "x"), upload(&ctx, &wh, "w"));
    let y = nan_filled(&ctx, &[2, 24], "y");
    let mut rec = Recorder::new(&ctx);
    kernels::matmul(&mut rec, &x, &w, &y, Epilogue::none()).expect("matmul");
    rec.submit_blocking().expect("submit");
    let mut want = nan_host(&[2, 24]);
    backbone::reference::matmul(&xh, &wh, &mut want, Epilogue::none()).expect("twin");
    assert_close(
        "matmul after the fallback",
        &read_f32(&ctx, &y),
        &want.data,
        1e-5,
        1e-5,
    );

    // Without the fault nothing is turned off on this adapter.
    let ctx = Context::from_env_blocking().expect("context");
    assert!(
        ctx.disabled_families().is_empty(),
        "{:?}",
        ctx.disabled_families()
    );
}
