//! `config.json` of a Hugging Face BERT model: the keys read, their bounds.

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::kernels::{self};
use crate::limits;

/// `config.json` of a Hugging Face BERT model (the keys this engine reads).
#[derive(Debug, Clone, Deserialize)]
pub struct BertConfig {
    #[serde(default = "default_model_type")]
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_hidden_act")]
    pub hidden_act: String,
    #[serde(default = "default_max_position")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_position_type")]
    pub position_embedding_type: String,
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

impl BertConfig {
    /// Parses and checks `config.json`.
    pub fn from_json(json: &str) -> Result<Self> {
        let config: Self =
            serde_json::from_str(json).map_err(|e| Error::Config(format!("config.json: {e}")))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<()> {
        let unsupported = |what: String| Err(Error::Config(what));
        if self.model_type != "bert" {
            return unsupported(format!("model_type {:?} is not \"bert\"", self.model_type));
        }
        if self.hidden_act != "gelu" {
            return unsupported(format!(
                "hidden_act {:?} is not supported (only \"gelu\", exact erf)",
                self.hidden_act
            ));
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
            "vocab_size x hidden_size",
            &[self.vocab_size, self.hidden_size],
        )?;
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
}
