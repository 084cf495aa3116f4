//! [`TextEncoder`]: a text model folder loaded once (config, sentence-transformers modules,
//! tokenizer, weights, device) and run by every front door the same way.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{EncoderOptions, ModelFiles, Runner};
use crate::error::{Error, Result};
use crate::host::HostTensor;
#[cfg(feature = "tokenizers")]
use crate::limits;
#[cfg(feature = "tokenizers")]
use crate::models::text::SentenceSettings;
use crate::models::text::{
    self, Encoder, Readback, TextConfig, TextInput, TextOutput, TextWeights, load_sentence,
};
#[cfg(feature = "tokenizers")]
use crate::models::tokenizer::{SentenceTokenizer, TextTokenizer, Truncate};

/// What a forward reads back besides the sentence embedding, the pooler output and the
/// logits (always read when the model has them).
pub type Want = Readback;

/// Where the truncation length came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MaxLengthSource {
    /// The caller's `max_length` (`--max-length`).
    Caller,
    /// `max_seq_length` in `sentence_bert_config.json`.
    SentenceBertConfig,
    /// `model_max_length` in `tokenizer_config.json` (what `CrossEncoder.predict` and a plain
    /// folder in sentence-transformers truncate at).
    TokenizerConfig,
    /// The model's position table.
    Positions,
}

/// What kind of text model a folder holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TextKind {
    /// Sentence embeddings (a bi-encoder).
    Embedding,
    /// A sequence-classification head with one label: a cross-encoder for reranking.
    Reranker,
    /// A sequence-classification head with several labels.
    Classifier,
}

/// Everything the front doors print or serve about a loaded text model (TEI's `/info`, the
/// CLI), decided once at [`TextEncoder::open`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct TextInfo {
    pub model_id: String,
    pub model_type: String,
    pub kind: TextKind,
    /// The GPU adapter, or "CPU reference path".
    pub device: String,
    pub dtype: &'static str,
    /// Texts (pairs for a cross-encoder) longer than this many tokens are truncated (or refused
    /// where a caller asks for no truncation).
    pub max_length: usize,
    pub max_length_source: MaxLengthSource,
    pub hidden_size: usize,
    pub layers: usize,
    pub vocab_size: usize,
    /// Width of the sentence embedding (after the head's Dense modules).
    pub embedding_dim: usize,
    pub pooling: Vec<&'static str>,
    pub dense_modules: usize,
    pub normalize: bool,
    pub prompts: BTreeMap<String, String>,
    pub default_prompt_name: Option<String>,
    /// Labels of the sequence-classification head, when the model has one.
    pub num_labels: Option<usize>,
    /// The head's class names (config.json's `id2label`, else `LABEL_i` as transformers
    /// names them); empty without a head.
    pub labels: Vec<String>,
    /// The id batches are padded with (the tokenizer's, else the config's).
    pub pad_id: u32,
    pub has_pooler: bool,
}

/// `n` class names: config.json's `id2label` where it names a class, else `LABEL_i`.
fn class_names(config_json: &[u8], n: usize) -> Vec<String> {
    let named = serde_json::from_slice::<serde_json::Value>(config_json)
        .map(|v| crate::models::cswin::id2label(&v))
        .unwrap_or_default();
    (0..n)
        .map(|i| match named.get(i) {
            Some(name) if !name.is_empty() => name.clone(),
            _ => format!("LABEL_{i}"),
        })
        .collect()
}

/// One tokenized sequence, unpadded: what a batcher queues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub ids: Vec<u32>,
    pub types: Vec<u32>,
}

/// A text model loaded once: [`TextEncoder::open`] from a folder (or the web's map of files)
/// decides every default in one place; [`TextEncoder::encode`], [`TextEncoder::encode_pairs`]
/// and [`TextEncoder::forward`] run it on the GPU or the CPU path.
pub struct TextEncoder {
    config: TextConfig,
    #[cfg(feature = "tokenizers")]
    tokenizer: Option<SentenceTokenizer>,
    runner: Runner<Encoder, TextWeights<HostTensor>>,
    info: TextInfo,
}

