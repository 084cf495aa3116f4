//! `backbone serve`: an HTTP server for embeddings and reranking on axum + tokio, speaking
//! text-embeddings-inference's routes (`/embed`, `/rerank`, `/tokenize`, `/info`, `/health`,
//! `/metrics`) and OpenAI's `/v1/embeddings`. Requests are tokenized on the async workers and
//! queued; one thread owns the model and runs them in dynamic batches ([`batcher`]).
//! Backpressure: past `max_concurrent_requests` a request gets 429, past the client batch size
//! or the payload limit 413, malformed JSON or wrong types 422, a failed batch 500, all in TEI's
//! error shape `{error, error_type}`. SIGINT/SIGTERM stop accepting, finish what is queued, exit.

// Handlers return an early error response with `?`; axum's `Response` is large by design.
#![allow(clippy::result_large_err)]

mod batcher;
mod metrics;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, mpsc};
use std::time::Instant;

use axum::Json;
use axum::Router;
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, oneshot};

use crate::error::{Error, Result};
use crate::models::bert::{self, Bert, BertConfig};
use crate::models::tokenizer::SentenceTokenizer;
use crate::tensor::DType;
use batcher::{Job, Row, RowOutput};
use metrics::Metrics;

/// What `backbone serve` was asked for.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub model: PathBuf,
    pub host: String,
    pub port: u16,
    pub dtype: DType,
    /// The GPU (true) or the CPU reference path.
    pub gpu: bool,
    pub max_batch_tokens: usize,
    pub max_client_batch_size: usize,
    pub max_concurrent_requests: usize,
    /// Largest request body in bytes.
    pub payload_limit: usize,
}

struct AppState {
    queue: Mutex<Option<mpsc::Sender<Job>>>,
    tokenizer: SentenceTokenizer,
    config: BertConfig,
    options: ServeOptions,
    permits: Semaphore,
    metrics: Arc<Metrics>,
    info: Value,
    reranker: bool,
    model_id: String,
}

type Shared = Arc<AppState>;

/// An error response in TEI's shape.
fn error(status: StatusCode, kind: &str, message: impl Into<String>) -> Response {
    let body = json!({ "error": message.into(), "error_type": kind });
    (status, Json(body)).into_response()
}

fn validation(message: impl Into<String>) -> Response {
    error(StatusCode::UNPROCESSABLE_ENTITY, "Validation", message)
}

/// A handler's answer: the response, or an error response in TEI's shape.
type Reply = std::result::Result<Response, Response>;

/// The JSON body of a request; malformed or oversized bodies become TEI-shaped 422 / 413
/// responses before the handler runs.
struct Body(Value);

impl<S: Send + Sync> FromRequest<S> for Body {
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> std::result::Result<Self, Response> {
        Json::<Value>::from_request(req, state)
            .await
            .map(|Json(v)| Body(v))
            .map_err(rejection)
    }
}

fn rejection(r: JsonRejection) -> Response {
    if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return error(StatusCode::PAYLOAD_TOO_LARGE, "Validation", r.body_text());
    }
    validation(r.body_text())
}

