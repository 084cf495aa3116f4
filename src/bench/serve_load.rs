//! Load test for `backbone serve`: starts the real server binary on 127.0.0.1 (an ephemeral
//! port), sends N requests from M concurrent clients (each a thread with its own keep-alive
//! connection), and reports throughput, p50/p99 latency and the mean batch size the batcher
//! formed (from `/metrics`). Every response is checked against the CPU reference path's
//! embedding of its texts, in order; a request that gets no answer or an error is counted as
//! lost. The server's resident memory is sampled while it runs: after the warm-up it must
//! stay flat. `backbone-bench serve-load` runs it at any size; the test suite runs 10,000
//! requests on the micro fixture.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::encoder::{Device, EncoderOptions, TextEncoder};
use crate::error::{Error, Result};
use crate::tensor::DType;

/// A `backbone serve` child process on 127.0.0.1; killed when dropped.
pub struct ServerProcess {
    child: Child,
    // Kept open so the server never writes into a closed pipe.
    _stdout: BufReader<ChildStdout>,
    /// `host:port` it listens on.
    pub addr: String,
}

impl ServerProcess {
    /// Runs `bin serve --port 0 --model MODEL ARGS..` and waits for its `listening on` line.
    pub fn start(bin: &Path, model: &Path, args: &[String]) -> Result<Self> {
        let io = |what: &str, source| Error::Io {
            path: format!("{} ({what})", bin.display()),
            source,
        };
        let mut child = Command::new(bin)
            .args(["serve", "--host", "127.0.0.1", "--port", "0", "--model"])
            .arg(model)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| io("starting the server", e))?;
        let mut stdout = BufReader::new(
            child
                .stdout
                .take()
                .ok_or_else(|| io("its stdout", std::io::Error::other("no pipe")))?,
        );
        let mut line = String::new();
        stdout
            .read_line(&mut line)
            .map_err(|e| io("reading its first line", e))?;
        let Some(addr) = line.trim().strip_prefix("listening on http://") else {
            let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
            return Err(io(
                "starting the server",
                std::io::Error::other(format!("it printed {line:?} and ended ({status})")),
            ));
        };
        Ok(Self {
            addr: addr.to_string(),
            child,
            _stdout: stdout,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A client for this server.
    pub fn http(&self) -> Http {
        Http::new(&self.addr)
    }

    /// SIGTERM (graceful shutdown), then its exit status.
    #[cfg(unix)]
    pub fn stop(mut self) -> Result<ExitStatus> {
        // SAFETY: sends a signal to our own child process, which we have not yet waited for.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        self.child.wait().map_err(|e| Error::Io {
            path: "(backbone serve)".into(),
            source: e,
        })
    }
}

