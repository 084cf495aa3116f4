//! Dynamic batching: requests queue; one thread owns the model and forms batches of at most
//! `max_batch_tokens` (padded to the longest sequence), runs one forward per batch while the
//! next batch forms in the queue, and hands each request its rows.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::metrics::Metrics;
pub use crate::encoder::Row;
use crate::encoder::TextEncoder;
use crate::error::{Error, Result};
use crate::models::text::{TextInput, TextOutput};

/// What a row gives back.
#[derive(Debug, Clone, Default)]
pub struct RowOutput {
    pub embedding: Vec<f32>,
    /// Before the head's Normalize, when it has one.
    pub unnormalized: Option<Vec<f32>>,
    pub logits: Option<Vec<f32>>,
}

/// A request's rows, the prompt length its pooling leaves out, and where to answer.
pub struct Job {
    pub rows: Vec<Row>,
    pub prompt_length: usize,
    pub queued: Instant,
    pub reply: oneshot::Sender<Result<Vec<RowOutput>>>,
}

/// Runs forwards (GPU or CPU path) for the batcher.
pub type Forward = Box<dyn Fn(&TextInput) -> Result<TextOutput> + Send>;

/// The batcher loop: returns when every sender is gone and the queue is empty (graceful
/// shutdown finishes queued requests).
pub fn run(
    queue: Receiver<Job>,
    model: &TextEncoder,
    forward: Forward,
    max_batch_tokens: usize,
    metrics: Arc<Metrics>,
    healthy: Arc<AtomicBool>,
) {
    let mut pending: Option<Job> = None;
    loop {
        let first = match pending.take() {
            Some(job) => job,
            None => match queue.recv() {
                Ok(job) => job,
                Err(_) => return,
            },
        };
        let mut batch = vec![first];
        let (mut rows, mut longest) = (batch[0].rows.len(), max_len(&batch[0]));
        // Take what is queued (briefly waiting for more) while it fits the token budget.
        while let Ok(job) = queue.recv_timeout(Duration::from_millis(1)) {
            let l = longest.max(max_len(&job));
            let fits = (rows + job.rows.len()) * l <= max_batch_tokens
                && job.prompt_length == batch[0].prompt_length;
            if !fits {
                pending = Some(job);
                break;
            }
            rows += job.rows.len();
            longest = l;
            batch.push(job);
        }
        process(batch, rows, longest, model, &forward, &metrics, &healthy);
    }
}

fn max_len(job: &Job) -> usize {
    job.rows
        .iter()
        .map(|r| r.ids.len())
        .max()
        .unwrap_or(1)
        .max(1)
}

fn process(
    batch: Vec<Job>,
    rows: usize,
    seq: usize,
    model: &TextEncoder,
    forward: &Forward,
    metrics: &Metrics,
    healthy: &AtomicBool,
) {
    let start = Instant::now();
    for job in &batch {
        metrics.queue_time(start.duration_since(job.queued));
    }
    // Padded once, with the model's pad id.
    let all: Vec<&Row> = batch.iter().flat_map(|j| &j.rows).collect();
    let result = model.batch(&all, batch[0].prompt_length).and_then(|input| {
        // A panic in a forward (a bug) fails this batch, not the server: the batcher thread
        // lives on and the next batch runs.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| forward(&input))).unwrap_or_else(
            |panic| {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic".into());
                Err(Error::Gpu {
                    during: "a batched forward".into(),
                    message: format!("the forward panicked: {message}"),
                })
            },
        )
    });
    metrics.batch(rows, rows * seq, start.elapsed());
    // A lost device does not come back: /health says so from now on (503), so a load
    // balancer or Kubernetes stops sending requests here and can restart the server.
    if let Err(Error::DeviceLost { .. }) = &result {
        healthy.store(false, Ordering::Release);
    }
    let mut at = 0;
    for job in batch {
        let n = job.rows.len();
        let reply = match &result {
            Ok(out) => Ok((at..at + n).map(|r| row_of(out, r)).collect()),
            Err(e) => Err(Error::Gpu {
                during: format!("a batched forward of {rows} sequences of {seq} tokens"),
                message: e.to_string(),
            }),
        };
        at += n;
        // A client that went away no longer waits for its answer.
        let _ = job.reply.send(reply);
    }
}

fn row_of(out: &TextOutput, r: usize) -> RowOutput {
    let slice = |t: &crate::host::HostTensor| {
        let w = t.shape[1];
        t.data[r * w..(r + 1) * w].to_vec()
    };
    RowOutput {
        embedding: slice(&out.sentence_embedding),
        unnormalized: out.unnormalized_embedding.as_ref().map(slice),
        logits: out.logits.as_ref().map(slice),
    }
}