/// The truncation length: the caller's, else the folder's `max_seq_length`, else the
/// tokenizer's `model_max_length`, else the positions; never past the positions.
fn max_length(
    asked: Option<usize>,
    sentence: Option<usize>,
    tokenizer: Option<usize>,
    positions: usize,
) -> Result<(usize, MaxLengthSource)> {
    if asked == Some(0) {
        return Err(Error::Argument {
            op: "text encoder",
            arg: "max_length",
            reason: "must be at least 1".into(),
        });
    }
    let (n, source) = match (asked, sentence, tokenizer) {
        (Some(n), _, _) => (n, MaxLengthSource::Caller),
        (None, Some(n), _) => (n, MaxLengthSource::SentenceBertConfig),
        (None, None, Some(n)) => (n, MaxLengthSource::TokenizerConfig),
        (None, None, None) => (positions, MaxLengthSource::Positions),
    };
    if n >= positions {
        let source = match source {
            MaxLengthSource::Caller => source,
            _ => MaxLengthSource::Positions,
        };
        return Ok((positions.max(1), source));
    }
    Ok((n.max(1), source))
}

/// `model_max_length` from `tokenizer_config.json` when it is a real length (tokenizers
/// without one store a huge sentinel).
fn tokenizer_max_length(files: &ModelFiles) -> Result<Option<usize>> {
    let Some(json) = files.json("tokenizer_config.json")? else {
        return Ok(None);
    };
    Ok(json
        .get("model_max_length")
        .and_then(|v| v.as_u64())
        .filter(|&n| n > 0 && n <= 1 << 20)
        .map(|n| n as usize))
}

