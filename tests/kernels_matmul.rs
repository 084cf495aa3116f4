//! The matmul against its CPU twin (`reference::matmul_strided`) on seeded random data: every
//! tile on shapes below one tile, off the tile multiples and at BERT sizes, every epilogue
//! (bias, GELU, tanh, residual) on plain, batched and strided views, both load paths, and the
//! large 128 x 128 tile over long reductions. Outputs start as NaN on both sides, so an element
//! the kernel (or the twin) fails to write fails the comparison; elements outside a strided
//! output view must stay NaN (untouched).

mod common;

use backbone::kernels::{
    self, Activation, Epilogue, MatmulTile, MatrixView, StridedMatmul, WLayout,
};
use backbone::reference::{self, HostTensor};
use backbone::{Context, Recorder};
use common::*;

/// Awkward sizes: 1, below a tile, around tile multiples, and past several tiles.
const SIZES: [usize; 6] = [1, 7, 63, 65, 127, 300];

/// Which elements of the output the product's view covers.
fn covered(p: &StridedMatmul, len: usize) -> Vec<bool> {
    let mut out = vec![false; len];
    for outer in 0..p.batch[0] {
        for inner in 0..p.batch[1] {
            let base = p.y.offset + outer * p.y.outer_stride + inner * p.y.inner_stride;
            for i in 0..p.m {
                for j in 0..p.n {
                    out[base + i * p.y.ld + j] = true;
                }
            }
        }
    }
    out
}

/// Compares a GPU output with its twin's on the product's output view; outside the view both
/// must be untouched (still the NaN they started as). Failures name indices into the whole
/// output.
fn assert_view_close(
    what: &str,
    p: &StridedMatmul,
    gpu: &[f32],
    cpu: &[f32],
    atol: f32,
    rtol: f32,
) {
    assert_eq!(gpu.len(), cpu.len(), "{what}: length differs");
    let inside = covered(p, cpu.len());
    let written = |v: &[f32]| (0..v.len()).find(|&i| !inside[i] && !v[i].is_nan());
    if let Some(i) = written(gpu) {
        panic!(
            "{what}: index {i} is outside the output view but the GPU wrote {} there",
            gpu[i]
        );
    }
    if let Some(i) = written(cpu) {
        panic!(
            "{what}: index {i} is outside the output view but the twin wrote {} there",
            cpu[i]
        );
    }
    // Outside the view compare zeros; inside, a NaN left on either side fails.
    let outside_as_zero = |v: &[f32]| -> Vec<f32> {
        v.iter()
            .zip(&inside)
            .map(|(&x, &keep)| if keep { x } else { 0.0 })
            .collect()
    };
    assert_close(
        what,
        &outside_as_zero(gpu),
        &outside_as_zero(cpu),
        atol,
        rtol,
    );
}

/// Runs one matmul on the GPU with `tile` and on the CPU, and compares.
#[allow(clippy::too_many_arguments)]
fn check_matmul(
    ctx: &Context,
    seed: u64,
    x: &HostTensor,
    w: &HostTensor,
    y_shape: &[usize],
    p: &StridedMatmul,
    ep: Epilogue<'_, HostTensor>,
    tile: MatmulTile,
) {
    let mut cpu = nan_host(y_shape);
    reference::matmul_strided(x, w, &mut cpu, ep, p).expect("cpu matmul");
    let (gx, gw, gy) = (
        upload(ctx, x, "x"),
        upload(ctx, w, "w"),
        nan_filled(ctx, y_shape, "y"),
    );
    let gb = ep.bias.map(|b| upload(ctx, b, "bias"));
    let gr = ep.residual.map(|r| upload(ctx, r, "residual"));
    let gep = Epilogue {
        alpha: ep.alpha,
        bias: gb.as_ref(),
        act: ep.act,
        residual: gr.as_ref(),
    };
    let mut rec = Recorder::new(ctx);
    kernels::matmul::matmul_with_tile(&mut rec, &gx, &gw, &gy, gep, p, tile).expect("record");
    rec.submit_blocking().expect("submit");
    let what = format!(
        "matmul seed {seed} {tile:?} m={} n={} k={} batch={:?} {:?} bias={} act={:?} residual={}",
        p.m,
        p.n,
        p.k,
        p.batch,
        p.w_layout,
        ep.bias.is_some(),
        ep.act,
        ep.residual.is_some()
    );
    let tol = 2e-6 * (p.k as f32).sqrt();
    assert_view_close(
        &what,
        p,
        &read_f32(ctx, &gy),
        &cpu.data,
        tol.max(1e-5),
        1e-5,
    );
}

