//! backbone on WebGPU: the demo page's engine (embed text, classify images) and the browser
//! test's fixture checks. Everything is async: the web has no blocking waits.

use std::cell::RefCell;
use std::rc::Rc;

use std::collections::BTreeMap;

use backbone::models::bert::{Bert, BertConfig, BertInput, BertWeights, load_sentence};
use backbone::models::cswin::{self, Cswin, CswinConfig, CswinWeights};
use backbone::models::image;
use backbone::models::tokenizer::{DEFAULT_MAX_LENGTH, SentenceTokenizer, TextTokenizer};
use backbone::models::weights::Weights;
use backbone::reference::HostTensor;
use backbone::{Context, ContextOptions, DType};
use js_sys::Promise;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::future_to_promise;

#[derive(Default)]
struct Models {
    bert: Option<Rc<(Bert, SentenceTokenizer)>>,
    cswin: Option<Rc<(Cswin, Vec<String>)>>,
}

/// The engine the page talks to: one WebGPU context and the models loaded into it.
#[wasm_bindgen]
pub struct Engine {
    ctx: Rc<Context>,
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
            ctx: Rc::new(ctx),
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

    /// Loads a text model folder as picked: `paths` relative to the folder (as
    /// `webkitRelativePath` gives them, the top folder stripped) and their bytes. A Hugging Face
    /// folder (config.json, model.safetensors, tokenizer.json) or a sentence-transformers one,
    /// whose modules (`1_Pooling/config.json`, `2_Dense/`, Normalize), max_seq_length and
    /// prompts are followed as `backbone embed` follows them. Returns a one-line description.
    pub fn load_text(
        &self,
        paths: Vec<String>,
        files: Vec<js_sys::Uint8Array>,
    ) -> Result<String, JsValue> {
        let map: BTreeMap<String, Vec<u8>> = paths
            .into_iter()
            .zip(files)
            .map(|(p, f)| (p, f.to_vec()))
            .collect();
        let need = |name: &str| {
            map.get(name)
                .ok_or_else(|| js_err(format!("the folder has no {name} at its top level")))
        };
        let config_text = String::from_utf8_lossy(need("config.json")?).into_owned();
        let config = BertConfig::from_json(&config_text).map_err(js_err)?;
        let read = |p: &str| Ok(map.get(p).cloned());
        let (head, settings) = load_sentence(&read, config.hidden_size).map_err(js_err)?;
        let mut host =
            BertWeights::from_safetensors(&config, need("model.safetensors")?).map_err(js_err)?;
        let pooling: Vec<&str> = head.modes.iter().map(|m| m.name()).collect();
        let about = format!(
            "{} ({} layers, hidden {}): {} pooling{}{}",
            config.model_type,
            config.num_hidden_layers,
            config.hidden_size,
            pooling.join(" + "),
            if head.dense.is_empty() { "" } else { ", Dense" },
            if head.normalize { ", normalized" } else { "" }
        );
        host.sentence = head;
        let max_length = settings
            .max_seq_length
            .unwrap_or(DEFAULT_MAX_LENGTH)
            .min(config.max_sequence());
        let tokenizer =
            TextTokenizer::from_bytes(need("tokenizer.json")?, max_length).map_err(js_err)?;
        let model = Bert::with_dtype(&self.ctx, config, &host, self.dtype()).map_err(js_err)?;
        let tokenizer = SentenceTokenizer {
            tokenizer,
            settings,
            max_length,
        };
        self.models.borrow_mut().bert = Some(Rc::new((model, tokenizer)));
        Ok(about)
    }

    /// Embeds texts; resolves to a Float32Array of `texts.length x C` unit vectors.
    pub fn embed(&self, texts: Vec<String>) -> Promise {
        let (ctx, bert) = (self.ctx.clone(), self.models.borrow().bert.clone());
        future_to_promise(async move {
            let bert = bert.ok_or_else(|| js_err("no BERT model loaded"))?;
            let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
            let input = bert.1.encode(&texts, None, None).map_err(js_err)?;
            let out = bert.0.forward(&ctx, &input, false).await.map_err(js_err)?;
            Ok(js_sys::Float32Array::from(&out.sentence_embedding.data[..]).into())
        })
    }

