//! sentence-transformers folders as `SentenceTransformer.save` writes them: `modules.json`
//! (Transformer, Pooling, Dense, Normalize), `1_Pooling/config.json` (the `pooling_mode` of
//! sentence-transformers 5+ or the legacy `pooling_mode_*` flags), `2_Dense/` (config and
//! `model.safetensors`), `sentence_bert_config.json` (`max_seq_length`, `do_lower_case`) and
//! prompts from `config_sentence_transformers.json`. A plain Hugging Face folder gets
//! [`SentenceHead::default`]: mean pooling then L2 normalisation.
//!
//! Upstream: sentence-transformers v5 `sentence_transformer/modules/pooling.py`,
//! `models/Dense.py`, `SentenceTransformer.py` (`prompts`, `default_prompt_name`).

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::context::Context;
use crate::error::{Error, Result};
use crate::host::HostTensor;
use crate::kernels::{Activation, PoolMode};
use crate::limits;
use crate::models::Linear;
use crate::models::weights::Weights;
use crate::tensor::Tensor;

weight_tree! {
    /// A `Dense` module: `act(x·Wᵀ + b)`, kept in f32 (the head is small and runs on f32
    /// pooled values).
    #[derive(Debug, Clone)]
    pub struct Dense<T> {
        @in_f32 pub linear: Linear<T>,
        @keep pub act: Activation,
    }
}

weight_tree! {
    /// What turns token states into the sentence embedding: pooling modes (concatenated in
    /// order), Dense modules, Normalize.
    #[derive(Debug, Clone)]
    pub struct SentenceHead<T> {
        @keep pub modes: Vec<PoolMode>,
        /// false: the prompt's tokens are left out of pooling (`include_prompt`).
        @keep pub include_prompt: bool,
        pub dense: Vec<Dense<T>>,
        @keep pub normalize: bool,
    }
}

impl<T> Default for SentenceHead<T> {
    /// A plain Hugging Face folder: mean over real tokens, then L2 normalisation.
    fn default() -> Self {
        Self {
            modes: vec![PoolMode::Mean],
            include_prompt: true,
            dense: Vec::new(),
            normalize: true,
        }
    }
}

impl<T> SentenceHead<T> {
    /// Width of the pooled vector for hidden size `c` (one block of `c` per mode).
    pub fn pooled_dim(&self, c: usize) -> usize {
        self.modes.len() * c
    }
}

impl SentenceHead<HostTensor> {
    /// Width of the sentence embedding for hidden size `c`.
    pub fn output_dim(&self, c: usize) -> usize {
        self.dense
            .last()
            .map_or(self.pooled_dim(c), |d| d.linear.weight.shape[0])
    }

    /// The Dense weights in GPU buffers (f32: the head is small and runs on f32 pooled values).
    pub fn upload(&self, ctx: &Context) -> Result<SentenceHead<Tensor>> {
        crate::models::upload_tree(self, ctx, crate::tensor::DType::F32)
    }
}

/// What a sentence-transformers folder says about its input side.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SentenceSettings {
    /// A sentence-transformers folder's `max_seq_length`: sentence_bert_config.json's, or the
    /// tokenizer's `model_max_length` in a folder saved by sentence-transformers 5+ (which
    /// keeps it there); `None` for a plain Hugging Face folder
    /// ([`crate::encoder::TextEncoder`] decides what applies then).
    pub max_seq_length: Option<usize>,
    /// Lowercase texts before tokenizing.
    pub do_lower_case: bool,
    /// Named prompts prepended to the text (`--prompt-name query`).
    pub prompts: BTreeMap<String, String>,
    pub default_prompt_name: Option<String>,
}

impl SentenceSettings {
    /// The prompt to prepend: `name`'s, else the default prompt's, else none. An unknown name
    /// is an error listing the folder's prompts.
    pub fn prompt(&self, name: Option<&str>) -> Result<Option<&str>> {
        let Some(name) = name.or(self.default_prompt_name.as_deref()) else {
            return Ok(None);
        };
        match self.prompts.get(name) {
            Some(p) => Ok(Some(p.as_str())),
            None => Err(Error::Argument {
                op: "embed",
                arg: "prompt_name",
                reason: format!(
                    "{name:?} is not a prompt of this model (config_sentence_transformers.json \
                     has: {})",
                    self.prompts.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            }),
        }
    }
}

#[derive(Deserialize)]
struct Module {
    idx: usize,
    path: String,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize)]
