//! Text in: the checkpoint's `tokenizer.json` through Hugging Face's `tokenizers` crate
//! (WordPiece with BERT's normaliser and pre-tokeniser), batched, truncated and padded.

use std::sync::OnceLock;

use tokenizers::{
    EncodeInput, PaddingDirection, PaddingParams, PaddingStrategy, Tokenizer, TruncationDirection,
    TruncationParams,
};

use crate::error::{Error, Result};
use crate::models::text::TextInput;

/// One token of a text: its id, the text it covers (a special token: its own text), whether it
/// is a special token, and its byte offsets in the text (none for a special token), as
/// text-embeddings-inference's `/tokenize` reports them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Token {
    pub id: u32,
    pub text: String,
    pub special: bool,
    pub start: Option<usize>,
    pub stop: Option<usize>,
}

/// What happens to a text longer than the model takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Truncate {
    /// Refused: [`Error::TooLong`].
    #[default]
    No,
    /// Its end is cut (what sentence-transformers does).
    Right,
    /// Its start is cut.
    Left,
}

impl From<bool> for Truncate {
    /// `true`: cut the end; `false`: refuse.
    fn from(truncate: bool) -> Self {
        if truncate {
            Truncate::Right
        } else {
            Truncate::No
        }
    }
}

thread_local! {
    /// Set while [`contained`] runs tokenizer code on this thread: its panics are reported as
    /// errors, so the panic hook stays quiet about them.
    static QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Wraps the panic hook in place at first use (once) so that it says nothing about panics
/// [`contained`] catches, on the thread that catches them; every other panic is reported by the
/// hook as before.
fn quiet_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(std::cell::Cell::get) {
                previous(info);
            }
        }));
    });
}

/// Runs `f`, turning a panic inside the tokenizers crate (a garbage `Precompiled` normaliser,
/// a template naming a missing special token) into [`Error::Tokenizer`] saying `during` what.
fn contained<T>(during: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    quiet_hook();
    let was = QUIET.with(|q| q.replace(true));
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    QUIET.with(|q| q.set(was));
    caught.unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".into());
        Err(Error::Tokenizer(format!(
            "the tokenizer failed {during} (a malformed tokenizer.json?): {message}"
        )))
    })
}

/// A tokenizer that produces [`TextInput`] batches.
pub struct TextTokenizer {
    inner: Tokenizer,
    /// `inner` truncating from the left, made on first use.
    left: OnceLock<std::result::Result<Tokenizer, String>>,
    /// `inner` without truncation or padding (`/tokenize`), made on first use.
    plain: OnceLock<Tokenizer>,
}

impl TextTokenizer {
    /// Loads `tokenizer.json` bytes; sequences are truncated to `max_length` tokens (special
    /// tokens included) and the batch is right-padded to its longest sequence.
    pub fn from_bytes(json: &[u8], max_length: usize) -> Result<Self> {
        let mut inner = contained("loading", || {
            Tokenizer::from_bytes(json).map_err(|e| Error::Tokenizer(e.to_string()))
        })?;
        // A template or normaliser that only fails when used fails here, at load, once.
        contained("encoding a test text", || {
            inner
                .encode("a", true)
                .map(drop)
                .map_err(|e| Error::Tokenizer(e.to_string()))
        })?;
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
        Ok(Self {
            inner,
            left: OnceLock::new(),
            plain: OnceLock::new(),
        })
    }

    /// The tokenizer that truncates as asked.
    fn truncating(&self, truncate: Truncate) -> Result<&Tokenizer> {
        if truncate != Truncate::Left {
            return Ok(&self.inner);
        }
        self.left
            .get_or_init(|| {
                let mut left = self.inner.clone();
                let params = TruncationParams {
                    direction: TruncationDirection::Left,
                    max_length: self.max_length(),
                    ..Default::default()
                };
                left.with_truncation(Some(params))
                    .map_err(|e| e.to_string())?;
                Ok(left)
            })
            .as_ref()
            .map_err(|e| Error::Tokenizer(e.clone()))
    }

    /// Loads `tokenizer.json` from a model folder; a missing file is a clear error.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn from_dir(dir: &std::path::Path, max_length: usize) -> Result<Self> {
        let path = crate::io::in_model(dir, "tokenizer.json")?;
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

    /// The id batches are padded with.
    pub fn pad_id(&self) -> u32 {
        self.inner.get_padding().map_or(0, |p| p.pad_id)
    }

    /// The truncation length.
    pub fn max_length(&self) -> usize {
        self.inner.get_truncation().map_or(0, |t| t.max_length)
    }

    /// Tokenizes single texts.
    pub fn encode(&self, texts: &[&str]) -> Result<TextInput> {
        self.encode_with(texts, true)
    }

    /// Tokenizes single texts; without `truncate`, a text longer than `max_length` tokens is
    /// [`Error::TooLong`] instead of being cut.
    pub fn encode_with(&self, texts: &[&str], truncate: impl Into<Truncate>) -> Result<TextInput> {
        let inputs = texts.iter().map(|&t| EncodeInput::from(t)).collect();
        self.encode_inputs(inputs, truncate)
    }

    /// Tokens of `prompt` as it starts a text: its encoding with special tokens, less a
    /// trailing special token (sentence-transformers' `_get_prompt_length`).
    pub fn prompt_length(&self, prompt: &str) -> Result<usize> {
        let enc = contained("encoding", || {
            self.inner
                .encode(prompt, true)
                .map_err(|e| Error::Tokenizer(e.to_string()))
        })?;
        let trailing_special = enc.get_special_tokens_mask().last() == Some(&1);
        Ok(enc.len() - usize::from(trailing_special && !enc.is_empty()))
    }

