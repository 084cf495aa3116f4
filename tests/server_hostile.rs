//! `backbone serve` against clients that do not play along, as a Kubernetes deployment meets
//! them: SIGTERM with a half-sent head, a half-sent body, or a reader too slow to take its
//! answer (the server exits 0 within its graceful timeout); heads and bodies that never finish
//! (cut off at the read timeout); `/health` while the largest inputs are being tokenized;
//! every bound checked before the work it bounds; and limits that cannot work refused at
//! start-up.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use backbone::bench::serve_load::{Http, ServerProcess};
use common::*;
use serde_json::{Value, json};

fn start(args: &[&str]) -> ServerProcess {
    start_model("bert-micro-12l-random", args)
}

fn start_model(model: &str, args: &[&str]) -> ServerProcess {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    ServerProcess::start(&bin("backbone"), &fixture(model), &args).expect("start backbone serve")
}

fn connect(server: &ServerProcess) -> TcpStream {
    let s = TcpStream::connect(&server.addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60))).ok();
    s
}

/// Everything the server sends until it closes the connection (or 60 s pass).
fn read_all(s: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 65536];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    got
}

/// A receive buffer of a few KiB, so a reader that stops reading stalls the server's writes.
#[cfg(unix)]
fn small_receive_buffer(s: &TcpStream) {
    use std::os::fd::AsRawFd;
    let size: libc::c_int = 4096;
    // SAFETY: setsockopt on a socket we own, with a pointer to a c_int of the size given.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "setsockopt SO_RCVBUF");
}

const GRACE_S: f64 = 3.0;

/// SIGTERM with a client that holds its connection half-open, each way: the server exits 0,
/// within its graceful timeout (3 s here) and a margin, though its read timeout (120 s) has
/// not run out.
#[test]
fn sigterm_ends_the_server_whatever_the_clients_do() {
    let grace = GRACE_S.to_string();
    let args = [
        "--device",
        "cpu",
        "--graceful-timeout",
        grace.as_str(),
        "--read-timeout",
        "120",
        "--max-client-batch-size",
        "600",
    ];
    let long = "word ".repeat(100);
    // 600 × 64 tokens × 32 values from a two-layer model: about 12 MB of JSON, far more than
    // socket buffers hold.
    let big = json!({ "inputs": vec![long; 600], "truncate": true }).to_string();
    for case in [
        "a half-sent head",
        "a half-sent body",
        "a reader that stops reading",
    ] {
        let server = start_model("text/st-cls", &args);
        let mut s = connect(&server);
        match case {
            "a half-sent head" => s
                .write_all(b"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Ty")
                .expect("send"),
            "a half-sent body" => s
                .write_all(
                    b"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                      Content-Length: 1000\r\n\r\n{\"inputs\": \"a",
                )
                .expect("send"),
            _ => {
                small_receive_buffer(&s);
                let head = format!(
                    "POST /embed_all HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                     Content-Length: {}\r\n\r\n",
                    big.len()
                );
                s.write_all(head.as_bytes()).expect("send");
                s.write_all(big.as_bytes()).expect("send");
                // The answer has started: its status line arrived.
                let mut first = [0u8; 12];
                s.read_exact(&mut first).expect("the answer starts");
                assert_eq!(&first, b"HTTP/1.1 200", "{case}");
            }
        }
        std::thread::sleep(Duration::from_millis(300));
        let (status, took) = server
            .stop_within(Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("{case}: {e}"));
        eprintln!("SIGTERM with {case}: exited {status} after {took:?}");
        assert!(status.success(), "{case}: {status}");
        assert!(
            took < Duration::from_secs_f64(GRACE_S + 2.0),
            "{case}: {took:?} after SIGTERM (graceful timeout {GRACE_S} s)"
        );
        if case == "a reader that stops reading" {
            // Its answer could not be written out: the server waited for it until the
            // graceful timeout, then dropped it (a server whose write had finished would have
            // closed the connection and exited at once).
            assert!(
                took >= Duration::from_secs_f64(GRACE_S - 0.2),
                "the reader did not stall the server: it exited after {took:?}"
            );
        }
    }
}

