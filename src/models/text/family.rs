//! The encoder families that share BERT's post-norm layer and differ only in small choices:
//! which `model_type`s they answer to, the checkpoint key of each weight, how position ids
//! are made, whether token types exist, and an embedding projection. One forward serves
//! them all (`gpu.rs`, `cpu.rs`); a family is a row of this file.
//!
//! Upstream (transformers v4.46): `models/bert/modeling_bert.py`,
//! `models/roberta/modeling_roberta.py` (`create_position_ids_from_input_ids`),
//! `models/xlm_roberta`, `models/camembert` (RoBERTa's modules), `models/electra/modeling_electra.py`
//! (`embeddings_project`), `models/distilbert/modeling_distilbert.py`,
//! `models/mpnet/modeling_mpnet.py` (`relative_position_bucket`, `compute_position_bias`).

use crate::error::{Error, Result};

/// An encoder family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `bert`: learned absolute positions from 0, token types.
    Bert,
    /// `roberta`, `xlm-roberta`, `camembert`: positions start at `pad_token_id + 1` and skip
    /// padding, computed from the input ids; one token type.
    Roberta,
    /// `electra`: BERT's layers after embeddings of `embedding_size` and `embeddings_project`.
    Electra,
    /// `distilbert`: its own key names, no token types, GELU or ReLU, sinusoidal or learned
    /// positions (the checkpoint holds the table either way).
    DistilBert,
    /// `mpnet`: RoBERTa's positions, no token types, and a relative position bias (bucketed
    /// distances, one table shared by every layer) added to the attention scores.
    Mpnet,
    /// `modernbert`: pre-norm layers without biases (the first without its attention norm),
    /// rotary positions (global and local theta), GeGLU, a local window on most layers, a
    /// final norm; no position table, no token types.
    ModernBert,
}

/// The `model_type`s this engine loads, with their family.
pub const MODEL_TYPES: [(&str, Family); 8] = [
    ("bert", Family::Bert),
    ("roberta", Family::Roberta),
    ("xlm-roberta", Family::Roberta),
    ("camembert", Family::Roberta),
    ("electra", Family::Electra),
    ("distilbert", Family::DistilBert),
    ("mpnet", Family::Mpnet),
    ("modernbert", Family::ModernBert),
];

/// Where a family keeps each weight (relative to the base model; the task prefix is tried
/// when a key is missing).
#[derive(Debug, Clone, Copy)]
pub struct Keys {
    /// The base model's prefix inside task checkpoints (`roberta.` in
    /// `RobertaForSequenceClassification`).
    pub prefix: &'static str,
    pub word: &'static str,
    pub position: &'static str,
    pub token_type: Option<&'static str>,
    pub embedding_norm: &'static str,
    /// ELECTRA's projection from `embedding_size` to `hidden_size`.
    pub project: Option<&'static str>,
    /// Layer `l`'s prefix is `{layers}.{l}`.
    pub layers: &'static str,
    pub query: &'static str,
    pub key: &'static str,
    pub value: &'static str,
    pub attention_output: &'static str,
    pub attention_norm: &'static str,
    pub intermediate: &'static str,
    pub output: &'static str,
    pub output_norm: &'static str,
    /// Task heads and buffers a checkpoint may hold beside the base model (ignored, or read by
    /// the classifier where it is one).
    pub heads: &'static [&'static str],
}

const BERT_KEYS: Keys = Keys {
    prefix: "bert.",
    word: "embeddings.word_embeddings.weight",
    position: "embeddings.position_embeddings.weight",
    token_type: Some("embeddings.token_type_embeddings.weight"),
    embedding_norm: "embeddings.LayerNorm",
    project: None,
    layers: "encoder.layer",
    query: "attention.self.query",
    key: "attention.self.key",
    value: "attention.self.value",
    attention_output: "attention.output.dense",
    attention_norm: "attention.output.LayerNorm",
    intermediate: "intermediate.dense",
    output: "output.dense",
    output_norm: "output.LayerNorm",
    heads: &["cls.", "classifier.", "qa_outputs.", "bert.pooler."],
};

impl Family {
    /// The family of a `model_type`, or an error naming the key and what is supported.
    pub fn of(model_type: &str) -> Result<Self> {
        MODEL_TYPES
            .iter()
            .find(|(name, _)| *name == model_type)
            .map(|&(_, f)| f)
            .ok_or_else(|| {
                let names: Vec<_> = MODEL_TYPES.iter().map(|(n, _)| *n).collect();
                Error::Config(format!(
                    "model_type {model_type:?} is not supported (supported: {})",
                    names.join(", ")
                ))
            })
    }

