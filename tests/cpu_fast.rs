//! The fast CPU executor (`Device::Cpu`) against the kernels' CPU twins (`Device::Reference`):
//! each fast op on shapes below a tile, off the tile multiple and of a realistic size, with
//! outputs prefilled with NaN and bounds derived from f32's rounding of the twin's own sums;
//! then every text and CSWin fixture end to end (hidden states within 1e-5 of the largest
//! magnitude, embeddings and logits within 1e-5).

mod common;

use backbone::cpu::{CpuOps, Fast, Twin};
use backbone::kernels::matmul::{MatrixView, StridedMatmul, WLayout};
use backbone::kernels::{Activation, AttentionBias, Epilogue};
use backbone::models::{cswin, text};
use backbone::reference::HostTensor;
use backbone::tensor::DType;
use common::*;

/// `got` against the twin's `want`, element by element within `bound(i)`; the first bad
/// index is named.
fn within(what: &str, got: &[f32], want: &[f32], bound: impl Fn(usize) -> f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let b = bound(i);
        assert!(
            (g - w).abs() <= b,
            "{what}: first bad index {i}: fast {g}, twin {w}, bound {b:e}"
        );
    }
}

/// f32 sums of `k` products: each term and partial sum rounds once, so the error is at most
/// about `k · ε · Σ|xᵢ·wᵢ|`; twice that for the epilogue's rounding.
fn sum_bound(k: usize, magnitude: f32) -> f32 {
    2.0 * (k as f32 + 2.0) * f32::EPSILON * magnitude + f32::MIN_POSITIVE
}

#[test]
fn matmul_with_every_epilogue_matches_the_twin() {
    let mut rng = rng(11);
    for (b, m, n, k) in [(1, 3, 5, 7), (2, 33, 65, 17), (1, 128, 384, 1536)] {
        let x = random_host(&mut rng, &[b, m, k], 1.0);
        let w = random_host(&mut rng, &[n, k], 0.5);
        let bias = random_host(&mut rng, &[n], 0.5);
        let residual = random_host(&mut rng, &[b, m, n], 1.0);
        for act in [
            Activation::None,
            Activation::Gelu,
            Activation::Tanh,
            Activation::Relu,
        ] {
            let ep = Epilogue::none().bias(&bias).act(act).residual(&residual);
            let (mut fast, mut twin) = (nan_host(&[b, m, n]), nan_host(&[b, m, n]));
            Fast.matmul(&x, &w, &mut fast, ep).expect("fast");
            Twin.matmul(&x, &w, &mut twin, ep).expect("twin");
            // Σ|x·w| per output element, for its bound.
            let magnitude = |i: usize| {
                let (row, j) = (i / n, i % n);
                let xr = &x.data[row * k..][..k];
                let wr = &w.data[j * k..][..k];
                xr.iter().zip(wr).map(|(a, c)| (a * c).abs()).sum::<f32>()
                    + residual.data[i].abs()
                    + bias.data[j].abs()
            };
            let what = format!("matmul {b}x{m}x{n}x{k} {act:?}");
            within(&what, &fast.data, &twin.data, |i| {
                sum_bound(k, magnitude(i))
            });
        }
    }
}

