//! TEI's embedding routes (`/embed`, `/embed_all`, `/embed_sparse`, `/similarity`), OpenAI's
//! (`/v1/embeddings`, `/embeddings`), the SageMaker entry points (`POST /`, `/invocations`)
//! and the cheap ones (`/info`, `/health`, `/ping`, `/metrics`).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::{Value, json};

use super::batcher::RowOutput;
use super::classify;
use super::inputs::{Input, bool_of, dimensions_of, inputs_of, string_of, texts_of, truncate_of};
use super::reply::{ApiError, Kind, Reply, backend, validation};
use super::state::{Body, Shared, is_healthy};
use crate::encoder::TextKind;

/// `v` L2-normalised, by the twin the CPU path uses (one row).
fn l2(v: Vec<f32>) -> Vec<f32> {
    let mut out = vec![0.0; v.len()];
    crate::host::l2_normalize_row(&v, &mut out);
    out
}

/// The embedding a request asked for: L2-normalised or as the model's head left it before
/// its Normalize; with `dimensions`, its first that many values (Matryoshka truncation), then
/// normalised if asked.
fn embedding_of(
    row: RowOutput,
    normalize: bool,
    dimensions: Option<usize>,
) -> Result<Vec<f32>, ApiError> {
    let Some(d) = dimensions else {
        return Ok(match (normalize, row.unnormalized) {
            (true, Some(_)) => row.embedding,
            (true, None) => l2(row.embedding),
            (false, Some(raw)) => raw,
            (false, None) => row.embedding,
        });
    };
    let mut raw = row.unnormalized.unwrap_or(row.embedding);
    if d > raw.len() {
        return Err(validation(format!(
            "`dimensions` {d} is more than the model's {}",
            raw.len()
        )));
    }
    raw.truncate(d);
    Ok(if normalize { l2(raw) } else { raw })
}

/// 424 unless the model is an embedding model (TEI answers a classifier's `/embed` so).
fn embedding_model(s: &Shared) -> Result<(), ApiError> {
    match s.model.info().kind {
        TextKind::Embedding => Ok(()),
        _ => Err(backend(
            "the model is not an embedding model (it has a sequence-classification head): \
             use /predict or /rerank",
        )),
    }
}

/// Sentence embeddings of `inputs`, as `/embed` computes them.
async fn embeddings(
    s: &Shared,
    inputs: Vec<Input>,
    body: &Value,
    normalize: bool,
) -> Result<(Vec<Vec<f32>>, usize), ApiError> {
    let dimensions = dimensions_of(body)?;
    let truncate = truncate_of(body, s.options.auto_truncate)?;
    let prompt = string_of(body, "prompt_name")?;
    embedding_model(s)?;
    let _permit = s.admit(inputs.len())?;
    let (rows, prompt_length) = s.rows(inputs, prompt, truncate).await?;
    let tokens = rows.iter().map(|r| r.ids.len()).sum();
    let out = s.run(rows, prompt_length, false).await?;
    let vectors = out
        .into_iter()
        .map(|r| embedding_of(r, normalize, dimensions))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((vectors, tokens))
}

pub(super) async fn embed(State(s): State<Shared>, Body(body): Body) -> Reply {
    let inputs = inputs_of(body.get("inputs"), "inputs")?;
    let normalize = bool_of(&body, "normalize", true)?;
    let (vectors, _) = embeddings(&s, inputs, &body, normalize).await?;
    Ok(Json(vectors).into_response())
}

/// Every token's last hidden state, for each input (`[inputs][tokens][hidden]`); an
/// embedding model's route, as in TEI.
pub(super) async fn embed_all(State(s): State<Shared>, Body(body): Body) -> Reply {
    let inputs = inputs_of(body.get("inputs"), "inputs")?;
    let truncate = truncate_of(&body, s.options.auto_truncate)?;
    let prompt = string_of(&body, "prompt_name")?;
    embedding_model(&s)?;
    let _permit = s.admit(inputs.len())?;
    let (rows, prompt_length) = s.rows(inputs, prompt, truncate).await?;
    let out = s.run(rows, prompt_length, true).await?;
    let states: Vec<Vec<Vec<f32>>> = out
        .into_iter()
        .map(|r| r.tokens.unwrap_or_default())
        .collect();
    Ok(Json(states).into_response())
}