/// A head sent a byte at a time, or a body that stops, is cut off at the read timeout (2 s
/// here): the head's connection is closed unanswered, the body's answered 408.
#[test]
fn slow_heads_and_bodies_are_cut_off() {
    let server = start(&["--device", "cpu", "--read-timeout", "2"]);
    let mut s = connect(&server);
    let opened = Instant::now();
    for b in b"GET /heal" {
        if s.write_all(&[*b]).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let got = read_all(&mut s);
    let took = opened.elapsed();
    let text = String::from_utf8_lossy(&got);
    assert!(
        !text.contains(" 200 "),
        "a head that never finished was answered: {text}"
    );
    assert!(
        took < Duration::from_secs(8),
        "the slow head held its connection {took:?}"
    );

    let mut s = connect(&server);
    s.write_all(
        b"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
          Content-Length: 100\r\n\r\n{\"inputs\"",
    )
    .expect("send");
    let got = read_all(&mut s);
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(server.stop().expect("stop").success());
}

/// `/health` answers within 100 ms (p99 of 100 probes) while four clients keep sending the
/// largest inputs the server takes (1.9 MB texts, truncated): tokenizing runs on its own
/// bounded pool, not on the workers that answer `/health`.
#[test]
fn health_answers_while_the_largest_inputs_are_tokenized() {
    let server = start(&["--device", "cpu", "--tokenization-workers", "1"]);
    let http = server.http();
    let huge = json!({ "inputs": "word ".repeat(380_000), "truncate": true }).to_string();
    assert!(huge.len() < 2_000_000, "under the default payload limit");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (http, huge, stop) = (http.clone(), huge.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut answered = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let (status, body) = http.post("/embed", &huge).expect("answer");
                    assert_eq!(status, 200, "{body}");
                    answered += 1;
                }
                answered
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let probe = Http::new(&server.addr);
    let mut times: Vec<Duration> = (0..100)
        .map(|_| {
            let t = Instant::now();
            assert_eq!(probe.get("/health").expect("health").0, 200);
            let took = t.elapsed();
            std::thread::sleep(Duration::from_millis(20));
            took
        })
        .collect();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let answered: usize = clients.into_iter().map(|c| c.join().expect("client")).sum();
    times.sort();
    let p99 = times[98];
    eprintln!(
        "/health p50 {:?} p99 {:?} max {:?} while {answered} requests of 1.9 MB were answered",
        times[50], p99, times[99]
    );
    assert!(answered >= 4, "the large requests ran: {answered}");
    assert!(p99 < Duration::from_millis(100), "/health p99 {p99:?}");
    assert!(server.stop().expect("stop").success());
}

fn metric(http: &Http, name: &str) -> u64 {
    let (_, text) = http.get("/metrics").expect("metrics");
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{text}"))
}

/// Each bound answers before the work it bounds (its own message proves which check ran),
/// `--max-batch-tokens` bounds every forward, and every refused request is counted as a
/// failure.
#[test]
fn every_bound_is_checked_before_the_work_it_bounds() {
    let server = start(&["--device", "cpu"]);
    let http = server.http();
    // TEI's character cap (512 tokens × 250) before tokenizing: a 1.9 MB text is refused
    // by its characters, not its tokens.
    let (status, got) = http
        .json("/embed", &json!({ "inputs": "word ".repeat(380_000) }))
        .expect("answer");
    assert_eq!(status, 422, "{got}");
    let message = got["error"].as_str().unwrap_or_default();
    assert!(message.contains("128000 characters"), "{got}");
    // The batch size before tokenizing, on the OpenAI route too: 33 inputs of 60 kB, each
    // over the model's length, are refused for their number.
    let inputs = vec!["word ".repeat(12_000); 33];
    let (status, got) = http
        .json("/v1/embeddings", &json!({ "input": inputs }))
        .expect("answer");
    assert_eq!(status, 422, "{got}");
    assert!(
        got["message"]
            .as_str()
            .unwrap_or_default()
            .contains("batch size 33"),
        "{got}"
    );
    let (status, _) = http
        .json("/embed", &json!({ "inputs": [] }))
        .expect("answer");
    assert_eq!(status, 400, "an empty batch");
    let (status, _) = http
        .json("/embed", &json!({ "inputs": "ok" }))
        .expect("answer");
    assert_eq!(status, 200);
    assert_eq!(
        metric(&http, "te_request_failure"),
        3,
        "every refusal is a failure"
    );
    assert_eq!(metric(&http, "te_request_count"), 4);
    assert!(server.stop().expect("stop").success());

    // --max-batch-tokens 256 on a 512-token model: refused without --auto-truncate (TEI's
    // rule); with it, inputs stop at 256 tokens and a request of 4 × 256 runs as 4 batches.
    let server = start(&[
        "--device",
        "cpu",
        "--max-batch-tokens",
        "256",
        "--auto-truncate",
    ]);
    let http = server.http();
    let (_, info) = http.get("/info").expect("info");
    let info: Value = serde_json::from_str(&info).expect("json");
    assert_eq!(info["max_input_length"], 256, "{info}");
    let (status, got) = http
        .json("/embed", &json!({ "inputs": vec!["word ".repeat(600); 4] }))
        .expect("answer");
    assert_eq!(status, 200, "{got}");
    let batches = metric(&http, "te_batch_count");
    let tokens = metric(&http, "te_batch_tokens_sum");
    assert_eq!(
        (batches, tokens),
        (4, 4 * 256),
        "one 256-token row per batch"
    );
    assert!(server.stop().expect("stop").success());
}

/// `backbone serve` with `args`: its exit status and stderr, killed if still running after
/// 60 s (a limit that was not refused).
fn refused(args: &[&str]) -> (bool, String) {
    let dir = fixture("bert-micro-12l-random");
    let mut child = std::process::Command::new(bin("backbone"))
        .args(["serve", "--port", "0", "--device", "cpu", "--model"])
        .arg(&dir)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let started = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if started.elapsed() > Duration::from_secs(60) {
            child.kill().ok();
            panic!("backbone serve {args:?} was not refused: it is serving");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("output");
    (
        !out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Zero or nonsense limits are refused at start-up with a message naming the option (they
/// were silently turned into 1).
#[test]
fn limits_that_cannot_work_are_refused_at_start() {
    for (flag, value) in [
        ("--max-batch-tokens", "0"),
        ("--max-client-batch-size", "0"),
        ("--max-concurrent-requests", "0"),
        ("--payload-limit", "0"),
        ("--tokenization-workers", "0"),
        ("--read-timeout", "0"),
        ("--graceful-timeout", "nan"),
        ("--max-batch-tokens", "100"),
    ] {
        let (failed, stderr) = refused(&[flag, value]);
        assert!(failed, "{flag} {value} was accepted");
        assert!(stderr.contains(flag), "{flag} {value}: {stderr}");
    }
}
