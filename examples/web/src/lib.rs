//! backbone on WebGPU: the demo page's engine (embed text, classify images) and the browser
//! test's fixture checks. Everything is async: the web has no blocking waits.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;

use backbone::encoder::{
    Device, EncoderOptions, ImageEncoder, ModelFiles, TextEncoder, TextInfo, Want,
};
use backbone::models::text::TextInput;
use backbone::models::weights::Weights;
use backbone::reference::HostTensor;
use backbone::{Context, ContextOptions, DType};
use js_sys::Promise;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::future_to_promise;

#[derive(Default)]
struct Models {
    text: Option<Rc<TextEncoder>>,
    image: Option<Rc<ImageEncoder>>,
}

/// The engine the page talks to: one WebGPU context and the models loaded into it.
#[wasm_bindgen]
pub struct Engine {
    ctx: Arc<Context>,
    models: Rc<RefCell<Models>>,
}

fn js_err(e: impl std::fmt::Display) -> JsValue {
    JsError::new(&e.to_string()).into()
}

#[wasm_bindgen]
impl Engine {
    /// Opens the browser's WebGPU adapter.
    pub async fn create() -> Result<Engine, JsValue> {
        let ctx = Context::new(ContextOptions::default())
            .await
            .map_err(js_err)?;
        Ok(Engine {
            ctx: Arc::new(ctx),
            models: Rc::default(),
        })
    }

    /// The adapter in use and the storage type models load in, for display. wgpu names a
    /// browser adapter by its description, which some browsers leave empty (SwiftShader):
    /// `browser_name` is what the page read from `GPUAdapter.info` (vendor, architecture).
    pub fn adapter(&self, browser_name: String) -> String {
        let mut caps = self.ctx.capabilities().clone();
        if caps.adapter.name.is_empty() && !browser_name.is_empty() {
            caps.adapter.name = browser_name;
        }
        format!("{caps}; models in {}", self.dtype().name())
    }

    /// The demo's models store weights and activations as f16 where WebGPU has `shader-f16`
    /// (half the memory and bandwidth; f32 accumulation), f32 elsewhere. The browser test runs
    /// the fixtures in f32.
    fn dtype(&self) -> DType {
        if self.ctx.capabilities().shader_f16() {
            DType::F16
        } else {
            DType::F32
        }
    }

    /// How the page's models open: on this context, in [`Self::dtype`].
    fn options(&self, dtype: DType) -> EncoderOptions {
        EncoderOptions::default()
            .device(Device::Context(self.ctx.clone()))
            .dtype(dtype)
    }

    /// Loads a text model folder as picked: `paths` relative to the folder (as
    /// `webkitRelativePath` gives them, the top folder stripped) and their bytes, through the
    /// library's [`TextEncoder`] (the same code `backbone embed` opens a folder with: its
    /// modules, max_seq_length, prompts). Resolves to a one-line description.
    pub fn load_text(&self, paths: Vec<String>, files: Vec<js_sys::Uint8Array>) -> Promise {
        let map: BTreeMap<String, Vec<u8>> = paths
            .into_iter()
            .zip(files)
            .map(|(p, f)| (p, f.to_vec()))
            .collect();
        let (options, models) = (self.options(self.dtype()), self.models.clone());
        future_to_promise(async move {
            let files = ModelFiles::map("model", map);
            let model = TextEncoder::open_files(&files, &options)
                .await
                .map_err(js_err)?;
            let about = describe(model.info());
            models.borrow_mut().text = Some(Rc::new(model));
            Ok(about.into())
        })
    }

    /// Embeds texts; resolves to a Float32Array of `texts.length x C` embeddings.
    pub fn embed(&self, texts: Vec<String>) -> Promise {
        let text = self.models.borrow().text.clone();
        future_to_promise(async move {
            let model = text.ok_or_else(|| js_err("no text model loaded"))?;
            let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
            let out = model.encode(&texts, None, None).await.map_err(js_err)?;
            Ok(js_sys::Float32Array::from(&out.data[..]).into())
        })
    }

    /// Loads a CSWin folder's config.json text and model.safetensors bytes through the
    /// library's [`ImageEncoder`]; resolves when the model is on the GPU.
    pub fn load_cswin(&self, config: String, weights: Vec<u8>) -> Promise {
        let (options, models) = (self.options(self.dtype()), self.models.clone());
        future_to_promise(async move {
            let model = open_cswin(config, weights, &options)
                .await
                .map_err(js_err)?;
            models.borrow_mut().image = Some(Rc::new(model));
            Ok(JsValue::UNDEFINED)
        })
    }