/// Loads the model and serves until SIGINT/SIGTERM; `on_listen` gets the bound address.
pub fn serve(options: ServeOptions, on_listen: impl FnOnce(SocketAddr)) -> Result<()> {
    let config = bert::load_config(&options.model)?;
    let weights = bert::load_weights(&options.model, &config)?;
    let tokenizer = SentenceTokenizer::from_dir(&options.model, &config, None)?;
    let reranker = weights.classifier.is_some();
    let (forward, adapter): (batcher::Forward, String) = if options.gpu {
        let ctx = pollster::block_on(crate::Context::new(crate::ContextOptions::from_env()?))?;
        let adapter = ctx.capabilities().to_string();
        let model = Bert::with_dtype(&ctx, config.clone(), &weights, options.dtype)?;
        (
            Box::new(move |input| model.forward_blocking(&ctx, input, false)),
            adapter,
        )
    } else {
        let (config, dtype) = (config.clone(), options.dtype);
        (
            Box::new(move |input| bert::forward_cpu_as(&config, &weights, input, false, dtype)),
            "CPU reference path".into(),
        )
    };
    let model_id = options
        .model
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| options.model.display().to_string());
    let info = json!({
        "model_id": model_id,
        "model_type": if reranker {
            json!({ "reranker": { "model_type": config.model_type } })
        } else {
            json!({ "embedding": { "model_type": config.model_type } })
        },
        "model_dtype": options.dtype.name().0,
        "adapter": adapter,
        "max_concurrent_requests": options.max_concurrent_requests,
        "max_input_length": tokenizer.max_length,
        "max_batch_tokens": options.max_batch_tokens,
        "max_client_batch_size": options.max_client_batch_size,
        "payload_limit": options.payload_limit,
        "version": env!("CARGO_PKG_VERSION"),
    });
    let metrics = Arc::new(Metrics::default());
    let (sender, queue) = mpsc::channel::<Job>();
    let batch_tokens = options.max_batch_tokens;
    let batcher_metrics = metrics.clone();
    let worker = std::thread::Builder::new()
        .name("backbone-batcher".into())
        .spawn(move || batcher::run(queue, forward, batch_tokens, batcher_metrics))
        .map_err(|e| Error::Io {
            path: "(batcher thread)".into(),
            source: e,
        })?;
    let state: Shared = Arc::new(AppState {
        queue: Mutex::new(Some(sender)),
        tokenizer,
        config,
        permits: Semaphore::new(options.max_concurrent_requests.max(1)),
        metrics,
        info,
        reranker,
        model_id,
        options: options.clone(),
    });
    let app = Router::new()
        .route("/embed", post(embed))
        .route("/v1/embeddings", post(openai_embeddings))
        .route("/rerank", post(rerank))
        .route("/tokenize", post(tokenize))
        .route("/info", get(info_route))
        .route("/health", get(|| async { StatusCode::OK }))
        .route("/metrics", get(metrics_route))
        .layer(DefaultBodyLimit::max(options.payload_limit))
        .with_state(state.clone());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Io {
            path: "(tokio runtime)".into(),
            source: e,
        })?;
    let addr = format!("{}:{}", options.host, options.port);
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|e| Error::Io {
                path: addr.clone(),
                source: e,
            })?;
        let bound = listener.local_addr().map_err(|e| Error::Io {
            path: addr,
            source: e,
        })?;
        on_listen(bound);
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown_signal())
            .await
            .map_err(|e| Error::Io {
                path: bound.to_string(),
                source: e,
            })
    })?;
    // Stop queueing; the batcher finishes what is queued, then ends.
    state.queue.lock().map(|mut q| q.take()).ok();
    drop(state);
    worker.join().ok();
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        tokio::signal::ctrl_c().await.ok();
    };
    #[cfg(unix)]
    let terminate = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}

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

    /// Queues rows and waits for their outputs (500 when the batch failed).
    async fn run(
        &self,
        rows: Vec<Row>,
        prompt_length: usize,
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
        self.metrics.request(out.is_ok(), tokens);
        out
    }

    /// Tokenized texts as unpadded rows, with the prompt's length.
    fn rows_of(
        &self,
        texts: &[String],
        prompt_name: Option<&str>,
    ) -> std::result::Result<(Vec<Row>, usize), Response> {
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let input = self
            .tokenizer
            .encode(&refs, None, prompt_name)
            .map_err(|e| validation(e.to_string()))?;
        Ok((split_rows(&input), input.prompt_length))
    }
}

