//! Bad BERT input and checkpoints give clear errors, never a panic or an out-of-bounds read.

mod common;

use backbone::Error;
use backbone::models::text::{self, Encoder, TextConfig, TextInput, TextWeights};
use backbone::models::tokenizer::TextTokenizer;
use backbone::reference::HostTensor;
use common::*;

fn micro_config_json() -> String {
    std::fs::read_to_string(fixture("bert-micro-12l-random").join("config.json")).expect("config")
}

fn micro() -> (TextConfig, TextWeights<HostTensor>) {
    text::load_dir(&fixture("bert-micro-12l-random")).expect("load")
}

/// The micro checkpoint's tensors, to rewrite with a defect.
fn micro_tensors() -> Vec<(String, HostTensor)> {
    checkpoint_tensors("bert-micro-12l-random")
}

fn write(tensors: &[(String, HostTensor)]) -> Vec<u8> {
    checkpoint_bytes(tensors)
}

fn input(batch: usize, seq: usize, ids: Vec<u32>) -> TextInput {
    TextInput::new(batch, seq, ids, None, None).expect("input")
}

fn expect_input_error(result: backbone::Result<impl std::fmt::Debug>, arg: &str, words: &str) {
    match result {
        Err(Error::Input { arg: a, reason }) => {
            assert_eq!(a, arg, "{reason}");
            assert!(
                reason.contains(words),
                "{arg}: {reason:?} should mention {words:?}"
            );
        }
        other => panic!("expected an input error on {arg}, got {other:?}"),
    }
}

#[test]
fn token_id_past_the_vocabulary_on_cpu() {
    let (config, weights) = micro();
    let bad = input(1, 3, vec![101, 30522, 102]);
    expect_input_error(
        text::forward_cpu(&config, &weights, &bad, false),
        "input_ids",
        "30522",
    );
}

#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn token_id_past_the_vocabulary_on_gpu() {
    let ctx = ctx();
    let (config, weights) = micro();
    let bad = input(1, 3, vec![101, 30522, 102]);
    let model = Encoder::new(ctx, config, &weights).expect("upload");
    expect_input_error(
        model.forward_blocking(ctx, &bad, false),
        "input_ids",
        "30522",
    );
}

#[test]
fn sequence_longer_than_the_position_table_on_cpu() {
    let (config, weights) = micro();
    let bad = input(1, 513, vec![100; 513]);
    expect_input_error(
        text::forward_cpu(&config, &weights, &bad, false),
        "input_ids",
        "max_position_embeddings",
    );
}

#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn sequence_longer_than_the_position_table_on_gpu() {
    let ctx = ctx();
    let (config, weights) = micro();
    let bad = input(1, 513, vec![100; 513]);
    let model = Encoder::new(ctx, config, &weights).expect("upload");
    expect_input_error(
        model.forward_blocking(ctx, &bad, false),
        "input_ids",
        "max_position_embeddings",
    );
}

#[test]
fn empty_batch_and_mismatched_shapes() {
    let (config, weights) = micro();
    expect_input_error(
        text::forward_cpu(&config, &weights, &input(0, 4, vec![]), false),
        "input_ids",
        "empty",
    );
    expect_input_error(
        TextInput::new(2, 3, vec![1; 6], Some(vec![1; 5]), None),
        "attention_mask",
        "[2, 3]",
    );
    expect_input_error(
        TextInput::new(2, 3, vec![1; 6], None, Some(vec![0; 7])),
        "token_type_ids",
        "[2, 3]",
    );
    // Through the safetensors input path: the mask's shape differs from the ids'.
    let ids = host(&[2, 3], vec![1.0; 6]);
    let mask = host(&[3, 2], vec![1.0; 6]);
    let file = to_i64_file(&[("input_ids", &ids), ("attention_mask", &mask)]);
    expect_input_error(
        TextInput::from_safetensors(&file),
        "attention_mask",
        "differs",
    );
    let bad_type = input(1, 2, vec![101, 102]);
    let bad_type = TextInput {
        token_type_ids: vec![0, 2],
        ..bad_type
    };
    expect_input_error(
        text::forward_cpu(&config, &weights, &bad_type, false),
        "token_type_ids",
        "2",
    );
    let bad_mask = TextInput {
        attention_mask: vec![1, 7],
        ..input(1, 2, vec![101, 102])
    };
    expect_input_error(
        text::forward_cpu(&config, &weights, &bad_mask, false),
        "attention_mask",
        "7",
    );
}

