//! Many inputs through the `backbone` binary: `embed` and `classify` read, run and print a
//! batch at a time, so memory is that of one batch however many inputs come, under a 1 GiB
//! address-space cap (`ulimit -v`) here. `embed --texts-file -` answers its first batch
//! before standard input ends.

mod common;

use std::io::{Read as _, Write as _};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use backbone::encoder::{Device, EncoderOptions, TextEncoder};
use common::fixture;
use common::hostile::*;

/// 1 GiB, in KiB: the CPU path needs about 200 MiB of address space for these models.
const CAP_KIB: u64 = 1 << 20;

fn capped(args: &[&str]) -> Command {
    capped_at(CAP_KIB, args)
}

/// `backbone args` under an address-space cap of `kib` KiB (the GPU path maps a driver:
/// it gets the 4 GiB, [`ADDRESS_SPACE_KIB`]).
fn capped_at(kib: u64, args: &[&str]) -> Command {
    limited(&format!("-v {kib}"), args)
}

fn text(i: usize) -> String {
    let words = [
        "alpha", "beta", "gamma", "delta", "stream", "batch", "model",
    ];
    (0..1 + i % 13)
        .map(|k| words[(i * 7 + k * 3) % words.len()])
        .collect::<Vec<_>>()
        .join(" ")
}

/// Texts piped to `embed --texts-file -`: the first batch's rows come out while standard
/// input is still open (nothing waits for the end), the rest after it closes, every row the
/// embedding `embed` gives the same text on the command line (within 1e-5). CPU path under
/// 1 GiB.
#[test]
fn embed_streams_texts_from_standard_input() {
    embed_streams("cpu", CAP_KIB);
}

/// The same on the GPU path, under 4 GiB.
#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn embed_streams_texts_from_standard_input_on_the_gpu() {
    embed_streams("gpu", ADDRESS_SPACE_KIB);
}

fn embed_streams(device: &str, kib: u64) {
    let model = fixture("text/st-cls");
    let options = EncoderOptions::default().device(Device::Cpu);
    let per_batch = TextEncoder::open(&model, &options)
        .expect("open")
        .texts_per_batch();
    let total = per_batch + per_batch / 2 + 3;
    let mut child = capped_at(
        kib,
        &[
            "embed",
            "--device",
            device,
            "--model",
            p(&model),
            "--texts-file",
            "-",
        ],
    )
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("spawn");
    let mut stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut chunk = [0u8; 1 << 16];
        while let Ok(n @ 1..) = stdout.read(&mut chunk) {
            if tx.send(chunk[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut stdin = child.stdin.take().expect("stdin");
    let lines =
        |range: std::ops::Range<usize>| -> String { range.map(|i| text(i) + "\n").collect() };
    stdin
        .write_all(lines(0..per_batch).as_bytes())
        .expect("first batch");
    stdin.flush().expect("flush");
    let mut got = Vec::new();
    while got.iter().filter(|&&b| b == b']').count() < per_batch {
        let chunk = rx
            .recv_timeout(Duration::from_secs(120))
            .expect("the first batch is answered while standard input is still open");
        got.extend(chunk);
    }
    stdin
        .write_all(lines(per_batch..total).as_bytes())
        .expect("the rest");
    drop(stdin);
    got.extend(rx.iter().flatten());
    reader.join().expect("reader");
    let status = child.wait().expect("wait");
    assert!(status.success(), "embed --texts-file - succeeds");
    let rows: Vec<Vec<f32>> = serde_json::from_slice(&got).expect("one JSON array");
    assert_eq!(rows.len(), total, "one row per line");
    for i in [0, per_batch - 1, per_batch, total - 1] {
        let (out, _) = backbone(&["embed", "--device", device, "--model", p(&model), &text(i)]);
        let want: Vec<Vec<f32>> = serde_json::from_slice(&out.stdout).expect("json");
        // Batched with other lengths on the GPU, a row may round differently in its last bits.
        common::assert_close(&format!("row {i}"), &rows[i], &want[0], 1e-5, 0.0);
    }
}

/// A line past the per-line limit, a line that is not UTF-8 and an empty file are errors
/// naming the file and line, before anything is printed.
#[test]
fn bad_texts_files_are_refused_by_line() {
    let model = fixture("text/st-cls");
    let dir = scratch("texts-file");
    let cases: [(&str, Vec<u8>, &[&str]); 3] = [
        (
            "long.txt",
            [b"a\nb\n".to_vec(), vec![b'x'; 3 << 19]].concat(),
            &["long.txt:3", "line of over"],
        ),
        (
            "latin1.txt",
            b"a\ncaf\xe9\n".to_vec(),
            &["latin1.txt:2", "UTF-8"],
        ),
        ("empty.txt", Vec::new(), &["no texts"]),
    ];
    for (name, bytes, words) in cases {
        let path = dir.join(name);
        std::fs::write(&path, bytes).expect("write");
        let args = ["embed", "--device", "cpu", "--model", p(&model)];
        let r = backbone(&[&args[..], &["--texts-file", p(&path)]].concat());
        assert_fails(name, r, words, 30);
    }
}

/// 17 photos of 12 megapixels each (two batches) classified on the CPU path under the cap:
/// each is decoded, resized and dropped within its batch.
#[test]
fn classify_many_large_images_under_a_cap() {
    let dir = scratch("classify-capped");
    let photo = dir.join("photo.png");
    write_png(&photo, 4000, 3000);
    let model = fixture("cswin-micro-224");
    let mut args = vec!["classify", "--device", "cpu", "--model", p(&model)];
    args.extend(std::iter::repeat_n(p(&photo), 17));
    let out = capped(&args).output().expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.lines().filter(|l| l.ends_with("photo.png:")).count(),
        17
    );
}
