//! A BERT-family encoder's parameters under each family's checkpoint keys (see `family.rs`;
//! Q, K, V fused at load), uploaded once.

use super::{Family, SentenceHead, TextConfig};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::host::HostTensor;
use crate::kernels::{Activation, EmbeddingTables};
use crate::models::weights::Weights;
use crate::models::{LayerNorm, Linear, rounded_tree, upload_tree};
use crate::tensor::{DType, Tensor};

weight_tree! {
    /// `Embeddings` (tables of width `embedding_dim`, in the run's dtype), and ELECTRA's
    /// projection to the hidden size.
    #[derive(Debug, Clone)]
    pub struct Embeddings<T> {
        @Run pub word_embeddings: T,
        @Run pub position_embeddings: T,
        /// One zero row for DistilBERT, which has no token types.
        @Run pub token_type_embeddings: T,
        pub layer_norm: LayerNorm<T>,
        /// ELECTRA's `embeddings_project` (embedding_size -> hidden_size).
        pub project: Option<Linear<T>>,
    }
}

impl<T> Embeddings<T> {
    /// The tables as the fused embedding kernel (and its twin) take them.
    pub fn tables(&self) -> EmbeddingTables<'_, T> {
        EmbeddingTables {
            word: &self.word_embeddings,
            position: &self.position_embeddings,
            token_type: &self.token_type_embeddings,
            gamma: &self.layer_norm.weight,
            beta: &self.layer_norm.bias,
        }
    }
}

weight_tree! {
    /// `EncoderLayer`: `attention.self.{query,key,value}` (fused as `qkv`),
    /// `attention.output`, `intermediate`, `output`.
    #[derive(Debug, Clone)]
    pub struct EncoderLayer<T> {
        pub qkv: Linear<T>,
        pub attention_output: Linear<T>,
        pub attention_norm: LayerNorm<T>,
        pub intermediate: Linear<T>,
        pub output: Linear<T>,
        pub output_norm: LayerNorm<T>,
    }
}

weight_tree! {
    /// `BertModel`'s parameters, on the host (`T = HostTensor`) or the GPU (`T = Tensor`).
    #[derive(Debug, Clone)]
    pub struct TextWeights<T> {
        pub embeddings: Embeddings<T>,
        pub layers: Vec<EncoderLayer<T>>,
        /// `pooler.dense`, when the checkpoint has one.
        pub pooler: Option<Linear<T>>,
        /// How the sentence embedding is made (a sentence-transformers folder's modules;
        /// mean + L2 for a plain folder).
        pub sentence: SentenceHead<T>,
        /// The sequence-classification head of a `…ForSequenceClassification` checkpoint (a
        /// cross-encoder), when it has one.
        pub classifier: Option<ClassifierHead<T>>,
        /// MPNet's `encoder.relative_attention_bias.weight` [buckets, heads] (kept on the
        /// host: the per-length bias is computed from it for each forward).
        @keep pub relative_attention_bias: Option<HostTensor>,
        /// The final norm of a pre-norm encoder (ModernBERT's `final_norm`).
        pub final_norm: Option<LayerNorm<T>>,
    }
}

weight_tree! {
    /// A sequence-classification head on the first token: BERT's `classifier` on the pooler
    /// output; RoBERTa's and ELECTRA's `classifier.dense` (tanh / GELU) then `classifier.out_proj`;
    /// DistilBERT's `pre_classifier` (ReLU) then `classifier`; ModernBERT's `head.dense`
    /// (`classifier_activation`), `head.norm` then `classifier`, on the CLS state or the mean.
    #[derive(Debug, Clone)]
    pub struct ClassifierHead<T> {
        /// The dense layer on the first token's state (or the mean), with its activation
        /// (None for BERT).
        pub dense: Option<(Linear<T>, Activation)>,
        /// ModernBERT's `head.norm` after the dense layer's activation.
        pub norm: Option<LayerNorm<T>>,
        /// The dense layer reads the masked mean of the last hidden state instead of the
        /// first token (ModernBERT's `classifier_pooling: "mean"`).
        @keep pub mean_pooling: bool,
        /// [num_labels, C].
        pub out: Linear<T>,
    }
}

impl<T> ClassifierHead<T> {
    /// BERT's head reads the pooler output instead of the first token.
    pub fn from_pooler(&self) -> bool {
        self.dense.is_none()
    }
}

