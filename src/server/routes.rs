//! The routes: TEI's `/embed`, `/rerank`, `/tokenize`, `/info`, `/metrics` and OpenAI's
//! `/v1/embeddings`, each parsing its request, queueing its rows and shaping the answer.

use std::time::Instant;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::{Value, json};
use tokio::sync::oneshot;

use super::batcher::{Job, Row, RowOutput};
use super::{AppState, Body, Reply, Shared, error, input_error, validation};
use crate::models::text;

/// `inputs` as texts: a string or a list of strings.
fn texts_of(v: Option<&Value>, key: &str) -> std::result::Result<Vec<String>, Response> {
    match v {
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(a)) if !a.is_empty() => a
            .iter()
            .map(|x| {
                x.as_str().map(str::to_string).ok_or_else(|| {
                    validation(format!("`{key}` must be a string or a list of strings"))
                })
            })
            .collect(),
        Some(Value::Array(_)) => Err(validation(format!("`{key}` is empty"))),
        _ => Err(validation(format!(
            "`{key}` must be a string or a list of strings"
        ))),
    }
}

fn bool_of(body: &Value, key: &str, default: bool) -> std::result::Result<bool, Response> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(validation(format!("`{key}` must be a boolean"))),
    }
}

impl AppState {
    fn admit(
        &self,
        count: usize,
    ) -> std::result::Result<tokio::sync::SemaphorePermit<'_>, Response> {
        let permit = self.permits.try_acquire().map_err(|_| {
            error(
                StatusCode::TOO_MANY_REQUESTS,
                "Overloaded",
                format!(
                    "the server is handling its maximum of {} concurrent requests",
                    self.options.max_concurrent_requests
                ),
            )
        })?;
        if count > self.options.max_client_batch_size {
            return Err(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "Validation",
                format!(
                    "batch size {count} > maximum allowed batch size {}",
                    self.options.max_client_batch_size
                ),
            ));
        }
        Ok(permit)
    }

    /// Queues rows and waits for their outputs (500 when the batch failed); `arrived`: when
    /// the request came in, for the request-duration histogram.
    async fn run(
        &self,
        rows: Vec<Row>,
        prompt_length: usize,
        arrived: Instant,
    ) -> std::result::Result<Vec<RowOutput>, Response> {
        let tokens: usize = rows.iter().map(|r| r.ids.len()).sum();
        let (reply, answer) = oneshot::channel();
        let job = Job {
            rows,
            prompt_length,
            queued: Instant::now(),
            reply,
        };
        let sent = match self.queue.lock() {
            Ok(q) => q.as_ref().is_some_and(|s| s.send(job).is_ok()),
            Err(_) => false,
        };
        let result = match sent {
            true => answer.await.ok(),
            false => None,
        };
        let out = match result {
            Some(Ok(rows)) => Ok(rows),
            Some(Err(e)) => Err(error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Backend",
                e.to_string(),
            )),
            None => Err(error(
                StatusCode::SERVICE_UNAVAILABLE,
                "Backend",
                "the server is shutting down",
            )),
        };
        self.metrics.request(out.is_ok(), tokens, arrived.elapsed());
        out
    }

    /// Tokenized texts as unpadded rows, with the prompt's length.
    fn rows_of(
        &self,
        texts: &[String],
        prompt_name: Option<&str>,
        truncate: bool,
    ) -> std::result::Result<(Vec<Row>, usize), Response> {
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let input = self
            .model
            .tokenize(&refs, None, prompt_name, truncate)
            .map_err(input_error)?;
        Ok((split_rows(&input), input.prompt_length))
    }
}

fn split_rows(input: &crate::models::text::TextInput) -> Vec<Row> {
    crate::encoder::TextEncoder::rows(input)
}

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
) -> std::result::Result<Vec<f32>, Response> {
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

/// `dimensions`: absent, or a positive integer.
fn dimensions_of(body: &Value) -> std::result::Result<Option<usize>, Response> {
    match body.get("dimensions") {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64().and_then(|d| usize::try_from(d).ok()) {
            Some(d) if d > 0 => Ok(Some(d)),
            _ => Err(validation("`dimensions` must be a positive integer")),
        },
    }
}

pub(super) async fn embed(State(s): State<Shared>, Body(body): Body) -> Reply {
    let arrived = Instant::now();
    let texts = texts_of(body.get("inputs"), "inputs")?;
    let normalize = bool_of(&body, "normalize", true)?;
    let dimensions = dimensions_of(&body)?;
    let truncate = bool_of(&body, "truncate", s.options.auto_truncate)?;
    let prompt = match body.get("prompt_name") {
        None | Some(Value::Null) => None,
        Some(Value::String(p)) => Some(p.clone()),
        Some(_) => return Err(validation("`prompt_name` must be a string")),
    };
    let _permit = s.admit(texts.len())?;
    let (rows, prompt_length) = s.rows_of(&texts, prompt.as_deref(), truncate)?;
    let out = s.run(rows, prompt_length, arrived).await?;
    let rows = out
        .into_iter()
        .map(|r| embedding_of(r, normalize, dimensions))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(Json(rows).into_response())
}

pub(super) async fn openai_embeddings(State(s): State<Shared>, Body(body): Body) -> Reply {
    let arrived = Instant::now();
    let base64 = match body.get("encoding_format").and_then(Value::as_str) {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(validation(format!(
                "`encoding_format` {other:?} is not float or base64"
            )));
        }
    };
    let dimensions = dimensions_of(&body)?;
    let input = body.get("input");
    // Token arrays are taken as given (no special tokens added), as OpenAI takes them.
    let tokens_of = |v: &Value| -> Option<Vec<u32>> {
        v.as_array()?
            .iter()
            .map(|x| x.as_u64().and_then(|i| u32::try_from(i).ok()))
            .collect()
    };
    let (rows, prompt_length) = match input {
        Some(Value::Array(a)) if !a.is_empty() && a.iter().all(Value::is_u64) => (
            vec![token_row(tokens_of(input.unwrap_or(&Value::Null)), &s)?],
            0,
        ),
        Some(Value::Array(a)) if !a.is_empty() && a.iter().all(Value::is_array) => {
            let rows = a
                .iter()
                .map(|t| token_row(tokens_of(t), &s))
                .collect::<std::result::Result<_, _>>()?;
            (rows, 0)
        }
        _ => {
            let texts = texts_of(input, "input")?;
            s.rows_of(&texts, None, s.options.auto_truncate)?
        }
    };
    let _permit = s.admit(rows.len())?;
    let tokens: usize = rows.iter().map(|r| r.ids.len()).sum();
    let out = s.run(rows, prompt_length, arrived).await?;
    let data = out
        .into_iter()
        .enumerate()
        .map(|(index, r)| {
            // Unit length, as TEI's OpenAI route answers.
            let e = embedding_of(r, true, dimensions)?;
            let embedding = if base64 {
                let bytes: Vec<u8> = e.iter().flat_map(|v| v.to_le_bytes()).collect();
                EmbeddingData::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                EmbeddingData::Float(e)
            };
            Ok(OpenAiEmbedding {
                object: "embedding",
                embedding,
                index,
            })
        })
        .collect::<std::result::Result<Vec<_>, Response>>()?;
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or(&s.model.info().model_id)
        .to_string();
    Ok(Json(OpenAiList {
        object: "list",
        data,
        model,
        usage: Usage {
            prompt_tokens: tokens,
            total_tokens: tokens,
        },
    })
    .into_response())
}

