//! The CPU forward, written once against [`CpuOps`]: on the kernels' CPU twins (the
//! reference every test checks against) or on the fast CPU executor.

use super::config::check_depths;
use super::{CswinConfig, CswinOutput, CswinWeights, Geometry, check_input};
use crate::cpu::{CpuOps, Twin};
use crate::error::Result;
use crate::kernels::{ConvInput, Epilogue};
use crate::reference::HostTensor;
use crate::tensor::DType;

/// The CPU forward, built only from the kernels' CPU twins.
pub fn forward_cpu(
    config: &CswinConfig,
    w: &CswinWeights<HostTensor>,
    pixel_values: &HostTensor,
    block0_attention: bool,
) -> Result<CswinOutput> {
    forward_cpu_as(config, w, pixel_values, block0_attention, DType::F32)
}

/// The CPU twin of a forward in `dtype`: for f16, the weights the GPU stores as f16 are
/// rounded once and every activation the GPU stores as f16 is rounded after the twin that
/// produces it (the twins still compute in f64).
pub fn forward_cpu_as(
    config: &CswinConfig,
    weights: &CswinWeights<HostTensor>,
    pixel_values: &HostTensor,
    block0_attention: bool,
    dtype: DType,
) -> Result<CswinOutput> {
    forward_on(
        &Twin,
        config,
        weights,
        pixel_values,
        block0_attention,
        dtype,
    )
}

/// The forward on the fast CPU executor ([`crate::cpu::Fast`]).
#[cfg(not(target_arch = "wasm32"))]
pub fn forward_fast(
    config: &CswinConfig,
    weights: &CswinWeights<HostTensor>,
    pixel_values: &HostTensor,
    block0_attention: bool,
    dtype: DType,
) -> Result<CswinOutput> {
    let fast = crate::cpu::Fast;
    forward_on(
        &fast,
        config,
        weights,
        pixel_values,
        block0_attention,
        dtype,
    )
}

/// The CPU forward on executor `ops` (f16 rounding as [`forward_cpu_as`] says).
pub fn forward_on(
    ops: &impl CpuOps,
    config: &CswinConfig,
    weights: &CswinWeights<HostTensor>,
    pixel_values: &HostTensor,
    block0_attention: bool,
    dtype: DType,
) -> Result<CswinOutput> {
    match dtype {
        DType::F32 => forward_rounded(ops, config, weights, pixel_values, block0_attention, dtype),
        _ => {
            let w = weights.rounded(dtype);
            forward_rounded(ops, config, &w, pixel_values, block0_attention, dtype)
        }
    }
}