/// ModernBERT's encoder (transformers' `ModernBertModel`) in the shared layout: no biases
/// (zeros), LayerNorms without bias (zero beta), no position or token-type table (one zero
/// row each), layer 0 without `attn_norm` (a unit norm kept in its place and skipped by the
/// forward), `Wqkv` already fused, `Wi` [2I, C] for GeGLU, `final_norm`.
fn modernbert(config: &TextConfig, w: &mut Weights) -> Result<TextWeights<HostTensor>> {
    let (c, i) = (config.hidden_size, config.intermediate_size);
    let norm = |w: &mut Weights, key: &str| -> Result<LayerNorm<HostTensor>> {
        Ok(LayerNorm {
            weight: w.get(&format!("{key}.weight"), &[c])?,
            bias: HostTensor::zeros(&[c]),
        })
    };
    let linear =
        |w: &mut Weights, key: &str, out: usize, inp: usize| -> Result<Linear<HostTensor>> {
            Ok(Linear {
                weight: w.get(&format!("{key}.weight"), &[out, inp])?,
                bias: HostTensor::zeros(&[out]),
            })
        };
    let embeddings = Embeddings {
        word_embeddings: w.get("embeddings.tok_embeddings.weight", &[config.vocab_size, c])?,
        position_embeddings: HostTensor::zeros(&[1, c]),
        token_type_embeddings: HostTensor::zeros(&[1, c]),
        layer_norm: norm(w, "embeddings.norm")?,
        project: None,
    };
    let mut layers = Vec::with_capacity(config.num_hidden_layers);
    for l in 0..config.num_hidden_layers {
        let p = format!("layers.{l}");
        let attention_norm = if l == 0 {
            LayerNorm {
                weight: HostTensor::new(&[c], vec![1.0; c])?,
                bias: HostTensor::zeros(&[c]),
            }
        } else {
            norm(w, &format!("{p}.attn_norm"))?
        };
        layers.push(EncoderLayer {
            qkv: linear(w, &format!("{p}.attn.Wqkv"), 3 * c, c)?,
            attention_output: linear(w, &format!("{p}.attn.Wo"), c, c)?,
            attention_norm,
            intermediate: linear(w, &format!("{p}.mlp.Wi"), 2 * i, c)?,
            output: linear(w, &format!("{p}.mlp.Wo"), c, i)?,
            output_norm: norm(w, &format!("{p}.mlp_norm"))?,
        });
    }
    let final_norm = Some(norm(w, "final_norm")?);
    let classifier = modernbert_classifier(config, w)?;
    let heads = Family::ModernBert.keys().heads;
    let unused = w.unused(|k| heads.iter().any(|h| k.starts_with(h)));
    if let Some(key) = unused.first() {
        return Err(Error::Weights {
            key: key.clone(),
            reason: format!(
                "not part of a modernbert model with this config ({} unexpected tensors)",
                unused.len()
            ),
        });
    }
    Ok(TextWeights {
        embeddings,
        layers,
        pooler: None,
        sentence: SentenceHead::default(),
        classifier,
        relative_attention_bias: None,
        final_norm,
    })
}

/// ModernBERT's sequence-classification head when the checkpoint has one: `head.dense`
/// (bias only with `classifier_bias`), `classifier_activation`, `head.norm` (bias only with
/// `norm_bias`), `classifier`.
fn modernbert_classifier(
    config: &TextConfig,
    w: &mut Weights,
) -> Result<Option<ClassifierHead<HostTensor>>> {
    let c = config.hidden_size;
    let Some(labels) = num_labels(w, "classifier.weight", c)? else {
        return Ok(None);
    };
    let dense = Linear {
        weight: w.get("head.dense.weight", &[c, c])?,
        bias: match config.modern.classifier_bias.unwrap_or(false) {
            true => w.get("head.dense.bias", &[c])?,
            false => HostTensor::zeros(&[c]),
        },
    };
    let norm = LayerNorm {
        weight: w.get("head.norm.weight", &[c])?,
        bias: match config.modern.norm_bias.unwrap_or(false) {
            true => w.get("head.norm.bias", &[c])?,
            false => HostTensor::zeros(&[c]),
        },
    };
    Ok(Some(ClassifierHead {
        dense: Some((dense, config.classifier_activation()?)),
        norm: Some(norm),
        mean_pooling: config.classifier_mean_pooling()?,
        out: Linear::load(w, "classifier", labels, c)?,
    }))
}

/// Labels of a classifier from its output weight `key` ([num_labels, C]), if present.
fn num_labels(w: &Weights, key: &str, c: usize) -> Result<Option<usize>> {
    let Some(shape) = w.shape(key) else {
        return Ok(None);
    };
    match shape[..] {
        [labels, inp] if inp == c && (1..=1 << 16).contains(&labels) => Ok(Some(labels)),
        _ => Err(Error::Weights {
            key: key.into(),
            reason: format!("shape {shape:?} is not [num_labels (1..=65536), {c}]"),
        }),
    }
}

