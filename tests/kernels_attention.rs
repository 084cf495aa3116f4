//! The fused attention kernels against their CPU twins on seeded random data: BERT's
//! `attention` under every kind of key-padding mask (left and right padding past a key tile,
//! holes, fully masked rows) on sequences below one key tile, off the tile multiples and at a
//! realistic size, with head sizes 8 to 128; CSWin's `cswin_attention` on stripes, padded maps,
//! windows past one query tile and head sizes 8 to 96. Outputs start as NaN on both sides.

mod common;

use backbone::kernels::{self, AttentionBias, CswinBranch};
use backbone::reference::{self, HostTensor};
use backbone::{Context, Recorder};
use common::*;

/// Keys per staged tile for head size `d` (f32 storage), as both attention kernels pick it: the
/// masks below are laid out in these units so that whole tiles are masked.
fn key_tile(d: usize) -> usize {
    kernels::attention_tiles(d, false).keys
}

/// A key-padding pattern of one batch entry.
#[derive(Debug, Clone, Copy)]
enum Mask {
    /// Every key.
    All,
    /// Padding on the left, past one key tile when the sequence allows (the first tiles are
    /// entirely masked: the running maximum starts at the mask value).
    Left,
    /// Padding on the right, past one key tile when the sequence allows.
    Right,
    /// A masked run longer than a key tile in the middle, plus every seventh key.
    Holes,
    /// No key at all: Hugging Face's f32::MIN bias averages V uniformly.
    None,
}

impl Mask {
    const EVERY: [Mask; 5] = [Mask::All, Mask::Left, Mask::Right, Mask::Holes, Mask::None];

    fn keeps(self, pos: usize, t: usize, tile: usize) -> bool {
        let pad = (tile + 3).min(t - 1);
        match self {
            Mask::All => true,
            Mask::Left => pos >= pad,
            Mask::Right => pos < t - pad,
            Mask::Holes => {
                let run = t / 3..t / 3 + tile + 1;
                !run.contains(&pos) && pos % 7 != 3
            }
            Mask::None => false,
        }
    }
}

/// The mask [B, T] with one pattern per batch entry.
fn mask_of(patterns: &[Mask], t: usize, tile: usize) -> HostTensor<u32> {
    let data = patterns
        .iter()
        .flat_map(|&m| (0..t).map(move |pos| u32::from(m.keeps(pos, t, tile))))
        .collect();
    HostTensor::new(&[patterns.len(), t], data).expect("mask")
}

/// Runs attention on both sides and compares; returns the GPU output.
fn check_attention(
    ctx: &Context,
    seed: u64,
    qkv: &HostTensor,
    mask: &HostTensor<u32>,
    heads: usize,
    what: &str,
) -> Vec<f32> {
    check_attention_biased(ctx, seed, qkv, mask, None, None, heads, what)
}

/// [`check_attention`] with an optional relative position bias [heads, 2T - 1] and local
/// window.
#[allow(clippy::too_many_arguments)]
fn check_attention_biased(
    ctx: &Context,
    seed: u64,
    qkv: &HostTensor,
    mask: &HostTensor<u32>,
    rel_bias: Option<&HostTensor>,
    window: Option<usize>,
    heads: usize,
    what: &str,
) -> Vec<f32> {
    let (b, t) = (mask.shape[0], mask.shape[1]);
    let c = qkv.shape[2] / 3;
    let mut cpu = nan_host(&[b, t, c]);
    let extra = AttentionBias { rel_bias, window };
    reference::attention_biased(qkv, mask, extra, heads, &mut cpu).expect("cpu");
    let out = nan_filled(ctx, &[b, t, c], "out");
    let mut rec = Recorder::new(ctx);
    let gbias = rel_bias.map(|r| upload(ctx, r, "rel_bias"));
    let extra = AttentionBias {
        rel_bias: gbias.as_ref(),
        window,
    };
    kernels::attention_biased(
        &mut rec,
        &upload(ctx, qkv, "qkv"),
        &upload_u32(ctx, mask, "mask"),
        extra,
        heads,
        &out,
    )
    .expect("record");
    rec.submit_blocking().expect("submit");
    let got = read_f32(ctx, &out);
    assert_close(
        &format!("attention seed {seed} {what}"),
        &got,
        &cpu.data,
        2e-6,
        1e-5,
    );
    got
}

