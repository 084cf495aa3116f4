//! The CPU reference path: one plain-loop twin per GPU kernel, with the same name and the
//! same arguments (a [`HostTensor`] wherever the GPU op takes a [`crate::Tensor`], and no
//! recorder). Sums are accumulated in f64, so the twins are the accurate side of every
//! comparison. Models' CPU forwards are built only from these functions.

// Index loops are the point here: they spell out the same index arithmetic as the shaders.
#![allow(clippy::needless_range_loop)]

use crate::error::{Error, Result};
use crate::kernels::matmul::{Epilogue, StridedMatmul, WLayout, plain_problem};
use crate::kernels::{AttentionBias, PoolMode};

pub use crate::host::HostTensor;

mod fused;
mod split;
mod text;
pub use crate::host::{gelu_scalar, rotary_table};
pub use fused::{layer_norm_subgroup, matmul_layer_norm};
pub use split::{matmul_split_k, matmul_split_reduce};
pub use text::{geglu, rotary};

fn same_shape<T, U>(
    op: &'static str,
    arg: &'static str,
    t: &HostTensor<T>,
    like: &HostTensor<U>,
) -> Result<()> {
    if t.shape != like.shape {
        return Err(Error::Shape {
            op,
            arg,
            expected: format!("{:?}", like.shape),
            found: t.shape.clone(),
        });
    }
    Ok(())
}

fn last_dim(op: &'static str, x: &HostTensor) -> Result<(usize, usize)> {
    let Some(&c) = x.shape.last() else {
        return Err(Error::Shape {
            op,
            arg: "x",
            expected: "at least one dimension".into(),
            found: vec![],
        });
    };
    Ok((x.numel().checked_div(c).unwrap_or(0), c))
}

/// Fills `out`, made of rows of `row_len` values, calling `f(row index, row)` on all cores.
fn par_rows<T: Send>(out: &mut [T], row_len: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    if out.is_empty() || row_len == 0 {
        return;
    }
    let rows = out.len() / row_len;
    // No threads on wasm32-unknown-unknown: run serially there.
    let threads = if cfg!(target_arch = "wasm32") {
        1
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    };
    if threads == 1 {
        for (i, row) in out.chunks_mut(row_len).enumerate() {
            f(i, row);
        }
        return;
    }
    let per_thread = rows.div_ceil(threads).max(1);
    std::thread::scope(|s| {
        for (chunk_index, chunk) in out.chunks_mut(per_thread * row_len).enumerate() {
            let f = &f;
            s.spawn(move || {
                for (k, row) in chunk.chunks_mut(row_len).enumerate() {
                    f(chunk_index * per_thread + k, row);
                }
            });
        }
    });
}

/// Twin of [`crate::kernels::matmul`].
pub fn matmul(
    x: &HostTensor,
    w: &HostTensor,
    y: &mut HostTensor,
    ep: Epilogue<'_, HostTensor>,
) -> Result<()> {
    let problem = plain_problem(&x.shape, &w.shape, &y.shape)?;
    matmul_strided(x, w, y, ep, &problem)
}