/// The variants this adapter runs: every tile, and the subgroup kernel where the adapter has
/// subgroups (it must then be offered).
fn tiles(ctx: &Context) -> Vec<MatmulTile> {
    let tiles: Vec<_> = MatmulTile::ALL
        .into_iter()
        .filter(|t| t.fits(ctx))
        .collect();
    let subgroups = ctx.capabilities().has(wgpu::Features::SUBGROUP);
    assert_eq!(
        tiles.contains(&MatmulTile::Subgroup),
        subgroups,
        "the subgroup variant is offered exactly where the adapter has subgroups"
    );
    assert!(tiles.len() >= 3, "every workgroup tile fits: {tiles:?}");
    tiles
}

#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn matmul_awkward_shapes_every_variant() {
    let ctx = ctx();
    let mut seed = 0;
    for (i, &m) in SIZES.iter().enumerate() {
        // n and k walk the same list shifted, so every size meets every role.
        let n = SIZES[(i + 2) % SIZES.len()];
        let k = SIZES[(i + 4) % SIZES.len()];
        for tile in tiles(ctx) {
            seed += 1;
            let mut r = rng(seed);
            let x = random_host(&mut r, &[m, k], 1.0);
            let w = random_host(&mut r, &[n, k], 1.0);
            let p = StridedMatmul::contiguous(1, m, n, k, true);
            check_matmul(ctx, seed, &x, &w, &[m, n], &p, Epilogue::none(), tile);
        }
    }
}

#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn matmul_epilogues() {
    let ctx = ctx();
    let (m, n, k) = (65, 127, 63);
    // Every bias x activation x residual combination, on every variant.
    let acts = [
        Activation::None,
        Activation::Gelu,
        Activation::Tanh,
        Activation::Relu,
    ];
    for flags in 0..16u32 {
        let act = acts[flags as usize / 4];
        for tile in tiles(ctx) {
            let seed = 100 + flags as u64;
            let mut r = rng(seed);
            let x = random_host(&mut r, &[m, k], 1.0);
            let w = random_host(&mut r, &[n, k], 0.5);
            let bias = random_host(&mut r, &[n], 1.0);
            let residual = random_host(&mut r, &[m, n], 1.0);
            let mut ep = Epilogue {
                act,
                ..Epilogue::none().alpha(0.75)
            };
            if flags & 1 != 0 {
                ep = ep.bias(&bias);
            }
            if flags & 2 != 0 {
                ep = ep.residual(&residual);
            }
            let p = StridedMatmul::contiguous(1, m, n, k, true);
            check_matmul(ctx, seed, &x, &w, &[m, n], &p, ep, tile);
        }
    }
}

/// The projections of a MiniLM / BERT layer at seq 128: QKV (384 -> 1152), FFN up with GELU
/// (384 -> 1536) and FFN down with residual (1536 -> 384).
#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn matmul_realistic_bert_projections() {
    let ctx = ctx();
    let m = 128;
    for (seed, n, k, gelu, residual) in [
        (200, 1152, 384, false, false),
        (201, 1536, 384, true, false),
        (202, 384, 1536, false, true),
    ] {
        let mut r = rng(seed);
        let x = random_host(&mut r, &[m, k], 1.0);
        let w = random_host(&mut r, &[n, k], 0.05);
        let bias = random_host(&mut r, &[n], 0.1);
        let res = random_host(&mut r, &[m, n], 1.0);
        let mut ep = Epilogue::none().bias(&bias);
        if gelu {
            ep = ep.gelu();
        }
        if residual {
            ep = ep.residual(&res);
        }
        let p = StridedMatmul::contiguous(1, m, n, k, true);
        let tile = MatmulTile::choose(ctx, m, n, k, 1, false);
        check_matmul(ctx, seed, &x, &w, &[m, n], &p, ep, tile);
    }
}

