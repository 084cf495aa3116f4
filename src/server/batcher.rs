//! Dynamic batching: requests queue; one thread owns the model and forms batches of at most
//! `max_batch_tokens` tokens (padded to the longest sequence) from the rows of the queued
//! requests, first come first served. A request larger than one batch is split across several
//! (its rows are answered together when the last has run), so `max_batch_tokens` bounds every
//! forward. One forward runs while the next batch forms in the queue.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::metrics::Metrics;
pub use crate::encoder::Row;
use crate::encoder::{TextEncoder, Want};
use crate::error::{Error, Result};
use crate::models::text::{TextInput, TextOutput};

/// What a row gives back.
#[derive(Debug, Clone, Default)]
pub struct RowOutput {
    pub embedding: Vec<f32>,
    /// Before the head's Normalize, when it has one.
    pub unnormalized: Option<Vec<f32>>,
    pub logits: Option<Vec<f32>>,
    /// Every real token's last hidden state, when the request asked (`/embed_all`).
    pub tokens: Option<Vec<Vec<f32>>>,
}

/// A request's rows, the prompt length its pooling leaves out, and where to answer.
pub struct Job {
    pub rows: Vec<Row>,
    pub prompt_length: usize,
    /// Read back every token's hidden state (`/embed_all`).
    pub want_tokens: bool,
    pub queued: Instant,
    pub reply: oneshot::Sender<Result<Vec<RowOutput>>>,
}

/// Runs forwards (GPU or CPU path) for the batcher.
pub type Forward = Box<dyn Fn(&TextInput, Want) -> Result<TextOutput> + Send>;

/// A queued request and how far it has run.
struct Open {
    job: Job,
    /// Rows already in a batch.
    next: usize,
    done: Vec<RowOutput>,
}

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
    let mut open: VecDeque<Open> = VecDeque::new();
    let mut closed = false;
    loop {
        if open.is_empty() {
            match queue.recv() {
                Ok(job) => open.push_back(Open::new(job)),
                Err(_) => return,
            }
        }
        // Take what is queued, briefly waiting for more, until a batch is full.
        while !closed && queued_tokens(&open) < max_batch_tokens {
            match queue.recv_timeout(Duration::from_millis(1)) {
                Ok(job) => open.push_back(Open::new(job)),
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => closed = true,
            }
        }
        let batch = form(&open, max_batch_tokens);
        process(&mut open, &batch, model, &forward, &metrics, &healthy);
    }
}

impl Open {
    fn new(job: Job) -> Self {
        Open {
            done: Vec::with_capacity(job.rows.len()),
            job,
            next: 0,
        }
    }

    fn remaining(&self) -> &[Row] {
        &self.job.rows[self.next..]
    }
}

/// Padded tokens of everything still to run, as one batch would hold them.
fn queued_tokens(open: &VecDeque<Open>) -> usize {
    let rows: usize = open.iter().map(|o| o.remaining().len()).sum();
    let longest = open
        .iter()
        .flat_map(|o| o.remaining())
        .map(|r| r.ids.len())
        .max()
        .unwrap_or(0);
    rows.saturating_mul(longest)
}

/// The next batch: (index in `open`, rows taken) in queue order, from the requests that share
/// the first one's prompt length and readback, while `rows × longest` stays within the budget
/// (always at least one row, so a row longer than the budget still runs alone).
fn form(open: &VecDeque<Open>, max_batch_tokens: usize) -> Vec<(usize, usize)> {
    let first = &open[0].job;
    let (mut rows, mut longest) = (0usize, 0usize);
    let mut batch = Vec::new();
    'jobs: for (at, o) in open.iter().enumerate() {
        if o.job.prompt_length != first.prompt_length || o.job.want_tokens != first.want_tokens {
            break;
        }
        let mut taken = 0;
        for row in o.remaining() {
            let l = longest.max(row.ids.len()).max(1);
            if rows > 0 && (rows + 1).saturating_mul(l) > max_batch_tokens {
                if taken > 0 {
                    batch.push((at, taken));
                }
                break 'jobs;
            }
            rows += 1;
            longest = l;
            taken += 1;
        }
        batch.push((at, taken));
    }
    batch
}