impl TextEncoder {
    /// Opens a model folder on disk (blocking; native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open(dir: impl AsRef<std::path::Path>, options: &EncoderOptions) -> Result<Self> {
        pollster::block_on(Self::open_files(&ModelFiles::dir(dir.as_ref()), options))
    }

    /// Opens a model from its files (a folder or a map of names to bytes): config, the
    /// sentence-transformers modules, the tokenizer, the weights, then the device.
    pub async fn open_files(files: &ModelFiles, options: &EncoderOptions) -> Result<Self> {
        let config_bytes = files.need("config.json", "a model folder needs its config.json")?;
        let config = TextConfig::from_json(&String::from_utf8_lossy(&config_bytes))
            .map_err(|e| e.in_file(&files.describe("config.json")))?;
        let read = |rel: &str| files.read(rel);
        let (head, settings) =
            load_sentence(&read, config.hidden_size).map_err(|e| e.in_file(&files.root()))?;
        let (max_length, source) = max_length(
            options.max_length,
            settings.max_seq_length,
            tokenizer_max_length(files)?,
            config.max_sequence(),
        )?;
        #[cfg(feature = "tokenizers")]
        let tokenizer = open_tokenizer(files, options, &settings, max_length)?;
        let weights_path = files.describe("model.safetensors");
        let bytes = files.need(
            "model.safetensors",
            "the model folder needs its model.safetensors",
        )?;
        let mut weights =
            TextWeights::from_safetensors(&config, &bytes).map_err(|e| e.in_file(&weights_path))?;
        drop(bytes);
        weights.sentence = head;
        let head = &weights.sentence;
        let num_labels = weights.classifier.as_ref().map(|c| c.out.weight.shape[0]);
        #[cfg(feature = "tokenizers")]
        let pad_id = tokenizer
            .as_ref()
            .map_or(config.pad_id(), |t| t.tokenizer.pad_id());
        #[cfg(not(feature = "tokenizers"))]
        let pad_id = config.pad_id();
        let has_pooler = weights.pooler.is_some();
        let labels = class_names(&config_bytes, num_labels.unwrap_or(0));
        let resolved = super::resolve(&options.device).await?;
        let ctx = resolved.ctx.clone();
        let info = TextInfo {
            model_id: files.name(),
            model_type: config.model_type.clone(),
            kind: match num_labels {
                None => TextKind::Embedding,
                Some(1) => TextKind::Reranker,
                Some(_) => TextKind::Classifier,
            },
            device: super::describe(&resolved),
            dtype: options.dtype.name().0,
            max_length,
            max_length_source: source,
            hidden_size: config.hidden_size,
            layers: config.num_hidden_layers,
            vocab_size: config.vocab_size,
            embedding_dim: head.output_dim(config.hidden_size),
            pooling: head.modes.iter().map(|m| m.name()).collect(),
            dense_modules: head.dense.len(),
            normalize: head.normalize,
            prompts: settings.prompts.clone(),
            default_prompt_name: settings.default_prompt_name.clone(),
            num_labels,
            labels,
            pad_id,
            has_pooler,
        };
        let runner = match ctx {
            Some(ctx) => Runner::Gpu {
                model: Encoder::with_dtype(&ctx, config.clone(), &weights, options.dtype)?,
                ctx,
            },
            None => {
                text::check_classifier_pooler(&weights)?;
                Runner::Cpu {
                    // Rounded once here for f16, not per forward.
                    model: match options.dtype {
                        crate::DType::F32 => weights,
                        dtype => weights.rounded(dtype),
                    },
                    dtype: options.dtype,
                    exec: resolved.exec,
                }
            }
        };
        Ok(Self {
            config,
            #[cfg(feature = "tokenizers")]
            tokenizer,
            runner,
            info,
        })
    }

    pub fn info(&self) -> &TextInfo {
        &self.info
    }

    pub fn config(&self) -> &TextConfig {
        &self.config
    }

    #[cfg(feature = "tokenizers")]
    /// The tokenizer; an error naming the missing file for a folder opened without one.
    pub fn tokenizer(&self) -> Result<&SentenceTokenizer> {
        self.tokenizer.as_ref().ok_or_else(|| Error::Io {
            path: format!(
                "{}/tokenizer.json (the model folder needs its tokenizer.json)",
                self.info.model_id
            ),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        })
    }

    /// The GPU context the model runs on (`None` on the CPU path).
    pub fn context(&self) -> Option<&Arc<crate::Context>> {
        match &self.runner {
            Runner::Gpu { ctx, .. } => Some(ctx),
            Runner::Cpu { .. } => None,
        }
    }

    #[cfg(feature = "tokenizers")]
    /// Texts tokenized as the folder prepares them (lowercasing, the prompt `prompt` or the
    /// folder's prompt `prompt_name`, else its default prompt), right-padded to the longest;
    /// without `truncate` a text over `max_length` tokens is [`Error::TooLong`].
    pub fn tokenize(
        &self,
        texts: &[&str],
        prompt: Option<&str>,
        prompt_name: Option<&str>,
        truncate: impl Into<Truncate>,
    ) -> Result<TextInput> {
        let input = self
            .tokenizer()?
            .encode_with(texts, prompt, prompt_name, truncate)?;
        input.validate(&self.config)?;
        Ok(input)
    }

    #[cfg(feature = "tokenizers")]
    /// (query, document) pairs in the tokenizer's pair template, truncated longest first.
    pub fn tokenize_pairs(
        &self,
        query: &str,
        docs: &[&str],
        truncate: impl Into<Truncate>,
    ) -> Result<TextInput> {
        let pairs: Vec<(&str, &str)> = docs.iter().map(|&d| (query, d)).collect();
        let input = self
            .tokenizer()?
            .tokenizer
            .encode_pairs_with(&pairs, truncate)?;
        input.validate(&self.config)?;
        Ok(input)
    }

    /// A padded batch as unpadded rows (what a batcher queues).
    pub fn rows(input: &TextInput) -> Vec<Row> {
        (0..input.batch)
            .map(|b| {
                let at = b * input.seq;
                let len = input.attention_mask[at..at + input.seq]
                    .iter()
                    .filter(|&&m| m != 0)
                    .count();
                Row {
                    ids: input.input_ids[at..at + len].to_vec(),
                    types: input.token_type_ids[at..at + len].to_vec(),
                }
            })
            .collect()
    }

    /// Rows padded once to the longest with the model's pad id (mask 0, type 0 on padding),
    /// checked against the model.
    pub fn batch(&self, rows: &[&Row], prompt_length: usize) -> Result<TextInput> {
        let seq = rows.iter().map(|r| r.ids.len()).max().unwrap_or(0);
        let n = rows.len().checked_mul(seq).ok_or_else(|| Error::Input {
            arg: "rows".into(),
            reason: format!("{} rows of {seq} tokens is too many", rows.len()),
        })?;
        let (mut ids, mut mask, mut types) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let pad = self.info.pad_id;
        for row in rows {
            let fill = seq - row.ids.len();
            ids.extend(
                row.ids
                    .iter()
                    .copied()
                    .chain(std::iter::repeat_n(pad, fill)),
            );
            types.extend(
                row.types
                    .iter()
                    .copied()
                    .chain(std::iter::repeat_n(0, fill)),
            );
            mask.extend(std::iter::repeat_n(1, row.ids.len()).chain(std::iter::repeat_n(0, fill)));
        }
        let mut input = TextInput::new(rows.len(), seq, ids, Some(mask), Some(types))?;
        input.prompt_length = prompt_length;
        input.validate(&self.config)?;
        Ok(input)
    }

    /// Runs the model on `input`, reading back what `want` asks for besides the sentence
    /// embedding, the pooler output and the logits.
    pub async fn forward(&self, input: &TextInput, want: Want) -> Result<TextOutput> {
        input.validate(&self.config)?;
        match &self.runner {
            Runner::Gpu { ctx, model } => model.forward_with(ctx, input, want).await,
            Runner::Cpu { model, dtype, exec } => {
                let (config, hidden) = (&self.config, want.hidden_states);
                match exec {
                    super::CpuExec::Twin => text::forward_rounded(
                        &crate::cpu::Twin,
                        config,
                        model,
                        input,
                        hidden,
                        *dtype,
                    ),
                    #[cfg(not(target_arch = "wasm32"))]
                    super::CpuExec::Fast => text::forward_rounded(
                        &crate::cpu::Fast,
                        config,
                        model,
                        input,
                        hidden,
                        *dtype,
                    ),
                }
            }
        }
    }

    /// [`Self::forward`], blocking (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn forward_blocking(&self, input: &TextInput, want: Want) -> Result<TextOutput> {
        pollster::block_on(self.forward(input, want))
    }

    #[cfg(feature = "tokenizers")]
    /// Texts per forward so a batch stays under [`limits::MAX_BATCH_TOKENS`]: the batch a
    /// caller streaming many texts through [`Self::encode`] should hand over at a time.
    pub fn texts_per_batch(&self) -> usize {
        (limits::MAX_BATCH_TOKENS / self.info.max_length.max(1)).clamp(1, 256)
    }

    #[cfg(feature = "tokenizers")]
    /// Sentence embeddings [N, D] of `texts` (truncated at `max_length`), in batches, with the
    /// prompt `prompt` or the folder's prompt `prompt_name` (else its default prompt).
    pub async fn encode(
        &self,
        texts: &[&str],
        prompt: Option<&str>,
        prompt_name: Option<&str>,
    ) -> Result<HostTensor> {
        let mut rows = Vec::new();
        for chunk in texts.chunks(self.texts_per_batch()) {
            let input = self.tokenize(chunk, prompt, prompt_name, true)?;
            let out = self.forward(&input, Want::default()).await?;
            rows.push(out.sentence_embedding);
        }
        concat_rows(rows, "texts")
    }

    #[cfg(feature = "tokenizers")]
    /// [`Self::encode`], blocking (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn encode_blocking(
        &self,
        texts: &[&str],
        prompt: Option<&str>,
        prompt_name: Option<&str>,
    ) -> Result<HostTensor> {
        pollster::block_on(self.encode(texts, prompt, prompt_name))
    }

    #[cfg(feature = "tokenizers")]
    /// A cross-encoder's logits [N, labels] for (query, document) pairs (truncated at
    /// `max_length`, longest first), in batches; an error for a model without a
    /// sequence-classification head. Scores as `CrossEncoder.predict` gives them:
    /// [`text::cross_encoder_score`] of a one-label logit.
    pub async fn encode_pairs(&self, query: &str, docs: &[&str]) -> Result<HostTensor> {
        if self.info.num_labels.is_none() {
            return Err(Error::Argument {
                op: "rerank",
                arg: "model",
                reason: format!(
                    "{}: not a cross-encoder (the checkpoint has no sequence-classification \
                     head, e.g. classifier.* weights)",
                    self.info.model_id
                ),
            });
        }
        let mut rows = Vec::new();
        for chunk in docs.chunks(self.texts_per_batch()) {
            let input = self.tokenize_pairs(query, chunk, true)?;
            let out = self.forward(&input, Want::default()).await?;
            rows.push(out.logits.ok_or_else(|| Error::Readback {
                what: "logits".into(),
                message: "the cross-encoder returned no logits".into(),
            })?);
        }
        concat_rows(rows, "documents")
    }

    #[cfg(feature = "tokenizers")]
    /// [`Self::encode_pairs`], blocking (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn encode_pairs_blocking(&self, query: &str, docs: &[&str]) -> Result<HostTensor> {
        pollster::block_on(self.encode_pairs(query, docs))
    }
}