/// Strided views as the forwards use them: the pooler's first tokens (rows `t·c` apart) and a
/// batch of (2 x 3) products with their own W laid out [K, N].
#[test]
fn strided_and_batched_products_match_the_twin() {
    let mut rng = rng(12);
    let (b, t, c) = (3, 7, 24);
    let hidden = random_host(&mut rng, &[b, t, c], 1.0);
    let w = random_host(&mut rng, &[c, c], 0.3);
    let pooler = StridedMatmul {
        m: b,
        n: c,
        k: c,
        batch: [1, 1],
        x: MatrixView {
            offset: 0,
            ld: t * c,
            outer_stride: 0,
            inner_stride: 0,
        },
        w: MatrixView::contiguous(c, c),
        w_layout: WLayout::NK,
        y: MatrixView::contiguous(b, c),
    };
    let (mut fast, mut twin) = (nan_host(&[b, c]), nan_host(&[b, c]));
    let ep = Epilogue::none().tanh();
    Fast.matmul_strided(&hidden, &w, &mut fast, ep, &pooler)
        .expect("fast");
    Twin.matmul_strided(&hidden, &w, &mut twin, ep, &pooler)
        .expect("twin");
    within("pooler", &fast.data, &twin.data, |_| {
        sum_bound(c, 0.3 * c as f32)
    });

    let (m, n, k) = (5, 9, 6);
    let x = random_host(&mut rng, &[2, 3, m, k], 1.0);
    let wk = random_host(&mut rng, &[2, 3, k, n], 1.0);
    let batched = StridedMatmul {
        m,
        n,
        k,
        batch: [2, 3],
        x: MatrixView {
            offset: 0,
            ld: k,
            outer_stride: 3 * m * k,
            inner_stride: m * k,
        },
        w: MatrixView {
            offset: 0,
            ld: n,
            outer_stride: 3 * k * n,
            inner_stride: k * n,
        },
        w_layout: WLayout::KN,
        y: MatrixView {
            offset: 0,
            ld: n,
            outer_stride: 3 * m * n,
            inner_stride: m * n,
        },
    };
    let (mut fast, mut twin) = (nan_host(&[2, 3, m, n]), nan_host(&[2, 3, m, n]));
    let ep = Epilogue::none();
    Fast.matmul_strided(&x, &wk, &mut fast, ep, &batched)
        .expect("fast");
    Twin.matmul_strided(&x, &wk, &mut twin, ep, &batched)
        .expect("twin");
    within("batched KN", &fast.data, &twin.data, |_| {
        sum_bound(k, k as f32)
    });
}

/// Attention with padded keys, a fully masked row, MPNet's relative bias and a local window,
/// below a tile, off it, at a realistic size, and over several key blocks of the online
/// softmax (600 keys: blocks of 256, 256 and 88).
#[test]
fn attention_matches_the_twin() {
    let mut rng = rng(13);
    for (b, t, heads, d) in [
        (1, 3, 1, 4),
        (2, 33, 2, 8),
        (2, 128, 12, 32),
        (2, 600, 2, 16),
    ] {
        let c = heads * d;
        let qkv = random_host(&mut rng, &[b, t, 3 * c], 1.0);
        let mut mask = vec![1u32; b * t];
        mask[t - t / 3..t].fill(0); // the first entry's last third is padding
        if b > 1 {
            mask[t..].fill(0); // the second entry is all padding
        }
        let mask = HostTensor::new(&[b, t], mask).expect("mask");
        let rel = random_host(&mut rng, &[heads, 2 * t - 1], 0.5);
        for (name, extra) in [
            ("plain", AttentionBias::default()),
            (
                "relative",
                AttentionBias {
                    rel_bias: Some(&rel),
                    window: None,
                },
            ),
            (
                "window",
                AttentionBias {
                    rel_bias: None,
                    window: Some(2),
                },
            ),
        ] {
            let (mut fast, mut twin) = (nan_host(&[b, t, c]), nan_host(&[b, t, c]));
            Fast.attention_biased(&qkv, &mask, extra, heads, &mut fast)
                .expect("fast");
            Twin.attention_biased(&qkv, &mask, extra, heads, &mut twin)
                .expect("twin");
            // Scores of magnitude up to d (softmax's exp relative error grows with them), then
            // a weighted mean of t values of magnitude 1.
            let bound = sum_bound(d + t, 4.0 * d as f32);
            within(
                &format!("attention {name} {b}x{t}x{heads}x{d}"),
                &fast.data,
                &twin.data,
                |_| bound,
            );
        }
    }
}