/// Every mask pattern (one batch entry each) on sequences below one key tile, off the tile
/// multiples, past several query tiles, and head sizes 8 to 128 (12, 48, 60 and 96 included:
/// queries x keys tiles of 32x32, 32x16, 32x16 and 16x8; see `kernels::attention_tiles`).
#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn attention_masks_and_head_sizes_match_twin() {
    let ctx = ctx();
    // (heads, T, D)
    let cases = [
        (1, 1, 8),
        (2, 5, 64),
        (1, 20, 8),
        (2, 37, 64),
        (3, 70, 32),
        (1, 19, 128),
        (2, 130, 16),
        (2, 45, 12),
        (2, 33, 48),
        (1, 65, 60),
        (2, 50, 96),
    ];
    for (i, (heads, t, d)) in cases.into_iter().enumerate() {
        let seed = 1100 + i as u64;
        let mut r = rng(seed);
        let qkv = random_host(&mut r, &[Mask::EVERY.len(), t, 3 * heads * d], 1.5);
        let mask = mask_of(&Mask::EVERY, t, key_tile(d));
        let what = format!("heads={heads} t={t} d={d} masks {:?}", Mask::EVERY);
        check_attention(ctx, seed, &qkv, &mask, heads, &what);
    }
}

/// MPNet's relative position bias (one value per head and distance k - q) added before the
/// mask, on sequences below one key tile, across query and key tiles, with every mask.
#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn attention_relative_bias_matches_twin() {
    let ctx = ctx();
    for (i, (heads, t, d)) in [(2, 5, 8), (3, 45, 32), (2, 70, 64)]
        .into_iter()
        .enumerate()
    {
        let seed = 1300 + i as u64;
        let mut r = rng(seed);
        let qkv = random_host(&mut r, &[Mask::EVERY.len(), t, 3 * heads * d], 1.5);
        let bias = random_host(&mut r, &[heads, 2 * t - 1], 2.0);
        let mask = mask_of(&Mask::EVERY, t, key_tile(d));
        let what = format!("rel bias heads={heads} t={t} d={d}");
        check_attention_biased(ctx, seed, &qkv, &mask, Some(&bias), None, heads, &what);
    }
    // A bias of the wrong shape is refused on both sides.
    let qkv = HostTensor::zeros(&[1, 4, 3 * 8]);
    let mask = HostTensor::new(&[1, 4], vec![1u32; 4]).expect("mask");
    let bad = HostTensor::zeros(&[1, 8]);
    let mut out = HostTensor::zeros(&[1, 4, 8]);
    let extra = AttentionBias {
        rel_bias: Some(&bad),
        window: None,
    };
    let err = reference::attention_biased(&qkv, &mask, extra, 1, &mut out).expect_err("shape");
    assert!(err.to_string().contains("rel_bias"), "{err}");
}

/// ModernBERT's local attention: keys farther than the window from the query are masked, on
/// windows smaller than one tile, across tiles, and with every padding mask.
#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn attention_local_window_matches_twin() {
    let ctx = ctx();
    for (i, (heads, t, d, window)) in [(2, 9, 8, 2), (3, 70, 32, 5), (2, 100, 64, 40)]
        .into_iter()
        .enumerate()
    {
        let seed = 1350 + i as u64;
        let mut r = rng(seed);
        let qkv = random_host(&mut r, &[Mask::EVERY.len() - 1, t, 3 * heads * d], 1.5);
        // Every pattern but "no key at all" (a window row of masked keys only is as undefined
        // in transformers as it is here).
        let mask = mask_of(&Mask::EVERY[..4], t, key_tile(d));
        let what = format!("window {window} heads={heads} t={t} d={d}");
        check_attention_biased(ctx, seed, &qkv, &mask, None, Some(window), heads, &what);
    }
}

/// BERT-base at sequence 128: B = 2, 12 heads of 64 (key tiles of 16), one sequence padded on
/// the left by 19 keys (more than one tile), the other with holes.
#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn attention_realistic_bert_base_with_padding() {
    let ctx = ctx();
    let (heads, t, d) = (12, 128, 64);
    let mut r = rng(1150);
    let patterns = [Mask::Left, Mask::Holes];
    let qkv = random_host(&mut r, &[patterns.len(), t, 3 * heads * d], 1.5);
    let mask = mask_of(&patterns, t, key_tile(d));
    let what = format!("BERT-base heads={heads} t={t} d={d} masks {patterns:?}");
    check_attention(ctx, 1150, &qkv, &mask, heads, &what);
}