    /// Classifies an encoded image (JPEG, PNG, WebP, BMP); resolves to a JSON string of the
    /// top 5 `[{"class": k, "label": ..., "prob": p}]`.
    pub fn classify(&self, image_bytes: Vec<u8>) -> Promise {
        let image = self.models.borrow().image.clone();
        future_to_promise(async move {
            let model = image.ok_or_else(|| js_err("no CSWin model loaded"))?;
            let pixels = model.preprocess(&image_bytes, "image").map_err(js_err)?;
            let ranked = model.classify(&pixels, 5).await.map_err(js_err)?;
            Ok(top5(ranked.into_iter().next().unwrap_or_default()).into())
        })
    }

    /// The browser test: runs the bert-micro and cswin-micro fixtures through the GPU forward
    /// and compares every output with the golden files (the fixture README's tolerances).
    /// Resolves to a JSON report `{"passed": bool, "checks": [{name, max_abs, limit, passed}]}`.
    #[allow(clippy::too_many_arguments)]
    pub fn check_fixtures(
        &self,
        bert_config: String,
        bert_weights: Vec<u8>,
        bert_golden: Vec<u8>,
        cswin_config: String,
        cswin_weights: Vec<u8>,
        cswin_golden: Vec<u8>,
    ) -> Promise {
        let options = self.options(DType::F32);
        future_to_promise(async move {
            let mut checks = Vec::new();
            check_bert(&options, bert_config, bert_weights, &bert_golden, &mut checks)
                .await
                .map_err(js_err)?;
            check_cswin(
                &options,
                cswin_config,
                cswin_weights,
                &cswin_golden,
                &mut checks,
            )
            .await
            .map_err(js_err)?;
            let passed = checks.iter().all(|c| c["passed"] == true);
            Ok(serde_json::json!({ "passed": passed, "checks": checks })
                .to_string()
                .into())
        })
    }
}

#[wasm_bindgen]
impl Engine {
    /// The browser test on a real model: embeds `texts` with the loaded text model (tokenized
    /// in the browser) and compares each with row `rows[i]` of `sentence_embedding` in a golden
    /// file made by sentence-transformers. Resolves to the same JSON report as `check_fixtures`.
    pub fn check_text_embeddings(
        &self,
        name: String,
        texts: Vec<String>,
        rows: Vec<u32>,
        golden: Vec<u8>,
    ) -> Promise {
        let text = self.models.borrow().text.clone();
        future_to_promise(async move {
            let model = text.ok_or_else(|| js_err("no text model loaded"))?;
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            let embeddings = model.encode(&refs, None, None).await.map_err(js_err)?;
            let g = Weights::from_bytes(&golden).map_err(js_err)?;
            let shape = g.shape("sentence_embedding").unwrap_or_default();
            let mut g = g;
            let want = g.get("sentence_embedding", &shape).map_err(js_err)?;
            let c = embeddings.shape[1];
            let mut checks = Vec::new();
            for (i, &row) in rows.iter().enumerate() {
                let want_row = want
                    .data
                    .get(row as usize * c..(row as usize + 1) * c)
                    .ok_or_else(|| js_err(format!("golden row {row} is missing")))?;
                compare(
                    &format!("{name} sentence_embedding {:?}", texts[i]),
                    &embeddings.data[i * c..(i + 1) * c],
                    want_row,
                    1e-5,
                    |_| true,
                    &mut checks,
                );
            }
            let passed = checks.iter().all(|c| c["passed"] == true);
            Ok(serde_json::json!({ "passed": passed, "checks": checks })
                .to_string()
                .into())
        })
    }
}

/// The top 5 as JSON: `[{"class": k, "label": ..., "prob": p}]`.
fn top5(ranked: Vec<(usize, f32, String)>) -> String {
    let top: Vec<_> = ranked
        .into_iter()
        .map(|(k, prob, label)| serde_json::json!({ "class": k, "label": label, "prob": prob }))
        .collect();
    serde_json::Value::Array(top).to_string()
}

/// The page's line about a loaded text model.
fn describe(info: &TextInfo) -> String {
    format!(
        "{} ({} layers, hidden {}): {} pooling{}{}, {} tokens",
        info.model_type,
        info.layers,
        info.hidden_size,
        info.pooling.join(" + "),
        if info.dense_modules == 0 { "" } else { ", Dense" },
        if info.normalize { ", normalized" } else { "" },
        info.max_length
    )
}

