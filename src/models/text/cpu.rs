//! The CPU forward, written once against [`CpuOps`]: on the kernels' CPU twins (the
//! reference every test checks against) or on the fast CPU executor.

use super::{TextConfig, TextInput, TextOutput, TextWeights, pooler_problem};
use crate::cpu::{CpuOps, Twin};
use crate::error::Result;
use crate::kernels::{Activation, AttentionBias, Epilogue, PoolMode};
use crate::reference::{self, HostTensor};
use crate::tensor::DType;

/// The CPU forward, built only from the kernels' CPU twins.
pub fn forward_cpu(
    config: &TextConfig,
    w: &TextWeights<HostTensor>,
    input: &TextInput,
    hidden_states: bool,
) -> Result<TextOutput> {
    forward_cpu_as(config, w, input, hidden_states, DType::F32)
}

/// The CPU twin of a forward in `dtype`: for f16, the weights the GPU stores as f16 are
/// rounded to f16 once and every activation the GPU stores as f16 is rounded after the twin
/// that produces it (the twins themselves still compute in f64), so the two paths see the same
/// values.
pub fn forward_cpu_as(
    config: &TextConfig,
    weights: &TextWeights<HostTensor>,
    input: &TextInput,
    hidden_states: bool,
    dtype: DType,
) -> Result<TextOutput> {
    forward_on(&Twin, config, weights, input, hidden_states, dtype)
}

/// The forward on the fast CPU executor ([`crate::cpu::Fast`]): the same operations as
/// [`forward_cpu_as`], in f32 sums on every core.
#[cfg(not(target_arch = "wasm32"))]
pub fn forward_fast(
    config: &TextConfig,
    weights: &TextWeights<HostTensor>,
    input: &TextInput,
    hidden_states: bool,
    dtype: DType,
) -> Result<TextOutput> {
    forward_on(
        &crate::cpu::Fast,
        config,
        weights,
        input,
        hidden_states,
        dtype,
    )
}

/// The CPU forward on executor `ops`; for f16 the weights and activations a GPU run stores as
/// f16 are rounded as [`forward_cpu_as`] says.
pub fn forward_on(
    ops: &impl CpuOps,
    config: &TextConfig,
    weights: &TextWeights<HostTensor>,
    input: &TextInput,
    hidden_states: bool,
    dtype: DType,
) -> Result<TextOutput> {
    match dtype {
        DType::F32 => forward_rounded(ops, config, weights, input, hidden_states, dtype),
        _ => {
            let w = weights.rounded(dtype);
            forward_rounded(ops, config, &w, input, hidden_states, dtype)
        }
    }
}

