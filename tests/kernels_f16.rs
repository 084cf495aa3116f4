//! f16 storage variants (matmul, layer_norm, attention, cswin_attention, mean_pool,
//! bert_embeddings) against
//! the CPU twins. The twin of an f16 run is the same twin on
//! inputs rounded to f16 (what the GPU reads), so the comparison checks the kernel's f32
//! accumulation over exactly the same values. Outputs start as NaN.

mod common;

use backbone::kernels::{self, Activation, Epilogue, MatmulTile, StridedMatmul, WLayout};
use backbone::reference::{self, HostTensor};
use backbone::{Context, DType, Recorder, Tensor};
use common::*;

/// `t` as an f16 tensor holds it (the library's rounding, which its uploads and the twin of
/// an f16 run use).
fn round_f16(t: &HostTensor) -> HostTensor {
    t.clone().round_to(DType::F16)
}

/// Uploads `t` stored as f16 or f32.
fn upload_as(ctx: &Context, t: &HostTensor, f16: bool, label: &str) -> Tensor {
    let dtype = if f16 { DType::F16 } else { DType::F32 };
    backbone::models::weights::upload_as(ctx, label, t, dtype).expect("upload")
}

/// An output tensor prefilled with NaN, f16 or f32.
fn nan_output(ctx: &Context, shape: &[usize], f16: bool) -> Tensor {
    if f16 {
        let n = shape.iter().product();
        Tensor::from_f16(ctx, shape, &vec![half::f16::NAN; n], "y16").expect("nan f16")
    } else {
        nan_filled(ctx, shape, "y")
    }
}

/// Relative bound added by an f16 output: the GPU rounds its f32 result to f16 (half an ulp,
/// 2^-11 relative), the twin's f64 result may sit on the other side of a rounding boundary.
fn out_rtol(f16: bool) -> f32 {
    if f16 { 1e-3 } else { 1e-5 }
}

/// The context, when it has SHADER_F16. Without it, checks instead that f16 storage is refused
/// with an error naming the feature, and returns `None`.
fn f16_ctx() -> Option<&'static Context> {
    let ctx = ctx();
    if ctx.capabilities().has(wgpu::Features::SHADER_F16) {
        return Some(ctx);
    }
    let x = Tensor::from_f16(ctx, &[1, 4], &[half::f16::ONE; 4], "x16").expect("x");
    let w = upload(
        ctx,
        &HostTensor::new(&[1, 4], vec![1.0; 4]).expect("w"),
        "w",
    );
    let y = nan_filled(ctx, &[1, 1], "y");
    let err = kernels::matmul(&mut Recorder::new(ctx), &x, &w, &y, Epilogue::none())
        .expect_err("f16 storage without SHADER_F16 must be refused");
    assert!(err.to_string().contains("SHADER_F16"), "{err}");
    eprintln!("f16 refused as it should be on this adapter: {err}");
    None
}