/// OpenAI's response shapes (f32 values serialized as f32, as `/embed` writes them).
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

fn token_row(ids: Option<Vec<u32>>, s: &AppState) -> std::result::Result<Row, Response> {
    let ids =
        ids.ok_or_else(|| validation("`input` token arrays must hold non-negative integers"))?;
    if ids.is_empty() {
        return Err(validation("`input` holds an empty token array"));
    }
    let (max_length, vocab_size) = (s.model.info().max_length, s.model.info().vocab_size);
    if ids.len() > max_length {
        return Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Validation",
            format!(
                "a token array holds {} tokens, more than the {} this model takes",
                ids.len(),
                max_length
            ),
        ));
    }
    if let Some(bad) = ids.iter().find(|&&i| i as usize >= vocab_size) {
        return Err(validation(format!(
            "token id {bad} is outside the vocabulary of {}",
            vocab_size
        )));
    }
    Ok(Row {
        types: vec![0; ids.len()],
        ids,
    })
}

pub(super) async fn rerank(State(s): State<Shared>, Body(body): Body) -> Reply {
    let arrived = Instant::now();
    if s.model.info().num_labels.is_none() {
        return Err(error(
            StatusCode::FAILED_DEPENDENCY,
            "Validation",
            "the model is not a re-ranker (no sequence-classification head)",
        ));
    }
    let query = body
        .get("query")
        .and_then(Value::as_str)
        .ok_or_else(|| validation("`query` must be a string"))?;
    let texts = texts_of(body.get("texts"), "texts")?;
    let raw = bool_of(&body, "raw_scores", false)?;
    let return_text = bool_of(&body, "return_text", false)?;
    let truncate = bool_of(&body, "truncate", s.options.auto_truncate)?;
    let _permit = s.admit(texts.len())?;
    let docs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let input = s
        .model
        .tokenize_pairs(query, &docs, truncate)
        .map_err(input_error)?;
    let out = s.run(split_rows(&input), 0, arrived).await?;
    let mut ranked: Vec<Value> = out
        .into_iter()
        .enumerate()
        .map(|(index, r)| {
            let logit = r
                .logits
                .as_ref()
                .and_then(|l| l.first().copied())
                .unwrap_or(f32::NAN);
            let score = if raw {
                logit
            } else {
                text::cross_encoder_score(logit)
            };
            let mut v = json!({ "index": index, "score": score });
            if return_text {
                v["text"] = json!(texts[index]);
            }
            v
        })
        .collect();
    ranked.sort_by(|a, b| {
        let (x, y) = (
            a["score"].as_f64().unwrap_or(f64::MIN),
            b["score"].as_f64().unwrap_or(f64::MIN),
        );
        y.total_cmp(&x)
    });
    Ok(Json(ranked).into_response())
}

pub(super) async fn tokenize(State(s): State<Shared>, Body(body): Body) -> Reply {
    let texts = texts_of(body.get("inputs"), "inputs")?;
    let _permit = s.admit(texts.len())?;
    let out: Vec<Value> = texts
        .iter()
        .map(|t| {
            s.model
                .tokenizer()
                .and_then(|tok| tok.tokenizer.tokens(t))
                .map(|toks| json!(toks))
                .map_err(|e| validation(e.to_string()))
        })
        .collect::<std::result::Result<_, _>>()?;
    Ok(Json(out).into_response())
}

/// 200 while the model can serve; 503 once its device is lost.
pub(super) async fn health(State(s): State<Shared>) -> Response {
    if s.healthy.load(std::sync::atomic::Ordering::Acquire) {
        StatusCode::OK.into_response()
    } else {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "Unhealthy",
            "the GPU device was lost; restart the server",
        )
    }
}

pub(super) async fn info_route(State(s): State<Shared>) -> Response {
    Json(s.info.clone()).into_response()
}

pub(super) async fn metrics_route(State(s): State<Shared>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        s.metrics.render(),
    )
        .into_response()
}
