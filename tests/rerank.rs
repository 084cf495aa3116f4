//! Cross-encoders against `transformers` and `sentence_transformers.CrossEncoder.predict` on
//! seeded micro models (tests/fixtures/text): BERT (pooler + classifier), RoBERTa
//! (classifier.dense + out_proj on <s>) and ModernBERT (head.dense, GELU, head.norm and
//! classifier, on the masked mean or the CLS state), one label each. Logits on GPU and CPU within 5e-5,
//! `backbone rerank` scores (sigmoid) within 1e-5 and `--raw` logits, `run` writes `logits`,
//! and a folder without a classifier is refused.

mod common;

use backbone::models::text::{self, Encoder, TextInput};
use common::*;

const LOGIT_ATOL: f32 = 5e-5;
const SCORE_ATOL: f32 = 1e-5;
const CROSS_ENCODERS: [&str; 4] = [
    "bert-cross-micro",
    "roberta-micro-cls",
    "modernbert-cross-mean-micro",
    "modernbert-cross-cls-micro",
];

fn pair_input(golden: &Golden) -> TextInput {
    let (shape, ids) = golden.ids("pair_input_ids");
    let (_, mask) = golden.ids("pair_attention_mask");
    let types = golden
        .has("pair_token_type_ids")
        .then(|| golden.ids("pair_token_type_ids").1);
    TextInput::new(shape[0], shape[1], ids, Some(mask), types).expect("input")
}

fn documents(dir: &std::path::Path) -> (String, Vec<String>) {
    let query = sentences(dir)["query"].as_str().expect("query").to_string();
    (query, sentence_list(dir, "documents"))
}

#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn cross_encoder_logits_match_transformers() {
    for name in CROSS_ENCODERS {
        let dir = fixture(&format!("text/{name}"));
        let golden = Golden::open(&dir.join("io.safetensors"));
        let (config, weights) = text::load_dir(&dir).expect("load");
        assert!(weights.classifier.is_some(), "{name}: classifier loaded");
        let input = pair_input(&golden);
        let want = golden.f32("pair_logits");
        let cpu = text::forward_cpu(&config, &weights, &input, false).expect("cpu");
        let cpu = cpu.logits.expect("cpu logits");
        assert_eq!(cpu.shape, want.shape, "{name}");
        assert_close(
            &format!("{name} CPU logits"),
            &cpu.data,
            &want.data,
            LOGIT_ATOL,
            0.0,
        );
        let model = Encoder::new(ctx(), config, &weights).expect("upload");
        let gpu = model.forward_blocking(ctx(), &input, false).expect("gpu");
        let gpu = gpu.logits.expect("gpu logits");
        assert_close(
            &format!("{name} GPU logits"),
            &gpu.data,
            &want.data,
            LOGIT_ATOL,
            0.0,
        );
    }
}

fn rerank(dir: &std::path::Path, extra: &[&str]) -> std::process::Output {
    let (query, docs) = documents(&fixture("text/bert-cross-micro"));
    let mut args = vec![
        "rerank",
        "--model",
        dir.to_str().expect("utf-8"),
        "--query",
        &query,
    ];
    args.extend(extra);
    args.extend(docs.iter().map(String::as_str));
    backbone_output(args)
}

#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn rerank_cli_matches_cross_encoder_predict() {
    for name in CROSS_ENCODERS {
        let dir = fixture(&format!("text/{name}"));
        let golden = Golden::open(&dir.join("io.safetensors"));
        for (extra, want, atol) in [
            (
                vec!["--device", "gpu"],
                golden.f32("pair_scores"),
                SCORE_ATOL,
            ),
            (
                vec!["--device", "cpu"],
                golden.f32("pair_scores"),
                SCORE_ATOL,
            ),
            (vec!["--raw"], golden.f32("pair_logits"), LOGIT_ATOL),
        ] {
            let out = rerank(&dir, &extra);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let got: Vec<f32> = serde_json::from_slice(&out.stdout).expect("json array");
            assert_close(
                &format!("rerank {name} {extra:?}"),
                &got,
                &want.data,
                atol,
                0.0,
            );
        }
    }
}