impl ServerProcess {
    /// SIGTERM, then its exit status and how long it took to exit; a server still running
    /// after `limit` is killed and reported as an error (a hang, never a wait forever).
    #[cfg(unix)]
    pub fn stop_within(mut self, limit: Duration) -> Result<(ExitStatus, Duration)> {
        let signalled = Instant::now();
        // SAFETY: sends a signal to our own child process, which we have not yet waited for.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let io = |e| Error::Io {
            path: "(backbone serve)".into(),
            source: e,
        };
        loop {
            if let Some(status) = self.child.try_wait().map_err(io)? {
                return Ok((status, signalled.elapsed()));
            }
            if signalled.elapsed() > limit {
                self.child.kill().ok();
                return Err(io(std::io::Error::other(format!(
                    "the server was still running {} s after SIGTERM",
                    limit.as_secs_f64()
                ))));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ServerProcess {
    /// A failed run does not leave its server running.
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

/// A blocking HTTP client on one keep-alive connection (ureq); error statuses are answers,
/// not errors.
#[derive(Clone)]
pub struct Http {
    agent: ureq::Agent,
    base: String,
    /// Sent as `Authorization: Bearer ..` when set.
    bearer: Option<String>,
}

impl Http {
    pub fn new(addr: &str) -> Self {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(600)))
            .build()
            .into();
        Self {
            agent,
            base: format!("http://{addr}"),
            bearer: None,
        }
    }

    /// The same client, sending `key` as a bearer token (a server started with --api-key).
    pub fn with_bearer(mut self, key: &str) -> Self {
        self.bearer = Some(format!("Bearer {key}"));
        self
    }

    fn answer(
        &self,
        url: &str,
        sent: std::result::Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<(u16, String)> {
        let io = |e: ureq::Error| Error::Io {
            path: url.to_string(),
            source: std::io::Error::other(e),
        };
        let mut response = sent.map_err(io)?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(1 << 30)
            .read_to_string()
            .map_err(io)?;
        Ok((status, body))
    }

    /// `POST path` with a JSON body; (status, body).
    pub fn post(&self, path: &str, body: &str) -> Result<(u16, String)> {
        let url = format!("{}{path}", self.base);
        let mut request = self
            .agent
            .post(&url)
            .header("Content-Type", "application/json");
        if let Some(auth) = &self.bearer {
            request = request.header("Authorization", auth);
        }
        let sent = request.send(body);
        self.answer(&url, sent)
    }

    /// `GET path`; (status, body).
    pub fn get(&self, path: &str) -> Result<(u16, String)> {
        let url = format!("{}{path}", self.base);
        let mut request = self.agent.get(&url);
        if let Some(auth) = &self.bearer {
            request = request.header("Authorization", auth);
        }
        let sent = request.call();
        self.answer(&url, sent)
    }

    /// `POST path` with `body`; (status, parsed body or null).
    pub fn json(&self, path: &str, body: &Value) -> Result<(u16, Value)> {
        let (status, text) = self.post(path, &body.to_string())?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }
}

/// Resident set size of process `pid` in KiB (0 where /proc is absent).
pub fn resident_kib_of(pid: u32) -> u64 {
    super::soak::statm_resident_kib(&format!("/proc/{pid}/statm"))
}

/// What to run.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// The `backbone` binary.
    pub server: PathBuf,
    pub model: PathBuf,
    /// More `backbone serve` arguments (`--device cpu`, `--dtype f16`, ...).
    pub server_args: Vec<String>,
    /// The storage type the server runs in (the reference runs in it too).
    pub dtype: DType,
    pub requests: usize,
    pub clients: usize,
    pub texts_per_request: usize,
    /// Requests answered before the memory baseline is taken (first batch shapes compile
    /// pipelines and fault in pages); `None`: a tenth of the requests.
    pub warmup: Option<usize>,
}

/// What a load test measured. Memory in KiB.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LoadReport {
    pub requests: usize,
    pub clients: usize,
    pub texts_per_request: usize,
    /// Answered 200 with the right vectors.
    pub correct: usize,
    /// Answered 200 with a wrong or misshapen body.
    pub wrong: usize,
    /// No answer, or an error status.
    pub lost: usize,
    pub first_problem: Option<String>,
    pub seconds: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub batches: u64,
    pub mean_batch_rows: f64,
    pub min_cosine: f64,
    pub warmup_requests: usize,
    pub rss_after_warmup_kib: u64,
    /// The most resident memory while the first and the second half of the requests after
    /// the warm-up ran (the end included in the second).
    pub rss_max_first_half_kib: u64,
    pub rss_max_second_half_kib: u64,
    pub rss_end_kib: u64,
}

impl LoadReport {
    /// Growth allowed from the first half to the second (allocator noise).
    pub const RSS_SLACK_KIB: u64 = 16 << 10;

    /// Flat: the second half after the warm-up peaks no higher than the first (within
    /// [`Self::RSS_SLACK_KIB`]). Each batch's transient buffers come and go in both halves; a
    /// leak grows with the requests and shows in the second.
    pub fn is_flat(&self) -> bool {
        self.rss_max_second_half_kib <= self.rss_max_first_half_kib + Self::RSS_SLACK_KIB
    }

    /// Every request answered correctly and memory flat.
    pub fn passed(&self) -> bool {
        self.correct == self.requests && self.is_flat()
    }

