//! Every GPU kernel against its CPU twin on seeded random data, on shapes below one tile,
//! non-multiples of the tiles, and realistic BERT sizes.

mod common;

use backbone::kernels::{
    self, Activation, Epilogue, MatmulTile, MatrixView, StridedMatmul, WLayout,
};
use backbone::reference::{self, HostTensor};
use backbone::{Context, Recorder, Tensor};
use common::*;

/// Awkward sizes: 1, below a tile, around tile multiples, and past several tiles.
const SIZES: [usize; 6] = [1, 7, 63, 65, 127, 300];

fn read(ctx: &Context, t: &Tensor) -> Vec<f32> {
    t.read_f32_blocking(ctx).expect("read back")
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
    let mut cpu = HostTensor::zeros(y_shape);
    reference::matmul_strided(x, w, &mut cpu, ep, p).expect("cpu matmul");
    let (gx, gw, gy) = (
        upload(ctx, x, "x"),
        upload(ctx, w, "w"),
        empty(ctx, y_shape, "y"),
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
    assert_close(&what, &read(ctx, &gy), &cpu.data, tol.max(1e-5), 1e-5);
}

#[test]
fn matmul_awkward_shapes_both_tiles() {
    let Some(ctx) = gpu() else { return };
    let mut seed = 0;
    for (i, &m) in SIZES.iter().enumerate() {
        // n and k walk the same list shifted, so every size meets every role.
        let n = SIZES[(i + 2) % SIZES.len()];
        let k = SIZES[(i + 4) % SIZES.len()];
        for tile in MatmulTile::ALL {
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
fn matmul_epilogues() {
    let Some(ctx) = gpu() else { return };
    let (m, n, k) = (65, 127, 63);
    // Every bias x activation x residual combination, on both tiles.
    for flags in 0..12u32 {
        let act = [Activation::None, Activation::Gelu, Activation::Tanh][flags as usize / 4];
        for tile in MatmulTile::ALL {
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
fn matmul_realistic_bert_projections() {
    let Some(ctx) = gpu() else { return };
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
        let tile = MatmulTile::choose(ctx, m, n, 1);
        check_matmul(ctx, seed, &x, &w, &[m, n], &p, ep, tile);
    }
}

#[test]
fn matmul_batched_plain_api() {
    let Some(ctx) = gpu() else { return };
    let mut r = rng(300);
    let (b0, b1, m, n, k) = (2, 3, 7, 65, 33);
    let x = random_host(&mut r, &[b0, b1, m, k], 1.0);
    for w_shape in [vec![n, k], vec![b0, b1, n, k]] {
        let w = random_host(&mut r, &w_shape, 1.0);
        let mut cpu = HostTensor::zeros(&[b0, b1, m, n]);
        reference::matmul(&x, &w, &mut cpu, Epilogue::none()).expect("cpu");
        let gy = empty(ctx, &[b0, b1, m, n], "y");
        let mut rec = Recorder::new(ctx);
        kernels::matmul(
            &mut rec,
            &upload(ctx, &x, "x"),
            &upload(ctx, &w, "w"),
            &gy,
            Epilogue::none(),
        )
        .expect("record");
        rec.submit_blocking().expect("submit");
        assert_close(
            &format!("batched matmul, w {w_shape:?}"),
            &read(ctx, &gy),
            &cpu.data,
            1e-5,
            1e-5,
        );
    }
}

/// Attention's two products read straight from a fused QKV buffer [B, T, 3C]: scores
/// S[b, h] = alpha · Q_h·K_hᵀ ([B, H, T, T]), then O[b, :, h] = P_h·V_h into [B, T, C].
#[test]
fn matmul_strided_attention_products() {
    let Some(ctx) = gpu() else { return };
    let mut r = rng(400);
    for (batch, heads, t, d) in [(1, 1, 1, 8), (2, 3, 7, 8), (2, 4, 65, 16)] {
        let c = heads * d;
        let qkv = random_host(&mut r, &[batch, t, 3 * c], 1.0);
        let scores = StridedMatmul {
            m: t,
            n: t,
            k: d,
            batch: [batch, heads],
            x: MatrixView {
                offset: 0,
                ld: 3 * c,
                outer_stride: t * 3 * c,
                inner_stride: d,
            },
            w: MatrixView {
                offset: c,
                ld: 3 * c,
                outer_stride: t * 3 * c,
                inner_stride: d,
            },
            w_layout: WLayout::NK,
            y: MatrixView {
                offset: 0,
                ld: t,
                outer_stride: heads * t * t,
                inner_stride: t * t,
            },
        };
        let alpha = 1.0 / (d as f32).sqrt();
        for tile in MatmulTile::ALL {
            check_matmul(
                ctx,
                400,
                &qkv,
                &qkv,
                &[batch, heads, t, t],
                &scores,
                Epilogue::none().alpha(alpha),
                tile,
            );
        }
        let probs = random_host(&mut r, &[batch, heads, t, t], 1.0);
        let pv = StridedMatmul {
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
        };
        for tile in MatmulTile::ALL {
            check_matmul(
                ctx,
                401,
                &probs,
                &qkv,
                &[batch, t, c],
                &pv,
                Epilogue::none(),
                tile,
            );
        }
    }
}

/// (rows, C) pairs for the row kernels: awkward sizes plus a BERT-base activation.
fn row_shapes() -> Vec<(usize, usize)> {
    let mut shapes: Vec<_> = SIZES
        .iter()
        .zip(SIZES.iter().rev())
        .map(|(&r, &c)| (r, c))
        .collect();
    shapes.push((128, 768));
    shapes
}

#[test]
fn layer_norm_matches_twin() {
    let Some(ctx) = gpu() else { return };
    for (i, (rows, c)) in row_shapes().into_iter().enumerate() {
        for with_residual in [false, true] {
            let mut r = rng(500 + i as u64);
            let x = random_host(&mut r, &[rows, c], 3.0);
            let res = random_host(&mut r, &[rows, c], 1.0);
            let gamma = random_host(&mut r, &[c], 1.5);
            let beta = random_host(&mut r, &[c], 0.2);
            let residual = with_residual.then_some(&res);
            let mut cpu = HostTensor::zeros(&[rows, c]);
            reference::layer_norm(&x, residual, &gamma, &beta, 1e-12, &mut cpu).expect("cpu");
            let gres = upload(ctx, &res, "residual");
            let gy = empty(ctx, &[rows, c], "y");
            let mut rec = Recorder::new(ctx);
            kernels::layer_norm(
                &mut rec,
                &upload(ctx, &x, "x"),
                with_residual.then_some(&gres),
                &upload(ctx, &gamma, "gamma"),
                &upload(ctx, &beta, "beta"),
                1e-12,
                &gy,
            )
            .expect("record");
            rec.submit_blocking().expect("submit");
            let what = format!("layer_norm rows={rows} c={c} residual={with_residual}");
            assert_close(&what, &read(ctx, &gy), &cpu.data, 2e-5, 1e-5);
        }
    }
}

/// Runs a kernel of shape x -> y (same shape) on both sides.
fn check_unary(
    name: &str,
    scale: f32,
    gpu_op: fn(&mut Recorder<'_>, &Tensor, &Tensor) -> backbone::Result<()>,
    cpu_op: fn(&HostTensor, &mut HostTensor) -> backbone::Result<()>,
    atol: f32,
    rtol: f32,
) {
    let Some(ctx) = gpu() else { return };
    for (i, (rows, c)) in row_shapes().into_iter().enumerate() {
        let mut r = rng(600 + i as u64);
        let x = random_host(&mut r, &[rows, c], scale);
        let mut cpu = HostTensor::zeros(&[rows, c]);
        cpu_op(&x, &mut cpu).expect("cpu");
        let gy = empty(ctx, &[rows, c], "y");
        let mut rec = Recorder::new(ctx);
        gpu_op(&mut rec, &upload(ctx, &x, "x"), &gy).expect("record");
        rec.submit_blocking().expect("submit");
        assert_close(
            &format!("{name} rows={rows} c={c}"),
            &read(ctx, &gy),
            &cpu.data,
            atol,
            rtol,
        );
    }
}

#[test]
fn softmax_matches_twin() {
    // Scale 30 makes exp overflow without the max subtraction.
    check_unary(
        "softmax",
        30.0,
        kernels::softmax,
        reference::softmax,
        1e-6,
        1e-5,
    );
}

#[test]
fn gelu_matches_twin() {
    // Covers the far tails, where 1 + erf(x) cancels without care.
    check_unary("gelu", 8.0, kernels::gelu, reference::gelu, 1e-6, 1e-6);
}

#[test]
fn l2_normalize_matches_twin() {
    check_unary(
        "l2_normalize",
        2.0,
        kernels::l2_normalize,
        reference::l2_normalize,
        1e-6,
        1e-5,
    );
}

#[test]
fn l2_normalize_zero_row_stays_zero() {
    let Some(ctx) = gpu() else { return };
    let x = host(&[2, 3], vec![0.0, 0.0, 0.0, 3.0, 0.0, 4.0]);
    let gy = empty(ctx, &[2, 3], "y");
    let mut rec = Recorder::new(ctx);
    kernels::l2_normalize(&mut rec, &upload(ctx, &x, "x"), &gy).expect("record");
    rec.submit_blocking().expect("submit");
    assert_close(
        "l2_normalize zero row",
        &read(ctx, &gy),
        &[0.0, 0.0, 0.0, 0.6, 0.0, 0.8],
        1e-7,
        0.0,
    );
}

#[test]
fn add_matches_twin() {
    let Some(ctx) = gpu() else { return };
    for (i, (rows, c)) in row_shapes().into_iter().enumerate() {
        let mut r = rng(700 + i as u64);
        let a = random_host(&mut r, &[rows, c], 1.0);
        let b = random_host(&mut r, &[rows, c], 1.0);
        let mut cpu = HostTensor::zeros(&[rows, c]);
        reference::add(&a, &b, &mut cpu).expect("cpu");
        let gy = empty(ctx, &[rows, c], "y");
        let mut rec = Recorder::new(ctx);
        kernels::add(&mut rec, &upload(ctx, &a, "a"), &upload(ctx, &b, "b"), &gy).expect("record");
        rec.submit_blocking().expect("submit");
        assert_close(
            &format!("add rows={rows} c={c}"),
            &read(ctx, &gy),
            &cpu.data,
            0.0,
            0.0,
        );
    }
}

#[test]
fn embedding_matches_twin() {
    let Some(ctx) = gpu() else { return };
    for (i, (n, vocab, c)) in [(1, 1, 1), (7, 63, 65), (65, 300, 7), (128, 1000, 384)]
        .into_iter()
        .enumerate()
    {
        let mut r = rng(800 + i as u64);
        let table = random_host(&mut r, &[vocab, c], 1.0);
        let ids_data: Vec<u32> = (0..n)
            .map(|_| rand::Rng::random_range(&mut r, 0..vocab as u32))
            .collect();
        let ids = HostTensor::new(&[n], ids_data).expect("ids");
        let mut cpu = HostTensor::zeros(&[n, c]);
        reference::embedding(&ids, &table, &mut cpu).expect("cpu");
        let gy = empty(ctx, &[n, c], "y");
        let mut rec = Recorder::new(ctx);
        kernels::embedding(
            &mut rec,
            &upload_u32(ctx, &ids, "ids"),
            &upload(ctx, &table, "table"),
            &gy,
        )
        .expect("record");
        rec.submit_blocking().expect("submit");
        assert_close(
            &format!("embedding n={n} vocab={vocab} c={c}"),
            &read(ctx, &gy),
            &cpu.data,
            0.0,
            0.0,
        );
    }
}

#[test]
fn mean_pool_matches_twin() {
    let Some(ctx) = gpu() else { return };
    for (i, (b, t, c)) in [(1, 1, 1), (2, 7, 65), (3, 127, 300), (4, 128, 384)]
        .into_iter()
        .enumerate()
    {
        let mut r = rng(900 + i as u64);
        let x = random_host(&mut r, &[b, t, c], 2.0);
        // Row 0 keeps a random-length prefix; the last row of a batch > 2 is fully masked.
        let mask_data: Vec<u32> = (0..b * t)
            .map(|j| {
                let (row, pos) = (j / t, j % t);
                u32::from(!(b > 2 && row == b - 1) && pos < 1 + (row * 31 + t / 2) % t)
            })
            .collect();
        let mask = HostTensor::new(&[b, t], mask_data).expect("mask");
        let mut cpu = HostTensor::zeros(&[b, c]);
        reference::mean_pool(&x, &mask, &mut cpu).expect("cpu");
        let gy = empty(ctx, &[b, c], "y");
        let mut rec = Recorder::new(ctx);
        kernels::mean_pool(
            &mut rec,
            &upload(ctx, &x, "x"),
            &upload_u32(ctx, &mask, "mask"),
            &gy,
        )
        .expect("record");
        rec.submit_blocking().expect("submit");
        assert_close(
            &format!("mean_pool b={b} t={t} c={c}"),
            &read(ctx, &gy),
            &cpu.data,
            1e-6,
            1e-5,
        );
    }
}

/// A small chain recorded into one submission: what a model forward does.
#[test]
fn kernels_chain_in_one_submission() {
    let Some(ctx) = gpu() else { return };
    let mut r = rng(1000);
    let (m, k, n) = (9, 32, 48);
    let x = random_host(&mut r, &[m, k], 1.0);
    let w = random_host(&mut r, &[n, k], 0.3);
    let bias = random_host(&mut r, &[n], 0.1);
    let gamma = random_host(&mut r, &[n], 1.0);
    let beta = random_host(&mut r, &[n], 0.1);
    let mut h = HostTensor::zeros(&[m, n]);
    reference::matmul(&x, &w, &mut h, Epilogue::none().bias(&bias).gelu()).expect("cpu");
    let mut ln = HostTensor::zeros(&[m, n]);
    reference::layer_norm(&h, None, &gamma, &beta, 1e-5, &mut ln).expect("cpu");
    let mut out = HostTensor::zeros(&[m, n]);
    reference::softmax(&ln, &mut out).expect("cpu");

    let (gh, gln, gout) = (
        empty(ctx, &[m, n], "h"),
        empty(ctx, &[m, n], "ln"),
        empty(ctx, &[m, n], "out"),
    );
    let gbias = upload(ctx, &bias, "bias");
    let mut rec = Recorder::new(ctx);
    kernels::matmul(
        &mut rec,
        &upload(ctx, &x, "x"),
        &upload(ctx, &w, "w"),
        &gh,
        Epilogue::none().bias(&gbias).gelu(),
    )
    .expect("matmul");
    kernels::layer_norm(
        &mut rec,
        &gh,
        None,
        &upload(ctx, &gamma, "gamma"),
        &upload(ctx, &beta, "beta"),
        1e-5,
        &gln,
    )
    .expect("ln");
    kernels::softmax(&mut rec, &gln, &gout).expect("softmax");
    rec.submit_blocking().expect("submit");
    assert_close(
        "matmul -> layer_norm -> softmax",
        &read(ctx, &gout),
        &out.data,
        1e-6,
        1e-5,
    );
}

/// The fused attention against its twin: sequence lengths below, at and past the 64-query
/// workgroup and the key tiles, head sizes 8 to 128, random padding, and a row whose keys
/// are all masked but one.
#[test]
fn attention_matches_twin() {
    let Some(ctx) = gpu() else { return };
    let cases = [
        (1, 1, 1, 8),
        (2, 2, 7, 8),
        (2, 4, 65, 16),
        (1, 2, 130, 32),
        (2, 2, 33, 64),
        (1, 1, 20, 128),
        (1, 12, 128, 32),
    ];
    for (i, (b, heads, t, d)) in cases.into_iter().enumerate() {
        let c = heads * d;
        let mut r = rng(1100 + i as u64);
        let qkv = random_host(&mut r, &[b, t, 3 * c], 1.5);
        // Entry 0 keeps every key; entry 1 keeps a prefix; with t > 1, entry 1 keeps only key 0.
        let mask_data: Vec<u32> = (0..b * t)
            .map(|j| {
                let (row, pos) = (j / t, j % t);
                u32::from(row == 0 || (t > 1 && pos == 0) || (t <= 1 && pos < t))
            })
            .collect();
        let mask = HostTensor::new(&[b, t], mask_data).expect("mask");
        let mut cpu = HostTensor::zeros(&[b, t, c]);
        reference::attention(&qkv, &mask, heads, &mut cpu).expect("cpu");
        let out = empty(ctx, &[b, t, c], "out");
        let mut rec = Recorder::new(ctx);
        kernels::attention(
            &mut rec,
            &upload(ctx, &qkv, "qkv"),
            &upload_u32(ctx, &mask, "mask"),
            heads,
            &out,
        )
        .expect("record");
        rec.submit_blocking().expect("submit");
        assert_close(
            &format!("attention b={b} heads={heads} t={t} d={d}"),
            &read(ctx, &out),
            &cpu.data,
            2e-6,
            1e-5,
        );
    }
}

/// A fully masked row averages V uniformly (Hugging Face's f32::MIN bias), never NaN.
#[test]
fn attention_fully_masked_row_is_finite() {
    let Some(ctx) = gpu() else { return };
    let (b, heads, t, d) = (1, 2, 5, 8);
    let c = heads * d;
    let mut r = rng(1200);
    let qkv = random_host(&mut r, &[b, t, 3 * c], 1.0);
    let mask = HostTensor::new(&[b, t], vec![0u32; t]).expect("mask");
    let mut cpu = HostTensor::zeros(&[b, t, c]);
    reference::attention(&qkv, &mask, heads, &mut cpu).expect("cpu");
    // Uniform weights: every query row is the mean of V over all keys.
    for e in 0..c {
        let mean: f32 = (0..t).map(|j| qkv.data[j * 3 * c + 2 * c + e]).sum::<f32>() / t as f32;
        assert!((cpu.data[e] - mean).abs() < 1e-6, "twin: uniform average");
    }
    let out = empty(ctx, &[b, t, c], "out");
    let mut rec = Recorder::new(ctx);
    kernels::attention(
        &mut rec,
        &upload(ctx, &qkv, "qkv"),
        &upload_u32(ctx, &mask, "mask"),
        heads,
        &out,
    )
    .expect("record");
    rec.submit_blocking().expect("submit");
    let got = read(ctx, &out);
    assert!(
        got.iter().all(|v| v.is_finite()),
        "NaN or inf in a fully masked row"
    );
    assert_close("attention, fully masked", &got, &cpu.data, 2e-6, 1e-5);
}

#[test]
fn conv2d_matches_twin() {
    use backbone::kernels::{ConvGeometry, ConvInput};
    let Some(ctx) = gpu() else { return };
    // (batch, cin, h, w, cout, kernel, stride, pad, layout): the CSWin stem and merge
    // geometries on awkward sizes, then realistic ones.
    let cases = [
        (1, 3, 7, 7, 1, 7, 4, 2, false),
        (2, 3, 17, 23, 7, 7, 4, 2, false),
        (1, 5, 7, 9, 65, 3, 2, 1, true),
        (2, 63, 5, 4, 127, 3, 2, 1, true),
        (1, 3, 64, 64, 64, 7, 4, 2, false),
        (1, 64, 28, 28, 128, 3, 2, 1, true),
    ];
    for (i, (b, cin, h, w, cout, k, stride, pad, tokens)) in cases.into_iter().enumerate() {
        let mut r = rng(1300 + i as u64);
        let (layout, x_shape) = if tokens {
            (ConvInput::Tokens { h, w }, vec![b, h * w, cin])
        } else {
            (ConvInput::Nchw, vec![b, cin, h, w])
        };
        let x = random_host(&mut r, &x_shape, 1.0);
        let weight = random_host(&mut r, &[cout, cin, k, k], 0.3);
        let bias = random_host(&mut r, &[cout], 0.5);
        let g = ConvGeometry::new(&x_shape, layout, &weight.shape, stride, pad).expect("geometry");
        let mut cpu = HostTensor::zeros(&g.output_shape());
        reference::conv2d(&x, layout, &weight, &bias, stride, pad, &mut cpu).expect("cpu");
        let y = empty(ctx, &g.output_shape(), "y");
        let mut rec = Recorder::new(ctx);
        let (gx, gw, gb) = (
            upload(ctx, &x, "x"),
            upload(ctx, &weight, "w"),
            upload(ctx, &bias, "b"),
        );
        kernels::conv2d(&mut rec, &gx, layout, &gw, &gb, stride, pad, &y).expect("record");
        rec.submit_blocking().expect("submit");
        let what = format!(
            "conv2d {x_shape:?} {layout:?} -> {:?} k{k} s{stride} p{pad}",
            g.output_shape()
        );
        assert_close(&what, &read(ctx, &y), &cpu.data, 2e-5, 1e-5);
    }
}

#[test]
fn cswin_attention_matches_twin() {
    use backbone::kernels::CswinBranch;
    let Some(ctx) = gpu() else { return };
    let branch = |h, w, c, channel_offset, channels, heads, window| CswinBranch {
        h,
        w,
        c,
        channel_offset,
        channels,
        heads,
        window,
    };
    // Both branches of a block, stripes of width 1, maps the window does not divide (padding),
    // a window past 64 tokens, one global branch, and head sizes 8 to 48.
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
    ];
    for (i, branches) in cases.iter().enumerate() {
        let first = branches[0];
        let (b, n, c) = (2, first.h * first.w, first.c);
        let mut r = rng(1400 + i as u64);
        let qkv = random_host(&mut r, &[b, n, 3 * c], 1.0);
        let gqkv = upload(ctx, &qkv, "qkv");
        let mut cpu = HostTensor::zeros(&[b, n, c]);
        let out = empty(ctx, &[b, n, c], "out");
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
        assert_close(
            &format!("cswin_attention {branches:?}"),
            &read(ctx, &out),
            &cpu.data,
            2e-6,
            1e-5,
        );
    }
}

/// Both load paths of the matmul: vec4 global loads (contiguous dimension, offsets and strides
/// all multiples of 4) and scalar loads (any of them not), for W as [N, K] and as [K, N].
#[test]
fn matmul_vectorised_and_scalar_loads() {
    let Some(ctx) = gpu() else { return };
    for (i, (m, n, k)) in [(33, 68, 68), (33, 67, 68), (33, 68, 67), (5, 132, 260)]
        .into_iter()
        .enumerate()
    {
        for layout in [WLayout::NK, WLayout::KN] {
            for tile in MatmulTile::ALL {
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
