//! Tokenized text as the model takes it, and its checks against a config.

use super::TextConfig;
use crate::error::{Error, Result};
use crate::kernels::{self};
use crate::limits;
use crate::models::weights::Weights;

/// A batch of tokenized text: row-major [batch, seq] ids, mask (1 real, 0 padding) and
/// segment ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextInput {
    pub batch: usize,
    pub seq: usize,
    pub input_ids: Vec<u32>,
    pub attention_mask: Vec<u32>,
    pub token_type_ids: Vec<u32>,
    /// Tokens of a prompt at the start of every row (`[CLS]` included), left out of pooling
    /// when the model's Pooling says `include_prompt: false`; 0 for none.
    pub prompt_length: usize,
}

impl TextInput {
    /// Checks that the three arrays are [batch, seq]; `token_type_ids` defaults to zeros and
    /// `attention_mask` to all ones.
    pub fn new(
        batch: usize,
        seq: usize,
        input_ids: Vec<u32>,
        attention_mask: Option<Vec<u32>>,
        token_type_ids: Option<Vec<u32>>,
    ) -> Result<Self> {
        let n = batch.checked_mul(seq).ok_or_else(|| Error::Input {
            arg: "input_ids".into(),
            reason: format!("shape [{batch}, {seq}] is too large"),
        })?;
        let attention_mask = attention_mask.unwrap_or_else(|| vec![1; n]);
        let token_type_ids = token_type_ids.unwrap_or_else(|| vec![0; n]);
        for (arg, len) in [
            ("input_ids", input_ids.len()),
            ("attention_mask", attention_mask.len()),
            ("token_type_ids", token_type_ids.len()),
        ] {
            if len != n {
                return Err(Error::Input {
                    arg: arg.into(),
                    reason: format!("{len} values for shape [{batch}, {seq}] ({n} expected)"),
                });
            }
        }
        Ok(Self {
            batch,
            seq,
            input_ids,
            attention_mask,
            token_type_ids,
            prompt_length: 0,
        })
    }

    /// Checks the input against a model: non-empty, no longer than the position table, every
    /// id inside its table, mask values 0 or 1.
    pub fn validate(&self, config: &TextConfig) -> Result<()> {
        let bad = |arg: &str, reason: String| {
            Err(Error::Input {
                arg: arg.into(),
                reason,
            })
        };
        if self.batch == 0 || self.seq == 0 {
            return bad(
                "input_ids",
                format!("empty batch [{}, {}]", self.batch, self.seq),
            );
        }
        if self.batch.saturating_mul(self.seq) > limits::MAX_BATCH_TOKENS {
            return bad(
                "input_ids",
                format!(
                    "batch [{}, {}] has more than {} tokens: split it",
                    self.batch,
                    self.seq,
                    limits::MAX_BATCH_TOKENS
                ),
            );
        }
        if self.seq > config.max_sequence() {
            return bad(
                "input_ids",
                format!(
                    "sequence length {} is longer than the {} positions max_position_embeddings \
                     {} allows",
                    self.seq,
                    config.max_sequence(),
                    config.max_position_embeddings
                ),
            );
        }
        kernels::check_ids("input_ids", &self.input_ids, config.vocab_size).map_err(|e| {
            Error::Input {
                arg: "input_ids".into(),
                reason: e.to_string(),
            }
        })?;
        if config.family().has_token_types() {
            kernels::check_ids(
                "token_type_ids",
                &self.token_type_ids,
                config.type_vocab_size,
            )
            .map_err(|e| Error::Input {
                arg: "token_type_ids".into(),
                reason: e.to_string(),
            })?;
        }
        if let Some(i) = self.attention_mask.iter().position(|&m| m > 1) {
            return bad(
                "attention_mask",
                format!(
                    "value {} at position {i} is not 0 or 1",
                    self.attention_mask[i]
                ),
            );
        }
        Ok(())
    }

    /// Reads `input_ids`, `attention_mask` and (optional) `token_type_ids` ([B, T], I64 or
    /// I32) from safetensors bytes.
    pub fn from_safetensors(bytes: &[u8]) -> Result<Self> {
        let file = Weights::from_bytes(bytes)?;
        let ids = file.ids("input_ids")?.ok_or_else(|| Error::Input {
            arg: "input_ids".into(),
            reason: "missing from the input file".into(),
        })?;
        let [batch, seq] = ids.0[..] else {
            return Err(Error::Input {
                arg: "input_ids".into(),
                reason: format!("shape {:?} is not [batch, seq]", ids.0),
            });
        };
        let mut rest = [None, None];
        for (slot, name) in rest.iter_mut().zip(["attention_mask", "token_type_ids"]) {
            if let Some((shape, values)) = file.ids(name)? {
                if shape != ids.0 {
                    return Err(Error::Input {
                        arg: name.into(),
                        reason: format!("shape {shape:?} differs from input_ids' {:?}", ids.0),
                    });
                }
                *slot = Some(values);
            }
        }
        let [mask, types] = rest;
        Self::new(batch, seq, ids.1, mask, types)
    }

    /// Token, position and token-type ids one after the other: the [3, batch x seq] `ids` of
    /// [`crate::kernels::bert_embeddings`], with the family's position rule (RoBERTa's from
    /// the input ids) and zero token types for a family without them.
    pub fn embedding_ids(&self, config: &TextConfig) -> Vec<u32> {
        let mut ids = Vec::with_capacity(3 * self.input_ids.len());
        ids.extend_from_slice(&self.input_ids);
        ids.extend(self.position_ids(config));
        if config.family().has_token_types() {
            ids.extend_from_slice(&self.token_type_ids);
        } else {
            ids.extend(std::iter::repeat_n(0, self.input_ids.len()));
        }
        ids
    }

    /// The tokens pooled, [batch x seq]: the attention mask, with the prompt's tokens zeroed
    /// when `include_prompt` is false (sentence-transformers' `_exclude_prompt_from_mask`:
    /// positions before the first real token plus `prompt_length`).
    pub fn pooling_mask(&self, include_prompt: bool) -> Vec<u32> {
        if include_prompt || self.prompt_length == 0 {
            return self.attention_mask.clone();
        }
        self.attention_mask
            .chunks(self.seq.max(1))
            .flat_map(|row| {
                let start = row.iter().position(|&m| m != 0).unwrap_or(0);
                row.iter()
                    .enumerate()
                    .map(move |(t, &m)| u32::from(m != 0 && t >= start + self.prompt_length))
            })
            .collect()
    }

    /// Position ids, [batch x seq]: see [`super::Family::position_ids`].
    pub fn position_ids(&self, config: &TextConfig) -> Vec<u32> {
        let family = config.family();
        self.input_ids
            .chunks(self.seq.max(1))
            .flat_map(|row| family.position_ids(row, config.pad_id()))
            .collect()
    }
}