    /// Loads a CSWin folder's config.json text and model.safetensors bytes.
    pub fn load_cswin(&self, config: &str, weights: &[u8]) -> Result<(), JsValue> {
        let json: serde_json::Value = serde_json::from_str(config).map_err(js_err)?;
        let labels = cswin::id2label(&json);
        let config = CswinConfig::from_json(config).map_err(js_err)?;
        let host = CswinWeights::from_safetensors(&config, weights).map_err(js_err)?;
        let model = Cswin::with_dtype(&self.ctx, config, &host, self.dtype()).map_err(js_err)?;
        self.models.borrow_mut().cswin = Some(Rc::new((model, labels)));
        Ok(())
    }

    /// Classifies an encoded image (JPEG, PNG, WebP, BMP); resolves to a JSON string of the
    /// top 5 `[{"class": k, "label": ..., "prob": p}]`.
    pub fn classify(&self, image_bytes: Vec<u8>) -> Promise {
        let (ctx, cswin) = (self.ctx.clone(), self.models.borrow().cswin.clone());
        future_to_promise(async move {
            let cswin = cswin.ok_or_else(|| js_err("no CSWin model loaded"))?;
            let img = image::decode(&image_bytes, "image").map_err(js_err)?;
            let pixels =
                image::imagenet_preprocess(&img, cswin.0.config.img_size).map_err(js_err)?;
            let out = cswin
                .0
                .forward(&ctx, &pixels, false)
                .await
                .map_err(js_err)?;
            Ok(top5(&out.logits().map_err(js_err)?.data, &cswin.1).into())
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
        let ctx = self.ctx.clone();
        future_to_promise(async move {
            let mut checks = Vec::new();
            check_bert(&ctx, &bert_config, &bert_weights, &bert_golden, &mut checks)
                .await
                .map_err(js_err)?;
            check_cswin(
                &ctx,
                &cswin_config,
                &cswin_weights,
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
        let (ctx, bert) = (self.ctx.clone(), self.models.borrow().bert.clone());
        future_to_promise(async move {
            let bert = bert.ok_or_else(|| js_err("no text model loaded"))?;
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            let input = bert.1.encode(&refs, None, None).map_err(js_err)?;
            let out = bert.0.forward(&ctx, &input, false).await.map_err(js_err)?;
            let g = Weights::from_bytes(&golden).map_err(js_err)?;
            let shape = g.shape("sentence_embedding").unwrap_or_default();
            let mut g = g;
            let want = g.get("sentence_embedding", &shape).map_err(js_err)?;
            let c = out.sentence_embedding.shape[1];
            let mut checks = Vec::new();
            for (i, &row) in rows.iter().enumerate() {
                let want_row = want
                    .data
                    .get(row as usize * c..(row as usize + 1) * c)
                    .ok_or_else(|| js_err(format!("golden row {row} is missing")))?;
                compare(
                    &format!("{name} sentence_embedding {:?}", texts[i]),
                    &out.sentence_embedding.data[i * c..(i + 1) * c],
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
fn top5(logits: &[f32], labels: &[String]) -> String {
    let top: Vec<_> = cswin::top_k(logits, 5)
        .into_iter()
        .map(|(k, prob)| {
            let label = labels.get(k).cloned().unwrap_or_default();
            serde_json::json!({ "class": k, "label": label, "prob": prob })
        })
        .collect();
    serde_json::Value::Array(top).to_string()
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
    ctx: &Context,
    config: &str,
    weights: &[u8],
    golden: &[u8],
    checks: &mut Vec<serde_json::Value>,
) -> backbone::Result<()> {
    let config = BertConfig::from_json(config)?;
    let host = BertWeights::from_safetensors(&config, weights)?;
    let model = Bert::new(ctx, config.clone(), &host)?;
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
    let input = BertInput::new(shape[0], shape[1], ids, Some(mask.clone()), Some(types))?;
    let out = model.forward(ctx, &input, false).await?;
    let c = config.hidden_size;
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
    ctx: &Context,
    config: &str,
    weights: &[u8],
    golden: &[u8],
    checks: &mut Vec<serde_json::Value>,
) -> backbone::Result<()> {
    let config = CswinConfig::from_json(config)?;
    let host = CswinWeights::from_safetensors(&config, weights)?;
    let model = Cswin::new(ctx, config, &host)?;
    let mut g = Weights::from_bytes(golden)?;
    let shape = g.shape("pixel_values").unwrap_or_default();
    let pixels: HostTensor = g.get("pixel_values", &shape)?;
    let out = model.forward(ctx, &pixels, false).await?;
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