#[test]
fn layer_norm_is_the_twins_arithmetic() {
    let mut rng = rng(14);
    for (rows, c) in [(1, 3), (33, 65), (256, 768)] {
        let x = random_host(&mut rng, &[rows, c], 2.0);
        let r = random_host(&mut rng, &[rows, c], 1.0);
        let gamma = random_host(&mut rng, &[c], 1.0);
        let beta = random_host(&mut rng, &[c], 1.0);
        let (mut fast, mut twin) = (nan_host(&[rows, c]), nan_host(&[rows, c]));
        Fast.layer_norm(&x, Some(&r), &gamma, &beta, 1e-5, &mut fast)
            .expect("fast");
        Twin.layer_norm(&x, Some(&r), &gamma, &beta, 1e-5, &mut twin)
            .expect("twin");
        assert_eq!(
            fast.data, twin.data,
            "layer_norm {rows}x{c}: same f64 sums, same values"
        );
    }
}

/// `got` within `rel` of the largest magnitude in `want`.
fn close_to_max(what: &str, got: &HostTensor, want: &HostTensor, rel: f32) {
    let max = want.data.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    within(what, &got.data, &want.data, |_| rel * max.max(1.0));
}

/// A padded batch of random ids for `config` (3 rows, the last two shorter).
fn padded_input(config: &text::TextConfig, seed: u64) -> text::TextInput {
    use rand::Rng as _;
    let mut rng = rng(seed);
    let (b, t) = (
        3,
        24.min(config.max_position_embeddings.saturating_sub(4))
            .max(2),
    );
    let ids = (0..b * t)
        .map(|_| rng.random_range(5..config.vocab_size as u32))
        .collect();
    let mask = (0..b * t)
        .map(|i| u32::from(i % t < t - 3 * (i / t)))
        .collect();
    text::TextInput::new(b, t, ids, Some(mask), None).expect("input")
}

/// Every text fixture (eight families, sentence heads, cross-encoders, pre-norm ModernBERT)
/// gives the twin's outputs on the fast path, in f32 and in f16.
#[test]
fn every_text_fixture_matches_the_twins() {
    let mut dirs = vec![fixture("bert-micro-12l-random")];
    let mut names: Vec<_> = std::fs::read_dir(fixture("text"))
        .expect("fixtures")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.join("config.json").exists())
        .collect();
    names.sort();
    dirs.extend(names);
    for dir in dirs {
        let name = dir.file_name().expect("name").to_string_lossy().to_string();
        let (config, weights) = text::load_dir(&dir).expect("load");
        let input = padded_input(&config, 21);
        for dtype in [DType::F32, DType::F16] {
            let what = format!("{name} {dtype:?}");
            let twin = text::forward_cpu_as(&config, &weights, &input, true, dtype).expect("twin");
            let fast = text::forward_fast(&config, &weights, &input, true, dtype).expect("fast");
            // f16 rounds every stored activation, so a last-bit difference can flip a rounding:
            // there the bound is the one the GPU's f16 run meets against the twin
            // (tests/bert_f16.rs), 4e-3 of the largest magnitude.
            let rel = if dtype == DType::F32 { 1e-5 } else { 4e-3 };
            close_to_max(
                &format!("{what} last_hidden_state"),
                &fast.last_hidden_state,
                &twin.last_hidden_state,
                rel,
            );
            assert_eq!(fast.hidden_states.len(), twin.hidden_states.len());
            for (l, (f, t)) in fast
                .hidden_states
                .iter()
                .zip(&twin.hidden_states)
                .enumerate()
            {
                close_to_max(&format!("{what} hidden_states[{l}]"), f, t, rel);
            }
            let abs = if dtype == DType::F32 { 1e-5 } else { 4e-3 };
            let pairs = [
                (
                    "sentence_embedding",
                    Some(&fast.sentence_embedding),
                    Some(&twin.sentence_embedding),
                ),
                (
                    "pooler_output",
                    fast.pooler_output.as_ref(),
                    twin.pooler_output.as_ref(),
                ),
                ("logits", fast.logits.as_ref(), twin.logits.as_ref()),
            ];
            for (out, f, t) in pairs {
                assert_eq!(f.is_some(), t.is_some(), "{what} {out}");
                if let (Some(f), Some(t)) = (f, t) {
                    within(&format!("{what} {out}"), &f.data, &t.data, |_| abs);
                }
            }
        }
    }
}

