//! `config.json` of a Hugging Face BERT-family model: the keys read, their bounds. DistilBERT's
//! own names (`dim`, `n_layers`, `n_heads`, `hidden_dim`, `activation`) are read as aliases.

use serde::Deserialize;

use super::Family;
use crate::error::{Error, Result};
use crate::kernels::{self, Activation};
use crate::limits;

/// `config.json` of a Hugging Face BERT-family model (the keys this engine reads).
#[derive(Debug, Clone, Deserialize)]
pub struct TextConfig {
    #[serde(default = "default_model_type")]
    pub model_type: String,
    pub vocab_size: usize,
    #[serde(alias = "dim")]
    pub hidden_size: usize,
    #[serde(alias = "n_layers")]
    pub num_hidden_layers: usize,
    #[serde(alias = "n_heads")]
    pub num_attention_heads: usize,
    #[serde(alias = "hidden_dim")]
    pub intermediate_size: usize,
    #[serde(
        default = "default_hidden_act",
        alias = "activation",
        alias = "hidden_activation"
    )]
    pub hidden_act: String,
    #[serde(default = "default_max_position")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_eps", alias = "norm_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_position_type")]
    pub position_embedding_type: String,
    /// The padding id (RoBERTa's positions start after it); the family's default when absent.
    #[serde(default)]
    pub pad_token_id: Option<usize>,
    /// ELECTRA's embedding width (projected to `hidden_size`); `hidden_size` when absent.
    #[serde(default)]
    pub embedding_size: Option<usize>,
    /// DistilBERT's fixed sinusoidal positions: the checkpoint holds the table (as
    /// `from_pretrained` loads it); it is generated only when absent.
    #[serde(default)]
    pub sinusoidal_pos_embds: bool,
    /// MPNet's relative position buckets (32 when absent).
    #[serde(default)]
    pub relative_attention_num_buckets: Option<usize>,
    /// ModernBERT's settings.
    #[serde(flatten)]
    pub modern: ModernBertSettings,
}

/// ModernBERT's `config.json` keys, as transformers 4.x (`global_attn_every_n_layers`,
/// `global_rope_theta`, `local_rope_theta`) or 5.x (`layer_types`, `rope_parameters`) write them.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ModernBertSettings {
    pub global_attn_every_n_layers: Option<usize>,
    /// The local window's full width (`local_attention // 2` on each side).
    pub local_attention: Option<usize>,
    pub layer_types: Option<Vec<String>>,
    pub rope_parameters: Option<serde_json::Value>,
    pub global_rope_theta: Option<f64>,
    pub local_rope_theta: Option<f64>,
    pub norm_bias: Option<bool>,
    pub attention_bias: Option<bool>,
    pub mlp_bias: Option<bool>,
    /// The sequence-classification head: "cls" (default) or "mean".
    pub classifier_pooling: Option<String>,
    /// The head's activation ("gelu", exact, by default).
    pub classifier_activation: Option<String>,
    /// Whether `head.dense` has a bias (false by default).
    pub classifier_bias: Option<bool>,
}

fn default_model_type() -> String {
    "bert".into()
}
fn default_hidden_act() -> String {
    "gelu".into()
}
fn default_max_position() -> usize {
    512
}
fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}
fn default_position_type() -> String {
    "absolute".into()
}

