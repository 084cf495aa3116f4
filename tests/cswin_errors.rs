//! Bad CSWin input and checkpoints give clear errors.

mod common;

use backbone::Error;
use backbone::models::cswin::{self, CswinConfig, CswinWeights};
use backbone::reference::HostTensor;
use common::*;

fn config_json() -> String {
    std::fs::read_to_string(fixture("cswin-micro-s3full").join("config.json")).expect("config")
}

fn tensors() -> Vec<(String, HostTensor)> {
    checkpoint_tensors("cswin-micro-s3full")
}

fn write(tensors: &[(String, HostTensor)]) -> Vec<u8> {
    checkpoint_bytes(tensors)
}

#[test]
fn wrong_channel_count_and_too_small_images() {
    let (config, weights) = cswin::load_dir(&fixture("cswin-micro-s3full")).expect("load");
    let err = cswin::forward_cpu(
        &config,
        &weights,
        &HostTensor::zeros(&[1, 4, 64, 64]),
        false,
    )
    .unwrap_err();
    assert!(
        matches!(&err, Error::Input { arg, .. } if arg == "pixel_values")
            && err.to_string().contains("4 channels"),
        "{err}"
    );
    let err = cswin::forward_cpu(&config, &weights, &HostTensor::zeros(&[1, 3, 2, 64]), false)
        .unwrap_err();
    assert!(err.to_string().contains("3x3"), "{err}");
    let err =
        cswin::forward_cpu(&config, &weights, &HostTensor::zeros(&[3, 64, 64]), false).unwrap_err();
    assert!(err.to_string().contains("[B, 3, H, W]"), "{err}");
}

#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn wrong_channel_count_on_gpu() {
    let ctx = ctx();
    let (config, weights) = cswin::load_dir(&fixture("cswin-micro-s3full")).expect("load");
    let model = cswin::Cswin::new(ctx, config, &weights).expect("upload");
    let err = model
        .forward_blocking(ctx, &HostTensor::zeros(&[1, 1, 64, 64]), false)
        .unwrap_err();
    assert!(err.to_string().contains("1 channels"), "{err}");
}

/// Input sizes the official 224 layout never sees.
const OTHER_SIZES: [(usize, usize); 2] = [(100, 60), (37, 53)];

/// Any size of at least 3x3 runs (stripes padded as the official segmentation backbone
/// does), with the stage geometry of strided 3x3 merges.
#[test]
fn other_input_sizes_run_on_cpu() {
    let (config, weights) = cswin::load_dir(&fixture("cswin-micro-s3full")).expect("load");
    let mut r = rng(9);
    for (h, w) in OTHER_SIZES {
        let pixels = random_host(&mut r, &[1, 3, h, w], 1.0);
        let cpu = cswin::forward_cpu(&config, &weights, &pixels, false).expect("cpu");
        let [s1, s2, s3, s4] = cpu.geometry.stages;
        assert_eq!(s1, ((h - 3) / 4 + 1, (w - 3) / 4 + 1));
        assert_eq!(
            (s2, s3, s4),
            (
                (s1.0.div_ceil(2), s1.1.div_ceil(2)),
                (s2.0.div_ceil(2), s2.1.div_ceil(2)),
                (s3.0.div_ceil(2), s3.1.div_ceil(2))
            )
        );
        assert!(
            cpu.logits()
                .expect("logits")
                .data
                .iter()
                .all(|v| v.is_finite()),
            "{h}x{w}"
        );
    }
}