fn split_rows(input: &crate::models::bert::BertInput) -> Vec<Row> {
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

/// `v` L2-normalised, by the twin the CPU path uses (one row).
fn l2(v: Vec<f32>) -> Vec<f32> {
    let n = v.len();
    let Ok(x) = crate::reference::HostTensor::new(&[1, n], v) else {
        return Vec::new();
    };
    let mut y = crate::reference::HostTensor::zeros(&[1, n]);
    match crate::reference::l2_normalize(&x, &mut y) {
        Ok(()) => y.data,
        Err(_) => x.data,
    }
}
/// The embedding a request asked for: L2-normalised or as the model's head left it before
/// its Normalize.
fn embedding_of(row: RowOutput, normalize: bool) -> Vec<f32> {
    match (normalize, row.unnormalized) {
        (true, Some(_)) => row.embedding,
        (true, None) => l2(row.embedding),
        (false, Some(raw)) => raw,
        (false, None) => row.embedding,
    }
}

async fn embed(State(s): State<Shared>, Body(body): Body) -> Reply {
    let texts = texts_of(body.get("inputs"), "inputs")?;
    let normalize = bool_of(&body, "normalize", true)?;
    bool_of(&body, "truncate", false)?;
    let prompt = match body.get("prompt_name") {
        None | Some(Value::Null) => None,
        Some(Value::String(p)) => Some(p.clone()),
        Some(_) => return Err(validation("`prompt_name` must be a string")),
    };
    let _permit = s.admit(texts.len())?;
    let (rows, prompt_length) = s.rows_of(&texts, prompt.as_deref())?;
    let out = s.run(rows, prompt_length).await?;
    let rows: Vec<Vec<f32>> = out
        .into_iter()
        .map(|r| embedding_of(r, normalize))
        .collect();
    Ok(Json(rows).into_response())
}

async fn openai_embeddings(State(s): State<Shared>, Body(body): Body) -> Reply {
    let base64 = match body.get("encoding_format").and_then(Value::as_str) {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(validation(format!(
                "`encoding_format` {other:?} is not float or base64"
            )));
        }
    };
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
            s.rows_of(&texts, None)?
        }
    };
    let _permit = s.admit(rows.len())?;
    let tokens: usize = rows.iter().map(|r| r.ids.len()).sum();
    let out = s.run(rows, prompt_length).await?;
    let data: Vec<OpenAiEmbedding> = out
        .into_iter()
        .enumerate()
        .map(|(index, r)| {
            let e = r.embedding;
            let embedding = if base64 {
                let bytes: Vec<u8> = e.iter().flat_map(|v| v.to_le_bytes()).collect();
                EmbeddingData::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                EmbeddingData::Float(e)
            };
            OpenAiEmbedding {
                object: "embedding",
                embedding,
                index,
            }
        })
        .collect();
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or(&s.model_id)
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
    if ids.is_empty() || ids.len() > s.tokenizer.max_length {
        return Err(validation(format!(
            "a token array must hold 1 to {} tokens, not {}",
            s.tokenizer.max_length,
            ids.len()
        )));
    }
    if let Some(bad) = ids.iter().find(|&&i| i as usize >= s.config.vocab_size) {
        return Err(validation(format!(
            "token id {bad} is outside the vocabulary of {}",
            s.config.vocab_size
        )));
    }
    Ok(Row {
        types: vec![0; ids.len()],
        ids,
    })
}

async fn rerank(State(s): State<Shared>, Body(body): Body) -> Reply {
    if !s.reranker {
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
    bool_of(&body, "truncate", false)?;
    let _permit = s.admit(texts.len())?;
    let pairs: Vec<(&str, &str)> = texts.iter().map(|t| (query, t.as_str())).collect();
    let input = s
        .tokenizer
        .tokenizer
        .encode_pairs(&pairs)
        .map_err(|e| validation(e.to_string()))?;
    let out = s.run(split_rows(&input), 0).await?;
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
                bert::cross_encoder_score(logit)
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

async fn tokenize(State(s): State<Shared>, Body(body): Body) -> Reply {
    let texts = texts_of(body.get("inputs"), "inputs")?;
    let _permit = s.admit(texts.len())?;
    let out: Vec<Value> = texts
        .iter()
        .map(|t| {
            s.tokenizer
                .tokenizer
                .tokens(t)
                .map(|toks| json!(toks))
                .map_err(|e| validation(e.to_string()))
        })
        .collect::<std::result::Result<_, _>>()?;
    Ok(Json(out).into_response())
}

async fn info_route(State(s): State<Shared>) -> Response {
    Json(s.info.clone()).into_response()
}

async fn metrics_route(State(s): State<Shared>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        s.metrics.render(),
    )
        .into_response()
}
