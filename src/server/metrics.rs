//! Prometheus counters for `GET /metrics` (text exposition format), named like
//! text-embeddings-inference's `te_*` metrics.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

#[derive(Default)]
pub struct Metrics {
    requests: AtomicU64,
    request_errors: AtomicU64,
    batches: AtomicU64,
    batch_rows: AtomicU64,
    batch_tokens: AtomicU64,
    queue_micros: AtomicU64,
    queued: AtomicU64,
    inference_micros: AtomicU64,
    input_tokens: AtomicU64,
}

impl Metrics {
    pub fn request(&self, ok: bool, tokens: usize) {
        self.requests.fetch_add(1, Relaxed);
        if !ok {
            self.request_errors.fetch_add(1, Relaxed);
        }
        self.input_tokens.fetch_add(tokens as u64, Relaxed);
    }

    pub fn queue_time(&self, d: Duration) {
        self.queue_micros.fetch_add(d.as_micros() as u64, Relaxed);
        self.queued.fetch_add(1, Relaxed);
    }

    pub fn batch(&self, rows: usize, tokens: usize, d: Duration) {
        self.batches.fetch_add(1, Relaxed);
        self.batch_rows.fetch_add(rows as u64, Relaxed);
        self.batch_tokens.fetch_add(tokens as u64, Relaxed);
        self.inference_micros
            .fetch_add(d.as_micros() as u64, Relaxed);
    }

    /// The counters in Prometheus' text format.
    pub fn render(&self) -> String {
        let g = |a: &AtomicU64| a.load(Relaxed);
        let secs = |a: &AtomicU64| g(a) as f64 / 1e6;
        let rows = [
            (
                "te_request_count",
                "counter",
                "Requests answered",
                g(&self.requests) as f64,
            ),
            (
                "te_request_failure",
                "counter",
                "Requests answered with an error",
                g(&self.request_errors) as f64,
            ),
            (
                "te_request_input_tokens",
                "counter",
                "Tokens of the answered requests",
                g(&self.input_tokens) as f64,
            ),
            (
                "te_batch_count",
                "counter",
                "Batches run",
                g(&self.batches) as f64,
            ),
            (
                "te_batch_rows_sum",
                "counter",
                "Sequences in all batches",
                g(&self.batch_rows) as f64,
            ),
            (
                "te_batch_tokens_sum",
                "counter",
                "Padded tokens in all batches",
                g(&self.batch_tokens) as f64,
            ),
            (
                "te_queue_duration_seconds_sum",
                "counter",
                "Time requests waited for their batch",
                secs(&self.queue_micros),
            ),
            (
                "te_queue_duration_seconds_count",
                "counter",
                "Requests that waited",
                g(&self.queued) as f64,
            ),
            (
                "te_inference_duration_seconds_sum",
                "counter",
                "Time spent in batched forwards",
                secs(&self.inference_micros),
            ),
        ];
        let mut out = String::new();
        for (name, kind, help, value) in rows {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
            ));
        }
        out
    }
}