/// Twin of [`crate::kernels::matmul_strided`].
pub fn matmul_strided(
    x: &HostTensor,
    w: &HostTensor,
    y: &mut HostTensor,
    ep: Epilogue<'_, HostTensor>,
    p: &StridedMatmul,
) -> Result<()> {
    p.check(x.numel(), w.numel(), y.numel())?;
    check_epilogue(&ep, p.n, y)?;
    // Dot products in parallel over (batch entry, row), then the epilogue in place.
    let (batch_inner, m, n) = (p.batch[1], p.m, p.n);
    let mut dots = vec![0.0f64; p.batch[0] * batch_inner * m * n];
    par_rows(&mut dots, n, |row, out| {
        let (b, i) = (row / m, row % m);
        let (xb, wb) = (p.x.base(b, batch_inner), p.w.base(b, batch_inner));
        let x_row = &x.data[xb + i * p.x.ld..][..p.k];
        for (j, o) in out.iter_mut().enumerate() {
            *o = match p.w_layout {
                WLayout::NK => {
                    let w_row = &w.data[wb + j * p.w.ld..][..p.k];
                    x_row
                        .iter()
                        .zip(w_row)
                        .map(|(&a, &b)| a as f64 * b as f64)
                        .sum()
                }
                WLayout::KN => (0..p.k)
                    .map(|l| x_row[l] as f64 * w.data[wb + l * p.w.ld + j] as f64)
                    .sum(),
            };
        }
    });
    for (row, dot_row) in dots.chunks(n.max(1)).enumerate() {
        let (b, i) = (row / m, row % m);
        let yb = p.y.base(b, batch_inner);
        for (j, &dot) in dot_row.iter().enumerate() {
            let mut v = ep.alpha as f64 * dot;
            if let Some(bias) = ep.bias {
                v += bias.data[j] as f64;
            }
            v = ep.act.apply(v);
            let at = yb + i * p.y.ld + j;
            if let Some(r) = ep.residual {
                v += r.data[at] as f64;
            }
            y.data[at] = v as f32;
        }
    }
    Ok(())
}

/// The epilogue's operands against an output of `n` columns: bias [n], residual as `y`.
pub(crate) fn check_epilogue(
    ep: &Epilogue<'_, HostTensor>,
    n: usize,
    y: &HostTensor,
) -> Result<()> {
    if let Some(b) = ep.bias
        && b.shape != [n]
    {
        return Err(Error::Shape {
            op: "matmul",
            arg: "bias",
            expected: format!("[{n}]"),
            found: b.shape.clone(),
        });
    }
    if let Some(r) = ep.residual {
        same_shape("matmul", "residual", r, y)?;
    }
    Ok(())
}

/// Twin of [`crate::kernels::layer_norm`].
pub fn layer_norm(
    x: &HostTensor,
    residual: Option<&HostTensor>,
    gamma: &HostTensor,
    beta: &HostTensor,
    eps: f32,
    y: &mut HostTensor,
) -> Result<()> {
    let c = check_layer_norm(x, residual, gamma, beta, y)?;
    for (r, out) in y.data.chunks_mut(c.max(1)).enumerate() {
        let row = r * c..(r + 1) * c;
        let res = residual.map(|t| &t.data[row.clone()]);
        layer_norm_row(&x.data[row], res, &gamma.data, &beta.data, eps, out);
    }
    Ok(())
}

/// [`layer_norm`]'s shapes; the row length `c`.
pub(crate) fn check_layer_norm(
    x: &HostTensor,
    residual: Option<&HostTensor>,
    gamma: &HostTensor,
    beta: &HostTensor,
    y: &HostTensor,
) -> Result<usize> {
    let (_, c) = last_dim("layer_norm", x)?;
    same_shape("layer_norm", "y", y, x)?;
    if let Some(r) = residual {
        same_shape("layer_norm", "residual", r, x)?;
    }
    for (arg, t) in [("gamma", gamma), ("beta", beta)] {
        if t.shape != [c] {
            return Err(Error::Shape {
                op: "layer_norm",
                arg,
                expected: format!("[{c}]"),
                found: t.shape.clone(),
            });
        }
    }
    Ok(c)
}

/// One row of [`layer_norm`], summed in f64.
pub(crate) fn layer_norm_row(
    x: &[f32],
    residual: Option<&[f32]>,
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    y: &mut [f32],
) {
    let c = x.len();
    let s: Vec<f64> = (0..c)
        .map(|i| x[i] as f64 + residual.map_or(0.0, |r| r[i] as f64))
        .collect();
    let mean = s.iter().sum::<f64>() / c as f64;
    let var = s.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / c as f64;
    let inv_std = 1.0 / (var + eps as f64).sqrt();
    for i in 0..c {
        y[i] = ((s[i] - mean) * inv_std * gamma[i] as f64 + beta[i] as f64) as f32;
    }
}

