//! Prometheus metrics for `GET /metrics` (text exposition format), named like
//! text-embeddings-inference's `te_*` metrics: counters, and histograms of the request
//! duration, the queue time, the batch size and the inference time (so a dashboard can show
//! p50/p99 with `histogram_quantile`).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Seconds: 1 ms to 60 s.
const SECONDS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0,
];
/// Sequences per batch.
const ROWS: [f64; 11] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// A histogram with fixed upper bounds; the sum is kept in millionths.
struct Histogram {
    bounds: &'static [f64],
    /// Observations at most each bound (not cumulative; summed when rendered).
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    sum_micro: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_micro: AtomicU64::new(0),
        }
    }

    fn observe(&self, v: f64) {
        if let Some(i) = self.bounds.iter().position(|&b| v <= b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_micro.fetch_add((v * 1e6).round() as u64, Relaxed);
    }

    fn render(&self, name: &str, help: &str, out: &mut String) {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} histogram\n"));
        let mut cumulative = 0;
        for (bound, bucket) in self.bounds.iter().zip(&self.buckets) {
            cumulative += bucket.load(Relaxed);
            out.push_str(&format!("{name}_bucket{{le=\"{bound}\"}} {cumulative}\n"));
        }
        let count = self.count.load(Relaxed);
        out.push_str(&format!("{name}_bucket{{le=\"+Inf\"}} {count}\n"));
        let sum = self.sum_micro.load(Relaxed) as f64 / 1e6;
        out.push_str(&format!("{name}_sum {sum}\n{name}_count {count}\n"));
    }
}

pub struct Metrics {
    requests: AtomicU64,
    request_errors: AtomicU64,
    input_tokens: AtomicU64,
    batch_tokens: AtomicU64,
    request_duration: Histogram,
    queue_duration: Histogram,
    batch_size: Histogram,
    inference_duration: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            requests: AtomicU64::new(0),
            request_errors: AtomicU64::new(0),
            input_tokens: AtomicU64::new(0),
            batch_tokens: AtomicU64::new(0),
            request_duration: Histogram::new(&SECONDS),
            queue_duration: Histogram::new(&SECONDS),
            batch_size: Histogram::new(&ROWS),
            inference_duration: Histogram::new(&SECONDS),
        }
    }
}

impl Metrics {
    /// A request answered (or refused, or failed) `took` after it arrived.
    pub fn request(&self, ok: bool, took: Duration) {
        self.requests.fetch_add(1, Relaxed);
        if !ok {
            self.request_errors.fetch_add(1, Relaxed);
        }
        self.request_duration.observe(took.as_secs_f64());
    }

    /// Tokens of a request that ran.
    pub fn tokens(&self, tokens: usize) {
        self.input_tokens.fetch_add(tokens as u64, Relaxed);
    }

    pub fn queue_time(&self, d: Duration) {
        self.queue_duration.observe(d.as_secs_f64());
    }

    pub fn batch(&self, rows: usize, tokens: usize, d: Duration) {
        self.batch_tokens.fetch_add(tokens as u64, Relaxed);
        self.batch_size.observe(rows as f64);
        self.inference_duration.observe(d.as_secs_f64());
    }

    /// Everything in Prometheus' text format.
    pub fn render(&self) -> String {
        // Batches and their sequences are the batch-size histogram's count and sum.
        let batches = self.batch_size.count.load(Relaxed);
        let batch_rows = self.batch_size.sum_micro.load(Relaxed) / 1_000_000;
        let counters = [
            (
                "te_request_count",
                "Requests to the POST routes",
                self.requests.load(Relaxed),
            ),
            (
                "te_request_failure",
                "Requests answered with an error (refused by a bound, malformed, or failed)",
                self.request_errors.load(Relaxed),
            ),
            (
                "te_request_input_tokens",
                "Tokens of the answered requests",
                self.input_tokens.load(Relaxed),
            ),
            ("te_batch_count", "Batches run", batches),
            ("te_batch_rows_sum", "Sequences in all batches", batch_rows),
            (
                "te_batch_tokens_sum",
                "Padded tokens in all batches",
                self.batch_tokens.load(Relaxed),
            ),
        ];
        let mut out = String::new();
        for (name, help, value) in counters {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}\n"
            ));
        }
        let histograms = [
            (
                "te_request_duration_seconds",
                "Time to answer a request: tokenizing, queueing and inference",
                &self.request_duration,
            ),
            (
                "te_queue_duration_seconds",
                "Time requests waited for their batch",
                &self.queue_duration,
            ),
            ("te_batch_size", "Sequences per batch", &self.batch_size),
            (
                "te_inference_duration_seconds",
                "Time of each batched forward",
                &self.inference_duration,
            ),
        ];
        for (name, help, h) in histograms {
            h.render(name, help, &mut out);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_with_sum_and_count() {
        let m = Metrics::default();
        for rows in [1, 3, 3, 2000] {
            m.batch(rows, rows * 8, Duration::from_millis(2));
        }
        let text = m.render();
        for line in [
            "te_batch_size_bucket{le=\"1\"} 1",
            "te_batch_size_bucket{le=\"2\"} 1",
            "te_batch_size_bucket{le=\"4\"} 3",
            "te_batch_size_bucket{le=\"1024\"} 3",
            "te_batch_size_bucket{le=\"+Inf\"} 4",
            "te_batch_size_sum 2007",
            "te_batch_size_count 4",
            "te_inference_duration_seconds_bucket{le=\"0.0025\"} 4",
            "te_inference_duration_seconds_count 4",
            "te_batch_count 4",
            "te_batch_rows_sum 2007",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
    }
}