/// One f16-storage matmul (X, W or both f16) against the twin on the rounded inputs.
#[allow(clippy::too_many_arguments)]
fn check(
    ctx: &Context,
    (m, n, k): (usize, usize, usize),
    layout: WLayout,
    f16: (bool, bool, bool),
    epilogue: bool,
    tile: MatmulTile,
    seed: u64,
) {
    let mut r = rng(seed);
    let x = random_host(&mut r, &[m, k], 1.0);
    let w_shape = match layout {
        WLayout::NK => [n, k],
        WLayout::KN => [k, n],
    };
    let w = random_host(&mut r, &w_shape, 0.5);
    let bias = random_host(&mut r, &[n], 1.0);
    let residual = random_host(&mut r, &[m, n], 1.0);
    // An f16 output has an f16 residual: the twin reads the rounded one too.
    let residual = if f16.2 {
        round_f16(&residual)
    } else {
        residual
    };
    let (xr, wr) = (
        if f16.0 { round_f16(&x) } else { x.clone() },
        if f16.1 { round_f16(&w) } else { w.clone() },
    );
    let mut p = StridedMatmul::contiguous(1, m, n, k, true);
    p.w_layout = layout;
    if layout == WLayout::KN {
        p.w.ld = n;
    }
    let host_ep = if epilogue {
        Epilogue {
            act: Activation::Gelu,
            ..Epilogue::none().bias(&bias).residual(&residual)
        }
    } else {
        Epilogue::none()
    };
    let mut cpu = nan_host(&[m, n]);
    reference::matmul_strided(&xr, &wr, &mut cpu, host_ep, &p).expect("twin");

    let (gx, gw) = (
        upload_as(ctx, &x, f16.0, "x"),
        upload_as(ctx, &w, f16.1, "w"),
    );
    let (gb, gres) = (
        upload(ctx, &bias, "bias"),
        upload(ctx, &residual, "residual"),
    );
    let gy = nan_filled(ctx, &[m, n], "y");
    let gep = if epilogue {
        Epilogue {
            act: Activation::Gelu,
            ..Epilogue::none().bias(&gb).residual(&gres)
        }
    } else {
        Epilogue::none()
    };
    let mut rec = Recorder::new(ctx);
    kernels::matmul::matmul_with_tile(&mut rec, &gx, &gw, &gy, gep, &p, tile).expect("record");
    rec.submit_blocking().expect("submit");
    let what = format!(
        "f16 matmul x16={} w16={} y16={} {tile:?} m={m} n={n} k={k} {layout:?} epilogue={epilogue}",
        f16.0, f16.1, f16.2
    );
    // Same inputs on both sides: only the f32 accumulation order differs, as in the f32 tests,
    // plus the f16 rounding of an f16 output.
    let tol = (2e-6 * (k as f32).sqrt()).max(1e-5);
    assert_close(&what, &read_f32(ctx, &gy), &cpu.data, tol, out_rtol(f16.2));
}

#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn matmul_f16_storage_matches_twin() {
    let Some(ctx) = f16_ctx() else { return };
    // Below one tile, off the multiples (scalar loads: K % 4 != 0), vector loads (K % 4 == 0),
    // and a BERT-base projection.
    let shapes = [(1, 7, 5), (65, 127, 63), (33, 68, 132), (128, 768, 768)];
    let mut seed = 900;
    for (i, &shape) in shapes.iter().enumerate() {
        for f16 in [
            (true, false, false),
            (false, true, false),
            (true, true, false),
            (true, true, true),
        ] {
            for tile in MatmulTile::ALL.into_iter().filter(|t| t.fits(ctx)) {
                let layout = if i % 2 == 0 { WLayout::NK } else { WLayout::KN };
                seed += 1;
                check(ctx, shape, layout, f16, i != 0, tile, seed);
            }
        }
    }
}

#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn matmul_f16_storage_dtype_rules() {
    let ctx = ctx();
    let x = Tensor::from_f16(ctx, &[2, 4], &[half::f16::ONE; 8], "x16").expect("x");
    let w = upload(
        ctx,
        &HostTensor::new(&[3, 4], vec![0.5; 12]).expect("w"),
        "w",
    );
    let y16 = Tensor::empty(ctx, &[2, 3], DType::F16, "y16").expect("y16");
    let mut rec = Recorder::new(ctx);
    // A residual has the output's storage type.
    let r32 = nan_filled(ctx, &[2, 3], "r32");
    let err = kernels::matmul(&mut rec, &x, &w, &y16, Epilogue::none().residual(&r32))
        .expect_err("f32 residual for an f16 y");
    assert!(err.to_string().contains("`residual`"), "{err}");
    // u32 is no storage type for a product.
    let wu = Tensor::from_u32(ctx, &[3, 4], &[1; 12], "wu").expect("wu");
    let y = nan_filled(ctx, &[2, 3], "y");
    let err = kernels::matmul(&mut rec, &x, &wu, &y, Epilogue::none()).expect_err("u32 w");
    assert!(err.to_string().contains("`w`"), "{err}");
    if ctx.capabilities().has(wgpu::Features::SHADER_F16) {
        kernels::matmul(&mut rec, &x, &w, &y, Epilogue::none()).expect("f16 x, f32 w");
        rec.submit_blocking().expect("submit");
        assert_close("ones x halves", &read_f32(ctx, &y), &[2.0; 6], 0.0, 0.0);
    }
}