/// [`forward_on`] with weights `w` already as a `dtype` run holds them
/// ([`CswinWeights::rounded`]): a model kept open rounds them once, not per forward.
pub fn forward_rounded(
    ops: &impl CpuOps,
    config: &CswinConfig,
    w: &CswinWeights<HostTensor>,
    pixel_values: &HostTensor,
    block0_attention: bool,
    dtype: DType,
) -> Result<CswinOutput> {
    check_depths(config)?;
    let store = |t: &mut HostTensor| t.round_in_place(dtype);
    check_input(config, pixel_values)?;
    let g = Geometry::new(config, &pixel_values.shape)?;
    let b = g.batch;
    let eps = config.layer_norm_eps as f32;
    let z = HostTensor::zeros;
    let tokens = |s: usize| g.stages[s].0 * g.stages[s].1;

    let mut stem_conv = z(&[b, tokens(0), config.embed_dim]);
    ops.conv2d(
        pixel_values,
        ConvInput::Nchw,
        &w.stem.weight,
        &w.stem.bias,
        4,
        2,
        &mut stem_conv,
    )?;
    store(&mut stem_conv);
    let mut stem = z(&stem_conv.shape);
    ops.layer_norm(
        &stem_conv,
        None,
        &w.stem_norm.weight,
        &w.stem_norm.bias,
        eps,
        &mut stem,
    )?;
    store(&mut stem);
    let mut x = stem.clone();
    let (mut stages, mut attention) = (Vec::new(), Vec::new());
    for s in 0..4 {
        let (d, n) = (config.dim(s), tokens(s));
        let (mut normed, mut qkv, mut attn) = (z(&[b, n, d]), z(&[b, n, 3 * d]), z(&[b, n, d]));
        let (mut x2, mut hidden) = (z(&[b, n, d]), z(&[b, n, config.hidden(s)]));
        for (i, block) in w.stages[s].iter().enumerate() {
            ops.layer_norm(
                &x,
                None,
                &block.norm1.weight,
                &block.norm1.bias,
                eps,
                &mut normed,
            )?;
            store(&mut normed);
            ops.matmul(
                &normed,
                &block.qkv.weight,
                &mut qkv,
                Epilogue::none().bias(&block.qkv.bias),
            )?;
            store(&mut qkv);
            for (branch, lepe) in g
                .branches(config, s, block.lepe.len())
                .iter()
                .zip(&block.lepe)
            {
                ops.cswin_attention(&qkv, &lepe.weight, &lepe.bias, branch, &mut attn)?;
            }
            store(&mut attn);
            if i == 0 && block0_attention {
                attention.push(attn.clone());
            }
            ops.matmul(
                &attn,
                &block.proj.weight,
                &mut x2,
                Epilogue::none().bias(&block.proj.bias).residual(&x),
            )?;
            store(&mut x2);
            ops.layer_norm(
                &x2,
                None,
                &block.norm2.weight,
                &block.norm2.bias,
                eps,
                &mut normed,
            )?;
            store(&mut normed);
            ops.matmul(
                &normed,
                &block.fc1.weight,
                &mut hidden,
                Epilogue::none().bias(&block.fc1.bias).gelu(),
            )?;
            store(&mut hidden);
            ops.matmul(
                &hidden,
                &block.fc2.weight,
                &mut x,
                Epilogue::none().bias(&block.fc2.bias).residual(&x2),
            )?;
            store(&mut x);
        }
        stages.push(x.clone());
        if s < 3 {
            let (h, w_) = g.stages[s];
            let m = &w.merges[s];
            let mut conv = z(&[b, tokens(s + 1), config.dim(s + 1)]);
            ops.conv2d(
                &x,
                ConvInput::Tokens { h, w: w_ },
                &m.conv.weight,
                &m.conv.bias,
                2,
                1,
                &mut conv,
            )?;
            store(&mut conv);
            x = z(&conv.shape);
            ops.layer_norm(&conv, None, &m.norm.weight, &m.norm.bias, eps, &mut x)?;
            store(&mut x);
        }
    }
    let (mut pooled, mut logits) = (None, None);
    if let (Some(n), Some(h)) = (&w.norm, &w.head) {
        let mut final_norm = z(&x.shape);
        ops.layer_norm(&x, None, &n.weight, &n.bias, eps, &mut final_norm)?;
        store(&mut final_norm);
        let ones = HostTensor::new(&[b, tokens(3)], vec![1u32; b * tokens(3)])?;
        let mut p = z(&[b, config.dim(3)]);
        ops.mean_pool(&final_norm, &ones, &mut p)?;
        let mut l = z(&[b, config.num_classes]);
        ops.matmul(&p, &h.weight, &mut l, Epilogue::none().bias(&h.bias))?;
        (pooled, logits) = (Some(p), Some(l));
    }
    // The segmentation backbone's features: each stage's output after norm1..norm4, NCHW.
    let mut features = Vec::new();
    for (s, n) in w.stage_norms.iter().enumerate() {
        let mut normed = z(&stages[s].shape);
        ops.layer_norm(&stages[s], None, &n.weight, &n.bias, eps, &mut normed)?;
        store(&mut normed);
        let (h, wd) = g.stages[s];
        features.push(super::to_nchw(&normed, h, wd)?);
    }
    Ok(CswinOutput {
        geometry: g,
        stem,
        stages,
        pooled,
        logits,
        features,
        block0_attention: attention,
    })
}