#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn matmul_batched_plain_api() {
    let ctx = ctx();
    let mut r = rng(300);
    let (b0, b1, m, n, k) = (2, 3, 7, 65, 33);
    let x = random_host(&mut r, &[b0, b1, m, k], 1.0);
    let bias = random_host(&mut r, &[n], 1.0);
    let residual = random_host(&mut r, &[b0, b1, m, n], 1.0);
    for w_shape in [vec![n, k], vec![b0, b1, n, k]] {
        let w = random_host(&mut r, &w_shape, 1.0);
        for with_epilogue in [false, true] {
            let ep = if with_epilogue {
                Epilogue::none().bias(&bias).gelu().residual(&residual)
            } else {
                Epilogue::none()
            };
            let mut cpu = nan_host(&[b0, b1, m, n]);
            reference::matmul(&x, &w, &mut cpu, ep).expect("cpu");
            let gy = nan_filled(ctx, &[b0, b1, m, n], "y");
            let (gb, gr) = (
                upload(ctx, &bias, "bias"),
                upload(ctx, &residual, "residual"),
            );
            let gep = if with_epilogue {
                Epilogue::none().bias(&gb).gelu().residual(&gr)
            } else {
                Epilogue::none()
            };
            let mut rec = Recorder::new(ctx);
            let (gx, gw) = (upload(ctx, &x, "x"), upload(ctx, &w, "w"));
            kernels::matmul(&mut rec, &gx, &gw, &gy, gep).expect("record");
            rec.submit_blocking().expect("submit");
            assert_close(
                &format!("batched matmul, w {w_shape:?}, epilogue {with_epilogue}"),
                &read_f32(ctx, &gy),
                &cpu.data,
                1e-5,
                1e-5,
            );
        }
    }
}

/// Attention's scores S[b, h] = Q_h·K_hᵀ ([B, H, T, T]) read straight from a fused QKV
/// buffer [B, T, 3C].
fn scores_problem(batch: usize, heads: usize, t: usize, d: usize) -> StridedMatmul {
    let c = heads * d;
    let qkv_view = |offset| MatrixView {
        offset,
        ld: 3 * c,
        outer_stride: t * 3 * c,
        inner_stride: d,
    };
    StridedMatmul {
        m: t,
        n: t,
        k: d,
        batch: [batch, heads],
        x: qkv_view(0),
        w: qkv_view(c),
        w_layout: WLayout::NK,
        y: MatrixView {
            offset: 0,
            ld: t,
            outer_stride: heads * t * t,
            inner_stride: t * t,
        },
    }
}

/// Attention's O[b, :, h] = P_h·V_h: probabilities [B, H, T, T] times V read from the fused QKV
/// buffer, written into merged heads [B, T, C].
fn pv_problem(batch: usize, heads: usize, t: usize, d: usize) -> StridedMatmul {
    let c = heads * d;
    StridedMatmul {
        m: t,
        n: d,
        k: t,
        batch: [batch, heads],
        x: MatrixView {
            offset: 0,
            ld: t,
            outer_stride: heads * t * t,
            inner_stride: t * t,
        },
        w: MatrixView {
            offset: 2 * c,
            ld: 3 * c,
            outer_stride: t * 3 * c,
            inner_stride: d,
        },
        w_layout: WLayout::KN,
        y: MatrixView {
            offset: 0,
            ld: c,
            outer_stride: t * c,
            inner_stride: d,
        },
    }
}