/// A CSWin model from its config.json text and model.safetensors bytes.
async fn open_cswin(
    config: String,
    weights: Vec<u8>,
    options: &EncoderOptions,
) -> backbone::Result<ImageEncoder> {
    let map = BTreeMap::from([
        ("config.json".to_string(), config.into_bytes()),
        ("model.safetensors".to_string(), weights),
    ]);
    ImageEncoder::open_files(&ModelFiles::map("cswin", map), options).await
}

/// Max |got - want| over the entries `keep` selects; records a check against `limit`.
fn compare(
    name: &str,
    got: &[f32],
    want: &[f32],
    limit: f32,
    keep: impl Fn(usize) -> bool,
    checks: &mut Vec<serde_json::Value>,
) {
    let mut max_abs = if got.len() == want.len() {
        0f32
    } else {
        f32::INFINITY
    };
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        if keep(i) {
            let err = (g - w).abs();
            max_abs = max_abs.max(if err.is_nan() { f32::INFINITY } else { err });
        }
    }
    checks.push(serde_json::json!({ "name": name, "max_abs": max_abs, "limit": limit, "passed": max_abs <= limit }));
}

async fn check_bert(
    options: &EncoderOptions,
    config: String,
    weights: Vec<u8>,
    golden: &[u8],
    checks: &mut Vec<serde_json::Value>,
) -> backbone::Result<()> {
    let map = BTreeMap::from([
        ("config.json".to_string(), config.into_bytes()),
        ("model.safetensors".to_string(), weights),
    ]);
    let mut options = options.clone();
    options.require_tokenizer = false;
    let model = TextEncoder::open_files(&ModelFiles::map("bert-micro", map), &options).await?;
    let mut g = Weights::from_bytes(golden)?;
    let missing = |name: &str| backbone::Error::Input {
        arg: name.into(),
        reason: "missing from the golden file".into(),
    };
    let (shape, ids) = g.ids("input_ids")?.ok_or_else(|| missing("input_ids"))?;
    let (_, mask) = g
        .ids("attention_mask")?
        .ok_or_else(|| missing("attention_mask"))?;
    let (_, types) = g
        .ids("token_type_ids")?
        .ok_or_else(|| missing("token_type_ids"))?;
    let input = TextInput::new(shape[0], shape[1], ids, Some(mask.clone()), Some(types))?;
    let want_all = Want {
        last_hidden_state: true,
        hidden_states: false,
    };
    let out = model.forward(&input, want_all).await?;
    let c = model.info().hidden_size;
    let hidden = g.get("last_hidden_state", &[shape[0], shape[1], c])?;
    compare(
        "bert-micro last_hidden_state (real tokens)",
        &out.last_hidden_state.data,
        &hidden.data,
        5e-5,
        |i| mask[i / c] != 0,
        checks,
    );
    let want = g.get("sentence_embedding", &[shape[0], c])?;
    compare(
        "bert-micro sentence_embedding",
        &out.sentence_embedding.data,
        &want.data,
        1e-5,
        |_| true,
        checks,
    );
    if let Some(pooler) = &out.pooler_output {
        let want = g.get("pooler_output", &[shape[0], c])?;
        compare(
            "bert-micro pooler_output",
            &pooler.data,
            &want.data,
            1e-5,
            |_| true,
            checks,
        );
    }
    Ok(())
}

async fn check_cswin(
    options: &EncoderOptions,
    config: String,
    weights: Vec<u8>,
    golden: &[u8],
    checks: &mut Vec<serde_json::Value>,
) -> backbone::Result<()> {
    let model = open_cswin(config, weights, options).await?;
    let mut g = Weights::from_bytes(golden)?;
    let shape = g.shape("pixel_values").unwrap_or_default();
    let pixels: HostTensor = g.get("pixel_values", &shape)?;
    let out = model.forward(&pixels, false).await?;
    let mut tensors = vec![("stem", &out.stem, 5e-5)];
    let names = ["stage1", "stage2", "stage3", "stage4"];
    tensors.extend(names.iter().zip(&out.stages).map(|(n, t)| (*n, t, 5e-5)));
    let (pooled, logits) = (out.pooled.as_ref(), out.logits.as_ref());
    tensors.extend(pooled.map(|t| ("pooled", t, 2e-5)));
    tensors.extend(logits.map(|t| ("logits", t, 2e-5)));
    for (name, got, limit) in tensors {
        let want = g.get(name, &got.shape)?;
        compare(
            &format!("cswin-micro {name}"),
            &got.data,
            &want.data,
            limit,
            |_| true,
            checks,
        );
    }
    Ok(())
}