#[test]
fn rerank_refuses_a_model_without_classifier() {
    let out = rerank(&fixture("text/xlmr-micro"), &["--device", "cpu"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a cross-encoder"), "{err}");
}

/// `run` on a cross-encoder folder writes its logits beside the hidden states.
#[test]
fn run_writes_logits_for_a_cross_encoder() {
    let dir = fixture("text/roberta-micro-cls");
    let golden = Golden::open(&dir.join("io.safetensors"));
    let input = pair_input(&golden);
    let tmp = std::env::temp_dir().join(format!("backbone-rerank-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).expect("tmp");
    let ids = |v: &[u32]| -> Vec<u8> { v.iter().flat_map(|&x| (x as i64).to_le_bytes()).collect() };
    let shape = vec![input.batch, input.seq];
    let (a, b) = (ids(&input.input_ids), ids(&input.attention_mask));
    let tensors = [
        (
            "input_ids",
            safetensors::tensor::TensorView::new(safetensors::Dtype::I64, shape.clone(), &a)
                .expect("view"),
        ),
        (
            "attention_mask",
            safetensors::tensor::TensorView::new(safetensors::Dtype::I64, shape, &b).expect("view"),
        ),
    ];
    let in_path = tmp.join("pairs.safetensors");
    safetensors::serialize_to_file(tensors, None, &in_path).expect("write input");
    let out_path = tmp.join("out.safetensors");
    backbone_stdout([
        "run".as_ref(),
        "--device".as_ref(),
        "cpu".as_ref(),
        "--model".as_ref(),
        dir.as_os_str(),
        "--input".as_ref(),
        in_path.as_os_str(),
        "--output".as_ref(),
        out_path.as_os_str(),
    ]);
    let got = Golden::open(&out_path).f32("logits");
    let want = golden.f32("pair_logits");
    assert_close("run logits", &got.data, &want.data, LOGIT_ATOL, 0.0);
    std::fs::remove_dir_all(&tmp).ok();
}

/// BERT's classifier reads the pooler output. A cross-encoder folder whose checkpoint lacks
/// `pooler.dense` is refused the same way by every door (the CLI on GPU and CPU, the library's
/// TextEncoder), and weights built by hand without the pooler are refused by both forwards
/// instead of the GPU reading a pooler output nobody computed.
#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn a_classifier_without_pooler_is_refused_on_gpu_and_cpu() {
    use backbone::encoder::{Device, EncoderOptions, TextEncoder};
    let src = fixture("text/bert-cross-micro");
    let tmp = std::env::temp_dir().join(format!("backbone-no-pooler-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).expect("tmp");
    for name in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(src.join(name), tmp.join(name)).expect("copy");
    }
    let mut tensors = checkpoint_tensors("text/bert-cross-micro");
    tensors.retain(|(k, _)| !k.contains("pooler"));
    std::fs::write(tmp.join("model.safetensors"), checkpoint_bytes(&tensors)).expect("write");
    let mut messages = Vec::new();
    for device in [Device::Gpu, Device::Cpu] {
        let err = TextEncoder::open(&tmp, &EncoderOptions::default().device(device.clone()))
            .expect_err("no pooler");
        messages.push(err.to_string());
    }
    for device in ["gpu", "cpu"] {
        let out = rerank(&tmp, &["--device", device]);
        assert!(!out.status.success(), "{device}: refused");
        messages.push(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    for m in &messages {
        assert!(
            m.contains("pooler.dense.weight") && m.contains("reads the pooler output"),
            "{m}"
        );
    }

    // Weights built by hand: the same refusal from both forwards.
    let (config, mut weights) = text::load_dir(&src).expect("load");
    weights.pooler = None;
    let golden = Golden::open(&src.join("io.safetensors"));
    let input = pair_input(&golden);
    let cpu = text::forward_cpu(&config, &weights, &input, false).expect_err("cpu refuses");
    let gpu = Encoder::new(ctx(), config, &weights)
        .map(|_| ())
        .expect_err("gpu refuses");
    assert_eq!(cpu.to_string(), gpu.to_string());
    std::fs::remove_dir_all(&tmp).ok();
}