#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn layer_norm_f16_storage_matches_twin() {
    let Some(ctx) = f16_ctx() else { return };
    for (i, (rows, c)) in [(1, 7), (65, 300), (256, 768)].into_iter().enumerate() {
        for f16 in [(true, false), (false, true), (true, true)] {
            for with_residual in [false, true] {
                let mut r = rng(700 + i as u64);
                let x = round_f16(&random_host(&mut r, &[rows, c], 3.0));
                let res = round_f16(&random_host(&mut r, &[rows, c], 1.0));
                let gamma = random_host(&mut r, &[c], 1.5);
                let beta = random_host(&mut r, &[c], 0.2);
                let mut cpu = nan_host(&[rows, c]);
                let residual = with_residual.then_some(&res);
                reference::layer_norm(&x, residual, &gamma, &beta, 1e-12, &mut cpu).expect("twin");
                let gres = upload_as(ctx, &res, f16.0, "residual");
                let gy = nan_output(ctx, &[rows, c], f16.1);
                let mut rec = Recorder::new(ctx);
                kernels::layer_norm(
                    &mut rec,
                    &upload_as(ctx, &x, f16.0, "x"),
                    with_residual.then_some(&gres),
                    &upload(ctx, &gamma, "gamma"),
                    &upload(ctx, &beta, "beta"),
                    1e-12,
                    &gy,
                )
                .expect("record");
                rec.submit_blocking().expect("submit");
                let what = format!("layer_norm f16={f16:?} rows={rows} c={c} res={with_residual}");
                assert_close(&what, &read_f32(ctx, &gy), &cpu.data, 2e-5, out_rtol(f16.1));
            }
        }
    }
}

#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn attention_f16_storage_matches_twin() {
    let Some(ctx) = f16_ctx() else { return };
    check_attention_f16(ctx, 1e-5);
}

/// f16 `attention` against its twin on inputs rounded to f16, within `atol` (plus the f16
/// output's rounding).
fn check_attention_f16(ctx: &Context, atol: f32) {
    // (B, T, heads, head_dim): below one key tile, off the multiple, BERT-base.
    for (i, (b, t, heads, d)) in [(1, 5, 2, 8), (2, 37, 4, 16), (2, 128, 12, 64)]
        .into_iter()
        .enumerate()
    {
        let c = heads * d;
        let mut r = rng(800 + i as u64);
        let qkv = round_f16(&random_host(&mut r, &[b, t, 3 * c], 1.0));
        // Right padding on the last sequence, left padding on the first.
        let mask: Vec<u32> = (0..b * t)
            .map(|j| {
                let (s, k) = (j / t, j % t);
                u32::from(if s == 0 { k >= t / 3 } else { k < t - t / 4 })
            })
            .collect();
        let mask = HostTensor::new(&[b, t], mask).expect("mask");
        // The second case adds MPNet's relative position bias and a local window.
        let bias = (i == 1).then(|| random_host(&mut r, &[heads, 2 * t - 1], 1.0));
        let mut cpu = nan_host(&[b, t, c]);
        let extra = kernels::AttentionBias {
            rel_bias: bias.as_ref(),
            window: (i == 1).then_some(9),
        };
        reference::attention_biased(&qkv, &mask, extra, heads, &mut cpu).expect("twin");
        let gbias = bias.as_ref().map(|x| upload(ctx, x, "rel_bias"));
        for f16 in [(true, false), (false, true), (true, true)] {
            let gy = nan_output(ctx, &[b, t, c], f16.1);
            let mut rec = Recorder::new(ctx);
            let extra = kernels::AttentionBias {
                rel_bias: gbias.as_ref(),
                window: (i == 1).then_some(9),
            };
            kernels::attention_biased(
                &mut rec,
                &upload_as(ctx, &qkv, f16.0, "qkv"),
                &upload_u32(ctx, &mask, "mask"),
                extra,
                heads,
                &gy,
            )
            .expect("record");
            rec.submit_blocking().expect("submit");
            let variant = kernels::attention_variant(ctx, d, f16.0);
            let what = format!("attention {variant} f16={f16:?} b={b} t={t} heads={heads} d={d}");
            assert_close(&what, &read_f32(ctx, &gy), &cpu.data, atol, out_rtol(f16.1));
        }
    }
}