fn process(
    open: &mut VecDeque<Open>,
    batch: &[(usize, usize)],
    model: &TextEncoder,
    forward: &Forward,
    metrics: &Metrics,
    healthy: &AtomicBool,
) {
    let start = Instant::now();
    for &(at, _) in batch {
        if open[at].next == 0 {
            metrics.queue_time(start.duration_since(open[at].job.queued));
        }
    }
    let want = Want {
        last_hidden_state: open[0].job.want_tokens,
        hidden_states: false,
    };
    let prompt_length = open[0].job.prompt_length;
    // Padded once, with the model's pad id.
    let all: Vec<&Row> = batch
        .iter()
        .flat_map(|&(at, n)| &open[at].remaining()[..n])
        .collect();
    let (rows, seq) = (
        all.len(),
        all.iter().map(|r| r.ids.len()).max().unwrap_or(0),
    );
    let lengths: Vec<usize> = all.iter().map(|r| r.ids.len()).collect();
    let result = model.batch(&all, prompt_length).and_then(|input| {
        // A panic in a forward (a bug) fails this batch, not the server: the batcher thread
        // lives on and the next batch runs.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| forward(&input, want)))
            .unwrap_or_else(|panic| {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic".into());
                Err(Error::Gpu {
                    during: "a batched forward".into(),
                    message: format!("the forward panicked: {message}"),
                })
            })
    });
    metrics.batch(rows, rows * seq, start.elapsed());
    // A lost device does not come back: /health says so from now on (503), so a load
    // balancer or Kubernetes stops sending requests here and can restart the server.
    if let Err(Error::DeviceLost { .. }) = &result {
        healthy.store(false, Ordering::Release);
    }
    let mut r = 0;
    let mut finished = Vec::new();
    for &(at, n) in batch {
        let o = &mut open[at];
        match &result {
            Ok(out) => {
                for i in 0..n {
                    o.done
                        .push(row_of(out, r + i, want.last_hidden_state, lengths[r + i]));
                }
                o.next += n;
                if o.next == o.job.rows.len() {
                    finished.push((at, None));
                }
            }
            Err(e) => finished.push((
                at,
                Some(Error::Gpu {
                    during: format!("a batched forward of {rows} sequences of {seq} tokens"),
                    message: e.to_string(),
                }),
            )),
        }
        r += n;
    }
    // Answer (and drop) finished requests, last index first so earlier indices stay valid.
    for (at, failed) in finished.into_iter().rev() {
        if let Some(o) = open.remove(at) {
            let reply = match failed {
                None => Ok(o.done),
                Some(e) => Err(e),
            };
            // A client that went away no longer waits for its answer.
            let _ = o.job.reply.send(reply);
        }
    }
}

fn row_of(out: &TextOutput, r: usize, tokens: bool, length: usize) -> RowOutput {
    let slice = |t: &crate::host::HostTensor| {
        let w = t.shape[1];
        t.data[r * w..(r + 1) * w].to_vec()
    };
    let tokens = tokens.then(|| {
        let h = &out.last_hidden_state;
        let (seq, c) = (h.shape[1], h.shape[2]);
        (0..length)
            .map(|t| h.data[(r * seq + t) * c..(r * seq + t + 1) * c].to_vec())
            .collect()
    });
    RowOutput {
        embedding: slice(&out.sentence_embedding),
        unnormalized: out.unnormalized_embedding.as_ref().map(slice),
        logits: out.logits.as_ref().map(slice),
        tokens,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(lengths: &[usize], prompt_length: usize) -> Open {
        let (reply, _) = oneshot::channel();
        Open::new(Job {
            rows: lengths
                .iter()
                .map(|&l| Row {
                    ids: vec![1; l],
                    types: vec![0; l],
                })
                .collect(),
            prompt_length,
            want_tokens: false,
            queued: Instant::now(),
            reply,
        })
    }

    /// A request of 4 × 256 tokens on a 256-token budget runs as four batches of one row;
    /// small requests share a batch; a request with another prompt length waits its turn.
    #[test]
    fn batches_never_pass_the_token_budget() {
        let open: VecDeque<Open> = [job(&[256; 4], 0)].into();
        assert_eq!(form(&open, 256), vec![(0, 1)]);
        let open: VecDeque<Open> = [job(&[10, 20], 0), job(&[30], 0), job(&[5], 3)].into();
        assert_eq!(form(&open, 1000), vec![(0, 2), (1, 1)]);
        assert_eq!(form(&open, 60), vec![(0, 2)], "3 rows of 30 is 90 > 60");
        assert_eq!(form(&open, 40), vec![(0, 2)]);
        assert_eq!(form(&open, 39), vec![(0, 1)]);
        let open: VecDeque<Open> = [job(&[500], 0)].into();
        assert_eq!(
            form(&open, 256),
            vec![(0, 1)],
            "an over-long row runs alone"
        );
    }
}
