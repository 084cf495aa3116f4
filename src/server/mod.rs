//! `backbone serve`: a drop-in for text-embeddings-inference (TEI) on axum + tokio. TEI's
//! routes (`/embed`, `/embed_all`, `/embed_sparse`, `/predict`, `/rerank`, `/similarity`,
//! `/tokenize`, `/decode`, `/info`, `/health`, `/ping`, `/metrics`, `POST /` and
//! `/invocations`) and OpenAI's (`/v1/embeddings`, `/embeddings`), with TEI's request fields,
//! response shapes, error types and statuses (see [`reply`]).
//!
//! Every bound is checked before the work it bounds: the body size, then the batch size and
//! the concurrency limit, then TEI's character cap, then the token length. Tokenizing runs on
//! a bounded blocking pool (`tokenization_workers`), never on the async workers, so `/health`
//! answers at once however large the inputs being tokenized. One thread owns the model and
//! runs the queued rows in batches of at most `max_batch_tokens` ([`batcher`]).
//!
//! Connections must send their request head and body within `read_timeout`. SIGINT/SIGTERM
//! stop accepting, close idle connections, answer what is in flight and queued, and exit within
//! `graceful_timeout` whatever the clients do ([`listen`]).

// Handlers return early error answers with `?`.
#![allow(clippy::result_large_err)]

mod batcher;
mod classify;
mod inputs;
mod listen;
mod metrics;
mod reply;
mod routes;
mod state;
#[cfg(test)]
mod tests;
mod tokens;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use tokio::sync::Semaphore;

use crate::encoder::{Device, EncoderOptions, TextEncoder};
use crate::error::{Error, Result};
use crate::limits;
use crate::tensor::DType;
use batcher::Job;
use metrics::Metrics;
use state::AppState;

/// What `backbone serve` was asked for. [`ServeOptions::new`] gives TEI's defaults.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub model: PathBuf,
    pub host: String,
    pub port: u16,
    pub dtype: DType,
    /// Where the model runs: [`Device::Auto`] (default), the GPU, the fast CPU path, or the
    /// twins.
    pub device: Device,
    /// The name `/info` and `/v1/embeddings` answer with (default: the folder's name).
    pub served_model_name: Option<String>,
    /// Most tokens (padded) in one batched forward; also the longest input when it is below
    /// the model's length (with `auto_truncate`; refused at start-up without it, as in TEI).
    pub max_batch_tokens: usize,
    pub max_client_batch_size: usize,
    pub max_concurrent_requests: usize,
    /// Largest request body in bytes.
    pub payload_limit: usize,
    /// Threads that tokenize requests (off the async workers).
    pub tokenization_workers: usize,
    /// Truncate inputs longer than the model takes when a request does not say (`truncate`).
    pub auto_truncate: bool,
    /// When set, every route but `/health`, `/ping`, `GET /` and `/metrics` needs
    /// `Authorization: Bearer KEY` (401 otherwise).
    pub api_key: Option<ApiKey>,
    /// Origins allowed by CORS (default: any, as TEI).
    pub cors_allow_origin: Option<Vec<String>>,
    /// How long a connection may take to send a request head, and then its body.
    pub read_timeout: Duration,
    /// After SIGINT/SIGTERM, how long in-flight requests may take before the server exits.
    pub graceful_timeout: Duration,
}

impl ServeOptions {
    /// TEI's defaults for `model`, on the GPU, listening on 127.0.0.1:8080.
    pub fn new(model: impl Into<PathBuf>) -> Self {
        Self {
            model: model.into(),
            host: "127.0.0.1".into(),
            port: 8080,
            dtype: DType::F32,
            device: Device::Auto,
            served_model_name: None,
            max_batch_tokens: 16384,
            max_client_batch_size: 32,
            max_concurrent_requests: 512,
            payload_limit: 2_000_000,
            tokenization_workers: default_tokenization_workers(),
            auto_truncate: false,
            api_key: None,
            cors_allow_origin: None,
            read_timeout: Duration::from_secs(30),
            graceful_timeout: Duration::from_secs(30),
        }
    }

    /// Refuses limits that cannot work (zero, or past what the server can hold), naming the
    /// option, rather than turning them into something else.
    pub fn validate(&self) -> Result<()> {
        let counts = [
            (
                "--max-batch-tokens",
                self.max_batch_tokens,
                limits::MAX_BATCH_TOKENS,
            ),
            (
                "--max-client-batch-size",
                self.max_client_batch_size,
                limits::MAX_BATCH_TOKENS,
            ),
            (
                "--max-concurrent-requests",
                self.max_concurrent_requests,
                Semaphore::MAX_PERMITS,
            ),
            ("--payload-limit", self.payload_limit, usize::MAX),
            ("--tokenization-workers", self.tokenization_workers, 1024),
        ];
        for (name, value, most) in counts {
            if value == 0 || value > most {
                return Err(Error::InvalidOption {
                    name,
                    value: value.to_string(),
                    expected: "a whole number from 1 up to the server's limit",
                });
            }
        }
        for (name, value) in [
            ("--read-timeout", self.read_timeout),
            ("--graceful-timeout", self.graceful_timeout),
        ] {
            if value.is_zero() {
                return Err(Error::InvalidOption {
                    name,
                    value: "0".into(),
                    expected: "a positive number of seconds",
                });
            }
        }
        Ok(())
    }
}

