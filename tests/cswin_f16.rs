//! CSWin in f16 (weights and activations stored as f16, f32 accumulation) on the official
//! fixtures: GPU and the CPU twin of the f16 run against the official f32 outputs within the
//! documented f16 bounds, and the GPU f16 run against that twin, much closer.
//!
//! Documented bounds (README): stem and stage features within 1e-2 of each tensor's largest
//! magnitude, logits within 1e-2 of the largest logit magnitude, the same top-1 class.

mod common;

use backbone::DType;
use backbone::models::cswin::{self, Cswin, CswinOutput};
use common::*;

const OF_MAX: f32 = 1e-2;

fn check(what: &str, out: &CswinOutput, golden: &Golden) {
    let mut named = vec![("stem", &out.stem)];
    let names = ["stage1", "stage2", "stage3", "stage4"];
    named.extend(names.iter().copied().zip(&out.stages));
    named.push(("logits", out.logits().expect("logits")));
    for (name, got) in named {
        let f = of_max(&got.data, &golden.f32(name).data);
        eprintln!("{what}: {name} max error {f:.2e} of the largest magnitude");
        assert!(
            f <= OF_MAX,
            "{what}: {name} off by {f:.2e} of max (bound {OF_MAX})"
        );
    }
    let want = golden.f32("logits");
    assert_eq!(
        top1(out.logits().expect("logits")),
        top1(&want),
        "{what}: top-1 classes differ"
    );
}

fn run(name: &str) {
    let dir = fixture(name);
    let (config, weights) = cswin::load_dir(&dir).expect("load");
    let golden = Golden::open(&dir.join("golden.safetensors"));
    let pixels = golden.f32("pixel_values");
    let cpu = cswin::forward_cpu_as(&config, &weights, &pixels, false, DType::F16).expect("twin");
    check(&format!("{name} CPU f16"), &cpu, &golden);
    let ctx = ctx();
    let model = match Cswin::with_dtype(ctx, config, &weights, DType::F16) {
        Err(e) if !ctx.capabilities().has(wgpu::Features::SHADER_F16) => {
            assert!(e.to_string().contains("SHADER_F16"), "{e}");
            eprintln!("f16 refused as it should be on this adapter: {e}");
            return;
        }
        model => model.expect("upload f16"),
    };
    let gpu = model
        .forward_blocking(ctx, &pixels, false)
        .expect("gpu f16");
    check(&format!("{name} GPU f16"), &gpu, &golden);
    for (s, (g, c)) in gpu.stages.iter().zip(&cpu.stages).enumerate() {
        let f = of_max(&g.data, &c.data);
        eprintln!("{name} GPU f16 vs its twin: stage{} {f:.2e} of max", s + 1);
        // A few f16 ulps at the largest magnitude: a rounding that tips the other way early
        // carries through the later blocks.
        assert!(
            f <= 4e-3,
            "{name}: GPU f16 vs twin stage{} off by {f:.2e}",
            s + 1
        );
    }
}

#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn cswin_micro_224_f16() {
    run("cswin-micro-224");
}

#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn cswin_micro_odd_f16() {
    run("cswin-micro-odd");
}

#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn cswin_micro_s3full_f16() {
    run("cswin-micro-s3full");
}
