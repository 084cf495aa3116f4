//! What every route shares: admission (batch size, then the concurrency limit), tokenizing on
//! the bounded blocking pool, queueing rows for the batcher, the JSON body (size and read
//! time bounded), the API key, and the request counters.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Instant;

use axum::Json;
use axum::extract::{FromRequest, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tokio::sync::{Semaphore, SemaphorePermit, oneshot};

use super::batcher::{Job, Row, RowOutput};
use super::inputs::{CHARS_PER_TOKEN_CAP, Input, cap_chars};
use super::metrics::Metrics;
use super::reply::{ApiError, Kind, backend, validation};
use super::{ApiKey, ServeOptions};
use crate::encoder::{TextEncoder, Truncate};

pub struct AppState {
    queue: Mutex<Option<mpsc::Sender<Job>>>,
    /// The model: tokenizing on the blocking pool, forwards on the batcher's thread.
    pub model: Arc<TextEncoder>,
    pub options: ServeOptions,
    permits: Semaphore,
    /// Tokenizations running at once (`tokenization_workers`).
    tokenizers: Semaphore,
    pub metrics: Arc<Metrics>,
    /// False once the device is lost (`/health` answers 503).
    pub healthy: Arc<AtomicBool>,
    /// The name `/info` and `/v1/embeddings` answer with.
    pub served_model_name: String,
}

pub type Shared = Arc<AppState>;

impl AppState {
    pub fn new(
        options: ServeOptions,
        model: Arc<TextEncoder>,
        queue: Mutex<Option<mpsc::Sender<Job>>>,
        metrics: Arc<Metrics>,
        healthy: Arc<AtomicBool>,
    ) -> Self {
        let served_model_name = options
            .served_model_name
            .clone()
            .unwrap_or_else(|| model.info().model_id.clone());
        Self {
            queue,
            permits: Semaphore::new(options.max_concurrent_requests),
            tokenizers: Semaphore::new(options.tokenization_workers),
            model,
            metrics,
            healthy,
            served_model_name,
            options,
        }
    }

    /// Stops queueing: the batcher ends once the queue is empty.
    pub fn close_queue(&self) {
        self.queue.lock().map(|mut q| q.take()).ok();
    }

    /// The longest input in tokens.
    pub fn max_input_length(&self) -> usize {
        self.model.info().max_length
    }

    /// Admits a request of `count` inputs: 422 past the client batch size (TEI's Validation),
    /// then 429 past the concurrency limit. Both come before any tokenizing.
    pub fn admit(&self, count: usize) -> Result<SemaphorePermit<'_>, ApiError> {
        self.check_batch(count)?;
        self.permits.try_acquire().map_err(|_| {
            ApiError::new(
                Kind::Overloaded,
                format!(
                    "Model is overloaded: the server is handling its maximum of {} concurrent \
                     requests",
                    self.options.max_concurrent_requests
                ),
            )
        })
    }

    /// 422 past the client batch size (the routes that only tokenize check this alone).
    pub fn check_batch(&self, count: usize) -> Result<(), ApiError> {
        if count > self.options.max_client_batch_size {
            return Err(validation(format!(
                "batch size {count} > maximum allowed batch size {}",
                self.options.max_client_batch_size
            )));
        }
        Ok(())
    }

    /// Runs `work` (tokenizing) on the blocking pool, at most `tokenization_workers` at once,
    /// so the async workers keep answering `/health` and small requests meanwhile.
    pub async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&TextEncoder) -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let _turn = self
            .tokenizers
            .acquire()
            .await
            .map_err(|_| ApiError::new(Kind::Unhealthy, "the server is shutting down"))?;
        let model = self.model.clone();
        tokio::task::spawn_blocking(move || work(&model))
            .await
            .map_err(|e| backend(format!("tokenizing failed: {e}")))?
    }

    /// Texts and token-id inputs as unpadded rows, in order, with the prompt's length: texts
    /// capped at TEI's character limit, then tokenized with the prompt (`prompt_name`, else
    /// the folder's default) and truncated as asked; id arrays taken as given.
    pub async fn rows(
        &self,
        inputs: Vec<Input>,
        prompt_name: Option<String>,
        truncate: Truncate,
    ) -> Result<(Vec<Row>, usize), ApiError> {
        let limit = self.max_input_length() * CHARS_PER_TOKEN_CAP;
        let (vocab, max_length) = (self.model.info().vocab_size, self.max_input_length());
        self.blocking(move |model| {
            let mut texts = Vec::new();
            for input in &inputs {
                if let Input::Text(t) = input {
                    let mut t = t.clone();
                    cap_chars(&mut t, limit, truncate)?;
                    texts.push(t);
                }
            }
            let (mut tokenized, prompt_length): (Vec<Row>, usize) = match texts.is_empty() {
                true => (Vec::new(), 0),
                false => {
                    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
                    let input = model.tokenize(&refs, None, prompt_name.as_deref(), truncate)?;
                    (TextEncoder::rows(&input), input.prompt_length)
                }
            };
            let has_ids = inputs.iter().any(|i| matches!(i, Input::Ids(_)));
            if has_ids && prompt_length > 0 {
                return Err(validation(
                    "token-id inputs cannot be sent with texts that take a prompt",
                ));
            }
            tokenized.reverse();
            let rows = inputs
                .into_iter()
                .map(|input| match input {
                    Input::Text(_) => tokenized
                        .pop()
                        .ok_or_else(|| backend("the tokenizer returned too few rows")),
                    Input::Ids(ids) => id_row(ids, vocab, max_length, truncate),
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok((rows, prompt_length))
        })
        .await
    }

    /// Queues rows and waits for their outputs (424 when the batch failed).
    pub async fn run(
        &self,
        rows: Vec<Row>,
        prompt_length: usize,
        want_tokens: bool,
    ) -> Result<Vec<RowOutput>, ApiError> {
        let tokens: usize = rows.iter().map(|r| r.ids.len()).sum();
        let (reply, answer) = oneshot::channel();
        let job = Job {
            rows,
            prompt_length,
            want_tokens,
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
        match result {
            Some(Ok(rows)) => {
                self.metrics.tokens(tokens);
                Ok(rows)
            }
            Some(Err(e)) => Err(backend(e.to_string())),
            None => Err(ApiError::new(
                Kind::Unhealthy,
                "the server is shutting down",
            )),
        }
    }
}

/// A token-id input: non-empty, inside the vocabulary, and no longer than the model takes
/// (else cut as asked, or 422).
fn id_row(
    mut ids: Vec<u32>,
    vocab: usize,
    max_length: usize,
    truncate: Truncate,
) -> Result<Row, ApiError> {
    if ids.is_empty() {
        return Err(validation("an input holds an empty token-id array"));
    }
    if let Some(bad) = ids.iter().find(|&&i| i as usize >= vocab) {
        return Err(validation(format!(
            "token id {bad} is outside the vocabulary of {vocab}"
        )));
    }
    if ids.len() > max_length {
        match truncate {
            Truncate::No => {
                return Err(validation(format!(
                    "`inputs` must have less than {max_length} tokens. Given: {}",
                    ids.len()
                )));
            }
            Truncate::Right => ids.truncate(max_length),
            Truncate::Left => {
                ids.drain(..ids.len() - max_length);
            }
        }
    }
    Ok(Row {
        types: vec![0; ids.len()],
        ids,
    })
}

/// The JSON body of a request: over `--payload-limit` 413, not read within `--read-timeout`
/// 408, malformed 422, all in TEI's error shape (the handler reshapes them for OpenAI).
pub struct Body(pub Value);

impl FromRequest<Shared> for Body {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &Shared) -> Result<Self, ApiError> {
        let read = Json::<Value>::from_request(req, state);
        match tokio::time::timeout(state.options.read_timeout, read).await {
            Err(_) => Err(ApiError::new(
                Kind::Timeout,
                format!(
                    "the request body did not arrive within {} s",
                    state.options.read_timeout.as_secs_f64()
                ),
            )),
            Ok(Ok(Json(v))) => Ok(Body(with_parameters(v))),
            Ok(Err(r)) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(ApiError::new(
                Kind::PayloadTooLarge,
                format!(
                    "the request body is larger than the payload limit of {} bytes",
                    state.options.payload_limit
                ),
            )),
            Ok(Err(r)) => Err(validation(r.body_text())),
        }
    }
}

/// Fields sent under `parameters` (as Hugging Face's `InferenceClient` sends `normalize`,
/// `truncate`, `prompt_name`, ...) are read as if sent beside `inputs`; a field sent at the top
/// level wins.
fn with_parameters(mut body: Value) -> Value {
    let Some(Value::Object(parameters)) = body.get("parameters").cloned() else {
        return body;
    };
    if let Value::Object(top) = &mut body {
        for (key, value) in parameters {
            top.entry(key).or_insert(value);
        }
    }
    body
}

/// With an API key, the guarded routes need it as a bearer token: 401 otherwise. The
/// comparison takes the same time wherever the bytes differ.
pub async fn authorize(State(s): State<Shared>, req: Request, next: Next) -> Response {
    let public = req.method() == Method::GET
        && matches!(req.uri().path(), "/" | "/health" | "/ping" | "/metrics");
    let Some(ApiKey(key)) = &s.options.api_key else {
        return next.run(req).await;
    };
    if public {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let same = |a: &[u8], b: &[u8]| {
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    };
    match given {
        Some(token) if same(token.as_bytes(), key.as_bytes()) => next.run(req).await,
        _ => ApiError::new(
            Kind::Unauthorized,
            "this server needs its API key: Authorization: Bearer KEY",
        )
        .into_response(),
    }
}

/// Counts every request to a POST route (`te_request_count`), each answered with an error
/// (`te_request_failure`: refused by a bound, malformed, failed), and its duration.
pub async fn count_requests(State(s): State<Shared>, req: Request, next: Next) -> Response {
    if req.method() != Method::POST {
        return next.run(req).await;
    }
    let arrived = Instant::now();
    let response = next.run(req).await;
    let failed = response.status().is_client_error() || response.status().is_server_error();
    s.metrics.request(!failed, arrived.elapsed());
    response
}

/// True while the model can serve.
pub fn is_healthy(s: &AppState) -> bool {
    s.healthy.load(Ordering::Acquire)
}