/// The GPU agrees with the CPU path on those sizes.
#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn other_input_sizes_agree_on_gpu() {
    let ctx = ctx();
    let (config, weights) = cswin::load_dir(&fixture("cswin-micro-s3full")).expect("load");
    let model = cswin::Cswin::new(ctx, config.clone(), &weights).expect("upload");
    let mut r = rng(9);
    for (h, w) in OTHER_SIZES {
        let pixels = random_host(&mut r, &[1, 3, h, w], 1.0);
        let cpu = cswin::forward_cpu(&config, &weights, &pixels, false).expect("cpu");
        let gpu_out = model.forward_blocking(ctx, &pixels, false).expect("gpu");
        for s in 0..4 {
            assert_close(
                &format!("{h}x{w} stage{}", s + 1),
                &gpu_out.stages[s].data,
                &cpu.stages[s].data,
                5e-5,
                1e-5,
            );
        }
        assert_close(
            &format!("{h}x{w} logits"),
            &gpu_out.logits().expect("logits").data,
            &cpu.logits().expect("logits").data,
            2e-5,
            1e-5,
        );
    }
}

#[test]
fn bad_configs_are_refused() {
    let json = config_json().replace(
        "\"num_heads\": [\n    2,\n    2,\n    4,\n    4\n  ]",
        "\"num_heads\": [2, 2, 3, 4]",
    );
    let err = CswinConfig::from_json(&json).unwrap_err();
    assert!(err.to_string().contains("num_heads[2]"), "{err}");
    let mut config: serde_json::Value = serde_json::from_str(&config_json()).expect("json");
    config["split_size"] = serde_json::json!([2, 0, 8, 4]);
    let err = CswinConfig::from_json(&config.to_string()).unwrap_err();
    assert!(err.to_string().contains("split_size[1]"), "{err}");
    config["split_size"] = serde_json::json!([2, 4, 8, 4]);
    config["num_heads"] = serde_json::json!([1, 2, 4, 4]);
    let err = CswinConfig::from_json(&config.to_string()).unwrap_err();
    assert!(err.to_string().contains("two branches"), "{err}");
    config["num_heads"] = serde_json::json!([2, 2, 3, 4]);
    let err = CswinConfig::from_json(&config.to_string()).unwrap_err();
    assert!(err.to_string().contains("does not divide"), "{err}");
    assert!(CswinConfig::preset("cswin-x-224").is_err());
    let l = CswinConfig::preset("cswin-l-224").expect("preset");
    assert_eq!(l.num_heads, [6, 12, 24, 24], "the code's CSWin-L heads");
}

#[test]
fn missing_misshapen_and_branch_mismatched_weights_name_the_key() {
    let config = CswinConfig::from_json(&config_json()).expect("config");
    let key = "stage2.0.attns.1.get_v.weight";
    let without: Vec<_> = tensors()
        .into_iter()
        .filter(|(n, _)| !n.starts_with("stage2.0.attns.1."))
        .collect();
    let err = CswinWeights::from_safetensors(&config, &write(&without)).unwrap_err();
    assert!(
        matches!(&err, Error::Weights { key: k, .. } if k == key),
        "{err}"
    );
    let key = "merge2.conv.weight";
    let reshaped: Vec<_> = tensors()
        .into_iter()
        .map(|(n, t)| {
            if n == key {
                (n, host(&[64, 32, 9, 1], t.data))
            } else {
                (n, t)
            }
        })
        .collect();
    let msg = CswinWeights::from_safetensors(&config, &write(&reshaped))
        .unwrap_err()
        .to_string();
    assert!(msg.contains(key) && msg.contains("[64, 32, 3, 3]"), "{msg}");
    let without_head: Vec<_> = tensors()
        .into_iter()
        .filter(|(n, _)| n != "head.bias")
        .collect();
    let msg = CswinWeights::from_safetensors(&config, &write(&without_head))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("head.bias"), "{msg}");
    // At img_size 256 stage 3 (16x16, split 8) has two branches; the checkpoint, built at
    // 128 where stage 3 is 8x8 = split, has one.
    let mut other: serde_json::Value = serde_json::from_str(&config_json()).expect("json");
    other["img_size"] = serde_json::json!(256);
    let other = CswinConfig::from_json(&other.to_string()).expect("config");
    let msg = CswinWeights::from_safetensors(&other, &write(&tensors()))
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("stage3.0.attns.1") && msg.contains("branch"),
        "{msg}"
    );
}