/// TEI's default: one thread per core but one, 1 to 64.
pub fn default_tokenization_workers() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get().saturating_sub(1))
        .clamp(1, 64)
}

/// An API key; `Debug` does not print it (options are logged).
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(pub String);

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(..)")
    }
}

/// The model as the server runs it: the encoder (tokenizing, padding, `/info`) and the
/// forward the batcher calls (the encoder's; tests put a failing one in its place).
pub(crate) struct Loaded {
    model: Arc<TextEncoder>,
    forward: batcher::Forward,
}

/// Opens the model folder through [`TextEncoder`], on the device asked for. A
/// model longer than `max_batch_tokens` is refused, or with `auto_truncate` truncated at
/// `max_batch_tokens`, as TEI decides it.
pub(crate) fn load(options: &ServeOptions) -> Result<Loaded> {
    options.validate()?;
    let device = options.device.clone();
    let open = |max_length: Option<usize>| {
        let mut encoder = EncoderOptions::default()
            .device(device.clone())
            .dtype(options.dtype);
        encoder.max_length = max_length;
        TextEncoder::open(&options.model, &encoder)
    };
    let mut model = open(None)?;
    let longest = model.info().max_length;
    if longest > options.max_batch_tokens {
        if !options.auto_truncate {
            return Err(Error::InvalidOption {
                name: "--max-batch-tokens",
                value: options.max_batch_tokens.to_string(),
                expected: "at least the model's maximum input length (or --auto-truncate, \
                           which truncates inputs at --max-batch-tokens)",
            });
        }
        log::warn!(
            "the model takes {longest} tokens, more than --max-batch-tokens {}: inputs are \
             truncated at {} tokens",
            options.max_batch_tokens,
            options.max_batch_tokens
        );
        model = open(Some(options.max_batch_tokens))?;
    }
    let model = Arc::new(model);
    let runs = model.clone();
    let forward: batcher::Forward = Box::new(move |input, want| runs.forward_blocking(input, want));
    Ok(Loaded { model, forward })
}

/// Loads the model and serves until SIGINT/SIGTERM; `on_listen` gets the bound address.
pub fn serve(options: ServeOptions, on_listen: impl FnOnce(SocketAddr)) -> Result<()> {
    let loaded = load(&options)?;
    serve_with(options, loaded, listen::shutdown_signal(), on_listen)
}

fn io_error(path: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { path, source }
}

/// Serves `loaded` until `shutdown` completes, then answers what is in flight and queued
/// (within the graceful timeout).
pub(crate) fn serve_with(
    options: ServeOptions,
    loaded: Loaded,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    on_listen: impl FnOnce(SocketAddr),
) -> Result<()> {
    options.validate()?;
    let Loaded { model, forward } = loaded;
    let metrics = Arc::new(Metrics::default());
    let (sender, queue) = mpsc::channel::<Job>();
    let healthy = Arc::new(AtomicBool::new(true));
    let worker = {
        let (model, metrics, healthy) = (model.clone(), metrics.clone(), healthy.clone());
        let batch_tokens = options.max_batch_tokens;
        std::thread::Builder::new()
            .name("backbone-batcher".into())
            .spawn(move || batcher::run(queue, &model, forward, batch_tokens, metrics, healthy))
            .map_err(io_error("(batcher thread)"))?
    };
    let state = Arc::new(AppState::new(
        options.clone(),
        model,
        Mutex::new(Some(sender)),
        metrics,
        healthy,
    ));
    let app = router(&options, state.clone());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(io_error("(tokio runtime)"))?;
    let addr = format!("{}:{}", options.host, options.port);
    let served = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(io_error(addr.clone()))?;
        let bound = listener.local_addr().map_err(io_error(addr.clone()))?;
        on_listen(bound);
        listen::serve_until(listener, app, shutdown, &options).await;
        Ok::<(), Error>(())
    });
    // Connections still open past the graceful timeout are dropped; a tokenization still
    // running is left to finish on its own.
    runtime.shutdown_timeout(Duration::from_secs(1));
    // Stop queueing; the batcher finishes what is queued, then ends.
    state.close_queue();
    drop(state);
    worker.join().ok();
    served
}

/// TEI's routes; those that cost nothing (`/health`, `/ping`, `GET /`, `/metrics`) are public,
/// the rest need the API key when there is one ([`state::authorize`]).
fn router(options: &ServeOptions, state: Arc<AppState>) -> Router {
    Router::new()
        .route("/embed", post(routes::embed))
        .route("/embed_all", post(routes::embed_all))
        .route("/embed_sparse", post(routes::embed_sparse))
        .route("/similarity", post(routes::similarity))
        .route("/v1/embeddings", post(routes::openai_embeddings))
        .route("/embeddings", post(routes::openai_embeddings))
        .route("/predict", post(classify::predict))
        .route("/rerank", post(classify::rerank))
        .route("/tokenize", post(tokens::tokenize))
        .route("/decode", post(tokens::decode))
        .route("/invocations", post(routes::invocations))
        .route("/", get(routes::health).post(routes::invocations))
        .route("/info", get(routes::info))
        .route("/health", get(routes::health))
        .route("/ping", get(routes::health))
        .route("/metrics", get(routes::metrics))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            state::authorize,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            state::count_requests,
        ))
        .layer(DefaultBodyLimit::max(options.payload_limit))
        .layer(listen::cors(options))
        .with_state(state)
}