/// Integer tensors (I64) from f32 host tensors holding whole numbers.
fn to_i64_file(tensors: &[(&str, &HostTensor)]) -> Vec<u8> {
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, t)| {
            let wide: Vec<i64> = t.data.iter().map(|&v| v as i64).collect();
            (
                n.to_string(),
                t.shape.clone(),
                bytemuck::cast_slice(&wide).to_vec(),
            )
        })
        .collect();
    let views = data.iter().map(|(n, shape, bytes)| {
        (
            n.clone(),
            safetensors::tensor::TensorView::new(safetensors::Dtype::I64, shape.clone(), bytes)
                .expect("view"),
        )
    });
    safetensors::tensor::serialize(views, None).expect("serialize")
}

#[test]
fn missing_tokenizer_json() {
    let dir = std::env::temp_dir().join("backbone-no-tokenizer");
    std::fs::create_dir_all(&dir).expect("temp dir");
    let err = TextTokenizer::from_dir(&dir, 256)
        .err()
        .expect("no tokenizer.json");
    assert!(err.to_string().contains("tokenizer.json"), "{err}");
}

#[test]
fn unsupported_config() {
    let json = micro_config_json().replace("\"absolute\"", "\"relative_key\"");
    let err = TextConfig::from_json(&json).unwrap_err();
    assert!(err.to_string().contains("relative_key"), "{err}");
    let json =
        micro_config_json().replace("\"hidden_act\": \"gelu\"", "\"hidden_act\": \"gelu_new\"");
    let err = TextConfig::from_json(&json).unwrap_err();
    assert!(err.to_string().contains("gelu_new"), "{err}");
    let json =
        micro_config_json().replace("\"num_attention_heads\": 4", "\"num_attention_heads\": 5");
    let err = TextConfig::from_json(&json).unwrap_err();
    assert!(err.to_string().contains("num_attention_heads"), "{err}");
    assert!(matches!(
        TextConfig::from_json("{").unwrap_err(),
        Error::Config(_)
    ));
}

#[test]
fn missing_and_misshapen_weights_name_the_key() {
    let (config, _) = micro();
    let key = "encoder.layer.3.attention.self.key.weight";
    let without: Vec<_> = micro_tensors()
        .into_iter()
        .filter(|(n, _)| n != key)
        .collect();
    let err = TextWeights::from_safetensors(&config, &write(&without)).unwrap_err();
    assert!(
        matches!(&err, Error::Weights { key: k, .. } if k == key),
        "{err}"
    );
    assert!(err.to_string().contains("missing"), "{err}");

    let reshaped: Vec<_> = micro_tensors()
        .into_iter()
        .map(|(n, t)| {
            if n == key {
                (n, host(&[16, 64], t.data))
            } else {
                (n, t)
            }
        })
        .collect();
    let err = TextWeights::from_safetensors(&config, &write(&reshaped)).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(key) && msg.contains("[32, 32]") && msg.contains("[16, 64]"),
        "{msg}"
    );

    // The same checkpoint with BertFor*'s `bert.` prefix loads.
    let prefixed: Vec<_> = micro_tensors()
        .into_iter()
        .map(|(n, t)| (format!("bert.{n}"), t))
        .collect();
    TextWeights::from_safetensors(&config, &write(&prefixed)).expect("bert.-prefixed keys");

    // Fewer layers in the config than in the file: the extra tensors are named.
    let json =
        micro_config_json().replace("\"num_hidden_layers\": 12", "\"num_hidden_layers\": 11");
    let fewer = TextConfig::from_json(&json).expect("config");
    let err = TextWeights::from_safetensors(&fewer, &write(&micro_tensors())).unwrap_err();
    assert!(err.to_string().contains("encoder.layer.11"), "{err}");
}

#[test]
fn f16_and_bf16_checkpoints_load() {
    let (config, reference) = micro();
    for dtype in [safetensors::Dtype::F16, safetensors::Dtype::BF16] {
        let tensors = micro_tensors();
        let data: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
            .iter()
            .map(|(n, t)| {
                let bytes: Vec<u8> = match dtype {
                    safetensors::Dtype::F16 => t
                        .data
                        .iter()
                        .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                        .collect(),
                    _ => t
                        .data
                        .iter()
                        .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
                        .collect(),
                };
                (n.clone(), t.shape.clone(), bytes)
            })
            .collect();
        let views = data.iter().map(|(n, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(dtype, s.clone(), b).expect("view"),
            )
        });
        let file = safetensors::tensor::serialize(views, None).expect("serialize");
        let loaded = TextWeights::from_safetensors(&config, &file).expect("half checkpoint");
        let tol = if dtype == safetensors::Dtype::F16 {
            1e-2
        } else {
            5e-2
        };
        let (a, b) = (
            &loaded.embeddings.word_embeddings,
            &reference.embeddings.word_embeddings,
        );
        assert_close(
            &format!("{dtype:?} word embeddings"),
            &a.data,
            &b.data,
            tol,
            tol,
        );
    }
}
