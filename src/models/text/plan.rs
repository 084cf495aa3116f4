//! The buffers of one (batch, seq): every activation a BERT-family forward writes, planned
//! once and leased to one forward at a time (see [`crate::models::Plans`]).

use super::{ClassifierHead, Family, SentenceHead, TextConfig};
use crate::context::Context;
use crate::error::Result;
use crate::host::HostTensor;
use crate::models::Programs;
use crate::tensor::{DType, Tensor};

/// Buffers for one (batch, seq).
pub struct Plan {
    pub(super) batch: usize,
    pub(super) seq: usize,
    /// Token, position and token-type ids, [3, batch x seq].
    pub(super) ids: Tensor,
    pub(super) mask: Tensor,
    /// ELECTRA's embeddings before `embeddings_project`, [batch, seq, embedding_size].
    pub(super) embedded: Option<Tensor>,
    /// MPNet's relative position bias for this length, [heads, 2 seq - 1] f32.
    pub(super) rel_bias: Option<Tensor>,
    /// ModernBERT: the rotary tables of global and local layers ([2, seq, D/2] f32), the
    /// rotated QKV and the GeGLU output.
    pub(super) rope_global: Option<Tensor>,
    pub(super) rope_local: Option<Tensor>,
    pub(super) qkv_rot: Option<Tensor>,
    pub(super) gated: Option<Tensor>,
    pub(super) hidden: Tensor,
    pub(super) qkv: Tensor,
    pub(super) context: Tensor,
    pub(super) attention_sum: Tensor,
    pub(super) attention_out: Tensor,
    pub(super) intermediate: Tensor,
    pub(super) output_sum: Tensor,
    /// The pooling mask when the prompt is left out of pooling.
    pub(super) keep: Option<Tensor>,
    /// Pooling modes concatenated, [batch, modes x C] f32.
    pub(super) pooled: Tensor,
    /// Each Dense module's output, f32.
    pub(super) dense: Vec<Tensor>,
    pub(super) sentence_embedding: Tensor,
    pub(super) pooler_output: Tensor,
    /// The classifier's dense output on the first token (or the mean), [batch, C] f32.
    pub(super) classifier_hidden: Option<Tensor>,
    /// ModernBERT's classifier: the masked mean it reads, and `head.norm`'s output, [batch, C].
    pub(super) classifier_pooled: Option<Tensor>,
    pub(super) classifier_normed: Option<Tensor>,
    /// [batch, num_labels] f32.
    pub(super) logits: Option<Tensor>,
    /// The forward recorded once for this plan (with and without kept hidden states).
    pub(super) programs: Programs,
}

impl Plan {
    /// Buffers for one shape; activations (hidden states, QKV, attention, MLP) stored as
    /// `dtype`, the pooled outputs as f32.
    pub(super) fn new(
        ctx: &Context,
        config: &TextConfig,
        head: &SentenceHead<HostTensor>,
        classifier: Option<&ClassifierHead<HostTensor>>,
        dtype: DType,
        batch: usize,
        seq: usize,
    ) -> Result<Self> {
        let (c, i) = (config.hidden_size, config.intermediate_size);
        let f32s = |shape: &[usize], label: &str| Tensor::empty(ctx, shape, DType::F32, label);
        let acts = |shape: &[usize], label: &str| Tensor::empty(ctx, shape, dtype, label);
        let btc = [batch, seq, c];
        let pre_norm = config.family().pre_norm();
        Ok(Self {
            batch,
            seq,
            ids: Tensor::empty(ctx, &[3, batch * seq], DType::U32, "embedding_ids")?,
            mask: Tensor::empty(ctx, &[batch, seq], DType::U32, "attention_mask")?,
            rope_global: pre_norm
                .then(|| f32s(&[2, seq, config.head_dim() / 2], "rope_global"))
                .transpose()?,
            rope_local: pre_norm
                .then(|| f32s(&[2, seq, config.head_dim() / 2], "rope_local"))
                .transpose()?,
            qkv_rot: pre_norm
                .then(|| acts(&[batch, seq, 3 * c], "qkv_rot"))
                .transpose()?,
            gated: pre_norm
                .then(|| acts(&[batch, seq, i], "gated"))
                .transpose()?,
            rel_bias: match config.family() == Family::Mpnet {
                true => Some(f32s(
                    &[config.num_attention_heads, 2 * seq - 1],
                    "rel_bias",
                )?),
                false => None,
            },
            embedded: match config.embedding_dim() != c {
                true => Some(acts(&[batch, seq, config.embedding_dim()], "embedded")?),
                false => None,
            },
            hidden: acts(&btc, "hidden")?,
            qkv: acts(&[batch, seq, 3 * c], "qkv")?,
            context: acts(&btc, "context")?,
            attention_sum: acts(&btc, "attention_sum")?,
            attention_out: acts(&btc, "attention_out")?,
            intermediate: acts(
                &[batch, seq, if pre_norm { 2 * i } else { i }],
                "intermediate",
            )?,
            output_sum: acts(&btc, "output_sum")?,
            keep: match head.include_prompt {
                true => None,
                false => Some(Tensor::empty(
                    ctx,
                    &[batch, seq],
                    DType::U32,
                    "pooling_mask",
                )?),
            },
            pooled: f32s(&[batch, head.pooled_dim(c)], "pooled")?,
            dense: head
                .dense
                .iter()
                .map(|d| f32s(&[batch, d.linear.weight.shape[0]], "dense"))
                .collect::<Result<_>>()?,
            sentence_embedding: f32s(&[batch, head.output_dim(c)], "sentence_embedding")?,
            pooler_output: f32s(&[batch, c], "pooler_output")?,
            classifier_hidden: match classifier.is_some_and(|h| !h.from_pooler()) {
                true => Some(f32s(&[batch, c], "classifier_hidden")?),
                false => None,
            },
            classifier_pooled: match classifier.is_some_and(|h| h.mean_pooling) {
                true => Some(f32s(&[batch, c], "classifier_pooled")?),
                false => None,
            },
            classifier_normed: match classifier.is_some_and(|h| h.norm.is_some()) {
                true => Some(f32s(&[batch, c], "classifier_normed")?),
                false => None,
            },
            logits: classifier
                .map(|h| f32s(&[batch, h.out.weight.shape[0]], "logits"))
                .transpose()?,
            programs: Programs::default(),
        })
    }
}