/// CSWin's branch attention with f16 qkv and/or output: both branches of a block on a map the
/// stripes do not divide (padding), a 98-token window (several query tiles) at CSWin-T's head
/// size 32, and head size 12.
#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn cswin_attention_f16_storage_matches_twin() {
    let Some(ctx) = f16_ctx() else { return };
    check_cswin_attention_f16(ctx, 2e-6);
}

/// f16 `cswin_attention` against its twin on inputs rounded to f16, within `atol` (plus the f16
/// output's rounding).
fn check_cswin_attention_f16(ctx: &Context, atol: f32) {
    let branch = |h, w, c, channel_offset, channels, heads, window| kernels::CswinBranch {
        h,
        w,
        c,
        channel_offset,
        channels,
        heads,
        window,
    };
    let cases = [
        [
            branch(7, 9, 32, 0, 16, 2, (7, 2)),
            branch(7, 9, 32, 16, 16, 2, (3, 9)),
        ],
        [
            branch(14, 14, 64, 0, 32, 1, (14, 7)),
            branch(14, 14, 64, 32, 32, 1, (7, 14)),
        ],
        [
            branch(9, 7, 48, 0, 24, 2, (9, 2)),
            branch(9, 7, 48, 24, 24, 2, (2, 7)),
        ],
    ];
    for (i, branches) in cases.iter().enumerate() {
        let (b, n, c) = (2, branches[0].h * branches[0].w, branches[0].c);
        let mut r = rng(950 + i as u64);
        let qkv = round_f16(&random_host(&mut r, &[b, n, 3 * c], 1.0));
        let lepe: Vec<_> = branches
            .iter()
            .map(|br| {
                let w = random_host(&mut r, &[br.channels, 3, 3], 0.5);
                (w, random_host(&mut r, &[br.channels], 0.5))
            })
            .collect();
        let mut cpu = nan_host(&[b, n, c]);
        for (br, (w, bias)) in branches.iter().zip(&lepe) {
            reference::cswin_attention(&qkv, w, bias, br, &mut cpu).expect("twin");
        }
        for f16 in [(true, false), (false, true), (true, true)] {
            let gqkv = upload_as(ctx, &qkv, f16.0, "qkv");
            let gy = nan_output(ctx, &[b, n, c], f16.1);
            let mut rec = Recorder::new(ctx);
            let mut keep = Vec::new();
            for (br, (w, bias)) in branches.iter().zip(&lepe) {
                let (gw, gb) = (upload(ctx, w, "lepe_w"), upload(ctx, bias, "lepe_b"));
                kernels::cswin_attention(&mut rec, &gqkv, &gw, &gb, br, &gy).expect("record");
                keep.push((gw, gb));
            }
            rec.submit_blocking().expect("submit");
            let variant = kernels::attention_variant(ctx, branches[0].head_dim(), f16.0);
            let what = format!("cswin_attention {variant} f16={f16:?} case {i}: {branches:?}");
            assert_close(&what, &read_f32(ctx, &gy), &cpu.data, atol, out_rtol(f16.1));
        }
    }
}