/// A fully masked row averages V uniformly (Hugging Face's f32::MIN bias), never NaN, also
/// when its keys span several key tiles.
#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn attention_fully_masked_row_is_finite() {
    let ctx = ctx();
    for (heads, t, d) in [(2, 5, 8), (1, 75, 8), (2, 40, 64)] {
        let c = heads * d;
        let mut r = rng(1200);
        let qkv = random_host(&mut r, &[1, t, 3 * c], 1.0);
        let mask = HostTensor::new(&[1, t], vec![0u32; t]).expect("mask");
        let mut cpu = nan_host(&[1, t, c]);
        reference::attention(&qkv, &mask, heads, &mut cpu).expect("cpu");
        // Uniform weights: every query row is the mean of V over all keys.
        for e in 0..c {
            let mean = (0..t)
                .map(|j| qkv.data[j * 3 * c + 2 * c + e] as f64)
                .sum::<f64>()
                / t as f64;
            assert!(
                (cpu.data[e] as f64 - mean).abs() < 1e-6,
                "twin: uniform average, t={t} d={d} channel {e}"
            );
        }
        let got = check_attention(
            ctx,
            1200,
            &qkv,
            &mask,
            heads,
            &format!("fully masked t={t} d={d}"),
        );
        assert!(
            got.iter().all(|v| v.is_finite()),
            "NaN or inf in a fully masked row (t={t} d={d})"
        );
    }
}

fn branch(
    h: usize,
    w: usize,
    c: usize,
    channel_offset: usize,
    channels: usize,
    heads: usize,
    window: (usize, usize),
) -> CswinBranch {
    CswinBranch {
        h,
        w,
        c,
        channel_offset,
        channels,
        heads,
        window,
    }
}

/// Both branches of a block, stripes of width 1, maps the window does not divide (padding),
/// windows past one query tile, one global branch, and head sizes 8 to 96 (12, 48, 60 and 96
/// included).
#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn cswin_attention_matches_twin() {
    let ctx = ctx();
    let cases = [
        vec![
            branch(8, 8, 16, 0, 8, 1, (8, 2)),
            branch(8, 8, 16, 8, 8, 1, (2, 8)),
        ],
        vec![
            branch(6, 6, 32, 0, 16, 2, (6, 1)),
            branch(6, 6, 32, 16, 16, 2, (1, 6)),
        ],
        vec![
            branch(7, 9, 32, 0, 16, 1, (7, 2)),
            branch(7, 9, 32, 16, 16, 1, (3, 9)),
        ],
        vec![
            branch(14, 14, 48, 0, 24, 1, (14, 7)),
            branch(14, 14, 48, 24, 24, 1, (7, 14)),
        ],
        vec![branch(5, 5, 32, 0, 32, 4, (5, 5))],
        vec![branch(4, 3, 96, 0, 96, 2, (4, 3))],
        // head size 12: two heads per branch
        vec![
            branch(9, 7, 48, 0, 24, 2, (9, 2)),
            branch(9, 7, 48, 24, 24, 2, (2, 7)),
        ],
        // head size 60, windows of 12 and 30 tokens
        vec![
            branch(6, 10, 120, 0, 60, 1, (6, 2)),
            branch(6, 10, 120, 60, 60, 1, (3, 10)),
        ],
        // head size 96 (16 queries by 8 keys), a 70-token window (five query tiles) and a padded one
        vec![
            branch(14, 10, 192, 0, 96, 1, (14, 5)),
            branch(14, 10, 192, 96, 96, 1, (4, 10)),
        ],
        // head size 48, three heads, one global branch past one query tile
        vec![branch(9, 8, 144, 0, 144, 3, (9, 8))],
    ];
    for (i, branches) in cases.iter().enumerate() {
        let first = branches[0];
        let (b, n, c) = (2, first.h * first.w, first.c);
        let mut r = rng(1400 + i as u64);
        let qkv = random_host(&mut r, &[b, n, 3 * c], 1.0);
        let gqkv = upload(ctx, &qkv, "qkv");
        let mut cpu = nan_host(&[b, n, c]);
        let out = nan_filled(ctx, &[b, n, c], "out");
        let mut rec = Recorder::new(ctx);
        let mut keep = Vec::new();
        for br in branches {
            let lw = random_host(&mut r, &[br.channels, 3, 3], 0.5);
            let lb = random_host(&mut r, &[br.channels], 0.5);
            reference::cswin_attention(&qkv, &lw, &lb, br, &mut cpu).expect("cpu");
            let (glw, glb) = (upload(ctx, &lw, "lepe_w"), upload(ctx, &lb, "lepe_b"));
            kernels::cswin_attention(&mut rec, &gqkv, &glw, &glb, br, &out).expect("record");
            keep.push((glw, glb));
        }
        rec.submit_blocking().expect("submit");
        let heads: Vec<_> = branches.iter().map(|b| (b.head_dim(), b.window)).collect();
        assert_close(
            &format!("cswin_attention case {i} (head_dim, window) {heads:?}: {branches:?}"),
            &read_f32(ctx, &out),
            &cpu.data,
            2e-6,
            1e-5,
        );
    }
}