/// Twin of [`crate::kernels::softmax`].
pub fn softmax(x: &HostTensor, y: &mut HostTensor) -> Result<()> {
    let (rows, c) = last_dim("softmax", x)?;
    same_shape("softmax", "y", y, x)?;
    for r in 0..rows {
        let row = &x.data[r * c..(r + 1) * c];
        let max = row.iter().fold(f32::MIN, |m, &v| m.max(v)) as f64;
        let sum: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
        for i in 0..c {
            y.data[r * c + i] = ((row[i] as f64 - max).exp() / sum) as f32;
        }
    }
    Ok(())
}

/// Twin of [`crate::kernels::gelu`].
pub fn gelu(x: &HostTensor, y: &mut HostTensor) -> Result<()> {
    same_shape("gelu", "y", y, x)?;
    for (o, &v) in y.data.iter_mut().zip(&x.data) {
        *o = gelu_scalar(v as f64) as f32;
    }
    Ok(())
}

/// Twin of [`crate::kernels::add`].
pub fn add(a: &HostTensor, b: &HostTensor, y: &mut HostTensor) -> Result<()> {
    same_shape("add", "b", b, a)?;
    same_shape("add", "y", y, a)?;
    for ((o, &u), &v) in y.data.iter_mut().zip(&a.data).zip(&b.data) {
        *o = u + v;
    }
    Ok(())
}

/// Twin of [`crate::kernels::embedding`]. Unlike the GPU kernel it can see the ids, so an
/// id ≥ vocab is an error here.
pub fn embedding(ids: &HostTensor<u32>, table: &HostTensor, y: &mut HostTensor) -> Result<()> {
    let &[vocab, c] = table.shape.as_slice() else {
        return Err(Error::Shape {
            op: "embedding",
            arg: "table",
            expected: "[vocab, C]".into(),
            found: table.shape.clone(),
        });
    };
    crate::kernels::check_ids("ids", &ids.data, vocab)?;
    let mut y_shape = ids.shape.clone();
    y_shape.push(c);
    if y.shape != y_shape {
        return Err(Error::Shape {
            op: "embedding",
            arg: "y",
            expected: format!("{y_shape:?}"),
            found: y.shape.clone(),
        });
    }
    for (i, &id) in ids.data.iter().enumerate() {
        let id = id as usize;
        y.data[i * c..(i + 1) * c].copy_from_slice(&table.data[id * c..(id + 1) * c]);
    }
    Ok(())
}

/// Twin of [`crate::kernels::bert_embeddings`]: the three rows summed and normalised in f64.
/// Unlike the GPU kernel it can see the ids, so an id past its table is an error here.
pub fn bert_embeddings(
    ids: &HostTensor<u32>,
    tables: &crate::kernels::EmbeddingTables<'_, HostTensor>,
    eps: f32,
    y: &mut HostTensor,
) -> Result<()> {
    let (rows, c, sizes) = crate::kernels::bert_embeddings_dims(
        &ids.shape,
        [
            &tables.word.shape,
            &tables.position.shape,
            &tables.token_type.shape,
        ],
        [&tables.gamma.shape, &tables.beta.shape],
        &y.shape,
    )?;
    let names = [
        "ids[0] (token ids)",
        "ids[1] (position ids)",
        "ids[2] (token-type ids)",
    ];
    for (k, name) in names.into_iter().enumerate() {
        crate::kernels::check_ids(name, &ids.data[k * rows..(k + 1) * rows], sizes[k])?;
    }
    let tables3 = [tables.word, tables.position, tables.token_type];
    let mut s = vec![0.0f64; c];
    for r in 0..rows {
        let row = |k: usize| {
            let id = ids.data[k * rows + r] as usize;
            &tables3[k].data[id * c..(id + 1) * c]
        };
        let (w, p, t) = (row(0), row(1), row(2));
        for i in 0..c {
            s[i] = w[i] as f64 + p[i] as f64 + t[i] as f64;
        }
        let mean = s.iter().sum::<f64>() / c as f64;
        let var = s.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / c as f64;
        let inv_std = 1.0 / (var + eps as f64).sqrt();
        for i in 0..c {
            y.data[r * c + i] = ((s[i] - mean) * inv_std * tables.gamma.data[i] as f64
                + tables.beta.data[i] as f64) as f32;
        }
    }
    Ok(())
}