#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn mean_pool_and_embeddings_f16_storage_match_twins() {
    let Some(ctx) = f16_ctx() else { return };
    let (b, t, c) = (3, 41, 300);
    let mut r = rng(900);
    let x = round_f16(&random_host(&mut r, &[b, t, c], 2.0));
    let mask = HostTensor::new(
        &[b, t],
        (0..b * t)
            .map(|j| u32::from(j % t < t - 7 * (j / t)))
            .collect(),
    )
    .expect("mask");
    let mut cpu = nan_host(&[b, c]);
    reference::mean_pool(&x, &mask, &mut cpu).expect("twin");
    let gy = nan_filled(ctx, &[b, c], "pooled");
    let mut rec = Recorder::new(ctx);
    kernels::mean_pool(
        &mut rec,
        &upload_as(ctx, &x, true, "x"),
        &upload_u32(ctx, &mask, "mask"),
        &gy,
    )
    .expect("record");
    rec.submit_blocking().expect("submit");
    assert_close(
        "mean_pool f16 x",
        &read_f32(ctx, &gy),
        &cpu.data,
        1e-6,
        1e-5,
    );

    // The fused embeddings with f16 tables and/or an f16 output.
    let rows = 65;
    let sizes = [1000, 70, 3];
    let mut ids = Vec::new();
    for (k, &n) in sizes.iter().enumerate() {
        ids.extend((0..rows).map(|i| ((i * 7919 + k * 31) % n) as u32));
    }
    let ids = HostTensor::new(&[3, rows], ids).expect("ids");
    let tables: Vec<HostTensor> = sizes
        .iter()
        .map(|&n| round_f16(&random_host(&mut r, &[n, c], 1.0)))
        .collect();
    let gamma = random_host(&mut r, &[c], 1.5);
    let beta = random_host(&mut r, &[c], 0.2);
    let host_tables = kernels::EmbeddingTables {
        word: &tables[0],
        position: &tables[1],
        token_type: &tables[2],
        gamma: &gamma,
        beta: &beta,
    };
    let mut cpu = nan_host(&[rows, c]);
    reference::bert_embeddings(&ids, &host_tables, 1e-12, &mut cpu).expect("twin");
    for f16 in [(true, false), (false, true), (true, true)] {
        let g: Vec<Tensor> = tables
            .iter()
            .map(|t| upload_as(ctx, t, f16.0, "table"))
            .collect();
        let (gg, gb) = (upload(ctx, &gamma, "gamma"), upload(ctx, &beta, "beta"));
        let gpu_tables = kernels::EmbeddingTables {
            word: &g[0],
            position: &g[1],
            token_type: &g[2],
            gamma: &gg,
            beta: &gb,
        };
        let gy = nan_output(ctx, &[rows, c], f16.1);
        let mut rec = Recorder::new(ctx);
        kernels::bert_embeddings(
            &mut rec,
            &upload_u32(ctx, &ids, "ids"),
            &gpu_tables,
            1e-12,
            &gy,
        )
        .expect("record");
        rec.submit_blocking().expect("submit");
        let what = format!("bert_embeddings f16={f16:?}");
        assert_close(&what, &read_f32(ctx, &gy), &cpu.data, 2e-5, out_rtol(f16.1));
    }
}