/// BERT's classifier reads the pooler output: weights with such a head and no pooler are
/// refused (at load, and by both forwards for weights built by hand), never run on a pooler
/// output nobody computed.
pub fn check_classifier_pooler<T>(w: &TextWeights<T>) -> Result<()> {
    match &w.classifier {
        Some(head) if head.from_pooler() && w.pooler.is_none() => Err(Error::Weights {
            key: "pooler.dense.weight".into(),
            reason: "missing: BERT's classifier reads the pooler output".into(),
        }),
        _ => Ok(()),
    }
}

/// The classifier of `family` if the checkpoint holds it; `labels` from its output weight.
fn load_classifier(
    w: &mut Weights,
    family: Family,
    c: usize,
    has_pooler: bool,
) -> Result<Option<ClassifierHead<HostTensor>>> {
    let (dense, out) = match family {
        Family::Bert => (None, "classifier"),
        Family::Roberta => (
            Some(("classifier.dense", Activation::Tanh)),
            "classifier.out_proj",
        ),
        Family::Electra => (
            Some(("classifier.dense", Activation::Gelu)),
            "classifier.out_proj",
        ),
        Family::DistilBert => (Some(("pre_classifier", Activation::Relu)), "classifier"),
        // Loaded with its encoder (`modernbert_classifier`).
        Family::ModernBert => return Ok(None),
        Family::Mpnet => (
            Some(("classifier.dense", Activation::Tanh)),
            "classifier.out_proj",
        ),
    };
    let Some(labels) = num_labels(w, &format!("{out}.weight"), c)? else {
        return Ok(None);
    };
    if dense.is_none() && !has_pooler {
        return Err(Error::Weights {
            key: "pooler.dense.weight".into(),
            reason: "missing: BERT's classifier reads the pooler output".into(),
        });
    }
    Ok(Some(ClassifierHead {
        dense: dense
            .map(|(key, act)| Ok::<_, Error>((Linear::load(w, key, c, c)?, act)))
            .transpose()?,
        norm: None,
        mean_pooling: false,
        out: Linear::load(w, out, labels, c)?,
    }))
}

impl TextWeights<HostTensor> {
    /// Loads and checks every tensor from safetensors bytes (keys with or without the
    /// family's task prefix such as `bert.` or `roberta.`; f32, f16 or bf16). Unknown extra
    /// tensors are an error unless they belong to a task head (`cls.*`, `classifier.*`, ...)
    /// or are a `position_ids` buffer.
    pub fn from_safetensors(config: &TextConfig, bytes: &[u8]) -> Result<Self> {
        Self::from_weights(config, Weights::from_bytes(bytes)?)
    }

    /// The family's tree read from any source of weights: a checkpoint, or seeded random
    /// weights ([`Weights::random`], the bench's models). This is the one description of
    /// which tensors a family has, under which keys and shapes; uploading and f16 rounding
    /// walk the result (the walk `weight_tree!` derives from the structs above).
    pub fn from_weights(config: &TextConfig, w: Weights<'_>) -> Result<Self> {
        let family = config.family();
        let keys = family.keys();
        let mut w = w.with_fallback_prefix(keys.prefix);
        if family == Family::ModernBert {
            return modernbert(config, &mut w);
        }
        let (c, i, e) = (
            config.hidden_size,
            config.intermediate_size,
            config.embedding_dim(),
        );
        let linear = Linear::load;
        let position = [config.max_position_embeddings, e];
        let position_embeddings = if config.sinusoidal_pos_embds && !w.contains(keys.position) {
            sinusoidal_table(&position)?
        } else {
            w.get(keys.position, &position)?
        };
        let token_type_embeddings = match keys.token_type {
            Some(key) => w.get(key, &[config.type_vocab_size, e])?,
            None => HostTensor::zeros(&[1, e]),
        };
        let embeddings = Embeddings {
            word_embeddings: w.get(keys.word, &[config.vocab_size, e])?,
            position_embeddings,
            token_type_embeddings,
            layer_norm: LayerNorm::load(&mut w, keys.embedding_norm, e)?,
            project: match keys.project {
                Some(key) if family == Family::Electra && e != c => {
                    Some(linear(&mut w, key, c, e)?)
                }
                _ => None,
            },
        };
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for l in 0..config.num_hidden_layers {
            let p = format!("{}.{l}", keys.layers);
            let key = |name: &str| format!("{p}.{name}");
            let q = linear(&mut w, &key(keys.query), c, c)?;
            let k = linear(&mut w, &key(keys.key), c, c)?;
            let v = linear(&mut w, &key(keys.value), c, c)?;
            let qkv = Linear {
                weight: concat_rows(&[&q.weight, &k.weight, &v.weight], &[3 * c, c])?,
                bias: concat_rows(&[&q.bias, &k.bias, &v.bias], &[3 * c])?,
            };
            layers.push(EncoderLayer {
                qkv,
                attention_output: linear(&mut w, &key(keys.attention_output), c, c)?,
                attention_norm: LayerNorm::load(&mut w, &key(keys.attention_norm), c)?,
                intermediate: linear(&mut w, &key(keys.intermediate), i, c)?,
                output: linear(&mut w, &key(keys.output), c, i)?,
                output_norm: LayerNorm::load(&mut w, &key(keys.output_norm), c)?,
            });
        }
        let pooler = if w.contains("pooler.dense.weight") {
            Some(linear(&mut w, "pooler.dense", c, c)?)
        } else {
            None
        };
        let classifier = load_classifier(&mut w, family, c, pooler.is_some())?;
        let relative_attention_bias = match family {
            Family::Mpnet => Some(w.get(
                "encoder.relative_attention_bias.weight",
                &[config.relative_buckets(), config.num_attention_heads],
            )?),
            _ => None,
        };
        let unused = w
            .unused(|k| k.ends_with("position_ids") || keys.heads.iter().any(|h| k.starts_with(h)));
        if let Some(key) = unused.first() {
            return Err(Error::Weights {
                key: key.clone(),
                reason: format!(
                    "not part of a {} model with this config ({} unexpected tensors; more layers \
                     than num_hidden_layers = {}?)",
                    config.model_type,
                    unused.len(),
                    config.num_hidden_layers
                ),
            });
        }
        Ok(Self {
            embeddings,
            layers,
            pooler,
            sentence: SentenceHead::default(),
            classifier,
            relative_attention_bias,
            final_norm: None,
        })
    }

