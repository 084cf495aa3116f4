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
mod routes;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, mpsc};

use axum::Json;
use axum::Router;
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use crate::encoder::{Device, EncoderOptions, TextEncoder, TextKind, Want};
use crate::error::{Error, Result};
use crate::tensor::DType;
use batcher::Job;
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
    /// Truncate inputs longer than the model takes when a request does not say (`truncate`).
    pub auto_truncate: bool,
    /// When set, every route but `/health` needs `Authorization: Bearer KEY` (401 otherwise).
    pub api_key: Option<ApiKey>,
}

/// An API key; `Debug` does not print it (options are logged).
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(pub String);

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(..)")
    }
}

/// With an API key, requests other than `/health` must carry it as a bearer token: 401 in
/// TEI's error shape otherwise. The comparison takes the same time wherever the bytes differ.
async fn authorize(State(s): State<Shared>, req: Request, next: Next) -> Response {
    let Some(ApiKey(key)) = &s.options.api_key else {
        return next.run(req).await;
    };
    let given = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let same = |a: &[u8], b: &[u8]| {
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    };
    match given {
        _ if req.uri().path() == "/health" => next.run(req).await,
        Some(token) if same(token.as_bytes(), key.as_bytes()) => next.run(req).await,
        _ => error(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "this server needs its API key: Authorization: Bearer KEY",
        ),
    }
}

struct AppState {
    queue: Mutex<Option<mpsc::Sender<Job>>>,
    /// The model: tokenizing here, forwards on the batcher's thread.
    model: Arc<TextEncoder>,
    options: ServeOptions,
    permits: Semaphore,
    metrics: Arc<Metrics>,
    /// False once the device is lost (`/health` answers 503).
    healthy: Arc<AtomicBool>,
    info: Value,
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

/// A request the tokenizer refused: 413 for an input too long to take without truncation
/// (as TEI answers it), 422 otherwise.
fn input_error(e: Error) -> Response {
    match e {
        Error::TooLong { .. } => error(StatusCode::PAYLOAD_TOO_LARGE, "Validation", e.to_string()),
        e => validation(e.to_string()),
    }
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

/// The model as the server runs it: the encoder (tokenizing, padding, `/info`) and the
/// forward the batcher calls (the encoder's, reading back no hidden states; tests put a
/// failing one in its place).
pub(crate) struct Loaded {
    model: Arc<TextEncoder>,
    forward: batcher::Forward,
}

/// Opens the model folder through [`TextEncoder`], on the GPU or the CPU reference path.
pub(crate) fn load(options: &ServeOptions) -> Result<Loaded> {
    let device = if options.gpu {
        Device::Gpu
    } else {
        Device::Cpu
    };
    let model = Arc::new(TextEncoder::open(
        &options.model,
        &EncoderOptions::default()
            .device(device)
            .dtype(options.dtype),
    )?);
    let runs = model.clone();
    // Routes return embeddings and scores: the [B, T, C] hidden states stay on the device.
    let forward: batcher::Forward =
        Box::new(move |input| runs.forward_blocking(input, Want::default()));
    Ok(Loaded { model, forward })
}

/// Loads the model and serves until SIGINT/SIGTERM; `on_listen` gets the bound address.
pub fn serve(options: ServeOptions, on_listen: impl FnOnce(SocketAddr)) -> Result<()> {
    let loaded = load(&options)?;
    serve_with(options, loaded, shutdown_signal(), on_listen)
}

/// Serves `loaded` until `shutdown` completes, then finishes what is queued.
pub(crate) fn serve_with(
    options: ServeOptions,
    loaded: Loaded,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    on_listen: impl FnOnce(SocketAddr),
) -> Result<()> {
    let Loaded { model, forward } = loaded;
    let about = model.info();
    let kind = match about.kind {
        TextKind::Embedding => "embedding",
        TextKind::Reranker => "reranker",
        TextKind::Classifier => "classifier",
    };
    let info = json!({
        "model_id": about.model_id,
        "model_type": { kind: { "model_type": about.model_type } },
        "model_dtype": about.dtype,
        "adapter": about.device,
        "max_concurrent_requests": options.max_concurrent_requests,
        "max_input_length": about.max_length,
        "max_batch_tokens": options.max_batch_tokens,
        "max_client_batch_size": options.max_client_batch_size,
        "payload_limit": options.payload_limit,
        "auto_truncate": options.auto_truncate,
        "version": env!("CARGO_PKG_VERSION"),
    });
    let metrics = Arc::new(Metrics::default());
    let (sender, queue) = mpsc::channel::<Job>();
    let batch_tokens = options.max_batch_tokens;
    let batcher_metrics = metrics.clone();
    let healthy = Arc::new(AtomicBool::new(true));
    let batcher_healthy = healthy.clone();
    let batcher_model = model.clone();
    let worker = std::thread::Builder::new()
        .name("backbone-batcher".into())
        .spawn(move || {
            batcher::run(
                queue,
                &batcher_model,
                forward,
                batch_tokens,
                batcher_metrics,
                batcher_healthy,
            )
        })
        .map_err(|e| Error::Io {
            path: "(batcher thread)".into(),
            source: e,
        })?;
    let state: Shared = Arc::new(AppState {
        queue: Mutex::new(Some(sender)),
        model,
        permits: Semaphore::new(options.max_concurrent_requests.max(1)),
        metrics,
        healthy,
        info,
        options: options.clone(),
    });
    let app = Router::new()
        .route("/embed", post(routes::embed))
        .route("/v1/embeddings", post(routes::openai_embeddings))
        .route("/rerank", post(routes::rerank))
        .route("/tokenize", post(routes::tokenize))
        .route("/info", get(routes::info_route))
        .route("/health", get(routes::health))
        .route("/metrics", get(routes::metrics_route))
        .layer(DefaultBodyLimit::max(options.payload_limit))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authorize,
        ))
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
            .with_graceful_shutdown(shutdown)
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