/// Every CSWin fixture (classifier, odd sizes, a full last stage, the segmentation backbone)
/// on the fast path gives the twin's stages, features and logits.
#[test]
fn every_cswin_fixture_matches_the_twins() {
    for name in [
        "cswin-micro-224",
        "cswin-micro-odd",
        "cswin-micro-s3full",
        "cswin-seg-micro",
    ] {
        let dir = fixture(name);
        let (config, weights) = cswin::load_dir(&dir).expect("load");
        let pixels = Golden::open(&dir.join("golden.safetensors")).f32("pixel_values");
        let twin = cswin::forward_cpu(&config, &weights, &pixels, false).expect("twin");
        let fast =
            cswin::forward_fast(&config, &weights, &pixels, false, DType::F32).expect("fast");
        close_to_max(&format!("{name} stem"), &fast.stem, &twin.stem, 1e-5);
        for (s, (f, t)) in fast.stages.iter().zip(&twin.stages).enumerate() {
            close_to_max(&format!("{name} stage {}", s + 1), f, t, 1e-5);
        }
        for (s, (f, t)) in fast.features.iter().zip(&twin.features).enumerate() {
            close_to_max(&format!("{name} features {}", s + 1), f, t, 1e-5);
        }
        if let (Some(f), Some(t)) = (&fast.logits, &twin.logits) {
            within(&format!("{name} logits"), &f.data, &t.data, |_| 1e-5);
        }
        assert_eq!(fast.logits.is_some(), twin.logits.is_some(), "{name}");
    }
}

/// `--device auto` (the default): with no adapter or only a software one (lavapipe here) the
/// CLI says so once and embeds on the fast CPU path, giving what `--device cpu` gives;
/// `BACKBONE_DEVICE` overrides it, and a value it does not know is an error naming it.
#[test]
fn auto_picks_the_fast_cpu_path_without_a_hardware_gpu() {
    let model = fixture("text/st-cls");
    let run = |device: Option<&str>, env: Option<&str>| {
        let mut command = std::process::Command::new(bin("backbone"));
        command.args(["embed", "--model", model.to_str().expect("utf-8"), "a cat"]);
        if let Some(d) = device {
            command.args(["--device", d]);
        }
        command
            .env_remove("BACKBONE_DEVICE")
            .env("RUST_LOG", "backbone=warn");
        if let Some(e) = env {
            command.env("BACKBONE_DEVICE", e);
        }
        command.output().expect("run backbone")
    };
    let cpu = run(Some("cpu"), None);
    assert!(
        cpu.status.success(),
        "{}",
        String::from_utf8_lossy(&cpu.stderr)
    );
    let probe = pollster::block_on(backbone::Context::new(backbone::ContextOptions::default()));
    let hardware = probe
        .as_ref()
        .is_ok_and(|c| !c.capabilities().is_software());
    if !hardware {
        let auto = run(None, None);
        let stderr = String::from_utf8_lossy(&auto.stderr);
        assert!(auto.status.success(), "{stderr}");
        assert_eq!(
            stderr.matches("running on the fast CPU path").count(),
            1,
            "{stderr}"
        );
        assert_eq!(auto.stdout, cpu.stdout, "auto ran the fast CPU path");
        let forced = run(None, Some("cpu"));
        assert!(!String::from_utf8_lossy(&forced.stderr).contains("fast CPU path"));
        assert_eq!(forced.stdout, cpu.stdout);
    }
    let bad = run(None, Some("tpu"));
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("BACKBONE_DEVICE"));
}