    pub fn keys(self) -> Keys {
        match self {
            Family::Bert => BERT_KEYS,
            Family::Roberta => Keys {
                prefix: "roberta.",
                heads: &["lm_head.", "classifier.", "qa_outputs."],
                ..BERT_KEYS
            },
            Family::Electra => Keys {
                prefix: "electra.",
                project: Some("embeddings_project"),
                heads: &[
                    "discriminator_predictions.",
                    "generator_predictions.",
                    "generator_lm_head.",
                    "classifier.",
                    "qa_outputs.",
                ],
                ..BERT_KEYS
            },
            Family::ModernBert => Keys {
                prefix: "model.",
                word: "embeddings.tok_embeddings.weight",
                position: "",
                token_type: None,
                embedding_norm: "embeddings.norm",
                project: None,
                layers: "layers",
                query: "attn.Wqkv",
                key: "attn.Wqkv",
                value: "attn.Wqkv",
                attention_output: "attn.Wo",
                attention_norm: "attn_norm",
                intermediate: "mlp.Wi",
                output: "mlp.Wo",
                output_norm: "mlp_norm",
                heads: &["head.", "classifier.", "decoder."],
            },
            Family::Mpnet => Keys {
                prefix: "mpnet.",
                token_type: None,
                query: "attention.attn.q",
                key: "attention.attn.k",
                value: "attention.attn.v",
                attention_output: "attention.attn.o",
                attention_norm: "attention.LayerNorm",
                heads: &["lm_head.", "classifier."],
                ..BERT_KEYS
            },
            Family::DistilBert => Keys {
                prefix: "distilbert.",
                word: "embeddings.word_embeddings.weight",
                position: "embeddings.position_embeddings.weight",
                token_type: None,
                embedding_norm: "embeddings.LayerNorm",
                project: None,
                layers: "transformer.layer",
                query: "attention.q_lin",
                key: "attention.k_lin",
                value: "attention.v_lin",
                attention_output: "attention.out_lin",
                attention_norm: "sa_layer_norm",
                intermediate: "ffn.lin1",
                output: "ffn.lin2",
                output_norm: "output_layer_norm",
                heads: &[
                    "vocab_transform.",
                    "vocab_layer_norm.",
                    "vocab_projector.",
                    "pre_classifier.",
                    "classifier.",
                    "qa_outputs.",
                ],
            },
        }
    }

    /// Whether position ids follow RoBERTa's rule (see [`Family::position_ids`]).
    pub fn padding_offset_positions(self) -> bool {
        matches!(self, Family::Roberta | Family::Mpnet)
    }

    /// Whether the model reads token-type ids (DistilBERT has no table; its inputs' types are
    /// ignored as `transformers` ignores them).
    pub fn has_token_types(self) -> bool {
        !matches!(
            self,
            Family::DistilBert | Family::Mpnet | Family::ModernBert
        )
    }

    /// Pre-norm layers (`x + f(norm(x))`) with a final norm, instead of BERT's post-norm.
    pub fn pre_norm(self) -> bool {
        self == Family::ModernBert
    }

    /// Position ids of one row of input ids: `0..T` for absolute positions; for RoBERTa,
    /// `transformers`' `create_position_ids_from_input_ids`: each non-padding token gets
    /// `pad + (number of non-padding tokens up to and including it)`, padding tokens get `pad`
    /// (from the ids, not the attention mask).
    pub fn position_ids(self, ids: &[u32], pad: u32) -> Vec<u32> {
        if self == Family::ModernBert {
            // Rotary positions are applied in attention; the (zero) position table is row 0.
            return vec![0; ids.len()];
        }
        if !self.padding_offset_positions() {
            return (0..ids.len() as u32).collect();
        }
        let mut count = 0;
        ids.iter()
            .map(|&id| {
                if id == pad {
                    pad
                } else {
                    count += 1;
                    pad + count
                }
            })
            .collect()
    }
}

/// MPNet's (and T5's bidirectional) bucket of a relative position `d = key - query`:
/// half the buckets for keys after the query; exact buckets up to `num_buckets / 4`, then
/// logarithmic up to `max_distance`, then the last bucket. As `relative_position_bucket`
/// (whose float32 log lands exactly on the integers at powers of two, hence the epsilon).
pub fn relative_position_bucket(d: i64, num_buckets: usize, max_distance: usize) -> usize {
    let half = (num_buckets / 2) as i64;
    let n = -d;
    let mut bucket = if n < 0 { half } else { 0 };
    let n = n.abs();
    let max_exact = half / 2;
    bucket += if n < max_exact {
        n
    } else {
        let scaled = (n as f64 / max_exact as f64).ln()
            / (max_distance as f64 / max_exact as f64).ln()
            * (half - max_exact) as f64;
        (max_exact + (scaled + 1e-9).floor() as i64).min(half - 1)
    };
    bucket as usize
}

/// MPNet's position bias for `t` tokens: [heads, 2t - 1], entry (h, d + t - 1) the table's
/// value for head h at the bucket of distance d (`table`: `relative_attention_bias.weight`,
/// [buckets, heads]).
pub fn relative_position_bias(
    table: &crate::host::HostTensor,
    t: usize,
) -> crate::host::HostTensor {
    let (buckets, heads) = (table.shape[0], table.shape[1]);
    let span = 2 * t - 1;
    let mut out = crate::host::HostTensor::zeros(&[heads, span]);
    for i in 0..span {
        let bucket = relative_position_bucket(i as i64 - (t as i64 - 1), buckets, 128);
        for h in 0..heads {
            out.data[h * span + i] = table.data[bucket.min(buckets - 1) * heads + h];
        }
    }
    out
}