/// The folder's `tokenizer.json`, truncating at `max_length`; `None` when absent and not
/// required.
#[cfg(feature = "tokenizers")]
fn open_tokenizer(
    files: &ModelFiles,
    options: &EncoderOptions,
    settings: &SentenceSettings,
    max_length: usize,
) -> Result<Option<SentenceTokenizer>> {
    match files.read("tokenizer.json")? {
        Some(json) => Ok(Some(SentenceTokenizer {
            tokenizer: TextTokenizer::from_bytes(&json, max_length)
                .map_err(|e| e.in_file(&files.describe("tokenizer.json")))?,
            settings: settings.clone(),
            max_length,
        })),
        None if options.require_tokenizer => Err(files.missing(
            "tokenizer.json",
            "the model folder needs its tokenizer.json",
        )),
        None => Ok(None),
    }
}

/// [N_i, D] blocks stacked into [sum N_i, D].
#[cfg(feature = "tokenizers")]
fn concat_rows(blocks: Vec<HostTensor>, what: &str) -> Result<HostTensor> {
    let Some(width) = blocks.first().map(|b| b.shape.get(1).copied().unwrap_or(0)) else {
        return Err(Error::Input {
            arg: what.into(),
            reason: "none given".into(),
        });
    };
    let rows: usize = blocks.iter().map(|b| b.shape[0]).sum();
    let mut data = Vec::with_capacity(rows * width);
    for b in blocks {
        data.extend(b.data);
    }
    HostTensor::new(&[rows, width], data)
}

impl std::fmt::Debug for TextEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextEncoder")
            .field("info", &self.info)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_length_is_decided_in_one_order() {
        use MaxLengthSource::*;
        assert_eq!(
            max_length(None, Some(128), Some(512), 514).unwrap(),
            (128, SentenceBertConfig)
        );
        assert_eq!(
            max_length(None, None, Some(384), 514).unwrap(),
            (384, TokenizerConfig)
        );
        assert_eq!(max_length(None, None, None, 512).unwrap(), (512, Positions));
        assert_eq!(
            max_length(None, None, Some(1 << 20), 512).unwrap(),
            (512, Positions)
        );
        assert_eq!(
            max_length(Some(64), Some(128), None, 512).unwrap(),
            (64, Caller)
        );
        assert_eq!(
            max_length(Some(4096), None, None, 512).unwrap(),
            (512, Caller)
        );
        assert!(max_length(Some(0), None, None, 512).is_err());
    }
}