/// Twin of [`crate::kernels::pool`] (sentence-transformers' `Pooling._forward_padded`), in f64.
pub fn pool(
    x: &HostTensor,
    mask: &HostTensor<u32>,
    keep: &HostTensor<u32>,
    mode: PoolMode,
    y: &mut HostTensor,
    col0: usize,
) -> Result<()> {
    let (b, t, c) = crate::kernels::pool_dims(&x.shape, &mask.shape, &keep.shape, &y.shape, col0)?;
    let ldy = y.shape[1];
    for bi in 0..b {
        let kept: Vec<usize> = (0..t).filter(|&ti| keep.data[bi * t + ti] != 0).collect();
        let at = |ti: usize, ci: usize| x.data[(bi * t + ti) * c + ci] as f64;
        // weightedmean's start: the first real token of the attention mask (argmax).
        let start = (0..t).find(|&ti| mask.data[bi * t + ti] != 0).unwrap_or(0);
        for ci in 0..c {
            let value = match mode {
                PoolMode::Cls => at(kept.first().copied().unwrap_or(0), ci),
                PoolMode::LastToken => kept.last().map_or(0.0, |&ti| at(ti, ci)),
                PoolMode::Max => kept
                    .iter()
                    .map(|&ti| at(ti, ci))
                    .fold(f64::NEG_INFINITY, f64::max),
                PoolMode::Mean | PoolMode::MeanSqrtLen | PoolMode::WeightedMean => {
                    let weight = |ti: usize| match mode {
                        PoolMode::WeightedMean => (ti + 1) as f64 - start as f64,
                        _ => 1.0,
                    };
                    let sum: f64 = kept.iter().map(|&ti| weight(ti) * at(ti, ci)).sum();
                    let total = kept.iter().map(|&ti| weight(ti)).sum::<f64>().max(1e-9);
                    match mode {
                        PoolMode::MeanSqrtLen => sum / total.sqrt(),
                        _ => sum / total,
                    }
                }
            };
            y.data[bi * ldy + col0 + ci] = value as f32;
        }
    }
    Ok(())
}

/// Twin of [`crate::kernels::mean_pool`]: [`pool`] in mean mode over the attention mask.
pub fn mean_pool(x: &HostTensor, mask: &HostTensor<u32>, y: &mut HostTensor) -> Result<()> {
    let (b, _, c) = crate::kernels::pool_dims(&x.shape, &mask.shape, &mask.shape, &y.shape, 0)?;
    if y.shape != [b, c] {
        return Err(Error::Shape {
            op: "mean_pool",
            arg: "y",
            expected: format!("[{b}, {c}]"),
            found: y.shape.clone(),
        });
    }
    pool(x, mask, mask, PoolMode::Mean, y, 0)
}

/// Twin of [`crate::kernels::l2_normalize`].
pub fn l2_normalize(x: &HostTensor, y: &mut HostTensor) -> Result<()> {
    let (rows, c) = last_dim("l2_normalize", x)?;
    same_shape("l2_normalize", "y", y, x)?;
    for r in 0..rows {
        let row = r * c..(r + 1) * c;
        crate::host::l2_normalize_row(&x.data[row.clone()], &mut y.data[row]);
    }
    Ok(())
}

/// Twin of [`crate::kernels::attention`]: per (batch, head, query), scores in f64, the mask
/// bias added in f32 as Hugging Face does (so a fully masked row averages V uniformly).
pub fn attention(
    qkv: &HostTensor,
    mask: &HostTensor<u32>,
    heads: usize,
    out: &mut HostTensor,
) -> Result<()> {
    attention_biased(qkv, mask, AttentionBias::default(), heads, out)
}

