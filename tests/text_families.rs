//! The BERT-family encoders other than BERT against `transformers` on seeded random micro
//! models (tests/fixtures/text, made by scripts/make_text_fixtures.py): RoBERTa saved with its
//! task prefix and classification head, XLM-RoBERTa saved bare with a pooler, DistilBERT with
//! sinusoidal positions and ReLU, ELECTRA's discriminator with a projected 16-wide embedding,
//! MPNet (relative position bias) in a sentence-transformers folder.
//! Every batch is padded. GPU, CPU reference and fast CPU paths, hidden states on real tokens within 5e-5, the
//! pooler within 5e-5.

mod common;

use backbone::models::text::{self, Encoder, Family, TextInput, TextOutput};
use backbone::models::tokenizer::TextTokenizer;
use common::*;

/// The bound of the issue (the BERT fixtures' scale): hidden states and pooler within 5e-5.
const HIDDEN_ATOL: f32 = 5e-5;

fn text_fixture(name: &str) -> std::path::PathBuf {
    fixture(&format!("text/{name}"))
}

fn input_of(golden: &Golden, prefix: &str) -> TextInput {
    let (shape, ids) = golden.ids(&format!("{prefix}input_ids"));
    let (_, mask) = golden.ids(&format!("{prefix}attention_mask"));
    let types = golden
        .has(&format!("{prefix}token_type_ids"))
        .then(|| golden.ids(&format!("{prefix}token_type_ids")).1);
    TextInput::new(shape[0], shape[1], ids, Some(mask), types).expect("input")
}

fn check(what: &str, out: &TextOutput, golden: &Golden, mask: &[u32]) {
    let want = real_rows(&golden.f32("last_hidden_state"), mask);
    let got = real_rows(&out.last_hidden_state, mask);
    assert_close(
        &format!("{what} last_hidden_state"),
        &got,
        &want,
        HIDDEN_ATOL,
        0.0,
    );
    if golden.has("pooler_output") {
        let pooler = out
            .pooler_output
            .as_ref()
            .expect("the checkpoint has a pooler");
        let want = golden.f32("pooler_output");
        assert_close(
            &format!("{what} pooler_output"),
            &pooler.data,
            &want.data,
            HIDDEN_ATOL,
            0.0,
        );
    }
}

fn run_fixture(name: &str, family: Family) {
    let dir = text_fixture(name);
    let (config, weights) = text::load_dir(&dir).expect("load");
    assert_eq!(config.family(), family, "{name}");
    let golden = Golden::open(&dir.join("io.safetensors"));
    let input = input_of(&golden, "");
    assert!(
        input.attention_mask.contains(&0),
        "{name}: the fixture batch is padded"
    );
    let cpu = text::forward_cpu(&config, &weights, &input, false).expect("cpu forward");
    check(&format!("{name} CPU"), &cpu, &golden, &input.attention_mask);
    let fast = text::forward_fast(&config, &weights, &input, false, backbone::DType::F32)
        .expect("fast cpu forward");
    check(
        &format!("{name} fast CPU"),
        &fast,
        &golden,
        &input.attention_mask,
    );
    let model = Encoder::new(ctx(), config, &weights).expect("upload");
    let gpu = model
        .forward_blocking(ctx(), &input, false)
        .expect("gpu forward");
    check(&format!("{name} GPU"), &gpu, &golden, &input.attention_mask);
}

#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn roberta_with_task_prefix_and_head_matches_transformers() {
    run_fixture("roberta-micro-cls", Family::Roberta);
}

#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn xlm_roberta_with_pooler_matches_transformers() {
    run_fixture("xlmr-micro", Family::Roberta);
}

#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn distilbert_sinusoidal_relu_matches_transformers() {
    run_fixture("distilbert-micro", Family::DistilBert);
}

#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn electra_discriminator_with_projection_matches_transformers() {
    run_fixture("electra-micro", Family::Electra);
}

/// MPNet in a sentence-transformers folder (as all-mpnet-base-v2): relative position bias in
/// every layer, RoBERTa positions; hidden states and the folder's mean + Normalize embedding.
#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn mpnet_sentence_transformer_matches() {
    run_fixture("mpnet-micro", Family::Mpnet);
    let dir = text_fixture("mpnet-micro");
    let golden = Golden::open(&dir.join("io.safetensors"));
    let (config, weights) = text::load_dir(&dir).expect("load");
    let input = input_of(&golden, "");
    let want = golden.f32("embeddings");
    let cpu = text::forward_cpu(&config, &weights, &input, false).expect("cpu");
    assert_close(
        "mpnet CPU embeddings",
        &cpu.sentence_embedding.data,
        &want.data,
        1e-5,
        0.0,
    );
    let model = Encoder::new(ctx(), config, &weights).expect("upload");
    let gpu = model.forward_blocking(ctx(), &input, false).expect("gpu");
    assert_close(
        "mpnet GPU embeddings",
        &gpu.sentence_embedding.data,
        &want.data,
        1e-5,
        0.0,
    );
}