struct PoolingConfig {
    #[serde(alias = "word_embedding_dimension")]
    embedding_dimension: Option<usize>,
    pooling_mode: Option<serde_json::Value>,
    #[serde(default = "yes")]
    include_prompt: bool,
    #[serde(flatten)]
    legacy: BTreeMap<String, serde_json::Value>,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
struct DenseConfig {
    in_features: usize,
    out_features: usize,
    #[serde(default = "yes")]
    bias: bool,
    #[serde(default)]
    activation_function: Option<String>,
}

#[derive(Deserialize, Default)]
struct BertSentenceConfig {
    max_seq_length: Option<usize>,
    #[serde(default)]
    do_lower_case: bool,
}

#[derive(Deserialize, Default)]
struct StConfig {
    #[serde(default)]
    prompts: BTreeMap<String, String>,
    default_prompt_name: Option<String>,
}

/// A folder's files by relative path (`None` when absent): the native loader reads the disk,
/// the web demo a map of picked files.
pub type ReadFile<'a> = &'a dyn Fn(&str) -> Result<Option<Vec<u8>>>;

fn json<T: for<'de> Deserialize<'de>>(read: ReadFile<'_>, path: &str) -> Result<Option<T>> {
    match read(path)? {
        None => Ok(None),
        Some(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::Config(format!("{path}: {e}"))),
    }
}

/// The sentence head and settings of a model folder with hidden size `hidden`. Without
/// `modules.json`: the default head (mean + L2) and no settings.
pub fn load_sentence(
    read: ReadFile<'_>,
    hidden: usize,
) -> Result<(SentenceHead<HostTensor>, SentenceSettings)> {
    let Some(mut modules) = json::<Vec<Module>>(read, "modules.json")? else {
        return Ok((SentenceHead::default(), SentenceSettings::default()));
    };
    modules.sort_by_key(|m| m.idx);
    let mut head = SentenceHead {
        modes: Vec::new(),
        include_prompt: true,
        dense: Vec::new(),
        normalize: false,
    };
    let mut width = hidden;
    for (i, m) in modules.iter().enumerate() {
        let kind = m.kind.rsplit('.').next().unwrap_or("");
        let bad = |reason: String| Err(Error::Config(format!("modules.json: {reason}")));
        match kind {
            "Transformer" if i == 0 && m.path.is_empty() => {}
            "Transformer" => {
                return bad("the Transformer must be the first module, at the folder root".into());
            }
            _ if i == 0 => {
                return bad(format!(
                    "the first module is {:?}, not a Transformer",
                    m.kind
                ));
            }
            "Pooling" if head.modes.is_empty() => {
                let path = format!("{}/config.json", m.path);
                let config: PoolingConfig = json(read, &path)?
                    .ok_or_else(|| Error::Config(format!("{path} is missing")))?;
                head.modes = pooling_modes(&config, &path)?;
                head.include_prompt = config.include_prompt;
                if let Some(d) = config.embedding_dimension
                    && d != hidden
                {
                    return Err(Error::Config(format!(
                        "{path}: embedding_dimension {d} is not the model's hidden_size {hidden}"
                    )));
                }
                width = head.pooled_dim(hidden);
            }
            "Dense" if !head.modes.is_empty() && !head.normalize => {
                let dense = load_dense(read, &m.path, width)?;
                width = dense.linear.weight.shape[0];
                head.dense.push(dense);
            }
            "Normalize" if !head.modes.is_empty() => head.normalize = true,
            _ => {
                return bad(format!(
                    "module {:?} at {:?} is not supported here (Transformer, then Pooling, \
                     Dense modules and Normalize, in that order)",
                    m.kind, m.path
                ));
            }
        }
    }
    if head.modes.is_empty() {
        return Err(Error::Config("modules.json: no Pooling module".into()));
    }
    let bert: Option<BertSentenceConfig> = json(read, "sentence_bert_config.json")?;
    let st: StConfig = json(read, "config_sentence_transformers.json")?.unwrap_or_default();
    let mut max_seq_length = bert.as_ref().and_then(|b| b.max_seq_length);
    if max_seq_length.is_none() {
        // sentence-transformers 5+ keeps it as the tokenizer's model_max_length.
        let tok: Option<serde_json::Value> = json(read, "tokenizer_config.json")?;
        max_seq_length = tok
            .and_then(|t| t.get("model_max_length").and_then(|v| v.as_u64()))
            .filter(|&n| n > 0 && n <= 1 << 20)
            .map(|n| n as usize);
    }
    let settings = SentenceSettings {
        max_seq_length,
        do_lower_case: bert.is_some_and(|b| b.do_lower_case),
        prompts: st.prompts,
        default_prompt_name: st.default_prompt_name.filter(|n| !n.is_empty()),
    };
    Ok((head, settings))
}

/// Pooling modes: `pooling_mode` (a name or a list, in order), else the legacy flags in
/// sentence-transformers' fixed order (mean when none is set).
fn pooling_modes(config: &PoolingConfig, path: &str) -> Result<Vec<PoolMode>> {
    let mode = |v: &serde_json::Value| {
        let name = v.as_str().unwrap_or_default();
        PoolMode::from_name(name).ok_or_else(|| {
            Error::Config(format!(
                "{path}: pooling_mode {v} is not one of {}",
                PoolMode::ALL.map(PoolMode::name).join(", ")
            ))
        })
    };
    let modes = match &config.pooling_mode {
        Some(serde_json::Value::Array(list)) => list.iter().map(mode).collect::<Result<_>>()?,
        Some(v) => vec![mode(v)?],
        None => {
            let legacy = [
                ("pooling_mode_cls_token", PoolMode::Cls),
                ("pooling_mode_max_tokens", PoolMode::Max),
                ("pooling_mode_mean_tokens", PoolMode::Mean),
                ("pooling_mode_mean_sqrt_len_tokens", PoolMode::MeanSqrtLen),
                ("pooling_mode_weightedmean_tokens", PoolMode::WeightedMean),
                ("pooling_mode_lasttoken", PoolMode::LastToken),
            ];
            let set: Vec<_> = legacy
                .iter()
                .filter(|(key, _)| config.legacy.get(*key).and_then(|v| v.as_bool()) == Some(true))
                .map(|&(_, m)| m)
                .collect();
            if set.is_empty() {
                vec![PoolMode::Mean]
            } else {
                set
            }
        }
    };
    if modes.is_empty() || modes.len() > PoolMode::ALL.len() {
        return Err(Error::Config(format!(
            "{path}: {} pooling modes (1 to {} expected)",
            modes.len(),
            PoolMode::ALL.len()
        )));
    }
    Ok(modes)
}

/// A Dense module from `{dir}/config.json` and `{dir}/model.safetensors` taking `width` inputs.
fn load_dense(read: ReadFile<'_>, dir: &str, width: usize) -> Result<Dense<HostTensor>> {
    let path = format!("{dir}/config.json");
    let config: DenseConfig =
        json(read, &path)?.ok_or_else(|| Error::Config(format!("{path} is missing")))?;
    if config.in_features != width {
        return Err(Error::Config(format!(
            "{path}: in_features {} does not match the {width} values before it",
            config.in_features
        )));
    }
    limits::check_elements(
        &format!("{path}: out_features x in_features"),
        &[config.out_features, config.in_features],
    )?;
    let act = match config
        .activation_function
        .as_deref()
        .map(|a| a.rsplit('.').next())
    {
        None | Some(Some("Identity")) => Activation::None,
        Some(Some("Tanh")) => Activation::Tanh,
        Some(Some("ReLU")) => Activation::Relu,
        Some(Some("GELU")) => Activation::Gelu,
        Some(other) => {
            return Err(Error::Config(format!(
                "{path}: activation_function {:?} is not supported (Identity, Tanh, ReLU, GELU)",
                other.unwrap_or_default()
            )));
        }
    };
    let weights_path = format!("{dir}/model.safetensors");
    let bytes = read(&weights_path)?.ok_or_else(|| {
        Error::Config(format!(
            "{weights_path} is missing (only safetensors is read: re-save the model with \
             safe_serialization=True)"
        ))
    })?;
    let in_file = |e: Error| e.in_file(std::path::Path::new(&weights_path));
    let mut w = Weights::from_bytes(&bytes).map_err(in_file)?;
    let (out, inp) = (config.out_features, config.in_features);
    let weight = w.get("linear.weight", &[out, inp]).map_err(in_file)?;
    let bias = if config.bias {
        w.get("linear.bias", &[out]).map_err(in_file)?
    } else {
        HostTensor::zeros(&[out])
    };
    Ok(Dense {
        linear: Linear { weight, bias },
        act,
    })
}

/// [`load_sentence`] from a folder on disk.
#[cfg(not(target_arch = "wasm32"))]
pub fn load_sentence_dir(
    dir: &std::path::Path,
    hidden: usize,
) -> Result<(SentenceHead<HostTensor>, SentenceSettings)> {
    let files = crate::encoder::ModelFiles::dir(dir);
    let read = |rel: &str| files.read(rel);
    load_sentence(&read, hidden).map_err(|e| e.in_file(dir))
}
