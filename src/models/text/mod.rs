//! Text encoders from Hugging Face checkpoints (`config.json` + `model.safetensors`): one
//! encoder core ([`Encoder`] on the GPU, [`forward_cpu`] from the twins) mirroring
//! `transformers`' `BertModel` (modeling_bert.py): embeddings, encoder layers, pooler, plus
//! sentence-transformers' heads. BERT, RoBERTa, XLM-RoBERTa, CamemBERT, ELECTRA, DistilBERT,
//! MPNet and ModernBERT run through it with the family adapters `family.rs` lists (keys,
//! embeddings, norm placement, activation, positions, attention bias and window). Names say
//! BERT only where a thing is BERT's own.
//!
//! The Rust tree follows the checkpoint keys; the one change is that query, key and value
//! are fused into one [3C, C] projection at load time, so attention reads Q, K and V from a
//! single matmul output.

mod config;
mod cpu;
mod family;
mod gpu;
mod input;
mod plan;
mod sentence;
mod weights;

pub use crate::models::{LayerNorm, Linear};
pub use config::{ModernBertSettings, TextConfig};
#[cfg(not(target_arch = "wasm32"))]
pub use cpu::forward_fast;
pub use cpu::{forward_cpu, forward_cpu_as, forward_on, forward_rounded};
pub use family::{Family, Keys, MODEL_TYPES, relative_position_bias, relative_position_bucket};
pub use gpu::{Encoder, Plan, Readback};
pub use input::TextInput;
#[cfg(not(target_arch = "wasm32"))]
pub use sentence::load_sentence_dir;
pub use sentence::{Dense, ReadFile, SentenceHead, SentenceSettings, load_sentence};
pub use weights::{ClassifierHead, Embeddings, EncoderLayer, TextWeights, check_classifier_pooler};
#[cfg(not(target_arch = "wasm32"))]
pub use weights::{load_config, load_dir, load_weights};

use crate::error::Result;
use crate::host::HostTensor;
use crate::kernels::{MatrixView, StridedMatmul, WLayout};

/// What a forward returns (host tensors).
#[derive(Debug, Clone)]
pub struct TextOutput {
    /// [B, T, C]: the last layer's output.
    pub last_hidden_state: HostTensor,
    /// [B, C]: tanh(dense(h[:, 0])), when the checkpoint has a pooler.
    pub pooler_output: Option<HostTensor>,
    /// [B, C]: mean over real tokens, L2-normalised (sentence-transformers).
    pub sentence_embedding: HostTensor,
    /// Embedding output then each layer's output ([B, T, C] each), when requested.
    pub hidden_states: Vec<HostTensor>,
    /// [B, num_labels]: the sequence-classification head's logits, for a checkpoint with one.
    pub logits: Option<HostTensor>,
    /// [B, D]: the sentence embedding before the head's Normalize, when it has one (servers'
    /// `normalize: false`).
    pub unnormalized_embedding: Option<HostTensor>,
}

impl TextOutput {
    /// `last_hidden_state`, `pooler_output` (when present) and `sentence_embedding` as an F32
    /// safetensors file.
    pub fn to_safetensors(&self) -> Result<Vec<u8>> {
        let mut tensors = vec![
            ("last_hidden_state", &self.last_hidden_state),
            ("sentence_embedding", &self.sentence_embedding),
        ];
        if let Some(p) = &self.pooler_output {
            tensors.push(("pooler_output", p));
        }
        if let Some(l) = &self.logits {
            tensors.push(("logits", l));
        }
        crate::models::weights::to_safetensors(&tensors)
    }
}

/// A one-label cross-encoder's score from its logit: the sigmoid, as
/// `sentence_transformers.CrossEncoder.predict` gives it.
pub fn cross_encoder_score(logit: f32) -> f32 {
    1.0 / (1.0 + (-logit).exp())
}

/// The pooler's product reads row 0 of each sequence: X rows are `seq · C` apart.
fn pooler_problem(batch: usize, seq: usize, c: usize) -> StridedMatmul {
    StridedMatmul {
        m: batch,
        n: c,
        k: c,
        batch: [1, 1],
        x: MatrixView {
            offset: 0,
            ld: seq * c,
            outer_stride: 0,
            inner_stride: 0,
        },
        w: MatrixView::contiguous(c, c),
        w_layout: WLayout::NK,
        y: MatrixView::contiguous(batch, c),
    }
}