/// Attention's two products read straight from a fused QKV buffer [B, T, 3C]: scores
/// S[b, h] = alpha · Q_h·K_hᵀ ([B, H, T, T]), then O[b, :, h] = P_h·V_h into [B, T, C].
#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn matmul_strided_attention_products() {
    let ctx = ctx();
    let mut r = rng(400);
    for (batch, heads, t, d) in [(1, 1, 1, 8), (2, 3, 7, 8), (2, 4, 65, 16)] {
        let c = heads * d;
        let qkv = random_host(&mut r, &[batch, t, 3 * c], 1.0);
        let alpha = 1.0 / (d as f32).sqrt();
        let probs = random_host(&mut r, &[batch, heads, t, t], 1.0);
        for tile in tiles(ctx) {
            let (scores, pv) = (
                scores_problem(batch, heads, t, d),
                pv_problem(batch, heads, t, d),
            );
            let ep = Epilogue::none().alpha(alpha);
            check_matmul(
                ctx,
                400,
                &qkv,
                &qkv,
                &[batch, heads, t, t],
                &scores,
                ep,
                tile,
            );
            let ep = Epilogue::none();
            check_matmul(ctx, 401, &probs, &qkv, &[batch, t, c], &pv, ep, tile);
        }
    }
}

/// Every epilogue on the strided products: bias (over keys for the scores, over a head's
/// channels for P·V), GELU or tanh, and a residual laid out as the whole output, on head sizes
/// with vec4 loads (12) and without (10).
#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn matmul_epilogues_on_strided_attention_products() {
    let ctx = ctx();
    let mut r = rng(450);
    for (batch, heads, t, d) in [(2, 3, 37, 12), (1, 2, 20, 10)] {
        let c = heads * d;
        let qkv = random_host(&mut r, &[batch, t, 3 * c], 1.0);
        let probs = random_host(&mut r, &[batch, heads, t, t], 1.0);
        let (scores, pv) = (
            scores_problem(batch, heads, t, d),
            pv_problem(batch, heads, t, d),
        );
        let (s_bias, s_res) = (
            random_host(&mut r, &[t], 1.0),
            random_host(&mut r, &[batch, heads, t, t], 1.0),
        );
        let (o_bias, o_res) = (
            random_host(&mut r, &[d], 1.0),
            random_host(&mut r, &[batch, t, c], 1.0),
        );
        let combos = [
            (true, Activation::Gelu, true),
            (true, Activation::Tanh, false),
            (false, Activation::None, true),
            (false, Activation::Gelu, false),
        ];
        let variants = tiles(ctx);
        for (i, (bias, act, residual)) in combos.into_iter().enumerate() {
            let tile = variants[i % variants.len()];
            let mut ep = Epilogue {
                act,
                ..Epilogue::none().alpha(0.5)
            };
            let mut ep_o = Epilogue {
                act,
                ..Epilogue::none()
            };
            if bias {
                ep = ep.bias(&s_bias);
                ep_o = ep_o.bias(&o_bias);
            }
            if residual {
                ep = ep.residual(&s_res);
                ep_o = ep_o.residual(&o_res);
            }
            let y_scores = [batch, heads, t, t];
            check_matmul(ctx, 450, &qkv, &qkv, &y_scores, &scores, ep, tile);
            check_matmul(ctx, 451, &probs, &qkv, &[batch, t, c], &pv, ep_o, tile);
        }
    }
}