/// The cooperative-matrix (tensor core) matmul, on a context that opted in to the feature:
/// where the adapter offers f16 fragments, every shape and epilogue against the twin (the
/// fragments hold exactly the f16 inputs; only the f32 accumulation order differs); elsewhere
/// (lavapipe, DX12, WebGPU) the explicit call is refused naming the feature, and
/// `kernels::matmul` keeps using the tiled kernel.
#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn matmul_coop_matches_twin_where_the_adapter_has_it() {
    use backbone::ContextOptions;
    use backbone::kernels::matmul_coop::{coop_fragment, matmul_coop};
    // SAFETY: the test opts in to wgpu's experimental cooperative matrices on purpose.
    let options = unsafe {
        ContextOptions::from_env()
            .expect("options")
            .enable_experimental_cooperative_matrix()
    };
    let ctx = pollster::block_on(Context::new(options)).expect("context");
    let ctx = &ctx;
    let Some((t, sg)) = coop_fragment(ctx) else {
        let x = Tensor::from_f16(ctx, &[2, 4], &[half::f16::ONE; 8], "x").expect("x");
        let w = Tensor::from_f16(ctx, &[3, 4], &[half::f16::ONE; 12], "w").expect("w");
        let y = nan_filled(ctx, &[2, 3], "y");
        let p = StridedMatmul::contiguous(1, 2, 3, 4, true);
        let err = matmul_coop(&mut Recorder::new(ctx), &x, &w, &y, Epilogue::none(), &p)
            .expect_err("no cooperative matrices here");
        assert!(err.to_string().contains("cooperative matrices"), "{err}");
        eprintln!("cooperative-matrix matmul refused as it should be here: {err}");
        return;
    };
    eprintln!("cooperative-matrix matmul: {t}x{t} fragments, subgroup {sg}");
    let shapes = [(1, 7, 5), (65, 127, 63), (33, 68, 132), (128, 768, 768)];
    for (i, &(m, n, k)) in shapes.iter().enumerate() {
        for layout in [WLayout::NK, WLayout::KN] {
            let mut r = rng(1200 + i as u64);
            let x = round_f16(&random_host(&mut r, &[m, k], 1.0));
            let w_shape = if layout == WLayout::NK {
                [n, k]
            } else {
                [k, n]
            };
            let w = round_f16(&random_host(&mut r, &w_shape, 0.5));
            let bias = random_host(&mut r, &[n], 1.0);
            let residual = random_host(&mut r, &[m, n], 1.0);
            let mut p = StridedMatmul::contiguous(1, m, n, k, true);
            p.w_layout = layout;
            if layout == WLayout::KN {
                p.w.ld = n;
            }
            let ep = Epilogue {
                act: Activation::Gelu,
                ..Epilogue::none().bias(&bias).residual(&residual)
            };
            let mut cpu = nan_host(&[m, n]);
            reference::matmul_strided(&x, &w, &mut cpu, ep, &p).expect("twin");
            let (gb, gr) = (
                upload(ctx, &bias, "bias"),
                upload(ctx, &residual, "residual"),
            );
            let gy = nan_filled(ctx, &[m, n], "y");
            let gep = Epilogue {
                act: Activation::Gelu,
                ..Epilogue::none().bias(&gb).residual(&gr)
            };
            let mut rec = Recorder::new(ctx);
            let (gx, gw) = (upload_as(ctx, &x, true, "x"), upload_as(ctx, &w, true, "w"));
            matmul_coop(&mut rec, &gx, &gw, &gy, gep, &p).expect("record");
            rec.submit_blocking().expect("submit");
            let tol = (2e-6 * (k as f32).sqrt()).max(1e-5);
            let what = format!("matmul_coop {t}x{t} m={m} n={n} k={k} {layout:?}");
            assert_close(&what, &read_f32(ctx, &gy), &cpu.data, tol, 1e-5);
        }
    }
}

/// Both attention kernels on cooperative matrices where the adapter has them (f16 qkv, head
/// sizes the fragment divides: 16, 32 and 64 of the cases with 16x16 fragments, 8 too with 8x8): the probabilities
/// enter P·V rounded to f16, so the bound is 2^-11 of |V| (<= 1) plus the f32 error. Elsewhere
/// the same checks run the scalar kernels, and the test checks that they were chosen.
#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn attention_coop_matches_twin_where_the_adapter_has_it() {
    use backbone::ContextOptions;
    // SAFETY: the test opts in to wgpu's experimental cooperative matrices on purpose.
    let options = unsafe {
        ContextOptions::from_env()
            .expect("options")
            .enable_experimental_cooperative_matrix()
    };
    let ctx = pollster::block_on(Context::new(options)).expect("context");
    let ctx = &ctx;
    if !ctx.capabilities().has(wgpu::Features::SHADER_F16) {
        return;
    }
    let coop: Vec<_> = [8, 12, 16, 24, 32, 64]
        .into_iter()
        .map(|d| (d, kernels::CoopAttention::for_head(ctx, d)))
        .collect();
    eprintln!("cooperative attention per head size: {coop:?}");
    if kernels::matmul_coop::coop_fragment(ctx).is_none() {
        assert!(coop.iter().all(|(_, c)| c.is_none()), "{coop:?}");
        assert!(kernels::attention_variant(ctx, 64, true).starts_with("flash-2"));
    }
    check_attention_f16(ctx, 1e-3);
    check_cswin_attention_f16(ctx, 1e-3);
}