impl TextConfig {
    /// Parses and checks `config.json`.
    pub fn from_json(json: &str) -> Result<Self> {
        let config: Self =
            serde_json::from_str(json).map_err(|e| Error::Config(format!("config.json: {e}")))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<()> {
        let unsupported = |what: String| Err(Error::Config(what));
        let family = Family::of(&self.model_type)?;
        if self.activation().is_none() {
            return unsupported(format!(
                "hidden_act {:?} is not supported (\"gelu\", exact erf, or \"relu\")",
                self.hidden_act
            ));
        }
        if let Some(e) = self.embedding_size
            && family != Family::Electra
            && e != self.hidden_size
        {
            return unsupported(format!(
                "embedding_size {e} differs from hidden_size {} (only ELECTRA projects its \
                 embeddings)",
                self.hidden_size
            ));
        }
        if family == Family::ModernBert {
            self.classifier_mean_pooling()?;
            self.classifier_activation()?;
        }
        if self.position_embedding_type != "absolute" {
            return unsupported(format!(
                "position_embedding_type {:?} is not supported (only \"absolute\")",
                self.position_embedding_type
            ));
        }
        let sizes = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("embedding_size", self.embedding_dim()),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("type_vocab_size", self.type_vocab_size),
        ];
        if let Some((name, _)) = sizes.iter().find(|(_, v)| *v == 0) {
            return unsupported(format!("{name} is 0"));
        }
        // Bounds (largest released value in parentheses): XLM-R's 250k vocabulary, 4096-wide
        // hidden states, 48 layers, 64 heads, 16k MLP, 8192 positions.
        for (key, max) in [
            ("vocab_size", 1 << 22),
            ("hidden_size", 1 << 14),
            ("embedding_size", 1 << 14),
            ("num_hidden_layers", 512),
            ("num_attention_heads", 1 << 10),
            ("intermediate_size", 1 << 17),
            ("max_position_embeddings", 1 << 17),
            ("type_vocab_size", 1 << 16),
        ] {
            let value = sizes.iter().find(|(k, _)| *k == key).map_or(0, |(_, v)| *v);
            limits::check_key(key, value as u64, max)?;
        }
        limits::check_elements(
            "vocab_size x embedding_size",
            &[self.vocab_size, self.embedding_dim()],
        )?;
        if self.pad_id() as usize >= self.vocab_size {
            return unsupported(format!(
                "pad_token_id {} is outside the vocabulary of {}",
                self.pad_id(),
                self.vocab_size
            ));
        }
        if family == Family::ModernBert {
            let m = &self.modern;
            for (key, value) in [
                ("norm_bias", m.norm_bias),
                ("attention_bias", m.attention_bias),
                ("mlp_bias", m.mlp_bias),
            ] {
                if value == Some(true) {
                    return unsupported(format!(
                        "{key} true is not supported for ModernBERT (released models have none)"
                    ));
                }
            }
            if !self.head_dim().is_multiple_of(2) {
                return unsupported(format!(
                    "head size {} is odd: rotary needs pairs",
                    self.head_dim()
                ));
            }
            let theta_ok = (0..self.num_hidden_layers).all(|l| {
                let t = self.rope_theta(l);
                t.is_finite() && t > 1.0
            });
            if !theta_ok {
                return unsupported("a rope_theta is not a finite number above 1".into());
            }
            if let Some(w) = m.local_attention
                && !(2..=1 << 20).contains(&w)
            {
                return unsupported(format!("local_attention {w} is outside 2..=1048576"));
            }
        }
        if self.family() == Family::Mpnet && !(2..=1024).contains(&self.relative_buckets()) {
            return unsupported(format!(
                "relative_attention_num_buckets {} is outside 2..=1024",
                self.relative_buckets()
            ));
        }
        if self.max_sequence() == 0 {
            return unsupported(format!(
                "max_position_embeddings {} leaves no position after pad_token_id {} (RoBERTa's \
                 positions start at pad_token_id + 1)",
                self.max_position_embeddings,
                self.pad_id()
            ));
        }
        limits::check_elements(
            "intermediate_size x hidden_size",
            &[self.intermediate_size, self.hidden_size],
        )?;
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return unsupported(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.head_dim() > kernels::MAX_HEAD_DIM {
            return unsupported(format!(
                "head size {} is above the {} the attention kernel takes",
                self.head_dim(),
                kernels::MAX_HEAD_DIM
            ));
        }
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps > 0.0) {
            return unsupported(format!(
                "layer_norm_eps {} is not positive",
                self.layer_norm_eps
            ));
        }
        Ok(())
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// The encoder family (`model_type` was checked at parse time; BERT for a config built
    /// by hand with another name).
    pub fn family(&self) -> Family {
        Family::of(&self.model_type).unwrap_or(Family::Bert)
    }

    /// The feed-forward activation: exact GELU or ReLU.
    pub fn activation(&self) -> Option<Activation> {
        match self.hidden_act.as_str() {
            "gelu" => Some(Activation::Gelu),
            "relu" => Some(Activation::Relu),
            _ => None,
        }
    }

    /// ModernBERT's classifier reads the masked mean (`classifier_pooling: "mean"`) rather
    /// than the CLS state (`"cls"`, the default).
    pub fn classifier_mean_pooling(&self) -> Result<bool> {
        match self.modern.classifier_pooling.as_deref() {
            None | Some("cls") => Ok(false),
            Some("mean") => Ok(true),
            Some(other) => Err(Error::Config(format!(
                "classifier_pooling {other:?} is not supported (\"cls\" or \"mean\")"
            ))),
        }
    }

    /// ModernBERT's classifier activation (`classifier_activation`, exact GELU by default).
    pub fn classifier_activation(&self) -> Result<Activation> {
        match self.modern.classifier_activation.as_deref() {
            None | Some("gelu") => Ok(Activation::Gelu),
            Some("relu") => Ok(Activation::Relu),
            Some("tanh") => Ok(Activation::Tanh),
            Some(other) => Err(Error::Config(format!(
                "classifier_activation {other:?} is not supported (\"gelu\", exact erf, \
                 \"relu\" or \"tanh\")"
            ))),
        }
    }

    /// Width of the embedding tables (ELECTRA's `embedding_size`, else `hidden_size`).
    pub fn embedding_dim(&self) -> usize {
        self.embedding_size.unwrap_or(self.hidden_size)
    }

    /// Whether layer `l` of a ModernBERT attends locally (`layer_types`, else every layer but
    /// each `global_attn_every_n_layers`-th, counting from 0).
    fn is_local(&self, l: usize) -> bool {
        let m = &self.modern;
        match &m.layer_types {
            Some(types) => types.get(l).is_some_and(|t| t == "sliding_attention"),
            None => !l.is_multiple_of(m.global_attn_every_n_layers.unwrap_or(3).max(1)),
        }
    }

    /// The local attention window of layer `l` (ModernBERT's sliding layers: half of
    /// `local_attention` each side), `None` for global attention.
    pub fn attention_window(&self, l: usize) -> Option<usize> {
        (self.family() == Family::ModernBert && self.is_local(l))
            .then(|| self.modern.local_attention.unwrap_or(128) / 2)
    }

    /// ModernBERT's rotary base of layer `l` (`rope_parameters`, else `global_rope_theta` /
    /// `local_rope_theta`: 160,000 and 10,000 by default).
    pub fn rope_theta(&self, l: usize) -> f64 {
        let m = &self.modern;
        let local = self.is_local(l);
        let kind = if local {
            "sliding_attention"
        } else {
            "full_attention"
        };
        m.rope_parameters
            .as_ref()
            .and_then(|p| p.get(kind)?.get("rope_theta")?.as_f64())
            .or(if local {
                m.local_rope_theta
            } else {
                m.global_rope_theta
            })
            .unwrap_or(if local { 10_000.0 } else { 160_000.0 })
    }

    /// MPNet's relative position buckets.
    pub fn relative_buckets(&self) -> usize {
        self.relative_attention_num_buckets.unwrap_or(32)
    }

    /// The padding id: `pad_token_id`, or the family's default (RoBERTa 1, others 0).
    pub fn pad_id(&self) -> u32 {
        let default = if self.family().padding_offset_positions() {
            1
        } else {
            0
        };
        self.pad_token_id.unwrap_or(default) as u32
    }

    /// Rows of the token-type table the model reads (1 for DistilBERT, which has none and
    /// runs with a zero table).
    pub fn token_types(&self) -> usize {
        if self.family().has_token_types() {
            self.type_vocab_size
        } else {
            1
        }
    }

    /// The longest sequence the position table allows (RoBERTa's positions run from
    /// `pad_token_id + 1`).
    pub fn max_sequence(&self) -> usize {
        if self.family().padding_offset_positions() {
            self.max_position_embeddings
                .saturating_sub(self.pad_id() as usize + 1)
        } else {
            self.max_position_embeddings
        }
    }
}