/// SPLADE's sparse vectors: no model this engine loads has a sparse head, so 424 as TEI
/// answers a model without one (after the request itself is checked).
pub(super) async fn embed_sparse(State(s): State<Shared>, Body(body): Body) -> Reply {
    let inputs = inputs_of(body.get("inputs"), "inputs")?;
    truncate_of(&body, s.options.auto_truncate)?;
    string_of(&body, "prompt_name")?;
    let _permit = s.admit(inputs.len())?;
    Err(backend(
        "the model has no sparse head: /embed_sparse needs a SPLADE model (pooling `splade`), \
         which this server does not load",
    ))
}

/// Cosine similarity of `inputs.source_sentence` to each of `inputs.sentences`.
pub(super) async fn similarity(State(s): State<Shared>, Body(body): Body) -> Reply {
    let given = body.get("inputs");
    let source = given
        .and_then(|i| i.get("source_sentence"))
        .and_then(Value::as_str)
        .ok_or_else(|| validation("`inputs.source_sentence` must be a string"))?;
    let sentences = texts_of(given.and_then(|i| i.get("sentences")), "inputs.sentences")?;
    let parameters = match body.get("parameters") {
        None | Some(Value::Null) => json!({}),
        Some(p @ Value::Object(_)) => p.clone(),
        Some(_) => return Err(validation("`parameters` must be an object")),
    };
    let mut inputs = vec![Input::Text(source.to_string())];
    inputs.extend(sentences.into_iter().map(Input::Text));
    let (vectors, _) = embeddings(&s, inputs, &parameters, false).await?;
    let Some((first, rest)) = vectors.split_first() else {
        return Err(backend("no embeddings came back"));
    };
    let scores: Vec<f32> = rest.iter().map(|v| cosine(first, v)).collect();
    Ok(Json(scores).into_response())
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let (mut ab, mut aa, mut bb) = (0.0f64, 0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (f64::from(x), f64::from(y));
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    if aa == 0.0 || bb == 0.0 {
        return 0.0;
    }
    (ab / (aa.sqrt() * bb.sqrt())) as f32
}

/// OpenAI's embeddings route, with TEI's OpenAI-compatible error shape.
pub(super) async fn openai_embeddings(
    State(s): State<Shared>,
    body: Result<Body, ApiError>,
) -> Reply {
    openai(&s, body).await.map_err(ApiError::openai)
}

async fn openai(s: &Shared, body: Result<Body, ApiError>) -> Reply {
    let Body(body) = body?;
    let base64 = match body.get("encoding_format") {
        None | Some(Value::Null) => false,
        Some(Value::String(f)) if f == "float" => false,
        Some(Value::String(f)) if f == "base64" => true,
        Some(other) => {
            return Err(validation(format!(
                "`encoding_format` {other} is not \"float\" or \"base64\""
            )));
        }
    };
    string_of(&body, "model")?;
    string_of(&body, "user")?;
    let inputs = inputs_of(body.get("input"), "input")?;
    // Unit length, as TEI's OpenAI route answers.
    let (vectors, tokens) = embeddings(s, inputs, &body, true).await?;
    let data: Vec<OpenAiEmbedding> = vectors
        .into_iter()
        .enumerate()
        .map(|(index, e)| OpenAiEmbedding {
            object: "embedding",
            embedding: if base64 {
                let bytes: Vec<u8> = e.iter().flat_map(|v| v.to_le_bytes()).collect();
                EmbeddingData::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                EmbeddingData::Float(e)
            },
            index,
        })
        .collect();
    Ok(Json(OpenAiList {
        object: "list",
        data,
        model: s.served_model_name.clone(),
        usage: Usage {
            prompt_tokens: tokens,
            total_tokens: tokens,
        },
    })
    .into_response())
}

/// OpenAI's response shapes (f32 values written as f32, as `/embed` writes them).
#[derive(serde::Serialize)]
struct OpenAiList {
    object: &'static str,
    data: Vec<OpenAiEmbedding>,
    model: String,
    usage: Usage,
}

#[derive(serde::Serialize)]
struct OpenAiEmbedding {
    object: &'static str,
    embedding: EmbeddingData,
    index: usize,
}

#[derive(serde::Serialize)]
#[serde(untagged)]
enum EmbeddingData {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(serde::Serialize)]
struct Usage {
    prompt_tokens: usize,
    total_tokens: usize,
}

/// SageMaker's entry points (`POST /`, `/invocations`): the route the model's kind serves, as
/// TEI routes them (and `/similarity` for an embedding model's `{source_sentence, sentences}`,
/// what Hugging Face's `InferenceClient.sentence_similarity` posts to a server's URL, and
/// `/predict` for a reranker's request without a `query`).
pub(super) async fn invocations(state: State<Shared>, body: Result<Body, ApiError>) -> Reply {
    let body = body?;
    let similarity_inputs = body
        .0
        .get("inputs")
        .is_some_and(|i| i.get("source_sentence").is_some());
    match state.model.info().kind {
        // Hugging Face's InferenceClient posts sentence_similarity here too.
        TextKind::Embedding if similarity_inputs => similarity(state, body).await,
        TextKind::Embedding => embed(state, body).await,
        // A reranker's POST / without a `query` is text classification (what
        // InferenceClient.text_classification posts).
        TextKind::Reranker if body.0.get("query").is_none() => classify::predict(state, body).await,
        TextKind::Reranker => classify::rerank(state, body).await,
        TextKind::Classifier => classify::predict(state, body).await,
    }
}

/// 200 while the model can serve; 503 once its device is lost.
pub(super) async fn health(State(s): State<Shared>) -> Response {
    if is_healthy(&s) {
        StatusCode::OK.into_response()
    } else {
        ApiError::new(
            Kind::Unhealthy,
            "the GPU device was lost; restart the server",
        )
        .into_response()
    }
}

/// TEI's `Info`, with this server's adapter and payload limit besides.
pub(super) async fn info(State(s): State<Shared>) -> Response {
    let about = s.model.info();
    let classes = || {
        let id2label: serde_json::Map<String, Value> = about
            .labels
            .iter()
            .enumerate()
            .map(|(i, l)| (i.to_string(), json!(l)))
            .collect();
        let label2id: serde_json::Map<String, Value> = about
            .labels
            .iter()
            .enumerate()
            .map(|(i, l)| (l.clone(), json!(i)))
            .collect();
        json!({ "id2label": id2label, "label2id": label2id, "model_type": about.model_type })
    };
    let model_type = match about.kind {
        TextKind::Embedding => {
            let pooling: Vec<&str> = about
                .pooling
                .iter()
                .map(|&p| if p == "lasttoken" { "last_token" } else { p })
                .collect();
            json!({ "embedding": { "pooling": pooling.join("+"), "model_type": about.model_type } })
        }
        TextKind::Reranker => json!({ "reranker": classes() }),
        TextKind::Classifier => json!({ "classifier": classes() }),
    };
    let o = &s.options;
    Json(json!({
        "model_id": about.model_id,
        "model_sha": null,
        // TEI's names for the dtypes.
        "model_dtype": match about.dtype {
            "f16" => "float16",
            "f32" => "float32",
            other => other,
        },
        "served_model_name": s.served_model_name,
        "model_type": model_type,
        "max_concurrent_requests": o.max_concurrent_requests,
        "max_input_length": about.max_length,
        "max_batch_tokens": o.max_batch_tokens,
        "max_batch_requests": null,
        "max_client_batch_size": o.max_client_batch_size,
        "auto_truncate": o.auto_truncate,
        "tokenization_workers": o.tokenization_workers,
        "version": env!("CARGO_PKG_VERSION"),
        "sha": null,
        "docker_label": null,
        "adapter": about.device,
        "payload_limit": o.payload_limit,
    }))
    .into_response()
}

pub(super) async fn metrics(State(s): State<Shared>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        s.metrics.render(),
    )
        .into_response()
}
