//! CSWin end to end against Microsoft's official code (golden files in tests/fixtures): the
//! 224 layout, the 384 layout with 12-wide stripes, and a stage that becomes one global branch.
//! Every tensor on the GPU and on the CPU path, within the fixture README's tolerances.

mod common;

use backbone::models::cswin::{self, Cswin, CswinOutput};
use common::*;

/// Stage, stem and attention tensors: max abs 5e-5 and relative L2 1e-5; pooled and logits:
/// max abs 2e-5.
fn check(what: &str, out: &CswinOutput, golden: &Golden) {
    let feature = |name: &str, got: &[f32]| {
        let want = golden.f32(name);
        assert_close(&format!("{what}: {name}"), got, &want.data, 5e-5, 0.0);
        let r = rel_l2(got, &want.data);
        assert!(r <= 1e-5, "{what}: {name} relative L2 {r:e} > 1e-5");
    };
    feature("stem", &out.stem.data);
    for (s, stage) in out.stages.iter().enumerate() {
        feature(&format!("stage{}", s + 1), &stage.data);
    }
    for (s, attn) in out.block0_attention.iter().enumerate() {
        feature(&format!("stage{}_block0_attn", s + 1), &attn.data);
    }
    assert_eq!(out.block0_attention.len(), 4);
    for name in ["pooled", "logits"] {
        let got = if name == "pooled" {
            &out.pooled
        } else {
            &out.logits
        };
        assert_close(
            &format!("{what}: {name}"),
            &got.data,
            &golden.f32(name).data,
            2e-5,
            0.0,
        );
    }
}

fn run_fixture(name: &str) {
    let dir = fixture(name);
    let (config, weights) = cswin::load_dir(&dir).expect("load");
    let golden = Golden::open(&dir.join("golden.safetensors"));
    let pixels = golden.f32("pixel_values");
    let cpu = cswin::forward_cpu(&config, &weights, &pixels, true).expect("cpu forward");
    check(&format!("{name} CPU"), &cpu, &golden);
    let Some(ctx) = gpu() else { return };
    let model = Cswin::new(ctx, config, &weights).expect("upload");
    let out = model
        .forward_blocking(ctx, &pixels, true)
        .expect("gpu forward");
    check(&format!("{name} GPU"), &out, &golden);
}

#[test]
fn cswin_micro_224_matches_official() {
    run_fixture("cswin-micro-224");
}

#[test]
fn cswin_micro_odd_384_layout_matches_official() {
    run_fixture("cswin-micro-odd");
}

#[test]
fn cswin_micro_s3full_global_stage_matches_official() {
    run_fixture("cswin-micro-s3full");
}
