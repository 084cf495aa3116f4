//! CSWin end to end against Microsoft's official code (golden files in tests/fixtures): the
//! 224 layout, the 384 layout with 12-wide stripes, and a stage that becomes one global branch.
//! Every tensor on the GPU and on the CPU path, each within a small multiple of the float32
//! deviation the fixture's tolerance.json records for it (see `common::Tolerances`).

mod common;

use backbone::models::cswin::{self, Cswin, CswinOutput};
use backbone::reference::HostTensor;
use common::*;

/// Every output against its golden tensor; returns the worst error / bound ratio.
fn check(what: &str, out: &CswinOutput, golden: &Golden, tol: &Tolerances, budget: Budget) -> f64 {
    let mut worst: f64 = 0.0;
    let mut check_one = |name: &str, got: &HostTensor| {
        let want = golden.f32(name);
        worst = worst.max(tol.check(what, name, &got.data, &want.data, budget));
    };
    check_one("stem", &out.stem);
    for (s, stage) in out.stages.iter().enumerate() {
        check_one(&format!("stage{}", s + 1), stage);
    }
    assert_eq!(out.block0_attention.len(), 4);
    for (s, attn) in out.block0_attention.iter().enumerate() {
        check_one(&format!("stage{}_block0_attn", s + 1), attn);
    }
    check_one("pooled", out.pooled.as_ref().expect("classifier"));
    check_one("logits", out.logits().expect("classifier"));
    eprintln!("{what}: worst error / bound ratio {worst:.3}");
    worst
}

fn load(name: &str) -> (cswin::CswinConfig, cswin::CswinWeights<HostTensor>, Golden) {
    let dir = fixture(name);
    let (config, weights) = cswin::load_dir(&dir).expect("load");
    let golden = Golden::open(&dir.join("golden.safetensors"));
    (config, weights, golden)
}

fn run_cpu(name: &str) {
    let (config, weights, golden) = load(name);
    let pixels = golden.f32("pixel_values");
    let out = cswin::forward_cpu(&config, &weights, &pixels, true).expect("cpu forward");
    check(
        &format!("{name} CPU"),
        &out,
        &golden,
        &Tolerances::load(name),
        CPU_BUDGET,
    );
    let dtype = backbone::DType::F32;
    let fast = cswin::forward_fast(&config, &weights, &pixels, true, dtype).expect("fast cpu");
    check(
        &format!("{name} fast CPU"),
        &fast,
        &golden,
        &Tolerances::load(name),
        CPU_BUDGET,
    );
}

fn run_gpu(name: &str) {
    let ctx = ctx();
    let (config, weights, golden) = load(name);
    let pixels = golden.f32("pixel_values");
    let model = Cswin::new(ctx, config, &weights).expect("upload");
    let out = model
        .forward_blocking(ctx, &pixels, true)
        .expect("gpu forward");
    check(
        &format!("{name} GPU"),
        &out,
        &golden,
        &Tolerances::load(name),
        GPU_BUDGET,
    );
}

#[test]
fn cswin_micro_224_matches_official_on_cpu() {
    run_cpu("cswin-micro-224");
}

#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn cswin_micro_224_matches_official_on_gpu() {
    run_gpu("cswin-micro-224");
}

#[test]
fn cswin_micro_odd_384_layout_matches_official_on_cpu() {
    run_cpu("cswin-micro-odd");
}

#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn cswin_micro_odd_384_layout_matches_official_on_gpu() {
    run_gpu("cswin-micro-odd");
}

#[test]
fn cswin_micro_s3full_global_stage_matches_official_on_cpu() {
    run_cpu("cswin-micro-s3full");
}

#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn cswin_micro_s3full_global_stage_matches_official_on_gpu() {
    run_gpu("cswin-micro-s3full");
}