    /// The same weights in GPU buffers: matmul weights and embedding tables stored as `dtype`
    /// (f32, or f16 converted once here), biases, LayerNorm parameters and the sentence
    /// head's Dense modules as f32.
    pub fn upload(&self, ctx: &Context, dtype: DType) -> Result<TextWeights<Tensor>> {
        upload_tree(self, ctx, dtype)
    }

    /// The weights as a `dtype` run holds them (matmul weights and embedding tables rounded
    /// to f16 for F16; biases and norms unchanged): the CPU twin's side of an f16 run.
    pub fn rounded(&self, dtype: DType) -> Self {
        rounded_tree(self, dtype)
    }
}

/// The original Transformer's fixed positions, as DistilBERT's
/// `create_sinusoidal_embeddings` builds them: `[pos, 2j] = sin(pos / 10000^(2j/dim))`,
/// `[pos, 2j+1] = cos(pos / 10000^(2j/dim))`.
fn sinusoidal_table(shape: &[usize; 2]) -> Result<HostTensor> {
    let [positions, dim] = *shape;
    let data = (0..positions)
        .flat_map(|pos| {
            (0..dim).map(move |j| {
                let angle = pos as f64 / 10000f64.powf((2 * (j / 2)) as f64 / dim as f64);
                (if j % 2 == 0 { angle.sin() } else { angle.cos() }) as f32
            })
        })
        .collect();
    HostTensor::new(shape, data)
}

fn concat_rows(parts: &[&HostTensor], shape: &[usize]) -> Result<HostTensor> {
    HostTensor::new(
        shape,
        parts.iter().flat_map(|p| p.data.iter().copied()).collect(),
    )
}

/// Reads `config.json` and `model.safetensors` from a model folder.
#[cfg(not(target_arch = "wasm32"))]
pub fn load_dir(dir: &std::path::Path) -> Result<(TextConfig, TextWeights<HostTensor>)> {
    let config = load_config(dir)?;
    let weights = load_weights(dir, &config)?;
    Ok((config, weights))
}

/// Reads and checks a model folder's `config.json`; errors name the file.
#[cfg(not(target_arch = "wasm32"))]
pub fn load_config(dir: &std::path::Path) -> Result<TextConfig> {
    let path = crate::io::in_model(dir, "config.json")?;
    let json = crate::io::read_bounded(&path, crate::limits::MAX_CONFIG_BYTES)?;
    TextConfig::from_json(&String::from_utf8_lossy(&json)).map_err(|e| e.in_file(&path))
}

/// Reads a model folder's `model.safetensors` for `config`, and its sentence-transformers
/// modules when it has them; errors name the file.
#[cfg(not(target_arch = "wasm32"))]
pub fn load_weights(dir: &std::path::Path, config: &TextConfig) -> Result<TextWeights<HostTensor>> {
    let (sentence, _) = super::load_sentence_dir(dir, config.hidden_size)?;
    let path = crate::io::in_model(dir, "model.safetensors")?;
    let mut weights = TextWeights::from_safetensors(config, &crate::io::read_safetensors(&path)?)
        .map_err(|e| e.in_file(&path))?;
    weights.sentence = sentence;
    Ok(weights)
}