    /// Every token of one text (none cut), with or without the special tokens, as `/tokenize`
    /// reports them: a token's text is the part of `text` it covers.
    pub fn tokens(&self, text: &str, add_special_tokens: bool) -> Result<Vec<Token>> {
        let plain = self.plain.get_or_init(|| {
            let mut plain = self.inner.clone();
            plain.with_padding(None);
            // Removing truncation cannot fail (only a stride over max_length can).
            plain.with_truncation(None).ok();
            plain
        });
        let enc = contained("encoding", || {
            plain
                .encode(text, add_special_tokens)
                .map_err(|e| Error::Tokenizer(e.to_string()))
        })?;
        Ok((0..enc.len())
            .map(|i| {
                let (start, stop) = enc.get_offsets()[i];
                match enc.get_special_tokens_mask()[i] == 1 {
                    true => Token {
                        id: enc.get_ids()[i],
                        text: enc.get_tokens()[i].clone(),
                        special: true,
                        start: None,
                        stop: None,
                    },
                    false => Token {
                        id: enc.get_ids()[i],
                        text: String::from_utf8_lossy(
                            text.as_bytes().get(start..stop).unwrap_or_default(),
                        )
                        .into_owned(),
                        special: false,
                        start: Some(start),
                        stop: Some(stop),
                    },
                }
            })
            .collect())
    }

    /// The text of token ids, without the special tokens if asked.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        contained("decoding", || {
            self.inner
                .decode(ids, skip_special_tokens)
                .map_err(|e| Error::Tokenizer(e.to_string()))
        })
    }

    /// Tokenizes sentence pairs: `[CLS] a [SEP] b [SEP]`, segment 1 for `b [SEP]`.
    pub fn encode_pairs(&self, pairs: &[(&str, &str)]) -> Result<TextInput> {
        self.encode_pairs_with(pairs, true)
    }

    /// Tokenizes pairs; without `truncate`, a pair longer than `max_length` tokens is
    /// [`Error::TooLong`].
    pub fn encode_pairs_with(
        &self,
        pairs: &[(&str, &str)],
        truncate: impl Into<Truncate>,
    ) -> Result<TextInput> {
        let inputs = pairs
            .iter()
            .map(|&(a, b)| EncodeInput::from((a, b)))
            .collect();
        self.encode_inputs(inputs, truncate)
    }

    fn encode_inputs(
        &self,
        inputs: Vec<EncodeInput<'_>>,
        truncate: impl Into<Truncate>,
    ) -> Result<TextInput> {
        let truncate = truncate.into();
        if inputs.is_empty() {
            return Err(Error::Input {
                arg: "texts".into(),
                reason: "no text given".into(),
            });
        }
        let tokenizer = self.truncating(truncate)?;
        let encodings = contained("encoding", || {
            tokenizer
                .encode_batch(inputs, true)
                .map_err(|e| Error::Tokenizer(e.to_string()))
        })?;
        // Truncation leaves what it cut in the overflowing encodings.
        if truncate == Truncate::No
            && let Some(index) = encodings
                .iter()
                .position(|e| !e.get_overflowing().is_empty())
        {
            let max_length = self.inner.get_truncation().map_or(0, |t| t.max_length);
            return Err(Error::TooLong { index, max_length });
        }
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
        TextInput::new(batch, seq, ids, Some(mask), Some(types))
    }
}

/// Texts as a sentence-transformers folder prepares them: truncated at the length
/// [`crate::encoder::TextEncoder`] decided, `do_lower_case`, and a prompt prepended, with the
/// prompt's length recorded for pooling.
pub struct SentenceTokenizer {
    pub tokenizer: TextTokenizer,
    pub settings: crate::models::text::SentenceSettings,
    /// The truncation length in use.
    pub max_length: usize,
}

impl SentenceTokenizer {
    /// Tokenizes `texts` with `prompt` (its text) or the folder's prompt `prompt_name` (or its
    /// default prompt) prepended.
    pub fn encode(
        &self,
        texts: &[&str],
        prompt: Option<&str>,
        prompt_name: Option<&str>,
    ) -> Result<TextInput> {
        self.encode_with(texts, prompt, prompt_name, true)
    }

    /// [`Self::encode`]; without `truncate`, a text (with its prompt) longer than
    /// `max_length` tokens is [`Error::TooLong`] instead of being cut.
    pub fn encode_with(
        &self,
        texts: &[&str],
        prompt: Option<&str>,
        prompt_name: Option<&str>,
        truncate: impl Into<Truncate>,
    ) -> Result<TextInput> {
        let prompt = match prompt {
            Some(p) => Some(p),
            None => self.settings.prompt(prompt_name)?,
        };
        let full: Vec<String> = texts
            .iter()
            .map(|t| {
                let t = format!("{}{t}", prompt.unwrap_or_default());
                if self.settings.do_lower_case {
                    t.to_lowercase()
                } else {
                    t
                }
            })
            .collect();
        let full: Vec<&str> = full.iter().map(String::as_str).collect();
        let mut input = self.tokenizer.encode_with(&full, truncate)?;
        if let Some(p) = prompt {
            input.prompt_length = self.tokenizer.prompt_length(p)?;
        }
        Ok(input)
    }
}