/// [`forward_on`] with weights `w` already as a `dtype` run holds them
/// ([`TextWeights::rounded`]): a model kept open rounds them once, not per forward.
pub fn forward_rounded(
    ops: &impl CpuOps,
    config: &TextConfig,
    w: &TextWeights<HostTensor>,
    input: &TextInput,
    hidden_states: bool,
    dtype: DType,
) -> Result<TextOutput> {
    input.validate(config)?;
    super::check_classifier_pooler(w)?;
    // What the GPU's f16 store does to an activation.
    let store = |t: &mut HostTensor| t.round_in_place(dtype);
    let (b, t, c, i) = (
        input.batch,
        input.seq,
        config.hidden_size,
        config.intermediate_size,
    );
    let eps = config.layer_norm_eps as f32;
    let ids = |v: &[u32]| HostTensor::new(&[b, t], v.to_vec());
    let btc = [b, t, c];
    let z = HostTensor::zeros;
    let mask = ids(&input.attention_mask)?;

    let mut hidden = z(&btc);
    let embedding_ids = HostTensor::new(&[3, b * t], input.embedding_ids(config))?;
    let tables = w.embeddings.tables();
    match &w.embeddings.project {
        Some(project) => {
            let mut embedded = z(&[b, t, config.embedding_dim()]);
            ops.bert_embeddings(&embedding_ids, &tables, eps, &mut embedded)?;
            store(&mut embedded);
            let ep = Epilogue::none().bias(&project.bias);
            ops.matmul(&embedded, &project.weight, &mut hidden, ep)?;
        }
        None => ops.bert_embeddings(&embedding_ids, &tables, eps, &mut hidden)?,
    }
    store(&mut hidden);
    let act = config.activation().unwrap_or(Activation::Gelu);
    let rel_bias = w
        .relative_attention_bias
        .as_ref()
        .map(|table| super::relative_position_bias(table, t));
    let mut states = Vec::new();
    if hidden_states {
        states.push(hidden.clone());
    }

    let (mut qkv, mut context, mut attention_sum, mut attention_out) =
        (z(&[b, t, 3 * c]), z(&btc), z(&btc), z(&btc));
    let (mut intermediate, mut output_sum) = (z(&[b, t, i]), z(&btc));
    let pre_norm = config.family().pre_norm();
    let rope = |l: usize| reference::rotary_table(config.rope_theta(l), t, config.head_dim());
    for (l, layer) in w.layers.iter().enumerate() {
        if pre_norm {
            // ModernBERT, as `Encoder::pre_norm_layer`.
            let input = if l == 0 {
                hidden.clone()
            } else {
                let n = &layer.attention_norm;
                ops.layer_norm(&hidden, None, &n.weight, &n.bias, eps, &mut attention_out)?;
                store(&mut attention_out);
                attention_out.clone()
            };
            ops.matmul(&input, &layer.qkv.weight, &mut qkv, Epilogue::none())?;
            store(&mut qkv);
            let mut qkv_rot = z(&[b, t, 3 * c]);
            ops.rotary(&qkv, &rope(l), config.head_dim(), &mut qkv_rot)?;
            store(&mut qkv_rot);
            let extra = AttentionBias {
                rel_bias: None,
                window: config.attention_window(l),
            };
            let heads = config.num_attention_heads;
            ops.attention_biased(&qkv_rot, &mask, extra, heads, &mut context)?;
            store(&mut context);
            let out = Epilogue::none().residual(&hidden);
            ops.matmul(
                &context,
                &layer.attention_output.weight,
                &mut attention_sum,
                out,
            )?;
            store(&mut attention_sum);
            let n = &layer.output_norm;
            ops.layer_norm(
                &attention_sum,
                None,
                &n.weight,
                &n.bias,
                eps,
                &mut attention_out,
            )?;
            store(&mut attention_out);
            let mut up = z(&[b, t, 2 * i]);
            ops.matmul(
                &attention_out,
                &layer.intermediate.weight,
                &mut up,
                Epilogue::none(),
            )?;
            store(&mut up);
            ops.geglu(&up, &mut intermediate)?;
            store(&mut intermediate);
            let down = Epilogue::none().residual(&attention_sum);
            ops.matmul(&intermediate, &layer.output.weight, &mut hidden, down)?;
            store(&mut hidden);
            if hidden_states {
                states.push(hidden.clone());
            }
            continue;
        }
        ops.matmul(
            &hidden,
            &layer.qkv.weight,
            &mut qkv,
            Epilogue::none().bias(&layer.qkv.bias),
        )?;
        store(&mut qkv);
        let heads = config.num_attention_heads;
        let extra = AttentionBias {
            rel_bias: rel_bias.as_ref(),
            window: config.attention_window(l),
        };
        ops.attention_biased(&qkv, &mask, extra, heads, &mut context)?;
        store(&mut context);
        let out = Epilogue::none()
            .bias(&layer.attention_output.bias)
            .residual(&hidden);
        ops.matmul(
            &context,
            &layer.attention_output.weight,
            &mut attention_sum,
            out,
        )?;
        store(&mut attention_sum);
        let n = &layer.attention_norm;
        ops.layer_norm(
            &attention_sum,
            None,
            &n.weight,
            &n.bias,
            eps,
            &mut attention_out,
        )?;
        store(&mut attention_out);
        let up = Epilogue::none().bias(&layer.intermediate.bias).act(act);
        ops.matmul(
            &attention_out,
            &layer.intermediate.weight,
            &mut intermediate,
            up,
        )?;
        store(&mut intermediate);
        let down = Epilogue::none()
            .bias(&layer.output.bias)
            .residual(&attention_out);
        ops.matmul(&intermediate, &layer.output.weight, &mut output_sum, down)?;
        store(&mut output_sum);
        let n = &layer.output_norm;
        ops.layer_norm(&output_sum, None, &n.weight, &n.bias, eps, &mut hidden)?;
        store(&mut hidden);
        if hidden_states {
            states.push(hidden.clone());
        }
    }

    if let Some(n) = &w.final_norm {
        let mut normed = z(&btc);
        ops.layer_norm(&hidden, None, &n.weight, &n.bias, eps, &mut normed)?;
        store(&mut normed);
        hidden = normed;
    }

    let pooler_output = match &w.pooler {
        Some(pooler) => {
            let mut out = z(&[b, c]);
            let ep = Epilogue::none().bias(&pooler.bias).tanh();
            ops.matmul_strided(
                &hidden,
                &pooler.weight,
                &mut out,
                ep,
                &pooler_problem(b, t, c),
            )?;
            Some(out)
        }
        None => None,
    };
    let logits = match &w.classifier {
        Some(cls) => {
            let mut input = match (&cls.dense, &pooler_output) {
                (Some((dense, act)), _) => {
                    let mut h = z(&[b, c]);
                    let ep = Epilogue::none().bias(&dense.bias).act(*act);
                    if cls.mean_pooling {
                        let mut mean = z(&[b, c]);
                        ops.pool(&hidden, &mask, &mask, PoolMode::Mean, &mut mean, 0)?;
                        ops.matmul(&mean, &dense.weight, &mut h, ep)?;
                    } else {
                        let problem = pooler_problem(b, t, c);
                        ops.matmul_strided(&hidden, &dense.weight, &mut h, ep, &problem)?;
                    }
                    h
                }
                (None, Some(pooled)) => pooled.clone(),
                (None, None) => unreachable_pooler()?,
            };
            if let Some(norm) = &cls.norm {
                let mut normed = z(&[b, c]);
                ops.layer_norm(&input, None, &norm.weight, &norm.bias, eps, &mut normed)?;
                input = normed;
            }
            let mut out = z(&[b, cls.out.weight.shape[0]]);
            ops.matmul(
                &input,
                &cls.out.weight,
                &mut out,
                Epilogue::none().bias(&cls.out.bias),
            )?;
            Some(out)
        }
        None => None,
    };
    let head = &w.sentence;
    let keep = HostTensor::new(&[b, t], input.pooling_mask(head.include_prompt))?;
    let mut pooled = z(&[b, head.pooled_dim(c)]);
    for (i, &mode) in head.modes.iter().enumerate() {
        ops.pool(&hidden, &mask, &keep, mode, &mut pooled, i * c)?;
    }
    for dense in &head.dense {
        let mut out = z(&[b, dense.linear.weight.shape[0]]);
        let ep = Epilogue::none().bias(&dense.linear.bias).act(dense.act);
        ops.matmul(&pooled, &dense.linear.weight, &mut out, ep)?;
        pooled = out;
    }
    let (sentence_embedding, unnormalized_embedding) = if head.normalize {
        let mut y = z(&pooled.shape);
        ops.l2_normalize(&pooled, &mut y)?;
        (y, Some(pooled))
    } else {
        (pooled, None)
    };
    Ok(TextOutput {
        last_hidden_state: hidden,
        pooler_output,
        sentence_embedding,
        hidden_states: states,
        logits,
        unnormalized_embedding,
    })
}

/// Refused up front by `check_classifier_pooler`; kept so this match has no panic.
fn unreachable_pooler() -> Result<HostTensor> {
    Err(crate::error::Error::Weights {
        key: "pooler.dense.weight".into(),
        reason: "missing: BERT's classifier reads the pooler output".into(),
    })
}