/// Twin of [`crate::kernels::attention_biased`].
pub fn attention_biased(
    qkv: &HostTensor,
    mask: &HostTensor<u32>,
    extra: AttentionBias<'_, HostTensor>,
    heads: usize,
    out: &mut HostTensor,
) -> Result<()> {
    let rel_bias = extra.rel_bias;
    let (_, t, c, d) = crate::kernels::attention_dims(&qkv.shape, &mask.shape, heads, &out.shape)?;
    if let Some(bias) = rel_bias {
        crate::kernels::rel_bias_dims(&bias.shape, heads, t)?;
    }
    let scale = 1.0 / (d as f64).sqrt();
    // One output row (batch entry, query) at a time, all heads, in parallel over rows.
    par_rows(&mut out.data, c, |row, out_row| {
        let (bi, qi) = (row / t, row % t);
        let mut weights = vec![0.0f64; t];
        for h in 0..heads {
            let q = &qkv.data[row * 3 * c + h * d..][..d];
            for (j, s) in weights.iter_mut().enumerate() {
                let k = &qkv.data[(bi * t + j) * 3 * c + c + h * d..][..d];
                let dot: f64 = q.iter().zip(k).map(|(&a, &b)| a as f64 * b as f64).sum();
                let bias = if mask.data[bi * t + j] != 0 {
                    0.0
                } else {
                    f32::MIN
                };
                let rel = rel_bias.map_or(0.0, |r| r.data[h * (2 * t - 1) + j + t - 1 - qi] as f64);
                *s = ((dot * scale + rel) as f32 + bias) as f64;
                if extra.window.is_some_and(|w| j.abs_diff(qi) > w.max(1)) {
                    *s = f32::MIN as f64;
                }
            }
            let max = weights.iter().fold(f64::MIN, |m, &s| m.max(s));
            weights.iter_mut().for_each(|s| *s = (*s - max).exp());
            let sum: f64 = weights.iter().sum();
            for e in 0..d {
                let acc: f64 = weights
                    .iter()
                    .enumerate()
                    .map(|(j, &p)| p * qkv.data[(bi * t + j) * 3 * c + 2 * c + h * d + e] as f64)
                    .sum();
                out_row[h * d + e] = (acc / sum) as f32;
            }
        }
    });
    Ok(())
}

/// Twin of [`crate::kernels::conv2d`].
#[allow(clippy::too_many_arguments)] // same arguments as the GPU op
pub fn conv2d(
    x: &HostTensor,
    layout: crate::kernels::ConvInput,
    weight: &HostTensor,
    bias: &HostTensor,
    stride: usize,
    pad: usize,
    y: &mut HostTensor,
) -> Result<()> {
    let g = crate::kernels::ConvGeometry::new(&x.shape, layout, &weight.shape, stride, pad)?;
    if bias.shape != [g.cout] {
        return Err(Error::Shape {
            op: "conv2d",
            arg: "bias",
            expected: format!("[{}]", g.cout),
            found: bias.shape.clone(),
        });
    }
    if y.shape != g.output_shape() {
        return Err(Error::Shape {
            op: "conv2d",
            arg: "y",
            expected: format!("{:?}", g.output_shape()),
            found: y.shape.clone(),
        });
    }
    let nchw = layout == crate::kernels::ConvInput::Nchw;
    let at = |b: usize, ci: usize, iy: usize, ix: usize| {
        let p = iy * g.w + ix;
        if nchw {
            x.data[(b * g.cin + ci) * g.h * g.w + p]
        } else {
            x.data[(b * g.h * g.w + p) * g.cin + ci]
        }
    };
    par_rows(&mut y.data, g.cout, |row, out| {
        let (b, pos) = (row / (g.ho * g.wo), row % (g.ho * g.wo));
        let (oy, ox) = (pos / g.wo, pos % g.wo);
        for (co, o) in out.iter_mut().enumerate() {
            let mut acc = bias.data[co] as f64;
            for ci in 0..g.cin {
                for ky in 0..g.kh {
                    for kx in 0..g.kw {
                        let iy = (oy * stride + ky) as isize - pad as isize;
                        let ix = (ox * stride + kx) as isize - pad as isize;
                        if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize {
                            continue;
                        }
                        let wv = weight.data[((co * g.cin + ci) * g.kh + ky) * g.kw + kx];
                        acc += wv as f64 * at(b, ci, iy as usize, ix as usize) as f64;
                    }
                }
            }
            *o = acc as f32;
        }
    });
    Ok(())
}