/// ModernBERT: pre-norm without biases, rotary (global and local theta), GeGLU, a local
/// window shorter than the longer texts, final norm.
#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn modernbert_matches_transformers() {
    run_fixture("modernbert-micro", Family::ModernBert);
}

/// MPNet's buckets as `relative_position_bucket` gives them (values printed by transformers
/// 5.24 for these distances), including the float32 log's exact powers of two.
#[test]
fn mpnet_relative_position_buckets() {
    let want = [
        (-200, 15),
        (-128, 15),
        (-100, 15),
        (-64, 14),
        (-40, 12),
        (-33, 12),
        (-32, 12),
        (-31, 11),
        (-17, 10),
        (-16, 10),
        (-15, 9),
        (-9, 8),
        (-8, 8),
        (-7, 7),
        (-1, 1),
        (0, 0),
        (1, 17),
        (7, 23),
        (8, 24),
        (9, 24),
        (15, 25),
        (16, 26),
        (17, 26),
        (31, 27),
        (32, 28),
        (33, 28),
        (40, 28),
        (63, 29),
        (64, 30),
        (65, 30),
        (100, 31),
        (127, 31),
        (128, 31),
        (200, 31),
    ];
    for (d, bucket) in want {
        assert_eq!(
            text::relative_position_bucket(d, 32, 128),
            bucket,
            "distance {d}"
        );
    }
}

/// The folders' tokenizer.json gives the ids `transformers` used (RoBERTa's <s> a </s> and
/// its padding id 1; BERT's template for the others).
#[test]
fn tokenizers_reproduce_the_fixture_ids() {
    for name in [
        "roberta-micro-cls",
        "xlmr-micro",
        "distilbert-micro",
        "electra-micro",
    ] {
        let dir = text_fixture(name);
        let golden = Golden::open(&dir.join("io.safetensors"));
        let texts = sentence_list(&dir, "texts");
        let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
        let tok = TextTokenizer::from_dir(&dir, 64).expect("tokenizer");
        let got = tok.encode(&texts).expect("encode");
        let want = input_of(&golden, "");
        assert_eq!(got.input_ids, want.input_ids, "{name} ids");
        assert_eq!(got.attention_mask, want.attention_mask, "{name} mask");
    }
}

/// RoBERTa's positions follow `create_position_ids_from_input_ids`: from pad + 1, padding at
/// pad, computed from the ids.
#[test]
fn roberta_positions_skip_padding() {
    let ids = [0, 5, 6, 2, 1, 1];
    assert_eq!(
        Family::Roberta.position_ids(&ids, 1),
        vec![2, 3, 4, 5, 1, 1]
    );
    assert_eq!(Family::Bert.position_ids(&ids, 0), vec![0, 1, 2, 3, 4, 5]);
}

/// DistilBERT with `sinusoidal_pos_embds` and no position table in the checkpoint: the table is
/// generated as `create_sinusoidal_embeddings` builds it (the fixture's checkpoint holds the one
/// transformers built), and the model still matches.
#[test]
fn distilbert_sinusoidal_table_generated_when_absent() {
    let dir = text_fixture("distilbert-micro");
    let (config, weights) = text::load_dir(&dir).expect("load");
    let tensors: Vec<_> = checkpoint_tensors("text/distilbert-micro")
        .into_iter()
        .filter(|(name, _)| !name.contains("position_embeddings"))
        .collect();
    let bytes = checkpoint_bytes(&tensors);
    let generated = text::TextWeights::from_safetensors(&config, &bytes).expect("without table");
    let (got, want) = (
        &generated.embeddings.position_embeddings,
        &weights.embeddings.position_embeddings,
    );
    assert_eq!(got.shape, want.shape);
    assert_close(
        "generated sinusoidal table",
        &got.data,
        &want.data,
        1e-6,
        0.0,
    );
    // Without sinusoidal_pos_embds the table is required.
    let mut learned = config.clone();
    learned.sinusoidal_pos_embds = false;
    let err = text::TextWeights::from_safetensors(&learned, &bytes).expect_err("missing table");
    assert!(err.to_string().contains("position_embeddings"), "{err}");
}