    pub fn summary(&self) -> String {
        let mib = |k: u64| k as f64 / 1024.0;
        format!(
            "serve-load: {} requests ({} texts each) from {} clients in {:.1} s: {:.1} requests/s, \
             {:.1} texts/s; latency p50 {:.1} ms, p99 {:.1} ms; {} batches of {:.2} sequences \
             on average; {} correct, {} wrong, {} lost (min cosine to the CPU reference {:.6}); \
             server resident memory after {} warm-up requests {:.1} MiB, then at most {:.1} MiB \
             in the first half and {:.1} MiB in the second, {:.1} MiB at the end: {}{}",
            self.requests,
            self.texts_per_request,
            self.clients,
            self.seconds,
            self.requests as f64 / self.seconds,
            (self.requests * self.texts_per_request) as f64 / self.seconds,
            self.p50_ms,
            self.p99_ms,
            self.batches,
            self.mean_batch_rows,
            self.correct,
            self.wrong,
            self.lost,
            self.min_cosine,
            self.warmup_requests,
            mib(self.rss_after_warmup_kib),
            mib(self.rss_max_first_half_kib),
            mib(self.rss_max_second_half_kib),
            mib(self.rss_end_kib),
            if self.is_flat() { "FLAT" } else { "GROWING" },
            match &self.first_problem {
                Some(p) => format!("; first problem: {p}"),
                None => String::new(),
            }
        )
    }
}

/// Sentences of 2 to 40 words (seeded), so batches mix lengths and padding.
fn text_pool(n: usize) -> Vec<String> {
    const WORDS: [&str; 16] = [
        "the", "river", "station", "quiet", "engine", "runs", "on", "every", "graphics", "card",
        "while", "cats", "sleep", "near", "old", "mats",
    ];
    (0..n)
        .map(|i| {
            let len = 2 + (i * 7919) % 39;
            (0..len)
                .map(|j| WORDS[(i * 31 + j * 17 + j * j) % WORDS.len()])
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

/// Embeddings of `texts` from the CPU reference path (the twins) in `dtype` (compared by cosine: their
/// scale does not matter).
fn reference(model: &Path, texts: &[String], dtype: DType) -> Result<Vec<Vec<f32>>> {
    let options = EncoderOptions::default()
        .device(Device::Reference)
        .dtype(dtype);
    let encoder = TextEncoder::open(model, &options)?;
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let t = encoder.encode_blocking(&refs, None, None)?;
    Ok(t.data.chunks(t.shape[1]).map(<[f32]>::to_vec).collect())
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let n = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (n(a) * n(b)).max(1e-30)
}

/// A counter of `/metrics`.
fn counter(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
        .unwrap_or(0.0) as u64
}

/// The vectors of a 200 answer: `/embed`'s list, or `/v1/embeddings`' data in index order.
fn vectors(body: &str, openai: bool) -> Option<Vec<Vec<f32>>> {
    let v: Value = serde_json::from_str(body).ok()?;
    let rows = if openai {
        v.get("data")?
            .as_array()?
            .iter()
            .enumerate()
            .map(|(i, d)| (d.get("index")?.as_u64()? == i as u64).then(|| d.get("embedding")))
            .collect::<Option<Option<Vec<_>>>>()??
    } else {
        v.as_array()?.iter().collect()
    };
    rows.into_iter()
        .map(|r| serde_json::from_value(r.clone()).ok())
        .collect()
}

struct Tally {
    latencies: Vec<f64>,
    correct: usize,
    wrong: usize,
    lost: usize,
    min_cosine: f64,
    first_problem: Option<String>,
}

/// Minimum cosine between an answer and the reference for the server's storage type.
fn min_cosine_for(dtype: DType) -> f64 {
    match dtype {
        DType::F32 => 0.99999,
        _ => 0.9999,
    }
}

/// Runs the load test (see the module doc).
pub fn load_test(o: &LoadOptions) -> Result<LoadReport> {
    let (requests, clients, per) = (o.requests, o.clients.max(1), o.texts_per_request.max(1));
    let pool = text_pool(64);
    let want = Arc::new(reference(&o.model, &pool, o.dtype)?);
    let server = ServerProcess::start(&o.server, &o.model, &o.server_args)?;
    let pid = server.pid();
    // A server started with --api-key gets its key from every client.
    let key = o
        .server_args
        .iter()
        .position(|a| a == "--api-key")
        .and_then(|i| o.server_args.get(i + 1));
    let http = match key {
        Some(key) => server.http().with_bearer(key),
        None => server.http(),
    };
    let (_, before) = http.get("/metrics")?;

    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let tally = Arc::new(Mutex::new(Tally {
        latencies: Vec::with_capacity(requests),
        correct: 0,
        wrong: 0,
        lost: 0,
        min_cosine: 1.0,
        first_problem: None,
    }));
    let warmup = o
        .warmup
        .unwrap_or((requests / 10).max(2 * clients))
        .min(requests);
    // The sampler: server RSS with how many requests were done when it was read.
    let samples = Arc::new(Mutex::new(Vec::<(usize, u64)>::new()));
    // Set once every client has ended (even one that failed before counting its requests).
    let clients_done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (done, samples, clients_done) = (done.clone(), samples.clone(), clients_done.clone());
        std::thread::spawn(move || {
            loop {
                let d = done.load(Ordering::Acquire);
                if let Ok(mut s) = samples.lock() {
                    s.push((d, resident_kib_of(pid)));
                }
                if d >= requests || clients_done.load(Ordering::Acquire) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let limit = min_cosine_for(o.dtype);
    let start = Instant::now();
    let workers: Vec<_> = (0..clients)
        .map(|_| {
            let (http, next, done, tally, want, pool) = (
                http.clone(),
                next.clone(),
                done.clone(),
                tally.clone(),
                want.clone(),
                pool.clone(),
            );
            std::thread::spawn(move || {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= requests {
                        return;
                    }
                    let picks: Vec<usize> = (0..per).map(|j| (i * 13 + j) % pool.len()).collect();
                    let texts: Vec<&str> = picks.iter().map(|&k| pool[k].as_str()).collect();
                    // Every fourth request through OpenAI's route.
                    let openai = i % 4 == 3;
                    let (path, body) = match openai {
                        true => ("/v1/embeddings", json!({ "input": texts })),
                        false => ("/embed", json!({ "inputs": texts })),
                    };
                    let t0 = Instant::now();
                    let answer = http.post(path, &body.to_string());
                    let ms = t0.elapsed().as_secs_f64() * 1e3;
                    let verdict = match &answer {
                        Ok((200, text)) => match vectors(text, openai) {
                            Some(rows) if rows.len() == per => {
                                let c = picks
                                    .iter()
                                    .zip(&rows)
                                    .map(|(&k, r)| cosine(&want[k], r))
                                    .fold(1.0, f64::min);
                                Ok(c)
                            }
                            _ => Err((false, format!("request {i}: a misshapen answer"))),
                        },
                        Ok((status, text)) => Err((true, format!("request {i}: {status} {text}"))),
                        Err(e) => Err((true, format!("request {i}: {e}"))),
                    };
                    if let Ok(mut t) = tally.lock() {
                        t.latencies.push(ms);
                        if let Ok(c) = verdict {
                            t.min_cosine = t.min_cosine.min(c);
                        }
                        match verdict {
                            Ok(c) if c >= limit => t.correct += 1,
                            Ok(c) => {
                                t.wrong += 1;
                                t.first_problem.get_or_insert(format!(
                                    "request {i}: cosine {c} to the reference"
                                ));
                            }
                            Err((lost, why)) => {
                                if lost {
                                    t.lost += 1
                                } else {
                                    t.wrong += 1
                                }
                                t.first_problem.get_or_insert(why);
                            }
                        }
                    }
                    done.fetch_add(1, Ordering::Release);
                }
            })
        })
        .collect();
    for w in workers {
        w.join().ok();
    }
    let seconds = start.elapsed().as_secs_f64();
    clients_done.store(true, Ordering::Release);
    sampler.join().ok();
    let (_, after) = http.get("/metrics")?;
    let rss_end = resident_kib_of(pid);
    server.stop()?;

    let samples = samples.lock().map(|s| s.clone()).unwrap_or_default();
    let rss_warm = samples
        .iter()
        .find(|(d, _)| *d >= warmup)
        .map_or(rss_end, |s| s.1);
    let middle = warmup + (requests - warmup) / 2;
    let peak = |from: usize, to: usize| {
        samples
            .iter()
            .filter(|(d, _)| (from..to).contains(d))
            .map(|s| s.1)
            .max()
            .unwrap_or(rss_warm)
    };
    let rss_first = peak(warmup, middle);
    let rss_second = peak(middle, usize::MAX).max(rss_end);
    let batches = counter(&after, "te_batch_count") - counter(&before, "te_batch_count");
    let rows = counter(&after, "te_batch_rows_sum") - counter(&before, "te_batch_rows_sum");
    let mut t = tally
        .lock()
        .map_err(|_| Error::Config("a load-test client panicked".into()))?;
    t.latencies.sort_by(f64::total_cmp);
    let pct = |p: usize| {
        t.latencies
            .get((t.latencies.len() * p / 100).min(t.latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
    };
    let counted = t.correct + t.wrong + t.lost;
    Ok(LoadReport {
        requests,
        clients,
        texts_per_request: per,
        correct: t.correct,
        wrong: t.wrong,
        lost: t.lost + requests.saturating_sub(counted),
        first_problem: t.first_problem.clone(),
        seconds,
        p50_ms: pct(50),
        p99_ms: pct(99),
        batches,
        mean_batch_rows: rows as f64 / batches.max(1) as f64,
        min_cosine: t.min_cosine,
        warmup_requests: warmup,
        rss_after_warmup_kib: rss_warm,
        rss_max_first_half_kib: rss_first,
        rss_max_second_half_kib: rss_second,
        rss_end_kib: rss_end,
    })
}