/// Twin of [`crate::kernels::cswin_attention`], written the way the official code reads:
/// pad, cut into windows, attend per (window, head) with softmax over the window, add LePE
/// (a depthwise 3x3 conv over the window with zero padding), crop back.
pub fn cswin_attention(
    qkv: &HostTensor,
    lepe_w: &HostTensor,
    lepe_b: &HostTensor,
    branch: &crate::kernels::CswinBranch,
    out: &mut HostTensor,
) -> Result<()> {
    let batch = branch.check(&qkv.shape, &lepe_w.shape, &lepe_b.shape, &out.shape)?;
    let (hp, wp, pad_top, pad_left) = branch.padding();
    let (wh, ww) = branch.window;
    let (c, d, off) = (branch.c, branch.head_dim(), branch.channel_offset);
    let scale = 1.0 / (d as f64).sqrt();
    // Token of padded-map position (py, px), or None in the padding.
    let token = |py: usize, px: usize| -> Option<usize> {
        let (y, x) = (py.checked_sub(pad_top)?, px.checked_sub(pad_left)?);
        (y < branch.h && x < branch.w).then_some(y * branch.w + x)
    };
    let n = wh * ww;
    let mut results = Vec::new(); // (token index in batch, channel, value)
    for b in 0..batch {
        for win_y in 0..hp / wh {
            for win_x in 0..wp / ww {
                let tokens: Vec<Option<usize>> = (0..n)
                    .map(|i| token(win_y * wh + i / ww, win_x * ww + i % ww))
                    .collect();
                // q, k or v of window-local token i, channel e of head h (zero in the padding).
                let get = |part: usize, i: usize, h: usize, e: usize| -> f64 {
                    tokens[i].map_or(0.0, |t| {
                        qkv.data[(b * branch.h * branch.w + t) * 3 * c + part * c + off + h * d + e]
                            as f64
                    })
                };
                for h in 0..branch.heads {
                    for i in 0..n {
                        let Some(t) = tokens[i] else { continue };
                        let logits: Vec<f64> = (0..n)
                            .map(|j| {
                                (0..d)
                                    .map(|e| get(0, i, h, e) * scale * get(1, j, h, e))
                                    .sum()
                            })
                            .collect();
                        let max = logits.iter().fold(f64::MIN, |m, &l| m.max(l));
                        let weights: Vec<f64> = logits.iter().map(|&l| (l - max).exp()).collect();
                        let sum: f64 = weights.iter().sum();
                        let (iy, ix) = ((i / ww) as isize, (i % ww) as isize);
                        for e in 0..d {
                            let attn: f64 =
                                (0..n).map(|j| weights[j] * get(2, j, h, e)).sum::<f64>() / sum;
                            let ch = h * d + e;
                            let mut lepe = lepe_b.data[ch] as f64;
                            for tap in 0..9 {
                                let (ny, nx) = (iy + tap / 3 - 1, ix + tap % 3 - 1);
                                if ny < 0 || nx < 0 || ny >= wh as isize || nx >= ww as isize {
                                    continue;
                                }
                                let j = ny as usize * ww + nx as usize;
                                lepe += lepe_w.data[ch * 9 + tap as usize] as f64 * get(2, j, h, e);
                            }
                            results.push((
                                b * branch.h * branch.w + t,
                                off + ch,
                                (attn + lepe) as f32,
                            ));
                        }
                    }
                }
            }
        }
    }
    for (t, ch, v) in results {
        out.data[t * c + ch] = v;
    }
    Ok(())
}
