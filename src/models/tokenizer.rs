//! Text in: the checkpoint's `tokenizer.json` through Hugging Face's `tokenizers` crate
//! (WordPiece with BERT's normaliser and pre-tokeniser), batched, truncated and padded.

use tokenizers::{
    EncodeInput, PaddingDirection, PaddingParams, PaddingStrategy, Tokenizer, TruncationParams,
};

use crate::error::{Error, Result};
use crate::models::bert::BertInput;

/// sentence-transformers' `max_seq_length` for all-MiniLM-L6-v2 and most BERT-family embedders.
pub const DEFAULT_MAX_LENGTH: usize = 256;

/// A tokenizer that produces [`BertInput`] batches.
pub struct TextTokenizer {
    inner: Tokenizer,
}

impl TextTokenizer {
    /// Loads `tokenizer.json` bytes; sequences are truncated to `max_length` tokens (special
    /// tokens included) and the batch is right-padded to its longest sequence.
    pub fn from_bytes(json: &[u8], max_length: usize) -> Result<Self> {
        let mut inner = Tokenizer::from_bytes(json).map_err(|e| Error::Tokenizer(e.to_string()))?;
        if max_length == 0 {
            return Err(Error::Argument {
                op: "tokenizer",
                arg: "max_length",
                reason: "must be at least 1".into(),
            });
        }
        let (pad_id, pad_token) = match inner.get_padding() {
            Some(p) => (p.pad_id, p.pad_token.clone()),
            None => {
                let id = inner.token_to_id("[PAD]").ok_or_else(|| {
                    Error::Tokenizer(
                        "no padding configured and no [PAD] token in the vocabulary".into(),
                    )
                })?;
                (id, "[PAD]".to_string())
            }
        };
        inner
            .with_truncation(Some(TruncationParams {
                max_length,
                ..Default::default()
            }))
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        inner.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            direction: PaddingDirection::Right,
            pad_id,
            pad_token,
            pad_type_id: 0,
            pad_to_multiple_of: None,
        }));
        Ok(Self { inner })
    }

    /// Loads `tokenizer.json` from a model folder; a missing file is a clear error.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn from_dir(dir: &std::path::Path, max_length: usize) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        let json = match crate::io::read_bounded(&path, crate::limits::MAX_TOKENIZER_BYTES) {
            Err(Error::Io { source, .. }) => Err(Error::Io {
                path: format!(
                    "{} (the model folder needs its tokenizer.json)",
                    path.display()
                ),
                source,
            }),
            other => other,
        }?;
        Self::from_bytes(&json, max_length).map_err(|e| e.in_file(&path))
    }

    /// Tokenizes single texts.
    pub fn encode(&self, texts: &[&str]) -> Result<BertInput> {
        self.encode_inputs(texts.iter().map(|&t| EncodeInput::from(t)).collect())
    }

    /// Tokenizes sentence pairs: `[CLS] a [SEP] b [SEP]`, segment 1 for `b [SEP]`.
    pub fn encode_pairs(&self, pairs: &[(&str, &str)]) -> Result<BertInput> {
        self.encode_inputs(
            pairs
                .iter()
                .map(|&(a, b)| EncodeInput::from((a, b)))
                .collect(),
        )
    }

    fn encode_inputs(&self, inputs: Vec<EncodeInput<'_>>) -> Result<BertInput> {
        if inputs.is_empty() {
            return Err(Error::Input {
                arg: "texts".into(),
                reason: "no text given".into(),
            });
        }
        let encodings = self
            .inner
            .encode_batch(inputs, true)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        let batch = encodings.len();
        let seq = encodings.iter().map(|e| e.len()).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(batch * seq);
        let mut mask = Vec::with_capacity(batch * seq);
        let mut types = Vec::with_capacity(batch * seq);
        for e in &encodings {
            ids.extend_from_slice(e.get_ids());
            mask.extend_from_slice(e.get_attention_mask());
            types.extend_from_slice(e.get_type_ids());
        }
        BertInput::new(batch, seq, ids, Some(mask), Some(types))
    }
}
