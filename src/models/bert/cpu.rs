//! The CPU forward, built only from the kernels' CPU twins.

use super::{BertConfig, BertInput, BertOutput, BertWeights, pooler_problem};
use crate::error::Result;
use crate::kernels::Epilogue;
use crate::reference::{self, HostTensor};

/// The CPU forward, built only from the kernels' CPU twins.
pub fn forward_cpu(
    config: &BertConfig,
    w: &BertWeights<HostTensor>,
    input: &BertInput,
    hidden_states: bool,
) -> Result<BertOutput> {
    input.validate(config)?;
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
    let embedding_ids = HostTensor::new(&[3, b * t], input.embedding_ids())?;
    reference::bert_embeddings(&embedding_ids, &w.embeddings.tables(), eps, &mut hidden)?;
    let mut states = Vec::new();
    if hidden_states {
        states.push(hidden.clone());
    }

    let (mut qkv, mut context, mut attention_sum, mut attention_out) =
        (z(&[b, t, 3 * c]), z(&btc), z(&btc), z(&btc));
    let (mut intermediate, mut output_sum) = (z(&[b, t, i]), z(&btc));
    for layer in &w.layers {
        reference::matmul(
            &hidden,
            &layer.qkv.weight,
            &mut qkv,
            Epilogue::none().bias(&layer.qkv.bias),
        )?;
        reference::attention(&qkv, &mask, config.num_attention_heads, &mut context)?;
        let out = Epilogue::none()
            .bias(&layer.attention_output.bias)
            .residual(&hidden);
        reference::matmul(
            &context,
            &layer.attention_output.weight,
            &mut attention_sum,
            out,
        )?;
        let n = &layer.attention_norm;
        reference::layer_norm(
            &attention_sum,
            None,
            &n.weight,
            &n.bias,
            eps,
            &mut attention_out,
        )?;
        let up = Epilogue::none().bias(&layer.intermediate.bias).gelu();
        reference::matmul(
            &attention_out,
            &layer.intermediate.weight,
            &mut intermediate,
            up,
        )?;
        let down = Epilogue::none()
            .bias(&layer.output.bias)
            .residual(&attention_out);
        reference::matmul(&intermediate, &layer.output.weight, &mut output_sum, down)?;
        let n = &layer.output_norm;
        reference::layer_norm(&output_sum, None, &n.weight, &n.bias, eps, &mut hidden)?;
        if hidden_states {
            states.push(hidden.clone());
        }
    }

    let pooler_output = match &w.pooler {
        Some(pooler) => {
            let mut out = z(&[b, c]);
            let ep = Epilogue::none().bias(&pooler.bias).tanh();
            reference::matmul_strided(
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
    let (mut pooled, mut sentence_embedding) = (z(&[b, c]), z(&[b, c]));
    reference::mean_pool(&hidden, &mask, &mut pooled)?;
    reference::l2_normalize(&pooled, &mut sentence_embedding)?;
    Ok(BertOutput {
        last_hidden_state: hidden,
        pooler_output,
        sentence_embedding,
        hidden_states: states,
    })
}