/// A batched product whose output view has gaps: an offset, rows `ld` > N apart and matrices
/// spaced irregularly, W per inner batch entry only (as per-head weights). The epilogue's
/// residual is laid out as the whole output; the gaps must stay untouched.
#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn matmul_epilogue_on_an_output_view_with_gaps() {
    let ctx = ctx();
    let mut r = rng(470);
    let (outer, inner, m, n, k) = (2, 3, 9, 17, 20);
    let x = random_host(&mut r, &[outer, inner, m, k], 1.0);
    let w = random_host(&mut r, &[inner, n, k], 1.0);
    let ld = n + 3;
    let inner_stride = m * ld + 2;
    let y_view = MatrixView {
        offset: 5,
        ld,
        outer_stride: inner * inner_stride + 1,
        inner_stride,
    };
    let y_len = 5 + outer * y_view.outer_stride + 4;
    let p = StridedMatmul {
        m,
        n,
        k,
        batch: [outer, inner],
        x: MatrixView {
            offset: 0,
            ld: k,
            outer_stride: inner * m * k,
            inner_stride: m * k,
        },
        w: MatrixView {
            offset: 0,
            ld: k,
            outer_stride: 0,
            inner_stride: n * k,
        },
        w_layout: WLayout::NK,
        y: y_view,
    };
    let bias = random_host(&mut r, &[n], 1.0);
    let residual = random_host(&mut r, &[y_len], 1.0);
    for (i, tile) in tiles(ctx).into_iter().enumerate() {
        let act = [Activation::Gelu, Activation::Tanh, Activation::None][i % 3];
        let ep = Epilogue {
            act,
            ..Epilogue::none().bias(&bias).residual(&residual)
        };
        check_matmul(ctx, 470, &x, &w, &[y_len], &p, ep, tile);
    }
}

/// The large 128 x 128 tile (K step 8) over long reductions: K = 1536 (MiniLM's FFN down) and
/// 3072 (BERT-base's), an unaligned K (scalar loads) with partial tiles, and few rows; every
/// epilogue.
#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn matmul_large_tile_long_reductions() {
    let ctx = ctx();
    let cases = [
        (1600, 128, 384, 1536, Activation::None, true, true),
        (1601, 130, 200, 1537, Activation::Gelu, true, false),
        (1602, 5, 129, 2048, Activation::Tanh, false, true),
        (1603, 64, 768, 3072, Activation::None, true, true),
    ];
    for (seed, m, n, k, act, with_bias, with_residual) in cases {
        let mut r = rng(seed);
        let x = random_host(&mut r, &[m, k], 1.0);
        let w = random_host(&mut r, &[n, k], 0.1);
        let bias = random_host(&mut r, &[n], 0.5);
        let residual = random_host(&mut r, &[m, n], 1.0);
        let mut ep = Epilogue {
            act,
            ..Epilogue::none()
        };
        if with_bias {
            ep = ep.bias(&bias);
        }
        if with_residual {
            ep = ep.residual(&residual);
        }
        let p = StridedMatmul::contiguous(1, m, n, k, true);
        check_matmul(ctx, seed, &x, &w, &[m, n], &p, ep, MatmulTile::Large);
    }
}

/// Both load paths of the matmul: vec4 global loads (contiguous dimension, offsets and strides
/// all multiples of 4) and scalar loads (any of them not), for W as [N, K] and as [K, N].
#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn matmul_vectorised_and_scalar_loads() {
    let ctx = ctx();
    for (i, (m, n, k)) in [(33, 68, 68), (33, 67, 68), (33, 68, 67), (5, 132, 260)]
        .into_iter()
        .enumerate()
    {
        for layout in [WLayout::NK, WLayout::KN] {
            for tile in tiles(ctx) {
                let mut r = rng(1500 + i as u64);
                let x = random_host(&mut r, &[m, k], 1.0);
                let (w_shape, w_view) = match layout {
                    WLayout::NK => ([n, k], MatrixView::contiguous(n, k)),
                    WLayout::KN => ([k, n], MatrixView::contiguous(k, n)),
                };
                let w = random_host(&mut r, &w_shape, 1.0);
                let p = StridedMatmul {
                    m,
                    n,
                    k,
                    batch: [1, 1],
                    x: MatrixView::contiguous(m, k),
                    w: w_view,
                    w_layout: layout,
                    y: MatrixView::contiguous(m, n),
                };
                check_matmul(ctx, 1500, &x, &w, &[m, n], &p, Epilogue::none(), tile);
            }
        }
    }
}
